// The InternVL2 fixtures (tests/fixtures/internvl2, written by
// tools/fixtures/make_internvl2_fixtures.py) as the golden and placement
// tests read them: five tiny checkpoints in the published layout (one per
// language-model family and tower style), each case's prompt built from the
// committed images through tessera's processor, conversation template and
// the fixture's tokenizer, and the oracle's arrays.
#pragma once

#include <tessera/generate/chat.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/internvl2.hpp>
#include <tessera/models/internvl2_processor.hpp>
#include <tessera/tokenizer/auto.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "golden_util.hpp"
#include "test_util.hpp"

namespace tessera::testing::internvl2_fixtures {

namespace iv = models::internvl2;
namespace fs = std::filesystem;
using Ids = std::vector<std::int64_t>;

inline fs::path root() { return tessera::testing::fixtures_dir() / "internvl2"; }
inline fs::path model_dir(const std::string& model) { return root() / model; }

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;
  Reference()
      : meta(nlohmann::json::parse(std::ifstream(root() / "reference.json"))),
        arrays(io::SafetensorsFile::open(root() / "reference.safetensors")) {}
  Ids ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  Tensor<Host, float> floats(const std::string& name) const { return arrays.load<Host, float>(name); }
  bool has(const std::string& name) const { return arrays.find(name) != nullptr; }
};

inline const Reference& reference() {
  static const Reference ref;
  return ref;
}

// "model.case" for every case of every fixture model.
inline std::vector<std::string> all_cases() {
  std::vector<std::string> out;
  for (const auto& [model, m] : reference().meta["models"].items()) {
    for (const auto& [c, unused] : m["cases"].items()) out.push_back(model + "." + c);
  }
  return out;
}

inline std::pair<std::string, std::string> split_case(const std::string& id) {
  const auto dot = id.find('.');
  return {id.substr(0, dot), id.substr(dot + 1)};
}

inline const nlohmann::json& case_meta(const std::string& id) {
  const auto [model, c] = split_case(id);
  return reference().meta["models"][model]["cases"][c];
}

inline const iv::Config& config_of(const std::string& model) {
  static std::map<std::string, iv::Config> configs;
  if (!configs.contains(model)) configs.emplace(model, iv::Config::load(model_dir(model)));
  return configs.at(model);
}

inline const tokenizer::AnyTokenizer& tokenizer_of(const std::string& model) {
  static std::map<std::string, tokenizer::AnyTokenizer> toks;
  if (!toks.contains(model)) toks.emplace(model, tokenizer::load_tokenizer(model_dir(model)));
  return toks.at(model);
}

// Case `id`'s images through tessera's processor: config.json's tiling
// with the case's max_num per image.
inline std::vector<iv::ProcessedImage> images_of(const std::string& id) {
  const auto [model, c] = split_case(id);
  const auto& meta = case_meta(id);
  std::vector<iv::ProcessedImage> images;
  for (std::size_t i = 0; i < meta["images"].size(); ++i) {
    iv::ProcessorConfig cfg = config_of(model).processor;
    cfg.max_num = meta["max_num"][i].get<std::int64_t>();
    images.push_back(iv::load_image(root() / meta["images"][i].get<std::string>(), cfg));
  }
  return images;
}

// The case's prompt text as chat() builds it: the question in the
// checkpoint's conversation template, each "<image>" expanded.
inline std::string prompt_text(const std::string& id, const std::vector<iv::ProcessedImage>& images) {
  const auto [model, c] = split_case(id);
  const iv::Config& config = config_of(model);
  const generate::ChatMessage user{"user", case_meta(id)["question"].get<std::string>()};
  const std::string rendered = generate::render(config.chat_template, std::span(&user, 1), true, config.system_message);
  std::vector<std::size_t> tiles;
  for (const auto& image : images) tiles.push_back(static_cast<std::size_t>(image.tiles()));
  return generate::internvl_expand_images(rendered, tiles, static_cast<std::size_t>(config.tokens_per_tile()));
}

// Case `id` as the model takes it, built by tessera end to end.
inline iv::Prompt prompt_of(const std::string& id) {
  const auto [model, c] = split_case(id);
  iv::Prompt p;
  p.images = images_of(id);
  const auto& tok = tokenizer_of(model);
  for (const auto t : tok.encode(prompt_text(id, p.images))) p.ids.push_back(t);
  p.image_context_id = static_cast<std::int64_t>(tok.token_to_id("<IMG_CONTEXT>").value());
  return p;
}

inline Tensor<Host, float> row(const Tensor<Host, float>& t, std::int64_t r) { return to<Host>(t.slice(0, r, r + 1)); }

}  // namespace tessera::testing::internvl2_fixtures
