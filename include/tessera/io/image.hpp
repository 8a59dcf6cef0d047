// tessera/io/image.hpp — image files and the pixel operations every
// vision-language processor shares: decode a file to 8-bit RGB as Pillow
// does, Pillow-exact bicubic resize, Pillow's crop, and rescale + normalize
// to a channel-first float tensor (transformers' and torchvision's
// arithmetic). The processors in models/ hold only their family's tiling,
// placeholders and templates on top of these.
//
// The reference is Pillow 13 (what transformers' PIL image processors,
// InternVL's build_transform and MiniCPM-V's processor run on):
//
// * decode_rgb_image()/load_rgb_image(): `Image.open(f)` followed by
//   transformers' convert_to_rgb (AlphaMode::composite_on_white) or PIL's
//   `.convert("RGB")` (AlphaMode::drop).
//   - JPEG is decoded by libjpeg-turbo with the settings of Pillow's
//     JpegDecode.c (src/libImaging/JpegDecode.c and JpegImagePlugin.py):
//     libjpeg's defaults (JDCT_ISLOW integer IDCT, fancy upsampling,
//     block smoothing; no scaling or draft mode), jpeg_color_space as
//     libjpeg guesses it from the JFIF/Adobe markers, and out_color_space
//     by component count: 1 -> JCS_GRAYSCALE (mode "L"), 3 -> JCS_RGB,
//     4 -> JCS_CMYK with every byte inverted (Pillow's rawmode "CMYK;I":
//     it always assumes Adobe's polarity; libjpeg turns YCCK into CMYK).
//     "L" and "CMYK" then become RGB by Pillow's l2rgb (grey repeated) and
//     cmyk2rgb (Convert.c: nk = 255 - K, R = nk - MULDIV255(C, nk)).
//     The pixels equal Pillow's bit for bit (tests/unit/test_image.cpp over
//     tests/fixtures/images/jpeg). Like the reference, the EXIF orientation
//     tag is not applied and ICC profiles are ignored.
//   - PNG, BMP and GIF (first frame) are decoded by stb_image 2.30,
//     vendored in include/tessera/third_party (TESSERA_HAVE_STB_IMAGE is
//     always 1), with tessera's fixes where stb differs from Pillow (16-bit
//     grey, transparency, truncated files); their pixels equal Pillow's too,
//     except for AlphaMode::drop on a GIF's transparent pixels (black here,
//     the palette colour in Pillow). stb_image is compiled into each
//     including translation unit with internal linkage (STB_IMAGE_STATIC), so
//     nothing needs linking; a translation unit that includes another
//     stb_image.h itself must include it after this header.
// * resize_bicubic(): `Image.resize((w, h), Image.BICUBIC)`.
// * crop(): `Image.crop((x, y, x + w, y + h))`.
// * to_chw_normalized(): torchvision's ToTensor + Normalize, which for a
//   rescale of 1/255 is also transformers' numpy rescale + normalize.
//
// Links libjpeg-turbo (CMake: tessera::tessera carries it; Debian package
// libjpeg62-turbo-dev). Another libjpeg (IJG 9, mozjpeg's API is the same)
// would decode differently, so only libjpeg-turbo is accepted.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>  // before jpeglib.h, which uses FILE and size_t
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <jpeglib.h>
#include <jerror.h>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

#ifndef LIBJPEG_TURBO_VERSION
#error "tessera/io/image.hpp needs libjpeg-turbo's jpeglib.h (Debian: libjpeg62-turbo-dev): other libjpeg builds decode JPEG differently from Pillow"
#endif

// stb_image 2.30, vendored (third_party/stb_image_impl.hpp says why).
#define TESSERA_HAVE_STB_IMAGE 1
#include "../third_party/stb_image_impl.hpp"

namespace tessera::io {

// An 8-bit RGB image in host memory, rows top to bottom, pixels interleaved
// (R, G, B): pixels.size() == width * height * 3.
struct RgbImage {
  std::int64_t width = 0;
  std::int64_t height = 0;
  std::vector<std::uint8_t> pixels;

