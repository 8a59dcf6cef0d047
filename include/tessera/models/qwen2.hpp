// tessera/models/qwen2.hpp — the Qwen2 decoder-only language model (the
// language model inside Qwen2.5-VL, InternVL2-1B and MiniCPM-V 2.6), as
// transformers' Qwen2ForCausalLM computes it:
//
//   x = embed_tokens[ids]
//   for each layer:
//     h = RMSNorm(x);  q, k, v = h Wq^T + bq, h Wk^T + bk, h Wv^T + bv
//     q, k = RoPE(q), RoPE(k)      (rotate-half, the config's theta)
//     append k, v to the layer's KV cache
//     a = softmax(q k^T / sqrt(head_dim), causal) v    (grouped-query heads)
//     x = x + a Wo^T
//     x = x + down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))
//   logits = RMSNorm(x) lm_head^T    (embed_tokens when the embeddings are tied)
//
// Each residual add and the norm after it run as one fused
// ops::add_rms_norm, bit-identical to the unfused pair. Layers hold weights
// and no placement logic; the policy (`Single<D>` today) says where they live.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../io/progress.hpp"
#include "../nn/linear.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/embedding.hpp"
#include "../ops/norm.hpp"
#include "../ops/rope.hpp"
#include "../ops/shape.hpp"
#include "../placement/single.hpp"

namespace tessera::models {

// One sequence's keys and values for every layer on device D: per layer a
// [capacity, kv_heads, head_dim] slab of which the first length() rows hold
// the tokens seen so far. Typed by the device of its layers, so a cache
// cannot be handed to a model placed elsewhere.
template <Device D, FloatType T>
class KVCache {
 public:
  KVCache(std::int64_t layers, std::int64_t capacity, std::int64_t kv_heads, std::int64_t head_dim)
      : capacity_(capacity) {
    if (capacity <= 0) throw ValueError(detail::concat("KVCache: capacity must be positive, got ", capacity));
    for (std::int64_t l = 0; l < layers; ++l) {
      keys_.emplace_back(Shape{capacity, kv_heads, head_dim});
      values_.emplace_back(Shape{capacity, kv_heads, head_dim});
    }
  }

  std::int64_t length() const noexcept { return length_; }
  std::int64_t capacity() const noexcept { return capacity_; }
  // Forgets the tokens (the memory stays allocated for the next sequence).
  void clear() noexcept { length_ = 0; }

  // Writes `count` new tokens' keys and values of `layer` after the cached
  // ones, and returns views of all cached keys and values including them.
  template <AnyTensor K, AnyTensor V>
  std::pair<TensorView<D, const T>, TensorView<D, const T>> append(std::size_t layer, const K& k, const V& v) {
    const std::int64_t count = as_view(k).dim(0);
    const std::int64_t end = length_ + count;
    ops::copy_into(keys_[layer].view().slice(0, length_, end), k);
    ops::copy_into(values_[layer].view().slice(0, length_, end), v);
    return {std::as_const(keys_[layer]).view().slice(0, 0, end), std::as_const(values_[layer]).view().slice(0, 0, end)};
  }

  // Called by the model once every layer has appended `count` tokens.
  void advance(std::int64_t count) { length_ += count; }

  // Throws unless `count` more tokens fit.
  void reserve_tokens(std::int64_t count) const {
    if (length_ + count > capacity_) {
      throw ValueError(detail::concat("KVCache on ", device_name<D>(), ": ", count, " new tokens after ", length_,
                                      " cached ones exceed its capacity of ", capacity_,
                                      " tokens; create the cache with a larger capacity"));
    }
  }

 private:
  std::vector<Tensor<D, T>> keys_, values_;
  std::int64_t capacity_ = 0;
  std::int64_t length_ = 0;
};

template <DevicePlacement Placement, FloatType T = bf16>
class Qwen2;

// Qwen2 with every weight, cache and activation on one device D.
template <Device D, FloatType T>
class Qwen2<Single<D>, T> {
 public:
  using device_type = D;
  using Cache = KVCache<D, T>;

  // Loads a Hugging Face checkpoint directory (config.json and
  // model.safetensors or its sharded index). `prefix` is where the language
  // model's weights live: "model." for Qwen2ForCausalLM; multimodal
  // checkpoints use "model.language_model." or "language_model.model.".
  static Qwen2 load(const std::filesystem::path& dir, const std::string& prefix = "model.",
                    const std::string& lm_head_name = "lm_head.weight") {
    io::Qwen2Config config = io::Qwen2Config::load(dir);
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return Qwen2(std::move(config), checkpoint, prefix, lm_head_name);
  }

