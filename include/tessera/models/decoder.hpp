// tessera/models/decoder.hpp — the one decoder-only language model every
// family runs: Qwen2 (Qwen2.5-VL, InternVL2-1B, MiniCPM-V 2.6), Llama
// (InternVL2-40B/76B), Phi-3 (InternVL2-4B) and InternLM2 (InternVL2-2B/8B/
// 26B), as transformers' Qwen2ForCausalLM / LlamaForCausalLM /
// Phi3ForCausalLM and InternLM2's remote InternLM2ForCausalLM compute it:
//
//   x = embed_tokens[ids]
//   for each layer:
//     h = RMSNorm(x);  q, k, v = h Wq^T (+ bq), h Wk^T (+ bk), h Wv^T (+ bv)
//     q, k = RoPE(q), RoPE(k)      (rotate-half; the config's variant:
//                                   default, M-RoPE, linear, dynamic NTK,
//                                   LongRoPE, llama3)
//     append k, v to the layer's KV cache
//     a = softmax(q k^T / sqrt(head_dim), causal) v    (grouped-query heads)
//     x = x + a Wo^T
//     x = x + down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))
//   logits = RMSNorm(x) lm_head^T    (embed_tokens when the embeddings are tied)
//
// The families differ only in data (decoder_family.hpp): weight names,
// q/k/v biases (Qwen2), fused q/k/v (Phi-3 [q; k; v], InternLM2 grouped
// per KV head) and gate/up (Phi-3), split when loaded so the forward pass
// below never sees a fused layout. The family is a run-time value, so a
// program that runs all four instantiates one model per placement.
//
// RoPE state. LongRoPE chooses short or long factors per forward call from
// the largest position + 1 (transformers: max(position_ids) + 1). When a
// decode first passes original_max_position_embeddings, the sequence runs
// again from its first token with the long factors, as Phi3ForCausalLM's
// generate does (it drops its cache there); InternVL2-4B's generate keeps
// the short-rotated keys instead (set_longrope_crossing(keep_cache)).
// Dynamic NTK recomputes the base whenever the sequence grows past the
// longest length seen so far, once past max_position_embeddings, and never
// goes back (InternLM2's rotary cache is "sticky"); the longest length is
// kept in the Cache, so a new cache starts afresh (a freshly loaded
// reference model), and Cache::clear() does not reset it.
//
// Each residual add and the norm after it run as one fused
// ops::add_rms_norm, bit-identical to the unfused pair. Layers hold weights
// and no placement logic; the policy says where they live:
//
//   Decoder<Single<Cuda<0>>, bf16>                        one device
//   Decoder<Pipeline<Cpu<0>, Cpu<1>>, float>               layers split in two
//                                                          stages (the Layout
//                                                          says which layers)
//   Decoder<TensorParallel<Cuda<0>, Cuda<1>>, bf16>        heads and MLP columns
//                                                          split, two all-reduces
//                                                          per layer
//   Decoder<Pipeline<TensorParallel<Cuda<0>, Cuda<1>>, Cuda<2>>, bf16>
//
// The code below is written once over stages: a stage is a group of devices
// (one for a device stage), each holding its rank's shard of the stage's
// layers (rank r of n: q/k/v/gate/up rows and o/down columns r/n; the whole
// layer when n = 1). Between blocks the hidden state is a Replicated value;
// the row-parallel o_proj and down_proj give Partial sums that only
// all_reduce turns back into Replicated. Crossing a stage is move_to_stage,
// an explicit to<>. Embeddings, the final norm and lm_head sit on the stages
// the Layout pins them to (stage 0 by default); logits come back on
// output_device<P>, the device the ids enter through.
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
#include "../nn/rope_variants.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/embedding.hpp"
#include "../ops/norm.hpp"
#include "../ops/rope.hpp"
#include "../ops/shape.hpp"
#include "../placement/layout.hpp"
#include "../placement/stage.hpp"
#include "decoder_block.hpp"
#include "decoder_family.hpp"
#include "kv_cache.hpp"

namespace tessera::models {

namespace decoder_detail {

// Everything rank R of a stage holds: its shard of the stage's layers and
// the pinned parts placed there (embeddings, final norm, lm_head).
template <Device D, FloatType T>
struct RankParts {
  std::vector<Block<D, T>> blocks;
  std::optional<Tensor<D, T>> embed_tokens, norm, lm_head;
};

template <class Devices, FloatType T>
struct rank_parts_of;
template <Device... Ds, FloatType T>
struct rank_parts_of<std::tuple<Ds...>, T> {
  using parts = std::tuple<std::optional<RankParts<Ds, T>>...>;
  using caches = std::tuple<std::optional<KVCache<Ds, T>>...>;
  using tables = std::tuple<std::optional<ops::RopeTables<Ds>>...>;
};
template <class Stages, FloatType T>
struct stage_parts_of;
template <Stage... Ss, FloatType T>
struct stage_parts_of<std::tuple<Ss...>, T> {
  using parts = std::tuple<typename rank_parts_of<devices_of_stage<Ss>, T>::parts...>;
  using caches = std::tuple<typename rank_parts_of<devices_of_stage<Ss>, T>::caches...>;
};

}  // namespace decoder_detail

template <DevicePlacement Placement, FloatType T = bf16>
class Decoder {
  template <std::size_t K>
  using S = stage_at<Placement, K>;
  template <std::size_t K, std::size_t R>
  using Dev = placement::stage_device<S<K>, R>;
  template <std::size_t K>
  using Value = placement::StageValue<S<K>, T>;
  static constexpr std::size_t N = stage_count<Placement>;

