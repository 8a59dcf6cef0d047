// examples/minicpm_v.hpp — the minicpm_v example's family for the example
// driver (model_main.hpp): a MiniCPM-V 2.6 checkpoint, its prompt as token
// ids with the feature spans and the processed images. What run_placed
// needs; the input handling (images, video frames, the chat template) and
// main() are in minicpm_v.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "model_main.hpp"
#include <tessera/models/minicpm_v.hpp>
#include <tessera/models/minicpm_v_processor.hpp>

namespace tessera::cli {

struct MiniCPM_VExample {
  static constexpr std::string_view name = "minicpm_v";

  struct Options {
    std::vector<fs::path> images;
    std::vector<fs::path> video_frames;
    std::optional<std::int64_t> max_slice_nums;
  };
  using Config = models::minicpm_v::Config;
  using Prompt = models::minicpm_v::Prompt;
  template <DevicePlacement P, FloatType T>
  using Model = models::MiniCPM_V<P, T>;

  static const io::DecoderConfig& text_config(const Config& c) { return c.text; }
  static std::span<const std::int64_t> prompt_ids(const Prompt& p) { return p.ids; }
  static const Prompt& model_input(const Prompt& p) { return p; }

  template <DevicePlacement P, FloatType T>
  static Model<P, T> load(const Config& c, const io::Checkpoint& checkpoint, placement::Layout layout,
                          placement::Comms<P> comms) {
    return Model<P, T>(c, checkpoint, std::move(layout), std::move(comms));
  }

  // minicpm_v.cpp
  static std::string_view usage();
  static void add_flags(FlagParser& parser, Options& o);
  static void check(const CommonOptions& c, const Options& o);
  static Config load_config(const std::filesystem::path& dir) { return Config::load(dir); }
  static placement::Plan plan(const std::filesystem::path& dir, const Config&, const placement::PlanRequest& r);
  static Inputs<Prompt> prepare(const CommonOptions& c, const Options& o, const tokenizer::AnyTokenizer* tok,
                                const Config& config);
  static void plan_sizes(const CommonOptions& c, const Options& o, const Config& config, const Prompt* prompt,
                         placement::PlanRequest& r);
};

}  // namespace tessera::cli
