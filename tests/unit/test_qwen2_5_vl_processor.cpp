// The Qwen2.5-VL processor against its references: transformers' PIL-backend
// image processor (Qwen2VLImageProcessorPil, use_fast=False), transformers
// 4.x's PIL video path, Pillow's resize and decoders, and the chat template
// rendered by transformers' Jinja renderer. Fixtures: tests/fixtures/
// qwen2_5_vl_processor, from tools/fixtures/make_qwen2_5_vl_processor_fixtures.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2_5_vl_processor.hpp>

#include "test_util.hpp"

namespace {

using namespace tessera;
using tessera::testing::expect_error;
namespace vl = tessera::models::qwen2_5_vl;
using Grid = std::array<std::int64_t, 3>;

std::filesystem::path fixture_dir() {
  return tessera::testing::fixtures_dir() / "qwen2_5_vl_processor";
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;
  Reference()
      : meta(nlohmann::json::parse(std::ifstream(fixture_dir() / "reference.json"))),
        arrays(io::SafetensorsFile::open(fixture_dir() / "reference.safetensors")) {}

  std::vector<std::uint8_t> u8(const std::string& name) const {
    const auto bytes = arrays.bytes(arrays.at(name));
    std::vector<std::uint8_t> out(bytes.size());
    std::transform(bytes.begin(), bytes.end(), out.begin(), [](std::byte b) { return static_cast<std::uint8_t>(b); });
    return out;
  }

  // A uint8 [H, W, 3] array as an image.
  vl::RgbImage image(const std::string& name) const {
    const auto& info = arrays.at(name);
    return vl::RgbImage{info.shape[1], info.shape[0], u8(name)};
  }

  // A uint8 [T, H, W, 3] array as frames.
  std::vector<vl::RgbImage> frames(const std::string& name) const {
    const auto& info = arrays.at(name);
    const auto all = u8(name);
    const std::int64_t t = info.shape[0], h = info.shape[1], w = info.shape[2];
    const auto per = static_cast<std::size_t>(h * w * 3);
    std::vector<vl::RgbImage> out;
    for (std::int64_t i = 0; i < t; ++i) {
      const auto begin = all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(i) * per);
      out.push_back(vl::RgbImage{w, h, std::vector<std::uint8_t>(begin, begin + static_cast<std::ptrdiff_t>(per))});
    }
    return out;
  }
};

const Reference& reference() {
  static const Reference r;
  return r;
}

// ---- smart_resize and config -------------------------------------------------

TEST(Qwen25VLProcessor, SmartResizeMatchesTransformersTable) {
  const auto& rows = reference().meta["smart_resize"]["ok"];
  ASSERT_GT(rows.size(), 1000u);
  for (const auto& r : rows) {
    const auto h = r[0].get<std::int64_t>(), w = r[1].get<std::int64_t>();
    const auto [rh, rw] = vl::smart_resize(h, w, r[2].get<std::int64_t>(), r[3].get<std::int64_t>(),
                                           r[4].get<std::int64_t>());
    EXPECT_EQ(rh, r[5].get<std::int64_t>()) << r.dump();
    EXPECT_EQ(rw, r[6].get<std::int64_t>()) << r.dump();
  }
}

TEST(Qwen25VLProcessor, SmartResizeRejectsSmallSidesAndExtremeRatios) {
  const auto& rows = reference().meta["smart_resize"]["rejected"];
  ASSERT_GT(rows.size(), 100u);
  for (const auto& r : rows) {
    EXPECT_THROW(vl::smart_resize(r[0].get<std::int64_t>(), r[1].get<std::int64_t>(), r[2].get<std::int64_t>(),
                                  r[3].get<std::int64_t>(), r[4].get<std::int64_t>()),
                 ValueError)
        << r.dump();
  }
}

