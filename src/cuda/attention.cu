// Instantiates the attention launcher (ops/cuda/attention.cuh) for tessera's
// floating-point types. Each type brings the decode kernels (vector and
// scalar K loads), the decode combine kernel and the SIMT prefill kernel;
// bf16 and f16 also the tensor-core prefill kernel for head dims 64, 80, 128.
#include <tessera/ops/cuda/attention.cuh>

#define TESSERA_INSTANTIATE_ATTENTION(T)                                                                     \
  template void tessera::cuda::launch_attention<T>(                                                         \
      const LaunchContext&, T*, AttentionOperand<T>, AttentionOperand<T>, AttentionOperand<T>,              \
      const std::int32_t*, const std::int32_t*, const AttentionShape&, void*, std::size_t);

namespace tessera::cuda {
TESSERA_INSTANTIATE_ATTENTION(float)
TESSERA_INSTANTIATE_ATTENTION(tessera::bf16)
TESSERA_INSTANTIATE_ATTENTION(tessera::f16)
}  // namespace tessera::cuda
