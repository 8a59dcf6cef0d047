// The shared decoder's judgement of a config (Decoder::check_supported, the
// one place that says what runs), its weight-name table, and the RoPE
// variants' frequencies against a naive double-precision statement of
// transformers' formulas. The end-to-end numbers are in
// test_decoder_golden.cpp (transformers fixtures) and
// test_decoder_placement.cpp (every placement against one device).
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <string>

#include <nlohmann/json.hpp>

#include <tessera/models/decoder.hpp>
#include <tessera/nn/rope_variants.hpp>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

namespace fs = std::filesystem;
using Model = models::Decoder<Single<Cpu<0>>, float>;

fs::path fixture(const std::string& name) { return tessera::testing::fixtures_dir() / name; }

// A copy of a fixture checkpoint whose config.json is edited by `edit`.
class EditedFixture {
 public:
  template <class Edit>
  EditedFixture(const std::string& name, Edit&& edit)
      : dir_(fs::temp_directory_path() / ("tessera_decoder_" + name + "_" + std::to_string(::getpid()) + "_" +
                                          std::to_string(counter()++))) {
    fs::create_directories(dir_);
    for (const auto& entry : fs::directory_iterator(fixture(name))) {
      if (entry.path().filename() != "config.json") fs::copy_file(entry.path(), dir_ / entry.path().filename());
    }
    nlohmann::json config = nlohmann::json::parse(std::ifstream(fixture(name) / "config.json"));
    edit(config);
    std::ofstream(dir_ / "config.json") << config.dump(2);
  }
  ~EditedFixture() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& dir() const { return dir_; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  fs::path dir_;
};

template <class Edit>
void expect_refused(const std::string& name, Edit&& edit, std::initializer_list<std::string> parts) {
  const EditedFixture f(name, edit);
  expect_error<FormatError>([&] { (void)Model::load(f.dir()); }, parts);
}

TEST(DecoderConfigCheck, UnsupportedVariantsAreRefusedBeforeLoadingNamingKeyAndValue) {
  expect_refused("llama", [](auto& c) { c["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 1e4}}; },
                 {"Llama", "config.json", "rope_parameters", "\"yarn\"", "does not support", "\"llama3\""});
  expect_refused("phi3", [](auto& c) { c["rope_scaling"]["short_factor"] = {1.0, 2.0}; },
                 {"Phi-3", "rope_scaling", "\"su\"", "short_factor has 2 entries", "head_dim / 2 = 8"});
  expect_refused("phi3", [](auto& c) { c.erase("original_max_position_embeddings"); },
                 {"rope_scaling", "no original_max_position_embeddings"});
  expect_refused("phi3", [](auto& c) { c["partial_rotary_factor"] = 0.5; }, {"partial_rotary_factor 0.5"});
  expect_refused("internlm2", [](auto& c) { c.erase("bias"); }, {"InternLM2", "bias is true (or absent"});
  expect_refused("internlm2", [](auto& c) { c["rope_scaling"] = {{"type", "dynamic"}}; },
                 {"rope_scaling", "\"dynamic\"", "no \"factor\""});
  expect_refused("llama", [](auto& c) { c["attention_bias"] = true; }, {"attention_bias is true"});
  expect_refused("llama", [](auto& c) { c["mlp_bias"] = true; }, {"mlp_bias"});
  expect_refused("llama", [](auto& c) { c["hidden_act"] = "gelu"; }, {"hidden_act \"gelu\""});
  expect_refused("llama", [](auto& c) {
    c["architectures"] = {"GemmaForCausalLM"};
    c["model_type"] = "gemma";
  }, {"config.json", "model_type \"gemma\"", "GemmaForCausalLM", "supported: qwen2"});
}

TEST(DecoderConfigCheck, TensorsAreCheckedAgainstTheConfigBeforeLoading) {
  // A config whose intermediate size disagrees with the stored gate_up_proj
  // names the fused tensor and both shapes.
  expect_refused("phi3", [](auto& c) { c["intermediate_size"] = 96; },
                 {"model.layers.0.mlp.gate_up_proj.weight", "[256, 64]", "[192, 64]"});
  expect_refused("internlm2", [](auto& c) { c["num_key_value_heads"] = 4; },
                 {"model.layers.0.attention.wqkv.weight", "[128, 64]", "[192, 64]"});
}

TEST(DecoderConfigCheck, PhiSlidingWindowBoundsTheCache) {
  const EditedFixture f("phi3", [](auto& c) { c["sliding_window"] = 64; });
  const Model m = Model::load(f.dir());
  EXPECT_NO_THROW((void)m.new_cache(64));
  expect_error<ValueError>([&] { (void)m.new_cache(65); }, {"Phi-3", "65 tokens", "sliding_window 64"});
}

TEST(DecoderFamilyTable, FamiliesAreDetectedAndNamed) {
  EXPECT_EQ(Model::load(fixture("llama")).family(), models::DecoderFamily::llama);
  EXPECT_EQ(Model::load(fixture("phi3")).name(), "Phi-3");
  EXPECT_EQ(Model::load(fixture("internlm2")).weights().qkv, "attention.wqkv");
  EXPECT_EQ(Model::load(fixture("qwen2/untied")).family(), models::DecoderFamily::qwen2);
}

// The planner's classification comes from the loader's table: every tensor
// of each fixture checkpoint is one the decoder loads, with the split a
// tensor-parallel rank takes of it.
TEST(DecoderFamilyTable, EveryCheckpointTensorIsClassified) {
  for (const std::string name : {"llama", "llama_yi", "phi3", "internlm2", "qwen2/untied"}) {
    const auto checkpoint = io::Checkpoint::open(fixture(name));
    const auto config = io::DecoderConfig::load(fixture(name));
    const auto weights = models::weights_for(models::detect_family(config, name));
    for (const auto& t : checkpoint.names()) {
      const auto role = models::decoder_tensor(weights, config, "model.", weights.lm_head, t);
      ASSERT_TRUE(role.has_value()) << name << ": " << t;
      const bool split_rows = t.find("proj") != std::string::npos || t.find("wqkv") != std::string::npos ||
                              t.find("w1") != std::string::npos || t.find("w3") != std::string::npos;
      const bool split_cols = t.find("o_proj") != std::string::npos || t.find("down_proj") != std::string::npos ||
                              t.find(".wo.") != std::string::npos || t.find(".w2.") != std::string::npos;
      if (split_cols) {
        EXPECT_EQ(role->split, models::DecoderSplit::columns) << t;
      } else if (split_rows) {
        EXPECT_EQ(role->split, models::DecoderSplit::rows) << t;
      } else {
        EXPECT_EQ(role->split, models::DecoderSplit::replicated) << t;
      }
    }
    EXPECT_FALSE(models::decoder_tensor(weights, config, "model.", weights.lm_head, "model.layers.99.mlp.x.weight"));
  }
}

// ---- RoPE variants against double precision ---------------------------------

std::vector<double> default_inv_freq(std::int64_t dim, double theta) {
  std::vector<double> f;
  for (std::int64_t i = 0; i < dim / 2; ++i) f.push_back(1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(dim)));
  return f;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rel = 2e-6) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], rel * std::abs(want[i])) << "frequency " << i;
  }
}

