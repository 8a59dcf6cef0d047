// tessera/io/checkpoint.hpp — a Hugging Face checkpoint directory: one
// model.safetensors, or shards listed by model.safetensors.index.json.
//
//   auto ckpt = io::Checkpoint::open("Qwen2-0.5B");
//   for (const auto& name : ckpt.names()) ...           // from the index
//   auto info = ckpt.info("model.norm.weight");         // dtype, shape, shard, bytes
//   auto w = ckpt.load<Cuda<0>, bf16>("model.embed_tokens.weight");
//
// The index ({"metadata": {"total_size": N}, "weight_map": {tensor: shard}})
// is the authority on which tensors exist. When a directory holds both
// model.safetensors and the index, model.safetensors is used, as
// transformers does.
//
// open() reads the index and checks that every shard file exists; it maps no
// shard. A shard is mapped and its header validated the first time one of
// its tensors is asked for (info, load, total_bytes, validate) and stays
// mapped for the life of the Checkpoint; at that point the shard and the
// index are cross-checked. validate() (and load_all(), before it loads
// anything) opens every shard, so all structural errors surface before any
// weight is read. Opening is thread-safe: several threads may load tensors
// of one Checkpoint at once.
//
// Loads read one tensor at a time: on a CPU slot straight from the mapping
// into the new tensor (converting F32/BF16/F16 to T); on a CUDA device
// through one tensor-sized host staging buffer, then to<D>. There is never a
// second copy of the whole model in host memory.
//
// Errors (each names the directory, and the file and tensor where they
// apply):
//   IoError      the directory is missing or not a directory; it holds
//                neither model.safetensors nor the index; a shard file named
//                by the index is missing; a file cannot be opened or mapped.
//   FormatError  the index is not valid JSON, not an object, has no
//                "weight_map" object, maps a tensor to something that is not
//                a plain file name, or has a bad "metadata.total_size"; a
//                shard is not a valid safetensors file; a tensor the index
//                assigns to a shard is not in it; a tensor is stored in a
//                shard other than the one the index names (a tensor present
//                in two shards); a shard holds a tensor the index does not
//                list (only with ExtraTensors::error, see below).
//   ValueError   a tensor name the checkpoint does not have; a dtype load
//                does not convert.
//   ShapeError   load_into with a destination of another shape.
//
// Tensors in a shard but absent from the index: transformers ignores them
// (it loads what the model asks for and reports unused weights). tessera
// follows it by default but says so: they are not in names(), and a warning
// naming them goes to CheckpointOptions::on_warning (stderr by default).
// ExtraTensors::error makes them a FormatError, ExtraTensors::ignore
// silences the warning.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "config.hpp"
#include "progress.hpp"
#include "safetensors.hpp"

namespace tessera::io {

inline constexpr std::string_view kSingleCheckpointFile = "model.safetensors";
inline constexpr std::string_view kCheckpointIndexFile = "model.safetensors.index.json";

enum class ExtraTensors : std::uint8_t { warn, error, ignore };

struct CheckpointOptions {
  // What to do about shard tensors the index does not list.
  ExtraTensors extra_tensors = ExtraTensors::warn;
  // Receives warnings; default: "tessera: warning: ..." on stderr.
  std::function<void(const std::string&)> on_warning;
};

// One tensor of a checkpoint, from its shard's header.
struct CheckpointTensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  Shape shape;
  std::string shard;              // file name within the checkpoint directory
  std::uint64_t file_offset = 0;  // first byte of the data within the shard file
  std::uint64_t nbytes = 0;

  std::uint64_t file_end() const noexcept { return file_offset + nbytes; }
  std::int64_t numel() const noexcept { return shape.numel(); }
};

// The parsed model.safetensors.index.json.
struct CheckpointIndex {
  std::vector<std::string> shards;                              // sorted by file name
  std::map<std::string, std::size_t, std::less<>> weight_map;  // tensor -> index into shards
  std::optional<std::uint64_t> total_size;                      // metadata.total_size, if given
};