  std::uint8_t at(std::int64_t y, std::int64_t x, std::int64_t c) const {
    return pixels[static_cast<std::size_t>((y * width + x) * 3 + c)];
  }
};

// How transparency reaches RGB. transformers' convert_to_rgb (4.x and 5.x,
// what the processor does to a PIL image with an alpha channel or a
// transparent palette/colour) composites onto white with
// PIL.Image.alpha_composite; PIL's own .convert("RGB") drops alpha.
enum class AlphaMode { composite_on_white, drop };

// PIL's decompression-bomb limit (Image.open raises DecompressionBombError
// above 2 * MAX_IMAGE_PIXELS); also bounds what a crafted header can allocate.
inline constexpr std::int64_t kMaxDecodedPixels = 2 * 89478485;

namespace detail {

// Sides up to 2^30 keep width * height * 3 far from overflow.
inline constexpr std::int64_t kMaxImageSide = std::int64_t{1} << 30;

// Throws unless `img` is a non-empty RGB image whose buffer matches its size.
inline void check_rgb_image(const RgbImage& img, std::string_view what) {
  const bool sized = img.width > 0 && img.height > 0 && img.width <= kMaxImageSide && img.height <= kMaxImageSide;
  if (!sized || img.pixels.size() != static_cast<std::uint64_t>(img.width * img.height * 3)) {
    throw ValueError(tessera::detail::concat(what, ": bad RGB image (", img.width, "x", img.height, ", ",
                                             img.pixels.size(), " bytes; expected width*height*3 bytes)"));
  }
}

// PIL's bicubic kernel (a = -0.5), support 2 (Resample.c, bicubic_filter).
inline double pil_bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Fixed-point bits of PIL's 8-bit resampling coefficients (PRECISION_BITS).
inline constexpr int kPilPrecisionBits = 32 - 8 - 2;

// One pass's taps, as Resample.c's precompute_coeffs + normalize_coeffs_8bpc
// compute them for the whole-image box [0, in_size): output i reads inputs
// first[i] .. first[i]+count[i]-1 with fixed-point weights k[i*ksize + j].
struct ResampleTaps {
  std::int64_t ksize = 0;
  std::vector<std::int64_t> first, count;
  std::vector<std::int32_t> k;
};

inline ResampleTaps pil_bicubic_taps(std::int64_t in_size, std::int64_t out_size) {
  // Image.resize passes the box (0, 0, w, h) to C as float; scale is
  // (double)(box1 - box0) / out, so sizes above 2^24 round like float does.
  const double box_len = static_cast<double>(static_cast<float>(in_size) - 0.0F);
  const double scale = box_len / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);  // antialias: widen the kernel when shrinking
  const double support = 2.0 * filterscale;
  const double inv_filterscale = 1.0 / filterscale;
  const double one = static_cast<double>(std::int64_t{1} << kPilPrecisionBits);
  ResampleTaps t;
  t.ksize = static_cast<std::int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(static_cast<std::size_t>(out_size));
  t.count.resize(static_cast<std::size_t>(out_size));
  t.k.assign(static_cast<std::size_t>(out_size * t.ksize), 0);
  std::vector<double> w(static_cast<std::size_t>(t.ksize));
  for (std::int64_t i = 0; i < out_size; ++i) {
    const double center = 0.0 + (static_cast<double>(i) + 0.5) * scale;
    // C's (int) conversion truncates toward zero; negatives are clamped to 0 anyway.
    const std::int64_t lo = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::trunc(center - support + 0.5)));
    const std::int64_t hi = std::min(in_size, static_cast<std::int64_t>(std::trunc(center + support + 0.5)));
    const std::int64_t n = hi - lo;
    double sum = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = pil_bicubic((static_cast<double>(j + lo) - center + 0.5) * inv_filterscale);
      w[static_cast<std::size_t>(j)] = v;
      sum += v;
    }
    for (std::int64_t j = 0; j < n; ++j) {
      double v = w[static_cast<std::size_t>(j)];
      if (sum != 0.0) v /= sum;
      t.k[static_cast<std::size_t>(i * t.ksize + j)] =
          static_cast<std::int32_t>(v < 0.0 ? std::trunc(-0.5 + v * one) : std::trunc(0.5 + v * one));
    }
    t.first[static_cast<std::size_t>(i)] = lo;
    t.count[static_cast<std::size_t>(i)] = n;
  }
  return t;
}

// PIL's clip8: the accumulator (which starts at one half) shifted down and
// clamped to [0, 255] (Pillow's lookup table covers exactly that clamp).
inline std::uint8_t pil_clip8(std::int64_t acc) {
  return static_cast<std::uint8_t>(std::clamp<std::int64_t>(acc >> kPilPrecisionBits, 0, 255));
}

inline constexpr std::int64_t kPilHalf = std::int64_t{1} << (kPilPrecisionBits - 1);

