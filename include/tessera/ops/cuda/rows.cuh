// tessera/ops/cuda/rows.cuh — what the row-wise kernels (RMSNorm, LayerNorm,
// softmax) and rotary embedding share: where each row of a strided operand
// starts, the split of a row into 16-byte chunks over the threads that own
// the row, chunk loads and stores (one vector access when aligned, element by
// element otherwise), and deterministic reductions over a row's threads.
// nvcc only (the kernel headers include it inside `#if __CUDACC__`).
//
// Chunking. A row of n elements of type T is cut into chunks of V = 16 /
// sizeof(T) consecutive elements (the last one may be partial). Thread t of
// the R threads that own a row takes chunks t, t + R, t + 2R, ... and always
// processes them in that order and element by element within a chunk, whether
// it loads a chunk with one 16-byte access or element by element. So what a
// row reduces to depends only on n and R (which the launch derives from n and
// the element size), never on pointer alignment or strides: a fused kernel and
// the unfused kernels it replaces agree bit for bit.
#pragma once

#if !defined(__CUDACC__)
#error "tessera/ops/cuda/rows.cuh is CUDA C++: include it from a .cu translation unit"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace tessera::cuda {

// Where the rows of an operand start: rows are the last dimension, numbered
// row-major over the leading ones. `outer` holds the leading dimensions with
// size-1 ones dropped and a dimension merged into the one before it where that
// one steps over it whole (so a contiguous or evenly strided operand has rank
// <= 1 and costs one multiply per row); `inner` is the element stride along a
// row (0 for a broadcast row).
struct RowLayout {
  StridedLayout outer;
  std::int64_t inner = 1;
};

// Host side ------------------------------------------------------------------

// The row layout of an operand of rank >= 1 given as a full layout.
inline RowLayout row_layout(const StridedLayout& full) {
  RowLayout l;
  l.inner = full.strides[full.rank - 1];
  int rank = 0;
  for (int d = 0; d + 1 < full.rank; ++d) {
    const std::int64_t size = full.shape[d], stride = full.strides[d];
    if (size == 1) continue;
    if (rank > 0 && l.outer.strides[rank - 1] == stride * size) {
      l.outer.shape[rank - 1] *= size;  // the previous dimension steps over this one whole
      l.outer.strides[rank - 1] = stride;
      continue;
    }
    l.outer.shape[rank] = size;
    l.outer.strides[rank] = stride;
    ++rank;
  }
  l.outer.rank = rank;
  return l;
}

// The row length (last dimension) and row count (product of the others).
inline std::int64_t row_length(const StridedLayout& full) { return full.shape[full.rank - 1]; }
inline std::int64_t row_count(const StridedLayout& full) {
  std::int64_t rows = 1;
  for (int d = 0; d + 1 < full.rank; ++d) rows *= full.shape[d];
  return rows;
}

inline bool is_aligned(const void* p, std::size_t alignment) {
  return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
}

// Whether every row of `l` starting from `base` begins on an `alignment`-byte
// boundary and is contiguous (inner stride 1), for elements of `element_bytes`.
inline bool rows_aligned(const RowLayout& l, const void* base, std::size_t element_bytes, std::size_t alignment) {
  if (l.inner != 1 || !is_aligned(base, alignment)) return false;
  const auto a = static_cast<std::int64_t>(alignment);
  const auto e = static_cast<std::int64_t>(element_bytes);
  for (int d = 0; d < l.outer.rank; ++d) {
    if ((l.outer.strides[d] * e) % a != 0) return false;
  }
  return true;
}

// Calls f(std::true_type{}) or f(std::false_type{}): how a launcher picks the
// vector or the element-wise instantiation of a kernel.
template <class F>
void with_vector_flag(bool vector, F&& f) {
  if (vector) f(std::true_type{});
  else f(std::false_type{});
}

// Threads per row and rows per block for a row of `chunks` chunks, where a
// kernel keeps up to `cache_chunks` chunks per thread in registers between
// the reduction and the write (rows longer than that re-read the rest):
//  * Short rows (at most 32 * cache_chunks chunks) get one warp each, four
//    rows per 128-thread block, and are reduced with shuffles alone.
//  * Longer rows get a block each, of about one thread per two chunks (a
//    multiple of 32, between 64 and 1024), reduced through shared memory.
struct RowLaunch {
  dim3 grid;
  dim3 block;
};

inline RowLaunch row_launch(std::int64_t rows, std::int64_t chunks, int cache_chunks) {
  RowLaunch l;
  if (chunks <= 32 * static_cast<std::int64_t>(cache_chunks)) {
    constexpr int rows_per_block = 4;
    l.block = dim3(32, rows_per_block);
    l.grid = dim3(kernels::grid_blocks(rows, rows_per_block));
  } else {
    const std::int64_t threads = std::clamp<std::int64_t>(((chunks + 1) / 2 + 31) / 32 * 32, 64, 1024);
    l.block = dim3(static_cast<unsigned>(threads));
    l.grid = dim3(kernels::grid_blocks(rows, 1));
  }
  return l;
}

