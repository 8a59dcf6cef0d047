// tessera/placement/model_description.hpp — a model as the planner sees it:
// the shape of its language model, its checkpoint's tensors with the role
// of each, and what its vision part costs. Each model writes its own
// describe(dir) on the models side (models/decoder_description.hpp,
// models/qwen2_5_vl_description.hpp); the planner (planner.hpp) knows no
// model and includes nothing from models/.
//
//   ModelDescription m;
//   m.name = dir.string();
//   m.decoder = {.layers = 28, .hidden = 3584, ...};
//   m.tensors = {{"model.embed_tokens.weight", 152064 * 3584}, ...};
//   m.classify = [](std::string_view name) { ... return TensorRole{TensorPart::embed}; };
//   m.vision = VisionDescription{...};             // absent for a text model
//   const Plan plan = plan_model(m, request);
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::placement {

// The language model's sizes: what the KV cache and the activation walk of
// the one shared decoder (models/decoder.hpp) depend on.
struct DecoderShape {
  std::int64_t layers = 0;        // num_hidden_layers
  std::int64_t hidden = 0;        // hidden_size
  std::int64_t heads = 0;         // num_attention_heads
  std::int64_t kv_heads = 0;      // num_key_value_heads
  std::int64_t head_dim = 0;
  std::int64_t intermediate = 0;  // intermediate_size
  std::int64_t vocab = 0;         // vocab_size
  // The embeddings double as the output projection: the checkpoint has no
  // lm_head tensor and the config ties them (the embeddings and the head
  // then share a stage).
  bool tied = false;
  // A prompt's rotary positions are [3, S] (M-RoPE: a multimodal model
  // calls the decoder with them); plain [S] otherwise and in decode steps.
  bool mrope = false;
  // A scaled RoPE variant (linear, dynamic, LongRoPE, llama3): each call's
  // tables are computed on the host and copied to each stage's devices.
  bool host_rope_tables = false;
};

// What the model loads a checkpoint tensor as.
enum class TensorPart : std::uint8_t {
  ignored,  // not loaded (listed in Plan::ignored)
  vision,   // the vision encoder and its projector or resampler: one pinned unit
  embed,    // token embeddings
  layer,    // decoder layer TensorRole::layer
  head,     // final norm and lm_head
};

// How a tensor-parallel group of t devices holds a decoder-layer tensor:
// whole on each, or 1/t of its rows (q/k/v, gate/up, fused or not) or of
// its columns (o_proj, down_proj) each. Everything else is replicated.
enum class TensorSplit : std::uint8_t { replicated, rows, columns };

struct TensorRole {
  TensorPart part = TensorPart::ignored;
  std::int64_t layer = -1;  // for TensorPart::layer: 0 .. layers - 1
  TensorSplit split = TensorSplit::replicated;
};

// What one pass of the vision part over `units` units costs, in bytes,
// above the weights: the planner adds these to its walk of the prefill.
struct VisionCost {
  std::uint64_t host_transient = 0;    // on the host (cpu0) during the pass
  std::uint64_t device_transient = 0;  // on the tower's device during the pass, at its worst moment
  std::uint64_t features = 0;          // the output rows, alive on the tower's device to the end of the prefill
};

// The vision part of a multimodal model: encoder + projector (Qwen2.5-VL's
// tower and merger, InternVL's InternViT and mlp1, MiniCPM-V's SigLIP and
// resampler), one unit pinned to one stage (Layout::vision_stage).
struct VisionDescription {
  std::string label = "vision encoder + projector";  // its row in the plan's module table
  // "Vision units" are what the model counts one prompt's images in:
  // patches, tiles, slices. PlanRequest::max_vision_units gives them
  // directly; max_image_pixels is converted with this (unset: pixels are
  // not accepted, and only max_vision_units counts).
  std::function<std::uint64_t(std::uint64_t pixels)> units_for_pixels;
  // Bytes of the processor's outputs per unit that the caller keeps on the
  // host for the whole run (PlanRequest::host_input_bytes's default).
  std::uint64_t host_bytes_per_unit = 0;
  // One pass over `units` units with elements of `element_size` bytes.
  std::function<VisionCost(std::uint64_t units, std::size_t element_size)> cost;
  // Why the part is not split over a tensor-parallel group of `group`
  // devices (it never is: it runs whole on one device of its stage); the
  // plan's note quotes it. Unset: the generic reason.
  std::function<std::string(std::size_t group)> unsplit_reason;
};

// A model for the planner: plan_model(description, request).
struct ModelDescription {
  std::string name;  // for messages: the checkpoint directory
  DecoderShape decoder;
  std::vector<std::pair<std::string, std::int64_t>> tensors;  // (name, numel) of every checkpoint tensor
  std::function<TensorRole(std::string_view tensor)> classify;  // unset: every tensor is ignored
  std::optional<VisionDescription> vision;

  TensorRole role(std::string_view tensor) const { return classify ? classify(tensor) : TensorRole{}; }
};

// Bytes of the float copies a half-precision GEMM [m, k] x [k, n] makes
// (ops/matmul.hpp: both operands and the output widened to float); none
// for float. Shared by the decoder walk and the models' vision costs.
inline std::uint64_t gemm_widening_bytes(std::uint64_t element_size, std::uint64_t m, std::uint64_t k,
                                         std::uint64_t n) {
  return element_size == 4 ? 0 : 4 * (m * k + k * n + m * n);
}

}  // namespace tessera::placement
