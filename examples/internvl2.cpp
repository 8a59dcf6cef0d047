// internvl2: run an InternVL2 checkpoint (the Hugging Face directories
// OpenGVLab/InternVL2-1B, -2B, -4B, -8B, -26B, -40B and
// InternVL2-Llama3-76B as downloaded: config.json, the safetensors weights,
// the tokenizer, generation_config.json) on text, images and video frames
// under any placement, and stream the answer.
//
//   internvl2 --model DIR --image cat.jpg --prompt "What is in the picture?"
//   internvl2 --model DIR --image a.jpg --image b.jpg --prompt "What differs?"
//   internvl2 --model DIR --video-frames f0.jpg f1.jpg f2.jpg --prompt "What happens?"
//
// The prompt is what InternVLChatModel.chat() builds for one question: the
// model card's question form ("<image>\n" for one image, "Image-1: <image>\n"
// … for several, "Frame1: <image>\n" … for a video), the conversation
// template config.json names with its system message, and each "<image>"
// replaced by <img> + <IMG_CONTEXT> × 256 per tile + </img>. Generation stops
// at the template's separator (<|im_end|>, Phi-3's <|end|>), as chat() does.
// Placement defaults to InternVL's own split_model recipe (--strategy
// internvl_split). The answer goes to stdout; everything else to stderr.
// Exit codes: 0 success, 2 bad input, 1 any other failure.
#include "internvl2.hpp"

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <tessera/generate/chat.hpp>
#include <tessera/models/internvl2_description.hpp>
#include <tessera/placement/planner.hpp>

