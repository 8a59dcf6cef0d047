// tessera/models/internvl2.hpp — InternVL2 (OpenGVLab/InternVL2-1B … -40B,
// InternVL2-Llama3-76B) as its published remote code (InternVLChatModel,
// modeling_internvl_chat.py) computes it, placed by a policy:
//
//   tiles    = dynamic_preprocess(image) per image: a grid of S×S tiles, row
//              by row, then the thumbnail (internvl2_processor.hpp)
//   ids      = the conversation template's prompt, each "<image>" replaced by
//              <img> <IMG_CONTEXT> × (tokens_per_tile · tiles) </img>
//   v        = InternViT(tiles)[select_layer] without CLS   (internvl2_vision.hpp)
//   f        = mlp1(pixel_shuffle(v, 0.5))                   [tiles · 256, hidden]
//   x        = embed_tokens[ids];  x[ids == <IMG_CONTEXT>] = f   (tiles in order,
//                                                                image after image)
//   logits   = the language model of llm_config on x, 1-D RoPE at 0 .. S-1:
//              Qwen2 (1B), InternLM2 (2B, 8B, 26B), Phi-3 (4B), Llama (40B, 76B)
//
// The language model is the shared decoder (decoder.hpp) under
// "language_model.model." with "language_model.lm_head.weight" (InternLM2:
// "language_model.output.weight"), each family with its own tensor names;
// InternViT (vision_model.*) and mlp1 (mlp1.*) are one module pinned whole
// to one stage, stage 0 by default as InternVL's split_model pins them by
// hand. Its features reach the embedding stage only through to<>
// (models/scatter.hpp): the "Expected all tensors to be on the same device"
// of InternVL2-Llama3-76B under device_map="auto" cannot be written here.
//
// A batch runs every prompt's tiles through InternViT in one pass and each
// prompt through the decoder as its own sequence (no padding).
#pragma once

#include <algorithm>
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
#include "../generate/chat.hpp"
#include "../io/checkpoint.hpp"
#include "../io/config.hpp"
#include "../ops/shape.hpp"
#include "../placement/pinned.hpp"
#include "../placement/single.hpp"
#include "decoder.hpp"
#include "decoder_family.hpp"
#include "internvl2_processor.hpp"
#include "internvl2_vision.hpp"
#include "scatter.hpp"

namespace tessera::models::internvl2 {

// config.json of an InternVL2 checkpoint (InternVLChatConfig): the language
// model under "llm_config", InternViT under "vision_config", the projector
// and tiling settings at the top level.
struct Config {
  io::DecoderConfig text;
  DecoderFamily family = DecoderFamily::qwen2;
  VisionConfig vision;
  ProjectorConfig projector;
  ProcessorConfig processor;
  generate::ChatTemplate chat_template = generate::ChatTemplate::hermes2;
  std::optional<std::string> system_message;  // config.json's, when it overrides the template's

  // <IMG_CONTEXT> positions per tile: 256 for every published size.
  std::int64_t tokens_per_tile() const { return internvl2::tokens_per_tile(vision, projector); }

  // `file` names the file in messages.
  static Config from_json(const nlohmann::json& root, const std::string& file) {
    using tessera::detail::concat;
    const io::detail::JsonFields f(root, file);
    const std::string model_type = f.string("model_type", "");
    if (model_type != "internvl_chat") {
      throw f.error("model_type", concat("is \"", model_type, "\"; an InternVL2 checkpoint says \"internvl_chat\" ",
                                         "(InternVLChatModel's remote-code layout, as the OpenGVLab repositories ",
                                         "publish it)"));
    }
    for (const char* key : {"llm_config", "vision_config"}) {
      if (!f.has_value(key) || !f.raw(key).is_object()) throw f.error(key, "must be a JSON object");
    }
    Config c;
    c.text = io::DecoderConfig::from_json(f.raw("llm_config"), file, "llm_config.");
    c.family = detect_family(c.text, file);
    c.vision = VisionConfig::from_json(f.raw("vision_config"), file);
    // select_layer, downsample_ratio, ps_version, force_image_size and
    // llm_config.hidden_size, each checked against the tower.
    c.projector = ProjectorConfig::from_json(root, c.vision, file);
    c.processor = ProcessorConfig::from_json(root, file);
    if (c.processor.image_size != c.projector.image_size) {
      throw f.error("force_image_size", concat("gives tiles of ", c.processor.image_size, " pixels but the tower runs ",
                                               "at ", c.projector.image_size));
    }
    c.chat_template = generate::template_for(root, file);
    c.system_message = generate::system_message_for(root, file);
    return c;
  }

