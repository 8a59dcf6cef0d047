// tessera/models/qwen2_5_vl.hpp — Qwen2.5-VL (3B / 7B / 72B) as transformers'
// Qwen2_5_VLForConditionalGeneration computes it, placed by a policy:
//
//   ids      = the chat prompt, each <|image_pad|> / <|video_pad|> expanded
//              to one id per merged patch (qwen2_5_vl_processor.hpp)
//   x        = embed_tokens[ids]
//   x[ids == image_token_id] = VisionTower(pixel_values, image_grid_thw)  (in order)
//   x[ids == video_token_id] = VisionTower(pixel_values_videos, video_grid_thw)
//   pos      = get_rope_index(ids, grids, second_per_grid_ts)  [3, S]: t, h, w
//   logits   = Qwen2 decoder(x) with M-RoPE tables built from pos
//
// Decoding continues on one axis: a new token at cache position p gets
// position p + rope_delta on all three axes (rope_delta = max(pos) + 1 - S,
// negative when images compress many tokens into a small grid), which makes
// M-RoPE plain RoPE again. The cache carries rope_delta with the keys, so a
// continuation can never be run against another prompt's offsets.
//
// Every host-made value (ids, positions, pixel values, grids) is a typed
// tensor on Host that reaches the model's device only through to<D>():
// position ids and rope deltas left on the wrong GPU, the classic
// device_map="auto" failure, cannot be written here.
//
// Checkpoints in both published layouts load: the original one
// (visual.*, model.*, lm_head.weight) and the one transformers >= 4.52 saves
// (model.visual.*, model.language_model.*, lm_head.weight), with or without
// lm_head.weight when the embeddings are tied (the 3B model), and config.json
// with the text fields at the top (4.x) or under "text_config" (5.x).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/transfer.hpp"
#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/rope.hpp"
#include "../ops/shape.hpp"
#include "../placement/single.hpp"
#include "qwen2.hpp"
#include "qwen2_5_vl_processor.hpp"
#include "qwen2_5_vl_vision.hpp"

namespace tessera::models {

namespace qwen2_5_vl {

// config.json of a Qwen2.5-VL checkpoint: the language model (a Qwen2 with
// M-RoPE), the vision tower and the ids of the vision placeholders.
struct Config {
  io::Qwen2Config text;
  VisionConfig vision;
  VisionTokens tokens;

  // `file` names the file in messages.
  static Config from_json(const nlohmann::json& root, const std::string& file) {
    const io::detail::JsonFields f(root, file);
    Config c;
    // transformers 5 nests the text fields under "text_config"; 4.x and the
    // published checkpoints keep them at the top level.
    if (f.has_value("text_config")) {
      c.text = io::Qwen2Config::from_json(f.raw("text_config"), file, "text_config.");
    } else {
      c.text = io::Qwen2Config::from_json(root, file);
    }
    // v5 reads tie_word_embeddings at the top and also honours a true one
    // left inside text_config by older saves.
    c.text.tie_word_embeddings = f.boolean("tie_word_embeddings", false) || c.text.tie_word_embeddings;
    if (c.text.rope.type != "mrope") {
      throw f.error(f.has_value("text_config") ? "text_config" : "rope_scaling",
                    "does not describe M-RoPE (rope type \"mrope\" with an \"mrope_section\"), which Qwen2.5-VL's "
                    "language model needs");
    }
    if (!f.has_value("vision_config")) throw f.error("vision_config", "is missing (Qwen2.5-VL needs its vision tower)");
    c.vision = VisionConfig::from_json(f.raw("vision_config"), file);
    c.tokens.image = token(f, "image_token_id", c.tokens.image);
    c.tokens.video = token(f, "video_token_id", c.tokens.video);
    c.tokens.vision_start = token(f, "vision_start_token_id", c.tokens.vision_start);
    c.tokens.vision_end = token(f, "vision_end_token_id", c.tokens.vision_end);
    if (c.vision.out_hidden_size != c.text.hidden_size) {
      throw f.error("vision_config", tessera::detail::concat("has out_hidden_size ", c.vision.out_hidden_size,
                                                             " but the language model's hidden_size is ",
                                                             c.text.hidden_size, "; they must be equal"));
    }
    return c;
  }

