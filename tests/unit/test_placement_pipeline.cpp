// Pipeline placement (DESIGN.md § Placement): Qwen2.5-VL and Qwen2 split
// over CPU slots must give Single<Cpu<0>>'s output bit for bit — prefill
// logits, decode steps and greedy tokens — for every fixture case, whatever
// the layer split and wherever the vision tower, the embeddings and the
// head are pinned. Each stage's weights and KV cache live on its own slot.
#include <tessera/generate/generate.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/models/qwen2_5_vl.hpp>

#include "qwen2_5_vl_fixtures.hpp"

namespace tessera::testing {
namespace {

using namespace qwen2_5_vl_fixtures;
using Single0 = models::Qwen2_5_VL<Single<Cpu<0>>, float>;
using Two = models::Qwen2_5_VL<Pipeline<Cpu<0>, Cpu<1>>, float>;
using Three = models::Qwen2_5_VL<Pipeline<Cpu<0>, Cpu<1>, Cpu<2>>, float>;

const Reference& reference(const std::string& variant) {
  static const Reference legacy("legacy"), tied("tied");
  return variant == "tied" ? tied : legacy;
}
const Single0& single(const std::string& variant) {
  static const Single0 legacy = Single0::load(vl_dir("legacy")), tied = Single0::load(vl_dir("tied"));
  return variant == "tied" ? tied : legacy;
}

// Prefill logits and `steps` greedy decode steps of one case, on the host.
template <class Model>
std::vector<Tensor<Host, float>> run_case(const Model& m, const vl::Prompt& p, int steps) {
  std::vector<Tensor<Host, float>> out;
  auto cache = m.new_cache(256);
  out.push_back(to<Host>(m.forward(p, cache)));
  for (int s = 0; s < steps; ++s) {
    const auto& last = out.back();
    const std::int64_t vocab = last.dim(1);
    const float* row_ptr = last.raw() + (last.dim(0) - 1) * vocab;
    const std::int64_t id = std::max_element(row_ptr, row_ptr + vocab) - row_ptr;
    out.push_back(to<Host>(m.forward(std::span<const std::int64_t>(&id, 1), cache)));
  }
  return out;
}

template <class Model>
void expect_same_as_single(const Model& m, const std::string& variant, const std::vector<std::string>& which) {
  for (const std::string& c : which) {
    const auto p = prompt_of(reference(variant), variant, c);
    const auto want = run_case(single(variant), p, 3);
    const auto got = run_case(m, p, 3);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_TRUE(same_bits(got[i], want[i])) << variant << " " << c << (i == 0 ? " prefill" : " decode step ")
                                              << (i == 0 ? std::string() : std::to_string(i));
    }
  }
}

placement::Layout layout(std::vector<std::size_t> layers, std::size_t embed, std::size_t vision, std::size_t head) {
  placement::Layout l;
  l.layer_stage = std::move(layers);
  l.embed_stage = embed;
  l.vision_stage = vision;
  l.head_stage = head;
  return l;
}

class PipelinePlacement : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelinePlacement, TwoCpuSlotsEqualSingleBitForBitOnEveryCase) {
  const Two m = Two::load(vl_dir(GetParam()));  // default layout: one layer per stage, parts on stage 0
  EXPECT_EQ(m.placement().layer_stage, (std::vector<std::size_t>{0, 1}));
  expect_same_as_single(m, GetParam(), cases());
}

TEST_P(PipelinePlacement, GreedyTokensEqualTheReference) {
  const Two m = Two::load(vl_dir(GetParam()));
  generate::SamplingOptions greedy;
  greedy.max_new_tokens = 32;
  greedy.eos_token_ids = reference(GetParam()).meta["generation"]["eos_token_id"].get<Ids>();
  for (const std::string& c : {std::string("two_images"), std::string("video")}) {
    const auto p = prompt_of(reference(GetParam()), GetParam(), c);
    EXPECT_EQ(generate::generate(m, p, greedy), reference(GetParam()).ints(outputs_of(c) + ".greedy")) << c;
  }
}

