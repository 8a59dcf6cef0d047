// tessera/models/minicpm_v_description.hpp — MiniCPM-V 2.6 described to the
// planner (placement/planner.hpp): the Qwen2 language model under "llm."
// as the shared decoder describes it (decoder_description.hpp), and the
// SigLIP encoder + resampler as one pinned unit whose vision units are
// slices and whose cost is the encoder's own (minicpm_v_vision.hpp,
// encoder_cost). From config.json, preprocessor_config.json (when present)
// and the safetensors headers only.
//
//   const placement::Plan plan = placement::plan_minicpm_v(dir, request);
//   // = placement::plan_model(models::minicpm_v::describe(dir), request)
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
#include "minicpm_v.hpp"
#include "minicpm_v_processor.hpp"
#include "minicpm_v_vision.hpp"

namespace tessera::models::minicpm_v {

// The patches of one slice, at most: the slicer resizes every slice to
// about scale_resolution^2 pixels and rounds each side to the nearest
// multiple of the patch, so a side gains at most one patch. (A strip more
// than ~100 times wider than high is the exception: its short side is
// raised to one patch, and its slices hold more patches than this.)
inline std::uint64_t max_patches_per_slice(const ProcessorConfig& p) {
  const auto side = static_cast<std::uint64_t>(p.scale_resolution / p.patch_size) + 1;
  return side * side;
}

// The slices of one image of `pixels` pixels, at most: the source image,
// plus a grid of up to ceil(pixels / scale_resolution^2) + 1 cells (the
// grid search also tries one more cell than the area asks for), never more
// than max_slice_nums.
inline std::uint64_t slices_for_pixels(const ProcessorConfig& p, std::uint64_t pixels) {
  const auto area = static_cast<std::uint64_t>(p.scale_resolution * p.scale_resolution);
  const std::uint64_t multiple = (pixels + area - 1) / area;
  if (!p.slice_mode || multiple <= 1) return 1;
  return 1 + std::min<std::uint64_t>(multiple + 1, static_cast<std::uint64_t>(p.max_slice_nums));
}

// The processor settings the plan assumes: preprocessor_config.json of the
// checkpoint when it has one, the published defaults otherwise.
inline ProcessorConfig processor_config_of(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "preprocessor_config.json")) return ProcessorConfig::load(dir);
  return ProcessorConfig{};
}

inline placement::ModelDescription describe(const std::filesystem::path& dir) {
  const Config config = Config::load(dir);
  const ProcessorConfig processor = processor_config_of(dir);
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const DecoderWeights weights = qwen2_weights();
  placement::ModelDescription m;
  m.name = dir.string();
  m.decoder = decoder_shape(config.text, config.text.tie_word_embeddings && !checkpoint.contains(kLmHead));
  m.tensors = tensor_sizes(checkpoint);
  const std::int64_t vision_layers = config.vision.num_hidden_layers;
  m.classify = [weights, text = config.text, vision_layers](std::string_view name) {
    if (name.starts_with(kResamplerPrefix)) return placement::TensorRole{placement::TensorPart::vision};
    if (name.starts_with(kVisionPrefix)) {
      // The layer drop_vision_last_layer removes is not loaded.
      const std::string dropped = tessera::detail::concat(kVisionPrefix, "encoder.layers.", vision_layers, ".");
      if (name.starts_with(dropped)) return placement::TensorRole{};
      return placement::TensorRole{placement::TensorPart::vision};
    }
    return decoder_role(weights, text, kTextPrefix, kLmHead, name);
  };
  placement::VisionDescription vision;
  vision.label = "SigLIP encoder + resampler";
  const std::uint64_t per_slice = max_patches_per_slice(processor);
  const auto patch_dim = static_cast<std::uint64_t>(config.vision.num_channels * config.vision.patch_size *
                                                    config.vision.patch_size);
  vision.units_for_pixels = [processor](std::uint64_t pixels) { return slices_for_pixels(processor, pixels); };
  // The processor's float32 slices, kept for the whole run.
  vision.host_bytes_per_unit = 4 * per_slice * patch_dim;
  vision.cost = [v = config.vision, r = config.resampler, per_slice, patch_dim](std::uint64_t slices,
                                                                                std::size_t element_size) {
    const std::uint64_t patches = slices * per_slice;
    placement::VisionCost cost;
    cost.host_transient = 4 * patches * patch_dim;  // the patch rows the model builds from the slices
    cost.device_transient = encoder_cost(v, r, patches, slices, element_size);
    cost.features = slices * static_cast<std::uint64_t>(r.num_queries * r.embed_dim) * element_size;
    return cost;
  };
  m.vision = std::move(vision);
  return m;
}

}  // namespace tessera::models::minicpm_v

namespace tessera::placement {

// plan_model(models::minicpm_v::describe(dir), request).
inline Plan plan_minicpm_v(const std::filesystem::path& dir, const PlanRequest& request) {
  return plan_model(models::minicpm_v::describe(dir), request);
}

}  // namespace tessera::placement
