// MiniCPM-V 2.6 processor: image slicing, pixel values, tgt_sizes, the
// prompt's image placeholders and the image bounds.
//
// What the reference computes (the remote code of openbmb/MiniCPM-V-2_6,
// `image_processing_minicpmv.py` / `processing_minicpmv.py`, as mirrored by
// 404805854/minicpmv2.6-onnx@8490e59; shared/reference/model-specs.md
// §C.5-C.6 and oracle-internvl2-minicpmv.md §2.4):
//
//   ensure_divide(len, p)   = max(round(len / p) * p, p)       Python round: half to even
//   find_best_resize((w, h), S, p, allow_upscale):
//       if w*h > S*S or allow_upscale: r = w/h; h = int(S/sqrt(r)); w = int(h*r)
//       return (ensure_divide(w, p), ensure_divide(h, p))
//   get_sliced_grid((W, H), max):
//       log_ratio = log(W/H); multiple = min(ceil(W*H / S²), max)
//       None if multiple <= 1
//       candidates n in (multiple-1, multiple, multiple+1), n != 1, n <= max;
//       grids [m, n//m] for every divisor m of n, m ascending ([cols, rows]);
//       the first grid with the smallest |log_ratio - log(m / (n//m))| (strict <)
//   get_refine_size((W, H), [gx, gy]):
//       (bw, bh) = find_best_resize((ensure_divide(W, gx) / gx, ensure_divide(H, gy) / gy),
//                                   S, p, allow_upscale=True)     (float sizes)
//       return (bw*gx, bh*gy)
//   slice_image: no grid -> the image resized (PIL BICUBIC) to
//       find_best_resize((W, H), allow_upscale=True), no cells;
//     grid -> source = resize to find_best_resize((W, H)) (downscales only),
//       refine = resize to get_refine_size, cut into rows x cols cells of
//       (bw, bh) pixels (PIL crop), row-major
//   slices = [source] + cells; each (float32(u8)/255 - 0.5)/0.5 channel-first;
//   tgt_size = (H_slice / patch, W_slice / patch)
//   placeholder of the k-th image of a prompt:
//       [<image_id>k</image_id>] <image> <unk>*64 </image>     (id part only if use_image_id)
//       + rows of (<slice> <unk>*64 </slice>) * cols joined by "\n" (only if a grid)
//   image_bound: [index(<image>|<slice>) + 1, index(</image>|</slice>)) per span
//
// The arithmetic is Python's double arithmetic in the reference's order
// (int() truncates, round() is half to even, math.log/math.ceil), so the
// sizes equal the reference's. Resizes are io::resize_bicubic (Pillow's
// BICUBIC bit for bit), crops io::crop, normalization io::to_chw_normalized
// (the same float32 steps as the reference's numpy code).
//
// Sizes are (width, height) where the reference passes PIL sizes, and
// tgt_sizes are (rows, cols) of patches, as the reference's arrays are.
//
// Where this differs from the reference on purpose:
// * slice_mode false: the reference passes the image unresized and its
//   reshape_by_patch drops the pixels past the last whole patch (tgt_size =
//   (H // p, W // p)); here that slice is the top-left crop of those whole
//   patches (the same patches), and an image smaller than one patch is an
//   error instead of an empty slice.
// * Nonsense that the reference would run into an assert, an exception deep
//   in torch or a huge allocation (a resized slice above
//   io::kMaxDecodedPixels pixels, max_slice_nums above kMaxSliceNums) is a
//   ValueError naming the source and the sizes.
// * The reference counts markers with re.findall("(<image>./</image>)"),
//   a regex that also matches "<image>" + any character + "/</image>", and
//   splits on the literal marker; only the literal marker counts here.
//
// Video: the MiniCPM-V 2.6 model card samples frames at 1 fps
// (video_frame_indices), passes them as images before the question, and
// calls chat() with use_image_id=False and max_slice_nums=2 (for_video).
//
// Checked by tests/unit/test_minicpm_v_processor.cpp (fixtures from
// tools/fixtures/make_minicpm_v_fixtures.py).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
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
#include "../tokenizer/bpe.hpp"

