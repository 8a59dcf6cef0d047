// tessera/ops/matmul.hpp — matrix products: matmul (batched, with a 2-D
// right-hand side broadcast across the batch) and linear (x @ weight^T + bias,
// with weight in Hugging Face's [out, in] layout).
//
// CPU: OpenBLAS cblas_sgemm. Transposed operands come from views: a view whose
// last-dimension stride is 1 goes to BLAS as NoTrans, one whose second-to-last
// stride is 1 as Trans, so ops::matmul(a, b.transpose(-2, -1)) and linear's
// weight never copy (float). Any other layout is materialised first.
// bf16/f16 operands are widened to float (keeping their memory order, so a
// transposed operand stays a BLAS transpose), multiplied in float, and the
// result (bias included) is rounded once to T.
// The O(n^2) passes around the GEMM (widening, bias rows, rounding) run on the
// calling thread: OpenBLAS's own threads do the O(n^3) work, and an OpenMP
// team spinning after a parallel region right before the GEMM would take
// their cores (measured on 2 shared cores: a 256^3 float linear with a
// parallel bias fill took 13 ms instead of 1 ms).
// CUDA launchers: ops/cuda/matmul.cuh (CUDA backend issue).
#pragma once

// OpenBLAS's config header uses C99 _Complex, which clang's -Wpedantic
// rejects in C++ when the header is not on a system include path.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#endif
#include <cblas.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include <limits>
#include <optional>

#include "common.hpp"

