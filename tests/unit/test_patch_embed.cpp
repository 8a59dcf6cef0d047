// Typed tests of ops::patch_embed2d / patch_embed3d (ops/patch_embed.hpp)
// against a naive direct convolution (stride = kernel) in double.
#include <tessera/ops/patch_embed.hpp>

#include <cmath>
#include <string>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class PatchEmbed : public ::testing::Test {};
TYPED_TEST_SUITE(PatchEmbed, FloatConfigs, ConfigName);

// A patch embedding is a GEMM with K = C*kt*kh*kw, checked with
// gemm_tolerance (test_util.hpp).

// Sizes of a 3-D patch embedding; a 2-D one is the same with t = kt = 1.
struct ConvDims {
  std::int64_t b, c, t, h, w, o, kt, kh, kw;
};

// Direct convolution with stride = kernel, in double: input [B, C, T, H, W],
// weight [O, C, kt, kh, kw] -> [B, patches, O], patches in (t, h, w) order.
std::vector<double> reference_conv(const std::vector<double>& x, const std::vector<double>& w,
                                   const std::vector<double>* bias, const ConvDims& d) {
  const std::int64_t gt = d.t / d.kt, gh = d.h / d.kh, gw = d.w / d.kw;
  auto in = [&](std::int64_t b, std::int64_t c, std::int64_t t, std::int64_t y, std::int64_t z) {
    return x[static_cast<std::size_t>((((b * d.c + c) * d.t + t) * d.h + y) * d.w + z)];
  };
  auto wt = [&](std::int64_t o, std::int64_t c, std::int64_t t, std::int64_t y, std::int64_t z) {
    return w[static_cast<std::size_t>((((o * d.c + c) * d.kt + t) * d.kh + y) * d.kw + z)];
  };
  std::vector<double> out;
  for (std::int64_t b = 0; b < d.b; ++b) {
    for (std::int64_t pt = 0; pt < gt; ++pt) {
      for (std::int64_t ph = 0; ph < gh; ++ph) {
        for (std::int64_t pw = 0; pw < gw; ++pw) {
          for (std::int64_t o = 0; o < d.o; ++o) {
            double sum = bias ? (*bias)[static_cast<std::size_t>(o)] : 0.0;
            for (std::int64_t c = 0; c < d.c; ++c)
              for (std::int64_t i = 0; i < d.kt; ++i)
                for (std::int64_t j = 0; j < d.kh; ++j)
                  for (std::int64_t k = 0; k < d.kw; ++k)
                    sum += wt(o, c, i, j, k) * in(b, c, pt * d.kt + i, ph * d.kh + j, pw * d.kw + k);
            out.push_back(sum);
          }
        }
      }
    }
  }
  return out;
}

Shape expected_tokens(const ConvDims& d) { return {d.b, (d.t / d.kt) * (d.h / d.kh) * (d.w / d.kw), d.o}; }

template <class D, class T>
void expect_patch_embed2d(const ConvDims& d) {
  const auto hx = random_tensor<T>({d.b, d.c, d.h, d.w});
  const auto hw = random_tensor<T>({d.o, d.c, d.kh, d.kw});
  const auto hb = random_tensor<T>({d.o});
  const auto x = to<D>(hx);
  const auto w = to<D>(hw);
  const auto b = to<D>(hb);
  const auto plain = to<Host>(ops::patch_embed2d(x, w));
  const auto biased = to<Host>(ops::patch_embed2d(x, w, b));
  ASSERT_EQ(plain.shape(), expected_tokens(d));
  ASSERT_EQ(biased.shape(), expected_tokens(d));
  const auto dx = to_doubles(hx), dw = to_doubles(hw), db = to_doubles(hb);
  const std::int64_t k = d.c * d.kh * d.kw;
  EXPECT_TRUE(all_close<T>(to_doubles(plain), reference_conv(dx, dw, nullptr, d), gemm_tolerance<T>(k)))
      << hx.shape() << " * " << hw.shape();
  EXPECT_TRUE(all_close<T>(to_doubles(biased), reference_conv(dx, dw, &db, d), gemm_tolerance<T>(k + 1)))
      << hx.shape() << " * " << hw.shape() << " + bias";
}

template <class D, class T>
void expect_patch_embed3d(const ConvDims& d) {
  const auto hx = random_tensor<T>({d.b, d.c, d.t, d.h, d.w});
  const auto hw = random_tensor<T>({d.o, d.c, d.kt, d.kh, d.kw});
  const auto hb = random_tensor<T>({d.o});
  const auto x = to<D>(hx);
  const auto w = to<D>(hw);
  const auto b = to<D>(hb);
  const auto plain = to<Host>(ops::patch_embed3d(x, w));
  const auto biased = to<Host>(ops::patch_embed3d(x, w, b));
  ASSERT_EQ(plain.shape(), expected_tokens(d));
  ASSERT_EQ(biased.shape(), expected_tokens(d));
  const auto dx = to_doubles(hx), dw = to_doubles(hw), db = to_doubles(hb);
  const std::int64_t k = d.c * d.kt * d.kh * d.kw;
  EXPECT_TRUE(all_close<T>(to_doubles(plain), reference_conv(dx, dw, nullptr, d), gemm_tolerance<T>(k)))
      << hx.shape() << " * " << hw.shape();
  EXPECT_TRUE(all_close<T>(to_doubles(biased), reference_conv(dx, dw, &db, d), gemm_tolerance<T>(k + 1)))
      << hx.shape() << " * " << hw.shape() << " + bias";
}

