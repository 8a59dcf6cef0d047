// tessera/ops/cuda/rope.cuh — CUDA launchers and kernels of ops/rope.hpp:
// the rotary cos/sin tables and the rotate-half application.
#pragma once

#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// cos, sin: contiguous float [seq, rot_dim] tables for positions[s *
// position_stride] (I: int32 or int64), with the CPU's float32 recipe;
// theta is already rounded to float, as the CPU rounds it.
template <class I>
void launch_rope_tables(const LaunchContext& ctx, float* cos, float* sin, const I* positions,
                        std::int64_t position_stride, std::int64_t seq, std::int64_t rot_dim, float theta);

// out [S, H, Dh] (contiguous) = x rotated by the tables cos, sin [S, rot],
// every operand given by its full layout (any strides, including 0).
// C (the table type) is float, bf16 or f16.
template <class T, class C>
void launch_apply_rope(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const C* cos,
                       const StridedLayout& cos_layout, const C* sin, const StridedLayout& sin_layout);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include "common.cuh"
#include "rows.cuh"

namespace tessera::cuda {
namespace kernels {

// One thread per (position s, frequency i < rot_dim / 2), grid-stride; it
// writes cos and sin at columns i and i + rot_dim / 2. The arithmetic is the
// CPU's, step by step and correctly rounded (explicit intrinsics, so nothing
// is contracted or approximated):
//   exponent = float(2i) / float(rot_dim)          float division
//   inv_freq = 1 / float(pow(double(theta), double(exponent)))
//   freq     = float(position) * inv_freq          one float multiply
//   cos, sin = float(cos/sin(double(freq)))
template <class I>
__global__ void rope_tables_kernel(float* __restrict__ cos, float* __restrict__ sin, const I* __restrict__ positions,
                                   std::int64_t position_stride, std::int64_t seq, std::int64_t rot_dim,
                                   float theta) {
  const std::int64_t half = rot_dim / 2, total = seq * half;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const std::int64_t s = idx / half, i = idx - s * half;
    const float exponent = __fdiv_rn(static_cast<float>(2 * i), static_cast<float>(rot_dim));
    const float power = __double2float_rn(pow(static_cast<double>(theta), static_cast<double>(exponent)));
    const float inv_freq = __fdiv_rn(1.0f, power);
    const float freq = __fmul_rn(static_cast<float>(positions[s * position_stride]), inv_freq);
    double sd = 0.0, cd = 0.0;
    sincos(static_cast<double>(freq), &sd, &cd);
    const float c = __double2float_rn(cd), sn = __double2float_rn(sd);
    float* crow = cos + s * rot_dim;
    float* srow = sin + s * rot_dim;
    crow[i] = c;
    crow[i + half] = c;
    srow[i] = sn;
    srow[i + half] = sn;
  }
}

// Rotary application. Per row (s, h) of x the work is cut into items of V =
// 16 / sizeof(T) elements: ceil(half / V) pair items, each rotating elements
// [i, i + V) together with their partners [i + half, i + half + V), then
// ceil((Dh - rot) / V) copy items for the pass-through tail [rot, Dh).
// Threads: blockDim.x threads take the items of one row (item k, k +
// blockDim.x, ...), blockDim.y rows per block, rows advance by gridDim.x *
// blockDim.y. x_vector: x rows contiguous and aligned, half and Dh multiples
// of V (then every item is one 16-byte access of x and of out);
// table_vector: the same for the cos/sin rows.
struct RopeShape {
  std::int64_t heads, dh, half, rot;
  std::int64_t pair_items, items;
};

template <bool kVector, int V, class N, class NC>
__device__ inline void rope_pair_item(N* out_row, const N* x_row, std::int64_t x_stride, const NC* cos_row,
                                      std::int64_t cos_stride, const NC* sin_row, std::int64_t sin_stride,
                                      std::int64_t first, std::int64_t half) {
  // Chunks are addressed from the item's first element: chunk 0 of a row
  // that starts there, clipped to the half.
  const std::int64_t limit = half - first;
  N x1[V], x2[V];
  const int count = load_chunk<kVector>(x1, x_row + first * x_stride, x_stride, 0, limit);
  (void)load_chunk<kVector>(x2, x_row + (first + half) * x_stride, x_stride, 0, limit);
  NC c1[V], c2[V], s1[V], s2[V];
  (void)load_chunk<kVector>(c1, cos_row + first * cos_stride, cos_stride, 0, limit);
  (void)load_chunk<kVector>(c2, cos_row + (first + half) * cos_stride, cos_stride, 0, limit);
  (void)load_chunk<kVector>(s1, sin_row + first * sin_stride, sin_stride, 0, limit);
  (void)load_chunk<kVector>(s2, sin_row + (first + half) * sin_stride, sin_stride, 0, limit);
  N o1[V], o2[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float a = to_float(x1[j]), b = to_float(x2[j]);
    o1[j] = from_float<N>(__fsub_rn(__fmul_rn(a, to_float(c1[j])), __fmul_rn(b, to_float(s1[j]))));
    o2[j] = from_float<N>(__fadd_rn(__fmul_rn(b, to_float(c2[j])), __fmul_rn(a, to_float(s2[j]))));
  }
  store_chunk<kVector>(out_row + first, o1, 0, count);
  store_chunk<kVector>(out_row + first + half, o2, 0, count);
}

template <class N, class NC, bool kVector>
__global__ void __launch_bounds__(256)
    apply_rope_kernel(N* __restrict__ out, const N* __restrict__ x, StridedLayout x_layout,
                      const NC* __restrict__ cos, StridedLayout cos_layout, const NC* __restrict__ sin,
                      StridedLayout sin_layout, RopeShape shape, std::int64_t rows) {
  constexpr int V = kChunk<N>;
  const std::int64_t xs0 = x_layout.strides[0], xs1 = x_layout.strides[1], xs2 = x_layout.strides[2];
  const std::int64_t cs0 = cos_layout.strides[0], cs1 = cos_layout.strides[1];
  const std::int64_t ss0 = sin_layout.strides[0], ss1 = sin_layout.strides[1];
  for (std::int64_t r = first_row(); r < rows; r += row_step()) {
    const std::int64_t s = r / shape.heads, h = r - s * shape.heads;
    const N* x_row = x + s * xs0 + h * xs1;
    N* out_row = out + r * shape.dh;
    for (std::int64_t k = threadIdx.x; k < shape.items; k += blockDim.x) {
      if (k < shape.pair_items) {
        rope_pair_item<kVector, V>(out_row, x_row, xs2, cos + s * cs0, cs1, sin + s * ss0, ss1, k * V, shape.half);
      } else {
        // Pass-through tail: elements [first, first + V) of [rot, Dh), copied bit for bit.
        const std::int64_t first = shape.rot + (k - shape.pair_items) * V;
        N v[V];
        const int count = load_chunk<kVector>(v, x_row + first * xs2, xs2, 0, shape.dh - first);
        store_chunk<kVector>(out_row + first, v, 0, count);
      }
    }
  }
}

}  // namespace kernels

