// Typed tests of ops/reduce.hpp (argmax, topk over the last dimension)
// against a naive double-precision reference with torch's rules: ties to the
// lowest index, NaN above every number.
#include <tessera/ops/reduce.hpp>

#include <algorithm>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Reduce : public ::testing::Test {};
TYPED_TEST_SUITE(Reduce, FloatConfigs, ConfigName);

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

template <class T>
Tensor<Host, T> host_from(const std::vector<float>& values, Shape shape) {
  Tensor<Host, T> t(shape);
  for (std::size_t i = 0; i < values.size(); ++i) t.raw()[i] = convert<T>(values[i]);
  return t;
}

// Values drawn from {0, 0.25, ..., (distinct-1)/4}: ties everywhere.
template <class T>
Tensor<Host, T> few_values(Shape shape, int distinct) {
  Tensor<Host, T> t(shape);
  std::uniform_int_distribution<int> dist(0, distinct - 1);
  for (auto& v : t.span()) v = convert<T>(0.25f * static_cast<float>(dist(rng())));
  return t;
}

// ---- references ------------------------------------------------------------------

// "a ranks before b": larger first, NaN above all numbers (index order is the
// caller's, via a stable sort / first-found scan).
bool greater_nan_first(double a, double b) {
  if (std::isnan(a)) return !std::isnan(b);
  if (std::isnan(b)) return false;
  return a > b;
}

std::vector<std::int64_t> ref_argmax(const std::vector<double>& x, std::int64_t n) {
  std::vector<std::int64_t> out;
  for (std::size_t base = 0; base < x.size(); base += at(n)) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < n; ++i)
      if (greater_nan_first(x[base + at(i)], x[base + at(best)])) best = i;
    out.push_back(best);
  }
  return out;
}

struct RefTopK {
  std::vector<double> values;
  std::vector<std::int64_t> indices;
};

RefTopK ref_topk(const std::vector<double>& x, std::int64_t n, std::int64_t k) {
  RefTopK r;
  const std::int64_t rows = n == 0 ? 0 : static_cast<std::int64_t>(x.size()) / n;
  for (std::int64_t row = 0; row < rows; ++row) {
    std::vector<std::int64_t> order(at(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
      return greater_nan_first(x[at(row * n + a)], x[at(row * n + b)]);
    });
    for (std::int64_t j = 0; j < k; ++j) {
      r.indices.push_back(order[at(j)]);
      r.values.push_back(x[at(row * n + order[at(j)])]);
    }
  }
  return r;
}

std::vector<std::int64_t> indices_of(const Tensor<Host, std::int64_t>& t) {
  return {t.raw(), t.raw() + t.numel()};
}

::testing::AssertionResult same_values(const std::vector<double>& got, const std::vector<double>& expected) {
  if (got.size() != expected.size()) return ::testing::AssertionFailure() << "size " << got.size() << " vs " << expected.size();
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == expected[i] || (std::isnan(got[i]) && std::isnan(expected[i])))) {
      return ::testing::AssertionFailure() << "value " << i << ": got " << got[i] << ", expected " << expected[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// Runs argmax and topk (for each k) on `x` (a device tensor or view) and
// checks both against the reference computed from `host` (the same elements).
template <class X, class H>
void check_against_reference(const X& x, const H& host, std::initializer_list<std::int64_t> ks) {
  const Shape shape = as_view(host).shape();
  const std::int64_t n = shape[-1];
  const auto data = to_doubles(host);
  Shape lead;
  for (int d = 0; d + 1 < shape.rank(); ++d) lead.push_back(shape[d]);
  if (n > 0) {
    const auto am = to<Host>(ops::argmax(x));
    EXPECT_EQ(am.shape(), lead) << shape;
    EXPECT_EQ(indices_of(am), ref_argmax(data, n)) << "argmax of " << shape;
  }
  for (std::int64_t k : ks) {
    if (k > n) continue;
    const auto [values, indices] = ops::topk(x, k);
    Shape out = lead;
    out.push_back(k);
    EXPECT_EQ(values.shape(), out);
    EXPECT_EQ(indices.shape(), out);
    const auto ref = ref_topk(data, n, k);
    EXPECT_EQ(indices_of(to<Host>(indices)), ref.indices) << "topk k=" << k << " of " << shape;
    EXPECT_TRUE(same_values(to_doubles(to<Host>(values)), ref.values)) << "topk k=" << k << " of " << shape;
  }
}

// ---- tests ---------------------------------------------------------------------

TYPED_TEST(Reduce, MatchesReferenceOnRanks1To4) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : {Shape{1}, Shape{17}, Shape{3, 33}, Shape{2, 5, 31}, Shape{2, 3, 4, 9}, Shape{2, 1037}}) {
    const auto h = random_tensor<T>(shape);
    const std::int64_t n = shape[-1];
    check_against_reference(to<D>(h), h, {0, 1, 2, 5, n / 2, n - 1, n});
  }
}