namespace tessera::models::minicpm_v {

using io::RgbImage;

// (patch rows, patch cols) of one slice: the reference's tgt_sizes row
// (minicpm_v_vision.hpp declares the same alias under the same guard).
#ifndef TESSERA_MINICPM_V_TGT_SIZE_DEFINED
#define TESSERA_MINICPM_V_TGT_SIZE_DEFINED
using TgtSize = std::array<std::int64_t, 2>;
#endif

// A slice grid, [cols, rows] as the reference's best_grid.
using Grid = std::array<std::int64_t, 2>;

// A PIL size: (width, height).
struct ImageSize {
  std::int64_t width = 0, height = 0;
  friend bool operator==(const ImageSize&, const ImageSize&) = default;
};

// What chat() puts in the prompt for each image (the processor replaces it).
inline constexpr std::string_view kImageMarker = "(<image>./</image>)";

// More slices than any real configuration asks for (2.6 uses 9); bounds the
// grid search and the memory a bad config can ask for.
inline constexpr std::int64_t kMaxSliceNums = 1024;

// preprocessor_config.json of a MiniCPM-V checkpoint. A default-constructed
// config is the published MiniCPM-V 2.6 file (use_image_id true).
struct ProcessorConfig {
  std::int64_t max_slice_nums = 9, scale_resolution = 448, patch_size = 14, image_feature_size = 64;
  bool slice_mode = true, use_image_id = true;
  std::array<double, 3> mean{0.5, 0.5, 0.5}, std{0.5, 0.5, 0.5};
  // The placeholder strings (keys im_start, im_end, slice_start, slice_end,
  // unk, im_id_start, im_id_end).
  std::string im_start = "<image>", im_end = "</image>", slice_start = "<slice>", slice_end = "</slice>", unk = "<unk>",
              im_id_start = "<image_id>", im_id_end = "</image_id>";

  // MiniCPMVImageProcessor(**file): the keys present (null = absent) replace
  // the class defaults; unknown keys are ignored. An absent `use_image_id`
  // is FALSE, the image processor class's default (kwargs.pop("use_image_id",
  // False)), not the true of the 2.6 file: a file without it gives what the
  // reference gives (and the reference's chat() would then refuse the 2.6
  // model, whose config.json has use_image_id true; compare them). Keys:
  // max_slice_nums (1..kMaxSliceNums), scale_resolution, patch_size,
  // image_feature_size (positive integers), slice_mode, use_image_id
  // (booleans), norm_mean, norm_std (3 numbers, std non-zero) and the token
  // strings (non-empty). FormatError naming `file` and the key otherwise.
  static ProcessorConfig from_json(const nlohmann::json& j, const std::string& file = "preprocessor_config.json") {
    const io::detail::JsonFields f(j, file);
    ProcessorConfig c;
    c.use_image_id = false;  // the class default (see above)
    auto read_positive = [&](std::string_view key, std::int64_t& out) {
      if (f.has_value(key)) out = f.positive(key, out);
    };
    read_positive("max_slice_nums", c.max_slice_nums);
    read_positive("scale_resolution", c.scale_resolution);
    read_positive("patch_size", c.patch_size);
    read_positive("image_feature_size", c.image_feature_size);
    if (c.max_slice_nums > kMaxSliceNums) {
      throw f.error("max_slice_nums",
                    tessera::detail::concat("must be at most ", kMaxSliceNums, ", but it is ", c.max_slice_nums));
    }
    for (const std::string_view key : {"scale_resolution", "patch_size"}) {
      const std::int64_t v = key == "patch_size" ? c.patch_size : c.scale_resolution;
      if (v > io::detail::kMaxImageSide) {
        throw f.error(key, tessera::detail::concat("must be at most 2^30 pixels, but it is ", v));
      }
    }
    if (f.has_value("slice_mode")) c.slice_mode = f.boolean("slice_mode", c.slice_mode);
    if (f.has_value("use_image_id")) c.use_image_id = f.boolean("use_image_id", c.use_image_id);
    auto read_triple = [&](std::string_view key, std::array<double, 3>& out) {
      if (!f.has_value(key)) return;
      const auto& v = f.raw(key);
      if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number()) {
        throw f.bad(key, "must be a list of 3 numbers");
      }
      for (std::size_t i = 0; i < 3; ++i) out[i] = v[i].get<double>();
    };
    read_triple("norm_mean", c.mean);
    read_triple("norm_std", c.std);
    for (const double s : c.std) {
      if (static_cast<float>(s) == 0.0F) throw f.error("norm_std", "must not hold 0 (normalizing divides by it)");
    }
    auto read_token = [&](std::string_view key, std::string& out) {
      if (!f.has_value(key)) return;
      out = f.string(key, out);
      if (out.empty()) throw f.error(key, "must not be empty");
    };
    read_token("im_start", c.im_start);
    read_token("im_end", c.im_end);
    read_token("slice_start", c.slice_start);
    read_token("slice_end", c.slice_end);
    read_token("unk", c.unk);
    read_token("im_id_start", c.im_id_start);
    read_token("im_id_end", c.im_id_end);
    return c;
  }