namespace detail {

// A shard name must be a plain file name in the checkpoint directory: an
// index must not be able to make us map "../../somewhere/else".
inline bool plain_file_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\\') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

// metadata.total_size: transformers writes an integer; some converters write
// a float with an integral value, which is accepted.
inline std::optional<std::uint64_t> read_total_size(const nlohmann::json& root, const std::string& where) {
  const auto meta = root.find("metadata");
  if (meta == root.end() || meta->is_null()) return std::nullopt;
  if (!meta->is_object()) {
    throw FormatError(concat("'", where, "': \"metadata\" must be a JSON object, but it is ", json_value_kind(*meta)));
  }
  const auto size = meta->find("total_size");
  if (size == meta->end() || size->is_null()) return std::nullopt;
  if (size->is_number_unsigned()) return size->get<std::uint64_t>();
  if (size->is_number_float()) {
    const double v = size->get<double>();
    if (v >= 0 && v < 1.8e19 && v == static_cast<double>(static_cast<std::uint64_t>(v))) {
      return static_cast<std::uint64_t>(v);
    }
  }
  throw FormatError(concat("'", where, "': \"metadata.total_size\" must be a non-negative integer, but it is ",
                           json_value_kind(*size), " (", json_excerpt(*size), ")"));
}

}  // namespace detail

// Parses and validates index JSON text; `where` names the file in messages.
// The fuzz target's entry point.
inline CheckpointIndex parse_checkpoint_index(std::string_view text, const std::string& where) {
  using detail::concat;
  const nlohmann::json root = detail::parse_json_text(text, where);
  if (!root.is_object()) {
    throw FormatError(concat("'", where, "': the index must be a JSON object, but it is ",
                             detail::json_value_kind(root)));
  }
  CheckpointIndex index;
  index.total_size = detail::read_total_size(root, where);
  const auto map = root.find("weight_map");
  if (map == root.end()) throw FormatError(concat("'", where, "': no \"weight_map\" (tensor name -> shard file)"));
  if (!map->is_object()) {
    throw FormatError(concat("'", where, "': \"weight_map\" must be a JSON object mapping tensor names to shard "
                             "files, but it is ", detail::json_value_kind(*map)));
  }
  if (map->empty()) throw FormatError(concat("'", where, "': \"weight_map\" is empty: the checkpoint has no tensors"));
  // Shards sorted by file name, as transformers orders them.
  std::map<std::string, std::size_t, std::less<>> shard_ids;
  for (auto it = map->begin(); it != map->end(); ++it) {
    const auto& shard = it.value();
    if (!shard.is_string() || !detail::plain_file_name(shard.get_ref<const std::string&>())) {
      throw FormatError(concat("'", where, "': \"weight_map\" entry '", it.key(),
                               "' must name a shard file in the checkpoint directory (a plain file name), but it is ",
                               detail::json_value_kind(shard), " (", detail::json_excerpt(shard), ")"));
    }
    shard_ids.emplace(shard.get_ref<const std::string&>(), 0);
  }
  for (auto& [file, id] : shard_ids) {
    id = index.shards.size();
    index.shards.push_back(file);
  }
  for (auto it = map->begin(); it != map->end(); ++it) {
    index.weight_map.emplace(it.key(), shard_ids.find(it.value().get_ref<const std::string&>())->second);
  }
  return index;
}