namespace tessera::cli {
namespace {
namespace iv = tessera::models::internvl2;
using Options = InternVL2Example::Options;

// The tiling config.json sets, made the model card's video recipe (one tile
// per frame) for --video-frames, with --max-num over it.
iv::ProcessorConfig processor_config(const Options& o, const iv::Config& config) {
  iv::ProcessorConfig cfg = config.processor;
  if (!o.video_frames.empty()) cfg = iv::for_video(cfg);
  if (o.max_num) {
    if (*o.max_num < cfg.min_num) {
      throw UsageError(detail::concat("--max-num ", *o.max_num, " is below config.json's min_dynamic_patch ",
                                      cfg.min_num));
    }
    cfg.max_num = *o.max_num;
  }
  return cfg;
}

// "800x500 -> 2x1 tiles + thumbnail = 3 tiles": how an image was tiled.
std::string tiles_text(const iv::ProcessedImage& p) {
  return detail::concat(p.grid.columns, "x", p.grid.rows, p.thumbnail ? " tiles + thumbnail" : " tiles", " = ",
                        p.tiles(), p.tiles() == 1 ? " tile" : " tiles");
}

void add_images(const Options& o, const iv::ProcessorConfig& cfg, Inputs<iv::Prompt>& in) {
  const bool video = !o.video_frames.empty();
  const std::vector<fs::path>& files = video ? o.video_frames : o.images;
  const char* flag = video ? "--video-frames" : "--image";
  for (std::size_t i = 0; i < files.size(); ++i) {
    const io::RgbImage image = load_image_file(flag, files[i], io::AlphaMode::drop);  // .convert("RGB")
    try {
      in.prompt.images.push_back(iv::process_image(image, cfg, files[i].string()));
    } catch (const ValueError& e) {
      throw UsageError(detail::concat(flag, " '", files[i].string(), "': ", reason(e)));
    }
    in.lines.push_back(detail::concat(video ? "frame " : "image ", i + 1, "   ", files[i].string(), ": ",
                                      image.width, "x", image.height, " -> ", tiles_text(in.prompt.images.back())));
  }
}

// The question as the model card asks it: the prompt itself when it places
// its own "<image>" markers, else one per image in front.
std::string question(const CommonOptions& c, const Options& o) {
  const std::string& text = *c.prompt;
  if (text.find("<image>") != std::string::npos) return text;
  if (!o.video_frames.empty()) return generate::internvl_video_question(o.video_frames.size(), text);
  if (o.images.size() > 1) return generate::internvl_multi_image_question(o.images.size(), text);
  if (o.images.size() == 1) return generate::internvl_image_question(text);
  return text;
}

// The prompt text chat() tokenizes: the question in the conversation
// template (or --raw TEXT as it is), every "<image>" expanded.
std::string prompt_text(const CommonOptions& c, const Options& o, const iv::Config& config,
                        const std::vector<iv::ProcessedImage>& images) {
  std::string text = *c.prompt;
  if (!c.raw) {
    const generate::ChatMessage message{"user", question(c, o)};
    text = generate::render(config.chat_template, std::span<const generate::ChatMessage>(&message, 1), true,
                            config.system_message);
  }
  std::vector<std::size_t> tiles;
  for (const auto& image : images) tiles.push_back(static_cast<std::size_t>(image.tiles()));
  try {
    return generate::internvl_expand_images(text, tiles, static_cast<std::size_t>(config.tokens_per_tile()));
  } catch (const ValueError& e) {  // --raw text with fewer "<image>" than images
    throw UsageError(detail::concat("--prompt: ", reason(e)));
  }
}

// The id of a special token the prompt needs, from the tokenizer.
std::int64_t special_id(const tokenizer::AnyTokenizer& tok, std::string_view token, std::string_view why) {
  const auto id = tok.token_to_id(token);
  if (!id) {
    throw UsageError(detail::concat(tok.source(), ": the tokenizer has no ", token, " token, which ", why,
                                    "; is this an InternVL2 checkpoint's tokenizer?"));
  }
  return static_cast<std::int64_t>(*id);
}

// chat()'s eos: the template's separator, resolved by the tokenizer.
std::vector<std::int64_t> stop_ids(const tokenizer::AnyTokenizer& tok, const iv::Config& config) {
  const std::string sep = generate::stop_strings(config.chat_template).front();
  return {special_id(tok, sep, "ends the assistant's turn in this checkpoint's conversation template")};
}

void add_ids(const CommonOptions& c, const Options& o, const tokenizer::AnyTokenizer* tok, const iv::Config& config,
             Inputs<iv::Prompt>& in) {
  // --ids runs without a tokenizer, but <IMG_CONTEXT>'s id is the
  // tokenizer's: load it when there are images.
  std::optional<tokenizer::AnyTokenizer> own;
  if (tok == nullptr && !in.prompt.images.empty()) {
    own.emplace(tokenizer::load_tokenizer(c.model));
    tok = &*own;
  }
  if (auto ids = given_ids(c)) {
    in.prompt.ids = std::move(*ids);
  } else {
    in.prompt.ids = encode_prompt(*tok, prompt_text(c, o, config, in.prompt.images));
  }
  const char* source = c.ids ? "--ids" : c.input_ids ? "--input-ids" : "--prompt";
  if (tok != nullptr) {
    in.prompt.image_context_id = special_id(*tok, "<IMG_CONTEXT>", "marks where image features go");
    try {
      iv::check_prompt(in.prompt, config.tokens_per_tile());
    } catch (const ValueError& e) {
      throw UsageError(detail::concat(source, ": ", reason(e)));
    }
    if (!c.raw && !c.ids && !c.input_ids) in.eos_token_ids = stop_ids(*tok, config);
  }
  const std::int64_t tiles = iv::tile_count(in.prompt.images);
  in.lines.push_back(detail::concat("prompt    ", prompt_source(c, generate::template_name(config.chat_template)),
                                    ": ", in.prompt.ids.size(), " tokens, ", tiles * config.tokens_per_tile(),
                                    " of them <IMG_CONTEXT> (", tiles, " tiles of ", config.tokens_per_tile(), ")"));
}

}  // namespace

std::string_view InternVL2Example::usage() {
  return R"usage(usage: internvl2 --model DIR (--prompt TEXT | --input-ids "ID ID ..." | --ids ID,ID,...)
                 [--image FILE]... | [--video-frames FILE FILE ...] [options]

Runs an InternVL2 checkpoint (1B, 2B, 4B, 8B, 26B, 40B, Llama3-76B) on text, images or
video frames under any placement and streams the answer to stdout.

input (exactly one of --prompt, --input-ids and --ids):
  --prompt TEXT             the question; as InternVLChatModel.chat() builds it: the
                            model card's form ("<image>\n" before it for one image,
                            "Image-1: <image>\n"... for several, "Frame1: <image>\n"... for
                            video frames) unless TEXT places its own "<image>" markers,
                            in the conversation template config.json names, each
                            "<image>" expanded to <img> <IMG_CONTEXT> x 256 per tile </img>;
                            generation stops at the template's separator
  --raw                     with --prompt: TEXT as it is, no template; its "<image>"
                            markers (one per image) are still expanded
  --input-ids "1 2 3"       the prompt as token ids with the <IMG_CONTEXT> runs ALREADY
                            expanded (256 per tile)
  --ids 1,2,3               the same; the generated ids go to stdout, space-separated,
                            instead of text

images and video (in the order their markers appear):
  --image FILE              an image (JPEG, PNG, BMP, GIF), tiled as dynamic_preprocess
                            tiles it (448x448 tiles + a thumbnail); repeat for several
  --video-frames FILE...    a video as its frame files, in order (sample them yourself, e.g.
                            8 evenly spaced as the model card does): one tile per frame;
                            not together with --image
  --max-num N               at most N tiles per image (default: config.json's
                            max_dynamic_patch, 12; 1 for video frames)

placement: --strategy defaults to internvl_split here (InternVL's split_model: the
vision model, mlp1, embeddings, norm and output with stage 0, counted as half a GPU).

)usage";
}

