// InternVL2 image processor: dynamic tiling, the thumbnail, ImageNet
// normalization, several images' num_patches_list, and the frames of a video.
//
// What the reference computes (the InternVL2 model cards' load_image /
// dynamic_preprocess / build_transform, the same as OpenGVLab/InternVL
// internvl_chat/internvl/train/dataset.py l.813-866; shared/reference/
// model-specs.md §B.4, oracle-internvl2-minicpmv.md §1.4):
//
//   image  = Image.open(f).convert("RGB")                      alpha dropped, not composited
//   aspect = W / H                                              (double)
//   target_ratios = sorted(set((i, j) for n in min..max for i, j in 1..n
//                              if min <= i*j <= max), key = i*j)    (i columns, j rows)
//   find_closest_aspect_ratio: scan target_ratios, keep the first with the
//       smallest |aspect - i/j|; on an exact tie take the later (i, j) iff
//       W*H > 0.5 * S * S * i * j                               (S = image_size)
//   resized = image.resize((S*i, S*j))                          PIL BICUBIC
//   tiles   = the i*j crops S x S of resized, row-major (tile k: column k % i, row k / i)
//           + image.resize((S, S)) last, when use_thumbnail and i*j != 1
//   dynamic_image_size false: one tile, image.resize((S, S))
//   pixels  = per tile Resize((S, S)) (a copy: the tiles are S x S), then
//             (float32(u8) / 255 - mean[c]) / std[c] in float32, channel-first
//
// The order of target_ratios is CPython's: a set, then a stable sort on the
// area alone, so ratios of one area keep the set's iteration order. That
// order can decide the answer: at an exact tie between two ratios of the
// same area (the image's aspect exactly between them), the tie rule's area
// test is the same for both, so the first or the second wins by position.
// With min_num 1 that never happens (for i/j < k/l with i*j = k*l the ratio
// i/l, of smaller area, lies strictly between them, so they are never both
// nearest), and the result is order-free; with min_num > 1 it does (e.g.
// min = max = 2 and a 5x4 image: 1x2 and 2x1 are both 0.75 away). So
// target_ratios() reproduces the set order itself: it inserts the pairs in
// the generator's order into a model of CPython's set table (the 64-bit
// tuple hash of CPython >= 3.8; Objects/setobject.c's open addressing with 9
// linear probes, perturbation and growth to 4x the used count when 3/5
// full) and reads the table in slot order. The fixtures check the order
// against CPython 3.11 for every 1 <= min <= max <= 16 and more.
//
// Pixels: io::resize_bicubic is Pillow's BICUBIC bit for bit, io::crop is
// Image.crop, and the normalization uses io's table of the 256 values
// (ToTensor + Normalize's float32 steps), so the tiles equal the reference's.
//
// Video: the model card's load_video takes num_segments frames at
// video_frame_indices() (get_index with bound None) and runs each through
// dynamic_preprocess with max_num 1 (for_video: one tile a frame, no
// thumbnail); the prompt then names them "Frame1: <image>\n" ... .
//
// Where this differs from the reference on purpose:
// * min_num > max_num: the reference finds no ratio and silently uses 1x1;
//   here it is an error, as are non-positive sizes and counts.
// * Sizes a bad config could blow up (max_num above kMaxNum, a tiled image
//   above io::kMaxDecodedPixels pixels) are errors naming the sizes.
// * ProcessorConfig::from_json needs force_image_size or
//   vision_config.image_size (the reference would fall back to
//   InternVisionConfig's 224, which no InternVL2 checkpoint uses).
// * (Not on purpose: io::image's limit.) A GIF's transparent pixels become
//   black under .convert("RGB") here, the palette colour in Pillow.
//
// Checked by tests/unit/test_internvl2_processor.cpp (fixtures from
// tools/fixtures/make_internvl2_processor_fixtures.py).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../io/config.hpp"
#include "../io/image.hpp"

