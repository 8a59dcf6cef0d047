// libFuzzer target for the JSON files of a Hugging Face checkpoint:
// model.safetensors.index.json (parse_checkpoint_index), config.json
// (DecoderConfig, then the decoder's judgement of it; MiniCPM-V's Config;
// InternVL2's Config with its llm_config, vision_config and tiling keys),
// generation_config.json (GenerationConfig) and MiniCPM-V's
// preprocessor_config.json (ProcessorConfig). Every input goes through all
// six parsers; each must either succeed (and then satisfy
// its invariants) or fail with a tessera::Error. Anything else (a crash, a
// sanitizer report, a foreign exception such as nlohmann's, a broken
// invariant) is a bug.
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON; the same function is replayed over the committed
// seed corpus (tests/fuzz/corpus/hf_json) by the fuzz_hf_json_corpus CTest
// with any compiler.
#include <tessera/io/checkpoint.hpp>
#include <tessera/io/config.hpp>
#include <tessera/models/decoder_family.hpp>
#include <tessera/models/internvl2.hpp>
#include <tessera/models/minicpm_v.hpp>
#include <tessera/models/minicpm_v_processor.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void index_invariants(std::string_view text) {
  const auto index = tessera::io::parse_checkpoint_index(text, "fuzz-index.json");
  check(!index.weight_map.empty() && !index.shards.empty());
  check(std::is_sorted(index.shards.begin(), index.shards.end()));
  check(std::adjacent_find(index.shards.begin(), index.shards.end()) == index.shards.end());
  for (const auto& shard : index.shards) check(tessera::io::detail::plain_file_name(shard));
  for (const auto& [name, id] : index.weight_map) check(id < index.shards.size());
}

void config_invariants(std::string_view text) {
  const auto c = tessera::io::Qwen2Config::parse(text, "fuzz-config.json");
  check(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.max_position_embeddings > 0);
  check(c.num_attention_heads > 0 && c.num_key_value_heads > 0);
  check(c.num_attention_heads % c.num_key_value_heads == 0);
  check(c.head_dim() > 0);
  check(c.head_dim_override || c.hidden_size % c.num_attention_heads == 0);
  check(c.rms_norm_eps > 0 && c.rope.theta > 0);
  check(static_cast<std::int64_t>(c.layer_types.size()) == c.num_hidden_layers);
  for (auto id : c.eos_token_ids) check(id >= 0);
  for (const double f : c.rope.short_factor) check(f > 0);
  for (const double f : c.rope.long_factor) check(f > 0);
  // io parses every RoPE variant; the decoder's judgement (the one place
  // that says what runs) either refuses the config with a tessera::Error
  // or leaves a variant whose parameters the RoPE code can rely on.
  const auto weights = tessera::models::weights_for(tessera::models::detect_family(c, "fuzz-config.json"));
  tessera::models::check_decoder_config(c, weights, "fuzz-config.json");
  const auto& r = c.rope;
  const auto half = static_cast<std::size_t>(c.head_dim() / 2);
  check(r.type == "default" || r.type == "mrope" || r.type == "linear" || r.type == "dynamic" || r.is_longrope() ||
        r.type == "llama3");
  if (r.type == "linear" || r.type == "dynamic") check(r.factor && *r.factor > 0);
  if (r.is_longrope()) {
    check(r.original_max_position_embeddings && *r.original_max_position_embeddings > 0);
    check(r.short_factor.size() == half && r.long_factor.size() == half);
  }
  if (r.type == "llama3") {
    check(r.factor && r.low_freq_factor && r.high_freq_factor && *r.high_freq_factor > *r.low_freq_factor);
    check(r.original_max_position_embeddings && *r.original_max_position_embeddings > 0);
  }
}

void generation_invariants(std::string_view text) {
  const auto g = tessera::io::GenerationConfig::parse(text, "fuzz-generation.json");
  check(g.temperature >= 0 && g.top_k >= 0 && g.top_p > 0 && g.top_p <= 1 && g.repetition_penalty > 0);
  check(!g.max_new_tokens || *g.max_new_tokens > 0);
  check(g.max_length > 0);
}

// MiniCPM-V's config.json: what the model and the resampler are built from.
void minicpm_v_config_invariants(std::string_view text) {
  namespace mv = tessera::models::minicpm_v;
  const auto json = tessera::io::detail::parse_json_text(text, "fuzz-minicpmv-config.json");
  const auto c = mv::Config::from_json(json, "fuzz-minicpmv-config.json");
  check(c.version == 2.6);
  check(c.resampler.num_queries > 0 && c.resampler.embed_dim == c.text.hidden_size);
  check(c.resampler.num_heads > 0 && c.resampler.num_heads * 128 == c.resampler.embed_dim);
  check(c.resampler.kv_dim == c.vision.hidden_size);
  check(c.vision.hidden_size > 0 && c.vision.num_attention_heads > 0 && c.vision.num_hidden_layers > 0);
  check(c.vision.patch_size > 0 && c.vision.image_size >= c.vision.patch_size);
}

// MiniCPM-V's preprocessor_config.json: what the slicer divides by.
void minicpm_v_processor_invariants(std::string_view text) {
  namespace mv = tessera::models::minicpm_v;
  const auto json = tessera::io::detail::parse_json_text(text, "fuzz-preprocessor.json");
  const auto p = mv::ProcessorConfig::from_json(json, "fuzz-preprocessor.json");
  check(p.max_slice_nums >= 1 && p.max_slice_nums <= mv::kMaxSliceNums);
  check(p.patch_size > 0 && p.scale_resolution > 0 && p.image_feature_size > 0);
  for (std::size_t i = 0; i < 3; ++i) check(p.std[i] != 0);
}

// InternVL2's config.json: the tower, the shuffle and the tiling the model
// and the processor divide by.
void internvl2_config_invariants(std::string_view text) {
  namespace iv = tessera::models::internvl2;
  const auto json = tessera::io::detail::parse_json_text(text, "fuzz-internvl2-config.json");
  const auto c = iv::Config::from_json(json, "fuzz-internvl2-config.json");
  check(c.vision.hidden_size > 0 && c.vision.num_attention_heads > 0 && c.vision.patch_size > 0);
  check(c.vision.hidden_size % c.vision.num_attention_heads == 0);
  // select_layer 0 (or -(layers + 1)) is hidden_states[0], the embedding
  // output, as in the reference: a valid tower that runs no layer.
  const std::int64_t used = iv::layers_used(c.vision, c.projector.select_layer);
  check(used >= 0 && used <= c.vision.num_hidden_layers);
  check(c.tokens_per_tile() > 0);
  check(c.projector.llm_hidden == c.text.hidden_size);
  check(c.processor.min_num >= 1 && c.processor.min_num <= c.processor.max_num);
  check(c.processor.image_size == c.projector.image_size && c.processor.image_size % c.vision.patch_size == 0);
  tessera::models::check_decoder_config(c.text, tessera::models::weights_for(c.family), "fuzz-internvl2-config.json");
}

template <class Fn>
void expect_clean(Fn&& fn, std::string_view text) {
  try {
    fn(text);
  } catch (const tessera::Error&) {
    // a rejected file: expected
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  expect_clean(index_invariants, text);
  expect_clean(config_invariants, text);
  expect_clean(generation_invariants, text);
  expect_clean(minicpm_v_config_invariants, text);
  expect_clean(minicpm_v_processor_invariants, text);
  expect_clean(internvl2_config_invariants, text);
  return 0;
}
