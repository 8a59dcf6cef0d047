// Typed tests of nn::Linear (nn/linear.hpp): construction checks and forward
// against ops::linear and a double-precision reference.
#include <tessera/nn/linear.hpp>

#include <cmath>
#include <string>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class NnLinear : public ::testing::Test {};
TYPED_TEST_SUITE(NnLinear, FloatConfigs, ConfigName);

TYPED_TEST(NnLinear, ForwardEqualsOpsLinearAndReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const auto& [in, out] : std::vector<std::pair<std::int64_t, std::int64_t>>{{13, 7}, {65, 33}, {300, 5}}) {
    const auto hx = random_tensor<T>({2, 3, in});
    const auto hw = random_tensor<T>({out, in});
    const auto hb = random_tensor<T>({out});
    const auto x = to<D>(hx);
    const nn::Linear<D, T> plain(to<D>(hw));
    const nn::Linear<D, T> biased(to<D>(hw), to<D>(hb));
    EXPECT_EQ(plain.in_features(), in);
    EXPECT_EQ(plain.out_features(), out);
    EXPECT_FALSE(plain.bias().has_value());
    EXPECT_TRUE(biased.bias().has_value());

    const auto y = to<Host>(plain.forward(x));
    const auto yb = to<Host>(biased.forward(x));
    ASSERT_EQ(y.shape(), (Shape{2, 3, out}));
    // The layer is ops::linear on its parameters: bit-identical results.
    EXPECT_TRUE(all_close(to_doubles(y), to_doubles(to<Host>(ops::linear(x, to<D>(hw)))), 0.0, 0.0));
    EXPECT_TRUE(all_close(to_doubles(yb), to_doubles(to<Host>(ops::linear(x, to<D>(hw), to<D>(hb)))), 0.0, 0.0));

    const auto dx = to_doubles(hx), dw = to_doubles(hw), db = to_doubles(hb);
    EXPECT_TRUE(all_close<T>(to_doubles(y), reference_linear(dx, dw, nullptr, in, out), gemm_tolerance<T>(in)));
    EXPECT_TRUE(all_close<T>(to_doubles(yb), reference_linear(dx, dw, &db, in, out), gemm_tolerance<T>(in + 1)));
  }
}

TYPED_TEST(NnLinear, ForwardAcceptsViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // The last token of each sequence (a strided slice), as at the lm_head.
  const auto hx = random_tensor<T>({2, 5, 33});
  const auto hw = random_tensor<T>({9, 33});
  const auto x = to<D>(hx);
  const nn::Linear<D, T> layer(to<D>(hw));
  const auto y = to<Host>(layer.forward(x.slice(1, 4, 5)));
  ASSERT_EQ(y.shape(), (Shape{2, 1, 9}));
  EXPECT_TRUE(all_close<T>(to_doubles(y), reference_linear(to_doubles(hx.slice(1, 4, 5)), to_doubles(hw), nullptr,
                                                           33, 9),
                           gemm_tolerance<T>(33)));
}

TYPED_TEST(NnLinear, ConstructorAndForwardRejectBadShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  expect_shape_error([] { nn::Linear<D, T> layer(to<D>(random_tensor<T>({5, 8})), to<D>(random_tensor<T>({4}))); },
                     {"nn::Linear", "bias [4]", "[5, 8]"});
  expect_shape_error([] { nn::Linear<D, T> layer(to<D>(random_tensor<T>({5, 8})), to<D>(random_tensor<T>({5, 1}))); },
                     {"nn::Linear", "[5, 1]"});
  expect_shape_error([] { nn::Linear<D, T> layer(to<D>(random_tensor<T>({8}))); }, {"nn::Linear", "weight [8]"});
  const nn::Linear<D, T> layer(to<D>(random_tensor<T>({5, 8})));
  const auto x = to<D>(random_tensor<T>({3, 7}));
  expect_shape_error([&] { (void)layer.forward(x); }, {"ops::linear", "[3, 7]", "[5, 8]"});
}

// The layer's device is its type: the default element type is bf16, and a
// layer on another device is a different type (passing it an input from here
// is a compile error; see tests/compile_fail).
static_assert(std::is_same_v<nn::Linear<Cpu<0>>::element_type, bf16>);
static_assert(!std::is_same_v<nn::Linear<Cpu<0>, float>, nn::Linear<Cpu<1>, float>>);

}  // namespace
}  // namespace tessera::testing
