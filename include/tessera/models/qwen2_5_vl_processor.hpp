// Qwen2.5-VL processor: images, videos and the prompt's vision placeholders.
//
// Images reimplement transformers' PIL-backend `Qwen2VLImageProcessorPil`
// (what `use_fast=False` selects; transformers 5.23): smart_resize, a resize
// that is Pillow 13's `Image.resize(size, Image.BICUBIC)` bit for bit
// (antialiased, separable, fixed-point coefficients, uint8 rounding between
// the passes, Pillow's choice of which pass runs first), rescale by 1/255,
// CLIP mean/std normalization, and the patch layout
// `[grid_t*grid_h*grid_w, C*temporal_patch_size*patch*patch]` with `grid_thw`.
//
// Videos follow the PIL path too: transformers 4.x's slow
// Qwen2VLImageProcessor (its `videos=` argument) ran every frame through the
// same PIL resize/rescale/normalize and patchified frames in pairs.
// transformers 5 routes videos through a torchvision video processor whose
// resize is not PIL's (so its pixels differ by a few levels); we keep PIL's.
//
// One deliberate difference from transformers 5.23: images with a side
// shorter than patch_size*merge_size (28) are rejected (ValueError), as
// transformers 4.x did; 5.23 silently upsamples them. Such images hold almost
// no information, and rejecting them is what the Qwen2.5-VL release did.
//
// Image files: decode_rgb_image()/load_rgb_image() read JPEG, PNG, BMP and
// GIF (first frame) with stb_image 2.30, vendored in
// include/tessera/third_party (TESSERA_HAVE_STB_IMAGE is always 1). It is
// compiled into each including translation unit with internal linkage
// (STB_IMAGE_STATIC), so nothing needs linking; a translation unit that
// includes another stb_image.h itself must include it after this header.
//
// Prompts: chat_prompt() renders Qwen2.5-VL's chat template for one user
// turn, expand_vision_placeholders() turns each <|image_pad|>/<|video_pad|>
// into one id per merged patch, and check_placeholder_counts() validates ids
// that arrive already expanded.
//
// Checked against the references by tests/unit/test_qwen2_5_vl_processor.cpp
// (fixtures from tools/fixtures/make_qwen2_5_vl_processor_fixtures.py).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

// stb_image 2.30, vendored (third_party/stb_image_impl.hpp says why).
#define TESSERA_HAVE_STB_IMAGE 1
#include "../third_party/stb_image_impl.hpp"

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