  // Reads `path`: a config.json file or a checkpoint directory holding one.
  static Config load(const std::filesystem::path& path) {
    const auto file = io::detail::json_file_in(path, "config.json");
    return from_json(io::detail::parse_json_text(io::detail::read_text_file(file, "config file"), file.string()),
                     file.string());
  }
};

// Where the parts live in the published checkpoints.
inline constexpr const char* kVisionPrefix = "vision_model.";
inline constexpr const char* kProjectorPrefix = "mlp1.";
inline constexpr const char* kTextPrefix = "language_model.model.";
inline constexpr const char* kTextRoot = "language_model.";

// The language model's output projection: "language_model.lm_head.weight",
// InternLM2's "language_model.output.weight".
inline std::string lm_head_name(DecoderFamily family) { return kTextRoot + weights_for(family).lm_head; }

// A prompt ready for the model: token ids with every "<image>" expanded to
// its <IMG_CONTEXT> run, the id of <IMG_CONTEXT> (the tokenizer's, as
// chat() looks it up), and the processed images in the order their runs
// appear.
struct Prompt {
  std::vector<std::int64_t> ids;
  std::vector<ProcessedImage> images;
  std::int64_t image_context_id = -1;
};

// What generate::generate() feeds the repetition penalty with.
inline std::span<const std::int64_t> prompt_ids(const Prompt& prompt) { return prompt.ids; }

// The tiles of all `images`: what their <IMG_CONTEXT> runs hold
// tokens_per_tile positions each of, and the planner's vision units.
inline std::int64_t tile_count(std::span<const ProcessedImage> images) {
  std::int64_t n = 0;
  for (const ProcessedImage& image : images) n += image.tiles();
  return n;
}

// Checks that the prompt's <IMG_CONTEXT> positions take its images'
// features exactly: tokens_per_tile per tile, over all images.
inline void check_prompt(const Prompt& prompt, std::int64_t tokens_per_tile) {
  using tessera::detail::concat;
  const std::int64_t tiles = tile_count(prompt.images);
  if (tiles > 0 && prompt.image_context_id < 0) {
    throw ValueError(concat("InternVL2: the prompt has ", prompt.images.size(), " image(s) but no <IMG_CONTEXT> id; ",
                            "set Prompt::image_context_id from the tokenizer"));
  }
  const auto placeholders = static_cast<std::int64_t>(
      std::count(prompt.ids.begin(), prompt.ids.end(), prompt.image_context_id));
  if (placeholders != tiles * tokens_per_tile) {
    throw ValueError(concat("InternVL2: the prompt has ", placeholders, " <IMG_CONTEXT> tokens (id ",
                            prompt.image_context_id, ") but its ", prompt.images.size(), " image(s) have ", tiles,
                            " tiles of ", tokens_per_tile, " features each (", tiles * tokens_per_tile,
                            "); expand each <image> with the tile count its image was processed to"));
  }
}

}  // namespace tessera::models::internvl2

namespace tessera::models {

// InternVL2 placed by a policy (placement/policy.hpp): the language model
// spread as Decoder<Placement> spreads it, InternViT and mlp1 whole on the
// first held device of the stage the Layout pins them to (stage 0 by
// default; replicated per process under MPI, never split, so InternViT-6B's
// 25 heads need not divide a tensor-parallel group). Features cross to the
// embedding stage with to<>; logits come back on device_type.
template <DevicePlacement Placement, FloatType T = bf16>
class InternVL2 {
  template <class D>
  using Encoder = internvl2::VisionEncoder<D, T>;
  using Features = placement::AnyPolicyTensor<Placement, T>;

 public:
  using policy = Placement;
  using device_type = output_device<Placement>;
  using Config = internvl2::Config;
  using Prompt = internvl2::Prompt;
  using LanguageModel = Decoder<Placement, T>;
  using Cache = typename LanguageModel::Cache;

  // Loads an InternVL2 checkpoint directory as published. `placement` and
  // `comms` as for Decoder::load.
  static InternVL2 load(const std::filesystem::path& dir, std::optional<placement::Layout> placement = std::nullopt,
                        placement::Comms<Placement> comms = {}) {
    Config config = Config::load(dir);
    const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
    return InternVL2(std::move(config), checkpoint, std::move(placement), std::move(comms));
  }

