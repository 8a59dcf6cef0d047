// Instantiates the pointwise CUDA launchers: elementwise (add/sub/mul,
// scale, casts), activations (SiLU, GELU, SwiGLU), embedding gathers and the
// patch-embedding im2col, for float, bf16 and f16 (add/sub/mul and scale
// also for int32 and int64; casts: every pair of the five element types;
// embedding ids: int32 and int64).
#include <tessera/ops/cuda/activation.cuh>
#include <tessera/ops/cuda/elementwise.cuh>
#include <tessera/ops/cuda/embedding.cuh>
#include <tessera/ops/cuda/patch_embed.cuh>

namespace tessera::cuda {

#define TESSERA_POINTWISE_FLOAT_LAUNCHERS(T)                                                                   \
  template void launch_binary<T>(const LaunchContext&, BinaryOp, T*, const T*, const StridedLayout&, const T*,    \
                                 const StridedLayout&);                                                        \
  template void launch_scale<T>(const LaunchContext&, T*, const T*, const StridedLayout&, float);              \
  template void launch_activation<T>(const LaunchContext&, Activation, T*, const T*, const StridedLayout&);    \
  template void launch_swiglu<T>(const LaunchContext&, T*, const T*, const StridedLayout&, const T*,           \
                                 const StridedLayout&);                                                        \
  template void launch_swiglu_fused<T>(const LaunchContext&, T*, const T*, std::int64_t, std::int64_t);        \
  template EmbeddingIdCheck launch_embedding<T, std::int32_t>(const LaunchContext&, T*, const T*, std::int64_t, \
                                                              std::int64_t, std::int64_t, std::int64_t,        \
                                                              const std::int32_t*, const StridedLayout&, void*); \
  template EmbeddingIdCheck launch_embedding<T, std::int64_t>(const LaunchContext&, T*, const T*, std::int64_t, \
                                                              std::int64_t, std::int64_t, std::int64_t,        \
                                                              const std::int64_t*, const StridedLayout&, void*); \
  template void launch_im2col<T>(const LaunchContext&, T*, const T*, const Im2colLayout&);

TESSERA_POINTWISE_FLOAT_LAUNCHERS(float)
TESSERA_POINTWISE_FLOAT_LAUNCHERS(bf16)
TESSERA_POINTWISE_FLOAT_LAUNCHERS(f16)
#undef TESSERA_POINTWISE_FLOAT_LAUNCHERS

// add/sub/mul and scale also take integer tensors, as on the CPU.
#define TESSERA_POINTWISE_INTEGER_LAUNCHERS(T)                                                                 \
  template void launch_binary<T>(const LaunchContext&, BinaryOp, T*, const T*, const StridedLayout&, const T*,    \
                                 const StridedLayout&);                                                        \
  template void launch_scale<T>(const LaunchContext&, T*, const T*, const StridedLayout&, float);

TESSERA_POINTWISE_INTEGER_LAUNCHERS(std::int32_t)
TESSERA_POINTWISE_INTEGER_LAUNCHERS(std::int64_t)
#undef TESSERA_POINTWISE_INTEGER_LAUNCHERS

#define TESSERA_POINTWISE_CAST(To, From) \
  template void launch_cast<To, From>(const LaunchContext&, To*, const From*, const StridedLayout&);
#define TESSERA_POINTWISE_CASTS_FROM(From)   \
  TESSERA_POINTWISE_CAST(float, From)        \
  TESSERA_POINTWISE_CAST(bf16, From)         \
  TESSERA_POINTWISE_CAST(f16, From)          \
  TESSERA_POINTWISE_CAST(std::int32_t, From) \
  TESSERA_POINTWISE_CAST(std::int64_t, From)

TESSERA_POINTWISE_CASTS_FROM(float)
TESSERA_POINTWISE_CASTS_FROM(bf16)
TESSERA_POINTWISE_CASTS_FROM(f16)
TESSERA_POINTWISE_CASTS_FROM(std::int32_t)
TESSERA_POINTWISE_CASTS_FROM(std::int64_t)
#undef TESSERA_POINTWISE_CASTS_FROM
#undef TESSERA_POINTWISE_CAST

}  // namespace tessera::cuda