// Resample.c's horizontal pass: rows [row0, row0 + rows) of `src`, each
// resampled to taps.first.size() columns.
inline RgbImage resample_horizontal(const RgbImage& src, std::int64_t row0, std::int64_t rows,
                                    const ResampleTaps& taps) {
  const auto out_w = static_cast<std::int64_t>(taps.first.size());
  RgbImage out{out_w, rows, std::vector<std::uint8_t>(static_cast<std::size_t>(out_w * rows * 3))};
  for (std::int64_t y = 0; y < rows; ++y) {
    const std::uint8_t* line = src.pixels.data() + (row0 + y) * src.width * 3;
    std::uint8_t* dst = out.pixels.data() + y * out_w * 3;
    for (std::int64_t x = 0; x < out_w; ++x) {
      const auto xi = static_cast<std::size_t>(x);
      const std::int32_t* k = taps.k.data() + x * taps.ksize;
      const std::uint8_t* in = line + taps.first[xi] * 3;
      std::int64_t r = kPilHalf, g = kPilHalf, b = kPilHalf;
      for (std::int64_t j = 0; j < taps.count[xi]; ++j, in += 3) {
        r += std::int64_t{in[0]} * k[j];
        g += std::int64_t{in[1]} * k[j];
        b += std::int64_t{in[2]} * k[j];
      }
      dst[x * 3 + 0] = pil_clip8(r);
      dst[x * 3 + 1] = pil_clip8(g);
      dst[x * 3 + 2] = pil_clip8(b);
    }
  }
  return out;
}

// Resample.c's vertical pass: taps.first.size() rows, each a weighted sum of
// rows first[y] .. of `src` (first[] already relative to src's row 0).
inline RgbImage resample_vertical(const RgbImage& src, const ResampleTaps& taps) {
  const auto out_h = static_cast<std::int64_t>(taps.first.size());
  const std::int64_t row_bytes = src.width * 3;
  RgbImage out{src.width, out_h, std::vector<std::uint8_t>(static_cast<std::size_t>(row_bytes * out_h))};
  std::vector<std::int64_t> acc(static_cast<std::size_t>(row_bytes));
  for (std::int64_t y = 0; y < out_h; ++y) {
    const auto yi = static_cast<std::size_t>(y);
    const std::int32_t* k = taps.k.data() + y * taps.ksize;
    std::fill(acc.begin(), acc.end(), kPilHalf);
    for (std::int64_t j = 0; j < taps.count[yi]; ++j) {
      const std::uint8_t* line = src.pixels.data() + (taps.first[yi] + j) * row_bytes;
      for (std::int64_t i = 0; i < row_bytes; ++i) acc[static_cast<std::size_t>(i)] += std::int64_t{line[i]} * k[j];
    }
    std::uint8_t* dst = out.pixels.data() + y * row_bytes;
    for (std::int64_t i = 0; i < row_bytes; ++i) dst[i] = pil_clip8(acc[static_cast<std::size_t>(i)]);
  }
  return out;
}

}  // namespace detail

// Pillow 13's Image.resize((width, height), Image.BICUBIC) on an RGB image
// (ImagingResampleInner in src/libImaging/Resample.c): a horizontal pass
// when the width changes and a vertical pass when the height changes, each
// rounded to uint8. Pillow runs the vertical pass first only when the
// height shrinks by more than twice as many pixels as the width does
// ((in_h - out_h) > 0 && (in_h - out_h) > (in_w - out_w) * 2); otherwise
// horizontally first, and then only over the source rows the vertical pass
// reads. The order changes the result by a level here and there, so it is
// part of matching Pillow bit for bit.
inline RgbImage resize_bicubic(const RgbImage& in, std::int64_t out_width, std::int64_t out_height) {
  detail::check_rgb_image(in, "resize_bicubic");
  if (out_width <= 0 || out_height <= 0) {
    throw ValueError(
        tessera::detail::concat("resize_bicubic: output size must be positive, got ", out_width, "x", out_height));
  }
  const bool need_h = out_width != in.width, need_v = out_height != in.height;
  if (!need_h && !need_v) return in;  // Image.resize returns a copy
  const std::int64_t dh = in.height - out_height, dw = in.width - out_width;
  const bool horizontal_first = !(dh > 0 && dh > dw * 2);
  if (!horizontal_first) {
    RgbImage rows = detail::resample_vertical(in, detail::pil_bicubic_taps(in.height, out_height));
    if (!need_h) return rows;
    return detail::resample_horizontal(rows, 0, rows.height, detail::pil_bicubic_taps(in.width, out_width));
  }
  // Pillow computes the vertical taps first (even for an unchanged height)
  // to find the rows the horizontal pass must produce.
  detail::ResampleTaps vert = detail::pil_bicubic_taps(in.height, out_height);
  if (!need_h) return detail::resample_vertical(in, vert);
  const std::int64_t row_first = vert.first.front();
  const std::int64_t row_last = vert.first.back() + vert.count.back();
  for (auto& f : vert.first) f -= row_first;
  RgbImage wide =
      detail::resample_horizontal(in, row_first, row_last - row_first, detail::pil_bicubic_taps(in.width, out_width));
  if (!need_v) return wide;
  return detail::resample_vertical(wide, vert);
}

