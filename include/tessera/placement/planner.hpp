// tessera/placement/planner.hpp — the memory planner: where each part of a
// model goes and what each device will hold at peak, computed from the
// checkpoint's headers before a single weight is read. It knows no model:
// each model describes itself (model_description.hpp) on the models side.
//
//   PlanRequest req;
//   req.stages = {{"cpu0"}, {"cuda0", "cuda1"}};    // stage 1: tensor-parallel pair
//   req.element_size = 2;                           // bf16
//   req.max_context = 8192; req.max_prompt = 4096;  // KV capacity, one prefill
//   req.max_image_pixels = 1280 * 28 * 28;          // or max_vision_units
//   req.budgets = {{"cuda0", parse_memory_size("20GiB")}, {"cuda1", parse_memory_size("20GiB")}};
//   const Plan plan = plan_model(models::qwen2_5_vl::describe(dir), req);  // PlanError if it does not fit
//   std::cout << plan.table();                      // (plan_qwen2_5_vl(dir, req) says the same)
//   auto model = Model::load(dir, plan.layout);
//
// What goes where:
//   - the vision part (encoder + projector or resampler, one unit), the
//     token embeddings, and the final norm with lm_head are pinned (stage 0
//     unless PlanRequest::pins says otherwise; tied embeddings keep embed
//     and lm_head on one stage);
//   - decoder layers are no-split units assigned in contiguous runs, one run
//     per stage, by the strategy (accelerate's semantics, accelerate.hpp):
//       sequential      fill stage 0 up to its budget, then stage 1, ...
//       balanced        get_balanced_memory's caps: every stage but the last
//                       gets total/n + 1.25 x one layer (with its KV cache);
//                       the last is uncapped; and every stage that can hold
//                       a layer within its budget gets at least one
//       balanced_low_0  the same with stage 0 holding only what the others
//                       cannot (get_balanced_memory(low_zero=True))
//       internvl_split  InternVL's split_model counts (internvl_split.hpp);
//     layers that fit no stage stay on the last one, and the budget check
//     reports it. A stage left without layers is explained in Plan::notes.
//
// Per device (a tensor-parallel group's devices each hold their share):
//   weights      numel x element_size of every tensor the model loads, as
//                the description classifies it: a group of t devices holds
//                1/t of the row- and column-split layer tensors and all of
//                the rest; the vision part is held by the first device of
//                its stage (one_process, the default), by every device
//                under MPI (each process loads its own);
//   KV cache     2 x layers x max_context x batch x (kv_heads / t) x head_dim
//                x element_size, allocated whole before the prefill;
//   activations  what the device holds above its weights and cache at the
//                worst moment of one prefill (batch x max_prompt tokens, one
//                vision pass over max_vision_units) and of the decode steps
//                after it;
//   peak         weights + KV cache + activations, checked against the
//                device's budget. Over budget on any device: PlanError naming
//                every device's need and budget.
//
// Activations come from a walk of one forward step, phase by phase and
// device by device (plan_detail::Simulation), mirroring the allocations of
// the one decoder every family runs (models/decoder.hpp) and, for the vision
// pass, the model's own VisionCost. A phase's transient sits on top of what
// earlier phases leave alive; a device's figure is its largest sum. Host is
// cpu0: host allocations count when cpu0 is a plan device.
//   whole run    cpu0: the processor's inputs (host_input_bytes) and, while
//                loading, the largest tensor staged for a non-CPU device;
//   positions    cpu0: the prompt's rotary positions, then its ids;
//   vision       VisionCost: host and tower-device transients; the features
//                stay on the tower's device to the end of the prefill;
//   embeddings   each device of the embedding stage: the embedded stream,
//                and the features copied in when they come from elsewhere;
//   each stage   the stream copied in (the source stays alive), the rotary
//                tables, then per layer residual + h + attention or MLP,
//                with the float copies of half-precision GEMMs and the
//                in-process all-reduce's copies;
//   head         the stream copied in, the final norm and logits on the
//                first rank, the logits copied to the output device;
//   decode       the same for one token per sequence against max_context
//                keys, with the previous step's logits still alive.
// The contract is the memory ledger: tests/unit/test_planner.cpp and
// test_planner_decoders.cpp load and run each model under plans and require
// weights and KV cache equal to the ledger's, the measured peak at most the
// predicted one on every device, and within 25 % of it on the busiest.
//
// Errors: PlanError for a plan that does not fit, a tensor-parallel group
// that does not divide the language model's attention or key-value heads
// (or its intermediate size), a pin to a stage that does not exist, tied
// embeddings pinned apart, more stages than decoder layers, a device in two
// stages, a budget for a device in no stage. ValueError for a bad strategy
// name or element size.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/memory.hpp"
#include "accelerate.hpp"
#include "internvl_split.hpp"
#include "layout.hpp"
#include "memory_size.hpp"
#include "model_description.hpp"

