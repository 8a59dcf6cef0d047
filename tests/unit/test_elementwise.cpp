// Typed tests of ops/elementwise.hpp against a double-precision reference.
#include <tessera/ops/elementwise.hpp>

#include <cstring>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Elementwise : public ::testing::Test {};
TYPED_TEST_SUITE(Elementwise, FloatConfigs, ConfigName);

// Reference: out[i] = f(a[ia], b[ib]) with numpy broadcasting, in double.
template <class F>
std::vector<double> broadcast_reference(const std::vector<double>& a, const Shape& sa, const std::vector<double>& b,
                                        const Shape& sb, const Shape& out, F f) {
  std::vector<double> result(static_cast<std::size_t>(out.numel()));
  std::vector<std::int64_t> idx(static_cast<std::size_t>(out.rank()));
  for (std::int64_t linear = 0; linear < out.numel(); ++linear) {
    std::int64_t rem = linear;
    for (int d = out.rank() - 1; d >= 0; --d) {
      idx[static_cast<std::size_t>(d)] = rem % out[d];
      rem /= out[d];
    }
    auto offset = [&](const Shape& s) {
      std::int64_t off = 0;
      for (int d = 0; d < s.rank(); ++d) {
        const std::int64_t i = s[d] == 1 ? 0 : idx[static_cast<std::size_t>(d + out.rank() - s.rank())];
        off = off * s[d] + i;
      }
      return off;
    };
    result[static_cast<std::size_t>(linear)] = f(a[static_cast<std::size_t>(offset(sa))], b[static_cast<std::size_t>(offset(sb))]);
  }
  return result;
}

struct BinaryCase {
  Shape a, b, out;
};

const std::vector<BinaryCase> kBinaryCases = {
    {{7}, {7}, {7}},
    {{3, 5}, {3, 5}, {3, 5}},
    {{3, 5}, {5}, {3, 5}},
    {{2, 1, 9}, {4, 1}, {2, 4, 9}},
    {{1}, {13, 3}, {13, 3}},
    {{2, 3, 4, 5}, {2, 3, 4, 5}, {2, 3, 4, 5}},
};

TYPED_TEST(Elementwise, AddSubMulMatchReferenceWithBroadcasting) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const auto& c : kBinaryCases) {
    const auto ha = random_tensor<T>(c.a);
    const auto hb = random_tensor<T>(c.b);
    const auto a = to<D>(ha);
    const auto b = to<D>(hb);
    const auto da = to_doubles(ha), db = to_doubles(hb);
    const auto sum = to<Host>(ops::add(a, b));
    const auto diff = to<Host>(ops::sub(a, b));
    const auto prod = to<Host>(ops::mul(a, b));
    ASSERT_EQ(sum.shape(), c.out);
    EXPECT_TRUE(all_close<T>(to_doubles(sum), broadcast_reference(da, c.a, db, c.b, c.out, std::plus<>{})))
        << "add " << c.a << " + " << c.b;
    EXPECT_TRUE(all_close<T>(to_doubles(diff), broadcast_reference(da, c.a, db, c.b, c.out, std::minus<>{})))
        << "sub " << c.a << " - " << c.b;
    EXPECT_TRUE(all_close<T>(to_doubles(prod), broadcast_reference(da, c.a, db, c.b, c.out, std::multiplies<>{})))
        << "mul " << c.a << " * " << c.b;
  }
}

TYPED_TEST(Elementwise, WorksOnStridedViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto ha = random_tensor<T>({5, 7});
  const auto hb = random_tensor<T>({7, 5});
  const auto a = to<D>(ha);
  const auto b = to<D>(hb);
  const auto out = to<Host>(ops::add(a, b.transpose(0, 1)));
  const auto expected = broadcast_reference(to_doubles(ha), {5, 7}, to_doubles(hb.transpose(0, 1)), {5, 7}, {5, 7},
                                            std::plus<>{});
  EXPECT_TRUE(all_close<T>(to_doubles(out), expected));
}