  // Reads `path`: a config.json file or a checkpoint directory holding one.
  static Config load(const std::filesystem::path& path) {
    const auto file = io::detail::json_file_in(path, "config.json");
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(file, "config file"), file.string()),
                     file.string());
  }

 private:
  static std::int64_t token(const io::detail::JsonFields& f, std::string_view key, std::int64_t fallback) {
    const std::int64_t id = f.integer(key, fallback);
    if (id < 0) throw f.error(key, tessera::detail::concat("must be a token id (>= 0), but it is ", id));
    return id;
  }
};

// A prompt ready for the model: token ids with every placeholder already
// expanded (expand_vision_placeholders), and the processed images and videos
// in the order their placeholders appear.
struct Prompt {
  std::vector<std::int64_t> ids;
  std::vector<ProcessedImage> images;
  std::vector<ProcessedVideo> videos;
};

// What generate::generate() feeds the repetition penalty with.
inline std::span<const std::int64_t> prompt_ids(const Prompt& prompt) { return prompt.ids; }

// The 3-D M-RoPE positions of a prompt and the offset that continues them.
struct RopeIndex {
  Tensor<Host, std::int64_t> positions;  // [3, S]: temporal, height, width
  std::int64_t rope_delta = 0;           // max(positions) + 1 - S
};

// transformers' get_rope_index for one unpadded sequence. Text tokens get
// the next position on all three axes. Each image or video contributes
// t*h*w/merge^2 placeholder tokens, consumed from `image_grids` /
// `video_grids` in order of appearance; its merged token (k, r, c) gets
// (start + t_k, start + r, start + c) where start is the next position,
// t_k = 0 for images and, for a video, t_k = long(k * tokens_per_second *
// second_per_grid_t) in float32 as torch computes it (the floating-point
// step of transformers PR #48669: no truncation of second_per_grid_t first).
// The next position after a vision item is its largest position + 1 over
// all three axes, as in the original Qwen code, vLLM and transformers 4.5x.
// (transformers 5.x advances by max(h, w) / merge instead, ignoring the
// temporal extent; the two agree for images and for videos whose temporal
// positions stay below max(h, w) / merge.)
inline RopeIndex get_rope_index(std::span<const std::int64_t> ids, std::span<const GridTHW> image_grids,
                                std::span<const GridTHW> video_grids, std::span<const double> second_per_grid_ts,
                                const VisionTokens& tokens, std::int64_t merge_size, double tokens_per_second) {
  using tessera::detail::concat;
  if (second_per_grid_ts.size() != video_grids.size()) {
    throw ValueError(concat("get_rope_index: ", video_grids.size(), " video grids but ", second_per_grid_ts.size(),
                            " second_per_grid_ts values; give one per video"));
  }
  const auto seq = static_cast<std::int64_t>(ids.size());
  RopeIndex out{Tensor<Host, std::int64_t>(Shape{3, seq}), 0};
  std::int64_t* const pt = out.positions.raw();
  std::int64_t* const ph = pt + seq;
  std::int64_t* const pw = ph + seq;
  std::size_t next_image = 0, next_video = 0;
  std::int64_t next = 0;  // the next free position
  std::int64_t i = 0;
  while (i < seq) {
    const std::int64_t id = ids[static_cast<std::size_t>(i)];
    const bool image = id == tokens.image, video = id == tokens.video;
    if (!image && !video) {
      pt[i] = ph[i] = pw[i] = next++;
      ++i;
      continue;
    }
    const char* const kind = image ? "image" : "video";
    std::span<const GridTHW> grids = image ? image_grids : video_grids;
    std::size_t& item = image ? next_image : next_video;
    if (item == grids.size()) {
      throw ValueError(concat("get_rope_index: the prompt has more ", kind, " placeholder tokens than the ",
                              grids.size(), " ", kind, "(s) given cover (extra ones start at token ", i, ")"));
    }
    const GridTHW& grid = grids[item];
    if (grid[0] <= 0 || grid[1] % merge_size != 0 || grid[2] % merge_size != 0 || grid[1] <= 0 || grid[2] <= 0) {
      throw ValueError(concat("get_rope_index: ", kind, " ", item, " has grid (", grid[0], ", ", grid[1], ", ",
                              grid[2], "); t must be positive and h, w positive multiples of ", merge_size));
    }
    const std::int64_t gh = grid[1] / merge_size, gw = grid[2] / merge_size;
    const std::int64_t count = grid[0] * gh * gw;
    std::int64_t run = 0;
    while (i + run < seq && run < count && ids[static_cast<std::size_t>(i + run)] == id) ++run;
    if (run != count) {
      throw ValueError(concat("get_rope_index: ", kind, " ", item, " (grid ", grid[0], "x", grid[1], "x", grid[2],
                              ") needs ", count, " placeholder tokens in a row, but token ", i, " starts a run of ",
                              run, "; expand the placeholders with the grids the features come from"));
    }
    // float32 like torch: arange(t) (int64) * tensor(float32) -> float32.
    const float step = image ? 0.0f
                             : static_cast<float>(tokens_per_second) *
                                   static_cast<float>(second_per_grid_ts[next_video]);
    std::int64_t largest = next;
    for (std::int64_t k = 0; k < grid[0]; ++k) {
      const auto t = next + static_cast<std::int64_t>(static_cast<float>(k) * step);
      for (std::int64_t r = 0; r < gh; ++r) {
        for (std::int64_t c = 0; c < gw; ++c, ++i) {
          pt[i] = t;
          ph[i] = next + r;
          pw[i] = next + c;
          largest = std::max({largest, pt[i], ph[i], pw[i]});
        }
      }
    }
    ++item;
    next = largest + 1;
  }
  if (next_image != image_grids.size() || next_video != video_grids.size()) {
    throw ValueError(concat("get_rope_index: ", image_grids.size(), " image(s) and ", video_grids.size(),
                            " video(s) given but the prompt's placeholders cover only ", next_image, " and ",
                            next_video));
  }
  out.rope_delta = next - seq;
  return out;
}

