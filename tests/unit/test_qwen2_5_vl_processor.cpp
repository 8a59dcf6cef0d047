// Qwen2.5-VL image preprocessing against transformers' PIL-backend processor
// (Qwen2VLImageProcessorPil, use_fast=False). Fixtures: tests/fixtures/
// qwen2_5_vl_processor, from tools/fixtures/make_qwen2_5_vl_processor_fixtures.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2_5_vl_processor.hpp>

namespace {

using namespace tessera;
namespace vl = tessera::models::qwen2_5_vl;

std::filesystem::path fixture_dir() {
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "qwen2_5_vl_processor";
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;
  Reference()
      : meta(nlohmann::json::parse(std::ifstream(fixture_dir() / "reference.json"))),
        arrays(io::SafetensorsFile::open(fixture_dir() / "reference.safetensors")) {}

  vl::RgbImage image(const std::string& name) const {
    const auto& info = arrays.at("image." + name);
    const auto bytes = arrays.bytes(info);
    vl::RgbImage img;
    img.height = info.shape[0];
    img.width = info.shape[1];
    img.pixels.resize(bytes.size());
    for (std::size_t i = 0; i < bytes.size(); ++i) img.pixels[i] = static_cast<std::uint8_t>(bytes[i]);
    return img;
  }
};

const Reference& reference() {
  static const Reference r;
  return r;
}

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

TEST(Qwen25VLProcessor, SmartResizeRejectsWhatTransformersRejects) {
  const auto& rows = reference().meta["smart_resize"]["rejected"];
  ASSERT_FALSE(rows.empty());
  for (const auto& r : rows) {
    EXPECT_THROW(vl::smart_resize(r[0].get<std::int64_t>(), r[1].get<std::int64_t>(), r[2].get<std::int64_t>(),
                                  r[3].get<std::int64_t>(), r[4].get<std::int64_t>()),
                 ValueError)
        << r.dump();
  }
}

TEST(Qwen25VLProcessor, SmartResizeErrorsNameTheSizes) {
  try {
    (void)vl::smart_resize(5, 1001);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("aspect ratio"), std::string::npos) << msg;
    EXPECT_NE(msg.find("height 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("width 1001"), std::string::npos) << msg;
  }
  EXPECT_THROW((void)vl::smart_resize(0, 28), ValueError);
  EXPECT_THROW((void)vl::smart_resize(28, -1), ValueError);
  EXPECT_NO_THROW((void)vl::smart_resize(1, 200));  // exactly 200 is allowed
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
  EXPECT_THROW(vl::ImageProcessorConfig::from_json(nlohmann::json::parse(R"({"image_mean": [0.5, 0.5]})")), ValueError);
}

TEST(Qwen25VLProcessor, PixelValuesMatchTransformers) {
  const auto& ref = reference();
  const auto& images = ref.meta["images"];
  ASSERT_EQ(images.size(), 5u);
  for (const auto& [name, m] : images.items()) {
    SCOPED_TRACE(name);
    const auto cfg = vl::ImageProcessorConfig::from_json(m["config"]);
    const auto img = ref.image(name);
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
    double worst = 0.0;
    std::int64_t exact = 0;
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t c = 0; c < 3; ++c) {
        for (std::int64_t t = 0; t < 2; ++t) {
          for (std::int64_t k = 0; k < 196; ++k) {
            const float a = out.pixel_values.at(r, (c * 2 + t) * 196 + k);
            const float e = expected.at(r, c * 196 + k);
            const double d = std::abs(static_cast<double>(a) - static_cast<double>(e));
            worst = std::max(worst, d);
            exact += (a == e) ? 1 : 0;
            ASSERT_LE(d, 1e-5) << "row " << r << " channel " << c << " t " << t << " index " << k << ": got " << a
                               << ", expected " << e;
          }
        }
      }
    }
    // The arithmetic follows numpy's float32 steps, so the values are bit-identical.
    EXPECT_EQ(exact, n * 1176) << "worst |diff| " << worst;
  }
}

TEST(Qwen25VLProcessor, ResizeToSameSizeIsIdentity) {
  const auto img = reference().image("exact_56x56");
  const auto same = vl::resize_bicubic(img, img.width, img.height);
  EXPECT_EQ(same.pixels, img.pixels);
  EXPECT_THROW((void)vl::resize_bicubic(img, 0, 5), ValueError);
  vl::RgbImage bad{4, 4, std::vector<std::uint8_t>(10)};
  EXPECT_THROW((void)vl::resize_bicubic(bad, 2, 2), ValueError);
}

#if TESSERA_HAVE_STB_IMAGE
TEST(Qwen25VLProcessor, ImageFileErrorsNameTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "tessera_test_qwen2_5_vl_processor";
  std::filesystem::create_directories(dir);
  const auto junk = dir / "not_an_image.png";
  { std::ofstream(junk, std::ios::binary) << "this is not a PNG file"; }
  try {
    (void)vl::load_rgb_image(junk);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(junk.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)vl::load_rgb_image(dir / "missing.jpg"), IoError);

  // A 2x1 24-bit BMP (blue-green-red byte order, rows padded to 4 bytes).
  const unsigned char bmp[] = {'B', 'M', 62, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0,
                               1, 0, 24, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                               30, 20, 10, 60, 50, 40, 0, 0};
  const auto bmp_path = dir / "tiny.bmp";
  { std::ofstream(bmp_path, std::ios::binary).write(reinterpret_cast<const char*>(bmp), sizeof(bmp)); }
  const auto img = vl::load_rgb_image(bmp_path);
  EXPECT_EQ(img.width, 2);
  EXPECT_EQ(img.height, 1);
  EXPECT_EQ(img.pixels, (std::vector<std::uint8_t>{10, 20, 30, 40, 50, 60}));
  std::filesystem::remove_all(dir);
}
#endif

}  // namespace
