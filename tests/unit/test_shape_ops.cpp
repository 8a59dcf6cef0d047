// Typed tests of ops/shape.hpp (concat, split, slice, transpose, permute)
// against naive index-arithmetic references. Shape ops move data without
// converting it, so every comparison is exact. Each body runs for the float
// configurations (FloatConfigs) and for integer ones (IntConfigs below).
#include <tessera/ops/shape.hpp>

#include <algorithm>
#include <array>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

using IntConfigs = ::testing::Types<Config<Cpu<0>, std::int64_t>, Config<Cpu<1>, std::int32_t>,
                                    Config<Cpu<0>, std::int32_t>, Config<Cuda<0>, std::int32_t>>;

// ---- inputs and references ---------------------------------------------------

template <class T>
Tensor<Host, T> make_input(Shape shape) {
  if constexpr (std::is_integral_v<T>) return random_ints<T>(shape, -100000, 100000);
  else return random_tensor<T>(shape, -4.0, 4.0);
}

std::vector<std::int64_t> unravel(std::int64_t linear, const Shape& shape) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(shape.rank()));
  for (int d = shape.rank() - 1; d >= 0; --d) {
    idx[static_cast<std::size_t>(d)] = linear % shape[d];
    linear /= shape[d];
  }
  return idx;
}

std::int64_t ravel(const std::vector<std::int64_t>& idx, const Shape& shape) {
  std::int64_t off = 0;
  for (int d = 0; d < shape.rank(); ++d) off = off * shape[d] + idx[static_cast<std::size_t>(d)];
  return off;
}

std::size_t at(std::int64_t i) { return static_cast<std::size_t>(i); }

struct Data {
  std::vector<double> values;
  Shape shape;
};

// Concatenation: each output element, located by its index along `axis`.
Data ref_concat(const std::vector<Data>& inputs, int axis) {
  Shape out = inputs[0].shape;
  std::int64_t total = 0;
  for (const auto& in : inputs) total += in.shape[axis];
  out[axis] = total;
  Data r{std::vector<double>(at(out.numel())), out};
  for (std::int64_t linear = 0; linear < out.numel(); ++linear) {
    auto idx = unravel(linear, out);
    std::int64_t pos = idx[static_cast<std::size_t>(axis)];
    std::size_t which = 0;
    while (pos >= inputs[which].shape[axis]) pos -= inputs[which++].shape[axis];
    idx[static_cast<std::size_t>(axis)] = pos;
    r.values[at(linear)] = inputs[which].values[at(ravel(idx, inputs[which].shape))];
  }
  return r;
}

Data ref_slice(const Data& x, int axis, std::int64_t start, std::int64_t stop) {
  Shape out = x.shape;
  out[axis] = stop - start;
  Data r{std::vector<double>(at(out.numel())), out};
  for (std::int64_t linear = 0; linear < out.numel(); ++linear) {
    auto idx = unravel(linear, out);
    idx[static_cast<std::size_t>(axis)] += start;
    r.values[at(linear)] = x.values[at(ravel(idx, x.shape))];
  }
  return r;
}

// out[i_0, ..., i_{r-1}] = x[j] with j[order[k]] = i_k.
Data ref_permute(const Data& x, const std::vector<int>& order) {
  Shape out;
  for (int a : order) out.push_back(x.shape[a]);
  Data r{std::vector<double>(at(out.numel())), out};
  for (std::int64_t linear = 0; linear < out.numel(); ++linear) {
    const auto idx = unravel(linear, out);
    std::vector<std::int64_t> src(idx.size());
    for (std::size_t k = 0; k < order.size(); ++k) src[static_cast<std::size_t>(order[k])] = idx[k];
    r.values[at(linear)] = x.values[at(ravel(src, x.shape))];
  }
  return r;
}

template <AnyTensor X>
Data data_of(const X& x) {
  return {to_doubles(x), as_view(x).shape()};
}

// Exact equality of shape and every element; reports the first difference.
template <AnyTensor X>
::testing::AssertionResult exactly(const X& actual, const Data& expected) {
  const auto host = to<Host>(actual);
  if (!(host.shape() == expected.shape)) {
    return ::testing::AssertionFailure() << "shape " << host.shape() << " != expected " << expected.shape;
  }
  const auto got = to_doubles(host);
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != expected.values[i]) {
      return ::testing::AssertionFailure() << "element " << i << " of " << expected.shape << ": got " << got[i]
                                           << ", expected " << expected.values[i];
    }
  }
  return ::testing::AssertionSuccess();
}