// M-RoPE tables [S, head_dim] from positions [3, S] on D: column j < head_dim/2
// (and j + head_dim/2) takes the rotation of the axis whose mrope_section
// holds frequency j (sections cycle t, h, w), as transformers'
// recomposition_frequencies does with freq.split(mrope_section).
template <Device D>
ops::RopeTables<D> mrope_tables(const Tensor<D, std::int64_t>& positions, std::int64_t head_dim, double theta,
                                std::span<const std::int64_t> mrope_section) {
  if (positions.rank() != 2 || positions.dim(0) != 3) {
    throw ShapeError(tessera::detail::concat("mrope_tables: positions ", positions.shape().to_string(),
                                             " must be [3, tokens]"));
  }
  const std::int64_t seq = positions.dim(1), half = head_dim / 2;
  std::array<ops::RopeTables<D>, 3> axis;
  for (std::int64_t a = 0; a < 3; ++a) {
    axis[static_cast<std::size_t>(a)] =
        ops::rope_tables(positions.view().slice(0, a, a + 1).reshape({seq}), head_dim, theta);
  }
  // Frequency j takes the axis whose section holds it; sections cycle t, h, w.
  std::vector<ops::RopeSection> sections;
  std::int64_t begin = 0;
  for (std::size_t s = 0; s < mrope_section.size(); ++s) {
    sections.push_back({s % 3, begin, mrope_section[s]});
    begin += mrope_section[s];
  }
  if (begin != half) {
    throw ValueError(tessera::detail::concat("mrope_tables: mrope_section sums to ", begin, " but head_dim / 2 is ",
                                             half));
  }
  return ops::compose_rope_tables<D>(axis, sections);
}

// Where the weights of each part live in a checkpoint.
struct CheckpointLayout {
  std::string vision;   // "visual." or "model.visual."
  std::string text;     // "model." or "model.language_model."
  std::string lm_head;  // "lm_head.weight"
};