TEST(Qwen25VLProcessor, SmartResizeErrorsNameTheSizes) {
  expect_error<ValueError>([] { (void)vl::smart_resize(5, 1001); }, {"aspect ratio", "height 5", "width 1001"});
  expect_error<ValueError>([] { (void)vl::smart_resize(10, 300); },
                           {"image 300x10", "height 10", "width 300", "smaller than 28 pixels on a side"});
  expect_error<ValueError>([] { (void)vl::smart_resize(300, 27); }, {"height 300", "width 27", "smaller than 28"});
  expect_error<ValueError>([] { (void)vl::smart_resize(0, 28); }, {"must be positive", "height 0"});
  expect_error<ValueError>([] { (void)vl::smart_resize(28, -1); }, {"must be positive", "width -1"});
  EXPECT_NO_THROW((void)vl::smart_resize(28, 5600));  // a ratio of exactly 200 is allowed
  EXPECT_NO_THROW((void)vl::smart_resize(28, 28));
  // Python's round() is half to even: 70/28 = 2.5 -> 2, 42/28 = 1.5 -> 2.
  EXPECT_EQ(vl::smart_resize(70, 70, 28, 1, 1 << 30), std::make_pair(std::int64_t{56}, std::int64_t{56}));
  EXPECT_EQ(vl::smart_resize(42, 126, 28, 1, 1 << 30), std::make_pair(std::int64_t{56}, std::int64_t{112}));
}

TEST(Qwen25VLProcessor, ConfigFromPublishedJson) {
  const auto cfg = vl::ImageProcessorConfig::from_json(reference().meta["published_config"]);
  EXPECT_EQ(cfg.min_pixels, 3136);
  EXPECT_EQ(cfg.max_pixels, 12845056);
  EXPECT_EQ(cfg.patch_size, 14);
  EXPECT_EQ(cfg.temporal_patch_size, 2);
  EXPECT_EQ(cfg.merge_size, 2);
  EXPECT_EQ(cfg.image_mean[1], 0.4578275);
  EXPECT_EQ(cfg.image_std[2], 0.27577711);
  // transformers 5's layout: size.{shortest,longest}_edge; min/max_pixels win.
  const auto v5 = vl::ImageProcessorConfig::from_json(
      nlohmann::json::parse(R"({"size": {"shortest_edge": 100, "longest_edge": 5000}, "max_pixels": 7000})"));
  EXPECT_EQ(v5.min_pixels, 100);
  EXPECT_EQ(v5.max_pixels, 7000);
  // Errors are FormatErrors naming the file and the key, like every JSON reader's.
  expect_error<FormatError>(
      [] { (void)vl::ImageProcessorConfig::from_json(nlohmann::json::parse(R"({"image_mean": [0.5, 0.5]})"), "p.json"); },
      {"'p.json'", "\"image_mean\"", "3 numbers"});
  expect_error<FormatError>(
      [] { (void)vl::ImageProcessorConfig::from_json(nlohmann::json::parse(R"({"size": {"longest_edge": -4}})"), "p.json"); },
      {"'p.json'", "\"size.longest_edge\"", "positive"});
}

// ---- resize --------------------------------------------------------------------

// The fixture generator's noise_pixels(): a 32-bit hash per byte; odd seeds
// give 5x3 blocks pushed to 0/255 (the bicubic overshoot is then clipped).
std::uint32_t mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352DU;
  x ^= x >> 15;
  x *= 0x846CA68BU;
  x ^= x >> 16;
  return x;
}

vl::RgbImage noise_image(std::uint32_t seed, std::int64_t w, std::int64_t h) {
  vl::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
  const bool blocky = (seed & 1U) != 0;
  for (std::int64_t y = 0; y < h; ++y) {
    for (std::int64_t x = 0; x < w; ++x) {
      for (std::int64_t c = 0; c < 3; ++c) {
        const std::int64_t key = blocky ? ((y / 3) * 65536 + x / 5) * 3 + c : (y * w + x) * 3 + c;
        std::uint32_t v = mix32(static_cast<std::uint32_t>(key) ^ mix32(seed)) >> 24;
        if (blocky) v = v < 96 ? 0 : (v > 160 ? 255 : v);
        img.pixels[static_cast<std::size_t>((y * w + x) * 3 + c)] = static_cast<std::uint8_t>(v);
      }
    }
  }
  return img;
}

std::string fnv1a64(const std::vector<std::uint8_t>& bytes) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (const auto b : bytes) h = (h ^ b) * 0x100000001B3ULL;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

