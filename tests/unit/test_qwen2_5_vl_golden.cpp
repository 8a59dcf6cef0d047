// Golden tests of models/qwen2_5_vl.hpp against transformers'
// Qwen2_5_VLForConditionalGeneration. tests/fixtures/qwen2_5_vl/{legacy,tied}
// are checkpoint directories in the two published layouts (visual.* /
// model.* / lm_head.weight in two shards with a 4.x config.json; and
// model.visual.* / model.language_model.* with tied embeddings and a 5.x
// config.json), with references written by
// tools/fixtures/make_qwen2_5_vl_fixtures.py (pinned torch, transformers,
// Pillow). Each case starts from the committed PNG files, so the processor,
// the vision tower, get_rope_index and the decoder are checked together:
// CPU float32 must give the reference's M-RoPE positions, the logits at
// every prompt position within 1e-4 of their largest magnitude, the decode
// steps after the prompt, and the 32 greedy tokens exactly.
//
// The video case follows the original Qwen rule for the position after a
// video (its largest position + 1, as vLLM and transformers 4.5x do);
// transformers 5.23 advances by max(h, w) / merge instead. The fixture
// keeps both: "video.*" is 5.23's run and "video.v4.*" the run with the
// original positions, which is what this implementation must reproduce.
#include <tessera/generate/generate.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/ops/elementwise.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "qwen2_5_vl_fixtures.hpp"
#include "test_util.hpp"

