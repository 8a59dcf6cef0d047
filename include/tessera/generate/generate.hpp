// tessera/generate/generate.hpp — the generation loop: one prefill over the
// prompt, then one cached decode step per new token, each chosen by a
// Sampler and streamed to a callback as soon as it is chosen.
//
//   auto model = models::Qwen2<Single<Host>, float>::load(dir);
//   auto options = generate::SamplingOptions::from(io::GenerationConfig::load(dir));
//   auto stream = tokenizer.stream_decoder(/*skip_special_tokens=*/true);
//   auto ids = generate::generate(model, prompt_ids, options,
//                                 [&](std::int64_t id) { std::cout << stream.step(id) << std::flush; });
//
// This is transformers' GenerationMixin._sample for one sequence: each step
// takes the last position's logits as float32, runs the logits processors
// and picks the token; a sequence ends after it emits an eos id or after
// max_new_tokens tokens. This header also brings in sampling.hpp and
// chat.hpp, so it is the one to include for generation.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <span>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../core/transfer.hpp"
#include "../ops/elementwise.hpp"
#include "chat.hpp"
#include "sampling.hpp"

namespace tessera::generate {

// Prefill + cached decode loop over any model with new_cache/forward like
// Qwen2; calls on_token(id) for each generated id as soon as it is chosen;
// stops at max_new_tokens or after an eos id (which is included in the
// result and passed to on_token). Returns the generated ids.
template <class Model>
std::vector<std::int64_t> generate(const Model& model, std::span<const std::int64_t> prompt,
                                   const SamplingOptions& options,
                                   const std::function<void(std::int64_t)>& on_token = {});

// The same loop over a multimodal prompt (e.g. models::qwen2_5_vl::Prompt:
// ids plus images): model.forward(prompt, cache) runs the prefill, and
// prompt_ids(prompt), found by argument-dependent lookup, gives the ids the
// repetition penalty sees.
template <class Model, class Prompt>
  requires requires(const Prompt& p) {
    { prompt_ids(p) } -> std::convertible_to<std::span<const std::int64_t>>;
  }
std::vector<std::int64_t> generate(const Model& model, const Prompt& prompt, const SamplingOptions& options,
                                   const std::function<void(std::int64_t)>& on_token = {});

// ---- implementation ------------------------------------------------------------

namespace detail {

// The last row of [n, vocab] logits as float32 on the host: only that row is
// cast (on the logits' device, so a bf16 CUDA model moves vocab floats, not
// n * vocab values) and copied. to<Host> has finished when it returns, also
// from a CUDA device. Float logits skip the cast (ops::cast would copy).
template <AnyTensor Logits>
Tensor<Host, float> last_row_on_host(const Logits& logits) {
  const std::int64_t rows = logits.shape()[0];
  const auto last = logits.slice(0, rows - 1, rows);
  if constexpr (std::same_as<element_of<Logits>, float>) {
    return to<Host>(last);
  } else {
    return to<Host>(ops::cast<float>(last));
  }
}

inline bool is_eos(std::int64_t id, const SamplingOptions& options) {
  return std::ranges::find(options.eos_token_ids, id) != options.eos_token_ids.end();
}

}  // namespace detail

namespace detail {

// The loop itself: `prefill` is what model.forward takes for the prompt (its
// ids, or a multimodal prompt holding them), `prompt` its ids.
template <class Model, class Prefill>
std::vector<std::int64_t> generate_loop(const Model& model, const Prefill& prefill, std::span<const std::int64_t> prompt,
                                        const SamplingOptions& options,
                                        const std::function<void(std::int64_t)>& on_token) {
  if (prompt.empty()) throw ValueError("generate: the prompt has no tokens; the model needs at least one");
  Sampler sampler(options);  // validates the options before the prefill
  const auto max_new = static_cast<std::size_t>(options.max_new_tokens);
  std::vector<std::int64_t> generated;
  if (max_new == 0) return generated;
  generated.reserve(max_new);

  // The repetition penalty sees prompt + generated, as transformers'
  // input_ids does. The last token chosen is never fed back, so the cache
  // needs room for prompt + max_new - 1 positions.
  std::vector<std::int64_t> context(prompt.begin(), prompt.end());
  context.reserve(prompt.size() + max_new);
  auto cache = model.new_cache(static_cast<std::int64_t>(prompt.size() + max_new - 1));

  auto logits = model.forward(prefill, cache);
  for (;;) {
    const Tensor<Host, float> row = last_row_on_host(logits);
    const std::int64_t id = sampler.next(row.span(), context);
    generated.push_back(id);
    context.push_back(id);
    if (on_token) on_token(id);
    if (generated.size() == max_new || is_eos(id, options)) break;
    logits = model.forward(std::span<const std::int64_t>(&context.back(), 1), cache);
  }
  return generated;
}

}  // namespace detail

template <class Model>
std::vector<std::int64_t> generate(const Model& model, std::span<const std::int64_t> prompt,
                                   const SamplingOptions& options, const std::function<void(std::int64_t)>& on_token) {
  return detail::generate_loop(model, prompt, prompt, options, on_token);
}

template <class Model, class Prompt>
  requires requires(const Prompt& p) {
    { prompt_ids(p) } -> std::convertible_to<std::span<const std::int64_t>>;
  }
std::vector<std::int64_t> generate(const Model& model, const Prompt& prompt, const SamplingOptions& options,
                                   const std::function<void(std::int64_t)>& on_token) {
  return detail::generate_loop(model, prompt, std::span<const std::int64_t>(prompt_ids(prompt)), options, on_token);
}

}  // namespace tessera::generate