// transformers' smart_resize (Qwen2-VL / Qwen2.5-VL): the (height, width) to
// resize to, both multiples of `factor`, with height*width in [min_pixels,
// max_pixels] where possible. Python's round() (half to even) is
// std::nearbyint under the default rounding mode. Rejects (ValueError)
// non-positive sizes, aspect ratios above 200 (as transformers does) and,
// like transformers 4.x but unlike 5.23, sides shorter than `factor`.
inline std::pair<std::int64_t, std::int64_t> smart_resize(std::int64_t height, std::int64_t width,
                                                          std::int64_t factor = 28, std::int64_t min_pixels = 56 * 56,
                                                          std::int64_t max_pixels = 28 * 28 * 1280) {
  if (height <= 0 || width <= 0) {
    throw ValueError(
        tessera::detail::concat("smart_resize: image size must be positive, got height ", height, " width ", width));
  }
  if (factor <= 0 || min_pixels <= 0 || max_pixels <= 0) {
    throw ValueError(tessera::detail::concat("smart_resize: factor, min_pixels and max_pixels must be positive, got ",
                                             factor, ", ", min_pixels, ", ", max_pixels));
  }
  const double h = static_cast<double>(height), w = static_cast<double>(width), f = static_cast<double>(factor);
  const double ratio = std::max(h, w) / std::min(h, w);
  if (ratio > 200.0) {
    throw ValueError(tessera::detail::concat("smart_resize: absolute aspect ratio must be smaller than 200, got ", ratio,
                                             " (height ", height, ", width ", width, ")"));
  }
  if (height < factor || width < factor) {
    throw ValueError(tessera::detail::concat("smart_resize: image ", width, "x", height, " (height ", height, ", width ",
                                             width, ") is smaller than ", factor,
                                             " pixels on a side; Qwen2.5-VL needs both sides to be at least ", factor,
                                             " (transformers 4.x rejects it too; 5.x upsamples it)"));
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

// Throws unless `img` is a non-empty RGB image whose buffer matches its size.
inline void check_rgb_image(const RgbImage& img, std::string_view what) {
  constexpr std::int64_t kMaxSide = std::int64_t{1} << 30;  // keeps width*height*3 far from overflow
  const bool sized = img.width > 0 && img.height > 0 && img.width <= kMaxSide && img.height <= kMaxSide;
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

// The processor's output for one image.
struct ProcessedImage {
  Tensor<Host, float> pixel_values;        // [grid_t*grid_h*grid_w, 3*temporal_patch_size*patch*patch]
  std::array<std::int64_t, 3> grid_thw{};  // {1, grid_h, grid_w}
  std::int64_t resized_height = 0, resized_width = 0;
};

// The processor's output for one video.
struct ProcessedVideo {
  Tensor<Host, float> pixel_values;        // [grid_t*grid_h*grid_w, 3*temporal_patch_size*patch*patch]
  std::array<std::int64_t, 3> grid_thw{};  // {T/temporal_patch_size (T rounded up), grid_h, grid_w}
  double second_per_grid_t = 1.0;          // temporal_patch_size / fps
  std::int64_t resized_height = 0, resized_width = 0;
};

namespace detail {

// The 256 normalized values each channel's uint8 can take:
// float32(double(u8) * rescale_factor), then (x - mean) / std in float32,
// the steps (and roundings) of transformers' numpy rescale and normalize.
inline std::array<std::array<float, 256>, 3> normalize_table(const ImageProcessorConfig& cfg) {
  std::array<std::array<float, 256>, 3> lut{};
  for (std::size_t c = 0; c < 3; ++c) {
    const auto mean = static_cast<float>(cfg.image_mean[c]);
    const auto std_ = static_cast<float>(cfg.image_std[c]);
    for (std::size_t u = 0; u < 256; ++u) {
      const auto x = static_cast<float>(static_cast<double>(u) * cfg.rescale_factor);
      lut[c][u] = (x - mean) / std_;
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

// The patch layout of `n_frames` channel-first frames [n_frames, 3, h, w]:
// numpy's reshape(grid_t, tp, C, gh/m, m, p, gw/m, m, p)
// .transpose(0, 3, 6, 4, 7, 2, 1, 5, 8), so rows run (t, h_blk, w_blk, h_in,
// w_in) with each merge block's m*m patches contiguous, and columns
// (c, t_in, py, px). Frame indices past the end repeat the last frame, which
// is how the processor pads T to a multiple of temporal_patch_size.
inline Tensor<Host, float> patchify(const std::vector<float>& frames, std::int64_t n_frames, std::int64_t h,
                                    std::int64_t w, const ImageProcessorConfig& cfg) {
  const std::int64_t p = cfg.patch_size, m = cfg.merge_size, tp = cfg.temporal_patch_size;
  const std::int64_t gt = (n_frames + tp - 1) / tp, gh = h / p, gw = w / p;
  const std::int64_t cols = 3 * tp * p * p;
  Tensor<Host, float> out(Shape{gt * gh * gw, cols});
  float* dst = out.data();
  for (std::int64_t t = 0; t < gt; ++t) {
    for (std::int64_t bh = 0; bh < gh / m; ++bh) {
      for (std::int64_t bw = 0; bw < gw / m; ++bw) {
        for (std::int64_t mh = 0; mh < m; ++mh) {
          for (std::int64_t mw = 0; mw < m; ++mw, dst += cols) {
            const std::int64_t y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
            float* r = dst;
            for (std::int64_t c = 0; c < 3; ++c) {
              for (std::int64_t ti = 0; ti < tp; ++ti) {
                const std::int64_t f = std::min(t * tp + ti, n_frames - 1);
                const float* plane = frames.data() + (f * 3 + c) * h * w;
                for (std::int64_t py = 0; py < p; ++py, r += p) std::copy_n(plane + (y0 + py) * w + x0, p, r);
              }
            }
          }
        }
      }
    }
  }
  return out;
}

// What images and videos share: smart_resize from the first frame's size,
// PIL bicubic resize of every frame, rescale + normalize, one patchify.
struct PatchedFrames {
  Tensor<Host, float> pixel_values;
  std::array<std::int64_t, 3> grid_thw{};
  std::int64_t resized_height = 0, resized_width = 0;
};

inline PatchedFrames process_frames(std::span<const RgbImage> frames, const ImageProcessorConfig& cfg,
                                    std::string_view who) {
  const std::int64_t p = cfg.patch_size, m = cfg.merge_size, tp = cfg.temporal_patch_size;
  if (p <= 0 || m <= 0 || tp <= 0) {
    throw ValueError(tessera::detail::concat(who, ": patch_size, merge_size and temporal_patch_size must be positive, got ",
                                             p, ", ", m, ", ", tp));
  }
  const auto [rh, rw] = smart_resize(frames[0].height, frames[0].width, p * m, cfg.min_pixels, cfg.max_pixels);
  const auto lut = normalize_table(cfg);
  const auto n = static_cast<std::int64_t>(frames.size());
  const auto frame_floats = static_cast<std::size_t>(3 * rh * rw);
  std::vector<float> chw(frame_floats * frames.size());
  for (std::size_t f = 0; f < frames.size(); ++f) {
    float* dst = chw.data() + f * frame_floats;
    if (frames[f].width == rw && frames[f].height == rh) {
      normalize_frame(frames[f], lut, dst);  // Image.resize to the same size is a copy
    } else {
      normalize_frame(resize_bicubic(frames[f], rw, rh), lut, dst);
    }
  }
  PatchedFrames out;
  out.pixel_values = patchify(chw, n, rh, rw, cfg);
  out.grid_thw = {(n + tp - 1) / tp, rh / p, rw / p};
  out.resized_height = rh;
  out.resized_width = rw;
  return out;
}

}  // namespace detail

// Qwen2VLImageProcessorPil on one RGB image: smart_resize + PIL bicubic,
// rescale, normalize, then the patch layout, the single frame repeated
// temporal_patch_size times. grid_thw = {1, H/patch, W/patch}.
inline ProcessedImage preprocess_image(const RgbImage& image, const ImageProcessorConfig& cfg = {}) {
  detail::check_rgb_image(image, "preprocess_image");
  detail::PatchedFrames f = detail::process_frames(std::span<const RgbImage>(&image, 1), cfg, "preprocess_image");
  return ProcessedImage{std::move(f.pixel_values), f.grid_thw, f.resized_height, f.resized_width};
}

// The PIL path of transformers 4.x's Qwen2VLImageProcessor for a video:
// `frames` in order, all the same size, sampled at `fps` (> 0). Every frame
// gets the same smart_resize (from the first frame's size), PIL bicubic,
// rescale and normalize as an image; an odd frame count repeats the last
// frame (T is rounded up to a multiple of temporal_patch_size). Rows are
// ordered (t, h_blk, w_blk, h_in, w_in), columns (c, t_in, py, px).
// grid_thw = {T/temporal_patch_size, H/patch, W/patch};
// second_per_grid_t = temporal_patch_size / fps.
inline ProcessedVideo preprocess_video(std::span<const RgbImage> frames, double fps,
                                       const ImageProcessorConfig& cfg = {}) {
  if (!(fps > 0.0) || !std::isfinite(fps)) {
    throw ValueError(tessera::detail::concat("preprocess_video: fps must be a positive number, got ", fps));
  }
  if (frames.empty()) throw ValueError("preprocess_video: the video has no frames");
  for (std::size_t i = 0; i < frames.size(); ++i) {
    detail::check_rgb_image(frames[i], tessera::detail::concat("preprocess_video: frame ", i));
    if (frames[i].width != frames[0].width || frames[i].height != frames[0].height) {
      throw ValueError(tessera::detail::concat("preprocess_video: frame ", i, " is ", frames[i].width, "x",
                                               frames[i].height, " but frame 0 is ", frames[0].width, "x",
                                               frames[0].height, " (width x height); all frames must be the same size"));
    }
  }
  detail::PatchedFrames f = detail::process_frames(frames, cfg, "preprocess_video");
  ProcessedVideo out;
  out.pixel_values = std::move(f.pixel_values);
  out.grid_thw = f.grid_thw;
  out.second_per_grid_t = static_cast<double>(cfg.temporal_patch_size) / fps;
  out.resized_height = f.resized_height;
  out.resized_width = f.resized_width;
  return out;
}

// ---- image files ---------------------------------------------------------

// How transparency reaches RGB. transformers' convert_to_rgb (4.x and 5.x,
// what the processor does to a PIL image with an alpha channel or a
// transparent palette/colour) composites onto white with
// PIL.Image.alpha_composite; PIL's own .convert("RGB") drops alpha.
enum class AlphaMode { composite_on_white, drop };

// PIL's decompression-bomb limit (Image.open raises DecompressionBombError
// above 2 * MAX_IMAGE_PIXELS); also bounds what a crafted header can allocate.
inline constexpr std::int64_t kMaxDecodedPixels = 2 * 89478485;

namespace detail {

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

// Where a JPEG's data starts after its SOI marker (0xFF 0xD8, which stb_image
// also finds after 0xFF fill bytes), or 0 for data that is not a JPEG.
inline std::size_t jpeg_after_soi(std::span<const std::uint8_t> b) {
  std::size_t i = 0;
  while (i < b.size() && b[i] == 0xFF) ++i;
  return i > 0 && i < b.size() && b[i] == 0xD8 ? i + 1 : 0;
}

inline bool starts_with(std::span<const std::uint8_t> b, std::initializer_list<std::uint8_t> magic) {
  return b.size() >= magic.size() && std::equal(magic.begin(), magic.end(), b.begin());
}

// libjpeg (so PIL) rejects a JPEG whose last scan has no end-of-image marker
// ("image file is truncated"); stb_image decodes the missing blocks as grey.
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

// A DHT segment's tables, each: class/id byte, 16 code-length counts, then
// that many symbols. More than 256 symbols overflow stb_image's Huffman
// arrays (Debian's stb 2.27 lacks upstream 2.28's check), and libjpeg
// rejects such a table too ("Bogus Huffman table definition").
inline bool dht_is_bad(std::span<const std::uint8_t> seg) {
  std::size_t i = 0;
  while (i < seg.size()) {
    if (seg.size() - i < 17) return true;
    std::size_t n = 0;
    for (std::size_t k = 1; k <= 16; ++k) n += seg[i + k];
    if (n > 256 || seg.size() - i - 17 < n) return true;
    i += 17 + n;
  }
  return false;
}

// Index of the first marker after a scan's entropy-coded data that starts at
// `i`, as stb_image's decoder finds it: 0xFF, any 0xFF fill bytes, then a
// byte that is not 0x00 (a stuffed 0xFF) nor RST0-7 (restart markers stay
// inside the scan).
inline std::size_t jpeg_scan_end(std::span<const std::uint8_t> b, std::size_t i) {
  while (i < b.size()) {
    if (b[i] != 0xFF) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < b.size() && b[j] == 0xFF) ++j;
    if (j >= b.size()) return b.size();
    if (b[j] != 0x00 && (b[j] < 0xD0 || b[j] > 0xD7)) return j - 1;
    i = j + 1;
  }
  return b.size();
}

// Walks a JPEG's marker segments from `i` (just after SOI) the way stb_image
// reads them (stray bytes and fill bytes skipped, entropy-coded data skipped
// after each start-of-scan) and checks every DHT.
inline bool jpeg_has_bad_huffman_table(std::span<const std::uint8_t> b, std::size_t i) {
  while (i + 1 < b.size()) {
    if (b[i] != 0xFF || b[i + 1] == 0xFF) {  // a stray byte, or a fill byte before a marker
      ++i;
      continue;
    }
    const std::uint8_t m = b[i + 1];
    if (m == 0xD9) return false;  // EOI
    if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) {  // no length field
      i += 2;
      continue;
    }
    if (i + 3 >= b.size()) return false;
    const std::size_t len = std::size_t{b[i + 2]} << 8 | b[i + 3];
    if (len < 2 || i + 2 + len > b.size()) return m == 0xC4;
    if (m == 0xC4 && dht_is_bad(b.subspan(i + 4, len - 2))) return true;
    i += 2 + len;
    if (m == 0xDA) i = jpeg_scan_end(b, i);
  }
  return false;
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
  while (pos + 12 <= b.size()) {  // length, type, data, CRC
    const std::uint32_t len = read_be32(b, pos);
    const std::size_t next = len > b.size() - pos - 12 ? b.size() : pos + 12 + len;
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

}  // namespace detail

#if TESSERA_HAVE_STB_IMAGE
namespace detail {

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

}  // namespace detail

// Decodes an image file's bytes (JPEG, PNG, BMP or GIF: the first frame) to
// 8-bit RGB the way PIL.Image.open + transformers' convert_to_rgb does
// (`alpha` says what happens to transparency; grey expands to RGB, palettes
// are looked up, 16-bit samples are reduced as PIL reduces them). `source`
// names the data in messages. Throws FormatError for data that is not an
// image of those formats, is truncated, or has more than `max_pixels`
// pixels. JPEG pixels come from stb_image's IDCT and upsampling, which
// differ from libjpeg-turbo's (PIL's) by a level or two; PNG, BMP and GIF
// decode exactly as PIL does.
inline RgbImage decode_rgb_image(std::span<const std::uint8_t> file, std::string_view source,
                                 AlphaMode alpha = AlphaMode::composite_on_white,
                                 std::int64_t max_pixels = kMaxDecodedPixels) {
  auto fail = [&](std::string_view why) {
    return FormatError(tessera::detail::concat("cannot decode image file ", source, ": ", why));
  };
  if (file.empty()) throw fail("file is empty");
  const std::optional<std::vector<std::uint8_t>> cleaned = detail::png_without_empty_idat(file);
  const std::span<const std::uint8_t> bytes = cleaned ? std::span<const std::uint8_t>(*cleaned) : file;
  if (bytes.size() > static_cast<std::size_t>(INT32_MAX)) throw fail("file is too large (over 2 GiB)");
  const int len = static_cast<int>(bytes.size());
  // Before stb_image reads anything: even its header scan builds Huffman tables.
  if (const std::size_t body = detail::jpeg_after_soi(bytes); body != 0) {
    if (detail::jpeg_is_truncated(bytes)) throw fail("JPEG data is truncated (no end-of-image marker)");
    if (detail::jpeg_has_bad_huffman_table(bytes, body)) throw fail("JPEG Huffman table (DHT) is malformed");
  }
  int w = 0, h = 0, comp = 0;
  if (stbi_info_from_memory(bytes.data(), len, &w, &h, &comp) == 0) {
    const char* why = stbi_failure_reason();
    throw fail(tessera::detail::concat(why != nullptr ? why : "unknown format", " (supported: JPEG, PNG, BMP, GIF)"));
  }
  if (w <= 0 || h <= 0) throw fail(tessera::detail::concat("image is ", w, "x", h, " pixels"));  // stb lets 0x0 BMPs through
  if (static_cast<std::int64_t>(w) * h > max_pixels) {
    throw fail(tessera::detail::concat("image is ", w, "x", h, ", more than the limit of ", max_pixels, " pixels"));
  }
  if (detail::starts_with(bytes, {'B', 'M'}) && detail::bmp_is_truncated(bytes, w, h)) {
    throw fail("BMP pixel data is truncated");
  }
  // From the PNG header itself (bit depth 16, colour type 0), not stb's
  // channel count, which counts a tRNS chunk as alpha.
  const bool grey16 = detail::starts_with(bytes, {0x89, 'P', 'N', 'G'}) && bytes.size() > 25 && bytes[24] == 16 &&
                      bytes[25] == 0;
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
#endif

// ---- prompts ---------------------------------------------------------------

// Token ids of the vision specials (config.json: image_token_id,
// video_token_id, vision_start_token_id, vision_end_token_id).
struct VisionTokens {
  std::int64_t image = 151655, video = 151656, vision_start = 151652, vision_end = 151653;
};

namespace detail {

// The placeholder ids one image or video grid becomes: t*h*w / merge^2
// (the vision tower merges merge x merge patches into one token).
inline std::int64_t grid_tokens(const std::array<std::int64_t, 3>& g, std::int64_t merge_size, std::string_view who) {
  if (merge_size <= 0) throw ValueError(tessera::detail::concat(who, ": merge_size must be positive, got ", merge_size));
  if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || g[1] % merge_size != 0 || g[2] % merge_size != 0) {
    throw ValueError(tessera::detail::concat(who, ": grid [", g[0], ",", g[1], ",", g[2],
                                             "] must be positive with h and w multiples of merge_size ", merge_size));
  }
  return g[0] * g[1] * g[2] / (merge_size * merge_size);
}

inline std::string grid_list(std::span<const std::array<std::int64_t, 3>> grids) {
  std::string s;
  for (const auto& g : grids) {
    if (!s.empty()) s.append(", ");
    s.append(tessera::detail::concat("[", g[0], ",", g[1], ",", g[2], "]"));
  }
  return s.empty() ? std::string("none") : s;
}

inline std::int64_t total_tokens(std::span<const std::array<std::int64_t, 3>> grids, std::int64_t merge_size,
                                 std::string_view who) {
  std::int64_t n = 0;
  for (const auto& g : grids) n += grid_tokens(g, merge_size, who);
  return n;
}

inline std::int64_t count_id(std::span<const std::int64_t> ids, std::int64_t id) {
  return static_cast<std::int64_t>(std::count(ids.begin(), ids.end(), id));
}

inline void check_distinct(const VisionTokens& t, std::string_view who) {
  if (t.image == t.video) {
    throw ValueError(tessera::detail::concat(who, ": image and video placeholder ids are both ", t.image));
  }
}

inline const char* plural(std::int64_t n, const char* one, const char* many) { return n == 1 ? one : many; }

// "the prompt has 2 <|image_pad|> placeholders (id 151655) but 1 image was given".
inline void check_placeholders(std::span<const std::int64_t> ids, std::int64_t id, const char* pad, const char* item,
                               std::span<const std::array<std::int64_t, 3>> grids, std::int64_t merge_size) {
  const std::int64_t have = count_id(ids, id);
  const auto given = static_cast<std::int64_t>(grids.size());
  if (have == given) return;
  std::string msg = tessera::detail::concat("expand_vision_placeholders: the prompt has ", have, " ", pad,
                                            plural(have, " placeholder", " placeholders"), " (id ", id, ") but ", given,
                                            " ", item, plural(given, " was", "s were"), " given");
  if (have > 0 && have == total_tokens(grids, merge_size, "expand_vision_placeholders")) {
    msg.append("; the ids look expanded already (use check_placeholder_counts for pre-expanded ids)");
  }
  throw ValueError(msg);
}

}  // namespace detail

// Replaces each image placeholder id with t*h*w/merge^2 copies of itself
// (the i-th placeholder takes image_grids[i]), likewise each video
// placeholder with video_grids. Each placeholder id counts as one item, so
// ids that are already expanded are rejected, not expanded again (validate
// those with check_placeholder_counts). Throws ValueError when the number of
// placeholders differs from the number of grids.
inline std::vector<std::int64_t> expand_vision_placeholders(std::span<const std::int64_t> ids,
                                                            std::span<const std::array<std::int64_t, 3>> image_grids,
                                                            std::span<const std::array<std::int64_t, 3>> video_grids,
                                                            const VisionTokens& tokens, std::int64_t merge_size) {
  constexpr std::string_view who = "expand_vision_placeholders";
  detail::check_distinct(tokens, who);
  detail::check_placeholders(ids, tokens.image, "<|image_pad|>", "image", image_grids, merge_size);
  detail::check_placeholders(ids, tokens.video, "<|video_pad|>", "video", video_grids, merge_size);
  std::vector<std::int64_t> out;
  out.reserve(ids.size() + static_cast<std::size_t>(detail::total_tokens(image_grids, merge_size, who) +
                                                    detail::total_tokens(video_grids, merge_size, who)));
  std::size_t next_image = 0, next_video = 0;
  for (const std::int64_t id : ids) {
    if (id == tokens.image) {
      out.insert(out.end(), static_cast<std::size_t>(detail::grid_tokens(image_grids[next_image++], merge_size, who)), id);
    } else if (id == tokens.video) {
      out.insert(out.end(), static_cast<std::size_t>(detail::grid_tokens(video_grids[next_video++], merge_size, who)), id);
    } else {
      out.push_back(id);
    }
  }
  return out;
}

// For ids that arrive expanded (e.g. --input-ids): the number of image
// (video) placeholder ids must equal the features the image (video) grids
// give, sum of t*h*w/merge^2, or the model's masked scatter would misalign.
// Throws ValueError ("input ids hold 120 image tokens but the images give
// 128 features (grids [1,16,32])").
inline void check_placeholder_counts(std::span<const std::int64_t> ids,
                                     std::span<const std::array<std::int64_t, 3>> image_grids,
                                     std::span<const std::array<std::int64_t, 3>> video_grids,
                                     const VisionTokens& tokens, std::int64_t merge_size) {
  constexpr std::string_view who = "check_placeholder_counts";
  detail::check_distinct(tokens, who);
  auto check = [&](std::int64_t id, const char* kind, const char* items,
                   std::span<const std::array<std::int64_t, 3>> grids) {
    const std::int64_t have = detail::count_id(ids, id), want = detail::total_tokens(grids, merge_size, who);
    if (have != want) {
      throw ValueError(tessera::detail::concat(who, ": input ids hold ", have, " ", kind, " tokens (id ", id,
                                               ") but the ", items, " give ", want, " features (grids ",
                                               detail::grid_list(grids), "; t*h*w/", merge_size * merge_size,
                                               " each)"));
    }
  };
  check(tokens.image, "image", "images", image_grids);
  check(tokens.video, "video", "videos", video_grids);
}

// Qwen2.5-VL's chat_template.json rendered for one user turn whose content
// is `images` images, then `videos` videos, then `user_text`, with
// add_generation_prompt=true: the default system turn ("You are a helpful
// assistant.") unless `system` is given, then the user turn, then the
// assistant header. Each image is <|vision_start|><|image_pad|><|vision_end|>
// (one placeholder id, for expand_vision_placeholders), likewise videos.
inline std::string chat_prompt(std::string_view user_text, std::int64_t images, std::int64_t videos,
                               std::optional<std::string_view> system = std::nullopt) {
  if (images < 0 || videos < 0) {
    throw ValueError(
        tessera::detail::concat("chat_prompt: image and video counts must be >= 0, got ", images, " and ", videos));
  }
  std::string out = "<|im_start|>system\n";
  out.append(system ? *system : std::string_view("You are a helpful assistant."));
  out.append("<|im_end|>\n<|im_start|>user\n");
  for (std::int64_t i = 0; i < images; ++i) out.append("<|vision_start|><|image_pad|><|vision_end|>");
  for (std::int64_t i = 0; i < videos; ++i) out.append("<|vision_start|><|video_pad|><|vision_end|>");
  out.append(user_text);
  out.append("<|im_end|>\n<|im_start|>assistant\n");
  return out;
}

}  // namespace tessera::models::qwen2_5_vl
