// tessera/core/cuda_launch.hpp — what the CUDA runtime hands a launcher:
// the logical device's stream, cuBLASLt handle and workspace (LaunchContext)
// and the POD shape/strides kernels take (StridedLayout). Core runtime types:
// core/cuda.hpp keeps one LaunchContext per logical device, and every op
// launcher (ops/cuda/*.cuh, which reach this file through ops/cuda/launch.hpp)
// takes one. Plain C++ (no CUDA headers), so every op header can declare its
// launchers whether or not this build has CUDA: the stream and cuBLASLt
// handle are the same opaque pointer types CUDA itself declares. Launchers
// are never templated on the device: the op header resolves Cuda<N> to this
// context and sets the physical device (DeviceGuard) before calling one.
#pragma once

#include <cstddef>
#include <cstdint>

#include "shape.hpp"

struct CUstream_st;      // cudaStream_t is CUstream_st*
struct cublasLtContext;  // cublasLtHandle_t is cublasLtContext*

namespace tessera::cuda {

using StreamHandle = CUstream_st*;
using BlasLtHandle = cublasLtContext*;

// Everything a launcher may use of its logical device. The workspace is the
// device's cuBLASLt scratch; it is only ever used on `stream`.
struct LaunchContext {
  StreamHandle stream = nullptr;
  BlasLtHandle blas_lt = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int physical_device = 0;
  int sm_count = 0;
  int compute_capability = 0;  // major * 10 + minor, e.g. 90 for an H100
  // Bytes of shared memory one block may opt in to (227 KiB on an H100,
  // 64 KiB on a T4); kernels with large tiles size them to fit.
  std::size_t max_shared_memory_per_block = 0;
};

// The shape and element strides of a (possibly strided or broadcast) operand,
// passed to kernels by value. Rank <= 8, as tessera::Shape.
struct StridedLayout {
  int rank = 0;
  std::int64_t shape[8] = {};
  std::int64_t strides[8] = {};
};

// A tessera shape and element strides as the POD the kernels take.
inline StridedLayout strided_layout(const Shape& shape, const Strides& strides) {
  StridedLayout l;
  l.rank = shape.rank();
  for (int d = 0; d < shape.rank(); ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[static_cast<std::size_t>(d)];
  }
  return l;
}

}  // namespace tessera::cuda
