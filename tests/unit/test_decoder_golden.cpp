// Golden tests of models/decoder.hpp on the families beside Qwen2, against
// transformers: tests/fixtures/{llama,llama_yi,phi3,internlm2} are real
// checkpoint directories in each family's published layout (two shards,
// config.json, generation_config.json) with reference outputs written by
// tools/fixtures/make_decoder_fixtures.py (pinned torch and transformers):
//
//   llama      Llama-3.1 RoPE (llama3: untouched, smoothed and scaled
//              frequencies), GQA 4/2, config.json as transformers 5 writes it
//   llama_yi   a Yi-34B-like Llama, GQA 7/1, rope_theta 5e6, the 4.x layout
//   phi3       fused qkv_proj / gate_up_proj, LongRoPE "su" with
//              original_max_position_embeddings 32: prompts below, across
//              (during the decode) and above it
//   internlm2  fused, per-KV-group interleaved wqkv, dynamic NTK past
//              max_position_embeddings 48: prompts below, across and above
//
// CPU float32 must reproduce the logits at every stored position within
// 1e-4 of the logits' largest magnitude, the 32-token greedy continuations
// exactly (and the stored decode-step logits), and batched prompts must
// equal the same prompts run one by one. A checkpoint missing a tensor or
// with a wrong fused shape must fail naming the tensor.
#include <tessera/generate/generate.hpp>
#include <tessera/models/decoder.hpp>

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "decoder_fixtures.hpp"
#include "test_util.hpp"

