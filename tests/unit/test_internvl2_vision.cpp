// models/internvl2_vision.hpp: the InternVL2 vision encoder (InternViT and
// mlp1).
//
// - VisionConfig / ProjectorConfig::from_json: the published keys, the class
//   defaults, and bad configs naming their key; layers_used and
//   tokens_per_tile for the published sizes.
// - The pixel shuffle: shuffle_source_rows against a literal replay of the
//   reference's view / permute / view / permute sequence (on element ids), for
//   v2 and v1 and factors 2 and 4, and against the closed form
//   concat(x[2i,2j], x[2i,2j+1], x[2i+1,2j], x[2i+1,2j+1]).
// - bicubic_resize_positions against a double restatement of torch's bicubic
//   formula (A = -0.75, clamped borders), shrinking and growing, and the
//   identity when the grids agree.
// - Small random checkpoints written here, a 300M-style tower (LayerNorm, qkv
//   bias, 4 heads, table grid = tile grid) and a 6B-style one (RMSNorm, q/k
//   RMSNorm over the full width, no qkv bias, 5 heads, a 6 x 6 position table
//   resized to the 4 x 4 tile grid), plus a 300M-style one with a 3 x 3 table
//   grown to 4 x 4: hidden_states at select_layer -1 and -2 and forward
//   against a naive double-precision reference (Conv2d as loops, attention
//   as loops per tile and head, the shuffle's closed form, mlp1), on Cpu<0>
//   (float, bf16), Cpu<1> (bit-identical) and Cuda<0> when there is one;
//   only the layers select_layer needs are read; load errors naming the
//   tensor; bad inputs.
// - encoder_cost against the memory ledger (the measured peak stays under it
//   and uses most of it).
#include <tessera/io/safetensors.hpp>
#include <tessera/models/internvl2_vision.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

namespace iv = models::internvl2;

// ---- configs -------------------------------------------------------------------------

nlohmann::json vit_300m_json() {
  return {{"hidden_size", 32},      {"num_attention_heads", 4}, {"intermediate_size", 64},
          {"num_hidden_layers", 3}, {"image_size", 56},          {"patch_size", 14},
          {"num_channels", 3},      {"norm_type", "layer_norm"}, {"qkv_bias", true},
          {"qk_normalization", false}, {"layer_norm_eps", 1e-6}, {"hidden_act", "gelu"},
          {"initializer_factor", 1.0}, {"use_flash_attn", true}, {"drop_path_rate", 0.0}};
}

nlohmann::json vit_6b_json() {
  return {{"hidden_size", 40},      {"num_attention_heads", 5}, {"intermediate_size", 96},
          {"num_hidden_layers", 3}, {"image_size", 84},          {"patch_size", 14},
          {"norm_type", "rms_norm"}, {"qkv_bias", false},        {"qk_normalization", true},
          {"layer_norm_eps", 1e-6}, {"hidden_act", "gelu"},     {"initializer_factor", 0.1}};
}

nlohmann::json root_json(const nlohmann::json& vision) {
  return {{"model_type", "internvl_chat"}, {"select_layer", -1},         {"downsample_ratio", 0.5},
          {"ps_version", "v2"},            {"force_image_size", 56},     {"template", "Hermes-2"},
          {"vision_config", vision},       {"llm_config", {{"hidden_size", 48}, {"architectures", {"Qwen2ForCausalLM"}}}}};
}

TEST(InternVL2VisionConfig, ParsesPublishedKeys) {
  const auto a = iv::VisionConfig::from_json(vit_300m_json(), "config.json");
  EXPECT_EQ(a.hidden_size, 32);
  EXPECT_EQ(a.num_attention_heads, 4);
  EXPECT_EQ(a.intermediate_size, 64);
  EXPECT_EQ(a.num_hidden_layers, 3);
  EXPECT_EQ(a.image_size, 56);
  EXPECT_EQ(a.norm_type, iv::NormType::layer_norm);
  EXPECT_TRUE(a.qkv_bias);
  EXPECT_FALSE(a.qk_normalization);
  const auto b = iv::VisionConfig::from_json(vit_6b_json(), "config.json");
  EXPECT_EQ(b.norm_type, iv::NormType::rms_norm);
  EXPECT_FALSE(b.qkv_bias);
  EXPECT_TRUE(b.qk_normalization);
  EXPECT_EQ(b.head_dim(), 8);
  EXPECT_EQ(b.table_grid(), 6);
  // InternVisionConfig's class defaults where a key is absent.
  nlohmann::json bare = {{"hidden_size", 32}, {"num_attention_heads", 4}, {"intermediate_size", 64},
                         {"num_hidden_layers", 2}};
  const auto d = iv::VisionConfig::from_json(bare, "config.json");
  EXPECT_EQ(d.image_size, 224);
  EXPECT_EQ(d.patch_size, 14);
  EXPECT_EQ(d.norm_type, iv::NormType::rms_norm);
  EXPECT_FALSE(d.qkv_bias);
  EXPECT_TRUE(d.qk_normalization);
  EXPECT_EQ(d.layer_norm_eps, 1e-6);

  const auto p = iv::ProjectorConfig::from_json(root_json(vit_6b_json()), b, "config.json");
  EXPECT_EQ(p.select_layer, -1);
  EXPECT_EQ(p.downsample_ratio, 0.5);
  EXPECT_EQ(p.ps_version, "v2");
  EXPECT_EQ(p.image_size, 56);
  EXPECT_EQ(p.llm_hidden, 48);
  // InternVLChatConfig's defaults: ps_version "v1"; force_image_size None is
  // vision_config.image_size.
  nlohmann::json root = root_json(vit_6b_json());
  root.erase("ps_version");
  root["force_image_size"] = nullptr;
  const auto q = iv::ProjectorConfig::from_json(root, b, "config.json");
  EXPECT_EQ(q.ps_version, "v1");
  EXPECT_EQ(q.image_size, 84);
}