const std::vector<Shape> kBaseShapes = {Shape{7}, Shape{3, 5}, Shape{2, 3, 5}, Shape{2, 3, 1, 5}};

// ---- bodies (run for every configuration of both lists) -----------------------

template <class D, class T>
void concat_three_inputs_on_every_axis() {
  for (const Shape& base : kBaseShapes) {
    for (int axis = 0; axis < base.rank(); ++axis) {
      std::vector<Tensor<Host, T>> host;
      std::vector<Data> data;
      for (std::int64_t size : {1, 3, 2}) {
        Shape s = base;
        s[axis] = size;
        host.push_back(make_input<T>(s));
        data.push_back(data_of(host.back()));
      }
      const auto a = to<D>(host[0]), b = to<D>(host[1]), c = to<D>(host[2]);
      const Data expected = ref_concat(data, axis);
      const int negative = axis - base.rank();
      EXPECT_TRUE(exactly(ops::concat(axis, a, b, c), expected)) << base << " axis " << axis;
      EXPECT_TRUE(exactly(ops::concat(negative, a, b.view(), c), expected)) << base << " axis " << negative;
      const std::array<TensorView<D, const T>, 3> views{a.view(), b.view(), c.view()};
      EXPECT_TRUE(exactly(ops::concat(std::span<const TensorView<D, const T>>(views), axis), expected));
      EXPECT_TRUE(exactly(ops::concat({a.view(), b.view(), c.view()}, negative), expected));
      std::vector<Tensor<D, T>> owned;
      owned.push_back(to<D>(host[0]));
      owned.push_back(to<D>(host[1]));
      owned.push_back(to<D>(host[2]));
      EXPECT_TRUE(exactly(ops::concat(owned, axis), expected));
    }
  }
}

template <class D, class T>
void concat_strided_and_empty_inputs() {
  const auto hx = make_input<T>({5, 3});   // read transposed: [3, 5]
  const auto hy = make_input<T>({4, 9});   // sliced: [3, 5]
  const auto hz = make_input<T>({3, 0});   // empty along axis 1
  const auto x = to<D>(hx), y = to<D>(hy), z = to<D>(hz);
  const Data dx = data_of(hx.transpose(0, 1)), dy = data_of(hy.slice(0, 1, 4).slice(1, 2, 7));
  EXPECT_TRUE(exactly(ops::concat(0, x.transpose(0, 1), y.slice(0, 1, 4).slice(1, 2, 7)), ref_concat({dx, dy}, 0)));
  EXPECT_TRUE(exactly(ops::concat(-1, x.transpose(0, 1), z, y.slice(0, 1, 4).slice(1, 2, 7)),
                      ref_concat({dx, data_of(hz), dy}, 1)));
  // Large enough to take the tiled (transposing) copy, with ragged tiles.
  const auto hbig = make_input<T>({70, 45});
  const auto hsmall = make_input<T>({45, 3});
  EXPECT_TRUE(exactly(ops::concat(1, to<D>(hbig).transpose(0, 1), to<D>(hsmall)),
                      ref_concat({data_of(hbig.transpose(0, 1)), data_of(hsmall)}, 1)));
  // A single input is a copy; all-empty inputs give an empty result.
  EXPECT_TRUE(exactly(ops::concat(0, x), data_of(hx)));
  EXPECT_TRUE(exactly(ops::concat(1, z, z), Data{{}, Shape{3, 0}}));
}

template <class D, class T>
void split_returns_views_and_round_trips() {
  const auto hx = make_input<T>({4, 6, 5});
  const auto x = to<D>(hx);
  const Data dx = data_of(hx);
  struct Case {
    int axis;
    std::vector<std::int64_t> sizes;
  };
  for (const Case& c : {Case{1, {1, 0, 3, 2}}, Case{0, {4}}, Case{-1, {2, 2, 1}}, Case{-3, {1, 1, 1, 1}},
                        Case{2, {0, 5, 0}}}) {
    const auto parts = ops::split(x, c.axis, c.sizes);
    ASSERT_EQ(parts.size(), c.sizes.size());
    const int a = c.axis < 0 ? c.axis + 3 : c.axis;
    std::int64_t start = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      // A view into x (no copy) ...
      EXPECT_EQ(parts[i].device_ptr().get(), x.device_ptr().get() + start * x.strides()[static_cast<std::size_t>(a)]);
      EXPECT_EQ(parts[i].shape()[a], c.sizes[i]);
      // ... holding the right elements.
      EXPECT_TRUE(exactly(parts[i], ref_slice(dx, a, start, start + c.sizes[i]))) << "part " << i;
      start += c.sizes[i];
    }
    EXPECT_TRUE(exactly(ops::concat(parts, c.axis), dx)) << "axis " << c.axis;
  }
  // Splitting a view splits what it sees.
  const auto parts = ops::split(x.transpose(0, 2), 0, {3, 2});
  EXPECT_TRUE(exactly(parts[1], ref_slice(ref_permute(dx, {2, 1, 0}), 0, 3, 5)));
}

