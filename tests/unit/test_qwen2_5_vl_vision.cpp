// models/qwen2_5_vl_vision.hpp: the Qwen2.5-VL vision tower.
//
// - get_window_index, frame_cu_seqlens and vision_position_ids against
//   values printed by transformers 5.23.0 (vision_utils.get_vision_window_index,
//   get_vision_cu_seqlens, get_vision_position_ids with spatial_merge_size 2,
//   window_size 112, patch_size 14), pasted as literals.
// - VisionConfig::from_json: a good config, and bad ones naming their key.
// - A small random checkpoint written here: the forward pass against a
//   double-precision transcription of the Python that never permutes (window
//   and frame segments become masks in raster order), on Cpu<0> (float and
//   bf16), Cpu<1>, and Cuda<0> when there is one; bad weights and inputs.
// - Golden: tests/fixtures/qwen2_5_vl/{legacy,tied} (tiny Qwen2.5-VL
//   checkpoints and transformers 5.23's vision tower outputs, written by
//   tools/fixtures/make_qwen2_5_vl_fixtures.py): CPU float32 within 1e-4 of
//   the largest |reference|, for both weight layouts ("visual." and
//   "model.visual."); skipped while the fixture directories do not exist.
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2_5_vl_vision.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

namespace vl = models::qwen2_5_vl;
using vl::GridTHW;

// ---- index helpers against transformers ------------------------------------------

vl::VisionConfig published_geometry() {
  vl::VisionConfig c;
  c.depth = 4;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.num_heads = 4;
  c.out_hidden_size = 128;
  c.fullatt_block_indexes = {1, 3};
  return c;  // patch 14, merge 2, window 112: 4x4 merged tokens per window
}

struct WindowCase {
  std::vector<GridTHW> grids;
  std::vector<std::int64_t> window_index;
  std::vector<std::int32_t> cu_window, cu_frames;
};

// Printed by transformers 5.23.0 (see the top of this file).
std::map<std::string, WindowCase> window_cases() {
  std::map<std::string, WindowCase> cases;
  cases["single_16x22"] = {
      {{1, 16, 22}},
      {0,  1,  2,  3,  11, 12, 13, 14, 22, 23, 24, 25, 33, 34, 35, 36, 4,  5,  6,  7,  15, 16,
       17, 18, 26, 27, 28, 29, 37, 38, 39, 40, 8,  9,  10, 19, 20, 21, 30, 31, 32, 41, 42, 43,
       44, 45, 46, 47, 55, 56, 57, 58, 66, 67, 68, 69, 77, 78, 79, 80, 48, 49, 50, 51, 59, 60,
       61, 62, 70, 71, 72, 73, 81, 82, 83, 84, 52, 53, 54, 63, 64, 65, 74, 75, 76, 85, 86, 87},
      {0, 64, 128, 176, 240, 304, 352},
      {0, 352}};
  // Merged grid 8x8, a multiple of 4: transformers pads a whole empty row and
  // column of windows, whose duplicate offsets unique_consecutive removes.
  cases["exact_16x16"] = {
      {{1, 16, 16}},
      {0,  1,  2,  3,  8,  9,  10, 11, 16, 17, 18, 19, 24, 25, 26, 27, 4,  5,  6,  7,  12, 13,
       14, 15, 20, 21, 22, 23, 28, 29, 30, 31, 32, 33, 34, 35, 40, 41, 42, 43, 48, 49, 50, 51,
       56, 57, 58, 59, 36, 37, 38, 39, 44, 45, 46, 47, 52, 53, 54, 55, 60, 61, 62, 63},
      {0, 64, 128, 192, 256},
      {0, 256}};
  cases["video_3x12x14"] = {
      {{3, 12, 14}},
      {0,   1,   2,   3,   7,   8,   9,   10,  14,  15,  16,  17,  21,  22,  23,  24,  4,   5,   6,   11,  12,
       13,  18,  19,  20,  25,  26,  27,  28,  29,  30,  31,  35,  36,  37,  38,  32,  33,  34,  39,  40,  41,
       42,  43,  44,  45,  49,  50,  51,  52,  56,  57,  58,  59,  63,  64,  65,  66,  46,  47,  48,  53,  54,
       55,  60,  61,  62,  67,  68,  69,  70,  71,  72,  73,  77,  78,  79,  80,  74,  75,  76,  81,  82,  83,
       84,  85,  86,  87,  91,  92,  93,  94,  98,  99,  100, 101, 105, 106, 107, 108, 88,  89,  90,  95,  96,
       97,  102, 103, 104, 109, 110, 111, 112, 113, 114, 115, 119, 120, 121, 122, 116, 117, 118, 123, 124, 125},
      {0, 64, 112, 144, 168, 232, 280, 312, 336, 400, 448, 480, 504},
      {0, 168, 336, 504}};
  cases["two_items"] = {
      {{1, 12, 10}, {2, 8, 20}},
      {0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 4, 9, 14, 19, 20, 21, 22, 23, 25, 26, 27, 28,
       24, 29, 30, 31, 32, 33, 40, 41, 42, 43, 50, 51, 52, 53, 60, 61, 62, 63, 34, 35, 36, 37, 44, 45, 46, 47,
       54, 55, 56, 57, 64, 65, 66, 67, 38, 39, 48, 49, 58, 59, 68, 69, 70, 71, 72, 73, 80, 81, 82, 83, 90, 91,
       92, 93, 100, 101, 102, 103, 74, 75, 76, 77, 84, 85, 86, 87, 94, 95, 96, 97, 104, 105, 106, 107, 78, 79,
       88, 89, 98, 99, 108, 109},
      {0, 64, 80, 112, 120, 184, 248, 280, 344, 408, 440},
      {0, 120, 280, 440}};
  return cases;
}

