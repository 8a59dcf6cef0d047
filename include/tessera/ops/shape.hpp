// tessera/ops/shape.hpp — shape ops that materialise: concat, slice,
// transpose, permute (each returns a new contiguous Tensor), and split (which
// returns views, no copy). The zero-copy versions of slice / select /
// transpose / permute / reshape / unsqueeze are TensorView methods
// (core/tensor.hpp); ops::contiguous is tessera::contiguous (core/transfer.hpp).
// Every element type is accepted; data is moved bit for bit, never converted.
// Negative axes count from the end. CUDA launchers: ops/cuda/shape.cuh (CUDA
// backend issue).
#pragma once

#include <array>
#include <initializer_list>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common.hpp"
#include "cuda/shape.cuh"

namespace tessera::ops {

// ops::contiguous(x): a contiguous same-device copy of a tensor or view.
// The same function as tessera::contiguous, reachable under ops:: too.
using tessera::contiguous;

namespace detail {
namespace shape_ops {

// Normalises a possibly negative axis for `shape`, naming `op` on failure.
inline int resolve_axis(int axis, const Shape& shape, std::string_view op, std::string_view what = "axis") {
  const int a = axis < 0 ? axis + shape.rank() : axis;
  check(a >= 0 && a < shape.rank(), op, what, " ", axis, " is out of range for the rank ", shape.rank(),
        " shape ", shape.to_string(), " (valid: ", -shape.rank(), " .. ", shape.rank() - 1, ")");
  return a;
}

inline std::string list_string(std::span<const std::int64_t> values) {
  std::string s = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  return s + "]";
}

inline std::string list_string(std::span<const int> values) {
  std::string s = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(values[i]);
  }
  return s + "]";
}

// A new contiguous tensor holding the elements of `view` in row-major order.
template <Device D, DType T>
Tensor<D, T> materialize(const TensorView<D, const T>& view, std::string_view op) {
  Tensor<D, T> out(view.shape());
  if constexpr (is_cpu_v<D>) {
    tessera::detail::gather_strided(out.raw(), view.raw(), view.shape(), view.strides());
  } else {
    cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      cuda::copy_strided(ctx, out.device_ptr().get(), out.strides(), view.device_ptr().get(), view.strides(),
                          view.shape());
    });
  }
  return out;
}

// Validates a permutation of 0..rank-1 (negative entries count from the end)
// and returns it normalised.
inline std::array<int, kMaxRank> resolve_order(std::span<const int> order, const Shape& shape, std::string_view op) {
  check(static_cast<int>(order.size()) == shape.rank(), op, "order ", list_string(order), " has ", order.size(),
        " axes but the input ", shape.to_string(), " has rank ", shape.rank());
  std::array<int, kMaxRank> out{};
  std::array<bool, kMaxRank> seen{};
  for (std::size_t i = 0; i < order.size(); ++i) {
    const int a = resolve_axis(order[i], shape, op, "order entry");
    check(!seen[static_cast<std::size_t>(a)], op, "order ", list_string(order), " names axis ", a,
          " twice; it must be a permutation of the axes of ", shape.to_string());
    seen[static_cast<std::size_t>(a)] = true;
    out[i] = a;
  }
  return out;
}

