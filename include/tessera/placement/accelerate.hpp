// tessera/placement/accelerate.hpp — Hugging Face accelerate's placement
// algorithms (accelerate 1.15, utils/modeling.py), re-implemented over a tree
// of module sizes so that no model has to be built to place it:
//
//   ModuleTree tree;                       // from checkpoint names and sizes
//   tree.add_parameter("model.layers.0.mlp.up_proj.weight", bytes);
//   tree.set_class("model.layers.0", "Qwen2DecoderLayer");
//   tree.tie({"lm_head.weight", "model.embed_tokens.weight"});
//   auto budget = get_balanced_memory(tree, {{"0", gib}, {"1", gib}}, {"Qwen2DecoderLayer"});
//   auto map = infer_auto_device_map(tree, budget, {"Qwen2DecoderLayer"});
//
// The point is to give users the placement they would get from
// device_map="auto" / "balanced" / "balanced_low_0" / "sequential", so the
// functions follow accelerate step by step, quirks included: the
// largest-layer reserve on the main devices, tied groups matched by
// substring, split modules contributing their direct parameters and children
// but not their buffers, and clean_device_map's merging. The tests compare
// every device map with accelerate's own output on the same trees
// (tests/fixtures/planner/accelerate.json).
//
// Devices are strings: accelerators (accelerate's integer GPU ids) are any
// name other than "mps", "cpu" and "disk", e.g. "0", "1"; they are used in
// the order given, then "mps", "cpu", "disk", as get_max_memory orders them.
// "disk" is appended when absent and takes whatever is left. Sizes are
// signed because accelerate's arithmetic (a budget minus the reserved layer)
// can go below zero.
//
// Not covered: buffers (the trees hold parameters only), dtype /
// special_dtypes (sizes come in already as stored bytes), and
// fallback_allocation (off by default in accelerate).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace tessera::placement::accelerate {

using Bytes = std::int64_t;
// Devices with their budgets, in placement order.
using MaxMemory = std::vector<std::pair<std::string, Bytes>>;
// Module (or parameter) name -> device, in the order accelerate assigned them.
using DeviceMap = std::vector<std::pair<std::string, std::string>>;

inline bool is_accelerator(std::string_view device) { return device != "mps" && device != "cpu" && device != "disk"; }

// A module hierarchy reduced to what placement reads: names, classes (for
// no_split_module_classes), parameter sizes and tied parameters.
class ModuleTree {
 public:
  struct Node {
    std::string name;                  // full dotted name; "" for the root
    std::string class_name = "Module";  // "Parameter" for parameters
    bool parameter = false;
    Bytes bytes = 0;                   // a parameter's stored size
    bool counted = true;               // false for the later names of a tied parameter
    std::vector<std::size_t> params;    // direct parameters, in definition order
    std::vector<std::size_t> children;  // direct child modules, in definition order
  };

  ModuleTree() { nodes_.push_back(Node{}); }

  // Adds a parameter by its full name (creating the modules on its path),
  // in named_parameters(remove_duplicate=False) order: that order is the
  // definition order accelerate walks.
  void add_parameter(std::string_view name, Bytes bytes) {
    const auto dot = name.rfind('.');
    const std::size_t parent = dot == std::string_view::npos ? 0 : module(name.substr(0, dot));
    if (find(name)) throw ValueError(tessera::detail::concat("ModuleTree: parameter '", name, "' added twice"));
    Node p;
    p.name = std::string(name);
    p.class_name = "Parameter";
    p.parameter = true;
    p.bytes = bytes;
    nodes_.push_back(std::move(p));
    index_.emplace(std::string(name), nodes_.size() - 1);
    nodes_[parent].params.push_back(nodes_.size() - 1);
    order_.push_back(nodes_.size() - 1);
  }

  // Sets the class of a module (created if needed); "" is the root.
  void set_class(std::string_view module_name, std::string class_name) {
    nodes_[module_name.empty() ? 0 : module(module_name)].class_name = std::move(class_name);
  }

  // Declares parameters that are one tensor under several names, as
  // find_tied_parameters reports them. Only the first name in definition
  // order is counted in the sizes (named_parameters removes duplicates).
  void tie(std::vector<std::string> group) {
    std::sort(group.begin(), group.end());
    tied_.push_back(std::move(group));
    for (const auto& g : tied_) {
      std::size_t first = std::numeric_limits<std::size_t>::max();
      for (const auto& n : g) {
        const auto id = find(n);
        if (!id) throw ValueError(tessera::detail::concat("ModuleTree: tied parameter '", n, "' is not in the tree"));
        first = std::min(first, position(*id));
      }
      for (const auto& n : g) nodes_[*find(n)].counted = position(*find(n)) == first;
    }
  }

