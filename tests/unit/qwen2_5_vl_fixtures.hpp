// The Qwen2.5-VL fixtures (tests/fixtures/qwen2_5_vl) as the golden,
// placement and planner tests read them: the case prompts built from the
// committed images through tessera's own processor, the transformers
// references, and the comparisons the golden tolerance uses.
#pragma once

#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2_5_vl.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "golden_util.hpp"
#include "test_util.hpp"

namespace tessera::testing::qwen2_5_vl_fixtures {

namespace vl = models::qwen2_5_vl;
namespace fs = std::filesystem;
using Ids = std::vector<std::int64_t>;

inline fs::path root() { return tessera::testing::fixtures_dir(); }
inline fs::path vl_dir(const std::string& variant) { return root() / "qwen2_5_vl" / variant; }

inline const std::vector<std::string>& cases() {
  static const std::vector<std::string> c = {"text_only", "one_image", "two_images", "video"};
  return c;
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;
  explicit Reference(const std::string& variant)
      : meta(nlohmann::json::parse(std::ifstream(vl_dir(variant) / "reference.json"))),
        arrays(io::SafetensorsFile::open(vl_dir(variant) / "reference.safetensors")) {}
  Ids ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  Tensor<Host, float> floats(const std::string& name) const { return arrays.load<Host, float>(name); }
  bool has(const std::string& name) const { return arrays.find(name) != nullptr; }
};

// The reference names of a case's outputs (the video's original-rule run).
inline std::string outputs_of(const std::string& c) { return c == "video" ? "video.v4" : c; }

inline vl::Prompt prompt_of(const Reference& ref, const std::string& variant, const std::string& c) {
  const auto& meta = ref.meta["cases"][c];
  const auto cfg = vl::ImageProcessorConfig::load(vl_dir(variant) / "preprocessor_config.json");
  const fs::path images = root() / "qwen2_5_vl" / "images";
  vl::Prompt p;
  p.ids = ref.ints(c + ".input_ids");
  for (const auto& name : meta["images"]) {
    p.images.push_back(vl::preprocess_image(vl::load_rgb_image(images / (name.get<std::string>() + ".png")), cfg));
  }
  if (!meta["video"].is_null()) {
    std::vector<vl::RgbImage> frames;
    const fs::path dir = images / meta["video"].get<std::string>();
    for (int i = 0; fs::exists(dir / ("frame_" + std::to_string(i) + ".png")); ++i) {
      frames.push_back(vl::load_rgb_image(dir / ("frame_" + std::to_string(i) + ".png")));
    }
    p.videos.push_back(vl::preprocess_video(frames, meta["fps"].get<double>(), cfg));
  }
  return p;
}

inline Tensor<Host, float> row(const Tensor<Host, float>& t, std::int64_t r) { return to<Host>(t.slice(0, r, r + 1)); }

}  // namespace tessera::testing::qwen2_5_vl_fixtures
