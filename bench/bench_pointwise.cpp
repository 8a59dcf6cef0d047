// Row-wise and pointwise ops at LLM sizes (Qwen2.5-VL-7B: hidden 3584,
// intermediate 18944, 28 heads of 128): bytes moved per second. The ops run
// OpenMP threads, so timings are wall-clock (UseRealTime).
#include <benchmark/benchmark.h>

#include <tessera/ops/activation.hpp>
#include <tessera/ops/norm.hpp>
#include <tessera/ops/rope.hpp>

#include "bench_util.hpp"

namespace {
using namespace tessera;

constexpr std::int64_t kTokens = 512;

// rms_norm over [tokens, hidden]: read x, write out (the weight stays in cache).
template <class T>
void BM_RmsNorm(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), hidden = state.range(1);
  const auto x = bench::random_tensor<T>({tokens, hidden});
  const auto w = bench::random_tensor<T>({hidden}, 0.5f, 1.5f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::rms_norm(x, w, 1e-6));
  state.SetBytesProcessed(state.iterations() * 2 * tokens * hidden * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_RmsNorm<float>)->Args({1, 3584})->Args({kTokens, 3584})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_RmsNorm<bf16>)->Args({1, 3584})->Args({kTokens, 3584})->Unit(benchmark::kMicrosecond)->UseRealTime();

// add_rms_norm: read hidden and residual, write residual and out.
template <class T>
void BM_AddRmsNorm(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), hidden = state.range(1);
  const auto h = bench::random_tensor<T>({tokens, hidden}, -0.01f, 0.01f);
  auto residual = bench::random_tensor<T>({tokens, hidden});
  const auto w = bench::random_tensor<T>({hidden}, 0.5f, 1.5f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::add_rms_norm(h, residual, w, 1e-6));
  state.SetBytesProcessed(state.iterations() * 4 * tokens * hidden * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_AddRmsNorm<bf16>)->Args({kTokens, 3584})->Unit(benchmark::kMicrosecond)->UseRealTime();

// silu over [tokens, intermediate]: read x, write out.
template <class T>
void BM_Silu(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), inter = state.range(1);
  const auto x = bench::random_tensor<T>({tokens, inter}, -6.0f, 6.0f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::silu(x));
  state.SetBytesProcessed(state.iterations() * 2 * tokens * inter * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_Silu<float>)->Args({kTokens, 18944})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Silu<bf16>)->Args({kTokens, 18944})->Unit(benchmark::kMicrosecond)->UseRealTime();

// swiglu(gate, up) over [tokens, intermediate]: read gate and up, write out.
template <class T>
void BM_Swiglu(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), inter = state.range(1);
  const auto gate = bench::random_tensor<T>({tokens, inter}, -6.0f, 6.0f);
  const auto up = bench::random_tensor<T>({tokens, inter});
  for (auto _ : state) benchmark::DoNotOptimize(ops::swiglu(gate, up));
  state.SetBytesProcessed(state.iterations() * 3 * tokens * inter * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_Swiglu<float>)->Args({kTokens, 18944})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_Swiglu<bf16>)->Args({kTokens, 18944})->Unit(benchmark::kMicrosecond)->UseRealTime();

// swiglu on a fused [tokens, 2 * intermediate] gate_up projection.
template <class T>
void BM_SwigluFused(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), inter = state.range(1);
  const auto gate_up = bench::random_tensor<T>({tokens, 2 * inter}, -6.0f, 6.0f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::swiglu(gate_up));
  state.SetBytesProcessed(state.iterations() * 3 * tokens * inter * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_SwigluFused<bf16>)->Args({kTokens, 18944})->Unit(benchmark::kMicrosecond)->UseRealTime();

// apply_rope on [tokens, heads, head_dim] with float32 tables: read x and the
// two tables, write out.
template <class T>
void BM_ApplyRope(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), heads = state.range(1), dh = state.range(2);
  Tensor<Host, std::int64_t> positions({tokens});
  for (std::int64_t i = 0; i < tokens; ++i) positions.raw()[i] = i;
  const auto tables = ops::rope_tables(positions, dh, 1000000.0);
  const auto x = bench::random_tensor<T>({tokens, heads, dh});
  for (auto _ : state) benchmark::DoNotOptimize(ops::apply_rope(x, tables.cos, tables.sin));
  state.SetBytesProcessed(state.iterations() * (2 * tokens * heads * dh * static_cast<std::int64_t>(sizeof(T)) +
                                                2 * tokens * dh * static_cast<std::int64_t>(sizeof(float))));
}
BENCHMARK(BM_ApplyRope<float>)->Args({kTokens, 28, 128})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_ApplyRope<bf16>)
    ->Args({kTokens, 28, 128})
    ->Args({1, 28, 128})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// rope_tables for a prefill of tokens positions (cos and sin written).
void BM_RopeTables(benchmark::State& state) {
  const std::int64_t tokens = state.range(0), dh = state.range(1);
  Tensor<Host, std::int64_t> positions({tokens});
  for (std::int64_t i = 0; i < tokens; ++i) positions.raw()[i] = i;
  for (auto _ : state) benchmark::DoNotOptimize(ops::rope_tables(positions, dh, 1000000.0));
  state.SetBytesProcessed(state.iterations() * 2 * tokens * dh * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_RopeTables)->Args({kTokens, 128})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