TEST(Qwen25VLVisionIndex, WindowIndexMatchesTransformers) {
  const auto cfg = published_geometry();
  for (const auto& [name, c] : window_cases()) {
    SCOPED_TRACE(name);
    const vl::WindowIndex w = vl::get_window_index(c.grids, cfg);
    EXPECT_EQ(w.window_index, c.window_index);
    EXPECT_EQ(w.cu_window_seqlens, c.cu_window);
    EXPECT_EQ(vl::frame_cu_seqlens(c.grids), c.cu_frames);
  }
}

TEST(Qwen25VLVisionIndex, WindowIndexNeverCrossesFrames) {
  // What lets the full-attention blocks use the unpermuted per-frame
  // cu_seqlens after the window permutation.
  const std::vector<GridTHW> grids = {{2, 12, 10}, {3, 8, 20}, {1, 16, 16}};
  const auto w = vl::get_window_index(grids, published_geometry());
  const auto frames = vl::frame_cu_seqlens(grids);
  for (std::size_t j = 0; j < w.window_index.size(); ++j) {
    const auto patch = static_cast<std::int32_t>(j * 4);
    const auto frame = std::upper_bound(frames.begin(), frames.end(), patch) - frames.begin();
    const auto src = static_cast<std::int32_t>(w.window_index[j] * 4);
    EXPECT_EQ(std::upper_bound(frames.begin(), frames.end(), src) - frames.begin(), frame) << "merged token " << j;
  }
}

TEST(Qwen25VLVisionIndex, PositionIdsMatchTransformers) {
  const std::vector<GridTHW> grids = {{1, 4, 6}, {2, 2, 2}};
  const auto p = vl::vision_position_ids(grids, 2);
  const std::vector<std::int64_t> rows = {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3,
                                          2, 2, 3, 3, 2, 2, 3, 3, 0, 0, 1, 1, 0, 0, 1, 1};
  const std::vector<std::int64_t> cols = {0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 0, 1, 0, 1,
                                          2, 3, 2, 3, 4, 5, 4, 5, 0, 1, 0, 1, 0, 1, 0, 1};
  EXPECT_EQ(p.rows, rows);
  EXPECT_EQ(p.cols, cols);
}

TEST(Qwen25VLVisionIndex, BadGrids) {
  const auto cfg = published_geometry();
  const std::vector<GridTHW> odd = {{1, 16, 22}, {1, 15, 22}};
  expect_error<ValueError>([&] { (void)vl::get_window_index(odd, cfg); },
                           {"grid 1", "(1, 15, 22)", "spatial_merge_size 2"});
  const std::vector<GridTHW> zero = {{0, 16, 22}};
  expect_error<ValueError>([&] { (void)vl::frame_cu_seqlens(zero); }, {"grid 0", "(0, 16, 22)", "positive"});
  expect_error<ValueError>([&] { (void)vl::frame_cu_seqlens({}); }, {"no grids"});
  const std::vector<GridTHW> huge = {{1 << 20, 1 << 10, 1 << 10}};
  expect_error<ValueError>([&] { (void)vl::frame_cu_seqlens(huge); }, {"int32"});
}

