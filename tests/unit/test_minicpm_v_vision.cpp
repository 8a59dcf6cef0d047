// models/minicpm_v_vision.hpp: the MiniCPM-V 2.6 vision encoder (SigLIP NaViT
// tower and resampler).
//
// - position_buckets against an independent restatement of torch's float32
//   CPU arange + bucketize (written from the kernel's description, not from
//   the header), the oracle document's facts (n = 25, i = 5 -> 13; n = 50,
//   i = 5 -> 6; 42 n in 1..259 where the closed form floor(i * 70 / n) is
//   wrong), and where exactly the closed form may fail.
// - sincos_2d against the formula in double (float32 tolerance), its channel
//   layout (column first), and growth (an 80 x 80 table restricted to 70 x 70
//   is the 70 x 70 table, bit for bit).
// - patch_rows against ops::patch_embed2d (the Conv2d it stands for).
// - VisionConfig::from_json: a good config, and bad ones naming their key.
// - A small random checkpoint written here: NaViT and the resampler against a
//   double-precision transcription of the reference, slice by slice with no
//   packing (so the variable-length attention is checked against separate
//   runs), on Cpu<0> (float, bf16), Cpu<1> (bit-identical) and Cuda<0> when
//   there is one; load errors naming the tensor; bad inputs.
// - encoder_cost against the memory ledger (the measured peak stays under it).
// - Golden: tests/fixtures/minicpm_v (tools/fixtures/make_minicpm_v_fixtures.py:
//   transformers' Idefics2VisionTransformer one slice at a time and the
//   generator's nn.MultiheadAttention resampler), when present: torch's bucket
//   ids for every stored n (1..120) and its boundaries identical; the stored
//   sin-cos sample (table grown to 70 x 119) within 1e-5; position ids, vpm
//   output per slice and resampler output (on the stored and on tessera's vpm
//   output) within 1e-4 of the largest |reference|, for the 3-slice 1000x600
//   image and the 8 x 119 strip, from the stored slice PNGs' pixel values.
#include <tessera/io/image.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/minicpm_v_vision.hpp>

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

namespace mv = models::minicpm_v;
using mv::TgtSize;

// ---- position buckets ----------------------------------------------------------------

// torch.arange(start, end, step) for float32 on the CPU, restated from the
// ATen kernel (RangeFactoriesKernel.cpp arange_kernel + Loops.h
// vectorized_loop): accscalar_t is double; the loop writes blocks of
// 2 * Vec::size() elements with Vectorized<float>::arange(base, step), base
// = start + step * idx narrowed to float and element j = base + j * step
// narrowed to float; the remainder goes through the scalar lambda
// start + step * idx. Vec::size() is 8 floats (AVX2 / default).
std::vector<float> naive_torch_arange(double start, double end, double step) {
  const auto n = static_cast<long>(std::ceil((end - start) / step));
  std::vector<float> out;
  long idx = 0;
  while (idx + 16 <= n) {
    for (int v = 0; v < 2; ++v) {
      const float base = static_cast<float>(start + step * static_cast<double>(idx));
      for (int j = 0; j < 8; ++j) out.push_back(static_cast<float>(base + j * step));
      idx += 8;
    }
  }
  for (; idx < n; ++idx) out.push_back(static_cast<float>(start + step * static_cast<double>(idx)));
  return out;
}

std::vector<std::int64_t> naive_buckets(std::int64_t n, std::int64_t side) {
  const auto boundaries = naive_torch_arange(1.0 / static_cast<double>(side), 1.0, 1.0 / static_cast<double>(side));
  const float inv = 1.0f / static_cast<float>(n);  // 1 / n_tensor: float32
  const auto frac = naive_torch_arange(0.0, 1.0 - 1e-6, inv);
  std::vector<std::int64_t> out;
  for (const float f : frac) {
    std::int64_t b = 0;
    for (const float edge : boundaries) b += edge <= f ? 1 : 0;  // right=True
    out.push_back(b);
  }
  return out;
}

TEST(MiniCpmVPositions, BucketsMatchTorchRestatement) {
  for (std::int64_t n = 1; n <= 259; ++n) {
    SCOPED_TRACE(n);
    const auto got = mv::position_buckets(n, 70);
    ASSERT_EQ(got.size(), static_cast<std::size_t>(n));
    EXPECT_EQ(got, naive_buckets(n, 70));
  }
  for (const std::int64_t side : {1, 2, 7, 32, 64}) {
    for (const std::int64_t n : {1, 3, 16, 17, 33, 100}) EXPECT_EQ(mv::position_buckets(n, side), naive_buckets(n, side));
  }
}

TEST(MiniCpmVPositions, BucketsOracleFacts) {
  // oracle-internvl2-minicpmv.md §2.4, run with torch.
  EXPECT_EQ(mv::position_buckets(25, 70)[5], 13);
  EXPECT_EQ(mv::position_buckets(50, 70)[5], 6);
  int wrong = 0;
  for (std::int64_t n = 1; n <= 259; ++n) {
    const auto b = mv::position_buckets(n, 70);
    bool differs = false;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t closed = i * 70 / n;
      const std::int64_t got = b[static_cast<std::size_t>(i)];
      if (got == closed) continue;
      differs = true;
      // Only where i / n lands exactly on a boundary, and one bucket lower.
      EXPECT_EQ(i * 70 % n, 0) << "n " << n << " i " << i;
      EXPECT_EQ(got, closed - 1) << "n " << n << " i " << i;
    }
    for (std::int64_t i = 1; i < n; ++i) EXPECT_LE(b[static_cast<std::size_t>(i - 1)], b[static_cast<std::size_t>(i)]);
    EXPECT_EQ(b.front(), 0);
    EXPECT_LT(b.back(), 70);
    wrong += differs ? 1 : 0;
  }
  EXPECT_EQ(wrong, 42);
}