  // preprocessor_config.json, or a checkpoint directory holding it. IoError
  // when it cannot be read, FormatError naming it otherwise.
  static ProcessorConfig load(const std::filesystem::path& file_or_dir) {
    std::error_code ec;
    const std::filesystem::path path =
        std::filesystem::is_directory(file_or_dir, ec) ? file_or_dir / "preprocessor_config.json" : file_or_dir;
    const std::string file = path.string();
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(path, "preprocessor config"), file), file);
  }
};

// The model card's video recipe: every frame is an image, with
// use_image_id false and max_slice_nums 2 (chat(..., use_image_id=False,
// max_slice_nums=2)); the rest of `config` is kept.
inline ProcessorConfig for_video(ProcessorConfig config) {
  config.use_image_id = false;
  config.max_slice_nums = 2;
  return config;
}

namespace detail {

// Throws unless the numbers a config feeds the slicer are usable.
inline void check_config(const ProcessorConfig& c, std::string_view who) {
  if (c.max_slice_nums < 1 || c.max_slice_nums > kMaxSliceNums) {
    throw ValueError(
        tessera::detail::concat(who, ": max_slice_nums must be 1 to ", kMaxSliceNums, ", got ", c.max_slice_nums));
  }
  if (c.scale_resolution < 1 || c.scale_resolution > io::detail::kMaxImageSide || c.patch_size < 1 ||
      c.patch_size > io::detail::kMaxImageSide || c.image_feature_size < 1) {
    throw ValueError(tessera::detail::concat(who,
                                             ": scale_resolution, patch_size (1 to 2^30) and image_feature_size "
                                             "must be positive, got ",
                                             c.scale_resolution, ", ", c.patch_size, ", ", c.image_feature_size));
  }
}

// Python's int(x) for a finite double that fits (the slicer's values do).
inline std::int64_t py_int(double x, std::string_view what) {
  if (!std::isfinite(x) || std::fabs(x) >= 9.0e15) {
    throw ValueError(tessera::detail::concat("minicpm_v: ", what, " is ", x, ", out of range"));
  }
  return static_cast<std::int64_t>(std::trunc(x));
}

// Python's round(x) (half to even) for such a double: std::nearbyint under
// the default rounding mode.
inline std::int64_t py_round(double x, std::string_view what) {
  if (!std::isfinite(x) || std::fabs(x) >= 9.0e15) {
    throw ValueError(tessera::detail::concat("minicpm_v: ", what, " is ", x, ", out of range"));
  }
  return static_cast<std::int64_t>(std::nearbyint(x));
}

}  // namespace detail

// ---- the slicing steps ------------------------------------------------------

// ensure_divide(length, patch_size) = max(round(length / patch_size) *
// patch_size, patch_size): the nearest positive multiple of patch_size,
// ties to the even multiple (Python's round). `length` is a double because
// the reference calls it with floats too; integer lengths below 2^53 are exact.
inline std::int64_t ensure_divide(double length, std::int64_t patch_size) {
  if (patch_size < 1) {
    throw ValueError(tessera::detail::concat("ensure_divide: patch_size must be positive, got ", patch_size));
  }
  const std::int64_t n = detail::py_round(length / static_cast<double>(patch_size), "ensure_divide's length / patch");
  return std::max(n * patch_size, patch_size);
}

