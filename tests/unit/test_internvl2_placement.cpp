// InternVL2 under the CPU-slot placements and against the planner
// (tests/fixtures/internvl2):
//
//   * Pipeline<Cpu<0>, Cpu<1>> and a four-slot pipeline give the same bits
//     as Single<Cpu<0>> for the prompt and 32 decode steps (the stages run
//     the same kernels on the same rows; only the residual and the features
//     cross with to<>), with InternViT + mlp1 on stage 0 and pinned to the
//     last stage;
//   * TensorParallel<Cpu<0>, Cpu<1>> splits the language model's heads and
//     MLP, so its sums run in another order: logits within the golden
//     tolerance and the reference's greedy tokens, also for the 6B-style
//     tower whose 5 heads do not divide the pair (it runs whole on cpu0);
//   * the planner (internvl2_description.hpp) from the headers alone: every
//     tensor classified, the tower + mlp1 as one pinned unit, and on a
//     single device, a pipeline and a tensor-parallel pair the ledger's
//     weights and KV cache equal to the plan's, every measured peak within
//     the plan, the busiest device's prediction within 25 % of its measure.
#include <tessera/generate/generate.hpp>
#include <tessera/models/internvl2.hpp>
#include <tessera/models/internvl2_description.hpp>
#include <tessera/placement/planner.hpp>

#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "internvl2_fixtures.hpp"
#include "ledger_util.hpp"

