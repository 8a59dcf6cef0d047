// Typed tests of ops::matmul and ops::linear (ops/matmul.hpp) against a naive
// double-precision reference.
#include <tessera/ops/matmul.hpp>

#include <cmath>
#include <string>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Matmul : public ::testing::Test {};
TYPED_TEST_SUITE(Matmul, FloatConfigs, ConfigName);

// out[batch, i, j] = sum_k a[batch, i, k] * b[batch or shared, k, j], in double.
// a is [..., M, K] and b [..., K, N] or [K, N], both row-major doubles.
std::vector<double> reference_matmul(const std::vector<double>& a, const Shape& sa, const std::vector<double>& b,
                                     const Shape& sb) {
  const std::int64_t m = sa[-2], k = sa[-1], n = sb[-1];
  const bool shared = sb.rank() == 2;
  std::int64_t out_batches = 1;
  for (int d = 0; d < sa.rank() - 2; ++d) out_batches *= sa[d];
  std::vector<double> out(static_cast<std::size_t>(out_batches * m * n), 0.0);
  for (std::int64_t t = 0; t < out_batches; ++t) {
    const double* pa = a.data() + t * m * k;
    const double* pb = b.data() + (shared ? 0 : t * k * n);
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        double sum = 0.0;
        for (std::int64_t p = 0; p < k; ++p) sum += pa[i * k + p] * pb[p * n + j];
        out[static_cast<std::size_t>((t * m + i) * n + j)] = sum;
      }
    }
  }
  return out;
}

// Operand views used by the cases; each works on host and device tensors alike.
const auto as_is = [](const auto& t) { return t.view(); };
const auto transposed = [](const auto& t) { return t.transpose(-2, -1); };

// Random a and b stored with shapes sa and sb, multiplied as view_a(a) @
// view_b(b) on D and compared with the reference of the same host views.
template <class D, class T, class FA, class FB>
void expect_matmul(const Shape& sa, const Shape& sb, FA view_a, FB view_b, const std::string& what) {
  const auto ha = random_tensor<T>(sa);
  const auto hb = random_tensor<T>(sb);
  const auto a = to<D>(ha);
  const auto b = to<D>(hb);
  const auto out = to<Host>(ops::matmul(view_a(a), view_b(b)));
  const auto ra = view_a(ha);
  const auto rb = view_b(hb);
  Shape expected_shape;
  for (int d = 0; d < ra.rank() - 1; ++d) expected_shape.push_back(ra.dim(d));
  expected_shape.push_back(rb.dim(-1));
  ASSERT_EQ(out.shape(), expected_shape) << what;
  const auto expected = reference_matmul(to_doubles(ra), ra.shape(), to_doubles(rb), rb.shape());
  EXPECT_TRUE(all_close<T>(to_doubles(out), expected, gemm_tolerance<T>(ra.dim(-1))))
      << what << ": " << ra.shape() << " @ " << rb.shape();
}

struct MatmulCase {
  Shape a, b;
};

TYPED_TEST(Matmul, MatchesReferenceOn2DShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<MatmulCase> cases = {
      {{1, 1}, {1, 1}},   {{1, 7}, {7, 1}},     {{7, 13}, {13, 5}},  {{13, 1}, {1, 33}},
      {{33, 65}, {65, 7}}, {{65, 33}, {33, 13}}, {{4, 300}, {300, 9}}, {{2, 1024}, {1024, 3}},
  };
  for (const auto& c : cases) expect_matmul<D, T>(c.a, c.b, as_is, as_is, "2-D");
}

TYPED_TEST(Matmul, MatchesReferenceBatched) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // One and two batch dimensions, then a 2-D b shared across the batch.
  expect_matmul<D, T>({3, 7, 13}, {3, 13, 5}, as_is, as_is, "one batch dim");
  expect_matmul<D, T>({2, 3, 5, 33}, {2, 3, 33, 4}, as_is, as_is, "two batch dims");
  expect_matmul<D, T>({4, 9, 13}, {13, 6}, as_is, as_is, "broadcast b, one batch dim");
  expect_matmul<D, T>({2, 3, 5, 7}, {7, 65}, as_is, as_is, "broadcast b, two batch dims");
  expect_matmul<D, T>({1, 1, 300}, {1, 300, 7}, as_is, as_is, "batch of one, K = 300");
}