namespace tessera::models::internvl2 {

using io::RgbImage;

// The most tiles a config may allow: far above any published setting (12;
// some evaluations use 40), and it bounds the ratio search.
inline constexpr std::int64_t kMaxNum = 1024;

// The largest image_size whose one tile fits io::kMaxDecodedPixels pixels.
inline constexpr std::int64_t kMaxImageSize = 13377;
static_assert(kMaxImageSize * kMaxImageSize <= io::kMaxDecodedPixels &&
              (kMaxImageSize + 1) * (kMaxImageSize + 1) > io::kMaxDecodedPixels);

// The InternVL2 preprocessing settings. A default-constructed config is what
// the published InternVL2 checkpoints and model cards use.
struct ProcessorConfig {
  std::int64_t image_size = 448;   // config.json force_image_size (else vision_config.image_size)
  std::int64_t min_num = 1;        // min_dynamic_patch
  std::int64_t max_num = 12;       // max_dynamic_patch
  bool dynamic_image_size = true;  // false: one tile, the whole image resized
  bool use_thumbnail = true;
  // IMAGENET_MEAN / IMAGENET_STD (fixed in the reference's build_transform).
  std::array<double, 3> mean{0.485, 0.456, 0.406}, std{0.229, 0.224, 0.225};

  // From an InternVL2 config.json's top-level keys, as InternVLChatConfig
  // reads them: image_size = force_image_size, or vision_config.image_size
  // when that is absent or null (one of them is required); absent or null
  // min_dynamic_patch, max_dynamic_patch, dynamic_image_size and
  // use_thumbnail take InternVLChatConfig's defaults (1, 6, false, false;
  // the published configs set all four). FormatError naming `file` and the
  // key for a wrong type, a non-positive size, min above max, max above
  // kMaxNum or an image_size whose tile is above io::kMaxDecodedPixels.
  static ProcessorConfig from_json(const nlohmann::json& root, const std::string& file = "config.json") {
    const io::detail::JsonFields f(root, file);
    ProcessorConfig c;
    c.image_size = read_image_size(f);
    c.min_num = f.has_value("min_dynamic_patch") ? f.positive("min_dynamic_patch", 1) : 1;
    c.max_num = f.has_value("max_dynamic_patch") ? f.positive("max_dynamic_patch", 6) : 6;
    if (c.max_num > kMaxNum) {
      throw f.error("max_dynamic_patch",
                    tessera::detail::concat("must be at most ", kMaxNum, ", but it is ", c.max_num));
    }
    if (c.min_num > c.max_num) {
      throw f.error("min_dynamic_patch", tessera::detail::concat("is ", c.min_num, ", above \"max_dynamic_patch\" ",
                                                                 c.max_num, ": no tile count fits"));
    }
    c.dynamic_image_size = f.has_value("dynamic_image_size") && f.boolean("dynamic_image_size", false);
    c.use_thumbnail = f.has_value("use_thumbnail") && f.boolean("use_thumbnail", false);
    return c;
  }

  // config.json, or a checkpoint directory holding it. IoError when it
  // cannot be read, FormatError naming it otherwise.
  static ProcessorConfig load(const std::filesystem::path& file_or_dir) {
    const std::filesystem::path path = io::detail::json_file_in(file_or_dir, "config.json");
    const std::string file = path.string();
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(path, "InternVL2 config"), file), file);
  }

 private:
  // force_image_size, else vision_config.image_size (config.json's
  // `force_image_size or vision_config.image_size`).
  static std::int64_t read_image_size(const io::detail::JsonFields& f) {
    auto checked = [&](const io::detail::JsonFields& obj, std::string_view key) {
      const std::int64_t v = obj.positive(key, 0);
      if (v > kMaxImageSize) {
        throw obj.error(key, tessera::detail::concat("is ", v, ": one ", v, "x", v, " tile would be more than ",
                                                     io::kMaxDecodedPixels, " pixels"));
      }
      return v;
    };
    if (f.has_value("force_image_size")) return checked(f, "force_image_size");
    if (f.has_value("vision_config")) {
      const io::detail::JsonFields vision(f.raw("vision_config"), f.file(), "vision_config.");
      if (vision.has_value("image_size")) return checked(vision, "image_size");
    }
    throw FormatError(tessera::detail::concat("'", f.file(),
                                              "': needs \"force_image_size\" or \"vision_config.image_size\" (the "
                                              "InternVL2 tile size); neither is set"));
  }
};

// The model card's load_video: every frame is one tile (dynamic_preprocess
// with max_num 1, so no thumbnail); image_size and normalization are kept.
inline ProcessorConfig for_video(ProcessorConfig cfg) {
  cfg.dynamic_image_size = true;
  cfg.min_num = 1;
  cfg.max_num = 1;
  return cfg;
}

