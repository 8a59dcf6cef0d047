// qwen2_5_vl: run a Qwen2.5-VL checkpoint (a Hugging Face directory with
// config.json, the safetensors weights, tokenizer.json, preprocessor_config.json
// and optionally generation_config.json) on text, images and videos, and
// stream the answer.
//
//   qwen2_5_vl --model DIR --image cat.jpg --prompt "What is in the picture?"
//   qwen2_5_vl --model DIR --video-frames f0.png f1.png f2.png f3.png --fps 2 --prompt "What happens?"
//
// The answer goes to stdout as it is produced (one flush per decoded chunk,
// then a final newline); everything else (the inputs as processed, the
// placement, the summary, the memory report, --print-ids, errors) goes to
// stderr. Exit codes: 0 success, 2 bad input (flags, numbers, paths, image
// files, ids), 1 any other failure. Run with --help for the flags.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "cli_common.hpp"
#include "placement_cli.hpp"
#include <tessera/io/checkpoint.hpp>
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/models/qwen2_5_vl_description.hpp>
#include <tessera/models/qwen2_5_vl_processor.hpp>

namespace {
using namespace tessera;
using namespace tessera::cli;
namespace vl = tessera::models::qwen2_5_vl;

constexpr const char* kUsageInput = R"(usage: qwen2_5_vl --model DIR (--prompt TEXT | --input-ids "ID ID ...") [--image FILE]...
                  [--video-frames FILE FILE ...]... [options]

Runs a Qwen2.5-VL checkpoint on text, images and videos and streams the answer to stdout.

input (exactly one of --prompt and --input-ids):
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

images and videos (in the order their placeholders appear):
  --image FILE              an image (JPEG, PNG, BMP, GIF); repeat for several
  --video-frames FILE...    one video: the frame files that follow, in order, up to
                            the next flag (all the same size); repeat for several
  --fps F                   the frame rate of the --video-frames files (default 2.0)
  --min-pixels N            smallest resized image area (default: preprocessor_config.json)
  --max-pixels N            largest resized image area (default: preprocessor_config.json)

)";

struct Options {
  CommonOptions common;
  PlacementOptions placement;
  std::vector<fs::path> images;
  std::vector<std::vector<fs::path>> videos;
  std::optional<double> fps;
  std::optional<std::int64_t> min_pixels, max_pixels;
};

Options parse_args(int argc, char** argv) {
  Options o;
  FlagParser parser;
  add_common_flags(parser, o.common);
  add_placement_flags(parser, o.placement);
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
  parser.parse(argc, argv);
  if (o.common.help) return o;
  check_common_options(o.common, !o.placement.plan_only);
  if (o.placement.placement && o.common.device != "cpu") {
    throw UsageError("give --placement or --device, not both (--device cuda is --placement cuda)");
  }
  if (o.fps && o.videos.empty()) throw UsageError("--fps applies to --video-frames only");
  return o;
}

// ---- images and videos ----------------------------------------------------------

// preprocessor_config.json (Qwen2.5-VL's published values when the checkpoint
// has none), with --min-pixels / --max-pixels over it, checked against the
// vision tower's patch sizes.
vl::ImageProcessorConfig processor_config(const Options& o, const vl::VisionConfig& vision) {
  const fs::path file = o.common.model / "preprocessor_config.json";
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

// Decodes an image file named by `flag`; every failure is bad input naming both.
vl::RgbImage load_image(std::string_view flag, const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) {
    throw UsageError(detail::concat(flag, ": '", file.string(), "' ",
                                    fs::exists(file, ec) ? "is not a file" : "does not exist"));
  }
  try {
    return vl::load_rgb_image(file);
  } catch (const Error& e) {  // IoError, FormatError: unreadable or undecodable
    throw UsageError(detail::concat(flag, ": ", reason(e)));
  }
}

// "grid 1x12x16, 48 tokens": a grid and the placeholder tokens it becomes.
std::string grid_text(const vl::GridTHW& g, std::int64_t merge) {
  const std::int64_t tokens = g[0] * g[1] * g[2] / (merge * merge);
  return detail::concat("grid ", g[0], "x", g[1], "x", g[2], ", ", tokens, tokens == 1 ? " token" : " tokens");
}

struct Inputs {
  vl::Prompt prompt;
  std::vector<std::string> lines;  // what was processed, for the summary
  double seconds = 0;
};

