// Row-wise ops on the GPU at LLM sizes (Qwen2.5-VL-7B: hidden 3584, 28 heads
// of 128; 8192 for the larger models): RMSNorm, the fused residual add +
// RMSNorm, and rotary embedding, in GB/s of bytes read + written per GPU
// second. A device-to-device copy of the same byte counts (D2DCopy, counted
// as read + write) is the bandwidth these memory-bound kernels are held to.
#include <benchmark/benchmark.h>

#include <tessera/ops/norm.hpp>
#include <tessera/ops/rope.hpp>

#include "cuda/bench_cuda_util.hpp"

namespace {
using namespace tessera;
using bench::Gpu;

constexpr std::int64_t kHeadDim = 128;
constexpr std::int64_t kHeads = 28;

// rows x hidden for the norms (and the matching copies): decode (1 row) up to
// long prefills.
void norm_sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t hidden : {3584, 8192}) {
    for (std::int64_t rows : {1, 16, 128, 1024, 4096, 16384}) b->Args({rows, hidden});
  }
}

// rms_norm over [rows, hidden]: read x and the weight, write out.
template <class T>
void BM_CudaRmsNorm(benchmark::State& state) {
  if (!bench::gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  const auto x = bench::random_gpu_tensor<T>({rows, hidden});
  const auto w = bench::random_gpu_tensor<T>({hidden}, 0.5f, 1.5f);
  const double seconds = bench::time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::rms_norm(x, w, 1e-6)); });
  const auto bytes = static_cast<double>((2 * rows + 1) * hidden * static_cast<std::int64_t>(sizeof(T)));
  bench::set_rate(state, "GB/s", bytes / 1e9, seconds);
}
BENCHMARK(BM_CudaRmsNorm<bf16>)->Apply(norm_sizes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// add_rms_norm: read hidden, residual and the weight; write residual and out.
template <class T>
void BM_CudaAddRmsNorm(benchmark::State& state) {
  if (!bench::gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  const auto h = bench::random_gpu_tensor<T>({rows, hidden}, -0.01f, 0.01f);
  auto residual = bench::random_gpu_tensor<T>({rows, hidden});
  const auto w = bench::random_gpu_tensor<T>({hidden}, 0.5f, 1.5f);
  const double seconds =
      bench::time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::add_rms_norm(h, residual, w, 1e-6)); });
  const auto bytes = static_cast<double>((4 * rows + 1) * hidden * static_cast<std::int64_t>(sizeof(T)));
  bench::set_rate(state, "GB/s", bytes / 1e9, seconds);
}
BENCHMARK(BM_CudaAddRmsNorm<bf16>)->Apply(norm_sizes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// apply_rope on [tokens, 28, 128] with float32 tables [tokens, 128]: read x
// and both tables, write out.
template <class T>
void BM_CudaApplyRope(benchmark::State& state) {
  if (!bench::gpu_present(state)) return;
  const std::int64_t tokens = state.range(0), heads = state.range(1);
  Tensor<Host, std::int64_t> positions({tokens});
  for (std::int64_t i = 0; i < tokens; ++i) positions.raw()[i] = i;
  const auto tables = ops::rope_tables(to<Gpu>(positions), kHeadDim, 1e6);
  const auto x = bench::random_gpu_tensor<T>({tokens, heads, kHeadDim});
  const double seconds =
      bench::time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::apply_rope(x, tables.cos, tables.sin)); });
  const auto bytes = static_cast<double>(2 * tokens * heads * kHeadDim * static_cast<std::int64_t>(sizeof(T)) +
                                         2 * tokens * kHeadDim * static_cast<std::int64_t>(sizeof(float)));
  bench::set_rate(state, "GB/s", bytes / 1e9, seconds);
}
void rope_sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t tokens : {1, 128, 1024, 4096, 16384}) b->Args({tokens, kHeads});
}
BENCHMARK(BM_CudaApplyRope<bf16>)->Apply(rope_sizes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// The reference: cudaMemcpyAsync of rows x cols bf16 elements on Gpu's
// stream, counted as read + write (2 * bytes), at the byte counts of the
// benchmarks above (the norms' x, and rope's x at [tokens, 28 * 128]).
void BM_D2DCopy(benchmark::State& state) {
  if (!bench::gpu_present(state)) return;
  const std::int64_t rows = state.range(0), cols = state.range(1);
  const auto src = bench::random_gpu_tensor<bf16>({rows, cols});
  Tensor<Gpu, bf16> dst({rows, cols});
  const std::size_t bytes = src.bytes();
  const cudaStream_t stream = cuda::launch_context<Gpu>().stream;
  const double seconds = bench::time_on_gpu(state, [&] {
    cuda::check(
        cudaMemcpyAsync(dst.device_ptr().get(), src.device_ptr().get(), bytes, cudaMemcpyDeviceToDevice, stream),
        "cudaMemcpyAsync");
  });
  bench::set_rate(state, "GB/s", 2.0 * static_cast<double>(bytes) / 1e9, seconds);
}
void copy_sizes(benchmark::internal::Benchmark* b) {
  norm_sizes(b);
  for (std::int64_t tokens : {1, 128, 1024, 4096, 16384}) b->Args({tokens, kHeads * kHeadDim});
}
BENCHMARK(BM_D2DCopy)->Name("D2DCopy")->Apply(copy_sizes)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
