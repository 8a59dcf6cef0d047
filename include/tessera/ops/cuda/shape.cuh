// tessera/ops/cuda/shape.cuh — the one data-movement kernel behind every
// materialising shape op on CUDA (contiguous, to<> of a strided view,
// concat, slice, transpose, permute): an element-wise copy between two
// strided layouts of the same shape, for any element size.
#pragma once

#include <cstddef>
#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// dst[i] = src[i] for every element of the shared shape, where i is read
// through each side's strides (in elements). E is an unsigned integer of the
// element's size (std::uint16_t for bf16/f16, ...): the copy moves bits.
// Both layouts must have the same shape; dst and src must not overlap.
template <class E>
void launch_copy_strided(const LaunchContext& ctx, E* dst, const StridedLayout& dst_layout, const E* src,
                         const StridedLayout& src_layout);

// Same-sized unsigned integer for an element type, for launch_copy_strided.
template <std::size_t Bytes>
struct bits_of;
template <>
struct bits_of<1> { using type = std::uint8_t; };
template <>
struct bits_of<2> { using type = std::uint16_t; };
template <>
struct bits_of<4> { using type = std::uint32_t; };
template <>
struct bits_of<8> { using type = std::uint64_t; };
template <class T>
using bits_t = typename bits_of<sizeof(T)>::type;

// Copies `shape`-shaped elements of any dtype between two strided layouts of
// device memory on ctx's stream: what contiguous(), to<> of a strided device
// view and the materialising shape ops all run.
template <class T>
void copy_strided(const LaunchContext& ctx, T* dst, const Strides& dst_strides, const T* src,
                  const Strides& src_strides, const Shape& shape) {
  using E = bits_t<T>;
  launch_copy_strided<E>(ctx, reinterpret_cast<E*>(dst), strided_layout(shape, dst_strides),
                         reinterpret_cast<const E*>(src), strided_layout(shape, src_strides));
}

}  // namespace tessera::cuda

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
