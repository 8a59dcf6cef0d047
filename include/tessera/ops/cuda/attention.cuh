// tessera/ops/cuda/attention.cuh — scaled-dot-product attention on CUDA, with
// the semantics of ops/attention.hpp (tokens-major q [Sq, Hq, Dh],
// k [Skv, Hkv, Dh], v [Skv, Hkv, Dv]; grouped-query heads; bottom-right
// aligned causal mask; variable-length segments; rows that see no key give
// zeros). Scores, softmax and accumulation are in float; the output is
// rounded once to T. No kernel materialises the [Sq, Skv] score matrix.
//
// Three kernels, chosen by launch_attention:
// - decode: every query segment has at most one token (one new token per
//   sequence against its KV cache). Flash-decoding: the keys are split across
//   blocks, each block handles one (segment, kv head, group of query heads,
//   key chunk) so that the query heads of a GQA group read K/V once, staging
//   K/V tiles through shared memory with cp.async (the next tile in flight
//   while the current one is computed); a second small kernel merges the
//   blocks' partial softmax states when there is more than one split.
// - tensor-core prefill (bf16/f16, Dh == Dv in {64, 80, 128}, 16-byte aligned
//   operands): FlashAttention-2 style, mma.sync m16n8k16 with f32 accumulation.
// - SIMT prefill: everything else (float, other head dims, Dv != Dh,
//   misaligned views). One warp per query row, online softmax.
//
// Operands are read in place through token and head strides (unit stride
// along the head dim), so q, k and v may be slices of one fused qkv
// projection without a copy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "launch.hpp"

namespace tessera::cuda {

// Where one operand's elements live: element (token t, head h, d) is at
// data[t * token_stride + h * head_stride + d].
template <class T>
struct AttentionOperand {
  const T* data = nullptr;
  std::int64_t token_stride = 0;
  std::int64_t head_stride = 0;
};

// The problem as the op validated it. Without cu_seqlens there is one
// segment (q tokens [0, sq), keys [0, skv)).
struct AttentionShape {
  std::int64_t sq = 0, skv = 0, hq = 0, hkv = 0, dh = 0, dv = 0;
  std::int64_t segments = 1;
  std::int64_t max_q_len = 0;  // longest query segment
  std::int64_t max_k_len = 0;  // longest key segment
  float scale = 1.0f;          // softmax scale (already resolved from the options)
  bool causal = false;
};

// ---- decode planning (plain C++: the op header sizes the workspace) ----------

inline constexpr int kAttentionDecodeWarps = 4;     // warps per decode block
inline constexpr int kAttentionDecodeMaxHeads = 8;  // query heads per decode block
inline constexpr std::size_t kAttentionSmemDefaultLimit = 48 * 1024;  // no opt-in needed below this
// Decode shared memory: float state within the first budget, K/V staging
// (2 stages per warp) within the second; 96 KiB in all fits every GPU of
// compute capability >= 7.0 but 7.5 (T4 allows a block 64 KiB: there the
// staging tiles shrink to what the device's limit leaves).
inline constexpr std::size_t kAttentionDecodeFloatBudget = 32 * 1024;
inline constexpr std::size_t kAttentionDecodeStagingBudget = 64 * 1024;
inline constexpr std::int64_t kAttentionDecodeMaxSplits = 4096;

// How the decode kernel covers the problem.
struct AttentionDecodePlan {
  bool usable = false;                // false: not a decode problem (or head dims too large for it)
  int heads_per_block = 1;            // query heads of one GQA group handled by one block
  int tile_keys = 32;                 // keys per warp tile (4, 8, 16 or 32)
  std::int64_t head_chunks = 1;       // ceil(group / heads_per_block)
  std::int64_t blocks_per_head = 1;   // key splits; 1 means the blocks write the output directly
  std::int64_t keys_per_block = 128;  // a multiple of 32 * kAttentionDecodeWarps
  std::size_t staging_offset = 0;     // bytes: where the K/V staging starts (16-byte aligned)
  std::size_t smem_bytes = 0;
  std::size_t workspace_bytes = 0;    // partial states of the splits, 0 when blocks_per_head == 1
};

// Float shared memory of one decode block handling `heads` query heads:
// probabilities [warps][heads][32], q [heads][dh], per-warp output
// [warps][heads][dv], per-warp max, sum and merge weight [warps][heads],
// block max and sum [heads].
inline std::size_t attention_decode_float_bytes(std::int64_t heads, std::int64_t dh, std::int64_t dv) {
  const std::int64_t w = kAttentionDecodeWarps;
  const std::int64_t floats = w * heads * 32 + heads * dh + w * heads * dv + 3 * w * heads + 2 * heads;
  return static_cast<std::size_t>(floats) * sizeof(float);
}

// K/V staging: two tiles of `tile_keys` keys per warp, elements of T.
template <class T>
std::size_t attention_decode_staging_bytes(std::int64_t tile_keys, std::int64_t dh, std::int64_t dv) {
  return static_cast<std::size_t>(kAttentionDecodeWarps * 2 * tile_keys * (dh + dv)) * sizeof(T);
}

// `smem_limit`: the shared memory a block of this device may opt in to
// (LaunchContext::max_shared_memory_per_block); 0 assumes the 96 KiB above.
template <class T>
AttentionDecodePlan attention_decode_plan(const AttentionShape& s, int sm_count, std::size_t smem_limit) {
  AttentionDecodePlan plan;
  if (s.sq == 0 || s.max_q_len > 1 || s.hq == 0 || s.hkv == 0 || s.dv == 0) return plan;
  const auto ceil_div = [](std::int64_t a, std::int64_t b) { return (a + b - 1) / b; };
  const std::int64_t group = s.hq / s.hkv;
  std::int64_t heads = std::min<std::int64_t>(group, kAttentionDecodeMaxHeads);
  while (heads > 1 && attention_decode_float_bytes(heads, s.dh, s.dv) > kAttentionDecodeFloatBudget) --heads;
  if (attention_decode_float_bytes(heads, s.dh, s.dv) > kAttentionDecodeFloatBudget) return plan;
  plan.head_chunks = ceil_div(group, heads);
  const std::int64_t balanced = ceil_div(group, plan.head_chunks);  // e.g. 12 heads as 6 + 6, not 8 + 4
  plan.heads_per_block = static_cast<int>(balanced);
  plan.staging_offset = (attention_decode_float_bytes(balanced, s.dh, s.dv) + 15) / 16 * 16;
  const std::size_t limit =
      smem_limit == 0 ? kAttentionDecodeFloatBudget + kAttentionDecodeStagingBudget : smem_limit;
  if (limit <= plan.staging_offset) return plan;
  const std::size_t staging_budget = std::min(kAttentionDecodeStagingBudget, limit - plan.staging_offset);
  int tile = 32;
  while (tile > 4 && attention_decode_staging_bytes<T>(tile, s.dh, s.dv) > staging_budget) tile /= 2;
  if (attention_decode_staging_bytes<T>(tile, s.dh, s.dv) > staging_budget) return plan;
  plan.tile_keys = tile;
  // About 4 blocks per SM (2 to 3 are resident, each with K/V tiles in
  // flight), but at least one 32-key stretch per warp.
  const std::int64_t base_blocks = s.segments * s.hkv * plan.head_chunks;
  const std::int64_t target_blocks = std::max<std::int64_t>(sm_count, 1) * 4;
  const std::int64_t quantum = 32 * kAttentionDecodeWarps;
  const std::int64_t max_splits =
      std::min(kAttentionDecodeMaxSplits, std::max<std::int64_t>(1, ceil_div(s.max_k_len, quantum)));
  const std::int64_t splits = std::clamp<std::int64_t>(ceil_div(target_blocks, base_blocks), 1, max_splits);
  plan.keys_per_block = std::max(quantum, ceil_div(ceil_div(s.max_k_len, splits), quantum) * quantum);
  plan.blocks_per_head = std::max<std::int64_t>(1, ceil_div(s.max_k_len, plan.keys_per_block));
  plan.smem_bytes = plan.staging_offset + attention_decode_staging_bytes<T>(tile, s.dh, s.dv);
  if (plan.blocks_per_head > 1) {
    plan.workspace_bytes =
        static_cast<std::size_t>(s.segments * s.hq * plan.blocks_per_head * (s.dv + 2)) * sizeof(float);
  }
  plan.usable = true;
  return plan;
}

// Bytes of float workspace launch_attention<T> needs for this problem on
// this device (0 unless it is a decode problem split across blocks). The op
// allocates a Buffer of this size and passes it to launch_attention.
template <class T>
std::size_t attention_decode_workspace_bytes(const LaunchContext& ctx, const AttentionShape& s) {
  return attention_decode_plan<T>(s, ctx.sm_count, ctx.max_shared_memory_per_block).workspace_bytes;
}

// out [sq, hq, dv], contiguous. cu_seqlens_q / cu_seqlens_k: device int32
// offsets of shape.segments + 1 entries (already validated on the host), or
// both null for one segment. workspace: attention_decode_workspace_bytes.
template <class T>
void launch_attention(const LaunchContext& ctx, T* out, AttentionOperand<T> q, AttentionOperand<T> k,
                      AttentionOperand<T> v, const std::int32_t* cu_seqlens_q, const std::int32_t* cu_seqlens_k,
                      const AttentionShape& shape, void* workspace, std::size_t workspace_bytes);

}  // namespace tessera::cuda

