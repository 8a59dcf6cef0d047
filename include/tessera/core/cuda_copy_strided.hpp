// tessera/core/cuda_copy_strided.hpp — element copies between strided layouts
// in device memory: the CUDA counterpart of core/copy_strided.hpp, behind
// to<> of a strided device view (core/cuda_transfer.hpp), contiguous() and
// the materialising shape ops (ops/shape.hpp). Plain C++: this declares the
// launcher; its kernel is defined in ops/cuda/shape.cuh and instantiated per
// element size in src/cuda/shape.cu (part of tessera::cuda).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda_launch.hpp"
#include "shape.hpp"

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
