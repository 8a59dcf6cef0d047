// tessera/models/minicpm_v.hpp — MiniCPM-V 2.6 (openbmb/MiniCPM-V-2_6) as
// its published remote code (MiniCPMV, modeling_minicpmv.py) computes it,
// placed by a policy:
//
//   ids      = the chat prompt, each image's "(<image>./</image>)" replaced
//              by its placeholder: [<image_id>k</image_id>] <image> <unk>*Q
//              </image> then the grid's <slice> <unk>*Q </slice> rows
//              (minicpm_v_processor.hpp)
//   bounds   = the [start, end) of every <unk> span, one per slice
//   v        = SigLIP NaViT(slices, tgt_sizes)       (minicpm_v_vision.hpp)
//   f        = Resampler(v, tgt_sizes)               [slices * Q, hidden]
//   x        = embed_tokens[ids];  x[bounds] = f     (source slice first, then
//                                                    the cells row-major, image
//                                                    after image)
//   logits   = Qwen2 decoder(x) with 1-D RoPE at positions 0 .. S-1
//
// The language model is Qwen2 under "llm.model." with "llm.lm_head.weight";
// the vision encoder (vpm.*) and the resampler (resampler.*) are one module
// pinned whole to one stage (stage 0 by default: the official multi-GPU
// recipe pins them there by hand, here the planner does). Its features reach
// the embedding stage only through to<> (models/scatter.hpp): the
// "Expected all tensors to be on the same device, cuda:0 and cuda:3" of
// the scatter in MiniCPMV.get_vllm_embedding cannot be written here.
//
// A batch runs every prompt's slices through the vision encoder in one pass
// (the reference's vision batch) and each prompt through the decoder as
// its own sequence. The reference left-pads the batch with id 0 and masks
// every id 0 (attention_mask = ids != 0, a real token 0 included); tessera
// never pads, so its rows equal the reference's for prompts without id 0.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/transfer.hpp"
#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../ops/shape.hpp"
#include "../placement/pinned.hpp"
#include "../placement/single.hpp"
#include "decoder.hpp"
#include "decoder_family.hpp"
#include "minicpm_v_processor.hpp"
#include "minicpm_v_vision.hpp"
#include "scatter.hpp"

namespace tessera::models::minicpm_v {

// config.json of a MiniCPM-V 2.6 checkpoint: MiniCPMVConfig subclasses
// Qwen2Config, so the language model's fields sit at the top level, with
// the vision tower under "vision_config" and the resampler's size in
// "query_num".
struct Config {
  io::DecoderConfig text;
  VisionConfig vision;
  ResamplerConfig resampler;
  double version = 2.6;
  bool use_image_id = true;
  // MiniCPMVConfig's class default is true (drop the tower's last layer);
  // the 2.6 checkpoint ships all 27 layers with the key set to false.
  bool drop_vision_last_layer = true;

  std::int64_t query_num() const noexcept { return resampler.num_queries; }

  // `file` names the file in messages.
  static Config from_json(const nlohmann::json& root, const std::string& file) {
    using tessera::detail::concat;
    const io::detail::JsonFields f(root, file);
    Config c;
    c.version = f.number("version", 2.0);
    if (c.version != 2.6) {
      throw f.error("version", concat("is ", c.version, "; tessera runs MiniCPM-V 2.6 (\"version\": 2.6). Versions "
                                      "2.0 and 2.5 have other vision towers, resamplers and language models"));
    }
    c.text = io::DecoderConfig::from_json(root, file);
    if (!f.has_value("vision_config")) throw f.error("vision_config", "is missing (MiniCPM-V needs its SigLIP tower)");
    c.vision = VisionConfig::from_json(f.raw("vision_config"), file);
    c.drop_vision_last_layer = f.boolean("drop_vision_last_layer", true);
    if (c.drop_vision_last_layer) {
      if (c.vision.num_hidden_layers < 2) {
        throw f.error("drop_vision_last_layer", concat("is true but vision_config.num_hidden_layers is ",
                                                       c.vision.num_hidden_layers, "; no layer would remain"));
      }
      --c.vision.num_hidden_layers;  // init_vision_module: encoder.layers[:-1]
    }
    c.use_image_id = f.boolean("use_image_id", true);
    // MiniCPMV.__init__: Resampler(num_queries=query_num, embed_dim=hidden,
    // num_heads=hidden // 128, kv_dim=vision hidden).
    const std::int64_t hidden = c.text.hidden_size;
    if (hidden % 128 != 0) {
      throw f.error("hidden_size", concat("is ", hidden, "; MiniCPM-V's resampler has hidden_size / 128 heads of 128 "
                                          "channels, so it must be a multiple of 128"));
    }
    c.resampler.num_queries = f.positive("query_num", 64);
    c.resampler.embed_dim = hidden;
    c.resampler.num_heads = hidden / 128;
    c.resampler.kv_dim = c.vision.hidden_size;
    return c;
  }