TEST(MiniCpmVPositions, PositionIdsAreRasterRowMajor) {
  const auto ids = mv::position_ids({3, 5}, 70);
  const auto rows = mv::position_buckets(3, 70), cols = mv::position_buckets(5, 70);
  ASSERT_EQ(ids.size(), 15u);
  for (std::size_t y = 0; y < 3; ++y) {
    for (std::size_t x = 0; x < 5; ++x) EXPECT_EQ(ids[y * 5 + x], rows[y] * 70 + cols[x]);
  }
  EXPECT_EQ(ids[5], mv::position_buckets(3, 70)[1] * 70);  // (1, 0): row 1 of 3 is bucket 23
  EXPECT_EQ(rows[1], 23);
  expect_error<ValueError>([] { (void)mv::position_buckets(0, 70); }, {"position_buckets", "n 0"});
}

// ---- the 2-D sin-cos table -------------------------------------------------------------

double sincos_ref(std::int64_t dim, std::int64_t h, std::int64_t w, std::int64_t c) {
  const std::int64_t half = dim / 2, quarter = dim / 4;
  const std::int64_t pos = c < half ? w : h;  // first half: the column
  const std::int64_t k = c % half;
  const double omega = std::pow(10000.0, -static_cast<double>(k % quarter) / static_cast<double>(quarter));
  const double angle = static_cast<double>(pos) * omega;
  return k < quarter ? std::sin(angle) : std::cos(angle);
}

TEST(MiniCpmVSinCos, MatchesFormula) {
  for (const auto& [dim, rows, cols] : std::vector<std::array<std::int64_t, 3>>{{16, 3, 5}, {256, 8, 119}, {64, 80, 2}}) {
    const auto t = mv::sincos_2d(dim, rows, cols);
    ASSERT_EQ(t.shape(), (Shape{rows * cols, dim}));
    double worst = 0;
    for (std::int64_t h = 0; h < rows; ++h) {
      for (std::int64_t w = 0; w < cols; ++w) {
        for (std::int64_t c = 0; c < dim; ++c) {
          worst = std::max(worst, std::abs(static_cast<double>(t.at(h * cols + w, c)) - sincos_ref(dim, h, w, c)));
        }
      }
    }
    // float32: omega and the angle p * omega are rounded to float (numpy's
    // einsum), so the error grows with the position: 2^-24 * 119 ~ 7e-6.
    EXPECT_LE(worst, 1e-5) << dim << " " << rows << "x" << cols;
  }
  // Channel 0 is sin(w * 1) (the column), channel D/2 is sin(h * 1) (the row).
  const auto t = mv::sincos_2d(8, 2, 3);
  EXPECT_FLOAT_EQ(t.at(1 * 3 + 2, 0), std::sin(2.0f));
  EXPECT_FLOAT_EQ(t.at(1 * 3 + 2, 4), std::sin(1.0f));
  EXPECT_FLOAT_EQ(t.at(1 * 3 + 2, 2), std::cos(2.0f));
  expect_error<ValueError>([] { (void)mv::sincos_2d(10, 2, 2); }, {"embed_dim 10", "multiple of 4"});
}

TEST(MiniCpmVSinCos, GrowthKeepsOldEntries) {
  const auto big = mv::sincos_2d(64, 80, 80), small = mv::sincos_2d(64, 70, 70);
  for (std::int64_t h = 0; h < 70; ++h) {
    for (std::int64_t w = 0; w < 70; ++w) {
      for (std::int64_t c = 0; c < 64; ++c) ASSERT_EQ(big.at(h * 80 + w, c), small.at(h * 70 + w, c)) << h << " " << w;
    }
  }
}

// ---- patch rows ----------------------------------------------------------------------

TEST(MiniCpmVPatchRows, EqualsConv2d) {
  const auto chw = random_tensor<float>(Shape{3, 28, 42});
  const auto rows = mv::patch_rows(chw.view(), 14);
  ASSERT_EQ(rows.shape(), (Shape{6, 3 * 14 * 14}));
  for (std::int64_t by = 0; by < 2; ++by) {
    for (std::int64_t bx = 0; bx < 3; ++bx) {
      for (std::int64_t c = 0; c < 3; ++c) {
        for (std::int64_t ky = 0; ky < 14; ++ky) {
          for (std::int64_t kx = 0; kx < 14; ++kx) {
            ASSERT_EQ(rows.at(by * 3 + bx, (c * 14 + ky) * 14 + kx), chw.at(c, by * 14 + ky, bx * 14 + kx));
          }
        }
      }
    }
  }
  // The patch embedding as a GEMM on the rows is the strided convolution.
  auto weight = random_tensor<float>(Shape{5, 3, 14, 14});
  const auto conv = ops::patch_embed2d(chw.view().reshape({1, 3, 28, 42}), weight);
  weight.reshape_inplace(Shape{5, 3 * 14 * 14});
  EXPECT_TRUE(all_close(to_doubles(ops::linear(rows, weight)), to_doubles(conv), 1e-4, 1e-5));
  expect_shape_error([&] { (void)mv::patch_rows(chw.view(), 16); }, {"[3, 28, 42]", "16"});
}

// ---- config --------------------------------------------------------------------------

nlohmann::json tiny_vision_json() {
  return {{"hidden_size", 32},      {"intermediate_size", 64}, {"num_hidden_layers", 2},
          {"num_attention_heads", 2}, {"image_size", 980},       {"patch_size", 14},
          {"model_type", "siglip"}};
}

