// Typed tests of ops/rope.hpp (rope_tables, apply_rope) against a
// double-precision reference, plus the relative-position property of RoPE.
#include <tessera/ops/elementwise.hpp>
#include <tessera/ops/rope.hpp>

#include <array>
#include <cstring>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Rope : public ::testing::Test {};
TYPED_TEST_SUITE(Rope, FloatConfigs, ConfigName);

// cos/sin in double of the exact angles position * theta^(-2i/rot).
struct RefTables {
  std::vector<double> cos, sin;
};
RefTables reference_tables(const std::vector<std::int64_t>& positions, std::int64_t rot, double theta) {
  RefTables t;
  const auto half = static_cast<std::size_t>(rot / 2);
  for (std::int64_t p : positions) {
    for (int rep = 0; rep < 2; ++rep) {
      for (std::size_t i = 0; i < half; ++i) {
        const double angle =
            static_cast<double>(p) * std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rot));
        t.cos.push_back(std::cos(angle));
        t.sin.push_back(std::sin(angle));
      }
    }
  }
  return t;
}

// Absolute error bound of the float32 recipe: the angle p * inv_freq carries
// a relative error of about (ln(theta) + 3) * 2^-24 (the rounded exponent
// 2i/rot amplified by ln(theta), then the rounded pow, division and product),
// so |cos error| <= |p| * (ln(theta) + 3) * 2^-24 plus the final rounding.
double table_tolerance(const std::vector<std::int64_t>& positions, double theta) {
  double max_pos = 0.0;
  for (std::int64_t p : positions) max_pos = std::max(max_pos, std::abs(static_cast<double>(p)));
  return max_pos * (std::log(theta) + 3.0) * std::ldexp(1.0, -24) + 2e-7;
}

// out = x*cos + rotate_half(x)*sin on the first rot dims, in double.
std::vector<double> rope_reference(const std::vector<double>& x, std::int64_t seq, std::int64_t heads, std::int64_t dh,
                                   const std::vector<double>& cos, const std::vector<double>& sin, std::int64_t rot) {
  std::vector<double> out(x.size());
  const std::int64_t half = rot / 2;
  for (std::int64_t s = 0; s < seq; ++s) {
    for (std::int64_t h = 0; h < heads; ++h) {
      const auto base = static_cast<std::size_t>((s * heads + h) * dh);
      for (std::int64_t i = 0; i < dh; ++i) {
        const auto ui = static_cast<std::size_t>(i);
        const auto t = static_cast<std::size_t>(s * rot + i);
        if (i < half) {
          out[base + ui] = x[base + ui] * cos[t] - x[base + ui + static_cast<std::size_t>(half)] * sin[t];
        } else if (i < rot) {
          out[base + ui] = x[base + ui] * cos[t] + x[base + ui - static_cast<std::size_t>(half)] * sin[t];
        } else {
          out[base + ui] = x[base + ui];
        }
      }
    }
  }
  return out;
}

template <class T>
std::uint32_t bits_of(T v) {
  std::uint32_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

template <class I>
Tensor<Host, I> positions_tensor(const std::vector<std::int64_t>& p) {
  Tensor<Host, I> t({static_cast<std::int64_t>(p.size())});
  for (std::size_t i = 0; i < p.size(); ++i) t.raw()[i] = static_cast<I>(p[i]);
  return t;
}

std::vector<std::int64_t> range_positions(std::int64_t n, std::int64_t start = 0) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = start + i;
  return p;
}

TYPED_TEST(Rope, TablesMatchDoubleReference) {
  using D = typename TypeParam::device;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<std::vector<std::int64_t>> position_sets = {
      {0, 1, 2, 5, 9}, {7}, {0, 100, 4095, 32767}, {131071, 3, 100000}};
  for (const auto& positions : position_sets) {
    for (double theta : {10000.0, 1000000.0}) {
      for (std::int64_t rot : {2, 64, 80, 128}) {
        const auto pos32 = to<D>(positions_tensor<std::int32_t>(positions));
        const auto pos64 = to<D>(positions_tensor<std::int64_t>(positions));
        const auto t32 = ops::rope_tables(pos32, rot, theta);
        const auto t64 = ops::rope_tables(pos64, rot, theta);
        const auto cos = to<Host>(t32.cos), sin = to<Host>(t32.sin);
        ASSERT_EQ(cos.shape(), (Shape{static_cast<std::int64_t>(positions.size()), rot}));
        ASSERT_EQ(sin.shape(), cos.shape());
        const auto ref = reference_tables(positions, rot, theta);
        const double atol = table_tolerance(positions, theta);
        EXPECT_TRUE(all_close(to_doubles(cos), ref.cos, atol, 0.0)) << "theta " << theta << " rot " << rot;
        EXPECT_TRUE(all_close(to_doubles(sin), ref.sin, atol, 0.0)) << "theta " << theta << " rot " << rot;
        // int32 and int64 positions give the same tables, bit for bit.
        EXPECT_TRUE(all_close(to_doubles(to<Host>(t64.cos)), to_doubles(cos), 0.0, 0.0));
        EXPECT_TRUE(all_close(to_doubles(to<Host>(t64.sin)), to_doubles(sin), 0.0, 0.0));
        // emb = cat(freqs, freqs): both halves of every row are identical.
        for (std::int64_t s = 0; s < cos.dim(0); ++s) {
          for (std::int64_t i = 0; i < rot / 2; ++i) {
            ASSERT_EQ(cos.at(s, i), cos.at(s, i + rot / 2));
            ASSERT_EQ(sin.at(s, i), sin.at(s, i + rot / 2));
          }
        }
      }
    }
  }
}

