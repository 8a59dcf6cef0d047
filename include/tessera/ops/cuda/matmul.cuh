// tessera/ops/cuda/matmul.cuh — the GEMM behind ops::matmul and ops::linear
// on Cuda<N>: cuBLASLt with float accumulation (CUBLAS_COMPUTE_32F, float
// alpha/beta) for float, bf16 and f16. Float is true fp32 (no TF32).
//
// Row-major vs column-major: tessera's tensors are row-major, cuBLASLt's
// matrices column-major, and a row-major [R, C] matrix is exactly the
// column-major [C, R] matrix of its transpose. So C = A B (row-major) is
// computed as C^T = B^T A^T in cuBLASLt's terms: cuBLASLt's "A" is our b,
// its "B" is our a, its m is our n and its n is our m; C^T comes out
// column-major [n, m] with ld n, which is C row-major [m, n]. No copy.
//
// Rounding: the product, the bias (CUBLASLT_EPILOGUE_BIAS, or C preset to
// the bias rows with beta = 1) and the sum are all in float, then rounded
// once to T, as on the CPU. Split-K algorithms that keep partial sums in the
// output type (reduction schemes INPLACE and OUTPUT_TYPE round each partial
// to bf16/f16) are excluded for that reason.
#pragma once

#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// One GEMM operand, described as tessera sees it: the trailing row-major
// [rows, cols] matrix of a view (ops/matmul.hpp's GemmLayout): element
// (i, j) at i * ld + j (trans = false) or at j * ld + i (trans = true).
template <class T>
struct GemmOperand {
  const T* data = nullptr;
  bool trans = false;
  std::int64_t ld = 1;
};

// The batch walked around one [m, k] x [k, n] product. `count` matrices
// spaced by the stride_* elements go to cuBLASLt as one strided batch
// (stride 0 for an operand shared by the batch); the outer dimensions, whose
// strides cannot be merged into that one, are walked on the host (one
// cuBLASLt call per outer index, offsets outer_*[d] per step of dimension d).
struct GemmBatch {
  std::int64_t count = 1;
  std::int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  int outer_rank = 0;
  std::int64_t outer_shape[8] = {};
  std::int64_t outer_a[8] = {}, outer_b[8] = {}, outer_c[8] = {};
};

// c = a @ b (+ bias[n] on every row) for every batch index. c is written
// row-major [m, n] per batch matrix (ld n) at batch offsets stride_c /
// outer_c; bias is contiguous or null. m, n, k, the leading dimensions and
// batch.count must fit in int32 (the op header checks); m, n >= 1 and
// k == 0 (an empty sum: c = bias or 0) is allowed.
template <class T>
void launch_gemm(const LaunchContext& ctx, T* c, const GemmOperand<T>& a, const GemmOperand<T>& b, const T* bias,
                 std::int64_t m, std::int64_t n, std::int64_t k, const GemmBatch& batch);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <array>
#include <map>
#include <mutex>
#include <optional>

#include "common.cuh"

namespace tessera::cuda {

namespace kernels {

// Every row of the contiguous [rows, n] matrix `out` (total = rows * n
// elements) set to bias (or zero without one). Thread t of the grid writes
// elements t, t + grid size, ...; the column is the element's index mod n.
template <class N>
__global__ void fill_rows_kernel(N* out, const N* bias, std::int64_t total, std::int64_t n) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    out[i] = bias ? bias[i % n] : from_float<N>(0.0f);
  }
}

}  // namespace kernels

namespace gemm_detail {

template <class T>
constexpr cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, bf16>) return CUDA_R_16BF;
  else return CUDA_R_16F;
}