namespace tessera::placement {

enum class Strategy { sequential, balanced, balanced_low_0, internvl_split };

inline std::string_view strategy_name(Strategy s) {
  switch (s) {
    case Strategy::sequential: return "sequential";
    case Strategy::balanced: return "balanced";
    case Strategy::balanced_low_0: return "balanced_low_0";
    case Strategy::internvl_split: return "internvl_split";
  }
  return "?";
}

// "sequential", "balanced" (also "auto", as accelerate), "balanced_low_0",
// "internvl_split"; anything else is a ValueError.
inline Strategy parse_strategy(std::string_view s) {
  if (s == "auto" || s == "balanced") return Strategy::balanced;
  if (s == "sequential") return Strategy::sequential;
  if (s == "balanced_low_0") return Strategy::balanced_low_0;
  if (s == "internvl_split") return Strategy::internvl_split;
  throw ValueError(tessera::detail::concat("unknown placement strategy '", s,
                                  "': use sequential, balanced (or auto), balanced_low_0 or internvl_split"));
}

// ---- requests and plans -----------------------------------------------------

// Stages for the parts that are not decoder layers; unset: stage 0 (the
// embeddings follow lm_head, or lm_head the embeddings, when they are tied
// and only one is set). `vision` is the whole vision part: the encoder and
// its projector or resampler (Qwen2.5-VL's tower + merger, InternVL's
// InternViT + mlp1, MiniCPM-V's SigLIP + resampler).
struct Pins {
  std::optional<std::size_t> vision, embed, head;
};

struct PlanRequest {
  // Each stage: one device, or several forming a tensor-parallel group.
  std::vector<std::vector<std::string>> stages{{"cpu0"}};
  std::size_t element_size = 2;         // 4 for float, 2 for bf16 / f16
  std::int64_t max_context = 4096;      // KV cache capacity per sequence
  std::int64_t batch = 1;               // sequences with a cache each
  std::int64_t max_prompt = 0;          // tokens in one prefill; 0: max_context
  // What one prompt feeds the vision part, every image and video together,
  // in the model's vision units (Qwen2.5-VL: patches; InternVL: tiles;
  // MiniCPM-V: slices), or in pixels, converted by the model (the larger
  // of the two wins).
  std::int64_t max_vision_units = 0;
  std::int64_t max_image_pixels = 0;
  // Deprecated: the old name of max_vision_units (Qwen2.5-VL's units are
  // patches); the larger of the two is used.
  std::int64_t max_image_patches = 0;
  std::map<std::string, std::uint64_t> budgets;  // device -> bytes; absent: unlimited
  Strategy strategy = Strategy::balanced;
  Pins pins;
  std::string communicator = "in-process";  // named in the table for tensor-parallel groups
  // All ranks in this process (the in-process communicator, or NCCL over
  // one process's GPUs): the vision part and the head run once, on the
  // first device of their stage. false under MPI: every rank's process
  // holds its own vision part and computes the logits.
  bool one_process = true;
  // Bytes of the processor's outputs kept on the host (Host = cpu0) for the
  // whole run, charged to cpu0 when it is one of the plan's devices; unset:
  // the model's host bytes per vision unit x the units.
  std::optional<std::uint64_t> host_input_bytes;
};

// One row of the module table: a part of the model and where it lives.
struct ModuleRow {
  std::string module;                // "vision tower + merger", "layers 0-13", ...
  std::size_t stage = 0;
  std::uint64_t bytes_per_device = 0;  // on each device of the stage
};

struct DeviceFigures {
  std::string device;
  std::size_t stage = 0;
  std::uint64_t weights = 0, kv = 0, activations = 0;
  std::optional<std::uint64_t> budget;

  std::uint64_t peak() const noexcept { return weights + kv + activations; }
  bool fits() const noexcept { return !budget || peak() <= *budget; }
};

struct Plan {
  std::string model;
  Strategy strategy = Strategy::balanced;
  std::size_t element_size = 2;
  std::vector<std::vector<std::string>> stages;
  Layout layout;
  std::vector<ModuleRow> modules;
  std::vector<DeviceFigures> devices;  // in stage order
  std::string communicator;
  std::vector<std::string> ignored;   // checkpoint tensors the model does not load
  // Why a stage holds no decoder layers (the strategy, a budget), one line
  // each; printed under the table.
  std::vector<std::string> notes;

  const DeviceFigures& device(std::string_view name) const {
    for (const auto& d : devices) {
      if (d.device == name) return d;
    }
    throw ValueError(tessera::detail::concat("plan for ", model, ": no device '", name, "'"));
  }

  // The module table, the per-device figures, one line per tensor-parallel
  // group and the notes (see docs/placement.md for an example).
  std::string table() const;
};

// ---- implementation -------------------------------------------------------------

namespace plan_detail {

using tessera::detail::concat;
using u64 = std::uint64_t;

// Budgets absent mean unlimited; accelerate's arithmetic needs a number,
// one far above any device that leaves room for sums.
inline constexpr std::int64_t kUnlimited = std::int64_t{1} << 56;

// The description's role for `name`, its layer index checked.
inline TensorRole role_of(const ModelDescription& m, const std::string& name) {
  const TensorRole role = m.role(name);
  if (role.part == TensorPart::layer && (role.layer < 0 || role.layer >= m.decoder.layers)) {
    throw PlanError(concat("plan for ", m.name, ": the model's description puts tensor '", name, "' in decoder layer ",
                           role.layer, ", but the language model has ", m.decoder.layers, " layers"));
  }
  return role;
}

// Bytes of a tensor on one device of a group of `tp`.
inline u64 device_bytes(std::int64_t numel, TensorSplit split, std::size_t tp, std::size_t elem) {
  const auto n = static_cast<u64>(numel);
  return (split == TensorSplit::replicated ? n : n / tp) * elem;
}

// Weight bytes per device, per part, for a group size.
struct PartBytes {
  u64 vision = 0, embed = 0, head = 0;
  std::vector<u64> layers;
};

inline PartBytes part_bytes(const ModelDescription& m, std::size_t tp, std::size_t elem) {
  PartBytes out;
  out.layers.assign(static_cast<std::size_t>(m.decoder.layers), 0);
  for (const auto& [name, numel] : m.tensors) {
    const TensorRole c = role_of(m, name);
    const u64 b = device_bytes(numel, c.split, tp, elem);
    switch (c.part) {
      case TensorPart::vision: out.vision += b; break;
      case TensorPart::embed: out.embed += b; break;
      case TensorPart::head: out.head += b; break;
      case TensorPart::layer: out.layers[static_cast<std::size_t>(c.layer)] += b; break;
      case TensorPart::ignored: break;
    }
  }
  return out;
}

// What the activation bound depends on.
struct Workload {
  u64 e = 4;            // element size
  u64 batch = 1;        // sequences
  u64 prompt = 0;       // tokens per sequence in the prefill
  u64 context = 0;      // KV capacity per sequence: keys a decode step attends to
  u64 units = 0;        // vision units through the vision part in one prefill (all items)
  u64 host_inputs = 0;  // processor outputs kept on the host for the run
  u64 staging = 0;      // the largest tensor a non-CPU device stages on the host while loading
  bool one_process = true;
  bool in_process_reduce = true;  // tensor-parallel sums staged on the group's first device
};

// One forward step as the shared decoder runs it (models/decoder.hpp),
// device by device, with the vision pass the description costs: what each
// device holds above its weights and KV cache at its worst moment. Devices
// are numbered in stage order; `carry` is what stays alive on a device from
// one phase to the next, at() records carry + a transient.
class Simulation {
 public:
  Simulation(const ModelDescription& m, const PlanRequest& r, const Layout& layout, const Workload& w)
      : m_(m), r_(r), layout_(layout), w_(w) {
    for (std::size_t s = 0; s < r.stages.size(); ++s) {
      first_.push_back(names_.size());
      for (const auto& d : r.stages[s]) {
        if (d == "cpu0") host_ = names_.size();
        names_.push_back(d);
      }
    }
    peak_.assign(names_.size(), 0);
  }