TYPED_TEST(Elementwise, ScaleAndResidualAdd) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& shape : {Shape{1}, Shape{17}, Shape{3, 33}, Shape{2, 5, 31}}) {
    const auto hx = random_tensor<T>(shape);
    const auto hr = random_tensor<T>(shape);
    const auto dx = to_doubles(hx), dr = to_doubles(hr);
    const auto scaled = to<Host>(ops::scale(to<D>(hx), -0.37f));
    std::vector<double> expect_scaled(dx.size()), expect_sum(dx.size());
    for (std::size_t i = 0; i < dx.size(); ++i) {
      expect_scaled[i] = dx[i] * static_cast<double>(-0.37f);
      expect_sum[i] = dx[i] + dr[i];
    }
    EXPECT_TRUE(all_close<T>(to_doubles(scaled), expect_scaled)) << shape;
    auto hidden = to<D>(hx);
    ops::residual_add(hidden, to<D>(hr));
    EXPECT_TRUE(all_close<T>(to_doubles(to<Host>(hidden)), expect_sum)) << shape;
  }
}

TYPED_TEST(Elementwise, ShapeErrorsNameTheOpAndShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto a = to<D>(random_tensor<T>({3, 4}));
  const auto b = to<D>(random_tensor<T>({5}));
  try {
    (void)ops::add(a, b);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("ops::add"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 4]"), std::string::npos) << e.what();
  }
  auto hidden = to<D>(random_tensor<T>({3, 4}));
  EXPECT_THROW(ops::residual_add(hidden, to<D>(random_tensor<T>({4, 3}))), ShapeError);
}

// Every device converts exactly as the host does (tessera::convert), bit for
// bit, into each of the five element types and back: contiguous inputs, an
// input one element off its allocation's alignment, and a transposed view.
template <class U, class D, class Src>
void expect_cast_matches_host(const Src& host_view, const TensorView<D, const element_of<Src>>& device_view) {
  const auto expected = ops::cast<U>(host_view);
  const auto actual = to<Host>(ops::cast<U>(device_view));
  ASSERT_EQ(actual.shape(), expected.shape());
  EXPECT_EQ(std::memcmp(actual.raw(), expected.raw(), expected.bytes()), 0)
      << dtype_name<element_of<Src>>() << " -> " << dtype_name<U>() << " of " << host_view.shape();
}

template <class D, class From>
void expect_casts_match_host(const Tensor<Host, From>& host) {
  const auto device = to<D>(host);
  const auto flat_host = host.view().reshape({-1});
  const auto flat_device = device.view().reshape({-1});
  const std::int64_t n = flat_host.numel();
  const auto check_all = [&](const auto& h, const auto& d) {
    expect_cast_matches_host<float>(h, d);
    expect_cast_matches_host<bf16>(h, d);
    expect_cast_matches_host<f16>(h, d);
    expect_cast_matches_host<std::int32_t>(h, d);
    expect_cast_matches_host<std::int64_t>(h, d);
  };
  check_all(host.view(), device.view());
  check_all(flat_host.slice(0, 1, n), flat_device.slice(0, 1, n));
  check_all(host.view().transpose(0, 1), device.view().transpose(0, 1));
}

TYPED_TEST(Elementwise, CastMatchesTheHostBitForBit) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Magnitudes up to 300 fit every type, so no conversion is out of range.
  const auto hx = random_tensor<T>({9, 23}, -300.0, 300.0);
  expect_casts_match_host<D>(hx);
  expect_casts_match_host<D>(ops::cast<std::int32_t>(hx));
  expect_casts_match_host<D>(ops::cast<std::int64_t>(hx));
}

TEST(Cast, RoundsToNearestEvenAndTruncatesToIntegers) {
  const auto x = Tensor<Host, float>::from({1.0f, 1.00390625f, 1.01171875f, -2.7f, 65520.0f}, {5});
  const auto as_bf16 = ops::cast<bf16>(x);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(as_bf16.at(1).bits, bf16(1.0f).bits);
  // 1 + 3*2^-8 is halfway between 1+2^-7 and 1+2^-6: ties to even (1+2^-6).
  EXPECT_EQ(static_cast<float>(as_bf16.at(2)), 1.015625f);
  const auto as_f16 = ops::cast<f16>(x);
  EXPECT_TRUE(std::isinf(static_cast<float>(as_f16.at(4))));  // 65520 rounds past f16's max
  const auto as_int = ops::cast<std::int32_t>(x);
  EXPECT_EQ(as_int.at(3), -2);
  const auto back = ops::cast<float>(ops::cast<f16>(x.slice(0, 0, 3)));
  EXPECT_EQ(back.at(0), 1.0f);
}

}  // namespace
}  // namespace tessera::testing
