// Typed tests of ops/softmax.hpp against a double-precision reference.
#include <tessera/ops/softmax.hpp>

#include <limits>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Softmax : public ::testing::Test {};
TYPED_TEST_SUITE(Softmax, FloatConfigs, ConfigName);

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Offset into a row-major tensor of shape `small` that broadcasts to `big`,
// for the element of `big` at row-major index `linear`.
std::size_t broadcast_offset(std::int64_t linear, const Shape& big, const Shape& small) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(big.rank()));
  for (int d = big.rank() - 1; d >= 0; --d) {
    idx[static_cast<std::size_t>(d)] = linear % big[d];
    linear /= big[d];
  }
  std::int64_t off = 0;
  for (int d = 0; d < small.rank(); ++d) {
    const std::int64_t i = small[d] == 1 ? 0 : idx[static_cast<std::size_t>(d + big.rank() - small.rank())];
    off = off * small[d] + i;
  }
  return static_cast<std::size_t>(off);
}

// Reference: softmax over the last dimension of x + mask in double, the mask
// (empty for none) broadcast numpy-style; a row that is all -inf gives zeros.
std::vector<double> softmax_reference(const std::vector<double>& x, const Shape& shape,
                                      const std::vector<double>& mask = {}, const Shape& mask_shape = {}) {
  std::vector<double> scores(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double m = mask.empty() ? 0.0 : mask[broadcast_offset(static_cast<std::int64_t>(i), shape, mask_shape)];
    scores[i] = x[i] + m;
  }
  const auto n = static_cast<std::size_t>(shape[-1]);
  std::vector<double> out(x.size(), 0.0);
  for (std::size_t row = 0; row < x.size() / n; ++row) {
    const double* s = scores.data() + row * n;
    double max = kNegInf;
    for (std::size_t j = 0; j < n; ++j) max = std::max(max, s[j]);
    if (max == kNegInf) continue;  // fully masked: zeros
    double sum = 0.0;
    for (std::size_t j = 0; j < n; ++j) sum += std::exp(s[j] - max);
    for (std::size_t j = 0; j < n; ++j) out[row * n + j] = std::exp(s[j] - max) / sum;
  }
  return out;
}

// A host mask of element type M with values in [-2, 2) and about a quarter
// of the entries -inf (never a whole row, which has its own test).
template <class M>
Tensor<Host, M> random_mask(const Shape& shape) {
  auto mask = random_tensor<M>(shape, -2.0, 2.0);
  std::bernoulli_distribution drop(0.25);
  auto values = mask.span();
  for (std::size_t i = 1; i < values.size(); ++i) {  // entry 0 stays finite
    if (drop(rng())) values[i] = convert<M>(-std::numeric_limits<float>::infinity());
  }
  return mask;
}

TYPED_TEST(Softmax, MatchesReferenceOverOddSizes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{4, 1}, Shape{3, 33}, Shape{2, 5, 31}, Shape{2, 3, 130}}) {
    const auto hx = random_tensor<T>(shape, -4.0, 4.0);
    const auto out = to<Host>(ops::softmax(to<D>(hx)));
    ASSERT_EQ(out.shape(), shape);
    EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), shape))) << shape;
  }
}

TYPED_TEST(Softmax, LargeLogitsDoNotOverflow) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // exp(1000) overflows float: only max-subtraction gets these right.
  const auto hx = random_tensor<T>({3, 17}, 1000.0, 1010.0);
  const auto out = to<Host>(ops::softmax(to<D>(hx)));
  EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), {3, 17})));
}

TYPED_TEST(Softmax, WorksOnStridedViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto hx = random_tensor<T>({9, 5}, -3.0, 3.0);
  const auto x = to<D>(hx);
  const auto out = to<Host>(ops::softmax(x.transpose(0, 1)));
  ASSERT_EQ(out.shape(), (Shape{5, 9}));
  EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx.transpose(0, 1)), {5, 9})));
}

TYPED_TEST(Softmax, SameShapeMaskOfElementType) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : {Shape{5}, Shape{3, 33}, Shape{2, 5, 31}}) {
    const auto hx = random_tensor<T>(shape, -4.0, 4.0);
    const auto hm = random_mask<T>(shape);
    const auto out = to<Host>(ops::softmax(to<D>(hx), to<D>(hm)));
    EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), shape, to_doubles(hm), shape)))
        << shape;
  }
}