  // Reads `path`: a config.json file or a checkpoint directory holding one.
  static Config load(const std::filesystem::path& path) {
    const auto file = io::detail::json_file_in(path, "config.json");
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(file, "config file"), file.string()),
                     file.string());
  }
};

// Where the three parts live in the published checkpoint.
inline constexpr const char* kTextPrefix = "llm.model.";
inline constexpr const char* kLmHead = "llm.lm_head.weight";
inline constexpr const char* kVisionPrefix = "vpm.";
inline constexpr const char* kResamplerPrefix = "resampler.";

using Bound = std::array<std::int64_t, 2>;  // [start, end) of one slice's <unk> span

// A prompt ready for the model: token ids with every image placeholder
// expanded, the feature spans (image_bounds of the ids), and the processed
// images in the order their placeholders appear.
struct Prompt {
  std::vector<std::int64_t> ids;
  std::vector<Bound> bounds;
  std::vector<ProcessedImage> images;
};

// What generate::generate() feeds the repetition penalty with.
inline std::span<const std::int64_t> prompt_ids(const Prompt& prompt) { return prompt.ids; }

inline std::int64_t slice_count(std::span<const ProcessedImage> images) {
  std::int64_t n = 0;
  for (const auto& image : images) n += static_cast<std::int64_t>(image.slices.size());
  return n;
}

// Checks that the spans can take the images' features: one span per slice,
// each exactly `query_num` positions long, in order, inside the prompt and
// not overlapping. Names the first span that is wrong.
inline void check_bounds(const Prompt& prompt, std::int64_t query_num) {
  using tessera::detail::concat;
  const auto slices = slice_count(prompt.images);
  const auto spans = static_cast<std::int64_t>(prompt.bounds.size());
  if (spans != slices) {
    throw ValueError(concat("MiniCPM-V: the prompt has ", spans, " image/slice spans but its ", prompt.images.size(),
                            " image(s) have ", slices, " slices; each slice needs one <image>/<slice> span of ",
                            query_num, " <unk> tokens (expand the prompt with the images it is run with)"));
  }
  const auto length = static_cast<std::int64_t>(prompt.ids.size());
  std::int64_t previous_end = 0;
  for (std::size_t i = 0; i < prompt.bounds.size(); ++i) {
    const auto [start, end] = prompt.bounds[i];
    if (start < previous_end || end > length || end - start != query_num) {
      throw ValueError(concat("MiniCPM-V: span ", i, " is [", start, ", ", end, ") in a prompt of ", length,
                              " tokens; spans must follow one another inside the prompt and each hold query_num = ",
                              query_num, " positions"));
    }
    previous_end = end;
  }
}

// The positions of every span marked 1, the rest 0: what scatter_rows
// matches, so each span takes the next query_num feature rows.
inline std::vector<std::int64_t> span_marks(std::int64_t length, std::span<const Bound> bounds) {
  std::vector<std::int64_t> marks(static_cast<std::size_t>(length), 0);
  for (const auto& [start, end] : bounds) {
    std::fill(marks.begin() + start, marks.begin() + end, std::int64_t{1});
  }
  return marks;
}