TEST(MiniCpmVVisionConfig, ParsesPublishedKeys) {
  const nlohmann::json published = {{"hidden_size", 1152}, {"image_size", 980}, {"intermediate_size", 4304},
                                    {"model_type", "siglip"}, {"num_attention_heads", 16},
                                    {"num_hidden_layers", 27}, {"patch_size", 14}};
  const auto c = mv::VisionConfig::from_json(published, "config.json");
  EXPECT_EQ(c.hidden_size, 1152);
  EXPECT_EQ(c.intermediate_size, 4304);
  EXPECT_EQ(c.num_hidden_layers, 27);
  EXPECT_EQ(c.head_dim(), 72);
  EXPECT_EQ(c.per_side(), 70);
  EXPECT_EQ(c.patch_dim(), 588);
  EXPECT_EQ(c.layer_norm_eps, 1e-6);
  EXPECT_EQ(c.hidden_act, "gelu_pytorch_tanh");
}

TEST(MiniCpmVVisionConfig, BadConfigsNameTheKey) {
  struct Bad {
    std::string key;
    nlohmann::json value;  // null: the key is removed
    std::vector<std::string> fragments;
  };
  const std::vector<Bad> bad = {
      {"hidden_size", nullptr, {"vision_config.hidden_size", "missing"}},
      {"num_hidden_layers", nullptr, {"vision_config.num_hidden_layers", "missing"}},
      {"intermediate_size", "64", {"vision_config.intermediate_size", "integer"}},
      {"num_attention_heads", 0, {"vision_config.num_attention_heads", "positive"}},
      {"num_attention_heads", 3, {"vision_config.num_attention_heads", "does not divide hidden_size 32"}},
      {"patch_size", -1, {"vision_config.patch_size", "positive"}},
      {"image_size", 10, {"vision_config.image_size", "smaller than patch_size 14"}},
      {"hidden_act", "gelu", {"vision_config.hidden_act", "gelu_pytorch_tanh"}},
      {"layer_norm_eps", -1.0, {"vision_config.layer_norm_eps", "positive"}},
  };
  for (const auto& b : bad) {
    auto j = tiny_vision_json();
    if (b.value.is_null()) j.erase(b.key);
    else j[b.key] = b.value;
    SCOPED_TRACE(b.key + " = " + b.value.dump());
    try {
      (void)mv::VisionConfig::from_json(j, "dir/config.json");
      ADD_FAILURE() << "no FormatError";
    } catch (const FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("dir/config.json"), std::string::npos) << what;
      for (const auto& f : b.fragments) EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in " << what;
    }
  }
}

// ---- a small random checkpoint and a double-precision reference -------------------

using HostWeights = std::map<std::string, Tensor<Host, float>>;

mv::ResamplerConfig tiny_resampler() { return {/*num_queries*/ 4, /*embed_dim*/ 64, /*num_heads*/ 2, /*kv_dim*/ 32}; }

// vpm.* and resampler.* of the tiny encoder, by full name.
HostWeights random_weights(const mv::VisionConfig& c, const mv::ResamplerConfig& r) {
  HostWeights w;
  const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in, bool bias = true) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    w.emplace(name + ".weight", random_tensor<float>(Shape{out, in}, -bound, bound));
    if (bias) w.emplace(name + ".bias", random_tensor<float>(Shape{out}, -0.1, 0.1));
  };
  const auto norm = [&](const std::string& name, std::int64_t n) {
    w.emplace(name + ".weight", random_tensor<float>(Shape{n}, 0.7, 1.3));
    w.emplace(name + ".bias", random_tensor<float>(Shape{n}, -0.2, 0.2));
  };
  const std::int64_t h = c.hidden_size, side = c.per_side(), p = c.patch_size;
  const double patch_bound = 1.0 / std::sqrt(static_cast<double>(c.patch_dim()));
  w.emplace("vpm.embeddings.patch_embedding.weight",
            random_tensor<float>(Shape{h, c.num_channels, p, p}, -patch_bound, patch_bound));
  w.emplace("vpm.embeddings.patch_embedding.bias", random_tensor<float>(Shape{h}, -0.1, 0.1));
  w.emplace("vpm.embeddings.position_embedding.weight", random_tensor<float>(Shape{side * side, h}, -1.0, 1.0));
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string l = tessera::detail::concat("vpm.encoder.layers.", i, ".");
    norm(l + "layer_norm1", h);
    norm(l + "layer_norm2", h);
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) linear(l + "self_attn." + proj, h, h);
    linear(l + "mlp.fc1", c.intermediate_size, h);
    linear(l + "mlp.fc2", h, c.intermediate_size);
  }
  norm("vpm.post_layernorm", h);
  const std::int64_t d = r.embed_dim;
  w.emplace("resampler.query", random_tensor<float>(Shape{r.num_queries, d}, -1.0, 1.0));
  linear("resampler.kv_proj", d, r.kv_dim, false);
  norm("resampler.ln_q", d);
  norm("resampler.ln_kv", d);
  norm("resampler.ln_post", d);
  const double bound = 1.0 / std::sqrt(static_cast<double>(d));
  w.emplace("resampler.attn.in_proj_weight", random_tensor<float>(Shape{3 * d, d}, -bound, bound));
  w.emplace("resampler.attn.in_proj_bias", random_tensor<float>(Shape{3 * d}, -0.1, 0.1));
  linear("resampler.attn.out_proj", d, d);
  w.emplace("resampler.proj", random_tensor<float>(Shape{d, d}, -bound, bound));
  return w;
}

std::vector<double> doubles(const Tensor<Host, float>& t) { return {t.span().begin(), t.span().end()}; }