// Device side ----------------------------------------------------------------

namespace kernels {

// Elements per 16-byte chunk of T.
template <class T>
inline constexpr int kChunk = static_cast<int>(16 / sizeof(T));

// Element offset of row r.
__device__ inline std::int64_t row_start(const RowLayout& l, std::int64_t r) {
  if (l.outer.rank == 0) return 0;
  if (l.outer.rank == 1) return r * l.outer.strides[0];
  return strided_offset(l.outer, r);
}

// The rows this thread works on: row = first_row(), then += row_step(). With
// one row per block (blockDim.y == 1) the sequence is the same for the whole
// block, so block-wide barriers inside the loop are reached by every thread.
__device__ inline std::int64_t first_row() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
}
__device__ inline std::int64_t row_step() { return static_cast<std::int64_t>(gridDim.x) * blockDim.y; }

// V elements of E as one or more aligned vector accesses (V * sizeof(E) is
// 16 * k, 8, 4 or 2 bytes; p is aligned to min(16, V * sizeof(E))).
template <int V, class E>
__device__ inline void load_vector(E (&v)[V], const E* p) {
  constexpr int bytes = V * static_cast<int>(sizeof(E));
  if constexpr (bytes % 16 == 0) {
#pragma unroll
    for (int k = 0; k < bytes / 16; ++k) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[k];
      memcpy(reinterpret_cast<char*>(v) + 16 * k, &u, 16);
    }
  } else if constexpr (bytes == 8) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    memcpy(v, &u, 8);
  } else if constexpr (bytes == 4) {
    const unsigned u = *reinterpret_cast<const unsigned*>(p);
    memcpy(v, &u, 4);
  } else {
    static_assert(bytes == 2, "load_vector: unsupported chunk size");
    const unsigned short u = *reinterpret_cast<const unsigned short*>(p);
    memcpy(v, &u, 2);
  }
}

// __stwb (a plain write-back store) always emits one 16-byte store, where a
// uint4 assignment may be split into narrower stores by the optimiser.
template <int V, class E>
__device__ inline void store_vector(E* p, const E (&v)[V]) {
  constexpr int bytes = V * static_cast<int>(sizeof(E));
  static_assert(bytes % 16 == 0, "store_vector: stores are whole 16-byte chunks");
#pragma unroll
  for (int k = 0; k < bytes / 16; ++k) {
    uint4 u;
    memcpy(&u, reinterpret_cast<const char*>(v) + 16 * k, 16);
    __stwb(reinterpret_cast<uint4*>(p) + k, u);
  }
}

// Loads chunk c of a row (elements [c*V, c*V + V) clipped to n) whose element
// i is row[i * stride]; returns how many elements are valid. kVector: one
// vector access, the caller having checked stride == 1, n % V == 0 and the
// alignment of every chunk (a template flag, so that the vector kernels carry
// no element-wise addressing). Invalid elements are zero.
template <bool kVector, int V, class E>
__device__ inline int load_chunk(E (&v)[V], const E* row, std::int64_t stride, std::int64_t c, std::int64_t n) {
  const std::int64_t first = c * V;
  if constexpr (kVector) {
    (void)n;
    (void)stride;
    load_vector(v, row + first);
    return V;
  } else {
    const std::int64_t left = n - first;
    const int count = left < V ? static_cast<int>(left) : V;
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = j < count ? row[(first + j) * stride] : E{};
    return count;
  }
}

// Stores the first `count` elements of chunk c of a contiguous row.
template <bool kVector, int V, class E>
__device__ inline void store_chunk(E* row, const E (&v)[V], std::int64_t c, int count) {
  const std::int64_t first = c * V;
  if constexpr (kVector) {
    (void)count;
    store_vector(row + first, v);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (j < count) row[first + j] = v[j];
    }
  }
}

// Butterfly sum over a warp: every lane ends with the same bits (each step
// adds the same two values on both partner lanes).
__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the blockDim.x threads of one row: a warp (blockDim.x == 32) or the
// whole block (then blockDim.y == 1 and every thread of the block must call
// it). Every thread gets the same bits. `scratch` holds 32 floats of shared
// memory, free again when this returns.
__device__ inline float row_sum(float v, float* scratch) {
  v = warp_sum(v);
  if (blockDim.x <= 32) return v;
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = warp_sum(lane < warps ? scratch[lane] : 0.0f);  // every warp reduces the partials in the same order
  __syncthreads();
  return v;
}

}  // namespace kernels
}  // namespace tessera::cuda