// ---- VisionConfig ---------------------------------------------------------------

nlohmann::json tiny_vision_json() {
  // As transformers 5.23 writes it (to_dict of Qwen2_5_VLVisionConfig), trimmed.
  return nlohmann::json::parse(R"({
    "depth": 3, "hidden_size": 32, "hidden_act": "silu", "intermediate_size": 48, "num_heads": 2,
    "in_channels": 3, "patch_size": 2, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "tokens_per_second": 2, "window_size": 8, "out_hidden_size": 24, "fullatt_block_indexes": [1],
    "initializer_range": 0.02, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
    "model_type": "qwen2_5_vl_vision"})");
}

TEST(Qwen25VLVisionConfig, ParsesPublishedKeys) {
  // The 7B vision_config as published (transformers 4.49 era keys).
  const auto c = vl::VisionConfig::from_json(nlohmann::json::parse(R"({
    "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
    "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "temporal_patch_size": 2})"), "config.json");
  EXPECT_EQ(c.depth, 32);
  EXPECT_EQ(c.head_dim(), 80);
  EXPECT_EQ(c.in_channels, 3);
  EXPECT_EQ(c.patch_dim(), 1176);
  EXPECT_EQ(c.merged_window(), 4);
  EXPECT_EQ(c.fullatt_block_indexes, (std::vector<std::int64_t>{7, 15, 23, 31}));
  EXPECT_EQ(c.tokens_per_second, 2.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 10000.0);

  const auto v5 = vl::VisionConfig::from_json(tiny_vision_json(), "config.json");
  EXPECT_EQ(v5.head_dim(), 16);
  EXPECT_EQ(v5.merged_window(), 2);
  EXPECT_EQ(v5.fullatt_block_indexes, (std::vector<std::int64_t>{1}));
}

TEST(Qwen25VLVisionConfig, DefaultsAreTransformers) {
  auto j = tiny_vision_json();
  for (const char* key : {"tokens_per_second", "fullatt_block_indexes", "rope_parameters", "in_channels"}) {
    j.erase(key);
  }
  j["depth"] = 32;
  const auto c = vl::VisionConfig::from_json(j, "config.json");
  EXPECT_EQ(c.tokens_per_second, 4.0);  // the class default
  EXPECT_EQ(c.fullatt_block_indexes, (std::vector<std::int64_t>{7, 15, 23, 31}));
  EXPECT_EQ(c.in_channels, 3);
  EXPECT_EQ(c.rope_theta, 10000.0);
}

TEST(Qwen25VLVisionConfig, BadConfigsNameTheKey) {
  struct Bad {
    std::string key;
    nlohmann::json value;  // null: the key is removed
    std::vector<std::string> fragments;
  };
  const std::vector<Bad> bad = {
      {"depth", nullptr, {"vision_config.depth", "missing"}},
      {"out_hidden_size", nullptr, {"vision_config.out_hidden_size", "missing"}},
      {"depth", "3", {"vision_config.depth", "integer"}},
      {"hidden_size", 0, {"vision_config.hidden_size", "positive"}},
      {"intermediate_size", -5, {"vision_config.intermediate_size", "positive"}},
      {"num_heads", 3, {"vision_config.num_heads", "does not divide hidden_size 32"}},
      {"num_heads", 16, {"vision_config.num_heads", "head_dim 2", "multiple of 4"}},
      {"window_size", 10, {"vision_config.window_size", "multiple of patch_size * spatial_merge_size = 4"}},
      {"fullatt_block_indexes", {1, 3}, {"vision_config.fullatt_block_indexes", "3", "depth 3"}},
      {"fullatt_block_indexes", {-1}, {"vision_config.fullatt_block_indexes", "-1"}},
      {"fullatt_block_indexes", 1, {"vision_config.fullatt_block_indexes", "list"}},
      {"hidden_act", "gelu", {"vision_config.hidden_act", "gelu", "silu"}},
      {"patch_size", 0, {"vision_config.patch_size", "positive"}},
      {"tokens_per_second", "two", {"vision_config.tokens_per_second", "number"}},
      {"rope_parameters", {{"rope_type", "mrope"}}, {"vision_config.rope_parameters", "mrope", "axial"}},
  };
  for (const auto& b : bad) {
    auto j = tiny_vision_json();
    if (b.value.is_null()) j.erase(b.key);
    else j[b.key] = b.value;
    SCOPED_TRACE(b.key + " = " + b.value.dump());
    try {
      (void)vl::VisionConfig::from_json(j, "dir/config.json");
      ADD_FAILURE() << "no FormatError";
    } catch (const FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("dir/config.json"), std::string::npos) << what;
      for (const auto& f : b.fragments) EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in " << what;
    }
  }
  expect_error<FormatError>([] { (void)vl::VisionConfig::from_json(nlohmann::json::array(), "c.json"); },
                            {"c.json", "\"vision_config\"", "object"});
}

