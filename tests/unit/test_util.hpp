// Shared helpers for the typed op tests: device/dtype configurations, random
// inputs on the host, a double-precision view of any host tensor, and
// tolerance-aware comparison that reports the worst element.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <tessera/tessera.hpp>

#include "fixtures_dir.hpp"

namespace tessera::testing {

// One typed-test configuration: a device tag and an element type.
template <class D, class T>
struct Config {
  using device = D;
  using dtype = T;
};

// Every op test runs on two CPU slots (so nothing silently assumes Cpu<0>),
// on Cuda<0>, and on Cuda<1> (a second GPU, or a second logical device on
// GPU 0 under TESSERA_CUDA_DEVICES=0,0, so nothing assumes the current or
// first device); CUDA cases are skipped when no backend or device exists.
using FloatConfigs = ::testing::Types<Config<Cpu<0>, float>, Config<Cpu<0>, bf16>, Config<Cpu<0>, f16>,
                                      Config<Cpu<1>, float>, Config<Cuda<0>, float>, Config<Cuda<0>, bf16>,
                                      Config<Cuda<0>, f16>, Config<Cuda<1>, bf16>>;

// Names typed-test instances "Cpu<0>/bf16" instead of "0", "1", ...
struct ConfigName {
  template <class C>
  static std::string GetName(int) {
    return device_name<typename C::device>() + "_" + std::string(dtype_name<typename C::dtype>());
  }
};

// Whether tests can run on device D in this build and on this machine.
template <Device D>
bool device_available() {
  if constexpr (is_cpu_v<D>) {
    return true;
  } else {
#if defined(TESSERA_WITH_CUDA)
    return cuda::device_count() > D::index;
#else
    return false;
#endif
  }
}

#define TESSERA_SKIP_UNLESS_AVAILABLE(D)                                                   \
  do {                                                                                     \
    if (!::tessera::testing::device_available<D>())                                        \
      GTEST_SKIP() << ::tessera::device_name<D>() << " is not available in this build/machine"; \
  } while (0)

inline std::mt19937& rng() {
  static std::mt19937 gen(20261122);
  return gen;
}

// Uniform random values in [lo, hi), rounded to T, on the host.
template <class T>
Tensor<Host, T> random_tensor(Shape shape, double lo = -1.0, double hi = 1.0) {
  Tensor<Host, T> t(shape);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (auto& v : t.span()) v = convert<T>(static_cast<float>(dist(rng())));
  return t;
}

// Uniform random integers in [lo, hi] on the host.
template <class T>
Tensor<Host, T> random_ints(Shape shape, std::int64_t lo, std::int64_t hi) {
  Tensor<Host, T> t(shape);
  std::uniform_int_distribution<std::int64_t> dist(lo, hi);
  for (auto& v : t.span()) v = static_cast<T>(dist(rng()));
  return t;
}

// Row-major double copy of any CPU tensor or view.
template <AnyTensor X>
std::vector<double> to_doubles(const X& x) {
  const auto packed = to<Host>(x);
  std::vector<double> out(static_cast<std::size_t>(packed.numel()));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(convert<float>(packed.raw()[i]));
  return out;
}

// Tolerances: float compute error for float, plus one output rounding step
// (relative 2^-8 for bf16, 2^-11 for f16) for the half types.
template <class T>
struct Tolerance {
  double atol, rtol;
};
template <class T>
Tolerance<T> default_tolerance() {
  if constexpr (std::is_same_v<T, float>) return {1e-5, 1e-5};
  else if constexpr (std::is_same_v<T, bf16>) return {1e-2, 1.6e-2};
  else return {1e-3, 2e-3};
}

// Expects |actual - expected| <= atol + rtol * |expected| everywhere and
// reports the worst element's index and values.
inline ::testing::AssertionResult all_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                            double atol, double rtol) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != expected size " << expected.size();
  }
  std::size_t worst = 0, bad = 0;
  double worst_excess = -1.0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(actual[i] - expected[i]);
    const double allowed = atol + rtol * std::abs(expected[i]);
    const bool ok = err <= allowed || (std::isnan(actual[i]) && std::isnan(expected[i])) ||
                    (std::isinf(expected[i]) && actual[i] == expected[i]);
    if (!ok) {
      ++bad;
      if (err - allowed > worst_excess) {
        worst_excess = err - allowed;
        worst = i;
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << actual.size() << " elements differ; worst at "
                                       << worst << ": got " << actual[worst] << ", expected " << expected[worst]
                                       << " (atol " << atol << ", rtol " << rtol << ")";
}

template <class T>
::testing::AssertionResult all_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                     Tolerance<T> tol = default_tolerance<T>()) {
  return all_close(actual, expected, tol.atol, tol.rtol);
}

