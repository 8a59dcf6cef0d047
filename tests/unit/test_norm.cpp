// Typed tests of ops/norm.hpp (rms_norm, add_rms_norm, layer_norm) against a
// double-precision reference.
#include <tessera/ops/elementwise.hpp>
#include <tessera/ops/norm.hpp>

#include <cstring>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Norm : public ::testing::Test {};
TYPED_TEST_SUITE(Norm, FloatConfigs, ConfigName);

// Rows x hidden cases, including hidden 1 and odd sizes; the last is rank 3.
const std::vector<Shape> kShapes = {{1, 1}, {5, 1}, {1, 7}, {5, 7}, {5, 33}, {1, 896}, {5, 896}, {2, 3, 33}};

// Reference RMSNorm in double that models HF's one intermediate rounding: h is
// rounded to T before the weight multiply, as the op (and Qwen2RMSNorm) does.
// What remains is float32 arithmetic in the op plus the final rounding of the
// product to T, both covered by default_tolerance<T>. (In rare elements the
// float32 and double h fall on opposite sides of a T rounding boundary, one T
// ulp of h, which the tolerance also covers.)
template <class T>
std::vector<double> rms_norm_reference(const std::vector<double>& x, const std::vector<double>& w, std::int64_t hidden,
                                       double eps) {
  std::vector<double> out(x.size());
  const auto h = static_cast<std::size_t>(hidden);
  for (std::size_t r = 0; r < x.size() / h; ++r) {
    double sum_sq = 0.0;
    for (std::size_t i = 0; i < h; ++i) sum_sq += x[r * h + i] * x[r * h + i];
    const auto eps32 = static_cast<double>(static_cast<float>(eps));  // the op adds eps as float32
    const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(hidden) + eps32);
    for (std::size_t i = 0; i < h; ++i) {
      const double normed = static_cast<double>(convert<float>(convert<T>(static_cast<float>(x[r * h + i] * inv_rms))));
      out[r * h + i] = w[i] * normed;
    }
  }
  return out;
}

std::vector<double> layer_norm_reference(const std::vector<double>& x, const std::vector<double>& w,
                                         const std::vector<double>& b, std::int64_t hidden, double eps) {
  std::vector<double> out(x.size());
  const auto h = static_cast<std::size_t>(hidden);
  for (std::size_t r = 0; r < x.size() / h; ++r) {
    double mean = 0.0, var = 0.0;
    for (std::size_t i = 0; i < h; ++i) mean += x[r * h + i];
    mean /= static_cast<double>(hidden);
    for (std::size_t i = 0; i < h; ++i) var += (x[r * h + i] - mean) * (x[r * h + i] - mean);
    var /= static_cast<double>(hidden);  // biased, as torch.nn.LayerNorm
    for (std::size_t i = 0; i < h; ++i) out[r * h + i] = (x[r * h + i] - mean) / std::sqrt(var + eps) * w[i] + b[i];
  }
  return out;
}

TYPED_TEST(Norm, RmsNormMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : kShapes) {
    for (double eps : {1e-6, 1e-5}) {
      const std::int64_t hidden = shape[-1];
      const auto hx = random_tensor<T>(shape, -3.0, 3.0);
      const auto hw = random_tensor<T>({hidden}, 0.5, 1.5);
      const auto out = to<Host>(ops::rms_norm(to<D>(hx), to<D>(hw), eps));
      ASSERT_EQ(out.shape(), shape);
      EXPECT_TRUE(all_close<T>(to_doubles(out), rms_norm_reference<T>(to_doubles(hx), to_doubles(hw), hidden, eps)))
          << "shape " << shape << " eps " << eps;
    }
  }
}

TYPED_TEST(Norm, RmsNormOfTinyInputIsDominatedByEps) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // mean(x^2) = 1e-6 = eps: h = x / sqrt(2e-6).
  const auto hx = Tensor<Host, T>::full({2, 4}, convert<T>(1e-3f));
  const auto hw = Tensor<Host, T>::full({4}, convert<T>(1.0f));
  const auto out = to<Host>(ops::rms_norm(to<D>(hx), to<D>(hw), 1e-6));
  EXPECT_TRUE(all_close<T>(to_doubles(out), rms_norm_reference<T>(to_doubles(hx), to_doubles(hw), 4, 1e-6)));
}

