// tessera/ops/attention.hpp — reference scaled-dot-product attention in the
// tokens-major packed layout that FlashAttention and vLLM use:
//
//   q [Sq, Hq, Dh], k [Skv, Hkv, Dh], v [Skv, Hkv, Dv]  ->  out [Sq, Hq, Dv]
//
// - Grouped-query attention: Hq % Hkv == 0 and query head h reads kv head
//   h / (Hq / Hkv) (MHA is Hkv == Hq, MQA is Hkv == 1).
// - MaskKind::Causal is bottom-right aligned, as in FlashAttention-2: with
//   Sq != Skv, query i sees keys j <= i + (Skv - Sq). Decoding one token
//   (Sq = 1) against a KV cache therefore sees the whole cache. A query row
//   that sees no key (causal with Sq > Skv) outputs zeros.
// - Variable-length batches: the overload taking cu_seqlens_q / cu_seqlens_k
//   (int32 cumulative lengths [0, l0, l0+l1, ...], on q's device, like
//   flash_attn_varlen_func) packs segments back to back; segment s attends
//   only within itself, with the mask kind applied inside each segment.
//
// The CPU code is the reference: scores, softmax and accumulation in float,
// output rounded once to T. Every overload checks devices and dtypes at
// compile time, then shapes (ShapeError) and values (ValueError), then
// dispatches. On CUDA (ops/cuda/attention.cuh) the same semantics run as a
// flash-decoding kernel when every query segment has one token, a
// FlashAttention-2 tensor-core kernel for bf16/f16 with head dim 64, 80 or
// 128, and a SIMT kernel otherwise; none materialises the score matrix.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

#include "common.hpp"
#include "cuda/attention.cuh"