// Pillow's Image.crop((x, y, x + width, y + height)) (ImagingCrop): the
// width x height window whose top-left corner is (x, y). Parts of the
// window outside the image are black (0, 0, 0), as in Pillow, so x and y
// may be negative and the window may extend past the right and bottom
// edges. torchvision's F.crop on a PIL image is this call.
inline RgbImage crop(const RgbImage& img, std::int64_t x, std::int64_t y, std::int64_t width, std::int64_t height) {
  detail::check_rgb_image(img, "crop");
  if (width <= 0 || height <= 0 || width > detail::kMaxImageSide || height > detail::kMaxImageSide) {
    throw ValueError(tessera::detail::concat("crop: the window must be 1 to 2^30 pixels on a side, got ", width, "x",
                                             height));
  }
  // The window's columns [first, last) that lie on the image (empty when
  // none do); `pos` far outside cannot overflow, `len` is at most 2^30.
  auto on_image = [](std::int64_t pos, std::int64_t len, std::int64_t size) -> std::pair<std::int64_t, std::int64_t> {
    if (pos >= size || pos <= -len) return {0, 0};
    return {std::max<std::int64_t>(0, -pos), std::min(len, size - pos)};
  };
  const auto [c0, c1] = on_image(x, width, img.width);
  const auto [r0, r1] = on_image(y, height, img.height);
  RgbImage out{width, height, std::vector<std::uint8_t>(static_cast<std::size_t>(width * height * 3), 0)};
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::uint8_t* src = img.pixels.data() + ((y + r) * img.width + x + c0) * 3;
    std::copy_n(src, (c1 - c0) * 3, out.pixels.data() + (r * width + c0) * 3);
  }
  return out;
}

namespace detail {

// The 256 normalized values each channel's uint8 can take:
// float32(double(u8) * rescale), then (x - mean) / std in float32. These are
// the steps (and roundings) of transformers' numpy rescale and normalize;
// for rescale = 1/255 the first step equals torchvision's ToTensor (float32
// u8 / 255) for all 256 values, so it is torchvision's Normalize too.
inline std::array<std::array<float, 256>, 3> normalize_table(const std::array<double, 3>& mean,
                                                             const std::array<double, 3>& stddev, double rescale) {
  std::array<std::array<float, 256>, 3> lut{};
  for (std::size_t c = 0; c < 3; ++c) {
    const auto m = static_cast<float>(mean[c]);
    const auto s = static_cast<float>(stddev[c]);
    for (std::size_t u = 0; u < 256; ++u) {
      const auto x = static_cast<float>(static_cast<double>(u) * rescale);
      lut[c][u] = (x - m) / s;
    }
  }
  return lut;
}

// Writes one frame's normalized values channel-first ([3, h, w] floats).
inline void normalize_frame(const RgbImage& frame, const std::array<std::array<float, 256>, 3>& lut, float* chw) {
  const auto plane = static_cast<std::size_t>(frame.width * frame.height);
  for (std::size_t i = 0; i < plane; ++i) {
    for (std::size_t c = 0; c < 3; ++c) chw[c * plane + i] = lut[c][frame.pixels[i * 3 + c]];
  }
}

}  // namespace detail

// The image as a [3, height, width] float tensor, channel c holding
// (float32(u8 * rescale) - mean[c]) / std[c] in float32: torchvision's
// ToTensor + Normalize(mean, std) (InternVL2: ImageNet mean/std; MiniCPM-V:
// 0.5/0.5) and transformers' rescale + normalize (Qwen2.5-VL: CLIP
// mean/std), which agree bit for bit at rescale = 1/255. ValueError when a
// std is 0 in float32 (torchvision refuses it too).
inline Tensor<Host, float> to_chw_normalized(const RgbImage& img, const std::array<double, 3>& mean,
                                             const std::array<double, 3>& stddev, double rescale = 1.0 / 255.0) {
  detail::check_rgb_image(img, "to_chw_normalized");
  for (std::size_t c = 0; c < 3; ++c) {
    if (static_cast<float>(stddev[c]) == 0.0F) {
      throw ValueError(tessera::detail::concat("to_chw_normalized: std[", c, "] is ", stddev[c],
                                               ", which is 0 as a float32: normalizing would divide by zero"));
    }
  }
  Tensor<Host, float> out(Shape{3, img.height, img.width});
  detail::normalize_frame(img, detail::normalize_table(mean, stddev, rescale), out.data());
  return out;
}

// ---- image files -------------------------------------------------------------

