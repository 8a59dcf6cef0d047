// tessera/ops/cuda/softmax.cuh — CUDA launcher and kernel of ops/softmax.hpp:
// softmax over the last dimension, optionally of x + an additive mask that
// broadcasts to x's shape.
//
// Same special values as the CPU's online softmax (ops/softmax.hpp): -inf
// scores contribute nothing; a row with no score above -inf (fully masked,
// including rows whose other entries are NaN) is all zeros; a NaN score
// otherwise makes the row NaN; one +inf score gives NaN at its own position
// and zeros elsewhere, two or more make the row NaN.
#pragma once

#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// out = softmax(x [+ mask]) over the last dimension. x is given by its full
// layout; out is contiguous of x's shape. mask (nullptr for none) is read
// through mask_layout: x's shape with the mask's strides broadcast to it
// (stride 0 on broadcast dimensions). M is T or float.
template <class T, class M>
void launch_softmax(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const M* mask,
                    const StridedLayout& mask_layout);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include "common.cuh"
#include "rows.cuh"

namespace tessera::cuda {
namespace kernels {

// Chunks per thread whose scores stay in registers, as floats (rows.cuh):
// rows up to 512 bf16/f16 or 256 float elements take a warp, longer ones a
// block; rows beyond 1024 threads * 2 chunks (16384 bf16 or 8192 float
// elements) read x (and the mask) again for the write.
inline constexpr int kSoftmaxCacheChunks = 2;

// A running (max, sum of exp(score - max)) over part of a row. Scores are
// folded in as the CPU folds them (skip -inf; a larger score rescales the
// sum), and two partial states merge with the CPU's special cases: equal
// maxima add their sums unless both are +inf (the CPU's second +inf adds
// exp(inf - inf) = NaN), and a -inf max contributes sum * 0 (0, or NaN if a
// NaN score was folded in before any finite one). max is never NaN.
struct MaxSum {
  float max = -INFINITY;
  float sum = 0.0f;

  __device__ void add(float v) {
    if (v == -INFINITY) return;
    if (v > max) {
      sum = __fmaf_rn(sum, expf(max - v), 1.0f);
      max = v;
    } else {
      sum = __fadd_rn(sum, expf(v - max));  // NaN scores land here and propagate
    }
  }

  // Symmetric in (this, other) to the bit, so every lane of a butterfly ends
  // with the same state.
  __device__ void merge(float other_max, float other_sum) {
    if (max == other_max) {
      sum = max == INFINITY ? __int_as_float(0x7fc00000) : __fadd_rn(sum, other_sum);
    } else if (max > other_max) {
      sum = __fmaf_rn(other_sum, expf(other_max - max), sum);
    } else {
      sum = __fmaf_rn(sum, expf(max - other_max), other_sum);
      max = other_max;
    }
  }
};

// The row's (max, sum) on every thread of the row's blockDim.x threads (a
// warp, or the whole block when blockDim.y == 1); `scratch` is 64 floats of
// shared memory, free again when this returns.
__device__ inline MaxSum row_max_sum(MaxSum s, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float m = __shfl_xor_sync(0xffffffffu, s.max, offset);
    const float z = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    s.merge(m, z);
  }
  if (blockDim.x <= 32) return s;
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    scratch[warp] = s.max;
    scratch[32 + warp] = s.sum;
  }
  __syncthreads();
  MaxSum t;  // (-inf, 0): the identity of merge
  if (lane < warps) {
    t.max = scratch[lane];
    t.sum = scratch[32 + lane];
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float m = __shfl_xor_sync(0xffffffffu, t.max, offset);
    const float z = __shfl_xor_sync(0xffffffffu, t.sum, offset);
    t.merge(m, z);
  }
  __syncthreads();
  return t;
}

// Scores of chunk c: float(x) [+ float(mask)], as the CPU forms them.
template <bool kXVector, bool kMaskVector, int V, class N, class NM>
__device__ inline int load_scores(float (&s)[V], const N* x_row, std::int64_t x_stride, const NM* mask_row,
                                  std::int64_t mask_stride, std::int64_t c, std::int64_t n) {
  N xv[V];
  const int count = load_chunk<kXVector>(xv, x_row, x_stride, c, n);
  if (mask_row != nullptr) {
    NM mv[V];
    (void)load_chunk<kMaskVector>(mv, mask_row, mask_stride, c, n);
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] = __fadd_rn(to_float(xv[j]), to_float(mv[j]));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) s[j] = to_float(xv[j]);
  }
  return count;
}

template <int V>
__device__ inline void fold_scores(MaxSum& state, const float (&s)[V], int count) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    if (j < count) state.add(s[j]);
  }
}

