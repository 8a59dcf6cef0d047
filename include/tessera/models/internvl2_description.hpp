// tessera/models/internvl2_description.hpp — InternVL2 described to the
// planner (placement/planner.hpp): the language model of llm_config under
// "language_model." as the shared decoder describes it
// (decoder_description.hpp), and InternViT + mlp1 as one pinned unit whose
// vision units are 448×448 tiles and whose cost is the tower's own
// (internvl2_vision.hpp, encoder_cost). From config.json and the
// safetensors headers only.
//
//   const placement::Plan plan = placement::plan_internvl2(dir, request);
//   // = placement::plan_model(models::internvl2::describe(dir), request)
//
// InternVL's own multi-GPU recipe (split_model, placement/internvl_split.hpp)
// is the planner's internvl_split strategy; the example uses it by default.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "../io/checkpoint.hpp"
#include "../placement/model_description.hpp"
#include "../placement/planner.hpp"
#include "decoder_description.hpp"
#include "decoder_family.hpp"
#include "internvl2.hpp"
#include "internvl2_processor.hpp"
#include "internvl2_vision.hpp"

namespace tessera::models::internvl2 {

// The tiles one image becomes, at most: dynamic_preprocess picks the grid
// from the aspect ratio alone (a small image is enlarged, not given fewer
// tiles), so every image may take max_num tiles plus the thumbnail.
inline std::uint64_t max_tiles_per_image(const ProcessorConfig& p) {
  if (!p.dynamic_image_size) return 1;
  const auto grid = static_cast<std::uint64_t>(p.max_num);
  return grid + (p.use_thumbnail && grid > 1 ? 1 : 0);
}

// "InternViT-300M" or "InternViT-6B" by the tower's shape, for the plan.
inline std::string tower_label(const VisionConfig& v) {
  const bool six_b = v.norm_type == NormType::rms_norm && v.qk_normalization;
  return tessera::detail::concat(six_b ? "InternViT-6B-style" : "InternViT-300M-style", " + mlp1 (",
                                 v.num_hidden_layers, " layers)");
}

// The role of checkpoint tensor `name` in a model of `config`: tower
// layers past the feature layer are never loaded.
inline placement::TensorRole tensor_role(const Config& config, const DecoderWeights& weights,
                                         const std::string& lm_head, std::string_view name) {
  if (name.starts_with(kProjectorPrefix)) return placement::TensorRole{placement::TensorPart::vision};
  if (name.starts_with(kVisionPrefix)) {
    const std::string_view layers_prefix = "vision_model.encoder.layers.";
    if (name.starts_with(layers_prefix)) {
      const std::string_view rest = name.substr(layers_prefix.size());
      std::int64_t layer = 0;
      std::size_t i = 0;
      for (; i < rest.size() && rest[i] >= '0' && rest[i] <= '9'; ++i) layer = layer * 10 + (rest[i] - '0');
      if (i == 0 || i == rest.size() || rest[i] != '.') return {};
      if (layer >= layers_used(config.vision, config.projector.select_layer)) return {};
    }
    return placement::TensorRole{placement::TensorPart::vision};
  }
  return decoder_role(weights, config.text, kTextPrefix, lm_head, name);
}

inline placement::ModelDescription describe(const std::filesystem::path& dir) {
  const Config config = Config::load(dir);
  const DecoderWeights weights = weights_for(config.family);
  // What the decoder would refuse at load is refused before planning too.
  check_decoder_config(config.text, weights, (dir / "config.json").string());
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const std::string lm_head = lm_head_name(config.family);
  placement::ModelDescription m;
  m.name = dir.string();
  m.decoder = decoder_shape(config.text, config.text.tie_word_embeddings && !checkpoint.contains(lm_head));
  m.tensors = tensor_sizes(checkpoint);
  // The tower keeps its position table resized to the tiles' grid
  // (force_image_size / patch), which differs from the stored one when the
  // config's image_size does.
  const std::int64_t grid = config.projector.image_size / config.vision.patch_size;
  for (auto& [name, numel] : m.tensors) {
    if (name == std::string(kVisionPrefix) + "embeddings.position_embedding") {
      numel = (1 + grid * grid) * config.vision.hidden_size;
    }
  }
  m.classify = [config, weights, lm_head](std::string_view name) {
    return tensor_role(config, weights, lm_head, name);
  };
  placement::VisionDescription vision;
  vision.label = tower_label(config.vision);
  const auto tile_pixels = static_cast<std::uint64_t>(3 * config.projector.image_size * config.projector.image_size);
  vision.units_for_pixels = [p = config.processor](std::uint64_t) { return max_tiles_per_image(p); };
  // The processor's float32 tiles, kept for the whole run.
  vision.host_bytes_per_unit = 4 * tile_pixels;
  const auto features_per_tile = static_cast<std::uint64_t>(config.tokens_per_tile() * config.text.hidden_size);
  vision.cost = [v = config.vision, p = config.projector, tile_pixels, features_per_tile](std::uint64_t tiles,
                                                                                        std::size_t element_size) {
    placement::VisionCost cost;
    // Every prompt's tiles stacked into one batch, and the tower's index
    // tensors made on the host.
    cost.host_transient = 4 * tiles * tile_pixels + encoder_host_cost(v, p, tiles);
    cost.device_transient = encoder_cost(v, p, tiles, element_size);
    cost.features = tiles * features_per_tile * element_size;
    return cost;
  };
  vision.unsplit_reason = [heads = config.vision.num_attention_heads](std::size_t group) {
    const auto g = static_cast<std::int64_t>(group);
    return heads % g == 0
               ? tessera::detail::concat("tessera keeps the tower on one device (its ", heads,
                                         " heads would divide the group of ", g, ", but the tower is small next to ",
                                         "the language model and one device saves its all-reduces)")
               : tessera::detail::concat("its ", heads, " attention heads do not divide the group of ", g);
  };
  m.vision = std::move(vision);
  return m;
}

}  // namespace tessera::models::internvl2

namespace tessera::placement {

// plan_model(models::internvl2::describe(dir), request).
inline Plan plan_internvl2(const std::filesystem::path& dir, const PlanRequest& request) {
  return plan_model(models::internvl2::describe(dir), request);
}

}  // namespace tessera::placement