namespace detail {

inline FormatError image_error(std::string_view source, std::string_view why) {
  return FormatError(tessera::detail::concat("cannot decode image file ", source, ": ", why));
}

// ImagingAlphaComposite (src/libImaging/AlphaComposite.c) of one RGBA pixel
// over opaque white, in Pillow's integer arithmetic. Identity for alpha 255.
inline std::uint8_t composite_on_white(std::uint32_t src, std::uint32_t alpha) {
  if (alpha == 0) return 255;
  constexpr std::uint32_t bits = 7, dst = 255;
  const std::uint32_t blend = 255 * (255 - alpha);
  const std::uint32_t outa255 = alpha * 255 + blend;
  const std::uint32_t coef1 = alpha * 255 * 255 * (1U << bits) / outa255;
  const std::uint32_t coef2 = 255 * (1U << bits) - coef1;
  const std::uint32_t tmp = src * coef1 + dst * coef2 + (0x80U << bits);
  return static_cast<std::uint8_t>((((tmp >> 8) + tmp) >> 8) >> bits);
}

// RGBA (4 bytes a pixel) to RGB under `mode`.
inline std::vector<std::uint8_t> rgba_to_rgb(const std::uint8_t* rgba, std::size_t pixels, AlphaMode mode) {
  std::vector<std::uint8_t> rgb(pixels * 3);
  for (std::size_t i = 0; i < pixels; ++i) {
    const std::uint8_t* s = rgba + i * 4;
    for (std::size_t c = 0; c < 3; ++c) {
      rgb[i * 3 + c] = mode == AlphaMode::drop ? s[c] : composite_on_white(s[c], s[3]);
    }
  }
  return rgb;
}

inline bool starts_with(std::span<const std::uint8_t> b, std::initializer_list<std::uint8_t> magic) {
  return b.size() >= magic.size() && std::equal(magic.begin(), magic.end(), b.begin());
}

// Pillow rejects a JPEG whose last scan has no end-of-image marker ("image
// file is truncated": libjpeg suspends for more data, and there is none).
// 0xFF 0xD9 cannot occur inside entropy-coded data (0xFF is stuffed), so a
// complete file has an EOI after its last start-of-scan. (Comparing the last
// ones keeps an EXIF thumbnail's SOS/EOI from hiding a truncated main image.)
inline bool jpeg_is_truncated(std::span<const std::uint8_t> b) {
  std::size_t last_sos = 0, last_eoi = 0;
  for (std::size_t i = 0; i + 1 < b.size(); ++i) {
    if (b[i] != 0xFF) continue;
    if (b[i + 1] == 0xDA) last_sos = i + 1;
    if (b[i + 1] == 0xD9) last_eoi = i + 1;
  }
  return last_sos == 0 || last_eoi < last_sos;
}

inline std::uint32_t read_be32(std::span<const std::uint8_t> b, std::size_t at) {
  return std::uint32_t{b[at]} << 24 | std::uint32_t{b[at + 1]} << 16 | std::uint32_t{b[at + 2]} << 8 |
         std::uint32_t{b[at + 3]};
}

// stb_image hands memcpy a null buffer (undefined behaviour, which UBSan
// reports) when a PNG's first IDAT chunk is empty. Empty IDATs carry no
// data, so a copy without them decodes the same; nullopt when there are none.
inline std::optional<std::vector<std::uint8_t>> png_without_empty_idat(std::span<const std::uint8_t> b) {
  if (!starts_with(b, {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'})) return std::nullopt;
  static constexpr std::uint8_t idat[4] = {'I', 'D', 'A', 'T'};
  std::vector<std::uint8_t> out(b.begin(), b.begin() + 8);
  bool dropped = false;
  std::size_t pos = 8;
  // Length and type, then data and CRC, which a truncated file may lack: an
  // empty IDAT cut off inside its CRC is dropped too (stb_image would copy
  // its zero bytes from a null buffer, undefined behaviour; found by
  // fuzz_image).
  while (pos + 8 <= b.size()) {
    const std::uint32_t len = read_be32(b, pos);
    const bool whole = pos + 12 <= b.size() && len <= b.size() - pos - 12;
    const std::size_t next = whole ? pos + 12 + len : b.size();
    if (len == 0 && std::equal(idat, idat + 4, b.begin() + static_cast<std::ptrdiff_t>(pos + 4))) {
      dropped = true;
    } else {
      out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(pos), b.begin() + static_cast<std::ptrdiff_t>(next));
    }
    pos = next;
  }
  if (!dropped) return std::nullopt;
  out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(pos), b.end());
  return out;
}

inline std::uint32_t read_le32(std::span<const std::uint8_t> b, std::size_t at) {
  return std::uint32_t{b[at]} | std::uint32_t{b[at + 1]} << 8 | std::uint32_t{b[at + 2]} << 16 |
         std::uint32_t{b[at + 3]} << 24;
}

// An uncompressed BMP's pixel rows must all be in the file (PIL raises
// "image file is truncated"); stb_image reads missing bytes as zeros.
inline bool bmp_is_truncated(std::span<const std::uint8_t> b, std::int64_t width, std::int64_t height) {
  if (b.size() < 34 || read_le32(b, 14) < 40) return false;  // OS/2 headers: leave them to stb
  const std::uint32_t compression = read_le32(b, 30);
  if (compression != 0 && compression != 3) return false;  // RLE: length is data-dependent
  const std::int64_t bpp = std::int64_t{b[28]} | std::int64_t{b[29]} << 8;
  const std::int64_t stride = (width * bpp + 31) / 32 * 4;
  return static_cast<std::int64_t>(read_le32(b, 10)) + stride * height > static_cast<std::int64_t>(b.size());
}

// stb decodes 16-bit greyscale PNGs to 8 bits by taking the high byte; PIL
// opens them as mode "I;16" and .convert("RGB") clamps the value to 255.
// This decodes such a file the PIL way, as RGBA (alpha from a tRNS chunk).
inline stbi_uc* decode_grey16_like_pil(std::span<const std::uint8_t> bytes, int& w, int& h) {
  int comp = 0;
  stbi_us* grey = stbi_load_16_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &comp, 2);
  if (grey == nullptr) return nullptr;
  const std::size_t n = static_cast<std::size_t>(w) * static_cast<std::size_t>(h);
  auto* rgba = static_cast<stbi_uc*>(STBI_MALLOC(n * 4));
  if (rgba != nullptr) {
    for (std::size_t i = 0; i < n; ++i) {
      const auto v = static_cast<stbi_uc>(std::min<stbi_us>(grey[i * 2], 255));
      rgba[i * 4 + 0] = rgba[i * 4 + 1] = rgba[i * 4 + 2] = v;
      rgba[i * 4 + 3] = static_cast<stbi_uc>(grey[i * 2 + 1] >> 8);
    }
  }
  stbi_image_free(grey);
  return rgba;
}

// A progressive JPEG has about ten scans; libjpeg has no limit of its own,
// and a crafted file with thousands of tiny scans makes each decode walk
// the whole coefficient buffer again. The limit only refuses such files.
inline constexpr int kMaxJpegScans = 1000;

// libjpeg's error manager, extended. libjpeg must not return from
// error_exit, and its default calls exit(); here it formats the message
// and longjmps back into the jpeg_* step function that made the libjpeg
// call. Those step functions hold no C++ object with a destructor (every
// libjpeg call is made from one of them), so the jump skips no cleanup:
// the decoder's own memory is released by jpeg_destroy_decompress in the
// caller, which works in any state.
struct JpegErrorManager {
  jpeg_error_mgr pub;  // first: libjpeg holds a jpeg_error_mgr*
  jpeg_progress_mgr progress;
  std::jmp_buf jump;
  bool all_rows_read;
  char message[JMSG_LENGTH_MAX];
};

inline JpegErrorManager& jpeg_errors(j_common_ptr cinfo) {
  return *reinterpret_cast<JpegErrorManager*>(cinfo->err);
}

[[noreturn]] inline void jpeg_fail(j_common_ptr cinfo, const char* message) {
  JpegErrorManager& m = jpeg_errors(cinfo);
  std::snprintf(m.message, sizeof m.message, "%s", message);
  std::longjmp(m.jump, 1);
}

[[noreturn]] inline void jpeg_error_exit(j_common_ptr cinfo) {
  JpegErrorManager& m = jpeg_errors(cinfo);
  (*cinfo->err->format_message)(cinfo, m.message);
  std::longjmp(m.jump, 1);
}

// Warnings are ignored, as Pillow ignores them (its output_message prints
// nothing), except running out of data while rows are still missing:
// jpeg_mem_src then pads with a fake end-of-image marker, where Pillow's
// suspending source raises "image file is truncated". (Running out in
// jpeg_finish_decompress, after every row, is fine in Pillow too.)
inline void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF && !jpeg_errors(cinfo).all_rows_read) {
    jpeg_fail(cinfo, "JPEG data is truncated (it ends before the last row)");
  }
}