  const std::vector<std::vector<std::string>>& tied_groups() const noexcept { return tied_; }
  const Node& node(std::size_t id) const { return nodes_[id]; }
  const Node& root() const { return nodes_[0]; }
  std::optional<std::size_t> find(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) return std::nullopt;
    return it->second;
  }

  // compute_module_sizes: every module and counted parameter -> bytes, in
  // the insertion order of accelerate's dict ("" first, then the prefixes of
  // each parameter in definition order).
  std::vector<std::pair<std::string, Bytes>> module_sizes() const {
    std::vector<std::pair<std::string, Bytes>> out;
    std::map<std::string, std::size_t, std::less<>> at;
    const auto add = [&](const std::string& key, Bytes bytes) {
      const auto [it, inserted] = at.emplace(key, out.size());
      if (inserted) out.emplace_back(key, 0);
      out[it->second].second += bytes;
    };
    for (const std::size_t id : order_) {
      const Node& p = nodes_[id];
      if (!p.counted) continue;
      add("", p.bytes);
      for (std::size_t dot = p.name.find('.'); dot != std::string::npos; dot = p.name.find('.', dot + 1)) {
        add(p.name.substr(0, dot), p.bytes);
      }
      add(p.name, p.bytes);
    }
    return out;
  }

 private:
  std::size_t module(std::string_view name) {
    if (const auto id = find(name)) {
      if (nodes_[*id].parameter) throw ValueError(tessera::detail::concat("ModuleTree: '", name, "' is a parameter"));
      return *id;
    }
    const auto dot = name.rfind('.');
    const std::size_t parent = dot == std::string_view::npos ? 0 : module(name.substr(0, dot));
    Node m;
    m.name = std::string(name);
    nodes_.push_back(std::move(m));
    index_.emplace(std::string(name), nodes_.size() - 1);
    nodes_[parent].children.push_back(nodes_.size() - 1);
    return nodes_.size() - 1;
  }
  std::size_t position(std::size_t id) const {
    return static_cast<std::size_t>(std::find(order_.begin(), order_.end(), id) - order_.begin());
  }

  std::vector<Node> nodes_;
  std::vector<std::size_t> order_;  // parameters in definition order
  std::map<std::string, std::size_t, std::less<>> index_;
  std::vector<std::vector<std::string>> tied_;
};

