// io/image.hpp against Pillow 13: every committed JPEG decodes to exactly
// the bytes of Image.open(f).convert("RGB") (libjpeg-turbo with Pillow's
// settings), and resize_bicubic / crop / to_chw_normalized equal Pillow's
// Image.resize / Image.crop and torchvision's ToTensor + Normalize. Fixtures:
// tests/fixtures/images, from tools/fixtures/make_image_fixtures.py.
//
// The references are PNG files (decoded here by the PNG path, which the
// Qwen2.5-VL processor tests check against Pillow); the manifest holds an
// FNV-1a hash of each reference's raw RGB bytes, so a reference that decoded
// wrongly fails on its own, not as a mismatch.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tessera/io/image.hpp>

#include "test_util.hpp"

namespace {

using namespace tessera;
using tessera::testing::expect_error;

std::filesystem::path fixture_dir() {
  return tessera::testing::fixtures_dir() / "images";
}

const nlohmann::json& manifest() {
  static const nlohmann::json m = nlohmann::json::parse(std::ifstream(fixture_dir() / "manifest.json"));
  return m;
}

std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string fnv1a64(const std::vector<std::uint8_t>& bytes) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (const std::uint8_t b : bytes) {
    h ^= b;
    h *= 0x100000001B3ULL;
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

// A reference image: the PNG named by the manifest entry, checked against
// the entry's size and hash.
io::RgbImage reference(const std::string& dir, const nlohmann::json& entry) {
  const auto img = io::load_rgb_image(fixture_dir() / dir / entry["reference"].get<std::string>());
  EXPECT_EQ(img.width, entry["width"].get<std::int64_t>());
  EXPECT_EQ(img.height, entry["height"].get<std::int64_t>());
  EXPECT_EQ(fnv1a64(img.pixels), entry["fnv1a64"].get<std::string>()) << "the reference PNG did not decode exactly";
  return img;
}

// Equal pixels, or a message saying how many channel values differ and by
// how much at most.
::testing::AssertionResult same_pixels(const io::RgbImage& got, const io::RgbImage& want) {
  if (got.width != want.width || got.height != want.height) {
    return ::testing::AssertionFailure() << "size " << got.width << "x" << got.height << ", Pillow's "
                                         << want.width << "x" << want.height;
  }
  std::size_t differ = 0;
  int worst = 0;
  for (std::size_t i = 0; i < got.pixels.size(); ++i) {
    const int d = std::abs(int{got.pixels[i]} - int{want.pixels[i]});
    differ += d != 0 ? 1U : 0U;
    worst = std::max(worst, d);
  }
  if (differ == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << differ << " of " << got.pixels.size()
                                       << " channel values differ from Pillow's, by up to " << worst;
}

const io::RgbImage& source_image() {  // the decoded file the resize/crop/normalize references start from
  static const io::RgbImage img = io::load_rgb_image(fixture_dir() / "jpeg" / manifest()["source"].get<std::string>());
  return img;
}

// ---- JPEG ------------------------------------------------------------------------

TEST(Image, JpegDecodesExactlyLikePillow) {
  int checked = 0;
  for (const auto& [name, entry] : manifest()["jpeg"].items()) {
    SCOPED_TRACE(name + ": " + entry["what"].get<std::string>());
    const auto want = reference("jpeg", entry);
    const auto got = io::load_rgb_image(fixture_dir() / "jpeg" / name);
    EXPECT_TRUE(same_pixels(got, want));
    // Opaque: dropping alpha or compositing on white changes nothing.
    EXPECT_EQ(io::load_rgb_image(fixture_dir() / "jpeg" / name, io::AlphaMode::drop).pixels, got.pixels);
    ++checked;
  }
  EXPECT_EQ(checked, 14);
}

TEST(Image, JpegFixturesCoverEveryLayout) {
  // What the fixtures claim to cover, as Pillow saw the files.
  const auto& j = manifest()["jpeg"];
  EXPECT_EQ(j["baseline_420.jpg"]["subsampling"], "4:2:0");
  EXPECT_EQ(j["baseline_422.jpg"]["subsampling"], "4:2:2");
  EXPECT_EQ(j["baseline_444.jpg"]["subsampling"], "4:4:4");
  EXPECT_EQ(j["progressive_420.jpg"]["progressive"], true);
  EXPECT_EQ(j["progressive_422_odd_37x29.jpg"]["progressive"], true);
  EXPECT_EQ(j["grey.jpg"]["pil_mode"], "L");
  EXPECT_EQ(j["cmyk_adobe.jpg"]["pil_mode"], "CMYK");
  EXPECT_EQ(j["cmyk_adobe.jpg"]["adobe_transform"], 0);
  EXPECT_EQ(j["ycck_adobe.jpg"]["adobe_transform"], 2);
  EXPECT_FALSE(j["cmyk_no_adobe.jpg"].contains("adobe_transform"));
  EXPECT_EQ(j["rgb_no_ycc.jpg"]["adobe_transform"], 0);
  EXPECT_EQ(j["odd_212x147_420.jpg"]["width"], 212);
  EXPECT_EQ(j["odd_212x147_420.jpg"]["height"], 147);
}

// Image.open does not apply EXIF orientation, and neither do the Qwen2.5-VL
// processor and qwen-vl-utils on top of it: the file decodes as stored.
TEST(Image, ExifOrientationIsNotApplied) {
  const auto& entry = manifest()["jpeg"]["exif_orientation_6.jpg"];
  ASSERT_EQ(entry["exif_orientation"], 6);
  const auto img = io::load_rgb_image(fixture_dir() / "jpeg" / "exif_orientation_6.jpg");
  EXPECT_EQ(img.width, 64);
  EXPECT_EQ(img.height, 48);
  EXPECT_EQ(entry["exif_transpose_size"], nlohmann::json::array({48, 64}));  // what load_image would give
  EXPECT_TRUE(same_pixels(img, io::load_rgb_image(fixture_dir() / "jpeg" / "baseline_420.jpg")));
}

std::vector<std::uint8_t> jpeg_bytes(const std::string& name) { return read_bytes(fixture_dir() / "jpeg" / name); }

TEST(Image, JpegErrorsNameTheFile) {
  const auto good = jpeg_bytes("baseline_420.jpg");
  auto cut = good;
  cut.resize(good.size() / 2);
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(cut, "half.jpg"); },
                            {"cannot decode image file half.jpg", "truncated"});
  auto no_eoi = good;
  no_eoi.resize(good.size() - 2);
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(no_eoi, "no_eoi.jpg"); }, {"no_eoi.jpg", "truncated"});
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(good, "big.jpg", io::AlphaMode::drop, 64 * 48 - 1); },
                            {"big.jpg", "64x48", "limit of 3071 pixels"});
  EXPECT_NO_THROW((void)io::decode_rgb_image(good, "ok.jpg", io::AlphaMode::drop, 64 * 48));

  // Pillow opens a JPEG only when it starts with FF D8 FF.
  auto no_marker = good;
  no_marker[2] = 0x00;
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(no_marker, "odd.jpg"); }, {"odd.jpg", "FF D8 FF"});
  std::vector<std::uint8_t> fill = {0xFF};
  fill.insert(fill.end(), good.begin(), good.end());  // a fill byte before SOI: stb_image took it, Pillow does not
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(fill, "fill.jpg"); }, {"fill.jpg", "unknown image type"});

  // libjpeg's own errors come back as FormatError (its error_exit would exit()).
  const std::array<std::uint8_t, 2> sof0 = {0xFF, 0xC0};  // baseline start-of-frame
  auto bad_sof = good;
  const auto sof = std::search(bad_sof.begin(), bad_sof.end(), sof0.begin(), sof0.end());
  ASSERT_NE(sof, bad_sof.end());
  sof[4] = 12;  // sample precision 12: an 8-bit libjpeg (and Pillow) refuse it
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(bad_sof, "twelve.jpg"); }, {"twelve.jpg", "JPEG: "});
  auto two_layers = good;
  const auto sof2 = std::search(two_layers.begin(), two_layers.end(), sof0.begin(), sof0.end());
  sof2[9] = 2;  // 2 components (the segment is then too long for them: libjpeg says so first)
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(two_layers, "two.jpg"); }, {"two.jpg"});
}