#if defined(__CUDACC__)
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.cuh"

namespace tessera::cuda {
namespace kernels::attn {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Token ranges of one segment: queries [q0, q0 + lq), keys [k0, k0 + lk).
struct Segment {
  std::int64_t q0, lq, k0, lk;
};

__device__ inline Segment segment_bounds(const std::int32_t* cu_q, const std::int32_t* cu_k, std::int64_t s,
                                         std::int64_t sq, std::int64_t skv) {
  if (cu_q == nullptr) return {0, sq, 0, skv};
  const std::int64_t q0 = cu_q[s], k0 = cu_k[s];
  return {q0, cu_q[s + 1] - q0, k0, cu_k[s + 1] - k0};
}

// The segment holding query token t: the largest s with cu_q[s] <= t (empty
// segments share an offset with the next one). Valid offsets keep the
// invariant cu_q[lo] <= t < cu_q[hi].
__device__ inline std::int64_t segment_of_token(const std::int32_t* cu_q, std::int64_t segments, std::int64_t t) {
  std::int64_t lo = 0, hi = segments;
  while (hi - lo > 1) {
    const std::int64_t mid = (lo + hi) / 2;
    if (cu_q[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

__device__ inline float warp_max(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

__device__ inline float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Everything the prefill kernels read. Strides are in elements.
template <class N>
struct PrefillParams {
  N* out;  // [sq, hq, dv], contiguous
  const N* q;
  const N* k;
  const N* v;
  std::int64_t q_token_stride, q_head_stride;
  std::int64_t k_token_stride, k_head_stride;
  std::int64_t v_token_stride, v_head_stride;
  const std::int32_t* cu_q;  // null: one segment of sq queries and skv keys
  const std::int32_t* cu_k;
  std::int64_t sq, skv, hq;
  std::int64_t group;  // query heads per kv head
  std::int64_t dh, dv;
  std::int64_t segments;
  std::int64_t query_tiles;  // tensor-core kernel: query tiles of the longest segment
  float scale;               // SIMT: the softmax scale; tensor cores: scale * log2(e)
  bool causal;
};

// ---- tensor-core prefill --------------------------------------------------------
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D[16x8] = A[16x16] B[16x8] + C.
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"); lane = threadIdx.x % 32, g = lane >> 2 (groupID), c = lane & 3
// (threadID_in_group); each 32-bit register holds two 16-bit elements, the
// lower-indexed one in the low half:
//   A (row-major 16x16), 4 registers: a[0] = A[g][2c..2c+1],   a[1] = A[g+8][2c..2c+1],
//                                     a[2] = A[g][2c+8..2c+9], a[3] = A[g+8][2c+8..2c+9]
//   B (16x8, "col": K-major), 2 registers: b[0] = B[2c..2c+1][g], b[1] = B[2c+8..2c+9][g]
//   C/D (16x8 f32), 4 floats: d[0..1] = D[g][2c..2c+1], d[2..3] = D[g+8][2c..2c+1]
// Consequently the C fragments of two adjacent n8 tiles (columns 16k..16k+7
// and 16k+8..16k+15) are exactly the A fragment of the k16 step 16k..16k+15:
// the probabilities P stay in registers and feed P.V directly.
//
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 loads four 8x8 b16
// matrices: lane l gives the address of row (l % 8) of matrix (l / 8) (16
// contiguous bytes), and register i of lane l receives matrix i's row l / 4,
// elements 2 (l % 4) and 2 (l % 4) + 1 (with .trans: of the transposed matrix,
// i.e. column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1). So
//   Q (A operand, [query][d] rows): matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15)
//     in the order a[0..3] above;
//   K (B operand of S = Q K^T, B[d][key] = K[key][d], [key][d] rows, no .trans):
//     matrices keys 0-7 d 0-7, keys 0-7 d 8-15, keys 8-15 d 0-7, keys 8-15 d 8-15
//     give b[0], b[1] of key tile 0, then b[0], b[1] of key tile 1;
//   V (B operand of O = P V, B[key][d] = V[key][d], [key][d] rows, .trans):
//     matrices keys 0-7 d 0-7, keys 8-15 d 0-7, keys 0-7 d 8-15, keys 8-15 d 8-15
//     give b[0], b[1] of d tile 0, then b[0], b[1] of d tile 1.

// cp.async (16-byte global -> shared copies that complete at a later wait)
// is sm_80+. Below that the copy is synchronous and the commit and waits are
// no-ops: every caller already makes the copies visible with __syncwarp or
// __syncthreads after its wait, and never overwrites a buffer that is still
// being read, so the same code is correct either way (only the overlap of
// copy and compute is lost).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define TESSERA_CP_ASYNC 0
#else
#define TESSERA_CP_ASYNC 1
#endif

__device__ inline void cp_async_16(void* smem_dst, const void* gmem_src, bool fill) {
#if TESSERA_CP_ASYNC
  // src-size 0 writes 16 zero bytes and reads nothing (rows past the end).
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = fill ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes)
               : "memory");
#else
  *static_cast<uint4*>(smem_dst) = fill ? *static_cast<const uint4*>(gmem_src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ inline void cp_async_commit() {
#if TESSERA_CP_ASYNC
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

__device__ inline void cp_async_wait_all() {
#if TESSERA_CP_ASYNC
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Waits until at most one committed group (the prefetch) is still in flight.
__device__ inline void cp_async_wait_all_but_one() {
#if TESSERA_CP_ASYNC
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

// ldmatrix (sm_75+) and the bf16/f16 m16n8k16 mma (sm_80+) exist only in
// the device code of architectures that have both: their one caller, the
// tensor-core prefill kernel, has an empty trapping body below sm_80 (the
// host never launches it there), so older targets never see the instructions.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TESSERA_MMA_ATTENTION 1
#else
#define TESSERA_MMA_ATTENTION 0
#endif

#if TESSERA_MMA_ATTENTION
__device__ inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem) {
  const auto addr = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* smem) {
  const auto addr = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a * b for one m16n8k16 tile.
template <class N>
__device__ inline void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<N, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<N, __half>, "tensor-core attention is bf16 or f16");
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
#endif  // TESSERA_MMA_ATTENTION

// Two floats rounded (to nearest even) into one register: lo in the low half.
template <class N>
__device__ inline std::uint32_t pack_pair(float lo, float hi) {
  std::uint32_t bits;
  if constexpr (std::is_same_v<N, __nv_bfloat16>) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &pair, sizeof(bits));
  } else {
    const __half2 pair = __floats2half2_rn(lo, hi);
    memcpy(&bits, &pair, sizeof(bits));
  }
  return bits;
}

// Block shape of the tensor-core kernel for one head dim: 4 warps, each
// owning 16 query rows (64 per block), keys in tiles of 64.
template <class N, int kHeadDim>
struct MmaTile {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = 64;
  // Shared-memory row pitch in elements: 16 bytes of padding shift the 8
  // rows an ldmatrix reads onto distinct banks (pitch 144, 176 or 272 bytes).
  static constexpr int kPitch = kHeadDim + 8;
  static constexpr int kTileElems = kBlockN * kPitch;
  // Q, then two stages of (K, V).
  static constexpr std::size_t kSmemBytes = 5 * static_cast<std::size_t>(kTileElems) * sizeof(N);
  static_assert(kHeadDim % 16 == 0, "head dim must be a whole number of k16 steps");
  static_assert(kBlockM == kBlockN, "Q and K/V tiles share the loader");
  static_assert((kBlockN * kHeadDim / 8) % kThreads == 0, "every thread copies the same number of chunks");
};

// Copies 64 rows of kHeadDim elements (row r at base + r * token_stride) into
// a padded shared tile with 16-byte cp.async; rows >= rows_valid are zeroed
// (never read from global memory). Chunk c of the tile goes to thread c % 128.
template <class N, int kHeadDim>
__device__ inline void load_tile_async(N* tile, const N* base, std::int64_t token_stride, int rows_valid, int tid) {
  using Tile = MmaTile<N, kHeadDim>;
  constexpr int kChunksPerRow = kHeadDim / 8;
  constexpr int kPerThread = Tile::kBlockN * kChunksPerRow / Tile::kThreads;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int chunk = tid + i * Tile::kThreads;
    const int row = chunk / kChunksPerRow;
    const int col = (chunk % kChunksPerRow) * 8;
    const bool valid = row < rows_valid;
    const N* src = base + static_cast<std::int64_t>(valid ? row : 0) * token_stride + col;
    cp_async_16(tile + row * Tile::kPitch + col, src, valid);
  }
}

// FlashAttention-2 forward for one (query tile of 64 rows, query head,
// segment) per block. blockIdx.x = tile' + query_tiles * (segment + segments
// * head), with tiles taken from the last (the most keys under a causal
// mask) so long blocks start first. Warp w owns query rows 16w..16w+15 of the
// tile: its Q fragments stay in registers, S = Q K^T for a 64-key tile is 8
// n8 accumulator tiles, the online softmax runs on them in registers (row
// max and sum across the 4 lanes of a quad), and P is fed back as the A
// operand of O += P V. K/V tiles are double-buffered in shared memory with
// cp.async: tile t + 1 is in flight while tile t is computed. Key tiles past
// the last key a row of the tile can see (causal) are never loaded.
template <class N, int kHeadDim>
__global__ void __launch_bounds__(128) attention_prefill_mma_kernel(const PrefillParams<N> p) {
#if !TESSERA_MMA_ATTENTION
  __trap();  // launch_attention only picks this kernel on compute capability >= 8.0
#else
  using Tile = MmaTile<N, kHeadDim>;
  constexpr int kSteps = kHeadDim / 16;  // k16 steps of Q K^T, and pairs of n8 d-tiles of P V
  constexpr int kDTiles = kHeadDim / 8;  // n8 tiles of the output
  constexpr int kKeyTiles = Tile::kBlockN / 8;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  N* const q_tile = reinterpret_cast<N*>(smem_bytes);
  N* const kv_tiles = q_tile + Tile::kTileElems;  // stage s: K at 2s, V at 2s + 1

  const std::int64_t block = blockIdx.x;
  const std::int64_t query_tile = p.query_tiles - 1 - block % p.query_tiles;
  const std::int64_t segment = (block / p.query_tiles) % p.segments;
  const std::int64_t head = block / p.query_tiles / p.segments;
  const Segment sg = segment_bounds(p.cu_q, p.cu_k, segment, p.sq, p.skv);
  const std::int64_t m0 = query_tile * Tile::kBlockM;
  if (m0 >= sg.lq) return;  // this segment is shorter than the longest one
  const int q_rows = static_cast<int>(min(static_cast<std::int64_t>(Tile::kBlockM), sg.lq - m0));
  const std::int64_t offset = sg.lk - sg.lq;  // causal: query i sees keys j <= i + offset
  const std::int64_t key_end =
      p.causal ? max(std::int64_t{0}, min(sg.lk, m0 + q_rows + offset)) : sg.lk;  // keys any row sees
  const int key_tiles = static_cast<int>((key_end + Tile::kBlockN - 1) / Tile::kBlockN);

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int quad_row = lane >> 2, quad_col = lane & 3;  // groupID and threadID_in_group
  const std::int64_t kv_head = head / p.group;
  const N* const q_base = p.q + (sg.q0 + m0) * p.q_token_stride + head * p.q_head_stride;
  const N* const k_base = p.k + sg.k0 * p.k_token_stride + kv_head * p.k_head_stride;
  const N* const v_base = p.v + sg.k0 * p.v_token_stride + kv_head * p.v_head_stride;
  const auto load_kv = [&](int t, int stage) {
    const std::int64_t n0 = static_cast<std::int64_t>(t) * Tile::kBlockN;
    const int rows = static_cast<int>(min(static_cast<std::int64_t>(Tile::kBlockN), sg.lk - n0));
    load_tile_async<N, kHeadDim>(kv_tiles + (2 * stage) * Tile::kTileElems, k_base + n0 * p.k_token_stride,
                                 p.k_token_stride, rows, tid);
    load_tile_async<N, kHeadDim>(kv_tiles + (2 * stage + 1) * Tile::kTileElems, v_base + n0 * p.v_token_stride,
                                 p.v_token_stride, rows, tid);
  };

  // Prologue: the Q tile and key tile 0 in one cp.async group.
  load_tile_async<N, kHeadDim>(q_tile, q_base, p.q_token_stride, q_rows, tid);
  if (key_tiles > 0) load_kv(0, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  std::uint32_t q_frag[kSteps][4];
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    ldmatrix_x4(q_frag[kk], q_tile + (warp * 16 + (lane & 15)) * Tile::kPitch + kk * 16 + (lane >> 4) * 8);
  }

  float o[kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  // This thread's two rows (quad_row and quad_row + 8 of the warp's 16): the
  // running max of the scores (log2 units) and its part of the running sum.
  float row_max[2] = {kNegInf, kNegInf};
  float row_sum[2] = {0.0f, 0.0f};
  const std::int64_t first_row = m0 + warp * 16 + quad_row;  // segment-relative query index of row 0

  for (int t = 0; t < key_tiles; ++t) {
    const int stage = t & 1;
    if (t + 1 < key_tiles) {
      load_kv(t + 1, stage ^ 1);  // the stage computed in iteration t - 1: freed by its closing barrier
      cp_async_commit();
    }
    const N* const k_tile = kv_tiles + (2 * stage) * Tile::kTileElems;
    const N* const v_tile = kv_tiles + (2 * stage + 1) * Tile::kTileElems;

    // S = Q K^T: 16 x 64 per warp, as 8 n8 tiles.
    float s[kKeyTiles][4];
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kKeyTiles / 2; ++np) {
        std::uint32_t b[4];
        ldmatrix_x4(b, k_tile + (np * 16 + (lane & 7) + (lane >> 4) * 8) * Tile::kPitch + kk * 16 +
                           ((lane >> 3) & 1) * 8);
        mma_16816<N>(s[2 * np], q_frag[kk], b[0], b[1]);
        mma_16816<N>(s[2 * np + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Scale into log2 units and mask: column col of the tile is visible to
    // row r when col < visible[r] (keys past the segment, and under the
    // causal mask keys past row + offset). Only edge tiles need it.
    const std::int64_t n0 = static_cast<std::int64_t>(t) * Tile::kBlockN;
    const bool edge = n0 + Tile::kBlockN > sg.lk || (p.causal && n0 + Tile::kBlockN - 1 > m0 + offset);
    int visible[2] = {Tile::kBlockN, Tile::kBlockN};  // keys of the tile rows quad_row, quad_row + 8 see
    if (edge) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        std::int64_t limit = sg.lk - n0;
        if (p.causal) limit = min(limit, first_row + 8 * r + offset + 1 - n0);
        visible[r] = static_cast<int>(max(std::int64_t{0}, min(limit, static_cast<std::int64_t>(Tile::kBlockN))));
      }
    }
    if (edge) {
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * j + 2 * quad_col + (e & 1);
          s[j][e] = col < visible[e >> 1] ? s[j][e] * p.scale : kNegInf;
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] *= p.scale;
      }
    }

    // Online softmax per row: new max across the quad, rescale O and the
    // sum, P = exp2(S - max). A row that has seen no key keeps max -inf and
    // uses 0 instead, so that exp2(-inf - 0) = 0 and never NaN.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = kNegInf;
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[r], tile_max);
      const float base = new_max == kNegInf ? 0.0f : new_max;
      const float alpha = exp2f(row_max[r] - base);
      row_max[r] = new_max;
      float sum = row_sum[r] * alpha;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        o[dt][2 * r] *= alpha;
        o[dt][2 * r + 1] *= alpha;
      }
#pragma unroll
      for (int j = 0; j < kKeyTiles; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = sum;
    }

    // O += P V: P's k16 step kk is the pair of S tiles (2kk, 2kk + 1).
#pragma unroll
    for (int kk = 0; kk < kKeyTiles / 2; ++kk) {
      const std::uint32_t a[4] = {
          pack_pair<N>(s[2 * kk][0], s[2 * kk][1]), pack_pair<N>(s[2 * kk][2], s[2 * kk][3]),
          pack_pair<N>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack_pair<N>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kSteps; ++dp) {
        std::uint32_t b[4];
        ldmatrix_x4_trans(b, v_tile + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * Tile::kPitch + dp * 16 +
                                 (lane >> 4) * 8);
        mma_16816<N>(o[2 * dp], a, b[0], b[1]);
        mma_16816<N>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }

    cp_async_wait_all();  // tile t + 1 has landed...
    __syncthreads();      // ...for every thread, and nobody reads stage `stage` any more
  }

  // Normalise and store: each thread writes two adjacent elements per d-tile
  // of its two rows. A row that saw no key has sum 0 and stores zeros.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const std::int64_t row = first_row + 8 * r;
    if (row < sg.lq) {
      N* const dst = p.out + ((sg.q0 + row) * p.hq + head) * kHeadDim + 2 * quad_col;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        // One 4-byte store: an even element of a contiguous row, and out is 16-byte aligned.
        *reinterpret_cast<std::uint32_t*>(dst + dt * 8) = pack_pair<N>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
      }
    }
  }
#endif
}

// ---- SIMT prefill ------------------------------------------------------------
//
// One warp per (query token, query head) row, rows row-major over [sq, hq],
// grid-stride. The warp walks the keys the row sees 32 at a time: lane j
// scores key c0 + j (a dot over dh, q from shared memory), the warp updates
// the running max and sum, and each lane accumulates output elements
// d = lane, lane + 32, ... in shared memory. Shared memory per warp: q [dh],
// output accumulator [dv], probabilities [32], in float.
template <class N>
__global__ void attention_prefill_simt_kernel(const PrefillParams<N> p) {
  extern __shared__ __align__(16) float simt_smem[];
  const int warps = static_cast<int>(blockDim.x / 32);
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  float* const q_s = simt_smem + warp * (p.dh + p.dv + 32);
  float* const acc_s = q_s + p.dh;
  float* const p_s = acc_s + p.dv;
  const std::int64_t rows = p.sq * p.hq;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * warps;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * warps + warp; r < rows; r += stride) {
    const std::int64_t token = r / p.hq, head = r % p.hq, kv_head = head / p.group;
    const std::int64_t segment = p.cu_q != nullptr ? segment_of_token(p.cu_q, p.segments, token) : 0;
    const Segment sg = segment_bounds(p.cu_q, p.cu_k, segment, p.sq, p.skv);
    const std::int64_t i = token - sg.q0;
    const std::int64_t visible = p.causal ? max(std::int64_t{0}, min(sg.lk, i + sg.lk - sg.lq + 1)) : sg.lk;

    const N* const q_row = p.q + token * p.q_token_stride + head * p.q_head_stride;
    for (std::int64_t d = lane; d < p.dh; d += 32) q_s[d] = to_float(q_row[d]);
    for (std::int64_t d = lane; d < p.dv; d += 32) acc_s[d] = 0.0f;
    __syncwarp();
    const N* const k_head = p.k + sg.k0 * p.k_token_stride + kv_head * p.k_head_stride;
    const N* const v_head = p.v + sg.k0 * p.v_token_stride + kv_head * p.v_head_stride;
    float row_max = kNegInf, row_sum = 0.0f;
    for (std::int64_t c0 = 0; c0 < visible; c0 += 32) {
      const int n = static_cast<int>(min(std::int64_t{32}, visible - c0));
      float score = kNegInf;
      if (lane < n) {
        const N* const k_row = k_head + (c0 + lane) * p.k_token_stride;
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        std::int64_t d = 0;
        for (; d + 4 <= p.dh; d += 4) {
#pragma unroll
          for (int e = 0; e < 4; ++e) part[e] += q_s[d + e] * to_float(k_row[d + e]);
        }
        for (; d < p.dh; ++d) part[0] += q_s[d] * to_float(k_row[d]);
        score = p.scale * ((part[0] + part[1]) + (part[2] + part[3]));
      }
      const float new_max = fmaxf(row_max, warp_max(score));  // finite: the chunk has n >= 1 keys
      const float base = new_max == kNegInf ? 0.0f : new_max;
      const float alpha = expf(row_max - base);
      const float prob = lane < n ? expf(score - base) : 0.0f;
      row_sum = row_sum * alpha + warp_sum(prob);
      row_max = new_max;
      p_s[lane] = prob;
      __syncwarp();
      for (std::int64_t d = lane; d < p.dv; d += 32) {
        float a = acc_s[d] * alpha;
        for (int j = 0; j < n; ++j) a += p_s[j] * to_float(v_head[(c0 + j) * p.v_token_stride + d]);
        acc_s[d] = a;
      }
      __syncwarp();  // p_s is rewritten by the next chunk
    }
    const float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;  // no visible key: zeros
    N* const out_row = p.out + (token * p.hq + head) * p.dv;
    for (std::int64_t d = lane; d < p.dv; d += 32) out_row[d] = from_float<N>(acc_s[d] * inv);
    __syncwarp();  // q_s and acc_s are rewritten by the next row
  }
}

// ---- decode -----------------------------------------------------------------

template <class N>
struct DecodeParams {
  N* out;  // [sq, hq, dv], contiguous
  const N* q;
  const N* k;
  const N* v;
  std::int64_t q_token_stride, q_head_stride;
  std::int64_t k_token_stride, k_head_stride;
  std::int64_t v_token_stride, v_head_stride;
  const std::int32_t* cu_q;  // null: one segment
  const std::int32_t* cu_k;
  std::int64_t sq, skv, hq, hkv, group, dh, dv, segments;
  int heads_per_block, tile_keys;
  std::int64_t head_chunks, blocks_per_head, keys_per_block;
  std::int64_t staging_offset;  // bytes into shared memory
  float scale;
  float* partial;  // [segments][hq][blocks_per_head][2 + dv]: max, sum, unnormalised output
};

// 16 bytes of N as floats (8 bf16/f16 or 4 float); p is 16-byte aligned.
template <class N>
__device__ inline void load16_as_float(const N* p, float (&x)[16 / sizeof(N)]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  if constexpr (std::is_same_v<N, float>) {
    x[0] = __uint_as_float(raw.x);
    x[1] = __uint_as_float(raw.y);
    x[2] = __uint_as_float(raw.z);
    x[3] = __uint_as_float(raw.w);
  } else {
    using N2 = std::conditional_t<std::is_same_v<N, __nv_bfloat16>, __nv_bfloat162, __half2>;
    const std::uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      N2 pair;
      memcpy(&pair, &words[w], sizeof(pair));
      x[2 * w] = to_float(pair.x);
      x[2 * w + 1] = to_float(pair.y);
    }
  }
}