TYPED_TEST(Matmul, TransposedViewsMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Stored shapes are the transposes of the multiplied ones.
  expect_matmul<D, T>({13, 7}, {13, 5}, transposed, as_is, "a^T");
  expect_matmul<D, T>({7, 13}, {5, 13}, as_is, transposed, "b^T");
  expect_matmul<D, T>({13, 7}, {5, 13}, transposed, transposed, "a^T b^T");
  expect_matmul<D, T>({300, 3}, {9, 300}, transposed, transposed, "a^T b^T, K = 300");
  // Attention-like scores: q [B, H, S, d] @ k^T with k [B, H, S, d].
  expect_matmul<D, T>({2, 3, 7, 5}, {2, 3, 9, 5}, as_is, transposed, "batched b^T");
  expect_matmul<D, T>({2, 33, 7}, {2, 33, 1}, transposed, as_is, "batched a^T, N = 1");
  // A linear layer's weight [out, in] as b^T, shared across a batch.
  expect_matmul<D, T>({2, 5, 65}, {17, 65}, as_is, transposed, "broadcast b^T");
}

TYPED_TEST(Matmul, StridedViewsMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // A column slice keeps unit stride: BLAS reads it with a larger leading dimension.
  expect_matmul<D, T>({7, 20}, {13, 5}, [](const auto& t) { return t.slice(1, 3, 16); }, as_is, "column slice");
  // Every other element of the last dimension: no unit stride, so materialised.
  expect_matmul<D, T>({7, 13, 2}, {13, 5}, [](const auto& t) { return t.select(2, 1); }, as_is, "strided a");
  expect_matmul<D, T>({7, 13}, {5, 3, 13}, as_is, [](const auto& t) { return t.select(1, 2).transpose(0, 1); },
                      "row slice of b^T");
  // Permuted batch dimensions (non-contiguous batch, b shared): one GEMM per batch element.
  expect_matmul<D, T>({3, 2, 5, 7}, {7, 4}, [](const auto& t) { return t.permute({1, 0, 2, 3}); }, as_is,
                      "permuted batch");
  expect_matmul<D, T>({4, 5, 7}, {4, 7, 6}, [](const auto& t) { return t.slice(0, 1, 3); },
                      [](const auto& t) { return t.slice(0, 2, 4); }, "batch slices");
}

TYPED_TEST(Matmul, EmptyDimensions) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  expect_matmul<D, T>({0, 5}, {5, 3}, as_is, as_is, "M = 0");
  expect_matmul<D, T>({4, 5}, {5, 0}, as_is, as_is, "N = 0");
  expect_matmul<D, T>({0, 4, 5}, {0, 5, 3}, as_is, as_is, "empty batch");
  // K = 0: an empty sum, so every element is zero.
  const auto out = to<Host>(ops::matmul(to<D>(random_tensor<T>({2, 3, 0})), to<D>(random_tensor<T>({0, 4}))));
  ASSERT_EQ(out.shape(), (Shape{2, 3, 4}));
  for (double v : to_doubles(out)) EXPECT_EQ(v, 0.0);
}

TYPED_TEST(Matmul, ShapeErrorsNameTheOpAndShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto a = to<D>(random_tensor<T>({2, 3, 4}));
  const auto b_wrong_k = to<D>(random_tensor<T>({5, 6}));
  const auto b_wrong_batch = to<D>(random_tensor<T>({3, 4, 6}));
  const auto b_vector = to<D>(random_tensor<T>({4}));
  expect_shape_error([&] { (void)ops::matmul(a, b_wrong_k); }, {"ops::matmul", "[2, 3, 4]", "[5, 6]"});
  expect_shape_error([&] { (void)ops::matmul(a, b_wrong_batch); }, {"ops::matmul", "[2, 3, 4]", "[3, 4, 6]"});
  expect_shape_error([&] { (void)ops::matmul(a, b_vector); }, {"ops::matmul", "[4]"});
  // A batched b needs a's exact batch dimensions (no broadcasting of a).
  const auto a2 = to<D>(random_tensor<T>({3, 4}));
  expect_shape_error([&] { (void)ops::matmul(a2, b_wrong_batch); }, {"ops::matmul", "[3, 4]", "[3, 4, 6]"});
}

