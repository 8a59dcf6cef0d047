// tessera/placement/planner.hpp — the memory planner: where each part of a
// model goes and what each device will hold at peak, computed from the
// checkpoint's headers before a single weight is read.
//
//   PlanRequest req;
//   req.stages = {{"cpu0"}, {"cuda0", "cuda1"}};    // stage 1: tensor-parallel pair
//   req.element_size = 2;                           // bf16
//   req.max_context = 8192; req.max_prompt = 4096;  // KV capacity, one prefill
//   req.max_image_pixels = 1280 * 28 * 28;
//   req.budgets = {{"cuda0", parse_memory_size("20GiB")}, {"cuda1", parse_memory_size("20GiB")}};
//   const Plan plan = plan_qwen2_5_vl("Qwen2.5-VL-7B-Instruct", req);  // PlanError if it does not fit
//   std::cout << plan.table();
//   auto model = Model::load(dir, plan.layout);
//
// What goes where:
//   - the vision tower and merger, the token embeddings, and the final norm
//     with lm_head are pinned (stage 0 unless PlanRequest::pins says
//     otherwise; tied embeddings keep embed and lm_head on one stage);
//   - decoder layers are no-split units assigned in contiguous runs, one run
//     per stage, by the strategy (accelerate's semantics, accelerate.hpp):
//       sequential      fill stage 0 up to its budget, then stage 1, ...
//       balanced        get_balanced_memory's caps: every stage but the last
//                       gets total/n + 1.25 x one layer; the last is uncapped
//       balanced_low_0  the same with stage 0 holding only what the others
//                       cannot (get_balanced_memory(low_zero=True))
//       internvl_split  InternVL's split_model counts (stage 0 counted as
//                       half a stage for the vision tower), kept contiguous:
//                       see internvl_contiguous_layers;
//     layers that fit no stage stay on the last one, and the budget check
//     below reports it.
//
// Per device (a tensor-parallel group's devices each hold their share):
//   weights      numel x element_size of every tensor the model loads; in a
//                group of t devices q/k/v (weights and biases), gate and up
//                are split by rows and o_proj, down_proj by columns (1/t
//                each); embeddings, norms and lm_head are replicated; the
//                vision tower is held by the first device of its stage only
//                (one_process, the default), by every device under MPI
//                (one_process = false: each process loads its own);
//   KV cache     2 x layers x max_context x batch x (kv_heads / t) x head_dim
//                x element_size, allocated whole before the prefill;
//   activations  the most the device holds above its weights and cache at
//                any moment of one prefill (batch x max_prompt tokens, one
//                vision pass over max_image_patches: every image and video
//                of the prompt) and of the decode steps after it, from what
//                the model code allocates and frees (see "Activation bound");
//   peak         weights + KV cache + activations, checked against the
//                device's budget. Over budget on any device: PlanError naming
//                every device's need and budget.
//
// Activation bound. The planner walks one forward step phase by phase,
// device by device (plan_detail::Simulation): what a phase leaves alive is
// carried to the next, each phase's transient is added on top, and a
// device's figure is its largest carry + transient. e = element_size,
// S = tokens in the step, H = hidden, V = vocab, hd = head_dim, t = group
// size, qd = heads*hd/t, kd = kv_heads*hd/t, It = intermediate/t, SH = S H e,
// W(m,k,n) = 4(mk + kn + mn) when e != 4, else 0 (a half-precision GEMM's
// float copies). Host = cpu0: host allocations are charged to cpu0 when it
// is one of the plan's devices.
//   all run      cpu0: host_input_bytes (the processor's pixel values, kept
//                by the caller; default 4 x max_image_patches x patch_dim)
//                and, while loading, the largest tensor a non-CPU device
//                stages on the host;
//   positions    cpu0: 24S ([3, S] M-RoPE) or 8S, then 8S ids;
//   vision       N patches, M = N/merge^2: cpu0 4N pd (concatenated pixels)
//                + I (index tensors, I = 16M + 16N + 8(M + 1)); the tower's
//                device 4N pd + [e != 4] N pd e + I + 8N hv (rotary tables)
//                + max(8N hv, 2NHv e + max(7NHv e + [e != 4] 12NHv,
//                2NHv e + 3NIv e), 2NHv e + max(2M uH e + M Ho e, 2M Ho e))
//                + max W (uH = merge^2 Hv, Ho = out_hidden_size); its
//                features M H e stay there for the rest of the prefill;
//   embeddings   every device of the embed stage: SH + max(8S, M H e when
//                the features are copied in), then SH carried;
//   stage        entering a stage copies the stream (SH) to each of its
//                devices and the source copy stays alive to the end of the
//                step; each device: rotary tables being built (24S + 32S hd,
//                plain RoPE 8S + 8S hd), then residual + tables (8S hd) + h
//                (SH) + max(attention, SH + mlp) with
//                attention = max(Se(2qd + 3kd) + Sqd e (x2 when batch > 1) +
//                SH + [e != 4] 4(Sq qd + 2 Lk kd) + max W, reduce),
//                mlp = max(3S It e + SH + max W, reduce, 2SH) (the layer's
//                attention output is alive during its MLP), reduce = the
//                in-process all-reduce: 3SH on the group's first device
//                (sum, copy of a part, new sum), 2SH on the others (none
//                for an "mpi" or "nccl" communicator);
//   head         the stream copied to the head stage's devices (SH each)
//                unless it is there; its first device (every device under
//                MPI): SH + SVe + W(S, H, V), then the logits' copy SVe on
//                the output device (the first device of stage 0); batch > 1
//                adds per-sequence slices (SVe) there;
//   decode       the same with S = batch, Sq = 1, Lk = max_context (keys a
//                step attends to), plain RoPE, no vision, while the previous
//                step's logits (the prefill's: batch x max_prompt x V x e)
//                stay on the output device and each sequence's last row
//                (4V) on cpu0.
// Errors: PlanError for a plan that does not fit, a tensor-parallel group
// that does not divide the language model's attention or key-value heads
// (or its intermediate size), a pin to a stage that does not exist, tied
// embeddings pinned apart, more stages than decoder layers, a device in two
// stages, a budget for a device in no stage. ValueError for a bad strategy
// name or element size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
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
#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../models/qwen2_5_vl.hpp"
#include "accelerate.hpp"
#include "layout.hpp"
#include "memory_size.hpp"

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

