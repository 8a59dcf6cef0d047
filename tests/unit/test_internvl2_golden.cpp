// Golden tests of models/internvl2.hpp against the InternVL2 oracle
// (tests/fixtures/internvl2, tools/fixtures/make_internvl2_fixtures.py:
// transformers' native InternVLForConditionalGeneration, which computes what
// the published remote code computes, over checkpoints written in the
// published layout). Every case starts from the committed PNG files, so the
// processor, the conversation template, the tokenizer, InternViT, the pixel
// shuffle, mlp1, the <IMG_CONTEXT> scatter and the decoder are checked
// together. CPU float32 must give the reference's prompt text and ids, the
// image features, the logits at every prompt position within 1e-4 of their
// largest magnitude and the 32 greedy tokens exactly, for each language-model
// family (Qwen2, InternLM2 with dynamic NTK, Phi-3 LongRoPE, Llama), both
// tower styles (300M and 6B with 5 heads and full-width q/k norm),
// select_layer -1/-2/-4, an interpolated position table, and text only, one
// tiled image with a thumbnail, a single tile, two images and video frames.
#include <tessera/generate/generate.hpp>
#include <tessera/models/internvl2.hpp>
#include <tessera/models/internvl2_vision.hpp>

#include <map>
#include <string>
#include <vector>

#include "internvl2_fixtures.hpp"

namespace tessera::testing {
namespace {

using namespace internvl2_fixtures;
using Model = models::InternVL2<Single<Cpu<0>>, float>;

const Model& model(const std::string& name) {
  static std::map<std::string, Model> models;
  if (!models.contains(name)) models.emplace(name, Model::load(model_dir(name)));
  return models.at(name);
}

generate::SamplingOptions greedy(std::int64_t tokens) {
  generate::SamplingOptions o;
  o.max_new_tokens = tokens;
  o.do_sample = false;
  o.repetition_penalty = 1.0;
  o.eos_token_ids.clear();
  return o;
}

class InternVL2Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(InternVL2Golden, TilesPromptTextAndIdsAreTheReferences) {
  const std::string id = GetParam();
  const auto& meta = case_meta(id);
  const std::vector<iv::ProcessedImage> images = images_of(id);
  std::vector<std::int64_t> tiles;
  for (const auto& image : images) tiles.push_back(image.tiles());
  EXPECT_EQ(tiles, meta["num_patches_list"].get<std::vector<std::int64_t>>());
  EXPECT_EQ(prompt_text(id, images), meta["prompt"].get<std::string>());
  EXPECT_EQ(prompt_of(id).ids, reference().ints(id + ".ids"));
}

TEST_P(InternVL2Golden, ImageFeaturesMatch) {
  const std::string id = GetParam();
  const iv::Prompt p = prompt_of(id);
  if (p.images.empty()) {
    EXPECT_FALSE(reference().has(id + ".features")) << id;
    return;
  }
  const Tensor<Host, float> features = to<Host>(model(split_case(id).first).image_features(p.images));
  expect_golden_close(features, reference().floats(id + ".features"), id + " image features");
}

TEST_P(InternVL2Golden, PromptLogitsMatchEveryPosition) {
  const std::string id = GetParam();
  const Model& m = model(split_case(id).first);
  const iv::Prompt p = prompt_of(id);
  auto cache = m.new_cache(static_cast<std::int64_t>(p.ids.size()) + 1);
  expect_golden_close(to<Host>(m.forward(p, cache)), reference().floats(id + ".logits"), id + " prompt logits");
}

TEST_P(InternVL2Golden, GreedyTokensMatch) {
  const std::string id = GetParam();
  const Ids expected = reference().ints(id + ".greedy");
  const auto generated = generate::generate(model(split_case(id).first), prompt_of(id),
                                            greedy(static_cast<std::int64_t>(expected.size())));
  EXPECT_EQ(Ids(generated.begin(), generated.end()), expected);
}

INSTANTIATE_TEST_SUITE_P(Cases, InternVL2Golden, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string name = i.param;
                           for (char& ch : name) ch = ch == '.' ? '_' : ch;
                           return name;
                         });

// InternVL2-4B's generate keeps decoding on the cache past Phi-3's
// original_max_position_embeddings (256 in the fixture): a generation from
// the 166-token text prompt runs through it instead of being refused, with
// the reference's tokens before the limit. (No oracle covers the tokens
// after it.)
TEST(InternVL2LongRope, GenerationCrossesTheOriginalMaximumOnTheCache) {
  const Model& m = model("phi3_300m");
  const iv::Prompt p = prompt_of("phi3_300m.text");
  ASSERT_LT(p.ids.size(), 256u);
  const auto generated = generate::generate(m, p, greedy(static_cast<std::int64_t>(300 - p.ids.size())));
  ASSERT_EQ(generated.size(), 300 - p.ids.size());
  const Ids expected = reference().ints("phi3_300m.text.greedy");
  EXPECT_EQ(Ids(generated.begin(), generated.begin() + static_cast<std::ptrdiff_t>(expected.size())), expected);
}

// The tower on its own: llama_6b's InternViT-6B-style layers up to
// select_layer -4 (the first layer's output) over one tile, with the 16x16
// position table of its 224-pixel config interpolated to the 448 tile's
// 32x32 grid.
TEST(InternVL2Vision, HiddenStatesAtTheSelectedLayerMatch) {
  const iv::Config& config = config_of("llama_6b");
  const io::Checkpoint checkpoint = io::Checkpoint::open(model_dir("llama_6b"));
  const auto encoder = iv::VisionEncoder<Cpu<0>, float>::load(checkpoint, config.vision, config.projector);
  iv::ProcessorConfig cfg = config.processor;
  cfg.max_num = 12;
  const iv::ProcessedImage square = iv::load_image(root() / "images" / "square.png", cfg);
  ASSERT_EQ(square.tiles(), 1);
  const Tensor<Host, float> hidden = to<Host>(encoder.hidden_states(to<Cpu<0>>(square.pixels)));
  expect_golden_close(hidden, reference().floats("llama_6b.square.vit"), "llama_6b square hidden states");
}

}  // namespace
}  // namespace tessera::testing
