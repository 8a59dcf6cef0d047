// tessera/models/minicpm_v_vision.hpp — the MiniCPM-V 2.6 vision encoder: the
// SigLIP-400M "NaViT" tower (vpm.*) and the resampler (resampler.*), as the
// remote code (openbmb/MiniCPM-V-2_6: modeling_navit_siglip.py, resampler.py)
// and transformers' Idefics2VisionTransformer (the same math and parameter
// names) compute them. Per slice b with tgt_size (h_b, w_b), L_b = h_b * w_b:
//
//   NaViT (vpm.):
//   x = patches W_patch^T + b_patch        (Conv2d with stride = kernel: one GEMM
//                                           on [L, C*p*p] rows, columns (c, ky, kx))
//   x = x + position_embedding[pos_ids]    pos_ids = bucket_h * (image_size/p) + bucket_w,
//                                           raster order; buckets as torch computes them
//                                           in float32 (position_buckets, below)
//   for each layer l:
//     h = LayerNorm1(x);  q | k | v = h Wq^T + bq | h Wk^T + bk | h Wv^T + bv
//     a = softmax(q k^T * head_dim^-0.5) v, bidirectional, within each slice only
//     x = x + a Wo^T + bo
//     x = x + fc2(gelu_tanh(fc1(LayerNorm2(x))))
//   v = post_layernorm(x)                                            [sum L_b, hidden]
//
//   Resampler (resampler.), D = embed_dim, heads of D / num_heads:
//   x  = ln_kv(v_b kv_proj^T)              (no bias; nn.Identity when kv_dim == D)
//   pe = sincos_2d(D, h_b, w_b)            [L_b, D], cast to the activation dtype
//   q  = ln_q(query)                       [num_queries, D], the same for every slice
//   Q = q Wq^T + bq;  K = (x + pe) Wk^T + bk;  V = x Wv^T + bv   (in_proj rows [Wq; Wk; Wv])
//   o  = softmax(Q K^T / sqrt(D / heads)) V per head   (num_queries rows against L_b keys)
//   y  = ln_post(o Wout^T + bout) @ proj   (proj [D, D] right-multiplied, not a Linear)
//                                                                   [n * num_queries, D]
//
// Slices of different sizes. The reference pads every slice to the longest
// and masks the padded keys (an additive -inf on keys only; padded query rows
// are computed and dropped). Here the slices are packed back to back and
// attend through variable-length attention (cu_seqlens), which gives the same
// valid rows with no padding: ops::attention with cu_seqlens_q = cu_seqlens_k
// = the slice offsets in the tower, and in the resampler cu_seqlens_q = the
// multiples of num_queries against cu_seqlens_k = the slice offsets.
//
// Position buckets. The reference computes, in float32 torch on the CPU,
//   boundaries = torch.arange(1/70, 1.0, 1/70)
//   frac       = torch.arange(0, 1 - 1e-6, 1 / n)   (1/n a float32 tensor: n is
//                                                    the 0-d int sum of the mask)
//   bucket     = torch.bucketize(frac, boundaries, right=True)
// The closed form floor(i * 70 / n) is wrong for 42 n in 1..259 (n = 25, i = 5
// gives 13, not 14). position_buckets restates torch's CPU arange kernel:
// each element is float(start + step * i) in double, except in full blocks of
// 16 elements, written as two 8-float vectors whose element k is
// float(double(float(start + step * base)) + k * step) (Vectorized<float>::
// arange; 8 floats is the vector of torch's AVX2 and default CPU kernels, the
// one the oracle's torch used). Under an AVX-512 dispatch torch's own answer
// differs for some n (58 and 86 among n <= 100); the vpm fixtures' bucket ids
// hold tessera to the 8-float one.
//
// The 2-D sin-cos table (get_2d_sincos_pos_embed, numpy float32). For a slice
// position (h, w) the first D/2 channels encode the COLUMN w and the last D/2
// the ROW h (the grid is meshgrid(arange(W), arange(H)), 'xy'), each as
//   [sin(p * omega_k) | cos(p * omega_k)],  k = 0 .. D/4 - 1,
//   omega_k = 1 / 10000 ** (float32(k) / float32(D/4))    (float32 throughout)
// (the angle p * omega_k is numpy's float32 product, reproduced exactly; sin
// and cos are then correctly rounded, where numpy's float32 SIMD sin/cos are
// a few ulp off: 3.8e-6 at most on the oracle's sample up to position 118),
// so an entry depends only on (h, w): the reference grows its cached 70 x 70
// table for slices wider or taller than 70 without changing old entries, and
// tessera builds the one-axis table for the positions a batch needs and
// gathers both halves from it.
//
// Precision. The tower's attention softmax is in float32 (the reference
// upcasts too). The reference resampler's nn.MultiheadAttention runs in the
// activation dtype: in bf16 its scores are rounded to bf16 before the softmax
// and the probabilities to bf16 before the product with V. ops::attention
// instead keeps scores, softmax and accumulation in float and rounds the
// output once, so a bf16 tessera resampler is closer to the float32 result
// than the bf16 reference is; in float32 the two agree to rounding (the
// reference pre-scales q, tessera scales the scores).
//
// Index tensors (position ids, cu_seqlens, the sin-cos gather ids) are
// computed on the host from tgt_sizes and moved to D with to<D>; everything
// else is ops on D, so the same code runs on Cpu<N> and Cuda<N>.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../nn/linear.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/embedding.hpp"
#include "../ops/matmul.hpp"
#include "../ops/norm.hpp"
#include "../ops/shape.hpp"