// find_best_resize((width, height), scale_resolution, patch_size,
// allow_upscale): the size (multiples of patch_size) of about
// scale_resolution² pixels with the image's aspect ratio, when the image is
// larger than that or allow_upscale; otherwise the image's size rounded to
// multiples of patch_size. Width and height are doubles because
// get_refine_size passes floats (w/h is then a ratio of those floats).
inline ImageSize find_best_resize(double width, double height, std::int64_t scale_resolution, std::int64_t patch_size,
                                  bool allow_upscale = false) {
  if (!(width > 0.0) || !(height > 0.0) || !std::isfinite(width) || !std::isfinite(height) || scale_resolution < 1) {
    throw ValueError(tessera::detail::concat("find_best_resize: sizes must be positive, got ", width, "x", height,
                                             " and scale_resolution ", scale_resolution));
  }
  const auto s = static_cast<double>(scale_resolution);
  if (width * height > s * s || allow_upscale) {
    const double r = width / height;
    const std::int64_t h = detail::py_int(s / std::sqrt(r), "find_best_resize's height");
    const std::int64_t w = detail::py_int(static_cast<double>(h) * r, "find_best_resize's width");
    return {ensure_divide(static_cast<double>(w), patch_size), ensure_divide(static_cast<double>(h), patch_size)};
  }
  return {ensure_divide(width, patch_size), ensure_divide(height, patch_size)};
}

// get_sliced_grid((width, height), max_slice_nums): the [cols, rows] grid
// the image is cut into, or nullopt when it is not sliced (its area is at
// most scale_resolution², or max_slice_nums is 1). Candidates are the cell
// counts multiple-1, multiple, multiple+1 (not 1, at most max_slice_nums)
// with multiple = min(ceil(area / scale_resolution²), max_slice_nums); the
// grid whose log aspect ratio is nearest the image's wins, the first one
// (counts ascending, then cols ascending) among equals.
inline std::optional<Grid> get_sliced_grid(std::int64_t width, std::int64_t height, std::int64_t max_slice_nums,
                                           std::int64_t scale_resolution) {
  if (width < 1 || height < 1 || max_slice_nums < 1 || max_slice_nums > kMaxSliceNums || scale_resolution < 1) {
    throw ValueError(tessera::detail::concat("get_sliced_grid: the image must be at least 1x1 and max_slice_nums 1 to ",
                                             kMaxSliceNums, " and scale_resolution positive, got ", width, "x", height,
                                             ", ", max_slice_nums, ", ", scale_resolution));
  }
  const double log_ratio = std::log(static_cast<double>(width) / static_cast<double>(height));
  const double ratio = static_cast<double>(width * height) / static_cast<double>(scale_resolution * scale_resolution);
  const double up = std::ceil(ratio);
  const std::int64_t multiple =
      up >= static_cast<double>(max_slice_nums) ? max_slice_nums : static_cast<std::int64_t>(up);
  if (multiple <= 1) return std::nullopt;
  Grid best{1, 1};
  double min_error = std::numeric_limits<double>::infinity();
  for (const std::int64_t n : {multiple - 1, multiple, multiple + 1}) {
    if (n == 1 || n > max_slice_nums) continue;
    for (std::int64_t m = 1; m <= n; ++m) {
      if (n % m != 0) continue;
      const double error = std::fabs(log_ratio - std::log(static_cast<double>(m) / static_cast<double>(n / m)));
      if (error < min_error) {
        best = {m, n / m};
        min_error = error;
      }
    }
  }
  return best;
}

