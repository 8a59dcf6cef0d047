// tessera/models/decoder_description.hpp — the shared decoder
// (decoder.hpp) described to the planner (placement/planner.hpp): its shape
// from config.json, and each checkpoint tensor's role from the same
// weight-name table the loader reads (decoder_family.hpp), so the planner
// and the loader cannot disagree on what a tensor is.
//
//   const auto m = models::describe_decoder(dir);          // any family config.json names
//   const placement::Plan plan = placement::plan_model(m, request);
//   // or placement::plan_decoder(dir, request)
//
// A multimodal model builds its own description from the same pieces
// (decoder_shape, decoder_role) plus its vision part: see
// qwen2_5_vl_description.hpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../nn/rope_variants.hpp"
#include "../placement/model_description.hpp"
#include "../placement/planner.hpp"
#include "decoder_family.hpp"

namespace tessera::models {

// Every tensor of a checkpoint with its element count, from the headers.
inline std::vector<std::pair<std::string, std::int64_t>> tensor_sizes(const io::Checkpoint& checkpoint) {
  std::vector<std::pair<std::string, std::int64_t>> out;
  for (const auto& name : checkpoint.names()) out.emplace_back(name, checkpoint.info(name).numel());
  return out;
}

// The planner's view of a decoder config. `tied`: the checkpoint has no
// lm_head tensor and the config ties the embeddings (the decoder then uses
// the embedding table as lm_head). `mrope`: the model calls the decoder
// with [3, S] positions for a prompt (Qwen2.5-VL's forward does).
inline placement::DecoderShape decoder_shape(const io::DecoderConfig& c, bool tied, bool mrope = false) {
  placement::DecoderShape s;
  s.layers = c.num_hidden_layers;
  s.hidden = c.hidden_size;
  s.heads = c.num_attention_heads;
  s.kv_heads = c.num_key_value_heads;
  s.head_dim = c.head_dim();
  s.intermediate = c.intermediate_size;
  s.vocab = c.vocab_size;
  s.tied = tied;
  s.mrope = mrope;
  s.host_rope_tables = !nn::is_plain_rope(c.rope);
  return s;
}

// The role of checkpoint tensor `name` for a decoder whose weights sit
// under `text_prefix` with output projection `lm_head_name` (a full name):
// decoder_tensor() of the family's table; anything it does not load is
// ignored.
inline placement::TensorRole decoder_role(const DecoderWeights& weights, const io::DecoderConfig& config,
                                          std::string_view text_prefix, std::string_view lm_head_name,
                                          std::string_view name) {
  const auto t = decoder_tensor(weights, config, text_prefix, lm_head_name, name);
  if (!t) return {};
  placement::TensorRole role;
  switch (t->part) {
    case DecoderPart::embed: role.part = placement::TensorPart::embed; break;
    case DecoderPart::head: role.part = placement::TensorPart::head; break;
    case DecoderPart::layer: role.part = placement::TensorPart::layer; break;
  }
  role.layer = t->layer;
  switch (t->split) {
    case DecoderSplit::replicated: role.split = placement::TensorSplit::replicated; break;
    case DecoderSplit::rows: role.split = placement::TensorSplit::rows; break;
    case DecoderSplit::columns: role.split = placement::TensorSplit::columns; break;
  }
  return role;
}

// A decoder-only checkpoint (Qwen2, Llama, Phi-3, InternLM2 *ForCausalLM;
// the family from config.json, as Decoder::load detects it): its language
// model under `prefix`, its output projection `lm_head` (default: the
// family's, "lm_head.weight" or InternLM2's "output.weight"). Reads
// config.json and the safetensors headers only.
inline placement::ModelDescription describe_decoder(const std::filesystem::path& dir,
                                                    const std::string& prefix = "model.",
                                                    const std::optional<std::string>& lm_head = std::nullopt) {
  io::DecoderConfig config = io::DecoderConfig::load(dir);
  const DecoderWeights weights = weights_for(detect_family(config, (dir / "config.json").string()));
  // What the decoder would refuse at load is refused before planning too.
  check_decoder_config(config, weights, (dir / "config.json").string());
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  std::string head = lm_head.value_or(weights.lm_head);
  placement::ModelDescription m;
  m.name = dir.string();
  m.decoder = decoder_shape(config, config.tie_word_embeddings && !checkpoint.contains(head));
  m.tensors = tensor_sizes(checkpoint);
  m.classify = [weights, config = std::move(config), prefix, head = std::move(head)](std::string_view name) {
    return decoder_role(weights, config, prefix, head, name);
  };
  return m;
}

}  // namespace tessera::models

namespace tessera::placement {

// plan_model(models::describe_decoder(dir, prefix, lm_head), request).
inline Plan plan_decoder(const std::filesystem::path& dir, const PlanRequest& request,
                         const std::string& prefix = "model.",
                         const std::optional<std::string>& lm_head = std::nullopt) {
  return plan_model(models::describe_decoder(dir, prefix, lm_head), request);
}

// The name the Qwen2 examples and tests use: any decoder family plans the same.
inline Plan plan_qwen2(const std::filesystem::path& dir, const PlanRequest& request,
                       const std::string& prefix = "model.",
                       const std::optional<std::string>& lm_head = std::nullopt) {
  return plan_decoder(dir, request, prefix, lm_head);
}

}  // namespace tessera::placement