// Copies keys [tile, tile + n) of one kv head (K rows of dh, V rows of dv
// elements) into a warp's staging buffers, rows packed back to back. With
// kVector (16-byte aligned rows, dh and dv multiples of 16 bytes) the copy is
// cp.async, 16 bytes per lane per step, and completes at the caller's
// cp.async wait; otherwise plain element copies, complete on return.
// Rows >= n are not written (never read).
template <class N, bool kVector>
__device__ inline void stage_kv_tile(N* k_stage, N* v_stage, const N* k_head, const N* v_head,
                                     std::int64_t k_token_stride, std::int64_t v_token_stride, std::int64_t tile,
                                     int n, std::int64_t dh, std::int64_t dv, int lane) {
  if constexpr (kVector) {
    constexpr int kVec = 16 / static_cast<int>(sizeof(N));
    const std::int64_t k_chunks = dh / kVec, v_chunks = dv / kVec;
    for (std::int64_t c = lane; c < n * k_chunks; c += 32) {
      const std::int64_t row = c / k_chunks, col = (c % k_chunks) * kVec;
      cp_async_16(k_stage + row * dh + col, k_head + (tile + row) * k_token_stride + col, true);
    }
    for (std::int64_t c = lane; c < n * v_chunks; c += 32) {
      const std::int64_t row = c / v_chunks, col = (c % v_chunks) * kVec;
      cp_async_16(v_stage + row * dv + col, v_head + (tile + row) * v_token_stride + col, true);
    }
    cp_async_commit();
  } else {
    for (std::int64_t idx = lane; idx < n * dh; idx += 32) {
      const std::int64_t row = idx / dh, col = idx % dh;
      k_stage[idx] = k_head[(tile + row) * k_token_stride + col];
    }
    for (std::int64_t idx = lane; idx < n * dv; idx += 32) {
      const std::int64_t row = idx / dv, col = idx % dv;
      v_stage[idx] = v_head[(tile + row) * v_token_stride + col];
    }
  }
}

