// Reference attention on the CPU: FLOP/s of causal prefill (GQA 16:2) and of
// one decode step against a 2048-token cache. FLOPs count the two matmuls,
// 4 * Sq * Skv * Hq * Dh, halved for causal prefill (half the scores are masked).
// Wall-clock time (UseRealTime): the op runs on all OpenMP threads, and the
// default CPU time would only count the calling thread.
#include <benchmark/benchmark.h>

#include <tessera/ops/attention.hpp>

#include "bench_util.hpp"

namespace {
using namespace tessera;

constexpr std::int64_t kQueryHeads = 16;
constexpr std::int64_t kKvHeads = 2;

void set_flops(benchmark::State& state, double flops_per_call) {
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_call * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// Args: sequence length S, head dim Dh.
template <class T>
void BM_AttentionPrefillCausal(benchmark::State& state) {
  const std::int64_t s = state.range(0), dh = state.range(1);
  const auto q = bench::random_tensor<T>({s, kQueryHeads, dh});
  const auto k = bench::random_tensor<T>({s, kKvHeads, dh});
  const auto v = bench::random_tensor<T>({s, kKvHeads, dh});
  const ops::AttentionOptions opt{.mask = ops::MaskKind::Causal};
  for (auto _ : state) benchmark::DoNotOptimize(ops::attention(q, k, v, opt));
  set_flops(state, 4.0 * static_cast<double>(s * s * kQueryHeads * dh) / 2.0);
}
BENCHMARK(BM_AttentionPrefillCausal<float>)
    ->ArgsProduct({{256, 1024}, {64, 128}})
    ->ArgNames({"S", "Dh"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_AttentionPrefillCausal<bf16>)
    ->ArgsProduct({{256, 1024}, {64, 128}})
    ->ArgNames({"S", "Dh"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// One new token against a cache of Skv tokens (Sq = 1 sees every key).
// Args: cache length Skv, head dim Dh.
template <class T>
void BM_AttentionDecode(benchmark::State& state) {
  const std::int64_t skv = state.range(0), dh = state.range(1);
  const auto q = bench::random_tensor<T>({1, kQueryHeads, dh});
  const auto k = bench::random_tensor<T>({skv, kKvHeads, dh});
  const auto v = bench::random_tensor<T>({skv, kKvHeads, dh});
  const ops::AttentionOptions opt{.mask = ops::MaskKind::Causal};
  for (auto _ : state) benchmark::DoNotOptimize(ops::attention(q, k, v, opt));
  set_flops(state, 4.0 * static_cast<double>(skv * kQueryHeads * dh));
}
BENCHMARK(BM_AttentionDecode<float>)->Args({2048, 128})->ArgNames({"Skv", "Dh"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_AttentionDecode<bf16>)->Args({2048, 128})->ArgNames({"Skv", "Dh"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