template <Device D, DType T>
Tensor<D, T> concat_views(std::span<const TensorView<D, const T>> inputs, int axis) {
  constexpr std::string_view op = "ops::concat";
  check(!inputs.empty(), op, "needs at least one input");
  const Shape& first = inputs[0].shape();
  check(first.rank() >= 1, op, "cannot concatenate rank-0 (scalar) tensors; unsqueeze them first");
  const int a = resolve_axis(axis, first, op);
  Shape out_shape = first;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Shape& s = inputs[i].shape();
    check(s.rank() == first.rank(), op, "input ", i, " has shape ", s.to_string(), " (rank ", s.rank(),
          ") but input 0 has shape ", first.to_string(), " (rank ", first.rank(), "); all inputs need the same rank");
    for (int d = 0; d < s.rank(); ++d) {
      check(d == a || s[d] == first[d], op, "input ", i, " has shape ", s.to_string(), " but input 0 has shape ",
            first.to_string(), ": dimension ", d, " differs (", s[d], " vs ", first[d],
            "); all dimensions except the concat axis ", a, " must match");
    }
    total += s[a];
  }
  out_shape[a] = total;
  Tensor<D, T> out(out_shape);
  const Strides out_strides = contiguous_strides(out_shape);
  // Each input lands in its slab of the output: the output's strides, offset
  // by where the slab starts along the concat axis.
  const auto copy_inputs = [&](auto&& copy) {
    std::int64_t start = 0;
    for (const auto& in : inputs) {
      copy(out.device_ptr().get() + start * out_strides[static_cast<std::size_t>(a)], in);
      start += in.shape()[a];
    }
  };
  if constexpr (is_cpu_v<D>) {
    copy_inputs([&](T* dst, const TensorView<D, const T>& in) {
      tessera::detail::copy_strided(dst, out_strides, in.raw(), in.strides(), in.shape());
    });
  } else {
    cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      copy_inputs([&](T* dst, const TensorView<D, const T>& in) {
        cuda::copy_strided(ctx, dst, out_strides, in.device_ptr().get(), in.strides(), in.shape());
      });
    });
  }
  return out;
}

template <class R>
concept TensorRange = std::ranges::input_range<R> && AnyTensor<std::ranges::range_value_t<R>>;

}  // namespace shape_ops
}  // namespace detail

// ---- concat ------------------------------------------------------------------
//
// Joins tensors along `axis` (negative counts from the end). Every input has
// the same rank and the same element type, and equal sizes in every other
// dimension; inputs may be strided views. The result is a new contiguous
// tensor. Three spellings, all checked for one device at compile time:
//
//   ops::concat(axis, a, b, c);          // variadic: any mix of Tensors / views
//   ops::concat(parts, axis);            // a range (std::vector, std::array,
//                                        // std::span) of Tensors or views
//   ops::concat({a.view(), b.view()}, axis);  // a braced list of views

// A span of views of one device (the type admits no other).
template <Device D, DType T>
Tensor<D, T> concat(std::span<const TensorView<D, const T>> inputs, int axis) {
  return detail::shape_ops::concat_views<D, T>(inputs, axis);
}

// A braced list of views, all writable or all read-only:
// ops::concat({x.view(), y.slice(0, 0, 2)}, 0).
template <Device D, class T>
Tensor<D, std::remove_const_t<T>> concat(std::initializer_list<TensorView<D, T>> inputs, int axis) {
  using E = std::remove_const_t<T>;
  std::vector<TensorView<D, const E>> views(inputs.begin(), inputs.end());
  return detail::shape_ops::concat_views<D, E>(std::span<const TensorView<D, const E>>(views), axis);
}

namespace detail::shape_ops {
// What a braced list becomes when it is not one list of views of a single
// device and element type (the overload above then cannot deduce D and T, and
// an initializer_list parameter always wins when it can). Its constructor
// names what differs, instead of the compiler's "no matching function".
struct MixedBracedOperands {
  template <AnyTensor... V>
    requires(sizeof...(V) >= 2)
  MixedBracedOperands(const V&...) {  // NOLINT: implicit, it is the braced list
    require_same_device<device_of<V>...>();
    require_same_dtype<element_of<V>...>();
    static_assert((tessera::detail::tensor_traits<V>::is_view && ...),
                  "tessera: ops::concat's braced form takes views: write ops::concat({a.view(), b.view()}, axis), "
                  "or ops::concat(axis, a, b) for tensors");
    static_assert((tessera::detail::tensor_traits<V>::is_read_only && ...) ||
                      (!tessera::detail::tensor_traits<V>::is_read_only && ...),
                  "tessera: ops::concat's braced list mixes read-only and writable views: make them all "
                  "read-only with .as_const()");
  }
};
}  // namespace detail::shape_ops

