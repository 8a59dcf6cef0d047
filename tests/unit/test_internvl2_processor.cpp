// The InternVL2 processor: target ratios and their order, the tie rule,
// tiling, normalization, video frame indices, config.json and bad inputs,
// against values worked out from the reference's formulas
// (model-specs.md §B.4) and against the pinned reference's own outputs in
// tests/fixtures/internvl2_processor
// (tools/fixtures/make_internvl2_processor_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/internvl2_processor.hpp>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace tessera;
using tessera::testing::expect_error;
namespace iv = tessera::models::internvl2;
using Grid = iv::TileGrid;

// A deterministic image with structure in both directions (so a wrong
// resize, crop offset or channel order shows).
iv::RgbImage pattern_image(std::int64_t w, std::int64_t h) {
  iv::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
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

// "1x1 1x2 2x1" -> grids.
std::vector<Grid> parse_grids(const std::string& text) {
  std::vector<Grid> out;
  std::istringstream in(text);
  std::string item;
  while (in >> item) {
    const auto x = item.find('x');
    out.push_back({std::stoll(item.substr(0, x)), std::stoll(item.substr(x + 1))});
  }
  return out;
}

std::string show(const std::vector<Grid>& grids) {
  std::string out;
  for (const Grid& g : grids) out += std::to_string(g.columns) + "x" + std::to_string(g.rows) + " ";
  return out;
}

iv::ProcessorConfig config_with(std::int64_t image_size, std::int64_t min_num, std::int64_t max_num,
                                bool dynamic = true, bool thumbnail = true) {
  iv::ProcessorConfig c;
  c.image_size = image_size;
  c.min_num = min_num;
  c.max_num = max_num;
  c.dynamic_image_size = dynamic;
  c.use_thumbnail = thumbnail;
  return c;
}

// (u8/255 - mean)/std in float32, as torchvision's ToTensor + Normalize.
float normalized(std::uint8_t u, std::size_t c) {
  const iv::ProcessorConfig d;
  return (static_cast<float>(u) / 255.0F - static_cast<float>(d.mean[c])) / static_cast<float>(d.std[c]);
}

// ---- target ratios ---------------------------------------------------------------

TEST(InternVL2Processor, TargetRatiosInTheReferenceOrder) {
  // CPython 3.11's sorted(set(...), key=i*j) for the published settings
  // (printed by the pinned interpreter): ratios of one area are in the
  // set's order, not in any sorted order.
  EXPECT_EQ(show(iv::target_ratios(1, 12)),
            "1x1 1x2 2x1 3x1 1x3 2x2 4x1 1x4 5x1 1x5 1x6 6x1 3x2 2x3 7x1 1x7 4x2 2x4 1x8 8x1 1x9 3x3 9x1 2x5 5x2 "
            "10x1 1x10 11x1 1x11 12x1 3x4 4x3 1x12 6x2 2x6 ");
  EXPECT_EQ(show(iv::target_ratios(6, 6)), "2x3 1x6 3x2 6x1 ");
  EXPECT_EQ(show(iv::target_ratios(2, 6)), "1x2 2x1 3x1 1x3 4x1 1x4 2x2 1x5 5x1 6x1 2x3 1x6 3x2 ");
  EXPECT_EQ(show(iv::target_ratios(1, 1)), "1x1 ");
  // Every grid with min <= area <= max, once, areas non-decreasing.
  for (std::int64_t lo = 1; lo <= 9; ++lo) {
    for (std::int64_t hi = lo; hi <= 40; ++hi) {
      const auto r = iv::target_ratios(lo, hi);
      std::size_t want = 0;
      for (std::int64_t i = 1; i <= hi; ++i) {
        for (std::int64_t j = 1; j <= hi; ++j) want += (i * j >= lo && i * j <= hi) ? 1 : 0;
      }
      ASSERT_EQ(r.size(), want) << lo << ".." << hi;
      for (std::size_t k = 1; k < r.size(); ++k) ASSERT_LE(r[k - 1].tiles(), r[k].tiles());
    }
  }
}

TEST(InternVL2Processor, TargetRatiosRefuseBadRanges) {
  expect_error<ValueError>([] { (void)iv::target_ratios(3, 2); }, {"min_num 3", "max_num 2"});
  expect_error<ValueError>([] { (void)iv::target_ratios(0, 2); }, {"min_num 0"});
  expect_error<ValueError>([] { (void)iv::target_ratios(1, iv::kMaxNum + 1); }, {"max_num 1025", "1024"});
  EXPECT_EQ(iv::target_ratios(1, iv::kMaxNum).size(), 7262U);  // the sum of n's divisor counts, n <= 1024
}

// ---- the closest ratio and its tie rule -------------------------------------------

TEST(InternVL2Processor, ClosestRatioTieRuleUsesTheOriginalArea) {
  const auto r = iv::target_ratios(1, 12);
  // A square ties 1x1, 2x2 and 3x3 exactly: 2x2 wins when W*H > 0.5*448²*4
  // = 401408, 3x3 when W*H > 903168.
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, r, 600, 600, 448), (Grid{1, 1}));  // 360000
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, r, 634, 634, 448), (Grid{2, 2}));  // 401956
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, r, 633, 633, 448), (Grid{1, 1}));  // 400689
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, r, 951, 951, 448), (Grid{3, 3}));  // 904401
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, r, 950, 950, 448), (Grid{2, 2}));  // 902500
  // Strictly greater: exactly half of the grid's pixels keeps the earlier one.
  const std::vector<Grid> two{{1, 1}, {2, 2}};
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, two, 20, 10, 10), (Grid{1, 1}));  // 200 == 0.5*100*4
  EXPECT_EQ(iv::find_closest_aspect_ratio(1.0, two, 201, 1, 10), (Grid{2, 2}));  // 201 > 200
  // No ratios: the reference's default.
  EXPECT_EQ(iv::find_closest_aspect_ratio(3.0, {}, 30, 10, 448), (Grid{1, 1}));
  // Not a tie: the nearest wins whatever the area.
  EXPECT_EQ(iv::find_closest_aspect_ratio(800.0 / 500.0, r, 800, 500, 448), (Grid{3, 2}));
  EXPECT_EQ(iv::find_closest_aspect_ratio(2000.0 / 60.0, r, 2000, 60, 448), (Grid{12, 1}));
}