namespace tessera::testing {
namespace {

namespace fx = decoder_fixtures;
using fx::argmax_row;
using fx::Ids;
using fx::Reference;
using fx::rows_close;
using Model = models::Decoder<Single<Cpu<0>>, float>;

constexpr std::int64_t kCapacity = 256;  // longest fixture run: 56 + 32 tokens

const Model& model(const std::string& fixture) {
  static std::map<std::string, std::unique_ptr<const Model>> loaded;
  auto& m = loaded[fixture];
  if (!m) m = std::make_unique<const Model>(Model::load(fx::dir(fixture)));
  return *m;
}

const Reference& reference(const std::string& fixture) {
  static std::map<std::string, std::unique_ptr<const Reference>> loaded;
  auto& r = loaded[fixture];
  if (!r) r = std::make_unique<const Reference>(fixture);
  return *r;
}

// What the fixture's prompt exercises (reference.json's note), for messages.
std::string regime(const Reference& ref, const std::string& prompt) {
  const auto& p = ref.meta["prompts"][prompt];
  return p.contains("rope_regime") ? " (" + p["rope_regime"].get<std::string>() + ")" : std::string();
}

class DecoderGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DecoderGolden, ConfigJsonNamesTheFamilyAndShapes) {
  const Reference& ref = reference(GetParam());
  const Model& m = model(GetParam());
  const auto& meta = ref.meta["model"];
  const std::map<std::string, std::string> expected_name = {
      {"llama", "Llama"}, {"llama_yi", "Llama"}, {"phi3", "Phi-3"}, {"internlm2", "InternLM2"}};
  EXPECT_EQ(std::string(m.name()), expected_name.at(meta["family"].get<std::string>()));
  EXPECT_EQ(m.config().vocab_size, meta["vocab_size"].get<std::int64_t>());
  EXPECT_EQ(m.config().hidden_size, meta["hidden_size"].get<std::int64_t>());
  EXPECT_EQ(m.config().num_hidden_layers, meta["num_hidden_layers"].get<std::int64_t>());
  EXPECT_EQ(m.config().num_attention_heads, meta["num_attention_heads"].get<std::int64_t>());
  EXPECT_EQ(m.config().num_key_value_heads, meta["num_key_value_heads"].get<std::int64_t>());
  EXPECT_EQ(m.config().head_dim(), meta["head_dim"].get<std::int64_t>());
}

TEST_P(DecoderGolden, PromptLogitsMatchTransformers) {
  const Reference& ref = reference(GetParam());
  const Model& m = model(GetParam());
  for (const std::string& prompt : ref.prompts()) {
    const Ids ids = ref.ints("prompt." + prompt + ".input_ids");
    const auto expected = ref.floats("prompt." + prompt + ".logits");
    const Ids positions = ref.ints("prompt." + prompt + ".logits_positions");
    auto cache = m.new_cache(kCapacity);
    const auto logits = to<Host>(m.forward(ids, cache));
    ASSERT_EQ(logits.shape(), Shape({static_cast<std::int64_t>(ids.size()), expected.dim(1)})) << prompt;
    const double tol = 1e-4 * max_abs(expected);
    for (std::size_t r = 0; r < positions.size(); ++r) {
      EXPECT_TRUE(rows_close(logits, positions[r], expected, static_cast<std::int64_t>(r), tol))
          << GetParam() << " prompt " << prompt << regime(ref, prompt);
    }
  }
}

// Prefill, then one cached decode step per token, each picking the argmax,
// against `tokens` [32] and the first rows of `step_logits` [K, V]; at most
// `steps` steps.
void expect_greedy_decode(const Model& m, const Ids& ids, const Ids& tokens, const Tensor<Host, float>& step_logits,
                          std::size_t steps, const std::string& what) {
  const double tol = 1e-4 * max_abs(step_logits);
  auto cache = m.new_cache(kCapacity);
  auto logits = to<Host>(m.forward(ids, cache));
  Ids generated;
  for (std::size_t step = 0; step < steps; ++step) {
    if (static_cast<std::int64_t>(step) < step_logits.dim(0)) {
      EXPECT_TRUE(rows_close(logits, logits.dim(0) - 1, step_logits, static_cast<std::int64_t>(step), tol))
          << what << ", decode step " << step << " (total length " << ids.size() + step << ")";
    }
    const std::int64_t next = argmax_row(logits, logits.dim(0) - 1);
    generated.push_back(next);
    if (step + 1 < steps) logits = to<Host>(m.forward(std::span<const std::int64_t>(&next, 1), cache));
  }
  EXPECT_EQ(generated, Ids(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(steps))) << what;
}

// The tokens equal generate()'s and the stored steps' logits match. For the
// prompts whose decode crosses phi3's original_max_position_embeddings or
// internlm2's max_position_embeddings, the stored steps include the crossing
// (reference.json prompts.NAME.decode_vs_recompute; DecoderRope below names
// each rule).
TEST_P(DecoderGolden, GreedyDecodeStepsMatchTransformersFor32Tokens) {
  const Reference& ref = reference(GetParam());
  const Model& m = model(GetParam());
  for (const std::string& prompt : ref.prompts()) {
    const Ids expected = ref.ints("prompt." + prompt + ".greedy.tokens");
    expect_greedy_decode(m, ref.ints("prompt." + prompt + ".input_ids"), expected,
                         ref.floats("prompt." + prompt + ".greedy.logits"), expected.size(),
                         GetParam() + " prompt " + prompt + regime(ref, prompt));
  }
}

// The same through tessera's generation loop with generation_config's eos
// ids (which the reference runs never produce).
TEST_P(DecoderGolden, GenerateLoopGivesTransformersGreedyTokens) {
  const Reference& ref = reference(GetParam());
  generate::SamplingOptions options;
  options.max_new_tokens = ref.max_new_tokens();
  options.eos_token_ids = ref.eos_token_ids();
  for (const std::string& prompt : ref.prompts()) {
    const Ids ids = ref.ints("prompt." + prompt + ".input_ids");
    EXPECT_EQ(generate::generate(model(GetParam()), std::span<const std::int64_t>(ids), options),
              ref.ints("prompt." + prompt + ".greedy.tokens"))
        << GetParam() << " prompt " << prompt << regime(ref, prompt);
  }
}

// The reference's batch (reference.json batch.order; for phi3 and internlm2
// prompts that stay on one side of the RoPE threshold, since transformers
// takes the batch's longest row for every row) run together through
// forward_batch: the prefill equals each prompt alone, and 32 batched decode
// steps give generate()'s batched tokens, which equal the single runs.
TEST_P(DecoderGolden, BatchedPromptsEqualThePromptsOneByOne) {
  const Reference& ref = reference(GetParam());
  const Model& m = model(GetParam());
  const auto order = ref.batch_order();
  std::vector<Ids> prompts;
  for (const auto& name : order) prompts.push_back(ref.ints("prompt." + name + ".input_ids"));
  std::vector<Model::Cache> caches;
  for (std::size_t i = 0; i < prompts.size(); ++i) caches.push_back(m.new_cache(kCapacity));
  std::vector<Model::Cache*> cache_ptrs;
  for (auto& c : caches) cache_ptrs.push_back(&c);
  std::vector<std::span<const std::int64_t>> spans(prompts.begin(), prompts.end());
  const auto batched = m.forward_batch(spans, cache_ptrs);
  ASSERT_EQ(batched.size(), prompts.size());

  const Ids expected_tokens = ref.ints("batch.greedy.tokens");  // [B, 32]
  const auto expected_steps = ref.floats("batch.greedy.logits");  // [steps, B, V]
  const auto width = static_cast<std::size_t>(ref.max_new_tokens());
  std::vector<Tensor<Host, float>> last;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto single_cache = m.new_cache(kCapacity);
    const auto single = to<Host>(m.forward(prompts[i], single_cache));
    auto together = to<Host>(batched[i]);
    ASSERT_EQ(single.shape(), together.shape());
    // The same GEMMs over more rows: equal to the rounding of the BLAS
    // blocking, far inside the golden tolerance.
    EXPECT_TRUE(all_close(to_doubles(together), to_doubles(single), 1e-5 * max_abs(single), 0.0))
        << GetParam() << " " << order[i];
    last.push_back(std::move(together));
  }

