// Matrix products: GFLOP/s (2*M*N*K per product) of tessera's ops::matmul and
// ops::linear next to raw cblas_sgemm on the same shapes in the same run, so
// the wrapper's overhead (and the cost of widening bf16 to float) is visible.
// Shapes: squares 256, 512, 1024 and an LLM-like linear (M = 128 tokens,
// K = 2048 in, N = 2048 out). Arguments are {M, K, N}.
#include <benchmark/benchmark.h>

#include <cblas.h>

#include <tessera/ops/matmul.hpp>

#include "bench_util.hpp"

namespace {
using namespace tessera;

// Reports 2*M*N*K floating-point operations per iteration as a rate.
void set_flops(benchmark::State& state, std::int64_t m, std::int64_t k, std::int64_t n) {
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// The same shapes for every suite; MinTime keeps the whole run short. Rates
// use wall time: OpenBLAS works on its own threads, which the main thread's
// CPU time (the default) would not count.
void gemm_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t s : {256, 512, 1024}) b->Args({s, s, s});
  b->Args({128, 2048, 2048});
  b->ArgNames({"M", "K", "N"})->Unit(benchmark::kMillisecond)->MinTime(0.2)->UseRealTime();
}

// tessera: a [M, K] @ b [K, N], float, allocating the output each call.
template <class T>
void BM_TesseraMatmul(benchmark::State& state) {
  const auto m = state.range(0), k = state.range(1), n = state.range(2);
  const auto a = bench::random_tensor<T>({m, k});
  const auto b = bench::random_tensor<T>({k, n});
  for (auto _ : state) benchmark::DoNotOptimize(ops::matmul(a, b));
  set_flops(state, m, k, n);
}
void BM_TesseraMatmulF32(benchmark::State& state) { BM_TesseraMatmul<float>(state); }
void BM_TesseraMatmulBF16(benchmark::State& state) { BM_TesseraMatmul<bf16>(state); }
BENCHMARK(BM_TesseraMatmulF32)->Apply(gemm_shapes);
BENCHMARK(BM_TesseraMatmulBF16)->Apply(gemm_shapes);

// The baseline: cblas_sgemm into a preallocated C.
void BM_CblasSgemm(benchmark::State& state) {
  const auto m = state.range(0), k = state.range(1), n = state.range(2);
  const auto a = bench::random_tensor<float>({m, k});
  const auto b = bench::random_tensor<float>({k, n});
  Tensor<Host, float> c({m, n});
  const auto bm = static_cast<blasint>(m), bk = static_cast<blasint>(k), bn = static_cast<blasint>(n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bm, bn, bk, 1.0f, a.raw(), bk, b.raw(), bn, 0.0f,
                c.raw(), bn);
    benchmark::ClobberMemory();
  }
  set_flops(state, m, k, n);
}
BENCHMARK(BM_CblasSgemm)->Apply(gemm_shapes);

// tessera: x [M, K] @ weight[N, K]^T + bias, weight read through its transpose.
template <class T>
void BM_TesseraLinear(benchmark::State& state) {
  const auto m = state.range(0), k = state.range(1), n = state.range(2);
  const auto x = bench::random_tensor<T>({m, k});
  const auto w = bench::random_tensor<T>({n, k});
  const auto bias = bench::random_tensor<T>({n});
  for (auto _ : state) benchmark::DoNotOptimize(ops::linear(x, w, bias));
  set_flops(state, m, k, n);
}
void BM_TesseraLinearF32(benchmark::State& state) { BM_TesseraLinear<float>(state); }
void BM_TesseraLinearBF16(benchmark::State& state) { BM_TesseraLinear<bf16>(state); }
BENCHMARK(BM_TesseraLinearF32)->Apply(gemm_shapes);
BENCHMARK(BM_TesseraLinearBF16)->Apply(gemm_shapes);

}  // namespace
