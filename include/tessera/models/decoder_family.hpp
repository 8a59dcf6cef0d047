// tessera/models/decoder_family.hpp — the four language-model families the
// shared decoder (decoder.hpp) runs, as data: where each weight lives in the
// published checkpoints and how fused weights are laid out.
//
//   family     used by                          attention weights         MLP weights
//   Qwen2      Qwen2.5-VL, InternVL2-1B,        q/k/v_proj (+ biases),    gate/up/down_proj
//              MiniCPM-V 2.6                    o_proj
//   Llama      InternVL2-40B (Yi-34B),          q/k/v/o_proj, no biases   gate/up/down_proj
//              InternVL2-76B (Llama-3-70B)
//   Phi-3      InternVL2-4B (Phi-3-mini)        qkv_proj: [q; k; v] rows  gate_up_proj: [gate; up] rows
//   InternLM2  InternVL2-2B/8B/26B              attention.wqkv: per KV    feed_forward.w1 (gate),
//                                               group g, that group's     w3 (up), w2 (down)
//                                               query heads, then key
//                                               head g, then value head g
//
// Fused weights are split when they are loaded (and a tensor-parallel rank
// reads only its rows), so the forward pass and the planner see one layout:
// separate q, k, v, gate, up. This table is the one place weight names are
// spelled: the loader reads it, and decoder_tensor() classifies a
// checkpoint's tensors for the planner from it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../io/config.hpp"