namespace tessera::models::minicpm_v {

// One slice's size in patches: (rows, columns), as the processor's tgt_sizes.
// The one definition (minicpm_v_processor.hpp uses this one).
#ifndef TESSERA_MINICPM_V_TGT_SIZE_DEFINED
#define TESSERA_MINICPM_V_TGT_SIZE_DEFINED
using TgtSize = std::array<std::int64_t, 2>;
#endif

// "vision_config" of config.json (a SiglipVisionConfig). Unknown keys are
// ignored, as transformers does.
struct VisionConfig {
  std::int64_t hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0, num_attention_heads = 0,
               image_size = 980, patch_size = 14, num_channels = 3;
  double layer_norm_eps = 1e-6;
  std::string hidden_act = "gelu_pytorch_tanh";

  std::int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Buckets per side of the position table: image_size // patch_size (70).
  std::int64_t per_side() const { return image_size / patch_size; }
  // Columns of a patch row: num_channels * patch_size^2.
  std::int64_t patch_dim() const { return num_channels * patch_size * patch_size; }

  // Parses the "vision_config" object; `file` names the file in messages.
  // hidden_size, intermediate_size, num_hidden_layers and num_attention_heads
  // are required (the published config sets every key this reads); the rest
  // default to the published values. Missing or bad values are a FormatError
  // naming the file and "vision_config.<key>".
  static VisionConfig from_json(const nlohmann::json& vision_config, const std::string& file);
};

// The resampler's sizes as MiniCPMV.__init__ builds it: Resampler(num_queries=
// query_num, embed_dim=hidden_size, num_heads=hidden_size // 128,
// kv_dim=vision_config.hidden_size), LayerNorms with eps 1e-6.
struct ResamplerConfig {
  std::int64_t num_queries = 0, embed_dim = 0, num_heads = 0, kv_dim = 0;
  double eps = 1e-6;

  std::int64_t head_dim() const { return embed_dim / num_heads; }
};

namespace vision_detail {

inline constexpr std::string_view kTower = "MiniCPM-V vision tower (vpm)";
inline constexpr std::string_view kResampler = "MiniCPM-V resampler";
// Bounds far above any published model that keep products of sizes from
// overflowing on a corrupt config.
inline constexpr std::int64_t kMaxWidth = std::int64_t{1} << 20;
inline constexpr std::int64_t kMaxSide = std::int64_t{1} << 14;
// Vector width (floats) of torch's CPU arange kernel that position_buckets
// restates (AVX2 and the default build: 256-bit vectors).
inline constexpr std::int64_t kTorchFloatLanes = 8;

// Throws unless the relations the tower relies on hold; `fail(key, message)`
// must throw (FormatError from from_json, ValueError from a hand-built config).
template <class Fail>
void check_vision_config(const VisionConfig& c, Fail&& fail) {
  using tessera::detail::concat;
  const auto positive = [&](std::string_view key, std::int64_t v, std::int64_t max) {
    if (v <= 0) fail(key, concat("must be a positive integer, but it is ", v));
    if (v > max) fail(key, concat("is ", v, ", above tessera's limit of ", max, " (a corrupt config?)"));
  };
  positive("hidden_size", c.hidden_size, kMaxWidth);
  positive("intermediate_size", c.intermediate_size, kMaxWidth);
  positive("num_hidden_layers", c.num_hidden_layers, io::kMaxConfigLayers);
  positive("num_attention_heads", c.num_attention_heads, kMaxWidth);
  positive("image_size", c.image_size, kMaxSide);
  positive("patch_size", c.patch_size, kMaxSide);
  positive("num_channels", c.num_channels, 64);
  if (c.hidden_size % c.num_attention_heads != 0) {
    fail("num_attention_heads", concat(c.num_attention_heads, " does not divide hidden_size ", c.hidden_size,
                                       " (head_dim = hidden_size / num_attention_heads)"));
  }
  if (c.image_size < c.patch_size) {
    fail("image_size", concat(c.image_size, " is smaller than patch_size ", c.patch_size,
                              " (the position table has (image_size // patch_size)^2 rows)"));
  }
  if (c.hidden_act != "gelu_pytorch_tanh") {
    fail("hidden_act", concat("is \"", c.hidden_act, "\"; the SigLIP MLP supports \"gelu_pytorch_tanh\""));
  }
  if (!(c.layer_norm_eps > 0.0) || !std::isfinite(c.layer_norm_eps)) {
    fail("layer_norm_eps", concat("must be a positive number, but it is ", c.layer_norm_eps));
  }
}

inline void check_resampler_config(const ResamplerConfig& c) {
  using tessera::detail::concat;
  const auto positive = [&](std::string_view key, std::int64_t v) {
    if (v <= 0 || v > kMaxWidth) {
      throw ValueError(concat(kResampler, ": ", key, " must be a positive integer up to ", kMaxWidth,
                              ", but it is ", v));
    }
  };
  positive("num_queries", c.num_queries);
  positive("embed_dim", c.embed_dim);
  positive("num_heads", c.num_heads);
  positive("kv_dim", c.kv_dim);
  if (c.embed_dim % c.num_heads != 0) {
    throw ValueError(concat(kResampler, ": num_heads ", c.num_heads, " does not divide embed_dim ", c.embed_dim));
  }
  if (c.embed_dim % 4 != 0) {
    throw ValueError(concat(kResampler, ": embed_dim ", c.embed_dim,
                            " is not a multiple of 4 (the 2-D sin-cos table gives each axis sin and cos of embed_dim / 4 "
                            "frequencies)"));
  }
  if (!(c.eps > 0.0) || !std::isfinite(c.eps)) {
    throw ValueError(concat(kResampler, ": eps must be a positive number, but it is ", c.eps));
  }
}

// Checks tgt_sizes and returns the number of patches they hold. ValueError
// naming the slice.
inline std::int64_t check_tgt_sizes(std::span<const TgtSize> tgt_sizes, std::string_view where) {
  using tessera::detail::concat;
  if (tgt_sizes.empty()) throw ValueError(concat(where, ": no tgt_sizes (one (rows, cols) per slice is needed)"));
  const std::int64_t limit = std::numeric_limits<std::int32_t>::max();
  std::int64_t total = 0;
  for (std::size_t i = 0; i < tgt_sizes.size(); ++i) {
    const auto [h, w] = tgt_sizes[i];
    if (h <= 0 || w <= 0 || h > kMaxSide || w > kMaxSide) {
      throw ValueError(concat(where, ": tgt_sizes[", i, "] = (", h, ", ", w, ") must be positive (and at most ",
                              kMaxSide, " patches per side)"));
    }
    if (total > limit - h * w) {
      throw ValueError(concat(where, ": tgt_sizes hold more than ", limit,
                              " patches, beyond the int32 cumulative sequence lengths"));
    }
    total += h * w;
  }
  return total;
}

// Cumulative lengths [0, l0, l0+l1, ...] as an int32 host tensor.
inline Tensor<Host, std::int32_t> cu_seqlens(std::span<const std::int64_t> lengths) {
  Tensor<Host, std::int32_t> cu(Shape{static_cast<std::int64_t>(lengths.size()) + 1});
  std::int64_t acc = 0;
  cu.span()[0] = 0;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    acc += lengths[i];
    cu.span()[i + 1] = static_cast<std::int32_t>(acc);
  }
  return cu;
}

template <class T>
Tensor<Host, T> host_tensor(const std::vector<T>& values) {
  return Tensor<Host, T>::from(std::span<const T>(values), Shape{static_cast<std::int64_t>(values.size())});
}

// torch.arange(start, end, step) in float32 on the CPU (see the top of the
// file): the length ceil((end - start) / step) in double; full blocks of two
// vectors use Vectorized<float>::arange from a float base, the tail the
// scalar float(start + step * i).
inline std::vector<float> torch_arange_f32(double start, double end, double step) {
  const auto length = static_cast<std::int64_t>(std::ceil((end - start) / step));
  std::vector<float> out(static_cast<std::size_t>(std::max<std::int64_t>(length, 0)));
  const std::int64_t lanes = kTorchFloatLanes, n = static_cast<std::int64_t>(out.size());
  std::int64_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    for (std::int64_t base = i; base < i + 2 * lanes; base += lanes) {
      const auto first = static_cast<float>(start + step * static_cast<double>(base));
      for (std::int64_t k = 0; k < lanes; ++k) {
        out[static_cast<std::size_t>(base + k)] =
            static_cast<float>(static_cast<double>(first) + static_cast<double>(k) * step);
      }
    }
  }
  for (; i < n; ++i) out[static_cast<std::size_t>(i)] = static_cast<float>(start + step * static_cast<double>(i));
  return out;
}