// Owners of the cuBLASLt descriptors (destroyed on every path, exceptions
// included).
struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  MatmulDesc() { check(cublasLtMatmulDescCreate(&handle, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate"); }
  ~MatmulDesc() { cublasLtMatmulDescDestroy(handle); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attribute, const V& value) {
    check(cublasLtMatmulDescSetAttribute(handle, attribute, &value, sizeof value), "cublasLtMatmulDescSetAttribute");
  }
};

struct MatrixLayout {
  cublasLtMatrixLayout_t handle = nullptr;
  MatrixLayout(cudaDataType_t type, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
    check(cublasLtMatrixLayoutCreate(&handle, type, static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols),
                                     ld),
          "cublasLtMatrixLayoutCreate");
  }
  ~MatrixLayout() { cublasLtMatrixLayoutDestroy(handle); }
  MatrixLayout(const MatrixLayout&) = delete;
  MatrixLayout& operator=(const MatrixLayout&) = delete;
  void set_batch(std::int64_t count, std::int64_t stride) {
    const std::int32_t count32 = static_cast<std::int32_t>(count);
    check(cublasLtMatrixLayoutSetAttribute(handle, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count32, sizeof count32),
          "cublasLtMatrixLayoutSetAttribute");
    check(cublasLtMatrixLayoutSetAttribute(handle, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
          "cublasLtMatrixLayoutSetAttribute");
  }
};

struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  Preference() { check(cublasLtMatmulPreferenceCreate(&handle), "cublasLtMatmulPreferenceCreate"); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(handle); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  template <class V>
  void set(cublasLtMatmulPreferenceAttributes_t attribute, const V& value) {
    check(cublasLtMatmulPreferenceSetAttribute(handle, attribute, &value, sizeof value),
          "cublasLtMatmulPreferenceSetAttribute");
  }
};

// Which operand's batch strides a computation is about.
enum class Operand { a, b, c };

inline std::int64_t inner_stride(const GemmBatch& batch, Operand which) {
  return which == Operand::a ? batch.stride_a : which == Operand::b ? batch.stride_b : batch.stride_c;
}
inline std::int64_t outer_stride(const GemmBatch& batch, Operand which, int d) {
  return which == Operand::a ? batch.outer_a[d] : which == Operand::b ? batch.outer_b[d] : batch.outer_c[d];
}

// The largest power of two <= 256 dividing the byte address of every matrix
// of `which` that the call touches: the base pointer and each batch step
// that is taken. cuBLASLt is told this alignment
// (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES) so that its heuristic offers
// only algorithms able to read these pointers: tensors from the allocator
// are 256-byte aligned, views into them may not be.
inline std::uint32_t alignment_bytes(const void* base, std::size_t element_bytes, const GemmBatch& batch,
                                     Operand which) {
  std::uint64_t bits = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(base));
  if (batch.count > 1) bits |= static_cast<std::uint64_t>(inner_stride(batch, which)) * element_bytes;
  for (int d = 0; d < batch.outer_rank; ++d) {
    if (batch.outer_shape[d] > 1) bits |= static_cast<std::uint64_t>(outer_stride(batch, which, d)) * element_bytes;
  }
  std::uint32_t alignment = 256;
  while (alignment > 1 && bits % alignment != 0) alignment /= 2;
  return alignment;
}

// Heuristic results already asked for, by everything the heuristic sees
// (device, types, shapes, transposes, leading dimensions, batch strides,
// alignments, epilogue, workspace), so a shape seen before costs no query.
// nullopt records that cuBLASLt offered nothing. Only the heuristic's answer
// is cached: the descriptors themselves are plain host structs, created and
// destroyed per call (microseconds), which keeps the cache a POD map.
// Thread-safe (one mutex; the lookup is short next to the GEMM). Bounded:
// cleared past kMaxEntries (a model uses a few dozen shapes; a changing
// sequence length adds some).
using AlgoKey = std::array<std::int64_t, 24>;
struct AlgoCache {
  static constexpr std::size_t kMaxEntries = 4096;
  std::mutex mutex;
  std::map<AlgoKey, std::optional<cublasLtMatmulAlgo_t>> entries;
};
inline AlgoCache& algo_cache() {
  static AlgoCache cache;
  return cache;
}

// What one attempt at the GEMM needs; `bias_epilogue` selects
// CUBLASLT_EPILOGUE_BIAS, beta is 0 (overwrite) or 1 (C preset in place).
template <class T>
struct GemmCall {
  T* c;
  GemmOperand<T> a, b;
  const T* bias;
  std::int64_t m, n, k;
  GemmBatch batch;
};

// The stored [rows, cols] matrix cuBLASLt reads for a tessera operand whose
// logical (row-major) shape is [rows, cols], and the op that recovers the
// transpose cuBLASLt needs (see the top of this file): a NoTrans operand is
// already its own transpose stored column-major (op N, [cols, rows]); a
// Trans operand is stored column-major as itself (op T, [rows, cols]).
struct StoredMatrix {
  cublasOperation_t op;
  std::int64_t rows, cols, ld;
};
template <class T>
StoredMatrix stored(const GemmOperand<T>& x, std::int64_t rows, std::int64_t cols) {
  if (x.trans) return {CUBLAS_OP_T, rows, cols, x.ld};
  return {CUBLAS_OP_N, cols, rows, x.ld};
}

// Runs the GEMM with cuBLASLt's best algorithm for it, or returns false
// (having done nothing) when cuBLASLt offers none.
template <class T>
bool try_gemm(const LaunchContext& ctx, const GemmCall<T>& g, bool bias_epilogue, float beta) {
  constexpr cudaDataType_t type = data_type<T>();
  // cuBLASLt's A is our b ([k, n] logical), its B our a ([m, k] logical).
  const StoredMatrix sa = stored(g.b, g.k, g.n);
  const StoredMatrix sb = stored(g.a, g.m, g.k);
  MatmulDesc desc;
  desc.set(CUBLASLT_MATMUL_DESC_TRANSA, sa.op);
  desc.set(CUBLASLT_MATMUL_DESC_TRANSB, sb.op);
  if (bias_epilogue) {
    // One bias element per row of cuBLASLt's D ([n, m] column-major), i.e.
    // per output feature; the same vector for every batch matrix (bias batch
    // stride 0, the default). Stored as T, the output type (the documented
    // bias type for float/bf16/f16 outputs), read exactly into float.
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    desc.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, static_cast<const void*>(g.bias));
    desc.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(type));
  }
  MatrixLayout la(type, sa.rows, sa.cols, sa.ld);
  MatrixLayout lb(type, sb.rows, sb.cols, sb.ld);
  MatrixLayout lc(type, g.n, g.m, g.n);  // C and D: the same column-major [n, m], ld n
  if (g.batch.count > 1) {
    la.set_batch(g.batch.count, g.batch.stride_b);
    lb.set_batch(g.batch.count, g.batch.stride_a);
    lc.set_batch(g.batch.count, g.batch.stride_c);
  }
  // (cuBLASLt's A is our b and its B our a.)
  const std::uint32_t align_a = alignment_bytes(g.b.data, sizeof(T), g.batch, Operand::b);
  const std::uint32_t align_b = alignment_bytes(g.a.data, sizeof(T), g.batch, Operand::a);
  const std::uint32_t align_c = alignment_bytes(g.c, sizeof(T), g.batch, Operand::c);
  const std::uint32_t align_bias = bias_epilogue ? alignment_bytes(g.bias, sizeof(T), GemmBatch{}, Operand::c) : 0;

  const AlgoKey key{ctx.physical_device, ctx.compute_capability, static_cast<std::int64_t>(type), sa.op, sb.op,
                    sa.rows, sa.cols, sa.ld, sb.rows, sb.cols, sb.ld, g.n, g.m, g.batch.count,
                    g.batch.count > 1 ? g.batch.stride_a : 0, g.batch.count > 1 ? g.batch.stride_b : 0,
                    g.batch.count > 1 ? g.batch.stride_c : 0, align_a, align_b, align_c, align_bias,
                    bias_epilogue ? 1 : 0, static_cast<std::int64_t>(ctx.workspace_bytes),
                    static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(ctx.blas_lt))};
  std::optional<cublasLtMatmulAlgo_t> algo;
  bool cached = false;
  {
    AlgoCache& cache = algo_cache();
    const std::lock_guard lock(cache.mutex);
    if (const auto it = cache.entries.find(key); it != cache.entries.end()) {
      algo = it->second;
      cached = true;
    }
  }
  if (!cached) {
    Preference pref;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<std::uint64_t>(ctx.workspace_bytes));
    // Partial sums stay in float: no split-K scheme that rounds them to T.
    pref.set(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
             static_cast<std::uint32_t>(CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx.blas_lt, desc.handle, la.handle, lb.handle,
                                                                 lc.handle, lc.handle, pref.handle, 1, &result, &found);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) check(status, "cublasLtMatmulAlgoGetHeuristic");
    if (status == CUBLAS_STATUS_SUCCESS && found > 0) algo = result.algo;
    AlgoCache& cache = algo_cache();
    const std::lock_guard lock(cache.mutex);
    if (cache.entries.size() >= AlgoCache::kMaxEntries) cache.entries.clear();
    cache.entries.emplace(key, algo);
  }
  if (!algo) return false;

  // One call per outer batch index (usually exactly one call).
  std::int64_t outer_count = 1;
  for (int d = 0; d < g.batch.outer_rank; ++d) outer_count *= g.batch.outer_shape[d];
  const float alpha = 1.0f;
  for (std::int64_t outer = 0; outer < outer_count; ++outer) {
    std::int64_t off_a = 0, off_b = 0, off_c = 0;
    for (std::int64_t d = g.batch.outer_rank - 1, rest = outer; d >= 0; --d) {
      const std::int64_t i = rest % g.batch.outer_shape[d];
      rest /= g.batch.outer_shape[d];
      off_a += i * g.batch.outer_a[d];
      off_b += i * g.batch.outer_b[d];
      off_c += i * g.batch.outer_c[d];
    }
    T* c = g.c + off_c;
    check(cublasLtMatmul(ctx.blas_lt, desc.handle, &alpha, g.b.data + off_b, la.handle, g.a.data + off_a, lb.handle,
                         &beta, c, lc.handle, c, lc.handle, &*algo, ctx.workspace, ctx.workspace_bytes, ctx.stream),
          "cublasLtMatmul (ops::matmul / ops::linear)");
  }
  return true;
}

