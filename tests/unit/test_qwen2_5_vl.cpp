// Tests of models/qwen2_5_vl.hpp: get_rope_index and the M-RoPE tables
// against hand-worked positions and the 1-D tables; the golden tests of the
// whole model against transformers are in test_qwen2_5_vl_golden.cpp.
#include <tessera/models/qwen2_5_vl.hpp>

#include <array>
#include <cstdint>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

namespace vl = models::qwen2_5_vl;
using Ids = std::vector<std::int64_t>;
using Grids = std::vector<vl::GridTHW>;

constexpr std::int64_t kImage = 151655, kVideo = 151656, kStart = 151652, kEnd = 151653;

Ids repeated(std::int64_t id, std::int64_t n) { return Ids(static_cast<std::size_t>(n), id); }

Ids joined(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Positions [3, S] as three rows.
std::array<Ids, 3> rows(const vl::RopeIndex& index) {
  const std::int64_t s = index.positions.dim(1);
  std::array<Ids, 3> out;
  for (std::int64_t a = 0; a < 3; ++a) {
    out[static_cast<std::size_t>(a)].assign(index.positions.raw() + a * s, index.positions.raw() + (a + 1) * s);
  }
  return out;
}

vl::RopeIndex rope_index(const Ids& ids, const Grids& images, const Grids& videos = {},
                         const std::vector<double>& seconds = {}) {
  return vl::get_rope_index(ids, images, videos, seconds, vl::VisionTokens{}, 2, 2.0);
}

TEST(Qwen2_5_VLRopeIndex, TextOnlyIsOneDimensional) {
  const auto index = rope_index({5, 6, 7, 8}, {});
  for (const auto& row : rows(index)) EXPECT_EQ(row, (Ids{0, 1, 2, 3}));
  EXPECT_EQ(index.rope_delta, 0);
}

TEST(Qwen2_5_VLRopeIndex, ImageTakesItsGridAndTextContinuesAfterItsLargestPosition) {
  // Image grid (1, 4, 6) in patches = 2 x 3 merged tokens.
  const Ids ids = joined({{10, 11, kStart}, repeated(kImage, 6), {kEnd, 12}});
  const auto r = rows(rope_index(ids, {{1, 4, 6}}));
  // Text 0..2; image at start 3: t = 3, h = 3 + row, w = 3 + col; then 3 + max(0, 1, 2) + 1 = 6.
  EXPECT_EQ(r[0], (Ids{0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7}));
  EXPECT_EQ(r[1], (Ids{0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7}));
  EXPECT_EQ(r[2], (Ids{0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7}));
  EXPECT_EQ(rope_index(ids, {{1, 4, 6}}).rope_delta, 8 - 11);
}

TEST(Qwen2_5_VLRopeIndex, AdjacentImagesEachTakeTheirOwnGrid) {
  const Ids ids = joined({{kStart}, repeated(kImage, 4), repeated(kImage, 1), {kEnd}});
  const auto r = rows(rope_index(ids, {{1, 4, 4}, {1, 2, 2}}));
  EXPECT_EQ(r[1], (Ids{0, 1, 1, 2, 2, 3, 4}));
  EXPECT_EQ(r[2], (Ids{0, 1, 2, 1, 2, 3, 4}));
  EXPECT_EQ(r[0], (Ids{0, 1, 1, 1, 1, 3, 4}));
}

TEST(Qwen2_5_VLRopeIndex, VideoTemporalStepIsFloatingPoint) {
  // fps 3: second_per_grid_t = 2/3, step = 2 * 2/3 = 1.333 (float32):
  // t = long(0), long(1.333), long(2.667) = 0, 1, 2 (PR #48669; 4.5x
  // truncated 2/3 to 0 first and gave 0, 0, 0).
  const Ids ids = joined({{kStart}, repeated(kVideo, 3 * 1 * 2), {kEnd}});
  const auto index = rope_index(ids, {}, {{3, 2, 4}}, {2.0 / 3.0});
  const auto r = rows(index);
  EXPECT_EQ(r[0], (Ids{0, 1, 1, 2, 2, 3, 3, 4}));
  EXPECT_EQ(r[1], (Ids{0, 1, 1, 1, 1, 1, 1, 4}));
  EXPECT_EQ(r[2], (Ids{0, 1, 2, 1, 2, 1, 2, 4}));
  EXPECT_EQ(index.rope_delta, 5 - 8);
}

TEST(Qwen2_5_VLRopeIndex, TextAfterAVideoStartsPastItsLastTemporalPosition) {
  // fps 1: second_per_grid_t = 2, step 4: t = 1, 5, 9; the next text token
  // gets 10 (original Qwen code / vLLM), not 1 + max(h, w) / 2 = 2 (5.x).
  const Ids ids = joined({{kStart}, repeated(kVideo, 3), {kEnd}});
  const auto r = rows(rope_index(ids, {}, {{3, 2, 2}}, {2.0}));
  EXPECT_EQ(r[0], (Ids{0, 1, 5, 9, 10}));
  EXPECT_EQ(r[1], (Ids{0, 1, 1, 1, 10}));
}

TEST(Qwen2_5_VLRopeIndex, MismatchedPlaceholdersAreValueErrorsNamingTheItem) {
  const Ids three = joined({{kStart}, repeated(kImage, 3), {kEnd}});
  expect_error<ValueError>([&] { rope_index(three, {{1, 4, 4}}); },
                           {"image 0", "needs 4 placeholder tokens", "run of 3"});
  expect_error<ValueError>([&] { rope_index(three, {}); }, {"more image placeholder tokens", "token 1"});
  expect_error<ValueError>([&] { rope_index({1, 2}, {{1, 2, 2}}); }, {"1 image(s)", "cover only 0"});
  expect_error<ValueError>([&] { rope_index(three, {{1, 3, 4}}); }, {"grid (1, 3, 4)", "multiples of 2"});
  expect_error<ValueError>([&] { rope_index({kVideo}, {}, {{1, 2, 2}}, {}); }, {"1 video grids", "0 second_per_grid_ts"});
}

template <class D>
struct MropeTables : ::testing::Test {};
using Devices = ::testing::Types<Cpu<0>, Cuda<0>, Cuda<1>>;
TYPED_TEST_SUITE(MropeTables, Devices);

// Column j (and j + head_dim/2) of the M-RoPE tables is column j of the 1-D
// tables of the axis whose section holds j: t for j < 2, h for 2 <= j < 5,
// w for 5 <= j < 8 with mrope_section (2, 3, 3), head_dim 16.
TYPED_TEST(MropeTables, EachColumnComesFromItsSectionsAxis) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::int64_t seq = 5, head_dim = 16;
  Tensor<Host, std::int64_t> pos(Shape{3, seq});
  for (std::int64_t s = 0; s < seq; ++s) {
    pos.span()[static_cast<std::size_t>(s)] = 3 * s;
    pos.span()[static_cast<std::size_t>(seq + s)] = 100 + s;
    pos.span()[static_cast<std::size_t>(2 * seq + s)] = 7000 - 11 * s;
  }
  const std::vector<std::int64_t> section{2, 3, 3};
  const auto tables = vl::mrope_tables(to<D>(pos), head_dim, 1e6, section);
  const Tensor<Host, float> cos = to<Host>(tables.cos), sin = to<Host>(tables.sin);
  ASSERT_EQ(cos.shape(), (Shape{seq, head_dim}));
  std::array<ops::RopeTables<Host>, 3> axis;
  for (std::int64_t a = 0; a < 3; ++a) {
    axis[static_cast<std::size_t>(a)] = ops::rope_tables(pos.view().slice(0, a, a + 1).reshape({seq}), head_dim, 1e6);
  }
  for (std::int64_t s = 0; s < seq; ++s) {
    for (std::int64_t j = 0; j < head_dim; ++j) {
      const std::int64_t f = j % (head_dim / 2);
      const std::size_t a = f < 2 ? 0 : f < 5 ? 1 : 2;
      const auto at = static_cast<std::size_t>(s * head_dim + j);
      EXPECT_EQ(cos.span()[at], axis[a].cos.span()[at]) << "s " << s << " j " << j;
      EXPECT_EQ(sin.span()[at], axis[a].sin.span()[at]) << "s " << s << " j " << j;
    }
  }
}

