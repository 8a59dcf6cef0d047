// tessera/ops/cuda/reduce.cuh — argmax and topk over the last dimension on
// Cuda<N>, with the CPU's (torch's) rules: NaN ranks above every number
// (+inf included) and NaNs among themselves by index; equal values (-0.0 and
// +0.0 included) by lower index. Values are compared in float (exact for
// bf16 and f16).
//
// argmax: a (value, index) reduction under that total order, through CUB
// (cub::WarpReduce with a warp per row for short rows, cub::BlockReduce with
// a block per row for long ones, e.g. a 151936-entry vocabulary row).
// topk: every element gets a 64-bit key, row in the high 32 bits and below
// it a 32-bit key that orders the values descending (NaN first, -0.0 = +0.0);
// one device-wide stable cub::DeviceRadixSort over all rows at once then
// leaves each row's elements best first, equal keys in increasing index
// order (LSD radix sort is stable), and the first k of each row are
// gathered. k == 1 is an argmax instead (no sort, no workspace).
#pragma once

#include <cstddef>
#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// Rows: `rows` is the layout of the leading dimensions (x.shape()[:-1],
// size-1 dimensions dropped and continuing ones merged) giving the offset of
// each row's first element; `row_count` its element count, `n` the row
// length and `stride` the last dimension's stride.

// out[r] = index of the maximum of row r (n >= 1).
template <class T>
void launch_argmax(const LaunchContext& ctx, std::int64_t* out, const T* x, const StridedLayout& rows,
                   std::int64_t row_count, std::int64_t n, std::int64_t stride);

// Bytes of device workspace launch_topk needs for row_count rows of n
// elements and this k (0 when k <= 1 or there is nothing to do). Needs
// n <= 2^31 - 1 and row_count <= 2^32 (the op header checks).
std::size_t topk_workspace_bytes(std::int64_t row_count, std::int64_t n, std::int64_t k);

// values/indices [row_count, k] (contiguous) = the k best elements of each
// row, best first, and their indices; 0 <= k <= n. `workspace` holds
// topk_workspace_bytes(row_count, n, k) bytes.
template <class T>
void launch_topk(const LaunchContext& ctx, T* values, std::int64_t* indices, const T* x, const StridedLayout& rows,
                 std::int64_t row_count, std::int64_t n, std::int64_t stride, std::int64_t k, void* workspace,
                 std::size_t workspace_bytes);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <cub/block/block_reduce.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "common.cuh"

