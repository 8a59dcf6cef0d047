// The MiniCPM-V fixtures (tests/fixtures/minicpm_v, written by
// tools/fixtures/make_minicpm_v_fixtures.py) as the model's golden,
// placement and planner tests read them: each case's prompt built from the
// committed images through tessera's own processor and the fixture's
// tokenizer, the oracle's arrays, and the golden comparisons.
#pragma once

#include <tessera/io/safetensors.hpp>
#include <tessera/models/minicpm_v.hpp>
#include <tessera/models/minicpm_v_processor.hpp>
#include <tessera/tokenizer/bpe.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "golden_util.hpp"
#include "test_util.hpp"

namespace tessera::testing::minicpm_v_fixtures {

namespace mv = models::minicpm_v;
namespace fs = std::filesystem;
using Ids = std::vector<std::int64_t>;

inline fs::path root() { return tessera::testing::fixtures_dir() / "minicpm_v"; }
inline fs::path model_dir() { return root() / "model"; }

// The cases run as one prompt each (the batch case has its own arrays).
inline const std::vector<std::string>& cases() {
  static const std::vector<std::string> c = {"text_only", "one_image", "several_images", "strip", "video"};
  return c;
}

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

inline const tokenizer::Tokenizer& fixture_tokenizer() {
  static const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_file(model_dir() / "tokenizer.json");
  return tok;
}

// The committed file of image NAME: images/NAME.png, the video's frameK
// as images/video/frame_K.png.
inline fs::path image_file(const std::string& name) {
  if (name.starts_with("frame")) return root() / "images" / "video" / ("frame_" + name.substr(5) + ".png");
  return root() / "images" / (name + ".png");
}

// The processor settings of a case: preprocessor_config.json, made the
// model card's video recipe for the video case.
inline mv::ProcessorConfig processor_of(const std::string& c) {
  const mv::ProcessorConfig cfg = mv::ProcessorConfig::load(model_dir());
  return c == "video" ? mv::for_video(cfg) : cfg;
}

// The images of case `c` through tessera's processor.
inline std::vector<mv::ProcessedImage> images_of(const std::string& c) {
  const mv::ProcessorConfig cfg = processor_of(c);
  std::vector<mv::ProcessedImage> images;
  for (const auto& name : reference().meta["cases"][c]["images"]) {
    const fs::path file = image_file(name.get<std::string>());
    images.push_back(mv::process_image(io::load_rgb_image(file), cfg, file.string()));
  }
  return images;
}

// Case `c`'s prompt: the reference's ids, the spans tessera finds in them,
// the images as tessera processes them.
inline mv::Prompt prompt_of(const std::string& c) {
  mv::Prompt p;
  p.ids = reference().ints(c + ".input_ids");
  p.bounds = mv::image_bounds(p.ids, mv::SpecialTokens::from(fixture_tokenizer()));
  p.images = images_of(c);
  return p;
}

inline Tensor<Host, float> row(const Tensor<Host, float>& t, std::int64_t r) { return to<Host>(t.slice(0, r, r + 1)); }

}  // namespace tessera::testing::minicpm_v_fixtures