TEST(Qwen25VLProcessor, ResizeMatchesPillowBitForBit) {
  const auto& cases = reference().meta["resize"]["cases"];
  ASSERT_GE(cases.size(), 40u);
  int vertical_first = 0, horizontal_first = 0;
  for (const auto& c : cases) {
    const auto seed = c[0].get<std::uint32_t>();
    const auto iw = c[1].get<std::int64_t>(), ih = c[2].get<std::int64_t>();
    const auto ow = c[3].get<std::int64_t>(), oh = c[4].get<std::int64_t>();
    const bool vfirst = ih - oh > 0 && ih - oh > (iw - ow) * 2;
    if (iw != ow && ih != oh) (vfirst ? vertical_first : horizontal_first) += 1;
    const auto out = vl::resize_bicubic(noise_image(seed, iw, ih), ow, oh);
    ASSERT_EQ(out.width, ow);
    ASSERT_EQ(out.height, oh);
    EXPECT_EQ(fnv1a64(out.pixels), c[5].get<std::string>())
        << "seed " << seed << ": " << iw << "x" << ih << " -> " << ow << "x" << oh << " ("
        << (vfirst ? "vertical" : "horizontal") << " pass first)";
  }
  // Both of Pillow's pass orders are exercised.
  EXPECT_GE(vertical_first, 5);
  EXPECT_GE(horizontal_first, 5);
}

TEST(Qwen25VLProcessor, ResizeToSameSizeIsIdentity) {
  const auto img = reference().image("image.exact_56x56");
  const auto same = vl::resize_bicubic(img, img.width, img.height);
  EXPECT_EQ(same.pixels, img.pixels);
  EXPECT_THROW((void)vl::resize_bicubic(img, 0, 5), ValueError);
  vl::RgbImage bad{4, 4, std::vector<std::uint8_t>(10)};
  expect_error<ValueError>([&] { (void)vl::resize_bicubic(bad, 2, 2); }, {"4x4", "10 bytes"});
}

// ---- images --------------------------------------------------------------------

TEST(Qwen25VLProcessor, PixelValuesMatchTransformers) {
  const auto& ref = reference();
  const auto& images = ref.meta["images"];
  ASSERT_EQ(images.size(), 6u);
  for (const auto& [name, m] : images.items()) {
    SCOPED_TRACE(name);
    const auto cfg = vl::ImageProcessorConfig::from_json(m["config"]);
    const auto img = ref.image("image." + name);
    ASSERT_EQ(img.height, m["height"].get<std::int64_t>());
    ASSERT_EQ(img.width, m["width"].get<std::int64_t>());
    const auto out = vl::preprocess_image(img, cfg);

    EXPECT_EQ(out.resized_height, m["resized_height"].get<std::int64_t>());
    EXPECT_EQ(out.resized_width, m["resized_width"].get<std::int64_t>());
    const auto grid = ref.arrays.load<Host, std::int64_t>("grid_thw." + name);
    ASSERT_EQ(grid.numel(), 3);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(out.grid_thw[i], grid.span()[i]) << "grid_thw[" << i << "]";

    const auto expected = ref.arrays.load<Host, float>("pixel_values_t0." + name);  // [N, 3*196], temporal copy 0
    const std::int64_t n = expected.dim(0);
    ASSERT_EQ(out.pixel_values.dim(0), n);
    ASSERT_EQ(out.pixel_values.dim(1), 1176);
    ASSERT_EQ(n, out.grid_thw[0] * out.grid_thw[1] * out.grid_thw[2]);
    std::int64_t exact = 0;
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < 3; ++c) {
        for (std::int64_t t = 0; t < 2; ++t) {
          for (std::int64_t k = 0; k < 196; ++k) {
            const float a = out.pixel_values.at(r, (c * 2 + t) * 196 + k);
            const float e = expected.at(r, c * 196 + k);
            exact += (a == e) ? 1 : 0;
            ASSERT_LE(std::abs(static_cast<double>(a) - static_cast<double>(e)), 1e-5)
                << "row " << r << " channel " << c << " t " << t << " index " << k;
          }
        }
      }
    }
    // The arithmetic follows numpy's float32 steps, so the values are bit-identical.
    EXPECT_EQ(exact, n * 1176);
  }
}