TEST(InternVL2Processor, SameAreaTiesFollowTheSetOrder) {
  // min = max = 2: 1x2 and 2x1 are both 0.75 from 5:4. The set yields 1x2
  // first; a small image keeps it, one above 0.5*S²*2 takes 2x1.
  ASSERT_EQ(show(iv::target_ratios(2, 2)), "1x2 2x1 ");
  EXPECT_EQ(iv::plan_tiles(10, 8, config_with(56, 2, 2)).grid, (Grid{1, 2}));
  EXPECT_EQ(iv::plan_tiles(65, 52, config_with(56, 2, 2)).grid, (Grid{2, 1}));  // 3380 > 3136
}

// ---- tiling -------------------------------------------------------------------------

TEST(InternVL2Processor, TilesAreRowMajorCropsThenTheThumbnail) {
  const iv::RgbImage img = pattern_image(300, 130);  // 2.31: nearest 5x2 (7x3 and 9x4 exceed 12 tiles)
  const iv::ProcessorConfig cfg = config_with(28, 1, 12);
  const iv::TilePlan plan = iv::plan_tiles(300, 130, cfg);
  ASSERT_EQ(plan.grid, (Grid{5, 2}));
  const std::vector<iv::RgbImage> tiles = iv::tile_image(img, cfg);
  ASSERT_EQ(static_cast<std::int64_t>(tiles.size()), plan.tiles());
  ASSERT_TRUE(plan.thumbnail);
  const iv::RgbImage resized = io::resize_bicubic(img, 28 * plan.grid.columns, 28 * plan.grid.rows);
  for (std::int64_t k = 0; k < plan.grid.tiles(); ++k) {
    const auto want = io::crop(resized, (k % plan.grid.columns) * 28, (k / plan.grid.columns) * 28, 28, 28);
    EXPECT_TRUE(tiles[static_cast<std::size_t>(k)].pixels == want.pixels) << "tile " << k;
  }
  EXPECT_TRUE(tiles.back().pixels == io::resize_bicubic(img, 28, 28).pixels) << "thumbnail";

  // The pixel values are those tiles normalized, channel-first.
  const iv::ProcessedImage out = iv::process_image(img, cfg, "pattern");
  EXPECT_EQ(out.pixels.shape(), (Shape{plan.tiles(), 3, 28, 28}));
  EXPECT_EQ(out.tiles(), plan.tiles());
  EXPECT_EQ(out.grid, plan.grid);
  EXPECT_TRUE(out.thumbnail);
  EXPECT_EQ(out.source, "pattern");
  for (std::size_t k = 0; k < tiles.size(); ++k) {
    for (std::size_t c = 0; c < 3; ++c) {
      for (const std::int64_t y : {0L, 13L, 27L}) {
        for (const std::int64_t x : {0L, 5L, 27L}) {
          const float got =
              out.pixels.data()[((static_cast<std::int64_t>(k) * 3 + static_cast<std::int64_t>(c)) * 28 + y) * 28 + x];
          EXPECT_EQ(got, normalized(tiles[k].at(y, x, static_cast<std::int64_t>(c)), c));
        }
      }
    }
  }
}