namespace tessera::cuda {

namespace kernels {

// A candidate for the maximum: a value (as float) and its index in the row.
struct ArgmaxCandidate {
  float value;
  std::int64_t index;
};

// Whether a ranks strictly before b: NaN above every number, larger values
// first, ties (equal values, or both NaN) to the lower index. A total order
// on distinct indices, so the reduction may combine in any order.
__device__ inline bool ranks_before(const ArgmaxCandidate& a, const ArgmaxCandidate& b) {
  const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
  if (a_nan || b_nan) return a_nan == b_nan ? a.index < b.index : a_nan;
  if (a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

struct BetterCandidate {
  __device__ ArgmaxCandidate operator()(const ArgmaxCandidate& a, const ArgmaxCandidate& b) const {
    return ranks_before(a, b) ? a : b;
  }
};

// Ranks below every element of a row (-inf at an index past any row), so a
// thread with nothing to look at contributes nothing.
__device__ inline ArgmaxCandidate no_candidate() {
  return {-__int_as_float(0x7f800000), INT64_MAX};
}

// Folds elements first, first + step, ... (< end) of a row into `best`.
template <class N>
__device__ inline void scan_strided(ArgmaxCandidate& best, const N* row, std::int64_t stride, std::int64_t first,
                                    std::int64_t end, std::int64_t step) {
  for (std::int64_t j = first; j < end; j += step) {
    const ArgmaxCandidate c{to_float(row[j * stride]), j};
    if (ranks_before(c, best)) best = c;
  }
}

// Folds the part of a row this thread owns into `best`, thread `lane` of
// `lanes` sharing the row. Contiguous rows are read 16 bytes per load from
// the first 16-byte boundary on (the head before it and the tail after the
// last full vector are read element by element); strided rows element by
// element.
template <class N>
__device__ inline void scan_row(ArgmaxCandidate& best, const N* row, std::int64_t n, std::int64_t stride, int lane,
                                int lanes) {
  constexpr int kVec = 16 / sizeof(N);
  if (stride != 1 || n < 2 * kVec) {
    scan_strided(best, row, stride, lane, n, lanes);
    return;
  }
  const auto address = reinterpret_cast<std::uintptr_t>(row);
  if (address % sizeof(N) != 0) {  // not even element-aligned: no vector loads
    scan_strided(best, row, 1, lane, n, lanes);
    return;
  }
  const std::int64_t head = static_cast<std::int64_t>((16 - address % 16) % 16 / sizeof(N));  // < kVec <= n
  const std::int64_t vectors = (n - head) / kVec;
  const std::int64_t tail = head + vectors * kVec;
  scan_strided(best, row, 1, lane, head, lanes);
  const uint4* body = reinterpret_cast<const uint4*>(row + head);
  for (std::int64_t v = lane; v < vectors; v += lanes) {
    const uint4 packed = body[v];
    const N* elements = reinterpret_cast<const N*>(&packed);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const ArgmaxCandidate c{to_float(elements[e]), head + v * kVec + e};
      if (ranks_before(c, best)) best = c;
    }
  }
  scan_strided(best, row, 1, tail + lane, n, lanes);
}

// Short rows: one warp per row, kWarps rows per block, rows walked
// grid-stride by whole warps (the loop condition is uniform in each warp).
// Lane l reads elements l, l + 32, ... (or vectors l, l + 32, ...); the warp
// then reduces its 32 candidates with cub::WarpReduce.
template <class N, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) argmax_warp_kernel(std::int64_t* out, const N* x, StridedLayout rows,
                                                                  std::int64_t row_count, std::int64_t n,
                                                                  std::int64_t stride) {
  using WarpReduce = cub::WarpReduce<ArgmaxCandidate>;
  __shared__ typename WarpReduce::TempStorage temp[kWarps];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * kWarps;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarps + warp; r < row_count; r += step) {
    ArgmaxCandidate best = no_candidate();
    scan_row(best, x + strided_offset(rows, r), n, stride, lane, 32);
    const ArgmaxCandidate winner = WarpReduce(temp[warp]).Reduce(best, BetterCandidate{});
    if (lane == 0) out[r] = winner.index;
    __syncwarp();  // temp[warp] is reused by the next row
  }
}

// Long rows: one block of kThreads per row, rows walked grid-stride by whole
// blocks (uniform in each block, so the block-wide reduction is safe).
// Thread t reads elements (or 16-byte vectors) t, t + kThreads, ...; the
// block reduces its candidates with cub::BlockReduce.
template <class N, int kThreads>
__global__ void __launch_bounds__(kThreads) argmax_block_kernel(std::int64_t* out, const N* x, StridedLayout rows,
                                                                std::int64_t row_count, std::int64_t n,
                                                                std::int64_t stride) {
  using BlockReduce = cub::BlockReduce<ArgmaxCandidate, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  for (std::int64_t r = blockIdx.x; r < row_count; r += gridDim.x) {
    ArgmaxCandidate best = no_candidate();
    scan_row(best, x + strided_offset(rows, r), n, stride, static_cast<int>(threadIdx.x), kThreads);
    const ArgmaxCandidate winner = BlockReduce(temp).Reduce(best, BetterCandidate{});
    if (threadIdx.x == 0) out[r] = winner.index;
    __syncthreads();  // temp is reused by the next row
  }
}

// A 32-bit key that sorts the values in descending order when sorted
// ascending: NaN (any sign or payload) first, then +inf, ..., -inf; -0.0
// and +0.0 get the same key (equal values). The usual order-preserving map
// (flip all bits of negatives, set the sign bit of positives), inverted.
__device__ inline std::uint32_t descending_key(float v) {
  if (v != v) return 0u;  // NaN: above +inf, whose key is ~0xff800000 = 0x007fffff
  std::uint32_t bits = __float_as_uint(v);
  if (bits == 0x80000000u) bits = 0u;  // -0.0 -> +0.0
  const std::uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}

// keys[i] = (row << 32) | descending_key(x[row, j]) and positions[i] = j for
// every element i = row * n + j. Thread t of the grid fills i = t, t + grid
// size, ... (consecutive threads read consecutive elements of a row).
template <class N>
__global__ void topk_keys_kernel(std::uint64_t* keys, std::int32_t* positions, const N* x, StridedLayout rows,
                                 std::int64_t total, std::int64_t n, std::int64_t stride) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const std::int64_t r = i / n, j = i - r * n;
    const float v = to_float(x[strided_offset(rows, r) + j * stride]);
    keys[i] = (static_cast<std::uint64_t>(r) << 32) | descending_key(v);
    positions[i] = static_cast<std::int32_t>(j);
  }
}

