// Golden tests of models/minicpm_v.hpp against the MiniCPM-V 2.6 oracle
// (tests/fixtures/minicpm_v, tools/fixtures/make_minicpm_v_fixtures.py:
// transformers' Idefics2VisionTransformer and Qwen2ForCausalLM with the
// resampler, slicer and placeholders restated from the reference). Every
// case starts from the committed PNG files, so the processor, the NaViT
// tower, the resampler, the span scatter and the decoder are checked
// together: CPU float32 must give the reference's spans and tgt_sizes, the
// image features (what replaces the <unk> spans), the logits at every
// prompt position and of the decode steps within 1e-4 of their largest
// magnitude, and the 32 greedy tokens exactly — for text only, one sliced
// image, three images (two sliced, one upscaled), the 1400x100 strip (a
// resampler table grown past 70 columns), video frames (no image ids, at
// most 2 slices) and the left-padded batch.
#include <tessera/generate/generate.hpp>
#include <tessera/models/minicpm_v.hpp>

#include <string>
#include <vector>

#include "minicpm_v_fixtures.hpp"

namespace tessera::testing {
namespace {

using namespace minicpm_v_fixtures;
using Model = models::MiniCPM_V<Single<Cpu<0>>, float>;

const Model& model() {
  static const Model m = Model::load(model_dir());
  return m;
}

generate::SamplingOptions greedy(std::int64_t tokens) {
  generate::SamplingOptions o;
  o.max_new_tokens = tokens;
  o.do_sample = false;
  o.repetition_penalty = 1.0;
  o.eos_token_ids.clear();
  return o;
}

class MiniCPM_VGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(MiniCPM_VGolden, SpansAndSlicesAreTheReferences) {
  const std::string c = GetParam();
  const mv::Prompt p = prompt_of(c);
  if (p.images.empty()) {
    EXPECT_TRUE(p.bounds.empty()) << c;
    return;
  }
  const Ids bounds = reference().ints(c + ".image_bounds");
  ASSERT_EQ(bounds.size(), 2 * p.bounds.size());
  for (std::size_t i = 0; i < p.bounds.size(); ++i) {
    EXPECT_EQ(p.bounds[i][0], bounds[2 * i]) << "span " << i;
    EXPECT_EQ(p.bounds[i][1], bounds[2 * i + 1]) << "span " << i;
  }
  const Ids tgt = reference().ints(c + ".tgt_sizes");
  std::vector<std::int64_t> ours;
  for (const auto& image : p.images) {
    for (const auto& t : image.tgt_sizes) ours.insert(ours.end(), {t[0], t[1]});
  }
  EXPECT_EQ(ours, tgt);
}

TEST_P(MiniCPM_VGolden, PromptTextTokenizesToTheReferenceIds) {
  const std::string c = GetParam();
  const auto& meta = reference().meta["cases"][c];
  ASSERT_TRUE(meta.contains("chat_text")) << c;
  const std::vector<mv::ProcessedImage> images = images_of(c);
  const std::string text = mv::expand_image_markers(meta["chat_text"].get<std::string>(), images, processor_of(c));
  const auto encoded = fixture_tokenizer().encode(text);
  const Ids ids(encoded.begin(), encoded.end());
  EXPECT_EQ(ids, reference().ints(c + ".input_ids"));
}

TEST_P(MiniCPM_VGolden, ImageFeaturesMatch) {
  const std::string c = GetParam();
  const mv::Prompt p = prompt_of(c);
  if (p.images.empty()) {  // nothing to compute, and the oracle stores nothing
    EXPECT_FALSE(reference().has(c + ".image_features")) << c;
    return;
  }
  const Tensor<Host, float> features = to<Host>(model().image_features(p.images));
  expect_golden_close(features, reference().floats(c + ".image_features"), c + " image features");
}

TEST_P(MiniCPM_VGolden, PromptLogitsMatchEveryPosition) {
  const std::string c = GetParam();
  const mv::Prompt p = prompt_of(c);
  auto cache = model().new_cache(static_cast<std::int64_t>(p.ids.size()) + 8);
  const Tensor<Host, float> logits = to<Host>(model().forward(p, cache));
  const Tensor<Host, float> expected = reference().floats(c + ".logits");
  ASSERT_EQ(logits.shape(), expected.shape());
  expect_golden_close(logits, expected, c + " prompt logits");
}

TEST_P(MiniCPM_VGolden, DecodeStepsAndGreedyTokensMatch) {
  const std::string c = GetParam();
  const mv::Prompt p = prompt_of(c);
  const Ids expected = reference().ints(c + ".greedy");
  const auto generated = generate::generate(model(), p, greedy(static_cast<std::int64_t>(expected.size())));
  EXPECT_EQ(Ids(generated.begin(), generated.end()), expected);

  // The decode steps' logits: greedy[i] fed at position S + i.
  const Tensor<Host, float> steps = reference().floats(c + ".step_logits");
  auto cache = model().new_cache(static_cast<std::int64_t>(p.ids.size()) + steps.dim(0));
  model().forward(p, cache);
  for (std::int64_t i = 0; i < steps.dim(0); ++i) {
    const std::int64_t id = expected[static_cast<std::size_t>(i)];
    const Tensor<Host, float> step = to<Host>(model().forward(std::span<const std::int64_t>(&id, 1), cache));
    expect_golden_close(step, row(steps, i), c + " decode step " + std::to_string(i));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MiniCPM_VGolden, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// The reference's batch: one_image and text_only left-padded with id 0 in
// one [2, S] tensor (attention_mask = ids != 0). tessera runs the slices of
// both prompts in one vision pass and each prompt as its own sequence, with
// no padding; each row's real tokens must give the reference's logits and
// its greedy tokens.
TEST(MiniCPM_VBatch, RowsMatchTheLeftPaddedReference) {
  const auto& rows = reference().meta["cases"]["batch"]["rows"];
  ASSERT_EQ(rows.size(), 2u);
  std::vector<mv::Prompt> prompts;
  for (const auto& r : rows) {
    const std::string c = r.is_string() ? r.get<std::string>() : r["case"].get<std::string>();
    prompts.push_back(prompt_of(c));
  }
  // The padded ids hold each row's prompt after its padding.
  const Tensor<Host, std::int64_t> padded = reference().arrays.load<Host, std::int64_t>("batch.input_ids");
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    const std::int64_t width = padded.dim(1), length = static_cast<std::int64_t>(prompts[r].ids.size());
    const std::int64_t* row_ids = padded.raw() + static_cast<std::int64_t>(r) * width;
    EXPECT_EQ(Ids(row_ids + (width - length), row_ids + width), prompts[r].ids) << "row " << r;
  }
  std::vector<Model::Cache> caches;
  for (const auto& p : prompts) caches.push_back(model().new_cache(static_cast<std::int64_t>(p.ids.size()) + 1));
  std::vector<const mv::Prompt*> prompt_ptrs;
  std::vector<Model::Cache*> cache_ptrs;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    prompt_ptrs.push_back(&prompts[r]);
    cache_ptrs.push_back(&caches[r]);
  }
  const auto logits = model().forward_batch(prompt_ptrs, cache_ptrs);
  const Ids greedy_rows = reference().ints("batch.greedy");
  const std::size_t per_row = greedy_rows.size() / prompts.size();
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    expect_golden_close(to<Host>(logits[r]), reference().floats("batch.logits." + std::to_string(r)),
                 "batch row " + std::to_string(r));
    const auto generated = generate::generate(model(), prompts[r], greedy(static_cast<std::int64_t>(per_row)));
    EXPECT_EQ(Ids(generated.begin(), generated.end()),
              Ids(greedy_rows.begin() + static_cast<std::ptrdiff_t>(r * per_row),
                  greedy_rows.begin() + static_cast<std::ptrdiff_t>((r + 1) * per_row)))
        << "row " << r;
  }
}

// A prompt whose spans do not match its images is refused before anything
// runs, naming the counts.
TEST(MiniCPM_VErrors, SpansMustMatchTheSlices) {
  mv::Prompt p = prompt_of("one_image");
  p.images.push_back(std::move(images_of("one_image").front()));
  auto cache = model().new_cache(static_cast<std::int64_t>(p.ids.size()));
  expect_error<ValueError>([&] { (void)model().forward(p, cache); }, {"spans but its 2 image(s) have 6 slices"});
  p = prompt_of("one_image");
  p.bounds.front()[1] -= 1;
  expect_error<ValueError>([&] { (void)model().forward(p, cache); }, {"each hold query_num = 16 positions"});
}

TEST(MiniCPM_VErrors, ConfigOfAnotherVersionIsRefused) {
  nlohmann::json config = nlohmann::json::parse(std::ifstream(model_dir() / "config.json"));
  config["version"] = 2.5;
  expect_error<FormatError>([&] { (void)mv::Config::from_json(config, "config.json"); },
                            {"\"version\" is 2.5; tessera runs MiniCPM-V 2.6"});
  config["version"] = 2.6;
  config["hidden_size"] = 200;
  expect_error<FormatError>([&] { (void)mv::Config::from_json(config, "config.json"); }, {"must be a multiple of 128"});
}

}  // namespace
}  // namespace tessera::testing