TYPED_TEST(PatchEmbed, Conv2dMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // {b, c, t, h, w, o, kt, kh, kw}
  expect_patch_embed2d<D, T>({2, 3, 1, 28, 42, 8, 1, 14, 14});  // ViT-style 14x14 patches, K = 588
  expect_patch_embed2d<D, T>({1, 1, 1, 10, 9, 7, 1, 5, 3});    // one channel, non-square kernel
  expect_patch_embed2d<D, T>({3, 5, 1, 6, 6, 1, 1, 2, 2});     // odd channels, one output feature
  expect_patch_embed2d<D, T>({1, 7, 1, 13, 13, 13, 1, 13, 13});  // one patch covering the image
  expect_patch_embed2d<D, T>({2, 3, 1, 4, 5, 3, 1, 1, 1});     // 1x1 kernel: a per-pixel linear
}

TYPED_TEST(PatchEmbed, Conv3dMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  expect_patch_embed3d<D, T>({1, 3, 4, 8, 8, 6, 2, 4, 4});     // Qwen2.5-VL-style temporal patch kt = 2
  expect_patch_embed3d<D, T>({2, 3, 2, 6, 10, 5, 2, 3, 5});    // non-square spatial kernel
  expect_patch_embed3d<D, T>({1, 5, 6, 4, 4, 9, 3, 2, 1});     // odd channels, kt = 3, 2x1 kernel
  expect_patch_embed3d<D, T>({2, 1, 1, 7, 7, 4, 1, 7, 7});     // kt = 1
}

TYPED_TEST(PatchEmbed, StridedInputsMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Channels-last images [B, H, W, C] viewed as [B, C, H, W]: no unit stride
  // along the width, so patches are gathered element by element.
  const ConvDims d{2, 3, 1, 8, 12, 5, 1, 4, 3};
  const auto hx = random_tensor<T>({d.b, d.h, d.w, d.c});
  const auto hw = random_tensor<T>({d.o, d.kh, d.kw, d.c});  // weight permuted too: materialised
  const auto x = to<D>(hx);
  const auto w = to<D>(hw);
  const auto out = to<Host>(ops::patch_embed2d(x.permute({0, 3, 1, 2}), w.permute({0, 3, 1, 2})));
  ASSERT_EQ(out.shape(), expected_tokens(d));
  const auto expected = reference_conv(to_doubles(hx.permute({0, 3, 1, 2})), to_doubles(hw.permute({0, 3, 1, 2})),
                                       nullptr, d);
  EXPECT_TRUE(all_close<T>(to_doubles(out), expected, gemm_tolerance<T>(d.c * d.kh * d.kw)));
}

TYPED_TEST(PatchEmbed, ShapeErrorsNameTheOpAndSizes) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto images = to<D>(random_tensor<T>({1, 3, 30, 28}));
  const auto weight = to<D>(random_tensor<T>({8, 3, 14, 14}));
  expect_shape_error([&] { (void)ops::patch_embed2d(images, weight); },
                     {"ops::patch_embed2d", "[1, 3, 30, 28]", "[8, 3, 14, 14]", "height 30", "14"});
  const auto wide = to<D>(random_tensor<T>({1, 3, 28, 30}));
  expect_shape_error([&] { (void)ops::patch_embed2d(wide, weight); }, {"ops::patch_embed2d", "width 30"});
  const auto gray = to<D>(random_tensor<T>({1, 1, 28, 28}));
  expect_shape_error([&] { (void)ops::patch_embed2d(gray, weight); }, {"ops::patch_embed2d", "channels"});
  const auto bias = to<D>(random_tensor<T>({7}));
  const auto square = to<D>(random_tensor<T>({1, 3, 28, 28}));
  expect_shape_error([&] { (void)ops::patch_embed2d(square, weight, bias); }, {"ops::patch_embed2d", "[7]"});

  const auto video = to<D>(random_tensor<T>({1, 3, 3, 8, 8}));
  const auto weight3 = to<D>(random_tensor<T>({4, 3, 2, 4, 4}));
  expect_shape_error([&] { (void)ops::patch_embed3d(video, weight3); },
                     {"ops::patch_embed3d", "[1, 3, 3, 8, 8]", "[4, 3, 2, 4, 4]", "time 3"});
  expect_shape_error([&] { (void)ops::patch_embed3d(images, weight3); }, {"ops::patch_embed3d", "[1, 3, 30, 28]"});
}

}  // namespace
}  // namespace tessera::testing