// Same shape and identical bytes: for results that promise exact equality
// (copies, transfers, fused kernels equal to their unfused sequence).
template <class T>
bool same_bits(const Tensor<Host, T>& a, const Tensor<Host, T>& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.bytes()) == 0;
}

// Expects `fn` to throw E (ShapeError, ValueError, ...) whose what() contains
// every one of `parts`.
template <class E, class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception mentioning " << (parts.size() ? *parts.begin() : std::string());
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& part : parts) EXPECT_NE(what.find(part), std::string::npos) << "'" << part << "' not in: " << what;
  }
}

// Expects `fn` to throw a ShapeError whose message contains every fragment.
template <class Fn>
void expect_shape_error(Fn&& fn, std::initializer_list<std::string> fragments) {
  expect_error<ShapeError>(std::forward<Fn>(fn), fragments);
}

// x @ weight^T (+ bias) in double: x is [rows, in] row-major, weight [out, in].
inline std::vector<double> reference_linear(const std::vector<double>& x, const std::vector<double>& w,
                                            const std::vector<double>* bias, std::int64_t in, std::int64_t out) {
  const std::int64_t rows = static_cast<std::int64_t>(x.size()) / in;
  std::vector<double> y(static_cast<std::size_t>(rows * out));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t o = 0; o < out; ++o) {
      double sum = bias ? (*bias)[static_cast<std::size_t>(o)] : 0.0;
      for (std::int64_t i = 0; i < in; ++i) {
        sum += x[static_cast<std::size_t>(r * in + i)] * w[static_cast<std::size_t>(o * in + i)];
      }
      y[static_cast<std::size_t>(r * out + o)] = sum;
    }
  }
  return y;
}

// Tolerance of a GEMM (matmul, linear, patch embedding) with K-term dot
// products, for inputs uniform in [-1, 1]. Error model of one output element
// y = sum_k a_k b_k:
// - the inputs are exact (the reference reads the rounded host inputs);
// - the sum is accumulated in float. The probabilistic bound for a float dot
//   product (Higham & Mary 2019) is about sqrt(K) * 2^-24 * sum_k |a_k b_k|,
//   and sum_k |a_k b_k| is about K/4 for inputs uniform in [-1, 1]. That is
//   atol: measured with OpenBLAS, the worst element of 96x96 outputs uses
//   ~25% of it at K <= 65 and ~15% at K = 300 (any summation order fits);
// - half types round the float result once to T: at most 2^-8 (bf16) or
//   2^-11 (f16) of the value. That is rtol (+10%); it is relative because the
//   rounding is, so small outputs are not excused by the output's scale.
template <class T>
Tolerance<T> gemm_tolerance(std::int64_t k) {
  const double terms = static_cast<double>(std::max<std::int64_t>(k, 1));
  const double accumulate = std::sqrt(terms) * std::ldexp(1.0, -24) * (terms / 4.0 + 1.0);
  if constexpr (std::is_same_v<T, float>) return {accumulate, 1e-6};
  else if constexpr (std::is_same_v<T, bf16>) return {accumulate, 1.1 * std::ldexp(1.0, -8)};
  else return {accumulate, 1.1 * std::ldexp(1.0, -11)};
}

}  // namespace tessera::testing