TEST(InternVL2VisionConfig, BadConfigsNameTheKey) {
  struct Bad {
    std::string key;
    nlohmann::json value;  // null: the key is removed
    std::vector<std::string> fragments;
  };
  const std::vector<Bad> bad = {
      {"hidden_size", nullptr, {"vision_config.hidden_size", "missing"}},
      {"num_hidden_layers", "3", {"vision_config.num_hidden_layers", "integer"}},
      {"num_attention_heads", 3, {"vision_config.num_attention_heads", "does not divide hidden_size 32"}},
      {"norm_type", "group_norm", {"vision_config.norm_type", "group_norm", "layer_norm", "rms_norm"}},
      {"hidden_act", "gelu_pytorch_tanh", {"vision_config.hidden_act", "gelu_pytorch_tanh"}},
      {"qkv_bias", 1, {"vision_config.qkv_bias", "true or false"}},
      {"image_size", 10, {"vision_config.image_size", "smaller than patch_size 14"}},
      {"layer_norm_eps", 0.0, {"vision_config.layer_norm_eps", "positive"}},
  };
  for (const auto& b : bad) {
    auto j = vit_300m_json();
    if (b.value.is_null()) j.erase(b.key);
    else j[b.key] = b.value;
    SCOPED_TRACE(b.key + " = " + b.value.dump());
    expect_error<FormatError>([&] { (void)iv::VisionConfig::from_json(j, "dir/config.json"); },
                              {"dir/config.json", b.fragments[0]});
    try {
      (void)iv::VisionConfig::from_json(j, "dir/config.json");
    } catch (const FormatError& e) {
      for (const auto& f : b.fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
  }
  const auto v = iv::VisionConfig::from_json(vit_300m_json(), "config.json");
  const std::vector<Bad> bad_root = {
      {"ps_version", "v3", {"\"ps_version\"", "v3", "\"v1\" and \"v2\""}},
      {"downsample_ratio", 0.3, {"\"downsample_ratio\"", "0.3", "positive integer"}},
      {"downsample_ratio", 0.125, {"\"downsample_ratio\"", "factor 8", "4 x 4 patch grid"}},
      {"select_layer", -5, {"\"select_layer\"", "-5", "[-4, 3]"}},
      {"force_image_size", 50, {"\"force_image_size\"", "50", "multiple of patch_size 14"}},
      {"llm_config", nullptr, {"\"llm_config\"", "missing"}},
  };
  for (const auto& b : bad_root) {
    auto j = root_json(vit_300m_json());
    if (b.value.is_null()) j.erase(b.key);
    else j[b.key] = b.value;
    SCOPED_TRACE(b.key + " = " + b.value.dump());
    expect_error<FormatError>([&] { (void)iv::ProjectorConfig::from_json(j, v, "dir/config.json"); },
                              {"dir/config.json", b.fragments[0]});
    try {
      (void)iv::ProjectorConfig::from_json(j, v, "dir/config.json");
    } catch (const FormatError& e) {
      for (const auto& f : b.fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
  }
  auto j = root_json(vit_300m_json());
  j["llm_config"].erase("hidden_size");
  expect_error<FormatError>([&] { (void)iv::ProjectorConfig::from_json(j, v, "dir/config.json"); },
                            {"dir/config.json", "llm_config.hidden_size", "missing"});
}

TEST(InternVL2VisionConfig, LayersAndTokensOfThePublishedSizes) {
  iv::VisionConfig vit300m;  // InternViT-300M-448px
  vit300m.hidden_size = 1024;
  vit300m.num_attention_heads = 16;
  vit300m.intermediate_size = 4096;
  vit300m.num_hidden_layers = 24;
  vit300m.image_size = 448;
  iv::VisionConfig vit6b = vit300m;  // InternViT-6B-448px-V1-5
  vit6b.hidden_size = 3200;
  vit6b.num_attention_heads = 25;
  vit6b.num_hidden_layers = 45;
  iv::ProjectorConfig p;
  p.llm_hidden = 896;
  EXPECT_EQ(iv::tokens_per_tile(vit300m, p), 256);
  EXPECT_EQ(iv::tokens_per_tile(vit6b, p), 256);
  EXPECT_EQ(iv::layers_used(vit300m, -1), 24);
  EXPECT_EQ(iv::layers_used(vit6b, -1), 45);
  EXPECT_EQ(iv::layers_used(vit6b, -4), 42);
  EXPECT_EQ(iv::layers_used(vit6b, -46), 0);  // hidden_states[0]: the embeddings
  EXPECT_EQ(iv::layers_used(vit6b, 7), 7);
  expect_error<ValueError>([&] { (void)iv::layers_used(vit6b, -47); }, {"select_layer -47", "[-46, 45]"});
  expect_error<ValueError>([&] { (void)iv::layers_used(vit6b, 46); }, {"select_layer 46"});
  p.image_size = 224;
  EXPECT_EQ(iv::tokens_per_tile(vit300m, p), 64);
  p.downsample_ratio = 0.25;
  EXPECT_EQ(iv::tokens_per_tile(vit300m, p), 16);
  p.downsample_ratio = 1.0 / 3.0;
  expect_error<ValueError>([&] { (void)iv::tokens_per_tile(vit300m, p); }, {"downsample_ratio", "factor 3", "16 x 16"});
}

// ---- the pixel shuffle ---------------------------------------------------------------

// A tensor of element ids with torch's contiguous semantics: view keeps the
// data, permute(0, 2, 1, 3) materialises the swap of dims 1 and 2.
struct IdTensor {
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> data;

  void view(std::vector<std::int64_t> s) {
    std::int64_t n = 1;
    for (auto d : s) n *= d;
    ASSERT_EQ(n, static_cast<std::int64_t>(data.size()));
    shape = std::move(s);
  }
  void permute_0213() {
    const std::int64_t a = shape[0], b = shape[1], c = shape[2], d = shape[3];
    std::vector<std::int64_t> out(data.size());
    for (std::int64_t i = 0; i < a; ++i)
      for (std::int64_t j = 0; j < b; ++j)
        for (std::int64_t k = 0; k < c; ++k)
          for (std::int64_t l = 0; l < d; ++l) out[((i * c + k) * b + j) * d + l] = data[((i * b + j) * c + k) * d + l];
    data = std::move(out);
    shape = {a, c, b, d};
  }
};

// The reference's extract_feature on element ids: x[:, 1:] of [B, 1 + G^2,
// C] reshaped to [B, G, G, C], pixel_shuffle(scale 1/k), reshaped to
// [B, -1, k^2 C]. Element (row r, channel ch) of the tower's output has id
// r * C + ch.
std::vector<std::int64_t> replay_extract_feature(std::int64_t tiles, std::int64_t grid, std::int64_t k,
                                                 std::int64_t channels, bool v2) {
  IdTensor x;
  for (std::int64_t b = 0; b < tiles; ++b) {
    for (std::int64_t r = 1; r <= grid * grid; ++r) {
      for (std::int64_t ch = 0; ch < channels; ++ch) x.data.push_back((b * (1 + grid * grid) + r) * channels + ch);
    }
  }
  x.view({tiles, grid, grid, channels});
  // pixel_shuffle: n, w, h, c = x.size()
  x.view({tiles, grid, grid / k, channels * k});
  x.permute_0213();
  x.view({tiles, grid / k, grid / k, channels * k * k});
  if (v2) x.permute_0213();
  return x.data;  // reshape(B, -1, k^2 C) keeps the order
}

TEST(InternVL2PixelShuffle, MatchesTheReferencesViewPermuteSequence) {
  const std::int64_t channels = 3;
  for (const auto& [grid, k] : std::vector<std::pair<std::int64_t, std::int64_t>>{{4, 2}, {8, 2}, {8, 4}, {6, 3}}) {
    for (const bool v2 : {true, false}) {
      SCOPED_TRACE(tessera::detail::concat("grid ", grid, " k ", k, v2 ? " v2" : " v1"));
      const std::vector<std::int64_t> expected = replay_extract_feature(2, grid, k, channels, v2);
      const std::vector<std::int64_t> rows = iv::shuffle_source_rows(2, grid, k, v2 ? "v2" : "v1");
      ASSERT_EQ(rows.size() * channels, expected.size());
      // Gathering rows[i] and laying k^2 rows side by side: element i * C + ch
      // is (rows[i], ch).
      for (std::size_t i = 0; i < rows.size(); ++i) {
        for (std::int64_t ch = 0; ch < channels; ++ch) {
          ASSERT_EQ(rows[i] * channels + ch, expected[i * channels + static_cast<std::size_t>(ch)]) << "slot " << i;
        }
      }
    }
  }
}

TEST(InternVL2PixelShuffle, V2ClosedForm) {
  // Token (i, j) of a tile = [x(2i,2j) | x(2i,2j+1) | x(2i+1,2j) | x(2i+1,2j+1)].
  const std::int64_t grid = 8, side = 4, rows_per_tile = 1 + grid * grid;
  const std::vector<std::int64_t> rows = iv::shuffle_source_rows(3, grid, 2, "v2");
  const auto patch = [&](std::int64_t b, std::int64_t r, std::int64_t c) { return b * rows_per_tile + 1 + r * grid + c; };
  std::size_t slot = 0;
  for (std::int64_t b = 0; b < 3; ++b) {
    for (std::int64_t i = 0; i < side; ++i) {
      for (std::int64_t j = 0; j < side; ++j) {
        EXPECT_EQ(rows[slot++], patch(b, 2 * i, 2 * j));
        EXPECT_EQ(rows[slot++], patch(b, 2 * i, 2 * j + 1));
        EXPECT_EQ(rows[slot++], patch(b, 2 * i + 1, 2 * j));
        EXPECT_EQ(rows[slot++], patch(b, 2 * i + 1, 2 * j + 1));
      }
    }
  }
  expect_error<ValueError>([] { (void)iv::shuffle_source_rows(1, 6, 4, "v2"); }, {"6 x 6", "factor of 4"});
  expect_error<ValueError>([] { (void)iv::shuffle_source_rows(1, 4, 2, "v3"); }, {"\"v3\""});
}

// ---- bicubic resize of the position table ----------------------------------------------

// torch's upsample_bicubic2d (align_corners=False) restated in double:
// src = (in / out) * (i + 0.5) - 0.5, taps floor(src) - 1 .. + 2 clamped to
// the border, Keys' cubic with A = -0.75.
double cubic_weight(double x) {
  const double A = -0.75;
  x = std::abs(x);
  if (x <= 1.0) return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
  return 0.0;
}

// [in*in, C] -> [out*out, C].
std::vector<double> naive_bicubic(const std::vector<double>& table, std::int64_t in, std::int64_t out,
                                  std::int64_t channels) {
  const auto taps = [&](std::int64_t i, std::int64_t* index, double* weight) {
    const double src = static_cast<double>(in) / static_cast<double>(out) * (static_cast<double>(i) + 0.5) - 0.5;
    const auto i0 = static_cast<std::int64_t>(std::floor(src));
    for (std::int64_t j = 0; j < 4; ++j) {
      const std::int64_t at = i0 - 1 + j;
      index[j] = std::clamp<std::int64_t>(at, 0, in - 1);
      weight[j] = cubic_weight(src - static_cast<double>(at));
    }
  };
  std::vector<double> y(static_cast<std::size_t>(out * out * channels), 0.0);
  for (std::int64_t r = 0; r < out; ++r) {
    for (std::int64_t c = 0; c < out; ++c) {
      std::int64_t ri[4], ci[4];
      double rw[4], cw[4];
      taps(r, ri, rw);
      taps(c, ci, cw);
      for (int a = 0; a < 4; ++a) {
        for (int b = 0; b < 4; ++b) {
          for (std::int64_t ch = 0; ch < channels; ++ch) {
            y[static_cast<std::size_t>((r * out + c) * channels + ch)] +=
                rw[a] * cw[b] * table[static_cast<std::size_t>((ri[a] * in + ci[b]) * channels + ch)];
          }
        }
      }
    }
  }
  return y;
}

std::vector<double> doubles(const Tensor<Host, float>& t) { return {t.span().begin(), t.span().end()}; }

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(InternVL2Positions, BicubicMatchesTorchsFormula) {
  const std::int64_t channels = 5;
  for (const auto& [in, out] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {6, 4}, {3, 4}, {4, 7}, {32, 16}, {32, 40}, {16, 32}, {5, 1}, {1, 3}}) {
    SCOPED_TRACE(tessera::detail::concat(in, " -> ", out));
    const auto table = random_tensor<float>(Shape{in * in, channels}, -1.0, 1.0);
    const auto got = iv::bicubic_resize_positions(table, in, out);
    ASSERT_EQ(got.shape(), (Shape{out * out, channels}));
    const auto expected = naive_bicubic(doubles(table), in, out, channels);
    // The header takes torch's weights in float (src and t in float32): up
    // to a few 1e-6 from these double ones on values in [-1, 1]; a wrong tap,
    // weight or layout is off by O(0.1).
    EXPECT_LE(max_diff(doubles(got), expected), 1e-5);
  }
  const auto table = random_tensor<float>(Shape{16, 3});
  EXPECT_TRUE(same_bits(iv::bicubic_resize_positions(table, 4, 4), table));
  expect_shape_error([&] { (void)iv::bicubic_resize_positions(table, 3, 4); }, {"[16, 3]", "[3 * 3, C]"});
}

// ---- small random checkpoints and a double-precision reference ---------------------

using HostWeights = std::map<std::string, Tensor<Host, float>>;

struct Variant {
  std::string name;
  iv::VisionConfig vision;
  iv::ProjectorConfig projector;
};

Variant vit_300m() {
  auto v = iv::VisionConfig::from_json(vit_300m_json(), "config.json");
  return {"300m", v, iv::ProjectorConfig::from_json(root_json(vit_300m_json()), v, "config.json")};
}
Variant vit_6b() {
  auto v = iv::VisionConfig::from_json(vit_6b_json(), "config.json");
  return {"6b", v, iv::ProjectorConfig::from_json(root_json(vit_6b_json()), v, "config.json")};
}
// The 300M style with a 3 x 3 table grown to the 4 x 4 tile grid.
Variant vit_300m_grown() {
  auto j = vit_300m_json();
  j["image_size"] = 42;
  auto v = iv::VisionConfig::from_json(j, "config.json");
  return {"300m_grown", v, iv::ProjectorConfig::from_json(root_json(j), v, "config.json")};
}

HostWeights random_weights(const iv::VisionConfig& v, const iv::ProjectorConfig& p) {
  HostWeights w;
  const auto add = [&](const std::string& name, Shape shape, double lo, double hi) {
    w.emplace(name, random_tensor<float>(std::move(shape), lo, hi));
  };
  const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in, bool bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    add(name + ".weight", Shape{out, in}, -bound, bound);
    if (bias) add(name + ".bias", Shape{out}, -0.1, 0.1);
  };
  const std::int64_t c = v.hidden_size, g = v.table_grid(), ps = v.patch_size;
  const std::string e = "vision_model.embeddings.";
  const double patch_bound = 1.0 / std::sqrt(static_cast<double>(v.num_channels * ps * ps));
  add(e + "patch_embedding.weight", Shape{c, v.num_channels, ps, ps}, -patch_bound, patch_bound);
  add(e + "patch_embedding.bias", Shape{c}, -0.1, 0.1);
  add(e + "class_embedding", Shape{1, 1, c}, -1.0, 1.0);
  add(e + "position_embedding", Shape{1, 1 + g * g, c}, -1.0, 1.0);
  for (std::int64_t i = 0; i < v.num_hidden_layers; ++i) {
    const std::string l = tessera::detail::concat("vision_model.encoder.layers.", i, ".");
    for (const char* n : {"norm1", "norm2"}) {
      add(l + n + ".weight", Shape{c}, 0.7, 1.3);
      if (v.norm_type == iv::NormType::layer_norm) add(l + n + ".bias", Shape{c}, -0.2, 0.2);
    }
    linear(l + "attn.qkv", 3 * c, c, v.qkv_bias);
    if (v.qk_normalization) {
      add(l + "attn.q_norm.weight", Shape{c}, 0.7, 1.3);
      add(l + "attn.k_norm.weight", Shape{c}, 0.7, 1.3);
    }
    linear(l + "attn.proj", c, c, true);
    linear(l + "mlp.fc1", v.intermediate_size, c, true);
    linear(l + "mlp.fc2", c, v.intermediate_size, true);
    add(l + "ls1", Shape{c}, 0.2, 1.2);
    add(l + "ls2", Shape{c}, 0.2, 1.2);
  }
  const std::int64_t wide = 4 * c;  // downsample_ratio 0.5
  add("mlp1.0.weight", Shape{wide}, 0.7, 1.3);
  add("mlp1.0.bias", Shape{wide}, -0.2, 0.2);
  linear("mlp1.1", p.llm_hidden, wide, true);
  linear("mlp1.3", p.llm_hidden, p.llm_hidden, true);
  return w;
}

class TinyCheckpoint {
 public:
  TinyCheckpoint(const std::string& tag, const HostWeights& weights)
      : dir_(std::filesystem::temp_directory_path() /
             tessera::detail::concat("tessera_internvl2_vision_", ::getpid(), "_", tag)) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::vector<io::SafetensorsEntry> entries;
    for (const auto& [name, t] : weights) entries.push_back(io::safetensors_entry(name, t));
    io::save_safetensors(dir_ / "model.safetensors", entries);
  }
  ~TinyCheckpoint() { std::filesystem::remove_all(dir_); }
  TinyCheckpoint(const TinyCheckpoint&) = delete;
  TinyCheckpoint& operator=(const TinyCheckpoint&) = delete;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

std::vector<double> dense(const std::vector<double>& x, const HostWeights& w, const std::string& name,
                          std::int64_t in) {
  const auto& weight = w.at(name + ".weight");
  const std::vector<double> bias = w.count(name + ".bias") ? doubles(w.at(name + ".bias")) : std::vector<double>();
  return reference_linear(x, doubles(weight), bias.empty() ? nullptr : &bias, in, weight.dim(0));
}

// LayerNorm (with bias) or RMSNorm over rows of n, in double.
std::vector<double> norm_ref(const std::vector<double>& x, const HostWeights& w, const std::string& name,
                             std::int64_t n, double eps) {
  const auto g = doubles(w.at(name + ".weight"));
  const bool layer_norm = w.count(name + ".bias") != 0;
  const auto b = layer_norm ? doubles(w.at(name + ".bias")) : std::vector<double>();
  std::vector<double> y(x.size());
  for (std::size_t r = 0; r < x.size() / static_cast<std::size_t>(n); ++r) {
    const double* row = x.data() + r * static_cast<std::size_t>(n);
    double mean = 0, var = 0;
    if (layer_norm) {
      for (std::int64_t i = 0; i < n; ++i) mean += row[i];
      mean /= static_cast<double>(n);
    }
    for (std::int64_t i = 0; i < n; ++i) var += (row[i] - mean) * (row[i] - mean);
    var /= static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) {
      y[r * n + i] = (row[i] - mean) / std::sqrt(var + eps) * g[i] + (layer_norm ? b[i] : 0.0);
    }
  }
  return y;
}

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// Embedding output of one tile [L, C]: Conv2d as loops, the class token,
// positions (CLS as stored, the patch table resized by naive_bicubic).
std::vector<double> embed_ref(const HostWeights& w, const iv::VisionConfig& v, std::int64_t tile_size,
                              const std::vector<double>& pixels) {
  const std::int64_t c = v.hidden_size, ps = v.patch_size, grid = tile_size / ps, ch = v.num_channels;
  const std::int64_t table = v.table_grid();
  const auto& kernel = w.at("vision_model.embeddings.patch_embedding.weight");
  const auto bias = doubles(w.at("vision_model.embeddings.patch_embedding.bias"));
  const auto cls = doubles(w.at("vision_model.embeddings.class_embedding"));
  const auto pos = doubles(w.at("vision_model.embeddings.position_embedding"));
  const std::vector<double> grid_table(pos.begin() + c, pos.end());
  const auto resized = naive_bicubic(grid_table, table, grid, c);
  std::vector<double> x(static_cast<std::size_t>((1 + grid * grid) * c));
  for (std::int64_t o = 0; o < c; ++o) x[o] = cls[o] + pos[o];
  for (std::int64_t py = 0; py < grid; ++py) {
    for (std::int64_t px = 0; px < grid; ++px) {
      const std::int64_t row = 1 + py * grid + px;
      for (std::int64_t o = 0; o < c; ++o) {
        double acc = bias[o];
        for (std::int64_t k = 0; k < ch; ++k) {
          for (std::int64_t ky = 0; ky < ps; ++ky) {
            for (std::int64_t kx = 0; kx < ps; ++kx) {
              acc += kernel.at(o, k, ky, kx) *
                     pixels[static_cast<std::size_t>((k * tile_size + py * ps + ky) * tile_size + px * ps + kx)];
            }
          }
        }
        x[row * c + o] = acc + resized[static_cast<std::size_t>((row - 1) * c + o)];
      }
    }
  }
  return x;
}

// One tile's attention branch (before ls1): per head, every row sees every row.
std::vector<double> attention_ref(const HostWeights& w, const iv::VisionConfig& v, const std::string& l,
                                  const std::vector<double>& h) {
  const std::int64_t c = v.hidden_size, hd = v.head_dim(), rows = static_cast<std::int64_t>(h.size()) / c;
  const auto qkv = dense(h, w, l + "attn.qkv", c);
  std::vector<double> q(h.size()), k(h.size()), val(h.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t i = 0; i < c; ++i) {
      q[r * c + i] = qkv[r * 3 * c + i];
      k[r * c + i] = qkv[r * 3 * c + c + i];
      val[r * c + i] = qkv[r * 3 * c + 2 * c + i];
    }
  }
  if (v.qk_normalization) {  // over the full width, not per head
    q = norm_ref(q, w, l + "attn.q_norm", c, v.layer_norm_eps);
    k = norm_ref(k, w, l + "attn.k_norm", c, v.layer_norm_eps);
  }
  std::vector<double> out(h.size());
  for (std::int64_t head = 0; head < v.num_attention_heads; ++head) {
    const std::int64_t off = head * hd;
    for (std::int64_t i = 0; i < rows; ++i) {
      std::vector<double> s(static_cast<std::size_t>(rows));
      for (std::int64_t j = 0; j < rows; ++j) {
        double dot = 0;
        for (std::int64_t e = 0; e < hd; ++e) dot += q[i * c + off + e] * k[j * c + off + e];
        s[j] = dot / std::sqrt(static_cast<double>(hd));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (std::int64_t e = 0; e < hd; ++e) {
        double acc = 0;
        for (std::int64_t j = 0; j < rows; ++j) acc += s[j] / sum * val[j * c + off + e];
        out[i * c + off + e] = acc;
      }
    }
  }
  return dense(out, w, l + "attn.proj", c);
}

// hidden_states[select_layer] of every tile [tiles * L * C] and the
// projector's output [tiles * side^2 * llm_hidden].
struct Reference {
  std::vector<double> hidden, out;
};

Reference reference(const HostWeights& w, const Variant& var, const Tensor<Host, float>& pixels) {
  const iv::VisionConfig& v = var.vision;
  const std::int64_t c = v.hidden_size, s = var.projector.image_size, grid = s / v.patch_size, side = grid / 2;
  const std::int64_t tiles = pixels.dim(0), per_tile = v.num_channels * s * s, rows = 1 + grid * grid;
  const std::int64_t layers = var.projector.select_layer < 0 ? v.num_hidden_layers + 1 + var.projector.select_layer
                                                             : var.projector.select_layer;
  const auto all = doubles(pixels);
  Reference ref;
  for (std::int64_t b = 0; b < tiles; ++b) {
    std::vector<double> x =
        embed_ref(w, v, s, std::vector<double>(all.begin() + b * per_tile, all.begin() + (b + 1) * per_tile));
    for (std::int64_t i = 0; i < layers; ++i) {
      const std::string l = tessera::detail::concat("vision_model.encoder.layers.", i, ".");
      const auto ls1 = doubles(w.at(l + "ls1")), ls2 = doubles(w.at(l + "ls2"));
      const auto a = attention_ref(w, v, l, norm_ref(x, w, l + "norm1", c, v.layer_norm_eps));
      for (std::size_t j = 0; j < x.size(); ++j) x[j] += ls1[j % static_cast<std::size_t>(c)] * a[j];
      auto f = dense(norm_ref(x, w, l + "norm2", c, v.layer_norm_eps), w, l + "mlp.fc1", c);
      for (double& y : f) y = gelu_ref(y);
      const auto m = dense(f, w, l + "mlp.fc2", v.intermediate_size);
      for (std::size_t j = 0; j < x.size(); ++j) x[j] += ls2[j % static_cast<std::size_t>(c)] * m[j];
    }
    ref.hidden.insert(ref.hidden.end(), x.begin(), x.end());
    // CLS dropped; token (i, j) = [x(2i,2j) | x(2i,2j+1) | x(2i+1,2j) | x(2i+1,2j+1)].
    const auto patch = [&](std::int64_t r, std::int64_t col) { return x.begin() + (1 + r * grid + col) * c; };
    std::vector<double> shuffled;
    for (std::int64_t i = 0; i < side; ++i) {
      for (std::int64_t j = 0; j < side; ++j) {
        for (const auto& [r, col] : {std::pair{2 * i, 2 * j}, {2 * i, 2 * j + 1}, {2 * i + 1, 2 * j}, {2 * i + 1, 2 * j + 1}}) {
          shuffled.insert(shuffled.end(), patch(r, col), patch(r, col) + c);
        }
      }
    }
    auto y = dense(norm_ref(shuffled, w, "mlp1.0", 4 * c, 1e-5), w, "mlp1.1", 4 * c);
    for (double& e : y) e = gelu_ref(e);
    const auto o = dense(y, w, "mlp1.3", var.projector.llm_hidden);
    ref.out.insert(ref.out.end(), o.begin(), o.end());
    (void)rows;
  }
  return ref;
}

struct Case {
  Variant variant;
  HostWeights weights;
  Tensor<Host, float> pixels;
  Reference last, second_last;  // select_layer -1 and -2
};

Case make_case(Variant v) {
  Case c{v, random_weights(v.vision, v.projector),
         random_tensor<float>(Shape{3, v.vision.num_channels, v.projector.image_size, v.projector.image_size}, -2.0,
                              2.0),
         {},
         {}};
  c.last = reference(c.weights, c.variant, c.pixels);
  Variant second = c.variant;
  second.projector.select_layer = -2;
  c.second_last = reference(c.weights, second, c.pixels);
  return c;
}

const Case& case_300m() {
  static const Case c = make_case(vit_300m());
  return c;
}
const Case& case_6b() {
  static const Case c = make_case(vit_6b());
  return c;
}
const Case& case_grown() {
  static const Case c = make_case(vit_300m_grown());
  return c;
}

struct Outputs {
  std::vector<double> hidden, out;
};

template <Device D, FloatType T>
Outputs run_case(const Case& c, std::int64_t select_layer, const std::string& tag) {
  const TinyCheckpoint ckpt(c.variant.name + "_" + tag, c.weights);
  iv::ProjectorConfig projector = c.variant.projector;
  projector.select_layer = select_layer;
  const auto encoder = iv::VisionEncoder<D, T>::load(io::Checkpoint::open(ckpt.dir()), c.variant.vision, projector);
  const Tensor<D, T> pixels = to<D>(ops::cast<T>(c.pixels));
  const Tensor<D, T> hidden = encoder.hidden_states(pixels);
  const std::int64_t grid = projector.image_size / c.variant.vision.patch_size;
  EXPECT_EQ(hidden.shape(), (Shape{3, 1 + grid * grid, c.variant.vision.hidden_size}));
  const Tensor<D, T> out = encoder.forward(pixels);
  EXPECT_EQ(out.shape(), (Shape{3 * iv::tokens_per_tile(c.variant.vision, projector), projector.llm_hidden}));
  return {to_doubles(hidden), to_doubles(out)};
}

void report(const std::string& what, const Case& c, std::int64_t select_layer, const Outputs& got, double tol) {
  const Reference& ref = select_layer == -1 ? c.last : c.second_last;
  ASSERT_EQ(got.hidden.size(), ref.hidden.size());
  ASSERT_EQ(got.out.size(), ref.out.size());
  const double eh = max_diff(got.hidden, ref.hidden) / max_abs(ref.hidden);
  const double eo = max_diff(got.out, ref.out) / max_abs(ref.out);
  std::cout << "[ " << c.variant.name << " " << what << " select_layer " << select_layer
            << " ] max |error| / max |reference|: hidden " << eh << ", features " << eo << "\n";
  EXPECT_LE(eh, tol);
  EXPECT_LE(eo, tol);
}

TEST(InternVL2Encoder, Vit300mMatchesDoubleReferenceCpuFloat) {
  for (const std::int64_t layer : {-1, -2}) {
    report("Cpu<0> float32", case_300m(), layer, run_case<Cpu<0>, float>(case_300m(), layer, "f32"), 1e-5);
  }
}

TEST(InternVL2Encoder, Vit6bMatchesDoubleReferenceCpuFloat) {
  // 5 heads, q/k RMSNorm over the full width, a 6 x 6 table shrunk to 4 x 4.
  for (const std::int64_t layer : {-1, -2}) {
    report("Cpu<0> float32", case_6b(), layer, run_case<Cpu<0>, float>(case_6b(), layer, "f32"), 1e-5);
  }
}

TEST(InternVL2Encoder, GrownPositionTableMatchesDoubleReference) {
  report("Cpu<0> float32", case_grown(), -1, run_case<Cpu<0>, float>(case_grown(), -1, "f32"), 1e-5);
}

TEST(InternVL2Encoder, SecondCpuSlotIsBitIdentical) {
  const Outputs a = run_case<Cpu<1>, float>(case_6b(), -1, "slot1"), b = run_case<Cpu<0>, float>(case_6b(), -1, "slot0");
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.out, b.out);
}

