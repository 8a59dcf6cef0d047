// tessera/models/internvl2_published.hpp — the seven published InternVL2
// checkpoints as data, and headers-only copies of them for planning:
//
//   size                    vision                    language model (llm_config)              template
//   InternVL2-1B            InternViT-300M-448px      Qwen2-0.5B-Instruct (Qwen2)               Hermes-2
//   InternVL2-2B            InternViT-300M-448px      internlm2-chat-1_8b (InternLM2)           internlm2-chat
//   InternVL2-4B            InternViT-300M-448px      Phi-3-mini-128k-instruct (Phi-3)          phi3-chat
//   InternVL2-8B            InternViT-300M-448px      internlm2_5-7b-chat (InternLM2)           internlm2-chat
//   InternVL2-26B           InternViT-6B-448px-V1-5   internlm2-chat-20b (InternLM2)            internlm2-chat
//   InternVL2-40B           InternViT-6B-448px-V1-5   Nous-Hermes-2-Yi-34B (Llama)              Hermes-2
//   InternVL2-Llama3-76B    InternViT-6B-448px-V1-5   Hermes-2-Theta-Llama-3-70B (Llama)        internlm2-chat
//
//   const auto size = published::size("InternVL2-Llama3-76B");
//   published::write_headers_only(size, "/tmp/InternVL2-Llama3-76B");
//   const auto plan = placement::plan_internvl2("/tmp/InternVL2-Llama3-76B", request);
//
// Each size is its config.json (the keys that define the model, as the
// OpenGVLab repositories write them; PretrainedConfig's generation defaults
// that every nested config repeats are left out) and its tensor table: every
// tensor's name and shape as the checkpoint stores it, in bf16, in
// InternVLChatModel's state_dict order (vision_model.*, language_model.*,
// mlp1.*), derived from the config:
//
//   vision_model.embeddings.class_embedding          [1, 1, C]
//   vision_model.embeddings.patch_embedding.{weight [C, 3, 14, 14], bias [C]}
//   vision_model.embeddings.position_embedding       [1, 1 + (448/14)^2, C]
//   vision_model.encoder.layers.N.{norm1, norm2}      weight [C] (+ bias [C]: layer_norm)
//     attn.qkv.weight [3C, C] (+ bias [3C]: qkv_bias); attn.q_norm / k_norm.weight [C]
//     (qk_normalization); attn.proj {[C, C], [C]}; mlp.fc1 {[I, C], [I]};
//     mlp.fc2 {[C, I], [C]}; ls1 [C]; ls2 [C]
//   language_model.*: each family's own names (decoder_family.hpp):
//     Qwen2 q/k/v_proj with biases, Llama q/k/v/o, Phi-3 qkv_proj [(nh + 2 nkv) hd, H]
//     and gate_up_proj [2I, H], InternLM2 attention.wqkv [(nh + 2 nkv) hd, H],
//     attention.wo, feed_forward.w1/w2/w3, attention_norm, ffn_norm,
//     model.tok_embeddings and output
//   mlp1.0 {[4C], [4C]} (LayerNorm); mlp1.1 {[H, 4C], [H]}; mlp1.3 {[H, H], [H]}
//
// These give the parameter counts the model cards state (0.9B, 2.2B, 4.2B,
// 8.1B, 25.5B, 40.1B, 76.3B). write_headers_only() shards them as
// transformers' save_pretrained does with max_shard_size "5GB" (tensors in
// order, a new shard when the next would pass 5e9 bytes; one shard is a
// lone model.safetensors, several are model-0000K-of-0000N.safetensors with
// model.safetensors.index.json), writes each shard's safetensors header and
// extends the file to its full size with resize_file: the data is a hole
// that reads as zeros and takes no disk, and io::Checkpoint::open, which
// checks the file sizes against the headers' offsets, accepts it. Plans
// need nothing more; running a copy gives zeros.
//
// Where the values come from (each size's config function says which):
//   verified from a real file: InternVL2-1B's config.json (oracle doc §1.4),
//     the 8B and 26B configs (model-specs §B.1, read in full), the
//     split_model layer counts, the Phi-3-128k "su" factor lists (a copy of
//     the Phi-3-128k config.json that ships them);
//   from the base model's published config: the other llm_config fields of
//     2B, 4B, 40B and 76B;
//   derived: vocab_size = the base tokenizer's length + InternVL's 9 added
//     tokens (<img> </img> <IMG_CONTEXT> <quad> </quad> <ref> </ref> <box>
//     </box>), which gives the verified 151655 (1B) and 92553 (8B, 26B)
//     and 32020, 64009, 128265 for 4B, 40B, 76B (unverified).
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../io/checkpoint.hpp"
#include "../io/safetensors.hpp"