// One axis of the sin-cos table: [positions, D/2] floats, row p =
// [sin(p * omega_k) | cos(p * omega_k)], k < D/4, in numpy's float32 steps.
inline std::vector<float> sincos_axis(std::int64_t embed_dim, std::int64_t positions) {
  const std::int64_t quarter = embed_dim / 4, half = embed_dim / 2;
  std::vector<float> omega(static_cast<std::size_t>(quarter));
  const auto denom = static_cast<float>(quarter);  // omega /= embed_dim / 2. (of the 1-D call's D/2)
  for (std::int64_t k = 0; k < quarter; ++k) {
    const float e = static_cast<float>(k) / denom;
    omega[static_cast<std::size_t>(k)] = 1.0f / std::pow(10000.0f, e);
  }
  std::vector<float> table(static_cast<std::size_t>(positions * half));
  for (std::int64_t p = 0; p < positions; ++p) {
    float* row = table.data() + p * half;
    for (std::int64_t k = 0; k < quarter; ++k) {
      // einsum('hw,d->hwd'): a float32 product, then float32 sin and cos.
      const float angle = static_cast<float>(p) * omega[static_cast<std::size_t>(k)];
      row[k] = static_cast<float>(std::sin(static_cast<double>(angle)));
      row[quarter + k] = static_cast<float>(std::cos(static_cast<double>(angle)));
    }
  }
  return table;
}

}  // namespace vision_detail

// The bucket of each of the n fractional positions 0, 1/n, ... along one axis
// of a slice n patches long: torch.bucketize(torch.arange(0, 1 - 1e-6, 1/n),
// torch.arange(1/per_side, 1.0, 1/per_side), right=True) in float32, exactly
// as the reference computes it (see the top of the file). [n] values in
// [0, per_side).
inline std::vector<std::int64_t> position_buckets(std::int64_t n, std::int64_t per_side) {
  using tessera::detail::concat;
  if (n <= 0 || n > vision_detail::kMaxSide || per_side <= 0 || per_side > vision_detail::kMaxSide) {
    throw ValueError(concat("position_buckets: n ", n, " and per_side ", per_side, " must be in [1, ",
                            vision_detail::kMaxSide, "]"));
  }
  const double side_step = 1.0 / static_cast<double>(per_side);
  const std::vector<float> boundaries = vision_detail::torch_arange_f32(side_step, 1.0, side_step);
  // 1 / n: a float32 tensor (n is the 0-d integer sum of the patch mask).
  const double step = static_cast<double>(1.0f / static_cast<float>(n));
  const std::vector<float> frac = vision_detail::torch_arange_f32(0.0, 1.0 - 1e-6, step);
  if (static_cast<std::int64_t>(frac.size()) != n) {
    throw ValueError(concat("position_buckets: torch.arange(0, 1 - 1e-6, 1/", n, ") has ", frac.size(),
                            " elements, not ", n));
  }
  std::vector<std::int64_t> out(frac.size());
  for (std::size_t i = 0; i < frac.size(); ++i) {
    // right=True: the number of boundaries <= frac[i].
    out[i] = std::upper_bound(boundaries.begin(), boundaries.end(), frac[i]) - boundaries.begin();
  }
  return out;
}