// ---- a small random checkpoint and a double-precision reference -------------------

// Weights of the tiny tower on the host, by name without prefix.
using HostWeights = std::map<std::string, Tensor<Host, float>>;

HostWeights random_weights(const vl::VisionConfig& c) {
  HostWeights w;
  const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    w.emplace(name + ".weight", random_tensor<float>(Shape{out, in}, -bound, bound));
    w.emplace(name + ".bias", random_tensor<float>(Shape{out}, -0.1, 0.1));
  };
  const std::int64_t h = c.hidden_size, merged = h * c.merge_unit();
  const double patch_bound = 1.0 / std::sqrt(static_cast<double>(c.patch_dim()));
  w.emplace("patch_embed.proj.weight",
            random_tensor<float>(Shape{h, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size},
                                 -patch_bound, patch_bound));
  for (std::int64_t i = 0; i < c.depth; ++i) {
    const std::string p = tessera::detail::concat("blocks.", i, ".");
    w.emplace(p + "norm1.weight", random_tensor<float>(Shape{h}, 0.7, 1.3));
    w.emplace(p + "norm2.weight", random_tensor<float>(Shape{h}, 0.7, 1.3));
    linear(p + "attn.qkv", 3 * h, h);
    linear(p + "attn.proj", h, h);
    linear(p + "mlp.gate_proj", c.intermediate_size, h);
    linear(p + "mlp.up_proj", c.intermediate_size, h);
    linear(p + "mlp.down_proj", h, c.intermediate_size);
  }
  w.emplace("merger.ln_q.weight", random_tensor<float>(Shape{h}, 0.7, 1.3));
  linear("merger.mlp.0", merged, merged);
  linear("merger.mlp.2", c.out_hidden_size, merged);
  return w;
}

std::vector<double> doubles(const Tensor<Host, float>& t) { return {t.span().begin(), t.span().end()}; }

// y[r, o] = sum_i x[r, i] w[o, i] + b[o].
std::vector<double> dense(const std::vector<double>& x, const HostWeights& w, const std::string& name,
                          std::int64_t in) {
  const auto& weight = w.at(name + ".weight");
  const std::int64_t out = weight.dim(0);
  const std::vector<double> bias = w.count(name + ".bias") ? doubles(w.at(name + ".bias")) : std::vector<double>();
  return reference_linear(x, doubles(weight), bias.empty() ? nullptr : &bias, in, out);
}