template <class D, class T>
void slice_matches_reference() {
  for (const Shape& base : kBaseShapes) {
    const auto hx = make_input<T>(base);
    const auto x = to<D>(hx);
    const Data dx = data_of(hx);
    for (int axis = 0; axis < base.rank(); ++axis) {
      const std::int64_t n = base[axis];
      EXPECT_TRUE(exactly(ops::slice(x, axis, 0, n), dx));
      EXPECT_TRUE(exactly(ops::slice(x, axis - base.rank(), n / 2, n), ref_slice(dx, axis, n / 2, n)));
      EXPECT_TRUE(exactly(ops::slice(x, axis, 1 % n, 1 % n), ref_slice(dx, axis, 1 % n, 1 % n)));
      // Negative bounds count from the end: [-2, n) on a dimension of size >= 2.
      if (n >= 2) {
        EXPECT_TRUE(exactly(ops::slice(x, axis, -2, n), ref_slice(dx, axis, n - 2, n)));
      }
      if (n >= 3) {
        EXPECT_TRUE(exactly(ops::slice(x, axis, 1, -1), ref_slice(dx, axis, 1, n - 1)));
      }
    }
  }
  // Slicing a transposed view materialises what the view shows.
  const auto hx = make_input<T>({6, 9});
  EXPECT_TRUE(exactly(ops::slice(to<D>(hx).transpose(0, 1), 1, 2, 5),
                      ref_slice(ref_permute(data_of(hx), {1, 0}), 1, 2, 5)));
}

template <class D, class T>
void transpose_matches_reference() {
  for (const Shape& base : {Shape{3, 5}, Shape{2, 3, 5}, Shape{2, 3, 4, 5}, Shape{37, 70}, Shape{3, 33, 65}}) {
    const auto hx = make_input<T>(base);
    const auto x = to<D>(hx);
    const Data dx = data_of(hx);
    for (int a = 0; a < base.rank(); ++a) {
      for (int b = 0; b < base.rank(); ++b) {
        std::vector<int> order(static_cast<std::size_t>(base.rank()));
        std::iota(order.begin(), order.end(), 0);
        std::swap(order[static_cast<std::size_t>(a)], order[static_cast<std::size_t>(b)]);
        const auto out = ops::transpose(x, a, b - base.rank());
        EXPECT_TRUE(exactly(out, ref_permute(dx, order))) << base << " transpose(" << a << ", " << b << ")";
      }
    }
  }
}

template <class D, class T>
void permute_matches_naive_index_mapping() {
  // Rank 4, all 24 orders, against an explicit four-loop index mapping.
  const Shape shape{2, 3, 5, 7};
  const auto hx = make_input<T>(shape);
  const auto x = to<D>(hx);
  const auto dx = to_doubles(hx);
  std::array<int, 4> order{0, 1, 2, 3};
  int count = 0;
  do {
    const auto out = to<Host>(ops::permute(x, {order[0], order[1], order[2], order[3]}));
    Shape expect_shape{shape[order[0]], shape[order[1]], shape[order[2]], shape[order[3]]};
    ASSERT_EQ(out.shape(), expect_shape);
    const auto got = to_doubles(out);
    std::array<std::int64_t, 4> i{};
    std::size_t mismatches = 0;
    for (i[0] = 0; i[0] < 2; ++i[0])
      for (i[1] = 0; i[1] < 3; ++i[1])
        for (i[2] = 0; i[2] < 5; ++i[2])
          for (i[3] = 0; i[3] < 7; ++i[3]) {
            const std::int64_t src = ((i[0] * 3 + i[1]) * 5 + i[2]) * 7 + i[3];
            const auto o = [&](int k) { return i[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])]; };
            const std::int64_t dst = ((o(0) * expect_shape[1] + o(1)) * expect_shape[2] + o(2)) * expect_shape[3] + o(3);
            if (got[at(dst)] != dx[at(src)]) ++mismatches;
          }
    EXPECT_EQ(mismatches, 0u) << "order " << order[0] << order[1] << order[2] << order[3];
    // The same order spelt with negative axes.
    const std::array<int, 4> neg{order[0] - 4, order[1] - 4, order[2] - 4, order[3] - 4};
    EXPECT_TRUE(exactly(ops::permute(x, std::span<const int>(neg)), Data{got, expect_shape}));
    ++count;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(count, 24);
  // Ranks 1..3, and a permute of a strided view.
  const auto h1 = make_input<T>({9});
  EXPECT_TRUE(exactly(ops::permute(to<D>(h1), {0}), data_of(h1)));
  const auto h3 = make_input<T>({4, 5, 6});
  EXPECT_TRUE(exactly(ops::permute(to<D>(h3), {2, 0, 1}), ref_permute(data_of(h3), {2, 0, 1})));
  EXPECT_TRUE(exactly(ops::permute(to<D>(h3).slice(1, 1, 4), {1, 2, 0}),
                      ref_permute(data_of(h3.slice(1, 1, 4)), {1, 2, 0})));
}