namespace tessera::models::internvl2::published {

using Json = nlohmann::ordered_json;

// One checkpoint tensor: its name and shape (bf16).
struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (const std::int64_t d : shape) n *= d;
    return n;
  }
  std::uint64_t bytes() const { return 2 * static_cast<std::uint64_t>(numel()); }
};

// One published size.
struct Size {
  std::string name;                 // the repository name: "InternVL2-8B"
  double card_billions = 0;         // the parameter count its model card gives
  Json config;                      // config.json
  std::vector<TensorSpec> tensors;  // state_dict order

  std::uint64_t parameters() const {
    std::uint64_t n = 0;
    for (const auto& t : tensors) n += static_cast<std::uint64_t>(t.numel());
    return n;
  }
};

namespace detail {

// ---- the two InternViT variants ---------------------------------------------

struct VisionSpec {
  std::int64_t hidden, heads, intermediate, layers;
  bool six_b;  // InternViT-6B-448px-V1-5: rms_norm, q/k norm, no qkv bias
};

inline constexpr VisionSpec kViT300M{1024, 16, 4096, 24, false};
inline constexpr VisionSpec kViT6B{3200, 25, 12800, 45, true};
inline constexpr std::int64_t kImageSize = 448, kPatch = 14;

// vision_config: InternVisionConfig as the InternVL2 repositories write it
// (model-specs §B.2; initializer_factor is the initial LayerScale, unused
// here since the learned values are stored).
inline Json vision_config(const VisionSpec& v) {
  return Json{{"architectures", Json::array({"InternVisionModel"})},
              {"attention_dropout", 0.0},
              {"dropout", 0.0},
              {"hidden_act", "gelu"},
              {"hidden_size", v.hidden},
              {"image_size", kImageSize},
              {"initializer_factor", v.six_b ? 0.1 : 1.0},
              {"initializer_range", 0.02},
              {"intermediate_size", v.intermediate},
              {"layer_norm_eps", 1e-6},
              {"model_type", "intern_vit_6b"},
              {"norm_type", v.six_b ? "rms_norm" : "layer_norm"},
              {"num_attention_heads", v.heads},
              {"num_channels", 3},
              {"num_hidden_layers", v.layers},
              {"patch_size", kPatch},
              {"qk_normalization", v.six_b},
              {"qkv_bias", !v.six_b},
              {"torch_dtype", "bfloat16"},
              {"use_flash_attn", true}};
}

inline void add(std::vector<TensorSpec>& out, std::string name, std::vector<std::int64_t> shape) {
  out.push_back({std::move(name), std::move(shape)});
}

inline void vision_tensors(std::vector<TensorSpec>& out, const VisionSpec& v) {
  const std::int64_t C = v.hidden, I = v.intermediate, grid = kImageSize / kPatch;
  const std::string e = "vision_model.embeddings.";
  add(out, e + "class_embedding", {1, 1, C});
  add(out, e + "patch_embedding.weight", {C, 3, kPatch, kPatch});
  add(out, e + "patch_embedding.bias", {C});
  add(out, e + "position_embedding", {1, 1 + grid * grid, C});
  for (std::int64_t l = 0; l < v.layers; ++l) {
    const std::string p = tessera::detail::concat("vision_model.encoder.layers.", l, ".");
    add(out, p + "ls1", {C});
    add(out, p + "ls2", {C});
    add(out, p + "attn.qkv.weight", {3 * C, C});
    if (!v.six_b) add(out, p + "attn.qkv.bias", {3 * C});
    if (v.six_b) {
      add(out, p + "attn.q_norm.weight", {C});
      add(out, p + "attn.k_norm.weight", {C});
    }
    add(out, p + "attn.proj.weight", {C, C});
    add(out, p + "attn.proj.bias", {C});
    add(out, p + "mlp.fc1.weight", {I, C});
    add(out, p + "mlp.fc1.bias", {I});
    add(out, p + "mlp.fc2.weight", {C, I});
    add(out, p + "mlp.fc2.bias", {C});
    for (const char* norm : {"norm1", "norm2"}) {
      add(out, p + norm + ".weight", {C});
      if (!v.six_b) add(out, p + norm + ".bias", {C});
    }
  }
}

// mlp1: LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H) (pixel shuffle
// 0.5 puts four C-wide tokens in one).
inline void projector_tensors(std::vector<TensorSpec>& out, const VisionSpec& v, std::int64_t llm_hidden) {
  const std::int64_t in = 4 * v.hidden;
  add(out, "mlp1.0.weight", {in});
  add(out, "mlp1.0.bias", {in});
  add(out, "mlp1.1.weight", {llm_hidden, in});
  add(out, "mlp1.1.bias", {llm_hidden});
  add(out, "mlp1.3.weight", {llm_hidden, llm_hidden});
  add(out, "mlp1.3.bias", {llm_hidden});
}

// ---- the language models ----------------------------------------------------

enum class Family : std::uint8_t { qwen2, internlm2, phi3, llama };

// The dimensions the tensor table needs, read back from llm_config so the
// table cannot disagree with the config.
struct LlmDims {
  Family family;
  std::int64_t hidden, layers, heads, kv_heads, intermediate, vocab;
};

inline LlmDims llm_dims(const Json& llm) {
  const std::string arch = llm.at("architectures").at(0).get<std::string>();
  Family family = Family::llama;
  if (arch == "Qwen2ForCausalLM") family = Family::qwen2;
  else if (arch == "InternLM2ForCausalLM") family = Family::internlm2;
  else if (arch == "Phi3ForCausalLM") family = Family::phi3;
  return {family,
          llm.at("hidden_size").get<std::int64_t>(),
          llm.at("num_hidden_layers").get<std::int64_t>(),
          llm.at("num_attention_heads").get<std::int64_t>(),
          llm.at("num_key_value_heads").get<std::int64_t>(),
          llm.at("intermediate_size").get<std::int64_t>(),
          llm.at("vocab_size").get<std::int64_t>()};
}

inline void language_tensors(std::vector<TensorSpec>& out, const LlmDims& d) {
  const std::int64_t H = d.hidden, I = d.intermediate, hd = d.hidden / d.heads;
  const std::int64_t q = d.heads * hd, kv = d.kv_heads * hd;
  const bool internlm2 = d.family == Family::internlm2;
  const std::string m = "language_model.model.";
  add(out, m + (internlm2 ? "tok_embeddings.weight" : "embed_tokens.weight"), {d.vocab, H});
  for (std::int64_t l = 0; l < d.layers; ++l) {
    const std::string p = tessera::detail::concat(m, "layers.", l, ".");
    switch (d.family) {
      case Family::internlm2:
        add(out, p + "attention.wqkv.weight", {q + 2 * kv, H});
        add(out, p + "attention.wo.weight", {H, q});
        add(out, p + "feed_forward.w1.weight", {I, H});
        add(out, p + "feed_forward.w3.weight", {I, H});
        add(out, p + "feed_forward.w2.weight", {H, I});
        add(out, p + "attention_norm.weight", {H});
        add(out, p + "ffn_norm.weight", {H});
        break;
      case Family::phi3:
        add(out, p + "self_attn.o_proj.weight", {H, q});
        add(out, p + "self_attn.qkv_proj.weight", {q + 2 * kv, H});
        add(out, p + "mlp.gate_up_proj.weight", {2 * I, H});
        add(out, p + "mlp.down_proj.weight", {H, I});
        add(out, p + "input_layernorm.weight", {H});
        add(out, p + "post_attention_layernorm.weight", {H});
        break;
      case Family::qwen2:
      case Family::llama: {
        const bool bias = d.family == Family::qwen2;
        add(out, p + "self_attn.q_proj.weight", {q, H});
        if (bias) add(out, p + "self_attn.q_proj.bias", {q});
        add(out, p + "self_attn.k_proj.weight", {kv, H});
        if (bias) add(out, p + "self_attn.k_proj.bias", {kv});
        add(out, p + "self_attn.v_proj.weight", {kv, H});
        if (bias) add(out, p + "self_attn.v_proj.bias", {kv});
        add(out, p + "self_attn.o_proj.weight", {H, q});
        add(out, p + "mlp.gate_proj.weight", {I, H});
        add(out, p + "mlp.up_proj.weight", {I, H});
        add(out, p + "mlp.down_proj.weight", {H, I});
        add(out, p + "input_layernorm.weight", {H});
        add(out, p + "post_attention_layernorm.weight", {H});
        break;
      }
    }
  }
  add(out, m + "norm.weight", {H});
  // Every InternVL2 llm_config says tie_word_embeddings false: the output
  // projection is its own tensor.
  add(out, internlm2 ? "language_model.output.weight" : "language_model.lm_head.weight", {d.vocab, H});
}

// InternLM2's remote-code llm_config (2B, 8B, 26B): bias false (the class
// default is true), dynamic NTK scaling above max_position_embeddings.
inline Json internlm2_config(const char* base, std::int64_t hidden, std::int64_t layers, std::int64_t heads,
                             std::int64_t intermediate, double rope_factor) {
  return Json{{"_name_or_path", base},
              {"architectures", Json::array({"InternLM2ForCausalLM"})},
              {"attn_implementation", "eager"},
              {"auto_map",
               {{"AutoConfig", "configuration_internlm2.InternLM2Config"},
                {"AutoModel", "modeling_internlm2.InternLM2ForCausalLM"},
                {"AutoModelForCausalLM", "modeling_internlm2.InternLM2ForCausalLM"}}},
              {"bias", false},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"hidden_act", "silu"},
              {"hidden_size", hidden},
              {"initializer_range", 0.02},
              {"intermediate_size", intermediate},
              {"max_position_embeddings", 32768},
              {"model_type", "internlm2"},
              {"num_attention_heads", heads},
              {"num_hidden_layers", layers},
              {"num_key_value_heads", 8},
              {"pad_token_id", 2},
              {"rms_norm_eps", 1e-5},
              {"rope_scaling", {{"factor", rope_factor}, {"type", "dynamic"}}},
              {"rope_theta", 1000000},
              {"tie_word_embeddings", false},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"vocab_size", 92553}};
}