TEST(RopeVariants, Llama3BandsMatchTheFormula) {
  io::RopeConfig r;
  r.type = "llama3";
  r.theta = 5e5;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position_embeddings = 512;
  const std::int64_t dim = 16;
  std::vector<double> want;
  int scaled = 0, kept = 0, smoothed = 0;
  for (const double f : default_inv_freq(dim, r.theta)) {
    const double wavelen = 2.0 * std::numbers::pi / f, low = 512.0 / 1.0, high = 512.0 / 4.0;
    if (wavelen < high) {
      want.push_back(f), ++kept;
    } else if (wavelen > low) {
      want.push_back(f / 8.0), ++scaled;
    } else {
      const double smooth = (512.0 / wavelen - 1.0) / (4.0 - 1.0);
      want.push_back((1 - smooth) * f / 8.0 + smooth * f), ++smoothed;
    }
  }
  ASSERT_GT(scaled * kept * smoothed, 0) << "the case must exercise all three bands";
  const auto got = nn::rope_frequencies(r, dim, 4096, 10);
  expect_close(got.inv_freq, want);
  EXPECT_EQ(got.scale, 1.0f);
}

TEST(RopeVariants, LongRopeChoosesFactorsByLengthAndScalesTheMagnitude) {
  io::RopeConfig r;
  r.type = "su";
  r.theta = 1e4;
  r.original_max_position_embeddings = 32;
  r.short_factor = {1.0, 1.1, 1.2, 1.3};
  r.long_factor = {2.0, 3.0, 5.0, 8.0};
  const auto base = default_inv_freq(8, r.theta);
  std::vector<double> short_want, long_want;
  for (std::size_t i = 0; i < 4; ++i) {
    short_want.push_back(base[i] / r.short_factor[i]);
    long_want.push_back(base[i] / r.long_factor[i]);
  }
  const auto at32 = nn::rope_frequencies(r, 8, 128, 32);
  const auto at33 = nn::rope_frequencies(r, 8, 128, 33);
  expect_close(at32.inv_freq, short_want);
  expect_close(at33.inv_freq, long_want);
  const double scale = std::sqrt(1.0 + std::log(128.0 / 32.0) / std::log(32.0));
  EXPECT_NEAR(at32.scale, scale, 1e-7);
  EXPECT_EQ(nn::rope_frequencies(r, 8, 32, 40).scale, 1.0f);  // max_pos / original <= 1: no scaling
  r.attention_factor = 0.75;
  EXPECT_EQ(nn::rope_frequencies(r, 8, 128, 40).scale, 0.75f);
}

