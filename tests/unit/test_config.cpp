// config.json and generation_config.json: transformers' defaults for absent
// keys, every key read, real published configs, and one test per kind of
// bad value with its message (file, key, value).
#include <tessera/io/config.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include "test_util.hpp"

namespace {

using namespace tessera;
using namespace tessera::io;
using tessera::testing::expect_error;

void expect_config_error(const std::string& json, std::initializer_list<std::string> parts) {
  expect_error<FormatError>([&] { (void)Qwen2Config::parse(json, "cfg/config.json"); }, parts);
}
void expect_generation_error(const std::string& json, std::initializer_list<std::string> parts) {
  expect_error<FormatError>([&] { (void)GenerationConfig::parse(json, "gen.json"); }, parts);
}

TEST(Qwen2ConfigTest, EmptyObjectGivesTransformersDefaults) {
  const auto c = Qwen2Config::parse("{}");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 22016);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim(), 128);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.torch_dtype);
  EXPECT_FALSE(c.bos_token_id);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_FALSE(c.pad_token_id);
  EXPECT_FALSE(c.use_sliding_window);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.effective_sliding_window(), std::nullopt);  // use_sliding_window is false
  EXPECT_EQ(c.max_window_layers, 28);
  ASSERT_EQ(c.layer_types.size(), 32u);
  for (auto k : c.layer_types) EXPECT_EQ(k, AttentionKind::full);
}

// Qwen2-0.5B's config.json as published (InternVL2-1B's language model).
TEST(Qwen2ConfigTest, PublishedQwen2Config) {
  const auto c = Qwen2Config::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
  EXPECT_EQ(c.hidden_size, 896);
  EXPECT_EQ(c.num_attention_heads, 14);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.intermediate_size, 4864);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{151643}));
  EXPECT_EQ(c.effective_sliding_window(), std::nullopt);
  EXPECT_EQ(c.layer_types.size(), 24u);
}

TEST(Qwen2ConfigTest, EveryKeyIsRead) {
  const auto c = Qwen2Config::parse(R"({
    "model_type": "qwen2_5_vl", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 500000,
    "tie_word_embeddings": true, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": [2, 3],
    "pad_token_id": 0, "use_sliding_window": true, "sliding_window": 16, "max_window_layers": 3,
    "attention_dropout": 0.1, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}})");
  EXPECT_EQ(c.model_type, "qwen2_5_vl");
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.intermediate_size, 96);
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope.theta, 500000.0);  // an integer is a valid float, as in Python
  EXPECT_EQ(c.rope.type, "mrope");
  EXPECT_EQ(c.rope.mrope_section, (std::vector<std::int64_t>{2, 3, 3}));
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.effective_sliding_window(), 16);
  EXPECT_EQ(c.layer_types, (std::vector<AttentionKind>{AttentionKind::full, AttentionKind::full, AttentionKind::full,
                                                       AttentionKind::sliding}));
}

TEST(Qwen2ConfigTest, NullsAndNewerSpellings) {
  // null num_key_value_heads: num_attention_heads ("backward compatibility").
  const auto a = Qwen2Config::parse(R"({"num_attention_heads": 8, "hidden_size": 64, "num_key_value_heads": null,
                                        "rope_scaling": null, "sliding_window": null, "eos_token_id": null})");
  EXPECT_EQ(a.num_key_value_heads, 8);
  EXPECT_EQ(a.sliding_window, std::nullopt);
  EXPECT_TRUE(a.eos_token_ids.empty());
  // transformers v5: rope_parameters (theta inside) and dtype; explicit head_dim and layer_types.
  const auto b = Qwen2Config::parse(R"({"hidden_size": 60, "num_attention_heads": 4, "num_key_value_heads": 4,
      "head_dim": 16, "num_hidden_layers": 2, "dtype": "bfloat16",
      "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
      "layer_types": ["full_attention", "sliding_attention"]})");
  EXPECT_EQ(b.head_dim(), 16);
  EXPECT_EQ(b.rope.theta, 1e6);
  EXPECT_EQ(b.torch_dtype, "bfloat16");
  EXPECT_EQ(b.layer_types[1], AttentionKind::sliding);
}