// Position ids of one slice of t = (rows, cols) patches in raster order:
// bucket_row * per_side + bucket_col.
inline std::vector<std::int64_t> position_ids(TgtSize t, std::int64_t per_side) {
  const std::vector<std::int64_t> rows = position_buckets(t[0], per_side);
  const std::vector<std::int64_t> cols = position_buckets(t[1], per_side);
  std::vector<std::int64_t> out;
  out.reserve(rows.size() * cols.size());
  for (const std::int64_t r : rows) {
    for (const std::int64_t c : cols) out.push_back(r * per_side + c);
  }
  return out;
}

// The resampler's 2-D sin-cos table for a rows x cols grid: [rows * cols,
// embed_dim] in raster order (h, w), entry (h, w) = [axis(w) | axis(h)] with
// axis(p) = [sin(p * omega) | cos(p * omega)] (see the top of the file).
inline Tensor<Host, float> sincos_2d(std::int64_t embed_dim, std::int64_t rows, std::int64_t cols) {
  using tessera::detail::concat;
  if (embed_dim <= 0 || embed_dim % 4 != 0 || embed_dim > vision_detail::kMaxWidth) {
    throw ValueError(concat("sincos_2d: embed_dim ", embed_dim, " must be a positive multiple of 4"));
  }
  if (rows <= 0 || cols <= 0 || rows > vision_detail::kMaxSide || cols > vision_detail::kMaxSide) {
    throw ValueError(concat("sincos_2d: the grid ", rows, " x ", cols, " must be positive (and at most ",
                            vision_detail::kMaxSide, " per side)"));
  }
  const std::int64_t half = embed_dim / 2;
  const std::vector<float> axis = vision_detail::sincos_axis(embed_dim, std::max(rows, cols));
  Tensor<Host, float> out(Shape{rows * cols, embed_dim});
  float* dst = out.raw();
  for (std::int64_t h = 0; h < rows; ++h) {
    for (std::int64_t w = 0; w < cols; ++w, dst += embed_dim) {
      std::copy_n(axis.data() + w * half, half, dst);
      std::copy_n(axis.data() + h * half, half, dst + half);
    }
  }
  return out;
}

// A normalized slice [C, H, W] (H and W multiples of `patch`) as patch rows
// [(H/patch) * (W/patch), C * patch^2]: patches in raster order, each
// flattened (c, ky, kx) like the Conv2d weight, so that the patch embedding
// is rows @ weight.reshape(hidden, -1)^T. (The processor's strip layout
// [C, patch, L * patch] holds the same patches side by side.)
inline void check_slice_for_patches(const TensorView<Host, const float>& chw, std::int64_t patch) {
  if (chw.rank() != 3 || patch <= 0 || chw.dim(1) % patch != 0 || chw.dim(2) % patch != 0 || chw.dim(1) == 0 ||
      chw.dim(2) == 0) {
    throw ShapeError(tessera::detail::concat("patch_rows: the slice ", chw.shape().to_string(),
                                             " must be [C, H, W] with H and W positive multiples of the patch size ",
                                             patch));
  }
}

// The patch rows of one slice written into `out`, [(H/patch) * (W/patch),
// C * patch^2] (a model fills one batch tensor with every slice's rows
// without a second copy of them).
inline void patch_rows_into(const TensorView<Host, const float>& chw, std::int64_t patch,
                            const TensorView<Host, float>& out) {
  check_slice_for_patches(chw, patch);
  const std::int64_t channels = chw.dim(0), ph = chw.dim(1) / patch, pw = chw.dim(2) / patch;
  if (out.rank() != 2 || out.dim(0) != ph * pw || out.dim(1) != channels * patch * patch || !out.is_contiguous()) {
    throw ShapeError(tessera::detail::concat("patch_rows_into: the output ", out.shape().to_string(),
                                             " must be a contiguous [", ph * pw, ", ", channels * patch * patch,
                                             "] for the slice ", chw.shape().to_string()));
  }
  float* dst = out.raw();
  for (std::int64_t by = 0; by < ph; ++by) {
    for (std::int64_t bx = 0; bx < pw; ++bx) {
      for (std::int64_t c = 0; c < channels; ++c) {
        for (std::int64_t ky = 0; ky < patch; ++ky) {
          for (std::int64_t kx = 0; kx < patch; ++kx) *dst++ = chw.at(c, by * patch + ky, bx * patch + kx);
        }
      }
    }
  }
}

inline Tensor<Host, float> patch_rows(TensorView<Host, const float> chw, std::int64_t patch) {
  check_slice_for_patches(chw, patch);
  const std::int64_t channels = chw.dim(0), ph = chw.dim(1) / patch, pw = chw.dim(2) / patch;
  Tensor<Host, float> out(Shape{ph * pw, channels * patch * patch});
  patch_rows_into(chw, patch, out.view());
  return out;
}

inline VisionConfig VisionConfig::from_json(const nlohmann::json& vision_config, const std::string& file) {
  const io::detail::JsonFields f(vision_config, file, "vision_config.");
  const auto required = [&](std::string_view key) { return f.required_integer(key, "the vision tower needs it"); };
  VisionConfig c;
  c.hidden_size = required("hidden_size");
  c.intermediate_size = required("intermediate_size");
  c.num_hidden_layers = required("num_hidden_layers");
  c.num_attention_heads = required("num_attention_heads");
  c.image_size = f.integer("image_size", c.image_size);
  c.patch_size = f.integer("patch_size", c.patch_size);
  c.num_channels = f.integer("num_channels", c.num_channels);
  c.layer_norm_eps = f.number("layer_norm_eps", c.layer_norm_eps);
  c.hidden_act = f.string("hidden_act", c.hidden_act);
  vision_detail::check_vision_config(c, [&](std::string_view key, const std::string& message) {
    throw f.error(key, message);
  });
  return c;
}