// get_refine_size((width, height), grid): the size the image is resized to
// before it is cut into grid cells: each cell find_best_resize(...,
// allow_upscale=True) of the cell size ensure_divide(width, cols) / cols
// by ensure_divide(height, rows) / rows (floats), times the grid.
inline ImageSize get_refine_size(std::int64_t width, std::int64_t height, const Grid& grid,
                                 std::int64_t scale_resolution, std::int64_t patch_size) {
  if (width < 1 || height < 1 || grid[0] < 1 || grid[1] < 1) {
    throw ValueError(
        tessera::detail::concat("get_refine_size: the image must be at least 1x1 and the grid positive, got ", width,
                                "x", height, " and grid [", grid[0], ",", grid[1], "]"));
  }
  const std::int64_t refine_w = ensure_divide(static_cast<double>(width), grid[0]);
  const std::int64_t refine_h = ensure_divide(static_cast<double>(height), grid[1]);
  const double cell_w = static_cast<double>(refine_w) / static_cast<double>(grid[0]);
  const double cell_h = static_cast<double>(refine_h) / static_cast<double>(grid[1]);
  const ImageSize cell = find_best_resize(cell_w, cell_h, scale_resolution, patch_size, /*allow_upscale=*/true);
  return {cell.width * grid[0], cell.height * grid[1]};
}

// The sizes slice_image resizes to, from the image's size alone.
struct SlicePlan {
  std::optional<Grid> grid;  // [cols, rows]; nullopt: not sliced
  ImageSize source;          // the source (overview) slice
  ImageSize refine;          // the image cut into the grid's cells (only with a grid)
  ImageSize cell;            // one cell: refine / grid (only with a grid)
};

// The plan for a width x height image under `config`; ValueError naming
// `source` and the sizes when the config is unusable or a resized image
// would exceed io::kMaxDecodedPixels (an extreme aspect ratio, whose short
// side ensure_divide lifts to a whole patch while the long one grows).
inline SlicePlan plan_slices(std::int64_t width, std::int64_t height, const ProcessorConfig& config,
                             std::string_view source = "image") {
  detail::check_config(config, tessera::detail::concat("minicpm_v: ", source));
  if (width < 1 || height < 1) {
    throw ValueError(tessera::detail::concat("minicpm_v: ", source, " is ", width, "x", height,
                                             " (width x height); an image needs at least one pixel"));
  }
  const std::int64_t p = config.patch_size, s = config.scale_resolution;
  auto check_size = [&](const ImageSize& z, std::string_view what) {
    if (z.width > io::detail::kMaxImageSide || z.height > io::detail::kMaxImageSide ||
        z.width * z.height > io::kMaxDecodedPixels) {
      throw ValueError(tessera::detail::concat(
          "minicpm_v: ", source, " (", width, "x", height, ") would have its ", what, " resized to ", z.width, "x",
          z.height, ", more than ", io::kMaxDecodedPixels, " pixels (scale_resolution ", s, ", patch_size ", p, ")"));
    }
  };
  SlicePlan plan;
  if (!config.slice_mode) {
    plan.source = {width / p * p, height / p * p};
    if (plan.source.width == 0 || plan.source.height == 0) {
      throw ValueError(tessera::detail::concat("minicpm_v: ", source, " is ", width, "x", height,
                                               " (width x height), smaller than one ", p, "x", p,
                                               " patch; with slice_mode false images are not resized"));
    }
    return plan;
  }
  plan.grid = get_sliced_grid(width, height, config.max_slice_nums, s);
  const auto w = static_cast<double>(width), h = static_cast<double>(height);
  plan.source = find_best_resize(w, h, s, p, /*allow_upscale=*/!plan.grid.has_value());
  check_size(plan.source, "source slice");
  if (plan.grid) {
    plan.refine = get_refine_size(width, height, *plan.grid, s, p);
    check_size(plan.refine, "sliced image");
    plan.cell = {plan.refine.width / (*plan.grid)[0], plan.refine.height / (*plan.grid)[1]};
  }
  return plan;
}

// The slices as 8-bit images (what the reference holds before normalizing).
struct SlicedImage {
  std::vector<RgbImage> slices;  // the source image first, then the grid's cells row-major
  std::optional<Grid> grid;      // [cols, rows] when sliced
};

