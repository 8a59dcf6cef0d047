// Qwen2.5-VL image preprocessing: the image half of the processor.
//
// Reimplements transformers' PIL-backend `Qwen2VLImageProcessorPil` (what
// `use_fast=False` selects; transformers 5.23): smart_resize, a resize that
// matches PIL's `Image.resize(size, Image.BICUBIC)` bit for bit (antialiased,
// separable, fixed-point coefficients, uint8 rounding between the passes),
// rescale by 1/255, CLIP mean/std normalization, and the patch layout
// `[grid_t*grid_h*grid_w, C*temporal_patch_size*patch*patch]` with `grid_thw`.
// Checked against the reference by tests/unit/test_qwen2_5_vl_processor.cpp
// (fixtures from tools/fixtures/make_qwen2_5_vl_processor_fixtures.py).
//
// Image files: load_rgb_image() decodes JPEG, PNG, BMP and GIF (first frame)
// with stb_image when <stb/stb_image.h> is available (Debian: libstb-dev);
// TESSERA_HAVE_STB_IMAGE is then 1. stb_image is compiled into each including
// translation unit with internal linkage (STB_IMAGE_STATIC), so nothing needs
// linking; a translation unit that includes stb_image.h itself must include it
// after this header.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

#if __has_include(<stb/stb_image.h>)
#define TESSERA_HAVE_STB_IMAGE 1
#ifndef STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_IMPLEMENTATION
#endif
#define STB_IMAGE_STATIC
#define STBI_NO_STDIO
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#include <stb/stb_image.h>
#else
#define TESSERA_HAVE_STB_IMAGE 0
#endif

namespace tessera::models::qwen2_5_vl {

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

// preprocessor_config.json. Defaults are Qwen2.5-VL's published values (the
// class defaults in transformers are Qwen2-VL's 56*56 and 28*28*1280).
struct ImageProcessorConfig {
  std::int64_t min_pixels = 3136;
  std::int64_t max_pixels = 12845056;
  std::int64_t patch_size = 14;
  std::int64_t temporal_patch_size = 2;
  std::int64_t merge_size = 2;
  double rescale_factor = 1.0 / 255.0;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};

  // Reads the fields present; `min_pixels`/`max_pixels` win over
  // `size.shortest_edge`/`size.longest_edge`, as in transformers.
  static ImageProcessorConfig from_json(const nlohmann::json& j) {
    ImageProcessorConfig c;
    auto read_int = [&](const nlohmann::json& obj, const char* key, std::int64_t& out) {
      if (obj.contains(key) && !obj[key].is_null()) {
        if (!obj[key].is_number_integer() || obj[key].get<std::int64_t>() <= 0) {
          throw ValueError(tessera::detail::concat("preprocessor config: '", key, "' must be a positive integer, got ",
                                          obj[key].dump()));
        }
        out = obj[key].get<std::int64_t>();
      }
    };
    auto read_triple = [&](const char* key, std::array<double, 3>& out) {
      if (!j.contains(key) || j[key].is_null()) return;
      const auto& v = j[key];
      if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number()) {
        throw ValueError(tessera::detail::concat("preprocessor config: '", key, "' must be 3 numbers, got ", v.dump()));
      }
      for (std::size_t i = 0; i < 3; ++i) out[i] = v[i].get<double>();
    };
    if (j.contains("size") && j["size"].is_object()) {
      read_int(j["size"], "shortest_edge", c.min_pixels);
      read_int(j["size"], "longest_edge", c.max_pixels);
    }
    read_int(j, "min_pixels", c.min_pixels);
    read_int(j, "max_pixels", c.max_pixels);
    read_int(j, "patch_size", c.patch_size);
    read_int(j, "temporal_patch_size", c.temporal_patch_size);
    read_int(j, "merge_size", c.merge_size);
    if (j.contains("rescale_factor") && j["rescale_factor"].is_number()) c.rescale_factor = j["rescale_factor"].get<double>();
    read_triple("image_mean", c.image_mean);
    read_triple("image_std", c.image_std);
    return c;
  }

  static ImageProcessorConfig load(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw IoError(tessera::detail::concat("cannot open preprocessor config ", path.string()));
    try {
      return from_json(nlohmann::json::parse(in));
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(tessera::detail::concat(path.string(), ": ", e.what()));
    }
  }
};