TEST(InternVL2Processor, OneTileHasNoThumbnailAndNotDynamicIsTheWholeImage) {
  const iv::RgbImage img = pattern_image(460, 440);
  const iv::ProcessedImage one = iv::process_image(img, iv::ProcessorConfig{});
  EXPECT_EQ(one.grid, (Grid{1, 1}));
  EXPECT_FALSE(one.thumbnail);
  EXPECT_EQ(one.tiles(), 1);
  // dynamic_image_size false: one tile whatever the shape.
  const iv::ProcessorConfig flat = config_with(56, 1, 12, /*dynamic=*/false);
  const iv::ProcessedImage wide = iv::process_image(pattern_image(900, 100), flat);
  EXPECT_EQ(wide.tiles(), 1);
  EXPECT_EQ(wide.grid, (Grid{1, 1}));
  const auto tiles = iv::tile_image(pattern_image(900, 100), flat);
  ASSERT_EQ(tiles.size(), 1U);
  EXPECT_TRUE(tiles[0].pixels == io::resize_bicubic(pattern_image(900, 100), 56, 56).pixels);
  // use_thumbnail false: just the grid.
  EXPECT_EQ(iv::plan_tiles(900, 100, config_with(56, 1, 12, true, false)).tiles(), 9);
  EXPECT_EQ(iv::plan_tiles(900, 100, config_with(56, 1, 12)).tiles(), 10);
}

TEST(InternVL2Processor, VideoFramesAreOneTileEach) {
  iv::ProcessorConfig cfg = config_with(56, 2, 6, false, false);
  const iv::ProcessorConfig v = iv::for_video(cfg);
  EXPECT_EQ(v.min_num, 1);
  EXPECT_EQ(v.max_num, 1);
  EXPECT_EQ(v.image_size, 56);
  const iv::ProcessedImage frame = iv::process_image(pattern_image(640, 360), v);
  EXPECT_EQ(frame.tiles(), 1);
  EXPECT_FALSE(frame.thumbnail);
}

TEST(InternVL2Processor, BatchConcatenatesTilesAndCountsThem) {
  const iv::ProcessorConfig cfg = config_with(28, 1, 6);
  std::vector<iv::ProcessedImage> images;
  images.push_back(iv::process_image(pattern_image(90, 30), cfg, "a"));
  images.push_back(iv::process_image(pattern_image(30, 30), cfg, "b"));
  const iv::ImageBatch batch = iv::batch_images(images);
  EXPECT_EQ(batch.num_patches_list, (std::vector<std::int64_t>{4, 1}));
  ASSERT_EQ(batch.pixels.shape(), (Shape{5, 3, 28, 28}));
  EXPECT_TRUE(std::equal(images[0].pixels.span().begin(), images[0].pixels.span().end(), batch.pixels.span().begin()));
  EXPECT_TRUE(std::equal(images[1].pixels.span().begin(), images[1].pixels.span().end(),
                         batch.pixels.span().begin() + images[0].pixels.numel()));
  images.push_back(iv::process_image(pattern_image(30, 30), config_with(56, 1, 6), "c.png"));
  expect_error<ValueError>([&] { (void)iv::batch_images(images); }, {"c.png", "a", "image_size"});
  expect_error<ValueError>([] { (void)iv::batch_images(std::span<const iv::ProcessedImage>{}); }, {"no images"});
}

// ---- video frame indices ------------------------------------------------------------

