// Transfers through tessera::to<>: host -> device and device -> host through
// the pinned staging buffers (GB/s of payload), and a same-device copy (read
// + write bytes), next to the hardware: compare with the PCIe / NVLink and
// HBM figures in docs/benchmarks.md.
#include "cuda/bench_cuda_util.hpp"

namespace tessera::bench {
namespace {

constexpr std::int64_t kMiB = 1 << 20;

void BM_CudaHostToDevice(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t bytes = state.range(0) * kMiB;
  const auto host = random_tensor<float>({bytes / 4});
  // to<Cuda> returns once the host buffer is consumed; the event timing
  // covers the DMA on the stream, the wall clock covers the host memcpy into
  // pinned staging, so report wall time (what a loader waits for).
  for (auto _ : state) {
    auto d = to<Gpu>(host);
    cuda::synchronize<Gpu>();
    benchmark::DoNotOptimize(d.device_ptr().get());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_CudaHostToDevice)->Arg(1)->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaDeviceToHost(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t bytes = state.range(0) * kMiB;
  const auto device = random_gpu_tensor<float>({bytes / 4});
  for (auto _ : state) {
    auto h = to<Host>(device);
    benchmark::DoNotOptimize(h.raw());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_CudaDeviceToHost)->Arg(1)->Arg(64)->Arg(512)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_CudaSameDeviceCopy(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t bytes = state.range(0) * kMiB;
  const auto src = random_gpu_tensor<float>({bytes / 4});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(contiguous(src).device_ptr().get()); });
  set_rate(state, "GB/s", 2.0 * static_cast<double>(bytes) / 1e9, seconds);
}
BENCHMARK(BM_CudaSameDeviceCopy)->Arg(64)->Arg(512)->Unit(benchmark::kMicrosecond)->UseManualTime();

}  // namespace
}  // namespace tessera::bench
