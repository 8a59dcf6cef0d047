// Shared helpers for the CPU benchmarks.
#pragma once

#include <random>

#include <tessera/tessera.hpp>

namespace tessera::bench {

template <class T>
Tensor<Host, T> random_tensor(Shape shape, float lo = -1.0f, float hi = 1.0f) {
  static std::mt19937 gen(1234);
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor<Host, T> t(shape);
  for (auto& v : t.span()) v = convert<T>(dist(gen));
  return t;
}

}  // namespace tessera::bench