template <class D, class T>
void errors_name_the_op_and_the_shapes() {
  const auto a = to<D>(make_input<T>({2, 3}));
  const auto b = to<D>(make_input<T>({4, 3}));
  const auto c = to<D>(make_input<T>({2, 4}));
  const auto r3 = to<D>(make_input<T>({2, 3, 1}));
  expect_error<ShapeError>([&] { (void)ops::concat(1, a, a, b); },
                           {"ops::concat", "input 2", "[4, 3]", "[2, 3]", "dimension 0"});
  expect_error<ShapeError>([&] { (void)ops::concat(0, a, c); }, {"ops::concat", "input 1", "[2, 4]", "[2, 3]"});
  expect_error<ShapeError>([&] { (void)ops::concat(0, a, r3); }, {"ops::concat", "input 1", "rank"});
  expect_error<ShapeError>([&] { (void)ops::concat(2, a, a); }, {"ops::concat", "axis 2", "[2, 3]"});
  expect_error<ShapeError>([&] { (void)ops::concat(-3, a, a); }, {"ops::concat", "axis -3"});
  expect_error<ShapeError>([&] { (void)ops::concat(std::vector<Tensor<D, T>>{}, 0); },
                           {"ops::concat", "at least one"});
  expect_error<ShapeError>([&] { (void)ops::split(a, 1, {1, 1}); },
                           {"ops::split", "[1, 1]", "sum to 2", "dimension 1", "[2, 3]", "size 3"});
  expect_error<ShapeError>([&] { (void)ops::split(a, 0, {3, -1}); }, {"ops::split", "-1", "negative"});
  expect_error<ShapeError>([&] { (void)ops::split(a, 5, {2}); }, {"ops::split", "axis 5"});
  expect_error<ShapeError>([&] { (void)ops::slice(a, 1, 2, 4); }, {"ops::slice", "[2, 4)", "size 3", "[2, 3]"});
  expect_error<ShapeError>([&] { (void)ops::slice(a, 0, 2, 1); }, {"ops::slice", "[2, 1)"});
  expect_error<ShapeError>([&] { (void)ops::slice(a, -3, 0, 1); }, {"ops::slice", "axis -3"});
  expect_error<ShapeError>([&] { (void)ops::transpose(a, 0, 2); }, {"ops::transpose", "axis 2", "[2, 3]"});
  expect_error<ShapeError>([&] { (void)ops::permute(r3, {0, 1}); }, {"ops::permute", "[0, 1]", "rank 3"});
  expect_error<ShapeError>([&] { (void)ops::permute(r3, {0, 1, -3}); }, {"ops::permute", "axis 0", "twice"});
  expect_error<ShapeError>([&] { (void)ops::permute(r3, {0, 1, 3}); }, {"ops::permute", "3", "out of range"});
}

// ---- the two typed suites ------------------------------------------------------

template <class C>
class ShapeOps : public ::testing::Test {};
TYPED_TEST_SUITE(ShapeOps, FloatConfigs, ConfigName);
template <class C>
class ShapeOpsInt : public ::testing::Test {};
TYPED_TEST_SUITE(ShapeOpsInt, IntConfigs, ConfigName);