namespace tessera::ops {

namespace detail {

// How BLAS reads the trailing [rows, cols] matrix of a view: row-major
// (NoTrans, element (i, j) at i*ld + j) or its transpose (Trans, at j*ld + i).
struct GemmLayout {
  bool trans = false;
  std::int64_t ld = 1;
};

// The BLAS layout of a view's last two dimensions, or nullopt when BLAS cannot
// address them (no unit-stride dimension, a stride-0 broadcast, or a leading
// dimension too small or too large for BLAS) and the operand must be
// materialised. The stride of a size-1 dimension is never stepped, so it is
// ignored: a [1, K] row or a [K, 1] column is always addressable.
template <class V>
std::optional<GemmLayout> gemm_layout(const V& v) {
  const std::int64_t rows = v.dim(-2), cols = v.dim(-1);
  const std::int64_t row_stride = v.stride(-2), col_stride = v.stride(-1);
  const std::int64_t max_ld = std::numeric_limits<blasint>::max();
  if ((cols == 1 || col_stride == 1) && (rows == 1 || row_stride >= std::max<std::int64_t>(cols, 1))) {
    const std::int64_t ld = rows == 1 ? std::max<std::int64_t>(cols, 1) : row_stride;
    if (ld <= max_ld) return GemmLayout{false, ld};
  }
  if ((rows == 1 || row_stride == 1) && (cols == 1 || col_stride >= std::max<std::int64_t>(rows, 1))) {
    const std::int64_t ld = cols == 1 ? std::max<std::int64_t>(rows, 1) : col_stride;
    if (ld <= max_ld) return GemmLayout{true, ld};
  }
  return std::nullopt;
}

// A GEMM operand as float in a layout BLAS can address. `view` points into the
// caller's tensor (float operands already addressable) or into `owned`, a
// widened or materialised copy that lives as long as the operand.
template <Device D>
struct FloatOperand {
  Tensor<D, float> owned;
  TensorView<D, const float> view;
  GemmLayout layout;
};

// dst (contiguous, row-major) = float(src) for any strided CPU view.
template <Device D, class T>
void cpu_widen(float* dst, const TensorView<D, const T>& src) {
  if (src.is_contiguous()) {
    const T* p = src.raw();
    for (std::int64_t i = 0, n = src.numel(); i < n; ++i) dst[i] = to_float<T>(p[i]);
    return;
  }
  for_each_offset<1>(src.shape(), {src.strides()},
                     [&](std::int64_t i, const auto& off) { dst[i] = to_float<T>(src.raw()[off[0]]); });
}

// Prepares one operand. Half types are widened in the operand's own memory
// order (a transposed operand is widened as its transpose, then viewed back),
// so the widened copy is a plain contiguous pass and BLAS still transposes.
template <Device D, class T>
FloatOperand<D> float_operand(const TensorView<D, const T>& v) {
  const std::optional<GemmLayout> layout = gemm_layout(v);
  FloatOperand<D> op;
  if constexpr (std::is_same_v<T, float>) {
    if (layout) {
      op.view = v;
      op.layout = *layout;
      return op;
    }
    op.owned = contiguous(v);  // no BLAS layout: gather into row-major order
    op.view = op.owned.view();
  } else {
    const bool trans = layout && layout->trans;
    const TensorView<D, const T> stored = trans ? v.transpose(-2, -1) : v;
    op.owned = Tensor<D, float>(stored.shape());
    cpu_widen(op.owned.raw(), stored);
    op.view = trans ? op.owned.view().transpose(-2, -1) : op.owned.view();
  }
  op.layout = gemm_layout(op.view).value();  // a contiguous copy (or its transpose) always has one
  return op;
}

// Whether the batch dimensions of a NoTrans operand continue its row stride,
// so [batch..., M, K] can be read as one [batch*M, K] matrix (one BLAS call
// instead of one per batch element: the common linear-layer case).
template <Device D>
bool rows_fold_over_batch(const FloatOperand<D>& a, int batch_rank) {
  if (a.layout.trans) return false;
  std::int64_t expected = a.view.dim(-2) * a.layout.ld;
  for (int d = batch_rank - 1; d >= 0; --d) {
    const std::int64_t size = a.view.dim(d);
    if (size != 1 && a.view.strides()[static_cast<std::size_t>(d)] != expected) return false;
    expected *= size;
  }
  return true;
}

inline blasint blas_int(std::int64_t v) { return static_cast<blasint>(v); }

// C[m, n] = A @ B + beta * C for row-major C with leading dimension n.
inline void sgemm(const GemmLayout& la, const float* a, const GemmLayout& lb, const float* b, float* c, std::int64_t m,
                  std::int64_t n, std::int64_t k, float beta) {
  cblas_sgemm(CblasRowMajor, la.trans ? CblasTrans : CblasNoTrans, lb.trans ? CblasTrans : CblasNoTrans, blas_int(m),
              blas_int(n), blas_int(k), 1.0f, a, blas_int(la.ld), b, blas_int(lb.ld), beta, c, blas_int(n));
}

// Checks that the GEMM sizes fit BLAS's integer type; tessera's shapes are 64-bit.
inline void check_blas_range(std::string_view op, std::int64_t rows, std::int64_t n, std::int64_t k) {
  const std::int64_t max = std::numeric_limits<blasint>::max();
  check(rows <= max && n <= max && k <= max, op, "GEMM of ", rows, " x ", k, " by ", k, " x ", n,
        " exceeds BLAS's ", max, " element limit per dimension");
}

// C[batch..., M, N] (contiguous float) = A @ B + beta * C for every batch
// index. M, N and K are >= 1; `b` has a's batch dimensions or none (a [K, N]
// matrix shared by the whole batch). The batch is walked with a's and b's own
// batch strides, so batch dimensions of views need no copy.
template <Device D>
void cpu_gemm(float* c, const Shape& batch, const FloatOperand<D>& a, const FloatOperand<D>& b, float beta,
              std::string_view op) {
  const std::int64_t m = a.view.dim(-2), k = a.view.dim(-1), n = b.view.dim(-1);
  const bool b_shared = b.view.rank() == 2;
  if (b_shared && rows_fold_over_batch(a, batch.rank())) {
    check_blas_range(op, batch.numel() * m, n, k);
    sgemm(a.layout, a.view.raw(), b.layout, b.view.raw(), c, batch.numel() * m, n, k, beta);
    return;
  }
  check_blas_range(op, m, n, k);
  Strides a_batch{}, b_batch{};
  for (int d = 0; d < batch.rank(); ++d) {
    const auto ud = static_cast<std::size_t>(d);
    a_batch[ud] = a.view.strides()[ud];
    b_batch[ud] = b_shared ? 0 : b.view.strides()[ud];
  }
  for_each_offset<2>(batch, {a_batch, b_batch}, [&](std::int64_t i, const auto& off) {
    sgemm(a.layout, a.view.raw() + off[0], b.layout, b.view.raw() + off[1], c + i * m * n, m, n, k, beta);
  });
}

// Sets every row of the contiguous [rows, n] float matrix c to `bias` (or to
// zero without one): the starting C of a GEMM run with beta = 1.
template <Device D, class T>
void cpu_fill_rows(float* c, std::int64_t rows, std::int64_t n, const std::optional<TensorView<D, const T>>& bias) {
  const T* src = bias ? bias->raw() : nullptr;
  const std::int64_t step = bias ? bias->stride(0) : 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    float* row = c + r * n;
    for (std::int64_t j = 0; j < n; ++j) row[j] = src ? to_float<T>(src[j * step]) : 0.0f;
  }
}

// out = a @ b (+ bias along the last dimension) for checked operands on a CPU
// slot: a [batch..., M, K], b [batch..., K, N] or [K, N], out `out_shape`
// (batch..., M, N elements, contiguous). Half types accumulate into a float
// buffer that is rounded once to T at the end.
template <Device D, class T>
Tensor<D, T> cpu_matmul(const TensorView<D, const T>& a, const TensorView<D, const T>& b,
                        const std::optional<TensorView<D, const T>>& bias, const Shape& batch, const Shape& out_shape,
                        std::string_view op) {
  Tensor<D, T> out(out_shape);
  if (out.numel() == 0) return out;
  const std::int64_t k = a.dim(-1), n = b.dim(-1);
  Tensor<D, float> widened_out;
  float* c = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    c = out.raw();
  } else {
    widened_out = Tensor<D, float>(out_shape);
    c = widened_out.raw();
  }
  // With a bias (or K == 0, an empty sum) C starts from the bias rows (or
  // zeros) and BLAS adds onto it; otherwise BLAS overwrites C (beta = 0).
  const bool preset = bias.has_value() || k == 0;
  if (preset) cpu_fill_rows<D, T>(c, out.numel() / n, n, bias);
  if (k > 0) cpu_gemm<D>(c, batch, float_operand(a), float_operand(b), preset ? 1.0f : 0.0f, op);
  if constexpr (!std::is_same_v<T, float>) {
    T* dst = out.raw();
    const std::int64_t count = out.numel();
    for (std::int64_t i = 0; i < count; ++i) dst[i] = from_float<T>(c[i]);
  }
  return out;
}