namespace tessera::ops {

// Which keys a query may see (within its segment).
enum class MaskKind {
  Full,    // every key: encoders, vision towers, cross-attention
  Causal,  // keys j <= i + (Skv - Sq): decoders, bottom-right aligned
};

struct AttentionOptions {
  std::optional<float> scale = std::nullopt;  // softmax scale; nullopt means 1/sqrt(Dh)
  MaskKind mask = MaskKind::Full;
};

// Helpers live in their own namespace so that generic names (TokenRange,
// attend_row, ...) cannot collide with other op headers' detail helpers.
namespace detail::attn {

inline constexpr std::string_view kAttentionOp = "ops::attention";

struct AttentionDims {
  std::int64_t sq, skv, hq, hkv, dh, dv;
};

// Shape checks shared by every backend; returns the problem's sizes.
template <class VQ, class VK, class VV>
AttentionDims attention_dims(const VQ& q, const VK& k, const VV& v) {
  constexpr auto op = kAttentionOp;
  check(q.rank() == 3, op, "q must be [tokens, heads, head_dim], got ", q.shape());
  check(k.rank() == 3, op, "k must be [tokens, kv_heads, head_dim], got ", k.shape());
  check(v.rank() == 3, op, "v must be [tokens, kv_heads, v_head_dim], got ", v.shape());
  const AttentionDims d{q.dim(0), k.dim(0), q.dim(1), k.dim(1), q.dim(2), v.dim(2)};
  check(v.dim(0) == d.skv, op, "k has ", d.skv, " tokens but v has ", v.dim(0), " (k ", k.shape(), ", v ",
        v.shape(), ")");
  check(v.dim(1) == d.hkv, op, "k has ", d.hkv, " kv heads but v has ", v.dim(1), " (k ", k.shape(), ", v ",
        v.shape(), ")");
  check(k.dim(2) == d.dh, op, "head dim mismatch: q has head_dim ", d.dh, " but k has ", k.dim(2), " (q ",
        q.shape(), ", k ", k.shape(), ")");
  check(d.dh > 0, op, "head_dim must be positive, got q ", q.shape());
  check(d.hkv > 0 && d.hq % d.hkv == 0, op, "query heads Hq = ", d.hq, " must be a multiple of kv heads Hkv = ",
        d.hkv, " for grouped-query attention (q ", q.shape(), ", k ", k.shape(), ")");
  return d;
}

inline float attention_scale(const AttentionOptions& opt, std::int64_t dh) {
  const float scale = opt.scale.value_or(1.0f / std::sqrt(static_cast<float>(dh)));
  check_value(std::isfinite(scale), kAttentionOp, "scale must be finite, got ", scale);
  return scale;
}

// Shape checks of the cu_seqlens pair (any device): rank 1, at least the
// leading 0, and the same number of segments on both sides.
template <class VC, class VD>
void check_cu_seqlens_shapes(const VC& cu_q, const VD& cu_k) {
  constexpr auto op = kAttentionOp;
  check(cu_q.rank() == 1 && cu_q.dim(0) >= 1, op,
        "cu_seqlens_q must be a 1-D tensor of segments + 1 offsets, got shape ", cu_q.shape());
  check(cu_k.rank() == 1 && cu_k.dim(0) >= 1, op,
        "cu_seqlens_k must be a 1-D tensor of segments + 1 offsets, got shape ", cu_k.shape());
  check(cu_q.dim(0) == cu_k.dim(0), op, "cu_seqlens_q has ", cu_q.dim(0), " entries (", cu_q.dim(0) - 1,
        " segments) but cu_seqlens_k has ", cu_k.dim(0), " (", cu_k.dim(0) - 1,
        " segments); both must describe the same segments");
}

// Reads a host-readable cu_seqlens view into int64 offsets and checks its
// values: starts at 0, never decreases, ends at the token count of `tensor`.
// A CUDA launcher should validate the same way on a host copy (they are tiny)
// before its kernel trusts the offsets.
template <class VC>
std::vector<std::int64_t> read_cu_seqlens(const VC& cu, std::int64_t tokens, std::string_view arg,
                                          std::string_view tensor) {
  const std::int64_t n = cu.dim(0), stride = cu.stride(0);
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) offsets[static_cast<std::size_t>(i)] = cu.raw()[i * stride];
  check_value(offsets[0] == 0, kAttentionOp, arg, "[0] is ", offsets[0], "; cumulative sequence lengths start at 0");
  for (std::size_t i = 1; i < offsets.size(); ++i) {
    check_value(offsets[i] >= offsets[i - 1], kAttentionOp, arg, " decreases at index ", i, " (", offsets[i - 1],
                " then ", offsets[i], "); cumulative sequence lengths must be non-decreasing");
  }
  check_value(offsets.back() == tokens, kAttentionOp, arg, "[", n - 1, "] (the last entry) is ", offsets.back(),
              " but ", tensor, " has ", tokens, " tokens");
  return offsets;
}

// How many keys (a prefix of the segment) query row i of a segment sees.
inline std::int64_t visible_keys(std::int64_t i, std::int64_t lq, std::int64_t lk, MaskKind mask) {
  if (mask == MaskKind::Full) return lk;
  return std::clamp<std::int64_t>(i + (lk - lq) + 1, 0, lk);  // bottom-right aligned
}

// q, k or v as a float view with unit stride along head_dim: the argument
// itself when it already is one (no copy for float inputs), otherwise a
// contiguous float copy held in `storage`. Converting once up front (charged
// to D's ledger, outside the parallel loop) costs one pass over the operand,
// instead of converting each key once per query row and query head.
template <class D, class T>
TensorView<D, const float> float_operand(const TensorView<D, const T>& x, Tensor<D, float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    if (x.stride(2) == 1 || x.dim(2) == 1) return x;
  }
  storage = Tensor<D, float>(x.shape());
  cpu_unary(storage.raw(), x, [](float value) { return value; });  // parallel when contiguous
  return storage.view();
}

// Float dot product with eight partial sums: independent lanes that the
// compiler can vectorise without -ffast-math reassociation.
inline float attention_dot(const float* a, const float* b, std::int64_t n) {
  float part[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) part[l] += a[i + l] * b[i + l];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (float p : part) sum += p;
  return sum;
}

// Rows of one head of a float [tokens, heads, width] operand: row j of the
// segment starts at base + j * stride and its `width` elements are adjacent.
struct HeadRows {
  const float* base;
  std::int64_t stride, width;
  const float* row(std::int64_t j) const { return base + j * stride; }
};

template <class D>
HeadRows head_rows(const TensorView<D, const float>& x, std::int64_t first_token, std::int64_t head) {
  return {x.raw() + first_token * x.stride(0) + head * x.stride(1), x.stride(0), x.dim(2)};
}

