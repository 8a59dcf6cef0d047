// Pointwise ops on the GPU at Qwen2.5-VL-7B sizes (hidden 3584, intermediate
// 18944), from one token (decode) to 8192 (prefill): GB/s of bytes read plus
// bytes written per GPU time. These ops are memory-bound, so compare the
// rates with the GPU's HBM bandwidth (H100 SXM: 3.35 TB/s).
#include <tessera/ops/activation.hpp>
#include <tessera/ops/elementwise.hpp>
#include <tessera/ops/embedding.hpp>

#include "cuda/bench_cuda_util.hpp"

namespace tessera::bench {
namespace {

constexpr std::int64_t kHidden = 3584;
constexpr std::int64_t kIntermediate = 18944;

template <class T>
constexpr double bytes_of(std::int64_t elements) {
  return static_cast<double>(elements) * static_cast<double>(sizeof(T));
}

// SwiGLU on the fused gate_up projection [rows, 2I] -> [rows, I]: reads 2I
// and writes I elements per row.
template <class T>
void BM_CudaSwigluFused(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), inter = state.range(1);
  const auto gate_up = random_gpu_tensor<T>({rows, 2 * inter}, -6.0f, 6.0f);
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::swiglu(gate_up).device_ptr().get()); });
  set_rate(state, "GB/s", bytes_of<T>(3 * rows * inter) / 1e9, seconds);
}
BENCHMARK(BM_CudaSwigluFused<bf16>)
    ->ArgsProduct({{1, 16, 128, 1024, 4096, 8192}, {kIntermediate}})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();
BENCHMARK(BM_CudaSwigluFused<float>)
    ->ArgsProduct({{1024}, {kIntermediate}})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();

// SwiGLU on separate gate and up tensors [rows, I] (the binary map).
template <class T>
void BM_CudaSwiglu(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), inter = state.range(1);
  const auto gate = random_gpu_tensor<T>({rows, inter}, -6.0f, 6.0f);
  const auto up = random_gpu_tensor<T>({rows, inter});
  const double seconds =
      time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::swiglu(gate, up).device_ptr().get()); });
  set_rate(state, "GB/s", bytes_of<T>(3 * rows * inter) / 1e9, seconds);
}
BENCHMARK(BM_CudaSwiglu<bf16>)->ArgsProduct({{1024}, {kIntermediate}})->Unit(benchmark::kMicrosecond)->UseManualTime();

// a + b on equal contiguous shapes [rows, hidden]: the vectorised path.
template <class T>
void BM_CudaAdd(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  const auto a = random_gpu_tensor<T>({rows, hidden});
  const auto b = random_gpu_tensor<T>({rows, hidden});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::add(a, b).device_ptr().get()); });
  set_rate(state, "GB/s", bytes_of<T>(3 * rows * hidden) / 1e9, seconds);
}
BENCHMARK(BM_CudaAdd<bf16>)
    ->ArgsProduct({{1, 128, 1024, 8192}, {kHidden}})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();
BENCHMARK(BM_CudaAdd<float>)->ArgsProduct({{8192}, {kHidden}})->Unit(benchmark::kMicrosecond)->UseManualTime();

// x [rows, hidden] + bias [hidden]: the broadcast (strided) path. The bias is
// read once from DRAM and then from cache, so it is not counted.
template <class T>
void BM_CudaAddBroadcast(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  const auto x = random_gpu_tensor<T>({rows, hidden});
  const auto bias = random_gpu_tensor<T>({hidden});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::add(x, bias).device_ptr().get()); });
  set_rate(state, "GB/s", bytes_of<T>(2 * rows * hidden) / 1e9, seconds);
}
BENCHMARK(BM_CudaAddBroadcast<bf16>)
    ->ArgsProduct({{1024, 8192}, {kHidden}})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();

// hidden += residual in place: reads both, writes hidden.
template <class T>
void BM_CudaResidualAdd(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  auto h = random_gpu_tensor<T>({rows, hidden}, -0.01f, 0.01f);
  const auto r = random_gpu_tensor<T>({rows, hidden});
  const double seconds = time_on_gpu(state, [&] { ops::residual_add(h, r); });
  set_rate(state, "GB/s", bytes_of<T>(3 * rows * hidden) / 1e9, seconds);
}
BENCHMARK(BM_CudaResidualAdd<bf16>)
    ->ArgsProduct({{1, 8192}, {kHidden}})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();

// cast float -> bf16 over [rows, hidden]: reads 4 bytes, writes 2 per element.
void BM_CudaCastFloatToBf16(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t rows = state.range(0), hidden = state.range(1);
  const auto x = random_gpu_tensor<float>({rows, hidden});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::cast<bf16>(x).device_ptr().get()); });
  set_rate(state, "GB/s", (bytes_of<float>(rows * hidden) + bytes_of<bf16>(rows * hidden)) / 1e9, seconds);
}
BENCHMARK(BM_CudaCastFloatToBf16)->ArgsProduct({{8192}, {kHidden}})->Unit(benchmark::kMicrosecond)->UseManualTime();

// Embedding gather of `tokens` rows of a [vocab, hidden] bf16 table: reads and
// writes one row per token. The time includes the id check's wait for the
// stream (ops::embedding returns only once the ids are known to be valid).
void BM_CudaEmbedding(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t tokens = state.range(0), hidden = state.range(1), vocab = 152064;
  const auto table = random_gpu_tensor<bf16>({vocab, hidden});
  Tensor<Host, std::int32_t> host_ids({tokens});
  for (std::int64_t i = 0; i < tokens; ++i) host_ids.raw()[i] = static_cast<std::int32_t>((i * 7919) % vocab);
  const auto ids = to<Gpu>(host_ids);
  const double seconds =
      time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::embedding(table, ids).device_ptr().get()); });
  set_rate(state, "GB/s", bytes_of<bf16>(2 * tokens * hidden) / 1e9, seconds);
}
BENCHMARK(BM_CudaEmbedding)->ArgsProduct({{1, 8192}, {kHidden}})->Unit(benchmark::kMicrosecond)->UseManualTime();

}  // namespace
}  // namespace tessera::bench
