// tessera/ops/cuda/patch_embed.cuh — the im2col half of ops::patch_embed2d /
// patch_embed3d on CUDA: every non-overlapping kernel-sized patch of the input
// [B, C, S_0, ..., S_{R-1}] (any strides) becomes one row of a contiguous
// [B * patches, C * k_0 * ... * k_{R-1}] matrix, patches in row-major grid
// order and each flattened in (C, k_0, ..., k_{R-1}) order, exactly as the
// CPU's cpu_im2col. The GEMM half is ops::linear on the device.
#pragma once

#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// The input's geometry for im2col, spatial axes outermost first (R = 2:
// height, width; R = 3: time, height, width; unused entries are ignored).
struct Im2colLayout {
  int spatial_rank = 0;                          // R, 1..3
  std::int64_t batch = 0, channels = 0;          // B, C
  std::int64_t kernel[3] = {};                   // k_s
  std::int64_t grid[3] = {};                     // S_s / k_s: patches along axis s
  std::int64_t batch_stride = 0, channel_stride = 0;  // input element strides of B and C
  std::int64_t spatial_stride[3] = {};           // input element stride of spatial axis s
};

// columns [B * patches, C * prod(k)] (contiguous) from input read through
// `layout`. Bits are copied, not converted.
template <class T>
void launch_im2col(const LaunchContext& ctx, T* columns, const T* input, const Im2colLayout& layout);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <type_traits>

#include "common.cuh"
#include "elementwise.cuh"

namespace tessera::cuda {

namespace kernels::pointwise {

// Input offset of column element i. The column index i % row_len is
// (channel, k_0, ..., k_{R-1}) and the row index i / row_len is
// (batch, g_0, ..., g_{R-1}), both row-major; spatial axis s sits at
// g_s * k_s + kk_s. Peeled innermost first, so no row_len division.
__host__ __device__ inline std::int64_t im2col_source_offset(const Im2colLayout& l, std::int64_t i) {
  std::int64_t offset = 0;
TESSERA_POINTWISE_UNROLL
  for (int s = 2; s >= 0; --s) {  // position inside the patch, innermost axis first
    if (s < l.spatial_rank) offset += div_mod(i, l.kernel[s]) * l.spatial_stride[s];
  }
  offset += div_mod(i, l.channels) * l.channel_stride;
TESSERA_POINTWISE_UNROLL
  for (int s = 2; s >= 0; --s) {  // the patch's position in the grid
    if (s < l.spatial_rank) offset += div_mod(i, l.grid[s]) * l.kernel[s] * l.spatial_stride[s];
  }
  return offset + i * l.batch_stride;  // what is left of the row index is the batch
}

// Thread per column element i (grid-stride over all of them), written
// contiguously, read from im2col_source_offset(i). Consecutive threads read
// consecutive elements along the innermost kernel axis (runs of k_{R-1}).
template <class E>
__global__ void __launch_bounds__(kBlock)
    im2col_kernel(E* __restrict__ columns, const E* __restrict__ input, Im2colLayout l, std::int64_t total) {
  for (std::int64_t i = thread_index(); i < total; i += grid_stride()) columns[i] = input[im2col_source_offset(l, i)];
}

}  // namespace kernels::pointwise

template <class T>
void launch_im2col(const LaunchContext& ctx, T* columns, const T* input, const Im2colLayout& layout) {
  std::int64_t total = layout.batch * layout.channels;
  for (int s = 0; s < layout.spatial_rank; ++s) total *= layout.kernel[s] * layout.grid[s];
  if (total == 0) return;
  using E = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>;
  static_assert(sizeof(E) == sizeof(T));
  kernels::pointwise::im2col_kernel<<<pointwise::blocks_for(ctx, total), pointwise::kBlock, 0, ctx.stream>>>(
      reinterpret_cast<E*>(columns), reinterpret_cast<const E*>(input), layout, total);
  check_launch("ops::patch_embed (im2col)");
}

}  // namespace tessera::cuda
#endif