// One block of 4 warps per (key split, query-head chunk, kv head, segment);
// blockIdx.x = split + blocks_per_head * (chunk + head_chunks * (kv_head +
// hkv * segment)). The block's query heads h0 .. h0 + nh - 1 share kv_head,
// so each K/V row is read once for all of them. Warp w takes keys
// [split * keys_per_block + w * kpw, + kpw) (kpw = keys_per_block / 4) in
// tiles of tile_keys (T): tile t + 1 is copied into the warp's other staging
// buffer while tile t is computed from shared memory. Per tile: scores with
// 8 lanes per key (lane l: key l / 8 of a group of 4, 16-byte chunks
// (l % 8) + 8 i of the head dim, reduced with 3 shuffles), softmax with one
// lane per key, P V with lanes over the output dim. The 4 warps' states are
// then merged in shared memory; the block writes the final output when it is
// the only split, else its (max, sum, output) for the combine kernel.
template <class N, bool kVector>
__global__ void __launch_bounds__(128) attention_decode_kernel(const DecodeParams<N> p) {
  constexpr int kWarps = kAttentionDecodeWarps;
  constexpr int kMaxHeads = kAttentionDecodeMaxHeads;
  constexpr int kVec = 16 / static_cast<int>(sizeof(N));
  extern __shared__ __align__(16) unsigned char decode_smem[];
  const int hb = p.heads_per_block;
  const int tile_keys = p.tile_keys;
  float* const p_all = reinterpret_cast<float*>(decode_smem);  // [kWarps][hb][32]
  float* const q_s = p_all + kWarps * hb * 32;                   // [hb][dh]
  float* const o_all = q_s + hb * p.dh;                          // [kWarps][hb][dv]
  float* const warp_max_s = o_all + kWarps * hb * p.dv;          // [kWarps][hb]
  float* const warp_sum_s = warp_max_s + kWarps * hb;            // [kWarps][hb]
  float* const weight_s = warp_sum_s + kWarps * hb;              // [kWarps][hb]
  float* const block_max_s = weight_s + kWarps * hb;             // [hb]
  float* const block_sum_s = block_max_s + hb;                   // [hb]
  N* const staging = reinterpret_cast<N*>(decode_smem + p.staging_offset);  // [kWarps][2][T][dh + dv]

  const std::int64_t block = blockIdx.x;
  const std::int64_t split = block % p.blocks_per_head;
  const std::int64_t chunk = (block / p.blocks_per_head) % p.head_chunks;
  const std::int64_t kv_head = (block / p.blocks_per_head / p.head_chunks) % p.hkv;
  const std::int64_t segment = block / p.blocks_per_head / p.head_chunks / p.hkv;
  const Segment sg = segment_bounds(p.cu_q, p.cu_k, segment, p.sq, p.skv);
  if (sg.lq == 0) return;  // an empty query segment has no output row
  const std::int64_t token = sg.q0;
  const std::int64_t h0 = kv_head * p.group + chunk * hb;
  const int nh = static_cast<int>(min(static_cast<std::int64_t>(hb), p.group - chunk * hb));
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;

  for (std::int64_t idx = tid; idx < nh * p.dh; idx += blockDim.x) {
    const std::int64_t i = idx / p.dh, d = idx % p.dh;
    q_s[idx] = to_float(p.q[token * p.q_token_stride + (h0 + i) * p.q_head_stride + d]);
  }
  for (std::int64_t idx = tid; idx < kWarps * hb * p.dv; idx += blockDim.x) o_all[idx] = 0.0f;
  __syncthreads();

  float* const p_s = p_all + warp * hb * 32;
  float* const o_s = o_all + warp * hb * p.dv;
  const std::int64_t stage_elems = tile_keys * (p.dh + p.dv);
  N* const warp_staging = staging + warp * 2 * stage_elems;
  const N* const k_head = p.k + sg.k0 * p.k_token_stride + kv_head * p.k_head_stride;
  const N* const v_head = p.v + sg.k0 * p.v_token_stride + kv_head * p.v_head_stride;
  const std::int64_t keys_per_warp = p.keys_per_block / kWarps;
  const std::int64_t begin = split * p.keys_per_block + warp * keys_per_warp;
  const std::int64_t end = min(begin + keys_per_warp, sg.lk);
  float run_max[kMaxHeads], run_sum[kMaxHeads];
#pragma unroll
  for (int i = 0; i < kMaxHeads; ++i) {
    run_max[i] = kNegInf;
    run_sum[i] = 0.0f;
  }
  const int part = lane & 7, group_key = lane >> 3;
  const auto stage_tile = [&](std::int64_t tile, int stage) {
    N* const k_stage = warp_staging + stage * stage_elems;
    const int n = static_cast<int>(min(static_cast<std::int64_t>(tile_keys), end - tile));
    stage_kv_tile<N, kVector>(k_stage, k_stage + tile_keys * p.dh, k_head, v_head, p.k_token_stride,
                              p.v_token_stride, tile, n, p.dh, p.dv, lane);
  };

  if (begin < end) stage_tile(begin, 0);
  int stage = 0;
  for (std::int64_t tile = begin; tile < end; tile += tile_keys, stage ^= 1) {
    const int n = static_cast<int>(min(static_cast<std::int64_t>(tile_keys), end - tile));
    const bool prefetch = tile + tile_keys < end;
    if (prefetch) stage_tile(tile + tile_keys, stage ^ 1);  // its last reader was the previous tile
    if constexpr (kVector) {
      if (prefetch) cp_async_wait_all_but_one();  // this tile, not the prefetch
      else cp_async_wait_all();
    }
    __syncwarp();  // every lane's copies of this tile are visible to the warp
    const N* const k_tile = warp_staging + stage * stage_elems;
    const N* const v_tile = k_tile + tile_keys * p.dh;

    // Scores of the tile's keys for every head, 4 keys per pass.
#pragma unroll 1
    for (int pass = 0; pass < tile_keys / 4; ++pass) {
      const int key = pass * 4 + group_key;
      float acc[kMaxHeads];
#pragma unroll
      for (int i = 0; i < kMaxHeads; ++i) acc[i] = 0.0f;
      if (key < n) {
        const N* const k_row = k_tile + key * p.dh;
        if constexpr (kVector) {
          for (std::int64_t c = part * kVec; c < p.dh; c += 8 * kVec) {
            float x[kVec];
            load16_as_float(k_row + c, x);
#pragma unroll
            for (int i = 0; i < kMaxHeads; ++i) {
              if (i < nh) {
                const float4* const qv = reinterpret_cast<const float4*>(q_s + i * p.dh + c);
#pragma unroll
                for (int e4 = 0; e4 < kVec / 4; ++e4) {
                  const float4 qq = qv[e4];
                  acc[i] += qq.x * x[4 * e4] + qq.y * x[4 * e4 + 1] + qq.z * x[4 * e4 + 2] + qq.w * x[4 * e4 + 3];
                }
              }
            }
          }
        } else {
          for (std::int64_t d = part; d < p.dh; d += 8) {
            const float x = to_float(k_row[d]);
#pragma unroll
            for (int i = 0; i < kMaxHeads; ++i) {
              if (i < nh) acc[i] += q_s[i * p.dh + d] * x;
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kMaxHeads; ++i) {
        if (i < nh) {  // nh is uniform across the warp: every lane shuffles
          acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 4);
          acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 2);
          acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 1);
          if (part == 0 && key < n) p_s[i * 32 + key] = acc[i] * p.scale;
        }
      }
    }
    __syncwarp();

    // Softmax update, one lane per key; P overwrites the scores (0 past n).
    float alpha[kMaxHeads];
#pragma unroll
    for (int i = 0; i < kMaxHeads; ++i) {
      alpha[i] = 1.0f;
      if (i < nh) {
        const float score = lane < n ? p_s[i * 32 + lane] : kNegInf;
        const float new_max = fmaxf(run_max[i], warp_max(score));
        const float base = new_max == kNegInf ? 0.0f : new_max;
        alpha[i] = expf(run_max[i] - base);
        const float prob = lane < n ? expf(score - base) : 0.0f;
        run_sum[i] = run_sum[i] * alpha[i] + warp_sum(prob);
        run_max[i] = new_max;
        p_s[i * 32 + lane] = prob;
      }
    }
    __syncwarp();

    // O = alpha O + P V, lanes over the output dim, 4 keys per step.
    for (std::int64_t d = lane; d < p.dv; d += 32) {
      float o[kMaxHeads];
#pragma unroll
      for (int i = 0; i < kMaxHeads; ++i) o[i] = i < nh ? o_s[i * p.dv + d] * alpha[i] : 0.0f;
      for (int j = 0; j < n; j += 4) {
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = j + e < n ? to_float(v_tile[(j + e) * p.dv + d]) : 0.0f;
#pragma unroll
        for (int i = 0; i < kMaxHeads; ++i) {
          if (i < nh) {
            const float4 pr = *reinterpret_cast<const float4*>(p_s + i * 32 + j);
            o[i] += pr.x * x[0] + pr.y * x[1] + pr.z * x[2] + pr.w * x[3];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kMaxHeads; ++i) {
        if (i < nh) o_s[i * p.dv + d] = o[i];
      }
    }
    __syncwarp();  // p_s and this staging buffer are rewritten later
  }

  // Merge the warps: weight_w = exp(max_w - max), zero for a warp without keys.
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < kMaxHeads; ++i) {
      if (i < nh) {
        warp_max_s[warp * hb + i] = run_max[i];
        warp_sum_s[warp * hb + i] = run_sum[i];
      }
    }
  }
  __syncthreads();
  if (tid < nh) {
    float m = kNegInf;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_sum_s[w * hb + tid] > 0.0f) m = fmaxf(m, warp_max_s[w * hb + tid]);
    }
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float l = warp_sum_s[w * hb + tid];
      const float weight = l > 0.0f ? expf(warp_max_s[w * hb + tid] - m) : 0.0f;
      weight_s[w * hb + tid] = weight;
      total += weight * l;
    }
    block_max_s[tid] = m;
    block_sum_s[tid] = total;
  }
  __syncthreads();
  const bool final_output = p.blocks_per_head == 1;
  for (std::int64_t idx = tid; idx < nh * p.dv; idx += blockDim.x) {
    const int i = static_cast<int>(idx / p.dv);
    const std::int64_t d = idx % p.dv;
    float acc = 0.0f;
    for (int w = 0; w < kWarps; ++w) acc += weight_s[w * hb + i] * o_all[(w * hb + i) * p.dv + d];
    if (final_output) {
      const float total = block_sum_s[i];
      p.out[(token * p.hq + h0 + i) * p.dv + d] = from_float<N>(total > 0.0f ? acc * (1.0f / total) : 0.0f);
    } else {
      float* const entry = p.partial + ((segment * p.hq + h0 + i) * p.blocks_per_head + split) * (p.dv + 2);
      if (d == 0) {
        entry[0] = block_max_s[i];
        entry[1] = block_sum_s[i];
      }
      entry[2 + d] = acc;
    }
  }
}