namespace tessera::testing {
namespace {

using namespace qwen2_5_vl_fixtures;
using Model = models::Qwen2_5_VL<Single<Cpu<0>>, float>;

fs::path fixtures() { return root() / "qwen2_5_vl"; }

const Reference& reference(const std::string& variant) {
  static const std::map<std::string, Reference> refs = [] {
    std::map<std::string, Reference> m;
    m.emplace("legacy", Reference("legacy"));
    m.emplace("tied", Reference("tied"));
    return m;
  }();
  return refs.at(variant);
}

const Model& model(const std::string& variant) {
  static const Model legacy = Model::load(fixtures() / "legacy");
  static const Model tied = Model::load(fixtures() / "tied");
  return variant == "tied" ? tied : legacy;
}

// The case's prompt from the committed image files, through tessera's own
// processor (preprocessor_config.json of the checkpoint).
vl::Prompt prompt_of(const std::string& variant, const std::string& c) {
  return qwen2_5_vl_fixtures::prompt_of(reference(variant), variant, c);
}

class Qwen2_5_VLGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen2_5_VLGolden, LoadsItsLayout) {
  const auto& layout = model(GetParam()).layout();
  EXPECT_EQ(layout.vision, GetParam() == "tied" ? "model.visual." : "visual.");
  EXPECT_EQ(model(GetParam()).config().text.tie_word_embeddings, GetParam() == "tied");
}

TEST_P(Qwen2_5_VLGolden, ProcessorGivesTheReferenceGrids) {
  const Reference& ref = reference(GetParam());
  for (const std::string& c : {std::string("one_image"), std::string("two_images")}) {
    const auto p = prompt_of(GetParam(), c);
    const Ids grids = ref.ints(c + ".image_grid_thw");
    ASSERT_EQ(grids.size(), 3 * p.images.size()) << c;
    for (std::size_t i = 0; i < p.images.size(); ++i) {
      EXPECT_EQ(Ids(p.images[i].grid_thw.begin(), p.images[i].grid_thw.end()),
                Ids(grids.begin() + static_cast<std::ptrdiff_t>(3 * i), grids.begin() + static_cast<std::ptrdiff_t>(3 * i + 3)))
          << c << " image " << i;
    }
  }
  const auto v = prompt_of(GetParam(), "video");
  const Ids vgrid = ref.ints("video.video_grid_thw");
  EXPECT_EQ(Ids(v.videos[0].grid_thw.begin(), v.videos[0].grid_thw.end()), vgrid);
  EXPECT_FLOAT_EQ(static_cast<float>(v.videos[0].second_per_grid_t), ref.floats("video.second_per_grid_ts").span()[0]);
}

// tessera's processor on the committed PNGs against the PIL image processor
// (tests/fixtures/qwen2_5_vl/processor): pixel values within 1e-5 after
// normalisation and identical grids, including an image that hits
// max_pixels and one that hits min_pixels, and the video.
TEST(Qwen2_5_VLProcessor, PixelValuesMatchThePilImageProcessor) {
  const fs::path dir = fixtures() / "processor";
  const auto ref = io::SafetensorsFile::open(dir / "reference.safetensors");
  const auto cfg = vl::ImageProcessorConfig::load(dir / "preprocessor_config.json");
  const auto check = [&](const std::string& name, const Tensor<Host, float>& got, const vl::GridTHW& grid,
                         const std::string& values, const std::string& grid_name) {
    const auto expected = ref.load<Host, float>(values);
    ASSERT_EQ(got.shape(), expected.shape()) << name;
    EXPECT_LE(max_diff(got, expected), 1e-5) << name;
    const auto g = ref.load<Host, std::int64_t>(grid_name);
    EXPECT_EQ(Ids(grid.begin(), grid.end()), Ids(g.span().begin(), g.span().end())) << name;
  };
  for (const std::string name : {"image_a", "image_b", "max_pixels", "min_pixels"}) {
    const auto image = vl::preprocess_image(vl::load_rgb_image(fixtures() / "images" / (name + ".png")), cfg);
    check(name, image.pixel_values, image.grid_thw, name + ".pixel_values", name + ".image_grid_thw");
  }
  std::vector<vl::RgbImage> frames;
  for (int i = 0; i < 5; ++i) {
    frames.push_back(vl::load_rgb_image(fixtures() / "images" / "video" / ("frame_" + std::to_string(i) + ".png")));
  }
  const auto video = vl::preprocess_video(frames, 1.0, cfg);
  check("video", video.pixel_values, video.grid_thw, "video.pixel_values_videos", "video.video_grid_thw");
}

TEST_P(Qwen2_5_VLGolden, RopeIndexGivesTheReferencePositions) {
  const Reference& ref = reference(GetParam());
  const auto& cfg = model(GetParam()).config();
  for (const std::string& c : cases()) {
    const auto p = prompt_of(GetParam(), c);
    std::vector<vl::GridTHW> images, videos;
    std::vector<double> seconds;
    for (const auto& i : p.images) images.push_back(i.grid_thw);
    for (const auto& v : p.videos) {
      videos.push_back(v.grid_thw);
      seconds.push_back(v.second_per_grid_t);
    }
    const auto index = vl::get_rope_index(p.ids, images, videos, seconds, cfg.tokens, cfg.vision.spatial_merge_size,
                                          cfg.vision.tokens_per_second);
    const std::string out = outputs_of(c);
    EXPECT_EQ(Ids(index.positions.span().begin(), index.positions.span().end()), ref.ints(out + ".position_ids")) << c;
    EXPECT_EQ(index.rope_delta, ref.ints(out + ".rope_deltas")[0]) << c;
  }
}

TEST_P(Qwen2_5_VLGolden, VisionTowerMatchesTransformersOnItsOwn) {
  const Reference& ref = reference(GetParam());
  for (const std::string& c : {std::string("one_image"), std::string("two_images")}) {
    const auto p = prompt_of(GetParam(), c);
    const auto expected = ref.floats(c + ".image_embeds");
    const auto got = to<Host>(model(GetParam()).image_features(p.images));
    EXPECT_LE(max_diff(got, expected), 1e-4 * max_abs(expected)) << c;
  }
  const auto v = prompt_of(GetParam(), "video");
  const auto expected = ref.floats("video.video_embeds");
  EXPECT_LE(max_diff(to<Host>(model(GetParam()).video_features(v.videos)), expected), 1e-4 * max_abs(expected));
}

TEST_P(Qwen2_5_VLGolden, PromptLogitsAtEveryPositionMatchTransformers) {
  const Reference& ref = reference(GetParam());
  for (const std::string& c : cases()) {
    const auto p = prompt_of(GetParam(), c);
    const std::string out = outputs_of(c);
    auto cache = model(GetParam()).new_cache(256);
    const auto logits = to<Host>(model(GetParam()).forward(p, cache));
    if (ref.has(out + ".logits")) {
      const auto expected = ref.floats(out + ".logits");
      const double diff = max_diff(logits, expected), tol = 1e-4 * max_abs(expected);
      EXPECT_LE(diff, tol) << c;
    } else {  // the video's original-rule run keeps its last row
      const auto expected = ref.floats(out + ".logits_last");
      EXPECT_LE(max_diff(row(logits, logits.dim(0) - 1), expected), 1e-4 * max_abs(expected)) << c;
    }
  }
}

TEST_P(Qwen2_5_VLGolden, DecodeStepsContinueWithTheRopeDelta) {
  const Reference& ref = reference(GetParam());
  for (const std::string& c : cases()) {
    const auto p = prompt_of(GetParam(), c);
    const std::string out = outputs_of(c);
    const Ids greedy = ref.ints(out + ".greedy");
    const auto expected = ref.floats(out + ".decode_logits");
    auto cache = model(GetParam()).new_cache(256);
    (void)model(GetParam()).forward(p, cache);
    EXPECT_EQ(cache.rope_delta, ref.ints(out + ".rope_deltas")[0]) << c;
    for (std::int64_t step = 0; step < expected.dim(0); ++step) {
      const std::int64_t id = greedy[static_cast<std::size_t>(step)];
      const auto logits = to<Host>(model(GetParam()).forward(std::span<const std::int64_t>(&id, 1), cache));
      const auto want = row(expected, step);
      EXPECT_LE(max_diff(logits, want), 1e-4 * max_abs(want)) << c << " step " << step;
    }
  }
}

TEST_P(Qwen2_5_VLGolden, GreedyContinuationMatchesTransformersFor32Tokens) {
  const Reference& ref = reference(GetParam());
  generate::SamplingOptions greedy;
  greedy.max_new_tokens = 32;
  greedy.eos_token_ids = ref.meta["generation"]["eos_token_id"].get<Ids>();
  for (const std::string& c : cases()) {
    const auto p = prompt_of(GetParam(), c);
    EXPECT_EQ(generate::generate(model(GetParam()), p, greedy), ref.ints(outputs_of(c) + ".greedy")) << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen2_5_VLGolden, ::testing::Values("legacy", "tied"));

// ---- bad inputs ----------------------------------------------------------------------

TEST(Qwen2_5_VL, PlaceholderCountsThatDoNotMatchTheImagesAreValueErrors) {
  auto p = prompt_of("legacy", "one_image");
  const auto n = std::count(p.ids.begin(), p.ids.end(), model("legacy").config().tokens.image);
  p.ids.erase(std::find(p.ids.begin(), p.ids.end(), model("legacy").config().tokens.image));
  auto cache = model("legacy").new_cache(256);
  expect_error<ValueError>([&] { (void)model("legacy").forward(p, cache); },
                           {std::to_string(n - 1) + " image tokens", std::to_string(n) + " features"});
  EXPECT_EQ(cache.length(), 0);
  auto two = prompt_of("legacy", "one_image");
  two.images.push_back(std::move(prompt_of("legacy", "one_image").images[0]));
  expect_error<ValueError>([&] { (void)model("legacy").forward(two, cache); }, {"2"});
}

TEST(Qwen2_5_VL, APromptWithImagesMustStartTheSequence) {
  const auto p = prompt_of("legacy", "one_image");
  auto cache = model("legacy").new_cache(256);
  (void)model("legacy").forward(p, cache);
  expect_error<ValueError>([&] { (void)model("legacy").forward(p, cache); },
                           {"must start a sequence", std::to_string(p.ids.size()) + " tokens"});
}

TEST(Qwen2_5_VL, CheckpointWithoutAVisionTowerIsAFormatError) {
  // The Qwen2 text fixture has a config without vision_config.
  const fs::path qwen2 = fixtures().parent_path() / "qwen2" / "untied";
  expect_error<FormatError>([&] { (void)Model::load(qwen2); }, {"config.json"});
}

// ---- CUDA bf16 against the validated CPU model ----------------------------------------

std::int64_t argmax_last(const Tensor<Host, float>& logits) {
  const std::int64_t r = logits.dim(0) - 1;
  std::int64_t best = 0;
  for (std::int64_t j = 1; j < logits.dim(1); ++j) {
    if (logits.at(r, j) > logits.at(r, best)) best = j;
  }
  return best;
}

bool in_top5(const Tensor<Host, float>& logits, std::int64_t id) {
  const std::int64_t r = logits.dim(0) - 1;
  std::int64_t above = 0;
  for (std::int64_t j = 0; j < logits.dim(1); ++j) above += logits.at(r, j) > logits.at(r, id) ? 1 : 0;
  return above < 5;
}

// vLLM's rule against the validated float32 CPU model: greedy tokens equal
// until the first divergence, and there each side's token is in the other's
// top 5. Returns how many steps agreed, summed over the cases.
template <class Other>
int follows_by_top5_rule(const Other& other, const std::string& variant) {
  int agreed = 0;
  for (const std::string& c : cases()) {
    const auto p = prompt_of(variant, c);
    auto cpu_cache = model(variant).new_cache(256);
    auto other_cache = other.new_cache(256);
    auto cpu_logits = to<Host>(model(variant).forward(p, cpu_cache));
    auto other_logits = to<Host>(ops::cast<float>(other.forward(p, other_cache)));
    for (int step = 0; step < 32; ++step, ++agreed) {
      const std::int64_t a = argmax_last(cpu_logits), b = argmax_last(other_logits);
      if (a != b) {
        EXPECT_TRUE(in_top5(cpu_logits, b)) << c << " step " << step;
        EXPECT_TRUE(in_top5(other_logits, a)) << c << " step " << step;
        break;
      }
      cpu_logits = to<Host>(model(variant).forward(std::span<const std::int64_t>(&a, 1), cpu_cache));
      other_logits = to<Host>(ops::cast<float>(other.forward(std::span<const std::int64_t>(&b, 1), other_cache)));
    }
  }
  return agreed;
}

// bf16 on the CPU: the element type a GPU runs, through the same code
// (pixel values cast on the device, bf16 vision tower and decoder).
TEST_P(Qwen2_5_VLGolden, CpuBf16GreedyFollowsTheFloatModelByTheTop5Rule) {
  const auto bf16_model = models::Qwen2_5_VL<Single<Cpu<1>>, bf16>::load(fixtures() / GetParam());
  const int agreed = follows_by_top5_rule(bf16_model, GetParam());
  RecordProperty("greedy_steps_agreeing", agreed);
  EXPECT_GT(agreed, 4) << "bf16 diverged from float32 almost at once";
}

TEST_P(Qwen2_5_VLGolden, CudaBf16GreedyFollowsTheCpuModelByTheTop5Rule) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  using GpuModel = models::Qwen2_5_VL<Single<Cuda<0>>, bf16>;
  const GpuModel gpu = GpuModel::load(fixtures() / GetParam());
  (void)follows_by_top5_rule(gpu, GetParam());
}

}  // namespace
}  // namespace tessera::testing