TEST(RopeTables, ReproduceTheFloat32RecipeOfTransformers) {
  // inv_freq = 1 / theta^(float(2i)/rot) in float32, angle = float(p) * inv_freq
  // in float32: at large positions the angle (and so the table) differs from
  // the exact rotation, as in HF. Check against that recipe, written out here.
  const std::vector<std::int64_t> positions = {0, 1, 9, 4097, 100003, 1000001};
  const double theta = 1000000.0;
  for (std::int64_t rot : {80, 128}) {
    const auto tables = ops::rope_tables(positions_tensor<std::int64_t>(positions), rot, theta);
    double max_exact_diff = 0.0;
    for (std::size_t s = 0; s < positions.size(); ++s) {
      for (std::int64_t i = 0; i < rot / 2; ++i) {
        const float exponent = static_cast<float>(2 * i) / static_cast<float>(rot);
        const float inv_freq = 1.0f / static_cast<float>(std::pow(static_cast<double>(static_cast<float>(theta)),
                                                                  static_cast<double>(exponent)));
        const float angle = static_cast<float>(positions[s]) * inv_freq;
        const auto si = static_cast<std::int64_t>(s);
        EXPECT_NEAR(tables.cos.at(si, i), std::cos(static_cast<double>(angle)), 1e-7)
            << "p " << positions[s] << " i " << i;
        EXPECT_NEAR(tables.sin.at(si, i), std::sin(static_cast<double>(angle)), 1e-7)
            << "p " << positions[s] << " i " << i;
        const double exact = static_cast<double>(positions[s]) *
                             std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rot));
        max_exact_diff =
            std::max(max_exact_diff, std::abs(static_cast<double>(tables.cos.at(si, i)) - std::cos(exact)));
      }
    }
    // The float32 angle error at position 1e6 is visible (well above float eps).
    EXPECT_GT(max_exact_diff, 1e-3) << "rot " << rot;
  }
}

struct RopeCase {
  std::int64_t seq, heads, dh, rot;
  double theta;
};

const std::vector<RopeCase> kCases = {
    {5, 3, 8, 8, 10000.0},      {5, 1, 16, 8, 1000000.0}, {1, 7, 128, 128, 1000000.0},
    {5, 3, 64, 32, 10000.0},    {3, 2, 6, 2, 10000.0},    {5, 28, 128, 128, 1000000.0},
    {4, 5, 80, 80, 10000.0},
};

TYPED_TEST(Rope, ApplyRopeMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const auto& c : kCases) {
    // Non-contiguous positions when there are five tokens, else a run from 3.
    const auto positions = c.seq == 5 ? std::vector<std::int64_t>{0, 1, 2, 5, 9} : range_positions(c.seq, 3);
    const auto tables = ops::rope_tables(to<D>(positions_tensor<std::int64_t>(positions)), c.rot, c.theta);
    const auto hx = random_tensor<T>({c.seq, c.heads, c.dh}, -2.0, 2.0);
    const auto out = to<Host>(ops::apply_rope(to<D>(hx), tables.cos, tables.sin));
    ASSERT_EQ(out.shape(), hx.shape());
    const auto expected = rope_reference(to_doubles(hx), c.seq, c.heads, c.dh, to_doubles(to<Host>(tables.cos)),
                                         to_doubles(to<Host>(tables.sin)), c.rot);
    EXPECT_TRUE(all_close<T>(to_doubles(out), expected))
        << "S " << c.seq << " H " << c.heads << " Dh " << c.dh << " rot " << c.rot << " theta " << c.theta;
    // Dimensions past rot pass through bit for bit.
    for (std::int64_t s = 0; s < c.seq; ++s)
      for (std::int64_t h = 0; h < c.heads; ++h)
        for (std::int64_t i = c.rot; i < c.dh; ++i) ASSERT_EQ(bits_of(out.at(s, h, i)), bits_of(hx.at(s, h, i)));
  }
}