TEST(InternVL2Encoder, MatchesDoubleReferenceCpuBf16) {
  // bf16 weights, activations and roundings through 3 layers and mlp1.
  report("Cpu<0> bf16", case_300m(), -1, run_case<Cpu<0>, bf16>(case_300m(), -1, "bf16"), 0.05);
  report("Cpu<0> bf16", case_6b(), -1, run_case<Cpu<0>, bf16>(case_6b(), -1, "bf16"), 0.05);
}

TEST(InternVL2Encoder, MatchesDoubleReferenceCuda) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  for (const Case* c : {&case_300m(), &case_6b()}) {
    report("Cuda<0> float32", *c, -1, run_case<Cuda<0>, float>(*c, -1, "cuda_f32"), 1e-4);
    report("Cuda<0> bf16", *c, -1, run_case<Cuda<0>, bf16>(*c, -1, "cuda_bf16"), 0.05);
  }
}

TEST(InternVL2Encoder, ReadsOnlyTheLayersTheFeatureLayerNeeds) {
  // select_layer -2 of 3 layers runs layers 0 and 1: a checkpoint without
  // layer 2 loads and gives the reference's hidden_states[-2].
  const Case& c = case_300m();
  HostWeights weights;
  for (const auto& [name, t] : c.weights) {
    if (name.find("encoder.layers.2.") == std::string::npos) weights.emplace(name, contiguous(t.view()));
  }
  const TinyCheckpoint ckpt("two_layers", weights);
  const auto checkpoint = io::Checkpoint::open(ckpt.dir());
  iv::ProjectorConfig projector = c.variant.projector;
  projector.select_layer = -2;
  const auto encoder = iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, c.variant.vision, projector);
  EXPECT_EQ(encoder.layers(), 2);
  const auto got = to_doubles(encoder.forward(c.pixels));
  EXPECT_LE(max_diff(got, c.second_last.out), 1e-5 * max_abs(c.second_last.out));
  // select_layer -1 needs layer 2.
  expect_error<ValueError>(
      [&] { (void)iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, c.variant.vision, c.variant.projector); },
      {"vision_model.encoder.layers.2.", ckpt.dir().string()});
}

