// tessera/ops/reduce.hpp — selections over the last dimension: argmax and
// topk (what greedy decoding and top-k sampling need over a vocabulary row).
// Both follow torch's conventions exactly:
//   - ties go to the lowest index (torch.argmax, and torch.topk's order);
//   - NaN counts as larger than every number, +inf included, so a row
//     holding a NaN has its first NaN as argmax, and NaNs lead topk's values
//     (in index order);
//   - -0.0 and +0.0 are equal (a tie, so the lower index wins).
// Inputs are float, bf16 or f16 (compared exactly, in float), of any rank >= 1,
// and may be strided views. On CUDA (ops/cuda/reduce.cuh) the same rules
// give the same indices: argmax is a CUB warp/block reduction per row, topk
// a stable CUB radix sort of every row (device workspace of about 24 bytes
// per input element, allocated per call; none for k = 1, an argmax).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "cuda/reduce.cuh"

namespace tessera::ops {

// The k largest elements of each row (the last dimension) and where they were.
// Both have shape x.shape()[:-1] + [k]; values are copied bit for bit.
template <Device D, DType T>
struct TopK {
  Tensor<D, T> values;
  Tensor<D, std::int64_t> indices;
};

namespace detail {
namespace reduce_ops {

// x.shape()[:-1]
inline Shape leading_shape(const Shape& s) {
  Shape out;
  for (int d = 0; d + 1 < s.rank(); ++d) out.push_back(s[d]);
  return out;
}

inline bool is_nan(float v) { return v != v; }

// The bits of an element widened to float (exact for bf16 and f16).
template <class T>
std::uint32_t float_bits(T v) {
  if constexpr (std::is_same_v<T, bf16>) return static_cast<std::uint32_t>(v.bits) << 16;
  else return std::bit_cast<std::uint32_t>(to_float(v));
}

// A signed integer key with the order of the floats (-0.0 just below +0.0;
// NaN keys are never used: NaN is detected separately). Integer max is
// associative, so the reduction below vectorises without fast-math.
inline std::int32_t order_key(std::uint32_t bits) {
  const std::uint32_t sign_fill = static_cast<std::uint32_t>(static_cast<std::int32_t>(bits) >> 31);
  return static_cast<std::int32_t>(bits ^ (sign_fill & 0x7fffffffu));
}
inline float from_order_key(std::int32_t key) {
  const std::uint32_t sign_fill = static_cast<std::uint32_t>(key >> 31);
  return std::bit_cast<float>(static_cast<std::uint32_t>(key) ^ (sign_fill & 0x7fffffffu));
}
inline bool is_nan_bits(std::uint32_t bits) { return (bits & 0x7fffffffu) > 0x7f800000u; }

// First index j of a contiguous row with pred(row[j]) (n if none), tested a
// block at a time so that the test vectorises.
template <class T, class Pred>
std::int64_t first_where(const T* row, std::int64_t n, Pred pred) {
  constexpr std::int64_t kBlock = 32;
  const std::int64_t full = n - n % kBlock;
  for (std::int64_t i = 0; i < full; i += kBlock) {
    int any = 0;
    for (std::int64_t l = 0; l < kBlock; ++l) any |= static_cast<int>(pred(row[i + l]));
    if (!any) continue;
    for (std::int64_t l = 0; l < kBlock; ++l)
      if (pred(row[i + l])) return i + l;
  }
  for (std::int64_t j = full; j < n; ++j)
    if (pred(row[j])) return j;
  return n;
}

// First index of the maximum (NaN above everything) of n >= 1 elements.
template <class T>
std::int64_t argmax_row(const T* row, std::int64_t n, std::int64_t stride) {
  if (stride != 1) {
    float best = to_float(row[0]);
    if (is_nan(best)) return 0;
    std::int64_t at = 0;
    for (std::int64_t i = 1; i < n; ++i) {
      const float v = to_float(row[i * stride]);
      if (is_nan(v)) return i;
      if (v > best) {
        best = v;
        at = i;
      }
    }
    return at;
  }
  // Contiguous: one branch-free pass (vectorised integer max over order keys,
  // and an OR of NaN tests) finds the maximum and whether a NaN is present;
  // a second pass, which stops early, finds the first position of the
  // maximum (compared as floats, so -0.0 and +0.0 tie) or of the first NaN.
  std::int32_t max_key = std::numeric_limits<std::int32_t>::min();
  std::uint32_t any_nan = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint32_t bits = float_bits(row[i]);
    const std::int32_t key = order_key(bits);
    max_key = key > max_key ? key : max_key;
    any_nan |= static_cast<std::uint32_t>(is_nan_bits(bits));
  }
  if (any_nan) return first_where(row, n, [](T v) { return is_nan_bits(float_bits(v)); });
  const float best = from_order_key(max_key);
  return first_where(row, n, [best](T v) { return to_float(v) == best; });
}

struct Entry {
  float value;
  std::int64_t index;
};

// The strict total order topk sorts by: larger first, NaN before all numbers,
// equal values (and NaN vs NaN) by lower index.
inline bool ranks_before(const Entry& a, const Entry& b) {
  if (a.value > b.value) return true;
  if (a.value < b.value) return false;
  const bool an = is_nan(a.value), bn = is_nan(b.value);
  if (an != bn) return an;
  return a.index < b.index;
}

// Writes the k best entries of a row, best first. `heap` is scratch space.
// Heap selection: the k best so far are kept in a heap whose front is the
// worst of them (std::partial_sort's algorithm, without first copying the
// row), so each further element costs one comparison unless it enters.
template <class T>
void topk_row(const T* row, std::int64_t n, std::int64_t stride, std::int64_t k, std::vector<Entry>& heap,
              T* values, std::int64_t* indices) {
  if (k == 0) return;
  heap.clear();
  for (std::int64_t i = 0; i < k; ++i) heap.push_back({to_float(row[i * stride]), i});
  std::make_heap(heap.begin(), heap.end(), ranks_before);
  // A newcomer must beat the worst kept entry. A later index never wins a
  // tie, so only elements greater than it, or NaN (which the full
  // comparison decides), are candidates at all.
  float worst = heap.front().value;
  const auto consider = [&](std::int64_t i, float v) {
    const Entry e{v, i};
    if (!ranks_before(e, heap.front())) return;
    std::pop_heap(heap.begin(), heap.end(), ranks_before);
    heap.back() = e;
    std::push_heap(heap.begin(), heap.end(), ranks_before);
    worst = heap.front().value;
  };
  std::int64_t i = k;
  if (stride == 1) {
    // Blocks with no candidate (nearly all, once the heap holds large
    // values) are rejected by one vectorised test.
    constexpr std::int64_t kBlock = 32;
    for (; i + kBlock <= n; i += kBlock) {
      int any = 0;
      for (std::int64_t l = 0; l < kBlock; ++l) {
        const float v = to_float(row[i + l]);
        any |= static_cast<int>(v > worst) | static_cast<int>(v != v);
      }
      if (!any) continue;
      for (std::int64_t l = 0; l < kBlock; ++l) {
        const float v = to_float(row[i + l]);
        if (v > worst || is_nan(v)) consider(i + l, v);
      }
    }
  }
  for (; i < n; ++i) {
    const float v = to_float(row[i * stride]);
    if (v > worst || is_nan(v)) consider(i, v);
  }
  std::sort_heap(heap.begin(), heap.end(), ranks_before);
  for (std::size_t j = 0; j < heap.size(); ++j) {
    values[j] = row[heap[j].index * stride];  // the original element, bit for bit
    indices[j] = heap[j].index;
  }
}

// Calls fn(r) for every row, in parallel when there are several rows and
// enough work to pay for starting threads (one vocabulary row stays serial).
template <class Fn>
void for_each_row(std::int64_t rows, [[maybe_unused]] std::int64_t n, const Fn& fn) {
  TESSERA_OMP_PARALLEL_FOR_IF(rows > 1 && rows * n >= kParallelMinElements)
  for (std::int64_t r = 0; r < rows; ++r) fn(r);
}

// The rows of x as the CUDA kernels address them: the leading dimensions
// x.shape()[:-1] with their strides, size-1 dimensions dropped and each
// dimension merged into the next outer one where that one steps over it
// whole (as RowOffsets does), so that a contiguous x has at most one.
inline cuda::StridedLayout cuda_row_layout(const Shape& shape, const Strides& strides) {
  cuda::StridedLayout l;
  for (int d = 0; d + 1 < shape.rank(); ++d) {
    const std::int64_t size = shape[d], stride = strides[static_cast<std::size_t>(d)];
    if (size == 1) continue;
    if (l.rank > 0 && l.strides[l.rank - 1] == stride * size) {
      l.shape[l.rank - 1] *= size;
      l.strides[l.rank - 1] = stride;
      continue;
    }
    l.shape[l.rank] = size;
    l.strides[l.rank] = stride;
    ++l.rank;
  }
  return l;
}

template <class T>
constexpr void require_float_input() {
  static_assert(FloatType<T>, "tessera: ops::argmax / ops::topk need a float, bf16 or f16 tensor");
}

}  // namespace reduce_ops
}  // namespace detail