// Corrupted copies of every fixture: each either decodes (to the header's
// size) or throws FormatError; libjpeg's error exits unwind through the
// setjmp steps, many times over, with nothing leaked (ASan in the debug
// preset) and no crash.
TEST(Image, CorruptJpegsFailCleanly) {
  std::mt19937 rng(20260522);
  int decoded = 0, failed = 0;
  for (const auto& [name, entry] : manifest()["jpeg"].items()) {
    const auto good = jpeg_bytes(name);
    for (int trial = 0; trial < 40; ++trial) {
      auto bad = good;
      const int flips = 1 + trial % 8;
      for (int k = 0; k < flips; ++k) {
        const std::size_t at = 3 + rng() % (bad.size() - 3);  // keep the FF D8 FF signature
        bad[at] = static_cast<std::uint8_t>(rng());
      }
      try {
        const auto img = io::decode_rgb_image(bad, name, io::AlphaMode::drop, 1 << 20);
        EXPECT_EQ(img.pixels.size(), static_cast<std::size_t>(img.width * img.height * 3));
        ++decoded;
      } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        ++failed;
      }
    }
  }
  EXPECT_GT(decoded, 0);
  EXPECT_GT(failed, 0);
}

// A PNG cut off inside the CRC of an empty IDAT chunk (found by fuzz_image:
// stb_image copied the chunk's zero bytes from a null buffer, undefined
// behaviour under UBSan). It is refused like any PNG without image data.
TEST(Image, TruncatedEmptyIdatPngIsRefused) {
  const std::vector<std::uint8_t> png = {
      0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A,  // signature
      0x00, 0x00, 0x00, 0x0D, 'I', 'H', 'D', 'R',   // IHDR, 13 bytes: 29x19, 8-bit greyscale
      0x00, 0x00, 0x00, 0x1D, 0x00, 0x00, 0x00, 0x13, 0x08, 0x00, 0x00, 0x00, 0x00,
      0x49, 0xF2, 0xA3, 0x59,                       // its CRC
      0x00, 0x00, 0x00, 0x00, 'I', 'D', 'A', 'T',   // an empty IDAT ...
      0x4E, 0x71, 0x02};                            // ... whose CRC is cut off
  expect_error<FormatError>([&] { (void)io::decode_rgb_image(png, "cut.png"); }, {"cannot decode image file cut.png"});
}

