// tessera/ops/elementwise.hpp — add, sub, mul, scale, residual add (in place)
// and dtype casts. Binary ops broadcast numpy-style. bf16/f16 compute in float
// and round once to T, on every device. CUDA launchers: ops/cuda/elementwise.cuh
// (strided and broadcast operands are read in place, never packed first).
#pragma once

#include "common.hpp"
#include "cuda/elementwise.cuh"

namespace tessera::ops {

namespace detail {
// `kind` names fn for the CUDA launcher (the CPU path calls fn itself).
template <class A, class B, class Fn>
Tensor<device_of<A>, element_of<A>> binary(const A& a, const B& b, std::string_view op, cuda::BinaryOp kind,
                                           Fn&& fn) {
  using D = device_of<A>;
  using T = element_of<A>;
  require_same_device<D, device_of<B>>();
  require_same_dtype<T, element_of<B>>();
  const auto va = as_view(a);
  const auto vb = as_view(b);
  const Shape shape = broadcast_shapes(va.shape(), vb.shape(), op);
  Tensor<D, T> out(shape);
  if constexpr (is_cpu_v<D>) {
    (void)kind;
    cpu_binary(out.raw(), shape, va, vb, fn);
  } else {
    cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      cuda::launch_binary<T>(ctx, kind, out.device_ptr().get(), va.device_ptr().get(),
                             strided_layout(shape, broadcast_strides(va, shape)), vb.device_ptr().get(),
                             strided_layout(shape, broadcast_strides(vb, shape)));
    });
  }
  return out;
}
}  // namespace detail

// a + b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto add(const A& a, const B& b) {
  return detail::binary(a, b, "ops::add", cuda::BinaryOp::add, [](float x, float y) { return x + y; });
}

// a - b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto sub(const A& a, const B& b) {
  return detail::binary(a, b, "ops::sub", cuda::BinaryOp::sub, [](float x, float y) { return x - y; });
}

// a * b (broadcasting).
template <AnyTensor A, AnyTensor B>
auto mul(const A& a, const B& b) {
  return detail::binary(a, b, "ops::mul", cuda::BinaryOp::mul, [](float x, float y) { return x * y; });
}

// x * factor.
template <AnyTensor X>
auto scale(const X& x, float factor) {
  using D = device_of<X>;
  using T = element_of<X>;
  const auto vx = as_view(x);
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    detail::cpu_unary(out.raw(), vx, [factor](float v) { return v * factor; });
  } else {
    detail::cuda_launch<D>("ops::scale", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_scale<T>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx), factor);
    });
  }
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
    // In place: hidden is contiguous, so each element is read and then
    // written by the same GPU thread (r + h and h + r are the same sum).
    const auto vh = hidden.view();
    detail::cuda_launch<D>("ops::residual_add", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_binary<T>(ctx, cuda::BinaryOp::add, vh.device_ptr().get(), vh.device_ptr().get(),
                             detail::strided_layout(vh), vr.device_ptr().get(),
                             detail::strided_layout(vr));
    });
  }
}

// Element type conversion (round to nearest even into bf16/f16; truncation
// toward zero into integers, as static_cast does). A float that does not fit
// the integer type (or NaN) has no defined result: the CPU gives whatever the
// host's conversion gives, CUDA saturates (NaN becomes 0).
template <DType U, AnyTensor X>
Tensor<device_of<X>, U> cast(const X& x) {
  using D = device_of<X>;
  using T = element_of<X>;
  const auto vx = as_view(x);
  Tensor<D, U> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    const auto* src = vx.raw();
    U* dst = out.raw();
    detail::for_each_offset<1>(vx.shape(), {vx.strides()},
                               [&](std::int64_t i, const auto& off) { dst[i] = convert<U>(src[off[0]]); });
  } else {
    detail::cuda_launch<D>("ops::cast", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_cast<U, T>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx));
    });
  }
  return out;
}

}  // namespace tessera::ops