// Every slice of `images` as patch rows [sum L, C*p*p] on the host, and
// the slices' tgt_sizes, in the order the spans take them.
struct PatchBatch {
  Tensor<Host, float> rows;
  std::vector<TgtSize> tgt_sizes;
};

inline PatchBatch patch_batch(std::span<const ProcessedImage* const> images, std::int64_t patch) {
  PatchBatch batch;
  std::int64_t rows = 0, columns = 0;
  for (const ProcessedImage* image : images) {
    for (std::size_t s = 0; s < image->slices.size(); ++s) {
      const auto& slice = image->slices[s];
      rows += (slice.dim(1) / patch) * (slice.dim(2) / patch);
      columns = slice.dim(0) * patch * patch;
      batch.tgt_sizes.push_back(image->tgt_sizes[s]);
    }
  }
  // One tensor filled slice by slice: no second copy of the rows.
  batch.rows = Tensor<Host, float>(Shape{rows, columns});
  std::int64_t row = 0;
  for (const ProcessedImage* image : images) {
    for (const auto& slice : image->slices) {
      const std::int64_t n = (slice.dim(1) / patch) * (slice.dim(2) / patch);
      patch_rows_into(slice.view(), patch, batch.rows.view().slice(0, row, row + n));
      row += n;
    }
  }
  return batch;
}

}  // namespace tessera::models::minicpm_v

namespace tessera::models {

// MiniCPM-V 2.6 placed by a policy (placement/policy.hpp): the Qwen2
// language model spread as Decoder<Placement> spreads it, the vision
// encoder and resampler whole on the first held device of the stage the
// Layout pins them to (stage 0 by default; replicated per process under
// MPI, never split). Features cross to the embedding stage with to<>;
// logits come back on device_type.
template <DevicePlacement Placement, FloatType T = bf16>
class MiniCPM_V {
  template <class D>
  using Encoder = minicpm_v::VisionEncoder<D, T>;
  using Features = placement::AnyPolicyTensor<Placement, T>;

 public:
  using policy = Placement;
  using device_type = output_device<Placement>;
  using Config = minicpm_v::Config;
  using Prompt = minicpm_v::Prompt;
  using LanguageModel = Decoder<Placement, T>;
  using Cache = typename LanguageModel::Cache;

  // Loads a Hugging Face checkpoint directory as published. `placement` and
  // `comms` as for Decoder::load.
  static MiniCPM_V load(const std::filesystem::path& dir, std::optional<placement::Layout> placement = std::nullopt,
                        placement::Comms<Placement> comms = {}) {
    Config config = Config::load(dir);
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return MiniCPM_V(std::move(config), checkpoint, std::move(placement), std::move(comms));
  }

  MiniCPM_V(Config config, const io::Checkpoint& checkpoint, std::optional<placement::Layout> placement = std::nullopt,
            placement::Comms<Placement> comms = {})
      : config_(std::move(config)),
        text_(config_.text, qwen2_weights(), checkpoint, minicpm_v::kTextPrefix, minicpm_v::kLmHead,
              std::move(placement), std::move(comms)),
        vision_(placement::Pinned<Placement, Encoder>::load(text_.placement().vision_stage, text_.comms(),
                                                            [&]<Device D>() {
                                                              return Encoder<D>::load(checkpoint, config_.vision,
                                                                                      config_.resampler,
                                                                                      minicpm_v::kVisionPrefix,
                                                                                      minicpm_v::kResamplerPrefix);
                                                            })) {}