// ---- resize, crop, normalize -------------------------------------------------------

TEST(Image, ResizeBicubicMatchesPillow) {
  int checked = 0;
  for (const auto& [name, entry] : manifest()["resize"].items()) {
    SCOPED_TRACE(name);
    const auto want = reference("resize", entry);
    EXPECT_TRUE(same_pixels(io::resize_bicubic(source_image(), want.width, want.height), want));
    ++checked;
  }
  EXPECT_EQ(checked, 7);
}

TEST(Image, CropMatchesPillowIncludingOutsideTheImage) {
  int checked = 0;
  for (const auto& [name, entry] : manifest()["crop"].items()) {
    SCOPED_TRACE(name);
    const auto want = reference("crop", entry);
    const auto got = io::crop(source_image(), entry["x"].get<std::int64_t>(), entry["y"].get<std::int64_t>(),
                              entry["width"].get<std::int64_t>(), entry["height"].get<std::int64_t>());
    EXPECT_TRUE(same_pixels(got, want));
    ++checked;
  }
  EXPECT_EQ(checked, 7);
}

TEST(Image, CropRejectsEmptyWindowsAndBadImages) {
  const auto& img = source_image();
  expect_error<ValueError>([&] { (void)io::crop(img, 0, 0, 0, 5); }, {"crop", "0x5"});
  expect_error<ValueError>([&] { (void)io::crop(img, 0, 0, 5, -1); }, {"crop", "5x-1"});
  const io::RgbImage bad{4, 4, std::vector<std::uint8_t>(100)};
  expect_error<ValueError>([&] { (void)io::crop(bad, 0, 0, 2, 2); }, {"crop", "4x4", "100 bytes"});
  // Far outside, in any direction: black, and no overflow.
  const auto far = io::crop(img, std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max(), 3, 2);
  EXPECT_EQ(far.pixels, std::vector<std::uint8_t>(3 * 2 * 3, 0));
}

std::vector<float> read_f32(const std::filesystem::path& path) {
  const auto bytes = read_bytes(path);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);  // little-endian, like every machine tessera runs on
  return v;
}

TEST(Image, ToChwNormalizedMatchesTorchvisionBitForBit) {
  int checked = 0;
  for (const auto& [name, entry] : manifest()["normalize"].items()) {
    SCOPED_TRACE(name);
    std::array<double, 3> mean{}, stddev{};
    for (std::size_t c = 0; c < 3; ++c) {
      mean[c] = entry["mean"][c].get<double>();
      stddev[c] = entry["std"][c].get<double>();
    }
    const auto window = io::crop(source_image(), entry["x"].get<std::int64_t>(), entry["y"].get<std::int64_t>(),
                                 entry["width"].get<std::int64_t>(), entry["height"].get<std::int64_t>());
    const auto got = io::to_chw_normalized(window, mean, stddev);
    const auto want = read_f32(fixture_dir() / "normalize" / entry["reference"].get<std::string>());
    ASSERT_EQ(got.dim(0), 3);
    ASSERT_EQ(got.dim(1), entry["shape"][1].get<std::int64_t>());
    ASSERT_EQ(got.dim(2), entry["shape"][2].get<std::int64_t>());
    ASSERT_EQ(static_cast<std::size_t>(got.numel()), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(std::memcmp(got.data() + i, want.data() + i, 4), 0) << "value " << i << ": " << got.data()[i]
                                                                     << " vs " << want[i];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 3);
}

TEST(Image, ToChwNormalizedLayoutAndErrors) {
  const io::RgbImage img{2, 1, {0, 51, 255, 102, 153, 204}};
  const auto t = io::to_chw_normalized(img, {0.0, 0.0, 0.0}, {1.0, 1.0, 1.0});
  ASSERT_EQ(t.dim(0), 3);
  ASSERT_EQ(t.dim(1), 1);
  ASSERT_EQ(t.dim(2), 2);
  const std::vector<float> want = {0.0F, 0.4F, 0.2F, 0.6F, 1.0F, 0.8F};  // R plane, G plane, B plane
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(t.data()[i], want[i]) << i;
  const auto raw = io::to_chw_normalized(img, {0.0, 0.0, 0.0}, {1.0, 1.0, 1.0}, 1.0);  // no rescale
  EXPECT_EQ(raw.data()[4], 255.0F);
  expect_error<ValueError>([&] { (void)io::to_chw_normalized(img, {0.5, 0.5, 0.5}, {0.5, 0.0, 0.5}); },
                           {"std[1]", "divide by zero"});
}

}  // namespace
