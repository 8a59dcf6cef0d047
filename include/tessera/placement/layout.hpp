// tessera/placement/layout.hpp — the run-time half of a placement: which
// pipeline stage holds each decoder layer and each pinned part. The policy
// type fixes which device each stage is; the planner (placement/planner.hpp)
// fills this in from budgets, and a model's load() takes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace tessera::placement {

struct Layout {
  std::vector<std::size_t> layer_stage;  // decoder layer l -> stage index
  std::size_t embed_stage = 0;           // token embeddings
  std::size_t vision_stage = 0;          // vision tower and merger (multimodal models)
  std::size_t head_stage = 0;            // final norm and lm_head

  // Every layer on stage 0: what Single and TensorParallel use.
  static Layout single(std::int64_t layers) {
    Layout out;
    out.layer_stage.assign(static_cast<std::size_t>(layers), 0);
    return out;
  }

  // Layers split into `stages` contiguous runs as even as possible (the
  // earlier stages take the remainder), parts pinned to stage 0.
  static Layout even(std::int64_t layers, std::size_t stages) {
    Layout out;
    const auto n = static_cast<std::size_t>(layers);
    for (std::size_t s = 0, l = 0; s < stages; ++s) {
      const std::size_t count = n / stages + (s < n % stages ? 1 : 0);
      for (std::size_t i = 0; i < count; ++i, ++l) out.layer_stage.push_back(s);
    }
    return out;
  }

  // Throws PlanError unless the layout fits a model of `layers` decoder
  // layers on `stages` stages with layers in stage order.
  void check(std::int64_t layers, std::size_t stages, const std::string& model) const {
    const auto fail = [&](const std::string& what) {
      throw PlanError(tessera::detail::concat(model, ": invalid placement layout: ", what));
    };
    if (layer_stage.size() != static_cast<std::size_t>(layers)) {
      fail(tessera::detail::concat("it places ", layer_stage.size(), " decoder layers but the model has ", layers));
    }
    for (std::size_t l = 0; l < layer_stage.size(); ++l) {
      if (layer_stage[l] >= stages) {
        fail(tessera::detail::concat("layer ", l, " is on stage ", layer_stage[l], " but the policy has ", stages, " stage(s)"));
      }
      if (l > 0 && layer_stage[l] < layer_stage[l - 1]) {
        fail(tessera::detail::concat("layer ", l, " is on stage ", layer_stage[l], " after layer ", l - 1, " on stage ",
                            layer_stage[l - 1], "; stages must hold consecutive runs of layers in order"));
      }
    }
    for (const auto& [what, stage] : {std::pair{"embeddings", embed_stage}, std::pair{"vision tower", vision_stage},
                                      std::pair{"final norm and lm_head", head_stage}}) {
      if (stage >= stages) fail(tessera::detail::concat("the ", what, " are pinned to stage ", stage, " of ", stages));
    }
  }
};

}  // namespace tessera::placement