// Llama's llm_config (40B, 76B): no biases, plain RoPE at rope_theta.
inline Json llama_config(const char* base, std::int64_t hidden, std::int64_t layers, std::int64_t heads,
                         std::int64_t intermediate, std::int64_t vocab, double rope_theta, std::int64_t max_positions,
                         std::int64_t bos, std::int64_t eos) {
  return Json{{"_name_or_path", base},
              {"architectures", Json::array({"LlamaForCausalLM"})},
              {"attention_bias", false},
              {"attention_dropout", 0.0},
              {"bos_token_id", bos},
              {"eos_token_id", eos},
              {"hidden_act", "silu"},
              {"hidden_size", hidden},
              {"initializer_range", 0.02},
              {"intermediate_size", intermediate},
              {"max_position_embeddings", max_positions},
              {"model_type", "llama"},
              {"num_attention_heads", heads},
              {"num_hidden_layers", layers},
              {"num_key_value_heads", 8},
              {"pretraining_tp", 1},
              {"rms_norm_eps", 1e-5},
              {"rope_scaling", nullptr},
              {"rope_theta", rope_theta},
              {"tie_word_embeddings", false},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"vocab_size", vocab}};
}

// Qwen2-0.5B-Instruct as InternVL2-1B's llm_config holds it [verified:
// dims, vocab 151655, rms_norm_eps, rope_theta, max positions, untied].
inline Json qwen2_0_5b() {
  return Json{{"_name_or_path", "Qwen/Qwen2-0.5B-Instruct"},
              {"architectures", Json::array({"Qwen2ForCausalLM"})},
              {"attention_dropout", 0.0},
              {"bos_token_id", 151643},
              {"eos_token_id", 151645},
              {"hidden_act", "silu"},
              {"hidden_size", 896},
              {"initializer_range", 0.02},
              {"intermediate_size", 4864},
              {"max_position_embeddings", 32768},
              {"max_window_layers", 24},
              {"model_type", "qwen2"},
              {"num_attention_heads", 14},
              {"num_hidden_layers", 24},
              {"num_key_value_heads", 2},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 1000000.0},
              {"sliding_window", 32768},
              {"tie_word_embeddings", false},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"use_sliding_window", false},
              {"vocab_size", 151655}};
}