TEST(InternVL2Processor, VideoFrameIndices) {
  // 300 frames at 30 fps, 8 segments: seg = 299/8 = 37.375,
  // int(18.6875 + round(37.375 k)).
  EXPECT_EQ(iv::video_frame_indices(299, 30.0, 8), (std::vector<std::int64_t>{18, 55, 93, 130, 168, 205, 242, 280}));
  EXPECT_EQ(iv::video_frame_indices(0, 30.0, 3), (std::vector<std::int64_t>{0, 0, 0}));
  EXPECT_EQ(iv::video_frame_indices(299, 30.0).size(), 32U);
  expect_error<ValueError>([] { (void)iv::video_frame_indices(-1, 30.0, 8); }, {"max_frame -1"});
  expect_error<ValueError>([] { (void)iv::video_frame_indices(10, 0.0, 8); }, {"fps 0"});
  expect_error<ValueError>([] { (void)iv::video_frame_indices(10, std::nan(""), 8); }, {"fps nan"});
  expect_error<ValueError>([] { (void)iv::video_frame_indices(10, 30.0, 0); }, {"num_segments 0"});
}

// ---- config.json ---------------------------------------------------------------------

TEST(InternVL2Processor, ConfigFromJson) {
  // The keys of the published InternVL2-8B config.json that the processor reads.
  const auto published = nlohmann::json::parse(R"({
    "model_type": "internvl_chat", "force_image_size": 448, "dynamic_image_size": true,
    "use_thumbnail": true, "min_dynamic_patch": 1, "max_dynamic_patch": 12, "ps_version": "v2",
    "vision_config": {"image_size": 448, "patch_size": 14}})");
  const auto c = iv::ProcessorConfig::from_json(published, "InternVL2-8B/config.json");
  EXPECT_EQ(c.image_size, 448);
  EXPECT_EQ(c.min_num, 1);
  EXPECT_EQ(c.max_num, 12);
  EXPECT_TRUE(c.dynamic_image_size);
  EXPECT_TRUE(c.use_thumbnail);
  // force_image_size null: vision_config.image_size; absent keys: InternVLChatConfig's defaults.
  const auto sparse = iv::ProcessorConfig::from_json(
      nlohmann::json::parse(R"({"force_image_size": null, "vision_config": {"image_size": 224}})"), "c.json");
  EXPECT_EQ(sparse.image_size, 224);
  EXPECT_EQ(sparse.min_num, 1);
  EXPECT_EQ(sparse.max_num, 6);
  EXPECT_FALSE(sparse.dynamic_image_size);
  EXPECT_FALSE(sparse.use_thumbnail);
}

TEST(InternVL2Processor, ConfigErrorsNameTheFileAndKey) {
  auto parse = [](const char* text) { return nlohmann::json::parse(text); };
  expect_error<FormatError>(
      [&] { (void)iv::ProcessorConfig::from_json(parse(R"({"max_dynamic_patch": 12})"), "a/config.json"); },
      {"a/config.json", "force_image_size", "vision_config.image_size"});
  expect_error<FormatError>(
      [&] {
        (void)iv::ProcessorConfig::from_json(
            parse(R"({"force_image_size": 448, "min_dynamic_patch": 8, "max_dynamic_patch": 4})"), "b.json");
      },
      {"b.json", "min_dynamic_patch", "8", "max_dynamic_patch", "4"});
  expect_error<FormatError>(
      [&] { (void)iv::ProcessorConfig::from_json(parse(R"({"force_image_size": 0})"), "c.json"); },
      {"c.json", "force_image_size", "positive"});
  expect_error<FormatError>(
      [&] { (void)iv::ProcessorConfig::from_json(parse(R"({"force_image_size": "448"})"), "d.json"); },
      {"d.json", "force_image_size", "integer"});
  expect_error<FormatError>(
      [&] { (void)iv::ProcessorConfig::from_json(parse(R"({"vision_config": {"image_size": 99999}})"), "e.json"); },
      {"e.json", "vision_config.image_size", "99999"});
  expect_error<FormatError>(
      [&] {
        (void)iv::ProcessorConfig::from_json(parse(R"({"force_image_size": 448, "max_dynamic_patch": 5000})"),
                                             "f.json");
      },
      {"f.json", "max_dynamic_patch", "5000", "1024"});
  expect_error<FormatError>(
      [&] {
        (void)iv::ProcessorConfig::from_json(parse(R"({"force_image_size": 448, "use_thumbnail": 1})"), "g.json");
      },
      {"g.json", "use_thumbnail", "true or false"});
  expect_error<FormatError>([&] { (void)iv::ProcessorConfig::from_json(parse(R"({"vision_config": 3})"), "h.json"); },
                            {"h.json", "vision_config", "object"});
  expect_error<IoError>([] { (void)iv::ProcessorConfig::load("/nonexistent/internvl2"); }, {"/nonexistent/internvl2"});
}

// ---- bad inputs -----------------------------------------------------------------------