TYPED_TEST(Rope, ApplyRopeAcceptsStridedViewsAndTablesOfAnyFloatType) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // q and k as slices of a fused qkv [S, 3H, Dh] (row stride 3*H*Dh).
  const std::int64_t seq = 5, heads = 3, dh = 16, rot = 12;
  const auto hqkv = random_tensor<T>({seq, 3 * heads, dh}, -2.0, 2.0);
  const auto qkv = to<D>(hqkv);
  const auto tables = ops::rope_tables(to<D>(positions_tensor<std::int32_t>({0, 1, 2, 5, 9})), rot, 1000000.0);
  const auto dcos = to_doubles(to<Host>(tables.cos)), dsin = to_doubles(to<Host>(tables.sin));
  const auto k = to<Host>(ops::apply_rope(qkv.slice(1, heads, 2 * heads), tables.cos, tables.sin));
  EXPECT_TRUE(all_close<T>(to_doubles(k), rope_reference(to_doubles(hqkv.slice(1, heads, 2 * heads)), seq, heads, dh,
                                                         dcos, dsin, rot)));
  // A transposed x: [S, H, Dh] from an [H, S, Dh] tensor.
  const auto hx = random_tensor<T>({heads, seq, dh});
  const auto x = to<D>(hx);
  const auto xt = to<Host>(ops::apply_rope(x.transpose(0, 1), tables.cos, tables.sin));
  EXPECT_TRUE(
      all_close<T>(to_doubles(xt), rope_reference(to_doubles(hx.transpose(0, 1)), seq, heads, dh, dcos, dsin, rot)));
  // Tables cast to T (what HF feeds its bf16 path) and strided table views.
  const auto cos_t = ops::cast<T>(tables.cos);
  const auto sin_t = ops::cast<T>(tables.sin);
  const auto hq = random_tensor<T>({seq, heads, dh});
  const auto q_t = to<Host>(ops::apply_rope(to<D>(hq), cos_t, sin_t));
  EXPECT_TRUE(all_close<T>(to_doubles(q_t), rope_reference(to_doubles(hq), seq, heads, dh, to_doubles(to<Host>(cos_t)),
                                                           to_doubles(to<Host>(sin_t)), rot)));
  const auto wide = ops::rope_tables(to<D>(positions_tensor<std::int32_t>({0, 1, 2, 5, 9})), 2 * rot, 1000000.0);
  const auto narrow = to<Host>(ops::apply_rope(to<D>(hq), wide.cos.slice(1, 0, rot), wide.sin.slice(1, 0, rot)));
  EXPECT_TRUE(all_close<T>(to_doubles(narrow),
                           rope_reference(to_doubles(hq), seq, heads, dh, to_doubles(wide.cos.slice(1, 0, rot)),
                                          to_doubles(wide.sin.slice(1, 0, rot)), rot)));
}

// RoPE's defining property: <R(m) q, R(n) k> depends only on m - n.
TYPED_TEST(Rope, DotProductsDependOnlyOnRelativePosition) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (std::int64_t rot : {64, 32}) {  // full and partial rotation of Dh = 64
    const std::int64_t dh = 64, heads = 1;
    const auto hq = random_tensor<T>({1, heads, dh});
    const auto hk = random_tensor<T>({1, heads, dh});
    // Four tokens each holding the same q (and k) at different positions.
    const std::vector<std::int64_t> q_pos = {3, 10, 257, 1003}, k_pos = {0, 7, 254, 1000};  // q - k = 3
    Tensor<Host, T> qs({4, heads, dh}), ks({4, heads, dh});
    for (std::int64_t s = 0; s < 4; ++s) {
      std::memcpy(qs.raw() + s * dh, hq.raw(), hq.bytes());
      std::memcpy(ks.raw() + s * dh, hk.raw(), hk.bytes());
    }
    for (double theta : {10000.0, 1000000.0}) {
      const auto tq = ops::rope_tables(to<D>(positions_tensor<std::int64_t>(q_pos)), rot, theta);
      const auto tk = ops::rope_tables(to<D>(positions_tensor<std::int64_t>(k_pos)), rot, theta);
      const auto rq = to_doubles(to<Host>(ops::apply_rope(to<D>(qs), tq.cos, tq.sin)));
      const auto rk = to_doubles(to<Host>(ops::apply_rope(to<D>(ks), tk.cos, tk.sin)));
      std::vector<double> dots(4, 0.0);
      double norm = 0.0;
      const auto dq = to_doubles(hq), dk = to_doubles(hk);
      for (std::size_t i = 0; i < static_cast<std::size_t>(dh); ++i) norm += std::abs(dq[i] * dk[i]);
      for (std::size_t s = 0; s < 4; ++s)
        for (std::size_t i = 0; i < static_cast<std::size_t>(dh); ++i)
          dots[s] += rq[s * static_cast<std::size_t>(dh) + i] * rk[s * static_cast<std::size_t>(dh) + i];
      // Each rotated element carries one T rounding; float32 angles carry ~1e-4 rad at p = 1000.
      const double tol = norm * (std::is_same_v<T, float> ? 2e-4 : std::is_same_v<T, bf16> ? 2e-2 : 3e-3);
      for (std::size_t s = 1; s < 4; ++s) {
        EXPECT_NEAR(dots[s], dots[0], tol) << "q pos " << q_pos[s] << " k pos " << k_pos[s] << " rot " << rot
                                           << " theta " << theta;
      }
    }
  }
}

