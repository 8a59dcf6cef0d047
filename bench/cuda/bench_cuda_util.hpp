// Shared helpers for the GPU benchmarks: GPU time from CUDA events around the
// enqueued work (not host wall time), random device tensors, and a skip
// when no GPU is present. Rates are reported as counters (TFLOP/s, GB/s).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <tessera/core/cuda.hpp>

#include "bench_util.hpp"

namespace tessera::bench {

using Gpu = Cuda<0>;

// False (and the benchmark marked skipped) when this machine has no GPU.
inline bool gpu_present(benchmark::State& state) {
  if (cuda::device_count() > 0) return true;
  state.SkipWithError("no CUDA device on this machine");
  return false;
}

template <class T>
Tensor<Gpu, T> random_gpu_tensor(Shape shape, float lo = -1.0f, float hi = 1.0f) {
  return to<Gpu>(random_tensor<T>(shape, lo, hi));
}

// Runs `enqueue` (which launches work on Gpu's stream) once to warm up, then
// once per iteration between two events; the iteration time is the GPU time
// between them. Register the benchmark with ->UseManualTime(). Returns the
// mean GPU seconds per iteration, for set_rate.
template <class Fn>
double time_on_gpu(benchmark::State& state, Fn&& enqueue) {
  const cuda::StreamHandle stream = cuda::launch_context<Gpu>().stream;
  enqueue();
  cuda::synchronize<Gpu>();
  cudaEvent_t start = nullptr, stop = nullptr;
  cuda::check(cudaEventCreate(&start), "cudaEventCreate");
  cuda::check(cudaEventCreate(&stop), "cudaEventCreate");
  double total = 0.0;
  std::int64_t iterations = 0;
  for (auto _ : state) {
    cuda::check(cudaEventRecord(start, stream), "cudaEventRecord");
    enqueue();
    cuda::check(cudaEventRecord(stop, stream), "cudaEventRecord");
    cuda::check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    cuda::check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
    total += static_cast<double>(ms) * 1e-3;
    ++iterations;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return iterations > 0 ? total / static_cast<double>(iterations) : 0.0;
}

// A rate counter computed from GPU time, e.g.
//   set_rate(state, "TFLOP/s", flops / 1e12, seconds);
inline void set_rate(benchmark::State& state, const char* name, double per_iteration, double seconds) {
  state.counters[name] = seconds > 0.0 ? per_iteration / seconds : 0.0;
}

}  // namespace tessera::bench