  Qwen2(io::Qwen2Config config, const io::Checkpoint& checkpoint, const std::string& prefix,
        const std::string& lm_head_name)
      : config_(std::move(config)) {
    check_supported(checkpoint.directory().string());
    // A bar on stderr (a terminal only) when loading takes over a second.
    io::ProgressBar progress(detail::concat("loading ", checkpoint.directory().filename().string()),
                             checkpoint.total_bytes());
    const auto weight = [&](const std::string& name) {
      Tensor<D, T> t = checkpoint.load<D, T>(name);
      progress.advance(checkpoint.info(name).nbytes);
      return t;
    };
    embed_tokens_ = weight(prefix + "embed_tokens.weight");
    for (std::int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      const std::string p = detail::concat(prefix, "layers.", i, ".");
      layers_.push_back(Layer{
          nn::Linear<D, T>(weight(p + "self_attn.q_proj.weight"), weight(p + "self_attn.q_proj.bias")),
          nn::Linear<D, T>(weight(p + "self_attn.k_proj.weight"), weight(p + "self_attn.k_proj.bias")),
          nn::Linear<D, T>(weight(p + "self_attn.v_proj.weight"), weight(p + "self_attn.v_proj.bias")),
          nn::Linear<D, T>(weight(p + "self_attn.o_proj.weight")),
          nn::Linear<D, T>(weight(p + "mlp.gate_proj.weight")),
          nn::Linear<D, T>(weight(p + "mlp.up_proj.weight")),
          nn::Linear<D, T>(weight(p + "mlp.down_proj.weight")),
          weight(p + "input_layernorm.weight"),
          weight(p + "post_attention_layernorm.weight"),
      });
    }
    norm_ = weight(prefix + "norm.weight");
    if (checkpoint.contains(lm_head_name)) {
      lm_head_ = weight(lm_head_name);
    } else if (!config_.tie_word_embeddings) {
      throw FormatError(detail::concat("Qwen2: checkpoint ", checkpoint.directory().string(), " has no '",
                                       lm_head_name, "' and config.json does not tie the word embeddings "
                                       "(tie_word_embeddings is false)"));
    }
    progress.finish();
  }