// c (contiguous, total elements) = bias rows or zeros.
template <class T>
void fill_rows(const LaunchContext& ctx, T* c, const T* bias, std::int64_t total, std::int64_t n) {
  using N = kernels::native_t<T>;
  constexpr int kThreads = 256;
  kernels::fill_rows_kernel<N><<<kernels::grid_blocks(total, kThreads), kThreads, 0, ctx.stream>>>(
      kernels::as_native(c), kernels::as_native(bias), total, n);
  check_launch("ops::matmul / ops::linear (bias rows)");
}

}  // namespace gemm_detail

template <class T>
void launch_gemm(const LaunchContext& ctx, T* c, const GemmOperand<T>& a, const GemmOperand<T>& b, const T* bias,
                 std::int64_t m, std::int64_t n, std::int64_t k, const GemmBatch& batch) {
  std::int64_t matrices = batch.count;
  for (int d = 0; d < batch.outer_rank; ++d) matrices *= batch.outer_shape[d];
  if (m <= 0 || n <= 0 || matrices <= 0) return;
  // c is contiguous over the whole batch (the op's fresh output), so the
  // bias rows (or zeros) can be written in one pass.
  const std::int64_t total = matrices * m * n;
  if (k == 0) {  // an empty sum: no GEMM, c = bias rows or zeros, as on the CPU
    gemm_detail::fill_rows(ctx, c, bias, total, n);
    return;
  }
  const gemm_detail::GemmCall<T> call{c, a, b, bias, m, n, k, batch};
  if (bias && gemm_detail::try_gemm(ctx, call, /*bias_epilogue=*/true, 0.0f)) return;
  // Without the epilogue: C preset to the bias rows and beta = 1 gives the
  // same single rounding of (product + bias) in float.
  if (bias) gemm_detail::fill_rows(ctx, c, bias, total, n);
  if (gemm_detail::try_gemm(ctx, call, /*bias_epilogue=*/false, bias ? 1.0f : 0.0f)) return;
  throw DeviceError(tessera::detail::concat("ops::matmul / ops::linear: cuBLASLt offers no algorithm for a ", m, " x ",
                                            k, " by ", k, " x ", n, " GEMM (batch ", matrices, ", a ",
                                            a.trans ? "transposed" : "row-major", " ld ", a.ld, ", b ",
                                            b.trans ? "transposed" : "row-major", " ld ", b.ld, ")"));
}

}  // namespace tessera::cuda
#endif