 public:
  using policy = Placement;
  using device_type = output_device<Placement>;  // where forward() returns logits

  // One sequence's keys and values: per stage and rank, a KVCache on that
  // rank's device for the stage's layers and the rank's KV heads.
  class Cache {
   public:
    using model_cache_tag = void;
    std::int64_t length() const noexcept { return length_; }
    std::int64_t capacity() const noexcept { return capacity_; }
    void clear() noexcept {
      length_ = 0;
      for_each_kv([](auto& kv) { kv.clear(); });
      history_.clear();
      rope_long_ = edited_ = false;
    }
    void reserve_tokens(std::int64_t count) const {
      if (length_ + count > capacity_) {
        throw ValueError(detail::concat("KVCache of ", policy_name<Placement>(), ": ", count, " new tokens after ",
                                        length_, " cached ones exceed its capacity of ", capacity_,
                                        " tokens; create the cache with a larger capacity"));
      }
    }

   private:
    friend class Decoder;
    template <class F>
    void for_each_kv(F&& f) {
      std::apply([&](auto&... stage) {
        (std::apply([&](auto&... rank) { ((rank ? f(*rank) : void()), ...); }, stage), ...);
      }, kv_);
    }
    template <std::size_t K, std::size_t R>
    auto& kv() {
      return *std::get<R>(std::get<K>(kv_));
    }
    typename decoder_detail::stage_parts_of<stages_of<Placement>, T>::caches kv_;
    std::int64_t length_ = 0, capacity_ = 0;
    // The longest the sequence has been (dynamic NTK's rotary state; kept
    // across clear(), as the reference never resets it).
    std::int64_t rope_length_ = 0;
    // LongRoPE: the ids seen so far, whether the cached keys carry the long
    // factors, and whether embeddings were edited (a multimodal prompt,
    // which cannot be replayed from ids).
    std::vector<std::int64_t> history_;
    bool rope_long_ = false, edited_ = false;
  };

  // Loads a Hugging Face checkpoint directory (config.json and
  // model.safetensors or its sharded index) of any supported family, which
  // config.json names (architectures / model_type): the language model
  // under "model.", its output projection as the family names it.
  static Decoder load(const std::filesystem::path& dir, std::optional<placement::Layout> layout = std::nullopt,
                      placement::Comms<Placement> comms = {}) {
    return load(dir, "model.", std::nullopt, std::move(layout), std::move(comms));
  }

  // The same with the language model's weights under `prefix` ("model."
  // for a *ForCausalLM; multimodal checkpoints use "model.language_model."
  // or "language_model.model.") and the output projection `lm_head_name`
  // (default: the family's, "lm_head.weight" or InternLM2's "output.weight").
  // `layout` says which stage holds each layer and pinned part (default:
  // everything on stage 0 for one stage, layers split evenly otherwise);
  // `comms` are the stages' communicators (default: in-process).
  static Decoder load(const std::filesystem::path& dir, const std::string& prefix,
                      std::optional<std::string> lm_head_name = std::nullopt,
                      std::optional<placement::Layout> layout = std::nullopt, placement::Comms<Placement> comms = {}) {
    io::DecoderConfig config = io::DecoderConfig::load(dir);
    const DecoderWeights weights = weights_for(detect_family(config, (dir / "config.json").string()));
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return Decoder(std::move(config), weights, checkpoint, prefix, lm_head_name.value_or(weights.lm_head),
                   std::move(layout), std::move(comms));
  }

  // From a parsed config whose family config.json names (a multimodal
  // model's language-model config).
  Decoder(io::DecoderConfig config, const io::Checkpoint& checkpoint, const std::string& prefix,
          const std::string& lm_head_name, std::optional<placement::Layout> layout = std::nullopt,
          placement::Comms<Placement> comms = {})
      : Decoder(config, weights_for(detect_family(config, (checkpoint.directory() / "config.json").string())),
                checkpoint, prefix, lm_head_name, std::move(layout), std::move(comms)) {}