TYPED_TEST(Norm, RmsNormAndLayerNormAcceptStridedViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // x is the transpose of a [33, 5] tensor: rows of 33 elements with stride 5.
  const auto hbase = random_tensor<T>({33, 5}, -2.0, 2.0);
  const auto hw = random_tensor<T>({33}, 0.5, 1.5);
  const auto hb = random_tensor<T>({33});
  const auto base = to<D>(hbase);
  const auto w = to<D>(hw);
  const auto b = to<D>(hb);
  const auto dx = to_doubles(hbase.transpose(0, 1));
  const auto rms = to<Host>(ops::rms_norm(base.transpose(0, 1), w, 1e-6));
  ASSERT_EQ(rms.shape(), (Shape{5, 33}));
  EXPECT_TRUE(all_close<T>(to_doubles(rms), rms_norm_reference<T>(dx, to_doubles(hw), 33, 1e-6)));
  const auto ln = to<Host>(ops::layer_norm(base.transpose(0, 1), w, b, 1e-5));
  EXPECT_TRUE(all_close<T>(to_doubles(ln), layer_norm_reference(dx, to_doubles(hw), to_doubles(hb), 33, 1e-5)));
  // A weight view with a stride (every other element of a [66] tensor).
  const auto hw2 = random_tensor<T>({33, 2}, 0.5, 1.5);
  const auto w2 = to<D>(hw2);
  const auto rms2 = to<Host>(ops::rms_norm(base.transpose(0, 1), w2.select(1, 0), 1e-6));
  EXPECT_TRUE(all_close<T>(to_doubles(rms2), rms_norm_reference<T>(dx, to_doubles(hw2.select(1, 0)), 33, 1e-6)));
}

TYPED_TEST(Norm, LayerNormMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : kShapes) {
    const std::int64_t hidden = shape[-1];
    // An offset mean exercises the (x - mean) cancellation.
    const auto hx = random_tensor<T>(shape, 0.5, 3.0);
    const auto hw = random_tensor<T>({hidden}, 0.5, 1.5);
    const auto hb = random_tensor<T>({hidden}, -0.5, 0.5);
    const auto out = to<Host>(ops::layer_norm(to<D>(hx), to<D>(hw), to<D>(hb), 1e-6));
    ASSERT_EQ(out.shape(), shape);
    EXPECT_TRUE(all_close<T>(to_doubles(out),
                             layer_norm_reference(to_doubles(hx), to_doubles(hw), to_doubles(hb), hidden, 1e-6)))
        << "shape " << shape;
  }
}

TYPED_TEST(Norm, AddRmsNormEqualsTheUnfusedSequence) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : kShapes) {
    const std::int64_t hidden = shape[-1];
    const auto hh = random_tensor<T>(shape, -2.0, 2.0);
    const auto hr = random_tensor<T>(shape, -2.0, 2.0);
    const auto hw = random_tensor<T>({hidden}, 0.5, 1.5);
    const auto w = to<D>(hw);
    const auto hidden_states = to<D>(hh);

    // Unfused: residual = hidden + residual; out = rms_norm(residual).
    auto residual_a = to<D>(hr);
    ops::residual_add(residual_a, hidden_states);
    const auto normed_a = to<Host>(ops::rms_norm(residual_a, w, 1e-6));

    auto residual_b = to<D>(hr);
    const auto normed_b = to<Host>(ops::add_rms_norm(hidden_states, residual_b, w, 1e-6));
    const auto sum_a = to<Host>(residual_a);
    const auto sum_b = to<Host>(residual_b);

    // On every device the fused kernel promises the unfused pair's bits
    // (the CUDA kernels share their reduction order and rounding steps).
    EXPECT_TRUE(same_bits(sum_a, sum_b)) << "residual differs for shape " << shape;
    EXPECT_TRUE(same_bits(normed_a, normed_b)) << "normed output differs for shape " << shape;
    // And both against the double reference.
    std::vector<double> expect_sum = to_doubles(hh);
    const auto dr = to_doubles(hr);
    for (std::size_t i = 0; i < expect_sum.size(); ++i) expect_sum[i] += dr[i];
    EXPECT_TRUE(all_close<T>(to_doubles(sum_b), expect_sum)) << shape;
    EXPECT_TRUE(
        all_close<T>(to_doubles(normed_b), rms_norm_reference<T>(to_doubles(sum_b), to_doubles(hw), hidden, 1e-6)))
        << shape;
  }
}

