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
// CUDA: cuBLASLt (ops/cuda/matmul.cuh) with float accumulation and float
// alpha/beta, so bf16/f16 products are rounded once to T as here; float is
// true fp32 (no TF32). The same views are multiplied without copies:
// operands with a unit stride in one of their last two dimensions are read
// in place (as GEMM transposes where needed), batch dimensions with any
// strides are walked as strided batches (stride 0 for a shared b), and only
// operands with neither unit stride are packed first. The bias is added in
// cuBLASLt's epilogue (or preset into the output, beta = 1), in float.
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
#include "cuda/matmul.cuh"

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
template <class V>
bool rows_fold_over_batch(const V& view, const GemmLayout& layout, int batch_rank) {
  if (layout.trans) return false;
  std::int64_t expected = view.dim(-2) * layout.ld;
  for (int d = batch_rank - 1; d >= 0; --d) {
    const std::int64_t size = view.dim(d);
    if (size != 1 && view.strides()[static_cast<std::size_t>(d)] != expected) return false;
    expected *= size;
  }
  return true;
}
template <Device D>
bool rows_fold_over_batch(const FloatOperand<D>& a, int batch_rank) {
  return rows_fold_over_batch(a.view, a.layout, batch_rank);
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

// ---- CUDA: cuBLASLt --------------------------------------------------------

// The largest GEMM dimension, leading dimension and batch count cuBLASLt
// takes here (its int32 sizes).
inline constexpr std::int64_t kCudaGemmMax = std::numeric_limits<std::int32_t>::max();

// A GEMM operand on a CUDA device: the caller's view when cuBLASLt can
// address its last two dimensions (gemm_layout: one of them has unit
// stride, and the leading dimension fits in int32), otherwise a packed
// row-major copy (detail::packed). Batch dimensions are never copied: any
// strides are walked by the batch plan.
template <Device D, class T>
struct CudaGemmOperand {
  std::optional<PackedOperand<D, T>> packed;
  TensorView<D, const T> view;
  GemmLayout layout;
};

template <Device D, class T>
void prepare_cuda_operand(CudaGemmOperand<D, T>& op, const TensorView<D, const T>& v) {
  const std::optional<GemmLayout> layout = gemm_layout(v);
  if (layout && layout->ld <= kCudaGemmMax) {
    op.view = v;
    op.layout = *layout;
    return;
  }
  op.packed.emplace(v);
  op.view = TensorView<D, const T>::over_device_memory(op.packed->device_ptr(), v.shape());
  op.layout = gemm_layout(op.view).value();  // row-major [rows, cols]: NoTrans, ld = max(cols, 1)
}

// How the batch of a GEMM is walked on the GPU. Batch dimension d of a
// (stride sa), b (sb, 0 for a 2-D b shared by the batch) and the contiguous
// output (sc) are merged with the next outer one wherever all three strides
// continue (size-1 dimensions dropped); the largest merged dimension goes to
// cuBLASLt as its strided batch and the others are walked on the host. The
// common cases (contiguous batches, a transposed b, a shared b) are one call.
template <class VA, class VB>
cuda::GemmBatch plan_cuda_batch(const Shape& batch, const VA& a, const VB& b, bool b_shared, std::int64_t mn) {
  struct Dim {
    std::int64_t size, sa, sb, sc;
  };
  std::vector<Dim> dims;  // innermost first
  std::int64_t sc = mn;
  for (int d = batch.rank() - 1; d >= 0; --d) {
    const auto ud = static_cast<std::size_t>(d);
    const Dim dim{batch[d], a.strides()[ud], b_shared ? 0 : b.strides()[ud], sc};
    sc *= batch[d];
    if (dim.size == 1) continue;
    if (!dims.empty()) {
      Dim& inner = dims.back();
      if (dim.sa == inner.sa * inner.size && dim.sb == inner.sb * inner.size && dim.sc == inner.sc * inner.size) {
        inner.size *= dim.size;
        continue;
      }
    }
    dims.push_back(dim);
  }
  cuda::GemmBatch plan;
  if (dims.empty()) return plan;
  const auto largest = std::max_element(dims.begin(), dims.end(), [](const Dim& x, const Dim& y) {
    return x.size < y.size;
  });
  plan.count = largest->size;
  plan.stride_a = largest->sa;
  plan.stride_b = largest->sb;
  plan.stride_c = largest->sc;
  for (auto it = dims.rbegin(); it != dims.rend(); ++it) {  // outermost first
    if (it.base() - 1 == largest) continue;
    const auto d = static_cast<std::size_t>(plan.outer_rank++);
    plan.outer_shape[d] = it->size;
    plan.outer_a[d] = it->sa;
    plan.outer_b[d] = it->sb;
    plan.outer_c[d] = it->sc;
  }
  return plan;
}

// Enqueues out = a @ b (+ bias) on ctx's device: a [batch..., M, K] with
// K >= 1, b [batch..., K, N] or [K, N], out contiguous [batch..., M, N]
// (M, N >= 1), bias contiguous [N] or null. Device-agnostic host logic: the
// operands are only addressed, never read, on the host.
template <Device D, class T>
void enqueue_cuda_gemm(const cuda::LaunchContext& ctx, T* out, const TensorView<D, const T>& a,
                       const TensorView<D, const T>& b, const T* bias, const Shape& batch, std::string_view op) {
  const std::int64_t m = a.dim(-2), k = a.dim(-1), n = b.dim(-1);
  CudaGemmOperand<D, T> ga, gb;
  prepare_cuda_operand(ga, a);
  prepare_cuda_operand(gb, b);
  const bool b_shared = b.rank() == 2;
  std::int64_t rows = m;
  cuda::GemmBatch plan;
  // [batch..., M, K] rows continuing over the batch against a shared b:
  // one [batch * M, K] GEMM (the usual linear layer).
  if (b_shared && rows_fold_over_batch(ga.view, ga.layout, batch.rank()) && batch.numel() * m <= kCudaGemmMax) {
    rows = batch.numel() * m;
  } else {
    plan = plan_cuda_batch(batch, ga.view, gb.view, b_shared, m * n);
    check(plan.count <= kCudaGemmMax, op, "a batch of ", plan.count, " matrices exceeds cuBLASLt's ", kCudaGemmMax,
          " limit");
  }
  const cuda::GemmOperand<T> ca{ga.view.device_ptr().get(), ga.layout.trans, ga.layout.ld};
  const cuda::GemmOperand<T> cb{gb.view.device_ptr().get(), gb.layout.trans, gb.layout.ld};
  cuda::launch_gemm<T>(ctx, out, ca, cb, bias, rows, n, k, plan);
}

// cpu_matmul's contract on a CUDA device: out = a @ b (+ bias), rounded once.
template <Device D, class T>
Tensor<D, T> cuda_matmul(const TensorView<D, const T>& a, const TensorView<D, const T>& b,
                         const std::optional<TensorView<D, const T>>& bias, const Shape& batch, const Shape& out_shape,
                         std::string_view op) {
  Tensor<D, T> out(out_shape);
  if (out.numel() == 0) return out;
  const std::int64_t m = a.dim(-2), k = a.dim(-1), n = b.dim(-1);
  check(m <= kCudaGemmMax && n <= kCudaGemmMax && k <= kCudaGemmMax, op, "GEMM of ", m, " x ", k, " by ", k, " x ",
        n, " exceeds cuBLASLt's ", kCudaGemmMax, " element limit per dimension");
  cuda_launch<D>(op, [&](const cuda::LaunchContext& ctx) {
    std::optional<PackedOperand<D, T>> packed_bias;
    if (bias) packed_bias.emplace(*bias);
    const T* bias_ptr = packed_bias ? packed_bias->get() : nullptr;
    if (k == 0) {  // an empty sum: out = bias rows or zeros; the empty operands are not read
      cuda::GemmBatch all_rows;
      all_rows.count = batch.numel();
      all_rows.stride_c = m * n;
      cuda::launch_gemm<T>(ctx, out.device_ptr().get(), {}, {}, bias_ptr, m, n, 0, all_rows);
      return;
    }
    enqueue_cuda_gemm<D, T>(ctx, out.device_ptr().get(), a, b, bias_ptr, batch, op);
  });
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
  else return cuda_matmul<D, T>(a, b, std::nullopt, batch, out_shape, op);
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
  else return cuda_matmul<D, T>(rows, weight.transpose(0, 1), bias, batch, out_shape, op);
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
