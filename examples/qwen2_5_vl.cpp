// qwen2_5_vl: run a Qwen2.5-VL checkpoint (a Hugging Face directory with
// config.json, the safetensors weights, tokenizer.json, preprocessor_config.json
// and optionally generation_config.json) on text, images and videos under
// any placement, and stream the answer.
//
//   qwen2_5_vl --model DIR --image cat.jpg --prompt "What is in the picture?"
//   qwen2_5_vl --model DIR --video-frames f0.png f1.png f2.png f3.png --fps 2 --prompt "What happens?"
//
// The answer goes to stdout as it is produced (one flush per decoded chunk,
// then a final newline); everything else (the inputs as processed, the
// placement, the summary, the memory report, --print-ids, errors) goes to
// stderr. Exit codes: 0 success, 2 bad input (flags, numbers, paths, image
// files, ids, a placement that cannot work), 1 any other failure. Run with
// --help for the flags. This file is Qwen2.5-VL's input handling; the
// driver is model_main.hpp.
#include "qwen2_5_vl.hpp"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <tessera/models/qwen2_5_vl_description.hpp>
#include <tessera/placement/planner.hpp>

namespace tessera::cli {
namespace {
namespace vl = tessera::models::qwen2_5_vl;
using Options = Qwen2_5_VLExample::Options;

// ---- images and videos ----------------------------------------------------------

// preprocessor_config.json (Qwen2.5-VL's published values when the checkpoint
// has none), with --min-pixels / --max-pixels over it, checked against the
// vision tower's patch sizes.
vl::ImageProcessorConfig processor_config(const fs::path& model, const Options& o, const vl::VisionConfig& vision) {
  const fs::path file = model / "preprocessor_config.json";
  vl::ImageProcessorConfig cfg;
  std::error_code ec;
  if (fs::exists(file, ec)) {
    // A FormatError names the file and key (IoError: unreadable); main_guard
    // reports both as a bad input file, as it does for config.json.
    cfg = vl::ImageProcessorConfig::load(file);
  } else {
    std::cerr << "note: " << file.string() << " does not exist; using Qwen2.5-VL's published preprocessing\n";
  }
  if (o.min_pixels) cfg.min_pixels = *o.min_pixels;
  if (o.max_pixels) cfg.max_pixels = *o.max_pixels;
  if (cfg.min_pixels > cfg.max_pixels) {
    throw UsageError(detail::concat("min_pixels ", cfg.min_pixels, " is larger than max_pixels ", cfg.max_pixels,
                                    " (--min-pixels, --max-pixels or preprocessor_config.json)"));
  }
  if (cfg.patch_size != vision.patch_size || cfg.temporal_patch_size != vision.temporal_patch_size ||
      cfg.merge_size != vision.spatial_merge_size) {
    throw UsageError(detail::concat(
        file.string(), ": patch_size ", cfg.patch_size, ", temporal_patch_size ", cfg.temporal_patch_size,
        ", merge_size ", cfg.merge_size, " do not match config.json's vision_config (", vision.patch_size, ", ",
        vision.temporal_patch_size, ", ", vision.spatial_merge_size, ")"));
  }
  return cfg;
}

// "grid 1x12x16, 48 tokens": a grid and the placeholder tokens it becomes.
std::string grid_text(const vl::GridTHW& g, std::int64_t merge) {
  const std::int64_t tokens = g[0] * g[1] * g[2] / (merge * merge);
  return detail::concat("grid ", g[0], "x", g[1], "x", g[2], ", ", tokens, tokens == 1 ? " token" : " tokens");
}

void add_images(const Options& o, const vl::ImageProcessorConfig& cfg, std::int64_t merge, Inputs<vl::Prompt>& in) {
  for (std::size_t i = 0; i < o.images.size(); ++i) {
    const fs::path& file = o.images[i];
    const vl::RgbImage image = load_image_file("--image", file);
    try {
      in.prompt.images.push_back(vl::preprocess_image(image, cfg));
    } catch (const ValueError& e) {  // too small, too elongated
      throw UsageError(detail::concat("--image '", file.string(), "': ", reason(e)));
    }
    const vl::ProcessedImage& p = in.prompt.images.back();
    in.lines.push_back(detail::concat("image ", i + 1, "   ", file.string(), ": ", image.width, "x", image.height,
                                      " -> ", p.resized_width, "x", p.resized_height, ", ",
                                      grid_text(p.grid_thw, merge)));
  }
}

void add_videos(const Options& o, const vl::ImageProcessorConfig& cfg, std::int64_t merge, Inputs<vl::Prompt>& in) {
  const double fps = o.fps.value_or(2.0);
  for (std::size_t v = 0; v < o.videos.size(); ++v) {
    const std::vector<fs::path>& files = o.videos[v];
    std::vector<vl::RgbImage> frames;
    for (const fs::path& file : files) {
      frames.push_back(load_image_file("--video-frames", file));
      const vl::RgbImage& f = frames.back();
      if (f.width != frames.front().width || f.height != frames.front().height) {
        throw UsageError(detail::concat("--video-frames: frame '", file.string(), "' is ", f.width, "x", f.height,
                                        " but the first frame '", files.front().string(), "' is ",
                                        frames.front().width, "x", frames.front().height,
                                        "; the frames of a video must all have one size"));
      }
    }
    try {
      in.prompt.videos.push_back(vl::preprocess_video(frames, fps, cfg));
    } catch (const ValueError& e) {
      throw UsageError(detail::concat("--video-frames '", files.front().string(), "' ...: ", reason(e)));
    }
    const vl::ProcessedVideo& p = in.prompt.videos.back();
    in.lines.push_back(detail::concat("video ", v + 1, "   ", files.size(), files.size() == 1 ? " frame" : " frames",
                                      " from ", files.front().string(),
                                      ": ", frames.front().width, "x", frames.front().height, " at ", fps, " fps -> ",
                                      p.resized_width, "x", p.resized_height, " (", p.second_per_grid_t,
                                      " s per temporal patch), ", grid_text(p.grid_thw, merge)));
  }
}

// The prompt's ids with every placeholder expanded to its grid's tokens:
// from --prompt (chat template, or --raw text holding the placeholders), or
// --input-ids / --ids already expanded (then only their counts are checked).
void add_ids(const CommonOptions& c, const tokenizer::AnyTokenizer* tok, const vl::Config& config,
             Inputs<vl::Prompt>& in) {
  std::vector<vl::GridTHW> image_grids, video_grids;
  for (const auto& image : in.prompt.images) image_grids.push_back(image.grid_thw);
  for (const auto& video : in.prompt.videos) video_grids.push_back(video.grid_thw);
  const std::int64_t merge = config.vision.spatial_merge_size;
  if (auto ids = given_ids(c)) {
    in.prompt.ids = std::move(*ids);
    try {
      vl::check_placeholder_counts(in.prompt.ids, image_grids, video_grids, config.tokens, merge);
    } catch (const ValueError& e) {
      throw UsageError(detail::concat(c.ids ? "--ids: " : "--input-ids: ", reason(e)));
    }
  } else {
    const std::string text =
        c.raw ? *c.prompt
              : vl::chat_prompt(*c.prompt, static_cast<std::int64_t>(in.prompt.images.size()),
                                static_cast<std::int64_t>(in.prompt.videos.size()));
    try {
      in.prompt.ids =
          vl::expand_vision_placeholders(encode_prompt(*tok, text), image_grids, video_grids, config.tokens, merge);
    } catch (const ValueError& e) {  // --raw text whose placeholders do not match --image / --video-frames
      throw UsageError(detail::concat("--prompt: ", reason(e)));
    }
  }
  const auto count = [&](std::int64_t id) { return std::ranges::count(in.prompt.ids, id); };
  in.lines.push_back(detail::concat("prompt    ", prompt_source(c), ": ", in.prompt.ids.size(), " tokens, of them ",
                                    count(config.tokens.image), " image and ", count(config.tokens.video),
                                    " video placeholders"));
}

}  // namespace

std::string_view Qwen2_5_VLExample::usage() {
  return R"(usage: qwen2_5_vl --model DIR (--prompt TEXT | --input-ids "ID ID ..." | --ids ID,ID,...) [--image FILE]...
                  [--video-frames FILE FILE ...]... [options]

Runs a Qwen2.5-VL checkpoint on text, images and videos under any placement and streams the
answer to stdout.

input (exactly one of --prompt, --input-ids and --ids):
  --prompt TEXT             the user's text, in Qwen2.5-VL's chat template after the
                            images and videos (default system prompt, generation
                            prompt added); each image/video placeholder is expanded
                            to one token per merged patch of its grid
  --raw                     with --prompt: tokenize TEXT as it is, no template; it must
                            hold one <|image_pad|> per --image and one <|video_pad|>
                            per video, which are expanded
  --input-ids "1 2 3"       the prompt as token ids (spaces or commas between) with
                            the placeholders ALREADY expanded: their counts must
                            equal the images' and videos' token counts
  --ids 1,2,3               the same, read without a tokenizer; the generated ids go to
                            stdout, space-separated, instead of text

images and videos (in the order their placeholders appear):
  --image FILE              an image (JPEG, PNG, BMP, GIF); repeat for several
  --video-frames FILE...    one video: the frame files that follow, in order, up to
                            the next flag (all the same size); repeat for several
  --fps F                   the frame rate of the --video-frames files (default 2.0)
  --min-pixels N            smallest resized image area (default: preprocessor_config.json)
  --max-pixels N            largest resized image area (default: preprocessor_config.json)

)";
}