  const io::Qwen2Config& config() const noexcept { return config_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const {
    return Cache(config_.num_hidden_layers, capacity, config_.num_key_value_heads, config_.head_dim());
  }

  // Runs the new tokens `ids` of one sequence after those already in
  // `cache` (prefill when it is empty, decode with one id) and returns the
  // logits of every new position, [ids.size(), vocab_size].
  Tensor<D, T> forward(std::span<const std::int64_t> ids, Cache& cache) const {
    Cache* const cache_ptr = &cache;
    std::vector<Tensor<D, T>> out = forward_batch({&ids, 1}, {&cache_ptr, 1});
    return std::move(out[0]);
  }

  // Several sequences at once: their tokens are concatenated so every linear
  // layer runs one GEMM over all of them, and attention runs per sequence
  // against its own cache. Returns each sequence's logits [len_i, vocab].
  std::vector<Tensor<D, T>> forward_batch(std::span<const std::span<const std::int64_t>> sequences,
                                          std::span<Cache* const> caches) const {
    if (sequences.size() != caches.size() || sequences.empty()) {
      throw ValueError(detail::concat("Qwen2::forward_batch: ", sequences.size(), " sequences but ", caches.size(),
                                      " caches; pass one cache per sequence"));
    }
    const Segments seg = segments_of(sequences, caches);
    Tensor<D, T> hidden = ops::embedding(embed_tokens_, to<D>(seg.ids));
    const auto tables = ops::rope_tables(to<D>(seg.positions), config_.head_dim(), config_.rope.theta);
    return decoder_stack(std::move(hidden), tables, seg, caches);
  }

  // The token embeddings of `ids` (on D), [ids.size(), hidden_size]: what a
  // multimodal model starts from before writing image features over the
  // placeholder rows.
  template <AnyTensor Ids>
  Tensor<D, T> embed(const Ids& ids) const {
    return ops::embedding(embed_tokens_, ids);
  }

  // Runs one sequence given as input embeddings [S, hidden_size] with its
  // own rotary tables [S, head_dim] (M-RoPE for Qwen2.5-VL; rope_tables of
  // cache.length() + i reproduces forward()), after the tokens in `cache`.
  // Returns the logits of every new position, [S, vocab_size].
  Tensor<D, T> forward_embeddings(Tensor<D, T> embeddings, const ops::RopeTables<D>& tables, Cache& cache) const {
    if (embeddings.rank() != 2 || embeddings.dim(1) != config_.hidden_size || embeddings.dim(0) == 0) {
      throw ShapeError(detail::concat("Qwen2::forward_embeddings: embeddings ", embeddings.shape().to_string(),
                                      " must be [tokens > 0, hidden_size = ", config_.hidden_size, "]"));
    }
    const std::int64_t n = embeddings.dim(0);
    if (tables.cos.shape() != Shape{n, config_.head_dim()} || tables.sin.shape() != tables.cos.shape()) {
      throw ShapeError(detail::concat("Qwen2::forward_embeddings: rotary tables ", tables.cos.shape().to_string(),
                                      " must be [", n, ", head_dim = ", config_.head_dim(), "]"));
    }
    cache.reserve_tokens(n);
    Segments seg;
    seg.starts = {0};
    seg.lengths = {n};
    Cache* const cache_ptr = &cache;
    std::vector<Tensor<D, T>> out = decoder_stack(std::move(embeddings), tables, seg, {&cache_ptr, 1});
    return std::move(out[0]);
  }

  // A batch as transformers takes it: ids and attention_mask [B, L] on the
  // host, each row left-padded (mask 0 on the padding, then 1s). The padding
  // is dropped rather than masked, so each row's real tokens are computed
  // exactly as forward_batch computes them; returns each row's logits for
  // its real tokens. Padding on the right or inside a row is a ValueError.
  std::vector<Tensor<D, T>> forward_padded(const Tensor<Host, std::int64_t>& ids,
                                           const Tensor<Host, std::int64_t>& attention_mask,
                                           std::span<Cache* const> caches) const {
    if (ids.rank() != 2 || attention_mask.shape() != ids.shape()) {
      throw ShapeError(detail::concat("Qwen2::forward_padded: ids ", ids.shape().to_string(), " and attention_mask ",
                                      attention_mask.shape().to_string(), " must both be [batch, length]"));
    }
    const std::int64_t rows = ids.dim(0), width = ids.dim(1);
    std::vector<std::span<const std::int64_t>> sequences;
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t* mask = attention_mask.raw() + r * width;
      std::int64_t first = 0;
      while (first < width && mask[first] == 0) ++first;
      for (std::int64_t c = first; c < width; ++c) {
        if (mask[c] != 1) {
          throw ValueError(detail::concat("Qwen2::forward_padded: attention_mask row ", r, " has ", mask[c],
                                          " at position ", c, " after its first 1; only left padding (0s, then 1s) "
                                          "is supported"));
        }
      }
      sequences.emplace_back(ids.raw() + r * width + first, static_cast<std::size_t>(width - first));
    }
    return forward_batch(sequences, caches);
  }

 private:
  struct Layer {
    nn::Linear<D, T> q, k, v, o, gate, up, down;
    Tensor<D, T> input_norm, post_norm;
  };

  // Where each sequence's tokens sit in the concatenated batch, and the ids
  // and rotary positions (cache length + i), built on the host.
  struct Segments {
    std::vector<std::int64_t> starts, lengths;
    Tensor<Host, std::int64_t> ids, positions;
  };

