// Tensor-parallel placement (DESIGN.md § Placement): heads, KV heads and
// MLP columns split over CPU slots with the in-process communicator. The
// row-parallel sums are taken in another order than one device's GEMM, so
// the check is the golden one: logits within 1e-4 of their largest
// magnitude of transformers' reference at every prompt position and decode
// step, and the reference's 32 greedy tokens exactly.
#include <tessera/generate/generate.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/models/qwen2_5_vl.hpp>

#include "qwen2_5_vl_fixtures.hpp"

namespace tessera::testing {
namespace {

using namespace qwen2_5_vl_fixtures;
using TP = models::Qwen2_5_VL<TensorParallel<Cpu<0>, Cpu<1>>, float>;
using PipeTP = models::Qwen2_5_VL<Pipeline<TensorParallel<Cpu<0>, Cpu<1>>, Cpu<2>>, float>;

const Reference& legacy_reference() {
  static const Reference ref("legacy");
  return ref;
}

// Every case's prompt logits and decode steps within the golden tolerance,
// and the 32 greedy tokens equal to the reference.
template <class Model>
void expect_matches_reference(const Model& m) {
  const Reference& ref = legacy_reference();
  for (const std::string& c : cases()) {
    const auto p = prompt_of(ref, "legacy", c);
    const std::string out = outputs_of(c);
    auto cache = m.new_cache(256);
    const auto logits = to<Host>(m.forward(p, cache));
    if (ref.has(out + ".logits")) {
      const auto expected = ref.floats(out + ".logits");
      EXPECT_LE(max_diff(logits, expected), 1e-4 * max_abs(expected)) << c;
    } else {
      const auto expected = ref.floats(out + ".logits_last");
      EXPECT_LE(max_diff(row(logits, logits.dim(0) - 1), expected), 1e-4 * max_abs(expected)) << c;
    }
    const Ids greedy = ref.ints(out + ".greedy");
    const auto decode = ref.floats(out + ".decode_logits");
    for (std::int64_t step = 0; step < decode.dim(0); ++step) {
      const std::int64_t id = greedy[static_cast<std::size_t>(step)];
      const auto got = to<Host>(m.forward(std::span<const std::int64_t>(&id, 1), cache));
      const auto want = row(decode, step);
      EXPECT_LE(max_diff(got, want), 1e-4 * max_abs(want)) << c << " step " << step;
    }
    generate::SamplingOptions options;
    options.max_new_tokens = 32;
    options.eos_token_ids = ref.meta["generation"]["eos_token_id"].get<Ids>();
    EXPECT_EQ(generate::generate(m, p, options), greedy) << c;
  }
}

TEST(TensorParallelPlacement, TwoCpuSlotsMatchTheReference) {
  expect_matches_reference(TP::load(vl_dir("legacy")));
}

TEST(TensorParallelPlacement, PipelineOfATensorParallelGroupAndASlotMatchesTheReference) {
  expect_matches_reference(PipeTP::load(vl_dir("legacy")));
}

// Each rank holds half of every split weight: Cpu<1>'s ledger grows by the
// rank-1 shard of the layers (q/k/v/gate/up rows, o/down columns), the
// whole norms, and its replica of the embeddings, final norm and lm_head
// (every rank embeds its own input and, under MPI, samples from its own
// logits); the vision tower stays on the first rank only.
TEST(TensorParallelPlacement, RankOneHoldsHalfOfTheSplitWeights) {
  const auto dir = vl_dir("legacy");
  const auto checkpoint = io::Checkpoint::open(dir);
  std::uint64_t expected = 0;
  for (const auto& name : checkpoint.names()) {
    if (name.rfind("visual.", 0) == 0) continue;
    const auto bytes = static_cast<std::uint64_t>(checkpoint.info(name).numel()) * 4;
    const bool split = name.rfind("model.layers.", 0) == 0 && name.find("layernorm") == std::string::npos;
    expected += split ? bytes / 2 : bytes;
  }
  const std::uint64_t before = ledger<Cpu<1>>().live();
  const TP m = TP::load(dir);
  EXPECT_EQ(ledger<Cpu<1>>().live() - before, expected);
}

// The tied fixture has one KV head: two ranks cannot split it, which is a
// placement error raised before any weight is loaded.
TEST(TensorParallelPlacement, IndivisibleHeadCountIsAPlanError) {
  const std::uint64_t before = ledger<Cpu<1>>().live();
  expect_error<PlanError>([] { (void)TP::load(vl_dir("tied")); },
                          {"TensorParallel<Cpu<0>, Cpu<1>>", "does not divide num_key_value_heads = 1"});
  EXPECT_EQ(ledger<Cpu<1>>().live(), before);
}

// The text model alone: tensor parallel within tolerance of Single and the
// same greedy tokens.
TEST(TensorParallelPlacementQwen2, MatchesSingleWithinTolerance) {
  const auto dir = root() / "qwen2" / "untied";
  const auto single_model = models::Qwen2<Single<Cpu<0>>, float>::load(dir);
  const auto tp = models::Qwen2<TensorParallel<Cpu<0>, Cpu<1>>, float>::load(dir);
  const Ids prompt = {311, 967, 768, 909, 42, 7, 1, 2, 3};
  auto a = single_model.new_cache(64);
  auto b = tp.new_cache(64);
  const auto want = to<Host>(single_model.forward(prompt, a));
  const auto got = to<Host>(tp.forward(prompt, b));
  EXPECT_LE(max_diff(got, want), 1e-4 * max_abs(want));
  generate::SamplingOptions options;
  options.max_new_tokens = 32;
  EXPECT_EQ(generate::generate(tp, prompt, options), generate::generate(single_model, prompt, options));
}

}  // namespace
}  // namespace tessera::testing