TEST(Qwen2ConfigTest, NestedTextConfigNamesTheKeyPath) {
  const auto root = nlohmann::json::parse(R"({"text_config": {"hidden_size": 64, "num_attention_heads": 3}})");
  expect_error<FormatError>([&] { (void)Qwen2Config::from_json(root["text_config"], "vl/config.json", "text_config."); },
                            {"vl/config.json", "\"text_config.num_attention_heads\"", "3 does not divide hidden_size 64"});
  expect_error<FormatError>([&] { (void)Qwen2Config::from_json(nlohmann::json(5), "vl/config.json", "text_config."); },
                            {"\"text_config\" must be a JSON object"});
}

TEST(Qwen2ConfigTest, WrongTypes) {
  expect_config_error(R"({"hidden_size": "896"})", {"cfg/config.json", "\"hidden_size\"", "must be an integer",
                                                    "a JSON string", "\"896\""});
  expect_config_error(R"({"num_hidden_layers": 2.5})", {"\"num_hidden_layers\"", "must be an integer", "2.5"});
  expect_config_error(R"({"rms_norm_eps": "1e-6"})", {"\"rms_norm_eps\"", "must be a number"});
  expect_config_error(R"({"tie_word_embeddings": 1})", {"\"tie_word_embeddings\"", "true or false", "(1)"});
  expect_config_error(R"({"hidden_act": 3})", {"\"hidden_act\"", "must be a string"});
  expect_config_error(R"({"eos_token_id": "</s>"})", {"\"eos_token_id\"", "non-negative integer"});
  expect_config_error(R"({"eos_token_id": [1, "x"]})", {"\"eos_token_id\"", "or a list of them"});
  expect_config_error(R"({"bos_token_id": -1})", {"\"bos_token_id\"", "-1"});
  expect_config_error(R"({"layer_types": ["full_attention"]})", {"\"layer_types\"", "1 entries", "32"});
  expect_config_error(R"({"layer_types": ["local"]})", {"\"layer_types\"", "\"local\""});
  expect_config_error("[1]", {"cfg/config.json", "the file must be a JSON object"});
  expect_config_error(R"({"hidden_size": )", {"cfg/config.json", "not valid JSON"});
  expect_config_error(std::string(100, '[') + std::string(100, ']'), {"deeper than 64"});
}

TEST(Qwen2ConfigTest, BadSizes) {
  expect_config_error(R"({"hidden_size": -896})", {"\"hidden_size\"", "positive integer", "-896"});
  expect_config_error(R"({"vocab_size": 0})", {"\"vocab_size\"", "positive"});
  expect_config_error(R"({"num_key_value_heads": -2})", {"\"num_key_value_heads\"", "-2"});
  expect_config_error(R"({"hidden_size": 900, "num_attention_heads": 14, "num_key_value_heads": 2})",
                      {"\"num_attention_heads\"", "14 does not divide hidden_size 900"});
  expect_config_error(R"({"hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 4})",
                      {"\"num_key_value_heads\"", "4 does not divide num_attention_heads 14"});
  // Absent num_key_value_heads is 32 in transformers, whatever the head count.
  expect_config_error(R"({"hidden_size": 896, "num_attention_heads": 14})",
                      {"32 (the default: the key is absent) does not divide num_attention_heads 14"});
  expect_config_error(R"({"rms_norm_eps": 0})", {"\"rms_norm_eps\"", "positive"});
  expect_config_error(R"({"rope_theta": -1})", {"\"rope_theta\"", "positive"});
  expect_config_error(R"({"sliding_window": 0})", {"\"sliding_window\"", "positive"});
  expect_config_error(R"({"use_sliding_window": true, "sliding_window": null})", {"\"sliding_window\"", "null"});
  expect_config_error(R"({"hidden_size": 99999999999999999999})", {"\"hidden_size\"", "must be an integer"});
}

