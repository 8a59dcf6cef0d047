// tessera/core/cuda_arch.hpp — what a GPU's compute capability allows, as
// plain C++ (no CUDA headers), so the rules are testable in every build:
// core/cuda.hpp fills a GpuInfo from the CUDA runtime, a program asks
// dtype_unsupported() before it runs a model in a given element type.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "error.hpp"

namespace tessera::cuda {

// One logical device as the CUDA runtime describes it.
struct GpuInfo {
  std::string device;          // "Cuda<0>"
  std::string name;            // "Tesla T4"
  int physical = 0;            // the CUDA device index it maps to
  int compute_capability = 0;  // major * 10 + minor, e.g. 75
};

// bf16 tensor cores (and cuBLAS's bf16 GEMMs) start at compute capability
// 8.0 (A100); sm_75 (T4) and sm_70 (V100) have f16 tensor cores only.
inline constexpr int kBf16MinComputeCapability = 80;

// "sm_75" for 75.
inline std::string sm_name(int compute_capability) {
  return tessera::detail::concat("sm_", compute_capability);
}

// Why elements of `dtype` (dtype_name<T>(): "bf16", "f16", "float32") should
// not run on `gpu`, as one sentence naming the GPU and the element types
// that do run there; nothing when they can. Only bf16 below 8.0 is refused:
// its matrix multiplies would have no tensor cores, and cuBLAS may reject
// them outright, so a model would fail mid-run or crawl.
inline std::optional<std::string> dtype_unsupported(std::string_view dtype, const GpuInfo& gpu) {
  if (dtype != "bf16" || gpu.compute_capability >= kBf16MinComputeCapability) return std::nullopt;
  return tessera::detail::concat(gpu.device, " is ", gpu.name, " (physical GPU ", gpu.physical, ", ",
                                 sm_name(gpu.compute_capability),
                                 "), which has no bf16 tensor cores (they need compute capability 8.0, ",
                                 sm_name(kBf16MinComputeCapability),
                                 ", or newer), so bf16 models do not run on it: use f16 or float32 there");
}

}  // namespace tessera::cuda