TYPED_TEST(MropeTables, EqualAxesGiveTheOneDimensionalTables) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::int64_t seq = 4, head_dim = 32;
  Tensor<Host, std::int64_t> pos(Shape{3, seq}), flat(Shape{seq});
  for (std::int64_t a = 0; a < 3; ++a) {
    for (std::int64_t s = 0; s < seq; ++s) pos.span()[static_cast<std::size_t>(a * seq + s)] = 40 + s;
  }
  for (std::int64_t s = 0; s < seq; ++s) flat.span()[static_cast<std::size_t>(s)] = 40 + s;
  const std::vector<std::int64_t> section{4, 6, 6};
  const auto m = vl::mrope_tables(to<D>(pos), head_dim, 1e6, section);
  const auto one = ops::rope_tables(flat, head_dim, 1e6);
  EXPECT_TRUE(same_bits(to<Host>(m.cos), one.cos));
  EXPECT_TRUE(same_bits(to<Host>(m.sin), one.sin));
}

TEST(MropeTablesErrors, BadShapesAndSections) {
  Tensor<Host, std::int64_t> pos(Shape{2, 4});
  const std::vector<std::int64_t> section{4, 6, 6};
  expect_error<ShapeError>([&] { vl::mrope_tables(pos, 32, 1e6, section); }, {"[2, 4]", "[3, tokens]"});
  Tensor<Host, std::int64_t> ok = Tensor<Host, std::int64_t>::zeros(Shape{3, 4});
  const std::vector<std::int64_t> short_section{4, 6, 5};
  expect_error<ValueError>([&] { vl::mrope_tables(ok, 32, 1e6, short_section); }, {"sums to 15", "16"});
}

}  // namespace
}  // namespace tessera::testing
