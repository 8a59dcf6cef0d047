// tessera/ops/cuda/norm.cuh — CUDA launchers and kernels of ops/norm.hpp:
// RMSNorm, the fused residual add + RMSNorm, LayerNorm.
//
// Each row (the last dimension) is owned by a warp (short rows) or a block
// (long rows), see row_launch in rows.cuh; the row is read once into
// registers, reduced, and written from the registers. x (and hidden) are
// read in place through their row layout, whatever their strides; 16-byte
// vector accesses are used when every operand allows them, element accesses
// otherwise, with the same arithmetic in the same order either way.
#pragma once

#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// out[rows, n] = rms_norm(x) with x given by its full layout (rank >= 1, last
// dimension n) and weight[i * weight_stride]. out is contiguous.
template <class T>
void launch_rms_norm(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const T* weight,
                     std::int64_t weight_stride, float eps);

// residual = T(residual + hidden) in place (residual contiguous, of hidden's
// shape), then out = rms_norm(residual); bit for bit the unfused launches
// (elementwise residual add, then launch_rms_norm on the contiguous residual).
template <class T>
void launch_add_rms_norm(const LaunchContext& ctx, T* out, T* residual, const T* hidden,
                         const StridedLayout& hidden_layout, const T* weight, std::int64_t weight_stride, float eps);

// out = layer_norm(x) * weight + bias (biased variance), out contiguous.
template <class T>
void launch_layer_norm(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const T* weight,
                       std::int64_t weight_stride, const T* bias, std::int64_t bias_stride, float eps);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include "common.cuh"
#include "rows.cuh"

namespace tessera::cuda {
namespace kernels {

// Chunks per thread kept in registers (rows.cuh): rows up to 1024 bf16/f16 or
// 512 float elements take a warp, longer ones a block; rows beyond 1024
// threads * 4 chunks (32768 bf16 or 16384 float elements) re-read the rest.
// rms_norm and add_rms_norm must use the same value (same launch shape).
inline constexpr int kNormCacheChunks = 4;

// ---- pieces shared by rms_norm_kernel and add_rms_norm_kernel ---------------
// Both kernels must produce the same bits, so the arithmetic lives here once,
// written with explicit-rounding intrinsics so that the compiler cannot
// contract it differently in the two kernels.

// acc + sum of squares of the first `count` elements, in order.
template <int V, class N>
__device__ inline float add_squares(const N (&v)[V], int count, float acc) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j < count) {
      const float f = to_float(v[j]);
      acc = __fmaf_rn(f, f, acc);
    }
  }
  return acc;
}

// 1 / sqrt(mean + eps) from the row's sum of squares, correctly rounded at
// every step as the CPU's 1.0f / std::sqrt(variance + eps).
__device__ inline float rms_scale(float sum_sq, std::int64_t n, float eps) {
  const float variance = __fdiv_rn(sum_sq, static_cast<float>(n));
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, eps)));
}

// Writes chunk c of an output row: h = T(x * inv_rms), out = T(weight * h)
// (Qwen2RMSNorm's order: h rounded to T before the weight multiply).
template <bool kVector, int V, class N>
__device__ inline void rms_norm_write(N* out_row, const N (&x)[V], const N* weight, std::int64_t weight_stride,
                                      std::int64_t c, std::int64_t n, float inv_rms) {
  N w[V];
  const int count = load_chunk<kVector>(w, weight, weight_stride, c, n);
  N o[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const N h = from_float<N>(__fmul_rn(to_float(x[j]), inv_rms));
    o[j] = from_float<N>(__fmul_rn(to_float(w[j]), to_float(h)));
  }
  store_chunk<kVector>(out_row, o, c, count);
}