  std::vector<Ids> generated(prompts.size());
  for (std::size_t step = 0; step < width; ++step) {
    std::vector<std::int64_t> next(prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      if (static_cast<std::int64_t>(step) < expected_steps.dim(0)) {
        const auto row = fx::step_row(expected_steps, static_cast<std::int64_t>(step), static_cast<std::int64_t>(i));
        EXPECT_TRUE(rows_close(last[i], last[i].dim(0) - 1, row, 0, 1e-4 * max_abs(row)))
            << GetParam() << " " << order[i] << ", batched step " << step;
      }
      next[i] = argmax_row(last[i], last[i].dim(0) - 1);
      generated[i].push_back(next[i]);
    }
    if (step + 1 == width) break;
    std::vector<std::span<const std::int64_t>> feed;
    for (std::size_t i = 0; i < prompts.size(); ++i) feed.emplace_back(&next[i], 1);
    const auto out = m.forward_batch(feed, cache_ptrs);
    for (std::size_t i = 0; i < prompts.size(); ++i) last[i] = to<Host>(out[i]);
  }
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const Ids row(expected_tokens.begin() + static_cast<std::ptrdiff_t>(i * width),
                  expected_tokens.begin() + static_cast<std::ptrdiff_t>((i + 1) * width));
    EXPECT_EQ(generated[i], row) << GetParam() << " " << order[i];
    EXPECT_EQ(generated[i], ref.ints("prompt." + order[i] + ".greedy.tokens")) << GetParam() << " " << order[i];
  }
}