// The batch shape of a @ b, after checking that a is [..., M, K] and b is
// [..., K, N] with a's batch dimensions, or [K, N].
inline Shape matmul_batch(const Shape& a, const Shape& b, std::string_view op) {
  check(a.rank() >= 2 && b.rank() >= 2, op, "a ", a.to_string(), " and b ", b.to_string(),
        " must both have rank >= 2 (a [..., M, K], b [..., K, N] or [K, N])");
  check(a[-1] == b[-2], op, "a ", a.to_string(), " and b ", b.to_string(), " do not multiply: a has K = ", a[-1],
        " but b has K = ", b[-2]);
  Shape batch;
  for (int d = 0; d < a.rank() - 2; ++d) batch.push_back(a[d]);
  if (b.rank() == 2) return batch;
  Shape b_batch;
  for (int d = 0; d < b.rank() - 2; ++d) b_batch.push_back(b[d]);
  check(batch == b_batch, op, "a ", a.to_string(), " and b ", b.to_string(), " have different batch dimensions (",
        batch.to_string(), " vs ", b_batch.to_string(), "); b must have a's batch dimensions or be 2-D [K, N]");
  return batch;
}

template <Device D, class T>
Tensor<D, T> matmul(const TensorView<D, const T>& a, const TensorView<D, const T>& b) {
  constexpr std::string_view op = "ops::matmul";
  const Shape batch = matmul_batch(a.shape(), b.shape(), op);
  Shape out_shape = batch;
  out_shape.push_back(a.dim(-2));
  out_shape.push_back(b.dim(-1));
  if constexpr (is_cpu_v<D>) return cpu_matmul<D, T>(a, b, std::nullopt, batch, out_shape, op);
  else cuda_backend_missing<D>(op);
}