inline void jpeg_limit_scans(j_common_ptr cinfo) {
  if (reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number > kMaxJpegScans) {
    jpeg_fail(cinfo, "JPEG has more than 1000 scans (a progressive JPEG has about 10)");
  }
}

// The three steps of a decode, each a setjmp landing site for the error
// manager (false: m.message says why). Pillow's JpegDecode.c reads headers
// until the image (an abbreviated tables-only stream may come first).
inline bool jpeg_step_header(jpeg_decompress_struct& cinfo, JpegErrorManager& m, const std::uint8_t* data,
                             std::size_t size) {
  if (setjmp(m.jump) != 0) return false;
  jpeg_create_decompress(&cinfo);
  cinfo.progress = &m.progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  while (jpeg_read_header(&cinfo, FALSE) == JPEG_HEADER_TABLES_ONLY) {
  }
  return true;
}

inline bool jpeg_step_start(jpeg_decompress_struct& cinfo, JpegErrorManager& m) {
  if (setjmp(m.jump) != 0) return false;
  (void)jpeg_start_decompress(&cinfo);  // a memory source never suspends
  return true;
}

inline bool jpeg_step_rows(jpeg_decompress_struct& cinfo, JpegErrorManager& m, std::uint8_t* out, std::size_t stride) {
  if (setjmp(m.jump) != 0) return false;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out + static_cast<std::size_t>(cinfo.output_scanline) * stride;
    (void)jpeg_read_scanlines(&cinfo, &row, 1);
  }
  m.all_rows_read = true;
  (void)jpeg_finish_decompress(&cinfo);
  return true;
}