TEST(Qwen25VLProcessor, RejectsImagesWithASideBelow28) {
  const auto& ref = reference();
  const auto& rejected = ref.meta["rejected_images"];
  ASSERT_EQ(rejected.size(), 2u);
  for (const auto& [name, m] : rejected.items()) {
    const auto img = ref.image("image." + name);
    expect_error<ValueError>([&] { (void)vl::preprocess_image(img); },
                             {tessera::detail::concat("height ", m["height"].get<std::int64_t>()),
                              tessera::detail::concat("width ", m["width"].get<std::int64_t>()),
                              "smaller than 28 pixels on a side"});
  }
  vl::RgbImage bad{30, 30, std::vector<std::uint8_t>(30 * 30)};
  expect_error<ValueError>([&] { (void)vl::preprocess_image(bad); }, {"preprocess_image", "30x30", "900 bytes"});
  vl::ImageProcessorConfig cfg;
  cfg.merge_size = 0;
  expect_error<ValueError>([&] { (void)vl::preprocess_image(ref.image("image.exact_56x56"), cfg); }, {"merge_size"});
}

// ---- videos --------------------------------------------------------------------

TEST(Qwen25VLProcessor, VideoMatchesThePilPath) {
  const auto& ref = reference();
  const auto& videos = ref.meta["videos"];
  ASSERT_EQ(videos.size(), 2u);
  for (const auto& [name, m] : videos.items()) {
    SCOPED_TRACE(name);
    const auto cfg = vl::ImageProcessorConfig::from_json(m["config"]);
    const auto frames = ref.frames("video." + name);
    ASSERT_EQ(static_cast<std::int64_t>(frames.size()), m["frames"].get<std::int64_t>());
    const auto out = vl::preprocess_video(frames, m["fps"].get<double>(), cfg);

    const auto grid = ref.arrays.load<Host, std::int64_t>("video_grid_thw." + name);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(out.grid_thw[i], grid.span()[i]) << "grid_thw[" << i << "]";
    EXPECT_EQ(out.second_per_grid_t, m["second_per_grid_t"].get<double>());
    EXPECT_EQ(out.resized_height, m["resized_height"].get<std::int64_t>());
    EXPECT_EQ(out.resized_width, m["resized_width"].get<std::int64_t>());

    const auto expected = ref.arrays.load<Host, float>("video_pixel_values." + name);
    ASSERT_EQ(out.pixel_values.shape(), expected.shape());
    std::int64_t exact = 0;
    for (std::int64_t r = 0; r < expected.dim(0); ++r) {
      for (std::int64_t k = 0; k < expected.dim(1); ++k) {
        const float a = out.pixel_values.at(r, k), e = expected.at(r, k);
        exact += (a == e) ? 1 : 0;
        ASSERT_LE(std::abs(static_cast<double>(a) - static_cast<double>(e)), 1e-5) << "row " << r << " column " << k;
      }
    }
    EXPECT_EQ(exact, expected.numel());
  }
}

TEST(Qwen25VLProcessor, OneFrameVideoIsTheImage) {
  const auto img = reference().image("image.odd_97x61");
  const auto image = vl::preprocess_image(img);
  const auto video = vl::preprocess_video(std::span<const vl::RgbImage>(&img, 1), 4.0);
  EXPECT_EQ(video.grid_thw, image.grid_thw);
  EXPECT_EQ(video.second_per_grid_t, 0.5);
  EXPECT_TRUE(tessera::testing::same_bits(video.pixel_values, image.pixel_values));
}

TEST(Qwen25VLProcessor, VideoErrorsNameTheProblem) {
  const auto frames = reference().frames("video.even_4");
  expect_error<ValueError>([&] { (void)vl::preprocess_video(frames, 0.0); }, {"fps", "positive"});
  expect_error<ValueError>([&] { (void)vl::preprocess_video(frames, -2.0); }, {"fps"});
  expect_error<ValueError>([&] { (void)vl::preprocess_video(frames, std::numeric_limits<double>::quiet_NaN()); },
                           {"fps"});
  expect_error<ValueError>([&] { (void)vl::preprocess_video(std::span<const vl::RgbImage>(), 2.0); }, {"no frames"});
  auto mixed = frames;
  mixed[2] = noise_image(1, frames[0].width + 1, frames[0].height);
  expect_error<ValueError>([&] { (void)vl::preprocess_video(mixed, 2.0); },
                           {"frame 2 is 34x40", "frame 0 is 33x40", "same size"});
  mixed[2].pixels.pop_back();
  expect_error<ValueError>([&] { (void)vl::preprocess_video(mixed, 2.0); }, {"frame 2", "bad RGB image"});
}

// ---- image files -----------------------------------------------------------------