// transformers' own left-padded batch (input_ids + attention_mask) gives, at
// each row's last position, the first-step logits it recorded.
TEST_P(DecoderGolden, LeftPaddedBatchWithAttentionMaskMatchesTransformers) {
  const Reference& ref = reference(GetParam());
  const Model& m = model(GetParam());
  const auto ids = ref.arrays.load<Host, std::int64_t>("batch.input_ids");
  const auto mask = ref.arrays.load<Host, std::int64_t>("batch.attention_mask");
  const auto steps = ref.floats("batch.greedy.logits");
  std::vector<Model::Cache> caches;
  for (std::int64_t i = 0; i < ids.dim(0); ++i) caches.push_back(m.new_cache(kCapacity));
  std::vector<Model::Cache*> cache_ptrs;
  for (auto& c : caches) cache_ptrs.push_back(&c);
  const auto out = m.forward_padded(ids, mask, cache_ptrs);
  ASSERT_EQ(out.size(), static_cast<std::size_t>(ids.dim(0)));
  for (std::int64_t i = 0; i < ids.dim(0); ++i) {
    const auto logits = to<Host>(out[static_cast<std::size_t>(i)]);
    const auto expected = fx::step_row(steps, 0, i);
    EXPECT_TRUE(rows_close(logits, logits.dim(0) - 1, expected, 0, 1e-4 * max_abs(expected)))
        << GetParam() << " row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecoderGolden, ::testing::ValuesIn(fx::names()));

// ---- the RoPE variants past their threshold during the decode -----------------

// Phi-3's LongRoPE picks the short or long factors per forward call from its
// total length. When a decode first takes the total length past
// original_max_position_embeddings (32), transformers has two answers:
//
// - Phi3ForCausalLM.generate() (prepare_inputs_for_generation) drops the KV
//   cache at that step and runs the whole sequence again with the long
//   factors: every later step equals a no-cache forward;
// - InternVLForConditionalGeneration.generate() (native) and InternVL2-4B's
//   remote code keep decoding on the cache, whose keys stay rotated with the
//   short factors.
//
// The fixture keeps both (greedy.* and plain_cache.*); the decoder follows
// the first by default (LongRopeCrossing::rerun) and the second with
// set_longrope_crossing(keep_cache).
TEST(DecoderRope, Phi3PastTheOriginalLengthDuringTheDecodeLikePhi3ForCausalLMGenerate) {
  const Reference& ref = reference("phi3");
  ASSERT_EQ(model("phi3").longrope_crossing(), Model::LongRopeCrossing::rerun) << "the default";
  for (const std::string prompt : {"below", "short"}) {
    expect_greedy_decode(model("phi3"), ref.ints("prompt." + prompt + ".input_ids"),
                         ref.ints("prompt." + prompt + ".greedy.tokens"),
                         ref.floats("prompt." + prompt + ".greedy.logits"), 32,
                         "phi3 prompt " + prompt + regime(ref, prompt) +
                             ": Phi3ForCausalLM.generate() recomputes the whole sequence with the long factors at the "
                             "first step past original_max_position_embeddings");
  }
}

TEST(DecoderRope, Phi3PastTheOriginalLengthDuringTheDecodeLikeInternVLGenerate) {
  const Reference& ref = reference("phi3");
  static const Model keep_cache = [] {
    Model m = Model::load(fx::dir("phi3"));
    m.set_longrope_crossing(Model::LongRopeCrossing::keep_cache);
    return m;
  }();
  for (const std::string prompt : {"below", "short"}) {
    const std::string name = "prompt." + prompt + ".plain_cache.";
    const auto logits = ref.has(name + "logits") ? ref.floats(name + "logits")
                                                 : Tensor<Host, float>(Shape{0, ref.meta["model"]["vocab_size"].get<std::int64_t>()});
    expect_greedy_decode(keep_cache, ref.ints("prompt." + prompt + ".input_ids"), ref.ints(name + "tokens"), logits,
                         32,
                         "phi3 prompt " + prompt + regime(ref, prompt) +
                             ": InternVL's generate() keeps the short-rotated keys in the cache");
  }
}

// InternLM2's dynamic NTK (transformers' Llama "dynamic"): each call past
// max_position_embeddings (48) rotates its new tokens with
// base' = theta * (f * L / 48 - (f - 1))^(d / (d - 2)) for its total length
// L; cached keys keep the base they were rotated with. generate() is this
// plain cached decode, so the generic test covers it; this one names the rule.
TEST(DecoderRope, InternLM2DynamicNtkDuringTheDecodeKeepsTheCachedKeys) {
  const Reference& ref = reference("internlm2");
  const std::string prompt = "below";
  expect_greedy_decode(model("internlm2"), ref.ints("prompt." + prompt + ".input_ids"),
                       ref.ints("prompt." + prompt + ".greedy.tokens"), ref.floats("prompt." + prompt + ".greedy.logits"),
                       32, "internlm2 prompt below" + regime(ref, prompt));
}

// ---- broken checkpoints --------------------------------------------------------

TEST(DecoderCheckpoint, MissingTensorIsNamed) {
  for (const auto& [fixture, tensor] : std::vector<std::pair<std::string, std::string>>{
           {"llama", "model.layers.1.mlp.down_proj.weight"},
           {"phi3", "model.layers.1.self_attn.qkv_proj.weight"},
           {"internlm2", "model.layers.1.feed_forward.w2.weight"},
           {"internlm2", "output.weight"}}) {
    {
      // Gone from the shard and the index: the checkpoint has no such tensor.
      fx::CheckpointCopy copy(fixture, "missing");
      copy.drop(tensor, /*from_index=*/true);
      expect_error<Error>([&] { (void)Model::load(copy.path()); }, {tensor});
    }
    {
      // Gone from the shard only: the index and the shard disagree.
      fx::CheckpointCopy copy(fixture, "unlisted");
      copy.drop(tensor, /*from_index=*/false);
      expect_error<Error>([&] { (void)Model::load(copy.path()); }, {tensor});
    }
  }
}

TEST(DecoderCheckpoint, WrongFusedShapeIsNamed) {
  const auto head_dim = reference("internlm2").meta["model"]["head_dim"].get<std::int64_t>();
  const auto rows_of = [](const std::string& fixture, const std::string& tensor) {
    const auto file = io::SafetensorsFile::open(fx::dir(fixture) / fx::shard_of(fx::dir(fixture), tensor));
    return file.at(tensor).shape.dims()[0];
  };
  for (const auto& [fixture, tensor] : std::vector<std::pair<std::string, std::string>>{
           {"internlm2", "model.layers.1.attention.wqkv.weight"},
           {"internlm2", "model.layers.0.attention.wqkv.weight"},
           {"phi3", "model.layers.0.self_attn.qkv_proj.weight"},
           {"phi3", "model.layers.1.mlp.gate_up_proj.weight"}}) {
    fx::CheckpointCopy copy(fixture, "shape");
    // One head fewer: still a multiple of head_dim, so only the shape
    // config.json implies can tell.
    copy.truncate_rows(tensor, rows_of(fixture, tensor) - head_dim);
    expect_error<Error>([&] { (void)Model::load(copy.path()); }, {tensor});
  }
}

}  // namespace
}  // namespace tessera::testing
