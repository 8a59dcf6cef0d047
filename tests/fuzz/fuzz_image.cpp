// libFuzzer target for image files, a parser of user input: decode_rgb_image
// (libjpeg-turbo for JPEG, stb_image for PNG/BMP/GIF, each behind tessera's
// own checks; libjpeg's error exits longjmp back into tessera) and the
// shared pixel operations every processor runs after it (io/image.hpp:
// resize_bicubic, crop, to_chw_normalized). Every input must either decode
// (and then satisfy the decoder's invariants and survive those operations)
// or fail with a tessera::FormatError; anything else (a crash, an exit(), a
// sanitizer report, a foreign exception, a broken invariant) is a bug.
//
// Inputs starting with "RAW!" skip the decoder: the next four bytes pick an
// image size and a resize target, and the rest are pixels, so PIL-style
// resize_bicubic is fuzzed on arbitrary sizes (1-pixel sides, up and down).
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON; the same function is replayed over the committed
// seed corpus (tests/fuzz/corpus/image: files written by
// tools/fixtures/make_qwen2_5_vl_processor_fixtures.py, the jpeg_* ones by
// tools/fixtures/make_image_fixtures.py, regress_* committed fuzzer finds)
// by the fuzz_image_corpus CTest with any compiler.
#include <tessera/io/image.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace {

namespace io = tessera::io;

void check(bool ok) {
  if (!ok) std::abort();
}

// Keeps each input fast: decoded images stay at or below 1 Mpixel.
constexpr std::int64_t kMaxDecodedPixels = 1 << 20;

// What a processor does next, on sizes derived from the image: a bicubic
// resize to at most 64x64, a crop that may reach past the edges, and the
// normalized tensor of the result.
void process(const io::RgbImage& img) {
  const std::int64_t ow = std::min<std::int64_t>(img.width, 64) + img.height % 3;
  const std::int64_t oh = std::min<std::int64_t>(img.height, 64) + img.width % 2;
  const auto small = io::resize_bicubic(img, ow, oh);
  check(small.width == ow && small.height == oh && small.pixels.size() == static_cast<std::size_t>(ow * oh * 3));
  const auto window = io::crop(small, ow / 3 - 2, oh / 4 - 1, ow / 2 + 3, oh / 2 + 2);
  check(window.width == ow / 2 + 3 && window.height == oh / 2 + 2);
  const auto chw = io::to_chw_normalized(window, {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225});
  check(chw.dim(0) == 3 && chw.dim(1) == window.height && chw.dim(2) == window.width);
  const float* v = chw.data();
  for (std::int64_t i = 0; i < chw.numel(); ++i) check(std::isfinite(v[i]));
}

void raw_resize(std::span<const std::uint8_t> b) {
  if (b.size() < 8) return;
  const std::int64_t w = b[4] % 48 + 1, h = b[5] % 48 + 1, ow = b[6] % 64 + 1, oh = b[7] % 64 + 1;
  io::RgbImage img{w, h, std::vector<std::uint8_t>(static_cast<std::size_t>(w * h * 3))};
  const auto pixels = b.subspan(8);
  for (std::size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = pixels.empty() ? 0 : pixels[i % pixels.size()];
  const auto out = io::resize_bicubic(img, ow, oh);
  check(out.width == ow && out.height == oh && out.pixels.size() == static_cast<std::size_t>(ow * oh * 3));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> bytes(data, size);
  if (size >= 4 && std::memcmp(data, "RAW!", 4) == 0) {
    raw_resize(bytes);
    return 0;
  }
  // Both alpha modes, picked by the input's length (deterministic per input).
  const auto alpha = (size & 1U) != 0 ? io::AlphaMode::drop : io::AlphaMode::composite_on_white;
  try {
    const auto img = io::decode_rgb_image(bytes, "fuzz-input", alpha, kMaxDecodedPixels);
    check(img.width > 0 && img.height > 0 && img.width * img.height <= kMaxDecodedPixels);
    check(img.pixels.size() == static_cast<std::size_t>(img.width * img.height * 3));
    process(img);
  } catch (const tessera::FormatError&) {
    // a file that is not a (complete) JPEG, PNG, BMP or GIF: expected
  }
  return 0;
}
