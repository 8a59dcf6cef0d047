// tessera/ops/cuda/common.cuh — device-side helpers shared by the kernels:
// tessera's bf16/f16 viewed as CUDA's types, float loads and stores, grid
// sizing. nvcc only (the kernel headers include it inside `#if __CUDACC__`).
#pragma once

#if !defined(__CUDACC__)
#error "tessera/ops/cuda/common.cuh is CUDA C++: include it from a .cu translation unit"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../../core/cuda_error.hpp"
#include "../../core/dtype.hpp"
#include "launch.hpp"

namespace tessera::cuda::kernels {

// CUDA's own type for a tessera element type (same size and bits).
template <class T>
struct native { using type = T; };
template <>
struct native<bf16> { using type = __nv_bfloat16; };
template <>
struct native<f16> { using type = __half; };
template <class T>
using native_t = typename native<T>::type;

template <class T>
__host__ __device__ inline native_t<T>* as_native(T* p) { return reinterpret_cast<native_t<T>*>(p); }
template <class T>
__host__ __device__ inline const native_t<T>* as_native(const T* p) { return reinterpret_cast<const native_t<T>*>(p); }

// Element <-> float in registers (round to nearest even on the way back, as
// tessera::convert does on the host).
__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(std::int32_t v) { return static_cast<float>(v); }
__device__ inline float to_float(std::int64_t v) { return static_cast<float>(v); }

template <class N>
__device__ inline N from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }

// Blocks for n items at `per_block` items per block, capped where a
// grid-stride loop takes over.
inline unsigned grid_blocks(std::int64_t n, int per_block, std::int64_t cap = 65535LL * 32) {
  const std::int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, cap));
}

inline cudaStream_t stream_of(const LaunchContext& ctx) { return ctx.stream; }

// Row-major offset of linear element i in a strided layout.
__device__ inline std::int64_t strided_offset(const StridedLayout& l, std::int64_t i) {
  std::int64_t offset = 0;
  for (int d = l.rank - 1; d >= 0; --d) {
    const std::int64_t size = l.shape[d];
    offset += (i % size) * l.strides[d];
    i /= size;
  }
  return offset;
}

}  // namespace tessera::cuda::kernels
