// The "blas" family's kernels, compiled once: the cuBLASLt GEMM behind
// ops::matmul / ops::linear and the CUB-based argmax / topk, for float, bf16
// and f16.
#include <tessera/ops/cuda/matmul.cuh>
#include <tessera/ops/cuda/reduce.cuh>

namespace tessera::cuda {

std::size_t topk_workspace_bytes(std::int64_t row_count, std::int64_t n, std::int64_t k) {
  if (row_count <= 0 || n <= 0 || k <= 1) return 0;  // nothing to sort, or an argmax
  const std::int64_t total = row_count * n;
  const std::size_t sort_bytes = reduce_detail::sort_temp_bytes(total, reduce_detail::end_bit(row_count));
  return reduce_detail::total_workspace_bytes(total, sort_bytes);
}

}  // namespace tessera::cuda

#define TESSERA_BLAS_INSTANTIATE(T)                                                                                  \
  template void tessera::cuda::launch_gemm<T>(const LaunchContext&, T*, const GemmOperand<T>&, const GemmOperand<T>&, \
                                              const T*, std::int64_t, std::int64_t, std::int64_t, const GemmBatch&);   \
  template void tessera::cuda::launch_argmax<T>(const LaunchContext&, std::int64_t*, const T*, const StridedLayout&,  \
                                                std::int64_t, std::int64_t, std::int64_t);                            \
  template void tessera::cuda::launch_topk<T>(const LaunchContext&, T*, std::int64_t*, const T*,                      \
                                              const StridedLayout&, std::int64_t, std::int64_t, std::int64_t,         \
                                              std::int64_t, void*, std::size_t);

TESSERA_BLAS_INSTANTIATE(float)
TESSERA_BLAS_INSTANTIATE(tessera::bf16)
TESSERA_BLAS_INSTANTIATE(tessera::f16)

#undef TESSERA_BLAS_INSTANTIATE