// A tile grid: `columns` tiles across (the reference's ratio[0]) and `rows`
// down (ratio[1]).
struct TileGrid {
  std::int64_t columns = 1, rows = 1;
  std::int64_t tiles() const { return columns * rows; }
  friend bool operator==(const TileGrid&, const TileGrid&) = default;
};

namespace detail {

// Throws unless the config's numbers are usable; `who` names the input.
inline void check_config(const ProcessorConfig& c, std::string_view who) {
  if (c.image_size < 1 || c.image_size > kMaxImageSize || c.min_num < 1 || c.max_num < 1 || c.max_num > kMaxNum ||
      c.min_num > c.max_num) {
    throw ValueError(tessera::detail::concat(who, ": bad InternVL2 processor config: image_size ", c.image_size,
                                             " (1 to ", kMaxImageSize, "), min_num ", c.min_num, ", max_num ",
                                             c.max_num, " (need 1 <= min_num <= max_num <= ", kMaxNum, ")"));
  }
}

// CPython's hash of the tuple (a, b) of small non-negative ints on a 64-bit
// build (tuplehash since 3.8, an xxHash variant; hash(n) is n itself).
inline std::uint64_t py_pair_hash(std::int64_t a, std::int64_t b) {
  constexpr std::uint64_t prime1 = 11400714785074694791ULL, prime2 = 14029467366897019727ULL,
                          prime5 = 2870177450012600261ULL;
  std::uint64_t acc = prime5;
  for (const std::int64_t lane : {a, b}) {
    acc += static_cast<std::uint64_t>(lane) * prime2;
    acc = std::rotl(acc, 31);
    acc *= prime1;
  }
  acc += 2ULL ^ (prime5 ^ 3527539ULL);  // the length, mangled as CPython does
  return acc == ~0ULL ? 1546275796ULL : acc;
}

// The slot order of a CPython set of (i, j) pairs built by adding them one
// at a time (Objects/setobject.c: a table of 2^k slots, probing 9 slots
// linearly from i, then i = 5i + 1 + (perturb >>= 5); resized to the
// smallest power of two above 4 * used once 5 * fill >= 3 * mask, the old
// entries re-inserted in slot order). No deletions, so fill == used.
class PySetOfPairs {
 public:
  void add(TileGrid key) {
    const std::uint64_t h = py_pair_hash(key.columns, key.rows);
    const std::size_t mask = table_.size() - 1;
    std::size_t i = h & mask;
    std::uint64_t perturb = h;
    for (;;) {
      const std::size_t probes = i + kLinearProbes <= mask ? kLinearProbes : 0;
      for (std::size_t k = 0; k <= probes; ++k) {
        Slot& s = table_[i + k];
        if (!s.used) {
          s = {true, key, h};
          ++used_;
          if (used_ * 5 >= mask * 3) resize(used_ * 4);
          return;
        }
        if (s.hash == h && s.key == key) return;  // already present
      }
      perturb >>= 5;
      i = (i * 5 + 1 + perturb) & mask;
    }
  }

  // The elements in iteration (slot) order.
  std::vector<TileGrid> items() const {
    std::vector<TileGrid> out;
    for (const Slot& s : table_) {
      if (s.used) out.push_back(s.key);
    }
    return out;
  }

 private:
  static constexpr std::size_t kLinearProbes = 9;
  struct Slot {
    bool used = false;
    TileGrid key;
    std::uint64_t hash = 0;
  };

  void resize(std::size_t min_used) {
    std::size_t size = 8;
    while (size <= min_used) size <<= 1;
    std::vector<Slot> old = std::exchange(table_, std::vector<Slot>(size));
    for (const Slot& s : old) {
      if (s.used) insert_clean(s);
    }
  }

  // set_insert_clean: the first free slot of the probe sequence (the key is
  // known to be absent).
  void insert_clean(const Slot& entry) {
    const std::size_t mask = table_.size() - 1;
    std::size_t i = entry.hash & mask;
    std::uint64_t perturb = entry.hash;
    for (;;) {
      const std::size_t probes = i + kLinearProbes <= mask ? kLinearProbes : 0;
      for (std::size_t k = 0; k <= probes; ++k) {
        if (!table_[i + k].used) {
          table_[i + k] = entry;
          return;
        }
      }
      perturb >>= 5;
      i = (i * 5 + 1 + perturb) & mask;
    }
  }