TYPED_TEST(Norm, AddRmsNormAcceptsAStridedHidden) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto hbase = random_tensor<T>({7, 3});
  const auto hr = random_tensor<T>({3, 7});
  const auto hw = random_tensor<T>({7}, 0.5, 1.5);
  const auto base = to<D>(hbase);
  const auto w = to<D>(hw);
  auto residual_a = to<D>(hr);
  ops::residual_add(residual_a, base.transpose(0, 1));
  const auto normed_a = to<Host>(ops::rms_norm(residual_a, w, 1e-6));
  auto residual_b = to<D>(hr);
  const auto normed_b = to<Host>(ops::add_rms_norm(base.transpose(0, 1), residual_b, w, 1e-6));
  EXPECT_TRUE(all_close(to_doubles(normed_b), to_doubles(normed_a), 0.0, 0.0));
  EXPECT_TRUE(all_close(to_doubles(to<Host>(residual_b)), to_doubles(to<Host>(residual_a)), 0.0, 0.0));
}

// HF's order of operations, bit for bit on the CPU: h = float(x) * rsqrt(var +
// eps) is rounded to T, then multiplied by the weight and rounded again. The
// expected bits are built here step by step in float32; the test also checks
// that the order matters for some elements (multiplying by the weight before
// rounding gives different bits), so it really pins the HF ordering down.
template <class T>
void check_rms_norm_rounding_order() {
  const std::int64_t rows = 256, hidden = 16;
  const auto x = random_tensor<T>({rows, hidden}, -3.0, 3.0);
  const auto w = random_tensor<T>({hidden}, 0.5, 1.5);
  const auto out = ops::rms_norm(x, w, 1e-6);
  int order_matters = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0.0;
    for (std::int64_t i = 0; i < hidden; ++i) {
      const auto v = static_cast<double>(static_cast<float>(x.at(r, i)));
      sum_sq += v * v;
    }
    const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_sq / static_cast<double>(hidden)) + 1e-6f);
    for (std::int64_t i = 0; i < hidden; ++i) {
      const float h = static_cast<float>(x.at(r, i)) * inv_rms;
      const T hf(static_cast<float>(T(h)) * static_cast<float>(w.at(i)));  // HF: round, then weight
      const T fused(h * static_cast<float>(w.at(i)));                       // weight first (not HF)
      ASSERT_EQ(out.at(r, i).bits, hf.bits) << "row " << r << " col " << i;
      if (hf.bits != fused.bits) ++order_matters;
    }
  }
  EXPECT_GT(order_matters, 0) << "no element distinguishes the two orders; the test would not catch a change";
}

TEST(NormRounding, RmsNormRoundsToTBeforeTheWeightLikeHF) {
  check_rms_norm_rounding_order<bf16>();
  check_rms_norm_rounding_order<f16>();
}

TYPED_TEST(Norm, ShapeErrorsNameTheOpAndShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto x = to<D>(random_tensor<T>({5, 7}));
  const auto w8 = to<D>(random_tensor<T>({8}));
  const auto w7 = to<D>(random_tensor<T>({7}));
  try {
    (void)ops::rms_norm(x, w8, 1e-6);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::rms_norm"), std::string::npos) << what;
    EXPECT_NE(what.find("[7]"), std::string::npos) << what;
    EXPECT_NE(what.find("[8]"), std::string::npos) << what;
    EXPECT_NE(what.find("[5, 7]"), std::string::npos) << what;
  }
  try {
    (void)ops::layer_norm(x, w7, w8, 1e-6);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::layer_norm"), std::string::npos) << what;
    EXPECT_NE(what.find("bias"), std::string::npos) << what;
  }
  EXPECT_THROW((void)ops::layer_norm(x, w8, w7, 1e-6), ShapeError);
  auto residual = to<D>(random_tensor<T>({7, 5}));
  try {
    (void)ops::add_rms_norm(x, residual, w7, 1e-6);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::add_rms_norm"), std::string::npos) << what;
    EXPECT_NE(what.find("[7, 5]"), std::string::npos) << what;
  }
  auto residual_ok = to<D>(random_tensor<T>({5, 7}));
  EXPECT_THROW((void)ops::add_rms_norm(x, residual_ok, w8, 1e-6), ShapeError);
  // A rank-2 weight is rejected too.
  EXPECT_THROW((void)ops::rms_norm(x, to<D>(random_tensor<T>({1, 7})), 1e-6), ShapeError);
}

}  // namespace
}  // namespace tessera::testing
