// tessera/ops/elementwise.hpp — add, sub, mul, scale, residual add (in place)
// and dtype casts. Binary ops broadcast numpy-style. bf16/f16 compute in float
// on the CPU. CUDA launchers: ops/cuda/elementwise.cuh (CUDA backend issue).
#pragma once

#include "common.hpp"

namespace tessera::ops {

namespace detail {
template <class A, class B, class Fn>
Tensor<device_of<A>, element_of<A>> binary(const A& a, const B& b, std::string_view op, Fn&& fn) {
  using D = device_of<A>;
  using T = element_of<A>;
  require_same_device<D, device_of<B>>();
  require_same_dtype<T, element_of<B>>();
  const auto va = as_view(a);
  const auto vb = as_view(b);
  const Shape shape = broadcast_shapes(va.shape(), vb.shape(), op);
  Tensor<D, T> out(shape);
  if constexpr (is_cpu_v<D>) cpu_binary(out.raw(), shape, va, vb, fn);
  else cuda_backend_missing<D>(op);
  return out;
}
}  // namespace detail

// a + b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto add(const A& a, const B& b) {
  return detail::binary(a, b, "ops::add", [](float x, float y) { return x + y; });
}

// a - b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto sub(const A& a, const B& b) {
  return detail::binary(a, b, "ops::sub", [](float x, float y) { return x - y; });
}

// a * b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto mul(const A& a, const B& b) {
  return detail::binary(a, b, "ops::mul", [](float x, float y) { return x * y; });
}

// x * factor.
template <AnyTensor X>
auto scale(const X& x, float factor) {
  using D = device_of<X>;
  using T = element_of<X>;
  const auto vx = as_view(x);
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) detail::cpu_unary(out.raw(), vx, [factor](float v) { return v * factor; });
  else detail::cuda_backend_missing<D>("ops::scale");
  return out;
}

// Residual connection in place: hidden += residual (same shape). The sum is
// rounded once to T, as in transformers' `hidden_states = residual + hidden_states`.
template <Device D, DType T, AnyTensor R>
void residual_add(Tensor<D, T>& hidden, const R& residual) {
  require_same_device<D, device_of<R>>();
  require_same_dtype<T, element_of<R>>();
  const auto vr = as_view(residual);
  detail::check(vr.shape() == hidden.shape(), "ops::residual_add", "hidden ", hidden.shape().to_string(),
                " and residual ", vr.shape().to_string(), " differ");
  if constexpr (is_cpu_v<D>) {
    detail::cpu_binary(hidden.raw(), hidden.shape(), hidden.view().as_const(), vr,
                       [](float h, float r) { return r + h; });
  } else {
    detail::cuda_backend_missing<D>("ops::residual_add");
  }
}

// Element type conversion (round to nearest even into bf16/f16; truncation
// toward zero into integers, as static_cast does).
template <DType U, AnyTensor X>
Tensor<device_of<X>, U> cast(const X& x) {
  using D = device_of<X>;
  const auto vx = as_view(x);
  Tensor<D, U> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    const auto* src = vx.raw();
    U* dst = out.raw();
    detail::for_each_offset<1>(vx.shape(), {vx.strides()},
                               [&](std::int64_t i, const auto& off) { dst[i] = convert<U>(src[off[0]]); });
  } else {
    detail::cuda_backend_missing<D>("ops::cast");
  }
  return out;
}

}  // namespace tessera::ops
