// tessera/ops/norm.hpp — RMSNorm (Qwen2 / Llama / InternLM2 / Qwen vision
// convention), LayerNorm (torch.nn.LayerNorm), and the fused residual add +
// RMSNorm that every pre-norm decoder layer runs. All normalise over the last
// dimension; inputs may be strided views, outputs are contiguous.
// CUDA launchers: ops/cuda/norm.cuh.
#pragma once

#include <cmath>

#include "common.hpp"
#include "cuda/norm.cuh"

namespace tessera::ops {

namespace detail::norms {

// Strided element access: unit stride is a template constant so the common
// contiguous case vectorises.
template <bool Unit, class P>
inline auto& strided(P* p, std::int64_t i, std::int64_t stride) {
  if constexpr (Unit) return p[i];
  else return p[i * stride];
}

// Sum over a row of f(double(x[i])) in double, with eight independent partial
// sums in a fixed order: deterministic, and not bound by the add latency.
template <bool Unit, class T, class F>
double row_sum(const T* x, std::int64_t stride, std::int64_t n, F f) {
  double acc[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += f(static_cast<double>(to_float(strided<Unit>(x, i + l, stride))));
  }
  for (; i < n; ++i) acc[0] += f(static_cast<double>(to_float(strided<Unit>(x, i, stride))));
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// One RMSNorm row, Qwen2RMSNorm's exact order of operations:
//   variance = mean(float(x)^2); h = float(x) * rsqrt(variance + eps);
//   h is rounded to T; out = T(float(weight) * float(h)).
// The sum of squares is accumulated in double (torch accumulates in float32,
// so the two agree to float32 rounding of the variance).
template <bool Unit, class T>
void rms_norm_row(T* out, const T* x, std::int64_t x_stride, const T* w, std::int64_t w_stride,
                  std::int64_t n, float eps) {
  const double sum_sq = row_sum<Unit>(x, x_stride, n, [](double v) { return v * v; });
  const float variance = static_cast<float>(sum_sq / static_cast<double>(n));
  const float inv_rms = 1.0f / std::sqrt(variance + eps);
  for (std::int64_t i = 0; i < n; ++i) {
    const T h = from_float<T>(to_float(strided<Unit>(x, i, x_stride)) * inv_rms);
    out[i] = from_float<T>(to_float(strided<Unit>(w, i, w_stride)) * to_float(h));
  }
}

// Shape checks shared by the norms: x has rank >= 1 and each parameter is [H].
template <class VX, class VP>
void check_norm_param(const VX& x, const VP& p, std::string_view op, std::string_view name) {
  check(p.rank() == 1 && p.dim(0) == x.dim(-1), op, name, " must have shape [", x.dim(-1),
        "] to match the last dimension of x ", x.shape().to_string(), ", got ", p.shape().to_string());
}

}  // namespace detail::norms

// RMSNorm over the last dimension, exactly as transformers' Qwen2RMSNorm
// (also LlamaRMSNorm, InternLM2RMSNorm, Qwen2.5-VL's vision RMSNorm):
//
//   h   = float(x) * rsqrt(mean(float(x)^2) + eps)     computed in float32
//   h   = h rounded to T (the input dtype)              -- before the weight
//   out = weight * h, the product rounded to T
//
// The rounding of h to T before the weight multiply is what HF does
// (`self.weight * hidden_states.to(input_dtype)`); for bf16 it changes results
// by up to one bf16 ulp compared with multiplying by the weight in float.
// x: [..., H] (any strided view); weight: [H], same device and dtype.
// eps is converted to float32, as torch adds it to a float32 tensor.
template <AnyTensor X, AnyTensor W>
Tensor<device_of<X>, element_of<X>> rms_norm(const X& x, const W& weight, double eps) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D, device_of<W>>();
  require_same_dtype<T, element_of<W>>();
  static_assert(FloatType<T>, "tessera: ops::rms_norm needs a floating-point tensor (float, bf16 or f16)");
  if constexpr (!detail::float_operands_on<D, T, W>) {
    return {};  // a gate above has already failed
  } else {
    const auto vx = as_view(x);
    const auto vw = as_view(weight);
    detail::check(vx.rank() >= 1, "ops::rms_norm", "x must have rank >= 1, got shape ", vx.shape().to_string());
    detail::norms::check_norm_param(vx, vw, "ops::rms_norm", "weight");
    Tensor<D, T> out(vx.shape());
    if constexpr (is_cpu_v<D>) {
      const std::int64_t n = vx.dim(-1);
      if (n == 0) return out;
      const detail::RowOffsets row_offset(vx.shape(), vx.strides());
      const std::int64_t rows = vx.numel() / n;
      const std::int64_t xs = vx.stride(-1), ws = vw.stride(0);
      const float feps = static_cast<float>(eps);
      const T* px = vx.raw();
      const T* pw = vw.raw();
      T* po = out.raw();
      TESSERA_OMP_PARALLEL_FOR_IF(rows * n >= detail::kParallelMinElements)
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* row = px + row_offset(r);
        if (xs == 1 && ws == 1) detail::norms::rms_norm_row<true>(po + r * n, row, xs, pw, ws, n, feps);
        else detail::norms::rms_norm_row<false>(po + r * n, row, xs, pw, ws, n, feps);
      }
    } else {
      // x and the weight are read in place, whatever their strides.
      detail::cuda_launch<D>("ops::rms_norm", [&](const cuda::LaunchContext& ctx) {
        cuda::launch_rms_norm<T>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx),
                                 vw.device_ptr().get(), vw.stride(0), static_cast<float>(eps));
      });
    }
    return out;
  }
}