// One query row against the first `visible` keys: two-pass softmax of
// scale * q.k (max, then exp and sum while accumulating p * v), normalised
// into acc[0, dv). No visible key leaves acc all zeros.
inline void attend_row(const float* q, const HeadRows& k, const HeadRows& v, std::int64_t visible, float scale,
                       float* scores, float* acc) {
  std::fill(acc, acc + v.width, 0.0f);
  if (visible == 0) return;
  float max = -std::numeric_limits<float>::infinity();
  for (std::int64_t j = 0; j < visible; ++j) {
    scores[j] = scale * attention_dot(q, k.row(j), k.width);
    max = std::max(max, scores[j]);
  }
  float sum = 0.0f;
  for (std::int64_t j = 0; j < visible; ++j) {
    const float p = std::exp(scores[j] - max);
    sum += p;
    const float* vj = v.row(j);
    for (std::int64_t d = 0; d < v.width; ++d) acc[d] += p * vj[d];
  }
  const float inv_sum = 1.0f / sum;
  for (std::int64_t d = 0; d < v.width; ++d) acc[d] *= inv_sum;
}

struct TokenRange {
  std::int64_t begin, end;
  std::int64_t size() const { return end - begin; }
};

// One (segment, query head) work item: each of the segment's query rows of
// `head` attends to the segment's keys and values of `kv_head`.
template <class D, class T>
void attention_head_cpu(T* out, const TensorView<D, const float>& q, const TensorView<D, const float>& k,
                        const TensorView<D, const float>& v, TokenRange qr, TokenRange kr, std::int64_t head,
                        std::int64_t kv_head, float scale, MaskKind mask) {
  const std::int64_t lq = qr.size(), lk = kr.size(), hq = q.dim(1), dv = v.dim(2);
  if (lq == 0) return;
  const HeadRows queries = head_rows(q, qr.begin, head);
  const HeadRows keys = head_rows(k, kr.begin, kv_head);
  const HeadRows values = head_rows(v, kr.begin, kv_head);
  std::vector<float> scores(static_cast<std::size_t>(lk)), acc(static_cast<std::size_t>(dv));
  for (std::int64_t i = 0; i < lq; ++i) {
    attend_row(queries.row(i), keys, values, visible_keys(i, lq, lk, mask), scale, scores.data(), acc.data());
    T* o = out + ((qr.begin + i) * hq + head) * dv;
    for (std::int64_t d = 0; d < dv; ++d) o[d] = from_float<T>(acc[static_cast<std::size_t>(d)]);
  }
}

// Multiply-adds of the whole problem, every key visible (an upper bound under
// a causal mask): what decides whether the work items run in parallel, so
// that decoding against a short cache stays on the calling thread.
inline std::int64_t attention_work(const std::vector<std::int64_t>& cu_q, const std::vector<std::int64_t>& cu_k,
                                   std::int64_t heads, std::int64_t macs_per_key) {
  std::int64_t pairs = 0;
  for (std::size_t s = 0; s + 1 < cu_q.size(); ++s) pairs += (cu_q[s + 1] - cu_q[s]) * (cu_k[s + 1] - cu_k[s]);
  return pairs * heads * macs_per_key;
}

// The CPU reference over all segments (offsets from cu_seqlens, or the single
// segment {0, S}); one parallel work item per (segment, query head).
template <class D, class T>
void attention_cpu(T* out, const TensorView<D, const T>& q, const TensorView<D, const T>& k,
                   const TensorView<D, const T>& v, const std::vector<std::int64_t>& cu_q,
                   const std::vector<std::int64_t>& cu_k, float scale, MaskKind mask) {
  Tensor<D, float> q_storage, k_storage, v_storage;
  const auto qf = float_operand(q, q_storage);
  const auto kf = float_operand(k, k_storage);
  const auto vf = float_operand(v, v_storage);
  const std::int64_t segments = static_cast<std::int64_t>(cu_q.size()) - 1;
  const std::int64_t hq = q.dim(1), group = hq / k.dim(1);
  const std::int64_t items = segments * hq;
  TESSERA_OMP_PARALLEL_FOR_IF(items > 1 && attention_work(cu_q, cu_k, hq, q.dim(2) + v.dim(2)) >= kParallelMinElements)
  for (std::int64_t item = 0; item < items; ++item) {
    const auto s = static_cast<std::size_t>(item / hq);
    const std::int64_t head = item % hq;
    attention_head_cpu(out, qf, kf, vf, {cu_q[s], cu_q[s + 1]}, {cu_k[s], cu_k[s + 1]}, head, head / group, scale,
                       mask);
  }
}