TYPED_TEST(Reduce, WorksOnStridedRows) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Rows of 37 read down the columns of a [37, 6] tensor (last-dim stride 6),
  // and a slice whose rows start at an offset.
  const auto h = random_tensor<T>({37, 6});
  const auto x = to<D>(h);
  check_against_reference(x.transpose(0, 1), h.transpose(0, 1), {0, 1, 4, 37});
  const auto h3 = random_tensor<T>({3, 4, 40});
  const auto x3 = to<D>(h3);
  check_against_reference(x3.slice(1, 1, 3).slice(2, 3, 38), h3.slice(1, 1, 3).slice(2, 3, 38), {1, 7, 35});
}

TYPED_TEST(Reduce, TiesGoToTheLowestIndex) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : {Shape{4, 7}, Shape{3, 300}, Shape{2, 1037}}) {
    for (int distinct : {1, 2, 4}) {
      const auto h = few_values<T>(shape, distinct);
      const std::int64_t n = shape[-1];
      check_against_reference(to<D>(h), h, {1, 3, n / 3, n});
    }
  }
  // Signed zeros are equal: the first one wins whichever sign it has.
  const auto z = host_from<T>({-0.0f, 0.0f, -0.0f, 0.0f, 0.0f, -0.0f, -1.0f, -0.0f}, {2, 4});
  const auto am = to<Host>(ops::argmax(to<D>(z)));
  EXPECT_EQ(am.at(0), 0);
  EXPECT_EQ(am.at(1), 0);
  const auto tk = ops::topk(to<D>(z), 3);
  EXPECT_EQ(indices_of(to<Host>(tk.indices)), (std::vector<std::int64_t>{0, 1, 2, 0, 1, 3}));
}

TYPED_TEST(Reduce, ManyEqualValuesAfterRounding) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Distinct floats in [1, 1.01) collapse to 2 bf16 values (1 and 1+2^-7)
  // and to a handful of f16 values: ties decided by index at every rank.
  const auto h = random_tensor<T>({5, 513}, 1.0, 1.01);
  check_against_reference(to<D>(h), h, {1, 2, 50, 256, 513});
}

TYPED_TEST(Reduce, NaNIsTheMaximum) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto h = host_from<T>({1.0f, kNaN, 3.0f, kNaN, 2.0f,          // first NaN at 1
                               kInf, 0.5f, kNaN, kInf, -kInf,         // NaN (at 2) beats +inf
                               kNaN, kInf, 2.0f, kNaN, kNaN,          // NaN at 0
                               -kInf, -kInf, -kInf, -kInf, -kInf,     // all -inf: index 0
                               -3.0f, kInf, -kInf, kInf, 7.0f},       // first +inf
                              {5, 5});
  const auto x = to<D>(h);
  EXPECT_EQ(indices_of(to<Host>(ops::argmax(x))), (std::vector<std::int64_t>{1, 2, 0, 0, 1}));
  const auto [values, indices] = ops::topk(x, 3);
  EXPECT_EQ(indices_of(to<Host>(indices)),
            (std::vector<std::int64_t>{1, 3, 2, 2, 0, 3, 0, 3, 4, 0, 1, 2, 1, 3, 4}));
  const auto v = to_doubles(to<Host>(values));
  EXPECT_TRUE(std::isnan(v[0]) && std::isnan(v[1]) && v[2] == 3.0);
  EXPECT_TRUE(std::isnan(v[3]) && std::isinf(v[4]) && std::isinf(v[5]));
  check_against_reference(x, h, {0, 1, 2, 4, 5});
  // A NaN deep in a long row (past the vectorised lanes) and in its tail.
  std::vector<float> row(2 * 1037, 0.5f);
  row[1000] = kNaN;
  row[1037 + 1036] = kNaN;
  row[1037 + 5] = 9.0f;
  const auto hl = host_from<T>(row, {2, 1037});
  EXPECT_EQ(indices_of(to<Host>(ops::argmax(to<D>(hl)))), (std::vector<std::int64_t>{1000, 1036}));
  check_against_reference(to<D>(hl), hl, {1, 2, 3});
  // The same through strided rows.
  check_against_reference(x.transpose(0, 1), h.transpose(0, 1), {1, 5});
}