// Only reached by a braced list the overload above refuses; never returns.
inline Tensor<Host, float> concat(detail::shape_ops::MixedBracedOperands, int) {
  throw ValueError("ops::concat: unreachable (a braced list of mixed operands does not compile)");
}

// Any range of Tensors or views (e.g. what ops::split returns).
template <detail::shape_ops::TensorRange R>
auto concat(const R& inputs, int axis) -> Tensor<device_of<std::ranges::range_value_t<R>>,
                                                 element_of<std::ranges::range_value_t<R>>> {
  using X = std::ranges::range_value_t<R>;
  using D = device_of<X>;
  using T = element_of<X>;
  std::vector<TensorView<D, const T>> views;
  for (const auto& x : inputs) views.push_back(as_view(x));
  return detail::shape_ops::concat_views<D, T>(std::span<const TensorView<D, const T>>(views), axis);
}

// Variadic: ops::concat(axis, a, b, ...). Operands on different devices, or
// of different element types, do not compile.
template <AnyTensor First, AnyTensor... Rest>
Tensor<device_of<First>, element_of<First>> concat(int axis, const First& first, const Rest&... rest) {
  using D = device_of<First>;
  using T = element_of<First>;
  require_same_device<D, device_of<Rest>...>();
  require_same_dtype<T, element_of<Rest>...>();
  if constexpr (!detail::operands_on<D, T, Rest...>) {
    return {};  // a gate above has already failed
  } else {
    const std::array<TensorView<D, const T>, 1 + sizeof...(Rest)> views{as_view(first), as_view(rest)...};
    return detail::shape_ops::concat_views<D, T>(std::span<const TensorView<D, const T>>(views), axis);
  }
}

// ---- split -------------------------------------------------------------------
//
// Splits `x` along `axis` into consecutive pieces of the given sizes (which
// must be non-negative and sum to the size of that dimension). Returns VIEWS
// into x, not copies: they are valid only while x's storage lives, and they
// are strided unless axis is the outermost non-trivial dimension. Pass a piece
// to tessera::contiguous (or ops::concat, or any op) to materialise it.
// Splitting a temporary Tensor would leave dangling views, so it does not
// compile.
template <AnyTensor X>
std::vector<TensorView<device_of<X>, const element_of<X>>> split(const X& x, int axis,
                                                                 std::span<const std::int64_t> sizes) {
  using D = device_of<X>;
  using T = element_of<X>;
  constexpr std::string_view op = "ops::split";
  const TensorView<D, const T> v = as_view(x);
  const int a = detail::shape_ops::resolve_axis(axis, v.shape(), op);
  std::int64_t sum = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    detail::check(sizes[i] >= 0, op, "size ", sizes[i], " at position ", i, " of sizes ",
                  detail::shape_ops::list_string(sizes), " is negative");
    sum += sizes[i];
  }
  detail::check(sum == v.shape()[a], op, "sizes ", detail::shape_ops::list_string(sizes), " sum to ", sum,
                " but dimension ", a, " of the input ", v.shape().to_string(), " has size ", v.shape()[a]);
  std::vector<TensorView<D, const T>> parts;
  parts.reserve(sizes.size());
  std::int64_t start = 0;
  for (const std::int64_t s : sizes) {
    parts.push_back(v.slice(a, start, start + s));
    start += s;
  }
  return parts;
}
template <AnyTensor X>
std::vector<TensorView<device_of<X>, const element_of<X>>> split(const X& x, int axis,
                                                                 std::initializer_list<std::int64_t> sizes) {
  return split(x, axis, std::span<const std::int64_t>(sizes.begin(), sizes.size()));
}
// The pieces would point into a tensor destroyed at the end of the statement.
template <Device D, DType T>
void split(Tensor<D, T>&& x, int axis, std::span<const std::int64_t> sizes) = delete;
template <Device D, DType T>
void split(Tensor<D, T>&& x, int axis, std::initializer_list<std::int64_t> sizes) = delete;