// Tells the published layout from the transformers >= 4.52 one by the name
// of the first vision weight.
inline CheckpointLayout detect_layout(const io::Checkpoint& checkpoint) {
  if (checkpoint.contains("visual.patch_embed.proj.weight")) return {"visual.", "model.", "lm_head.weight"};
  if (checkpoint.contains("model.visual.patch_embed.proj.weight")) {
    return {"model.visual.", "model.language_model.", "lm_head.weight"};
  }
  throw FormatError(tessera::detail::concat(
      "Qwen2.5-VL: checkpoint ", checkpoint.directory().string(), " has neither 'visual.patch_embed.proj.weight' "
      "(the published layout) nor 'model.visual.patch_embed.proj.weight' (the transformers >= 4.52 layout); "
      "is this a Qwen2.5-VL checkpoint?"));
}

}  // namespace qwen2_5_vl

template <DevicePlacement Placement, FloatType T = bf16>
class Qwen2_5_VL;

// Qwen2.5-VL with the vision tower, the language model, its caches and
// every activation on one device D.
template <Device D, FloatType T>
class Qwen2_5_VL<Single<D>, T> {
 public:
  using device_type = D;
  using Config = qwen2_5_vl::Config;
  using Prompt = qwen2_5_vl::Prompt;

  // One sequence's keys and values plus the M-RoPE offset its decode steps
  // continue from (set by the prefill).
  struct Cache {
    KVCache<D, T> kv;
    std::int64_t rope_delta = 0;

    std::int64_t length() const noexcept { return kv.length(); }
    std::int64_t capacity() const noexcept { return kv.capacity(); }
  };

  // Loads a Hugging Face checkpoint directory in either published layout.
  static Qwen2_5_VL load(const std::filesystem::path& dir) {
    Config config = Config::load(dir);
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return Qwen2_5_VL(std::move(config), checkpoint);
  }

  Qwen2_5_VL(Config config, const io::Checkpoint& checkpoint)
      : config_(std::move(config)),
        layout_(qwen2_5_vl::detect_layout(checkpoint)),
        vision_(qwen2_5_vl::VisionTower<D, T>::load(checkpoint, layout_.vision, config_.vision)),
        text_(config_.text, checkpoint, layout_.text, layout_.lm_head) {}

