// tessera/ops/cuda/embedding.cuh — CUDA launcher for ops/embedding.hpp: a
// row gather of table [V, H] by int32/int64 ids of any shape and strides.
//
// Ids are checked on the device, in the gather itself: an id outside [0, V)
// is never used as an address (its output row is left unwritten) and the
// smallest flat position holding one is recorded in a workspace word. The
// launcher then copies that word to the host and waits for the stream, so the
// op can raise the same ValueError as on the CPU (the id, its position, V).
// That wait is one stream synchronisation per embedding call: the price of a
// clear error instead of a garbage row (an embedding usually starts a forward
// step, whose ids came from the host).
#pragma once

#include <cstddef>
#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// What launch_embedding found in the ids: position < 0 when every id is in
// range; otherwise the smallest row-major position of an out-of-range id,
// and that id.
struct EmbeddingIdCheck {
  std::int64_t position = -1;
  std::int64_t id = 0;
};

// Bytes of device workspace launch_embedding needs (aligned to 8 bytes).
inline constexpr std::size_t embedding_workspace_bytes() { return 8; }

// out [count, hidden] (contiguous; count = ids_layout's element count) gets
// row ids[k] of table for every k, where table row v starts at
// table + v * row_stride and its elements are col_stride apart. ids are read
// through ids_layout. Enqueues the gather on ctx.stream, then waits for it
// (see above) and reports the first bad id; the output is complete only when
// the result has position < 0. workspace: embedding_workspace_bytes() of
// device memory on this device.
template <class T, class Id>
EmbeddingIdCheck launch_embedding(const LaunchContext& ctx, T* out, const T* table, std::int64_t vocab,
                                  std::int64_t hidden, std::int64_t row_stride, std::int64_t col_stride, const Id* ids,
                                  const StridedLayout& ids_layout, void* workspace);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <algorithm>
#include <type_traits>

#include "common.cuh"
#include "elementwise.cuh"

namespace tessera::cuda {

namespace kernels::pointwise {

// Block-per-row gather. Block b handles ids k = b, b + gridDim.x, ... (k is
// the row-major position in ids and the output row); its threads copy that
// row's `hidden` elements, kVec at a time (16-byte packs) when kVec > 1.
// E is an unsigned integer of the element's size: a gather moves bits.
// kVec > 1 needs col_stride == 1, hidden and row_stride multiples of kVec and
// 16-byte aligned table and out. An out-of-range id skips its row and
// atomicMin's its position into *first_bad (initialised to all ones).
template <int kVec, class E, class Id>
__global__ void embedding_kernel(E* __restrict__ out, const E* __restrict__ table, std::int64_t vocab,
                                 std::int64_t hidden, std::int64_t row_stride, std::int64_t col_stride,
                                 const Id* __restrict__ ids, Layouts<1> ids_layout, std::int64_t count,
                                 unsigned long long* first_bad) {
  for (std::int64_t k = blockIdx.x; k < count; k += gridDim.x) {
    std::int64_t off[1];
    offsets_of(ids_layout, k, off);
    const auto id = static_cast<std::int64_t>(ids[off[0]]);
    if (id < 0 || id >= vocab) {
      if (threadIdx.x == 0) atomicMin(first_bad, static_cast<unsigned long long>(k));
      continue;
    }
    const E* src = table + id * row_stride;
    E* dst = out + k * hidden;
    if constexpr (kVec > 1) {
      const auto* s = reinterpret_cast<const Pack<E, kVec>*>(src);
      auto* d = reinterpret_cast<Pack<E, kVec>*>(dst);
      for (std::int64_t j = threadIdx.x; j < hidden / kVec; j += blockDim.x) d[j] = s[j];
    } else {
      for (std::int64_t j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = src[j * col_stride];
    }
  }
}

}  // namespace kernels::pointwise

template <class T, class Id>
EmbeddingIdCheck launch_embedding(const LaunchContext& ctx, T* out, const T* table, std::int64_t vocab,
                                  std::int64_t hidden, std::int64_t row_stride, std::int64_t col_stride, const Id* ids,
                                  const StridedLayout& ids_layout, void* workspace) {
  EmbeddingIdCheck result;
  const std::int64_t count = pointwise::numel_of(ids_layout);
  if (count == 0) return result;
  using E = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>;
  static_assert(sizeof(E) == sizeof(T));
  constexpr int kVec = static_cast<int>(16 / sizeof(E));
  auto* first_bad = static_cast<unsigned long long*>(workspace);
  check(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), ctx.stream), "ops::embedding (workspace)");

  const StridedLayout* const layouts[1] = {&ids_layout};
  const pointwise::Layouts<1> il = pointwise::merge_dims<1>(layouts);
  const auto* src = reinterpret_cast<const E*>(table);
  auto* dst = reinterpret_cast<E*>(out);
  const bool packed = col_stride == 1 && hidden % kVec == 0 && row_stride % kVec == 0 &&
                      pointwise::aligned(src, 16) && pointwise::aligned(dst, 16);
  // Enough threads for one pass over a row (a warp at least, 256 at most).
  const std::int64_t per_row = packed ? hidden / kVec : hidden;
  const int threads = static_cast<int>(std::clamp<std::int64_t>((per_row + 31) / 32 * 32, 32, 256));
  const unsigned blocks = kernels::grid_blocks(count, 1, std::int64_t{1} << 20);
  if (packed) {
    kernels::pointwise::embedding_kernel<kVec><<<blocks, threads, 0, ctx.stream>>>(
        dst, src, vocab, hidden, row_stride, 1, ids, il, count, first_bad);
  } else {
    kernels::pointwise::embedding_kernel<1><<<blocks, threads, 0, ctx.stream>>>(
        dst, src, vocab, hidden, row_stride, col_stride, ids, il, count, first_bad);
  }
  check_launch("ops::embedding");

  unsigned long long bad = 0;
  check(cudaMemcpyAsync(&bad, first_bad, sizeof bad, cudaMemcpyDeviceToHost, ctx.stream), "ops::embedding (id check)");
  check(cudaStreamSynchronize(ctx.stream), "ops::embedding (id check)");
  if (bad == ~0ull) return result;

  // The error path: fetch the offending id itself for the message.
  result.position = static_cast<std::int64_t>(bad);
  std::int64_t offset = 0;
  std::int64_t rest = result.position;
  for (int d = ids_layout.rank - 1; d >= 0; --d) {
    offset += (rest % ids_layout.shape[d]) * ids_layout.strides[d];
    rest /= ids_layout.shape[d];
  }
  Id id{};
  check(cudaMemcpyAsync(&id, ids + offset, sizeof id, cudaMemcpyDeviceToHost, ctx.stream), "ops::embedding (id check)");
  check(cudaStreamSynchronize(ctx.stream), "ops::embedding (id check)");
  result.id = static_cast<std::int64_t>(id);
  return result;
}

}  // namespace tessera::cuda
#endif