#if TESSERA_HAVE_STB_IMAGE
std::filesystem::path image_file(const std::string& name) { return fixture_dir() / "images" / name; }

// The one documented difference in AlphaMode::drop: stb_image leaves a
// GIF's transparent pixels black where PIL's .convert("RGB") shows the
// transparent index's palette colour. Every other pixel matches.
void expect_gif_drop(const std::vector<std::uint8_t>& got, const std::vector<std::uint8_t>& pil,
                     const std::vector<std::uint8_t>& composite) {
  ASSERT_EQ(got.size(), pil.size());
  std::size_t transparent = 0;
  for (std::size_t i = 0; i < got.size(); i += 3) {
    const bool white = composite[i] == 255 && composite[i + 1] == 255 && composite[i + 2] == 255;
    const bool black = got[i] == 0 && got[i + 1] == 0 && got[i + 2] == 0;
    if (white && black) {
      ++transparent;
      continue;
    }
    for (std::size_t c = 0; c < 3; ++c) ASSERT_EQ(got[i + c], pil[i + c]) << "pixel " << i / 3;
  }
  EXPECT_GT(transparent, 0U);
}

TEST(Qwen25VLProcessor, DecodesPngBmpGifExactlyLikePillow) {
  const auto& ref = reference();
  int checked = 0;
  for (const auto& [name, m] : ref.meta["image_files"]["files"].items()) {
    if (!m["exact"].get<bool>()) continue;
    SCOPED_TRACE(name + " (" + m["what"].get<std::string>() + ", PIL mode " + m["pil_mode"].get<std::string>() + ")");
    const auto composite = vl::load_rgb_image(image_file(name));
    ASSERT_EQ(composite.width, m["width"].get<std::int64_t>());
    ASSERT_EQ(composite.height, m["height"].get<std::int64_t>());
    EXPECT_EQ(composite.pixels, ref.u8("decoded." + name + ".composite")) << "transformers' convert_to_rgb";
    const auto drop = vl::load_rgb_image(image_file(name), vl::AlphaMode::drop);
    if (name == "trns.gif") {
      expect_gif_drop(drop.pixels, ref.u8("decoded." + name + ".drop"), composite.pixels);
    } else {
      EXPECT_EQ(drop.pixels, ref.u8("decoded." + name + ".drop")) << "PIL .convert(\"RGB\")";
    }
    ++checked;
  }
  EXPECT_EQ(checked, 17);
}