template <class I>
void launch_rope_tables(const LaunchContext& ctx, float* cos, float* sin, const I* positions,
                        std::int64_t position_stride, std::int64_t seq, std::int64_t rot_dim, float theta) {
  const std::int64_t total = seq * (rot_dim / 2);
  if (total == 0) return;
  constexpr int threads = 256;
  kernels::rope_tables_kernel<I><<<kernels::grid_blocks(total, threads), threads, 0, ctx.stream>>>(
      cos, sin, positions, position_stride, seq, rot_dim, theta);
  check_launch("ops::rope_tables");
}

template <class T, class C>
void launch_apply_rope(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, const C* cos,
                       const StridedLayout& cos_layout, const C* sin, const StridedLayout& sin_layout) {
  using N = kernels::native_t<T>;
  using NC = kernels::native_t<C>;
  constexpr int V = kernels::kChunk<N>;
  const std::int64_t seq = x_layout.shape[0], heads = x_layout.shape[1], dh = x_layout.shape[2];
  const std::int64_t rows = seq * heads;
  if (rows == 0 || dh == 0) return;
  kernels::RopeShape shape;
  shape.heads = heads;
  shape.dh = dh;
  shape.rot = cos_layout.shape[1];
  shape.half = shape.rot / 2;
  shape.pair_items = (shape.half + V - 1) / V;
  shape.items = shape.pair_items + (dh - shape.rot + V - 1) / V;

  // The rows (s, h) of x, for the alignment check.
  const RowLayout x_rows = row_layout(x_layout);
  // A table chunk is V elements of C: 8, 16 or 32 bytes, aligned to min(16, that).
  constexpr std::size_t table_alignment = V * sizeof(C) < 16 ? V * sizeof(C) : 16;
  const bool vector = shape.half % V == 0 && dh % V == 0 && rows_aligned(x_rows, x, sizeof(T), 16) &&
                      is_aligned(out, 16) && rows_aligned(row_layout(cos_layout), cos, sizeof(C), table_alignment) &&
                      rows_aligned(row_layout(sin_layout), sin, sizeof(C), table_alignment);

  // Items of a row across x, rows down y, at most 256 threads a block.
  const auto tx = static_cast<unsigned>(std::min<std::int64_t>(shape.items, 256));
  const unsigned ty = std::max(1u, 256u / tx);
  const dim3 block(tx, ty);
  const unsigned grid = kernels::grid_blocks(rows, static_cast<int>(ty));
  with_vector_flag(vector, [&](auto vec) {
    kernels::apply_rope_kernel<N, NC, decltype(vec)::value><<<grid, block, 0, ctx.stream>>>(
        kernels::as_native(out), kernels::as_native(x), x_layout, kernels::as_native(cos), cos_layout,
        kernels::as_native(sin), sin_layout, shape, rows);
  });
  check_launch("ops::apply_rope");
}

}  // namespace tessera::cuda
#endif