namespace vision_detail {

// Loads `name` as Tensor<D, T> after checking its shape: FormatError naming
// the module, the checkpoint, the tensor and both shapes.
template <Device D, FloatType T>
Tensor<D, T> load_checked(const io::Checkpoint& checkpoint, std::string_view module, const std::string& name,
                          const Shape& expected) {
  const Shape actual = checkpoint.info(name).shape;
  if (!(actual == expected)) {
    throw FormatError(tessera::detail::concat(module, ": checkpoint '", checkpoint.directory().string(),
                                              "': tensor '", name, "' has shape ", actual.to_string(),
                                              " but the config expects ", expected.to_string()));
  }
  return checkpoint.load<D, T>(name);
}

// Rows [begin, end) of a checked 2-D or 1-D tensor (the packed in_proj).
template <Device D, FloatType T>
Tensor<D, T> load_rows(const io::Checkpoint& checkpoint, std::string_view module, const std::string& name,
                       const Shape& expected, std::int64_t begin, std::int64_t end) {
  const Shape actual = checkpoint.info(name).shape;
  if (!(actual == expected)) {
    throw FormatError(tessera::detail::concat(module, ": checkpoint '", checkpoint.directory().string(),
                                              "': tensor '", name, "' has shape ", actual.to_string(),
                                              " but the config expects ", expected.to_string()));
  }
  return checkpoint.load_slice<D, T>(name, 0, begin, end);
}

}  // namespace vision_detail

// The SigLIP NaViT tower (vpm.*) on one device.
template <Device D, FloatType T>
class NavitVision {
 public:
  using device_type = D;

  // Loads the tower from `checkpoint` under `prefix` ("vpm." in the published
  // layout). Every tensor's shape is checked against `cfg` before it is read
  // (FormatError naming the tensor, the checkpoint and both shapes); a
  // missing tensor is the checkpoint's ValueError naming it. A hand-built
  // config with bad values is a ValueError naming the field.
  static NavitVision load(const io::Checkpoint& checkpoint, const std::string& prefix, const VisionConfig& cfg) {
    vision_detail::check_vision_config(cfg, [&](std::string_view key, const std::string& message) {
      throw ValueError(tessera::detail::concat(vision_detail::kTower, ": config field ", key, " ", message));
    });
    const std::int64_t hidden = cfg.hidden_size, inter = cfg.intermediate_size, side = cfg.per_side();
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return vision_detail::load_checked<D, T>(checkpoint, vision_detail::kTower, prefix + name, shape);
    };
    const auto linear = [&](const std::string& name, std::int64_t out, std::int64_t in) {
      return nn::Linear<D, T>(weight(name + ".weight", Shape{out, in}), weight(name + ".bias", Shape{out}));
    };
    const std::int64_t p = cfg.patch_size;
    Tensor<D, T> patch =
        weight("embeddings.patch_embedding.weight", Shape{hidden, cfg.num_channels, p, p});
    // Conv2d with stride = kernel on rows laid out (c, ky, kx): the weight's
    // own layout, read as a 2-D [hidden, C*p*p] linear weight.
    patch.reshape_inplace(Shape{hidden, cfg.patch_dim()});
    nn::Linear<D, T> embed(std::move(patch), weight("embeddings.patch_embedding.bias", Shape{hidden}));
    Tensor<D, T> positions = weight("embeddings.position_embedding.weight", Shape{side * side, hidden});
    std::vector<Layer> layers;
    for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
      const std::string l = tessera::detail::concat("encoder.layers.", i, ".");
      const std::string a = l + "self_attn.";
      // q, k and v fused into one [3 * hidden, hidden] GEMM.
      const Tensor<D, T> wq = weight(a + "q_proj.weight", Shape{hidden, hidden});
      const Tensor<D, T> wk = weight(a + "k_proj.weight", Shape{hidden, hidden});
      const Tensor<D, T> wv = weight(a + "v_proj.weight", Shape{hidden, hidden});
      const Tensor<D, T> bq = weight(a + "q_proj.bias", Shape{hidden});
      const Tensor<D, T> bk = weight(a + "k_proj.bias", Shape{hidden});
      const Tensor<D, T> bv = weight(a + "v_proj.bias", Shape{hidden});
      layers.push_back(Layer{
          weight(l + "layer_norm1.weight", Shape{hidden}),
          weight(l + "layer_norm1.bias", Shape{hidden}),
          weight(l + "layer_norm2.weight", Shape{hidden}),
          weight(l + "layer_norm2.bias", Shape{hidden}),
          nn::Linear<D, T>(ops::concat(0, wq, wk, wv), ops::concat(0, bq, bk, bv)),
          linear(a + "out_proj", hidden, hidden),
          linear(l + "mlp.fc1", inter, hidden),
          linear(l + "mlp.fc2", hidden, inter),
      });
    }
    Tensor<D, T> post_w = weight("post_layernorm.weight", Shape{hidden});
    Tensor<D, T> post_b = weight("post_layernorm.bias", Shape{hidden});
    return NavitVision(cfg, std::move(embed), std::move(positions), std::move(layers), std::move(post_w),
                       std::move(post_b));
  }

  const VisionConfig& config() const noexcept { return config_; }

  // patches: [sum L_i, C*p*p] on D (patch_rows of each slice, slices one
  // after another); tgt_sizes: one (rows, cols) per slice. Returns
  // [sum L_i, hidden] after post_layernorm. Mismatched shapes are a
  // ShapeError, bad tgt_sizes a ValueError, each naming the values.
  Tensor<D, T> forward(const Tensor<D, T>& patches, std::span<const TgtSize> tgt_sizes) const {
    const std::vector<std::int64_t> lengths = check_inputs(patches, tgt_sizes);
    std::vector<std::int64_t> ids;
    ids.reserve(static_cast<std::size_t>(patches.dim(0)));
    for (const TgtSize& t : tgt_sizes) {
      const std::vector<std::int64_t> slice = position_ids(t, config_.per_side());
      ids.insert(ids.end(), slice.begin(), slice.end());
    }
    const Tensor<D, std::int32_t> cu = to<D>(vision_detail::cu_seqlens(lengths));
    const double eps = config_.layer_norm_eps;

    Tensor<D, T> x = embed_.forward(patches);
    ops::residual_add(x, ops::embedding(positions_, to<D>(vision_detail::host_tensor(ids))));
    for (const Layer& layer : layers_) {
      ops::residual_add(x, attention(layer, ops::layer_norm(x, layer.ln1_w, layer.ln1_b, eps), cu));
      const Tensor<D, T> h = ops::layer_norm(x, layer.ln2_w, layer.ln2_b, eps);
      ops::residual_add(x, layer.fc2.forward(ops::gelu_tanh(layer.fc1.forward(h))));
    }
    return ops::layer_norm(x, post_w_, post_b_, eps);
  }

 private:
  struct Layer {
    Tensor<D, T> ln1_w, ln1_b, ln2_w, ln2_b;
    nn::Linear<D, T> qkv, out, fc1, fc2;
  };

  NavitVision(VisionConfig cfg, nn::Linear<D, T> embed, Tensor<D, T> positions, std::vector<Layer> layers,
              Tensor<D, T> post_w, Tensor<D, T> post_b)
      : config_(std::move(cfg)),
        embed_(std::move(embed)),
        positions_(std::move(positions)),
        layers_(std::move(layers)),
        post_w_(std::move(post_w)),
        post_b_(std::move(post_b)) {}

  // The slice lengths h*w, after checking the inputs.
  std::vector<std::int64_t> check_inputs(const Tensor<D, T>& patches, std::span<const TgtSize> tgt_sizes) const {
    using tessera::detail::concat;
    const std::string where = concat(vision_detail::kTower, "::forward");
    if (patches.rank() != 2 || patches.dim(1) != config_.patch_dim()) {
      throw ShapeError(concat(where, ": patches ", patches.shape().to_string(), " must be [patches, ",
                              config_.patch_dim(), "] (num_channels ", config_.num_channels, " * patch_size^2 ",
                              config_.patch_size * config_.patch_size, " columns)"));
    }
    const std::int64_t total = vision_detail::check_tgt_sizes(tgt_sizes, where);
    if (patches.dim(0) != total) {
      throw ShapeError(concat(where, ": patches ", patches.shape().to_string(), " has ", patches.dim(0),
                              " rows but the ", tgt_sizes.size(), " tgt_sizes hold sum(rows*cols) = ", total,
                              " patches"));
    }
    std::vector<std::int64_t> lengths;
    for (const auto& [h, w] : tgt_sizes) lengths.push_back(h * w);
    return lengths;
  }

  // Bidirectional self-attention within each slice.
  Tensor<D, T> attention(const Layer& layer, const Tensor<D, T>& h, const Tensor<D, std::int32_t>& cu) const {
    const std::int64_t tokens = h.dim(0), heads = config_.num_attention_heads, hd = config_.head_dim();
    const Tensor<D, T> qkv = layer.qkv.forward(h);
    const auto parts = qkv.view().reshape({tokens, 3, heads, hd});
    ops::AttentionOptions options;
    options.mask = ops::MaskKind::Full;  // scale: the default head_dim^-0.5
    Tensor<D, T> out = ops::attention(parts.select(1, 0), parts.select(1, 1), parts.select(1, 2), cu, cu, options);
    out.reshape_inplace(Shape{tokens, heads * hd});
    return layer.out.forward(out);
  }

  VisionConfig config_;
  nn::Linear<D, T> embed_;   // patch_embedding as [hidden, C*p*p] with its bias
  Tensor<D, T> positions_;   // position_embedding [per_side^2, hidden]
  std::vector<Layer> layers_;
  Tensor<D, T> post_w_, post_b_;
};