// Index of the largest element of each row (the last dimension), as int64 of
// shape x.shape()[:-1] (a rank-0 tensor for a vector). Ties go to the lowest
// index; NaN is the maximum (the first NaN wins), as in torch.argmax.
template <AnyTensor X>
Tensor<device_of<X>, std::int64_t> argmax(const X& x) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D>();
  detail::reduce_ops::require_float_input<T>();
  constexpr std::string_view op = "ops::argmax";
  const TensorView<D, const T> v = as_view(x);
  detail::check(v.rank() >= 1, op, "needs a tensor of rank >= 1, got a scalar");
  const std::int64_t n = v.shape()[-1];
  detail::check(n > 0, op, "the last dimension of ", v.shape().to_string(),
                " is empty: there is no maximum of zero elements");
  Tensor<D, std::int64_t> out(detail::reduce_ops::leading_shape(v.shape()));
  if constexpr (is_cpu_v<D>) {
    const T* src = v.raw();
    std::int64_t* dst = out.raw();
    const std::int64_t rows = out.numel();
    const std::int64_t stride = v.strides()[static_cast<std::size_t>(v.rank() - 1)];
    const detail::RowOffsets row_offset(v.shape(), v.strides());
    const auto one_row = [&](std::int64_t r) {
      dst[r] = detail::reduce_ops::argmax_row(src + row_offset(r), n, stride);
    };
    detail::reduce_ops::for_each_row(rows, n, one_row);
  } else {
    const std::int64_t rows = out.numel();
    const std::int64_t stride = v.strides()[static_cast<std::size_t>(v.rank() - 1)];
    const cuda::StridedLayout row_layout = detail::reduce_ops::cuda_row_layout(v.shape(), v.strides());
    detail::cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      cuda::launch_argmax<T>(ctx, out.device_ptr().get(), v.device_ptr().get(), row_layout, rows, n, stride);
    });
  }
  return out;
}

