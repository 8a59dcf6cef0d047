// tessera/ops/cuda/shape.cuh — the one data-movement kernel behind every
// materialising shape op on CUDA (contiguous, to<> of a strided view,
// concat, slice, transpose, permute): an element-wise copy between two
// strided layouts of the same shape, for any element size. The launcher
// launch_copy_strided and its host-side entry copy_strided are declared in
// core/cuda_copy_strided.hpp (the transfers in core/ use them too); the
// kernel and the launcher's definition are here, instantiated per element
// size in src/cuda/shape.cu.
#pragma once

#include "../../core/cuda_copy_strided.hpp"
#include "launch.hpp"

#if defined(__CUDACC__)
#include "common.cuh"

namespace tessera::cuda {
namespace kernels {

// One thread per element in a grid-stride loop over the row-major linear
// index i. The destination is almost always contiguous (a new tensor or a
// contiguous slab of one), so its offset is i itself and only the source
// offset is computed from the strides. Reads of transposed sources are
// uncoalesced; shape ops on the decode path copy small tensors, and the
// prefill layouts the models use keep the last dimension unit-stride.
template <class E, bool DstContiguous>
__global__ void copy_strided_kernel(E* __restrict__ dst, StridedLayout dst_layout, const E* __restrict__ src,
                                    StridedLayout src_layout, std::int64_t n) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const std::int64_t d = DstContiguous ? i : strided_offset(dst_layout, i);
    dst[d] = src[strided_offset(src_layout, i)];
  }
}

inline bool layout_is_contiguous(const StridedLayout& l) {
  std::int64_t expected = 1;
  for (int d = l.rank - 1; d >= 0; --d) {
    if (l.shape[d] != 1 && l.strides[d] != expected) return false;
    expected *= l.shape[d];
  }
  return true;
}

}  // namespace kernels

template <class E>
void launch_copy_strided(const LaunchContext& ctx, E* dst, const StridedLayout& dst_layout, const E* src,
                         const StridedLayout& src_layout) {
  std::int64_t n = 1;
  for (int d = 0; d < dst_layout.rank; ++d) n *= dst_layout.shape[d];
  if (n == 0) return;
  const bool dst_contiguous = kernels::layout_is_contiguous(dst_layout);
  if (dst_contiguous && kernels::layout_is_contiguous(src_layout)) {
    check(cudaMemcpyAsync(dst, src, static_cast<std::size_t>(n) * sizeof(E), cudaMemcpyDeviceToDevice, ctx.stream),
          "copy_strided (contiguous)");
    return;
  }
  constexpr int kThreads = 256;
  const std::int64_t max_blocks = static_cast<std::int64_t>(ctx.sm_count > 0 ? ctx.sm_count : 1) * 32;
  const unsigned blocks = kernels::grid_blocks(n, kThreads, max_blocks);
  if (dst_contiguous) {
    kernels::copy_strided_kernel<E, true><<<blocks, kThreads, 0, ctx.stream>>>(dst, dst_layout, src, src_layout, n);
  } else {
    kernels::copy_strided_kernel<E, false><<<blocks, kThreads, 0, ctx.stream>>>(dst, dst_layout, src, src_layout, n);
  }
  check_launch("copy_strided");
}

}  // namespace tessera::cuda
#endif