// ---- copy_into -----------------------------------------------------------------
//
// Writes the elements of `src` into the existing (possibly strided) view
// `dst` of the same shape and device: how a KV cache appends the new tokens'
// keys into its slab, ops::copy_into(cache.slice(0, len, len + s), k).
// dst and src must not overlap.
template <Device D, DType T, AnyTensor Src>
void copy_into(const TensorView<D, T>& dst, const Src& src) {
  require_same_device<D, device_of<Src>>();
  require_same_dtype<T, element_of<Src>>();
  if constexpr (!detail::operands_on<D, T, Src>) {
    return;  // a gate above has already failed
  } else {
    constexpr std::string_view op = "ops::copy_into";
    const auto vs = as_view(src);
    detail::check(vs.shape() == dst.shape(), op, "destination ", dst.shape().to_string(), " and source ",
                  vs.shape().to_string(), " differ");
    if constexpr (is_cpu_v<D>) {
      tessera::detail::copy_strided(dst.raw(), dst.strides(), vs.raw(), vs.strides(), vs.shape());
    } else {
      detail::cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
        cuda::copy_strided(ctx, dst.device_ptr().get(), dst.strides(), vs.device_ptr().get(), vs.strides(),
                           vs.shape());
      });
    }
  }
}

// ---- slice -------------------------------------------------------------------
//
// Elements [start, stop) of dimension `axis`, as a new contiguous tensor (the
// zero-copy version is x.slice(axis, start, stop)). Negative start / stop
// count from the end of the dimension, as in Python (x[..., -3:] is
// slice(x, -1, -3, n)); after that 0 <= start <= stop <= size must hold (no
// clamping: an out-of-range bound is a ShapeError).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> slice(const X& x, int axis, std::int64_t start, std::int64_t stop) {
  using D = device_of<X>;
  using T = element_of<X>;
  constexpr std::string_view op = "ops::slice";
  const TensorView<D, const T> v = as_view(x);
  const int a = detail::shape_ops::resolve_axis(axis, v.shape(), op);
  const std::int64_t n = v.shape()[a];
  const std::int64_t b = start < 0 ? start + n : start;
  const std::int64_t e = stop < 0 ? stop + n : stop;
  detail::check(b >= 0 && b <= e && e <= n, op, "[", start, ", ", stop, ") is out of range for dimension ", a,
                " of size ", n, " in shape ", v.shape().to_string());
  return detail::shape_ops::materialize<D, T>(v.slice(a, b, e), op);
}

// ---- transpose / permute -----------------------------------------------------

// Swaps dimensions a and b, as a new contiguous tensor (the zero-copy
// version is x.transpose(a, b)).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> transpose(const X& x, int a, int b) {
  using D = device_of<X>;
  using T = element_of<X>;
  constexpr std::string_view op = "ops::transpose";
  const TensorView<D, const T> v = as_view(x);
  const int ra = detail::shape_ops::resolve_axis(a, v.shape(), op);
  const int rb = detail::shape_ops::resolve_axis(b, v.shape(), op);
  return detail::shape_ops::materialize<D, T>(v.transpose(ra, rb), op);
}

// Reorders dimensions (result dimension i is input dimension order[i]), as a
// new contiguous tensor (the zero-copy version is x.permute(order)).
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> permute(const X& x, std::span<const int> order) {
  using D = device_of<X>;
  using T = element_of<X>;
  constexpr std::string_view op = "ops::permute";
  const TensorView<D, const T> v = as_view(x);
  const auto resolved = detail::shape_ops::resolve_order(order, v.shape(), op);
  return detail::shape_ops::materialize<D, T>(
      v.permute(std::span<const int>(resolved.data(), static_cast<std::size_t>(v.rank()))), op);
}
template <AnyTensor X>
Tensor<device_of<X>, element_of<X>> permute(const X& x, std::initializer_list<int> order) {
  return permute(x, std::span<const int>(order.begin(), order.size()));
}

}  // namespace tessera::ops