  const Config& config() const noexcept { return config_; }
  // Which stage holds each layer and the pinned encoder.
  const placement::Layout& placement() const noexcept { return text_.placement(); }
  const LanguageModel& language_model() const noexcept { return text_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const { return text_.new_cache(capacity); }

  // The resampler's output for these images' slices, in span order:
  // [slices * query_num, hidden_size], on device_type.
  Tensor<device_type, T> image_features(std::span<const minicpm_v::ProcessedImage> images) const {
    std::vector<const minicpm_v::ProcessedImage*> all;
    for (const auto& image : images) all.push_back(&image);
    return std::visit([](const auto& t) { return to<device_type>(t); }, features(all));
  }

  // Prefill: the prompt's ids with its images, after whatever the cache
  // holds. Returns the logits of every new position, [ids.size(), vocab].
  Tensor<device_type, T> forward(const Prompt& prompt, Cache& cache) const {
    const Prompt* one = &prompt;
    Cache* const cache_ptr = &cache;
    std::vector<Tensor<device_type, T>> out = forward_batch({&one, 1}, {&cache_ptr, 1});
    return std::move(out[0]);
  }

  // Text tokens after those in the cache (decoding).
  Tensor<device_type, T> forward(std::span<const std::int64_t> ids, Cache& cache) const {
    return text_.forward(ids, cache);
  }

  // A cache of another model (another placement or element type) is one
  // sentence, not a list of candidates.
  template <class Input, ModelCache Other>
    requires(!std::is_same_v<Other, Cache>)
  Tensor<device_type, T> forward(const Input&, Other&) const {
    require_own_cache<Cache, Other>();
    return {};
  }

  // Several prompts, one cache each: all their slices go through the
  // vision encoder in one pass, then each prompt through the decoder.
  // Returns each prompt's logits [len_i, vocab].
  std::vector<Tensor<device_type, T>> forward_batch(std::span<const Prompt* const> prompts,
                                                    std::span<Cache* const> caches) const {
    using tessera::detail::concat;
    if (prompts.size() != caches.size() || prompts.empty()) {
      throw ValueError(concat("MiniCPM_V::forward_batch: ", prompts.size(), " prompts but ", caches.size(),
                              " caches; pass one cache per prompt"));
    }
    std::vector<const minicpm_v::ProcessedImage*> images;
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      if (prompts[p]->ids.empty()) throw ValueError(concat("MiniCPM_V: prompt ", p, " has no tokens"));
      minicpm_v::check_bounds(*prompts[p], config_.query_num());
      for (const auto& image : prompts[p]->images) images.push_back(&image);
    }
    std::optional<Features> all;
    if (!images.empty()) all.emplace(features(images));
    std::vector<Tensor<device_type, T>> logits;
    FeatureCursor<Features> cursor(all, prompts.size());
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      const Prompt& prompt = *prompts[p];
      const Features* mine = cursor.next(static_cast<std::int64_t>(prompt.bounds.size()) * config_.query_num());
      const std::vector<std::int64_t> marks =
          minicpm_v::span_marks(static_cast<std::int64_t>(prompt.ids.size()), prompt.bounds);
      // On each device of the embedding stage: the prompt's rows, moved
      // there with to<>, over its spans.
      const auto edit = [&](auto& embeddings) {
        if (mine != nullptr) scatter_rows(embeddings, marks, 1, *mine);
      };
      logits.push_back(text_.forward_edited(prompt.ids, *caches[p], edit));
    }
    return logits;
  }

 private:
  // Runs the encoder once over every slice of `images`, in the model's
  // element type, on the device that holds it.
  Features features(std::span<const minicpm_v::ProcessedImage* const> images) const {
    const minicpm_v::PatchBatch batch = minicpm_v::patch_batch(images, config_.vision.patch_size);
    return vision_.template run<T>([&]<Device D>(const Encoder<D>& encoder) {
      Tensor<D, float> on_device = to<D>(batch.rows);
      if constexpr (std::same_as<T, float>) {
        return encoder.forward(on_device, batch.tgt_sizes);
      } else {
        return encoder.forward(ops::cast<T>(on_device), batch.tgt_sizes);
      }
    });
  }

  Config config_;
  LanguageModel text_;
  placement::Pinned<Placement, Encoder> vision_;
};

}  // namespace tessera::models
