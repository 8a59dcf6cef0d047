// examples/internvl2.hpp — the internvl2 example's family for the example
// driver (model_main.hpp): an InternVL2 checkpoint (1B … 76B), its prompt
// as token ids with <IMG_CONTEXT> runs and the processed tiles. What
// run_placed needs; the input handling (images, video frames, the
// conversation template) and main() are in internvl2.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "model_main.hpp"
#include <tessera/models/internvl2.hpp>
#include <tessera/models/internvl2_processor.hpp>

namespace tessera::cli {

struct InternVL2Example {
  static constexpr std::string_view name = "internvl2";
  // InternVL's own multi-GPU recipe (split_model) unless --strategy says otherwise.
  static constexpr std::string_view default_strategy = "internvl_split";

  struct Options {
    std::vector<fs::path> images;
    std::vector<fs::path> video_frames;
    std::optional<std::int64_t> max_num;
  };
  using Config = models::internvl2::Config;
  using Prompt = models::internvl2::Prompt;
  template <DevicePlacement P, FloatType T>
  using Model = models::InternVL2<P, T>;

  static const io::DecoderConfig& text_config(const Config& c) { return c.text; }
  static std::span<const std::int64_t> prompt_ids(const Prompt& p) { return p.ids; }
  static const Prompt& model_input(const Prompt& p) { return p; }

  template <DevicePlacement P, FloatType T>
  static Model<P, T> load(const Config& c, const io::Checkpoint& checkpoint, placement::Layout layout,
                          placement::Comms<P> comms) {
    return Model<P, T>(c, checkpoint, std::move(layout), std::move(comms));
  }

  // internvl2.cpp
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
