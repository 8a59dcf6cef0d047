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
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/transfer.hpp"
#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/rope.hpp"
#include "../ops/shape.hpp"
#include "../placement/pinned.hpp"
#include "../placement/single.hpp"
#include "qwen2.hpp"
#include "qwen2_5_vl_processor.hpp"
#include "qwen2_5_vl_vision.hpp"
#include "scatter.hpp"

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

// M-RoPE tables (ops/rope.hpp; the language model builds them per stage).
using ops::mrope_tables;

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

namespace qwen2_5_vl {

// The masked scatter of image/video features (models/scatter.hpp), by its
// Qwen2.5-VL name.
template <Device D, FloatType T, Device F>
void scatter_features(Tensor<D, T>& embeddings, std::span<const std::int64_t> ids, std::int64_t placeholder,
                      const Tensor<F, T>& features) {
  scatter_rows(embeddings, ids, placeholder, features);
}

}  // namespace qwen2_5_vl

// Qwen2.5-VL placed by a policy (placement/policy.hpp): the language model
// spread as Qwen2<Placement> spreads it, the vision tower and merger whole
// on the first held device of the stage the Layout pins them to (stage 0 by
// default; replicated per process under MPI, never split). Image and video
// features cross to the embedding stage with to<>; logits come back on
// device_type, where the ids enter.
template <DevicePlacement Placement, FloatType T = bf16>
class Qwen2_5_VL {
  template <class D>
  using Tower = qwen2_5_vl::VisionTower<D, T>;
  using Features = placement::AnyPolicyTensor<Placement, T>;

 public:
  using policy = Placement;
  using device_type = output_device<Placement>;
  using Config = qwen2_5_vl::Config;
  using Prompt = qwen2_5_vl::Prompt;
  using LanguageModel = Qwen2<Placement, T>;

  // One sequence's keys and values plus the M-RoPE offset its decode steps
  // continue from (set by the prefill).
  struct Cache {
    using model_cache_tag = void;
    typename LanguageModel::Cache kv;
    std::int64_t rope_delta = 0;

    std::int64_t length() const noexcept { return kv.length(); }
    std::int64_t capacity() const noexcept { return kv.capacity(); }
  };

  // Loads a Hugging Face checkpoint directory in either published layout.
  // `placement` and `comms` as for Qwen2::load.
  static Qwen2_5_VL load(const std::filesystem::path& dir, std::optional<placement::Layout> placement = std::nullopt,
                         placement::Comms<Placement> comms = {}) {
    Config config = Config::load(dir);
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return Qwen2_5_VL(std::move(config), checkpoint, std::move(placement), std::move(comms));
  }

  Qwen2_5_VL(Config config, const io::Checkpoint& checkpoint, std::optional<placement::Layout> placement = std::nullopt,
             placement::Comms<Placement> comms = {})
      : config_(std::move(config)),
        layout_(qwen2_5_vl::detect_layout(checkpoint)),
        text_(config_.text, qwen2_weights(), checkpoint, layout_.text, layout_.lm_head, std::move(placement),
              std::move(comms)),
        vision_(placement::Pinned<Placement, Tower>::load(text_.placement().vision_stage, text_.comms(),
                                                          [&]<Device D>() {
                                                            return Tower<D>::load(checkpoint, layout_.vision,
                                                                                  config_.vision);
                                                          })) {}