// ---- RMSNorm -------------------------------------------------------------------
// Threads: blockDim.x threads own a row (a warp, or the whole block when
// blockDim.y == 1); thread t handles chunks t, t + blockDim.x, ... of it, the
// first kNormCacheChunks of them kept in registers, any further ones read
// again for the write. Rows advance by gridDim.x * blockDim.y.
template <class N, bool kVector>
__global__ void __launch_bounds__(1024)
    rms_norm_kernel(N* __restrict__ out, const N* __restrict__ x, RowLayout x_rows, const N* __restrict__ weight,
                    std::int64_t weight_stride, std::int64_t rows, std::int64_t n, float eps) {
  constexpr int V = kChunk<N>;
  __shared__ float scratch[32];
  const std::int64_t chunks = (n + V - 1) / V;
  const std::int64_t lane = threadIdx.x, threads = blockDim.x;
  for (std::int64_t r = first_row(); r < rows; r += row_step()) {
    const N* xr = x + row_start(x_rows, r);
    N cache[kNormCacheChunks][V];
    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) sum_sq = add_squares(cache[k], load_chunk<kVector>(cache[k], xr, x_rows.inner, c, n), sum_sq);
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      sum_sq = add_squares(v, load_chunk<kVector>(v, xr, x_rows.inner, c, n), sum_sq);
    }
    const float inv_rms = rms_scale(row_sum(sum_sq, scratch), n, eps);

    N* out_row = out + r * n;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) rms_norm_write<kVector>(out_row, cache[k], weight, weight_stride, c, n, inv_rms);
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      (void)load_chunk<kVector>(v, xr, x_rows.inner, c, n);
      rms_norm_write<kVector>(out_row, v, weight, weight_stride, c, n, inv_rms);
    }
  }
}

// ---- residual add + RMSNorm ----------------------------------------------------
// Threads as rms_norm_kernel. Per chunk: residual = T(residual + hidden) is
// stored back and kept; the sum of squares and the write are rms_norm_kernel's
// own code on those T values, in the same chunk order, so out is bit for bit
// what rms_norm_kernel gives on the updated residual. Chunks past the register
// cache are re-read from the residual this same thread wrote. residual and
// hidden are not __restrict__: hidden may alias residual element for element.
template <bool kVector, int V, class N>
__device__ inline int add_into_residual(N (&sum)[V], N* residual_row, const N* hidden_row,
                                        std::int64_t hidden_stride, std::int64_t c, std::int64_t n) {
  N h[V];
  (void)load_chunk<kVector>(h, hidden_row, hidden_stride, c, n);
  const int count = load_chunk<kVector>(sum, static_cast<const N*>(residual_row), 1, c, n);
#pragma unroll
  for (int j = 0; j < V; ++j) sum[j] = from_float<N>(__fadd_rn(to_float(sum[j]), to_float(h[j])));
  store_chunk<kVector>(residual_row, sum, c, count);
  return count;
}

template <class N, bool kVector>
__global__ void __launch_bounds__(1024)
    add_rms_norm_kernel(N* __restrict__ out, N* residual, const N* hidden, RowLayout hidden_rows,
                        const N* __restrict__ weight, std::int64_t weight_stride, std::int64_t rows, std::int64_t n,
                        float eps) {
  constexpr int V = kChunk<N>;
  __shared__ float scratch[32];
  const std::int64_t chunks = (n + V - 1) / V;
  const std::int64_t lane = threadIdx.x, threads = blockDim.x;
  for (std::int64_t r = first_row(); r < rows; r += row_step()) {
    const N* hr = hidden + row_start(hidden_rows, r);
    N* rr = residual + r * n;
    N cache[kNormCacheChunks][V];
    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) {
        sum_sq = add_squares(cache[k], add_into_residual<kVector>(cache[k], rr, hr, hidden_rows.inner, c, n), sum_sq);
      }
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      sum_sq = add_squares(v, add_into_residual<kVector>(v, rr, hr, hidden_rows.inner, c, n), sum_sq);
    }
    const float inv_rms = rms_scale(row_sum(sum_sq, scratch), n, eps);

    N* out_row = out + r * n;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) rms_norm_write<kVector>(out_row, cache[k], weight, weight_stride, c, n, inv_rms);
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      (void)load_chunk<kVector>(v, static_cast<const N*>(rr), 1, c, n);
      rms_norm_write<kVector>(out_row, v, weight, weight_stride, c, n, inv_rms);
    }
  }
}

