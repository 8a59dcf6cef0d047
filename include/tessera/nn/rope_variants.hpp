// tessera/nn/rope_variants.hpp — the frequencies of the scaled RoPE variants
// the decoder families use, as transformers 5.23's modeling_rope_utils (and
// the InternLM2 / Phi-3 remote code, which agree with it) compute them:
//
//   default   inv_freq[i] = 1 / theta^(2i/d)                       (ops::rope_inv_freq)
//   linear    inv_freq / factor
//   dynamic   (NTK, InternLM2 and Llama) for a sequence of L > max_position_embeddings
//             tokens: the default with base theta * ((factor L / max_pos) - (factor - 1))^(d / (d - 2))
//   longrope  (Phi-3's "su") 1 / (ext[i] * theta^(2i/d)), ext = long_factor when the
//             sequence is longer than original_max_position_embeddings, else short_factor;
//             cos and sin scaled by attention_factor, default
//             sqrt(1 + ln(s) / ln(original_max)) with s = max_pos / original_max (1 when s <= 1)
//   llama3    wavelengths 2 pi / inv_freq above original_max / low_freq_factor divided by
//             factor, below original_max / high_freq_factor kept, in between
//             interpolated by smooth = (original_max / wavelen - low) / (high - low)
//
// What "the sequence length" is differs per variant and is the caller's
// (the decoder's) business: longrope chooses per forward call from the
// largest position + 1, dynamic NTK from the longest the sequence has been.
// Which variants a model accepts is judged once, by the decoder's
// check_supported, before any weight is loaded; these functions assume it.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "../io/config.hpp"
#include "../ops/rope.hpp"

namespace tessera::nn {

struct RopeFrequencies {
  std::vector<float> inv_freq;  // head_dim / 2 entries
  float scale = 1.0f;           // cos and sin are multiplied by it
};

namespace rope_detail {

inline std::vector<float> llama3(std::vector<float> inv_freq, const io::RopeConfig& r) {
  const auto factor = static_cast<float>(*r.factor);
  const auto low = static_cast<float>(*r.low_freq_factor), high = static_cast<float>(*r.high_freq_factor);
  const auto old_context = static_cast<float>(*r.original_max_position_embeddings);
  const float low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
  for (float& f : inv_freq) {
    const float wavelen = static_cast<float>(2.0 * std::numbers::pi) / f;
    const float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = (old_context / wavelen - low) / (high - low);
      f = (1.0f - smooth) * scaled / factor + smooth * scaled;
    } else {
      f = scaled;
    }
  }
  return inv_freq;
}

inline RopeFrequencies longrope(const io::RopeConfig& r, std::int64_t dim, std::int64_t max_position_embeddings,
                                std::int64_t seq_len) {
  const std::int64_t original = *r.original_max_position_embeddings;
  const std::vector<double>& ext = seq_len > original ? r.long_factor : r.short_factor;
  RopeFrequencies out;
  for (std::int64_t i = 0; i < dim / 2; ++i) {
    out.inv_freq.push_back(1.0f / (static_cast<float>(ext[static_cast<std::size_t>(i)]) * ops::rope_power(i, dim, r.theta)));
  }
  if (r.attention_factor) {
    out.scale = static_cast<float>(*r.attention_factor);
  } else {
    const double s = static_cast<double>(max_position_embeddings) / static_cast<double>(original);
    out.scale = s <= 1.0 ? 1.0f : static_cast<float>(std::sqrt(1.0 + std::log(s) / std::log(static_cast<double>(original))));
  }
  return out;
}

}  // namespace rope_detail

// The frequencies for a forward over a sequence of `seq_len` tokens (see
// the header for what the length means per variant).
inline RopeFrequencies rope_frequencies(const io::RopeConfig& r, std::int64_t dim, std::int64_t max_position_embeddings,
                                        std::int64_t seq_len) {
  if (r.is_longrope()) return rope_detail::longrope(r, dim, max_position_embeddings, seq_len);
  RopeFrequencies out;
  if (r.type == "dynamic" && seq_len > max_position_embeddings) {
    const double factor = *r.factor;
    const double grown = factor * static_cast<double>(seq_len) / static_cast<double>(max_position_embeddings) - (factor - 1.0);
    const double base = r.theta * std::pow(grown, static_cast<double>(dim) / static_cast<double>(dim - 2));
    out.inv_freq = ops::rope_inv_freq(dim, base);
    return out;
  }
  out.inv_freq = ops::rope_inv_freq(dim, r.theta);
  if (r.type == "linear") {
    for (float& f : out.inv_freq) f /= static_cast<float>(*r.factor);
  } else if (r.type == "llama3") {
    out.inv_freq = rope_detail::llama3(std::move(out.inv_freq), r);
  }
  return out;
}

// True when the tables depend on nothing but the positions and theta, so
// ops::rope_tables / mrope_tables build them on the device.
inline bool is_plain_rope(const io::RopeConfig& r) { return r.type == "default" || r.type == "mrope"; }

}  // namespace tessera::nn