// io/ parses every rope variant as written; which ones run is the
// decoder's judgement (test_decoder.cpp: DecoderConfigCheck).
TEST(Qwen2ConfigTest, RopeVariantsAreParsedNotJudged) {
  const auto yarn = Qwen2Config::parse(R"({"rope_scaling": {"type": "yarn", "factor": 4.0}})");
  EXPECT_EQ(yarn.rope.type, "yarn");
  EXPECT_EQ(yarn.rope.key, "rope_scaling");
  EXPECT_EQ(yarn.rope.factor, 4.0);
  const auto dynamic = Qwen2Config::parse(R"({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})");
  EXPECT_EQ(dynamic.rope.type, "dynamic");
  EXPECT_EQ(dynamic.rope.factor, 2.0);
  // Phi-3's published form: "su", factors, original maximum at the top level.
  const auto su = Qwen2Config::parse(R"({"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 8,
    "original_max_position_embeddings": 4096, "max_position_embeddings": 131072,
    "rope_scaling": {"type": "su", "short_factor": [1, 1.5, 2, 2], "long_factor": [3, 4, 5, 6.5]}})");
  EXPECT_TRUE(su.rope.is_longrope());
  EXPECT_EQ(su.rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(su.rope.short_factor, (std::vector<double>{1, 1.5, 2, 2}));
  EXPECT_EQ(su.rope.long_factor, (std::vector<double>{3, 4, 5, 6.5}));
  const auto llama3 = Qwen2Config::parse(R"({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})");
  EXPECT_EQ(llama3.rope.type, "llama3");
  EXPECT_EQ(llama3.rope.theta, 5e5);
  EXPECT_EQ(llama3.rope.low_freq_factor, 1.0);
  EXPECT_EQ(llama3.rope.high_freq_factor, 4.0);
  EXPECT_EQ(llama3.rope.original_max_position_embeddings, 8192);
  // InternLM2's bias switch and Llama's attention_bias.
  EXPECT_EQ(Qwen2Config::parse(R"({"bias": false})").attention_bias, false);
  EXPECT_EQ(Qwen2Config::parse(R"({"attention_bias": true})").attention_bias, true);
  EXPECT_FALSE(Qwen2Config::parse("{}").attention_bias.has_value());
  expect_config_error(R"({"rope_scaling": {"type": "su", "short_factor": [1, -2]}})",
                      {"\"rope_scaling.short_factor\"", "positive numbers"});
  expect_config_error(R"({"rope_scaling": {"type": "dynamic", "factor": 0}})", {"\"rope_scaling.factor\"", "positive"});
}

TEST(Qwen2ConfigTest, UnsupportedRopeScaling) {
  expect_config_error(R"({"rope_scaling": {"factor": 2.0}})", {"\"rope_scaling\"", "neither \"rope_type\" nor \"type\""});
  expect_config_error(R"({"rope_scaling": {"type": "mrope"}})", {"\"rope_scaling\"", "no \"mrope_section\""});
  expect_config_error(R"({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 23]}})",
                      {"mrope_section sums to 63", "head_dim / 2 = 64"});
  expect_config_error(R"({"rope_scaling": {"type": "mrope", "mrope_section": [16, -24, 24]}})",
                      {"\"rope_scaling.mrope_section\"", "positive integers"});
  expect_config_error(R"({"rope_scaling": "linear"})", {"\"rope_scaling\" must be a JSON object"});
  // Qwen2.5-VL's published form is accepted.
  EXPECT_EQ(Qwen2Config::parse(R"({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}})").rope.type,
            "mrope");
}

// ---- files ----------------------------------------------------------------------

class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tessera_cfg_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::filesystem::path dir_;
};