// ---- LayerNorm -----------------------------------------------------------------
// Threads as rms_norm_kernel. Two passes in float over the registers: the
// mean, then the mean of squared deviations from it (biased variance); then
// y = ((x - mean) * inv_std) * weight + bias in the CPU's order, without
// contractions, rounded once to T.
template <int V, class N>
__device__ inline float add_values(const N (&v)[V], int count, float acc) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j < count) acc = __fadd_rn(acc, to_float(v[j]));
  }
  return acc;
}

template <int V, class N>
__device__ inline float add_deviations(const N (&v)[V], int count, float mean, float acc) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j < count) {
      const float d = __fsub_rn(to_float(v[j]), mean);
      acc = __fmaf_rn(d, d, acc);
    }
  }
  return acc;
}

template <bool kVector, int V, class N>
__device__ inline void layer_norm_write(N* out_row, const N (&x)[V], const N* weight, std::int64_t weight_stride,
                                        const N* bias, std::int64_t bias_stride, std::int64_t c, std::int64_t n,
                                        float mean, float inv_std) {
  N w[V], b[V];
  const int count = load_chunk<kVector>(w, weight, weight_stride, c, n);
  (void)load_chunk<kVector>(b, bias, bias_stride, c, n);
  N o[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float normed = __fmul_rn(__fsub_rn(to_float(x[j]), mean), inv_std);
    o[j] = from_float<N>(__fadd_rn(__fmul_rn(normed, to_float(w[j])), to_float(b[j])));
  }
  store_chunk<kVector>(out_row, o, c, count);
}

template <class N, bool kVector>
__global__ void __launch_bounds__(1024)
    layer_norm_kernel(N* __restrict__ out, const N* __restrict__ x, RowLayout x_rows, const N* __restrict__ weight,
                      std::int64_t weight_stride, const N* __restrict__ bias, std::int64_t bias_stride,
                      std::int64_t rows, std::int64_t n, float eps) {
  constexpr int V = kChunk<N>;
  __shared__ float scratch[32];
  const std::int64_t chunks = (n + V - 1) / V;
  const std::int64_t lane = threadIdx.x, threads = blockDim.x;
  const auto fn = static_cast<float>(n);
  for (std::int64_t r = first_row(); r < rows; r += row_step()) {
    const N* xr = x + row_start(x_rows, r);
    N cache[kNormCacheChunks][V];
    int counts[kNormCacheChunks];
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      counts[k] = c < chunks ? load_chunk<kVector>(cache[k], xr, x_rows.inner, c, n) : 0;
      sum = add_values(cache[k], counts[k], sum);
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      sum = add_values(v, load_chunk<kVector>(v, xr, x_rows.inner, c, n), sum);
    }
    const float mean = __fdiv_rn(row_sum(sum, scratch), fn);

    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) sum_sq = add_deviations(cache[k], counts[k], mean, sum_sq);
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      sum_sq = add_deviations(v, load_chunk<kVector>(v, xr, x_rows.inner, c, n), mean, sum_sq);
    }
    const float variance = __fdiv_rn(row_sum(sum_sq, scratch), fn);
    const float inv_std = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, eps)));

    N* out_row = out + r * n;
#pragma unroll
    for (int k = 0; k < kNormCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) {
        layer_norm_write<kVector>(out_row, cache[k], weight, weight_stride, bias, bias_stride, c, n, mean, inv_std);
      }
    }
    for (std::int64_t c = lane + kNormCacheChunks * threads; c < chunks; c += threads) {
      N v[V];
      (void)load_chunk<kVector>(v, xr, x_rows.inner, c, n);
      layer_norm_write<kVector>(out_row, v, weight, weight_stride, bias, bias_stride, c, n, mean, inv_std);
    }
  }
}

}  // namespace kernels