namespace detail {

using tessera::detail::concat;
using Entry = std::pair<std::string, std::size_t>;  // (name, node) in a queue of modules to treat
using Sizes = std::map<std::string, Bytes, std::less<>>;

inline Sizes size_map(const ModuleTree& tree) {
  Sizes out;
  for (auto& [name, bytes] : tree.module_sizes()) out.emplace(std::move(name), bytes);
  return out;
}

// module_sizes[name] of a defaultdict: absent names (a tied duplicate) are 0.
inline Bytes size_of(const Sizes& sizes, const std::string& name) {
  const auto it = sizes.find(name);
  return it == sizes.end() ? 0 : it->second;
}

inline bool in(const std::vector<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

inline bool unsplittable(const ModuleTree& tree, std::size_t id, const std::vector<std::string>& no_split) {
  const auto& n = tree.node(id);
  return n.parameter || n.children.empty() || in(no_split, n.class_name);
}

// `name + "."` occurs in `param + "."`: accelerate's (substring) test for a
// parameter inside a module.
inline bool contains_module(const std::string& param, const std::string& name) {
  return (param + ".").find(name + ".") != std::string::npos;
}

// The direct parameters, then the children, of a module being split.
inline std::vector<Entry> split(const ModuleTree& tree, const std::string& name, std::size_t id) {
  (void)name;  // node names are already full names
  std::vector<Entry> out;
  const auto& n = tree.node(id);
  for (const std::size_t p : n.params) out.emplace_back(tree.node(p).name, p);
  for (const std::size_t c : n.children) out.emplace_back(tree.node(c).name, c);
  return out;
}

// get_max_layer_size: the largest unsplittable module (a module without
// children, or of a no-split class) and every name reaching that size.
inline std::pair<Bytes, std::vector<std::string>> max_layer_size(const ModuleTree& tree, std::vector<Entry> queue,
                                                                 const Sizes& sizes,
                                                                 const std::vector<std::string>& no_split) {
  Bytes max_size = 0;
  std::vector<std::string> names;
  while (!queue.empty()) {
    const Entry e = queue.front();
    queue.erase(queue.begin());
    if (unsplittable(tree, e.second, no_split)) {
      const Bytes size = size_of(sizes, e.first);
      if (size > max_size) {
        max_size = size;
        names = {e.first};
      } else if (size == max_size) {
        names.push_back(e.first);
      }
    } else {
      std::vector<Entry> children;
      for (const std::size_t c : tree.node(e.second).children) children.emplace_back(tree.node(c).name, c);
      queue.insert(queue.begin(), children.begin(), children.end());
    }
  }
  return {max_size, names};
}

inline std::vector<Entry> modules_only(const ModuleTree& tree, const std::vector<Entry>& queue) {
  std::vector<Entry> out;
  for (const auto& e : queue) {
    if (!tree.node(e.second).parameter) out.push_back(e);
  }
  return out;
}

inline std::vector<Entry> top_level(const ModuleTree& tree) { return split(tree, "", 0); }

// get_max_memory's order: accelerators as given, then mps, cpu, disk.
inline MaxMemory ordered(const MaxMemory& max_memory) {
  MaxMemory out;
  for (const auto& d : max_memory) {
    if (is_accelerator(d.first)) out.push_back(d);
  }
  for (const char* kind : {"mps", "cpu", "disk"}) {
    for (const auto& d : max_memory) {
      if (d.first == kind) out.push_back(d);
    }
  }
  return out;
}

// Python dict assignment on an ordered map: an existing key keeps its place.
inline void assign(DeviceMap& map, const std::string& name, const std::string& device) {
  for (auto& [k, v] : map) {
    if (k == name) {
      v = device;
      return;
    }
  }
  map.emplace_back(name, device);
}

inline void clean(DeviceMap& map, const std::string& module_name) {
  const std::string prefix = module_name.empty() ? std::string() : module_name + ".";
  std::vector<std::string> values;
  for (const auto& [k, v] : map) {
    if (k.starts_with(prefix)) values.push_back(v);
  }
  if (values.size() > 1 && std::all_of(values.begin(), values.end(), [&](const auto& v) { return v == values[0]; })) {
    std::erase_if(map, [&](const auto& e) { return e.first.starts_with(prefix); });
    map.emplace_back(module_name, values[0]);
  }
  // Children one level down; accelerate walks them as a set (any order
  // gives the same map: their key sets are disjoint).
  const std::size_t depth = module_name.empty() ? 1 : static_cast<std::size_t>(std::count(
                                                          module_name.begin(), module_name.end(), '.')) + 2;
  std::set<std::string> children;
  for (const auto& [k, v] : map) {
    if (!k.starts_with(prefix) || k.size() <= module_name.size()) continue;
    std::size_t end = 0;
    for (std::size_t part = 0; part < depth && end != std::string::npos; ++part) end = k.find('.', end ? end + 1 : 0);
    children.insert(k.substr(0, end));
  }
  for (const auto& child : children) clean(map, child);
}

}  // namespace detail

// clean_device_map: children that all landed on one device become their
// parent's single entry, recursively.
inline DeviceMap clean_device_map(DeviceMap map) {
  detail::clean(map, "");
  return map;
}

// get_balanced_memory(model, max_memory, no_split_module_classes, low_zero):
// budgets that spread the model evenly over the accelerators. Every
// accelerator but the last is capped at total / n (total / (n - 1) with
// low_zero) plus a buffer of 1.25 x the larger of the first no-split block
// of each class and the mean size of the leaf modules; with low_zero, the
// first accelerator keeps only what does not fit on the others. The first
// accelerator in `max_memory` plays accelerate's GPU 0 (accelerate indexes
// GPUs 1..n-1 by id, so ids are assumed to be 0..n-1 in order).
inline MaxMemory get_balanced_memory(const ModuleTree& tree, const MaxMemory& max_memory,
                                     const std::vector<std::string>& no_split, bool low_zero = false) {
  MaxMemory out = detail::ordered(max_memory);
  std::vector<std::size_t> gpus;  // positions in `out` of accelerators with a positive budget
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (is_accelerator(out[i].first) && out[i].second > 0) gpus.push_back(i);
  }
  const auto n = static_cast<Bytes>(gpus.size());
  if (n == 0) return out;
  if (n == 1) low_zero = false;
  const auto sizes = tree.module_sizes();
  const Bytes total = sizes.empty() ? 0 : sizes.front().second;
  Bytes per_gpu = total / (low_zero ? n - 1 : n);