std::vector<double> dense(const std::vector<double>& x, const HostWeights& w, const std::string& name,
                          std::int64_t in) {
  const auto& weight = w.at(name + ".weight");
  const std::vector<double> bias = w.count(name + ".bias") ? doubles(w.at(name + ".bias")) : std::vector<double>();
  return reference_linear(x, doubles(weight), bias.empty() ? nullptr : &bias, in, weight.dim(0));
}

std::vector<double> layer_norm_ref(const std::vector<double>& x, const HostWeights& w, const std::string& name,
                                   std::int64_t n) {
  const auto& g = w.at(name + ".weight");
  const auto& b = w.at(name + ".bias");
  std::vector<double> y(x.size());
  for (std::size_t r = 0; r < x.size() / static_cast<std::size_t>(n); ++r) {
    double mean = 0, var = 0;
    for (std::int64_t i = 0; i < n; ++i) mean += x[r * n + i];
    mean /= static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) var += (x[r * n + i] - mean) * (x[r * n + i] - mean);
    var /= static_cast<double>(n);
    for (std::int64_t i = 0; i < n; ++i) {
      y[r * n + i] = (x[r * n + i] - mean) / std::sqrt(var + 1e-6) * g.span()[i] + b.span()[i];
    }
  }
  return y;
}

// softmax(q k^T * scale) v of one head over all rows of one segment; q, k,
// v are [rows, stride] with the head's columns at `offset`.
void attend_ref(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                std::int64_t q_stride, std::int64_t kv_stride, std::int64_t offset, std::int64_t hd,
                std::vector<double>& out, std::int64_t out_stride) {
  const std::int64_t nq = static_cast<std::int64_t>(q.size()) / q_stride;
  const std::int64_t nk = static_cast<std::int64_t>(k.size()) / kv_stride;
  for (std::int64_t i = 0; i < nq; ++i) {
    std::vector<double> s(static_cast<std::size_t>(nk));
    for (std::int64_t j = 0; j < nk; ++j) {
      double dot = 0;
      for (std::int64_t e = 0; e < hd; ++e) dot += q[i * q_stride + offset + e] * k[j * kv_stride + offset + e];
      s[j] = dot / std::sqrt(static_cast<double>(hd));
    }
    const double mx = *std::max_element(s.begin(), s.end());
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (std::int64_t e = 0; e < hd; ++e) {
      double acc = 0;
      for (std::int64_t j = 0; j < nk; ++j) acc += s[j] / sum * v[j * kv_stride + offset + e];
      out[i * out_stride + offset + e] = acc;
    }
  }
}

// One slice through the tower, in double, no packing.
std::vector<double> reference_navit(const HostWeights& w, const mv::VisionConfig& c, const std::vector<double>& rows,
                                    TgtSize t) {
  const std::int64_t n = t[0] * t[1], hs = c.hidden_size, hd = c.head_dim();
  std::vector<double> x = dense(rows, w, "vpm.embeddings.patch_embedding", c.patch_dim());
  // patch_embedding.weight is [h, C, p, p]: dense() reads it as [h, C*p*p].
  const auto ids = mv::position_ids(t, c.per_side());
  const auto& table = w.at("vpm.embeddings.position_embedding.weight");
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t e = 0; e < hs; ++e) x[i * hs + e] += table.at(ids[static_cast<std::size_t>(i)], e);
  }
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = tessera::detail::concat("vpm.encoder.layers.", l, ".");
    const auto h = layer_norm_ref(x, w, p + "layer_norm1", hs);
    const auto q = dense(h, w, p + "self_attn.q_proj", hs), k = dense(h, w, p + "self_attn.k_proj", hs),
               v = dense(h, w, p + "self_attn.v_proj", hs);
    std::vector<double> a(x.size());
    for (std::int64_t head = 0; head < c.num_attention_heads; ++head) attend_ref(q, k, v, hs, hs, head * hd, hd, a, hs);
    const auto o = dense(a, w, p + "self_attn.out_proj", hs);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    auto f = dense(layer_norm_ref(x, w, p + "layer_norm2", hs), w, p + "mlp.fc1", hs);
    for (double& y : f) y = 0.5 * y * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (y + 0.044715 * y * y * y)));
    const auto m = dense(f, w, p + "mlp.fc2", c.intermediate_size);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += m[i];
  }
  return layer_norm_ref(x, w, "vpm.post_layernorm", hs);
}

// One slice through the resampler, in double.
std::vector<double> reference_resampler(const HostWeights& w, const mv::ResamplerConfig& r,
                                        const std::vector<double>& vision, TgtSize t) {
  const std::int64_t d = r.embed_dim, hd = r.head_dim(), L = t[0] * t[1];
  // kv_proj is nn.Identity when kv_dim == embed_dim (no tensor).
  const auto kv = w.count("resampler.kv_proj.weight") ? dense(vision, w, "resampler.kv_proj", r.kv_dim) : vision;
  const auto x = layer_norm_ref(kv, w, "resampler.ln_kv", d);
  std::vector<double> kin(x);
  for (std::int64_t i = 0; i < L; ++i) {
    for (std::int64_t c = 0; c < d; ++c) kin[i * d + c] += sincos_ref(d, i / t[1], i % t[1], c);
  }
  const auto q = layer_norm_ref(doubles(w.at("resampler.query")), w, "resampler.ln_q", d);
  const auto& in_w = w.at("resampler.attn.in_proj_weight");
  const auto& in_b = w.at("resampler.attn.in_proj_bias");
  const auto part = [&](const std::vector<double>& in, std::int64_t which) {
    const std::vector<double> all_w = doubles(in_w), all_b = doubles(in_b);
    const std::vector<double> pw(all_w.begin() + which * d * d, all_w.begin() + (which + 1) * d * d);
    const std::vector<double> pb(all_b.begin() + which * d, all_b.begin() + (which + 1) * d);
    return reference_linear(in, pw, &pb, d, d);
  };
  const auto Q = part(q, 0), K = part(kin, 1), V = part(x, 2);
  std::vector<double> a(static_cast<std::size_t>(r.num_queries * d));
  for (std::int64_t head = 0; head < r.num_heads; ++head) attend_ref(Q, K, V, d, d, head * hd, hd, a, d);
  const auto o = layer_norm_ref(dense(a, w, "resampler.attn.out_proj", d), w, "resampler.ln_post", d);
  // x @ proj: proj [D, D] right-multiplied, i.e. a linear with weight proj^T.
  const auto& proj = w.at("resampler.proj");
  std::vector<double> y(static_cast<std::size_t>(r.num_queries * d), 0.0);
  for (std::int64_t i = 0; i < r.num_queries; ++i) {
    for (std::int64_t j = 0; j < d; ++j) {
      for (std::int64_t k = 0; k < d; ++k) y[i * d + j] += o[i * d + k] * proj.at(k, j);
    }
  }
  return y;
}