  // Peaks of the prefill and of every decode step after it.
  std::vector<u64> run() {
    const u64 V = static_cast<u64>(m_.decoder.vocab), e = w_.e;
    const u64 S = w_.batch * w_.prompt;
    std::vector<u64> carry(names_.size(), 0);
    add_host(carry, w_.host_inputs);
    at(carry, host_, w_.staging);  // loading: one tensor staged for a CUDA device
    step(carry, S, w_.prompt, w_.prompt, m_.decoder.mrope, w_.units);
    // Decode: the previous step's logits (the prefill's, at first) are
    // alive on the output device and each sequence's last row, as float,
    // on the host while the next step runs.
    std::vector<u64> decode(names_.size(), 0);
    add_host(decode, w_.host_inputs + 4 * V * w_.batch);
    decode[first_[0]] += S * V * e;
    step(decode, w_.batch, 1, w_.context, false, 0);
    return peak_;
  }

 private:
  void at(const std::vector<u64>& carry, std::size_t d, u64 bytes) {
    if (d < names_.size()) peak_[d] = std::max(peak_[d], carry[d] + bytes);
  }
  void add_host(std::vector<u64>& carry, u64 bytes) const {
    if (host_ < names_.size()) carry[host_] += bytes;
  }
  std::size_t dev(std::size_t s, std::size_t rank) const { return first_[s] + rank; }
  std::size_t ranks(std::size_t s) const { return r_.stages[s].size(); }
  // The ranks that run what one rank of a stage runs (the vision part, the
  // head): the first in one process, each its own under MPI.
  std::size_t single_ranks(std::size_t s) const { return w_.one_process ? 1 : ranks(s); }

  // One forward over S tokens (Sq query rows and Lk keys per sequence):
  // the vision part over `units`, the embeddings, each stage's layers, the
  // head. Rotary positions [3, S] for M-RoPE, [S] else.
  void step(std::vector<u64> carry, u64 S, u64 Sq, u64 Lk, bool mrope, u64 units) {
    const DecoderShape& c = m_.decoder;
    const u64 e = w_.e, H = static_cast<u64>(c.hidden), V = static_cast<u64>(c.vocab);
    const u64 hd = static_cast<u64>(c.head_dim), SH = S * H * e;
    const auto widen = [e](u64 m, u64 k, u64 n) { return gemm_widening_bytes(e, m, k, n); };
    add_host(carry, mrope ? 24 * S : 8 * S);  // positions, made before the vision part runs
    const std::size_t n = r_.stages.size();

    // The vision part, as the model costs it; its features stay on its device.
    std::vector<bool> tower(names_.size(), false);
    u64 features = 0;
    if (m_.vision && m_.vision->cost && units > 0) {
      const VisionCost cost = m_.vision->cost(units, static_cast<std::size_t>(e));
      std::vector<u64> transient(names_.size(), 0);
      if (host_ < names_.size()) transient[host_] += cost.host_transient;
      for (std::size_t q = 0; q < single_ranks(layout_.vision_stage); ++q) {
        const std::size_t d = dev(layout_.vision_stage, q);
        tower[d] = true;
        transient[d] += cost.device_transient;
      }
      for (std::size_t d = 0; d < names_.size(); ++d) at(carry, d, transient[d]);
      features = cost.features;
      for (std::size_t d = 0; d < names_.size(); ++d) {
        if (tower[d]) carry[d] += features;
      }
    }

    // The language model: ids on the host, then the embedding stage.
    add_host(carry, 8 * S);
    for (std::size_t q = 0; q < ranks(layout_.embed_stage); ++q) {
      const std::size_t d = dev(layout_.embed_stage, q);
      const u64 copy = features > 0 && !tower[d] ? features : 0;  // to<> of the features before they are written in
      at(carry, d, SH + std::max(8 * S, copy));
      carry[d] += SH;
    }
    std::size_t current = layout_.embed_stage;  // the stage holding the residual stream
    for (std::size_t s = 0; s < n; ++s) {
      if (std::count(layout_.layer_stage.begin(), layout_.layer_stage.end(), s) == 0) continue;
      // Crossing into the stage copies the stream to each of its devices;
      // the source stays alive (it is run_from's argument) to the end.
      if (s != current) {
        for (std::size_t q = 0; q < ranks(s); ++q) carry[dev(s, q)] += SH;
      }
      current = s;
      const u64 t = ranks(s);
      const u64 qd = static_cast<u64>(c.heads) * hd / t;
      const u64 kd = static_cast<u64>(c.kv_heads) * hd / t;
      const u64 It = static_cast<u64>(c.intermediate) / t;
      // Rotary tables [S, hd] cos and sin (float): built on the device from
      // the positions (M-RoPE composes three axes' tables), or for a scaled
      // variant computed on the host and copied over.
      const u64 tables = 8 * S * hd;
      const u64 tables_build = c.host_rope_tables ? tables : (mrope ? 24 * S + 32 * S * hd : 8 * S + tables);
      const u64 attention = S * e * (2 * qd + 3 * kd) + S * qd * e * (w_.batch > 1 ? 2 : 1) + SH +
                            (e != 4 ? 4 * (Sq * qd + 2 * Lk * kd) : 0);
      const u64 mlp = 3 * S * It * e + SH;
      const u64 widest = std::max({widen(S, H, qd), widen(S, H, kd), widen(S, qd, H), widen(S, H, It), widen(S, It, H)});
      for (std::size_t q = 0; q < t; ++q) {
        const std::size_t d = dev(s, q);
        // In-process all-reduce: the first device holds the running sum, a
        // copy of the next part and the new sum; the others their part and
        // the copy of the sum.
        const u64 reduce = t > 1 && w_.in_process_reduce ? (q == 0 ? 3 * SH : 2 * SH) : 0;
        if (c.host_rope_tables && d != host_) at(carry, host_, tables);
        at(carry, d, tables_build);
        // Residual, tables and normed h; then attention (its all-reduce),
        // then the MLP (its all-reduce, the residual add and norm) while the
        // layer's attention output is still alive.
        const u64 attention_step = std::max(attention + widest, reduce);
        const u64 mlp_step = SH + std::max({mlp + widest, reduce, 2 * SH});
        at(carry, d, tables + SH + std::max(attention_step, mlp_step));
      }
    }

    // The head: the stream copied to every device of its stage (unless it
    // is there), the final norm and lm_head on the first rank, the logits
    // copied to the output device (the first device of stage 0).
    const std::size_t hs = layout_.head_stage;
    if (hs != current) {
      for (std::size_t q = 0; q < ranks(hs); ++q) carry[dev(hs, q)] += SH;
    }
    const u64 logits = S * V * e;
    const std::size_t out = dev(0, 0);
    for (std::size_t q = 0; q < single_ranks(hs); ++q) {
      const std::size_t d = dev(hs, q);
      at(carry, d, SH + logits + widen(S, H, V));
      if (d == out) {
        at(carry, d, SH + 2 * logits);
      } else {
        at(carry, d, SH + logits);
        at(carry, out, logits);
      }
    }
    // Several sequences: each one's rows sliced out of the logits.
    if (w_.batch > 1) at(carry, out, 2 * logits);
  }