  // The first module of each no-split class, in the order of the size dict.
  std::map<std::string, Bytes> no_split_sizes;
  for (const auto& [name, size] : sizes) {
    if (name.empty()) continue;
    const auto id = tree.find(name);
    const std::string& cls = tree.node(*id).class_name;
    if (detail::in(no_split, cls) && !no_split_sizes.contains(cls)) no_split_sizes.emplace(cls, size);
    std::set<std::string> wanted(no_split.begin(), no_split.end());
    if (no_split_sizes.size() == wanted.size()) break;
  }
  Bytes buffer = 0;
  for (const auto& [cls, size] : no_split_sizes) buffer = std::max(buffer, size);

  // Leaves of the size dict are parameters; without them, the leaves are
  // the final modules, whose mean size is the other buffer candidate.
  const auto leaves = [](const std::vector<std::pair<std::string, Bytes>>& dict) {
    std::map<std::string, int, std::less<>> children;
    for (const auto& [name, size] : dict) {
      const auto dot = name.rfind('.');
      if (name.empty() || dot == std::string::npos) continue;
      ++children[name.substr(0, dot)];
    }
    std::vector<std::pair<std::string, Bytes>> out_leaves;
    for (const auto& e : dict) {
      if (!e.first.empty() && !children.contains(e.first)) out_leaves.push_back(e);
    }
    return out_leaves;
  };
  const auto param_leaves = leaves(sizes);
  std::set<std::string> removed;
  for (const auto& e : param_leaves) removed.insert(e.first);
  std::vector<std::pair<std::string, Bytes>> modules;
  for (const auto& e : sizes) {
    if (!removed.contains(e.first)) modules.push_back(e);
  }
  const auto final_modules = leaves(modules);
  Bytes sum = 0;
  for (const auto& e : final_modules) sum += e.second;
  const auto mean = static_cast<Bytes>(static_cast<double>(sum) /
                                       static_cast<double>(std::max<std::size_t>(final_modules.size(), 1)));
  buffer = static_cast<Bytes>(1.25 * static_cast<double>(std::max(buffer, mean)));
  per_gpu += buffer;

  // The last accelerator keeps its budget, in case the buffer is not enough.
  for (std::size_t g = 0; g + 1 < gpus.size(); ++g) {
    Bytes& budget = out[gpus[g]].second;
    budget = std::min(low_zero && g == 0 ? budget : per_gpu, budget);
  }
  if (low_zero) {
    Bytes others = 0;
    for (std::size_t g = 1; g < gpus.size(); ++g) {
      others = others > std::numeric_limits<Bytes>::max() - out[gpus[g]].second ? std::numeric_limits<Bytes>::max()
                                                                                 : others + out[gpus[g]].second;
    }
    Bytes& first = out[gpus[0]].second;
    first = std::min(std::max<Bytes>(0, total - others), first);
  }
  return out;
}

struct InferOptions {
  // Keep room for the largest layer on the main devices (the first
  // accelerator and the CPU), as accelerate does to bring an offloaded layer
  // back. tessera's model planner, which never offloads, turns it off.
  bool reserve_largest_layer = true;
  // clean_result: merge children placed together into their parent.
  bool clean_result = true;
};