class TinyCheckpoint {
 public:
  TinyCheckpoint(const std::string& tag, const HostWeights& weights)
      : dir_(std::filesystem::temp_directory_path() /
             tessera::detail::concat("tessera_minicpm_v_vision_", ::getpid(), "_", tag)) {
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

struct Tiny {
  mv::VisionConfig config = mv::VisionConfig::from_json(tiny_vision_json(), "config.json");
  mv::ResamplerConfig resampler = tiny_resampler();
  HostWeights weights = random_weights(config, resampler);
  // Three slices: one of 25 rows (a torch/closed-form disagreement), one 2 x 75
  // (wider than the 70-position table: the resampler's growth), one 4 x 6.
  std::vector<TgtSize> tgt_sizes = {{25, 2}, {2, 75}, {4, 6}};
  Tensor<Host, float> patches = random_tensor<float>(Shape{50 + 150 + 24, config.patch_dim()}, -1.0, 1.0);
  std::vector<double> vpm, out;  // per-slice references, concatenated

  Tiny() {
    std::int64_t row = 0;
    const std::vector<double> all = doubles(patches);
    for (const TgtSize& t : tgt_sizes) {
      const std::int64_t n = t[0] * t[1], pd = config.patch_dim();
      const std::vector<double> rows(all.begin() + row * pd, all.begin() + (row + n) * pd);
      const auto v = reference_navit(weights, config, rows, t);
      const auto y = reference_resampler(weights, resampler, v, t);
      vpm.insert(vpm.end(), v.begin(), v.end());
      out.insert(out.end(), y.begin(), y.end());
      row += n;
    }
  }
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

struct Outputs {
  std::vector<double> vpm, out;
};

template <Device D, FloatType T>
Outputs run_tiny(const std::string& tag) {
  const Tiny& t = tiny();
  const TinyCheckpoint ckpt(tag, t.weights);
  const auto encoder = mv::VisionEncoder<D, T>::load(io::Checkpoint::open(ckpt.dir()), t.config, t.resampler);
  const Tensor<D, T> patches = to<D>(ops::cast<T>(t.patches));
  const Tensor<D, T> v = encoder.vpm.forward(patches, t.tgt_sizes);
  Outputs r{to_doubles(v), to_doubles(encoder.resampler.forward(v, t.tgt_sizes))};
  EXPECT_EQ(to_doubles(encoder.forward(patches, t.tgt_sizes)), r.out);
  return r;
}

void report(const std::string& what, const Outputs& got, double vpm_tol, double out_tol) {
  const Tiny& t = tiny();
  ASSERT_EQ(got.vpm.size(), t.vpm.size());
  ASSERT_EQ(got.out.size(), t.out.size());
  const double ev = max_diff(got.vpm, t.vpm) / max_abs(t.vpm), eo = max_diff(got.out, t.out) / max_abs(t.out);
  std::cout << "[ tiny " << what << " ] vpm max |error| / max |reference| " << ev << ", resampler " << eo << "\n";
  EXPECT_LE(ev, vpm_tol);
  EXPECT_LE(eo, out_tol);
}

TEST(MiniCpmVEncoder, MatchesDoubleReferenceCpuFloat) { report("Cpu<0> float32", run_tiny<Cpu<0>, float>("f32"), 1e-5, 1e-5); }

TEST(MiniCpmVEncoder, SecondCpuSlotIsBitIdentical) {
  const Outputs a = run_tiny<Cpu<1>, float>("slot1"), b = run_tiny<Cpu<0>, float>("slot0");
  EXPECT_EQ(a.vpm, b.vpm);
  EXPECT_EQ(a.out, b.out);
}

TEST(MiniCpmVEncoder, MatchesDoubleReferenceCpuBf16) {
  // bf16 weights, activations and roundings through 2 layers and the resampler.
  report("Cpu<0> bf16", run_tiny<Cpu<0>, bf16>("bf16"), 0.05, 0.05);
}

TEST(MiniCpmVEncoder, MatchesDoubleReferenceCuda) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  report("Cuda<0> float32", run_tiny<Cuda<0>, float>("cuda_f32"), 1e-4, 1e-4);
  report("Cuda<0> bf16", run_tiny<Cuda<0>, bf16>("cuda_bf16"), 0.05, 0.05);
}

TEST(MiniCpmVEncoder, ResamplerWithIdentityKvProj) {
  // kv_dim == embed_dim: MiniCPM-V's Resampler uses nn.Identity for kv_proj.
  const Tiny& t = tiny();
  mv::ResamplerConfig r = t.resampler;
  r.kv_dim = r.embed_dim;
  HostWeights weights = random_weights(t.config, r);
  weights.erase("resampler.kv_proj.weight");
  const TinyCheckpoint ckpt("identity_kv", weights);
  const auto resampler = mv::Resampler<Cpu<0>, float>::load(io::Checkpoint::open(ckpt.dir()), "resampler.", r);
  const std::vector<TgtSize> tgt = {{3, 4}, {1, 5}};
  const auto vision = random_tensor<float>(Shape{17, r.embed_dim}, -2.0, 2.0);
  const auto all = doubles(vision);
  std::vector<double> expected;
  std::int64_t row = 0;
  for (const TgtSize& s : tgt) {
    const std::int64_t n = s[0] * s[1];
    const std::vector<double> part(all.begin() + row * r.embed_dim, all.begin() + (row + n) * r.embed_dim);
    const auto y = reference_resampler(weights, r, part, s);
    expected.insert(expected.end(), y.begin(), y.end());
    row += n;
  }
  const auto got = to_doubles(resampler.forward(vision, tgt));
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_LE(max_diff(got, expected), 1e-5 * max_abs(expected));
}

TEST(MiniCpmVEncoder, BadWeights) {
  const Tiny& t = tiny();
  HostWeights weights;
  for (const auto& [name, w] : t.weights) weights.emplace(name, to<Host>(w));
  weights.at("vpm.encoder.layers.1.self_attn.k_proj.weight") = random_tensor<float>(Shape{32, 31});
  const TinyCheckpoint bad("bad_shape", weights);
  const auto checkpoint = io::Checkpoint::open(bad.dir());
  expect_error<FormatError>([&] { (void)mv::NavitVision<Cpu<0>, float>::load(checkpoint, "vpm.", t.config); },
                            {"vpm.encoder.layers.1.self_attn.k_proj.weight", bad.dir().string(), "[32, 31]",
                             "[32, 32]"});
  weights.at("vpm.encoder.layers.1.self_attn.k_proj.weight") =
      to<Host>(t.weights.at("vpm.encoder.layers.1.self_attn.k_proj.weight"));
  weights.at("resampler.attn.in_proj_weight") = random_tensor<float>(Shape{64 * 3, 32});
  const TinyCheckpoint bad2("bad_resampler", weights);
  const auto checkpoint2 = io::Checkpoint::open(bad2.dir());
  expect_error<FormatError>(
      [&] { (void)mv::Resampler<Cpu<0>, float>::load(checkpoint2, "resampler.", t.resampler); },
      {"resampler.attn.in_proj_weight", "[192, 32]", "[192, 64]"});
  weights.at("resampler.attn.in_proj_weight") = to<Host>(t.weights.at("resampler.attn.in_proj_weight"));
  weights.erase("resampler.ln_post.bias");
  const TinyCheckpoint missing("missing", weights);
  expect_error<ValueError>(
      [&] { (void)mv::Resampler<Cpu<0>, float>::load(io::Checkpoint::open(missing.dir()), "resampler.", t.resampler); },
      {"resampler.ln_post.bias", missing.dir().string()});
  // Configs: a resampler head count that does not divide, a kv_dim that is
  // not the tower's width.
  auto r = t.resampler;
  r.num_heads = 3;
  expect_error<ValueError>([&] { (void)mv::Resampler<Cpu<0>, float>::load(checkpoint, "resampler.", r); },
                           {"num_heads 3", "embed_dim 64"});
  r = t.resampler;
  r.kv_dim = 48;
  expect_error<ValueError>(
      [&] { (void)mv::VisionEncoder<Cpu<0>, float>::load(checkpoint, t.config, r); }, {"kv_dim 48", "hidden_size 32"});
}

TEST(MiniCpmVEncoder, BadInputs) {
  const Tiny& t = tiny();
  const TinyCheckpoint ckpt("bad_inputs", t.weights);
  const auto encoder = mv::VisionEncoder<Cpu<0>, float>::load(io::Checkpoint::open(ckpt.dir()), t.config, t.resampler);
  const auto narrow = random_tensor<float>(Shape{224, 500});
  expect_shape_error([&] { (void)encoder.forward(narrow, t.tgt_sizes); }, {"patches [224, 500]", "588"});
  const auto short_rows = random_tensor<float>(Shape{200, 588});
  expect_shape_error([&] { (void)encoder.forward(short_rows, t.tgt_sizes); },
                     {"patches [200, 588]", "200 rows", "3 tgt_sizes", "224 patches"});
  const std::vector<TgtSize> zero = {{0, 4}};
  expect_error<ValueError>([&] { (void)encoder.vpm.forward(short_rows, zero); }, {"tgt_sizes[0] = (0, 4)"});
  expect_error<ValueError>([&] { (void)encoder.vpm.forward(short_rows, {}); }, {"no tgt_sizes"});
  const auto vision = random_tensor<float>(Shape{224, 31});
  expect_shape_error([&] { (void)encoder.resampler.forward(vision, t.tgt_sizes); }, {"vision_out [224, 31]", "[224, 32]"});
}

// ---- the planner's cost against the ledger ----------------------------------------

// Runs the encoder as the model does (the float patch rows copied to the
// encoder's device, cast to T, forward) and compares the ledger's peak above
// what was live before with encoder_cost.
template <FloatType T>
void check_cost(const std::string& tag, const mv::VisionConfig& vision, const mv::ResamplerConfig& resampler,
                const std::vector<TgtSize>& tgt) {
  const TinyCheckpoint ckpt("cost_" + tag, random_weights(vision, resampler));
  const auto encoder = mv::VisionEncoder<Cpu<0>, T>::load(io::Checkpoint::open(ckpt.dir()), vision, resampler);
  std::int64_t patches = 0;
  for (const auto& [h, w] : tgt) patches += h * w;
  const auto rows = random_tensor<float>(Shape{patches, vision.patch_dim()});  // the model's host rows
  auto& ledger = tessera::ledger<Cpu<0>>();
  std::uint64_t measured = 0;
  {
    const std::uint64_t before = ledger.live();
    ledger.reset_peak();
    Tensor<Cpu<0>, float> on_device = to<Cpu<0>>(rows.view());
    Tensor<Cpu<0>, T> out;
    if constexpr (std::is_same_v<T, float>) out = encoder.forward(on_device, tgt);
    else out = encoder.forward(ops::cast<T>(on_device), tgt);
    measured = ledger.peak() - before;
  }
  const std::uint64_t predicted =
      mv::encoder_cost(vision, resampler, static_cast<std::uint64_t>(patches), tgt.size(), sizeof(T));
  std::cout << "[ encoder_cost " << tag << " ] measured peak " << measured << " B, predicted " << predicted
            << " B (" << static_cast<double>(predicted) / static_cast<double>(measured) << "x)\n";
  EXPECT_LE(measured, predicted);
  EXPECT_GE(static_cast<double>(measured), 0.6 * static_cast<double>(predicted)) << "the cost is far too loose";
}

// The published proportions, scaled down: patch_dim < hidden < intermediate,
// embed_dim ~ 3 hidden, slices of ~100 patches against 8 queries.
std::pair<mv::VisionConfig, mv::ResamplerConfig> published_like() {
  mv::VisionConfig v;
  v.hidden_size = 64;
  v.intermediate_size = 240;
  v.num_hidden_layers = 2;
  v.num_attention_heads = 4;
  v.image_size = 280;
  v.patch_size = 4;  // 70 buckets per side, patch_dim 48
  return {v, mv::ResamplerConfig{8, 192, 3, 64}};
}

TEST(MiniCpmVEncoderCost, CoversTheLedgerPeak) {
  const Tiny& t = tiny();
  check_cost<float>("tiny_f32", t.config, t.resampler, t.tgt_sizes);
  check_cost<bf16>("tiny_bf16", t.config, t.resampler, t.tgt_sizes);
  const auto [v, r] = published_like();
  const std::vector<TgtSize> slices = {{10, 12}, {8, 8}, {6, 9}, {11, 10}};
  check_cost<float>("published_like_f32", v, r, slices);
  check_cost<bf16>("published_like_bf16", v, r, slices);
  check_cost<bf16>("published_like_one_slice_bf16", v, r, {{12, 12}});
}


// ---- golden: the oracle's outputs on the MiniCPM-V fixture ---------------------------
//
// tests/fixtures/minicpm_v/ (tools/fixtures/make_minicpm_v_fixtures.py): model/ (the
// checkpoint in the published layout, bf16 shards), slices/NAME.k.png (the slicer's
// uint8 slices; pixel values (png/255 - 0.5)/0.5 in float32, channel-first),
// reference.safetensors: buckets.n{N} (N = 1..120), buckets.boundaries,
// sincos.{h_index,w_index,values} (the table grown to 70 x 119),
// vision.CASE.position_ids.{k}, vision.CASE.embeddings.0, vision.CASE.vpm.{k}
// [L_k, hidden] and vision.CASE.resampler [n, Q, D] for CASE one_image (image
// "wide", 1000x600: 3 slices) and strip (1400x100: one 8 x 119 slice).

std::filesystem::path golden_dir() {
  return tessera::testing::fixtures_dir() / "minicpm_v";
}

bool golden_present() { return std::filesystem::exists(golden_dir() / "reference.safetensors"); }

#define SKIP_WITHOUT_GOLDEN() \
  if (!golden_present()) GTEST_SKIP() << (golden_dir() / "reference.safetensors").string() << " does not exist yet"

std::vector<std::int64_t> ints(const Tensor<Host, std::int64_t>& t) { return {t.span().begin(), t.span().end()}; }

TEST(MiniCpmVGolden, BucketsOfEveryStoredN) {
  SKIP_WITHOUT_GOLDEN();
  const auto ref = io::SafetensorsFile::open(golden_dir() / "reference.safetensors");
  int checked = 0;
  for (std::int64_t n = 1; n <= 1000; ++n) {
    const std::string name = tessera::detail::concat("buckets.n", n);
    if (ref.find(name) == nullptr) continue;
    EXPECT_EQ(mv::position_buckets(n, 70), ints(ref.load<Host, std::int64_t>(name))) << "n = " << n;
    ++checked;
  }
  EXPECT_GE(checked, 70);
  const auto b = ref.load<Host, float>("buckets.boundaries");
  const auto mine = mv::vision_detail::torch_arange_f32(1.0 / 70, 1.0, 1.0 / 70);
  ASSERT_EQ(static_cast<std::int64_t>(mine.size()), b.numel());
  for (std::size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(mine[i], b.span()[i]) << i;  // bit for bit
}

TEST(MiniCpmVGolden, SinCosTableSample) {
  SKIP_WITHOUT_GOLDEN();
  const auto ref = io::SafetensorsFile::open(golden_dir() / "reference.safetensors");
  const auto h = ints(ref.load<Host, std::int64_t>("sincos.h_index"));
  const auto w = ints(ref.load<Host, std::int64_t>("sincos.w_index"));
  const auto values = ref.load<Host, float>("sincos.values");
  const std::int64_t dim = values.dim(2);
  const auto table = mv::sincos_2d(dim, *std::max_element(h.begin(), h.end()) + 1,
                                   *std::max_element(w.begin(), w.end()) + 1);
  const std::int64_t cols = *std::max_element(w.begin(), w.end()) + 1;
  double worst = 0;
  for (std::size_t i = 0; i < h.size(); ++i) {
    for (std::size_t j = 0; j < w.size(); ++j) {
      for (std::int64_t c = 0; c < dim; ++c) {
        const double got = table.at(h[i] * cols + w[j], c);
        worst = std::max(worst, std::abs(got - static_cast<double>(values.at(static_cast<std::int64_t>(i),
                                                                               static_cast<std::int64_t>(j), c))));
      }
    }
  }
  std::cout << "[ golden sin-cos ] max |error| " << worst << " over positions up to " << cols - 1 << "\n";
  // The angles are numpy's float32 products; numpy's float32 power, sin and
  // cos are SIMD approximations (a few ulp, and the angle's ulp is 7.6e-6 at
  // 118), tessera's are correctly rounded: measured 3.8e-6.
  EXPECT_LE(worst, 1e-5);
}

struct GoldenCase {
  std::string name, image;
};

// The fixture's config: the tower's and the resampler's (as MiniCPMV.__init__).
std::pair<mv::VisionConfig, mv::ResamplerConfig> golden_configs() {
  const auto path = golden_dir() / "model" / "config.json";
  const auto root = nlohmann::json::parse(std::ifstream(path));
  const auto vision = mv::VisionConfig::from_json(root.at("vision_config"), path.string());
  const std::int64_t hidden = root.at("hidden_size").get<std::int64_t>();
  return {vision, mv::ResamplerConfig{root.at("query_num").get<std::int64_t>(), hidden, hidden / 128,
                                      vision.hidden_size}};
}

void check_golden_case(const GoldenCase& c) {
  const auto dir = golden_dir();
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  const auto [vision, resampler] = golden_configs();
  const auto encoder = mv::VisionEncoder<Cpu<0>, float>::load(io::Checkpoint::open(dir / "model"), vision, resampler);
  std::vector<TgtSize> tgt;
  std::vector<Tensor<Host, float>> rows;
  for (int k = 0;; ++k) {
    const auto png = dir / "slices" / tessera::detail::concat(c.image, ".", k, ".png");
    if (!std::filesystem::exists(png)) break;
    const auto chw = io::to_chw_normalized(io::load_rgb_image(png), {0.5, 0.5, 0.5}, {0.5, 0.5, 0.5});
    tgt.push_back({chw.dim(1) / vision.patch_size, chw.dim(2) / vision.patch_size});
    rows.push_back(mv::patch_rows(chw.view(), vision.patch_size));
    // The stored top-left patch of each slice: the same pixel values.
    const auto patch = ref.load<Host, float>(tessera::detail::concat("proc.", c.image, ".first_patch"));
    ASSERT_GT(patch.dim(0), k);
    for (std::int64_t j = 0; j < rows.back().dim(1); ++j) {
      ASSERT_EQ(rows.back().at(0, j), patch.span()[static_cast<std::size_t>(k * rows.back().dim(1) + j)]) << j;
    }
  }
  ASSERT_FALSE(tgt.empty()) << "no slices/" << c.image << ".k.png";
  for (std::size_t k = 0; k < tgt.size(); ++k) {
    const std::string name = tessera::detail::concat("vision.", c.name, ".position_ids.", k);
    EXPECT_EQ(mv::position_ids(tgt[k], 70), ints(ref.load<Host, std::int64_t>(name))) << name;
  }
  const Tensor<Host, float> patches = rows.size() == 1 ? std::move(rows[0]) : ops::concat(rows, 0);
  const auto v = encoder.vpm.forward(patches, tgt);
  std::int64_t row = 0;
  for (std::size_t k = 0; k < tgt.size(); ++k) {
    const auto expected = to_doubles(ref.load<Host, float>(tessera::detail::concat("vision.", c.name, ".vpm.", k)));
    const std::int64_t n = tgt[k][0] * tgt[k][1];
    const auto got = to_doubles(v.view().slice(0, row, row + n));
    row += n;
    ASSERT_EQ(got.size(), expected.size());
    const double err = max_diff(got, expected), scale = max_abs(expected);
    std::cout << "[ golden " << c.name << " vpm." << k << " (" << tgt[k][0] << " x " << tgt[k][1] << ") ] max |error| "
              << err << " = " << err / scale << " of max |reference| " << scale << "\n";
    EXPECT_LE(err, 1e-4 * scale);
  }
  // The resampler on the stored vpm outputs (so that its check is its own), and
  // on ours.
  std::vector<Tensor<Host, float>> stored;
  for (std::size_t k = 0; k < tgt.size(); ++k) {
    stored.push_back(ref.load<Host, float>(tessera::detail::concat("vision.", c.name, ".vpm.", k)));
  }
  const Tensor<Host, float> stored_v = stored.size() == 1 ? std::move(stored[0]) : ops::concat(stored, 0);
  const auto expected = to_doubles(ref.load<Host, float>(tessera::detail::concat("vision.", c.name, ".resampler")));
  const double scale = max_abs(expected);
  for (const auto* input : {&stored_v, &v}) {
    const auto got = to_doubles(encoder.resampler.forward(*input, tgt));
    ASSERT_EQ(got.size(), expected.size());
    const double err = max_diff(got, expected);
    std::cout << "[ golden " << c.name << " resampler on " << (input == &v ? "tessera's" : "the stored")
              << " vpm output ] max |error| " << err << " = " << err / scale << " of max |reference| " << scale
              << "\n";
    EXPECT_LE(err, 1e-4 * scale);
  }
}

TEST(MiniCpmVGolden, OneImageThreeSlices) {
  SKIP_WITHOUT_GOLDEN();
  check_golden_case({"one_image", "wide"});
}

TEST(MiniCpmVGolden, StripWiderThanTheTable) {
  SKIP_WITHOUT_GOLDEN();
  check_golden_case({"strip", "strip"});
}

}  // namespace
}  // namespace tessera::testing
