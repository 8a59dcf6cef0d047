// tessera/core/cuda_error.hpp — CUDA and cuBLAS status codes as tessera
// errors. Shared by the runtime (any C++ compiler) and the kernels (nvcc).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string_view>

#include "error.hpp"

namespace tessera::cuda {

// Throws DeviceError "<what> on physical CUDA device <n>: <cuda message>".
// cudaErrorMemoryAllocation is turned into OutOfMemory by the allocator,
// which knows the ledger; everywhere else it is a DeviceError like any other.
inline void check(cudaError_t status, std::string_view what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky launch error so the next call is not blamed
  int device = -1;
  (void)cudaGetDevice(&device);
  throw DeviceError(tessera::detail::concat(what, " failed on physical CUDA device ", device, ": ",
                                   cudaGetErrorName(status), " (", cudaGetErrorString(status), ")"));
}

inline void check(cublasStatus_t status, std::string_view what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  int device = -1;
  (void)cudaGetDevice(&device);
  throw DeviceError(tessera::detail::concat(what, " failed on physical CUDA device ", device, ": cuBLAS status ",
                                   static_cast<int>(status)));
}

// After a <<<...>>> launch: a bad configuration or an earlier asynchronous
// fault surfaces here, named after the op that launched.
inline void check_launch(std::string_view op) { check(cudaGetLastError(), op); }

}  // namespace tessera::cuda
