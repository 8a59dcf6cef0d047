// examples/text_generate.hpp — text_generate's family for the example driver
// (model_main.hpp): any decoder-only language model tessera runs (Qwen2 /
// Qwen2.5, Llama, Phi-3, InternLM2; config.json says which), its prompt
// as token ids. What run_placed needs; the input handling and main() are in
// text_generate.cpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "model_main.hpp"
#include <tessera/models/decoder.hpp>

namespace tessera::cli {

struct TextGenerate {
  static constexpr std::string_view name = "text_generate";

  struct Options {};  // the common and placement flags only
  struct Config {
    io::DecoderConfig text;
    models::DecoderWeights weights;  // the family's weight names
  };
  using Prompt = std::vector<std::int64_t>;
  template <DevicePlacement P, FloatType T>
  using Model = models::Decoder<P, T>;
  static constexpr const char* kPrefix = "model.";  // a *ForCausalLM's language model

  static const io::DecoderConfig& text_config(const Config& c) { return c.text; }
  static std::span<const std::int64_t> prompt_ids(const Prompt& p) { return p; }
  static std::span<const std::int64_t> model_input(const Prompt& p) { return p; }

  template <DevicePlacement P, FloatType T>
  static Model<P, T> load(const Config& c, const io::Checkpoint& checkpoint, placement::Layout layout,
                          placement::Comms<P> comms) {
    return Model<P, T>(c.text, c.weights, checkpoint, kPrefix, c.weights.lm_head, std::move(layout),
                       std::move(comms));
  }

  // text_generate.cpp
  static std::string_view usage();
  static void add_flags(FlagParser&, Options&) {}
  static Config load_config(const std::filesystem::path& dir);
  static placement::Plan plan(const std::filesystem::path& dir, const Config& c, const placement::PlanRequest& r);
  static Inputs<Prompt> prepare(const CommonOptions& c, const Options&, const tokenizer::AnyTokenizer* tok,
                                const Config& config);
};

}  // namespace tessera::cli