TEST(RopeVariants, DynamicNtkGrowsTheBaseOnlyPastTheMaximum) {
  io::RopeConfig r;
  r.type = "dynamic";
  r.theta = 1e4;
  r.factor = 2.0;
  const std::int64_t dim = 16, max_pos = 48;
  expect_close(nn::rope_frequencies(r, dim, max_pos, 48).inv_freq, default_inv_freq(dim, 1e4));
  const double grown = 1e4 * std::pow(2.0 * 60.0 / 48.0 - 1.0, 16.0 / 14.0);
  expect_close(nn::rope_frequencies(r, dim, max_pos, 60).inv_freq, default_inv_freq(dim, grown));
  r.type = "linear";
  std::vector<double> halved;
  for (const double f : default_inv_freq(dim, 1e4)) halved.push_back(f / 2.0);
  expect_close(nn::rope_frequencies(r, dim, max_pos, 60).inv_freq, halved);
}

TEST(RopeVariants, HostTablesEqualTheDeviceRecipeForPlainRope) {
  Tensor<Host, std::int64_t> positions(Shape{5});
  for (std::int64_t i = 0; i < 5; ++i) positions.span()[static_cast<std::size_t>(i)] = i * 1000 + 3;
  const auto device = ops::rope_tables(positions, 16, 1e6);
  const auto host = ops::rope_tables_host(positions.span(), ops::rope_inv_freq(16, 1e6), 1.0f);
  EXPECT_EQ(std::memcmp(device.cos.raw(), host.cos.raw(), static_cast<std::size_t>(device.cos.bytes())), 0);
  EXPECT_EQ(std::memcmp(device.sin.raw(), host.sin.raw(), static_cast<std::size_t>(device.sin.bytes())), 0);
}

}  // namespace
}  // namespace tessera::testing

namespace tessera::testing {
namespace {

// InternLM2's dynamic NTK never goes back once a sequence has passed
// max_position_embeddings (its rotary cache is "sticky"); tessera keeps that
// state in the Cache, so clear() keeps it while a new cache starts afresh,
// as a freshly loaded reference model does.
TEST(DecoderRopeState, DynamicNtkIsStickyAcrossClearButNotAcrossCaches) {
  const Model m = Model::load(fixture("internlm2"));
  std::vector<std::int64_t> short_ids = {42, 720, 416, 329, 443, 243};
  std::vector<std::int64_t> long_ids;
  for (std::int64_t i = 0; i < 60; ++i) long_ids.push_back((i * 37) % 1000);  // past max_position_embeddings 48
  auto fresh = m.new_cache(64);
  const auto expected = to<Host>(m.forward(short_ids, fresh));
  auto reused = m.new_cache(64);
  (void)m.forward(long_ids, reused);
  reused.clear();
  const auto sticky = to<Host>(m.forward(short_ids, reused));
  double diff = 0.0;
  for (std::size_t i = 0; i < expected.span().size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(expected.span()[i] - sticky.span()[i])));
  }
  EXPECT_GT(diff, 1e-3) << "after a 60-token sequence the base stays grown, as InternLM2's rotary cache does";
  auto again = m.new_cache(64);
  const auto renewed = to<Host>(m.forward(short_ids, again));
  EXPECT_EQ(std::memcmp(expected.raw(), renewed.raw(), static_cast<std::size_t>(expected.bytes())), 0);
}

}  // namespace
}  // namespace tessera::testing