// The reference's get_sliced_images: PIL bicubic resizes and crops.
inline SlicedImage slice_image(const RgbImage& image, const ProcessorConfig& config,
                               std::string_view source = "image") {
  io::detail::check_rgb_image(image, tessera::detail::concat("minicpm_v: ", source));
  const SlicePlan plan = plan_slices(image.width, image.height, config, source);
  SlicedImage out;
  out.grid = plan.grid;
  if (!config.slice_mode) {
    out.slices.push_back(plan.source.width == image.width && plan.source.height == image.height
                             ? image
                             : io::crop(image, 0, 0, plan.source.width, plan.source.height));
    return out;
  }
  out.slices.push_back(io::resize_bicubic(image, plan.source.width, plan.source.height));
  if (!plan.grid) return out;
  const RgbImage refine = io::resize_bicubic(image, plan.refine.width, plan.refine.height);
  for (std::int64_t r = 0; r < (*plan.grid)[1]; ++r) {
    for (std::int64_t c = 0; c < (*plan.grid)[0]; ++c) {
      out.slices.push_back(
          io::crop(refine, c * plan.cell.width, r * plan.cell.height, plan.cell.width, plan.cell.height));
    }
  }
  return out;
}

// ---- pixel values ----------------------------------------------------------------

// The processor's output for one image.
struct ProcessedImage {
  std::vector<Tensor<Host, float>> slices;  // each [3, H, W] normalized; the source image first, then cells row-major
  std::vector<TgtSize> tgt_sizes;           // (H/patch, W/patch) per slice
  std::optional<Grid> grid;                 // [cols, rows] when sliced
  ImageSize original;                       // the image's own size
};

// MiniCPMVImageProcessor.preprocess on one RGB image: slice_image, then
// (float32(u8)/255 - mean)/std per channel, channel-first. The reference
// then lays each slice out as patch strips (reshape_by_patch); that layout
// patchifies to the same patches as the [3, H, W] slice, which is kept here.
inline ProcessedImage process_image(const RgbImage& image, const ProcessorConfig& config,
                                    std::string_view source = "image") {
  SlicedImage sliced = slice_image(image, config, source);
  ProcessedImage out;
  out.grid = sliced.grid;
  out.original = {image.width, image.height};
  for (const RgbImage& s : sliced.slices) {
    out.slices.push_back(io::to_chw_normalized(s, config.mean, config.std));
    out.tgt_sizes.push_back({s.height / config.patch_size, s.width / config.patch_size});
  }
  return out;
}

// ---- video ---------------------------------------------------------------------

// The model card's encode_video frame choice for a video of `frame_count`
// frames at `avg_fps`: every round(avg_fps)-th frame from 0 (1 frame a
// second), and when that is more than `max_frames` (the card's
// MAX_NUM_FRAMES = 64), `max_frames` of them picked uniformly
// (l[int(i * gap + gap / 2)], gap = len / max_frames). The frames go into
// the prompt as images before the question, processed with for_video(config).
inline std::vector<std::int64_t> video_frame_indices(std::int64_t frame_count, double avg_fps,
                                                     std::int64_t max_frames = 64) {
  if (frame_count < 1 || max_frames < 1 || !std::isfinite(avg_fps)) {
    throw ValueError(tessera::detail::concat("video_frame_indices: need at least one frame and max_frames >= 1, got ",
                                             frame_count, " frames, max_frames ", max_frames, ", fps ", avg_fps));
  }
  const std::int64_t step = detail::py_round(avg_fps, "the video's frame rate");
  if (step < 1) {
    throw ValueError(tessera::detail::concat("video_frame_indices: the video's frame rate ", avg_fps, " rounds to ",
                                             step, " frames a second; the 1-fps sampling needs >= 0.5"));
  }
  std::vector<std::int64_t> all;
  for (std::int64_t i = 0; i < frame_count; i += step) all.push_back(i);
  if (static_cast<std::int64_t>(all.size()) <= max_frames) return all;
  const double gap = static_cast<double>(all.size()) / static_cast<double>(max_frames);
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < max_frames; ++i) {
    out.push_back(all[static_cast<std::size_t>(static_cast<double>(i) * gap + gap / 2.0)]);
  }
  return out;
}

// ---- prompts --------------------------------------------------------------------