// values/indices [row_count, k] from the sorted positions: output element
// i = row * k + j takes sorted[row * n + j]. Values are copied from x bit
// for bit. Grid-stride over the row_count * k outputs.
template <class N>
__global__ void topk_gather_kernel(N* values, std::int64_t* indices, const std::int32_t* sorted, const N* x,
                                   StridedLayout rows, std::int64_t total, std::int64_t n, std::int64_t stride,
                                   std::int64_t k) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const std::int64_t r = i / k, j = i - r * k;
    const std::int64_t position = sorted[r * n + j];
    values[i] = x[strided_offset(rows, r) + position * stride];
    indices[i] = position;
  }
}

// values[r] = x[r, indices[r]] for k == 1 (indices from the argmax kernels).
template <class N>
__global__ void gather_at_kernel(N* values, const std::int64_t* indices, const N* x, StridedLayout rows,
                                 std::int64_t row_count, std::int64_t stride) {
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < row_count; r += step) {
    values[r] = x[strided_offset(rows, r) + indices[r] * stride];
  }
}

}  // namespace kernels

namespace reduce_detail {

// Rows up to this length get a warp each; longer ones a block each.
inline constexpr std::int64_t kWarpRowMax = 1024;
inline constexpr int kWarpsPerBlock = 8;
inline constexpr int kBlockThreads = 512;
inline constexpr std::size_t kAlign = 256;

inline std::size_t aligned(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Key bits the sort must look at: the 32 value bits and enough row bits
// for rows 0 .. row_count - 1.
inline int end_bit(std::int64_t row_count) {
  int row_bits = 0;
  while (row_bits < 32 && (std::int64_t{1} << row_bits) < row_count) ++row_bits;
  return 32 + row_bits;
}

// The radix sort's own scratch for `total` pairs (a query: no work is done).
inline std::size_t sort_temp_bytes(std::int64_t total, int bits) {
  std::size_t bytes = 0;
  cub::DoubleBuffer<std::uint64_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<std::int32_t> positions(nullptr, nullptr);
  check(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, positions, total, 0, bits), "ops::topk (sort size)");
  return bytes;
}

// The workspace: two key and two position buffers of `total` entries (the
// sort's double buffers), then the sort's scratch, each part 256-byte aligned.
struct TopkWorkspace {
  std::uint64_t* keys[2];
  std::int32_t* positions[2];
  void* sort_temp;
};

inline std::size_t key_buffer_bytes(std::int64_t total) {
  return aligned(static_cast<std::size_t>(total) * sizeof(std::uint64_t));
}
inline std::size_t position_buffer_bytes(std::int64_t total) {
  return aligned(static_cast<std::size_t>(total) * sizeof(std::int32_t));
}
inline std::size_t total_workspace_bytes(std::int64_t total, std::size_t sort_bytes) {
  return 2 * key_buffer_bytes(total) + 2 * position_buffer_bytes(total) + aligned(sort_bytes);
}

inline TopkWorkspace carve(void* workspace, std::int64_t total) {
  auto* base = static_cast<unsigned char*>(workspace);
  const std::size_t key_bytes = key_buffer_bytes(total), position_bytes = position_buffer_bytes(total);
  TopkWorkspace w{};
  w.keys[0] = reinterpret_cast<std::uint64_t*>(base);
  w.keys[1] = reinterpret_cast<std::uint64_t*>(base + key_bytes);
  w.positions[0] = reinterpret_cast<std::int32_t*>(base + 2 * key_bytes);
  w.positions[1] = reinterpret_cast<std::int32_t*>(base + 2 * key_bytes + position_bytes);
  w.sort_temp = base + 2 * key_bytes + 2 * position_bytes;
  return w;
}

}  // namespace reduce_detail