// Block-wide reduction of 128 threads (max or sum); every thread gets the
// result. `scratch` holds 4 floats; the closing barrier lets it be reused.
template <bool kMax>
__device__ inline float block_reduce_128(float x, float* scratch) {
  x = kMax ? warp_max(x) : warp_sum(x);
  const int warp = static_cast<int>(threadIdx.x / 32);
  if (threadIdx.x % 32 == 0) scratch[warp] = x;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < 4; ++w) r = kMax ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();
  return r;
}

// One block of 128 threads per (segment, query head) row, blockIdx.x =
// segment * hq + head: merges the blocks_per_head partial states, weight_c =
// exp(max_c - max) (zero for a split without keys), output = sum_c weight_c
// O_c / sum_c weight_c l_c; threads stride over splits, then over dv.
template <class N>
__global__ void __launch_bounds__(128) attention_decode_combine_kernel(const DecodeParams<N> p) {
  extern __shared__ __align__(16) float weights[];  // [blocks_per_head]
  __shared__ float scratch[4];
  const std::int64_t segment = blockIdx.x / p.hq, head = blockIdx.x % p.hq;
  const Segment sg = segment_bounds(p.cu_q, p.cu_k, segment, p.sq, p.skv);
  if (sg.lq == 0) return;
  const std::int64_t splits = p.blocks_per_head, width = p.dv + 2;
  const float* const entries = p.partial + (segment * p.hq + head) * splits * width;
  float m = kNegInf;
  for (std::int64_t c = threadIdx.x; c < splits; c += blockDim.x) {
    if (entries[c * width + 1] > 0.0f) m = fmaxf(m, entries[c * width]);
  }
  m = block_reduce_128<true>(m, scratch);
  float total = 0.0f;
  for (std::int64_t c = threadIdx.x; c < splits; c += blockDim.x) {
    const float l = entries[c * width + 1];
    const float weight = l > 0.0f ? expf(entries[c * width] - m) : 0.0f;
    weights[c] = weight;
    total += weight * l;
  }
  total = block_reduce_128<false>(total, scratch);  // its barriers also publish `weights`
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  N* const out_row = p.out + (sg.q0 * p.hq + head) * p.dv;
  for (std::int64_t d = threadIdx.x; d < p.dv; d += blockDim.x) {
    float acc = 0.0f;
    for (std::int64_t c = 0; c < splits; ++c) {
      if (weights[c] != 0.0f) acc += weights[c] * entries[c * width + 2 + d];
    }
    out_row[d] = from_float<N>(acc * inv);
  }
}

