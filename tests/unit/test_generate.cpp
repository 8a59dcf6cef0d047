// Tests of generate/: the logits processors against the scores transformers'
// processor chain produced (tests/fixtures/qwen2/untied, written by
// tools/fixtures/make_qwen2_fixtures.py), greedy generation and eos stopping
// against transformers' generate(), streaming through the tokenizer's stream
// decoder, seeded sampling, Qwen2's chat template and SamplingOptions::from.
#include <tessera/generate/generate.hpp>
#include <tessera/io/config.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/tokenizer/bpe.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

using Model = models::Qwen2<Single<Cpu<0>>, float>;
using generate::ChatMessage;
using generate::SamplingOptions;
using Ids = std::vector<std::int64_t>;

std::filesystem::path fixture_dir() {
  return tessera::testing::fixtures_dir() / "qwen2" / "untied";
}

struct Reference {
  nlohmann::json meta = nlohmann::json::parse(std::ifstream(fixture_dir() / "reference.json"));
  io::SafetensorsFile arrays = io::SafetensorsFile::open(fixture_dir() / "reference.safetensors");

  Ids ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  std::vector<float> floats(const std::string& name) const {
    const auto t = arrays.load<Host, float>(name);
    return {t.span().begin(), t.span().end()};
  }
};

const Reference& reference() {
  static const Reference r;
  return r;
}

const Model& model() {
  static const Model m = Model::load(fixture_dir());
  return m;
}

const tokenizer::Tokenizer& tok() {
  static const tokenizer::Tokenizer t = tokenizer::Tokenizer::from_file(fixture_dir() / "tokenizer.json");
  return t;
}

// The options of the fixture's greedy runs: generate(do_sample=False,
// max_new_tokens=32, repetition_penalty=1.0) with generation_config's eos ids.
SamplingOptions greedy_options() {
  SamplingOptions o;
  o.max_new_tokens = 32;
  o.eos_token_ids = reference().meta["generation"]["eos_token_id"].get<Ids>();
  return o;
}

// generation_config.json's sampling knobs (do_sample, 0.7, 20, 0.8, 1.05).
SamplingOptions sampling_options(std::uint64_t seed) {
  SamplingOptions o = SamplingOptions::from(io::GenerationConfig::load(fixture_dir()));
  o.seed = seed;
  o.eos_token_ids.clear();  // always 32 tokens, so runs compare position by position
  return o;
}

std::vector<tokenizer::TokenId> token_ids(const Ids& ids) {
  std::vector<tokenizer::TokenId> out;
  for (const std::int64_t id : ids) out.push_back(static_cast<tokenizer::TokenId>(id));
  return out;
}

Ids encode(const std::string& text) {
  const auto ids = tok().encode(text);
  return {ids.begin(), ids.end()};
}

std::size_t count_finite(const std::vector<float>& row) {
  return static_cast<std::size_t>(std::ranges::count_if(row, [](float x) { return std::isfinite(x); }));
}