TYPED_TEST(Rope, ShapeErrorsNameTheOpAndShapes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto positions = to<D>(positions_tensor<std::int64_t>({0, 1, 2}));
  try {
    (void)ops::rope_tables(positions, 7, 10000.0);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::rope_tables"), std::string::npos) << what;
    EXPECT_NE(what.find("even"), std::string::npos) << what;
    EXPECT_NE(what.find("7"), std::string::npos) << what;
  }
  EXPECT_THROW((void)ops::rope_tables(positions, 0, 10000.0), ShapeError);
  EXPECT_THROW((void)ops::rope_tables(positions, 8, 0.0), ShapeError);
  EXPECT_THROW((void)ops::rope_tables(to<D>(random_ints<std::int64_t>({3, 1}, 0, 9)), 8, 10000.0), ShapeError);

  const auto x = to<D>(random_tensor<T>({3, 2, 8}));
  const auto tables = ops::rope_tables(positions, 8, 10000.0);
  // An odd rotary dimension in hand-made tables.
  const auto odd = to<D>(random_tensor<float>({3, 5}));
  try {
    (void)ops::apply_rope(x, odd, odd);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::apply_rope"), std::string::npos) << what;
    EXPECT_NE(what.find("even"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 5]"), std::string::npos) << what;
  }
  // rot > Dh.
  const auto big = ops::rope_tables(positions, 16, 10000.0);
  try {
    (void)ops::apply_rope(x, big.cos, big.sin);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("exceeds the head dimension"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 2, 8]"), std::string::npos) << what;
  }
  // Table rows != tokens, mismatched cos/sin, x of the wrong rank.
  const auto two = ops::rope_tables(to<D>(positions_tensor<std::int64_t>({0, 1})), 8, 10000.0);
  try {
    (void)ops::apply_rope(x, two.cos, two.sin);
    FAIL() << "expected a ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("[2, 8]"), std::string::npos) << what;
    EXPECT_NE(what.find("[3, 2, 8]"), std::string::npos) << what;
  }
  EXPECT_THROW((void)ops::apply_rope(x, tables.cos, two.sin), ShapeError);
  EXPECT_THROW((void)ops::apply_rope(to<D>(random_tensor<T>({3, 16})), tables.cos, tables.sin), ShapeError);
}

// Row and column tables side by side (the 2-D vision RoPE's layout): output
// columns [r0:2 | c0:2 | r2:4 | c2:4] from two 4-column tables.
TEST(ComposeRopeTables, PiecesOfEachAxisInBothHalves) {
  Tensor<Host, std::int64_t> rows(Shape{3}), cols(Shape{3});
  for (std::int64_t i = 0; i < 3; ++i) {
    rows.span()[static_cast<std::size_t>(i)] = i;
    cols.span()[static_cast<std::size_t>(i)] = 10 + 3 * i;
  }
  const std::array<ops::RopeTables<Host>, 2> axes{ops::rope_tables(rows, 4, 100.0), ops::rope_tables(cols, 4, 100.0)};
  const std::array<ops::RopeSection, 2> sections{{{0, 0, 2}, {1, 0, 2}}};
  const auto t = ops::compose_rope_tables<Host>(axes, sections);
  ASSERT_EQ(t.cos.shape(), (Shape{3, 8}));
  for (std::int64_t s = 0; s < 3; ++s) {
    for (std::int64_t j = 0; j < 8; ++j) {
      const std::size_t axis = (j / 2) % 2;
      const std::int64_t col = (j / 4) * 2 + j % 2;
      EXPECT_EQ(t.cos.at(s, j), axes[axis].cos.at(s, col)) << s << ", " << j;
      EXPECT_EQ(t.sin.at(s, j), axes[axis].sin.at(s, col)) << s << ", " << j;
    }
  }
  const std::array<ops::RopeSection, 1> bad{{{2, 0, 2}}};
  expect_error<ValueError>([&] { (void)ops::compose_rope_tables<Host>(axes, bad); }, {"axis 2", "2 position axes"});
}

}  // namespace
}  // namespace tessera::testing