std::vector<double> rms_norm_ref(const std::vector<double>& x, const Tensor<Host, float>& weight, std::int64_t n) {
  std::vector<double> y(x.size());
  for (std::size_t r = 0; r < x.size() / static_cast<std::size_t>(n); ++r) {
    double ss = 0;
    for (std::int64_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + 1e-6);
    for (std::int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * weight.span()[i];
  }
  return y;
}

// Per patch in processor order: rotary row/column and the segments it
// attends within (window blocks: same frame and window; full blocks: same frame).
struct PatchLayout {
  std::vector<std::int64_t> row, col, frame, window;
};

PatchLayout patch_layout(std::span<const GridTHW> grids, const vl::VisionConfig& c) {
  PatchLayout p;
  const std::int64_t m = c.spatial_merge_size, n = c.merged_window();
  std::int64_t frame = 0, window = 0;
  for (const auto& [t, h, w] : grids) {
    const std::int64_t windows_w = (w / m + n - 1) / n, windows_h = (h / m + n - 1) / n;
    for (std::int64_t f = 0; f < t; ++f, ++frame, window += windows_h * windows_w) {
      for (std::int64_t by = 0; by < h / m; ++by) {
        for (std::int64_t bx = 0; bx < w / m; ++bx) {
          for (std::int64_t iy = 0; iy < m; ++iy) {
            for (std::int64_t ix = 0; ix < m; ++ix) {
              p.row.push_back(by * m + iy);
              p.col.push_back(bx * m + ix);
              p.frame.push_back(frame);
              p.window.push_back(window + (by / n) * windows_w + bx / n);
            }
          }
        }
      }
    }
  }
  return p;
}

// 2-D rotary embedding of one head (hd values at x), in place.
void rope_ref(double* x, std::int64_t hd, std::int64_t row, std::int64_t col, double theta) {
  const std::int64_t half = hd / 2, quarter = hd / 4;
  std::vector<double> out(static_cast<std::size_t>(hd));
  for (std::int64_t i = 0; i < half; ++i) {
    const std::int64_t k = i % quarter;
    const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(k) / static_cast<double>(half));
    const double angle = static_cast<double>(i < quarter ? row : col) * inv_freq;
    out[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
    out[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
  }
  std::copy(out.begin(), out.end(), x);
}

// The tower in raster order with masks instead of permutations.
std::vector<double> reference_tower(const HostWeights& w, const vl::VisionConfig& c, const Tensor<Host, float>& pixels,
                                    std::span<const GridTHW> grids) {
  const std::int64_t n = pixels.dim(0), hs = c.hidden_size, heads = c.num_heads, hd = c.head_dim();
  const PatchLayout layout = patch_layout(grids, c);
  std::vector<double> x = reference_linear(doubles(pixels), doubles(w.at("patch_embed.proj.weight")), nullptr,
                                           c.patch_dim(), hs);
  for (std::int64_t l = 0; l < c.depth; ++l) {
    const std::string p = tessera::detail::concat("blocks.", l, ".");
    const bool full = std::count(c.fullatt_block_indexes.begin(), c.fullatt_block_indexes.end(), l) > 0;
    const auto& segment = full ? layout.frame : layout.window;
    std::vector<double> qkv = dense(rms_norm_ref(x, w.at(p + "norm1.weight"), hs), w, p + "attn.qkv", hs);
    for (std::int64_t s = 0; s < n; ++s) {
      for (std::int64_t part = 0; part < 2; ++part) {
        for (std::int64_t head = 0; head < heads; ++head) {
          rope_ref(&qkv[static_cast<std::size_t>(s * 3 * hs + part * hs + head * hd)], hd, layout.row[s],
                   layout.col[s], c.rope_theta);
        }
      }
    }
    std::vector<double> attn(static_cast<std::size_t>(n * hs), 0.0);
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t head = 0; head < heads; ++head) {
        const double* q = &qkv[static_cast<std::size_t>(i * 3 * hs + head * hd)];
        std::vector<double> scores;
        std::vector<std::int64_t> keys;
        for (std::int64_t j = 0; j < n; ++j) {
          if (segment[j] != segment[i]) continue;
          const double* k = &qkv[static_cast<std::size_t>(j * 3 * hs + hs + head * hd)];
          double dot = 0;
          for (std::int64_t d = 0; d < hd; ++d) dot += q[d] * k[d];
          scores.push_back(dot / std::sqrt(static_cast<double>(hd)));
          keys.push_back(j);
        }
        const double mx = *std::max_element(scores.begin(), scores.end());
        double sum = 0;
        for (double& v : scores) sum += (v = std::exp(v - mx));
        for (std::size_t e = 0; e < keys.size(); ++e) {
          const double* v = &qkv[static_cast<std::size_t>(keys[e] * 3 * hs + 2 * hs + head * hd)];
          for (std::int64_t d = 0; d < hd; ++d) attn[i * hs + head * hd + d] += scores[e] / sum * v[d];
        }
      }
    }
    const std::vector<double> o = dense(attn, w, p + "attn.proj", hs);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const std::vector<double> h2 = rms_norm_ref(x, w.at(p + "norm2.weight"), hs);
    std::vector<double> gate = dense(h2, w, p + "mlp.gate_proj", hs);
    const std::vector<double> up = dense(h2, w, p + "mlp.up_proj", hs);
    for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
    const std::vector<double> down = dense(gate, w, p + "mlp.down_proj", c.intermediate_size);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  // Raster processor order keeps each merge block's rows adjacent.
  const std::int64_t merged = hs * c.merge_unit();
  std::vector<double> y = dense(rms_norm_ref(x, w.at("merger.ln_q.weight"), hs), w, "merger.mlp.0", merged);
  for (double& v : y) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  return dense(y, w, "merger.mlp.2", merged);
}

// A temporary checkpoint directory: config.json and model.safetensors.
class TinyCheckpoint {
 public:
  TinyCheckpoint(const std::string& tag, const std::string& prefix, const HostWeights& weights,
                 const nlohmann::json& vision_config)
      : dir_(std::filesystem::temp_directory_path() /
             tessera::detail::concat("tessera_vision_", ::getpid(), "_", tag)) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::vector<io::SafetensorsEntry> entries;
    for (const auto& [name, t] : weights) entries.push_back(io::safetensors_entry(prefix + name, t));
    io::save_safetensors(dir_ / "model.safetensors", entries);
    std::ofstream(dir_ / "config.json") << nlohmann::json{{"vision_config", vision_config}}.dump(2);
  }
  ~TinyCheckpoint() { std::filesystem::remove_all(dir_); }
  TinyCheckpoint(const TinyCheckpoint&) = delete;
  TinyCheckpoint& operator=(const TinyCheckpoint&) = delete;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

struct Tiny {
  vl::VisionConfig config = vl::VisionConfig::from_json(tiny_vision_json(), "config.json");
  HostWeights weights = random_weights(config);
  // A 6x10-patch image (partial windows) and a 2-frame 4x4 video (merged grid
  // 2x2, a multiple of the 2-token window: an empty padded row of windows).
  std::vector<GridTHW> grids = {{1, 6, 10}, {2, 4, 4}};
  Tensor<Host, float> pixels = random_tensor<float>(Shape{60 + 32, config.patch_dim()}, -2.0, 2.0);
  std::vector<double> expected = reference_tower(weights, config, pixels, grids);
};

const Tiny& tiny() {
  static const Tiny t;
  return t;
}

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

template <Device D, FloatType T>
std::vector<double> run_tiny(const std::string& tag, const std::string& prefix) {
  const Tiny& t = tiny();
  const TinyCheckpoint ckpt(tag, prefix, t.weights, tiny_vision_json());
  const auto config = vl::VisionConfig::load(ckpt.dir());
  const auto tower = vl::VisionTower<D, T>::load(io::Checkpoint::open(ckpt.dir()), prefix, config);
  const Tensor<D, T> pixels = to<D>(ops::cast<T>(t.pixels));
  return to_doubles(tower.forward(pixels, t.grids));
}

TEST(Qwen25VLVisionTower, MatchesDoubleReferenceCpuFloat) {
  const Tiny& t = tiny();
  for (const std::string prefix : {"visual.", "model.visual."}) {
    const auto got = run_tiny<Cpu<0>, float>("f32", prefix);
    ASSERT_EQ(got.size(), static_cast<std::size_t>((60 + 32) / 4 * t.config.out_hidden_size));
    const double err = max_diff(got, t.expected), scale = max_abs(t.expected);
    std::cout << "[ tiny float32, " << prefix << " ] max |error| " << err << " (max |reference| " << scale << ")\n";
    EXPECT_LE(err, 1e-5 * scale);
  }
}

TEST(Qwen25VLVisionTower, SecondCpuSlotIsBitIdentical) {
  const auto slot1 = run_tiny<Cpu<1>, float>("slot1", "visual.");
  EXPECT_EQ(slot1, (run_tiny<Cpu<0>, float>("slot0", "visual.")));
}

TEST(Qwen25VLVisionTower, MatchesDoubleReferenceCpuBf16) {
  const Tiny& t = tiny();
  const auto got = run_tiny<Cpu<0>, bf16>("bf16", "visual.");
  const double err = max_diff(got, t.expected), scale = max_abs(t.expected);
  std::cout << "[ tiny bf16 ] max |error| " << err << " (max |reference| " << scale << ")\n";
  EXPECT_LE(err, 0.05 * scale);  // bf16 weights, activations and roundings through 3 blocks
}

TEST(Qwen25VLVisionTower, MatchesDoubleReferenceCuda) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  const Tiny& t = tiny();
  const double scale = max_abs(t.expected);
  const double f32 = max_diff(run_tiny<Cuda<0>, float>("cuda_f32", "visual."), t.expected);
  const double b16 = max_diff(run_tiny<Cuda<0>, bf16>("cuda_bf16", "visual."), t.expected);
  std::cout << "[ tiny Cuda<0> ] float32 max |error| " << f32 << ", bf16 " << b16 << " (max |reference| " << scale
            << ")\n";
  EXPECT_LE(f32, 1e-4 * scale);
  EXPECT_LE(b16, 0.05 * scale);
}

