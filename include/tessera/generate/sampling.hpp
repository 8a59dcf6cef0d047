// tessera/generate/sampling.hpp — choosing the next token from a row of
// logits the way transformers' generate() does:
//
//   SamplingOptions   the knobs of transformers' GenerationConfig that
//                     decoding uses (greedy or sampling, the processors,
//                     the stopping criteria)
//   process_logits    transformers' logits processors, in generate()'s
//                     order: RepetitionPenaltyLogitsProcessor, then (when
//                     sampling) TemperatureLogitsWarper, TopKLogitsWarper,
//                     TopPLogitsWarper
//   Sampler           argmax when greedy, otherwise a seeded draw from the
//                     softmax of the processed logits
//   mask_finished     transformers' `next_tokens * unfinished_sequences +
//                     pad_token_id * (1 - unfinished_sequences)` on typed
//                     tensors of one device
//
// The processors and the sampler run on the host in float32: the model
// copies one row of logits per step to the host, and the processors
// reproduce transformers' float32 arithmetic element for element (see
// process_logits). mask_finished runs where its tensors are.
//
// Seeded sampling is reproducible within tessera (same seed, same model,
// same prompt: same tokens) but does not reproduce torch's RNG, so sampled
// text differs from transformers' for the same seed; greedy decoding is
// identical.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <functional>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/transfer.hpp"
#include "../io/config.hpp"
#include "../ops/elementwise.hpp"

namespace tessera::generate {

struct SamplingOptions {
  bool do_sample = false;
  float temperature = 1.0f;
  std::int64_t top_k = 0;           // 0 = off
  float top_p = 1.0f;               // 1 = off
  float repetition_penalty = 1.0f;  // 1 = off
  std::uint64_t seed = 0;
  std::int64_t max_new_tokens = 32;
  std::vector<std::int64_t> eos_token_ids;  // generation stops after emitting one of these

  // transformers' GenerationConfig semantics: do_sample false ignores
  // temperature/top_k/top_p (transformers builds no warpers for greedy
  // search); the repetition penalty applies either way. The knobs are copied
  // as they are, so setting do_sample later turns them on. max_new_tokens is
  // the config's when it has one; otherwise this struct's default (32), not
  // transformers' max_length (20), which counts the prompt too and so cannot
  // be turned into a number of new tokens without it.
  static SamplingOptions from(const io::GenerationConfig& config);
};

// transformers' logits processors, in generate()'s order, applied in place to
// one row of float logits given all tokens so far (prompt + generated):
// repetition penalty, then (if sampling) temperature, top-k, top-p (filtered
// entries become -inf).
void process_logits(std::span<float> logits, std::span<const std::int64_t> context, const SamplingOptions& options);

// Picks the next token from a row of raw logits (it processes a copy):
// argmax (lowest index on ties) when !do_sample, otherwise a seeded draw from
// softmax(processed logits) with a std::mt19937_64 seeded by options.seed.
// Seeded runs are reproducible in tessera (the draw uses only the engine's
// specified output, no std:: distribution whose algorithm varies between
// standard libraries), not equal to torch's RNG.
class Sampler {
 public:
  explicit Sampler(SamplingOptions options);
  std::int64_t next(std::span<const float> logits, std::span<const std::int64_t> context);
  const SamplingOptions& options() const noexcept { return options_; }

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;  // the processed row, reused between steps
};

// transformers' batched-generation step
//   next_tokens = next_tokens * unfinished_sequences + pad_token_id * (1 - unfinished_sequences)
// over next_tokens and unfinished (1: still generating, 0: finished), both
// [batch] int64 on one device: a finished sequence gets pad_id, the others
// keep their token. Both tensors must live on the same device: the sampled
// tokens come from the logits (lm_head's device) and the mask from the
// inputs, and InternVL's `next_tokens * unfinished_sequences` on cuda:4 and
// cuda:0 (placement-semantics §2.6 #6, #7) is this call with the devices
// mixed, a compile error here. Keep both on the model's output device,
// where the logits land (output_device<P>), or move one with to<>.
//
// On a CPU slot the formula is evaluated exactly in int64 (wrapping, so no
// input is undefined behaviour). On CUDA it is ops::mul / ops::sub /
// ops::add, which compute integers through float: exact for token ids and
// pad_id below 2^24 = 16,777,216 (every supported vocabulary is far
// smaller); a pad_id outside that is refused.
template <Device D, Device D2>
Tensor<D, std::int64_t> mask_finished(const Tensor<D, std::int64_t>& next_tokens,
                                      const Tensor<D2, std::int64_t>& unfinished, std::int64_t pad_id);

// ---- implementation ------------------------------------------------------------

namespace detail {
using tessera::detail::concat;

inline constexpr float kFiltered = -std::numeric_limits<float>::infinity();  // transformers' filter_value

// The same checks (and bounds) as transformers' GenerationConfig.validate and
// the processors' constructors, so a bad option fails before the first step.
inline void check_options(const SamplingOptions& o) {
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty)) {
    throw ValueError(concat("SamplingOptions: repetition_penalty must be a positive number (1: off), but it is ",
                            o.repetition_penalty));
  }
  if (o.max_new_tokens < 0) {
    throw ValueError(concat("SamplingOptions: max_new_tokens must be >= 0, but it is ", o.max_new_tokens));
  }
  if (!o.do_sample) return;  // the warpers below are not built for greedy decoding
  if (!(o.temperature > 0.0f) || !std::isfinite(o.temperature)) {
    throw ValueError(concat("SamplingOptions: temperature must be a positive number when sampling, but it is ",
                            o.temperature, " (for greedy decoding set do_sample to false)"));
  }
  if (o.top_k < 0) throw ValueError(concat("SamplingOptions: top_k must be >= 0 (0: off), but it is ", o.top_k));
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    throw ValueError(concat("SamplingOptions: top_p must be in (0, 1] (1: off), but it is ", o.top_p));
  }
}

