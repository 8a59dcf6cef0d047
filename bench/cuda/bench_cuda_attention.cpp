// Attention on the GPU (ops::attention on Cuda<0>, GPU time from CUDA events):
//   - prefill, bf16, sequence S = 1k .. 16k (Sq = Skv = S), causal and full,
//     in TFLOP/s with FLOPs = 4 * Sq * Skv * Dh * Hq (the two matmuls), halved
//     under the causal mask (half the scores are masked). Two model shapes:
//     Dh 80 with 16 query heads and 16 kv heads (a vision tower, MHA) and
//     Dh 128 with GQA 28:4 (a 7B decoder);
//   - decode, bf16: one query token against Skv = 1k .. 32k cached keys, in
//     GB/s of K and V read (2 * Skv * Hkv * Dh * 2 bytes), for GQA 28:4 and
//     MHA 16:16 at Dh 128.
// The rates include the op's output allocation (stream-ordered, from the pool).
#include <tessera/ops/attention.hpp>

#include "cuda/bench_cuda_util.hpp"

namespace tessera::bench {
namespace {

// Args: S, Dh, Hq, Hkv, causal (0/1).
void BM_CudaAttentionPrefill(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t s = state.range(0), dh = state.range(1), hq = state.range(2), hkv = state.range(3);
  const bool causal = state.range(4) != 0;
  const auto q = random_gpu_tensor<bf16>({s, hq, dh});
  const auto k = random_gpu_tensor<bf16>({s, hkv, dh});
  const auto v = random_gpu_tensor<bf16>({s, hkv, dh});
  const ops::AttentionOptions opt{.mask = causal ? ops::MaskKind::Causal : ops::MaskKind::Full};
  const double seconds =
      time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::attention(q, k, v, opt).device_ptr().get()); });
  const double flops = 4.0 * static_cast<double>(s) * static_cast<double>(s) * static_cast<double>(dh * hq);
  set_rate(state, "TFLOP/s", (causal ? flops / 2.0 : flops) / 1e12, seconds);
}
BENCHMARK(BM_CudaAttentionPrefill)
    ->ArgsProduct({{1024, 2048, 4096, 8192, 16384}, {80}, {16}, {16}, {0, 1}})
    ->ArgsProduct({{1024, 2048, 4096, 8192, 16384}, {128}, {28}, {4}, {0, 1}})
    ->ArgNames({"S", "Dh", "Hq", "Hkv", "causal"})
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime();

// Args: Skv, Hq, Hkv (Dh 128).
void BM_CudaAttentionDecode(benchmark::State& state) {
  if (!gpu_present(state)) return;
  constexpr std::int64_t dh = 128;
  const std::int64_t skv = state.range(0), hq = state.range(1), hkv = state.range(2);
  const auto q = random_gpu_tensor<bf16>({1, hq, dh});
  const auto k = random_gpu_tensor<bf16>({skv, hkv, dh});
  const auto v = random_gpu_tensor<bf16>({skv, hkv, dh});
  const ops::AttentionOptions opt{.mask = ops::MaskKind::Causal};
  const double seconds =
      time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::attention(q, k, v, opt).device_ptr().get()); });
  const double kv_bytes = 2.0 * static_cast<double>(skv * hkv * dh) * sizeof(bf16);
  set_rate(state, "GB/s", kv_bytes / 1e9, seconds);
}
BENCHMARK(BM_CudaAttentionDecode)
    ->ArgsProduct({{1024, 2048, 4096, 8192, 16384, 32768}, {28}, {4}})
    ->ArgsProduct({{1024, 4096, 16384, 32768}, {16}, {16}})
    ->ArgNames({"Skv", "Hq", "Hkv"})
    ->Unit(benchmark::kMicrosecond)
    ->UseManualTime();

}  // namespace
}  // namespace tessera::bench