// The content chat() builds for one user message holding `images` images
// followed by `text`: the markers and the text joined by "\n" (the model
// card's video message is its frames then the question, the same shape).
inline std::string chat_content(std::int64_t images, std::string_view text) {
  if (images < 0) throw ValueError(tessera::detail::concat("chat_content: image count must be >= 0, got ", images));
  std::string out;
  for (std::int64_t i = 0; i < images; ++i) {
    out.append(kImageMarker);
    out.push_back('\n');
  }
  out.append(text);
  return out;
}

// The text that replaces the `index`-th image marker of a prompt
// (get_slice_image_placeholder): [<image_id>index</image_id>] when
// use_image_id, <image> + <unk>*image_feature_size + </image>, then, when
// slice_mode and the image has a grid, its rows of (<slice> + <unk>*n +
// </slice>) * cols joined by "\n" (no newline before the first row).
// ValueError when the image's slices do not match its grid.
inline std::string image_placeholder(const ProcessedImage& image, std::int64_t index, const ProcessorConfig& config) {
  detail::check_config(config, "minicpm_v::image_placeholder");
  const std::int64_t cells = image.grid ? (*image.grid)[0] * (*image.grid)[1] : 0;
  if (index < 0 || (image.grid && ((*image.grid)[0] < 1 || (*image.grid)[1] < 1)) ||
      static_cast<std::int64_t>(image.tgt_sizes.size()) != 1 + cells) {
    throw ValueError(tessera::detail::concat(
        "minicpm_v::image_placeholder: image ", index, " has ", image.tgt_sizes.size(), " slices but its grid ",
        image.grid ? tessera::detail::concat("[", (*image.grid)[0], ",", (*image.grid)[1], "]") : std::string("(none)"),
        " needs ", 1 + cells, " (and the index must be >= 0)"));
  }
  std::string unks;
  for (std::int64_t i = 0; i < config.image_feature_size; ++i) unks.append(config.unk);
  std::string out;
  if (config.use_image_id) out.append(tessera::detail::concat(config.im_id_start, index, config.im_id_end));
  out.append(config.im_start).append(unks).append(config.im_end);
  if (config.slice_mode && image.grid) {
    const std::string cell = config.slice_start + unks + config.slice_end;
    for (std::int64_t r = 0; r < (*image.grid)[1]; ++r) {
      if (r > 0) out.push_back('\n');
      for (std::int64_t c = 0; c < (*image.grid)[0]; ++c) out.append(cell);
    }
  }
  return out;
}

// `text` with its k-th kImageMarker replaced by image_placeholder(images[k],
// k, config). ValueError naming both counts when the markers and the
// images differ in number.
inline std::string expand_image_markers(std::string_view text, std::span<const ProcessedImage> images,
                                        const ProcessorConfig& config) {
  std::vector<std::size_t> at;
  for (std::size_t pos = text.find(kImageMarker); pos != std::string_view::npos;
       pos = text.find(kImageMarker, pos + kImageMarker.size())) {
    at.push_back(pos);
  }
  if (at.size() != images.size()) {
    throw ValueError(tessera::detail::concat("minicpm_v::expand_image_markers: the prompt has ", at.size(), " ",
                                             kImageMarker, at.size() == 1 ? " marker" : " markers", " but ",
                                             images.size(), images.size() == 1 ? " image was" : " images were",
                                             " given"));
  }
  std::string out;
  std::size_t from = 0;
  for (std::size_t k = 0; k < at.size(); ++k) {
    out.append(text.substr(from, at[k] - from));
    out.append(image_placeholder(images[k], static_cast<std::int64_t>(k), config));
    from = at[k] + kImageMarker.size();
  }
  out.append(text.substr(from));
  return out;
}

// The ids of the placeholder tokens in a tokenizer (MiniCPMVTokenizerFast's
// convert_tokens_to_ids of the strings the config names).
struct SpecialTokens {
  std::int64_t image_start = 0, image_end = 0, slice_start = 0, slice_end = 0, id_start = 0, id_end = 0, unk = 0;

