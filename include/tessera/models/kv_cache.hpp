// tessera/models/kv_cache.hpp — one sequence's keys and values on one
// device, as the decoder (decoder.hpp) keeps them per stage and rank.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"
#include "../core/error.hpp"
#include "../ops/shape.hpp"

namespace tessera::models {

// A model's cache type names this member (using model_cache_tag = void), so a
// model can tell "a cache of another model" from any other argument and say
// so in one sentence instead of a list of rejected overloads.
template <class C>
concept ModelCache = requires { typename C::model_cache_tag; };

// The sentence for a cache handed to a model of another placement or element
// type: its tensors live on that model's devices, in that model's layout.
template <class Expected, class Given>
constexpr void require_own_cache() {
  static_assert(std::is_same_v<Expected, Given>,
                "tessera: this KV cache was made by a model of another placement or element type (its tensors "
                "live on that model's devices); make the cache with this model's new_cache(capacity)");
}

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

}  // namespace tessera::models