// The k largest elements of each row (the last dimension), sorted descending,
// with their indices; ties (equal values) in increasing index order, NaN
// first, as torch.topk(x, k, sorted=True). Needs 0 <= k <= n, where n is the
// last dimension (k == 0 gives empty results), else a ValueError.
template <AnyTensor X>
TopK<device_of<X>, element_of<X>> topk(const X& x, std::int64_t k) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D>();
  detail::reduce_ops::require_float_input<T>();
  constexpr std::string_view op = "ops::topk";
  const TensorView<D, const T> v = as_view(x);
  detail::check(v.rank() >= 1, op, "needs a tensor of rank >= 1, got a scalar");
  const std::int64_t n = v.shape()[-1];
  detail::check_value(k >= 0 && k <= n, op, "k = ", k, " is out of range for the last dimension of ", v.shape(),
                      " (n = ", n, "); need 0 <= k <= n");
  Shape out_shape = detail::reduce_ops::leading_shape(v.shape());
  const std::int64_t rows = out_shape.numel();
  out_shape.push_back(k);
  TopK<D, T> out{Tensor<D, T>(out_shape), Tensor<D, std::int64_t>(out_shape)};
  if constexpr (is_cpu_v<D>) {
    const T* src = v.raw();
    T* values = out.values.raw();
    std::int64_t* indices = out.indices.raw();
    const std::int64_t stride = v.strides()[static_cast<std::size_t>(v.rank() - 1)];
    const detail::RowOffsets row_offset(v.shape(), v.strides());
    if (k > 0) {
      const auto one_row = [&](std::int64_t r) {
        std::vector<detail::reduce_ops::Entry> heap;
        heap.reserve(static_cast<std::size_t>(k));
        detail::reduce_ops::topk_row(src + row_offset(r), n, stride, k, heap, values + r * k, indices + r * k);
      };
      detail::reduce_ops::for_each_row(rows, n, one_row);
    }
  } else {
    // The sort (k >= 2; k = 1 is an argmax) numbers elements within a row in
    // int32 and rows in the top 32 bits of its keys.
    const bool sortable = n <= std::numeric_limits<std::int32_t>::max() && rows <= (std::int64_t{1} << 32);
    detail::check(k <= 1 || sortable, op, v.shape().to_string(),
                  " exceeds the CUDA topk's limits for k >= 2 (n <= 2^31 - 1, at most 2^32 rows)");
    const std::int64_t stride = v.strides()[static_cast<std::size_t>(v.rank() - 1)];
    const cuda::StridedLayout row_layout = detail::reduce_ops::cuda_row_layout(v.shape(), v.strides());
    detail::cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
      if (rows == 0 || k == 0) return;
      const std::size_t workspace_bytes = cuda::topk_workspace_bytes(rows, n, k);
      const Buffer<D> workspace = workspace_bytes > 0 ? Buffer<D>(workspace_bytes) : Buffer<D>();
      cuda::launch_topk<T>(ctx, out.values.device_ptr().get(), out.indices.device_ptr().get(), v.device_ptr().get(),
                           row_layout, rows, n, stride, k, workspace.get(), workspace_bytes);
    });
  }
  return out;
}

}  // namespace tessera::ops