  Decoder(io::DecoderConfig config, DecoderWeights weights, const io::Checkpoint& checkpoint, const std::string& prefix,
          const std::string& lm_head_name, std::optional<placement::Layout> layout = std::nullopt,
          placement::Comms<Placement> comms = {})
      : config_(std::move(config)),
        weights_(std::move(weights)),
        layout_(layout ? std::move(*layout) : default_layout(config_.num_hidden_layers)),
        comms_(std::move(comms)) {
    const std::string dir = checkpoint.directory().string();
    check_supported(dir);
    layout_.check(config_.num_hidden_layers, N, detail::concat(name(), " (", dir, ")"));
    check_divisible(dir);
    const bool has_lm_head = checkpoint.contains(lm_head_name);
    if (!has_lm_head && !config_.tie_word_embeddings) {
      throw FormatError(detail::concat(name(), ": checkpoint ", dir, " has no '", lm_head_name,
                                       "' and config.json does not tie the word embeddings "
                                       "(tie_word_embeddings is false)"));
    }
    check_shapes(checkpoint, prefix, has_lm_head ? std::optional(lm_head_name) : std::nullopt);
    // A bar on stderr (a terminal only) when loading takes over a second.
    io::ProgressBar progress(detail::concat("loading ", checkpoint.directory().filename().string()),
                             checkpoint.total_bytes());
    for_each_stage([&]<std::size_t K>() {
      placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
        load_rank<K, R>(checkpoint, prefix, has_lm_head ? std::optional(lm_head_name) : std::nullopt, progress);
      });
    });
    progress.finish();
  }

  // What a decode does when it first takes a sequence past LongRoPE's
  // original_max_position_embeddings (nothing to decide for other RoPE
  // variants). transformers has two answers and tessera follows either:
  //   rerun       run the sequence again from its first token, all keys
  //               with the long factors (Phi3ForCausalLM.generate, which
  //               drops its cache there); the default
  //   keep_cache  keep decoding on the cache, whose earlier keys stay
  //               rotated with the short factors (InternVL2-4B's generate)
  enum class LongRopeCrossing : std::uint8_t { rerun, keep_cache };
  void set_longrope_crossing(LongRopeCrossing c) noexcept { longrope_crossing_ = c; }
  LongRopeCrossing longrope_crossing() const noexcept { return longrope_crossing_; }

  DecoderFamily family() const noexcept { return weights_.family; }
  // "Qwen2", "Llama", "Phi-3", "InternLM2": how messages name the model.
  std::string_view name() const noexcept { return family_name(weights_.family); }
  const DecoderWeights& weights() const noexcept { return weights_; }
  const io::DecoderConfig& config() const noexcept { return config_; }
  // Which stage holds each layer and pinned part.
  const placement::Layout& placement() const noexcept { return layout_; }
  template <std::size_t K>
  const placement::StageGroup<S<K>>& group() const noexcept {
    return std::get<K>(comms_);
  }
  // Every stage's communicator (a pinned module loads on a stage with them).
  const placement::Comms<Placement>& comms() const noexcept { return comms_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const {
    if (capacity <= 0) throw ValueError(detail::concat("KVCache: capacity must be positive, got ", capacity));
    // Phi-3 attends within its sliding window; the full causal attention
    // here equals it only while every sequence fits in the window.
    if (weights_.family == DecoderFamily::phi3 && config_.sliding_window_written && config_.sliding_window &&
        capacity > *config_.sliding_window) {
      throw ValueError(detail::concat(name(), ": a cache of ", capacity, " tokens exceeds config.json's sliding_window ",
                                      *config_.sliding_window, ", and sliding-window attention is not supported; "
                                      "use a capacity of at most ", *config_.sliding_window));
    }
    Cache cache;
    cache.capacity_ = capacity;
    for_each_stage([&]<std::size_t K>() {
      const auto layers = static_cast<std::int64_t>(layers_on(K));
      const std::int64_t kv_heads = config_.num_key_value_heads / static_cast<std::int64_t>(placement::stage_size<S<K>>);
      placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
        std::get<R>(std::get<K>(cache.kv_)).emplace(layers, capacity, kv_heads, config_.head_dim());
      });
    });
    return cache;
  }

  // Runs the new tokens `ids` of one sequence after those already in
  // `cache` (prefill when it is empty, decode with one id) and returns the
  // logits of every new position, [ids.size(), vocab_size].
  Tensor<device_type, T> forward(std::span<const std::int64_t> ids, Cache& cache) const {
    Cache* const cache_ptr = &cache;
    std::vector<Tensor<device_type, T>> out = forward_batch({&ids, 1}, {&cache_ptr, 1});
    return std::move(out[0]);
  }

  // A cache of another model (another placement or element type) is one
  // sentence, not a list of candidates.
  template <class Input, ModelCache Other>
    requires(!std::is_same_v<Other, Cache>)
  Tensor<device_type, T> forward(const Input&, Other&) const {
    require_own_cache<Cache, Other>();
    return {};
  }

  // Several sequences at once: their tokens are concatenated so every linear
  // layer runs one GEMM over all of them, and attention runs per sequence
  // against its own cache. Returns each sequence's logits [len_i, vocab].
  std::vector<Tensor<device_type, T>> forward_batch(std::span<const std::span<const std::int64_t>> sequences,
                                                    std::span<Cache* const> caches) const {
    if (sequences.size() != caches.size() || sequences.empty()) {
      throw ValueError(detail::concat(name(), "::forward_batch: ", sequences.size(), " sequences but ", caches.size(),
                                      " caches; pass one cache per sequence"));
    }
    // LongRoPE past its original maximum: sequences whose cached keys carry
    // the short factors run again from their first token (as transformers'
    // Phi-3 generate drops its cache there), and only their new rows are
    // returned.
    std::vector<std::vector<std::int64_t>> replays(sequences.size());
    std::vector<std::span<const std::int64_t>> effective(sequences.begin(), sequences.end());
    std::vector<std::int64_t> replayed(sequences.size(), 0);
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      if (!needs_replay(sequences, caches, s)) continue;
      Cache& c = *caches[s];
      replays[s] = c.history_;
      replays[s].insert(replays[s].end(), sequences[s].begin(), sequences[s].end());
      replayed[s] = static_cast<std::int64_t>(c.history_.size());
      c.length_ = 0;
      c.for_each_kv([](auto& kv) { kv.clear(); });
      c.history_.clear();
      effective[s] = replays[s];
    }
    Segments seg = segments_of(effective, caches);
    seg.replayed = std::move(replayed);
    return run(seg, seg.positions, caches, [](auto&) {});
  }

  // One sequence whose input embeddings are the token embeddings of `ids`
  // with `edit` applied on each device of the embedding stage (a
  // multimodal model writes its image features over the placeholder rows
  // there: edit(Tensor<Dr, T>&) for every such device Dr), and whose rotary
  // positions are `positions`: [S] for plain RoPE, [3, S] for M-RoPE (the
  // config's mrope_section). With an edit that does nothing and positions
  // cache.length() + i, this is forward().
  // The same at the positions that follow the cache, cache.length() + i
  // (plain RoPE).
  template <class Edit>
  Tensor<device_type, T> forward_edited(std::span<const std::int64_t> ids, Cache& cache, Edit&& edit) const {
    const auto n = static_cast<std::int64_t>(ids.size());
    Tensor<Host, std::int64_t> positions(Shape{n});
    for (std::int64_t i = 0; i < n; ++i) positions.span()[static_cast<std::size_t>(i)] = cache.length() + i;
    return forward_edited(ids, positions, cache, std::forward<Edit>(edit));
  }

  template <class Edit>
  Tensor<device_type, T> forward_edited(std::span<const std::int64_t> ids, const Tensor<Host, std::int64_t>& positions,
                                        Cache& cache, Edit&& edit) const {
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n == 0) throw ValueError(detail::concat(name(), "::forward_edited: no token ids"));
    const bool mrope = positions.rank() == 2;
    if (positions.dim(positions.rank() - 1) != n || (mrope && positions.dim(0) != 3) || positions.rank() > 2) {
      throw ShapeError(detail::concat(name(), "::forward_edited: positions ", positions.shape().to_string(), " must be [",
                                      n, "] or [3, ", n, "] for ", n, " ids"));
    }
    cache.reserve_tokens(n);
    if (config_.rope.is_longrope() && longrope_crossing_ == LongRopeCrossing::rerun && cache.length() > 0 &&
        !cache.rope_long_ &&
        cache.length() + n > *config_.rope.original_max_position_embeddings) {
      throw ValueError(detail::concat(name(), "::forward_edited: these ", n, " tokens take the sequence past "
                                      "original_max_position_embeddings ", *config_.rope.original_max_position_embeddings,
                                      ", where LongRoPE switches to its long factors and the sequence must be run "
                                      "again from its first token, which edited embeddings cannot be; run the "
                                      "prompt in one call"));
    }
    cache.edited_ = true;
    Segments seg;
    seg.starts = {0};
    seg.lengths = {n};
    seg.ids = Tensor<Host, std::int64_t>(Shape{n});
    std::copy(ids.begin(), ids.end(), seg.ids.span().begin());
    Cache* const cache_ptr = &cache;
    std::vector<Tensor<device_type, T>> out = run(seg, positions, {&cache_ptr, 1}, edit);
    return std::move(out[0]);
  }

  // A batch as transformers takes it: ids and attention_mask [B, L] on the
  // host, each row left-padded (mask 0 on the padding, then 1s). The padding
  // is dropped rather than masked, so each row's real tokens are computed
  // exactly as forward_batch computes them; returns each row's logits for
  // its real tokens. Padding on the right or inside a row is a ValueError.
  std::vector<Tensor<device_type, T>> forward_padded(const Tensor<Host, std::int64_t>& ids,
                                                     const Tensor<Host, std::int64_t>& attention_mask,
                                                     std::span<Cache* const> caches) const {
    if (ids.rank() != 2 || attention_mask.shape() != ids.shape()) {
      throw ShapeError(detail::concat(name(), "::forward_padded: ids ", ids.shape().to_string(), " and attention_mask ",
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
          throw ValueError(detail::concat(name(), "::forward_padded: attention_mask row ", r, " has ", mask[c],
                                          " at position ", c, " after its first 1; only left padding (0s, then 1s) "
                                          "is supported"));
        }
      }
      sequences.emplace_back(ids.raw() + r * width + first, static_cast<std::size_t>(width - first));
    }
    return forward_batch(sequences, caches);
  }

 private:
  // Where each sequence's tokens sit in the concatenated batch, and the ids
  // and rotary positions (cache length + i), built on the host.
  struct Segments {
    std::vector<std::int64_t> starts, lengths;
    Tensor<Host, std::int64_t> ids, positions;
    std::vector<std::int64_t> replayed;  // leading rows of each sequence run again, not returned
  };

  // Whether sequence s must run again from its first token: LongRoPE, a
  // call that passes original_max_position_embeddings, and keys cached
  // with the short factors.
  bool needs_replay(std::span<const std::span<const std::int64_t>> sequences, std::span<Cache* const> caches,
                    std::size_t s) const {
    if (!config_.rope.is_longrope() || longrope_crossing_ == LongRopeCrossing::keep_cache ||
        caches[s]->length() == 0 || caches[s]->rope_long_) {
      return false;
    }
    std::int64_t length = 0;
    for (std::size_t i = 0; i < sequences.size(); ++i) {
      length = std::max(length, caches[i]->length() + static_cast<std::int64_t>(sequences[i].size()));
    }
    if (length <= *config_.rope.original_max_position_embeddings) return false;
    if (caches[s]->edited_) {
      throw ValueError(detail::concat(name(), ": a sequence that began with edited embeddings (a multimodal "
                                      "prompt) passes original_max_position_embeddings ",
                                      *config_.rope.original_max_position_embeddings,
                                      " here, where LongRoPE must run it again from its first token; give a prompt "
                                      "that starts past that length or keep the sequence below it"));
    }
    return true;
  }

  static placement::Layout default_layout(std::int64_t layers) {
    return N == 1 ? placement::Layout::single(layers) : placement::Layout::even(layers, N);
  }

  template <class F>
  static void for_each_stage(F&& f) {
    [&]<std::size_t... K>(std::index_sequence<K...>) { (f.template operator()<K>(), ...); }(
        std::make_index_sequence<N>{});
  }

  std::size_t layers_on(std::size_t stage) const {
    return static_cast<std::size_t>(std::count(layout_.layer_stage.begin(), layout_.layer_stage.end(), stage));
  }

  template <std::size_t K, std::size_t R>
  const decoder_detail::RankParts<Dev<K, R>, T>& parts() const {
    return *std::get<R>(std::get<K>(parts_));
  }

  template <std::size_t K, std::size_t R>
  void load_rank(const io::Checkpoint& checkpoint, const std::string& prefix,
                 const std::optional<std::string>& lm_head_name, io::ProgressBar& progress) {
    using D = Dev<K, R>;
    auto& mine = std::get<R>(std::get<K>(parts_)).emplace();
    const auto whole = [&](const std::string& name) {
      Tensor<D, T> t = checkpoint.load<D, T>(name);
      progress.advance(checkpoint.info(name).nbytes);
      return t;
    };
    const auto slice = [&](const std::string& name, int axis, std::int64_t begin, std::int64_t end) {
      Tensor<D, T> t = checkpoint.load_slice<D, T>(name, axis, begin, end);
      progress.advance(static_cast<std::uint64_t>(t.bytes()));
      return t;
    };
    if (layout_.embed_stage == K) mine.embed_tokens = whole(prefix + weights_.embed);
    for (std::size_t l = 0; l < layout_.layer_stage.size(); ++l) {
      if (layout_.layer_stage[l] != K) continue;
      mine.blocks.push_back(decoder_detail::Block<D, T>::load(detail::concat(prefix, weights_.layers, l, "."), weights_,
                                                              config_, R, placement::stage_size<S<K>>, whole, slice));
    }
    if (layout_.head_stage == K) {
      mine.norm = whole(prefix + weights_.norm);
      // Tied weights: lm_head is the embedding table itself when both sit on
      // this stage; pinned apart, the stage gets its own copy of the table.
      if (lm_head_name) mine.lm_head = whole(*lm_head_name);
      else if (!mine.embed_tokens) mine.lm_head = whole(prefix + weights_.embed);
    }
  }

  Segments segments_of(std::span<const std::span<const std::int64_t>> sequences, std::span<Cache* const> caches) const {
    Segments seg;
    std::int64_t total = 0;
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const auto n = static_cast<std::int64_t>(sequences[s].size());
      if (n == 0) throw ValueError(detail::concat(name(), "::forward: sequence ", s, " has no tokens"));
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

  // One forward's rotary positions ([S] plain RoPE, [3, S] M-RoPE) and,
  // for a scaled variant, the frequencies this call uses.
  struct Rotary {
    const Tensor<Host, std::int64_t>& positions;
    std::optional<nn::RopeFrequencies> scaled;
  };

  static std::int64_t max_position(const Tensor<Host, std::int64_t>& positions) {
    std::int64_t m = -1;
    for (const std::int64_t p : positions.span()) m = std::max(m, p);
    return m;
  }

  // The frequencies of a scaled RoPE variant for this call: LongRoPE from
  // the largest position + 1; dynamic NTK from the longest each sequence
  // has been (remembered in its cache, never reset); plain RoPE needs none.
  Rotary rotary_for(const Tensor<Host, std::int64_t>& positions, std::span<Cache* const> caches) const {
    if (nn::is_plain_rope(config_.rope)) return Rotary{positions, std::nullopt};
    if (positions.rank() != 1) {
      throw ShapeError(detail::concat(name(), ": [3, S] multimodal positions need M-RoPE, but config.json's rope "
                                      "type is \"", config_.rope.type, "\""));
    }
    std::int64_t length = 0;
    for (const std::int64_t p : positions.span()) length = std::max(length, p + 1);
    if (config_.rope.type == "dynamic") {
      for (Cache* c : caches) length = std::max(length, c->rope_length_);
      for (Cache* c : caches) c->rope_length_ = length;
    }
    return Rotary{positions, nn::rope_frequencies(config_.rope, config_.head_dim(), config_.max_position_embeddings,
                                                  length)};
  }

  // Rotary tables on device D: built there from the positions for plain
  // RoPE and M-RoPE, on the host from the call's frequencies otherwise.
  template <Device D>
  ops::RopeTables<D> tables_on(const Rotary& rotary) const {
    const Tensor<Host, std::int64_t>& positions = rotary.positions;
    if (rotary.scaled) {
      ops::RopeTables<Host> host = ops::rope_tables_host(positions.span(), rotary.scaled->inv_freq, rotary.scaled->scale);
      if constexpr (std::is_same_v<D, Host>) {
        return host;
      } else {
        return ops::RopeTables<D>{to<D>(host.cos), to<D>(host.sin)};
      }
    }
    if (positions.rank() == 2) {
      return ops::mrope_tables(to<D>(positions), config_.head_dim(), config_.rope.theta, config_.rope.mrope_section);
    }
    return ops::rope_tables(to<D>(positions), config_.head_dim(), config_.rope.theta);
  }

  // The whole forward: embeddings on the embedding stage, each stage's
  // layers in turn, the head on its stage; logits back on device_type.
  template <class Edit>
  std::vector<Tensor<device_type, T>> run(const Segments& seg, const Tensor<Host, std::int64_t>& positions,
                                          std::span<Cache* const> caches, Edit&& edit) const {
    const Rotary rotary = rotary_for(positions, caches);
    Tensor<device_type, T> logits = with_stage_index<N>(layout_.embed_stage, [&]<std::size_t E>() {
      Value<E> embedded;
      placement::for_local_ranks<S<E>>(group<E>(), [&]<std::size_t R>() {
        Tensor<Dev<E, R>, T> x = ops::embedding(*parts<E, R>().embed_tokens, to<Dev<E, R>>(seg.ids));
        edit(x);
        embedded.template set<R>(std::move(x));
      });
      return run_from<E, 0>(std::move(embedded), seg, rotary, caches);
    });
    const bool long_rope = rotary.scaled && config_.rope.is_longrope() &&
                           max_position(positions) + 1 > *config_.rope.original_max_position_embeddings;
    for (std::size_t s = 0; s < caches.size(); ++s) {
      Cache& c = *caches[s];
      c.for_each_kv([&](auto& kv) { kv.advance(seg.lengths[s]); });
      c.length_ += seg.lengths[s];
      if (config_.rope.is_longrope()) {
        const std::int64_t* ids = seg.ids.raw() + seg.starts[s];
        c.history_.insert(c.history_.end(), ids, ids + seg.lengths[s]);
        c.rope_long_ = long_rope;
      }
    }
    const auto replayed = [&](std::size_t s) { return seg.replayed.empty() ? std::int64_t{0} : seg.replayed[s]; };
    std::vector<Tensor<device_type, T>> out;
    if (caches.size() == 1 && replayed(0) == 0) {  // one sequence: its logits are all of them
      out.push_back(std::move(logits));
      return out;
    }
    for (std::size_t s = 0; s < caches.size(); ++s) {
      out.push_back(ops::slice(logits, 0, seg.starts[s] + replayed(s), seg.starts[s] + seg.lengths[s]));
    }
    return out;
  }

  // The residual stream, now on stage C, through the layers of stages K..N-1
  // (a stage without layers is skipped: nothing crosses to it), then the
  // head.
  template <std::size_t C, std::size_t K>
  Tensor<device_type, T> run_from(Value<C> residual, const Segments& seg, const Rotary& rotary,
                                  std::span<Cache* const> caches) const {
    if constexpr (K == N) {
      return head_from<C>(residual);
    } else {
      if (layers_on(K) == 0) return run_from<C, K + 1>(std::move(residual), seg, rotary, caches);
      Value<K> here = [&] {
        if constexpr (C == K) {
          return std::move(residual);
        } else {
          return placement::move_to_stage<S<K>, S<C>, T>(residual, group<C>(), group<K>());
        }
      }();
      return run_from<K, K + 1>(run_stage<K>(std::move(here), seg, rotary, caches), seg, rotary, caches);
    }
  }

  // The final norm and lm_head on the head's stage, from the residual
  // stream on stage C.
  template <std::size_t C>
  Tensor<device_type, T> head_from(const Value<C>& residual) const {
    return with_stage_index<N>(layout_.head_stage, [&]<std::size_t H>() {
      std::optional<Value<H>> moved;
      if constexpr (C != H) moved.emplace(placement::move_to_stage<S<H>, S<C>, T>(residual, group<C>(), group<H>()));
      const Value<H>& at_head = [&]() -> const Value<H>& {
        if constexpr (C == H) {
          return residual;
        } else {
          return *moved;
        }
      }();
      std::optional<Tensor<device_type, T>> out;
      // The first held rank computes the logits: in one process that is the
      // group's first device; under MPI every process has its own.
      const std::size_t first = placement::first_local_rank<S<H>>(group<H>());
      placement::for_local_ranks<S<H>>(group<H>(), [&]<std::size_t R>() {
        if (R != first) return;
        const auto& mine = parts<H, R>();
        const Tensor<Dev<H, R>, T> h = ops::rms_norm(at_head.template part<R>(), *mine.norm, config_.rms_norm_eps);
        const Tensor<Dev<H, R>, T>& head = mine.lm_head ? *mine.lm_head : *mine.embed_tokens;
        out.emplace(to<device_type>(ops::linear(h, head)));
      });
      return std::move(*out);
    });
  }

  // The decoder layers of stage K. Within the stage each residual add is
  // fused with the next norm; the stage's last add is left unfused (its norm
  // is on the next stage), which gives the same bits.
  template <std::size_t K>
  Value<K> run_stage(Value<K> residual, const Segments& seg, const Rotary& rotary,
                     std::span<Cache* const> caches) const {
    const double eps = config_.rms_norm_eps;
    typename decoder_detail::rank_parts_of<devices_of_stage<S<K>>, T>::tables tables;
    Value<K> h;
    placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
      std::get<R>(tables).emplace(tables_on<Dev<K, R>>(rotary));
      h.template set<R>(ops::rms_norm(residual.template part<R>(), parts<K, R>().blocks[0].input_norm, eps));
    });
    const std::size_t count = layers_on(K);
    for (std::size_t l = 0; l < count; ++l) {
      const Value<K> attn = attention<K>(l, h, tables, seg, caches);
      placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
        h.template part<R>() = ops::add_rms_norm(attn.template part<R>(), residual.template part<R>(),
                                                 parts<K, R>().blocks[l].post_norm, eps);
      });
      const Value<K> mlp = feed_forward<K>(l, h);
      placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
        auto& res = residual.template part<R>();
        if (l + 1 < count) {
          h.template part<R>() = ops::add_rms_norm(mlp.template part<R>(), res, parts<K, R>().blocks[l + 1].input_norm, eps);
        } else {
          res = ops::add(mlp.template part<R>(), res);
        }
      });
    }
    return residual;
  }

  // Self-attention of the stage's layer l over the batch: each rank
  // projects its heads, rotates, attends against its cache and applies its
  // columns of o_proj; the partial outputs are all-reduced.
  template <std::size_t K, class Tables>
  Value<K> attention(std::size_t l, const Value<K>& h, const Tables& tables, const Segments& seg,
                     std::span<Cache* const> caches) const {
    const auto ranks = static_cast<std::int64_t>(placement::stage_size<S<K>>);
    const std::int64_t hd = config_.head_dim();
    const std::int64_t heads = config_.num_attention_heads / ranks, kv_heads = config_.num_key_value_heads / ranks;
    Distributed<typename partial_of<K>::type, T> partial;
    placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
      using D = Dev<K, R>;
      const auto& layer = parts<K, R>().blocks[l];
      const auto& x = h.template part<R>();
      const auto& rope = *std::get<R>(tables);
      const std::int64_t tokens = x.dim(0);
      const Tensor<D, T> q_proj = layer.q.forward(x);
      const Tensor<D, T> k_proj = layer.k.forward(x);
      const Tensor<D, T> v_proj = layer.v.forward(x);
      const Tensor<D, T> q = ops::apply_rope(q_proj.view().reshape({tokens, heads, hd}), rope.cos, rope.sin);
      const Tensor<D, T> k = ops::apply_rope(k_proj.view().reshape({tokens, kv_heads, hd}), rope.cos, rope.sin);
      const auto v = v_proj.view().reshape({tokens, kv_heads, hd});

      ops::AttentionOptions options;
      options.mask = ops::MaskKind::Causal;  // bottom-right: new token i sees the cache and new tokens <= i
      std::vector<Tensor<D, T>> outputs;
      for (std::size_t s = 0; s < caches.size(); ++s) {
        const std::int64_t begin = seg.starts[s], end = begin + seg.lengths[s];
        const auto [keys, values] =
            caches[s]->template kv<K, R>().append(l, k.view().slice(0, begin, end), v.slice(0, begin, end));
        outputs.push_back(ops::attention(q.view().slice(0, begin, end), keys, values, options));
      }
      Tensor<D, T> joined = outputs.size() == 1 ? std::move(outputs[0]) : ops::concat(outputs, 0);
      joined.reshape_inplace(Shape{tokens, heads * hd});
      partial.template set<R>(layer.o.forward(joined));
    });
    return group<K>().all_reduce(std::move(partial));
  }

  // The stage's layer l MLP: each rank's gate/up rows and down columns,
  // then the all-reduce of the partial sums.
  template <std::size_t K>
  Value<K> feed_forward(std::size_t l, const Value<K>& h) const {
    Distributed<typename partial_of<K>::type, T> partial;
    placement::for_local_ranks<S<K>>(group<K>(), [&]<std::size_t R>() {
      const auto& layer = parts<K, R>().blocks[l];
      const auto& x = h.template part<R>();
      partial.template set<R>(layer.down.forward(ops::swiglu(layer.gate.forward(x), layer.up.forward(x))));
    });
    return group<K>().all_reduce(std::move(partial));
  }

  template <std::size_t K>
  struct partial_of {
    template <class Tuple>
    struct of;
    template <class... Ds>
    struct of<std::tuple<Ds...>> {
      using type = Partial<Ds...>;
    };
    using type = typename of<devices_of_stage<S<K>>>::type;
  };

  // Every tensor the decoder loads has the shape config.json implies;
  // checked from the checkpoint's headers before anything is read, so a
  // wrong or corrupt tensor is named instead of failing inside a GEMM.
  void check_shapes(const io::Checkpoint& checkpoint, const std::string& prefix,
                    const std::optional<std::string>& lm_head_name) const {
    const std::int64_t H = config_.hidden_size, hd = config_.head_dim(), I = config_.intermediate_size;
    const std::int64_t q_rows = config_.num_attention_heads * hd, kv_rows = config_.num_key_value_heads * hd;
    const auto expect = [&](const std::string& tensor, const Shape& shape) {
      if (!checkpoint.contains(tensor)) {
        throw FormatError(detail::concat(name(), ": checkpoint ", checkpoint.directory().string(), " has no tensor '",
                                         tensor, "' (", family_name(weights_.family), " layout, expected shape ",
                                         shape.to_string(), ")"));
      }
      const auto info = checkpoint.info(tensor);
      if (info.shape != shape) {
        throw FormatError(detail::concat(name(), ": tensor '", tensor, "' in ", checkpoint.directory().string(),
                                         " has shape ", info.shape.to_string(), " but config.json implies ",
                                         shape.to_string()));
      }
    };
    expect(prefix + weights_.embed, Shape{config_.vocab_size, H});
    expect(prefix + weights_.norm, Shape{H});
    if (lm_head_name) expect(*lm_head_name, Shape{config_.vocab_size, H});
    const DecoderWeights& w = weights_;
    for (std::int64_t l = 0; l < config_.num_hidden_layers; ++l) {
      const std::string p = detail::concat(prefix, w.layers, l, ".");
      if (w.qkv_layout == QkvLayout::separate) {
        expect(p + w.q + ".weight", Shape{q_rows, H});
        expect(p + w.k + ".weight", Shape{kv_rows, H});
        expect(p + w.v + ".weight", Shape{kv_rows, H});
        if (w.qkv_bias) {
          expect(p + w.q + ".bias", Shape{q_rows});
          expect(p + w.k + ".bias", Shape{kv_rows});
          expect(p + w.v + ".bias", Shape{kv_rows});
        }
      } else {
        expect(p + w.qkv + ".weight", Shape{q_rows + 2 * kv_rows, H});
      }
      expect(p + w.o + ".weight", Shape{H, q_rows});
      if (w.gate_up_fused) {
        expect(p + w.gate_up + ".weight", Shape{2 * I, H});
      } else {
        expect(p + w.gate + ".weight", Shape{I, H});
        expect(p + w.up + ".weight", Shape{I, H});
      }
      expect(p + w.down + ".weight", Shape{H, I});
      expect(p + w.attn_norm, Shape{H});
      expect(p + w.mlp_norm, Shape{H});
    }
  }

  // A tensor-parallel stage splits heads, KV heads and the MLP's columns
  // evenly; anything else is a placement error, raised before loading.
  void check_divisible(const std::string& dir) const {
    for_each_stage([&]<std::size_t K>() {
      const auto ranks = static_cast<std::int64_t>(placement::stage_size<S<K>>);
      if (ranks == 1) return;
      for (const auto& [what, count] : {std::pair{"num_attention_heads", config_.num_attention_heads},
                                        std::pair{"num_key_value_heads", config_.num_key_value_heads},
                                        std::pair{"intermediate_size", config_.intermediate_size}}) {
        if (count % ranks != 0) {
          throw PlanError(detail::concat(name(), " (", dir, "): stage ", K, " is ", stage_name<S<K>>(), " over ", ranks,
                                         " devices, which does not divide ", what, " = ", count,
                                         "; use a group size that divides it, or a pipeline instead"));
        }
      }
    });
  }

  // What this implementation does not cover fails at load, not silently
  // (check_decoder_config, the one place that judges a config).
  void check_supported(const std::string& dir) const {
    check_decoder_config(config_, weights_, dir + "/config.json");
  }

  io::DecoderConfig config_;
  DecoderWeights weights_;
  LongRopeCrossing longrope_crossing_ = LongRopeCrossing::rerun;
  placement::Layout layout_;
  placement::Comms<Placement> comms_;
  typename decoder_detail::stage_parts_of<stages_of<Placement>, T>::parts parts_;
};

}  // namespace tessera::models