// Phi-3-mini-128k-instruct (the first release, whose rope_scaling type "su"
// is the one InternVL's vendored modeling_phi3.py accepts) with its
// LongRoPE factor lists, head_dim / 2 = 48 each [the lists verified from a
// copy of the Phi-3-128k config.json; the other fields from the base model].
inline Json phi3_mini_128k() {
  const std::vector<double> long_factor{
      1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547, 1.2299998998641968,
      1.2299998998641968, 1.2999999523162842, 1.4499999284744263, 1.5999999046325684, 1.6499998569488525,
      1.8999998569488525, 2.859999895095825,  3.68999981880188,   5.419999599456787,  5.489999771118164,
      5.489999771118164,  9.09000015258789,   11.579999923706055, 15.65999984741211,  15.769999504089355,
      15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055, 30.009998321533203,
      32.35000228881836,  32.590003967285156, 35.56000518798828,  39.95000457763672,  53.840003967285156,
      56.20000457763672,  57.95000457763672,  59.29000473022461,  59.77000427246094,  59.920005798339844,
      61.190006256103516, 61.96000671386719,  62.50000762939453,  63.3700065612793,   63.48000717163086,
      63.48000717163086,  63.66000747680664,  63.850006103515625, 64.08000946044922,  64.760009765625,
      64.80001068115234,  64.81001281738281,  64.81001281738281};
  const std::vector<double> short_factor{
      1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2500000000000002, 1.2500000000000002, 1.4000000000000004,
      1.4500000000000004, 1.5500000000000005, 1.8500000000000008, 1.9000000000000008, 2.000000000000001,
      2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
      2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
      2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
      2.000000000000001, 2.000000000000001, 2.000000000000001, 2.1000000000000005, 2.1000000000000005,
      2.2, 2.3499999999999996, 2.3499999999999996, 2.3499999999999996, 2.3499999999999996,
      2.3999999999999995, 2.3999999999999995, 2.6499999999999986, 2.6999999999999984, 2.8999999999999977,
      2.9499999999999975, 3.049999999999997, 3.049999999999997, 3.049999999999997};
  return Json{{"_name_or_path", "microsoft/Phi-3-mini-128k-instruct"},
              {"architectures", Json::array({"Phi3ForCausalLM"})},
              {"attention_dropout", 0.0},
              {"bos_token_id", 1},
              {"embd_pdrop", 0.0},
              {"eos_token_id", 32000},
              {"hidden_act", "silu"},
              {"hidden_size", 3072},
              {"initializer_range", 0.02},
              {"intermediate_size", 8192},
              {"max_position_embeddings", 131072},
              {"model_type", "phi3"},
              {"num_attention_heads", 32},
              {"num_hidden_layers", 32},
              {"num_key_value_heads", 32},
              {"original_max_position_embeddings", 4096},
              {"pad_token_id", 32000},
              {"resid_pdrop", 0.0},
              {"rms_norm_eps", 1e-5},
              {"rope_scaling", {{"long_factor", long_factor}, {"short_factor", short_factor}, {"type", "su"}}},
              {"rope_theta", 10000.0},
              {"sliding_window", 262144},
              {"tie_word_embeddings", false},
              {"torch_dtype", "bfloat16"},
              {"use_cache", true},
              {"vocab_size", 32020}};
}

