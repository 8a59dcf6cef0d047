// tessera/ops/common.hpp — what every op header shares: argument checks,
// the CPU loop helpers (bf16/f16 computed in float), and the dispatch point
// where the CUDA backend plugs in its launchers.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../core/tensor.hpp"
#include "../core/transfer.hpp"

// Parallel loops use OpenMP when the translation unit is built with it and
// run serially otherwise; no unknown-pragma warnings either way.
#if defined(_OPENMP)
#define TESSERA_OMP_PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#else
#define TESSERA_OMP_PARALLEL_FOR
#endif

namespace tessera::ops {

namespace detail {

using tessera::detail::concat;

// Placeholder dispatch for Cuda<N> until the CUDA backend provides a launcher:
// compiles (so device-generic code type-checks) and fails clearly at run time.
template <Device D>
[[noreturn]] void cuda_backend_missing(std::string_view op) {
  throw DeviceError(concat(op, " on ", device_name<D>(),
                           ": this build of tessera has no CUDA backend (build with TESSERA_CUDA=ON "
                           "once the CUDA backend is available)"));
}

template <class T>
constexpr float to_float(T v) { return convert<float>(v); }
template <class T>
constexpr T from_float(float v) { return convert<T>(v); }

// Throws a ShapeError unless `cond` holds; `op` names the op in the message.
template <class... Parts>
void check(bool cond, std::string_view op, const Parts&... parts) {
  if (!cond) throw ShapeError(concat(op, ": ", parts...));
}

// numpy-style broadcast of two shapes (trailing dimensions aligned).
inline Shape broadcast_shapes(const Shape& a, const Shape& b, std::string_view op) {
  const int rank = std::max(a.rank(), b.rank());
  std::vector<std::int64_t> dims(static_cast<std::size_t>(rank));
  for (int i = 0; i < rank; ++i) {
    const int ia = a.rank() - rank + i, ib = b.rank() - rank + i;
    const std::int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    check(da == db || da == 1 || db == 1, op, "shapes ", a.to_string(), " and ", b.to_string(),
          " do not broadcast (dimension ", i, ": ", da, " vs ", db, ")");
    dims[static_cast<std::size_t>(i)] = da == 1 ? db : da;
  }
  return Shape(std::span<const std::int64_t>(dims));
}

// Strides that read `view` as if it had shape `target` (stride 0 on
// broadcast dimensions). Assumes broadcast_shapes accepted the pair.
template <class V>
Strides broadcast_strides(const V& view, const Shape& target) {
  Strides out{};
  const int offset = target.rank() - view.rank();
  for (int i = 0; i < target.rank(); ++i) {
    const int j = i - offset;
    out[static_cast<std::size_t>(i)] =
        (j < 0 || view.shape()[j] == 1) ? 0 : view.strides()[static_cast<std::size_t>(j)];
  }
  return out;
}

// Calls fn(linear_index, offsets...) for every element of `shape` in row-major
// order, where offsets[k] is the element offset in operand k (given strides).
template <std::size_t K, class Fn>
void for_each_offset(const Shape& shape, const std::array<Strides, K>& strides, Fn&& fn) {
  const std::int64_t n = shape.numel();
  if (n == 0) return;
  const int rank = shape.rank();
  std::array<std::int64_t, kMaxRank> index{};
  std::array<std::int64_t, K> offset{};
  for (std::int64_t linear = 0; linear < n; ++linear) {
    fn(linear, offset);
    for (int d = rank - 1; d >= 0; --d) {
      const auto ud = static_cast<std::size_t>(d);
      if (++index[ud] < shape[d]) {
        for (std::size_t k = 0; k < K; ++k) offset[k] += strides[k][ud];
        break;
      }
      for (std::size_t k = 0; k < K; ++k) offset[k] -= strides[k][ud] * (shape[d] - 1);
      index[ud] = 0;
    }
  }
}

// out[i] = fn(x[i]) in float, for any strided CPU view x; out is contiguous.
template <class TOut, class V, class Fn>
void cpu_unary(TOut* out, const V& x, Fn&& fn) {
  using TIn = typename V::value_type;
  const auto* src = x.raw();
  if (x.is_contiguous()) {
    const std::int64_t n = x.numel();
    TESSERA_OMP_PARALLEL_FOR
    for (std::int64_t i = 0; i < n; ++i) out[i] = from_float<TOut>(fn(to_float<TIn>(src[i])));
    return;
  }
  for_each_offset<1>(x.shape(), {x.strides()}, [&](std::int64_t i, const auto& off) {
    out[i] = from_float<TOut>(fn(to_float<TIn>(src[off[0]])));
  });
}

// out = fn(a, b) with broadcasting, in float; out is contiguous with shape `shape`.
template <class TOut, class VA, class VB, class Fn>
void cpu_binary(TOut* out, const Shape& shape, const VA& a, const VB& b, Fn&& fn) {
  using TA = typename VA::value_type;
  using TB = typename VB::value_type;
  const auto* pa = a.raw();
  const auto* pb = b.raw();
  if (a.shape() == shape && b.shape() == shape && a.is_contiguous() && b.is_contiguous()) {
    const std::int64_t n = shape.numel();
    TESSERA_OMP_PARALLEL_FOR
    for (std::int64_t i = 0; i < n; ++i) out[i] = from_float<TOut>(fn(to_float<TA>(pa[i]), to_float<TB>(pb[i])));
    return;
  }
  for_each_offset<2>(shape, {broadcast_strides(a, shape), broadcast_strides(b, shape)},
                     [&](std::int64_t i, const auto& off) {
                       out[i] = from_float<TOut>(fn(to_float<TA>(pa[off[0]]), to_float<TB>(pb[off[1]])));
                     });
}

}  // namespace detail
}  // namespace tessera::ops