  std::vector<Slot> table_ = std::vector<Slot>(8);
  std::size_t used_ = 0;
};

}  // namespace detail

// The reference's target_ratios in its exact order: every grid with
// min_num <= columns * rows <= max_num, sorted by area, grids of one area
// in CPython's set order (see the header comment). ValueError unless
// 1 <= min_num <= max_num <= kMaxNum.
inline std::vector<TileGrid> target_ratios(std::int64_t min_num, std::int64_t max_num) {
  if (min_num < 1 || max_num < min_num || max_num > kMaxNum) {
    throw ValueError(tessera::detail::concat("internvl2::target_ratios: need 1 <= min_num <= max_num <= ", kMaxNum,
                                             ", got min_num ", min_num, ", max_num ", max_num));
  }
  // The generator yields (i, j) for n = min..max, i and j in 1..n; a pair
  // first appears at n = max(min_num, i, j), and later repeats leave the
  // set unchanged, so adding each pair at its first appearance builds the
  // same table.
  detail::PySetOfPairs set;
  auto add = [&](std::int64_t i, std::int64_t j) {
    if (i * j >= min_num && i * j <= max_num) set.add({i, j});
  };
  for (std::int64_t i = 1; i <= min_num; ++i) {
    for (std::int64_t j = 1; j <= min_num; ++j) add(i, j);
  }
  for (std::int64_t n = min_num + 1; n <= max_num; ++n) {
    for (std::int64_t i = 1; i <= n; ++i) {
      if (i < n) {
        add(i, n);  // row i of the n x n square: only j = n is new
      } else {
        for (std::int64_t j = 1; j <= n; ++j) add(n, j);
      }
    }
  }
  std::vector<TileGrid> ratios = set.items();
  std::stable_sort(ratios.begin(), ratios.end(),
                   [](const TileGrid& a, const TileGrid& b) { return a.tiles() < b.tiles(); });
  return ratios;
}

// The reference's find_closest_aspect_ratio: the first grid in `ratios`
// whose columns/rows is nearest `aspect`; on an exact tie a later grid
// replaces it when the image's own width*height is above half the grid's
// pixel count (0.5 * image_size² * columns * rows), i.e. large images
// prefer more tiles. 1x1 when `ratios` is empty. The arithmetic is the
// reference's double arithmetic in its order.
inline TileGrid find_closest_aspect_ratio(double aspect, std::span<const TileGrid> ratios, std::int64_t width,
                                          std::int64_t height, std::int64_t image_size) {
  double best_diff = std::numeric_limits<double>::infinity();
  TileGrid best{1, 1};
  const double area = static_cast<double>(width) * static_cast<double>(height);  // exact below 2^53
  const auto s = static_cast<double>(image_size);
  for (const TileGrid& r : ratios) {
    const double diff = std::fabs(aspect - static_cast<double>(r.columns) / static_cast<double>(r.rows));
    if (diff < best_diff) {
      best_diff = diff;
      best = r;
    } else if (diff == best_diff && area > 0.5 * s * s * static_cast<double>(r.columns) * static_cast<double>(r.rows)) {
      best = r;
    }
  }
  return best;
}

// How one image is cut: its grid and whether the thumbnail follows.
struct TilePlan {
  TileGrid grid;           // 1x1 when not dynamic
  bool thumbnail = false;  // the whole image resized, appended last
  std::int64_t tiles() const { return grid.tiles() + (thumbnail ? 1 : 0); }
};

