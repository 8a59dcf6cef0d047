// MiniCPM-V 2.6 under the CPU-slot placements and against the planner
// (tests/fixtures/minicpm_v):
//
//   * Pipeline<Cpu<0>, Cpu<1>> gives the same bits as Single<Cpu<0>> for
//     the prompt and 32 decode steps (the stages run the same kernels on
//     the same rows; only the residual and the features cross with to<>),
//     with the encoder on stage 0 and pinned to stage 1;
//   * TensorParallel<Cpu<0>, Cpu<1>> splits the Qwen2 heads and MLP, so its
//     sums run in another order: logits within the golden tolerance and
//     the reference's greedy tokens;
//   * the planner (minicpm_v_description.hpp) from the headers alone: every
//     tensor classified, the encoder + resampler as one pinned unit, and on
//     a single device, a pipeline and a tensor-parallel pair the ledger's
//     weights and KV cache equal to the plan's, every measured peak within
//     the plan, the busiest device's prediction within 25 % of its measure.
#include <tessera/generate/generate.hpp>
#include <tessera/models/minicpm_v.hpp>
#include <tessera/models/minicpm_v_description.hpp>
#include <tessera/placement/planner.hpp>

#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ledger_util.hpp"
#include "minicpm_v_fixtures.hpp"

namespace tessera::testing {
namespace {

using namespace minicpm_v_fixtures;
template <DevicePlacement P>
using Model = models::MiniCPM_V<P, float>;
using SingleModel = Model<Single<Cpu<0>>>;
using PipelineModel = Model<Pipeline<Cpu<0>, Cpu<1>>>;
using TensorParallelModel = Model<TensorParallel<Cpu<0>, Cpu<1>>>;

constexpr std::size_t kSteps = 32;

// The prompt's logits and those of `kSteps` decode steps feeding the
// reference's greedy tokens.
template <class M>
std::vector<Tensor<Host, float>> run(const M& m, const mv::Prompt& p, const Ids& continuation) {
  return prompt_and_decode_logits(m, p, continuation, kSteps);
}

const std::vector<Tensor<Host, float>>& single_run(const std::string& c) {
  static std::map<std::string, std::vector<Tensor<Host, float>>> runs;
  if (!runs.contains(c)) {
    static const SingleModel m = SingleModel::load(model_dir());
    runs.emplace(c, run(m, prompt_of(c), reference().ints(c + ".greedy")));
  }
  return runs.at(c);
}

class MiniCPM_VPlacement : public ::testing::TestWithParam<std::string> {};

TEST_P(MiniCPM_VPlacement, PipelineIsBitIdenticalToOneDevice) {
  const std::string c = GetParam();
  const PipelineModel m = PipelineModel::load(model_dir());
  EXPECT_EQ(m.placement().vision_stage, 0u);
  const auto piped = run(m, prompt_of(c), reference().ints(c + ".greedy"));
  const auto& single = single_run(c);
  for (std::size_t i = 0; i < piped.size(); ++i) EXPECT_TRUE(same_bits(piped[i], single[i])) << c << " step " << i;
}

TEST_P(MiniCPM_VPlacement, EncoderPinnedToTheSecondStageGivesTheSameBits) {
  const std::string c = GetParam();
  placement::Layout layout = placement::Layout::even(2, 2);
  layout.vision_stage = 1;
  const PipelineModel m = PipelineModel::load(model_dir(), layout);
  const auto piped = run(m, prompt_of(c), reference().ints(c + ".greedy"));
  const auto& single = single_run(c);
  for (std::size_t i = 0; i < piped.size(); ++i) EXPECT_TRUE(same_bits(piped[i], single[i])) << c << " step " << i;
}

TEST_P(MiniCPM_VPlacement, TensorParallelMatchesTheReference) {
  const std::string c = GetParam();
  const TensorParallelModel m = TensorParallelModel::load(model_dir());
  const mv::Prompt p = prompt_of(c);
  auto cache = m.new_cache(static_cast<std::int64_t>(p.ids.size()) + 1);
  expect_golden_close(to<Host>(m.forward(p, cache)), reference().floats(c + ".logits"), c + " tensor-parallel logits");
  generate::SamplingOptions o;
  o.max_new_tokens = static_cast<std::int64_t>(kSteps);
  o.do_sample = false;
  o.repetition_penalty = 1.0;
  o.eos_token_ids.clear();
  const auto generated = generate::generate(m, p, o);
  EXPECT_EQ(Ids(generated.begin(), generated.end()), reference().ints(c + ".greedy"));
}

INSTANTIATE_TEST_SUITE_P(Cases, MiniCPM_VPlacement, ::testing::Values("one_image", "several_images"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- the planner against the ledger -------------------------------------------


// Case `c` under P against its plan (ledger_util.hpp), its slices as the
// vision units.
template <DevicePlacement P>
void check_placed_run(const std::string& c) {
  SCOPED_TRACE(c + " " + policy_name<P>());
  check_plan_against_ledger<P>(
      [&] { return prompt_of(c); }, [](const mv::Prompt& p) { return mv::slice_count(p.images); },
      [](const placement::PlanRequest& r) { return placement::plan_minicpm_v(model_dir(), r); },
      [](const placement::Layout& layout) { return Model<P>::load(model_dir(), layout); });
}

TEST(MiniCPM_VPlanner, DescriptionClassifiesEveryTensor) {
  const placement::ModelDescription m = mv::describe(model_dir());
  std::size_t vision = 0;
  for (const auto& [name, numel] : m.tensors) {
    const placement::TensorRole role = m.role(name);
    EXPECT_NE(role.part, placement::TensorPart::ignored) << name;
    if (role.part == placement::TensorPart::vision) {
      ++vision;
      EXPECT_TRUE(name.starts_with("vpm.") || name.starts_with("resampler.")) << name;
    }
  }
  EXPECT_GT(vision, 0u);
  ASSERT_TRUE(m.vision.has_value());
  // A 1344x896 image: the source and a grid of at most ceil(area / 448^2) + 1 cells.
  EXPECT_GE(m.vision->units_for_pixels(1344 * 896), 7u);
  EXPECT_EQ(m.vision->units_for_pixels(300 * 200), 1u);
}

TEST(MiniCPM_VPlanner, SingleDeviceBoundsTheLedger) { check_placed_run<Single<Cpu<0>>>("several_images"); }
TEST(MiniCPM_VPlanner, PipelineBoundsTheLedger) { check_placed_run<Pipeline<Cpu<0>, Cpu<1>>>("several_images"); }
TEST(MiniCPM_VPlanner, TensorParallelBoundsTheLedger) {
  check_placed_run<TensorParallel<Cpu<0>, Cpu<1>>>("one_image");
}

}  // namespace
}  // namespace tessera::testing