TEST(InternVL2Processor, BadImagesAndSettingsAreNamed) {
  expect_error<IoError>([] { (void)iv::load_image("/nonexistent/cat.jpg"); }, {"/nonexistent/cat.jpg"});
  const auto junk = std::filesystem::temp_directory_path() / "tessera_internvl2_junk.png";
  std::ofstream(junk, std::ios::binary) << "not an image";
  expect_error<FormatError>([&] { (void)iv::load_image(junk); }, {junk.string()});
  std::filesystem::remove(junk);

  const iv::RgbImage empty{0, 5, {}};
  expect_error<ValueError>([&] { (void)iv::process_image(empty, iv::ProcessorConfig{}, "empty.png"); },
                           {"empty.png", "0x5"});
  expect_error<ValueError>([] { (void)iv::plan_tiles(0, 10, iv::ProcessorConfig{}, "z.png"); }, {"z.png", "0x10"});
  const iv::RgbImage img = pattern_image(40, 30);
  expect_error<ValueError>([&] { (void)iv::process_image(img, config_with(448, 7, 3), "x.png"); },
                           {"x.png", "min_num 7", "max_num 3"});
  expect_error<ValueError>([&] { (void)iv::process_image(img, config_with(0, 1, 12), "x.png"); },
                           {"x.png", "image_size 0"});
  expect_error<ValueError>([&] { (void)iv::process_image(img, config_with(448, 1, 2000), "x.png"); },
                           {"x.png", "max_num 2000"});
  // A tiled image above the decoded-pixel limit: 12000² pixels a tile, 2 tiles.
  expect_error<ValueError>([] { (void)iv::plan_tiles(200, 100, config_with(12000, 1, 2), "big.png"); },
                           {"big.png", "200x100", "24000x12000"});
}

// ---- the reference's fixtures -----------------------------------------------------------

std::filesystem::path fixture_dir() {
  return tessera::testing::fixtures_dir() / "internvl2_processor";
}

const nlohmann::json& reference() {
  static const nlohmann::json j = nlohmann::json::parse(std::ifstream(fixture_dir() / "reference.json"));
  return j;
}

TEST(InternVL2ProcessorFixtures, TargetRatiosMatchCPythonsSetOrder) {
  const auto& cases = reference()["target_ratios"];
  ASSERT_GT(cases.size(), 150U);
  for (const auto& c : cases) {
    const auto lo = c["min_num"].get<std::int64_t>(), hi = c["max_num"].get<std::int64_t>();
    EXPECT_EQ(show(iv::target_ratios(lo, hi)), show(parse_grids(c["ratios"].get<std::string>()))) << lo << ".." << hi;
  }
}

TEST(InternVL2ProcessorFixtures, ClosestRatioTable) {
  const auto& rows = reference()["closest"];
  ASSERT_GT(rows.size(), 1000U);
  std::size_t checked = 0;
  for (const auto& row : rows) {
    std::istringstream in(row.get<std::string>());
    std::int64_t w = 0, h = 0, s = 0, lo = 0, hi = 0, c = 0, r = 0;
    in >> w >> h >> s >> lo >> hi >> c >> r;
    ASSERT_TRUE(in) << row;
    EXPECT_EQ(iv::plan_tiles(w, h, config_with(s, lo, hi)).grid, (Grid{c, r})) << row;
    ++checked;
  }
  // The exact same-area ties, whose answer depends on the set's order.
  const auto& ties = reference()["same_area_ties"];
  ASSERT_FALSE(ties.empty());
  for (const auto& t : ties) {
    const iv::ProcessorConfig cfg = config_with(t["image_size"].get<std::int64_t>(), t["min_num"].get<std::int64_t>(),
                                                t["max_num"].get<std::int64_t>());
    EXPECT_EQ(iv::plan_tiles(t["width"].get<std::int64_t>(), t["height"].get<std::int64_t>(), cfg).grid,
              (Grid{t["grid"][0].get<std::int64_t>(), t["grid"][1].get<std::int64_t>()}))
        << t.dump();
  }
  EXPECT_EQ(checked, rows.size());
}

TEST(InternVL2ProcessorFixtures, VideoFrameIndices) {
  const auto& cases = reference()["video"];
  ASSERT_FALSE(cases.empty());
  for (const auto& c : cases) {
    EXPECT_EQ(iv::video_frame_indices(c["max_frame"].get<std::int64_t>(), c["fps"].get<double>(),
                                      c["num_segments"].get<std::int64_t>()),
              c["indices"].get<std::vector<std::int64_t>>())
        << c.dump();
  }
}