// The pre-norm decoder pattern, fused into one pass over each row:
//
//   residual = hidden + residual      (in place, the sum rounded once to T)
//   return rms_norm(residual, weight, eps)
//
// It is bit-for-bit the unfused sequence ops::residual_add(residual, hidden)
// followed by ops::rms_norm(residual, weight, eps). hidden and residual must
// have the same shape; hidden may be a strided view.
template <AnyTensor H, Device D, DType T, AnyTensor W>
Tensor<D, T> add_rms_norm(const H& hidden, Tensor<D, T>& residual, const W& weight, double eps) {
  require_same_device<D, device_of<H>, device_of<W>>();
  require_same_dtype<T, element_of<H>, element_of<W>>();
  static_assert(FloatType<T>, "tessera: ops::add_rms_norm needs a floating-point tensor (float, bf16 or f16)");
  if constexpr (!detail::float_operands_on<D, T, H, W>) {
    return {};  // a gate above has already failed
  } else {
    const auto vh = as_view(hidden);
    const auto vw = as_view(weight);
    detail::check(vh.shape() == residual.shape(), "ops::add_rms_norm", "hidden ", vh.shape().to_string(),
                  " and residual ", residual.shape().to_string(), " differ");
    detail::check(residual.rank() >= 1, "ops::add_rms_norm", "residual must have rank >= 1, got shape ",
                  residual.shape().to_string());
    detail::norms::check_norm_param(residual.view(), vw, "ops::add_rms_norm", "weight");
    Tensor<D, T> out(residual.shape());
    if constexpr (is_cpu_v<D>) {
      const std::int64_t n = residual.dim(-1);
      if (n == 0) return out;
      const detail::RowOffsets row_offset(vh.shape(), vh.strides());
      const std::int64_t rows = vh.numel() / n;
      const std::int64_t hs = vh.stride(-1), ws = vw.stride(0);
      const float feps = static_cast<float>(eps);
      const T* ph = vh.raw();
      const T* pw = vw.raw();
      T* pr = residual.raw();
      T* po = out.raw();
      TESSERA_OMP_PARALLEL_FOR_IF(rows * n >= detail::kParallelMinElements)
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* hrow = ph + row_offset(r);
        T* rrow = pr + r * n;
        for (std::int64_t i = 0; i < n; ++i) {
          rrow[i] = detail::from_float<T>(detail::to_float(rrow[i]) + detail::to_float(hrow[i * hs]));
        }
        if (ws == 1) detail::norms::rms_norm_row<true>(po + r * n, rrow, 1, pw, ws, n, feps);
        else detail::norms::rms_norm_row<false>(po + r * n, rrow, 1, pw, ws, n, feps);
      }
    } else {
      // One kernel, bit for bit residual_add then rms_norm on CUDA as well.
      detail::cuda_launch<D>("ops::add_rms_norm", [&](const cuda::LaunchContext& ctx) {
        cuda::launch_add_rms_norm<T>(ctx, out.device_ptr().get(), residual.device_ptr().get(), vh.device_ptr().get(),
                                     detail::strided_layout(vh), vw.device_ptr().get(), vw.stride(0),
                                     static_cast<float>(eps));
      });
    }
    return out;
  }
}

