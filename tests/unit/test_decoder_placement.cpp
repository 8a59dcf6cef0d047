// Every decoder family under every CPU-slot placement (DESIGN.md §
// Placement): a pipeline gives the same bits as one device (the stages run
// the same kernels on the same rows, only the residual crosses with to<>);
// tensor parallel splits heads, KV groups (InternLM2's interleaved wqkv and
// Phi-3's fused qkv_proj / gate_up_proj are sliced per rank at load) and
// MLP columns, so its sums run in another order and the check is the
// golden one: logits within 1e-4 of their largest magnitude, and
// transformers' 32 greedy tokens exactly. Dynamic NTK's sticky state and
// LongRoPE's per-call choice live in the cache and the call, not on a
// device, so they behave the same under every placement.
#include <cstring>

#include <tessera/generate/generate.hpp>
#include <tessera/models/decoder.hpp>

#include "decoder_fixtures.hpp"

namespace tessera::testing {
namespace {

namespace fx = decoder_fixtures;
using Ids = fx::Ids;
using SingleModel = models::Decoder<Single<Cpu<0>>, float>;
using PipelineModel = models::Decoder<Pipeline<Cpu<0>, Cpu<1>>, float>;
using TensorParallelModel = models::Decoder<TensorParallel<Cpu<0>, Cpu<1>>, float>;
using PipelineOfGroups = models::Decoder<Pipeline<TensorParallel<Cpu<0>, Cpu<1>>, Cpu<2>>, float>;
using FourStages = models::Decoder<Pipeline<Cpu<0>, Cpu<1>, Cpu<2>, Cpu<3>>, float>;
using FourRanks = models::Decoder<TensorParallel<Cpu<0>, Cpu<1>, Cpu<2>, Cpu<3>>, float>;
using TwoStagesOfPairs = models::Decoder<Pipeline<TensorParallel<Cpu<0>, Cpu<1>>, TensorParallel<Cpu<2>, Cpu<3>>>, float>;

// The prompt's logits and those of `steps` greedy decode steps after it.
template <class Model>
std::vector<Tensor<Host, float>> run(const Model& m, const Ids& ids, const Ids& continuation, std::size_t steps) {
  std::vector<Tensor<Host, float>> out;
  auto cache = m.new_cache(static_cast<std::int64_t>(ids.size() + steps + 1));
  out.push_back(to<Host>(m.forward(ids, cache)));
  for (std::size_t s = 0; s < steps; ++s) {
    const std::int64_t id = continuation[s];
    out.push_back(to<Host>(m.forward(std::span<const std::int64_t>(&id, 1), cache)));
  }
  return out;
}

class DecoderPlacement : public ::testing::TestWithParam<std::string> {};

// Enough decode steps to cross each fixture's RoPE threshold where it has
// one (Phi-3's 32, InternLM2's 48) from its prompt below it.
constexpr std::size_t kSteps = 32;

TEST_P(DecoderPlacement, PipelineOverTwoSlotsIsBitIdenticalToOneDevice) {
  const fx::Reference ref(GetParam());
  const SingleModel one = SingleModel::load(fx::dir(GetParam()));
  const PipelineModel two = PipelineModel::load(fx::dir(GetParam()));
  const auto layers = static_cast<std::size_t>(one.config().num_hidden_layers);
  for (std::size_t l = 0; l < layers; ++l) ASSERT_EQ(two.placement().layer_stage[l], l * 2 / layers) << l;
  for (const auto& prompt : ref.prompts()) {
    const Ids ids = ref.ints("prompt." + prompt + ".input_ids");
    const Ids tokens = ref.ints("prompt." + prompt + ".greedy.tokens");
    const auto a = run(one, ids, tokens, std::min(kSteps, tokens.size() - 1));
    const auto b = run(two, ids, tokens, std::min(kSteps, tokens.size() - 1));
    for (std::size_t s = 0; s < a.size(); ++s) EXPECT_TRUE(same_bits(a[s], b[s])) << prompt << " step " << s;
  }
}

template <class Model>
void expect_within_golden_tolerance(const Model& m, const std::string& fixture) {
  const fx::Reference ref(fixture);
  const SingleModel one = SingleModel::load(fx::dir(fixture));
  for (const auto& prompt : ref.prompts()) {
    const Ids ids = ref.ints("prompt." + prompt + ".input_ids");
    const Ids tokens = ref.ints("prompt." + prompt + ".greedy.tokens");
    const auto want = run(one, ids, tokens, std::min(kSteps, tokens.size() - 1));
    const auto got = run(m, ids, tokens, std::min(kSteps, tokens.size() - 1));
    for (std::size_t s = 0; s < got.size(); ++s) {
      EXPECT_LE(max_diff(got[s], want[s]), 1e-4 * max_abs(want[s])) << fixture << " " << prompt << " step " << s;
    }
    generate::SamplingOptions options;
    options.max_new_tokens = static_cast<std::int64_t>(tokens.size());
    options.eos_token_ids = ref.eos_token_ids();
    EXPECT_EQ(generate::generate(m, ids, options), tokens) << fixture << " " << prompt;
  }
}

// Whether a pair of ranks can split the fixture's heads: the Yi-like model
// has 7 query heads and one KV head (Yi-34B's 56/8 scaled down), which no
// group of two divides.
bool pairs_divide(const std::string& fixture) {
  const auto c = io::DecoderConfig::load(fx::dir(fixture));
  return c.num_attention_heads % 2 == 0 && c.num_key_value_heads % 2 == 0 && c.intermediate_size % 2 == 0;
}

TEST_P(DecoderPlacement, TensorParallelOverTwoSlotsMatchesTheReference) {
  if (!pairs_divide(GetParam())) {
    expect_error<PlanError>([&] { (void)TensorParallelModel::load(fx::dir(GetParam())); },
                            {"stage 0", "over 2 devices", "does not divide num_attention_heads = 7"});
    return;
  }
  expect_within_golden_tolerance(TensorParallelModel::load(fx::dir(GetParam())), GetParam());
}

TEST_P(DecoderPlacement, PipelineOfATensorParallelGroupAndASlotMatchesTheReference) {
  if (!pairs_divide(GetParam())) {
    expect_error<PlanError>([&] { (void)PipelineOfGroups::load(fx::dir(GetParam())); }, {"does not divide"});
    return;
  }
  expect_within_golden_tolerance(PipelineOfGroups::load(fx::dir(GetParam())), GetParam());
}

// Rank 1 of a tensor-parallel pair holds exactly half of every split
// weight, whether the checkpoint stores it fused or not: its ledger grows
// by half of q/k/v/o/gate/up/down (fused or not) plus whole norms,
// embeddings and head.
TEST_P(DecoderPlacement, RankOneHoldsHalfOfEveryFusedOrSeparateWeight) {
  if (!pairs_divide(GetParam())) GTEST_SKIP() << GetParam() << " cannot be split over two ranks (see above)";
  const auto checkpoint = io::Checkpoint::open(fx::dir(GetParam()));
  const auto config = io::DecoderConfig::load(fx::dir(GetParam()));
  const auto weights = models::weights_for(models::detect_family(config, GetParam()));
  std::uint64_t expected = 0;
  for (const auto& name : checkpoint.names()) {
    const auto role = models::decoder_tensor(weights, config, "model.", weights.lm_head, name);
    ASSERT_TRUE(role) << name;
    const auto bytes = static_cast<std::uint64_t>(checkpoint.info(name).numel()) * 4;
    expected += role->split == models::DecoderSplit::replicated ? bytes : bytes / 2;
  }
  const std::uint64_t before = ledger<Cpu<1>>().live();
  {
    const TensorParallelModel m = TensorParallelModel::load(fx::dir(GetParam()));
    EXPECT_EQ(ledger<Cpu<1>>().live() - before, expected);
  }
  EXPECT_EQ(ledger<Cpu<1>>().live(), before);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecoderPlacement, ::testing::ValuesIn(fx::names()));

// ---- four CPU slots: the layouts the big checkpoints need, on the fixture
// with 4 layers and 8 heads / 4 KV heads (each of four ranks holds one
// interleaved wqkv KV group) ----------------------------------------------------

const std::string kWide = "internlm2_wide";

TEST(DecoderPlacementFourSlots, FourStagePipelineIsBitIdenticalWithOneLayerPerStage) {
  const fx::Reference ref(kWide);
  const SingleModel one = SingleModel::load(fx::dir(kWide));
  const FourStages four = FourStages::load(fx::dir(kWide));
  ASSERT_EQ(four.placement().layer_stage, (std::vector<std::size_t>{0, 1, 2, 3}));
  for (const auto& prompt : ref.prompts()) {
    const Ids ids = ref.ints("prompt." + prompt + ".input_ids");
    const Ids tokens = ref.ints("prompt." + prompt + ".greedy.tokens");
    const auto a = run(one, ids, tokens, std::min(kSteps, tokens.size() - 1));
    const auto b = run(four, ids, tokens, std::min(kSteps, tokens.size() - 1));
    for (std::size_t s = 0; s < a.size(); ++s) EXPECT_TRUE(same_bits(a[s], b[s])) << prompt << " step " << s;
  }
}

TEST(DecoderPlacementFourSlots, TensorParallelOverFourSlotsMatchesTheReference) {
  expect_within_golden_tolerance(FourRanks::load(fx::dir(kWide)), kWide);
}

TEST(DecoderPlacementFourSlots, TwoStagesOfTensorParallelPairsMatchTheReference) {
  expect_within_golden_tolerance(TwoStagesOfPairs::load(fx::dir(kWide)), kWide);
}

// A group of four cannot split two KV heads: refused before loading.
TEST(DecoderPlacementFourSlots, FourRanksRefuseTwoKeyValueHeads) {
  expect_error<PlanError>([] { (void)FourRanks::load(fx::dir("internlm2")); },
                          {"InternLM2", "over 4 devices", "does not divide num_key_value_heads = 2"});
}

}  // namespace
}  // namespace tessera::testing