TEST(InternVL2Encoder, BadWeights) {
  const Case& c = case_6b();
  const auto load = [&](const HostWeights& w, const std::string& tag) {
    const TinyCheckpoint ckpt(tag, w);
    (void)iv::VisionEncoder<Cpu<0>, float>::load(io::Checkpoint::open(ckpt.dir()), c.variant.vision,
                                                 c.variant.projector);
  };
  const auto copy = [&] {
    HostWeights w;
    for (const auto& [name, t] : c.weights) w.emplace(name, contiguous(t.view()));
    return w;
  };
  HostWeights w = copy();
  w.at("vision_model.encoder.layers.1.attn.qkv.weight") = random_tensor<float>(Shape{120, 39});
  expect_error<FormatError>([&] { load(w, "bad_qkv"); },
                            {"InternViT", "vision_model.encoder.layers.1.attn.qkv.weight", "[120, 39]", "[120, 40]",
                             "tessera_internvl2_vision_"});
  w = copy();
  w.at("vision_model.embeddings.position_embedding") = random_tensor<float>(Shape{1, 17, 40});
  expect_error<FormatError>([&] { load(w, "bad_pos"); },
                            {"vision_model.embeddings.position_embedding", "[1, 17, 40]", "[1, 37, 40]"});
  w = copy();
  w.at("mlp1.1.weight") = random_tensor<float>(Shape{48, 80});
  expect_error<FormatError>([&] { load(w, "bad_mlp1"); }, {"mlp1", "mlp1.1.weight", "[48, 80]", "[48, 160]"});
  w = copy();
  w.erase("vision_model.encoder.layers.0.attn.k_norm.weight");  // 6B style: q/k norm required
  expect_error<ValueError>([&] { load(w, "missing_k_norm"); }, {"vision_model.encoder.layers.0.attn.k_norm.weight"});
  w = copy();
  w.erase("vision_model.encoder.layers.2.ls2");
  expect_error<ValueError>([&] { load(w, "missing_ls2"); }, {"vision_model.encoder.layers.2.ls2"});
  // The 300M style needs the norms' biases and the qkv bias.
  const Case& l = case_300m();
  HostWeights w3;
  for (const auto& [name, t] : l.weights) w3.emplace(name, contiguous(t.view()));
  w3.erase("vision_model.encoder.layers.0.attn.qkv.bias");
  const TinyCheckpoint no_bias("missing_qkv_bias", w3);
  expect_error<ValueError>(
      [&] {
        (void)iv::VisionEncoder<Cpu<0>, float>::load(io::Checkpoint::open(no_bias.dir()), l.variant.vision,
                                                     l.variant.projector);
      },
      {"vision_model.encoder.layers.0.attn.qkv.bias", no_bias.dir().string()});
  // Hand-built configs with bad values name the field.
  const TinyCheckpoint good("good", c.weights);
  const auto checkpoint = io::Checkpoint::open(good.dir());
  iv::VisionConfig v = c.variant.vision;
  v.num_attention_heads = 3;
  expect_error<ValueError>([&] { (void)iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, v, c.variant.projector); },
                           {"num_attention_heads", "does not divide hidden_size 40"});
  iv::ProjectorConfig p = c.variant.projector;
  p.select_layer = -9;
  expect_error<ValueError>([&] { (void)iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, c.variant.vision, p); },
                           {"select_layer -9"});
  p = c.variant.projector;
  p.ps_version = "v0";
  expect_error<ValueError>([&] { (void)iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, c.variant.vision, p); },
                           {"ps_version", "\"v0\""});
}