// Pillow's .convert("RGB") from its JPEG modes: "L" (l2rgb) and "CMYK"
// unpacked with rawmode "CMYK;I" (every byte inverted), then cmyk2rgb.
inline std::vector<std::uint8_t> jpeg_samples_to_rgb(const std::vector<std::uint8_t>& s, int components) {
  if (components == 3) return s;
  const std::size_t n = s.size() / static_cast<std::size_t>(components);
  std::vector<std::uint8_t> rgb(n * 3);
  for (std::size_t i = 0; i < n; ++i) {
    if (components == 1) {
      rgb[i * 3 + 0] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = s[i];
      continue;
    }
    const int nk = s[i * 4 + 3];  // 255 - K, K being the inverted sample
    for (std::size_t c = 0; c < 3; ++c) {
      const int ink = 255 - s[i * 4 + c];
      const int tmp = ink * nk + 128;  // MULDIV255(ink, nk)
      rgb[i * 3 + c] = static_cast<std::uint8_t>(std::clamp(nk - (((tmp >> 8) + tmp) >> 8), 0, 255));
    }
  }
  return rgb;
}

// Decodes a JPEG (the caller has checked it starts with FF D8 FF, as
// Pillow's JPEG plugin requires) as Pillow 13's JpegDecode.c does.
inline RgbImage decode_jpeg(std::span<const std::uint8_t> bytes, std::string_view source, std::int64_t max_pixels) {
  auto fail = [&](std::string_view why) { return image_error(source, why); };
  JpegErrorManager m{};
  jpeg_decompress_struct cinfo{};
  cinfo.err = jpeg_std_error(&m.pub);
  m.pub.error_exit = jpeg_error_exit;
  m.pub.emit_message = jpeg_emit_message;
  m.progress.progress_monitor = jpeg_limit_scans;
  struct Destroy {
    jpeg_decompress_struct* c;
    ~Destroy() { jpeg_destroy_decompress(c); }
  } destroy{&cinfo};
  auto libjpeg_failure = [&] { return fail(tessera::detail::concat("JPEG: ", m.message)); };

  if (!jpeg_step_header(cinfo, m, bytes.data(), bytes.size())) throw libjpeg_failure();
  const std::int64_t w = cinfo.image_width, h = cinfo.image_height;
  if (w * h > max_pixels) {
    throw fail(tessera::detail::concat("image is ", w, "x", h, ", more than the limit of ", max_pixels, " pixels"));
  }
  // JpegImagePlugin's modes: 1 layer "L", 3 "RGB", 4 "CMYK"; others refused.
  switch (cinfo.num_components) {
    case 1: cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: cinfo.out_color_space = JCS_RGB; break;
    case 4: cinfo.out_color_space = JCS_CMYK; break;
    default: throw fail(tessera::detail::concat("JPEG has ", cinfo.num_components, " components (Pillow reads 1, 3 or 4)"));
  }
  if (!jpeg_step_start(cinfo, m)) throw libjpeg_failure();
  const int components = cinfo.output_components;
  if (cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height ||
      components != cinfo.num_components) {
    throw fail("JPEG decoder output does not match the header");  // not reachable with libjpeg's defaults
  }
  const auto stride = static_cast<std::size_t>(w) * static_cast<std::size_t>(components);
  std::vector<std::uint8_t> samples(stride * static_cast<std::size_t>(h));
  if (!jpeg_step_rows(cinfo, m, samples.data(), stride)) throw libjpeg_failure();
  return RgbImage{w, h, jpeg_samples_to_rgb(samples, components)};
}

}  // namespace detail