inline std::size_t index_of(std::int64_t id) { return static_cast<std::size_t>(id); }

// RepetitionPenaltyLogitsProcessor: every distinct id of the context once
// (torch's scatter writes a repeated id's one value again), a negative score
// times the penalty, any other divided by it, in float32 as torch computes
// with a float32 tensor and a Python float. Ids at or past the vocabulary are
// skipped, as transformers clamps them to a dropped padding column.
inline void apply_repetition_penalty(std::span<float> logits, std::span<const std::int64_t> context, float penalty) {
  std::vector<bool> seen(logits.size(), false);
  for (const std::int64_t id : context) {
    if (id < 0) throw ValueError(concat("process_logits: the context holds a negative token id ", id));
    if (index_of(id) >= logits.size() || seen[index_of(id)]) continue;
    seen[index_of(id)] = true;
    float& score = logits[index_of(id)];
    score = score < 0.0f ? score * penalty : score / penalty;
  }
}

// TemperatureLogitsWarper: scores / temperature (a division, not a multiply
// by the reciprocal, which would round differently).
inline void apply_temperature(std::span<float> logits, float temperature) {
  for (float& x : logits) x /= temperature;
}

// TopKLogitsWarper: removes scores strictly below the k-th largest, so ties
// with the k-th value all stay (more than k entries can survive).
// k = min(max(top_k, min_tokens_to_keep = 1), vocab).
inline void apply_top_k(std::span<float> logits, std::int64_t top_k) {
  const std::size_t k = std::min(static_cast<std::size_t>(std::max<std::int64_t>(top_k, 1)), logits.size());
  std::vector<float> sorted(logits.begin(), logits.end());
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k - 1), sorted.end(),
                   std::greater<float>());
  const float kth = sorted[k - 1];
  for (float& x : logits) {
    if (x < kth) x = kFiltered;
  }
}

// The float32 softmax torch's CPU kernel computes over a row: exp(x - max),
// summed, then multiplied by the reciprocal of the sum.
inline std::vector<float> softmax_f32(std::span<const float> row) {
  const float max = *std::max_element(row.begin(), row.end());
  std::vector<float> p(row.size());
  float sum = 0.0f;
  for (std::size_t i = 0; i < row.size(); ++i) {
    p[i] = std::exp(row[i] - max);
    sum += p[i];
  }
  const float inv = 1.0f / sum;
  for (float& x : p) x *= inv;
  return p;
}

