// tessera/ops/common.hpp — what every op header shares: argument checks,
// the CPU loop helpers (bf16/f16 computed in float), and the dispatch point
// where the CUDA backend plugs in its launchers.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../core/tensor.hpp"
#include "../core/transfer.hpp"
#include "cuda/launch.hpp"

#if defined(TESSERA_WITH_CUDA)
#include "../core/cuda.hpp"
#endif

// Parallel loops use OpenMP when the translation unit is built with it and
// run serially otherwise; no unknown-pragma warnings either way.
//   TESSERA_OMP_PARALLEL_FOR           always forks (work per iteration is large)
//   TESSERA_OMP_PARALLEL_FOR_IF(cond)  forks only when cond holds, usually
//       `work >= detail::kParallelMinElements`; otherwise the loop runs on the
//       calling thread (an OpenMP `if` clause: no thread is woken). Without
//       OpenMP cond is not evaluated: a variable or parameter used only there
//       needs [[maybe_unused]].
#if defined(_OPENMP)
#define TESSERA_OMP_PRAGMA_(x) _Pragma(#x)
#define TESSERA_OMP_PARALLEL_FOR TESSERA_OMP_PRAGMA_(omp parallel for schedule(static))
#define TESSERA_OMP_PARALLEL_FOR_IF(cond) TESSERA_OMP_PRAGMA_(omp parallel for schedule(static) if(cond))
#else
#define TESSERA_OMP_PARALLEL_FOR
#define TESSERA_OMP_PARALLEL_FOR_IF(cond)
#endif

namespace tessera::ops {

namespace detail {

using tessera::detail::concat;

// Elements a loop must touch before it is worth running across threads: below
// this the fork/join (and, on a loaded machine, waiting for cores) costs more
// than the loop itself, so decode-time work (one token's row, a small add)
// stays on the calling thread. Used as
//   TESSERA_OMP_PARALLEL_FOR_IF(rows * n >= detail::kParallelMinElements)
// for loops doing a few arithmetic operations per element (about 0.5-2 ns).
inline constexpr std::int64_t kParallelMinElements = std::int64_t{1} << 15;

// Loops that evaluate exp, erf, tanh, sin or cos per element cost about ten
// times as much per element (measured 4.5-21 ns for SiLU, GELU, softmax and
// the rotary tables against 0.4-2 ns for add, scale and RMSNorm), so their
// element count is weighed by this factor against kParallelMinElements.
inline constexpr std::int64_t kTranscendentalCost = 8;

// What an op does on Cuda<N> in a build without the CUDA backend (no nvcc,
// or TESSERA_CUDA=OFF): compiles, so device-generic code type-checks, and
// fails clearly at run time.
template <Device D>
[[noreturn]] void cuda_backend_missing(std::string_view op) {
  throw DeviceError(concat(op, " on ", device_name<D>(),
                           ": this build of tessera has no CUDA backend (configure with TESSERA_CUDA=ON "
                           "and link tessera::cuda)"));
}

// The CUDA branch of every op: resolves the logical device D to its context
// (stream, cuBLASLt handle, physical device; a missing device is a
// DeviceError naming it), makes that physical device current for the
// duration, and calls launch(const cuda::LaunchContext&). Work is enqueued on
// D's stream and runs asynchronously; to<Host>(t) waits for it.
template <Device D, class Launch>
void cuda_launch(std::string_view op, Launch&& launch) {
#if defined(TESSERA_WITH_CUDA)
  (void)op;
  const cuda::LaunchContext& ctx = cuda::launch_context<D>();
  const cuda::DeviceGuard guard(ctx.physical_device);
  launch(ctx);
#else
  (void)launch;
  cuda_backend_missing<D>(op);
#endif
}

// A read-only device pointer to `view`'s elements in row-major order: the
// view itself when it is contiguous, otherwise a packed copy it owns (made
// on the view's device). Kernels that take plain row-major operands use it
// for strided inputs.
template <Device D, class T>
class PackedOperand {
 public:
  explicit PackedOperand(const TensorView<D, const T>& view) {
    if (view.is_contiguous()) {
      ptr_ = view.device_ptr();
    } else {
      storage_ = contiguous(view);
      ptr_ = storage_.device_ptr();
    }
  }
  DevicePtr<D, const T> device_ptr() const noexcept { return ptr_; }
  const T* get() const noexcept { return ptr_.get(); }