namespace tessera::testing {
namespace {

using namespace internvl2_fixtures;
template <DevicePlacement P>
using Model = models::InternVL2<P, float>;
using SingleModel = Model<Single<Cpu<0>>>;
using PipelineModel = Model<Pipeline<Cpu<0>, Cpu<1>>>;
using Pipeline4Model = Model<Pipeline<Cpu<0>, Cpu<1>, Cpu<2>, Cpu<3>>>;
using TensorParallelModel = Model<TensorParallel<Cpu<0>, Cpu<1>>>;

constexpr std::size_t kSteps = 32;

// The prompt's logits and those of `kSteps` decode steps feeding the
// reference's greedy tokens.
template <class M>
std::vector<Tensor<Host, float>> run(const M& m, const iv::Prompt& p, const Ids& continuation) {
  return prompt_and_decode_logits(m, p, continuation, kSteps);
}

const std::vector<Tensor<Host, float>>& single_run(const std::string& id) {
  static std::map<std::string, std::vector<Tensor<Host, float>>> runs;
  if (!runs.contains(id)) {
    const SingleModel m = SingleModel::load(model_dir(split_case(id).first));
    runs.emplace(id, run(m, prompt_of(id), reference().ints(id + ".greedy")));
  }
  return runs.at(id);
}

template <class M>
void expect_same_as_single(const M& m, const std::string& id) {
  const auto piped = run(m, prompt_of(id), reference().ints(id + ".greedy"));
  const auto& single = single_run(id);
  for (std::size_t i = 0; i < piped.size(); ++i) EXPECT_TRUE(same_bits(piped[i], single[i])) << id << " step " << i;
}

class InternVL2Placement : public ::testing::TestWithParam<std::string> {};

TEST_P(InternVL2Placement, PipelineIsBitIdenticalToOneDevice) {
  const std::string id = GetParam();
  const PipelineModel m = PipelineModel::load(model_dir(split_case(id).first));
  EXPECT_EQ(m.placement().vision_stage, 0u);
  expect_same_as_single(m, id);
}

// Four slots for a two-layer model: embeddings on stage 0, one layer each
// on stages 1 and 2, the head and the tower on stage 3, so the features
// and the residual cross every way they can.
TEST_P(InternVL2Placement, FourStagePipelineWithTheTowerOnTheLastStageGivesTheSameBits) {
  const std::string id = GetParam();
  placement::Layout layout;
  layout.layer_stage = {1, 2};
  layout.embed_stage = 0;
  layout.head_stage = 3;
  layout.vision_stage = 3;
  const Pipeline4Model m = Pipeline4Model::load(model_dir(split_case(id).first), layout);
  expect_same_as_single(m, id);
}

TEST_P(InternVL2Placement, TensorParallelMatchesTheReference) {
  const std::string id = GetParam();
  const TensorParallelModel m = TensorParallelModel::load(model_dir(split_case(id).first));
  const iv::Prompt p = prompt_of(id);
  auto cache = m.new_cache(static_cast<std::int64_t>(p.ids.size()) + 1);
  expect_golden_close(to<Host>(m.forward(p, cache)), reference().floats(id + ".logits"), id + " tensor-parallel logits");
  generate::SamplingOptions o;
  o.max_new_tokens = static_cast<std::int64_t>(kSteps);
  o.do_sample = false;
  o.repetition_penalty = 1.0;
  o.eos_token_ids.clear();
  const auto generated = generate::generate(m, p, o);
  EXPECT_EQ(Ids(generated.begin(), generated.end()), reference().ints(id + ".greedy"));
}

// Qwen2 with two images (4 tiles), and InternLM2 under the 6B-style tower
// with 5 heads (which no group of two divides).
INSTANTIATE_TEST_SUITE_P(Cases, InternVL2Placement, ::testing::Values("qwen2_300m.two_images", "internlm2_6b.wide"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param.substr(0, i.param.find('.'));
                         });

// ---- the planner against the ledger -------------------------------------------

// Case `id` under P against its plan (ledger_util.hpp), its tiles as the
// vision units.
template <DevicePlacement P>
void check_placed_run(const std::string& id) {
  SCOPED_TRACE(id + " " + policy_name<P>());
  const fs::path dir = model_dir(split_case(id).first);
  check_plan_against_ledger<P>(
      [&] { return prompt_of(id); },
      [](const iv::Prompt& p) { return iv::tile_count(p.images); },
      [&](const placement::PlanRequest& r) { return placement::plan_internvl2(dir, r); },
      [&](const placement::Layout& layout) { return Model<P>::load(dir, layout); });
}

TEST(InternVL2Planner, DescriptionClassifiesEveryTensor) {
  for (const std::string model : {"qwen2_300m", "internlm2_300m", "phi3_300m", "internlm2_6b", "llama_6b"}) {
    SCOPED_TRACE(model);
    const placement::ModelDescription m = iv::describe(model_dir(model));
    const iv::Config& config = config_of(model);
    const std::int64_t used = iv::layers_used(config.vision, config.projector.select_layer);
    std::size_t vision = 0;
    for (const auto& [name, numel] : m.tensors) {
      const placement::TensorRole role = m.role(name);
      // The tower's layers past the feature layer are the only tensors not loaded.
      const bool unused_layer =
          name.starts_with("vision_model.encoder.layers.") &&
          std::stoll(name.substr(std::string("vision_model.encoder.layers.").size())) >= used;
      EXPECT_EQ(role.part == placement::TensorPart::ignored, unused_layer) << name;
      if (role.part == placement::TensorPart::vision) {
        ++vision;
        EXPECT_TRUE(name.starts_with("vision_model.") || name.starts_with("mlp1.")) << name;
      }
    }
    EXPECT_GT(vision, 0u);
    ASSERT_TRUE(m.vision.has_value());
    // max_dynamic_patch 12 tiles + the thumbnail, whatever the image's size.
    EXPECT_EQ(m.vision->units_for_pixels(1344 * 896), 13u);
    EXPECT_EQ(m.vision->units_for_pixels(20 * 12), 13u);
  }
}

TEST(InternVL2Planner, TensorParallelPlanSaysTheTowerRunsWhole) {
  placement::PlanRequest req;
  req.stages = {{"cpu0", "cpu1"}};
  req.element_size = sizeof(float);
  req.max_context = 64;
  req.max_vision_units = 1;
  const placement::Plan plan = placement::plan_internvl2(model_dir("internlm2_6b"), req);
  bool found = false;
  for (const auto& note : plan.notes) {
    if (note.find("runs whole on cpu0 only") != std::string::npos &&
        note.find("its 5 attention heads do not divide the group of 2") != std::string::npos) {
      found = true;
    }
  }
  EXPECT_TRUE(found) << plan.table();
}

TEST(InternVL2Planner, SingleDeviceBoundsTheLedger) { check_placed_run<Single<Cpu<0>>>("qwen2_300m.two_images"); }
TEST(InternVL2Planner, PipelineBoundsTheLedger) { check_placed_run<Pipeline<Cpu<0>, Cpu<1>>>("internlm2_6b.wide"); }
TEST(InternVL2Planner, TensorParallelBoundsTheLedger) {
  check_placed_run<TensorParallel<Cpu<0>, Cpu<1>>>("qwen2_300m.two_images");
}

}  // namespace
}  // namespace tessera::testing