  const Config& config() const noexcept { return config_; }
  const qwen2_5_vl::CheckpointLayout& layout() const noexcept { return layout_; }
  // Which stage holds each layer and pinned part.
  const placement::Layout& placement() const noexcept { return text_.placement(); }
  const LanguageModel& language_model() const noexcept { return text_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const { return Cache{text_.new_cache(capacity), 0}; }

  // The vision tower's output for these images, concatenated in order:
  // [sum of t*h*w / merge^2, hidden_size], the rows that replace the image
  // placeholders, on device_type.
  Tensor<device_type, T> image_features(std::span<const qwen2_5_vl::ProcessedImage> images) const {
    return on_output(features(images, "image"));
  }
  Tensor<device_type, T> video_features(std::span<const qwen2_5_vl::ProcessedVideo> videos) const {
    return on_output(features(videos, "video"));
  }

  // Prefill: the prompt's ids with its images and videos, into an empty
  // cache. Returns the logits of every position, [ids.size(), vocab_size],
  // and leaves the rope offset for decoding in the cache.
  Tensor<device_type, T> forward(const Prompt& prompt, Cache& cache) const {
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

    std::optional<Features> images, videos;
    if (!prompt.images.empty()) images.emplace(features(prompt.images, "image"));
    if (!prompt.videos.empty()) videos.emplace(features(prompt.videos, "video"));
    // On each device of the embedding stage: the features, moved there with
    // to<>, over the placeholder rows.
    const auto edit = [&](auto& embeddings) {
      if (images) scatter_rows(embeddings, prompt.ids, config_.tokens.image, *images);
      if (videos) scatter_rows(embeddings, prompt.ids, config_.tokens.video, *videos);
    };
    Tensor<device_type, T> logits = text_.forward_edited(prompt.ids, index.positions, cache.kv, edit);
    cache.rope_delta = index.rope_delta;
    return logits;
  }

  // Text tokens after those in the cache (decoding): positions continue at
  // cache length + rope_delta on all three axes.
  Tensor<device_type, T> forward(std::span<const std::int64_t> ids, Cache& cache) const {
    if (ids.empty()) throw ValueError("Qwen2_5_VL::forward: no token ids");
    Tensor<Host, std::int64_t> positions(Shape{static_cast<std::int64_t>(ids.size())});
    for (std::size_t i = 0; i < ids.size(); ++i) {
      positions.span()[i] = cache.length() + static_cast<std::int64_t>(i) + cache.rope_delta;
    }
    return text_.forward_edited(ids, positions, cache.kv, [](auto&) {});
  }

  // A cache of another model (another placement or element type) is one
  // sentence, not a list of candidates.
  template <class Input, ModelCache Other>
    requires(!std::is_same_v<Other, Cache>)
  Tensor<device_type, T> forward(const Input&, Other&) const {
    require_own_cache<Cache, Other>();
    return {};
  }

 private:
  template <class Items>
  static std::vector<qwen2_5_vl::GridTHW> grids_of(const Items& items) {
    std::vector<qwen2_5_vl::GridTHW> grids;
    for (const auto& item : items) grids.push_back(item.grid_thw);
    return grids;
  }

  Tensor<device_type, T> on_output(const Features& f) const {
    return std::visit([](const auto& t) { return to<device_type>(t); }, f);
  }

  // Runs the vision tower once over all items of one kind (their patch rows
  // concatenated, as transformers does), in the model's element type, on
  // the device that holds the tower.
  template <class Items>
  Features features(const Items& items, const char* kind) const {
    if (items.empty()) {
      throw ValueError(tessera::detail::concat("Qwen2_5_VL: no ", kind, "s to run the vision tower on"));
    }
    std::vector<TensorView<Host, const float>> rows;
    for (const auto& item : items) rows.push_back(item.pixel_values.view());
    const Tensor<Host, float> pixels = ops::concat(std::span<const TensorView<Host, const float>>(rows), 0);
    const std::vector<qwen2_5_vl::GridTHW> grids = grids_of(items);
    return vision_.template run<T>([&]<Device D>(const Tower<D>& tower) {
      Tensor<D, float> on_device = to<D>(pixels);
      if constexpr (std::same_as<T, float>) {
        return tower.forward(on_device, grids);
      } else {
        return tower.forward(ops::cast<T>(on_device), grids);
      }
    });
  }

  Config config_;
  qwen2_5_vl::CheckpointLayout layout_;
  LanguageModel text_;
  placement::Pinned<Placement, Tower> vision_;
};

}  // namespace tessera::models