TEST(Qwen25VLVisionTower, BadWeights) {
  const Tiny& t = tiny();
  HostWeights weights;
  for (const auto& [name, w] : t.weights) weights.emplace(name, to<Host>(w));
  weights.at("blocks.2.attn.qkv.weight") = random_tensor<float>(Shape{95, 32});
  weights.erase("merger.mlp.2.bias");
  const TinyCheckpoint ckpt("bad_weights", "visual.", weights, tiny_vision_json());
  const auto checkpoint = io::Checkpoint::open(ckpt.dir());
  expect_error<FormatError>([&] { (void)vl::VisionTower<Cpu<0>, float>::load(checkpoint, "visual.", t.config); },
                            {"visual.blocks.2.attn.qkv.weight", ckpt.dir().string(), "[95, 32]", "[96, 32]"});
  weights.at("blocks.2.attn.qkv.weight") = to<Host>(t.weights.at("blocks.2.attn.qkv.weight"));
  const TinyCheckpoint missing("missing_bias", "visual.", weights, tiny_vision_json());
  expect_error<ValueError>(
      [&] { (void)vl::VisionTower<Cpu<0>, float>::load(io::Checkpoint::open(missing.dir()), "visual.", t.config); },
      {"visual.merger.mlp.2.bias", missing.dir().string()});
  // The other layout's prefix: the checkpoint suggests the right name.
  expect_error<ValueError>(
      [&] { (void)vl::VisionTower<Cpu<0>, float>::load(checkpoint, "model.visual.", t.config); },
      {"model.visual.patch_embed.proj.weight", "did you mean 'visual.patch_embed.proj.weight'"});
}