TEST_F(ConfigFiles, LoadFromDirectoryOrFile) {
  write("config.json", R"({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
                           "eos_token_id": 7, "bos_token_id": 6})");
  EXPECT_EQ(Qwen2Config::load(dir_).hidden_size, 64);
  EXPECT_EQ(Qwen2Config::load(dir_ / "config.json").hidden_size, 64);
  write("config.json", R"({"hidden_size": true})");
  expect_error<FormatError>([&] { (void)Qwen2Config::load(dir_); }, {(dir_ / "config.json").string(), "hidden_size"});
  expect_error<IoError>([&] { (void)Qwen2Config::load(dir_ / "missing.json"); }, {"missing.json", "no such file"});

  // No generation_config.json: defaults plus the model's token ids.
  write("config.json", R"({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
                           "eos_token_id": 7, "bos_token_id": 6})");
  const auto model = Qwen2Config::load(dir_);
  auto g = GenerationConfig::load_or_default(dir_, model);
  EXPECT_EQ(g.eos_token_ids, (std::vector<std::int64_t>{7}));
  EXPECT_EQ(g.bos_token_id, 6);
  EXPECT_EQ(g.top_k, 50);
  write("generation_config.json", R"({"eos_token_id": [1, 2], "do_sample": true, "temperature": 0.7})");
  g = GenerationConfig::load_or_default(dir_, model);
  EXPECT_EQ(g.eos_token_ids, (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(g.do_sample);
  EXPECT_EQ(g.temperature, 0.7);
}

// ---- generation_config.json ---------------------------------------------------------

TEST(GenerationConfigTest, Defaults) {
  const auto g = GenerationConfig::parse("{}");
  EXPECT_FALSE(g.do_sample);
  EXPECT_EQ(g.temperature, 1.0);
  EXPECT_EQ(g.top_k, 50);
  EXPECT_EQ(g.top_p, 1.0);
  EXPECT_EQ(g.repetition_penalty, 1.0);
  EXPECT_EQ(g.max_new_tokens, std::nullopt);
  EXPECT_EQ(g.max_length, 20);
  EXPECT_TRUE(g.eos_token_ids.empty());
  EXPECT_FALSE(g.bos_token_id);
  EXPECT_FALSE(g.pad_token_id);
}

// Qwen2.5-VL-style generation_config.json.
TEST(GenerationConfigTest, EveryKey) {
  const auto g = GenerationConfig::parse(R"({"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
      "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001,
      "top_k": 1, "max_new_tokens": 128, "max_length": 4096, "transformers_version": "4.49.0"})");
  EXPECT_TRUE(g.do_sample);
  EXPECT_EQ(g.temperature, 0.1);
  EXPECT_EQ(g.top_k, 1);
  EXPECT_EQ(g.top_p, 0.001);
  EXPECT_EQ(g.repetition_penalty, 1.05);
  EXPECT_EQ(g.max_new_tokens, 128);
  EXPECT_EQ(g.max_length, 4096);
  EXPECT_EQ(g.eos_token_ids, (std::vector<std::int64_t>{151645, 151643}));
  EXPECT_EQ(g.bos_token_id, 151643);
  EXPECT_EQ(g.pad_token_id, 151643);
  // null knobs are Python's None: the processor is off.
  const auto n = GenerationConfig::parse(R"({"top_k": null, "temperature": null, "top_p": null, "eos_token_id": 5})");
  EXPECT_EQ(n.top_k, 0);
  EXPECT_EQ(n.temperature, 1.0);
  EXPECT_EQ(n.top_p, 1.0);
  EXPECT_EQ(n.eos_token_ids, (std::vector<std::int64_t>{5}));
  // Greedy with temperature 0 is allowed (some published files say so).
  EXPECT_EQ(GenerationConfig::parse(R"({"temperature": 0.0})").temperature, 0.0);
}

TEST(GenerationConfigTest, BadValues) {
  expect_generation_error(R"({"do_sample": "yes"})", {"gen.json", "\"do_sample\"", "true or false", "\"yes\""});
  expect_generation_error(R"({"temperature": -1})", {"\"temperature\"", "-1"});
  expect_generation_error(R"({"temperature": 0, "do_sample": true})", {"\"temperature\"", "do_sample to false"});
  expect_generation_error(R"({"top_k": -3})", {"\"top_k\"", "-3"});
  expect_generation_error(R"({"top_k": 0.5})", {"\"top_k\"", "must be an integer"});
  expect_generation_error(R"({"top_p": 1.5})", {"\"top_p\"", "(0, 1]", "1.5"});
  expect_generation_error(R"({"top_p": 0})", {"\"top_p\""});
  expect_generation_error(R"({"repetition_penalty": 0})", {"\"repetition_penalty\"", "positive"});
  expect_generation_error(R"({"max_new_tokens": 0})", {"\"max_new_tokens\"", "positive", "0"});
  expect_generation_error(R"({"max_length": -1})", {"\"max_length\"", "-1"});
  expect_generation_error(R"({"eos_token_id": [1.5]})", {"\"eos_token_id\""});
  expect_generation_error(R"({"pad_token_id": "0"})", {"\"pad_token_id\"", "token id"});
  expect_generation_error("nope", {"gen.json", "not valid JSON"});
}

}  // namespace