// config.json: InternVLChatConfig around the two nested configs, with the
// model cards' tiling (max 12 tiles + thumbnail) and projector settings.
inline Json chat_config(const char* template_name, Json llm, const VisionSpec& vision) {
  return Json{{"architectures", Json::array({"InternVLChatModel"})},
              {"auto_map",
               {{"AutoConfig", "configuration_internvl_chat.InternVLChatConfig"},
                {"AutoModel", "modeling_internvl_chat.InternVLChatModel"},
                {"AutoModelForCausalLM", "modeling_internvl_chat.InternVLChatModel"}}},
              {"downsample_ratio", 0.5},
              {"dynamic_image_size", true},
              {"force_image_size", kImageSize},
              {"llm_config", std::move(llm)},
              {"max_dynamic_patch", 12},
              {"min_dynamic_patch", 1},
              {"model_type", "internvl_chat"},
              {"ps_version", "v2"},
              {"select_layer", -1},
              {"template", template_name},
              {"torch_dtype", "bfloat16"},
              {"transformers_version", "4.37.2"},
              {"use_backbone_lora", 0},
              {"use_llm_lora", 0},
              {"use_thumbnail", true},
              {"vision_config", vision_config(vision)}};
}

inline Size make(const char* name, double card_billions, Json config, const VisionSpec& vision) {
  Size s;
  s.name = name;
  s.card_billions = card_billions;
  const LlmDims dims = llm_dims(config.at("llm_config"));
  vision_tensors(s.tensors, vision);
  language_tensors(s.tensors, dims);
  projector_tensors(s.tensors, vision, dims.hidden);
  s.config = std::move(config);
  return s;
}

