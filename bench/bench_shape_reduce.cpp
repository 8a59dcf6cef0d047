// Shape ops and last-dimension selections: concat and transpose (bytes moved
// per second: read + write), argmax and topk over a Qwen2 vocabulary row
// (151936 logits; bytes read per second).
#include <benchmark/benchmark.h>

#include <tessera/ops/reduce.hpp>
#include <tessera/ops/shape.hpp>

#include "bench_util.hpp"

namespace {
using namespace tessera;

constexpr std::int64_t kQwen2Vocab = 151936;

// Two [rows, cols] tensors joined along the last axis.
template <class T>
void BM_ConcatLastAxis(benchmark::State& state) {
  const auto rows = state.range(0), cols = state.range(1);
  const auto a = bench::random_tensor<T>({rows, cols});
  const auto b = bench::random_tensor<T>({rows, cols});
  for (auto _ : state) benchmark::DoNotOptimize(ops::concat(-1, a, b));
  state.SetBytesProcessed(state.iterations() * 2 * 2 * rows * cols * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_ConcatLastAxis<float>)->Args({512, 1024});
BENCHMARK(BM_ConcatLastAxis<bf16>)->Args({512, 1024});

// A materialised [n, n] transpose (tiled copy).
template <class T>
void BM_Transpose(benchmark::State& state) {
  const auto n = state.range(0);
  const auto x = bench::random_tensor<T>({n, n});
  for (auto _ : state) benchmark::DoNotOptimize(ops::transpose(x, 0, 1));
  state.SetBytesProcessed(state.iterations() * 2 * n * n * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_Transpose<float>)->Arg(1024);
BENCHMARK(BM_Transpose<bf16>)->Arg(1024);

// The same transpose through the untiled row gather of tessera::contiguous,
// for comparison.
void BM_TransposeViaContiguous(benchmark::State& state) {
  const auto n = state.range(0);
  const auto x = bench::random_tensor<float>({n, n});
  for (auto _ : state) benchmark::DoNotOptimize(contiguous(x.transpose(0, 1)));
  state.SetBytesProcessed(state.iterations() * 2 * n * n * static_cast<std::int64_t>(sizeof(float)));
}
BENCHMARK(BM_TransposeViaContiguous)->Arg(1024);

// Greedy decoding's argmax over [batch, vocab] logits.
template <class T>
void BM_Argmax(benchmark::State& state) {
  const auto batch = state.range(0);
  const auto logits = bench::random_tensor<T>({batch, kQwen2Vocab}, -10.0f, 10.0f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::argmax(logits));
  state.SetBytesProcessed(state.iterations() * batch * kQwen2Vocab * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_Argmax<float>)->Arg(1)->Arg(8);
BENCHMARK(BM_Argmax<bf16>)->Arg(1)->Arg(8);

// Top-k sampling's candidate set: topk(k = 50) over [batch, vocab] logits.
template <class T>
void BM_TopK(benchmark::State& state) {
  const auto batch = state.range(0), k = state.range(1);
  const auto logits = bench::random_tensor<T>({batch, kQwen2Vocab}, -10.0f, 10.0f);
  for (auto _ : state) benchmark::DoNotOptimize(ops::topk(logits, k));
  state.SetBytesProcessed(state.iterations() * batch * kQwen2Vocab * static_cast<std::int64_t>(sizeof(T)));
}
BENCHMARK(BM_TopK<float>)->Args({1, 50})->Args({8, 50});
BENCHMARK(BM_TopK<bf16>)->Args({1, 50})->Args({8, 50});

}  // namespace