template <class T>
void launch_argmax(const LaunchContext& ctx, std::int64_t* out, const T* x, const StridedLayout& rows,
                   std::int64_t row_count, std::int64_t n, std::int64_t stride) {
  if (row_count == 0 || n == 0) return;
  using N = kernels::native_t<T>;
  using namespace reduce_detail;
  if (n <= kWarpRowMax) {
    kernels::argmax_warp_kernel<N, kWarpsPerBlock>
        <<<kernels::grid_blocks(row_count, kWarpsPerBlock), kWarpsPerBlock * 32, 0, ctx.stream>>>(
            out, kernels::as_native(x), rows, row_count, n, stride);
  } else {
    const unsigned blocks = kernels::grid_blocks(row_count, 1);
    kernels::argmax_block_kernel<N, kBlockThreads><<<blocks, kBlockThreads, 0, ctx.stream>>>(
        out, kernels::as_native(x), rows, row_count, n, stride);
  }
  check_launch("ops::argmax");
}

template <class T>
void launch_topk(const LaunchContext& ctx, T* values, std::int64_t* indices, const T* x, const StridedLayout& rows,
                 std::int64_t row_count, std::int64_t n, std::int64_t stride, std::int64_t k, void* workspace,
                 std::size_t workspace_bytes) {
  if (row_count == 0 || k == 0) return;
  using N = kernels::native_t<T>;
  using namespace reduce_detail;
  constexpr int kThreads = 256;
  if (k == 1) {  // the first of the sorted order is the argmax
    launch_argmax<T>(ctx, indices, x, rows, row_count, n, stride);
    kernels::gather_at_kernel<N><<<kernels::grid_blocks(row_count, kThreads), kThreads, 0, ctx.stream>>>(
        kernels::as_native(values), indices, kernels::as_native(x), rows, row_count, stride);
    check_launch("ops::topk");
    return;
  }
  const std::int64_t total = row_count * n;
  const int bits = end_bit(row_count);
  std::size_t sort_bytes = sort_temp_bytes(total, bits);
  const std::size_t needed = reduce_detail::total_workspace_bytes(total, sort_bytes);
  if (workspace == nullptr || workspace_bytes < needed) {
    throw DeviceError(tessera::detail::concat("ops::topk: the workspace of ", workspace_bytes,
                                              " bytes is smaller than the ", needed, " bytes needed"));
  }
  const TopkWorkspace w = carve(workspace, total);
  kernels::topk_keys_kernel<N><<<kernels::grid_blocks(total, kThreads), kThreads, 0, ctx.stream>>>(
      w.keys[0], w.positions[0], kernels::as_native(x), rows, total, n, stride);
  check_launch("ops::topk (keys)");
  cub::DoubleBuffer<std::uint64_t> keys(w.keys[0], w.keys[1]);
  cub::DoubleBuffer<std::int32_t> positions(w.positions[0], w.positions[1]);
  check(cub::DeviceRadixSort::SortPairs(w.sort_temp, sort_bytes, keys, positions, total, 0, bits, ctx.stream),
        "ops::topk (radix sort)");
  const std::int64_t outputs = row_count * k;
  kernels::topk_gather_kernel<N><<<kernels::grid_blocks(outputs, kThreads), kThreads, 0, ctx.stream>>>(
      kernels::as_native(values), indices, positions.Current(), kernels::as_native(x), rows, outputs, n, stride, k);
  check_launch("ops::topk (gather)");
}

}  // namespace tessera::cuda
#endif