// ---- host side ----------------------------------------------------------------

inline bool aligned_16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <class T>
bool operand_vector_aligned(const AttentionOperand<T>& x, std::int64_t elems) {
  return aligned_16(x.data) && x.token_stride % elems == 0 && x.head_stride % elems == 0;
}

inline unsigned grid_size(std::int64_t blocks, const char* what) {
  if (blocks > std::numeric_limits<int>::max()) {
    throw DeviceError(tessera::detail::concat("ops::attention: ", what, " needs ", blocks,
                                              " blocks, more than a CUDA grid holds"));
  }
  return static_cast<unsigned>(blocks);
}

template <class N>
PrefillParams<N> prefill_params(N* out, const AttentionOperand<N>& q, const AttentionOperand<N>& k,
                                const AttentionOperand<N>& v, const std::int32_t* cu_q, const std::int32_t* cu_k,
                                const AttentionShape& s) {
  PrefillParams<N> p{};
  p.out = out;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.q_token_stride = q.token_stride;
  p.q_head_stride = q.head_stride;
  p.k_token_stride = k.token_stride;
  p.k_head_stride = k.head_stride;
  p.v_token_stride = v.token_stride;
  p.v_head_stride = v.head_stride;
  p.cu_q = cu_q;
  p.cu_k = cu_k;
  p.sq = s.sq;
  p.skv = s.skv;
  p.hq = s.hq;
  p.group = s.hq / s.hkv;
  p.dh = s.dh;
  p.dv = s.dv;
  p.segments = s.segments;
  p.query_tiles = 1;
  p.scale = s.scale;
  p.causal = s.causal;
  return p;
}

