// minicpm_v: run a MiniCPM-V 2.6 checkpoint (the Hugging Face directory
// openbmb/MiniCPM-V-2_6 as downloaded: config.json, the safetensors weights,
// tokenizer.json, preprocessor_config.json, generation_config.json) on text,
// images and video frames under any placement, and stream the answer.
//
//   minicpm_v --model DIR --image cat.jpg --prompt "What is in the picture?"
//   minicpm_v --model DIR --video-frames f0.jpg f1.jpg f2.jpg --prompt "Describe the video."
//
// The prompt is what MiniCPMV.chat() builds for one user message: each
// image becomes "(<image>./</image>)", the parts (images first, then the
// text) are joined with "\n", the message goes through the ChatML chat
// template, and each marker is replaced by its image's placeholder (source
// image, then the slice grid). A video is its frames as images, the way
// the model card feeds one: no <image_id> and at most 2 slices per frame.
// The answer goes to stdout; everything else to stderr. Exit codes: 0
// success, 2 bad input, 1 any other failure. Run with --help for the flags.
#include "minicpm_v.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <tessera/generate/chat.hpp>
#include <tessera/models/minicpm_v_description.hpp>
#include <tessera/placement/planner.hpp>

namespace tessera::cli {
namespace {
namespace mv = tessera::models::minicpm_v;
using Options = MiniCPM_VExample::Options;

// preprocessor_config.json (the published defaults when the checkpoint has
// none), made the video recipe's for --video-frames, with --max-slice-nums
// over it; checked against config.json, as MiniCPMV.chat() asserts.
mv::ProcessorConfig processor_config(const fs::path& model, const Options& o, const mv::Config& config) {
  const fs::path file = model / "preprocessor_config.json";
  mv::ProcessorConfig cfg;
  std::error_code ec;
  if (fs::exists(file, ec)) {
    cfg = mv::ProcessorConfig::load(file);  // FormatError: a bad input file, named with its key
  } else {
    std::cerr << "note: " << file.string() << " does not exist; using MiniCPM-V 2.6's published preprocessing\n";
  }
  if (cfg.image_feature_size != config.query_num()) {
    throw UsageError(detail::concat(file.string(), ": image_feature_size ", cfg.image_feature_size,
                                    " differs from config.json's query_num ", config.query_num(),
                                    "; each slice's span must hold one position per resampler query"));
  }
  if (cfg.use_image_id != config.use_image_id) {
    throw UsageError(detail::concat(file.string(), ": use_image_id is ", cfg.use_image_id ? "true" : "false",
                                    " but config.json says ", config.use_image_id ? "true" : "false",
                                    " (MiniCPMV.chat() refuses this mismatch too)"));
  }
  if (cfg.patch_size != config.vision.patch_size) {
    throw UsageError(detail::concat(file.string(), ": patch_size ", cfg.patch_size,
                                    " differs from config.json's vision_config.patch_size ",
                                    config.vision.patch_size));
  }
  if (!o.video_frames.empty()) cfg = mv::for_video(cfg);
  if (o.max_slice_nums) cfg.max_slice_nums = *o.max_slice_nums;
  return cfg;
}

// "source 350x574 (25x41 patches) + grid 2x1 of 490x406": how an image was cut.
std::string slices_text(const mv::ProcessedImage& p) {
  const auto size = [&](std::size_t s) {
    return detail::concat(p.slices[s].dim(2), "x", p.slices[s].dim(1), " (", p.tgt_sizes[s][1], "x",
                          p.tgt_sizes[s][0], " patches)");
  };
  std::string text = detail::concat("source ", size(0));
  if (p.grid) text += detail::concat(" + grid ", (*p.grid)[0], "x", (*p.grid)[1], " of ", size(1));
  return text;
}

void add_images(const Options& o, const mv::ProcessorConfig& cfg, Inputs<mv::Prompt>& in) {
  const bool video = !o.video_frames.empty();
  const std::vector<fs::path>& files = video ? o.video_frames : o.images;
  const char* flag = video ? "--video-frames" : "--image";
  for (std::size_t i = 0; i < files.size(); ++i) {
    const io::RgbImage image = load_image_file(flag, files[i]);
    try {
      in.prompt.images.push_back(mv::process_image(image, cfg, files[i].string()));
    } catch (const ValueError& e) {
      throw UsageError(detail::concat(flag, " '", files[i].string(), "': ", reason(e)));
    }
    in.lines.push_back(detail::concat(video ? "frame " : "image ", i + 1, "   ", files[i].string(), ": ",
                                      image.width, "x", image.height, " -> ", slices_text(in.prompt.images.back())));
  }
}

// The user's message as MiniCPMV.chat() renders it: one marker per image,
// then the text, joined with "\n", in the ChatML template.
std::string chat_text(const CommonOptions& c, std::size_t images) {
  if (c.raw) return *c.prompt;
  std::string content;
  for (std::size_t i = 0; i < images; ++i) content += "(<image>./</image>)\n";
  content += *c.prompt;
  const generate::ChatMessage message{"user", content};
  return generate::apply_chat_template(std::span<const generate::ChatMessage>(&message, 1), true);
}

// The prompt's ids with every image marker expanded, and the feature spans:
// from --prompt, or --input-ids / --ids already expanded (then the spans
// are found in them and checked against the images).
void add_ids(const CommonOptions& c, const tokenizer::AnyTokenizer* tok, const mv::ProcessorConfig& cfg,
             const mv::Config& config, Inputs<mv::Prompt>& in) {
  // --ids runs without a tokenizer, but the span markers' ids are the
  // tokenizer's: load it when there are images.
  std::optional<tokenizer::AnyTokenizer> own;
  if (tok == nullptr && !in.prompt.images.empty()) {
    own.emplace(tokenizer::load_tokenizer(c.model));
    tok = &*own;
  }
  if (auto ids = given_ids(c)) {
    in.prompt.ids = std::move(*ids);
  } else {
    std::string text;
    try {
      text = mv::expand_image_markers(chat_text(c, in.prompt.images.size()), in.prompt.images, cfg);
    } catch (const ValueError& e) {  // --raw text whose markers do not match the images
      throw UsageError(detail::concat("--prompt: ", reason(e)));
    }
    in.prompt.ids = encode_prompt(*tok, text);
  }
  const char* source = c.ids ? "--ids" : c.input_ids ? "--input-ids" : "--prompt";
  if (tok != nullptr) {
    try {
      in.prompt.bounds = mv::image_bounds(in.prompt.ids, mv::SpecialTokens::from(*tok));
      mv::check_bounds(in.prompt, config.query_num());
    } catch (const Error& e) {
      throw UsageError(detail::concat(source, ": ", reason(e)));
    }
  }
  in.lines.push_back(detail::concat("prompt    ", prompt_source(c), ": ", in.prompt.ids.size(), " tokens, ",
                                    in.prompt.bounds.size(), " feature spans of ", config.query_num(),
                                    " positions"));
}

}  // namespace

std::string_view MiniCPM_VExample::usage() {
  return R"usage(usage: minicpm_v --model DIR (--prompt TEXT | --input-ids "ID ID ..." | --ids ID,ID,...)
                 [--image FILE]... | [--video-frames FILE FILE ...] [options]

Runs a MiniCPM-V 2.6 checkpoint on text, images or video frames under any placement and
streams the answer to stdout.

input (exactly one of --prompt, --input-ids and --ids):
  --prompt TEXT             the user's text; as MiniCPMV.chat() builds it, one
                            "(<image>./</image>)" per image comes first, the parts
                            joined with newlines, in the ChatML chat template, and
                            each marker becomes its image's placeholder (<image_id>,
                            the source image's span, the slice grid's rows)
  --raw                     with --prompt: TEXT as it is, no template; it must hold one
                            "(<image>./</image>)" per image, which are expanded
  --input-ids "1 2 3"       the prompt as token ids with the placeholders ALREADY
                            expanded: one span of query_num <unk> per slice
  --ids 1,2,3               the same; the generated ids go to stdout, space-separated,
                            instead of text

images and video (in the order their markers appear):
  --image FILE              an image (JPEG, PNG, BMP, GIF), sliced as the reference
                            processor slices it; repeat for several
  --video-frames FILE...    a video as its frame files, in order (sample them yourself,
                            e.g. 1 fps as the model card does): each frame an image
                            with no <image_id> and at most 2 slices (the card's recipe);
                            not together with --image
  --max-slice-nums N        at most N grid cells per image (default: preprocessor_config.json,
                            2 for video frames)

)usage";
}