void InternVL2Example::add_flags(FlagParser& parser, Options& o) {
  parser.add_value("--image", [&o](const std::string& v) { o.images.emplace_back(v); });
  parser.add_list("--video-frames", [&o](std::vector<std::string> files) {
    if (files.empty()) {
      throw UsageError("--video-frames: no frame files given; list them after the flag "
                       "(--video-frames f0.png f1.png ...)");
    }
    o.video_frames.insert(o.video_frames.end(), files.begin(), files.end());
  });
  parser.add_value("--max-num", [&o](const std::string& v) { o.max_num = parse_positive("--max-num", v); });
}

void InternVL2Example::check(const CommonOptions&, const Options& o) {
  if (!o.images.empty() && !o.video_frames.empty()) {
    throw UsageError("--image and --video-frames cannot be combined: the model card asks about a video's frames "
                     "(\"Frame1: <image>\") and images (\"Image-1: <image>\") in different prompts");
  }
}

placement::Plan InternVL2Example::plan(const fs::path& dir, const Config&, const placement::PlanRequest& r) {
  return placement::plan_internvl2(dir, r);
}

Inputs<iv::Prompt> InternVL2Example::prepare(const CommonOptions& c, const Options& o,
                                             const tokenizer::AnyTokenizer* tok, const Config& config) {
  Inputs<iv::Prompt> in;
  add_images(o, processor_config(o, config), in);
  add_ids(c, o, tok, config, in);
  return in;
}

// The vision pass of the plan: every tile of the prompt at once; without a
// prompt (--plan-only), one image with as many tiles as the tiling allows.
void InternVL2Example::plan_sizes(const CommonOptions&, const Options& o, const Config& config, const Prompt* prompt,
                                  placement::PlanRequest& r) {
  if (prompt == nullptr) {
    r.max_vision_units = iv::max_tiles_per_image(processor_config(o, config));
    return;
  }
  r.max_vision_units = iv::tile_count(prompt->images);
}

}  // namespace tessera::cli

int main(int argc, char** argv) { return tessera::cli::model_main<tessera::cli::InternVL2Example>(argc, argv); }
