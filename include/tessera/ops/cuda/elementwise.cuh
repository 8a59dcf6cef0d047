// tessera/ops/cuda/elementwise.cuh — CUDA launchers for ops/elementwise.hpp
// (add, sub, mul with numpy broadcasting, scale, residual add, casts), and
// the pointwise machinery the activation launchers share: a unary and a
// binary map over (possibly strided or broadcast) operands into a contiguous
// output.
//
// Every map picks one of two kernels on the host:
// - contiguous: all operands are row-major over the output's shape. Each
//   thread moves packs of 16 bytes (8 bf16/f16, 4 floats) in a grid-stride
//   loop; the n % pack tail is handled element by element in the same
//   kernel. Used only when every pointer is aligned to its pack size.
// - strided: one thread per output element, each operand read at the offset
//   its strides give (stride 0 on broadcast dimensions). Dimensions are
//   merged on the host first where every operand steps over them as one (and
//   size-1 dimensions dropped), so the per-element index arithmetic runs over
//   as few dimensions as the layouts allow, in 32-bit when the sizes fit.
//   A contiguous operand that is not 16-byte aligned takes this path too (its
//   layout merges to one unit-stride dimension: no division at all).
#pragma once

#include <cstddef>
#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

enum class BinaryOp { add, sub, mul };

// out = a (op) b, computed in float and rounded once to T (integer T: as on
// the CPU, through float and truncated back). a_layout and
// b_layout both have the output's shape (broadcast dimensions carry stride
// 0); out is contiguous row-major. out may be a itself when a is contiguous
// over that shape (residual_add): each element is read before it is written,
// by the same thread.
template <class T>
void launch_binary(const LaunchContext& ctx, BinaryOp op, T* out, const T* a, const StridedLayout& a_layout,
                   const T* b, const StridedLayout& b_layout);

// out = x * factor (in float, rounded once to T; integer T as launch_binary);
// out is contiguous.
template <class T>
void launch_scale(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, float factor);

// out = convert<To>(x) with the host's rules (tessera::convert): bf16/f16
// go through float; into bf16/f16 rounds to nearest even (from an integer:
// first to float, then to the half type, as on the host); into an integer
// truncates toward zero. Out-of-range float -> integer conversions (and NaN)
// are undefined on the host; on the GPU they saturate (NaN gives 0).
template <class To, class From>
void launch_cast(const LaunchContext& ctx, To* out, const From* x, const StridedLayout& x_layout);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <type_traits>

#include "common.cuh"

// `#pragma unroll` for loops in __host__ __device__ functions: the host
// compiler does not know the pragma (an -Wunknown-pragmas error here).
#if defined(__CUDA_ARCH__)
#define TESSERA_POINTWISE_UNROLL _Pragma("unroll")
#else
#define TESSERA_POINTWISE_UNROLL
#endif