  const ModelDescription& m_;
  const PlanRequest& r_;
  const Layout& layout_;
  Workload w_;
  std::vector<std::string> names_;
  std::vector<std::size_t> first_;
  std::size_t host_ = static_cast<std::size_t>(-1);
  std::vector<u64> peak_;
};

inline std::string join(const std::vector<std::string>& v, std::string_view sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? std::string(sep) : std::string()) + v[i];
  return out;
}

inline std::string part_name(const ModelDescription& m, std::string_view part) {
  if (part == "head") return m.decoder.tied ? "final norm (lm_head tied to the embeddings)" : "final norm + lm_head";
  if (part == "vision") return m.vision ? m.vision->label : "vision";
  return "embeddings";
}

// Vision units of one prompt: max_vision_units (or its old name), or the
// model's conversion of max_image_pixels, whichever is larger.
inline u64 vision_units(const ModelDescription& m, const PlanRequest& r) {
  if (!m.vision) return 0;
  u64 units = static_cast<u64>(std::max(r.max_vision_units, r.max_image_patches));
  if (r.max_image_pixels > 0) {
    if (!m.vision->units_for_pixels) {
      throw PlanError(concat("plan for ", m.name, ": max_image_pixels is given, but the model's description does not "
                             "convert pixels to vision units; give max_vision_units instead"));
    }
    units = std::max(units, m.vision->units_for_pixels(static_cast<u64>(r.max_image_pixels)));
  }
  return units;
}

// ---- checks -------------------------------------------------------------

inline void check_request(const ModelDescription& m, const PlanRequest& r) {
  const auto fail = [&](const std::string& what) { throw PlanError(concat("plan for ", m.name, ": ", what)); };
  if (r.element_size != 2 && r.element_size != 4) {
    throw ValueError(concat("plan for ", m.name, ": element_size must be 2 (bf16, f16) or 4 (float), got ",
                            r.element_size));
  }
  if (r.stages.empty()) fail("no stages: give at least one device");
  if (r.max_context <= 0 || r.batch <= 0 || r.max_prompt < 0 || r.max_vision_units < 0 || r.max_image_patches < 0 ||
      r.max_image_pixels < 0) {
    fail(concat("max_context (", r.max_context, ") and batch (", r.batch,
                ") must be positive and max_prompt, max_vision_units, max_image_pixels not negative"));
  }
  if (r.max_prompt > r.max_context) {
    fail(concat("max_prompt ", r.max_prompt, " exceeds the KV cache capacity max_context ", r.max_context));
  }
  const DecoderShape& c = m.decoder;
  if (c.layers <= 0 || c.heads <= 0 || c.kv_heads <= 0 || c.head_dim <= 0 || c.hidden <= 0 || c.vocab <= 0) {
    fail("the model's description has no decoder shape (layers, heads, kv_heads, head_dim, hidden, vocab)");
  }
  if (static_cast<std::int64_t>(r.stages.size()) > c.layers) {
    fail(concat(r.stages.size(), " stages for ", c.layers, " decoder layers: a stage needs at least one layer"));
  }
  std::set<std::string> seen;
  for (std::size_t s = 0; s < r.stages.size(); ++s) {
    const auto& group = r.stages[s];
    if (group.empty()) fail(concat("stage ", s, " has no device"));
    for (const auto& d : group) {
      if (!seen.insert(d).second) fail(concat("device '", d, "' appears twice in the stages"));
    }
    const auto t = static_cast<std::int64_t>(group.size());
    if (t > 1 && (c.heads % t != 0 || c.kv_heads % t != 0)) {
      fail(concat("stage ", s, " is a tensor-parallel group of ", t, " devices (", join(group),
                  "), which must divide the language model's num_attention_heads ", c.heads,
                  " and num_key_value_heads ", c.kv_heads));
    }
    if (t > 1 && c.intermediate % t != 0) {
      fail(concat("stage ", s, " is a tensor-parallel group of ", t, " devices (", join(group),
                  "), which must divide the language model's intermediate_size ", c.intermediate));
    }
  }
  for (const auto& [device, bytes] : r.budgets) {
    if (!seen.contains(device)) {
      fail(concat("a budget is given for device '", device, "', which is in no stage (stages: ",
                  [&] {
                    std::vector<std::string> all(seen.begin(), seen.end());
                    return join(all);
                  }(),
                  ")"));
    }
  }
}

// Stages of the vision part, embeddings and head, checked.
inline Layout pinned(const ModelDescription& m, const PlanRequest& r) {
  const auto fail = [&](const std::string& what) { throw PlanError(concat("plan for ", m.name, ": ", what)); };
  Pins p = r.pins;
  if (m.decoder.tied) {
    if (p.embed && p.head && *p.embed != *p.head) {
      fail(concat("the embeddings are tied to lm_head (tie_word_embeddings), so they must share a stage, but the "
                  "embeddings are pinned to stage ", *p.embed, " and the final norm + lm_head to stage ", *p.head));
    }
    if (!p.embed) p.embed = p.head;
    if (!p.head) p.head = p.embed;
  }
  Layout layout;
  layout.vision_stage = p.vision.value_or(0);
  layout.embed_stage = p.embed.value_or(0);
  layout.head_stage = p.head.value_or(0);
  const std::size_t n = r.stages.size();
  for (const auto& [what, stage] : {std::pair{"the vision tower", layout.vision_stage},
                                    std::pair{"the embeddings", layout.embed_stage},
                                    std::pair{"the final norm + lm_head", layout.head_stage}}) {
    if (stage >= n) fail(concat(what, " is pinned to stage ", stage, " but the request has ", n, " stage(s) (0..",
                                n - 1, ")"));
  }
  return layout;
}

// ---- assignment -------------------------------------------------------------

struct StageCosts {
  std::vector<u64> pinned;       // per device of the stage (its worst device)
  std::vector<u64> activations;  // assuming the stage holds layers
  std::vector<u64> layer_unit;   // one layer's weights + KV per device
};

inline std::int64_t stage_budget(const PlanRequest& r, std::size_t s) {
  std::int64_t budget = kUnlimited;
  for (const auto& d : r.stages[s]) {
    if (const auto it = r.budgets.find(d); it != r.budgets.end()) {
      budget = std::min(budget, static_cast<std::int64_t>(std::min<u64>(it->second, kUnlimited)));
    }
  }
  return budget;
}

// What stage s's budget leaves for layers after its activations and pinned parts.
inline std::int64_t room_for_layers(const PlanRequest& r, const StageCosts& costs, std::size_t s) {
  return stage_budget(r, s) - static_cast<std::int64_t>(costs.activations[s]) -
         static_cast<std::int64_t>(costs.pinned[s]);
}

inline bool can_hold_a_layer(const PlanRequest& r, const StageCosts& costs, std::size_t s) {
  return room_for_layers(r, costs, s) >= static_cast<std::int64_t>(costs.layer_unit[s]);
}

// The module that holds a layer's tensors: their longest common dotted
// prefix ("model.layers.3"), or a made-up one when they have none.
inline std::string layer_module(const std::vector<std::string>& names, std::int64_t layer) {
  const auto parent = [](const std::string& name) {
    const auto dot = name.rfind('.');
    return dot == std::string::npos ? std::string() : name.substr(0, dot);
  };
  std::string prefix = names.empty() ? std::string() : parent(names.front());
  for (const auto& name : names) {
    while (!prefix.empty() && !name.starts_with(prefix + ".")) prefix = parent(prefix);
  }
  return prefix.empty() ? concat("decoder_layers.", layer) : prefix;
}

// A module tree of the whole model with per-device sizes (of a group of
// `tp`), for get_balanced_memory: each decoder layer, with its KV cache as
// a pseudo-parameter, is a no-split unit of class "DecoderLayer". The
// pinned parts count in the total but are not no-split units: they are
// never spread, so their size must not widen the balance's buffer (a
// vision part as one unit would add 1.25 x its bytes to every capped
// stage's share; accelerate's own no-split classes for Qwen2.5-VL are the
// decoder layer and the vision *block*, smaller than a decoder layer).
inline accelerate::ModuleTree balance_tree(const ModelDescription& m, std::size_t tp, std::size_t elem, u64 kv_layer) {
  accelerate::ModuleTree tree;
  std::vector<std::vector<std::string>> layer_names(static_cast<std::size_t>(m.decoder.layers));
  for (const auto& [name, numel] : m.tensors) {
    const TensorRole c = role_of(m, name);
    if (c.part == TensorPart::ignored) continue;
    tree.add_parameter(name, static_cast<std::int64_t>(device_bytes(numel, c.split, tp, elem)));
    if (c.part == TensorPart::layer) layer_names[static_cast<std::size_t>(c.layer)].push_back(name);
  }
  for (std::int64_t l = 0; l < m.decoder.layers; ++l) {
    const std::string layer = layer_module(layer_names[static_cast<std::size_t>(l)], l);
    tree.add_parameter(layer + ".kv_cache", static_cast<std::int64_t>(kv_layer));
    tree.set_class(layer, "DecoderLayer");
  }
  return tree;
}

// Caps on the bytes of layers (weights + KV per device) each stage may take.
inline std::vector<std::int64_t> layer_caps(const ModelDescription& m, const PlanRequest& r, const StageCosts& costs,
                                            std::size_t balance_tp, u64 kv_layer) {
  const std::size_t n = r.stages.size();
  std::vector<std::int64_t> caps(n);
  accelerate::MaxMemory memory;
  for (std::size_t s = 0; s < n; ++s) {
    memory.emplace_back(std::to_string(s), std::max<std::int64_t>(
                                               0, stage_budget(r, s) - static_cast<std::int64_t>(costs.activations[s])));
  }
  if (r.strategy == Strategy::balanced || r.strategy == Strategy::balanced_low_0) {
    memory = accelerate::get_balanced_memory(balance_tree(m, balance_tp, r.element_size, kv_layer), memory,
                                             {"DecoderLayer"}, r.strategy == Strategy::balanced_low_0);
  }
  for (std::size_t s = 0; s < n; ++s) caps[s] = memory[s].second - static_cast<std::int64_t>(costs.pinned[s]);
  return caps;
}

// The stages that get at least one layer whatever their cap says: under
// balanced every stage, under balanced_low_0 every stage but the first
// (which that strategy keeps light on purpose), as long as the stage's
// budget holds one layer. A pipeline stage without layers runs nothing.
inline std::vector<bool> layer_floor(const PlanRequest& r, const StageCosts& costs) {
  std::vector<bool> out(r.stages.size(), false);
  for (std::size_t s = 0; s < out.size(); ++s) {
    const bool wanted = r.strategy == Strategy::balanced || (r.strategy == Strategy::balanced_low_0 && s > 0);
    out[s] = wanted && can_hold_a_layer(r, costs, s);
  }
  return out;
}

// Contiguous greedy fill (infer_auto_device_map over a list of no-split
// layers, without the offload reserve): a stage takes layers while they fit
// its cap, and at least one when `floor` says so, but leaves one for each
// later stage in `floor`; what fits nowhere stays on the last stage.
inline std::vector<std::size_t> fill(const std::vector<std::int64_t>& caps, const StageCosts& costs,
                                     std::int64_t layers, const std::vector<bool>& floor) {
  std::vector<std::size_t> out;
  std::size_t stage = 0;
  std::int64_t used = 0, taken = 0;
  const auto owed_after = [&](std::size_t s) {
    return static_cast<std::int64_t>(std::count(floor.begin() + static_cast<std::ptrdiff_t>(s) + 1, floor.end(), true));
  };
  for (std::int64_t l = 0; l < layers; ++l) {
    while (stage + 1 < caps.size()) {
      const bool room = used + static_cast<std::int64_t>(costs.layer_unit[stage]) <= caps[stage];
      const bool owed = floor[stage] && taken == 0;
      if ((room || owed) && layers - l > owed_after(stage)) break;
      ++stage;
      used = 0;
      taken = 0;
    }
    used += static_cast<std::int64_t>(costs.layer_unit[stage]);
    ++taken;
    out.push_back(stage);
  }
  return out;
}

// Budgets bind, balanced caps only guide: when a stage's layers exceed what
// its budget leaves (the last stage takes what fit nowhere before it), its
// first layers go back to the stage before it, stage by stage towards stage
// 0. Kept only if every stage then fits; otherwise the budget check reports
// the original assignment.
inline std::vector<std::size_t> within_budgets(std::vector<std::size_t> layer_stage, const PlanRequest& r,
                                               const StageCosts& costs) {
  const std::size_t n = r.stages.size();
  std::vector<std::int64_t> load(n, 0);
  for (const std::size_t s : layer_stage) load[s] += static_cast<std::int64_t>(costs.layer_unit[s]);
  const auto over = [&](std::size_t s) { return load[s] > room_for_layers(r, costs, s); };
  bool moved = false;
  std::vector<std::size_t> out = layer_stage;
  for (std::size_t s = n - 1; s > 0; --s) {
    for (std::size_t l = 0; l < out.size() && over(s); ++l) {
      if (out[l] != s) continue;
      out[l] = s - 1;
      load[s] -= static_cast<std::int64_t>(costs.layer_unit[s]);
      load[s - 1] += static_cast<std::int64_t>(costs.layer_unit[s - 1]);
      moved = true;
    }
  }
  for (std::size_t s = 0; s < n; ++s) {
    if (over(s)) return layer_stage;
  }
  return moved ? out : layer_stage;
}

// Why each stage without layers has none.
inline std::vector<std::string> empty_stage_notes(const ModelDescription& m, const PlanRequest& r,
                                                  const Layout& layout, const StageCosts& costs) {
  std::vector<std::string> notes;
  const std::size_t n = r.stages.size();
  if (n < 2) return notes;
  for (std::size_t s = 0; s < n; ++s) {
    if (std::count(layout.layer_stage.begin(), layout.layer_stage.end(), s) > 0) continue;
    const std::string which = concat("stage ", s, " (", join(r.stages[s]), ") holds no decoder layers: ");
    std::string why;
    if (!can_hold_a_layer(r, costs, s)) {
      const std::int64_t room = room_for_layers(r, costs, s);
      why = concat("one layer needs ", format_bytes(costs.layer_unit[s]), " per device (weights + KV cache), but its ",
                   "budget of ", format_bytes(static_cast<u64>(stage_budget(r, s))), " leaves ",
                   room > 0 ? format_bytes(static_cast<u64>(room)) : std::string("nothing"),
                   " after its activations (", format_bytes(costs.activations[s]), ") and pinned parts (",
                   format_bytes(costs.pinned[s]), ")");
    } else if (r.strategy == Strategy::sequential) {
      why = concat("the sequential strategy fills the stages in order, and the stages before it hold all ",
                   m.decoder.layers, " layers within their budgets; give them budgets, or use balanced");
    } else if (r.strategy == Strategy::balanced_low_0 && s == 0) {
      why = "balanced_low_0 keeps stage 0 for what the other stages cannot hold, and they hold every layer; use "
            "balanced to give it layers";
    } else if (r.strategy == Strategy::internvl_split) {
      why = concat("InternVL's split_model counts for ", m.decoder.layers, " layers on ", n,
                   " stages leave it none; use balanced");
    } else {
      why = concat("the ", strategy_name(r.strategy), " caps leave it none");
    }
    notes.push_back(which + why);
  }
  return notes;
}

// Where the vision part runs when its stage is a tensor-parallel group: on
// one device of it, whole (one copy per process under MPI), and why.
inline std::string unsplit_vision_note(const ModelDescription& m, const PlanRequest& r, const Layout& layout) {
  if (!m.vision) return {};
  const auto& group = r.stages[layout.vision_stage];
  if (group.size() < 2) return {};
  const std::string reason = m.vision->unsplit_reason ? m.vision->unsplit_reason(group.size())
                                                      : std::string("vision parts are never split over a group");
  const std::string where = r.one_process ? concat("on ", group.front(), " only")
                                          : std::string("on each process of the group (its own copy)");
  return concat("the ", m.vision->label, " runs whole ", where, " of stage ", layout.vision_stage, " (", join(group),
                "): ", reason);
}

inline std::string over_budget_message(const Plan& plan) {
  std::string over, within;
  for (const auto& d : plan.devices) {
    const std::string need = concat(d.device, " needs ", format_bytes(d.peak()), " (weights ", format_bytes(d.weights),
                                    " + KV ", format_bytes(d.kv), " + activations ", format_bytes(d.activations), ")");
    if (!d.fits()) {
      over += (over.empty() ? "" : "; ") + need + " but its budget is " + format_bytes(*d.budget);
    } else {
      within += (within.empty() ? "" : "; ") + need +
                (d.budget ? " within its budget of " + format_bytes(*d.budget) : std::string(", no budget"));
    }
  }
  return concat("plan for ", plan.model, " (", strategy_name(plan.strategy), ", element size ", plan.element_size,
                ") does not fit: ", over, within.empty() ? "" : "; the other devices: ", within);
}

}  // namespace plan_detail