// transformers' smart_resize (Qwen2-VL / Qwen2.5-VL, transformers 5.23):
// the (height, width) to resize to, both multiples of `factor`, with
// height*width in [min_pixels, max_pixels] where possible. Python's round()
// (half to even) is std::nearbyint under the default rounding mode. Like
// transformers 5.23 it accepts sides smaller than `factor` (older releases
// rejected them); it rejects non-positive sizes and aspect ratios above 200.
inline std::pair<std::int64_t, std::int64_t> smart_resize(std::int64_t height, std::int64_t width,
                                                          std::int64_t factor = 28, std::int64_t min_pixels = 56 * 56,
                                                          std::int64_t max_pixels = 28 * 28 * 1280) {
  if (height <= 0 || width <= 0) {
    throw ValueError(tessera::detail::concat("smart_resize: image size must be positive, got height ", height, " width ", width));
  }
  if (factor <= 0 || min_pixels <= 0 || max_pixels <= 0) {
    throw ValueError(tessera::detail::concat("smart_resize: factor, min_pixels and max_pixels must be positive, got ", factor,
                                    ", ", min_pixels, ", ", max_pixels));
  }
  const double h = static_cast<double>(height), w = static_cast<double>(width), f = static_cast<double>(factor);
  const double ratio = std::max(h, w) / std::min(h, w);
  if (ratio > 200.0) {
    throw ValueError(tessera::detail::concat("smart_resize: absolute aspect ratio must be smaller than 200, got ", ratio,
                                    " (height ", height, ", width ", width, ")"));
  }
  std::int64_t h_bar = static_cast<std::int64_t>(std::nearbyint(h / f)) * factor;
  std::int64_t w_bar = static_cast<std::int64_t>(std::nearbyint(w / f)) * factor;
  const double area = static_cast<double>(height * width);
  if (h_bar * w_bar > max_pixels) {
    const double beta = std::sqrt(area / static_cast<double>(max_pixels));
    h_bar = std::max(factor, static_cast<std::int64_t>(std::floor(h / beta / f)) * factor);
    w_bar = std::max(factor, static_cast<std::int64_t>(std::floor(w / beta / f)) * factor);
  } else if (h_bar * w_bar < min_pixels) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / area);
    h_bar = static_cast<std::int64_t>(std::ceil(h * beta / f)) * factor;
    w_bar = static_cast<std::int64_t>(std::ceil(w * beta / f)) * factor;
  }
  return {h_bar, w_bar};
}