namespace tessera::cuda {

namespace kernels::pointwise {

constexpr int kMaxDims = 8;  // tessera's kMaxRank
constexpr int kBlock = 256;  // threads per block of every pointwise kernel

// K operands read over one shared shape, outermost dimension first. Passed
// to kernels by value; the kernels index it with compile-time indices only
// (unrolled loops guarded by `d < rank`), so it stays in parameter space.
template <int K>
struct Layouts {
  int rank = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t strides[K][kMaxDims] = {};
};

// 16 bytes (or fewer when kVec * sizeof(N) is) moved as one load or store.
template <class N, int kVec>
struct alignas(sizeof(N) * kVec) Pack {
  N v[kVec];
};

// i % d, leaving i / d in i (i >= 0, d > 0). 64-bit division is a long
// software sequence on the GPU; 32-bit is a handful of instructions, and
// every index and size fits in 32 bits unless the tensor has 2^32 elements.
// (__host__ too, so the index arithmetic can be checked on a machine without
// a GPU.)
__host__ __device__ inline std::int64_t div_mod(std::int64_t& i, std::int64_t d) {
  if (static_cast<std::uint64_t>(i | d) <= 0xffffffffull) {
    const auto a = static_cast<std::uint32_t>(i), b = static_cast<std::uint32_t>(d);
    const std::uint32_t q = a / b;
    i = q;
    return static_cast<std::int64_t>(a - q * b);
  }
  const std::int64_t q = i / d;
  const std::int64_t r = i - q * d;
  i = q;
  return r;
}

// Element offsets in each of the K operands of row-major element i.
// The outermost index needs no division: i < numel bounds it already.
template <int K>
__host__ __device__ inline void offsets_of(const Layouts<K>& l, std::int64_t i, std::int64_t (&off)[K]) {
TESSERA_POINTWISE_UNROLL
  for (int k = 0; k < K; ++k) off[k] = 0;
TESSERA_POINTWISE_UNROLL
  for (int d = kMaxDims - 1; d > 0; --d) {
    if (d < l.rank) {
      const std::int64_t idx = div_mod(i, l.shape[d]);
TESSERA_POINTWISE_UNROLL
      for (int k = 0; k < K; ++k) off[k] += idx * l.strides[k][d];
    }
  }
  if (l.rank > 0) {
TESSERA_POINTWISE_UNROLL
    for (int k = 0; k < K; ++k) off[k] += i * l.strides[k][0];
  }
}

__device__ inline std::int64_t thread_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

// ---- element functions (native element types in, native out) ----

template <class N>
inline constexpr bool is_half_v = std::is_same_v<N, __nv_bfloat16> || std::is_same_v<N, __half>;

// tessera::convert on the device: the same recursion, the same roundings.
template <class To, class From>
__device__ inline To convert_element(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (is_half_v<From>) {
    return convert_element<To>(to_float(v));
  } else if constexpr (is_half_v<To>) {
    return from_float<To>(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

template <class To, class From>
struct Convert {
  __device__ To operator()(From v) const { return convert_element<To>(v); }
};

// f computed in float and converted once back to N, as the CPU's
// cpu_unary / cpu_binary do for every element type (an integer operand goes
// through float too, and the result truncates back).
template <class N, class F>
struct InFloat {
  F f;
  __device__ N operator()(N v) const { return convert_element<N>(f(convert_element<float>(v))); }
  __device__ N operator()(N a, N b) const {
    return convert_element<N>(f(convert_element<float>(a), convert_element<float>(b)));
  }
};

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Sub {
  __device__ float operator()(float a, float b) const { return a - b; }
};
struct Mul {
  __device__ float operator()(float a, float b) const { return a * b; }
};
struct Scale {
  float factor;
  __device__ float operator()(float v) const { return v * factor; }
};

// ---- kernels ----

// Contiguous unary map. Thread t of the grid handles packs t, t + threads,
// ... of kVec consecutive elements (x[p*kVec .. p*kVec+kVec) -> out[same]);
// afterwards the first n % kVec threads handle one tail element each.
// x and out must be aligned to their pack sizes.
template <int kVec, class Out, class In, class Fn>
__global__ void __launch_bounds__(kBlock) unary_contiguous_kernel(Out* out, const In* x, std::int64_t n, Fn fn) {
  const std::int64_t packs = n / kVec;
  const auto* xp = reinterpret_cast<const Pack<In, kVec>*>(x);
  auto* op = reinterpret_cast<Pack<Out, kVec>*>(out);
  for (std::int64_t p = thread_index(); p < packs; p += grid_stride()) {
    const Pack<In, kVec> v = xp[p];
    Pack<Out, kVec> r;
#pragma unroll
    for (int j = 0; j < kVec; ++j) r.v[j] = fn(v.v[j]);
    op[p] = r;
  }
  const std::int64_t tail = packs * kVec + thread_index();
  if (tail < n) out[tail] = fn(x[tail]);
}

// Strided unary map: thread per output element i (grid-stride); x is read
// at its layout's offset of i, out[i] is written contiguously.
template <class Out, class In, class Fn>
__global__ void __launch_bounds__(kBlock) unary_strided_kernel(Out* out, const In* x, Layouts<1> l, std::int64_t n,
                                                                Fn fn) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    std::int64_t off[1];
    offsets_of(l, i, off);
    out[i] = fn(x[off[0]]);
  }
}

// Contiguous binary map, packs as unary_contiguous_kernel. No __restrict__:
// out may be a (an in-place residual add); every element of a is read by the
// thread that then writes the same element of out.
template <int kVec, class N, class Fn>
__global__ void __launch_bounds__(kBlock) binary_contiguous_kernel(N* out, const N* a, const N* b, std::int64_t n,
                                                                    Fn fn) {
  const std::int64_t packs = n / kVec;
  const auto* ap = reinterpret_cast<const Pack<N, kVec>*>(a);
  const auto* bp = reinterpret_cast<const Pack<N, kVec>*>(b);
  auto* op = reinterpret_cast<Pack<N, kVec>*>(out);
  for (std::int64_t p = thread_index(); p < packs; p += grid_stride()) {
    const Pack<N, kVec> va = ap[p];
    const Pack<N, kVec> vb = bp[p];
    Pack<N, kVec> r;
#pragma unroll
    for (int j = 0; j < kVec; ++j) r.v[j] = fn(va.v[j], vb.v[j]);
    op[p] = r;
  }
  const std::int64_t tail = packs * kVec + thread_index();
  if (tail < n) out[tail] = fn(a[tail], b[tail]);
}

// Strided / broadcast binary map: thread per output element i; a and b are
// read at their own offsets of i (stride 0 repeats a broadcast operand).
template <class N, class Fn>
__global__ void __launch_bounds__(kBlock) binary_strided_kernel(N* out, const N* a, const N* b, Layouts<2> l,
                                                                 std::int64_t n, Fn fn) {
  for (std::int64_t i = thread_index(); i < n; i += grid_stride()) {
    std::int64_t off[2];
    offsets_of(l, i, off);
    out[i] = fn(a[off[0]], b[off[1]]);
  }
}

}  // namespace kernels::pointwise

// ---- host side: layout merging, grid sizing, kernel choice ----
namespace pointwise {

using kernels::pointwise::kBlock;
using kernels::pointwise::kMaxDims;
using kernels::pointwise::Layouts;

inline std::int64_t numel_of(const StridedLayout& l) {
  std::int64_t n = 1;
  for (int d = 0; d < l.rank; ++d) n *= l.shape[d];
  return n;
}

// The K layouts (same shape) with size-1 dimensions dropped and each
// dimension merged into the one inside it wherever every operand steps over
// the inner one whole (stride[outer] == stride[inner] * size[inner]).
template <int K>
Layouts<K> merge_dims(const StridedLayout* const (&in)[K]) {
  // Built innermost first, reversed at the end.
  Layouts<K> rev;
  const StridedLayout& ref = *in[0];
  for (int d = ref.rank - 1; d >= 0; --d) {
    const std::int64_t size = ref.shape[d];
    if (size == 1) continue;
    bool merges = rev.rank > 0;
    for (int k = 0; k < K && merges; ++k) {
      merges = in[k]->strides[d] == rev.strides[k][rev.rank - 1] * rev.shape[rev.rank - 1];
    }
    if (merges) {
      rev.shape[rev.rank - 1] *= size;
      continue;
    }
    rev.shape[rev.rank] = size;
    for (int k = 0; k < K; ++k) rev.strides[k][rev.rank] = in[k]->strides[d];
    ++rev.rank;
  }
  Layouts<K> out;
  out.rank = rev.rank;
  for (int d = 0; d < rev.rank; ++d) {
    out.shape[d] = rev.shape[rev.rank - 1 - d];
    for (int k = 0; k < K; ++k) out.strides[k][d] = rev.strides[k][rev.rank - 1 - d];
  }
  return out;
}

// Every operand is row-major over the shape (after merge_dims: at most one
// dimension, of unit stride).
template <int K>
bool all_contiguous(const Layouts<K>& l) {
  if (l.rank == 0) return true;
  if (l.rank > 1) return false;
  for (int k = 0; k < K; ++k) {
    if (l.strides[k][0] != 1) return false;
  }
  return true;
}

inline bool aligned(const void* p, std::size_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// Blocks of kBlock threads for `items` work items: one item per thread up to
// 32 blocks per SM, then the kernels' grid-stride loops take over.
inline unsigned blocks_for(const LaunchContext& ctx, std::int64_t items) {
  const std::int64_t cap = ctx.sm_count > 0 ? std::int64_t{ctx.sm_count} * 32 : std::int64_t{65535} * 32;
  return kernels::grid_blocks(items, kBlock, cap);
}

// Elements per 16-byte pack for the wider of the operand types.
template <class... N>
constexpr int pack_width() {
  constexpr std::size_t widest = std::max({sizeof(N)...});
  return static_cast<int>(16 / widest);
}

// out[i] = fn(x at i) over x's layout; N types are CUDA's own.
template <class Out, class In, class Fn>
void run_unary(const LaunchContext& ctx, Out* out, const In* x, const StridedLayout& x_layout, Fn fn,
               const char* op) {
  const std::int64_t n = numel_of(x_layout);
  if (n == 0) return;
  const StridedLayout* const layouts[1] = {&x_layout};
  const Layouts<1> l = merge_dims<1>(layouts);
  constexpr int kVec = pack_width<Out, In>();
  if (all_contiguous(l) && aligned(x, sizeof(In) * kVec) && aligned(out, sizeof(Out) * kVec)) {
    kernels::pointwise::unary_contiguous_kernel<kVec>
        <<<blocks_for(ctx, (n + kVec - 1) / kVec), kBlock, 0, ctx.stream>>>(out, x, n, fn);
  } else {
    kernels::pointwise::unary_strided_kernel<<<blocks_for(ctx, n), kBlock, 0, ctx.stream>>>(out, x, l, n, fn);
  }
  check_launch(op);
}

// out[i] = fn(a at i, b at i) over the shared shape of a_layout and b_layout.
template <class N, class Fn>
void run_binary(const LaunchContext& ctx, N* out, const N* a, const StridedLayout& a_layout, const N* b,
                const StridedLayout& b_layout, Fn fn, const char* op) {
  const std::int64_t n = numel_of(a_layout);
  if (n == 0) return;
  const StridedLayout* const layouts[2] = {&a_layout, &b_layout};
  const Layouts<2> l = merge_dims<2>(layouts);
  constexpr int kVec = pack_width<N>();
  constexpr std::size_t kPackBytes = sizeof(N) * kVec;
  if (all_contiguous(l) && aligned(a, kPackBytes) && aligned(b, kPackBytes) && aligned(out, kPackBytes)) {
    kernels::pointwise::binary_contiguous_kernel<kVec>
        <<<blocks_for(ctx, (n + kVec - 1) / kVec), kBlock, 0, ctx.stream>>>(out, a, b, n, fn);
  } else {
    kernels::pointwise::binary_strided_kernel<<<blocks_for(ctx, n), kBlock, 0, ctx.stream>>>(out, a, b, l, n, fn);
  }
  check_launch(op);
}

}  // namespace pointwise

template <class T>
void launch_binary(const LaunchContext& ctx, BinaryOp op, T* out, const T* a, const StridedLayout& a_layout,
                   const T* b, const StridedLayout& b_layout) {
  using N = kernels::native_t<T>;
  namespace pw = kernels::pointwise;
  const auto o = kernels::as_native(out);
  const auto pa = kernels::as_native(a);
  const auto pb = kernels::as_native(b);
  switch (op) {
    case BinaryOp::add:
      pointwise::run_binary(ctx, o, pa, a_layout, pb, b_layout, pw::InFloat<N, pw::Add>{}, "ops::add");
      break;
    case BinaryOp::sub:
      pointwise::run_binary(ctx, o, pa, a_layout, pb, b_layout, pw::InFloat<N, pw::Sub>{}, "ops::sub");
      break;
    case BinaryOp::mul:
      pointwise::run_binary(ctx, o, pa, a_layout, pb, b_layout, pw::InFloat<N, pw::Mul>{}, "ops::mul");
      break;
  }
}

template <class T>
void launch_scale(const LaunchContext& ctx, T* out, const T* x, const StridedLayout& x_layout, float factor) {
  using N = kernels::native_t<T>;
  namespace pw = kernels::pointwise;
  pointwise::run_unary(ctx, kernels::as_native(out), kernels::as_native(x), x_layout,
                       pw::InFloat<N, pw::Scale>{pw::Scale{factor}}, "ops::scale");
}

template <class To, class From>
void launch_cast(const LaunchContext& ctx, To* out, const From* x, const StridedLayout& x_layout) {
  using NTo = kernels::native_t<To>;
  using NFrom = kernels::native_t<From>;
  pointwise::run_unary(ctx, kernels::as_native(out), kernels::as_native(x), x_layout,
                       kernels::pointwise::Convert<NTo, NFrom>{}, "ops::cast");
}

}  // namespace tessera::cuda
#endif