TEST(Qwen25VLVisionTower, BadInputs) {
  const Tiny& t = tiny();
  const TinyCheckpoint ckpt("bad_inputs", "visual.", t.weights, tiny_vision_json());
  const auto tower = vl::VisionTower<Cpu<0>, float>::load(io::Checkpoint::open(ckpt.dir()), "visual.", t.config);
  const auto narrow = random_tensor<float>(Shape{92, 23});
  expect_shape_error([&] { (void)tower.forward(narrow, t.grids); }, {"pixel_values [92, 23]", "24"});
  const auto short_rows = random_tensor<float>(Shape{88, 24});
  expect_shape_error([&] { (void)tower.forward(short_rows, t.grids); },
                     {"pixel_values [88, 24]", "88 rows", "2 grids", "92 patches"});
  const std::vector<GridTHW> odd = {{1, 6, 9}, {2, 4, 4}};
  const auto rows = random_tensor<float>(Shape{54 + 32, 24});
  expect_error<ValueError>([&] { (void)tower.forward(rows, odd); },
                           {"grid 0", "(1, 6, 9)", "spatial_merge_size 2"});
  expect_error<ValueError>([&] { (void)tower.forward(rows, {}); }, {"no grids"});
}

// ---- golden: transformers' outputs on the Qwen2.5-VL fixtures ----------------------
//
// tests/fixtures/qwen2_5_vl/<layout>/ (tools/fixtures/make_qwen2_5_vl_fixtures.py):
// a checkpoint directory, reference.json (per case: the processor inputs it
// used, by name) and reference.safetensors ("<case>.image_grid_thw",
// "<case>.image_embeds", "<case>.video_grid_thw", "<case>.video_embeds": the
// merger output of model.model.visual in raster order). The pixel_values are
// the processor fixture's ("<image>.pixel_values", "<video>.pixel_values_videos"),
// concatenated over a case's images in order.

std::filesystem::path golden_dir(const std::string& layout) {
  return tessera::testing::fixtures_dir() / "qwen2_5_vl" / layout;
}

