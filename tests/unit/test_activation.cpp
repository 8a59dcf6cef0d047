// Typed tests of ops/activation.hpp (silu, gelu, gelu_tanh, swiglu) against a
// double-precision reference.
#include <tessera/ops/activation.hpp>

#include <cstring>
#include <functional>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Activation : public ::testing::Test {};
TYPED_TEST_SUITE(Activation, FloatConfigs, ConfigName);

const std::vector<Shape> kShapes = {{1}, {7}, {1, 33}, {5, 33}, {5, 896}, {2, 3, 7}};

double silu_ref(double x) { return x / (1.0 + std::exp(-x)); }
double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) {
  const double pi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

std::vector<double> apply_ref(const std::vector<double>& x, const std::function<double(double)>& f) {
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = f(x[i]);
  return out;
}

TYPED_TEST(Activation, UnaryActivationsMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : kShapes) {
    const auto hx = random_tensor<T>(shape, -8.0, 8.0);
    const auto x = to<D>(hx);
    const auto dx = to_doubles(hx);
    const auto s = to<Host>(ops::silu(x));
    const auto g = to<Host>(ops::gelu(x));
    const auto gt = to<Host>(ops::gelu_tanh(x));
    ASSERT_EQ(s.shape(), shape);
    EXPECT_TRUE(all_close<T>(to_doubles(s), apply_ref(dx, silu_ref))) << "silu " << shape;
    EXPECT_TRUE(all_close<T>(to_doubles(g), apply_ref(dx, gelu_ref))) << "gelu " << shape;
    EXPECT_TRUE(all_close<T>(to_doubles(gt), apply_ref(dx, gelu_tanh_ref))) << "gelu_tanh " << shape;
  }
}

TYPED_TEST(Activation, UnaryActivationsAcceptStridedViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto hx = random_tensor<T>({7, 5}, -4.0, 4.0);
  const auto x = to<D>(hx);
  const auto dx = to_doubles(hx.transpose(0, 1));
  EXPECT_TRUE(all_close<T>(to_doubles(to<Host>(ops::silu(x.transpose(0, 1)))), apply_ref(dx, silu_ref)));
  EXPECT_TRUE(all_close<T>(to_doubles(to<Host>(ops::gelu(x.transpose(0, 1)))), apply_ref(dx, gelu_ref)));
  EXPECT_TRUE(all_close<T>(to_doubles(to<Host>(ops::gelu_tanh(x.transpose(0, 1)))), apply_ref(dx, gelu_tanh_ref)));
}

TEST(Activation, GeluFormsAreDistinctAndMatchKnownValues) {
  const auto x = Tensor<Host, float>::from({-3.0f, -1.0f, 0.0f, 1.0f, 2.0f, 20.0f, -20.0f}, {7});
  const auto g = ops::gelu(x);
  const auto gt = ops::gelu_tanh(x);
  const auto s = ops::silu(x);
  EXPECT_NEAR(g.at(3), 0.8413447460685429, 1e-6);   // Phi(1)
  EXPECT_NEAR(gt.at(3), 0.8411919906082768, 1e-6);  // tanh form at 1
  EXPECT_NEAR(g.at(0), -0.0040496940949, 1e-6);
  EXPECT_NEAR(gt.at(0), -0.0036373920818, 1e-6);
  EXPECT_EQ(g.at(2), 0.0f);
  EXPECT_EQ(g.at(5), 20.0f);
  EXPECT_EQ(gt.at(5), 20.0f);
  EXPECT_NEAR(s.at(3), 0.7310585786300049, 1e-6);
  EXPECT_EQ(s.at(5), 20.0f);
  EXPECT_NEAR(s.at(6), -20.0 / (1.0 + std::exp(20.0)), 1e-12);
  EXPECT_FALSE(std::isnan(ops::silu(Tensor<Host, float>::from({-1000.0f}, {1})).at(0)));
}

TYPED_TEST(Activation, SwigluMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : kShapes) {
    const auto hg = random_tensor<T>(shape, -6.0, 6.0);
    const auto hu = random_tensor<T>(shape, -2.0, 2.0);
    const auto out = to<Host>(ops::swiglu(to<D>(hg), to<D>(hu)));
    const auto dg = to_doubles(hg), du = to_doubles(hu);
    std::vector<double> expected(dg.size());
    for (std::size_t i = 0; i < dg.size(); ++i) expected[i] = silu_ref(dg[i]) * du[i];
    ASSERT_EQ(out.shape(), shape);
    EXPECT_TRUE(all_close<T>(to_doubles(out), expected)) << shape;
  }
}

TYPED_TEST(Activation, FusedSwigluTakesGateFromTheFirstHalf) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& out_shape : {Shape{1}, Shape{7}, Shape{5, 33}, Shape{2, 3, 7}, Shape{5, 896}}) {
    Shape in_shape = out_shape;
    in_shape[-1] = 2 * out_shape[-1];
    const std::int64_t inter = out_shape[-1];
    const auto hx = random_tensor<T>(in_shape, -6.0, 6.0);
    const auto x = to<D>(hx);
    const auto out = to<Host>(ops::swiglu(x));
    ASSERT_EQ(out.shape(), out_shape);
    const auto dx = to_doubles(hx);
    std::vector<double> expected(static_cast<std::size_t>(out_shape.numel()));
    for (std::size_t r = 0; r < expected.size() / static_cast<std::size_t>(inter); ++r) {
      for (std::size_t i = 0; i < static_cast<std::size_t>(inter); ++i) {
        const double gate = dx[r * 2 * static_cast<std::size_t>(inter) + i];
        const double up = dx[r * 2 * static_cast<std::size_t>(inter) + static_cast<std::size_t>(inter) + i];
        expected[r * static_cast<std::size_t>(inter) + i] = silu_ref(gate) * up;
      }
    }
    EXPECT_TRUE(all_close<T>(to_doubles(out), expected)) << in_shape;
    // The two-tensor form on the halves gives the same bits (one rounding each).
    const auto split = to<Host>(ops::swiglu(x.view().slice(-1, 0, inter), x.view().slice(-1, inter, 2 * inter)));
    EXPECT_TRUE(all_close(to_doubles(out), to_doubles(split), 0.0, 0.0)) << in_shape;
  }
  // A non-contiguous fused input: the transpose of a [14, 3] tensor is [3, 14].
  const auto hbase = random_tensor<T>({14, 3}, -4.0, 4.0);
  const auto base = to<D>(hbase);
  const auto out = to<Host>(ops::swiglu(base.transpose(0, 1)));
  const auto packed = to<Host>(ops::swiglu(to<D>(to<Host>(hbase.transpose(0, 1)))));
  ASSERT_EQ(out.shape(), (Shape{3, 7}));
  EXPECT_TRUE(all_close(to_doubles(out), to_doubles(packed), 0.0, 0.0));
}

TYPED_TEST(Activation, SwigluShapeErrorsNameTheOpAndShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto gate = to<D>(random_tensor<T>({3, 8}));
  const auto up = to<D>(random_tensor<T>({3, 4}));
  try {
    (void)ops::swiglu(gate, up);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::swiglu"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 8]"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 4]"), std::string::npos) << what;
  }
  try {
    (void)ops::swiglu(to<D>(random_tensor<T>({3, 7})));
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::swiglu"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 7]"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace tessera::testing