  InternVL2(Config config, const io::Checkpoint& checkpoint, std::optional<placement::Layout> placement = std::nullopt,
            placement::Comms<Placement> comms = {})
      : config_(std::move(config)),
        text_(config_.text, weights_for(config_.family), checkpoint, internvl2::kTextPrefix,
              internvl2::lm_head_name(config_.family), std::move(placement), std::move(comms)),
        vision_(placement::Pinned<Placement, Encoder>::load(text_.placement().vision_stage, text_.comms(),
                                                            [&]<Device D>() {
                                                              return Encoder<D>::load(checkpoint, config_.vision,
                                                                                      config_.projector,
                                                                                      internvl2::kVisionPrefix,
                                                                                      internvl2::kProjectorPrefix);
                                                            })) {
    // InternVL2-4B's Phi-3 (LongRoPE): its generate keeps decoding on the
    // cache when a sequence passes original_max_position_embeddings, the
    // earlier keys rotated with the short factors; every prompt here is
    // edited embeddings, which a rerun could not replay anyway.
    text_.set_longrope_crossing(LanguageModel::LongRopeCrossing::keep_cache);
  }

  const Config& config() const noexcept { return config_; }
  // Which stage holds each layer and the pinned vision module.
  const placement::Layout& placement() const noexcept { return text_.placement(); }
  const LanguageModel& language_model() const noexcept { return text_; }

  // A cache for one sequence of up to `capacity` tokens.
  Cache new_cache(std::int64_t capacity) const { return text_.new_cache(capacity); }

  // mlp1's output for these images' tiles, in prompt order:
  // [tiles * tokens_per_tile, hidden_size], on device_type.
  Tensor<device_type, T> image_features(std::span<const internvl2::ProcessedImage> images) const {
    std::vector<const internvl2::ProcessedImage*> all;
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

  // Several prompts, one cache each: all their tiles go through InternViT
  // in one pass, then each prompt through the decoder. Returns each
  // prompt's logits [len_i, vocab].
  std::vector<Tensor<device_type, T>> forward_batch(std::span<const Prompt* const> prompts,
                                                    std::span<Cache* const> caches) const {
    using tessera::detail::concat;
    if (prompts.size() != caches.size() || prompts.empty()) {
      throw ValueError(concat("InternVL2::forward_batch: ", prompts.size(), " prompts but ", caches.size(),
                              " caches; pass one cache per prompt"));
    }
    const std::int64_t per_tile = config_.tokens_per_tile();
    std::vector<const internvl2::ProcessedImage*> images;
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      if (prompts[p]->ids.empty()) throw ValueError(concat("InternVL2: prompt ", p, " has no tokens"));
      internvl2::check_prompt(*prompts[p], per_tile);
      for (const auto& image : prompts[p]->images) images.push_back(&image);
    }
    std::optional<Features> all;
    if (!images.empty()) all.emplace(features(images));
    std::vector<Tensor<device_type, T>> logits;
    FeatureCursor<Features> cursor(all, prompts.size());
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      const Prompt& prompt = *prompts[p];
      const Features* mine = cursor.next(internvl2::tile_count(prompt.images) * per_tile);
      // On each device of the embedding stage: the prompt's rows, moved
      // there with to<>, over its <IMG_CONTEXT> positions.
      const auto edit = [&](auto& embeddings) {
        if (mine != nullptr) scatter_rows(embeddings, prompt.ids, prompt.image_context_id, *mine);
      };
      logits.push_back(text_.forward_edited(prompt.ids, *caches[p], edit));
    }
    return logits;
  }

 private:
  // Runs the tower once over every tile of `images`, in the model's
  // element type, on the device that holds it.
  Features features(std::span<const internvl2::ProcessedImage* const> images) const {
    const Tensor<Host, float> tiles = internvl2::batch_images(images).pixels;
    return vision_.template run<T>([&]<Device D>(const Encoder<D>& encoder) {
      Tensor<D, float> on_device = to<D>(tiles);
      if constexpr (std::same_as<T, float>) {
        return encoder.forward(on_device);
      } else {
        return encoder.forward(ops::cast<T>(on_device));
      }
    });
  }

  Config config_;
  LanguageModel text_;
  placement::Pinned<Placement, Encoder> vision_;
};

}  // namespace tessera::models
