// tessera/models/decoder_block.hpp — one decoder layer's weights, loaded
// by the family's weight table (decoder_family.hpp): fused q/k/v (Phi-3's
// [q; k; v], InternLM2's per-KV-group interleave) and gate/up are split
// here, a tensor-parallel rank reading only its rows, so the decoder's
// forward pass sees one layout.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "../io/config.hpp"
#include "../nn/linear.hpp"
#include "../ops/shape.hpp"
#include "decoder_family.hpp"

namespace tessera::models::decoder_detail {

// One decoder layer's weights on device D: the whole layer, or rank `rank`
// of `ranks`'s shard of it (q/k/v/gate/up rows and their biases, o/down
// columns; the norms whole). Fused tensors are split here: a rank reads
// only its rows of them, one slice per contiguous block.
template <Device D, FloatType T>
struct Block {
  nn::Linear<D, T> q, k, v, o, gate, up, down;
  Tensor<D, T> input_norm, post_norm;

  struct Qkv {
    nn::Linear<D, T> q, k, v;
  };

  template <class Part, class LinearOf, class LoadSlice>
  static Qkv load_qkv(const std::string& p, const DecoderWeights& w, const io::DecoderConfig& c, std::int64_t r,
                      std::int64_t n, Part& part, LinearOf& linear, LoadSlice& slice) {
    const std::int64_t hd = c.head_dim(), heads = c.num_attention_heads, kv = c.num_key_value_heads;
    const std::int64_t q_rows = heads * hd, kv_rows = kv * hd;
    switch (w.qkv_layout) {
      case QkvLayout::separate:
        return Qkv{linear(p + w.q, 0, q_rows, w.qkv_bias), linear(p + w.k, 0, kv_rows, w.qkv_bias),
                   linear(p + w.v, 0, kv_rows, w.qkv_bias)};
      case QkvLayout::concat: {  // [q; k; v] rows
        const std::string name = p + w.qkv + ".weight";
        return Qkv{nn::Linear<D, T>(part(name, 0, q_rows, 0, true)),
                   nn::Linear<D, T>(part(name, 0, kv_rows, q_rows, true)),
                   nn::Linear<D, T>(part(name, 0, kv_rows, q_rows + kv_rows, true))};
      }
      case QkvLayout::grouped: break;
    }
    // Per KV group g: its G query heads, key head g, value head g. Rank r
    // holds groups r*kv/n .. (r+1)*kv/n - 1, a contiguous block of rows;
    // each group's three pieces are copied into place one slice at a time.
    const std::string name = p + w.qkv + ".weight";
    const std::int64_t G = heads / kv, group_rows = (G + 2) * hd, groups = kv / n;
    Tensor<D, T> qw(Shape{groups * G * hd, c.hidden_size}), kw(Shape{groups * hd, c.hidden_size}),
        vw(Shape{groups * hd, c.hidden_size});
    for (std::int64_t j = 0; j < groups; ++j) {
      const std::int64_t first = (r * groups + j) * group_rows;
      ops::copy_into(qw.view().slice(0, j * G * hd, (j + 1) * G * hd), slice(name, 0, first, first + G * hd));
      ops::copy_into(kw.view().slice(0, j * hd, (j + 1) * hd), slice(name, 0, first + G * hd, first + (G + 1) * hd));
      ops::copy_into(vw.view().slice(0, j * hd, (j + 1) * hd), slice(name, 0, first + (G + 1) * hd, first + group_rows));
    }
    return Qkv{nn::Linear<D, T>(std::move(qw)), nn::Linear<D, T>(std::move(kw)), nn::Linear<D, T>(std::move(vw))};
  }

  // `whole(name)` loads a tensor, `slice(name, axis, begin, end)` a range
  // of it along axis; `p` is the layer's prefix ("model.layers.3.").
  template <class Load, class LoadSlice>
  static Block load(const std::string& p, const DecoderWeights& w, const io::DecoderConfig& c, std::size_t rank,
                    std::size_t ranks, Load&& whole, LoadSlice&& slice) {
    const auto r = static_cast<std::int64_t>(rank), n = static_cast<std::int64_t>(ranks);
    const std::int64_t q_rows = c.num_attention_heads * c.head_dim(), mid = c.intermediate_size;
    // Rank r's share of `total` rows (axis 0) or columns (axis 1) that
    // start at `offset` in the stored tensor (`fused`: a block of a larger
    // tensor, always read as a slice).
    const auto part = [&](const std::string& name, int axis, std::int64_t total, std::int64_t offset = 0,
                          bool fused = false) {
      if (ranks == 1 && !fused) return whole(name);
      const std::int64_t share = total / n;
      return slice(name, axis, offset + r * share, offset + (r + 1) * share);
    };
    const auto linear = [&](const std::string& module, int axis, std::int64_t total, bool bias) {
      return bias ? nn::Linear<D, T>(part(module + ".weight", axis, total), part(module + ".bias", 0, total))
                  : nn::Linear<D, T>(part(module + ".weight", axis, total));
    };
    Qkv qkv = load_qkv(p, w, c, r, n, part, linear, slice);
    auto gate_up = [&] {
      if (!w.gate_up_fused) {
        return std::pair{nn::Linear<D, T>(part(p + w.gate + ".weight", 0, mid)),
                         nn::Linear<D, T>(part(p + w.up + ".weight", 0, mid))};
      }
      const std::string name = p + w.gate_up + ".weight";  // [gate; up] rows
      return std::pair{nn::Linear<D, T>(part(name, 0, mid, 0, true)), nn::Linear<D, T>(part(name, 0, mid, mid, true))};
    }();
    return Block{std::move(qkv.q),
                 std::move(qkv.k),
                 std::move(qkv.v),
                 nn::Linear<D, T>(part(p + w.o + ".weight", 1, q_rows)),
                 std::move(gate_up.first),
                 std::move(gate_up.second),
                 nn::Linear<D, T>(part(p + w.down + ".weight", 1, mid)),
                 whole(p + w.attn_norm),
                 whole(p + w.mlp_norm)};
  }
};

}  // namespace tessera::models::decoder_detail