  Segments segments_of(std::span<const std::span<const std::int64_t>> sequences, std::span<Cache* const> caches) const {
    Segments seg;
    std::int64_t total = 0;
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const auto n = static_cast<std::int64_t>(sequences[s].size());
      if (n == 0) throw ValueError(detail::concat("Qwen2::forward: sequence ", s, " has no tokens"));
      caches[s]->reserve_tokens(n);
      seg.starts.push_back(total);
      seg.lengths.push_back(n);
      total += n;
    }
    seg.ids = Tensor<Host, std::int64_t>(Shape{total});
    seg.positions = Tensor<Host, std::int64_t>(Shape{total});
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      for (std::int64_t i = 0; i < seg.lengths[s]; ++i) {
        seg.ids.span()[static_cast<std::size_t>(seg.starts[s] + i)] = sequences[s][static_cast<std::size_t>(i)];
        seg.positions.span()[static_cast<std::size_t>(seg.starts[s] + i)] = caches[s]->length() + i;
      }
    }
    return seg;
  }

  // Every decoder layer, the final norm and the output projection over the
  // concatenated tokens of `seg`; advances each cache by its tokens.
  std::vector<Tensor<D, T>> decoder_stack(Tensor<D, T> hidden, const ops::RopeTables<D>& tables, const Segments& seg,
                                          std::span<Cache* const> caches) const {
    const double eps = config_.rms_norm_eps;
    Tensor<D, T> residual = std::move(hidden);
    Tensor<D, T> h = ops::rms_norm(residual, layers_[0].input_norm, eps);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      const Tensor<D, T> attn = attention(layer, l, h, tables, seg, caches);
      h = ops::add_rms_norm(attn, residual, layer.post_norm, eps);
      const Tensor<D, T> mlp = layer.down.forward(ops::swiglu(layer.gate.forward(h), layer.up.forward(h)));
      const Tensor<D, T>& next_norm = l + 1 < layers_.size() ? layers_[l + 1].input_norm : norm_;
      h = ops::add_rms_norm(mlp, residual, next_norm, eps);
    }
    for (std::size_t s = 0; s < caches.size(); ++s) caches[s]->advance(seg.lengths[s]);

    Tensor<D, T> logits = ops::linear(h, lm_head_ ? *lm_head_ : embed_tokens_);
    std::vector<Tensor<D, T>> out;
    if (caches.size() == 1) {  // one sequence: its logits are all of them
      out.push_back(std::move(logits));
      return out;
    }
    for (std::size_t s = 0; s < caches.size(); ++s) {
      out.push_back(ops::slice(logits, 0, seg.starts[s], seg.starts[s] + seg.lengths[s]));
    }
    return out;
  }

  // Self-attention of layer l over the batch: projections and RoPE for all
  // tokens at once, then each sequence's queries against its cache.
  Tensor<D, T> attention(const Layer& layer, std::size_t l, const Tensor<D, T>& h, const ops::RopeTables<D>& tables,
                         const Segments& seg, std::span<Cache* const> caches) const {
    const std::int64_t tokens = h.dim(0), hd = config_.head_dim();
    const std::int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads;
    const Tensor<D, T> q_proj = layer.q.forward(h);
    const Tensor<D, T> k_proj = layer.k.forward(h);
    const Tensor<D, T> v_proj = layer.v.forward(h);
    const Tensor<D, T> q = ops::apply_rope(q_proj.view().reshape({tokens, heads, hd}), tables.cos, tables.sin);
    const Tensor<D, T> k = ops::apply_rope(k_proj.view().reshape({tokens, kv_heads, hd}), tables.cos, tables.sin);
    const auto v = v_proj.view().reshape({tokens, kv_heads, hd});

    ops::AttentionOptions options;
    options.mask = ops::MaskKind::Causal;  // bottom-right: new token i sees the cache and new tokens <= i
    std::vector<Tensor<D, T>> outputs;
    for (std::size_t s = 0; s < caches.size(); ++s) {
      const std::int64_t begin = seg.starts[s], end = begin + seg.lengths[s];
      const auto [keys, values] = caches[s]->append(l, k.view().slice(0, begin, end), v.slice(0, begin, end));
      outputs.push_back(ops::attention(q.view().slice(0, begin, end), keys, values, options));
    }
    Tensor<D, T> joined = outputs.size() == 1 ? std::move(outputs[0]) : ops::concat(outputs, 0);
    joined.reshape_inplace(Shape{tokens, heads * hd});
    return layer.o.forward(joined);
  }

  // What this implementation does not cover fails at load, not silently.
  void check_supported(const std::string& dir) const {
    const auto fail = [&](const std::string& what) {
      throw FormatError(detail::concat("Qwen2: ", dir, "/config.json: ", what));
    };
    if (config_.hidden_act != "silu") fail(detail::concat("hidden_act \"", config_.hidden_act, "\" is not supported (Qwen2 uses \"silu\")"));
    if (config_.effective_sliding_window()) {
      fail("sliding-window attention (use_sliding_window: true) is not supported yet");
    }
    // M-RoPE (Qwen2.5-VL's language model) is plain RoPE for text, where the
    // three position components are equal; multimodal positions come in
    // through forward_embeddings' tables.
    if (config_.rope.type != "default" && config_.rope.type != "mrope") {
      fail(detail::concat("rope type \"", config_.rope.type, "\" is not supported by the Qwen2 text model"));
    }
  }

  io::Qwen2Config config_;
  Tensor<D, T> embed_tokens_;
  std::vector<Layer> layers_;
  Tensor<D, T> norm_;
  std::optional<Tensor<D, T>> lm_head_;
};

}  // namespace tessera::models