// ---- InternVL's split_model (reference/model-specs.md B.7) -------------------

struct InternVLSplit {
  std::vector<std::int64_t> layers_per_gpu;  // num_layers_per_gpu as the recipe computes it
  std::vector<std::size_t> layer_gpu;        // GPU of each layer, after the recipe's overrides
};

// The model-card recipe:
//   per_gpu = ceil(num_layers / (world_size - 0.5))   (GPU 0 is half a GPU: it runs the ViT)
//   num_layers_per_gpu = [per_gpu] * world_size; num_layers_per_gpu[0] = ceil(per_gpu * 0.5)
//   layers handed out in order by those counts (counts past the last layer
//   name layers that do not exist and are ignored), then the last layer is
//   put back on GPU 0 with the embeddings, norm and output head.
inline InternVLSplit internvl_split_model(std::int64_t num_layers, std::size_t world_size) {
  if (num_layers <= 0 || world_size == 0) {
    throw PlanError(tessera::detail::concat("internvl_split_model: needs layers and GPUs, got ", num_layers, " layers on ",
                                   world_size, " GPUs"));
  }
  InternVLSplit out;
  const auto per_gpu = static_cast<std::int64_t>(
      std::ceil(static_cast<double>(num_layers) / (static_cast<double>(world_size) - 0.5)));
  out.layers_per_gpu.assign(world_size, per_gpu);
  out.layers_per_gpu[0] = static_cast<std::int64_t>(std::ceil(static_cast<double>(per_gpu) * 0.5));
  for (std::size_t gpu = 0; gpu < world_size; ++gpu) {
    for (std::int64_t j = 0; j < out.layers_per_gpu[gpu]; ++j) {
      if (static_cast<std::int64_t>(out.layer_gpu.size()) < num_layers) out.layer_gpu.push_back(gpu);
    }
  }
  // Counts that fall short (not with this arithmetic, but keep every layer placed).
  while (static_cast<std::int64_t>(out.layer_gpu.size()) < num_layers) out.layer_gpu.push_back(world_size - 1);
  out.layer_gpu.back() = 0;
  return out;
}