// The double a config file's decimal names when only its float is known:
// the shortest decimal that round-trips the float ("0.8" for 0.8f), read as a
// double. transformers computes `1 - top_p` with the Python double (0.8, not
// 0.800000011920929), and that difference survives the rounding to float32.
inline double decimal_value(float x) {
  std::array<char, 64> text{};
  const auto printed = std::to_chars(text.data(), text.data() + text.size(), x);
  double value = static_cast<double>(x);
  std::from_chars(text.data(), printed.ptr, value);
  return value;
}

// TopPLogitsWarper: sorts ascending, takes the cumulative softmax (torch's
// CPU cumsum accumulates float32 in double and stores float32), removes the
// entries whose cumulative probability is <= 1 - top_p (that threshold is a
// Python float compared with a float32 tensor, so it is rounded to float32),
// and always keeps the largest (min_tokens_to_keep = 1).
//
// Which of several tied scores is removed at the boundary depends on the
// order the sort leaves them in. torch.sort(stable=False) on the CPU is
// std::sort over (score, index) pairs compared by score alone, so the same
// call on the same pairs reproduces its order; a stable sort would not, as
// past 16 elements introsort moves tied scores out of index order. (That
// holds with libstdc++, whose std::sort torch's Linux wheels use too; another
// standard library may order ties differently, affecting only ties.)
inline void apply_top_p(std::span<float> logits, float top_p) {
  std::vector<std::pair<float, std::size_t>> sorted(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) sorted[i] = {logits[i], i};
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
    return (!std::isnan(a.first) && std::isnan(b.first)) || a.first < b.first;  // torch's KeyValueCompAsc
  });
  std::vector<float> values(sorted.size());
  for (std::size_t i = 0; i < sorted.size(); ++i) values[i] = sorted[i].first;
  const std::vector<float> probs = softmax_f32(values);
  const auto threshold = static_cast<float>(1.0 - decimal_value(top_p));
  double cumulative = 0.0;
  for (std::size_t i = 0; i + 1 < sorted.size(); ++i) {  // the last (largest) is always kept
    cumulative += static_cast<double>(probs[i]);
    if (static_cast<float>(cumulative) <= threshold) logits[sorted[i].second] = kFiltered;
  }
}

// The first index of the largest score (torch.argmax's tie rule).
inline std::int64_t argmax(std::span<const float> row) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < row.size(); ++i) {
    if (row[i] > row[best]) best = i;
  }
  return static_cast<std::int64_t>(best);
}

// A uniform double in [0, 1) from the top 53 bits of one engine output: the
// same on every standard library (std::generate_canonical and the std::
// distributions are not specified bit for bit).
inline double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Inverse-CDF draw from softmax(row): filtered (-inf) entries have weight 0
// and can never be chosen. Weights are exp(x - max) in double, so the draw
// does not depend on float rounding of the normalisation.
inline std::int64_t draw(std::span<const float> row, std::mt19937_64& rng) {
  const float max = *std::max_element(row.begin(), row.end());
  if (!std::isfinite(max)) {
    throw ValueError("Sampler: every logit is filtered or not finite; there is no token to sample");
  }
  std::vector<double> weight(row.size());
  double total = 0.0;
  for (std::size_t i = 0; i < row.size(); ++i) {
    weight[i] = std::exp(static_cast<double>(row[i]) - static_cast<double>(max));
    total += weight[i];
  }
  const double target = uniform01(rng) * total;
  double cumulative = 0.0;
  std::size_t last_positive = 0;
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (weight[i] <= 0.0) continue;
    cumulative += weight[i];
    last_positive = i;
    if (cumulative > target) return static_cast<std::int64_t>(i);
  }
  return static_cast<std::int64_t>(last_positive);  // rounding left target at the very end
}

}  // namespace detail