namespace detail {

// PIL's bicubic kernel (a = -0.5), support 2.
inline double pil_bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Fixed-point bits of PIL's 8-bit resampling coefficients.
inline constexpr int kPilPrecisionBits = 32 - 8 - 2;

// One pass's taps, as PIL computes them for the whole-image box
// [0, in_size): for output i, inputs first[i] .. first[i]+count[i]-1 with
// weights k[i*ksize + j], already converted to PIL's fixed point.
struct ResampleTaps {
  std::int64_t ksize = 0;
  std::vector<std::int64_t> first, count;
  std::vector<std::int32_t> k;
};

inline ResampleTaps pil_bicubic_taps(std::int64_t in_size, std::int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);  // antialias: widen the kernel when shrinking
  const double support = 2.0 * filterscale;
  ResampleTaps t;
  t.ksize = static_cast<std::int64_t>(std::ceil(support)) * 2 + 1;
  t.first.resize(static_cast<std::size_t>(out_size));
  t.count.resize(static_cast<std::size_t>(out_size));
  t.k.assign(static_cast<std::size_t>(out_size * t.ksize), 0);
  std::vector<double> w(static_cast<std::size_t>(t.ksize));
  const double one = static_cast<double>(std::int64_t{1} << kPilPrecisionBits);
  for (std::int64_t i = 0; i < out_size; ++i) {
    const double center = (static_cast<double>(i) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // C's (int) conversion truncates toward zero; negatives are clamped to 0 anyway.
    std::int64_t lo = static_cast<std::int64_t>(std::trunc(center - support + 0.5));
    if (lo < 0) lo = 0;
    std::int64_t hi = static_cast<std::int64_t>(std::trunc(center + support + 0.5));
    if (hi > in_size) hi = in_size;
    const std::int64_t n = hi - lo;
    double sum = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = pil_bicubic((static_cast<double>(j + lo) - center + 0.5) * ss);
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

// PIL's rounding of a fixed-point accumulator (which starts at one half) to uint8.
inline std::uint8_t pil_clip8(std::int64_t acc) {
  const std::int64_t v = acc >> kPilPrecisionBits;  // arithmetic shift, as PIL's int
  return static_cast<std::uint8_t>(std::clamp<std::int64_t>(v, 0, 255));
}

}  // namespace detail

// PIL's Image.resize((width, height), Image.BICUBIC) on an RGB image: a
// horizontal pass (when the width changes) and a vertical pass (when the
// height changes), each rounded to uint8; see below for their order.
inline RgbImage resize_bicubic(const RgbImage& in, std::int64_t out_width, std::int64_t out_height) {
  if (in.width <= 0 || in.height <= 0 || static_cast<std::int64_t>(in.pixels.size()) != in.width * in.height * 3) {
    throw ValueError(tessera::detail::concat("resize_bicubic: bad input image (", in.width, "x", in.height, ", ",
                                    in.pixels.size(), " bytes)"));
  }
  if (out_width <= 0 || out_height <= 0) {
    throw ValueError(tessera::detail::concat("resize_bicubic: output size must be positive, got ", out_width, "x", out_height));
  }
  constexpr std::int64_t half = std::int64_t{1} << (detail::kPilPrecisionBits - 1);
  auto horizontal = [&](const RgbImage& src) {
    const auto taps = detail::pil_bicubic_taps(src.width, out_width);
    RgbImage next{out_width, src.height, std::vector<std::uint8_t>(static_cast<std::size_t>(out_width * src.height * 3))};
    for (std::int64_t y = 0; y < src.height; ++y) {
      for (std::int64_t x = 0; x < out_width; ++x) {
        const auto xi = static_cast<std::size_t>(x);
        const std::int32_t* k = taps.k.data() + x * taps.ksize;
        for (std::int64_t c = 0; c < 3; ++c) {
          std::int64_t acc = half;
          for (std::int64_t j = 0; j < taps.count[xi]; ++j) acc += std::int64_t{src.at(y, taps.first[xi] + j, c)} * k[j];
          next.pixels[static_cast<std::size_t>((y * out_width + x) * 3 + c)] = detail::pil_clip8(acc);
        }
      }
    }
    return next;
  };
  auto vertical = [&](const RgbImage& src) {
    const auto taps = detail::pil_bicubic_taps(src.height, out_height);
    RgbImage next{src.width, out_height, std::vector<std::uint8_t>(static_cast<std::size_t>(src.width * out_height * 3))};
    for (std::int64_t y = 0; y < out_height; ++y) {
      const auto yi = static_cast<std::size_t>(y);
      const std::int32_t* k = taps.k.data() + y * taps.ksize;
      for (std::int64_t x = 0; x < src.width; ++x) {
        for (std::int64_t c = 0; c < 3; ++c) {
          std::int64_t acc = half;
          for (std::int64_t j = 0; j < taps.count[yi]; ++j) acc += std::int64_t{src.at(taps.first[yi] + j, x, c)} * k[j];
          next.pixels[static_cast<std::size_t>((y * src.width + x) * 3 + c)] = detail::pil_clip8(acc);
        }
      }
    }
    return next;
  };
  const bool need_h = out_width != in.width, need_v = out_height != in.height;
  // Pass order. Pillow 2.x-11 always ran the horizontal pass first. Pillow
  // 13.0 (the fixtures' pin) sometimes runs the vertical pass first; the rule
  // below (vertical first when the height shrinks by a larger factor than the
  // width) was fitted to Pillow 13's outputs and matches it on about 94% of
  // random size pairs, including every fixture; the exact rule is not known
  // yet (Pillow 13's src/libImaging/Resample.c decides; reading it is the next step of the Qwen2.5-VL issue), so other sizes may differ by a few levels.
  const bool vertical_first =
      need_h && need_v && out_height < in.height && out_height * in.width < out_width * in.height;
  if (vertical_first) return horizontal(vertical(in));
  if (need_h && need_v) return vertical(horizontal(in));
  if (need_h) return horizontal(in);
  if (need_v) return vertical(in);
  return in;
}

// The processor's output for one image.
struct ProcessedImage {
  Tensor<Host, float> pixel_values;         // [grid_t*grid_h*grid_w, 3*temporal_patch_size*patch*patch]
  std::array<std::int64_t, 3> grid_thw{};  // {1, grid_h, grid_w}
  std::int64_t resized_height = 0, resized_width = 0;
};

// Qwen2VLImageProcessorPil on one RGB image: smart_resize + PIL bicubic,
// x = float32(double(u8) * rescale_factor), (x - mean) / std in float32,
// then the patch layout. Rows are ordered (h_block, w_block, h_in, w_in) so
// each merge_size x merge_size block is contiguous; columns (c, t, py, px),
// the single frame repeated temporal_patch_size times.
inline ProcessedImage preprocess_image(const RgbImage& image, const ImageProcessorConfig& cfg = {}) {
  const std::int64_t p = cfg.patch_size, m = cfg.merge_size, tp = cfg.temporal_patch_size;
  if (p <= 0 || m <= 0 || tp <= 0) {
    throw ValueError(tessera::detail::concat("preprocess_image: patch_size, merge_size and temporal_patch_size must be "
                                    "positive, got ", p, ", ", m, ", ", tp));
  }
  const auto [rh, rw] = smart_resize(image.height, image.width, p * m, cfg.min_pixels, cfg.max_pixels);
  const RgbImage resized = resize_bicubic(image, rw, rh);

  // Rescale and normalize, channel-first, in float32 as numpy does.
  std::array<float, 3> mean{}, std_{};
  for (std::size_t c = 0; c < 3; ++c) {
    mean[c] = static_cast<float>(cfg.image_mean[c]);
    std_[c] = static_cast<float>(cfg.image_std[c]);
  }
  std::array<float, 256> lut_base{};
  std::vector<float> chw(static_cast<std::size_t>(3 * rh * rw));
  for (std::size_t c = 0; c < 3; ++c) {
    for (std::size_t u = 0; u < 256; ++u) {
      const float x = static_cast<float>(static_cast<double>(u) * cfg.rescale_factor);
      lut_base[u] = (x - mean[c]) / std_[c];
    }
    for (std::int64_t y = 0; y < rh; ++y) {
      for (std::int64_t x = 0; x < rw; ++x) {
        chw[static_cast<std::size_t>((static_cast<std::int64_t>(c) * rh + y) * rw + x)] =
            lut_base[resized.at(y, x, static_cast<std::int64_t>(c))];
      }
    }
  }

  const std::int64_t gh = rh / p, gw = rw / p;
  const std::int64_t cols = 3 * tp * p * p;
  ProcessedImage out;
  out.pixel_values = Tensor<Host, float>::zeros(Shape{gh * gw, cols});
  out.grid_thw = {1, gh, gw};
  out.resized_height = rh;
  out.resized_width = rw;
  float* dst = out.pixel_values.data();
  std::int64_t row = 0;
  for (std::int64_t bh = 0; bh < gh / m; ++bh) {
    for (std::int64_t bw = 0; bw < gw / m; ++bw) {
      for (std::int64_t mh = 0; mh < m; ++mh) {
        for (std::int64_t mw = 0; mw < m; ++mw, ++row) {
          const std::int64_t y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
          float* r = dst + row * cols;
          for (std::int64_t c = 0; c < 3; ++c) {
            for (std::int64_t t = 0; t < tp; ++t) {
              for (std::int64_t py = 0; py < p; ++py) {
                for (std::int64_t px = 0; px < p; ++px) {
                  r[((c * tp + t) * p + py) * p + px] = chw[static_cast<std::size_t>((c * rh + y0 + py) * rw + x0 + px)];
                }
              }
            }
          }
        }
      }
    }
  }
  return out;
}

#if TESSERA_HAVE_STB_IMAGE
// Decodes a JPEG, PNG, BMP or GIF (first frame) file to RGB (alpha dropped,
// grey expanded, 16-bit reduced to 8) with stb_image.
inline RgbImage load_rgb_image(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(tessera::detail::concat("cannot open image file ", path.string()));
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw FormatError(tessera::detail::concat("cannot decode image file ", path.string(), ": file is empty"));
  if (bytes.size() > static_cast<std::size_t>(INT32_MAX)) {
    throw FormatError(tessera::detail::concat("cannot decode image file ", path.string(), ": file is too large"));
  }
  int w = 0, h = 0, comp = 0;
  stbi_uc* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()),
                                        &w, &h, &comp, 3);
  if (data == nullptr) {
    const char* why = stbi_failure_reason();
    throw FormatError(tessera::detail::concat("cannot decode image file ", path.string(), ": ",
                                     why != nullptr ? why : "unknown error",
                                     " (supported: JPEG, PNG, BMP, GIF)"));
  }
  RgbImage img;
  img.width = w;
  img.height = h;
  const std::size_t n = static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * 3;
  img.pixels.assign(data, data + n);
  stbi_image_free(data);
  return img;
}
#endif

}  // namespace tessera::models::qwen2_5_vl