// The grid dynamic_preprocess picks for a width x height image under `cfg`
// (1x1 when cfg.dynamic_image_size is false). ValueError naming `source`
// and the sizes for an empty image (or a side above 2^30), a bad config,
// or a tiled image above io::kMaxDecodedPixels pixels.
inline TilePlan plan_tiles(std::int64_t width, std::int64_t height, const ProcessorConfig& cfg,
                           std::string_view source = "image") {
  detail::check_config(cfg, tessera::detail::concat("internvl2: ", source));
  if (width < 1 || height < 1 || width > io::detail::kMaxImageSide || height > io::detail::kMaxImageSide) {
    throw ValueError(tessera::detail::concat("internvl2: ", source, " is ", width, "x", height,
                                             " (width x height); an image needs 1 to 2^30 pixels a side"));
  }
  if (!cfg.dynamic_image_size) return {};
  const std::vector<TileGrid> ratios = target_ratios(cfg.min_num, cfg.max_num);
  const double aspect = static_cast<double>(width) / static_cast<double>(height);
  TilePlan plan;
  plan.grid = find_closest_aspect_ratio(aspect, ratios, width, height, cfg.image_size);
  plan.thumbnail = cfg.use_thumbnail && plan.grid.tiles() != 1;
  const std::int64_t pixels = cfg.image_size * cfg.image_size * plan.grid.tiles();
  if (pixels > io::kMaxDecodedPixels) {
    throw ValueError(tessera::detail::concat(
        "internvl2: ", source, " (", width, "x", height, ") would be resized to ", cfg.image_size * plan.grid.columns,
        "x", cfg.image_size * plan.grid.rows, " for its ", plan.grid.columns, "x", plan.grid.rows, " tiles, more than ",
        io::kMaxDecodedPixels, " pixels (image_size ", cfg.image_size, ", max_num ", cfg.max_num, ")"));
  }
  return plan;
}

namespace detail {

// dynamic_preprocess's crops (and thumbnail) for a planned image.
inline std::vector<RgbImage> cut_tiles(const RgbImage& image, const TilePlan& plan, std::int64_t s) {
  std::vector<RgbImage> tiles;
  if (plan.grid.tiles() == 1) {
    tiles.push_back(io::resize_bicubic(image, s, s));  // the one crop covering the resize is the resize
  } else {
    const RgbImage resized = io::resize_bicubic(image, s * plan.grid.columns, s * plan.grid.rows);
    for (std::int64_t k = 0; k < plan.grid.tiles(); ++k) {
      tiles.push_back(io::crop(resized, (k % plan.grid.columns) * s, (k / plan.grid.columns) * s, s, s));
    }
  }
  if (plan.thumbnail) tiles.push_back(io::resize_bicubic(image, s, s));
  return tiles;
}

}  // namespace detail

// The reference's tiles as 8-bit images, each image_size x image_size: the
// grid's crops of the resized image row-major, then the thumbnail; or the
// whole image resized when cfg.dynamic_image_size is false. (The
// transform's Resize((S, S)) leaves them as they are.)
inline std::vector<RgbImage> tile_image(const RgbImage& image, const ProcessorConfig& cfg,
                                        std::string_view source = "image") {
  io::detail::check_rgb_image(image, tessera::detail::concat("internvl2: ", source));
  return detail::cut_tiles(image, plan_tiles(image.width, image.height, cfg, source), cfg.image_size);
}

// One image's pixel values.
struct ProcessedImage {
  Tensor<Host, float> pixels;  // [tiles, 3, image_size, image_size]: grid tiles row-major, then the thumbnail
  TileGrid grid;               // 1x1 when not dynamic
  bool thumbnail = false;
  std::string source;  // the file (or the name given), for messages
  std::int64_t tiles() const { return pixels.dim(0); }
};

// load_image's pixel values for a decoded RGB image: tile_image, then
// (float32(u8) / 255 - mean) / std per channel, channel-first.
inline ProcessedImage process_image(const RgbImage& image, const ProcessorConfig& cfg,
                                    std::string_view source = "image") {
  io::detail::check_rgb_image(image, tessera::detail::concat("internvl2: ", source));
  const TilePlan plan = plan_tiles(image.width, image.height, cfg, source);
  const std::int64_t s = cfg.image_size;
  const std::vector<RgbImage> tiles = detail::cut_tiles(image, plan, s);
  ProcessedImage out{Tensor<Host, float>(Shape{static_cast<std::int64_t>(tiles.size()), 3, s, s}), plan.grid,
                     plan.thumbnail, std::string(source)};
  const auto lut = io::detail::normalize_table(cfg.mean, cfg.std, 1.0 / 255.0);
  for (std::size_t k = 0; k < tiles.size(); ++k) {
    io::detail::normalize_frame(tiles[k], lut, out.pixels.data() + static_cast<std::int64_t>(k) * 3 * s * s);
  }
  return out;
}

