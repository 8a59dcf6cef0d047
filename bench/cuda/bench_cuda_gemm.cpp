// GEMM throughput on the GPU: TFLOP/s (2*M*N*K per product, GPU time from
// CUDA events) of ops::matmul and ops::linear (cuBLASLt underneath) next to a
// raw cuBLAS reference in the same run: cublasGemmEx with CUBLAS_COMPUTE_32F
// on the same shapes and types, into a preallocated output, on Cuda<0>'s
// stream: the device's cuBLAS peak tessera is compared against. The gap is
// tessera's overhead (output allocation, descriptor setup, algorithm choice).
//   - matmul: square bf16 2048, 4096, 8192 and f16 8192;
//   - linear: a decoder MLP projection, tokens 1 / 128 / 4096 x 3584 -> 18944,
//     bf16, weight [18944, 3584] read transposed (x @ W^T).
#include <cublas_v2.h>

#include <tessera/ops/matmul.hpp>

#include "cuda/bench_cuda_util.hpp"

namespace tessera::bench {
namespace {

double gemm_tflop(std::int64_t m, std::int64_t n, std::int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / 1e12;
}

template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, bf16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

// A cuBLAS handle of our own on Cuda<0>'s physical device and stream.
class BlasHandle {
 public:
  BlasHandle() : guard_(cuda::launch_context<Gpu>().physical_device) {
    cuda::check(cublasCreate(&handle_), "cublasCreate");
    cuda::check(cublasSetStream(handle_, cuda::launch_context<Gpu>().stream), "cublasSetStream");
  }
  ~BlasHandle() { cublasDestroy(handle_); }
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  cublasHandle_t get() const { return handle_; }

 private:
  cuda::DeviceGuard guard_;
  cublasHandle_t handle_ = nullptr;
};

// Row-major C[m, n] = A[m, k] @ B (B [k, n], or [n, k] read transposed when
// b_transposed) through cublasGemmEx: computed as C^T = B^T A^T in cuBLAS's
// column-major terms, float accumulation.
template <class T>
void cublas_gemm(cublasHandle_t handle, const T* a, const T* b, T* c, std::int64_t m, std::int64_t n, std::int64_t k,
                 bool b_transposed) {
  const float alpha = 1.0f, beta = 0.0f;
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  cuda::check(cublasGemmEx(handle, b_transposed ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, in, im, ik, &alpha, b,
                           cuda_type<T>(), b_transposed ? ik : in, a, cuda_type<T>(), ik, &beta, c, cuda_type<T>(), in,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
}

// ---- square matmul ---------------------------------------------------------------

template <class T>
void BM_CudaMatmul(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t s = state.range(0);
  const auto a = random_gpu_tensor<T>({s, s});
  const auto b = random_gpu_tensor<T>({s, s});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::matmul(a, b).device_ptr().get()); });
  set_rate(state, "TFLOP/s", gemm_tflop(s, s, s), seconds);
}

template <class T>
void BM_CublasGemmExReference(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t s = state.range(0);
  const auto a = random_gpu_tensor<T>({s, s});
  const auto b = random_gpu_tensor<T>({s, s});
  Tensor<Gpu, T> c({s, s});
  const BlasHandle handle;
  const double seconds = time_on_gpu(state, [&] {
    cublas_gemm<T>(handle.get(), a.device_ptr().get(), b.device_ptr().get(), c.device_ptr().get(), s, s, s, false);
  });
  set_rate(state, "TFLOP/s", gemm_tflop(s, s, s), seconds);
}

void BM_CudaMatmulBF16(benchmark::State& state) { BM_CudaMatmul<bf16>(state); }
void BM_CudaMatmulF16(benchmark::State& state) { BM_CudaMatmul<f16>(state); }
void BM_CublasGemmExBF16(benchmark::State& state) { BM_CublasGemmExReference<bf16>(state); }
void BM_CublasGemmExF16(benchmark::State& state) { BM_CublasGemmExReference<f16>(state); }

void square_sizes(benchmark::internal::Benchmark* b) {
  b->Arg(2048)->Arg(4096)->Arg(8192)->ArgName("S")->Unit(benchmark::kMillisecond)->UseManualTime();
}
void size_8192(benchmark::internal::Benchmark* b) {
  b->Arg(8192)->ArgName("S")->Unit(benchmark::kMillisecond)->UseManualTime();
}
BENCHMARK(BM_CudaMatmulBF16)->Apply(square_sizes);
BENCHMARK(BM_CublasGemmExBF16)->Apply(square_sizes);
BENCHMARK(BM_CudaMatmulF16)->Apply(size_8192);
BENCHMARK(BM_CublasGemmExF16)->Apply(size_8192);

// ---- decoder linear: x [tokens, 3584] @ W[18944, 3584]^T ---------------------------

constexpr std::int64_t kHidden = 3584, kIntermediate = 18944;

void BM_CudaLinearBF16(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t tokens = state.range(0);
  const auto x = random_gpu_tensor<bf16>({tokens, kHidden});
  const auto w = random_gpu_tensor<bf16>({kIntermediate, kHidden});
  const double seconds = time_on_gpu(state, [&] { benchmark::DoNotOptimize(ops::linear(x, w).device_ptr().get()); });
  set_rate(state, "TFLOP/s", gemm_tflop(tokens, kIntermediate, kHidden), seconds);
}

void BM_CublasLinearReferenceBF16(benchmark::State& state) {
  if (!gpu_present(state)) return;
  const std::int64_t tokens = state.range(0);
  const auto x = random_gpu_tensor<bf16>({tokens, kHidden});
  const auto w = random_gpu_tensor<bf16>({kIntermediate, kHidden});
  Tensor<Gpu, bf16> y({tokens, kIntermediate});
  const BlasHandle handle;
  const double seconds = time_on_gpu(state, [&] {
    cublas_gemm<bf16>(handle.get(), x.device_ptr().get(), w.device_ptr().get(), y.device_ptr().get(), tokens,
                      kIntermediate, kHidden, true);
  });
  set_rate(state, "TFLOP/s", gemm_tflop(tokens, kIntermediate, kHidden), seconds);
}

void decoder_tokens(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(128)->Arg(4096)->ArgName("tokens")->Unit(benchmark::kMicrosecond)->UseManualTime();
}
BENCHMARK(BM_CudaLinearBF16)->Apply(decoder_tokens);
BENCHMARK(BM_CublasLinearReferenceBF16)->Apply(decoder_tokens);

}  // namespace
}  // namespace tessera::bench