TEST(InternVL2Encoder, BadPixels) {
  const Case& c = case_300m();
  const TinyCheckpoint ckpt("bad_pixels", c.weights);
  const auto encoder = iv::VisionEncoder<Cpu<0>, float>::load(io::Checkpoint::open(ckpt.dir()), c.variant.vision,
                                                              c.variant.projector);
  expect_shape_error([&] { (void)encoder.forward(random_tensor<float>(Shape{2, 3, 42, 42})); },
                     {"pixels [2, 3, 42, 42]", "[tiles, 3, 56, 56]", "force_image_size 56"});
  expect_shape_error([&] { (void)encoder.hidden_states(random_tensor<float>(Shape{2, 1, 56, 56})); },
                     {"hidden_states", "pixels [2, 1, 56, 56]"});
  expect_shape_error([&] { (void)encoder.forward(random_tensor<float>(Shape{3, 56, 56})); }, {"pixels [3, 56, 56]"});
  expect_shape_error([&] { (void)encoder.forward(random_tensor<float>(Shape{0, 3, 56, 56})); },
                     {"at least one tile"});
}

// ---- the planner's cost against the ledger ----------------------------------------

// Runs the encoder as the model will (float pixels copied to the encoder's
// device, cast to T, forward) and compares the ledger's peak above what was
// live before with encoder_cost.
template <FloatType T>
void check_cost(const std::string& tag, const iv::VisionConfig& v, const iv::ProjectorConfig& p, std::int64_t tiles) {
  const TinyCheckpoint ckpt("cost_" + tag, random_weights(v, p));
  const auto encoder = iv::VisionEncoder<Cpu<0>, T>::load(io::Checkpoint::open(ckpt.dir()), v, p);
  const auto pixels = random_tensor<float>(Shape{tiles, v.num_channels, p.image_size, p.image_size});
  auto& ledger = tessera::ledger<Cpu<0>>();
  std::uint64_t measured = 0;
  {
    const std::uint64_t before = ledger.live();
    ledger.reset_peak();
    Tensor<Cpu<0>, float> on_device = to<Cpu<0>>(pixels.view());
    Tensor<Cpu<0>, T> out;
    if constexpr (std::is_same_v<T, float>) out = encoder.forward(on_device);
    else out = encoder.forward(ops::cast<T>(on_device));
    measured = ledger.peak() - before;
  }
  const std::uint64_t predicted = iv::encoder_cost(v, p, static_cast<std::uint64_t>(tiles), sizeof(T));
  std::cout << "[ encoder_cost " << tag << " ] measured peak " << measured << " B, predicted " << predicted << " B ("
            << static_cast<double>(predicted) / static_cast<double>(measured) << "x)\n";
  EXPECT_LE(measured, predicted);
  EXPECT_GE(static_cast<double>(measured), 0.6 * static_cast<double>(predicted)) << "the cost is far too loose";
}

