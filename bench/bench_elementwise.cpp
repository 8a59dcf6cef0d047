// Elementwise ops: bytes moved per second (read a, read b, write out).
// Wall-clock time: large inputs run on all OpenMP threads.
#include <benchmark/benchmark.h>

#include <tessera/ops/elementwise.hpp>

#include "bench_util.hpp"

namespace {
using namespace tessera;

template <class T>
void BM_Add(benchmark::State& state) {
  const auto n = state.range(0);
  const auto a = bench::random_tensor<T>({n});
  const auto b = bench::random_tensor<T>({n});
  for (auto _ : state) benchmark::DoNotOptimize(ops::add(a, b));
  state.SetBytesProcessed(state.iterations() * 3 * n * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_Add<float>)->Arg(1 << 16)->Arg(1 << 22)->UseRealTime();
BENCHMARK(BM_Add<bf16>)->Arg(1 << 16)->Arg(1 << 22)->UseRealTime();

void BM_ResidualAdd(benchmark::State& state) {
  const auto n = state.range(0);
  auto hidden = bench::random_tensor<bf16>({n});
  const auto residual = bench::random_tensor<bf16>({n});
  for (auto _ : state) {
    ops::residual_add(hidden, residual);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 3 * n * 2);
}
BENCHMARK(BM_ResidualAdd)->Arg(1 << 22)->UseRealTime();
}  // namespace