// stb_image's IDCT and chroma upsampling are not libjpeg-turbo's, so JPEG
// pixels may differ from PIL's by a few levels; the bound is what these
// files show (measured: at most 2 levels apart, 0.1 on average; most
// pixels are equal).
TEST(Qwen25VLProcessor, DecodesJpegCloseToPillow) {
  const auto& ref = reference();
  int checked = 0;
  for (const auto& [name, m] : ref.meta["image_files"]["files"].items()) {
    if (m["exact"].get<bool>()) continue;
    SCOPED_TRACE(name + " (" + m["what"].get<std::string>() + ")");
    const auto img = vl::load_rgb_image(image_file(name));
    const auto expected = ref.u8("decoded." + name + ".composite");
    ASSERT_EQ(img.width, m["width"].get<std::int64_t>());
    ASSERT_EQ(img.height, m["height"].get<std::int64_t>());
    ASSERT_EQ(img.pixels.size(), expected.size());
    int worst = 0;
    double sum = 0.0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const int d = std::abs(int{img.pixels[i]} - int{expected[i]});
      worst = std::max(worst, d);
      sum += d;
    }
    EXPECT_LE(worst, 2);
    EXPECT_LE(sum / static_cast<double>(expected.size()), 0.25);
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(Qwen25VLProcessor, BadImageFilesThrowFormatErrorNamingTheFile) {
  const auto& bad = reference().meta["image_files"]["bad"];
  ASSERT_EQ(bad.size(), 6u);
  for (const auto& [name, m] : bad.items()) {
    SCOPED_TRACE(name + ", which Pillow rejects with " + m["pillow_error"].get<std::string>());
    expect_error<FormatError>([&] { (void)vl::load_rgb_image(image_file(name)); },
                              {"cannot decode image file", image_file(name).string()});
  }
  expect_error<FormatError>([&] { (void)vl::load_rgb_image(image_file("empty.png")); }, {"file is empty"});
  expect_error<FormatError>([&] { (void)vl::load_rgb_image(image_file("truncated.jpg")); }, {"truncated"});
  expect_error<FormatError>([&] { (void)vl::load_rgb_image(image_file("truncated.bmp")); }, {"truncated"});
  // More than 256 Huffman symbols would overflow stb_image's tables.
  expect_error<FormatError>([&] { (void)vl::load_rgb_image(image_file("bad_huffman.jpg")); }, {"Huffman table"});
  expect_error<IoError>([&] { (void)vl::load_rgb_image(image_file("missing.jpg")); }, {"missing.jpg"});
}

TEST(Qwen25VLProcessor, DecodeFromMemoryAndPixelLimit) {
  // A 2x1 24-bit BMP (blue-green-red byte order, rows padded to 4 bytes).
  const std::vector<std::uint8_t> bmp = {'B', 'M', 62, 0, 0, 0, 0,  0,  0,  0,  54, 0,  0,  0,  40, 0,
                                         0,   0,   2,  0, 0, 0, 1,  0,  0,  0,  1,  0,  24, 0,  0,  0,
                                         0,   0,   8,  0, 0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
                                         0,   0,   0,  0, 0, 0, 30, 20, 10, 60, 50, 40, 0,  0};
  const auto img = vl::decode_rgb_image(bmp, "tiny.bmp");
  EXPECT_EQ(img.width, 2);
  EXPECT_EQ(img.height, 1);
  EXPECT_EQ(img.pixels, (std::vector<std::uint8_t>{10, 20, 30, 40, 50, 60}));
  expect_error<FormatError>([&] { (void)vl::decode_rgb_image(bmp, "tiny.bmp", vl::AlphaMode::drop, 1); },
                            {"tiny.bmp", "2x1", "limit of 1 pixels"});
  auto empty = bmp;
  empty[18] = 0;  // width 0: stb_image accepts it, an image needs pixels
  expect_error<FormatError>([&] { (void)vl::decode_rgb_image(empty, "empty.bmp"); }, {"empty.bmp", "0x1"});
}

TEST(Qwen25VLProcessor, ImageFileToPixelValuesMatchesTransformers) {
  // transformers' processor on Image.open(file) vs decode + preprocess here.
  const auto& ref = reference();
  const auto& m = ref.meta["image_files"]["pipeline"];
  const auto name = m["file"].get<std::string>();
  const auto out = vl::preprocess_image(vl::load_rgb_image(image_file(name)),
                                        vl::ImageProcessorConfig::from_json(m["config"]));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(out.grid_thw[i], m["grid_thw"][i].get<std::int64_t>());
  const auto expected = ref.arrays.load<Host, float>("file_pixel_values_t0." + name);  // temporal copy 0
  ASSERT_EQ(out.pixel_values.dim(0), expected.dim(0));
  for (std::int64_t r = 0; r < expected.dim(0); ++r) {
    for (std::int64_t c = 0; c < 3; ++c) {
      for (std::int64_t k = 0; k < 196; ++k) {
        ASSERT_EQ(out.pixel_values.at(r, (c * 2) * 196 + k), expected.at(r, c * 196 + k)) << "row " << r;
        ASSERT_EQ(out.pixel_values.at(r, (c * 2 + 1) * 196 + k), expected.at(r, c * 196 + k)) << "row " << r;
      }
    }
  }
}
#endif

// ---- prompts ---------------------------------------------------------------------

TEST(Qwen25VLProcessor, ChatPromptMatchesTheJinjaTemplate) {
  const auto& rows = reference().meta["chat_prompts"];
  ASSERT_GE(rows.size(), 6u);
  for (const auto& r : rows) {
    const std::string text = r["user_text"].get<std::string>();
    std::optional<std::string> system;
    if (!r["system"].is_null()) system = r["system"].get<std::string>();
    const std::string got = vl::chat_prompt(text, r["images"].get<std::int64_t>(), r["videos"].get<std::int64_t>(),
                                            system ? std::optional<std::string_view>(*system) : std::nullopt);
    EXPECT_EQ(got, r["rendered"].get<std::string>()) << r.dump();
  }
  expect_error<ValueError>([] { (void)vl::chat_prompt("x", -1, 0); }, {"chat_prompt", "-1"});
}

constexpr std::int64_t kImg = 151655, kVid = 151656, kStart = 151652, kEnd = 151653;

TEST(Qwen25VLProcessor, ExpandVisionPlaceholders) {
  const vl::VisionTokens tokens;
  const std::vector<std::int64_t> ids = {1, kStart, kImg, kEnd, 2, kStart, kVid, kEnd, kStart, kImg, kEnd, 3};
  const std::vector<Grid> images = {{1, 4, 6}, {1, 2, 2}};  // 6 and 1 merged tokens
  const std::vector<Grid> videos = {{3, 2, 4}};             // 6
  const auto out = vl::expand_vision_placeholders(ids, images, videos, tokens, 2);
  std::vector<std::int64_t> want = {1, kStart};
  want.insert(want.end(), 6, kImg);
  want.insert(want.end(), {kEnd, 2, kStart});
  want.insert(want.end(), 6, kVid);
  want.insert(want.end(), {kEnd, kStart, kImg, kEnd, 3});
  EXPECT_EQ(out, want);
  EXPECT_NO_THROW(vl::check_placeholder_counts(out, images, videos, tokens, 2));

  // No vision placeholders: the ids come back unchanged.
  const std::vector<std::int64_t> text = {5, 6, 7};
  EXPECT_EQ(vl::expand_vision_placeholders(text, {}, {}, tokens, 2), text);
}

TEST(Qwen25VLProcessor, ExpandVisionPlaceholdersErrors) {
  const vl::VisionTokens tokens;
  const std::vector<std::int64_t> two = {kImg, 5, kImg};
  const std::vector<Grid> one = {{1, 4, 4}};
  expect_error<ValueError>([&] { (void)vl::expand_vision_placeholders(two, one, {}, tokens, 2); },
                           {"the prompt has 2 <|image_pad|> placeholders", "but 1 image was given"});
  const std::vector<std::int64_t> no_video = {kImg};
  const std::vector<Grid> videos = {{2, 2, 2}, {2, 2, 2}};
  expect_error<ValueError>([&] { (void)vl::expand_vision_placeholders(no_video, one, videos, tokens, 2); },
                           {"0 <|video_pad|> placeholders", "but 2 videos were given"});
  // Ids that are expanded already are not expanded again.
  const std::vector<std::int64_t> expanded(4, kImg);
  expect_error<ValueError>([&] { (void)vl::expand_vision_placeholders(expanded, one, {}, tokens, 2); },
                           {"4 <|image_pad|> placeholders", "look expanded already", "check_placeholder_counts"});
  const std::vector<Grid> odd = {{1, 3, 4}};
  expect_error<ValueError>([&] { (void)vl::expand_vision_placeholders(no_video, odd, {}, tokens, 2); },
                           {"grid [1,3,4]", "merge_size 2"});
  vl::VisionTokens same = tokens;
  same.video = same.image;
  expect_error<ValueError>([&] { (void)vl::expand_vision_placeholders(no_video, one, {}, same, 2); }, {"both 151655"});
}

TEST(Qwen25VLProcessor, CheckPlaceholderCounts) {
  const vl::VisionTokens tokens;
  const std::vector<Grid> images = {{1, 16, 32}};  // 128 features
  std::vector<std::int64_t> ids(120, kImg);
  ids.insert(ids.begin(), kStart);
  expect_error<ValueError>([&] { vl::check_placeholder_counts(ids, images, {}, tokens, 2); },
                           {"input ids hold 120 image tokens", "the images give 128 features", "[1,16,32]"});
  ids.insert(ids.end(), 8, kImg);
  EXPECT_NO_THROW(vl::check_placeholder_counts(ids, images, {}, tokens, 2));
  const std::vector<Grid> videos = {{2, 4, 4}, {1, 2, 2}};  // 8 + 1
  ids.insert(ids.end(), 8, kVid);
  expect_error<ValueError>([&] { vl::check_placeholder_counts(ids, images, videos, tokens, 2); },
                           {"input ids hold 8 video tokens", "the videos give 9 features", "[2,4,4], [1,2,2]"});
  ids.push_back(kVid);
  EXPECT_NO_THROW(vl::check_placeholder_counts(ids, images, videos, tokens, 2));
  expect_error<ValueError>([&] { vl::check_placeholder_counts(ids, {}, videos, tokens, 2); },
                           {"128 image tokens", "give 0 features (grids none"});
}

}  // namespace