inline SamplingOptions SamplingOptions::from(const io::GenerationConfig& config) {
  SamplingOptions o;
  o.do_sample = config.do_sample;
  o.temperature = static_cast<float>(config.temperature);
  o.top_k = config.top_k;
  o.top_p = static_cast<float>(config.top_p);
  o.repetition_penalty = static_cast<float>(config.repetition_penalty);
  if (config.max_new_tokens) o.max_new_tokens = *config.max_new_tokens;
  o.eos_token_ids = config.eos_token_ids;
  return o;
}

// The order and the conditions are those of transformers'
// GenerationMixin._get_logits_processor: a neutral knob builds no processor.
inline void process_logits(std::span<float> logits, std::span<const std::int64_t> context,
                           const SamplingOptions& options) {
  detail::check_options(options);
  if (logits.empty()) throw ValueError("process_logits: the row of logits is empty");
  if (options.repetition_penalty != 1.0f) detail::apply_repetition_penalty(logits, context, options.repetition_penalty);
  if (!options.do_sample) return;
  if (options.temperature != 1.0f) detail::apply_temperature(logits, options.temperature);
  if (options.top_k != 0) detail::apply_top_k(logits, options.top_k);
  if (options.top_p < 1.0f) detail::apply_top_p(logits, options.top_p);
}

inline Sampler::Sampler(SamplingOptions options) : options_(std::move(options)), rng_(options_.seed) {
  detail::check_options(options_);
}

inline std::int64_t Sampler::next(std::span<const float> logits, std::span<const std::int64_t> context) {
  scratch_.assign(logits.begin(), logits.end());
  process_logits(scratch_, context, options_);
  return options_.do_sample ? detail::draw(scratch_, rng_) : detail::argmax(scratch_);
}

template <Device D, Device D2>
Tensor<D, std::int64_t> mask_finished(const Tensor<D, std::int64_t>& next_tokens,
                                      const Tensor<D2, std::int64_t>& unfinished, std::int64_t pad_id) {
  static_assert(same_device<D, D2>,
                "tessera: generate::mask_finished: the sampled next tokens and the unfinished-sequences mask live "
                "on different devices; keep both on the model's output device or move one with "
                "tessera::to<Device>(t)");
  if constexpr (!same_device<D, D2>) {
    return {};  // the gate above has failed
  } else {
    if (!(next_tokens.shape() == unfinished.shape()) || next_tokens.rank() != 1) {
      throw ShapeError(detail::concat("generate::mask_finished: next_tokens ", next_tokens.shape().to_string(),
                                      " and unfinished ", unfinished.shape().to_string(),
                                      " must both be [batch]"));
    }
    const auto vn = next_tokens.view();  // throws on an empty (moved-from) tensor
    const auto vu = unfinished.view();
    if constexpr (is_cpu_v<D>) {
      Tensor<D, std::int64_t> out(next_tokens.shape());
      const auto pad = static_cast<std::uint64_t>(pad_id);
      for (std::int64_t i = 0; i < out.numel(); ++i) {
        const auto n = static_cast<std::uint64_t>(vn.raw()[i]);
        const auto u = static_cast<std::uint64_t>(vu.raw()[i]);
        out.raw()[i] = static_cast<std::int64_t>(n * u + pad * (1u - u));
      }
      return out;
    } else {
      constexpr std::int64_t exact = std::int64_t{1} << 24;
      if (pad_id <= -exact || pad_id >= exact) {
        throw ValueError(detail::concat("generate::mask_finished: pad_id ", pad_id, " on ", device_name<D>(),
                                        " is outside (-2^24, 2^24), where the float arithmetic of ops::mul/add "
                                        "is exact"));
      }
      const Tensor<D, std::int64_t> one = to<D>(Tensor<Host, std::int64_t>::full(Shape{1}, 1));
      const Tensor<D, std::int64_t> pad = to<D>(Tensor<Host, std::int64_t>::full(Shape{1}, pad_id));
      return ops::add(ops::mul(vn, vu), ops::mul(pad, ops::sub(one, vu)));
    }
  }
}

}  // namespace tessera::generate