namespace tessera::models {

enum class DecoderFamily : std::uint8_t { qwen2, llama, phi3, internlm2 };

inline std::string_view family_name(DecoderFamily f) {
  switch (f) {
    case DecoderFamily::qwen2: return "Qwen2";
    case DecoderFamily::llama: return "Llama";
    case DecoderFamily::phi3: return "Phi-3";
    case DecoderFamily::internlm2: return "InternLM2";
  }
  return "?";
}

// How a layer's q, k and v projections are stored.
enum class QkvLayout : std::uint8_t {
  separate,  // q, k, v: three tensors
  concat,    // qkv: one tensor, rows [q; k; v] (Phi-3)
  grouped,   // qkv: one tensor, rows per KV group [q_gG .. q_gG+G-1; k_g; v_g] (InternLM2)
};

// Weight names relative to the language model's prefix ("model." in a
// *ForCausalLM checkpoint), except lm_head, which is relative to the root
// the model sits under ("" or "language_model.").
struct DecoderWeights {
  DecoderFamily family = DecoderFamily::qwen2;
  std::string embed = "embed_tokens.weight";
  std::string norm = "norm.weight";
  std::string lm_head = "lm_head.weight";
  std::string layers = "layers.";  // + N + "." + the names below
  QkvLayout qkv_layout = QkvLayout::separate;
  std::string q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj";
  std::string qkv;  // the fused tensor, for concat / grouped
  std::string o = "self_attn.o_proj";
  bool gate_up_fused = false;
  std::string gate = "mlp.gate_proj", up = "mlp.up_proj", gate_up;  // gate_up: [gate; up] rows
  std::string down = "mlp.down_proj";
  std::string attn_norm = "input_layernorm.weight", mlp_norm = "post_attention_layernorm.weight";
  bool qkv_bias = false;  // q/k/v biases (Qwen2)
};

inline DecoderWeights qwen2_weights() {
  DecoderWeights w;
  w.family = DecoderFamily::qwen2;
  w.qkv_bias = true;
  return w;
}

inline DecoderWeights llama_weights() {
  DecoderWeights w;
  w.family = DecoderFamily::llama;
  return w;
}

inline DecoderWeights phi3_weights() {
  DecoderWeights w;
  w.family = DecoderFamily::phi3;
  w.qkv_layout = QkvLayout::concat;
  w.qkv = "self_attn.qkv_proj";
  w.gate_up_fused = true;
  w.gate_up = "mlp.gate_up_proj";
  return w;
}

inline DecoderWeights internlm2_weights() {
  DecoderWeights w;
  w.family = DecoderFamily::internlm2;
  w.embed = "tok_embeddings.weight";
  w.lm_head = "output.weight";
  w.qkv_layout = QkvLayout::grouped;
  w.qkv = "attention.wqkv";
  w.o = "attention.wo";
  w.gate = "feed_forward.w1";
  w.up = "feed_forward.w3";
  w.down = "feed_forward.w2";
  w.attn_norm = "attention_norm.weight";
  w.mlp_norm = "ffn_norm.weight";
  return w;
}

inline DecoderWeights weights_for(DecoderFamily f) {
  switch (f) {
    case DecoderFamily::qwen2: return qwen2_weights();
    case DecoderFamily::llama: return llama_weights();
    case DecoderFamily::phi3: return phi3_weights();
    case DecoderFamily::internlm2: return internlm2_weights();
  }
  return qwen2_weights();
}

// The family of a language-model config, from its architectures (the class
// transformers or the remote code instantiates) or else its model_type.
// `where` names the file (and key path) in the error for anything else.
inline DecoderFamily detect_family(const io::DecoderConfig& c, const std::string& where) {
  for (const auto& a : c.architectures) {
    if (a == "Qwen2ForCausalLM") return DecoderFamily::qwen2;
    if (a == "LlamaForCausalLM") return DecoderFamily::llama;
    if (a == "Phi3ForCausalLM") return DecoderFamily::phi3;
    if (a == "InternLM2ForCausalLM") return DecoderFamily::internlm2;
  }
  const std::string& t = c.model_type;
  if (t == "qwen2" || t.starts_with("qwen2_5_vl") || t.starts_with("qwen2_vl")) return DecoderFamily::qwen2;
  if (t == "llama") return DecoderFamily::llama;
  if (t == "phi3") return DecoderFamily::phi3;
  if (t == "internlm2") return DecoderFamily::internlm2;
  std::string archs;
  for (const auto& a : c.architectures) archs += (archs.empty() ? "" : ", ") + a;
  throw FormatError(detail::concat(where, ": model_type \"", t, "\"",
                                   archs.empty() ? std::string() : detail::concat(" (architectures ", archs, ")"),
                                   " is not a language model tessera runs (supported: qwen2 / Qwen2ForCausalLM, "
                                   "llama / LlamaForCausalLM, phi3 / Phi3ForCausalLM, internlm2 / "
                                   "InternLM2ForCausalLM)"));
}

// ---- what the decoder runs ------------------------------------------------------

namespace decoder_detail {

// RoPE variants: M-RoPE (Qwen2.5-VL's language model; plain RoPE for
// text, multimodal positions come in through forward_edited's [3, S]
// positions), linear, dynamic NTK, LongRoPE, llama3.
template <class Fail>
void check_rope(const io::DecoderConfig& c, const Fail& fail) {
  const io::RopeConfig& r = c.rope;
  const std::string where = r.key.empty() ? std::string("rope_scaling") : r.key;
  const auto need = [&](bool ok, std::string_view what) {
    if (!ok) fail(detail::concat(where, " has type \"", r.type, "\" but ", what));
  };
  const std::int64_t half = c.head_dim() / 2;
  if (r.type == "default" || r.type == "mrope") return;
  if (r.type == "linear" || r.type == "dynamic") {
    need(r.factor.has_value(), "no \"factor\"");
    if (r.type == "dynamic") need(*r.factor >= 1.0, "a \"factor\" below 1");
    return;
  }
  if (r.is_longrope()) {
    need(r.original_max_position_embeddings.has_value(),
         "no original_max_position_embeddings (in it or at the top level of config.json)");
    for (const auto* list : {&r.short_factor, &r.long_factor}) {
      need(static_cast<std::int64_t>(list->size()) == half,
           detail::concat(list == &r.short_factor ? "short_factor" : "long_factor", " has ", list->size(),
                          " entries; it needs head_dim / 2 = ", half));
    }
    return;
  }
  if (r.type == "llama3") {
    need(r.factor && r.low_freq_factor && r.high_freq_factor && r.original_max_position_embeddings,
         "not all of factor, low_freq_factor, high_freq_factor, original_max_position_embeddings");
    need(*r.high_freq_factor > *r.low_freq_factor, "high_freq_factor <= low_freq_factor");
    return;
  }
  fail(detail::concat(where, " has type \"", r.type,
                      "\", which tessera does not support (supported: \"default\", \"mrope\", \"linear\", "
                      "\"dynamic\", \"su\"/\"longrope\", \"llama3\")"));
}

}  // namespace decoder_detail

// Throws FormatError, naming `file` (config.json's path) and the key, for
// whatever in a language-model config the shared decoder does not run:
// called by the decoder before it loads a weight and by the planner's
// describe before it plans, so nothing unsupported is ever run silently.
inline void check_decoder_config(const io::DecoderConfig& c, const DecoderWeights& w, const std::string& file) {
  const std::string_view name = family_name(w.family);
  const auto fail = [&](const std::string& what) {
    throw FormatError(detail::concat(name, ": ", file, ": ", what));
  };
  const bool qwen2 = w.family == DecoderFamily::qwen2;
  if (c.hidden_act != "silu") {
    fail(detail::concat("hidden_act \"", c.hidden_act, "\" is not supported (", name, " uses \"silu\")"));
  }
  if (qwen2 && c.effective_sliding_window()) {
    fail("sliding-window attention (use_sliding_window: true) is not supported yet");
  }
  // InternLM2's remote config defaults "bias" to true; Llama's
  // attention_bias to false. No published checkpoint of the three families
  // has these biases, and tensor-parallel o_proj biases would need adding
  // once after the reduction.
  if (!qwen2 && c.attention_bias.value_or(w.family == DecoderFamily::internlm2)) {
    fail(detail::concat(w.family == DecoderFamily::internlm2 ? "bias" : "attention_bias",
                        " is true (or absent, whose default is true for InternLM2): attention biases are not "
                        "supported for ",
                        name));
  }
  if (c.mlp_bias) fail("mlp_bias is true: MLP biases are not supported");
  if (c.partial_rotary_factor != 1.0) {
    fail(detail::concat("partial_rotary_factor ", c.partial_rotary_factor,
                        " is not supported (tessera rotates the whole head)"));
  }
  decoder_detail::check_rope(c, fail);
}

// ---- the planner's view of a decoder tensor ---------------------------------

enum class DecoderPart : std::uint8_t { embed, layer, head };
// How a tensor-parallel group of t devices holds it: whole on each, or 1/t
// of its rows or columns each.
enum class DecoderSplit : std::uint8_t { replicated, rows, columns };

struct DecoderTensor {
  DecoderPart part = DecoderPart::layer;
  std::int64_t layer = -1;  // for DecoderPart::layer
  DecoderSplit split = DecoderSplit::replicated;
};

// What the decoder does with checkpoint tensor `name` when its language
// model sits under `text_prefix` ("model.") with output projection
// `lm_head_name` (a full name): nullopt for a tensor it does not load.
// Fused q/k/v and gate/up are split by rows like their parts (a rank's
// share of a fused tensor is 1/t of its rows in every layout).
inline std::optional<DecoderTensor> decoder_tensor(const DecoderWeights& w, const io::DecoderConfig& c,
                                                   std::string_view text_prefix, std::string_view lm_head_name,
                                                   std::string_view name) {
  if (name == lm_head_name) return DecoderTensor{DecoderPart::head, -1, DecoderSplit::replicated};
  if (!name.starts_with(text_prefix)) return std::nullopt;
  const std::string_view rest = name.substr(text_prefix.size());
  if (rest == w.embed) return DecoderTensor{DecoderPart::embed, -1, DecoderSplit::replicated};
  if (rest == w.norm) return DecoderTensor{DecoderPart::head, -1, DecoderSplit::replicated};
  if (!rest.starts_with(w.layers)) return std::nullopt;
  const std::string_view tail = rest.substr(w.layers.size());
  const auto dot = tail.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return std::nullopt;
  std::int64_t layer = 0;
  for (const char ch : tail.substr(0, dot)) {
    if (ch < '0' || ch > '9') return std::nullopt;
    layer = layer * 10 + (ch - '0');
  }
  if (layer >= c.num_hidden_layers) return std::nullopt;
  const std::string_view leaf = tail.substr(dot + 1);
  const auto is = [&](const std::string& module) {
    return !module.empty() && (leaf == module + ".weight" || leaf == module + ".bias");
  };
  if (leaf == w.attn_norm || leaf == w.mlp_norm) return DecoderTensor{DecoderPart::layer, layer, DecoderSplit::replicated};
  const bool fused_qkv = w.qkv_layout != QkvLayout::separate;
  const bool rows = fused_qkv ? is(w.qkv) : (is(w.q) || is(w.k) || is(w.v));
  if (rows || (w.gate_up_fused ? is(w.gate_up) : (is(w.gate) || is(w.up)))) {
    return DecoderTensor{DecoderPart::layer, layer, DecoderSplit::rows};
  }
  if (is(w.o) || is(w.down)) return DecoderTensor{DecoderPart::layer, layer, DecoderSplit::columns};
  return std::nullopt;
}

}  // namespace tessera::models