class Checkpoint {
 public:
  // Opens a checkpoint directory (see the top of this file).
  static Checkpoint open(const std::filesystem::path& dir, CheckpointOptions options = {}) {
    Checkpoint c;
    c.dir_ = dir;
    c.options_ = std::move(options);
    std::error_code ec;
    if (!std::filesystem::exists(dir, ec)) {
      throw IoError(c.msg("the checkpoint directory does not exist"));
    }
    if (!std::filesystem::is_directory(dir, ec)) throw IoError(c.msg("not a directory"));
    if (std::filesystem::is_regular_file(dir / kSingleCheckpointFile, ec)) {
      c.open_single();
    } else if (std::filesystem::is_regular_file(dir / kCheckpointIndexFile, ec)) {
      c.open_index();
    } else {
      throw IoError(c.msg("has neither ", kSingleCheckpointFile, " nor ", kCheckpointIndexFile, c.listing_hint()));
    }
    return c;
  }

  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::filesystem::path& directory() const noexcept { return dir_; }
  // True when the checkpoint is sharded (read through the index).
  bool sharded() const noexcept { return index_file_.has_value(); }
  // Shard file names, sorted ({"model.safetensors"} when single).
  std::vector<std::string> shards() const {
    std::vector<std::string> out;
    for (const auto& s : shards_) out.push_back(s->file);
    return out;
  }
  // metadata.total_size from the index, if it has one (not checked: HF
  // does not check it either; total_bytes() is the real sum).
  std::optional<std::uint64_t> declared_total_size() const noexcept { return declared_total_size_; }

  // Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(weight_map_.size());
    for (const auto& [name, shard] : weight_map_) out.push_back(name);
    return out;
  }
  std::size_t size() const noexcept { return weight_map_.size(); }
  bool contains(std::string_view name) const { return weight_map_.find(name) != weight_map_.end(); }

  // dtype, shape, shard and byte range of a tensor (maps its shard).
  CheckpointTensorInfo info(std::string_view name) const {
    const auto& [shard, tensor] = locate(name);
    return {tensor.name, tensor.dtype, tensor.shape, shard.file, shard.st->header().data_start + tensor.begin,
            tensor.nbytes()};
  }

  // Sum of every tensor's stored bytes (maps every shard).
  std::uint64_t total_bytes() const {
    std::uint64_t total = 0;
    for (const auto& [name, id] : weight_map_) total += opened(id).st->at(name).nbytes();
    return total;
  }

  // Maps every shard and cross-checks it with the index: every error the
  // checkpoint's structure can raise is raised here.
  void validate() const {
    for (std::size_t i = 0; i < shards_.size(); ++i) (void)opened(i);
  }

  // Reads tensor `name` into device D as T (see the top of this file).
  template <Device D, DType T>
  Tensor<D, T> load(std::string_view name) const {
    const auto& [shard, tensor] = locate(name);
    return shard.st->template load<D, T>(tensor);
  }

  // Reads the slice [begin, end) along `axis` of tensor `name` (a
  // tensor-parallel shard) into device D as T.
  template <Device D, DType T>
  Tensor<D, T> load_slice(std::string_view name, int axis, std::int64_t begin, std::int64_t end) const {
    const auto& [shard, tensor] = locate(name);
    return shard.st->template load_slice<D, T>(tensor, axis, begin, end);
  }

  // Reads tensor `name` into `out`, whose shape must match. On CPU slots the
  // data lands in out's storage; on other devices out is replaced by a
  // freshly loaded tensor (same shape, same device).
  template <Device D, DType T>
  void load_into(std::string_view name, Tensor<D, T>& out) const {
    const auto& [shard, tensor] = locate(name);
    if (!(out.shape() == tensor.shape)) {
      throw ShapeError(msg("tensor '", name, "' in shard '", shard.file, "' has shape ", tensor.shape.to_string(),
                           " but the destination Tensor<", device_name<D>(), ", ", tessera::dtype_name<T>(), "> has shape ",
                           out.shape().to_string()));
    }
    if constexpr (is_cpu_v<D>) {
      shard.st->load_into(tensor, out);
    } else {
      out = shard.st->template load<D, T>(tensor);
    }
  }

  // Loads `names` one at a time (shard by shard, in file order, so reads
  // stream through each mapping) and hands each tensor to
  // fn(const std::string& name, Tensor<D, T>&&). Validates the whole
  // checkpoint first. Shows a progress bar (see progress.hpp) for loads that
  // take over a second on a terminal.
  template <Device D, DType T, class Fn>
  void load_each(const std::vector<std::string>& names, Fn&& fn, const ProgressOptions& progress = {}) const {
    validate();
    std::vector<std::pair<std::pair<std::size_t, std::uint64_t>, const std::string*>> order;
    std::uint64_t total = 0;
    for (const auto& name : names) {
      const auto& [shard, tensor] = locate(name);
      order.push_back({{shard_id(name), tensor.begin}, &name});
      total += tensor.nbytes();
    }
    std::sort(order.begin(), order.end());
    ProgressBar bar("loading " + dir_.filename().string(), total, progress);
    for (const auto& [key, name] : order) {
      const auto& [shard, tensor] = locate(*name);
      fn(*name, shard.st->template load<D, T>(tensor));
      bar.advance(tensor.nbytes());
    }
    bar.finish();
  }

  // Every tensor, loaded into D as T, by name.
  template <Device D, DType T>
  std::map<std::string, Tensor<D, T>, std::less<>> load_all(const ProgressOptions& progress = {}) const {
    std::map<std::string, Tensor<D, T>, std::less<>> out;
    load_each<D, T>(names(), [&](const std::string& name, Tensor<D, T>&& t) { out.emplace(name, std::move(t)); },
                    progress);
    return out;
  }

 private:
  struct Shard {
    std::string file;
    std::once_flag once;
    std::optional<SafetensorsFile> st;  // set once, under `once`
  };
  struct Located {
    const Shard& shard;
    const TensorInfo& tensor;
  };

  Checkpoint() = default;

  template <class... Parts>
  std::string msg(const Parts&... parts) const {
    return detail::concat("checkpoint '", dir_.string(), "': ", parts...);
  }

  // "(it holds: pytorch_model.bin, ...)" to explain what is there instead.
  std::string listing_hint() const {
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) return " (the directory is empty)";
    std::string s = " (it holds: ";
    for (std::size_t i = 0; i < files.size() && i < 8; ++i) s += (i ? ", " : "") + files[i];
    if (files.size() > 8) s += ", ...";
    s += ")";
    const bool has_bin = std::any_of(files.begin(), files.end(), [](const std::string& f) {
      return f.ends_with(".bin") || f.ends_with(".pt") || f.ends_with(".pth");
    });
    if (has_bin) s += "; PyTorch pickle checkpoints are not read: convert them to safetensors";
    return s;
  }

  std::size_t add_shard(const std::string& file) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->file = file;
    return shards_.size() - 1;
  }

  // One file: its header is the list of tensors, so it is opened now.
  void open_single() {
    const std::size_t id = add_shard(std::string(kSingleCheckpointFile));
    const auto& shard = opened_unchecked(id);
    for (const auto& t : shard.st->tensors()) weight_map_.emplace(t.name, id);
  }

  void open_index() {
    const auto path = dir_ / kCheckpointIndexFile;
    index_file_ = path.string();
    const auto index = parse_checkpoint_index(detail::read_text_file(path, "checkpoint index"), path.string());
    declared_total_size_ = index.total_size;
    for (const auto& file : index.shards) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(dir_ / file, ec)) {
        throw IoError(msg("shard '", file, "' named by ", kCheckpointIndexFile, " (for tensor '",
                          first_tensor_of(index, shards_.size()), "'", tensors_in(index, shards_.size()),
                          ") does not exist in the directory"));
      }
      add_shard(file);
    }
    weight_map_ = index.weight_map;
  }

  static std::string first_tensor_of(const CheckpointIndex& index, std::size_t id) {
    for (const auto& [name, shard] : index.weight_map) {
      if (shard == id) return name;
    }
    return {};
  }
  static std::string tensors_in(const CheckpointIndex& index, std::size_t id) {
    const auto n = std::count_if(index.weight_map.begin(), index.weight_map.end(),
                                 [&](const auto& e) { return e.second == id; });
    return n > 1 ? detail::concat(" and ", n - 1, " more") : std::string();
  }

  std::size_t shard_id(std::string_view name) const {
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end()) throw ValueError(msg("has no tensor '", name, "'", suggestion(name)));
    return it->second;
  }

  // " (did you mean 'model.visual.x'?)" when a listed name differs from the
  // requested one only by a leading prefix — the usual cause being the two
  // published layouts of a model (visual.* vs model.visual.*).
  std::string suggestion(std::string_view name) const {
    for (const auto& [candidate, shard] : weight_map_) {
      const std::string_view c = candidate;
      const bool c_longer = c.size() > name.size() && c.ends_with(name) && c[c.size() - name.size() - 1] == '.';
      const bool n_longer = name.size() > c.size() && name.ends_with(c) && name[name.size() - c.size() - 1] == '.';
      if (c_longer || n_longer) return detail::concat(" (it has ", weight_map_.size(), " tensors; did you mean '",
                                                      candidate, "'?)");
    }
    return detail::concat(" (it has ", weight_map_.size(), " tensors)");
  }

  Located locate(std::string_view name) const {
    const Shard& shard = opened(shard_id(name));
    return {shard, shard.st->at(name)};
  }

  // The shard, mapped and validated on first use (thread-safe; a failure
  // leaves it unopened, so the next use reports the same error again).
  const Shard& opened_unchecked(std::size_t id) const {
    Shard& shard = *shards_[id];
    std::call_once(shard.once, [&] { shard.st = SafetensorsFile::open(dir_ / shard.file); });
    return shard;
  }
  const Shard& opened(std::size_t id) const {
    Shard& shard = *shards_[id];
    std::call_once(shard.once, [&] {
      auto file = SafetensorsFile::open(dir_ / shard.file);
      cross_check(id, file);
      shard.st = std::move(file);
    });
    return shard;
  }

  // The index and one shard agree: every tensor the index puts in the shard
  // is there, and every tensor there is listed for this shard.
  void cross_check(std::size_t id, const SafetensorsFile& file) const {
    if (!index_file_) return;
    const std::string& shard = shards_[id]->file;
    for (const auto& [name, where] : weight_map_) {
      if (where == id && !file.find(name)) {
        throw FormatError(msg("tensor '", name, "' is listed in ", kCheckpointIndexFile, " for shard '", shard,
                              "', but that shard has no such tensor (it has ", file.tensors().size(), ")"));
      }
    }
    std::vector<std::string> extras;
    for (const auto& t : file.tensors()) {
      const auto it = weight_map_.find(t.name);
      if (it == weight_map_.end()) {
        extras.push_back(t.name);
      } else if (it->second != id) {
        throw FormatError(msg("tensor '", t.name, "' is stored in shard '", shard, "' but ", kCheckpointIndexFile,
                              " maps it to shard '", shards_[it->second]->file,
                              "': a tensor must be in exactly one shard, the one the index names"));
      }
    }
    if (!extras.empty()) report_extras(shard, extras);
  }

  void report_extras(const std::string& shard, const std::vector<std::string>& extras) const {
    if (options_.extra_tensors == ExtraTensors::ignore) return;
    std::string list;
    for (std::size_t i = 0; i < extras.size() && i < 5; ++i) list += (i ? ", '" : "'") + extras[i] + "'";
    if (extras.size() > 5) list += detail::concat(" and ", extras.size() - 5, " more");
    const std::string text = msg("shard '", shard, "' holds ", extras.size(), " tensor",
                                 extras.size() == 1 ? "" : "s", " that ", kCheckpointIndexFile,
                                 " does not list: ", list);
    if (options_.extra_tensors == ExtraTensors::error) throw FormatError(text);
    const std::string warning = text + "; they are ignored (as transformers does)";
    if (options_.on_warning) options_.on_warning(warning);
    else std::fprintf(stderr, "tessera: warning: %s\n", warning.c_str());
  }

  std::filesystem::path dir_;
  CheckpointOptions options_;
  std::optional<std::string> index_file_;
  std::optional<std::uint64_t> declared_total_size_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::map<std::string, std::size_t, std::less<>> weight_map_;
};

}  // namespace tessera::io