inline const std::array<std::string_view, 7> kNames{"InternVL2-1B",  "InternVL2-2B",  "InternVL2-4B",
                                                    "InternVL2-8B",  "InternVL2-26B", "InternVL2-40B",
                                                    "InternVL2-Llama3-76B"};

}  // namespace detail

// The seven repository names, smallest first.
inline std::vector<std::string> names() { return {detail::kNames.begin(), detail::kNames.end()}; }

// The published size `name` ("InternVL2-8B", ...); ValueError naming the
// seven for anything else.
inline Size size(std::string_view name) {
  using namespace detail;
  if (name == "InternVL2-1B") return make("InternVL2-1B", 0.9, chat_config("Hermes-2", qwen2_0_5b(), kViT300M), kViT300M);
  if (name == "InternVL2-2B") {
    // internlm2-chat-1_8b's fields from the base model (its rope_scaling
    // unverified: oracle doc §1.3).
    return make("InternVL2-2B", 2.2,
                chat_config("internlm2-chat", internlm2_config("internlm/internlm2-chat-1_8b", 2048, 24, 16, 8192, 2.0),
                            kViT300M),
                kViT300M);
  }
  if (name == "InternVL2-4B") {
    return make("InternVL2-4B", 4.2, chat_config("phi3-chat", phi3_mini_128k(), kViT300M), kViT300M);
  }
  if (name == "InternVL2-8B") {  // [verified: model-specs §B.1]
    return make("InternVL2-8B", 8.1,
                chat_config("internlm2-chat", internlm2_config("internlm/internlm2_5-7b-chat", 4096, 32, 32, 14336, 2.0),
                            kViT300M),
                kViT300M);
  }
  if (name == "InternVL2-26B") {  // [verified: model-specs §B.1]
    return make("InternVL2-26B", 25.5,
                chat_config("internlm2-chat", internlm2_config("internlm/internlm2-chat-20b", 6144, 48, 48, 16384, 3.0),
                            kViT6B),
                kViT6B);
  }
  if (name == "InternVL2-40B") {
    // Nous-Hermes-2-Yi-34B: Yi's 4k positions and rope_theta 5e6; eos 7 is
    // <|im_end|> (Hermes-2's stop ids are 2, 6, 7, 8).
    return make("InternVL2-40B", 40.1,
                chat_config("Hermes-2",
                            llama_config("NousResearch/Nous-Hermes-2-Yi-34B", 7168, 60, 56, 20480, 64009, 5000000.0,
                                         4096, 1, 7),
                            kViT6B),
                kViT6B);
  }
  if (name == "InternVL2-Llama3-76B") {
    // Hermes-2-Theta-Llama-3-70B: Llama-3's 8k positions and rope_theta
    // 5e5; eos 128003 is its <|im_end|>.
    return make("InternVL2-Llama3-76B", 76.3,
                chat_config("internlm2-chat",
                            llama_config("NousResearch/Hermes-2-Theta-Llama-3-70B", 8192, 80, 64, 28672, 128265,
                                         500000.0, 8192, 128000, 128003),
                            kViT6B),
                kViT6B);
  }
  std::string known;
  for (const auto n : kNames) known += tessera::detail::concat(known.empty() ? "" : ", ", n);
  throw ValueError(tessera::detail::concat("unknown InternVL2 size '", name, "': the published sizes are ", known));
}

// ---- headers-only checkpoints -------------------------------------------------

// One safetensors file of a sharded checkpoint.
struct Shard {
  std::string file;
  std::vector<std::size_t> tensors;  // indices into Size::tensors
  std::uint64_t bytes = 0;           // data bytes
};