// The model card's load_image: the file decoded as Image.open(f).convert("RGB")
// (transparency dropped, not composited), then process_image. IoError when
// the file cannot be read, FormatError naming it when it cannot be decoded,
// ValueError naming it and its size when it cannot be tiled.
inline ProcessedImage load_image(const std::filesystem::path& file, const ProcessorConfig& cfg = {}) {
  return process_image(io::load_rgb_image(file, io::AlphaMode::drop), cfg, file.string());
}

// Several images for one prompt, in order: their pixels concatenated along
// the tile axis and each one's tile count (chat()'s num_patches_list).
struct ImageBatch {
  Tensor<Host, float> pixels;  // [sum of tiles, 3, S, S]
  std::vector<std::int64_t> num_patches_list;
};

// ValueError when `images` is empty or their tile sizes differ (naming both
// sources).
inline ImageBatch batch_images(std::span<const ProcessedImage* const> images) {
  if (images.empty()) throw ValueError("internvl2::batch_images: no images");
  const Shape& first = images.front()->pixels.shape();
  std::int64_t total = 0;
  ImageBatch out;
  for (const ProcessedImage* im : images) {
    const Shape& sh = im->pixels.shape();
    if (sh.rank() != 4 || sh[1] != 3 || sh[2] != first[2] || sh[3] != first[3]) {
      throw ValueError(tessera::detail::concat("internvl2::batch_images: ", im->source, " has tiles of shape ", sh,
                                               " but ", images.front()->source, " has ", first,
                                               "; every image of a prompt needs the same image_size"));
    }
    total += sh[0];
    out.num_patches_list.push_back(sh[0]);
  }
  out.pixels = Tensor<Host, float>(Shape{total, 3, first[2], first[3]});
  float* dst = out.pixels.data();
  for (const ProcessedImage* im : images) dst = std::copy_n(im->pixels.data(), im->pixels.numel(), dst);
  return out;
}

// The same for images held in one span.
inline ImageBatch batch_images(std::span<const ProcessedImage> images) {
  std::vector<const ProcessedImage*> all;
  for (const ProcessedImage& im : images) all.push_back(&im);
  return batch_images(std::span<const ProcessedImage* const>(all));
}

// The model card's get_index(bound=None, fps, max_frame, first_idx=0,
// num_segments): num_segments frame indices spread evenly over frames
// 0..end, end = min(round(100000 * fps), max_frame) (so a clip longer than
// 100000 s is cut there), each int(seg / 2 + round(seg * k)) with
// seg = end / num_segments (round is half to even, as Python's and numpy's).
// max_frame is the video's frame count - 1. ValueError for max_frame < 0,
// num_segments < 1 (or above 2^20), or an fps that is not a positive number.
inline std::vector<std::int64_t> video_frame_indices(std::int64_t max_frame, double fps,
                                                     std::int64_t num_segments = 32) {
  constexpr std::int64_t kMaxFrame = std::int64_t{1} << 40, kMaxSegments = std::int64_t{1} << 20;
  if (max_frame < 0 || max_frame > kMaxFrame || num_segments < 1 || num_segments > kMaxSegments ||
      !std::isfinite(fps) || !(fps > 0.0)) {
    throw ValueError(
        tessera::detail::concat("internvl2::video_frame_indices: need 0 <= max_frame <= 2^40, 1 <= "
                                "num_segments <= 2^20 and fps > 0, got max_frame ",
                                max_frame, ", num_segments ", num_segments, ", fps ", fps));
  }
  // start_idx = max(0, round(-100000 * fps)) is 0 for every positive fps.
  const std::int64_t start = 0;
  const double end_bound = std::nearbyint(100000.0 * fps);
  const std::int64_t end =
      end_bound >= static_cast<double>(max_frame) ? max_frame : static_cast<std::int64_t>(end_bound);
  const double seg = static_cast<double>(end - start) / static_cast<double>(num_segments);
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(num_segments));
  for (std::int64_t k = 0; k < num_segments; ++k) {
    const double at = static_cast<double>(start) + seg / 2.0 + std::nearbyint(seg * static_cast<double>(k));
    out.push_back(static_cast<std::int64_t>(std::trunc(at)));
  }
  return out;
}

}  // namespace tessera::models::internvl2