  // FormatError naming the tokenizer file and the first missing token;
  // ValueError when two of <image>, </image>, <slice>, </slice> share an id.
  // Any tokenizer with token_to_id and source (tokenizer::Tokenizer,
  // tokenizer::AnyTokenizer).
  template <class Tok>
  static SpecialTokens from(const Tok& tok, const ProcessorConfig& config = {}) {
    auto id = [&](const std::string& token) -> std::int64_t {
      const auto found = tok.token_to_id(token);
      if (!found) {
        throw FormatError(tessera::detail::concat("tokenizer '", tok.source(), "' has no token \"", token,
                                                  "\", which MiniCPM-V's image placeholders need"));
      }
      return *found;
    };
    SpecialTokens t;
    t.image_start = id(config.im_start);
    t.image_end = id(config.im_end);
    t.slice_start = id(config.slice_start);
    t.slice_end = id(config.slice_end);
    t.id_start = id(config.im_id_start);
    t.id_end = id(config.im_id_end);
    t.unk = id(config.unk);
    const std::array<std::int64_t, 4> marks{t.image_start, t.image_end, t.slice_start, t.slice_end};
    for (std::size_t i = 0; i < marks.size(); ++i) {
      for (std::size_t j = i + 1; j < marks.size(); ++j) {
        if (marks[i] == marks[j]) {
          throw ValueError(tessera::detail::concat(
              "tokenizer '", tok.source(), "': two of the image/slice start and end tokens share id ", marks[i]));
        }
      }
    }
    return t;
  }
};

namespace detail {

template <class Id>
std::vector<std::array<std::int64_t, 2>> image_bounds(std::span<const Id> ids, const SpecialTokens& t) {
  std::vector<std::array<std::int64_t, 2>> bounds;
  // The index of the open <image>/<slice>, -1 when none (not an optional:
  // GCC 12 -O3 warns it may be read uninitialized).
  std::int64_t open = -1;
  auto name = [&](std::int64_t id) {
    return id == t.image_start   ? "<image>"
           : id == t.slice_start ? "<slice>"
           : id == t.image_end   ? "</image>"
                                 : "</slice>";
  };
  auto id_at = [&](std::int64_t pos) { return static_cast<std::int64_t>(ids[static_cast<std::size_t>(pos)]); };
  auto fail = [](const auto&... parts) {
    return ValueError(tessera::detail::concat("minicpm_v::image_bounds: ", parts...));
  };
  for (std::int64_t pos = 0; pos < static_cast<std::int64_t>(ids.size()); ++pos) {
    const std::int64_t id = id_at(pos);
    if (id == t.image_start || id == t.slice_start) {
      if (open >= 0) {
        throw fail(name(id), " at token ", pos, " opens a span inside the ", name(id_at(open)),
                   " span opened at token ", open);
      }
      open = pos;
    } else if (id == t.image_end || id == t.slice_end) {
      if (open < 0) throw fail(name(id), " at token ", pos, " closes no open <image> or <slice>");
      if ((id_at(open) == t.image_start) != (id == t.image_end)) {
        throw fail(name(id), " at token ", pos, " closes the ", name(id_at(open)), " opened at token ", open);
      }
      bounds.push_back({open + 1, pos});
      open = -1;
    }
  }
  if (open >= 0) {
    throw fail("the ", name(id_at(open)), " at token ", open, " is never closed (", ids.size(), " tokens)");
  }
  return bounds;
}

}  // namespace detail

// [start, end) of every feature span, in order (the reference's
// image_bound): start = index of <image> or <slice> + 1, end = index of the
// matching </image> or </slice>. ValueError naming the token index for a
// closing token with no opener, an opener inside an open span, a span
// closed by the other kind, or a span never closed (the reference pairs the
// k-th opener with the k-th closer and fails or misaligns there).
inline std::vector<std::array<std::int64_t, 2>> image_bounds(std::span<const std::int64_t> ids,
                                                             const SpecialTokens& tokens) {
  return detail::image_bounds(ids, tokens);
}
inline std::vector<std::array<std::int64_t, 2>> image_bounds(std::span<const tokenizer::TokenId> ids,
                                                             const SpecialTokens& tokens) {
  return detail::image_bounds(ids, tokens);
}

}  // namespace tessera::models::minicpm_v