struct MaskCase {
  Shape x, mask;
};

TYPED_TEST(Softmax, FloatMaskBroadcastsToScores) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<MaskCase> cases = {
      {{2, 3, 9, 9}, {9, 9}},        // [S, S] over [B, H, S, S]
      {{2, 3, 9, 9}, {2, 1, 1, 9}},  // per-batch key padding
      {{2, 3, 9, 9}, {3, 1, 9}},     // per-head bias, shared by queries
      {{4, 11}, {11}},
      {{4, 11}, {}},                 // a scalar mask
  };
  for (const auto& c : cases) {
    const auto hx = random_tensor<T>(c.x, -4.0, 4.0);
    const auto hm = random_mask<float>(c.mask);
    const auto out = to<Host>(ops::softmax(to<D>(hx), to<D>(hm)));
    ASSERT_EQ(out.shape(), c.x);
    EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), c.x, to_doubles(hm), c.mask)))
        << c.x << " with mask " << c.mask;
  }
}

TYPED_TEST(Softmax, CausalMaskOverHeads) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::int64_t s = 13;
  auto hm = Tensor<Host, float>::zeros({s, s});
  for (std::int64_t i = 0; i < s; ++i) {
    for (std::int64_t j = i + 1; j < s; ++j) hm.at(i, j) = -std::numeric_limits<float>::infinity();
  }
  const Shape shape{2, 4, s, s};
  const auto hx = random_tensor<T>(shape, -4.0, 4.0);
  const auto out = to<Host>(ops::softmax(to<D>(hx), to<D>(hm)));
  EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), shape, to_doubles(hm), {s, s})));
  EXPECT_EQ(convert<float>(out.at(1, 2, 0, 0)), 1.0f);  // the first query sees only itself
  EXPECT_EQ(convert<float>(out.at(1, 2, 0, 1)), 0.0f);
}

// A fully masked row yields zeros (torch yields NaN; tessera chooses zeros).
TYPED_TEST(Softmax, FullyMaskedRowIsZeros) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const float inf = std::numeric_limits<float>::infinity();
  const auto hx = random_tensor<T>({4, 6}, -4.0, 4.0);
  auto hm = Tensor<Host, T>::full({4, 6}, convert<T>(0.0f));
  for (std::int64_t j = 0; j < 6; ++j) hm.at(2, j) = convert<T>(-inf);
  hm.at(1, 3) = convert<T>(-inf);
  const auto out = to<Host>(ops::softmax(to<D>(hx), to<D>(hm)));
  EXPECT_TRUE(all_close<T>(to_doubles(out), softmax_reference(to_doubles(hx), {4, 6}, to_doubles(hm), {4, 6})));
  for (std::int64_t j = 0; j < 6; ++j) EXPECT_EQ(convert<float>(out.at(2, j)), 0.0f) << "column " << j;

  // The same holds when x itself is -inf, without a mask.
  auto hy = Tensor<Host, T>::full({2, 5}, convert<T>(-inf));
  hy.at(1, 4) = convert<T>(0.5f);
  const auto y = to<Host>(ops::softmax(to<D>(hy)));
  for (std::int64_t j = 0; j < 5; ++j) EXPECT_EQ(convert<float>(y.at(0, j)), 0.0f) << "column " << j;
  EXPECT_EQ(convert<float>(y.at(1, 4)), 1.0f);
}

TYPED_TEST(Softmax, ShapeErrorsNameTheOpAndMask) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto x = to<D>(random_tensor<T>({3, 4}));
  for (const Shape& bad : {Shape{5}, Shape{2, 3, 4}, Shape{3, 2}}) {
    try {
      (void)ops::softmax(x, to<D>(random_tensor<float>(bad)));
      FAIL() << "expected a ShapeError for mask " << bad;
    } catch (const ShapeError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("ops::softmax"), std::string::npos) << what;
      EXPECT_NE(what.find("mask " + bad.to_string()), std::string::npos) << what;
      EXPECT_NE(what.find("[3, 4]"), std::string::npos) << what;
    }
  }
  EXPECT_THROW((void)ops::softmax(to<D>(random_tensor<T>({}))), ShapeError);
}

}  // namespace
}  // namespace tessera::testing
