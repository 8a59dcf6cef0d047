// libFuzzer target for image files, a parser of user input: decode_rgb_image
// (stb_image behind tessera's own checks) and the Qwen2.5-VL processor after
// it. Every input must either decode (and then satisfy the decoder's
// invariants and preprocess, or be rejected for its size with a ValueError)
// or fail with a tessera::FormatError; anything else (a crash, a sanitizer
// report, a foreign exception, a broken invariant) is a bug.
//
// Inputs starting with "RAW!" skip the decoder: the next four bytes pick an
// image size and a resize target, and the rest are pixels, so PIL-style
// resize_bicubic is fuzzed on arbitrary sizes (1-pixel sides, up and down).
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON; the same function is replayed over the committed
// seed corpus (tests/fuzz/corpus/image, written by
// tools/fixtures/make_qwen2_5_vl_processor_fixtures.py) by the
// fuzz_image_corpus CTest with any compiler.
#include <tessera/models/qwen2_5_vl_processor.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace {

namespace vl = tessera::models::qwen2_5_vl;

void check(bool ok) {
  if (!ok) std::abort();
}

// Keeps each input fast: decoded images stay at or below 1 Mpixel, and the
// processor resizes to at most 16 merged-patch blocks.
constexpr std::int64_t kMaxDecodedPixels = 1 << 20;

vl::ImageProcessorConfig small_processor() {
  vl::ImageProcessorConfig cfg;
  cfg.min_pixels = 28 * 28;
  cfg.max_pixels = 28 * 28 * 16;
  return cfg;
}

void preprocess(const vl::RgbImage& img) {
  const auto cfg = small_processor();
  try {
    const auto out = vl::preprocess_image(img, cfg);
    const auto& g = out.grid_thw;
    check(g[0] == 1 && g[1] * 14 == out.resized_height && g[2] * 14 == out.resized_width);
    check(out.pixel_values.dim(0) == g[0] * g[1] * g[2] && out.pixel_values.dim(1) == 1176);
    const float* v = out.pixel_values.data();
    for (std::int64_t i = 0; i < out.pixel_values.numel(); ++i) check(std::isfinite(v[i]));
  } catch (const tessera::ValueError&) {
    // only a side below 28 or an aspect ratio above 200 is refused
    const std::int64_t lo = std::min(img.width, img.height), hi = std::max(img.width, img.height);
    check(lo < 28 || static_cast<double>(hi) / static_cast<double>(lo) > 200.0);
  }
}

void raw_resize(std::span<const std::uint8_t> b) {
  if (b.size() < 8) return;
  const std::int64_t w = b[4] % 48 + 1, h = b[5] % 48 + 1, ow = b[6] % 64 + 1, oh = b[7] % 64 + 1;
  vl::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
  const auto pixels = b.subspan(8);
  for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = pixels.empty() ? 0 : pixels[i % pixels.size()];
  const auto out = vl::resize_bicubic(img, ow, oh);
  check(out.width == ow && out.height == oh && out.pixels.size() == static_cast<std::size_t>(ow * oh * 3));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  if (size >= 4 && std::memcmp(data, "RAW!", 4) == 0) {
    raw_resize(bytes);
    return 0;
  }
#if TESSERA_HAVE_STB_IMAGE
  // Both alpha modes, picked by the input's length (deterministic per input).
  const auto alpha = (size & 1U) != 0 ? vl::AlphaMode::drop : vl::AlphaMode::composite_on_white;
  try {
    const auto img = vl::decode_rgb_image(bytes, "fuzz-input", alpha, kMaxDecodedPixels);
    check(img.width > 0 && img.height > 0 && img.width * img.height <= kMaxDecodedPixels);
    check(img.pixels.size() == static_cast<std::size_t>(img.width * img.height * 3));
    preprocess(img);
  } catch (const tessera::FormatError&) {
    // a file that is not a (complete) JPEG, PNG, BMP or GIF: expected
  }
#endif
  return 0;
}