// The resampler (resampler.*) on one device.
template <Device D, FloatType T>
class Resampler {
 public:
  using device_type = D;

  // Loads the resampler from `checkpoint` under `prefix` ("resampler."):
  // query, kv_proj (absent when kv_dim == embed_dim: nn.Identity), ln_q,
  // ln_kv, attn.in_proj_{weight,bias} (split into q, k, v rows),
  // attn.out_proj, ln_post, proj. Shapes are checked as NavitVision::load
  // does; a bad config is a ValueError naming the field.
  static Resampler load(const io::Checkpoint& checkpoint, const std::string& prefix, const ResamplerConfig& cfg) {
    vision_detail::check_resampler_config(cfg);
    const std::int64_t d = cfg.embed_dim;
    const auto weight = [&](const std::string& name, const Shape& shape) {
      return vision_detail::load_checked<D, T>(checkpoint, vision_detail::kResampler, prefix + name, shape);
    };
    const auto rows = [&](const std::string& name, const Shape& shape, std::int64_t part) {
      return vision_detail::load_rows<D, T>(checkpoint, vision_detail::kResampler, prefix + name, shape, part * d,
                                            (part + 1) * d);
    };
    const Shape in_w{3 * d, d}, in_b{3 * d};
    std::optional<nn::Linear<D, T>> kv;
    if (cfg.kv_dim != d || checkpoint.contains(prefix + "kv_proj.weight")) {
      kv.emplace(weight("kv_proj.weight", Shape{d, cfg.kv_dim}));
    }
    Norm ln_q{weight("ln_q.weight", Shape{d}), weight("ln_q.bias", Shape{d})};
    Norm ln_kv{weight("ln_kv.weight", Shape{d}), weight("ln_kv.bias", Shape{d})};
    Norm ln_post{weight("ln_post.weight", Shape{d}), weight("ln_post.bias", Shape{d})};
    Tensor<D, T> query = weight("query", Shape{cfg.num_queries, d});
    nn::Linear<D, T> wq(rows("attn.in_proj_weight", in_w, 0), rows("attn.in_proj_bias", in_b, 0));
    nn::Linear<D, T> wk(rows("attn.in_proj_weight", in_w, 1), rows("attn.in_proj_bias", in_b, 1));
    nn::Linear<D, T> wv(rows("attn.in_proj_weight", in_w, 2), rows("attn.in_proj_bias", in_b, 2));
    nn::Linear<D, T> out(weight("attn.out_proj.weight", Shape{d, d}), weight("attn.out_proj.bias", Shape{d}));
    Tensor<D, T> proj = weight("proj", Shape{d, d});
    return Resampler(cfg, std::move(query), std::move(kv), std::move(ln_q), std::move(ln_kv), std::move(ln_post),
                     std::move(wq), std::move(wk), std::move(wv), std::move(out), std::move(proj));
  }