TYPED_TEST(Matmul, LinearWithAndWithoutBias) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<Shape> inputs = {{13}, {7, 13}, {2, 3, 33}, {4, 300}, {1, 1, 1, 65}};
  for (const Shape& xs : inputs) {
    const std::int64_t in = xs[-1];
    for (std::int64_t out_features : {1, 5, 17}) {
      const auto hx = random_tensor<T>(xs);
      const auto hw = random_tensor<T>({out_features, in});
      const auto hb = random_tensor<T>({out_features});
      const auto x = to<D>(hx);
      const auto w = to<D>(hw);
      const auto b = to<D>(hb);
      Shape expected_shape = xs;
      expected_shape[-1] = out_features;
      const auto dx = to_doubles(hx), dw = to_doubles(hw), db = to_doubles(hb);
      const auto plain = to<Host>(ops::linear(x, w));
      const auto biased = to<Host>(ops::linear(x, w, b));
      ASSERT_EQ(plain.shape(), expected_shape);
      ASSERT_EQ(biased.shape(), expected_shape);
      // The bias adds one more term of size <= 1 to the sum: same tolerance.
      EXPECT_TRUE(all_close<T>(to_doubles(plain), reference_linear(dx, dw, nullptr, in, out_features),
                               gemm_tolerance<T>(in)))
          << xs << " x [" << out_features << ", " << in << "]";
      EXPECT_TRUE(all_close<T>(to_doubles(biased), reference_linear(dx, dw, &db, in, out_features),
                               gemm_tolerance<T>(in + 1)))
          << xs << " x [" << out_features << ", " << in << "] + bias";
    }
  }
}

TYPED_TEST(Matmul, LinearShapeErrors) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto x = to<D>(random_tensor<T>({3, 8}));
  const auto w = to<D>(random_tensor<T>({5, 7}));
  const auto w_ok = to<D>(random_tensor<T>({5, 8}));
  const auto bias = to<D>(random_tensor<T>({4}));
  expect_shape_error([&] { (void)ops::linear(x, w); }, {"ops::linear", "[3, 8]", "[5, 7]"});
  expect_shape_error([&] { (void)ops::linear(x, w_ok, bias); }, {"ops::linear", "[4]", "[5, 8]"});
  expect_shape_error([&] { (void)ops::linear(x, bias); }, {"ops::linear", "[4]"});
}

// CPU only: the ledger counts allocations, which shows when an operand is copied.
TEST(MatmulCpu, TransposedFloatOperandsAreNotCopied) {
  const auto a = random_tensor<float>({33, 65});
  const auto b = random_tensor<float>({17, 65});
  const auto before = ledger<Host>().allocations();
  const auto out = ops::matmul(a, b.transpose(-2, -1));
  EXPECT_EQ(ledger<Host>().allocations() - before, 1u) << "only the output is allocated";
  const auto y = ops::linear(a, b);
  EXPECT_EQ(ledger<Host>().allocations() - before, 2u) << "linear reads weight^T in place";
  const auto at = random_tensor<float>({65, 33});
  const auto mid = ledger<Host>().allocations();
  const auto both = ops::matmul(at.transpose(0, 1), b.transpose(0, 1));
  EXPECT_EQ(ledger<Host>().allocations() - mid, 1u);
  // A view with no unit stride is materialised: one copy plus the output.
  const auto strided = random_tensor<float>({33, 65, 2});
  const auto mid2 = ledger<Host>().allocations();
  const auto copied = ops::matmul(strided.select(2, 0), b.transpose(0, 1));
  EXPECT_EQ(ledger<Host>().allocations() - mid2, 2u);
  EXPECT_EQ(copied.shape(), (Shape{33, 17}));
}

}  // namespace
}  // namespace tessera::testing