// Equal element for element; -inf (a filtered entry) must match -inf.
::testing::AssertionResult rows_equal(const std::vector<float>& actual, const std::vector<float>& expected,
                                      double tol) {
  if (actual.size() != expected.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const float a = actual[i], e = expected[i];
    const bool same_inf = std::isinf(a) && std::isinf(e) && (a < 0) == (e < 0);
    if (!same_inf && !(std::abs(static_cast<double>(a) - static_cast<double>(e)) <= tol)) {
      return ::testing::AssertionFailure() << "token " << i << ": got " << a << ", expected " << e;
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- the processors against transformers' scores ------------------------------

// The fixture ran generation_config's chain (repetition_penalty 1.05,
// temperature 0.7, top_k 20, top_p 0.8) on the raw logits of the chat
// prompt's step 31, with the chat prompt plus its first 31 greedy tokens as
// context, and stored the scores after each processor. Turning the
// processors on one at a time gives each stage.
TEST(GenerateProcessors, ReproduceTransformersScoresStageByStage) {
  const Reference& r = reference();
  const Ids context = r.ints("sampling.input_ids");
  const std::vector<float> raw = r.floats("sampling.scores.raw");
  const nlohmann::json& config = r.meta["sampling"]["generation_config"];

  SamplingOptions o;
  o.repetition_penalty = config["repetition_penalty"].get<float>();
  const auto stage = [&](const std::string& name) {
    std::vector<float> row = raw;
    generate::process_logits(row, context, o);
    const std::vector<float> expected = r.floats("sampling.scores." + name);
    EXPECT_TRUE(rows_equal(row, expected, 0.0)) << "after " << name;
    return row;
  };
  stage("repetition_penalty");  // do_sample false: only the penalty runs
  o.do_sample = true;
  o.temperature = config["temperature"].get<float>();
  stage("temperature");
  o.top_k = config["top_k"].get<std::int64_t>();
  EXPECT_EQ(count_finite(stage("top_k")), r.meta["sampling"]["kept_after_top_k"].get<std::size_t>());
  o.top_p = config["top_p"].get<float>();
  EXPECT_EQ(count_finite(stage("top_p")), r.meta["sampling"]["kept_after_top_p"].get<std::size_t>());
}

TEST(GenerateProcessors, GreedyIgnoresTheWarpers) {
  SamplingOptions o;
  o.temperature = 0.5f;
  o.top_k = 1;
  o.top_p = 0.1f;
  std::vector<float> row{1.0f, 3.0f, 2.0f};
  generate::process_logits(row, Ids{}, o);
  EXPECT_EQ(row, (std::vector<float>{1.0f, 3.0f, 2.0f}));
}

TEST(GenerateProcessors, RepetitionPenaltyOncePerDistinctIdAndSkipsIdsPastTheVocabulary) {
  SamplingOptions o;
  o.repetition_penalty = 2.0f;
  std::vector<float> row{4.0f, -4.0f, 4.0f};
  generate::process_logits(row, Ids{0, 0, 1, 1, 7}, o);  // 7: no such logit, as transformers clamps and drops it
  EXPECT_EQ(row, (std::vector<float>{2.0f, -8.0f, 4.0f}));
}

TEST(GenerateProcessors, TopKKeepsTiesWithTheKthValue) {
  SamplingOptions o;
  o.do_sample = true;
  o.top_k = 2;
  std::vector<float> row{1.0f, 3.0f, 2.0f, 2.0f, 0.0f};
  generate::process_logits(row, Ids{}, o);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(row, (std::vector<float>{-inf, 3.0f, 2.0f, 2.0f, -inf}));
}

TEST(GenerateProcessors, TopPAlwaysKeepsTheMostLikelyToken) {
  SamplingOptions o;
  o.do_sample = true;
  o.top_p = 1e-6f;
  std::vector<float> row{0.0f, 5.0f, 1.0f};
  generate::process_logits(row, Ids{}, o);
  EXPECT_EQ(count_finite(row), 1u);
  EXPECT_EQ(row[1], 5.0f);
}

// Ties at the top-p boundary: which of the equal scores go depends on the
// order torch.sort leaves them in (not index order past 16 elements). The
// kept set is what transformers' TopPLogitsWarper(0.5) returned for this row.
TEST(GenerateProcessors, TopPRemovesTiedScoresInTorchSortOrder) {
  SamplingOptions o;
  o.do_sample = true;
  o.top_p = 0.5f;
  std::vector<float> row(40, 0.0f);
  for (std::size_t i = 0; i < row.size(); i += 7) row[i] = 1.0f;
  generate::process_logits(row, Ids{}, o);
  std::vector<std::size_t> kept;
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (std::isfinite(row[i])) kept.push_back(i);
  }
  EXPECT_EQ(kept, (std::vector<std::size_t>{0, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 21, 28, 35}));
}

TEST(GenerateProcessors, RejectInvalidOptions) {
  std::vector<float> row{1.0f, 2.0f};
  SamplingOptions o;
  o.do_sample = true;
  o.temperature = 0.0f;
  expect_error<ValueError>([&] { generate::process_logits(row, Ids{}, o); }, {"temperature", "do_sample"});
  o.temperature = 1.0f;
  o.top_p = 1.5f;
  expect_error<ValueError>([&] { generate::Sampler s(o); }, {"top_p"});
  o.top_p = 1.0f;
  o.repetition_penalty = 0.0f;
  expect_error<ValueError>([&] { generate::Sampler s(o); }, {"repetition_penalty"});
}

// ---- greedy generation against transformers' generate() -------------------------

TEST(Generate, GreedyReproducesTransformersForEveryPrompt) {
  const Reference& r = reference();
  for (const auto& [name, _] : r.meta["prompts"].items()) {
    const Ids prompt = r.ints("prompt." + name + ".input_ids");
    const Ids expected = r.ints("prompt." + name + ".greedy.tokens");
    EXPECT_EQ(generate::generate(model(), prompt, greedy_options()), expected) << "prompt " << name;
  }
}

// batch.eos_stop: the batch run with eos_token_id [656]. Each row keeps its
// tokens up to and including the first 656 (then pad); a row without it runs
// the full 32 tokens.
TEST(Generate, StopsAfterEosAndKeepsIt) {
  const Reference& r = reference();
  const nlohmann::json& stop = r.meta["batch"]["eos_stop"];
  SamplingOptions o = greedy_options();
  o.eos_token_ids = stop["eos_token_id"].get<Ids>();
  const auto order = r.meta["batch"]["order"].get<std::vector<std::string>>();
  bool some_row_stopped = false;
  for (std::size_t row = 0; row < order.size(); ++row) {
    Ids expected = stop["tokens"][row].get<Ids>();
    const auto eos = std::ranges::find_first_of(expected, o.eos_token_ids);
    if (eos != expected.end()) {
      expected.erase(eos + 1, expected.end());
      some_row_stopped = true;
    }
    const Ids prompt = r.ints("prompt." + order[row] + ".input_ids");
    EXPECT_EQ(generate::generate(model(), prompt, o), expected) << "prompt " << order[row];
  }
  EXPECT_TRUE(some_row_stopped);
}

TEST(Generate, ZeroNewTokensRunsNothingAndAnEmptyPromptIsAnError) {
  SamplingOptions o = greedy_options();
  o.max_new_tokens = 0;
  bool called = false;
  EXPECT_TRUE(generate::generate(model(), Ids{1, 2}, o, [&](std::int64_t) { called = true; }).empty());
  EXPECT_FALSE(called);
  expect_error<ValueError>([&] { generate::generate(model(), Ids{}, greedy_options()); }, {"prompt"});
}

// A bf16 model goes through the cast of the last row to float.
TEST(Generate, Bf16ModelGeneratesThroughTheFloatCast) {
  const auto m = models::Qwen2<Single<Cpu<0>>, bf16>::load(fixture_dir());
  const Ids ids = generate::generate(m, reference().ints("prompt.short.input_ids"), greedy_options());
  ASSERT_FALSE(ids.empty());
  EXPECT_LE(ids.size(), 32u);
  for (const std::int64_t id : ids) EXPECT_LT(id, model().config().vocab_size);
}

// ---- streaming --------------------------------------------------------------------

TEST(Generate, StreamsEveryIdInOrderAndTheStreamedTextIsTheDecodedText) {
  const Ids prompt = reference().ints("prompt.chat.input_ids");
  for (const bool skip_special : {false, true}) {
    Ids streamed;
    std::string text;
    auto decoder = tok().stream_decoder(skip_special);
    const auto on_token = [&](std::int64_t id) {
      streamed.push_back(id);
      text += decoder.step(static_cast<tokenizer::TokenId>(id));
    };
    const Ids ids = generate::generate(model(), prompt, greedy_options(), on_token);
    text += decoder.finish();
    EXPECT_EQ(streamed, ids);
    EXPECT_EQ(text, tok().decode(token_ids(ids), skip_special));
  }
}

// ---- seeded sampling -------------------------------------------------------------

TEST(GenerateSampling, SameSeedSameTokensOtherSeedOtherTokens) {
  const Ids prompt = reference().ints("prompt.chat.input_ids");
  const Ids a = generate::generate(model(), prompt, sampling_options(7));
  const Ids b = generate::generate(model(), prompt, sampling_options(7));
  const Ids c = generate::generate(model(), prompt, sampling_options(8));
  ASSERT_EQ(a.size(), 32u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);  // 32 draws from ~15-token sets: equal by chance is negligible
}

// Replays a sampled run with the model: every token must survive the
// processors at its step (be finite after top-k and top-p).
TEST(GenerateSampling, EverySampledTokenIsInsideTheTopKTopPSet) {
  const Ids prompt = reference().ints("prompt.chat.input_ids");
  const SamplingOptions o = sampling_options(3);
  const Ids sampled = generate::generate(model(), prompt, o);
  auto cache = model().new_cache(static_cast<std::int64_t>(prompt.size() + sampled.size()));
  Ids context = prompt;
  auto logits = model().forward(context, cache);
  for (const std::int64_t id : sampled) {
    const auto row_tensor = to<Host>(logits.slice(0, logits.dim(0) - 1, logits.dim(0)));
    std::vector<float> row(row_tensor.span().begin(), row_tensor.span().end());
    generate::process_logits(row, context, o);
    EXPECT_TRUE(std::isfinite(row[static_cast<std::size_t>(id)])) << "token " << id << " at step "
                                                                   << context.size() - prompt.size();
    EXPECT_LE(count_finite(row), static_cast<std::size_t>(o.top_k));
    context.push_back(id);
    logits = model().forward(Ids{id}, cache);
  }
}

// Many draws from the fixture's processed row: only the 15 tokens top-p kept
// appear, with frequencies close to their softmax probabilities.
TEST(GenerateSampling, DrawsFollowTheSoftmaxOfTheProcessedScores) {
  const Reference& r = reference();
  const Ids context = r.ints("sampling.input_ids");
  const std::vector<float> raw = r.floats("sampling.scores.raw");
  const std::vector<float> kept = r.floats("sampling.scores.top_p");
  double total = 0.0;
  const float max = *std::ranges::max_element(kept);
  for (const float x : kept) total += std::exp(static_cast<double>(x - max));

  generate::Sampler sampler(sampling_options(11));
  constexpr int kDraws = 5000;
  std::vector<int> counts(raw.size(), 0);
  for (int i = 0; i < kDraws; ++i) ++counts[static_cast<std::size_t>(sampler.next(raw, context))];
  for (std::size_t t = 0; t < raw.size(); ++t) {
    const double p = std::isfinite(kept[t]) ? std::exp(static_cast<double>(kept[t] - max)) / total : 0.0;
    if (p == 0.0) {
      EXPECT_EQ(counts[t], 0) << "token " << t << " was filtered";
    } else {
      EXPECT_NEAR(counts[t] / double(kDraws), p, 0.035) << "token " << t;  // about 5 standard deviations
    }
  }
}

TEST(GenerateSampling, GreedySamplerIsArgmaxWithTheLowestIndexOnTies) {
  generate::Sampler sampler(SamplingOptions{});
  EXPECT_EQ(sampler.next(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}, Ids{}), 1);
}

// ---- chat template ---------------------------------------------------------------

TEST(ChatTemplate, AddsTheDefaultSystemTurnAndTheGenerationPrompt) {
  const std::vector<ChatMessage> messages{{"user", "Describe the picture."}};
  const std::string text = generate::apply_chat_template(messages, true);
  EXPECT_EQ(text, reference().meta["prompts"]["chat"]["text"].get<std::string>());
  EXPECT_EQ(encode(text), reference().ints("prompt.chat.input_ids"));
}

TEST(ChatTemplate, RendersTheFixtureConversationWithAndWithoutGenerationPrompt) {
  const nlohmann::json& chat = reference().meta["chat"];
  std::vector<ChatMessage> messages;
  for (const auto& m : chat["messages"]) messages.push_back({m["role"], m["content"]});
  const std::string plain = generate::apply_chat_template(messages, false);
  const std::string prompted = generate::apply_chat_template(messages, true);
  EXPECT_EQ(plain, chat["text"].get<std::string>());
  EXPECT_EQ(prompted, chat["text_add_generation_prompt"].get<std::string>());
  EXPECT_EQ(encode(plain), chat["ids"].get<Ids>());
  EXPECT_EQ(encode(prompted), chat["ids_add_generation_prompt"].get<Ids>());
}

TEST(ChatTemplate, EmptyConversationHasNoSystemTurn) {
  EXPECT_EQ(generate::apply_chat_template({}, false), "");
  EXPECT_EQ(generate::apply_chat_template({}, true), "<|im_start|>assistant\n");
}

// ---- SamplingOptions::from ------------------------------------------------------

TEST(SamplingOptionsFrom, ReadsTheFixtureGenerationConfig) {
  const SamplingOptions o = SamplingOptions::from(io::GenerationConfig::load(fixture_dir()));
  EXPECT_TRUE(o.do_sample);
  EXPECT_EQ(o.temperature, 0.7f);
  EXPECT_EQ(o.top_k, 20);
  EXPECT_EQ(o.top_p, 0.8f);
  EXPECT_EQ(o.repetition_penalty, 1.05f);
  EXPECT_EQ(o.eos_token_ids, (Ids{1045, 1043}));
  EXPECT_EQ(o.max_new_tokens, SamplingOptions{}.max_new_tokens);  // the file has no max_new_tokens
  EXPECT_EQ(o.seed, 0u);
}

TEST(SamplingOptionsFrom, TakesMaxNewTokensAndGreedyFromTheConfig) {
  const auto config = io::GenerationConfig::parse(R"({"max_new_tokens": 7, "eos_token_id": 5, "top_k": null})");
  const SamplingOptions o = SamplingOptions::from(config);
  EXPECT_FALSE(o.do_sample);
  EXPECT_EQ(o.max_new_tokens, 7);
  EXPECT_EQ(o.top_k, 0);
  EXPECT_EQ(o.eos_token_ids, (Ids{5}));
}

}  // namespace
}  // namespace tessera::testing