// ---- CUDA ------------------------------------------------------------------

// q, k or v as the CUDA launcher reads it: unit stride along head_dim and
// any token and head strides, so a slice of a fused qkv projection is read
// in place; only a view whose head_dim is itself strided is packed (into
// `storage`). The stride of a size-1 dimension is never used and is passed
// as 0, so that it cannot defeat the launcher's alignment checks.
template <class D, class T>
cuda::AttentionOperand<T> cuda_operand(const TensorView<D, const T>& x, Tensor<D, T>& storage) {
  const auto used_stride = [&](int axis) { return x.dim(axis) == 1 ? std::int64_t{0} : x.stride(axis); };
  if (x.dim(2) == 1 || x.stride(2) == 1) return {x.device_ptr().get(), used_stride(0), used_stride(1)};
  storage = contiguous(x);
  return {storage.device_ptr().get(), x.dim(0) == 1 ? 0 : x.dim(1) * x.dim(2), x.dim(1) == 1 ? 0 : x.dim(2)};
}

inline std::int64_t longest_segment(const std::vector<std::int64_t>& cu) {
  std::int64_t longest = 0;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) longest = std::max(longest, cu[s + 1] - cu[s]);
  return longest;
}

// Enqueues attention on D's stream. cu_q / cu_k: device offsets (validated
// on the host as `offsets_q` / `offsets_k`), or null for one segment.
template <class D, class T>
void attention_cuda(Tensor<D, T>& out, const TensorView<D, const T>& q, const TensorView<D, const T>& k,
                    const TensorView<D, const T>& v, const std::int32_t* cu_q, const std::int32_t* cu_k,
                    const std::vector<std::int64_t>& offsets_q, const std::vector<std::int64_t>& offsets_k,
                    const AttentionDims& dims, float scale, MaskKind mask) {
  detail::cuda_launch<D>(kAttentionOp, [&](const cuda::LaunchContext& ctx) {
    Tensor<D, T> q_storage, k_storage, v_storage;
    const auto qo = cuda_operand(q, q_storage);
    const auto ko = cuda_operand(k, k_storage);
    const auto vo = cuda_operand(v, v_storage);
    cuda::AttentionShape shape;
    shape.sq = dims.sq;
    shape.skv = dims.skv;
    shape.hq = dims.hq;
    shape.hkv = dims.hkv;
    shape.dh = dims.dh;
    shape.dv = dims.dv;
    shape.segments = static_cast<std::int64_t>(offsets_q.size()) - 1;
    shape.max_q_len = longest_segment(offsets_q);
    shape.max_k_len = longest_segment(offsets_k);
    shape.scale = scale;
    shape.causal = mask == MaskKind::Causal;
    // Flash-decoding keeps the partial softmax state of each key split here.
    const std::size_t workspace_bytes = cuda::attention_decode_workspace_bytes<T>(ctx, shape);
    Buffer<D> workspace = workspace_bytes > 0 ? Buffer<D>(workspace_bytes) : Buffer<D>();
    cuda::launch_attention<T>(ctx, out.device_ptr().get(), qo, ko, vo, cu_q, cu_k, shape, workspace.get(),
                              workspace_bytes);
  });
}

}  // namespace detail::attn

