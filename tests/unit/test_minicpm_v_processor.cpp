// The MiniCPM-V 2.6 processor: the slicing arithmetic against values worked
// out from the reference's formulas (model-specs.md §C.5,
// oracle-internvl2-minicpmv.md §2.4/§2.6), placeholders, image bounds and
// bad inputs; and, where tests/fixtures/minicpm_v holds them, the oracle's
// slices, tgt_sizes, grids, input ids and image bounds
// (tools/fixtures/make_minicpm_v_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/minicpm_v_processor.hpp>

#include "test_util.hpp"

namespace {

using namespace tessera;
using tessera::testing::expect_error;
namespace mv = tessera::models::minicpm_v;
using Grid = mv::Grid;
using Size = mv::ImageSize;

// A deterministic image with structure in both directions (so a wrong
// resize, crop offset or channel order shows).
mv::RgbImage pattern_image(std::int64_t w, std::int64_t h) {
  mv::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
  for (std::int64_t y = 0; y < h; ++y) {
    for (std::int64_t x = 0; x < w; ++x) {
      auto* p = img.pixels.data() + (y * w + x) * 3;
      p[0] = static_cast<std::uint8_t>((x * 7 + y * 3) % 256);
      p[1] = static_cast<std::uint8_t>((x * x + 5 * y) % 251);
      p[2] = static_cast<std::uint8_t>((x ^ y) & 0xFF);
    }
  }
  return img;
}

std::string repeat(const std::string& s, std::int64_t n) {
  std::string out;
  for (std::int64_t i = 0; i < n; ++i) out += s;
  return out;
}

// ---- the slicing steps --------------------------------------------------------

TEST(MiniCPMVProcessor, EnsureDivideRoundsHalfToEven) {
  // round(1.5) = 2, round(2.5) = 2, round(3.5) = 4 (Python), never below one patch.
  EXPECT_EQ(mv::ensure_divide(21, 14), 28);   // 1.5 -> 2
  EXPECT_EQ(mv::ensure_divide(35, 14), 28);   // 2.5 -> 2
  EXPECT_EQ(mv::ensure_divide(49, 14), 56);   // 3.5 -> 4
  EXPECT_EQ(mv::ensure_divide(63, 14), 56);   // 4.5 -> 4
  EXPECT_EQ(mv::ensure_divide(7, 14), 14);    // 0.5 -> 0 -> at least one patch
  EXPECT_EQ(mv::ensure_divide(0, 14), 14);
  EXPECT_EQ(mv::ensure_divide(20.999, 14), 14);
  EXPECT_EQ(mv::ensure_divide(21.001, 14), 28);
  EXPECT_EQ(mv::ensure_divide(1000, 2), 1000);
  EXPECT_EQ(mv::ensure_divide(1001, 2), 1000);  // 500.5 -> 500
  EXPECT_EQ(mv::ensure_divide(1003, 2), 1004);  // 501.5 -> 502
  expect_error<ValueError>([] { (void)mv::ensure_divide(10, 0); }, {"ensure_divide", "patch_size", "0"});
}

TEST(MiniCPMVProcessor, FindBestResize) {
  // 1000x600 is above 448²: r = 5/3, h = int(448/sqrt(r)) = 347, w = int(347*r) = 578.
  EXPECT_EQ(mv::find_best_resize(1000, 600, 448, 14), (Size{574, 350}));
  // 300x200 is below: unchanged but for ensure_divide ... unless upscaling.
  EXPECT_EQ(mv::find_best_resize(300, 200, 448, 14), (Size{294, 196}));
  EXPECT_EQ(mv::find_best_resize(300, 200, 448, 14, true), (Size{546, 364}));
  EXPECT_EQ(mv::find_best_resize(1, 1, 448, 14, true), (Size{448, 448}));
  // A very wide strip: height int(448/sqrt(3e5)) = 0, then one patch each way.
  EXPECT_EQ(mv::find_best_resize(300000, 1, 448, 14, true), (Size{14, 14}));
  // Float inputs (get_refine_size's cells): 812/2 x 490/1.
  EXPECT_EQ(mv::find_best_resize(406.0, 490.0, 448, 14, true), (Size{406, 490}));
}

TEST(MiniCPMVProcessor, SlicedGrid) {
  EXPECT_EQ(mv::get_sliced_grid(1000, 600, 9, 448), (Grid{2, 1}));
  EXPECT_EQ(mv::get_sliced_grid(448, 1400, 9, 448), (Grid{1, 3}));
  EXPECT_EQ(mv::get_sliced_grid(1344, 896, 9, 448), (Grid{3, 2}));
  EXPECT_EQ(mv::get_sliced_grid(300, 200, 9, 448), std::nullopt);
  EXPECT_EQ(mv::get_sliced_grid(1400, 100, 9, 448), std::nullopt);  // 140000 < 448²
  EXPECT_EQ(mv::get_sliced_grid(448, 448, 9, 448), std::nullopt);   // exactly 448²: ceil(1.0) = 1
  EXPECT_EQ(mv::get_sliced_grid(449, 448, 9, 448), (Grid{2, 1}));   // just above: multiple 2
  // max_slice_nums 1 never slices.
  EXPECT_EQ(mv::get_sliced_grid(1344, 896, 1, 448), std::nullopt);
  // Capped at max_slice_nums 2: candidates {2} only.
  EXPECT_EQ(mv::get_sliced_grid(1344, 896, 2, 448), (Grid{2, 1}));
  EXPECT_EQ(mv::get_sliced_grid(896, 1344, 2, 448), (Grid{1, 2}));
}

TEST(MiniCPMVProcessor, SlicedGridTiesGoToTheFirstCandidate) {
  // A square of 1 to 2 times 448²: candidates 2 and 3 give [1,2], [2,1],
  // [1,3], [3,1]; [1,2] and [2,1] are both log(2) away (exactly: log(0.5) =
  // -log(2)), and strict < keeps the first, [1,2].
  EXPECT_EQ(mv::get_sliced_grid(500, 500, 9, 448), (Grid{1, 2}));
  EXPECT_EQ(mv::get_sliced_grid(500, 500, 2, 448), (Grid{1, 2}));
  // Ratio 2, multiple 5: [2,2] and [4,1] tie at log(2), but [3,2] is nearer.
  EXPECT_EQ(mv::get_sliced_grid(1400, 700, 9, 448), (Grid{3, 2}));
  // A square of 3-4 times 448²: [2,2] is exact.
  EXPECT_EQ(mv::get_sliced_grid(850, 850, 9, 448), (Grid{2, 2}));
}

TEST(MiniCPMVProcessor, RefineSize) {
  EXPECT_EQ(mv::get_refine_size(1000, 600, {2, 1}, 448, 14), (Size{812, 490}));
  EXPECT_EQ(mv::get_refine_size(448, 1400, {1, 3}, 448, 14), (Size{434, 1386}));
  EXPECT_EQ(mv::get_refine_size(1344, 896, {3, 2}, 448, 14), (Size{1344, 896}));
  EXPECT_EQ(mv::get_refine_size(500, 500, {1, 2}, 448, 14), (Size{630, 644}));
  EXPECT_EQ(mv::get_refine_size(1400, 700, {3, 2}, 448, 14), (Size{1554, 784}));
}

// ---- the oracle document's worked examples (448, max 9) ----------------------------

struct Worked {
  std::int64_t w, h;
  std::optional<Grid> grid;
  std::vector<mv::TgtSize> tgt;
};

TEST(MiniCPMVProcessor, WorkedExamplesAtTheRealConfig) {
  const mv::ProcessorConfig config;  // 448, max 9, patch 14
  const std::vector<Worked> cases = {
      {1000, 600, Grid{2, 1}, {{25, 41}, {35, 29}, {35, 29}}},
      {448, 1400, Grid{1, 3}, {{56, 18}, {33, 31}, {33, 31}, {33, 31}}},
      {300, 200, std::nullopt, {{26, 39}}},
      {1344, 896, Grid{3, 2}, {{26, 39}, {32, 32}, {32, 32}, {32, 32}, {32, 32}, {32, 32}, {32, 32}}},
      {1400, 100, std::nullopt, {{8, 119}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.w << "x" << c.h);
    const mv::ProcessedImage out = mv::process_image(pattern_image(c.w, c.h), config);
    EXPECT_EQ(out.grid, c.grid);
    EXPECT_EQ(out.tgt_sizes, c.tgt);
    EXPECT_EQ(out.original, (Size{c.w, c.h}));
    ASSERT_EQ(out.slices.size(), c.tgt.size());
    for (std::size_t i = 0; i < c.tgt.size(); ++i) {
      EXPECT_EQ(out.slices[i].shape(), (Shape{3, c.tgt[i][0] * 14, c.tgt[i][1] * 14}));
    }
  }
}

TEST(MiniCPMVProcessor, SlicesAreResizesAndCropsNormalized) {
  const mv::ProcessorConfig config;
  const mv::RgbImage img = pattern_image(1000, 600);
  const mv::SlicedImage sliced = mv::slice_image(img, config);
  ASSERT_EQ(sliced.slices.size(), 3U);
  // The source: the whole image resized; the cells: the refine image cut in two.
  const mv::RgbImage source = io::resize_bicubic(img, 574, 350);
  EXPECT_EQ(sliced.slices[0].pixels, source.pixels);
  const mv::RgbImage refine = io::resize_bicubic(img, 812, 490);
  EXPECT_EQ(sliced.slices[1].pixels, io::crop(refine, 0, 0, 406, 490).pixels);
  EXPECT_EQ(sliced.slices[2].pixels, io::crop(refine, 406, 0, 406, 490).pixels);
  // Row-major cells: a [1,3] grid stacks them top to bottom.
  const mv::RgbImage tall = pattern_image(448, 1400);
  const mv::SlicedImage cols = mv::slice_image(tall, config);
  const mv::RgbImage tall_refine = io::resize_bicubic(tall, 434, 1386);
  for (std::int64_t r = 0; r < 3; ++r) {
    EXPECT_EQ(cols.slices[static_cast<std::size_t>(1 + r)].pixels, io::crop(tall_refine, 0, r * 462, 434, 462).pixels);
  }
  // Normalization: (u8/255 - 0.5)/0.5 in float32, channel-first.
  const mv::ProcessedImage out = mv::process_image(img, config);
  const float* p = out.slices[1].data();
  const auto& s1 = sliced.slices[1];
  for (std::int64_t c = 0; c < 3; ++c) {
    for (const std::int64_t y : {0L, 17L, 489L}) {
      for (const std::int64_t x : {0L, 200L, 405L}) {
        const float want = (static_cast<float>(s1.at(y, x, c)) / 255.0F - 0.5F) / 0.5F;
        EXPECT_EQ(p[(c * 490 + y) * 406 + x], want);
      }
    }
  }
}

TEST(MiniCPMVProcessor, SliceModeOffKeepsWholePatchesUnresized) {
  mv::ProcessorConfig config;
  config.slice_mode = false;
  const mv::RgbImage img = pattern_image(100, 60);
  const mv::ProcessedImage out = mv::process_image(img, config);
  EXPECT_EQ(out.grid, std::nullopt);
  ASSERT_EQ(out.tgt_sizes, (std::vector<mv::TgtSize>{{4, 7}}));  // 60 // 14, 100 // 14
  EXPECT_EQ(out.slices[0].shape(), (Shape{3, 56, 98}));
  const mv::SlicedImage sliced = mv::slice_image(img, config);
  EXPECT_EQ(sliced.slices[0].pixels, io::crop(img, 0, 0, 98, 56).pixels);
  // No slices in the placeholder either.
  EXPECT_EQ(mv::image_placeholder(out, 0, config).find("<slice>"), std::string::npos);
  expect_error<ValueError>([&] { (void)mv::process_image(pattern_image(13, 40), config, "tiny.png"); },
                           {"tiny.png", "13x40", "14x14 patch", "slice_mode false"});
}

// ---- placeholders -----------------------------------------------------------------

TEST(MiniCPMVProcessor, PlaceholderLayout) {
  mv::ProcessorConfig config;
  config.image_feature_size = 2;
  const mv::ProcessedImage sliced = mv::process_image(pattern_image(1344, 896), config);  // grid [3,2]
  const std::string unk2 = "<unk><unk>";
  const std::string cell = "<slice>" + unk2 + "</slice>";
  EXPECT_EQ(mv::image_placeholder(sliced, 1, config),
            "<image_id>1</image_id><image>" + unk2 + "</image>" + repeat(cell, 3) + "\n" + repeat(cell, 3));
  config.use_image_id = false;
  EXPECT_EQ(mv::image_placeholder(sliced, 1, config),
            "<image>" + unk2 + "</image>" + repeat(cell, 3) + "\n" + repeat(cell, 3));
  const mv::ProcessedImage single = mv::process_image(pattern_image(300, 200), config);
  EXPECT_EQ(mv::image_placeholder(single, 0, config), "<image>" + unk2 + "</image>");
  // At the real size: 64 <unk> per span, 1 + 6 spans.
  const mv::ProcessorConfig real;
  const std::string text = mv::image_placeholder(mv::process_image(pattern_image(1344, 896), real), 0, real);
  std::size_t unks = 0;
  for (std::size_t pos = text.find("<unk>"); pos != std::string::npos; pos = text.find("<unk>", pos + 1)) ++unks;
  EXPECT_EQ(unks, 7U * 64U);
  EXPECT_EQ(text.rfind("<image_id>0</image_id><image>", 0), 0U);
  EXPECT_NE(text.find("</image><slice>"), std::string::npos);  // no newline before the first row
}

TEST(MiniCPMVProcessor, ExpandMarkersNumbersImagesInOrder) {
  mv::ProcessorConfig config;
  config.image_feature_size = 1;
  std::vector<mv::ProcessedImage> images;  // move-only (Tensor)
  images.push_back(mv::process_image(pattern_image(300, 200), config));
  images.push_back(mv::process_image(pattern_image(1000, 600), config));
  const std::string content = mv::chat_content(2, "What differs?");
  EXPECT_EQ(content, "(<image>./</image>)\n(<image>./</image>)\nWhat differs?");
  EXPECT_EQ(mv::expand_image_markers("A" + content, images, config),
            "A<image_id>0</image_id><image><unk></image>\n"
            "<image_id>1</image_id><image><unk></image><slice><unk></slice><slice><unk></slice>\nWhat differs?");
  EXPECT_EQ(mv::expand_image_markers("no images", {}, config), "no images");
  expect_error<ValueError>([&] { (void)mv::expand_image_markers(mv::chat_content(1, "x"), images, config); },
                           {"1 (<image>./</image>) marker", "2 images were given"});
  expect_error<ValueError>([&] { (void)mv::expand_image_markers("none here", images, config); },
                           {"0 (<image>./</image>) markers", "2 images"});
}

TEST(MiniCPMVProcessor, PlaceholderRejectsInconsistentImages) {
  const mv::ProcessorConfig config;
  mv::ProcessedImage bad = mv::process_image(pattern_image(1000, 600), config);
  bad.tgt_sizes.pop_back();
  expect_error<ValueError>([&] { (void)mv::image_placeholder(bad, 0, config); }, {"2 slices", "[2,1]", "needs 3"});
}

// ---- video -------------------------------------------------------------------------

TEST(MiniCPMVProcessor, VideoRecipe) {
  const mv::ProcessorConfig video = mv::for_video(mv::ProcessorConfig{});
  EXPECT_FALSE(video.use_image_id);
  EXPECT_EQ(video.max_slice_nums, 2);
  EXPECT_EQ(video.scale_resolution, 448);
  // A frame of 1344x896 is cut into 2 cells under the video recipe.
  const mv::ProcessedImage frame = mv::process_image(pattern_image(1344, 896), video);
  EXPECT_EQ(frame.grid, (Grid{2, 1}));
  EXPECT_EQ(frame.tgt_sizes.size(), 3U);
  EXPECT_EQ(mv::image_placeholder(frame, 3, video).rfind("<image>", 0), 0U);  // no image id
  // 1 fps: every round(fps)-th frame; above 64, 64 picked uniformly.
  EXPECT_EQ(mv::video_frame_indices(100, 30.0), (std::vector<std::int64_t>{0, 30, 60, 90}));
  EXPECT_EQ(mv::video_frame_indices(5, 2.5), (std::vector<std::int64_t>{0, 2, 4}));  // round(2.5) = 2
  EXPECT_EQ(mv::video_frame_indices(3, 0.5 + 1e-9), (std::vector<std::int64_t>{0, 1, 2}));
  const auto many = mv::video_frame_indices(30 * 200, 30.0);  // 200 one-second frames
  ASSERT_EQ(many.size(), 64U);
  // gap = 200/64 = 3.125: l[int(i*gap + gap/2)] for i = 0, 1, 63.
  EXPECT_EQ(many[0], 30 * 1);
  EXPECT_EQ(many[1], 30 * 4);
  EXPECT_EQ(many[63], 30 * 198);
  expect_error<ValueError>([] { (void)mv::video_frame_indices(10, 0.4); }, {"0.4", "rounds to 0"});
  expect_error<ValueError>([] { (void)mv::video_frame_indices(0, 30.0); }, {"at least one frame"});
}

// ---- image bounds -------------------------------------------------------------------

mv::SpecialTokens test_tokens() {
  mv::SpecialTokens t;
  t.image_start = 10;
  t.image_end = 11;
  t.slice_start = 12;
  t.slice_end = 13;
  t.id_start = 14;
  t.id_end = 15;
  t.unk = 0;
  return t;
}

TEST(MiniCPMVProcessor, ImageBounds) {
  const auto t = test_tokens();
  const std::vector<std::int64_t> ids = {5, 14, 7, 15, 10, 0, 0, 11, 12, 0, 13, 1, 12, 0, 0, 0, 13, 9};
  EXPECT_EQ(mv::image_bounds(ids, t), (std::vector<std::array<std::int64_t, 2>>{{5, 7}, {9, 10}, {13, 16}}));
  const std::vector<tokenizer::TokenId> ids32(ids.begin(), ids.end());
  EXPECT_EQ(mv::image_bounds(ids32, t), mv::image_bounds(ids, t));
  EXPECT_TRUE(mv::image_bounds(std::vector<std::int64_t>{1, 2, 3}, t).empty());
  // An empty span is a span (the reference gives [i+1, i+1)).
  EXPECT_EQ(mv::image_bounds(std::vector<std::int64_t>{10, 11}, t), (std::vector<std::array<std::int64_t, 2>>{{1, 1}}));
}

TEST(MiniCPMVProcessor, ImageBoundsRejectUnbalancedMarkers) {
  const auto t = test_tokens();
  expect_error<ValueError>([&] { (void)mv::image_bounds(std::vector<std::int64_t>{1, 11, 0}, t); },
                           {"</image> at token 1", "closes no open"});
  expect_error<ValueError>([&] { (void)mv::image_bounds(std::vector<std::int64_t>{10, 0, 12, 0, 13, 11}, t); },
                           {"<slice> at token 2", "<image> span opened at token 0"});
  expect_error<ValueError>([&] { (void)mv::image_bounds(std::vector<std::int64_t>{1, 10, 0, 0}, t); },
                           {"<image> at token 1", "never closed"});
  expect_error<ValueError>([&] { (void)mv::image_bounds(std::vector<std::int64_t>{12, 0, 11}, t); },
                           {"</image> at token 2", "closes the <slice> opened at token 0"});
}

// ---- config ------------------------------------------------------------------------

TEST(MiniCPMVProcessor, ConfigFromJson) {
  const auto c = mv::ProcessorConfig::from_json(nlohmann::json::parse(R"({
    "image_processor_type": "MiniCPMVImageProcessor", "max_slice_nums": 4, "scale_resolution": 224,
    "patch_size": 16, "use_image_id": true, "image_feature_size": 32, "slice_mode": false,
    "norm_mean": [0.1, 0.2, 0.3], "norm_std": [0.4, 0.5, 0.6], "im_start": "<img>", "version": 2.6})"));
  EXPECT_EQ(c.max_slice_nums, 4);
  EXPECT_EQ(c.scale_resolution, 224);
  EXPECT_EQ(c.patch_size, 16);
  EXPECT_EQ(c.image_feature_size, 32);
  EXPECT_TRUE(c.use_image_id);
  EXPECT_FALSE(c.slice_mode);
  EXPECT_EQ(c.mean, (std::array<double, 3>{0.1, 0.2, 0.3}));
  EXPECT_EQ(c.std, (std::array<double, 3>{0.4, 0.5, 0.6}));
  EXPECT_EQ(c.im_start, "<img>");
  EXPECT_EQ(c.slice_start, "<slice>");
  // Absent keys: the image processor class's defaults, use_image_id false.
  const auto d = mv::ProcessorConfig::from_json(nlohmann::json::object());
  EXPECT_FALSE(d.use_image_id);
  EXPECT_TRUE(d.slice_mode);
  EXPECT_EQ(d.max_slice_nums, 9);
  EXPECT_EQ(d.scale_resolution, 448);
  EXPECT_EQ(d.image_feature_size, 64);
  EXPECT_TRUE(mv::ProcessorConfig{}.use_image_id);  // the published 2.6 file's value
}

TEST(MiniCPMVProcessor, ConfigRejectsBadValues) {
  auto parse = [](const char* text) { (void)mv::ProcessorConfig::from_json(nlohmann::json::parse(text), "pp.json"); };
  expect_error<FormatError>([&] { parse(R"({"max_slice_nums": 0})"); }, {"pp.json", "max_slice_nums", "positive"});
  expect_error<FormatError>([&] { parse(R"({"max_slice_nums": 100000})"); }, {"pp.json", "max_slice_nums", "at most"});
  expect_error<FormatError>([&] { parse(R"({"patch_size": 14.5})"); }, {"pp.json", "patch_size", "integer"});
  expect_error<FormatError>([&] { parse(R"({"use_image_id": "yes"})"); }, {"pp.json", "use_image_id", "true or false"});
  expect_error<FormatError>([&] { parse(R"({"norm_std": [0.5, 0, 0.5]})"); }, {"pp.json", "norm_std", "0"});
  expect_error<FormatError>([&] { parse(R"({"norm_mean": [0.5, 0.5]})"); }, {"pp.json", "norm_mean", "3 numbers"});
  expect_error<FormatError>([&] { parse(R"({"unk": ""})"); }, {"pp.json", "unk", "empty"});
  expect_error<FormatError>([&] { parse(R"([1])"); }, {"pp.json", "JSON object"});
  expect_error<IoError>([] { (void)mv::ProcessorConfig::load("/nonexistent/dir/preprocessor_config.json"); },
                        {"/nonexistent/dir/preprocessor_config.json"});
}

TEST(MiniCPMVProcessor, BadImagesAndConfigsNameTheSourceAndSizes) {
  mv::ProcessorConfig config;
  expect_error<ValueError>([&] { (void)mv::process_image(mv::RgbImage{0, 5, {}}, config, "empty.png"); },
                           {"empty.png", "0x5"});
  const mv::RgbImage short_buffer{4, 4, std::vector<std::uint8_t>(5)};
  expect_error<ValueError>([&] { (void)mv::process_image(short_buffer, config, "x"); }, {"x", "4x4", "5 bytes"});
  config.max_slice_nums = 0;
  expect_error<ValueError>([&] { (void)mv::process_image(pattern_image(20, 20), config, "a.png"); },
                           {"max_slice_nums", "got 0"});
  config = {};
  config.patch_size = 0;
  expect_error<ValueError>([&] { (void)mv::process_image(pattern_image(20, 20), config); }, {"patch_size", "0"});
  // An extreme strip: the short side is lifted to one patch while the long
  // one grows past the pixel limit.
  expect_error<ValueError>([] { (void)mv::plan_slices(1, 200000000, mv::ProcessorConfig{}, "strip.png"); },
                           {"strip.png", "1x200000000", "14x", "more than"});
  expect_error<ValueError>([] { (void)mv::plan_slices(0, 10, mv::ProcessorConfig{}, "z.png"); }, {"z.png", "0x10"});
  expect_error<ValueError>([] { (void)mv::get_sliced_grid(10, 10, 0, 448); }, {"max_slice_nums", "0"});
}

TEST(MiniCPMVProcessor, PlanMatchesSlices) {
  // Tiny images are upscaled to about 448² in one slice.
  const mv::SlicePlan plan = mv::plan_slices(1, 1, mv::ProcessorConfig{});
  EXPECT_EQ(plan.grid, std::nullopt);
  EXPECT_EQ(plan.source, (Size{448, 448}));
  const mv::ProcessedImage one = mv::process_image(pattern_image(1, 1), mv::ProcessorConfig{});
  EXPECT_EQ(one.tgt_sizes, (std::vector<mv::TgtSize>{{32, 32}}));
  // A wide strip over 448² is cut into tall cells of one patch row.
  const mv::SlicePlan strip = mv::plan_slices(300000, 1, mv::ProcessorConfig{});
  EXPECT_EQ(strip.grid, (Grid{3, 1}));
  EXPECT_EQ(strip.source, (Size{14, 14}));
  EXPECT_EQ(strip.refine, (Size{300006, 14}));
  EXPECT_EQ(strip.cell, (Size{100002, 14}));
}


// ---- the oracle's fixtures (tests/fixtures/minicpm_v) --------------------------------

std::filesystem::path fixture_dir() {
  return tessera::testing::fixtures_dir() / "minicpm_v";
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;
  Reference()
      : meta(nlohmann::json::parse(std::ifstream(fixture_dir() / "reference.json"))),
        arrays(io::SafetensorsFile::open(fixture_dir() / "reference.safetensors")) {}
  std::vector<std::int64_t> ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  bool has(const std::string& name) const { return arrays.find(name) != nullptr; }
  // An int64 [m, 2] array as pairs.
  std::vector<std::array<std::int64_t, 2>> pairs(const std::string& name) const {
    const auto flat = ints(name);
    std::vector<std::array<std::int64_t, 2>> out;
    for (std::size_t i = 0; i + 1 < flat.size(); i += 2) out.push_back({flat[i], flat[i + 1]});
    return out;
  }
};

// nullptr (and the test skipped) until the oracle's fixtures are committed.
const Reference* reference() {
  static const std::optional<Reference> r = [] {
    return std::filesystem::exists(fixture_dir() / "reference.json") ? std::optional<Reference>(std::in_place)
                                                                     : std::nullopt;
  }();
  return r ? &*r : nullptr;
}

#define MINICPM_V_FIXTURES_OR_SKIP()                                                             \
  const Reference* ref_ptr = reference();                                                        \
  if (ref_ptr == nullptr) GTEST_SKIP() << "no " << (fixture_dir() / "reference.json").string(); \
  const Reference& ref = *ref_ptr

std::optional<Grid> json_grid(const nlohmann::json& g) {
  if (g.is_null()) return std::nullopt;
  return Grid{g[0].get<std::int64_t>(), g[1].get<std::int64_t>()};
}

std::vector<mv::TgtSize> json_tgt(const nlohmann::json& t) {
  std::vector<mv::TgtSize> out;
  for (const auto& row : t) out.push_back({row[0].get<std::int64_t>(), row[1].get<std::int64_t>()});
  return out;
}

std::vector<mv::TgtSize> as_tgt(const std::vector<std::array<std::int64_t, 2>>& p) { return {p.begin(), p.end()}; }

TEST(MiniCPMVProcessorFixtures, ConfigAndSpecialTokens) {
  MINICPM_V_FIXTURES_OR_SKIP();
  const auto cfg = mv::ProcessorConfig::load(fixture_dir() / "model");
  EXPECT_TRUE(cfg.use_image_id);
  EXPECT_TRUE(cfg.slice_mode);
  EXPECT_EQ(cfg.max_slice_nums, ref.meta["image_processor"]["max_slice_nums"].get<std::int64_t>());
  EXPECT_EQ(cfg.scale_resolution, ref.meta["image_processor"]["scale_resolution"].get<std::int64_t>());
  EXPECT_EQ(cfg.patch_size, ref.meta["image_processor"]["patch_size"].get<std::int64_t>());
  EXPECT_EQ(cfg.image_feature_size, ref.meta["image_processor"]["image_feature_size"].get<std::int64_t>());
  const auto tok = tokenizer::Tokenizer::from_file(fixture_dir() / "model" / "tokenizer.json");
  const mv::SpecialTokens t = mv::SpecialTokens::from(tok, cfg);
  const auto& ids = ref.meta["special_tokens"];
  EXPECT_EQ(t.image_start, ids["<image>"].get<std::int64_t>());
  EXPECT_EQ(t.image_end, ids["</image>"].get<std::int64_t>());
  EXPECT_EQ(t.slice_start, ids["<slice>"].get<std::int64_t>());
  EXPECT_EQ(t.slice_end, ids["</slice>"].get<std::int64_t>());
  EXPECT_EQ(t.id_start, ids["<image_id>"].get<std::int64_t>());
  EXPECT_EQ(t.id_end, ids["</image_id>"].get<std::int64_t>());
  EXPECT_EQ(t.unk, ids["<unk>"].get<std::int64_t>());
  // A tokenizer without them is refused by name.
  const auto plain = tokenizer::Tokenizer::from_file(fixture_dir().parent_path() / "tokenizer" / "tokenizer.json");
  expect_error<FormatError>([&] { (void)mv::SpecialTokens::from(plain, cfg); }, {"tokenizer.json", "<image>"});
}

// Every committed image: grids and tgt_sizes under max_slice_nums 2 and 9,
// the resized uint8 slices bit for bit, and the pixel values.
TEST(MiniCPMVProcessorFixtures, SlicesTgtSizesAndPixels) {
  MINICPM_V_FIXTURES_OR_SKIP();
  const auto base = mv::ProcessorConfig::load(fixture_dir() / "model");
  ASSERT_FALSE(ref.meta["images"].empty());
  std::size_t slices_checked = 0;
  for (const auto& [name, m] : ref.meta["images"].items()) {
    SCOPED_TRACE(name);
    const auto file = (fixture_dir() / m["file"].get<std::string>()).string();
    const mv::RgbImage img = io::load_rgb_image(file);
    ASSERT_EQ(img.width, m["width"].get<std::int64_t>());
    ASSERT_EQ(img.height, m["height"].get<std::int64_t>());
    for (const std::int64_t msn : {2L, 9L}) {
      SCOPED_TRACE(::testing::Message() << "max_slice_nums " << msn);
      mv::ProcessorConfig cfg = base;
      cfg.max_slice_nums = msn;
      const auto& want = m["msn" + std::to_string(msn)];
      const mv::SlicePlan plan = mv::plan_slices(img.width, img.height, cfg, file);
      EXPECT_EQ(plan.grid, json_grid(want["grid"]));
      const std::string key = "proc.msn" + std::to_string(msn) + "." + name;
      const auto grid = ref.ints(key + ".grid");
      EXPECT_EQ(plan.grid.value_or(Grid{0, 0}), (Grid{grid[0], grid[1]}));
      std::vector<std::vector<std::int64_t>> sizes = {{plan.source.width, plan.source.height}};
      for (std::int64_t i = 0; plan.grid && i < (*plan.grid)[0] * (*plan.grid)[1]; ++i) {
        sizes.push_back({plan.cell.width, plan.cell.height});
      }
      EXPECT_EQ(sizes, want["slice_sizes_wh"].get<std::vector<std::vector<std::int64_t>>>());
      const auto tgt = json_tgt(want["tgt_sizes"]);
      EXPECT_EQ(as_tgt(ref.pairs(key + ".tgt_sizes")), tgt);
      if (msn != m["max_slice_nums"].get<std::int64_t>()) continue;

      // The case's own max_slice_nums: slices and pixel values.
      const mv::SlicedImage sliced = mv::slice_image(img, cfg, file);
      const mv::ProcessedImage out = mv::process_image(img, cfg, file);
      EXPECT_EQ(out.grid, json_grid(m["grid"]));
      EXPECT_EQ(out.tgt_sizes, json_tgt(m["tgt_sizes"]));
      EXPECT_EQ(out.tgt_sizes, tgt);
      EXPECT_EQ(out.tgt_sizes, as_tgt(ref.pairs("proc." + name + ".tgt_sizes")));
      const auto& files = m["slices"];
      ASSERT_EQ(sliced.slices.size(), files.size());
      ASSERT_EQ(out.slices.size(), files.size());
      const auto first = ref.arrays.load<Host, float>("proc." + name + ".first_patch");  // [n, 3, 14, 14]
      ASSERT_EQ(first.shape(), (Shape{static_cast<std::int64_t>(files.size()), 3, 14, 14}));
      for (std::size_t k = 0; k < files.size(); ++k) {
        SCOPED_TRACE(::testing::Message() << "slice " << k);
        const mv::RgbImage want_u8 = io::load_rgb_image(fixture_dir() / files[k].get<std::string>());
        ASSERT_EQ(sliced.slices[k].width, want_u8.width);
        ASSERT_EQ(sliced.slices[k].height, want_u8.height);
        EXPECT_TRUE(sliced.slices[k].pixels == want_u8.pixels) << "the PIL-resized slice differs";
        // Pixel values: (u8/255 - 0.5)/0.5 in float32, channel-first, as the reference.
        const std::int64_t h = want_u8.height, w = want_u8.width;
        ASSERT_EQ(out.slices[k].shape(), (Shape{3, h, w}));
        const float* px = out.slices[k].data();
        double worst = 0.0;
        for (std::int64_t c = 0; c < 3; ++c) {
          for (std::int64_t y = 0; y < h; ++y) {
            for (std::int64_t x = 0; x < w; ++x) {
              const float e = (static_cast<float>(want_u8.at(y, x, c)) / 255.0F - 0.5F) / 0.5F;
              worst = std::max(worst, static_cast<double>(std::fabs(px[(c * h + y) * w + x] - e)));
            }
          }
        }
        EXPECT_LE(worst, 1e-5);
        double worst_first = 0.0;
        const float* fp = first.data() + k * 3 * 14 * 14;
        for (std::int64_t c = 0; c < 3; ++c) {
          for (std::int64_t y = 0; y < 14; ++y) {
            for (std::int64_t x = 0; x < 14; ++x) {
              worst_first = std::max(worst_first, static_cast<double>(std::fabs(px[(c * h + y) * w + x] -
                                                                               fp[(c * 14 + y) * 14 + x])));
            }
          }
        }
        EXPECT_LE(worst_first, 1e-5);
        ++slices_checked;
      }
    }
  }
  EXPECT_GE(slices_checked, 16U);  // the five images' 16 slices, and the video frames'
}

// Every case: the chat content, the expanded prompt, its ids through
// tessera's tokenizer, the image bounds and the tgt_sizes.
TEST(MiniCPMVProcessorFixtures, PromptsIdsAndImageBounds) {
  MINICPM_V_FIXTURES_OR_SKIP();
  const auto base = mv::ProcessorConfig::load(fixture_dir() / "model");
  const auto tok = tokenizer::Tokenizer::from_file(fixture_dir() / "model" / "tokenizer.json");
  const mv::SpecialTokens tokens = mv::SpecialTokens::from(tok, base);
  std::size_t checked = 0;
  for (const auto& [cname, c] : ref.meta["cases"].items()) {
    if (cname == "batch") continue;
    SCOPED_TRACE(cname);
    mv::ProcessorConfig cfg = base;
    cfg.max_slice_nums = c["max_slice_nums"].get<std::int64_t>();
    cfg.use_image_id = c["use_image_id"].get<bool>();
    if (cname == "video") {  // the model card's recipe is what the oracle ran
      EXPECT_EQ(mv::for_video(base).max_slice_nums, cfg.max_slice_nums);
      EXPECT_EQ(mv::for_video(base).use_image_id, cfg.use_image_id);
    }
    std::vector<mv::ProcessedImage> images;
    std::vector<mv::TgtSize> tgt;
    for (const auto& iname : c["images"]) {
      const auto& im = ref.meta["images"][iname.get<std::string>()];
      images.push_back(mv::process_image(io::load_rgb_image(fixture_dir() / im["file"].get<std::string>()), cfg,
                                         im["file"].get<std::string>()));
      tgt.insert(tgt.end(), images.back().tgt_sizes.begin(), images.back().tgt_sizes.end());
    }
    // chat(): the image markers, then the text, joined by "\n".
    const std::string content = c["content"].get<std::string>();
    const std::string text = content.substr(content.rfind('\n') == std::string::npos ? 0 : content.rfind('\n') + 1);
    EXPECT_EQ(mv::chat_content(static_cast<std::int64_t>(images.size()), text), content);
    for (std::size_t k = 0; k < images.size(); ++k) {
      EXPECT_EQ(mv::image_placeholder(images[k], static_cast<std::int64_t>(k), cfg),
                c["placeholders"][k].get<std::string>());
    }
    const std::string prompt = mv::expand_image_markers(c["chat_text"].get<std::string>(), images, cfg);
    EXPECT_EQ(prompt, c["prompt_text"].get<std::string>());
    tokenizer::EncodeOptions plain;
    plain.add_special_tokens = false;
    const std::vector<tokenizer::TokenId> ids32 = tok.encode(prompt, plain);
    const std::vector<std::int64_t> ids(ids32.begin(), ids32.end());
    EXPECT_EQ(ids, ref.ints(cname + ".input_ids"));
    const auto bounds = mv::image_bounds(ids, tokens);
    if (images.empty()) {
      EXPECT_TRUE(bounds.empty());
    } else {
      EXPECT_EQ(bounds, ref.pairs(cname + ".image_bounds"));
      EXPECT_EQ(tgt, as_tgt(ref.pairs(cname + ".tgt_sizes")));
      EXPECT_EQ(bounds.size(), tgt.size());  // one span per slice
    }
    for (const auto& b : bounds) EXPECT_EQ(b[1] - b[0], cfg.image_feature_size);
    ++checked;
  }
  EXPECT_GE(checked, 5U);
}

// The batch's left-padded rows: the bounds in padded coordinates.
TEST(MiniCPMVProcessorFixtures, BatchImageBounds) {
  MINICPM_V_FIXTURES_OR_SKIP();
  if (!ref.has("batch.input_ids")) GTEST_SKIP() << "no batch case";
  const auto tok = tokenizer::Tokenizer::from_file(fixture_dir() / "model" / "tokenizer.json");
  const mv::SpecialTokens tokens = mv::SpecialTokens::from(tok);
  const auto& info = ref.arrays.at("batch.input_ids");
  const auto all = ref.ints("batch.input_ids");
  const std::int64_t rows = info.shape[0], width = info.shape[1];
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::span<const std::int64_t> row(all.data() + r * width, static_cast<std::size_t>(width));
    EXPECT_EQ(mv::image_bounds(row, tokens), ref.pairs("batch.image_bounds." + std::to_string(r))) << "row " << r;
  }
}

}  // namespace