// Every case: load_image on the committed file gives the reference's grid
// and tile count, and its pixels (float32 cases: the reference's tensor;
// 448 cases: the reference's uint8 tiles, normalized) within 1e-5.
TEST(InternVL2ProcessorFixtures, TilesAndPixelsMatchTheReference) {
  const io::SafetensorsFile arrays = io::SafetensorsFile::open(fixture_dir() / "reference.safetensors");
  const auto& cases = reference()["cases"];
  ASSERT_GE(cases.size(), 10U);
  std::size_t png_cases = 0, float_cases = 0;
  for (const auto& [name, m] : cases.items()) {
    SCOPED_TRACE(name);
    const auto& jc = m["config"];
    const iv::ProcessorConfig cfg = config_with(jc["image_size"].get<std::int64_t>(), jc["min_num"].get<std::int64_t>(),
                                                jc["max_num"].get<std::int64_t>(), jc["dynamic_image_size"].get<bool>(),
                                                jc["use_thumbnail"].get<bool>());
    const std::int64_t s = cfg.image_size;
    const auto file = fixture_dir() / m["file"].get<std::string>();
    const iv::ProcessedImage out = iv::load_image(file, cfg);
    EXPECT_EQ(out.grid, (Grid{m["grid"][0].get<std::int64_t>(), m["grid"][1].get<std::int64_t>()}));
    EXPECT_EQ(out.thumbnail, m["thumbnail"].get<bool>());
    const std::int64_t tiles = m["tiles"].get<std::int64_t>();
    ASSERT_EQ(out.pixels.shape(), (Shape{tiles, 3, s, s}));
    EXPECT_EQ(out.source, file.string());

    // The reference's pixel values, [tiles, 3, S, S].
    std::vector<float> want(static_cast<std::size_t>(tiles * 3 * s * s));
    if (m["storage"] == "png") {
      ++png_cases;
      // Tiles stacked top to bottom in one RGB PNG; and tessera's own uint8 tiles equal them.
      const iv::RgbImage stacked = io::load_rgb_image(fixture_dir() / m["tiles_png"].get<std::string>());
      ASSERT_EQ(stacked.width, s);
      ASSERT_EQ(stacked.height, tiles * s);
      const auto own = iv::tile_image(io::load_rgb_image(file, io::AlphaMode::drop), cfg);
      ASSERT_EQ(static_cast<std::int64_t>(own.size()), tiles);
      for (std::int64_t k = 0; k < tiles; ++k) {
        EXPECT_TRUE(own[static_cast<std::size_t>(k)].pixels == io::crop(stacked, 0, k * s, s, s).pixels)
            << "uint8 tile " << k << " differs from the reference's";
        for (std::int64_t c = 0; c < 3; ++c) {
          for (std::int64_t y = 0; y < s; ++y) {
            for (std::int64_t x = 0; x < s; ++x) {
              want[static_cast<std::size_t>(((k * 3 + c) * s + y) * s + x)] =
                  normalized(stacked.at(k * s + y, x, c), static_cast<std::size_t>(c));
            }
          }
        }
      }
    } else {
      ++float_cases;
      const auto t = arrays.load<Host, float>(m["tensor"].get<std::string>());
      ASSERT_EQ(t.shape(), (Shape{tiles, 3, s, s}));
      std::copy(t.span().begin(), t.span().end(), want.begin());
    }
    double worst = 0.0;
    const auto got = out.pixels.span();
    for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(double{got[i]} - double{want[i]}));
    EXPECT_LE(worst, 1e-5) << "max |tessera - reference| over " << want.size() << " values";
  }
  EXPECT_GE(png_cases, 3U);
  EXPECT_GE(float_cases, 8U);
}

// The alpha case is only a check of .convert("RGB") if compositing would
// have given other pixels.
TEST(InternVL2ProcessorFixtures, AlphaIsDroppedNotComposited) {
  const auto file = fixture_dir() / "images" / "alpha.png";
  const auto drop = io::load_rgb_image(file, io::AlphaMode::drop);
  const auto white = io::load_rgb_image(file, io::AlphaMode::composite_on_white);
  EXPECT_FALSE(drop.pixels == white.pixels);
  const auto& m = reference()["cases"]["alpha_s28_max6"];
  EXPECT_EQ(m["file"], "images/alpha.png");
}

}  // namespace