// Pins moved off stage 0: the head (and, tied, a copy of the embedding
// table) on stage 1, the vision tower on stage 1 (features cross back with
// to<>), the embeddings on stage 1, all layers on one stage.
TEST_P(PipelinePlacement, MovedPinsStillEqualSingle) {
  for (const auto& l : {layout({0, 1}, 0, 0, 1), layout({0, 1}, 0, 1, 0), layout({0, 1}, 1, 1, 1),
                        layout({1, 1}, 0, 0, 0), layout({0, 0}, 1, 1, 1)}) {
    SCOPED_TRACE(::testing::Message() << "layers " << l.layer_stage[0] << "," << l.layer_stage[1] << " embed "
                                      << l.embed_stage << " vision " << l.vision_stage << " head " << l.head_stage);
    const Two m = Two::load(vl_dir(GetParam()), l);
    expect_same_as_single(m, GetParam(), {"two_images", "video"});
  }
}

TEST_P(PipelinePlacement, ThreeStagesWithAnEmptyOneEqualSingle) {
  const Three m = Three::load(vl_dir(GetParam()), layout({0, 2}, 0, 1, 2));
  expect_same_as_single(m, GetParam(), {"one_image", "video"});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PipelinePlacement, ::testing::Values("legacy", "tied"));

// Stage 1's layer weights and KV cache are allocated on Cpu<1>: its ledger
// grows by exactly the layer's bytes at load and the cache's at new_cache.
TEST(PipelinePlacementMemory, EachStageAllocatesOnItsOwnSlot) {
  const auto dir = vl_dir("legacy");
  const auto checkpoint = io::Checkpoint::open(dir);
  std::uint64_t layer1 = 0;
  for (const auto& name : checkpoint.names()) {
    if (name.rfind("model.layers.1.", 0) == 0) layer1 += static_cast<std::uint64_t>(checkpoint.info(name).numel()) * 4;
  }
  const std::uint64_t before = ledger<Cpu<1>>().live();
  const Two m = Two::load(dir);
  EXPECT_EQ(ledger<Cpu<1>>().live() - before, layer1);
  const auto& text = m.config().text;
  const std::uint64_t cache_bytes = 2ull * 1 * 64 * static_cast<std::uint64_t>(text.num_key_value_heads * text.head_dim()) * 4;
  {
    const auto cache = m.new_cache(64);
    EXPECT_EQ(ledger<Cpu<1>>().live() - before, layer1 + cache_bytes);
  }
  EXPECT_EQ(ledger<Cpu<1>>().live() - before, layer1);
}

TEST(PipelinePlacementErrors, BadLayoutsAreRefusedBeforeLoading) {
  const std::uint64_t before = ledger<Cpu<1>>().live();
  expect_error<PlanError>([] { (void)Two::load(vl_dir("legacy"), layout({1, 0}, 0, 0, 0)); },
                          {"layer 1 is on stage 0 after layer 0 on stage 1", "consecutive"});
  expect_error<PlanError>([] { (void)Two::load(vl_dir("legacy"), layout({0, 2}, 0, 0, 0)); },
                          {"layer 1 is on stage 2", "2 stage(s)"});
  expect_error<PlanError>([] { (void)Two::load(vl_dir("legacy"), layout({0, 1}, 0, 3, 0)); },
                          {"vision tower", "stage 3 of 2"});
  expect_error<PlanError>([] { (void)Two::load(vl_dir("legacy"), layout({0, 1, 1}, 0, 0, 0)); },
                          {"places 3 decoder layers but the model has 2"});
  EXPECT_EQ(ledger<Cpu<1>>().live(), before);
}

// The text model alone: batched prompts through a pipeline equal Single.
TEST(PipelinePlacementQwen2, BatchedForwardEqualsSingle) {
  const auto dir = root() / "qwen2" / "untied";
  const auto single_model = models::Qwen2<Single<Cpu<0>>, float>::load(dir);
  const auto piped = models::Qwen2<Pipeline<Cpu<0>, Cpu<1>>, float>::load(dir);
  const std::vector<Ids> prompts = {{311, 967, 768, 909}, {42, 7}, {1, 2, 3}};
  std::vector<std::span<const std::int64_t>> spans(prompts.begin(), prompts.end());
  auto c1 = single_model.new_cache(16), c2 = single_model.new_cache(16), c3 = single_model.new_cache(16);
  auto d1 = piped.new_cache(16), d2 = piped.new_cache(16), d3 = piped.new_cache(16);
  std::vector<decltype(c1)*> a = {&c1, &c2, &c3};
  std::vector<decltype(d1)*> b = {&d1, &d2, &d3};
  const auto want = single_model.forward_batch(spans, a);
  const auto got = piped.forward_batch(spans, b);
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(same_bits(to<Host>(got[i]), to<Host>(want[i]))) << i;
}

}  // namespace
}  // namespace tessera::testing