std::vector<GridTHW> grids_of(const Tensor<Host, std::int64_t>& thw) {
  std::vector<GridTHW> grids;
  for (std::int64_t i = 0; i < thw.dim(0); ++i) grids.push_back({thw.at(i, 0), thw.at(i, 1), thw.at(i, 2)});
  return grids;
}

// The rows of `names` (each "<name><suffix>" in `arrays`), concatenated.
Tensor<Cpu<0>, float> stacked_rows(const io::SafetensorsFile& arrays, const std::vector<std::string>& names,
                                   const std::string& suffix) {
  std::vector<Tensor<Cpu<0>, float>> parts;
  for (const auto& name : names) parts.push_back(arrays.load<Cpu<0>, float>(name + suffix));
  return parts.size() == 1 ? std::move(parts[0]) : ops::concat(parts, 0);
}

void check_golden(const std::string& layout, const std::string& prefix) {
  const auto dir = golden_dir(layout);
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << dir.string() << " does not exist yet";
  const auto meta = nlohmann::json::parse(std::ifstream(dir / "reference.json"));
  const auto processor =
      io::SafetensorsFile::open(dir / meta.value("processor_reference", "../processor/reference.safetensors"));
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  const auto config = vl::VisionConfig::load(dir);
  const auto tower = vl::VisionTower<Cpu<0>, float>::load(io::Checkpoint::open(dir), prefix, config);
  int checked = 0;
  for (const auto& [name, c] : meta.at("cases").items()) {
    const auto images = c.at("images").get<std::vector<std::string>>();
    const bool video = c.contains("video") && c.at("video").is_string();
    if (images.empty() && !video) continue;  // text only
    SCOPED_TRACE(layout + " " + name);
    const auto pixels = video ? stacked_rows(processor, {c.at("video").get<std::string>()}, ".pixel_values_videos")
                              : stacked_rows(processor, images, ".pixel_values");
    const std::string kind = video ? ".video" : ".image";
    const auto grids = grids_of(ref.load<Host, std::int64_t>(name + kind + "_grid_thw"));
    const auto got = to_doubles(tower.forward(pixels, grids));
    const auto expected = to_doubles(ref.load<Host, float>(name + kind + "_embeds"));
    ASSERT_EQ(got.size(), expected.size());
    const double err = max_diff(got, expected), scale = max_abs(expected);
    std::cout << "[ golden " << layout << " " << name << " ] max |error| " << err << " = " << err / scale
              << " of max |reference| " << scale << "\n";
    EXPECT_LE(err, 1e-4 * scale);
    ++checked;
  }
  EXPECT_GE(checked, 3) << "expected the cases one_image, two_images and video in " << dir.string();
}

// The intermediate window tensors the fixture records for one_image.
TEST(Qwen25VLVisionGolden, WindowIndexOfFixture) {
  const auto dir = golden_dir("legacy");
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << dir.string() << " does not exist yet";
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  if (ref.find("vision.one_image.window_index") == nullptr) GTEST_SKIP() << "no vision.one_image.* tensors";
  const auto grids = grids_of(ref.load<Host, std::int64_t>("one_image.image_grid_thw"));
  const auto w = vl::get_window_index(grids, vl::VisionConfig::load(dir));
  const auto index = ref.load<Host, std::int64_t>("vision.one_image.window_index");
  EXPECT_EQ(w.window_index, (std::vector<std::int64_t>(index.span().begin(), index.span().end())));
  const auto cu = ref.load<Host, std::int64_t>("vision.one_image.cu_window_seqlens");
  EXPECT_EQ(std::vector<std::int64_t>(w.cu_window_seqlens.begin(), w.cu_window_seqlens.end()),
            (std::vector<std::int64_t>(cu.span().begin(), cu.span().end())));
  const auto frames = ref.load<Host, std::int64_t>("vision.one_image.cu_seqlens");
  const auto mine = vl::frame_cu_seqlens(grids);
  EXPECT_EQ(std::vector<std::int64_t>(mine.begin(), mine.end()),
            (std::vector<std::int64_t>(frames.span().begin(), frames.span().end())));
}

TEST(Qwen25VLVisionGolden, LegacyLayout) { check_golden("legacy", "visual."); }
TEST(Qwen25VLVisionGolden, TiedLayout) { check_golden("tied", "model.visual."); }

}  // namespace
}  // namespace tessera::testing
