// The norm, rotary and softmax kernels, compiled once for the element types
// the ops support (float, bf16, f16; int32/int64 positions; float or T masks;
// float, bf16 or f16 rotary tables for any x type).
#include <tessera/ops/cuda/norm.cuh>
#include <tessera/ops/cuda/rope.cuh>
#include <tessera/ops/cuda/softmax.cuh>

namespace tessera::cuda {

#define TESSERA_NORMS(T)                                                                                            \
  template void launch_rms_norm<T>(const LaunchContext&, T*, const T*, const StridedLayout&, const T*, std::int64_t, \
                                   float);                                                                          \
  template void launch_add_rms_norm<T>(const LaunchContext&, T*, T*, const T*, const StridedLayout&, const T*,       \
                                       std::int64_t, float);                                                        \
  template void launch_layer_norm<T>(const LaunchContext&, T*, const T*, const StridedLayout&, const T*,             \
                                     std::int64_t, const T*, std::int64_t, float);
TESSERA_NORMS(float)
TESSERA_NORMS(bf16)
TESSERA_NORMS(f16)
#undef TESSERA_NORMS

#define TESSERA_SOFTMAX(T, M)                                                                                 \
  template void launch_softmax<T, M>(const LaunchContext&, T*, const T*, const StridedLayout&, const M*, \
                                     const StridedLayout&);
TESSERA_SOFTMAX(float, float)
TESSERA_SOFTMAX(bf16, bf16)
TESSERA_SOFTMAX(bf16, float)
TESSERA_SOFTMAX(f16, f16)
TESSERA_SOFTMAX(f16, float)
#undef TESSERA_SOFTMAX

template void launch_rope_tables<std::int32_t>(const LaunchContext&, float*, float*, const std::int32_t*,
                                               std::int64_t, std::int64_t, std::int64_t, float);
template void launch_rope_tables<std::int64_t>(const LaunchContext&, float*, float*, const std::int64_t*,
                                               std::int64_t, std::int64_t, std::int64_t, float);

#define TESSERA_APPLY_ROPE(T, C)                                                                                   \
  template void launch_apply_rope<T, C>(const LaunchContext&, T*, const T*, const StridedLayout&, const C*,     \
                                        const StridedLayout&, const C*, const StridedLayout&);
#define TESSERA_APPLY_ROPE_ALL_TABLES(T) TESSERA_APPLY_ROPE(T, float) TESSERA_APPLY_ROPE(T, bf16) TESSERA_APPLY_ROPE(T, f16)
TESSERA_APPLY_ROPE_ALL_TABLES(float)
TESSERA_APPLY_ROPE_ALL_TABLES(bf16)
TESSERA_APPLY_ROPE_ALL_TABLES(f16)
#undef TESSERA_APPLY_ROPE_ALL_TABLES
#undef TESSERA_APPLY_ROPE

}  // namespace tessera::cuda