  const ResamplerConfig& config() const noexcept { return config_; }

  // vision_out: [sum L_i, kv_dim] on D (NavitVision::forward); tgt_sizes as
  // there. Returns [n * num_queries, embed_dim]: num_queries rows per slice,
  // slices in order.
  Tensor<D, T> forward(const Tensor<D, T>& vision_out, std::span<const TgtSize> tgt_sizes) const {
    using tessera::detail::concat;
    const std::string where = concat(vision_detail::kResampler, "::forward");
    const std::int64_t total = vision_detail::check_tgt_sizes(tgt_sizes, where);
    if (vision_out.rank() != 2 || vision_out.dim(1) != config_.kv_dim || vision_out.dim(0) != total) {
      throw ShapeError(concat(where, ": vision_out ", vision_out.shape().to_string(), " must be [", total, ", ",
                              config_.kv_dim, "] (sum(rows*cols) of the ", tgt_sizes.size(),
                              " tgt_sizes, kv_dim)"));
    }
    const std::int64_t d = config_.embed_dim, nq = config_.num_queries, slices = std::ssize(tgt_sizes);
    const std::int64_t heads = config_.num_heads, hd = config_.head_dim();
    const double eps = config_.eps;
    std::vector<std::int64_t> lengths;
    for (const auto& [h, w] : tgt_sizes) lengths.push_back(h * w);
    const std::vector<std::int64_t> query_lengths(static_cast<std::size_t>(slices), nq);

    // Scopes end each intermediate's life where the next stage no longer
    // needs it (encoder_cost counts the stages).
    Tensor<D, T> attn;
    {
      Tensor<D, T> k, v;
      {
        const Tensor<D, T> x = ops::layer_norm(kv_ ? kv_->forward(vision_out) : contiguous(vision_out.view()),
                                               ln_kv_.weight, ln_kv_.bias, eps);
        k = wk_.forward(ops::add(x, position_embedding(tgt_sizes)));
        v = wv_.forward(x);
      }
      // The queries are the same for every slice: projected once, repeated.
      const Tensor<D, T> q_one = wq_.forward(ops::layer_norm(query_, ln_q_.weight, ln_q_.bias, eps));
      const std::vector<TensorView<D, const T>> copies(static_cast<std::size_t>(slices), q_one.view());
      const Tensor<D, T> q = slices == 1 ? contiguous(q_one.view()) : ops::concat(copies, 0);
      ops::AttentionOptions options;
      options.mask = ops::MaskKind::Full;  // cross-attention; scale (D / heads)^-0.5
      attn = ops::attention(q.view().reshape({slices * nq, heads, hd}), k.view().reshape({total, heads, hd}),
                            v.view().reshape({total, heads, hd}), to<D>(vision_detail::cu_seqlens(query_lengths)),
                            to<D>(vision_detail::cu_seqlens(lengths)), options);
    }
    attn.reshape_inplace(Shape{slices * nq, d});
    return ops::matmul(ops::layer_norm(out_.forward(attn), ln_post_.weight, ln_post_.bias, eps), proj_);
  }

 private:
  struct Norm {
    Tensor<D, T> weight, bias;
  };

  // pe [sum L_i, D] on D, in T as the reference's pos_embed.to(dtype): the
  // one-axis sin-cos table for every position a slice uses, gathered at each
  // key's column (first half) and row (second half).
  Tensor<D, T> position_embedding(std::span<const TgtSize> tgt_sizes) const {
    std::int64_t longest = 0;
    std::vector<std::int64_t> cols, rows;
    for (const auto& [h, w] : tgt_sizes) {
      longest = std::max({longest, h, w});
      for (std::int64_t y = 0; y < h; ++y) {
        for (std::int64_t x = 0; x < w; ++x) {
          cols.push_back(x);
          rows.push_back(y);
        }
      }
    }
    const std::int64_t d = config_.embed_dim;
    const Tensor<D, T> table =
        to<D>(ops::cast<T>(Tensor<Host, float>::from(vision_detail::sincos_axis(d, longest), Shape{longest, d / 2})));
    return ops::concat(1, ops::embedding(table, to<D>(vision_detail::host_tensor(cols))),
                       ops::embedding(table, to<D>(vision_detail::host_tensor(rows))));
  }

  Resampler(ResamplerConfig cfg, Tensor<D, T> query, std::optional<nn::Linear<D, T>> kv, Norm ln_q, Norm ln_kv,
            Norm ln_post, nn::Linear<D, T> wq, nn::Linear<D, T> wk, nn::Linear<D, T> wv, nn::Linear<D, T> out,
            Tensor<D, T> proj)
      : config_(std::move(cfg)),
        query_(std::move(query)),
        kv_(std::move(kv)),
        ln_q_(std::move(ln_q)),
        ln_kv_(std::move(ln_kv)),
        ln_post_(std::move(ln_post)),
        wq_(std::move(wq)),
        wk_(std::move(wk)),
        wv_(std::move(wv)),
        out_(std::move(out)),
        proj_(std::move(proj)) {}

  ResamplerConfig config_;
  Tensor<D, T> query_;                  // [num_queries, D]
  std::optional<nn::Linear<D, T>> kv_;  // kv_proj [D, kv_dim], no bias
  Norm ln_q_, ln_kv_, ln_post_;
  nn::Linear<D, T> wq_, wk_, wv_, out_;  // in_proj's three row blocks; out_proj
  Tensor<D, T> proj_;                    // [D, D], right-multiplied
};