// ---- launchers -------------------------------------------------------------------

template <class T>
void launch_rms_norm(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const T* weight,
                     std::int64_t weight_stride, float eps) {
  const std::int64_t n = row_length(x_layout), rows = row_count(x_layout);
  if (rows == 0 || n == 0) return;
  using N = kernels::native_t<T>;
  constexpr int V = kernels::kChunk<N>;
  const RowLayout x_rows = row_layout(x_layout);
  const bool vector = n % V == 0 && rows_aligned(x_rows, x, sizeof(T), 16) && weight_stride == 1 &&
                      is_aligned(weight, 16) && is_aligned(out, 16);
  const RowLaunch l = row_launch(rows, (n + V - 1) / V, kernels::kNormCacheChunks);
  with_vector_flag(vector, [&](auto vec) {
    kernels::rms_norm_kernel<N, decltype(vec)::value><<<l.grid, l.block, 0, ctx.stream>>>(
        kernels::as_native(out), kernels::as_native(x), x_rows, kernels::as_native(weight), weight_stride, rows, n,
        eps);
  });
  check_launch("ops::rms_norm");
}

template <class T>
void launch_add_rms_norm(const LaunchContext& ctx, T* out, T* residual, const T* hidden,
                         const StridedLayout& hidden_layout, const T* weight, std::int64_t weight_stride, float eps) {
  const std::int64_t n = row_length(hidden_layout), rows = row_count(hidden_layout);
  if (rows == 0 || n == 0) return;
  using N = kernels::native_t<T>;
  constexpr int V = kernels::kChunk<N>;
  const RowLayout hidden_rows = row_layout(hidden_layout);
  const bool vector = n % V == 0 && rows_aligned(hidden_rows, hidden, sizeof(T), 16) && is_aligned(residual, 16) &&
                      weight_stride == 1 && is_aligned(weight, 16) && is_aligned(out, 16);
  // The launch shape depends on n alone, as launch_rms_norm's: part of the
  // bit-for-bit promise (the vector flag does not change any result).
  const RowLaunch l = row_launch(rows, (n + V - 1) / V, kernels::kNormCacheChunks);
  with_vector_flag(vector, [&](auto vec) {
    kernels::add_rms_norm_kernel<N, decltype(vec)::value><<<l.grid, l.block, 0, ctx.stream>>>(
        kernels::as_native(out), kernels::as_native(residual), kernels::as_native(hidden), hidden_rows,
        kernels::as_native(weight), weight_stride, rows, n, eps);
  });
  check_launch("ops::add_rms_norm");
}

template <class T>
void launch_layer_norm(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const T* weight,
                       std::int64_t weight_stride, const T* bias, std::int64_t bias_stride, float eps) {
  const std::int64_t n = row_length(x_layout), rows = row_count(x_layout);
  if (rows == 0 || n == 0) return;
  using N = kernels::native_t<T>;
  constexpr int V = kernels::kChunk<N>;
  const RowLayout x_rows = row_layout(x_layout);
  const bool vector = n % V == 0 && rows_aligned(x_rows, x, sizeof(T), 16) && weight_stride == 1 &&
                      is_aligned(weight, 16) && bias_stride == 1 && is_aligned(bias, 16) && is_aligned(out, 16);
  const RowLaunch l = row_launch(rows, (n + V - 1) / V, kernels::kNormCacheChunks);
  with_vector_flag(vector, [&](auto vec) {
    kernels::layer_norm_kernel<N, decltype(vec)::value><<<l.grid, l.block, 0, ctx.stream>>>(
        kernels::as_native(out), kernels::as_native(x), x_rows, kernels::as_native(weight), weight_stride,
        kernels::as_native(bias), bias_stride, rows, n, eps);
  });
  check_launch("ops::layer_norm");
}

}  // namespace tessera::cuda
#endif