// Plans a described model: the models' describe(dir) functions
// (models/decoder_description.hpp, models/qwen2_5_vl_description.hpp) give
// the description from a checkpoint directory.
inline Plan plan_model(const ModelDescription& m, const PlanRequest& r) {
  using namespace plan_detail;
  check_request(m, r);
  const std::size_t n = r.stages.size(), elem = r.element_size;
  const std::int64_t layers = m.decoder.layers;
  Layout layout = pinned(m, r);

  Workload work;
  work.e = elem;
  work.batch = static_cast<u64>(r.batch);
  work.prompt = static_cast<u64>(r.max_prompt > 0 ? r.max_prompt : r.max_context);
  work.context = static_cast<u64>(r.max_context);
  work.units = vision_units(m, r);
  work.one_process = r.one_process;
  work.in_process_reduce = !r.communicator.starts_with("mpi") && !r.communicator.starts_with("nccl");
  const bool has_host = std::any_of(r.stages.begin(), r.stages.end(), [](const auto& g) {
    return std::find(g.begin(), g.end(), "cpu0") != g.end();
  });
  if (has_host) {
    const u64 inputs = m.vision ? m.vision->host_bytes_per_unit * work.units : 0;
    work.host_inputs = r.host_input_bytes.value_or(inputs);
  }
  const auto kv_per_layer = [&](std::size_t tp) {
    return 2 * static_cast<u64>(r.max_context) * static_cast<u64>(r.batch) *
           (static_cast<u64>(m.decoder.kv_heads) / tp) * static_cast<u64>(m.decoder.head_dim) * elem;
  };

  std::vector<PartBytes> bytes;  // per stage, for its group size
  for (std::size_t s = 0; s < n; ++s) bytes.push_back(part_bytes(m, r.stages[s].size(), elem));
  // The ranks of the vision stage that hold the vision part: the first in
  // one process, every one under MPI (each process its own).
  const auto holds_tower = [&](std::size_t s, std::size_t rank) {
    return m.vision && layout.vision_stage == s && (rank == 0 || !r.one_process);
  };
  const auto pinned_bytes = [&](std::size_t s, std::size_t rank) {
    u64 pin = holds_tower(s, rank) ? bytes[s].vision : 0;
    if (layout.embed_stage == s) pin += bytes[s].embed;
    if (layout.head_stage == s) pin += bytes[s].head;
    return pin;
  };

  // Activations per stage for the layer assignment: a provisional layout
  // with layers on every stage, each stage's worst device.
  StageCosts costs;
  {
    Layout provisional = layout;
    provisional.layer_stage = Layout::even(layers, n).layer_stage;
    const std::vector<u64> peaks = Simulation(m, r, provisional, work).run();
    std::size_t d = 0;
    for (std::size_t s = 0; s < n; ++s) {
      u64 act = 0, pin = 0;
      for (std::size_t q = 0; q < r.stages[s].size(); ++q, ++d) {
        act = std::max(act, peaks[d]);
        pin = std::max(pin, pinned_bytes(s, q));
      }
      costs.pinned.push_back(pin);
      costs.activations.push_back(act);
      const u64 layer_weights =
          bytes[s].layers.empty() ? 0 : *std::max_element(bytes[s].layers.begin(), bytes[s].layers.end());
      costs.layer_unit.push_back(layer_weights + kv_per_layer(r.stages[s].size()));
    }
  }

  if (n == 1) {
    layout.layer_stage.assign(static_cast<std::size_t>(layers), 0);
  } else if (r.strategy == Strategy::internvl_split) {
    layout.layer_stage = internvl_contiguous_layers(layers, n);
  } else {
    // Sizes for balancing: per device of the groups when they are all one
    // size, full tensors otherwise.
    const bool uniform = std::all_of(r.stages.begin(), r.stages.end(),
                                     [&](const auto& g) { return g.size() == r.stages[0].size(); });
    const std::size_t balance_tp = uniform ? r.stages[0].size() : 1;
    layout.layer_stage = within_budgets(
        fill(layer_caps(m, r, costs, balance_tp, kv_per_layer(balance_tp)), costs, layers, layer_floor(r, costs)), r,
        costs);
  }
  layout.check(layers, n, m.name);

  Plan plan;
  plan.model = m.name;
  plan.strategy = r.strategy;
  plan.element_size = elem;
  plan.stages = r.stages;
  plan.communicator = r.communicator;
  plan.notes = empty_stage_notes(m, r, layout, costs);
  if (const std::string note = unsplit_vision_note(m, r, layout); !note.empty()) plan.notes.push_back(note);
  for (const auto& [name, numel] : m.tensors) {
    if (role_of(m, name).part == TensorPart::ignored) plan.ignored.push_back(name);
  }

  // Module rows in execution order.
  if (m.vision) plan.modules.push_back({part_name(m, "vision"), layout.vision_stage, bytes[layout.vision_stage].vision});
  plan.modules.push_back({part_name(m, "embed"), layout.embed_stage, bytes[layout.embed_stage].embed});
  for (std::size_t l = 0; l < layout.layer_stage.size();) {
    const std::size_t s = layout.layer_stage[l];
    std::size_t end = l;
    u64 sum = 0;
    while (end < layout.layer_stage.size() && layout.layer_stage[end] == s) sum += bytes[s].layers[end++];
    plan.modules.push_back({end - l == 1 ? concat("layer ", l) : concat("layers ", l, "-", end - 1), s, sum});
    l = end;
  }
  plan.modules.push_back({part_name(m, "head"), layout.head_stage, bytes[layout.head_stage].head});

  // Loading: a tensor for a device other than a CPU slot is staged on the
  // host (one at a time) before to<>.
  const auto on_gpu = [&](std::size_t s) {
    return std::any_of(r.stages[s].begin(), r.stages[s].end(), [](const std::string& d) { return !d.starts_with("cpu"); });
  };
  for (const auto& [name, numel] : m.tensors) {
    const TensorRole c = role_of(m, name);
    std::size_t s = 0;
    switch (c.part) {
      case TensorPart::vision: s = layout.vision_stage; break;
      case TensorPart::embed: s = layout.embed_stage; break;
      case TensorPart::head: s = layout.head_stage; break;
      case TensorPart::layer: s = layout.layer_stage[static_cast<std::size_t>(c.layer)]; break;
      case TensorPart::ignored: continue;
    }
    // Tied embeddings pinned apart: the head stage loads the table too.
    const bool head_copy = m.decoder.tied && c.part == TensorPart::embed && layout.embed_stage != layout.head_stage &&
                           on_gpu(layout.head_stage);
    if (has_host && (on_gpu(s) || head_copy)) work.staging = std::max(work.staging, static_cast<u64>(numel) * elem);
  }
  const std::vector<u64> peaks = Simulation(m, r, layout, work).run();
  std::size_t index = 0;
  for (std::size_t s = 0; s < n; ++s) {
    u64 layer_weights = 0, stage_layers = 0;
    for (std::size_t l = 0; l < layout.layer_stage.size(); ++l) {
      if (layout.layer_stage[l] == s) {
        layer_weights += bytes[s].layers[l];
        ++stage_layers;
      }
    }
    for (std::size_t q = 0; q < r.stages[s].size(); ++q, ++index) {
      DeviceFigures f;
      f.device = r.stages[s][q];
      f.stage = s;
      f.weights = pinned_bytes(s, q) + layer_weights;
      f.kv = stage_layers * kv_per_layer(r.stages[s].size());
      f.activations = peaks[index];
      if (const auto it = r.budgets.find(f.device); it != r.budgets.end()) f.budget = it->second;
      plan.devices.push_back(f);
    }
  }
  plan.layout = std::move(layout);
  if (std::any_of(plan.devices.begin(), plan.devices.end(), [](const auto& d) { return !d.fits(); })) {
    throw PlanError(over_budget_message(plan));
  }
  return plan;
}

