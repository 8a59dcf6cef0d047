// tessera/models/qwen2_5_vl_description.hpp — Qwen2.5-VL described to the
// planner (placement/planner.hpp): the language model as the shared decoder
// describes it (decoder_description.hpp), called with M-RoPE positions, and
// the vision tower + merger as one pinned unit whose vision units are
// patches and whose cost is the tower's own (qwen2_5_vl_vision.hpp,
// vision_cost). From config.json and the safetensors headers only, in either
// published checkpoint layout.
//
//   const placement::Plan plan = placement::plan_qwen2_5_vl(dir, request);
//   // = placement::plan_model(models::qwen2_5_vl::describe(dir), request)
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "../io/checkpoint.hpp"
#include "../placement/model_description.hpp"
#include "../placement/planner.hpp"
#include "decoder_description.hpp"
#include "decoder_family.hpp"
#include "qwen2_5_vl.hpp"
#include "qwen2_5_vl_vision.hpp"

namespace tessera::models::qwen2_5_vl {

inline placement::ModelDescription describe(const std::filesystem::path& dir) {
  const Config config = Config::load(dir);
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const CheckpointLayout layout = detect_layout(checkpoint);
  const DecoderWeights weights = weights_for(detect_family(config.text, (dir / "config.json").string()));
  placement::ModelDescription m;
  m.name = dir.string();
  m.decoder = decoder_shape(config.text, config.text.tie_word_embeddings && !checkpoint.contains(layout.lm_head),
                            /*mrope=*/true);
  m.tensors = tensor_sizes(checkpoint);
  m.classify = [weights, text = config.text, layout](std::string_view name) {
    if (name.starts_with(layout.vision)) return placement::TensorRole{placement::TensorPart::vision};
    return decoder_role(weights, text, layout.text, layout.lm_head, name);
  };
  placement::VisionDescription vision;
  vision.label = "vision tower + merger";
  const VisionConfig v = config.vision;
  vision.units_for_pixels = [v](std::uint64_t pixels) { return patches_for_pixels(v, pixels); };
  vision.host_bytes_per_unit = 4 * static_cast<std::uint64_t>(v.patch_dim());  // float32 pixel_values rows
  vision.cost = [v](std::uint64_t patches, std::size_t element_size) { return vision_cost(v, patches, element_size); };
  m.vision = std::move(vision);
  return m;
}

}  // namespace tessera::models::qwen2_5_vl

namespace tessera::placement {

// plan_model(models::qwen2_5_vl::describe(dir), request).
inline Plan plan_qwen2_5_vl(const std::filesystem::path& dir, const PlanRequest& request) {
  return plan_model(models::qwen2_5_vl::describe(dir), request);
}

}  // namespace tessera::placement
