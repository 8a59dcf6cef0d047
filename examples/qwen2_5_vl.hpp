// examples/qwen2_5_vl.hpp — the qwen2_5_vl example's family for the example
// driver (model_main.hpp): a Qwen2.5-VL checkpoint, its prompt as token ids
// with the processed images and videos. What run_placed needs; the input
// handling (images, videos, the chat template) and main() are in
// qwen2_5_vl.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "model_main.hpp"
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/models/qwen2_5_vl_processor.hpp>

namespace tessera::cli {

struct Qwen2_5_VLExample {
  static constexpr std::string_view name = "qwen2_5_vl";

  struct Options {
    std::vector<fs::path> images;
    std::vector<std::vector<fs::path>> videos;
    std::optional<double> fps;
    std::optional<std::int64_t> min_pixels, max_pixels;
  };
  using Config = models::qwen2_5_vl::Config;
  using Prompt = models::qwen2_5_vl::Prompt;
  template <DevicePlacement P, FloatType T>
  using Model = models::Qwen2_5_VL<P, T>;

  static const io::DecoderConfig& text_config(const Config& c) { return c.text; }
  static std::span<const std::int64_t> prompt_ids(const Prompt& p) { return p.ids; }
  static const Prompt& model_input(const Prompt& p) { return p; }

  template <DevicePlacement P, FloatType T>
  static Model<P, T> load(const Config& c, const io::Checkpoint& checkpoint, placement::Layout layout,
                          placement::Comms<P> comms) {
    return Model<P, T>(c, checkpoint, std::move(layout), std::move(comms));
  }

  // qwen2_5_vl.cpp
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