template <class N, int kHeadDim>
void launch_prefill_mma(const LaunchContext& ctx, PrefillParams<N> p, const AttentionShape& s) {
  using Tile = MmaTile<N, kHeadDim>;
  const auto kernel = attention_prefill_mma_kernel<N, kHeadDim>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(Tile::kSmemBytes)),
        "ops::attention: cudaFuncSetAttribute");
  p.query_tiles = (s.max_q_len + Tile::kBlockM - 1) / Tile::kBlockM;
  p.scale = s.scale * 1.4426950408889634f;  // log2(e): the kernel uses exp2
  const unsigned blocks = grid_size(p.query_tiles * s.segments * s.hq, "the tensor-core prefill kernel");
  kernel<<<blocks, Tile::kThreads, Tile::kSmemBytes, ctx.stream>>>(p);
  check_launch("ops::attention");
}

template <class N>
void launch_prefill_simt(const LaunchContext& ctx, const PrefillParams<N>& p, const AttentionShape& s) {
  const std::size_t per_warp = static_cast<std::size_t>(s.dh + s.dv + 32) * sizeof(float);
  int warps = 4;
  while (warps > 1 && warps * per_warp > kAttentionSmemDefaultLimit) --warps;
  const std::size_t smem = warps * per_warp;
  const auto kernel = attention_prefill_simt_kernel<N>;
  if (smem > kAttentionSmemDefaultLimit) {
    int limit = 0;
    check(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.physical_device),
          "ops::attention: cudaDeviceGetAttribute");
    if (smem > static_cast<std::size_t>(limit)) {
      throw DeviceError(tessera::detail::concat("ops::attention: head dims ", s.dh, " and ", s.dv,
                                                " need ", smem, " bytes of shared memory per warp; this device "
                                                "allows ", limit));
    }
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "ops::attention: cudaFuncSetAttribute");
  }
  const unsigned blocks = grid_blocks(s.sq * s.hq, warps);
  kernel<<<blocks, 32 * warps, smem, ctx.stream>>>(p);
  check_launch("ops::attention");
}