// What the model pins to one device: the tower, then the resampler.
template <Device D, FloatType T>
struct VisionEncoder {
  using device_type = D;

  NavitVision<D, T> vpm;
  Resampler<D, T> resampler;

  static VisionEncoder load(const io::Checkpoint& checkpoint, const VisionConfig& vision,
                            const ResamplerConfig& resampler_config, const std::string& vpm_prefix = "vpm.",
                            const std::string& resampler_prefix = "resampler.") {
    if (resampler_config.kv_dim != vision.hidden_size) {
      throw ValueError(tessera::detail::concat(vision_detail::kResampler, ": kv_dim ", resampler_config.kv_dim,
                                               " differs from the tower's hidden_size ", vision.hidden_size));
    }
    auto tower = NavitVision<D, T>::load(checkpoint, vpm_prefix, vision);
    auto r = Resampler<D, T>::load(checkpoint, resampler_prefix, resampler_config);
    return VisionEncoder{std::move(tower), std::move(r)};
  }

  // patches [sum L_i, C*p*p] -> [n * num_queries, embed_dim]. A template
  // so that patches from another device get tessera's sentence, not a
  // deleted conversion: the encoder is where the official multi-GPU recipe
  // (and device_map="auto") sends pixels and features across GPUs.
  template <AnyTensor X>
  Tensor<D, T> forward(const X& patches, std::span<const TgtSize> tgt_sizes) const {
    static_assert(same_device<device_of<X>, D>,
                  "tessera: the MiniCPM-V vision encoder and its input patches live on different devices; move "
                  "the patches with tessera::to<Device>(patches) to the encoder's device first");
    static_assert(std::is_same_v<X, Tensor<D, T>>,
                  "tessera: the MiniCPM-V vision encoder takes its patches as a Tensor of its own element type; "
                  "cast them with ops::cast<T>(patches)");
    if constexpr (same_device<device_of<X>, D> && std::is_same_v<X, Tensor<D, T>>) {
      return resampler.forward(vpm.forward(patches, tgt_sizes), tgt_sizes);
    }
  }
};

}  // namespace tessera::models::minicpm_v

// =============================================================================
// The encoder's cost for the planner: what one VisionEncoder::forward over
// `patches` patch rows in `slices` slices allocates on its device, next to
// the code it mirrors. tests/unit/test_minicpm_v_vision.cpp holds it to the
// memory ledger.
// =============================================================================

#include "../placement/model_description.hpp"

namespace tessera::models::minicpm_v {

// Bytes on the encoder's device at the worst moment of one pass over
// `patches` patch rows in `slices` slices, with elements of `element_size`
// bytes: the float patch rows the model copies there and their cast to T
// (alive throughout), then the worst stage of the tower or of the resampler
// (with the tower's output alive), each stage counting what is alive in
// NavitVision::forward / Resampler::forward at that point, plus the float
// copies of the widest half-precision GEMM (ops/matmul.hpp). Host-built index
// tensors and the sin-cos table are counted as if on the device (on a CPU
// slot they are), so it is an upper bound on every device; the test holds
// the ledger's measured peak under it.
inline std::uint64_t encoder_cost(const VisionConfig& v, const ResamplerConfig& r, std::uint64_t patches,
                                  std::uint64_t slices, std::size_t element_size) {
  using u64 = std::uint64_t;
  if (patches == 0 || slices == 0) return 0;
  const u64 e = element_size, N = patches, S = slices;
  const bool half = e != 4;
  const auto widen = [e](u64 m, u64 k, u64 n) { return placement::gemm_widening_bytes(e, m, k, n); };
  const u64 H = static_cast<u64>(v.hidden_size), I = static_cast<u64>(v.intermediate_size);
  const u64 pd = static_cast<u64>(v.num_channels * v.patch_size * v.patch_size);
  const u64 Dm = static_cast<u64>(r.embed_dim), Kv = static_cast<u64>(r.kv_dim), Q = static_cast<u64>(r.num_queries);
  const u64 NH = N * H * e, NI = N * I * e, ND = N * Dm * e, NK = N * Kv * e;
  const u64 Q1 = Q * Dm * e, QS = S * Q * Dm * e;
  const u64 cu = 8 * (S + 1);  // an int32 cu_seqlens on the host and on the device
  const u64 pixels = 4 * N * pd + (half ? N * pd * e : 0);
  // Tower: x and the position gather (with the int64 ids, host and device);
  // x, LN1, qkv, the attention output (and its float copies of q, k, v for
  // half types on a CPU) and out_proj; x, LN2, fc1, gelu and fc2; x and
  // post_layernorm.
  const u64 tower = cu + std::max({2 * NH + 16 * N, 7 * NH + (half ? 12 * N * H : 0), 3 * NH + 2 * NI});
  // Resampler, beside the tower's output [N, kv_dim]: kv_proj and ln_kv; x
  // and the sin-cos table (float and T on the host, T on the device; its
  // longest side is at most N); x, the table, the column and row ids and
  // gathers and pe; x, pe, x + pe, K; x, K, V; K, V, the projected and the
  // repeated queries and the attention output (and float copies); out_proj,
  // ln_post and the product with proj.
  const u64 table = 2 * N * Dm + N * Dm * e;
  const u64 resampler =
      NK + std::max({2 * ND, ND + table, 3 * ND + ND / 2 + 32 * N, 4 * ND,
                     2 * ND + Q1 + 2 * QS + 2 * cu + (half ? 4 * (S * Q * Dm + 2 * N * Dm) : 0), 4 * QS});
  const u64 widest = std::max({widen(N, pd, H), widen(N, H, 3 * H), widen(N, H, I), widen(N, I, H),
                               widen(N, Kv, Dm), widen(N, Dm, Dm), widen(S * Q, Dm, Dm)});
  return pixels + std::max(tower, resampler) + widest;
}

}  // namespace tessera::models::minicpm_v