// Decodes an image file's bytes (JPEG, PNG, BMP or GIF: the first frame) to
// 8-bit RGB the way PIL.Image.open + transformers' convert_to_rgb does
// (`alpha` says what happens to transparency; grey and CMYK become RGB as
// Pillow converts them, palettes are looked up, 16-bit samples are reduced
// as PIL reduces them). The EXIF orientation tag is not applied, as
// Image.open does not apply it. `source` names the data in messages.
// Throws FormatError for data that is not an image of those formats, is
// truncated or corrupt, or has more than `max_pixels` pixels. The pixels
// equal Pillow 13's (JPEG through libjpeg-turbo with Pillow's settings).
inline RgbImage decode_rgb_image(std::span<const std::uint8_t> file, std::string_view source,
                                 AlphaMode alpha = AlphaMode::composite_on_white,
                                 std::int64_t max_pixels = kMaxDecodedPixels) {
  auto fail = [&](std::string_view why) { return detail::image_error(source, why); };
  if (file.empty()) throw fail("file is empty");
  if (file.size() > static_cast<std::size_t>(INT32_MAX)) throw fail("file is too large (over 2 GiB)");
  if (detail::starts_with(file, {0xFF, 0xD8, 0xFF})) {  // Pillow's JPEG signature
    // Before libjpeg reads anything: Pillow refuses a file whose last scan
    // has no end-of-image marker after it.
    if (detail::jpeg_is_truncated(file)) throw fail("JPEG data is truncated (no end-of-image marker)");
    return detail::decode_jpeg(file, source, max_pixels);
  }
  const bool png = detail::starts_with(file, {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'});
  const bool bmp = detail::starts_with(file, {'B', 'M'});
  const bool gif = detail::starts_with(file, {'G', 'I', 'F', '8'});
  if (!png && !bmp && !gif) {
    throw fail(detail::starts_with(file, {0xFF, 0xD8})
                   ? "not a JPEG file Pillow would open (it must start with FF D8 FF)"
                   : "unknown image type (supported: JPEG, PNG, BMP, GIF)");
  }
  const std::optional<std::vector<std::uint8_t>> cleaned = detail::png_without_empty_idat(file);
  const std::span<const std::uint8_t> bytes = cleaned ? std::span<const std::uint8_t>(*cleaned) : file;
  const int len = static_cast<int>(bytes.size());
  int w = 0, h = 0, comp = 0;
  if (stbi_info_from_memory(bytes.data(), len, &w, &h, &comp) == 0) {
    const char* why = stbi_failure_reason();
    throw fail(tessera::detail::concat(why != nullptr ? why : "unknown image type", " (supported: JPEG, PNG, BMP, GIF)"));
  }
  if (w <= 0 || h <= 0) throw fail(tessera::detail::concat("image is ", w, "x", h, " pixels"));  // stb lets 0x0 BMPs through
  if (static_cast<std::int64_t>(w) * h > max_pixels) {
    throw fail(tessera::detail::concat("image is ", w, "x", h, ", more than the limit of ", max_pixels, " pixels"));
  }
  if (bmp && detail::bmp_is_truncated(bytes, w, h)) throw fail("BMP pixel data is truncated");
  // From the PNG header itself (bit depth 16, colour type 0), not stb's
  // channel count, which counts a tRNS chunk as alpha.
  const bool grey16 = png && bytes.size() > 25 && bytes[24] == 16 && bytes[25] == 0;
  const int header_w = w, header_h = h;
  const std::unique_ptr<stbi_uc, void (*)(void*)> rgba(
      grey16 ? detail::decode_grey16_like_pil(bytes, w, h) : stbi_load_from_memory(bytes.data(), len, &w, &h, &comp, 4),
      stbi_image_free);
  if (rgba == nullptr) {
    const char* why = stbi_failure_reason();
    throw fail(why != nullptr ? why : "decoding failed");
  }
  if (w != header_w || h != header_h) {  // the limits above were checked on the header's size
    throw fail(tessera::detail::concat("decoded size ", w, "x", h, " differs from the header's ", header_w, "x", header_h));
  }
  RgbImage img;
  img.width = w;
  img.height = h;
  img.pixels = detail::rgba_to_rgb(rgba.get(), static_cast<std::size_t>(w) * static_cast<std::size_t>(h), alpha);
  return img;
}

// Reads and decodes an image file (see decode_rgb_image). IoError when the
// file cannot be opened, FormatError (naming the file) when it cannot be
// decoded.
inline RgbImage load_rgb_image(const std::filesystem::path& path, AlphaMode alpha = AlphaMode::composite_on_white) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(tessera::detail::concat("cannot open image file ", path.string()));
  const std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError(tessera::detail::concat("cannot read image file ", path.string()));
  const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(chars.data()), chars.size());
  return decode_rgb_image(bytes, path.string(), alpha);
}

}  // namespace tessera::io
