// tessera/ops/cuda/activation.cuh — CUDA launchers for ops/activation.hpp:
// SiLU, GELU (erf), GELU (tanh) and SwiGLU, on the pointwise maps of
// elementwise.cuh. Each is computed in float with the precise device
// functions (expf, erff, tanhf: a few ulp from the host's std:: versions,
// never the __expf-style intrinsics) and rounded once to T on store.
#pragma once

#include <cstdint>

#include "elementwise.cuh"
#include "launch.hpp"

namespace tessera::cuda {

enum class Activation { silu, gelu, gelu_tanh };

// out = f(x) element by element; out is contiguous, x read through its layout.
template <class T>
void launch_activation(const LaunchContext& ctx, Activation kind, T* out, const T* x, const StridedLayout& x_layout);

// out = silu(gate) * up; the two layouts have the output's shape, out is
// contiguous.
template <class T>
void launch_swiglu(const LaunchContext& ctx, T* out, const T* gate, const StridedLayout& gate_layout, const T* up,
                   const StridedLayout& up_layout);

// SwiGLU of a fused gate/up projection: gate_up is contiguous [rows, 2 * half]
// (gate first, then up, in each row) and out contiguous [rows, half]:
// out[r, i] = silu(gate_up[r, i]) * gate_up[r, half + i]. The same bits as
// launch_swiglu on the two halves.
template <class T>
void launch_swiglu_fused(const LaunchContext& ctx, T* out, const T* gate_up, std::int64_t rows, std::int64_t half);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include "common.cuh"

namespace tessera::cuda {

namespace kernels::pointwise {

// The host's formulas (ops/activation.hpp, detail::act) term for term. Every
// add is __fadd_rn and every multiply that could meet an add __fmul_rn: nvcc
// would otherwise fuse a multiply with the add it feeds (also one inside the
// inlined expf/erff/tanhf) into an FMA the host does not do. The host's
// roundings are kept, and silu_f gives the same bits in every kernel it is
// inlined into (the fused and two-tensor SwiGLU must agree exactly).
__device__ inline float silu_f(float v) { return v / __fadd_rn(1.0f, expf(-v)); }

__device__ inline float gelu_f(float v) {
  return 0.5f * v * __fadd_rn(1.0f, erff(__fmul_rn(v, 0.70710678118654752440f)));
}

__device__ inline float gelu_tanh_f(float v) {
  constexpr float kBeta = 0.79788456080286535588f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const float cube = __fmul_rn(__fmul_rn(__fmul_rn(kKappa, v), v), v);
  return 0.5f * v * __fadd_rn(1.0f, tanhf(__fmul_rn(kBeta, __fadd_rn(v, cube))));
}

struct Silu {
  __device__ float operator()(float v) const { return silu_f(v); }
};
struct Gelu {
  __device__ float operator()(float v) const { return gelu_f(v); }
};
struct GeluTanh {
  __device__ float operator()(float v) const { return gelu_tanh_f(v); }
};
struct SiluMul {
  __device__ float operator()(float gate, float up) const { return silu_f(gate) * up; }
};

// Fused SwiGLU. Work item p is a pack of kVec consecutive outputs of one row:
// row r = p / (half / kVec), pack j = p % (half / kVec); its gate is
// gate_up[r, j*kVec ..] and its up gate_up[r, half + j*kVec ..]. Grid-stride
// over the rows * half / kVec items. kVec > 1 needs half % kVec == 0 and
// 16-byte aligned gate_up and out (so every row's halves are aligned too).
template <int kVec, class N>
__global__ void __launch_bounds__(kBlock)
    swiglu_fused_kernel(N* __restrict__ out, const N* __restrict__ gate_up, std::int64_t rows, std::int64_t half) {
  const std::int64_t packs_per_row = half / kVec;
  const std::int64_t items = rows * packs_per_row;
  for (std::int64_t p = thread_index(); p < items; p += grid_stride()) {
    std::int64_t r = p;
    const std::int64_t j = div_mod(r, packs_per_row);
    const N* gate = gate_up + r * 2 * half + j * kVec;
    const Pack<N, kVec> g = *reinterpret_cast<const Pack<N, kVec>*>(gate);
    const Pack<N, kVec> u = *reinterpret_cast<const Pack<N, kVec>*>(gate + half);
    Pack<N, kVec> o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = from_float<N>(silu_f(to_float(g.v[k])) * to_float(u.v[k]));
    *reinterpret_cast<Pack<N, kVec>*>(out + r * half + j * kVec) = o;
  }
}

}  // namespace kernels::pointwise

template <class T>
void launch_activation(const LaunchContext& ctx, Activation kind, T* out, const T* x, const StridedLayout& x_layout) {
  using N = kernels::native_t<T>;
  namespace pw = kernels::pointwise;
  const auto o = kernels::as_native(out);
  const auto px = kernels::as_native(x);
  switch (kind) {
    case Activation::silu:
      pointwise::run_unary(ctx, o, px, x_layout, pw::InFloat<N, pw::Silu>{}, "ops::silu");
      break;
    case Activation::gelu:
      pointwise::run_unary(ctx, o, px, x_layout, pw::InFloat<N, pw::Gelu>{}, "ops::gelu");
      break;
    case Activation::gelu_tanh:
      pointwise::run_unary(ctx, o, px, x_layout, pw::InFloat<N, pw::GeluTanh>{}, "ops::gelu_tanh");
      break;
  }
}

template <class T>
void launch_swiglu(const LaunchContext& ctx, T* out, const T* gate, const StridedLayout& gate_layout, const T* up,
                   const StridedLayout& up_layout) {
  using N = kernels::native_t<T>;
  namespace pw = kernels::pointwise;
  pointwise::run_binary(ctx, kernels::as_native(out), kernels::as_native(gate), gate_layout, kernels::as_native(up),
                        up_layout, pw::InFloat<N, pw::SiluMul>{}, "ops::swiglu");
}

template <class T>
void launch_swiglu_fused(const LaunchContext& ctx, T* out, const T* gate_up, std::int64_t rows, std::int64_t half) {
  if (rows == 0 || half == 0) return;
  using N = kernels::native_t<T>;
  constexpr int kVec = pointwise::pack_width<N>();
  const auto o = kernels::as_native(out);
  const auto x = kernels::as_native(gate_up);
  if (half % kVec == 0 && pointwise::aligned(x, 16) && pointwise::aligned(o, 16)) {
    kernels::pointwise::swiglu_fused_kernel<kVec>
        <<<pointwise::blocks_for(ctx, rows * (half / kVec)), pointwise::kBlock, 0, ctx.stream>>>(o, x, rows, half);
  } else {
    kernels::pointwise::swiglu_fused_kernel<1>
        <<<pointwise::blocks_for(ctx, rows * half), pointwise::kBlock, 0, ctx.stream>>>(o, x, rows, half);
  }
  check_launch("ops::swiglu");
}

}  // namespace tessera::cuda
#endif