// tessera's pipeline needs each stage to hold one contiguous run of layers,
// so the internvl_split strategy keeps the recipe's counts but not its last
// step: stage 0 takes ceil(per_gpu / 2) layers, each next stage per_gpu,
// the last stage whatever remains (the final layer stays there instead of
// going back to stage 0).
inline std::vector<std::size_t> internvl_contiguous_layers(std::int64_t num_layers, std::size_t stages) {
  const InternVLSplit split = internvl_split_model(num_layers, stages);
  std::vector<std::size_t> out;
  for (std::size_t s = 0; s < stages; ++s) {
    for (std::int64_t j = 0; j < split.layers_per_gpu[s] && static_cast<std::int64_t>(out.size()) < num_layers; ++j) {
      out.push_back(s);
    }
  }
  while (static_cast<std::int64_t>(out.size()) < num_layers) out.push_back(stages - 1);
  return out;
}

// ---- requests and plans -----------------------------------------------------

// Stages for the parts that are not decoder layers; unset: stage 0 (the
// embeddings follow lm_head, or lm_head the embeddings, when they are tied
// and only one is set).
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
  std::int64_t max_image_patches = 0;   // patches of every image and video of one prompt, together
  std::int64_t max_image_pixels = 0;    // or pixels, converted to patches (the larger wins)
  std::map<std::string, std::uint64_t> budgets;  // device -> bytes; absent: unlimited
  Strategy strategy = Strategy::balanced;
  Pins pins;
  std::string communicator = "in-process";  // named in the table for tensor-parallel groups
  // All ranks in this process (the in-process communicator, or NCCL over
  // one process's GPUs): the vision tower and the head run once, on the
  // first device of their stage. false under MPI: every rank's process
  // holds its own tower and computes the logits.
  bool one_process = true;
  // Bytes of the processor's outputs kept on the host (Host = cpu0) for the
  // whole run, charged to cpu0 when it is one of the plan's devices; unset:
  // the float32 pixels of max_image_patches patches.
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

  const DeviceFigures& device(std::string_view name) const {
    for (const auto& d : devices) {
      if (d.device == name) return d;
    }
    throw ValueError(tessera::detail::concat("plan for ", model, ": no device '", name, "'"));
  }

  // The module table, the per-device figures and one line per
  // tensor-parallel group (see docs/placement.md for an example).
  std::string table() const;
};

// ---- the model, as the planner sees it ---------------------------------------

// Sizes of a Qwen2 decoder (optionally with a Qwen2.5-VL vision tower), and
// its tensors with the prefixes that sort them into parts.
struct ModelDescription {
  std::string name;  // for messages: the checkpoint directory
  io::Qwen2Config text;
  std::optional<models::qwen2_5_vl::VisionConfig> vision;
  std::string vision_prefix;           // "visual." or "model.visual."
  std::string text_prefix = "model.";  // where embed_tokens, layers, norm live
  std::string lm_head = "lm_head.weight";
  std::vector<std::pair<std::string, std::int64_t>> tensors;  // name, numel

  // Embeddings double as the output projection (no lm_head tensor).
  bool tied() const {
    return text.tie_word_embeddings &&
           std::none_of(tensors.begin(), tensors.end(), [&](const auto& t) { return t.first == lm_head; });
  }
};

// ---- implementation -------------------------------------------------------------

namespace plan_detail {

using tessera::detail::concat;
using u64 = std::uint64_t;

// Budgets absent mean unlimited; accelerate's arithmetic needs a number,
// one far above any device that leaves room for sums.
inline constexpr std::int64_t kUnlimited = std::int64_t{1} << 56;

enum class Part { vision, embed, layer, head, ignored };
enum class Split { replicated, rows, columns };

struct Classified {
  Part part = Part::ignored;
  std::int64_t layer = -1;
  Split split = Split::replicated;
};

inline Classified classify(const ModelDescription& m, const std::string& name) {
  if (m.vision && name.starts_with(m.vision_prefix)) return {Part::vision, -1, Split::replicated};
  if (name == m.lm_head) return {Part::head, -1, Split::replicated};
  const std::string& p = m.text_prefix;
  if (name.starts_with(p + "embed_tokens.")) return {Part::embed, -1, Split::replicated};
  if (name.starts_with(p + "norm.")) return {Part::head, -1, Split::replicated};
  const std::string layers = p + "layers.";
  if (!name.starts_with(layers)) return {};
  const auto dot = name.find('.', layers.size());
  if (dot == std::string::npos) return {};
  const std::string index = name.substr(layers.size(), dot - layers.size());
  if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos || index.size() > 9) return {};
  const std::int64_t layer = std::stoll(index);
  if (layer >= m.text.num_hidden_layers) return {};
  const std::string_view rest = std::string_view(name).substr(dot + 1);
  Split split = Split::replicated;
  for (const char* row : {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "mlp.gate_proj.",
                          "mlp.up_proj."}) {
    if (rest.starts_with(row)) split = Split::rows;
  }
  for (const char* col : {"self_attn.o_proj.", "mlp.down_proj."}) {
    if (rest.starts_with(col)) split = Split::columns;
  }
  return {Part::layer, layer, split};
}