// The published proportions, scaled down: patch_dim 48 < hidden 64 <
// intermediate 256, an 8 x 8 tile grid, an LLM wider than the tower.
Variant published_like(bool six_b) {
  Variant v;
  v.name = six_b ? "6b_like" : "300m_like";
  v.vision.hidden_size = six_b ? 80 : 64;
  v.vision.num_attention_heads = six_b ? 5 : 4;
  v.vision.intermediate_size = 4 * v.vision.hidden_size;
  v.vision.num_hidden_layers = 2;
  v.vision.image_size = 32;
  v.vision.patch_size = 4;
  v.vision.norm_type = six_b ? iv::NormType::rms_norm : iv::NormType::layer_norm;
  v.vision.qkv_bias = !six_b;
  v.vision.qk_normalization = six_b;
  v.projector.image_size = 32;
  v.projector.llm_hidden = 128;
  return v;
}

TEST(InternVL2EncoderCost, CoversTheLedgerPeak) {
  for (const Variant& v : {vit_300m(), vit_6b(), published_like(false), published_like(true)}) {
    check_cost<float>(v.name + "_f32_1tile", v.vision, v.projector, 1);
    check_cost<float>(v.name + "_f32_5tiles", v.vision, v.projector, 5);
    check_cost<bf16>(v.name + "_bf16_5tiles", v.vision, v.projector, 5);
  }
  Variant shallow = published_like(true);
  shallow.projector.select_layer = -3;  // hidden_states[0]: no layer runs
  check_cost<float>("no_layers_f32", shallow.vision, shallow.projector, 4);
}

}  // namespace
}  // namespace tessera::testing