inline std::string Plan::table() const {
  std::ostringstream os;
  char line[256];
  os << "plan for " << model << ": " << stages.size() << " stage(s), strategy " << strategy_name(strategy)
     << ", element size " << element_size << " bytes\n";
  std::snprintf(line, sizeof line, "%-44s %5s  %-24s %14s\n", "module", "stage", "devices", "bytes/device");
  os << line;
  for (const auto& row : modules) {
    std::snprintf(line, sizeof line, "%-44s %5zu  %-24s %14s\n", row.module.c_str(), row.stage,
                  plan_detail::join(stages[row.stage]).c_str(), format_bytes(row.bytes_per_device).c_str());
    os << line;
  }
  os << "\n";
  std::snprintf(line, sizeof line, "%-10s %5s %12s %12s %12s %15s %12s %12s\n", "device", "stage", "weights",
                "KV cache", "activations", "predicted peak", "budget", "headroom");
  os << line;
  for (const auto& d : devices) {
    std::string headroom = "-";
    if (d.budget) {
      headroom = d.fits() ? format_bytes(*d.budget - d.peak()) : "-" + format_bytes(d.peak() - *d.budget);
    }
    std::snprintf(line, sizeof line, "%-10s %5zu %12s %12s %12s %15s %12s %12s\n", d.device.c_str(), d.stage,
                  format_bytes(d.weights).c_str(), format_bytes(d.kv).c_str(), format_bytes(d.activations).c_str(),
                  format_bytes(d.peak()).c_str(), d.budget ? format_bytes(*d.budget).c_str() : "unlimited",
                  headroom.c_str());
    os << line;
  }
  for (std::size_t s = 0; s < stages.size(); ++s) {
    if (stages[s].size() > 1) {
      os << "tensor-parallel group, stage " << s << " (" << plan_detail::join(stages[s])
         << "): communicator " << communicator << "\n";
    }
  }
  for (const auto& note : notes) os << "note: " << note << "\n";
  return os.str();
}

}  // namespace tessera::placement