void Qwen2_5_VLExample::add_flags(FlagParser& parser, Options& o) {
  parser.add_value("--image", [&o](const std::string& v) { o.images.emplace_back(v); });
  parser.add_list("--video-frames", [&o](std::vector<std::string> files) {
    if (files.empty()) {
      throw UsageError("--video-frames: no frame files given; list them after the flag "
                       "(--video-frames f0.png f1.png ...)");
    }
    o.videos.emplace_back(files.begin(), files.end());
  });
  parser.add_value("--fps", [&o](const std::string& v) {
    o.fps = parse_number("--fps", v);
    if (!(*o.fps > 0.0)) throw UsageError(detail::concat("--fps: must be > 0, got ", v));
  });
  parser.add_value("--min-pixels", [&o](const std::string& v) { o.min_pixels = parse_positive("--min-pixels", v); });
  parser.add_value("--max-pixels", [&o](const std::string& v) { o.max_pixels = parse_positive("--max-pixels", v); });
}

void Qwen2_5_VLExample::check(const CommonOptions&, const Options& o) {
  if (o.fps && o.videos.empty()) throw UsageError("--fps applies to --video-frames only");
}

placement::Plan Qwen2_5_VLExample::plan(const fs::path& dir, const Config&, const placement::PlanRequest& r) {
  return placement::plan_model(models::qwen2_5_vl::describe(dir), r);
}