// infer_auto_device_map(model, max_memory, no_split_module_classes): one
// greedy pass in definition order over the devices of `max_memory` (then
// "disk"); a module that does not fit is split into its parameters and
// children, unless it is unsplittable, in which case placement moves on to
// the next device and never comes back. Tied parameters are placed with the
// module holding their other names.
inline DeviceMap infer_auto_device_map(const ModuleTree& tree, const MaxMemory& max_memory,
                                       const std::vector<std::string>& no_split, const InferOptions& options = {}) {
  using detail::Entry;
  MaxMemory devices = detail::ordered(max_memory);
  if (std::none_of(devices.begin(), devices.end(), [](const auto& d) { return d.first == "disk"; })) {
    devices.emplace_back("disk", 0);
  }
  std::vector<std::string> gpus;
  for (const auto& d : devices) {
    if (d.first != "cpu" && d.first != "disk") gpus.push_back(d.first);
  }
  std::vector<std::string> main_devices;
  if (detail::in(gpus, "mps")) main_devices = {"mps"};
  else if (!gpus.empty()) main_devices = {gpus[0], "cpu"};
  else main_devices = {"cpu"};

  const detail::Sizes sizes = detail::size_map(tree);
  const auto& tied = tree.tied_groups();
  std::vector<Entry> queue = detail::top_level(tree);
  std::map<std::string, Bytes> used;
  DeviceMap map;
  std::size_t current = 0;
  auto [max_layer, max_layer_names] = detail::max_layer_size(tree, queue, sizes, no_split);

  const auto recompute_max_layer = [&] {
    std::tie(max_layer, max_layer_names) =
        detail::max_layer_size(tree, detail::modules_only(tree, queue), sizes, no_split);
  };
  const auto index_of = [&](const std::string& n) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < queue.size(); ++i) {
      if (queue[i].first == n) return i;
    }
    return std::nullopt;
  };

  while (!queue.empty()) {
    const Entry entry = queue.front();
    queue.erase(queue.begin());
    const std::string& name = entry.first;
    std::erase_if(max_layer_names, [&](const std::string& n) { return n == name || n.starts_with(name + "."); });
    if (max_layer_names.empty()) recompute_max_layer();
    const Bytes module_size = detail::size_of(sizes, name);

    // Tied parameters with a name inside this module and another outside.
    std::vector<std::string> tied_params;
    for (const auto& group : tied) {
      const bool any = std::any_of(group.begin(), group.end(),
                                   [&](const auto& k) { return detail::contains_module(k, name); });
      const bool all = std::all_of(group.begin(), group.end(),
                                   [&](const auto& k) { return detail::contains_module(k, name); });
      if (!any || all) continue;
      for (const auto& p : group) {
        if (!detail::contains_module(p, name)) tied_params.push_back(p);
      }
    }

    const std::string& device = devices[current].first;
    const bool unlimited = device == "disk";
    Bytes max_size = devices[current].second;
    Bytes reserved = 0;
    if (options.reserve_largest_layer && detail::in(main_devices, device)) {
      max_size -= max_layer;
      reserved = max_layer;
    }

    // get_module_size_with_ties: each tied parameter's module, from the queue.
    Bytes with_ties = module_size;
    std::vector<Entry> tied_modules;
    for (const auto& p : tied_params) {
      const auto it = std::find_if(queue.begin(), queue.end(), [&](const Entry& e) { return p.starts_with(e.first + "."); });
      if (it == queue.end()) {
        throw PlanError(tessera::detail::concat("accelerate placement: the module holding tied parameter '", p,
                                       "' is no longer waiting to be placed (accelerate fails here too)"));
      }
      tied_modules.push_back(*it);
      with_ties += detail::size_of(sizes, it->first) - detail::size_of(sizes, p);
    }

    if (unlimited || used[device] + with_ties <= max_size) {
      used[device] += with_ties;
      detail::assign(map, name, device);
      for (const auto& t : tied_modules) {
        if (const auto i = index_of(t.first)) queue.erase(queue.begin() + static_cast<std::ptrdiff_t>(*i));
        detail::assign(map, t.first, device);
      }
      continue;
    }

    // The module fits without its tied modules: try splitting one of them.
    if (!tied_params.empty() && used[device] + module_size <= max_size) {
      bool split_happened = false;
      for (const auto& t : tied_modules) {
        if (detail::unsplittable(tree, t.second, no_split)) continue;
        const auto children = detail::split(tree, t.first, t.second);
        const std::size_t i = *index_of(t.first);
        std::vector<Entry> next{entry};
        next.insert(next.end(), queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(i));
        next.insert(next.end(), children.begin(), children.end());
        next.insert(next.end(), queue.begin() + static_cast<std::ptrdiff_t>(i) + 1, queue.end());
        queue = std::move(next);
        recompute_max_layer();
        split_happened = true;
        break;
      }
      if (split_happened) continue;
    }

    // The module itself does not fit: split it, or go to the next device.
    if (used[device] + module_size >= max_size && !detail::unsplittable(tree, entry.second, no_split)) {
      const auto children = detail::split(tree, name, entry.second);
      queue.insert(queue.begin(), children.begin(), children.end());
      recompute_max_layer();
      continue;
    }
    used[device] += reserved;
    ++current;
    queue.insert(queue.begin(), entry);
  }
  return options.clean_result ? clean_device_map(std::move(map)) : map;
}

}  // namespace tessera::placement::accelerate