void add_images(const Options& o, const vl::ImageProcessorConfig& cfg, std::int64_t merge, Inputs& in) {
  for (std::size_t i = 0; i < o.images.size(); ++i) {
    const fs::path& file = o.images[i];
    const vl::RgbImage image = load_image("--image", file);
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

void add_videos(const Options& o, const vl::ImageProcessorConfig& cfg, std::int64_t merge, Inputs& in) {
  const double fps = o.fps.value_or(2.0);
  for (std::size_t v = 0; v < o.videos.size(); ++v) {
    const std::vector<fs::path>& files = o.videos[v];
    std::vector<vl::RgbImage> frames;
    for (const fs::path& file : files) {
      frames.push_back(load_image("--video-frames", file));
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
// --input-ids already expanded (then only their counts are checked).
void add_ids(const Options& o, const tokenizer::Tokenizer& tok, const vl::Config& config, Inputs& in) {
  std::vector<vl::GridTHW> image_grids, video_grids;
  for (const auto& image : in.prompt.images) image_grids.push_back(image.grid_thw);
  for (const auto& video : in.prompt.videos) video_grids.push_back(video.grid_thw);
  const std::int64_t merge = config.vision.spatial_merge_size;
  const CommonOptions& c = o.common;
  if (c.input_ids) {
    in.prompt.ids = parse_ids(*c.input_ids);
    try {
      vl::check_placeholder_counts(in.prompt.ids, image_grids, video_grids, config.tokens, merge);
    } catch (const ValueError& e) {
      throw UsageError(detail::concat("--input-ids: ", reason(e)));
    }
  } else {
    const std::string text =
        c.raw ? *c.prompt
              : vl::chat_prompt(*c.prompt, static_cast<std::int64_t>(in.prompt.images.size()),
                                static_cast<std::int64_t>(in.prompt.videos.size()));
    try {
      in.prompt.ids =
          vl::expand_vision_placeholders(encode_prompt(tok, text), image_grids, video_grids, config.tokens, merge);
    } catch (const ValueError& e) {  // --raw text whose placeholders do not match --image / --video-frames
      throw UsageError(detail::concat("--prompt: ", reason(e)));
    }
  }
  check_ids(in.prompt.ids, config.text.vocab_size);
  const auto count = [&](std::int64_t id) { return std::ranges::count(in.prompt.ids, id); };
  const std::string source =
      c.input_ids ? std::string("--input-ids")
                  : detail::concat("\"", *c.prompt, "\"", c.raw ? " (raw)" : " (chat template)");
  in.lines.push_back(detail::concat("prompt    ", source, ": ", in.prompt.ids.size(), " tokens, of them ",
                                    count(config.tokens.image), " image and ", count(config.tokens.video),
                                    " video placeholders"));
}

Inputs prepare_inputs(const Options& o, const tokenizer::Tokenizer& tok, const vl::Config& config) {
  const auto start = Clock::now();
  Inputs in;
  if (!o.images.empty() || !o.videos.empty()) {
    const vl::ImageProcessorConfig cfg = processor_config(o, config.vision);
    add_images(o, cfg, config.vision.spatial_merge_size, in);
    add_videos(o, cfg, config.vision.spatial_merge_size, in);
  }
  add_ids(o, tok, config, in);
  in.seconds = seconds(Clock::now() - start);
  return in;
}

// ---- the placement ------------------------------------------------------------

// What the planner is asked for: this policy's stages, the budgets, the
// strategy and pins, and the sizes of this run (the prompt, its images and
// the generation length; without a prompt, --max-context tokens of text and
// one image of the processor's max_pixels).
template <DevicePlacement P, FloatType T>
placement::PlanRequest plan_request(const Options& o, const vl::Config& config, const Inputs* in,
                                    std::int64_t context, const std::string& communicator, bool one_process) {
  placement::PlanRequest r;
  r.stages = plan_stages<P>();
  r.one_process = one_process;
  r.element_size = sizeof(T);
  r.max_context = context;
  r.budgets = o.placement.max_memory;
  r.strategy = placement::parse_strategy(o.placement.strategy);
  r.pins.vision = o.placement.vision_stage;
  r.pins.embed = o.placement.embed_stage;
  r.pins.head = o.placement.head_stage;
  r.communicator = communicator;
  if (in != nullptr) {
    r.max_prompt = static_cast<std::int64_t>(in->prompt.ids.size());
    // The tower runs over all images at once, then all videos, with the
    // image features still alive: the plan takes the total.
    std::int64_t patches = 0;
    for (const auto& i : in->prompt.images) patches += i.pixel_values.dim(0);
    for (const auto& v : in->prompt.videos) patches += v.pixel_values.dim(0);
    r.max_image_patches = patches;
  } else {
    r.max_prompt = context;
    r.max_image_pixels = processor_config(o, config.vision).max_pixels;
  }
  return r;
}

// ---- the run ------------------------------------------------------------------

template <DevicePlacement P, FloatType T>
int run_placed(const Options& o, const std::string& label, const comm::MpiSession* mpi) {
  const CommonOptions& c = o.common;
  const vl::Config config = vl::Config::load(c.model);
  if (o.placement.plan_only && !c.prompt && !c.input_ids) {
    const std::int64_t context = c.max_context.value_or(4096);
    const auto plan = placement::plan_qwen2_5_vl(c.model, plan_request<P, T>(o, config, nullptr, context, "in-process", mpi == nullptr));
    std::cout << "placement " << label << "\n" << plan.table();
    return 0;
  }
  const auto tok = tokenizer::Tokenizer::from_file(c.model / "tokenizer.json");
  const Inputs in = prepare_inputs(o, tok, config);
  const vl::Prompt& prompt = in.prompt;
  const auto prompt_tokens = static_cast<std::int64_t>(prompt.ids.size());
  const std::int64_t context_limit = c.max_context.value_or(config.text.max_position_embeddings);
  const auto options = sampling_options(c, io::GenerationConfig::load_or_default(c.model, config.text), prompt_tokens,
                                        context_limit);
  const std::int64_t context = std::min(context_limit, prompt_tokens + options.max_new_tokens);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "-- qwen2_5_vl: " << c.model.string() << "\n";
  for (const std::string& line : in.lines) os << line << "\n";
  os << "processed in " << in.seconds << " s\n";
  std::cerr << os.str();
  if (c.print_ids) print_ids("prompt ids", prompt.ids);

  // The plan, from the headers, before anything is loaded: a placement that
  // does not fit fails here with every device's need and budget.
  placement::Comms<P> comms = make_comms<P>(mpi);
  const std::string described = describe_comms<P>(comms);
  const auto plan = placement::plan_qwen2_5_vl(
      c.model, plan_request<P, T>(o, config, &in, context, described.empty() ? "in-process" : described, mpi == nullptr));
  (o.placement.plan_only ? std::cout : std::cerr) << "-- placement " << label << "\n" << plan.table();
  if (o.placement.plan_only) return 0;
  apply_budgets<P>(plan);

  const auto load_start = Clock::now();
  const io::Checkpoint checkpoint = io::Checkpoint::open(c.model);
  const models::Qwen2_5_VL<P, T> model(config, checkpoint, plan.layout, std::move(comms));
  RunStats stats;
  stats.prompt_tokens = prompt_tokens;
  stats.load_s = seconds(Clock::now() - load_start);
  if (c.logits_out) write_prompt_logits(model, prompt, prompt_tokens, *c.logits_out);
  std::cerr << "-- answer (stdout)\n";
  generate_streamed(model, prompt, options, tok, c.print_ids, stats);
  print_summary("qwen2_5_vl", stats, label);
  print_peaks_against_plan<P>(plan);
  return 0;
}

int run(const Options& o) {
  check_model_dir(o.common.model);
  if (o.common.logits_out) check_output_path(*o.common.logits_out);
  const std::string spec = o.placement.placement.value_or(o.common.device);
  // Under mpirun each process is one rank of a tensor-parallel group; rank 0
  // speaks, the others compute silently (their errors still reach stderr:
  // the guard gives std::cerr back while an exception unwinds).
  std::unique_ptr<comm::MpiSession> mpi;
  std::ostringstream silenced;
  struct RestoreCerr {
    std::streambuf* saved = nullptr;
    ~RestoreCerr() {
      if (saved != nullptr) std::cerr.rdbuf(saved);
    }
  } restore;
  if (launched_by_mpirun()) {
    if (spec.rfind("tp:", 0) != 0) {
      throw UsageError(detail::concat("--placement ", spec, " under mpirun: only tensor-parallel placements "
                                      "(tp:...) run one rank per process"));
    }
    mpi = std::make_unique<comm::MpiSession>();
    if (mpi->rank() != 0) {
      std::cout.flush();
      if (std::freopen("/dev/null", "w", stdout) == nullptr) throw IoError("cannot silence stdout of mpi rank > 0");
      restore.saved = std::cerr.rdbuf(silenced.rdbuf());
    }
  }
  return run_with_placement(spec, [&]<DevicePlacement P, FloatType T>(const std::string& label) {
    return run_placed<P, T>(o, label, mpi.get());
  });
}

}  // namespace

int main(int argc, char** argv) {
  return main_guard("qwen2_5_vl", [&] {
    const Options options = parse_args(argc, argv);
    if (options.common.help) {
      std::cout << kUsageInput << kDecodingHelp << "\n" << kPlacementHelp << kRunningHelp;
      return 0;
    }
    return run(options);
  });
}