// transformers' sharding (modeling_utils.shard_checkpoint): tensors in
// order, a new shard when the next one would take the current past
// `max_bytes` (5 GB, decimal, the hub's default for these repositories).
inline std::vector<Shard> shards(const Size& size, std::uint64_t max_bytes = 5'000'000'000) {
  std::vector<Shard> out;
  for (std::size_t i = 0; i < size.tensors.size(); ++i) {
    const std::uint64_t b = size.tensors[i].bytes();
    if (out.empty() || (out.back().bytes + b > max_bytes && !out.back().tensors.empty())) out.emplace_back();
    out.back().tensors.push_back(i);
    out.back().bytes += b;
  }
  const auto zero_padded = [](std::size_t v) {
    std::string s = std::to_string(v);
    return std::string(s.size() < 5 ? 5 - s.size() : 0, '0') + s;
  };
  for (std::size_t k = 0; k < out.size(); ++k) {
    out[k].file = out.size() == 1 ? std::string(io::kSingleCheckpointFile)
                                  : tessera::detail::concat("model-", zero_padded(k + 1), "-of-",
                                                            zero_padded(out.size()), ".safetensors");
  }
  return out;
}

namespace detail {

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(tessera::detail::concat("cannot create '", path.string(), "': ", std::strerror(errno)));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) throw IoError(tessera::detail::concat("writing '", path.string(), "' failed"));
}

// A shard's safetensors file with its header and a hole for its data: the
// header as the reference writer lays it out (tensors sorted by name, all
// BF16, contiguous; "__metadata__" {"format": "pt"} first; padded with
// spaces to 8 bytes), then the file extended to 8 + header + data bytes.
inline void write_sparse_shard(const std::filesystem::path& path, const Size& size, const Shard& shard) {
  std::vector<std::size_t> order = shard.tensors;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return size.tensors[a].name < size.tensors[b].name; });
  Json header = Json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::uint64_t offset = 0;
  for (const std::size_t i : order) {
    const TensorSpec& t = size.tensors[i];
    header[t.name] = {{"dtype", std::string(io::dtype_name(io::SafetensorsDtype::BF16))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string prefix(8, '\0');
  std::uint64_t n = text.size();
  for (auto& c : prefix) {
    c = static_cast<char>(n & 0xffu);
    n >>= 8;
  }
  write_text(path, prefix + text);
  std::error_code ec;
  std::filesystem::resize_file(path, 8 + text.size() + offset, ec);
  if (ec) {
    throw IoError(tessera::detail::concat("cannot extend '", path.string(), "' to ", 8 + text.size() + offset,
                                          " bytes (its data, left sparse): ", ec.message()));
  }
}

}  // namespace detail

// Writes `size` as a headers-only checkpoint into `dir` (created; it must
// not exist or be empty): config.json, the shards with their data left
// sparse, and model.safetensors.index.json when there are several.
// IoError naming the path for a non-empty directory or a failed write.
inline void write_headers_only(const Size& size, const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  using tessera::detail::concat;
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw IoError(concat("'", dir.string(), "' exists and is not a directory"));
    if (!fs::is_empty(dir, ec)) {
      throw IoError(concat("'", dir.string(), "' is not empty; write ", size.name, " into a new or empty directory"));
    }
  } else if (!fs::create_directories(dir, ec) || ec) {
    throw IoError(concat("cannot create directory '", dir.string(), "': ", ec.message()));
  }
  detail::write_text(dir / "config.json", size.config.dump(2) + "\n");
  const std::vector<Shard> parts = shards(size);
  Json weight_map = Json::object();
  std::uint64_t total = 0;
  std::map<std::string, std::string> sorted;  // the index lists tensors by name, as transformers writes it
  for (const Shard& shard : parts) {
    detail::write_sparse_shard(dir / shard.file, size, shard);
    total += shard.bytes;
    for (const std::size_t i : shard.tensors) sorted.emplace(size.tensors[i].name, shard.file);
  }
  if (parts.size() > 1) {
    for (const auto& [name, file] : sorted) weight_map[name] = file;
    const Json index{{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
    detail::write_text(dir / io::kCheckpointIndexFile, index.dump(2) + "\n");
  }
}

}  // namespace tessera::models::internvl2::published