// Bytes of a tensor on one device of a group of `tp`.
inline u64 device_bytes(std::int64_t numel, Split split, std::size_t tp, std::size_t elem) {
  const auto n = static_cast<u64>(numel);
  return (split == Split::replicated ? n : n / tp) * elem;
}

// Weight bytes per device, per part, for a group size.
struct PartBytes {
  u64 vision = 0, embed = 0, head = 0;
  std::vector<u64> layers;
};

inline PartBytes part_bytes(const ModelDescription& m, std::size_t tp, std::size_t elem) {
  PartBytes out;
  out.layers.assign(static_cast<std::size_t>(m.text.num_hidden_layers), 0);
  for (const auto& [name, numel] : m.tensors) {
    const Classified c = classify(m, name);
    const u64 b = device_bytes(numel, c.split, tp, elem);
    switch (c.part) {
      case Part::vision: out.vision += b; break;
      case Part::embed: out.embed += b; break;
      case Part::head: out.head += b; break;
      case Part::layer: out.layers[static_cast<std::size_t>(c.layer)] += b; break;
      case Part::ignored: break;
    }
  }
  return out;
}

// What the activation bound depends on.
struct Workload {
  u64 e = 4;          // element size
  u64 batch = 1;      // sequences
  u64 prompt = 0;     // tokens per sequence in the prefill
  u64 context = 0;    // KV capacity per sequence: keys a decode step attends to
  u64 patches = 0;    // through the vision tower in one prefill (all items)
  u64 host_inputs = 0;  // processor outputs kept on the host for the run
  u64 staging = 0;    // the largest tensor a non-CPU device stages on the host while loading
  bool one_process = true;
  bool in_process_reduce = true;  // tensor-parallel sums staged on the group's first device
};

inline u64 widen(u64 e, u64 m, u64 k, u64 n) { return e == 4 ? 0 : 4 * (m * k + k * n + m * n); }

inline u64 merged_tokens(const models::qwen2_5_vl::VisionConfig& v, u64 patches) {
  return patches / static_cast<u64>(v.merge_unit());
}

// Index tensors the vision tower derives from the grids (window_index,
// reverse_index [M] and rows, cols [N] int64, two int32 cu_seqlens of at
// most M + 1 entries): made on the host, copied to the tower's device.
inline u64 vision_index(const models::qwen2_5_vl::VisionConfig& v, u64 N) {
  const u64 M = merged_tokens(v, N);
  return 16 * M + 16 * N + 8 * (M + 1);
}

// The tower's own allocations on its device during one pass over N patches,
// on top of the index tensors: the pixels copied there (and cast), the
// rotary tables, then the blocks or the merger with what stays alive.
inline u64 vision_device(const models::qwen2_5_vl::VisionConfig& v, u64 e, u64 N) {
  if (N == 0) return 0;
  const u64 M = merged_tokens(v, N);
  const u64 Hv = static_cast<u64>(v.hidden_size), Iv = static_cast<u64>(v.intermediate_size);
  const u64 hv = static_cast<u64>(v.head_dim()), pd = static_cast<u64>(v.patch_dim());
  const u64 Ho = static_cast<u64>(v.out_hidden_size), uH = static_cast<u64>(v.merge_unit()) * Hv;
  const u64 pixels = 4 * N * pd + (e != 4 ? N * pd * e : 0);
  const u64 NH = N * Hv * e;
  // residual and h, then the larger of attention (qkv, rotated q and k,
  // output, projection: 7NHv e, with float q/k/v copies when e != 4) and the
  // MLP (gate, up, swiglu, down) while the block's attention output is
  // still alive.
  const u64 blocks = 2 * NH + std::max(7 * NH + (e != 4 ? 12 * N * Hv : 0), NH + 3 * N * Iv * e + NH);
  // residual and h stay alive through the merger: fc1, gelu, fc2, then the
  // reverse gather.
  const u64 merger = 2 * NH + std::max(2 * M * uH * e + M * Ho * e, 2 * M * Ho * e);
  const u64 widest = std::max({widen(e, N, pd, Hv), widen(e, N, Hv, 3 * Hv), widen(e, N, Hv, Iv),
                               widen(e, N, Iv, Hv), widen(e, M, uH, uH), widen(e, M, uH, Ho)});
  // Rotary tables [N, hv] cos and sin (float) stay; the two axes' tables
  // they are composed from are transient.
  return pixels + vision_index(v, N) + 8 * N * hv + std::max({8 * N * hv, blocks, merger}) + widest;
}