// x [..., in] @ weight[out, in]^T (+ bias [out]) -> [..., out]. `op` names the
// public op in messages (ops::linear, or a patch embedding built on it).
template <Device D, class T>
Tensor<D, T> linear(const TensorView<D, const T>& x, const TensorView<D, const T>& weight,
                    const std::optional<TensorView<D, const T>>& bias, std::string_view op) {
  check(x.rank() >= 1 && weight.rank() == 2, op, "x ", x.shape().to_string(), " must be [..., in] and weight ",
        weight.shape().to_string(), " [out, in]");
  check(x.dim(-1) == weight.dim(1), op, "x ", x.shape().to_string(), " has ", x.dim(-1),
        " input features but weight ", weight.shape().to_string(), " expects ", weight.dim(1));
  if (bias) {
    check(bias->rank() == 1 && bias->dim(0) == weight.dim(0), op, "bias ", bias->shape().to_string(),
          " must be [", weight.dim(0), "] for weight ", weight.shape().to_string());
  }
  // A 1-D x is one row; the output keeps x's leading dimensions.
  const TensorView<D, const T> rows = x.rank() == 1 ? x.unsqueeze(0) : x;
  Shape batch;
  for (int d = 0; d < rows.rank() - 2; ++d) batch.push_back(rows.dim(d));
  Shape out_shape = x.shape();
  out_shape[-1] = weight.dim(0);
  // weight^T is a view: stride[-2] is 1, so BLAS reads it as Trans, no copy.
  if constexpr (is_cpu_v<D>) return cpu_matmul<D, T>(rows, weight.transpose(0, 1), bias, batch, out_shape, op);
  else cuda_backend_missing<D>(op);
}

}  // namespace detail

// a [..., M, K] @ b [..., K, N] -> [..., M, N]. b may instead be 2-D [K, N],
// shared by every batch element; otherwise the batch dimensions must be equal.
// Transposed views (t.transpose(-2, -1)) are multiplied without a copy.
template <AnyTensor A, AnyTensor B>
Tensor<device_of<A>, element_of<A>> matmul(const A& a, const B& b) {
  using D = device_of<A>;
  using T = element_of<A>;
  require_same_device<D, device_of<B>>();
  require_same_dtype<T, element_of<B>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, B>) return {};  // a gate above has already failed
  else return detail::matmul<D, T>(as_view(a), as_view(b));
}

// x [..., in] @ weight^T with weight [out, in] (Hugging Face layout) -> [..., out].
template <AnyTensor X, AnyTensor W>
Tensor<device_of<X>, element_of<X>> linear(const X& x, const W& weight) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D, device_of<W>>();
  require_same_dtype<T, element_of<W>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W>) return {};  // a gate above has already failed
  else return detail::linear<D, T>(as_view(x), as_view(weight), std::nullopt, "ops::linear");
}

// x [..., in] @ weight^T + bias with weight [out, in] and bias [out] -> [..., out].
// The bias is added in float before the single rounding to T.
template <AnyTensor X, AnyTensor W, AnyTensor Bias>
Tensor<device_of<X>, element_of<X>> linear(const X& x, const W& weight, const Bias& bias) {
  using D = device_of<X>;
  using T = element_of<X>;
  require_same_device<D, device_of<W>, device_of<Bias>>();
  require_same_dtype<T, element_of<W>, element_of<Bias>>();
  detail::require_float_type<T>();
  if constexpr (!detail::float_operands_on<D, T, W, Bias>) return {};  // a gate above has already failed
  else return detail::linear<D, T>(as_view(x), as_view(weight), as_view(bias), "ops::linear");
}

}  // namespace tessera::ops
