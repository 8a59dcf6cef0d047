// tessera/ops/softmax.hpp — softmax over the last dimension, optionally with
// an additive mask. Computed in float with max-subtraction (bf16/f16 in,
// rounded once on output). CUDA launchers: ops/cuda/softmax.cuh.
//
// Masks are ADDITIVE, as in transformers' attention masks: 0 keeps a score,
// -inf drops it, any finite value biases it. A mask has x's element type or
// float (float lets one mask serve every dtype, and keeps large finite
// negatives such as -1e9 exact where f16 would overflow them to -inf), and
// broadcasts numpy-style to x's shape, e.g. a [S, S] causal mask over
// [B, H, S, S] scores.
//
// A row whose every entry is -inf (x + mask) yields ZEROS. torch.softmax
// yields NaN there; tessera chooses zeros so that fully padded rows (padding
// queries in a batch, empty image slots) stay finite and cannot poison later
// reductions. A NaN anywhere in a row still makes that row NaN.
#pragma once

#include <cmath>
#include <limits>

#include "common.hpp"
#include "cuda/softmax.cuh"

namespace tessera::ops {

namespace detail {

// Whether `from` broadcasts to exactly `to` (numpy rules, `to` unchanged):
// at most `to`'s rank, trailing dimensions equal or 1.
inline bool softmax_mask_fits(const Shape& from, const Shape& to) {
  if (from.rank() > to.rank()) return false;
  for (int i = 1; i <= from.rank(); ++i) {
    if (from[-i] != 1 && from[-i] != to[-i]) return false;
  }
  return true;
}

// Softmax of one row of n scores x[j * xs] + mask[j * ms] (mask may be null)
// into out[0, n). The first pass is the online softmax (running max and a
// sum rescaled whenever the max grows), so the row is read twice, not three
// times, and no scratch is needed.
template <class T, class M>
void softmax_row(T* out, const T* x, std::int64_t xs, const M* mask, std::int64_t ms, std::int64_t n) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  const auto score = [&](std::int64_t j) {
    const float v = to_float(x[j * xs]);
    return mask ? v + to_float(mask[j * ms]) : v;
  };
  float max = neg_inf, sum = 0.0f;
  for (std::int64_t j = 0; j < n; ++j) {
    const float v = score(j);
    if (v == neg_inf) continue;  // contributes exp(-inf) = 0; skipping avoids -inf - -inf = NaN
    if (v > max) {
      sum = sum * std::exp(max - v) + 1.0f;
      max = v;
    } else {
      sum += std::exp(v - max);  // NaN scores land here and propagate
    }
  }
  if (max == neg_inf) {  // every entry masked (or n == 0): zeros, by design (see the header)
    std::fill(out, out + n, from_float<T>(0.0f));
    return;
  }
  const float inv_sum = 1.0f / sum;
  for (std::int64_t j = 0; j < n; ++j) out[j] = from_float<T>(std::exp(score(j) - max) * inv_sum);
}

// Softmax of every row of the CPU view x into contiguous `out`; `mask` (null
// for none) is read through `mask_strides`, already broadcast to x's shape.
template <class V, class M>
void softmax_rows_cpu(typename V::value_type* out, const V& x, const M* mask, const Strides& mask_strides) {
  const Shape& shape = x.shape();
  const std::int64_t n = shape[-1];
  if (n == 0) return;
  const std::int64_t rows = shape.numel() / n;
  const std::int64_t xs = x.strides()[static_cast<std::size_t>(shape.rank() - 1)];
  const std::int64_t ms = mask_strides[static_cast<std::size_t>(shape.rank() - 1)];
  const auto* src = x.raw();
  const RowOffsets x_row(shape, x.strides()), mask_row(shape, mask_strides);
  TESSERA_OMP_PARALLEL_FOR_IF(rows > 1 && rows * n * kTranscendentalCost >= kParallelMinElements)
  for (std::int64_t r = 0; r < rows; ++r) {
    softmax_row(out + r * n, src + x_row(r), xs, mask ? mask + mask_row(r) : nullptr, ms, n);
  }
}

template <class T>
void check_softmax_input(const Shape& x) {
  static_assert(FloatType<T>, "tessera: ops::softmax needs a floating-point tensor (float, bf16 or f16)");
  check(x.rank() >= 1, "ops::softmax", "x must have at least one dimension (softmax runs over the last), got a scalar");
}

}  // namespace detail

// softmax(x) over the last dimension. Returns a contiguous tensor of x's
// shape, dtype and device; x may be any strided view.
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> softmax(const X& x) {
  using D = device_of<X>;
  using T = element_of<X>;
  const auto vx = as_view(x);
  detail::check_softmax_input<T>(vx.shape());
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    detail::softmax_rows_cpu(out.raw(), vx, static_cast<const T*>(nullptr), Strides{});
  } else {
    detail::cuda_launch<D>("ops::softmax", [&](const cuda::LaunchContext& ctx) {
      const cuda::StridedLayout x_layout = detail::strided_layout(vx);
      cuda::launch_softmax<T, T>(ctx, out.device_ptr().get(), vx.device_ptr().get(), x_layout,
                                 static_cast<const T*>(nullptr), x_layout);
    });
  }
  return out;
}

// softmax(x + mask) over the last dimension, with an additive mask of x's
// element type or float that broadcasts to x's shape. Rows that are entirely
// -inf yield zeros (torch yields NaN; see the header comment).
template <AnyTensor X, AnyTensor M>
Tensor<device_of<X>, element_of<X>> softmax(const X& x, const M& mask) {
  using D = device_of<X>;
  using T = element_of<X>;
  using MT = element_of<M>;
  require_same_device<D, device_of<M>>();
  static_assert(std::is_same_v<MT, T> || std::is_same_v<MT, float>,
                "tessera: ops::softmax: the additive mask must have x's element type or float");
  const auto vx = as_view(x);
  const auto vm = as_view(mask);
  detail::check_softmax_input<T>(vx.shape());
  detail::check(detail::softmax_mask_fits(vm.shape(), vx.shape()), "ops::softmax", "mask ", vm.shape(),
                " does not broadcast to x ", vx.shape(),
                " (numpy rules: rank at most x's, trailing dimensions equal to x's or 1)");
  Tensor<D, T> out(vx.shape());
  if constexpr (is_cpu_v<D>) {
    detail::softmax_rows_cpu(out.raw(), vx, vm.raw(), detail::broadcast_strides(vm, vx.shape()));
  } else {
    // x and the mask are read in place; the mask through its strides
    // broadcast to x's shape (0 on broadcast dimensions).
    detail::cuda_launch<D>("ops::softmax", [&](const cuda::LaunchContext& ctx) {
      cuda::launch_softmax<T, MT>(ctx, out.device_ptr().get(), vx.device_ptr().get(), detail::strided_layout(vx),
                                  vm.device_ptr().get(),
                                  detail::strided_layout(vx.shape(), detail::broadcast_strides(vm, vx.shape())));
    });
  }
  return out;
}

}  // namespace tessera::ops