// out = exp(score - max) * inv_sum, or zeros for a row without a finite max.
template <bool kVector, int V, class N>
__device__ inline void softmax_write(N* out_row, const float (&s)[V], std::int64_t c, int count, float max,
                                     float inv_sum, bool all_masked) {
  N o[V];
#pragma unroll
  for (int j = 0; j < V; ++j) o[j] = from_float<N>(all_masked ? 0.0f : __fmul_rn(expf(s[j] - max), inv_sum));
  store_chunk<kVector>(out_row, o, c, count);
}

// Threads as the norms (rows.cuh): blockDim.x threads own a row, thread t
// takes chunks t, t + blockDim.x, ...; the first kSoftmaxCacheChunks chunks' scores
// stay in registers as floats, further chunks are read again for the write.
// kXVector covers x and out; kMaskVector the mask.
template <class N, class NM, bool kXVector, bool kMaskVector>
__global__ void __launch_bounds__(1024)
    softmax_kernel(N* __restrict__ out, const N* __restrict__ x, RowLayout x_rows, const NM* __restrict__ mask,
                   RowLayout mask_rows, std::int64_t rows, std::int64_t n) {
  constexpr int V = kChunk<N>;
  __shared__ float scratch[64];
  const std::int64_t chunks = (n + V - 1) / V;
  const std::int64_t lane = threadIdx.x, threads = blockDim.x;
  for (std::int64_t r = first_row(); r < rows; r += row_step()) {
    const N* xr = x + row_start(x_rows, r);
    const NM* mr = mask != nullptr ? mask + row_start(mask_rows, r) : nullptr;
    float cache[kSoftmaxCacheChunks][V];
    MaxSum state;
#pragma unroll
    for (int k = 0; k < kSoftmaxCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) {
        const int count = load_scores<kXVector, kMaskVector>(cache[k], xr, x_rows.inner, mr, mask_rows.inner, c, n);
        fold_scores(state, cache[k], count);
      }
    }
    for (std::int64_t c = lane + kSoftmaxCacheChunks * threads; c < chunks; c += threads) {
      float s[V];
      fold_scores(state, s, load_scores<kXVector, kMaskVector>(s, xr, x_rows.inner, mr, mask_rows.inner, c, n));
    }
    const MaxSum row = row_max_sum(state, scratch);
    const bool all_masked = row.max == -INFINITY;  // the CPU's zeros, whatever the sum holds
    const float inv_sum = __fdiv_rn(1.0f, row.sum);

    N* out_row = out + r * n;
#pragma unroll
    for (int k = 0; k < kSoftmaxCacheChunks; ++k) {
      const std::int64_t c = lane + k * threads;
      if (c < chunks) {
        const std::int64_t left = n - c * V;
        const int count = left < V ? static_cast<int>(left) : V;
        softmax_write<kXVector>(out_row, cache[k], c, count, row.max, inv_sum, all_masked);
      }
    }
    for (std::int64_t c = lane + kSoftmaxCacheChunks * threads; c < chunks; c += threads) {
      float s[V];
      const int count = load_scores<kXVector, kMaskVector>(s, xr, x_rows.inner, mr, mask_rows.inner, c, n);
      softmax_write<kXVector>(out_row, s, c, count, row.max, inv_sum, all_masked);
    }
  }
}

}  // namespace kernels

template <class T, class M>
void launch_softmax(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const M* mask,
                    const StridedLayout& mask_layout) {
  const std::int64_t n = row_length(x_layout), rows = row_count(x_layout);
  if (rows == 0 || n == 0) return;
  using N = kernels::native_t<T>;
  using NM = kernels::native_t<M>;
  constexpr int V = kernels::kChunk<N>;
  const RowLayout x_rows = row_layout(x_layout);
  const RowLayout mask_rows = mask != nullptr ? row_layout(mask_layout) : RowLayout{};
  const bool x_vector = n % V == 0 && rows_aligned(x_rows, x, sizeof(T), 16) && is_aligned(out, 16);
  // A mask chunk is V elements of M: 16 or 32 bytes, aligned to 16.
  const bool mask_vector = mask != nullptr && n % V == 0 && rows_aligned(mask_rows, mask, sizeof(M), 16);
  const RowLaunch l = row_launch(rows, (n + V - 1) / V, kernels::kSoftmaxCacheChunks);
  with_vector_flag(x_vector, [&](auto xv) {
    with_vector_flag(mask_vector, [&](auto mv) {
      kernels::softmax_kernel<N, NM, decltype(xv)::value, decltype(mv)::value><<<l.grid, l.block, 0, ctx.stream>>>(
          kernels::as_native(out), kernels::as_native(x), x_rows, kernels::as_native(mask), mask_rows, rows, n);
    });
  });
  check_launch("ops::softmax");
}

}  // namespace tessera::cuda
#endif
