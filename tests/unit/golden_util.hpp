// What every family's fixture tests share: the golden tolerance (a value is
// close to the transformers reference when it is within 1e-4 of the
// reference's largest magnitude) and bit-for-bit equality of placements.
#pragma once

#include <tessera/tessera.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace tessera::testing {

inline double max_abs(const Tensor<Host, float>& t) {
  double m = 0.0;
  for (float v : t.span()) m = std::max(m, static_cast<double>(std::abs(v)));
  return m;
}

inline double max_diff(const Tensor<Host, float>& a, const Tensor<Host, float>& e) {
  EXPECT_EQ(a.numel(), e.numel());
  double m = 0.0;
  for (std::size_t i = 0; i < std::min(a.span().size(), e.span().size()); ++i) {
    m = std::max(m, static_cast<double>(std::abs(a.span()[i] - e.span()[i])));
  }
  return m;
}

// Every value within 1e-4 of the reference's largest magnitude.
inline void expect_golden_close(const Tensor<Host, float>& actual, const Tensor<Host, float>& expected,
                                const std::string& what) {
  const double tol = 1e-4 * max_abs(expected);
  EXPECT_LE(max_diff(actual, expected), tol) << what << " (largest reference magnitude " << max_abs(expected) << ")";
}

// Placements that run the same kernels on the same rows must agree bit for bit.
inline bool same_bits(const Tensor<Host, float>& a, const Tensor<Host, float>& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), static_cast<std::size_t>(a.bytes())) == 0;
}

// A multimodal model's logits for `prompt` and then for `steps` decode
// steps fed `continuation` (the reference's greedy tokens), on the host.
template <class Model, class Prompt>
std::vector<Tensor<Host, float>> prompt_and_decode_logits(const Model& m, const Prompt& prompt,
                                                          std::span<const std::int64_t> continuation,
                                                          std::size_t steps) {
  std::vector<Tensor<Host, float>> out;
  auto cache = m.new_cache(static_cast<std::int64_t>(prompt.ids.size() + steps + 1));
  out.push_back(to<Host>(m.forward(prompt, cache)));
  for (std::size_t s = 0; s < steps; ++s) {
    out.push_back(to<Host>(m.forward(continuation.subspan(s, 1), cache)));
  }
  return out;
}

}  // namespace tessera::testing