// copy_into writes a (strided) source into a (strided) region of an existing
// tensor, leaving every other element as it was: the KV-cache append.
template <class D, class T>
void copy_into_writes_only_the_region() {
  const auto hdst = make_input<T>({6, 5});
  auto dst = to<D>(hdst);
  auto expected = contiguous(hdst);
  // Rows 3..4 from a transposed source; then column 2 from a [6, 1] source.
  const auto hrows = make_input<T>({5, 2});
  ops::copy_into(dst.view().slice(0, 3, 5), to<D>(hrows).view().transpose(0, 1));
  const auto hcol = make_input<T>({6, 1});
  ops::copy_into(dst.view().slice(1, 2, 3), to<D>(hcol));
  for (std::int64_t r = 3; r < 5; ++r)
    for (std::int64_t c = 0; c < 5; ++c) expected.at(r, c) = hrows.at(c, r - 3);
  for (std::int64_t r = 0; r < 6; ++r) expected.at(r, 2) = hcol.at(r, 0);
  EXPECT_TRUE(same_bits(to<Host>(dst), expected));
  expect_shape_error([&] { ops::copy_into(dst.view().slice(0, 0, 2), to<D>(hcol)); },
                     {"ops::copy_into", "[2, 5]", "[6, 1]"});
}

#define TESSERA_SHAPE_TEST(Name, body)                                 \
  TYPED_TEST(ShapeOps, Name) {                                         \
    TESSERA_SKIP_UNLESS_AVAILABLE(typename TypeParam::device);         \
    body<typename TypeParam::device, typename TypeParam::dtype>();     \
  }                                                                    \
  TYPED_TEST(ShapeOpsInt, Name) {                                      \
    TESSERA_SKIP_UNLESS_AVAILABLE(typename TypeParam::device);         \
    body<typename TypeParam::device, typename TypeParam::dtype>();     \
  }

TESSERA_SHAPE_TEST(ConcatThreeInputsOnEveryAxis, concat_three_inputs_on_every_axis)
TESSERA_SHAPE_TEST(ConcatStridedAndEmptyInputs, concat_strided_and_empty_inputs)
TESSERA_SHAPE_TEST(SplitReturnsViewsAndRoundTrips, split_returns_views_and_round_trips)
TESSERA_SHAPE_TEST(SliceMatchesReference, slice_matches_reference)
TESSERA_SHAPE_TEST(TransposeMatchesReference, transpose_matches_reference)
TESSERA_SHAPE_TEST(PermuteRank4MatchesNaiveIndexMapping, permute_matches_naive_index_mapping)
TESSERA_SHAPE_TEST(ErrorsNameTheOpAndTheShapes, errors_name_the_op_and_the_shapes)
TESSERA_SHAPE_TEST(CopyIntoWritesOnlyTheRegion, copy_into_writes_only_the_region)

// ---- host-only checks -----------------------------------------------------------

// Splitting a temporary would return dangling views: it must not compile.
template <class X>
concept CanSplit = requires(X&& x) { ops::split(std::forward<X>(x), 0, std::span<const std::int64_t>{}); };
static_assert(CanSplit<Tensor<Host, float>&>);
static_assert(CanSplit<const Tensor<Host, float>&>);
static_assert(CanSplit<TensorView<Host, const float>>);
static_assert(!CanSplit<Tensor<Host, float>>);

TEST(ShapeOpsHost, MovesBitsNotValues) {
  // NaN payloads, -0.0 and the bf16 / f16 bit patterns survive every op.
  const std::vector<std::uint16_t> bits = {0x7fc1, 0x8000, 0x0001, 0xff80, 0x7f80, 0x3f80};
  Tensor<Host, bf16> x({2, 3});
  for (std::size_t i = 0; i < bits.size(); ++i) x.raw()[i] = bf16::from_bits(bits[i]);
  const auto y = ops::transpose(ops::concat(0, x, x), 0, 1);  // [3, 4]
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 4; ++j) EXPECT_EQ(y.at(i, j).bits, x.at(j % 2, i).bits);
  const auto s = ops::slice(x, 1, 0, 1);
  EXPECT_EQ(s.at(0, 0).bits, 0x7fc1);
  EXPECT_EQ(s.at(1, 0).bits, 0xff80);
}

TEST(ShapeOpsHost, ContiguousIsReachableAsOps) {
  const auto x = Tensor<Host, std::int64_t>::from({1, 2, 3, 4, 5, 6}, {2, 3});
  const auto t = ops::contiguous(x.transpose(0, 1));
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.at(2, 1), 6);
  EXPECT_EQ(t.at(2, 0), 3);
}

}  // namespace
}  // namespace tessera::testing
