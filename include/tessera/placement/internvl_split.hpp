// tessera/placement/internvl_split.hpp — InternVL's hand-written
// split_model recipe (reference/model-specs.md B.7), which the planner's
// internvl_split strategy follows: a layer count per GPU with GPU 0 counted
// as half a GPU, because it also runs the vision encoder.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace tessera::placement {

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
    throw PlanError(tessera::detail::concat("internvl_split_model: needs layers and GPUs, got ", num_layers,
                                            " layers on ", world_size, " GPUs"));
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

}  // namespace tessera::placement