Inputs<vl::Prompt> Qwen2_5_VLExample::prepare(const CommonOptions& c, const Options& o,
                                              const tokenizer::AnyTokenizer* tok, const Config& config) {
  Inputs<vl::Prompt> in;
  if (!o.images.empty() || !o.videos.empty()) {
    const vl::ImageProcessorConfig cfg = processor_config(c.model, o, config.vision);
    add_images(o, cfg, config.vision.spatial_merge_size, in);
    add_videos(o, cfg, config.vision.spatial_merge_size, in);
  }
  add_ids(c, tok, config, in);
  return in;
}

// The vision pass of the plan: the tower runs over all images at once, then
// all videos, with the image features still alive, so the plan takes the
// total; without a prompt (--plan-only), one image of the processor's
// max_pixels.
void Qwen2_5_VLExample::plan_sizes(const CommonOptions& c, const Options& o, const Config& config,
                                   const Prompt* prompt, placement::PlanRequest& r) {
  if (prompt == nullptr) {
    r.max_image_pixels = processor_config(c.model, o, config.vision).max_pixels;
    return;
  }
  std::int64_t patches = 0;
  for (const auto& i : prompt->images) patches += i.pixel_values.dim(0);
  for (const auto& v : prompt->videos) patches += v.pixel_values.dim(0);
  r.max_image_patches = patches;
}

}  // namespace tessera::cli

int main(int argc, char** argv) { return tessera::cli::model_main<tessera::cli::Qwen2_5_VLExample>(argc, argv); }