template <class N>
void launch_decode(const LaunchContext& ctx, const PrefillParams<N>& pp, const AttentionShape& s,
                   const AttentionDecodePlan& plan, void* workspace, std::size_t workspace_bytes) {
  if (workspace_bytes < plan.workspace_bytes) {
    throw DeviceError(tessera::detail::concat("ops::attention: decode needs ", plan.workspace_bytes,
                                              " bytes of workspace, got ", workspace_bytes));
  }
  DecodeParams<N> p{};
  p.out = pp.out;
  p.q = pp.q;
  p.k = pp.k;
  p.v = pp.v;
  p.q_token_stride = pp.q_token_stride;
  p.q_head_stride = pp.q_head_stride;
  p.k_token_stride = pp.k_token_stride;
  p.k_head_stride = pp.k_head_stride;
  p.v_token_stride = pp.v_token_stride;
  p.v_head_stride = pp.v_head_stride;
  p.cu_q = pp.cu_q;
  p.cu_k = pp.cu_k;
  p.sq = s.sq;
  p.skv = s.skv;
  p.hq = s.hq;
  p.hkv = s.hkv;
  p.group = s.hq / s.hkv;
  p.dh = s.dh;
  p.dv = s.dv;
  p.segments = s.segments;
  p.heads_per_block = plan.heads_per_block;
  p.tile_keys = plan.tile_keys;
  p.staging_offset = static_cast<std::int64_t>(plan.staging_offset);
  p.head_chunks = plan.head_chunks;
  p.blocks_per_head = plan.blocks_per_head;
  p.keys_per_block = plan.keys_per_block;
  p.scale = s.scale;
  p.partial = static_cast<float*>(workspace);

  // cp.async staging needs 16-byte aligned K and V rows of whole 16-byte chunks.
  constexpr int kVec = 16 / static_cast<int>(sizeof(N));
  const bool vector = s.dh % kVec == 0 && s.dv % kVec == 0 &&
                      operand_vector_aligned(AttentionOperand<N>{pp.k, pp.k_token_stride, pp.k_head_stride}, kVec) &&
                      operand_vector_aligned(AttentionOperand<N>{pp.v, pp.v_token_stride, pp.v_head_stride}, kVec);
  const unsigned blocks =
      grid_size(s.segments * s.hkv * plan.head_chunks * plan.blocks_per_head, "the decode kernel");
  const unsigned threads = 32 * kAttentionDecodeWarps;
  const auto kernel = vector ? attention_decode_kernel<N, true> : attention_decode_kernel<N, false>;
  if (plan.smem_bytes > kAttentionSmemDefaultLimit) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(plan.smem_bytes)),
          "ops::attention: cudaFuncSetAttribute");
  }
  kernel<<<blocks, threads, plan.smem_bytes, ctx.stream>>>(p);
  check_launch("ops::attention");
  if (plan.blocks_per_head > 1) {
    const std::size_t smem = static_cast<std::size_t>(plan.blocks_per_head) * sizeof(float);
    attention_decode_combine_kernel<N><<<grid_size(s.segments * s.hq, "the decode combine kernel"), 128, smem,
                                         ctx.stream>>>(p);
    check_launch("ops::attention");
  }
}

}  // namespace kernels::attn

template <class T>
void launch_attention(const LaunchContext& ctx, T* out, AttentionOperand<T> q, AttentionOperand<T> k,
                      AttentionOperand<T> v, const std::int32_t* cu_seqlens_q, const std::int32_t* cu_seqlens_k,
                      const AttentionShape& shape, void* workspace, std::size_t workspace_bytes) {
  if (shape.sq == 0 || shape.hq == 0 || shape.dv == 0) return;  // empty output
  using N = kernels::native_t<T>;
  namespace ka = kernels::attn;
  const auto native = [](const AttentionOperand<T>& x) {
    return AttentionOperand<N>{kernels::as_native(x.data), x.token_stride, x.head_stride};
  };
  const AttentionOperand<N> nq = native(q), nk = native(k), nv = native(v);
  const auto params = ka::prefill_params<N>(kernels::as_native(out), nq, nk, nv, cu_seqlens_q, cu_seqlens_k, shape);

  const AttentionDecodePlan plan = attention_decode_plan<T>(shape, ctx.sm_count, ctx.max_shared_memory_per_block);
  if (plan.usable) {
    ka::launch_decode<N>(ctx, params, shape, plan, workspace, workspace_bytes);
    return;
  }
  if constexpr (!std::is_same_v<T, float>) {
    const bool tensor_core_shape = shape.dh == shape.dv && (shape.dh == 64 || shape.dh == 80 || shape.dh == 128);
    const bool aligned = ka::operand_vector_aligned(nq, 8) && ka::operand_vector_aligned(nk, 8) &&
                         ka::operand_vector_aligned(nv, 8) && ka::aligned_16(out);
    if (tensor_core_shape && aligned && ctx.compute_capability >= 80) {
      switch (shape.dh) {
        case 64: ka::launch_prefill_mma<N, 64>(ctx, params, shape); return;
        case 80: ka::launch_prefill_mma<N, 80>(ctx, params, shape); return;
        default: ka::launch_prefill_mma<N, 128>(ctx, params, shape); return;
      }
    }
  }
  ka::launch_prefill_simt<N>(ctx, params, shape);
}

}  // namespace tessera::cuda
#endif