// Attention over one sequence: q [Sq, Hq, Dh], k [Skv, Hkv, Dh],
// v [Skv, Hkv, Dv] -> [Sq, Hq, Dv], contiguous, of q's dtype and device.
// q, k and v may be strided views (e.g. slices of a fused qkv projection).
template <AnyTensor Q, AnyTensor K, AnyTensor V>
Tensor<device_of<Q>, element_of<Q>> attention(const Q& q, const K& k, const V& v, const AttentionOptions& opt = {}) {
  using D = device_of<Q>;
  using T = element_of<Q>;
  require_same_device<D, device_of<K>, device_of<V>>();
  require_same_dtype<T, element_of<K>, element_of<V>>();
  static_assert(FloatType<T>, "tessera: ops::attention needs floating-point q, k and v (float, bf16 or f16)");
  if constexpr (!detail::float_operands_on<D, T, K, V>) {
    return {};  // a gate above has already failed
  } else {
    const auto vq = as_view(q);
    const auto vk = as_view(k);
    const auto vv = as_view(v);
    const auto dims = detail::attn::attention_dims(vq, vk, vv);
    const float scale = detail::attn::attention_scale(opt, dims.dh);
    Tensor<D, T> out(Shape{dims.sq, dims.hq, dims.dv});
    if constexpr (is_cpu_v<D>) {
      detail::attn::attention_cpu(out.raw(), vq, vk, vv, {0, dims.sq}, {0, dims.skv}, scale, opt.mask);
    } else {
      detail::attn::attention_cuda(out, vq, vk, vv, nullptr, nullptr, {0, dims.sq}, {0, dims.skv}, dims, scale,
                                   opt.mask);
    }
    return out;
  }
}

// Variable-length attention over segments packed back to back: segment s
// holds q tokens [cu_seqlens_q[s], cu_seqlens_q[s+1]) and k/v tokens
// [cu_seqlens_k[s], cu_seqlens_k[s+1]) and attends only within itself.
// cu_seqlens_* are int32 tensors on q's device (non-parameter state is typed
// like everything else). Bad offsets throw ValueError naming the argument and
// index; mismatched segment counts throw ShapeError.
template <AnyTensor Q, AnyTensor K, AnyTensor V, AnyTensor CQ, AnyTensor CK>
Tensor<device_of<Q>, element_of<Q>> attention(const Q& q, const K& k, const V& v, const CQ& cu_seqlens_q,
                                              const CK& cu_seqlens_k, const AttentionOptions& opt = {}) {
  using D = device_of<Q>;
  using T = element_of<Q>;
  require_same_device<D, device_of<K>, device_of<V>, device_of<CQ>, device_of<CK>>();
  require_same_dtype<T, element_of<K>, element_of<V>>();
  require_same_dtype<std::int32_t, element_of<CQ>, element_of<CK>>();
  static_assert(FloatType<T>, "tessera: ops::attention needs floating-point q, k and v (float, bf16 or f16)");
  if constexpr (!(detail::float_operands_on<D, T, K, V> && detail::operands_on<D, std::int32_t, CQ, CK>)) {
    return {};  // a gate above has already failed
  } else {
    const auto vq = as_view(q);
    const auto vk = as_view(k);
    const auto vv = as_view(v);
    const auto vcq = as_view(cu_seqlens_q);
    const auto vck = as_view(cu_seqlens_k);
    const auto dims = detail::attn::attention_dims(vq, vk, vv);
    detail::attn::check_cu_seqlens_shapes(vcq, vck);
    const float scale = detail::attn::attention_scale(opt, dims.dh);
    if constexpr (is_cpu_v<D>) {
      const auto offsets_q = detail::attn::read_cu_seqlens(vcq, dims.sq, "cu_seqlens_q", "q");
      const auto offsets_k = detail::attn::read_cu_seqlens(vck, dims.skv, "cu_seqlens_k", "k");
      Tensor<D, T> out(Shape{dims.sq, dims.hq, dims.dv});
      detail::attn::attention_cpu(out.raw(), vq, vk, vv, offsets_q, offsets_k, scale, opt.mask);
      return out;
    } else {
      // The offsets are validated exactly as on the CPU, from a host copy (a
      // few bytes, and a wait for q's stream): bad offsets are a ValueError
      // here, never an out-of-bounds read in a kernel.
      const auto host_cq = to<Host>(vcq);
      const auto host_ck = to<Host>(vck);
      const auto offsets_q = detail::attn::read_cu_seqlens(host_cq.view(), dims.sq, "cu_seqlens_q", "q");
      const auto offsets_k = detail::attn::read_cu_seqlens(host_ck.view(), dims.skv, "cu_seqlens_k", "k");
      Tensor<D, T> out(Shape{dims.sq, dims.hq, dims.dv});
      const auto cu_q = detail::packed(vcq);
      const auto cu_k = detail::packed(vck);
      detail::attn::attention_cuda(out, vq, vk, vv, cu_q.get(), cu_k.get(), offsets_q, offsets_k, dims, scale,
                                   opt.mask);
      return out;
    }
  }
}

}  // namespace tessera::ops