// LayerNorm over the last dimension, as torch.nn.LayerNorm with an affine
// weight and bias: y = (x - mean) / sqrt(var + eps) * weight + bias, with the
// biased variance (divide by H). Mean and variance are accumulated in double
// and used as float32; the affine transform is computed in float32 and
// rounded once to T (torch's CPU kernel also computes bf16/f16 layer norms in
// float and rounds once). x: [..., H]; weight, bias: [H].
template <AnyTensor X, AnyTensor W, AnyTensor B>
Tensor<device_of<X>, element_of<X>> layer_norm(const X& x, const W& weight, const B& bias, double eps) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D, device_of<W>, device_of<B>>();
  require_same_dtype<T, element_of<W>, element_of<B>>();
  static_assert(FloatType<T>, "tessera: ops::layer_norm needs a floating-point tensor (float, bf16 or f16)");
  if constexpr (!detail::float_operands_on<D, T, W, B>) {
    return {};  // a gate above has already failed
  } else {
    const auto vx = as_view(x);
    const auto vw = as_view(weight);
    const auto vb = as_view(bias);
    detail::check(vx.rank() >= 1, "ops::layer_norm", "x must have rank >= 1, got shape ", vx.shape().to_string());
    detail::norms::check_norm_param(vx, vw, "ops::layer_norm", "weight");
    detail::norms::check_norm_param(vx, vb, "ops::layer_norm", "bias");
    Tensor<D, T> out(vx.shape());
    if constexpr (is_cpu_v<D>) {
      const std::int64_t n = vx.dim(-1);
      if (n == 0) return out;
      const detail::RowOffsets row_offset(vx.shape(), vx.strides());
      const std::int64_t rows = vx.numel() / n;
      const std::int64_t xs = vx.stride(-1), ws = vw.stride(0), bs = vb.stride(0);
      const float feps = static_cast<float>(eps);
      const T* px = vx.raw();
      const T* pw = vw.raw();
      const T* pb = vb.raw();
      T* po = out.raw();
      TESSERA_OMP_PARALLEL_FOR_IF(rows * n >= detail::kParallelMinElements)
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* row = px + row_offset(r);
        const auto identity = [](double v) { return v; };
        const double mean_d = (xs == 1 ? detail::norms::row_sum<true>(row, xs, n, identity)
                                       : detail::norms::row_sum<false>(row, xs, n, identity)) /
                              static_cast<double>(n);
        const auto centred_sq = [mean_d](double v) { return (v - mean_d) * (v - mean_d); };
        const double sum_sq = xs == 1 ? detail::norms::row_sum<true>(row, xs, n, centred_sq)
                                      : detail::norms::row_sum<false>(row, xs, n, centred_sq);
        const auto mean = static_cast<float>(mean_d);
        const float inv_std = 1.0f / std::sqrt(static_cast<float>(sum_sq / static_cast<double>(n)) + feps);
        T* orow = po + r * n;
        for (std::int64_t i = 0; i < n; ++i) {
          const float y = (detail::to_float(row[i * xs]) - mean) * inv_std * detail::to_float(pw[i * ws]) +
                          detail::to_float(pb[i * bs]);
          orow[i] = detail::from_float<T>(y);
        }
      }
    } else {
      detail::cuda_launch<D>("ops::layer_norm", [&](const cuda::LaunchContext& ctx) {
        cuda::launch_layer_norm<T>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx),
                                   vw.device_ptr().get(), vw.stride(0), vb.device_ptr().get(), vb.stride(0),
                                   static_cast<float>(eps));
      });
    }
    return out;
  }
}

}  // namespace tessera::ops