void MiniCPM_VExample::add_flags(FlagParser& parser, Options& o) {
  parser.add_value("--image", [&o](const std::string& v) { o.images.emplace_back(v); });
  parser.add_list("--video-frames", [&o](std::vector<std::string> files) {
    if (files.empty()) {
      throw UsageError("--video-frames: no frame files given; list them after the flag "
                       "(--video-frames f0.png f1.png ...)");
    }
    o.video_frames.insert(o.video_frames.end(), files.begin(), files.end());
  });
  parser.add_value("--max-slice-nums",
                   [&o](const std::string& v) { o.max_slice_nums = parse_positive("--max-slice-nums", v); });
}

void MiniCPM_VExample::check(const CommonOptions&, const Options& o) {
  if (!o.images.empty() && !o.video_frames.empty()) {
    throw UsageError("--image and --video-frames cannot be combined: the reference processes a video's frames with "
                     "other settings (no <image_id>, at most 2 slices) than images");
  }
  if (o.max_slice_nums && o.images.empty() && o.video_frames.empty()) {
    throw UsageError("--max-slice-nums applies to --image and --video-frames only");
  }
}

placement::Plan MiniCPM_VExample::plan(const fs::path& dir, const Config&, const placement::PlanRequest& r) {
  return placement::plan_model(models::minicpm_v::describe(dir), r);
}

Inputs<mv::Prompt> MiniCPM_VExample::prepare(const CommonOptions& c, const Options& o,
                                             const tokenizer::AnyTokenizer* tok, const Config& config) {
  Inputs<mv::Prompt> in;
  const mv::ProcessorConfig cfg = processor_config(c.model, o, config);
  add_images(o, cfg, in);
  add_ids(c, tok, cfg, config, in);
  return in;
}

// The vision pass of the plan: every slice of the prompt at once; without
// a prompt (--plan-only), one image as large as the slicer's grid allows.
void MiniCPM_VExample::plan_sizes(const CommonOptions& c, const Options& o, const Config& config,
                                  const Prompt* prompt, placement::PlanRequest& r) {
  if (prompt == nullptr) {
    r.max_vision_units = 1 + processor_config(c.model, o, config).max_slice_nums;
    return;
  }
  r.max_vision_units = mv::slice_count(prompt->images);
}

}  // namespace tessera::cli

int main(int argc, char** argv) { return tessera::cli::model_main<tessera::cli::MiniCPM_VExample>(argc, argv); }