// One forward step as the models run it, device by device: what each
// device holds above its weights and KV cache at its worst moment.
// Devices are numbered in stage order; `carry` is what stays alive on a
// device from one phase to the next, `at` records carry + a transient.
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
    const u64 V = static_cast<u64>(m_.text.vocab_size), e = w_.e;
    const u64 S = w_.batch * w_.prompt;
    std::vector<u64> carry(names_.size(), 0);
    add_host(carry, w_.host_inputs);
    at(carry, host_, w_.staging);  // loading: one tensor staged for a CUDA device
    step(carry, S, w_.prompt, w_.prompt, m_.vision.has_value(), w_.patches);
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
  // The ranks that run what one rank of a stage runs (the vision tower,
  // the head): the first in one process, each its own under MPI.
  std::size_t single_ranks(std::size_t s) const { return w_.one_process ? 1 : ranks(s); }

  // One forward over S tokens (Sq query rows and Lk keys per sequence):
  // the vision tower over `patches`, the embeddings, each stage's layers,
  // the head. M-RoPE positions [3, S] for a prompt with vision, [S] else.
  void step(std::vector<u64> carry, u64 S, u64 Sq, u64 Lk, bool mrope, u64 patches) {
    const io::Qwen2Config& c = m_.text;
    const u64 e = w_.e, H = static_cast<u64>(c.hidden_size), V = static_cast<u64>(c.vocab_size);
    const u64 hd = static_cast<u64>(c.head_dim()), SH = S * H * e;
    const u64 positions = mrope ? 24 * S : 8 * S;
    add_host(carry, positions);  // made before the vision tower runs
    const std::size_t n = r_.stages.size();

    // Vision tower: host concatenation of the pixels and the index tensors,
    // the pass on the tower's device; its features stay there.
    std::vector<bool> tower(names_.size(), false);
    u64 features = 0;
    if (m_.vision && patches > 0) {
      const auto& v = *m_.vision;
      std::vector<u64> transient(names_.size(), 0);
      if (host_ < names_.size()) transient[host_] += 4 * patches * static_cast<u64>(v.patch_dim()) + vision_index(v, patches);
      for (std::size_t q = 0; q < single_ranks(layout_.vision_stage); ++q) {
        const std::size_t d = dev(layout_.vision_stage, q);
        tower[d] = true;
        transient[d] += vision_device(v, e, patches);
      }
      for (std::size_t d = 0; d < names_.size(); ++d) at(carry, d, transient[d]);
      features = merged_tokens(v, patches) * H * e;
      for (std::size_t d = 0; d < names_.size(); ++d) {
        if (tower[d]) carry[d] += features;
      }
    }

    // The language model: ids on the host, then the embedding stage.
    add_host(carry, 8 * S);
    for (std::size_t q = 0; q < ranks(layout_.embed_stage); ++q) {
      const std::size_t d = dev(layout_.embed_stage, q);
      const u64 copy = features > 0 && !tower[d] ? features : 0;  // to<> of the features before the scatter
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
      const u64 qd = static_cast<u64>(c.num_attention_heads) * hd / t;
      const u64 kd = static_cast<u64>(c.num_key_value_heads) * hd / t;
      const u64 It = static_cast<u64>(c.intermediate_size) / t;
      // Rotary tables: positions copied, the three axes' tables composed.
      const u64 tables_build = (mrope ? 24 * S + 32 * S * hd : 8 * S + 8 * S * hd);
      const u64 attention = S * e * (2 * qd + 3 * kd) + S * qd * e * (w_.batch > 1 ? 2 : 1) + SH +
                            (e != 4 ? 4 * (Sq * qd + 2 * Lk * kd) : 0);
      const u64 mlp = 3 * S * It * e + SH;
      const u64 widest = std::max({widen(e, S, H, qd), widen(e, S, H, kd), widen(e, S, qd, H), widen(e, S, H, It),
                                   widen(e, S, It, H)});
      for (std::size_t q = 0; q < t; ++q) {
        const std::size_t d = dev(s, q);
        // In-process all-reduce: the first device holds the running sum, a
        // copy of the next part and the new sum; the others their part and
        // the copy of the sum.
        const u64 reduce = t > 1 && w_.in_process_reduce ? (q == 0 ? 3 * SH : 2 * SH) : 0;
        at(carry, d, tables_build);
        // Residual, tables and normed h; then attention (its all-reduce),
        // then the MLP (its all-reduce, the residual add and norm) while the
        // layer's attention output is still alive.
        const u64 attention_step = std::max(attention + widest, reduce);
        const u64 mlp_step = SH + std::max({mlp + widest, reduce, 2 * SH});
        at(carry, d, 8 * S * hd + SH + std::max(attention_step, mlp_step));
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
      at(carry, d, SH + logits + widen(e, S, H, V));
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

inline std::string part_name(std::string_view part, bool tied) {
  if (part == "head") return tied ? "final norm (lm_head tied to the embeddings)" : "final norm + lm_head";
  if (part == "vision") return "vision tower + merger";
  return "embeddings";
}

// ---- checks -------------------------------------------------------------

inline void check_request(const ModelDescription& m, const PlanRequest& r) {
  const auto fail = [&](const std::string& what) { throw PlanError(concat("plan for ", m.name, ": ", what)); };
  if (r.element_size != 2 && r.element_size != 4) {
    throw ValueError(concat("plan for ", m.name, ": element_size must be 2 (bf16, f16) or 4 (float), got ",
                            r.element_size));
  }
  if (r.stages.empty()) fail("no stages: give at least one device");
  if (r.max_context <= 0 || r.batch <= 0 || r.max_prompt < 0 || r.max_image_patches < 0 || r.max_image_pixels < 0) {
    fail(concat("max_context (", r.max_context, ") and batch (", r.batch,
                ") must be positive and max_prompt, max_image_patches, max_image_pixels not negative"));
  }
  if (r.max_prompt > r.max_context) {
    fail(concat("max_prompt ", r.max_prompt, " exceeds the KV cache capacity max_context ", r.max_context));
  }
  const std::int64_t layers = m.text.num_hidden_layers;
  if (static_cast<std::int64_t>(r.stages.size()) > layers) {
    fail(concat(r.stages.size(), " stages for ", layers, " decoder layers: a stage needs at least one layer"));
  }
  std::set<std::string> seen;
  for (std::size_t s = 0; s < r.stages.size(); ++s) {
    const auto& group = r.stages[s];
    if (group.empty()) fail(concat("stage ", s, " has no device"));
    for (const auto& d : group) {
      if (!seen.insert(d).second) fail(concat("device '", d, "' appears twice in the stages"));
    }
    const auto t = static_cast<std::int64_t>(group.size());
    const auto& c = m.text;
    if (t > 1 && (c.num_attention_heads % t != 0 || c.num_key_value_heads % t != 0)) {
      fail(concat("stage ", s, " is a tensor-parallel group of ", t, " devices (", join(group),
                  "), which must divide the language model's num_attention_heads ", c.num_attention_heads,
                  " and num_key_value_heads ", c.num_key_value_heads));
    }
    if (t > 1 && c.intermediate_size % t != 0) {
      fail(concat("stage ", s, " is a tensor-parallel group of ", t, " devices (", join(group),
                  "), which must divide the language model's intermediate_size ", c.intermediate_size));
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

// Stages of the vision tower, embeddings and head, checked.
inline Layout pinned(const ModelDescription& m, const PlanRequest& r) {
  const auto fail = [&](const std::string& what) { throw PlanError(concat("plan for ", m.name, ": ", what)); };
  Pins p = r.pins;
  if (m.tied()) {
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
  std::vector<u64> pinned;       // per device of the stage (all devices equal)
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

// A module tree of the whole model with per-device sizes (of a group of
// `tp`), for get_balanced_memory: decoder layers (with their KV cache as a
// pseudo-parameter) and the vision tower are no-split units.
inline accelerate::ModuleTree balance_tree(const ModelDescription& m, std::size_t tp, std::size_t elem, u64 kv_layer) {
  accelerate::ModuleTree tree;
  for (const auto& [name, numel] : m.tensors) {
    const Classified c = classify(m, name);
    if (c.part == Part::ignored) continue;
    tree.add_parameter(name, static_cast<std::int64_t>(device_bytes(numel, c.split, tp, elem)));
  }
  for (std::int64_t l = 0; l < m.text.num_hidden_layers; ++l) {
    const std::string layer = concat(m.text_prefix, "layers.", l);
    tree.add_parameter(layer + ".kv_cache", static_cast<std::int64_t>(kv_layer));
    tree.set_class(layer, "DecoderLayer");
  }
  if (m.vision) {
    std::string root = m.vision_prefix;
    root.pop_back();  // "visual." -> "visual"
    if (tree.find(root)) tree.set_class(root, "VisionTower");
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
                                             {"DecoderLayer", "VisionTower"},
                                             r.strategy == Strategy::balanced_low_0);
  }
  for (std::size_t s = 0; s < n; ++s) caps[s] = memory[s].second - static_cast<std::int64_t>(costs.pinned[s]);
  return caps;
}

// Contiguous greedy fill (infer_auto_device_map over a list of no-split
// layers, without the offload reserve); what fits nowhere stays on the last stage.
inline std::vector<std::size_t> fill(const std::vector<std::int64_t>& caps, const StageCosts& costs,
                                     std::int64_t layers) {
  std::vector<std::size_t> out;
  std::size_t stage = 0;
  std::int64_t used = 0;
  for (std::int64_t l = 0; l < layers; ++l) {
    while (stage + 1 < caps.size() && used + static_cast<std::int64_t>(costs.layer_unit[stage]) > caps[stage]) {
      ++stage;
      used = 0;
    }
    used += static_cast<std::int64_t>(costs.layer_unit[stage]);
    out.push_back(stage);
  }
  return out;
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

// Plans a described model (plan_qwen2 and plan_qwen2_5_vl describe theirs
// from a checkpoint directory).
inline Plan plan_model(const ModelDescription& m, const PlanRequest& r) {
  using namespace plan_detail;
  check_request(m, r);
  const std::size_t n = r.stages.size(), elem = r.element_size;
  const std::int64_t layers = m.text.num_hidden_layers;
  Layout layout = pinned(m, r);
  const bool tied = m.tied();

  const u64 prompt = static_cast<u64>(r.max_prompt > 0 ? r.max_prompt : r.max_context);
  u64 patches = static_cast<u64>(r.max_image_patches);
  if (m.vision && r.max_image_pixels > 0) {
    const u64 per_patch = static_cast<u64>(m.vision->patch_size * m.vision->patch_size);
    const u64 unit = static_cast<u64>(m.vision->merge_unit());
    const u64 from_pixels = (static_cast<u64>(r.max_image_pixels) + per_patch - 1) / per_patch;
    patches = std::max(patches, (from_pixels + unit - 1) / unit * unit);
  }
  if (!m.vision) patches = 0;
  Workload work;
  work.e = elem;
  work.batch = static_cast<u64>(r.batch);
  work.prompt = prompt;
  work.context = static_cast<u64>(r.max_context);
  work.patches = patches;
  work.one_process = r.one_process;
  work.in_process_reduce = !r.communicator.starts_with("mpi") && !r.communicator.starts_with("nccl");
  const bool has_host = std::any_of(r.stages.begin(), r.stages.end(), [](const auto& g) {
    return std::find(g.begin(), g.end(), "cpu0") != g.end();
  });
  if (has_host) {
    // Default: the float32 pixels of `patches` patches (every image and
    // video of the prompt when max_image_patches counts them all).
    const u64 pixels = m.vision ? 4 * patches * static_cast<u64>(m.vision->patch_dim()) : 0;
    work.host_inputs = r.host_input_bytes.value_or(pixels);
  }
  const auto kv_per_layer = [&](std::size_t tp) {
    return 2 * static_cast<u64>(r.max_context) * static_cast<u64>(r.batch) *
           (static_cast<u64>(m.text.num_key_value_heads) / tp) * static_cast<u64>(m.text.head_dim()) * elem;
  };

  std::vector<PartBytes> bytes;  // per stage, for its group size
  for (std::size_t s = 0; s < n; ++s) bytes.push_back(part_bytes(m, r.stages[s].size(), elem));
  // The ranks of the vision stage that hold a tower: the first in one
  // process, every one under MPI (each process its own).
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
    layout.layer_stage = fill(layer_caps(m, r, costs, balance_tp, kv_per_layer(balance_tp)), costs, layers);
  }
  layout.check(layers, n, m.name);

  Plan plan;
  plan.model = m.name;
  plan.strategy = r.strategy;
  plan.element_size = elem;
  plan.stages = r.stages;
  plan.communicator = r.communicator;
  for (const auto& [name, numel] : m.tensors) {
    if (classify(m, name).part == Part::ignored) plan.ignored.push_back(name);
  }

  // Module rows in execution order.
  if (m.vision) plan.modules.push_back({part_name("vision", tied), layout.vision_stage, bytes[layout.vision_stage].vision});
  plan.modules.push_back({part_name("embed", tied), layout.embed_stage, bytes[layout.embed_stage].embed});
  for (std::size_t l = 0; l < layout.layer_stage.size();) {
    const std::size_t s = layout.layer_stage[l];
    std::size_t end = l;
    u64 sum = 0;
    while (end < layout.layer_stage.size() && layout.layer_stage[end] == s) sum += bytes[s].layers[end++];
    plan.modules.push_back({end - l == 1 ? concat("layer ", l) : concat("layers ", l, "-", end - 1), s, sum});
    l = end;
  }
  plan.modules.push_back({part_name("head", tied), layout.head_stage, bytes[layout.head_stage].head});

  // Loading: a tensor for a device other than a CPU slot is staged on the
  // host (one at a time) before to<>.
  for (const auto& [name, numel] : m.tensors) {
    const Classified c = classify(m, name);
    std::size_t s = 0;
    switch (c.part) {
      case Part::vision: s = layout.vision_stage; break;
      case Part::embed: s = layout.embed_stage; break;
      case Part::head: s = layout.head_stage; break;
      case Part::layer: s = layout.layer_stage[static_cast<std::size_t>(c.layer)]; break;
      case Part::ignored: continue;
    }
    // Tied embeddings pinned apart: the head stage loads the table too.
    const bool cuda = std::any_of(r.stages[s].begin(), r.stages[s].end(), [](const std::string& d) {
      return !d.starts_with("cpu");
    });
    const bool head_copy = tied && c.part == Part::embed && layout.embed_stage != layout.head_stage &&
                           std::any_of(r.stages[layout.head_stage].begin(), r.stages[layout.head_stage].end(),
                                       [](const std::string& d) { return !d.starts_with("cpu"); });
    if (has_host && (cuda || head_copy)) work.staging = std::max(work.staging, static_cast<u64>(numel) * elem);
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
  return os.str();
}

// ---- entry points -------------------------------------------------------------

namespace plan_detail {
inline std::vector<std::pair<std::string, std::int64_t>> tensor_sizes(const io::Checkpoint& checkpoint) {
  std::vector<std::pair<std::string, std::int64_t>> out;
  for (const auto& name : checkpoint.names()) out.emplace_back(name, checkpoint.info(name).numel());
  return out;
}
}  // namespace plan_detail

// A Qwen2 language model (Qwen2ForCausalLM) from its checkpoint directory:
// config.json and the safetensors headers only.
inline Plan plan_qwen2(const std::filesystem::path& dir, const PlanRequest& request,
                       const std::string& prefix = "model.", const std::string& lm_head = "lm_head.weight") {
  ModelDescription m;
  m.name = dir.string();
  m.text = io::Qwen2Config::load(dir);
  m.text_prefix = prefix;
  m.lm_head = lm_head;
  m.tensors = plan_detail::tensor_sizes(io::Checkpoint::open(dir));
  return plan_model(m, request);
}

// Qwen2.5-VL from its checkpoint directory, in either published layout.
inline Plan plan_qwen2_5_vl(const std::filesystem::path& dir, const PlanRequest& request) {
  const auto config = models::qwen2_5_vl::Config::load(dir);
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const auto layout = models::qwen2_5_vl::detect_layout(checkpoint);
  ModelDescription m;
  m.name = dir.string();
  m.text = config.text;
  m.vision = config.vision;
  m.vision_prefix = layout.vision;
  m.text_prefix = layout.text;
  m.lm_head = layout.lm_head;
  m.tensors = plan_detail::tensor_sizes(checkpoint);
  return plan_model(m, request);
}

}  // namespace tessera::placement
