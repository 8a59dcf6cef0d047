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
// Images and files: the model-agnostic parts (RgbImage, the Pillow-exact
// bicubic resize, normalization, decoding JPEG/PNG/BMP/GIF as Pillow does)
// live in io/image.hpp and are re-exported here under their old names
// (qwen2_5_vl::RgbImage, resize_bicubic, load_rgb_image, ...).
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
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/config.hpp"
#include "../io/image.hpp"

namespace tessera::models::qwen2_5_vl {

// The shared image code, under the names this processor has always had.
using io::AlphaMode;
using io::crop;
using io::decode_rgb_image;
using io::kMaxDecodedPixels;
using io::load_rgb_image;
using io::resize_bicubic;
using io::RgbImage;
using io::to_chw_normalized;

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

  // Reads the fields present (absent or null keys keep the defaults);
  // `min_pixels`/`max_pixels` win over `size.shortest_edge`/
  // `size.longest_edge`, as in transformers. FormatError naming `file` and
  // the key for a value of the wrong type or range.
  static ImageProcessorConfig from_json(const nlohmann::json& j,
                                        const std::string& file = "preprocessor_config.json") {
    const io::detail::JsonFields f(j, file);
    ImageProcessorConfig c;
    auto read_positive = [](const io::detail::JsonFields& obj, std::string_view key, std::int64_t& out) {
      if (obj.has_value(key)) out = obj.positive(key, out);
    };
    auto read_triple = [&](std::string_view key, std::array<double, 3>& out) {
      if (!f.has_value(key)) return;
      const auto& v = f.raw(key);
      if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number()) {
        throw f.bad(key, "must be a list of 3 numbers");
      }
      for (std::size_t i = 0; i < 3; ++i) out[i] = v[i].get<double>();
    };
    if (f.has_value("size")) {
      const io::detail::JsonFields size(f.raw("size"), file, "size.");
      read_positive(size, "shortest_edge", c.min_pixels);
      read_positive(size, "longest_edge", c.max_pixels);
    }
    read_positive(f, "min_pixels", c.min_pixels);
    read_positive(f, "max_pixels", c.max_pixels);
    read_positive(f, "patch_size", c.patch_size);
    read_positive(f, "temporal_patch_size", c.temporal_patch_size);
    read_positive(f, "merge_size", c.merge_size);
    if (f.has_value("rescale_factor")) c.rescale_factor = f.number("rescale_factor", c.rescale_factor);
    read_triple("image_mean", c.image_mean);
    read_triple("image_std", c.image_std);
    for (const double s : c.image_std) {
      if (static_cast<float>(s) == 0.0F) throw f.error("image_std", "must not hold 0 (normalizing divides by it)");
    }
    return c;
  }

  // IoError when the file cannot be read, FormatError naming it otherwise.
  static ImageProcessorConfig load(const std::filesystem::path& path) {
    const std::string file = path.string();
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(path, "preprocessor config"), file), file);
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
  const auto lut = io::detail::normalize_table(cfg.image_mean, cfg.image_std, cfg.rescale_factor);
  const auto n = static_cast<std::int64_t>(frames.size());
  const auto frame_floats = static_cast<std::size_t>(3 * rh * rw);
  std::vector<float> chw(frame_floats * frames.size());
  for (std::size_t f = 0; f < frames.size(); ++f) {
    float* dst = chw.data() + f * frame_floats;
    if (frames[f].width == rw && frames[f].height == rh) {
      io::detail::normalize_frame(frames[f], lut, dst);  // Image.resize to the same size is a copy
    } else {
      io::detail::normalize_frame(resize_bicubic(frames[f], rw, rh), lut, dst);
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
  io::detail::check_rgb_image(image, "preprocess_image");
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
    io::detail::check_rgb_image(frames[i], tessera::detail::concat("preprocess_video: frame ", i));
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