TYPED_TEST(Reduce, VocabularySizedRows) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Rows as long as a 151936-entry vocabulary (long-row code paths): random
  // values (many ties once rounded to bf16/f16), a tied maximum in row 0 and
  // NaNs late in row 1 (the first one wins).
  constexpr std::int64_t n = 151936;
  auto h = random_tensor<T>({2, n});
  h.raw()[100000] = convert<T>(2.0f);
  h.raw()[140000] = convert<T>(2.0f);
  h.raw()[n + 150000] = convert<T>(kNaN);
  h.raw()[n + n - 1] = convert<T>(kNaN);
  const auto x = to<D>(h);
  EXPECT_EQ(indices_of(to<Host>(ops::argmax(x))), (std::vector<std::int64_t>{100000, 150000}));
  check_against_reference(x, h, {1, 2, 1000});  // k = 1 is an argmax on CUDA, k >= 2 a sort
}

TYPED_TEST(Reduce, KEdgeCasesAndErrors) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto x = to<D>(random_tensor<T>({3, 5}));
  for (std::int64_t k : {std::int64_t{6}, std::int64_t{-1}}) {
    try {
      (void)ops::topk(x, k);
      FAIL() << "expected a ValueError for k = " << k;
    } catch (const ValueError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("ops::topk"), std::string::npos) << what;
      EXPECT_NE(what.find("k = " + std::to_string(k)), std::string::npos) << what;
      EXPECT_NE(what.find("n = 5"), std::string::npos) << what;
    }
  }
  const auto none = ops::topk(x, 0);
  EXPECT_EQ(none.values.shape(), (Shape{3, 0}));
  EXPECT_EQ(none.indices.shape(), (Shape{3, 0}));
  // Empty rows: topk with k = 0 is fine; argmax has no answer.
  const auto empty = to<D>(random_tensor<T>({2, 0}));
  EXPECT_EQ(ops::topk(empty, 0).values.shape(), (Shape{2, 0}));
  try {
    (void)ops::argmax(empty);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("ops::argmax"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 0]"), std::string::npos) << e.what();
  }
  // No rows: empty results of the right shape.
  const auto no_rows = to<D>(random_tensor<T>({0, 4}));
  EXPECT_EQ(ops::argmax(no_rows).shape(), (Shape{0}));
  EXPECT_EQ(ops::topk(no_rows, 2).indices.shape(), (Shape{0, 2}));
  // A vector gives a rank-0 argmax.
  const auto h = host_from<T>({0.0f, 2.0f, 1.0f}, {3});
  const auto am = to<Host>(ops::argmax(to<D>(h)));
  EXPECT_EQ(am.rank(), 0);
  EXPECT_EQ(am.raw()[0], 1);
  // Scalars are rejected.
  const auto scalar = to<D>(random_tensor<T>(Shape{}));
  EXPECT_THROW((void)ops::argmax(scalar), ShapeError);
  EXPECT_THROW((void)ops::topk(scalar, 0), ShapeError);
}

}  // namespace
}  // namespace tessera::testing