 private:
  Tensor<D, T> storage_;
  DevicePtr<D, const T> ptr_;
};

template <AnyTensor X>
PackedOperand<device_of<X>, element_of<X>> packed(const X& x) {
  return PackedOperand<device_of<X>, element_of<X>>(as_view(x));
}

// The StridedLayout POD of a shape and strides, or of a view.
using cuda::strided_layout;
template <class V>
cuda::StridedLayout strided_layout(const V& view) {
  return cuda::strided_layout(view.shape(), view.strides());
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

// Throws a ValueError (a bad value, not a bad shape: an id past the
// vocabulary, k > n, a decreasing offset) unless `cond` holds. The parts are
// evaluated on every call: pass a Shape, not shape.to_string(), in loops.
template <class... Parts>
void check_value(bool cond, std::string_view op, const Parts&... parts) {
  if (!cond) throw ValueError(concat(op, ": ", parts...));
}

// operands_on<D, T, X...>: every tensor argument X is on D with element type
// T; float_operands_on also needs T to be a floating-point type. An op whose
// gates (require_same_device, require_same_dtype, require_float_type or its
// own static_assert) have failed returns early under
//   if constexpr (!float_operands_on<D, T, X...>) return {};  // a gate above has already failed
// so its body is never instantiated and the gate's static_assert is the only
// error, not the first of a cascade.
template <class D, class T, class... X>
inline constexpr bool operands_on = (... && (same_device<D, device_of<X>> && std::is_same_v<T, element_of<X>>));
template <class D, class T, class... X>
inline constexpr bool float_operands_on = FloatType<T> && operands_on<D, T, X...>;

template <class T>
constexpr void require_float_type() {
  static_assert(FloatType<T>, "tessera: this op needs floating-point operands (float, bf16 or f16)");
}

// Element offsets of the rows of a strided operand, where a row is the last
// dimension and rows are numbered row-major over all the others:
// `RowOffsets rows(shape, strides); rows(r)` is where row r starts. Computed
// from the row index alone, so rows may be visited in any order and in
// parallel, over strided and broadcast (stride 0) operands alike. Leading
// dimensions are merged up front where one continues the next (and size-1
// ones dropped), so a contiguous or evenly strided operand costs one multiply
// per row, and any other one division per remaining dimension.
class RowOffsets {
 public:
  RowOffsets(const Shape& shape, const Strides& strides) {
    for (int d = 0; d + 1 < shape.rank(); ++d) {
      const std::int64_t size = shape[d], stride = strides[static_cast<std::size_t>(d)];
      if (size == 1) continue;
      if (rank_ > 0 && strides_[static_cast<std::size_t>(rank_ - 1)] == stride * size) {
        dims_[static_cast<std::size_t>(rank_ - 1)] *= size;  // the outer dimension steps over this one whole
        strides_[static_cast<std::size_t>(rank_ - 1)] = stride;
        continue;
      }
      dims_[static_cast<std::size_t>(rank_)] = size;
      strides_[static_cast<std::size_t>(rank_)] = stride;
      ++rank_;
    }
  }

  std::int64_t operator()(std::int64_t row) const {
    if (rank_ <= 1) return rank_ == 0 ? 0 : row * strides_[0];
    std::int64_t offset = 0;
    for (int d = rank_ - 1; d >= 0; --d) {
      const auto ud = static_cast<std::size_t>(d);
      offset += (row % dims_[ud]) * strides_[ud];
      row /= dims_[ud];
    }
    return offset;
  }

 private:
  std::array<std::int64_t, kMaxRank> dims_{}, strides_{};
  int rank_ = 0;
};

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
// A contiguous x is processed in parallel when n * cost reaches
// kParallelMinElements (cost: kTranscendentalCost when fn calls exp & co.).
template <class TOut, class V, class Fn>
void cpu_unary(TOut* out, const V& x, Fn&& fn, [[maybe_unused]] std::int64_t cost = 1) {
  using TIn = typename V::value_type;
  const auto* src = x.raw();
  if (x.is_contiguous()) {
    const std::int64_t n = x.numel();
    TESSERA_OMP_PARALLEL_FOR_IF(n * cost >= kParallelMinElements)
    for (std::int64_t i = 0; i < n; ++i) out[i] = from_float<TOut>(fn(to_float<TIn>(src[i])));
    return;
  }
  for_each_offset<1>(x.shape(), {x.strides()}, [&](std::int64_t i, const auto& off) {
    out[i] = from_float<TOut>(fn(to_float<TIn>(src[off[0]])));
  });
}

// out = fn(a, b) with broadcasting, in float; out is contiguous with shape `shape`.
// Parallel as cpu_unary when a and b are contiguous and of that shape.
template <class TOut, class VA, class VB, class Fn>
void cpu_binary(TOut* out, const Shape& shape, const VA& a, const VB& b, Fn&& fn,
                [[maybe_unused]] std::int64_t cost = 1) {
  using TA = typename VA::value_type;
  using TB = typename VB::value_type;
  const auto* pa = a.raw();
  const auto* pb = b.raw();
  if (a.shape() == shape && b.shape() == shape && a.is_contiguous() && b.is_contiguous()) {
    const std::int64_t n = shape.numel();
    TESSERA_OMP_PARALLEL_FOR_IF(n * cost >= kParallelMinElements)
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
