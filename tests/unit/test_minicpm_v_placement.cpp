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
  std::vector<Tensor<Host, float>> out;
  auto cache = m.new_cache(static_cast<std::int64_t>(p.ids.size() + kSteps + 1));
  out.push_back(to<Host>(m.forward(p, cache)));
  for (std::size_t s = 0; s < kSteps; ++s) {
    const std::int64_t id = continuation[s];
    out.push_back(to<Host>(m.forward(std::span<const std::int64_t>(&id, 1), cache)));
  }
  return out;
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


// Case `c` processed, planned for P (its slices as the vision units),
// loaded with the plan's layout, and generated from with a few new tokens;
// each device's figures above what was live before (the ledgers are
// process-wide), the processor's slices included.
template <DevicePlacement P>
void check_placed_run(const std::string& c) {
  SCOPED_TRACE(c + " " + policy_name<P>());
  constexpr std::int64_t new_tokens = 3;
  std::map<std::string, std::uint64_t> before, after_prompt, after_load, after_cache;
  for_each_device<P>([&]<class D>() {
    before[device_key<D>()] = ledger<D>().live();
    ledger<D>().reset_peak();
  });
  const auto snapshot = [&](std::map<std::string, std::uint64_t>& into) {
    for_each_device<P>([&]<class D>() { into[device_key<D>()] = ledger<D>().live(); });
  };
  std::optional<placement::Plan> plan;
  {
    // The processor's slices count: the plan charges them to cpu0.
    const mv::Prompt prompt = prompt_of(c);
    snapshot(after_prompt);
    const auto tokens = static_cast<std::int64_t>(prompt.ids.size());
    placement::PlanRequest req;
    req.stages = stages_of_policy<P>();
    req.element_size = sizeof(float);
    req.max_context = tokens + new_tokens;
    req.max_prompt = tokens;
    req.max_vision_units = mv::slice_count(prompt.images);
    plan = placement::plan_minicpm_v(model_dir(), req);

    const Model<P> model = Model<P>::load(model_dir(), plan->layout);
    snapshot(after_load);
    {
      const auto cache = model.new_cache(req.max_context);
      snapshot(after_cache);
    }
    generate::SamplingOptions options;
    options.max_new_tokens = new_tokens;
    options.do_sample = false;
    options.repetition_penalty = 1.0;
    options.eos_token_ids.clear();
    const auto generated = generate::generate(model, prompt, options);
    ASSERT_EQ(static_cast<std::int64_t>(generated.size()), new_tokens);
  }
  std::map<std::string, Measured> measured;
  for_each_device<P>([&]<class D>() {
    const std::string key = device_key<D>();
    Measured& m = measured[key];
    m.peak = ledger<D>().peak() - before[key];
    m.weights = after_load[key] - after_prompt[key];
    m.kv = after_cache[key] - after_load[key];
  });

  std::string busiest;
  for (const auto& d : plan->devices) {
    const Measured& m = measured.at(d.device);
    SCOPED_TRACE(d.device);
    EXPECT_EQ(m.weights, d.weights) << plan->table();
    EXPECT_EQ(m.kv, d.kv);
    EXPECT_LE(m.peak, d.peak()) << plan->table();
    if (busiest.empty() || m.peak > measured.at(busiest).peak) busiest = d.device;
  }
  const auto& top = plan->device(busiest);
  EXPECT_LE(static_cast<double>(top.peak()), 1.25 * static_cast<double>(measured.at(busiest).peak))
      << busiest << ": measured " << measured.at(busiest).peak << "\n" << plan->table();
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
