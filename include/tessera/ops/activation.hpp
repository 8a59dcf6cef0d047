// tessera/ops/activation.hpp — SiLU, GELU (exact erf form and torch's tanh
// approximation) and SwiGLU, the gated MLP activation of Qwen2 / Llama /
// InternLM2. Everything is computed in float and rounded once to T on store;
// inputs may be strided views, outputs are contiguous.
// CUDA launchers: ops/cuda/activation.cuh (the same formulas in float with
// the device's precise expf/erff/tanhf; strided inputs read in place).
#pragma once

#include <cmath>

#include "common.hpp"
#include "cuda/activation.cuh"

namespace tessera::ops {

namespace detail::act {

inline float silu_f(float v) { return v / (1.0f + std::exp(-v)); }

inline float gelu_f(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752440f)); }

// torch.nn.functional.gelu(x, approximate='tanh'):
// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
inline float gelu_tanh_f(float v) {
  constexpr float kBeta = 0.79788456080286535588f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  return 0.5f * v * (1.0f + std::tanh(kBeta * (v + kKappa * v * v * v)));
}

// fn on the CPU; the CUDA launcher computes the same function, named by kind.
template <class X, class Fn>
Tensor<device_of<X>, element_of<X>> unary_activation(const X& x, std::string_view op, cuda::Activation kind,
                                                     Fn&& fn) {
  using D = device_of<X>;
  using T = element_of<X>;
  static_assert(FloatType<T>, "tessera: activations need a floating-point tensor (float, bf16 or f16)");
  const auto vx = as_view(x);
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    (void)kind;
    cpu_unary(out.raw(), vx, fn, kTranscendentalCost);
  } else {
    cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      cuda::launch_activation<T>(ctx, kind, out.device_ptr().get(), vx.device_ptr().get(), strided_layout(vx));
    });
  }
  return out;
}

}  // namespace detail::act

// SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x)).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> silu(const X& x) {
  return detail::act::unary_activation(x, "ops::silu", cuda::Activation::silu,
                                       [](float v) { return detail::act::silu_f(v); });
}

// GELU, exact form: 0.5 * x * (1 + erf(x / sqrt(2))) (torch's default,
// approximate='none'; the Qwen2.5-VL patch merger uses this one).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> gelu(const X& x) {
  return detail::act::unary_activation(x, "ops::gelu", cuda::Activation::gelu,
                                       [](float v) { return detail::act::gelu_f(v); });
}

// GELU, tanh approximation, as torch's approximate='tanh' (transformers'
// "gelu_pytorch_tanh"): 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> gelu_tanh(const X& x) {
  return detail::act::unary_activation(x, "ops::gelu_tanh", cuda::Activation::gelu_tanh,
                                       [](float v) { return detail::act::gelu_tanh_f(v); });
}

// SwiGLU: silu(gate) * up, element by element; gate and up have the same shape.
// Computed in float and rounded once to T. (transformers rounds silu(gate) to
// T before the multiply, so bf16 results can differ from HF by one bf16 ulp.)
template <AnyTensor G, AnyTensor U>
Tensor<device_of<G>, element_of<G>> swiglu(const G& gate, const U& up) {
  using D = device_of<G>;
  using T = element_of<G>;
  require_same_device<D, device_of<U>>();
  require_same_dtype<T, element_of<U>>();
  static_assert(FloatType<T>, "tessera: ops::swiglu needs floating-point tensors (float, bf16 or f16)");
  const auto vg = as_view(gate);
  const auto vu = as_view(up);
  detail::check(vg.shape() == vu.shape(), "ops::swiglu", "gate ", vg.shape().to_string(), " and up ",
                vu.shape().to_string(), " must have the same shape");
  Tensor<D, T> out(vg.shape());
  if constexpr (is_cpu_v<D>) {
    detail::cpu_binary(
        out.raw(), vg.shape(), vg, vu, [](float g, float u) { return detail::act::silu_f(g) * u; },
        detail::kTranscendentalCost);
  } else {
    detail::cuda_launch<D>("ops::swiglu", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_swiglu<T>(ctx, out.device_ptr().get(), vg.device_ptr().get(), detail::strided_layout(vg),
                             vu.device_ptr().get(), detail::strided_layout(vu));
    });
  }
  return out;
}

// SwiGLU on a fused gate/up projection x: [..., 2I] -> [..., I]. The FIRST
// half of the last dimension is the gate, the SECOND half is up:
// out[..., i] = silu(x[..., i]) * x[..., I + i], the layout of vLLM's
// merged gate_up_proj (SiluAndMul). A non-contiguous x is first copied to a
// contiguous tensor on its device.
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> swiglu(const X& gate_up) {
  using D = device_of<X>;
  using T = element_of<X>;
  static_assert(FloatType<T>, "tessera: ops::swiglu needs a floating-point tensor (float, bf16 or f16)");
  const auto vx = as_view(gate_up);
  detail::check(vx.rank() >= 1 && vx.dim(-1) % 2 == 0, "ops::swiglu",
                "a fused gate/up tensor needs an even last dimension [..., 2I], got ", vx.shape().to_string());
  const std::int64_t half = vx.dim(-1) / 2;
  Shape out_shape = vx.shape();
  out_shape[-1] = half;
  Tensor<D, T> out(out_shape);
  if constexpr (is_cpu_v<D>) {
    Tensor<D, T> packed;
    const T* px = vx.raw();
    if (!vx.is_contiguous()) {
      packed = contiguous(vx);
      px = packed.raw();
    }
    T* po = out.raw();
    const std::int64_t rows = half == 0 ? 0 : out.numel() / half;
    TESSERA_OMP_PARALLEL_FOR_IF(rows * half * detail::kTranscendentalCost >= detail::kParallelMinElements)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* g = px + r * 2 * half;
      const T* u = g + half;
      T* o = po + r * half;
      for (std::int64_t i = 0; i < half; ++i) {
        o[i] = detail::from_float<T>(detail::act::silu_f(detail::to_float(g[i])) * detail::to_float(u[i]));
      }
    }
  } else {
    const std::int64_t rows = half == 0 ? 0 : out.numel() / half;
    detail::cuda_launch<D>("ops::swiglu", [&](const cuda::LaunchContext& ctx) {
      const auto px = detail::packed(vx);
      cuda::launch_swiglu_fused<T>(ctx, out.device_ptr().get(), px.get(), rows, half);
    });
  }
  return out;
}

}  // namespace tessera::ops