  const Config& config() const noexcept { return config_; }
  const qwen2_5_vl::CheckpointLayout& layout() const noexcept { return layout_; }
  const qwen2_5_vl::VisionTower<D, T>& vision() const noexcept { return vision_; }
  const Qwen2<Single<D>, T>& language_model() const noexcept { return text_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const { return Cache{text_.new_cache(capacity), 0}; }

  // The vision tower's output for these images, concatenated in order:
  // [sum of t*h*w / merge^2, hidden_size], the rows that replace the image
  // placeholders.
  Tensor<D, T> image_features(std::span<const qwen2_5_vl::ProcessedImage> images) const {
    return features(images, "image");
  }
  Tensor<D, T> video_features(std::span<const qwen2_5_vl::ProcessedVideo> videos) const {
    return features(videos, "video");
  }

  // Prefill: the prompt's ids with its images and videos, into an empty
  // cache. Returns the logits of every position, [ids.size(), vocab_size],
  // and leaves the rope offset for decoding in the cache.
  Tensor<D, T> forward(const Prompt& prompt, Cache& cache) const {
    if (cache.length() != 0) {
      throw ValueError(tessera::detail::concat("Qwen2_5_VL::forward: a prompt with images must start a sequence, "
                                               "but the cache already holds ", cache.length(), " tokens"));
    }
    if (prompt.ids.empty()) throw ValueError("Qwen2_5_VL::forward: the prompt has no tokens");
    const std::vector<qwen2_5_vl::GridTHW> image_grids = grids_of(prompt.images);
    const std::vector<qwen2_5_vl::GridTHW> video_grids = grids_of(prompt.videos);
    std::vector<double> seconds;
    for (const auto& v : prompt.videos) seconds.push_back(v.second_per_grid_t);
    const std::int64_t merge = config_.vision.spatial_merge_size;
    qwen2_5_vl::check_placeholder_counts(prompt.ids, image_grids, video_grids, config_.tokens, merge);
    qwen2_5_vl::RopeIndex index = qwen2_5_vl::get_rope_index(prompt.ids, image_grids, video_grids, seconds,
                                                             config_.tokens, merge, config_.vision.tokens_per_second);

    const Tensor<Host, std::int64_t> ids = host_ids(prompt.ids);
    Tensor<D, T> embeddings = text_.embed(to<D>(ids));
    if (!prompt.images.empty()) scatter(embeddings, prompt.ids, config_.tokens.image, image_features(prompt.images));
    if (!prompt.videos.empty()) scatter(embeddings, prompt.ids, config_.tokens.video, video_features(prompt.videos));

    const ops::RopeTables<D> tables = qwen2_5_vl::mrope_tables(
        to<D>(index.positions), config_.text.head_dim(), config_.text.rope.theta, config_.text.rope.mrope_section);
    Tensor<D, T> logits = text_.forward_embeddings(std::move(embeddings), tables, cache.kv);
    cache.rope_delta = index.rope_delta;
    return logits;
  }

  // Text tokens after those in the cache (decoding): positions continue at
  // cache length + rope_delta on all three axes.
  Tensor<D, T> forward(std::span<const std::int64_t> ids, Cache& cache) const {
    if (ids.empty()) throw ValueError("Qwen2_5_VL::forward: no token ids");
    Tensor<Host, std::int64_t> positions(Shape{static_cast<std::int64_t>(ids.size())});
    for (std::size_t i = 0; i < ids.size(); ++i) {
      positions.span()[i] = cache.length() + static_cast<std::int64_t>(i) + cache.rope_delta;
    }
    const ops::RopeTables<D> tables =
        ops::rope_tables(to<D>(positions), config_.text.head_dim(), config_.text.rope.theta);
    return text_.forward_embeddings(text_.embed(to<D>(host_ids(ids))), tables, cache.kv);
  }

 private:
  static Tensor<Host, std::int64_t> host_ids(std::span<const std::int64_t> ids) {
    Tensor<Host, std::int64_t> t(Shape{static_cast<std::int64_t>(ids.size())});
    std::copy(ids.begin(), ids.end(), t.span().begin());
    return t;
  }

  template <class Items>
  static std::vector<qwen2_5_vl::GridTHW> grids_of(const Items& items) {
    std::vector<qwen2_5_vl::GridTHW> grids;
    for (const auto& item : items) grids.push_back(item.grid_thw);
    return grids;
  }

  // Runs the vision tower once over all items of one kind (their patch rows
  // concatenated, as transformers does), in the model's element type.
  template <class Items>
  Tensor<D, T> features(const Items& items, const char* kind) const {
    if (items.empty()) {
      throw ValueError(tessera::detail::concat("Qwen2_5_VL: no ", kind, "s to run the vision tower on"));
    }
    std::vector<TensorView<Host, const float>> rows;
    for (const auto& item : items) rows.push_back(item.pixel_values.view());
    const Tensor<Host, float> pixels = ops::concat(std::span<const TensorView<Host, const float>>(rows), 0);
    Tensor<D, float> on_device = to<D>(pixels);
    Tensor<D, T> input = [&] {
      if constexpr (std::same_as<T, float>) {
        return std::move(on_device);
      } else {
        return ops::cast<T>(on_device);
      }
    }();
    const std::vector<qwen2_5_vl::GridTHW> grids = grids_of(items);
    return vision_.forward(input, grids);
  }

  // Writes the rows of `features` over the rows of `embeddings` whose id is
  // `placeholder`, in order (transformers' masked_scatter). Placeholders sit
  // in runs, one per item, so this is one copy per run. forward() has
  // checked that the placeholder count equals features.dim(0).
  static void scatter(Tensor<D, T>& embeddings, std::span<const std::int64_t> ids, std::int64_t placeholder,
                      const Tensor<D, T>& features) {
    std::int64_t used = 0;
    const auto n = static_cast<std::int64_t>(ids.size());
    for (std::int64_t i = 0; i < n;) {
      if (ids[static_cast<std::size_t>(i)] != placeholder) {
        ++i;
        continue;
      }
      std::int64_t end = i;
      while (end < n && ids[static_cast<std::size_t>(end)] == placeholder) ++end;
      ops::copy_into(embeddings.view().slice(0, i, end), features.view().slice(0, used, used + (end - i)));
      used += end - i;
      i = end;
    }
  }

  Config config_;
  qwen2_5_vl::CheckpointLayout layout_;
  qwen2_5_vl::VisionTower<D, T> vision_;
  Qwen2<Single<D>, T> text_;
};

}  // namespace tessera::models
