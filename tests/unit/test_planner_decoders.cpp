// The memory planner (placement/planner.hpp) against the memory ledger for
// every decoder family the shared decoder runs (models/decoder.hpp), on the
// fixtures of tools/fixtures/make_decoder_fixtures.py: Llama (llama3 RoPE),
// a Yi-like Llama (7 heads, one KV head), Phi-3 (fused qkv_proj and
// gate_up_proj, LongRoPE) and InternLM2 (interleaved wqkv, dynamic NTK).
// Each is described from its checkpoint (models::describe_decoder, roles
// from the loader's weight table), planned for one device, a pipeline over
// two CPU slots and a tensor-parallel pair, then loaded with the plan's
// layout and run through generate(): weights and KV cache must equal the
// ledger's, the measured peak must stay within the predicted one on every
// device, and the busiest device's prediction within 25 % of its measure
// (the contract test_planner.cpp sets for Qwen2.5-VL); the predicted
// activations alone also within 25 % of the measured ones, on every device.
#include <tessera/generate/generate.hpp>
#include <tessera/models/decoder.hpp>
#include <tessera/models/decoder_description.hpp>
#include <tessera/placement/planner.hpp>

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "ledger_util.hpp"
#include "decoder_fixtures.hpp"

namespace tessera::testing {
namespace {

namespace fx = decoder_fixtures;
using placement::PlanRequest;


// The fixture's longest prompt planned for P, then loaded with the plan's
// layout, a cache of the plan's capacity and generate() with a few new
// tokens. Every device's figures are taken above what was live before (the
// ledgers are process-wide).
template <DevicePlacement P, FloatType T>
void check_placed_run(const std::string& fixture, const std::string& prompt) {
  SCOPED_TRACE(fixture + " " + prompt + " " + policy_name<P>() + (std::is_same_v<T, float> ? " float" : " bf16"));
  constexpr std::int64_t new_tokens = 3;
  const fx::Reference ref(fixture);
  const fx::Ids ids = ref.ints("prompt." + prompt + ".input_ids");
  const auto tokens = static_cast<std::int64_t>(ids.size());

  std::map<std::string, std::uint64_t> before, after_load, after_cache;
  for_each_device<P>([&]<class D>() {
    before[device_key<D>()] = ledger<D>().live();
    ledger<D>().reset_peak();
  });
  const auto snapshot = [&](std::map<std::string, std::uint64_t>& into) {
    for_each_device<P>([&]<class D>() { into[device_key<D>()] = ledger<D>().live(); });
  };
  std::optional<placement::Plan> plan;
  {
    PlanRequest req;
    req.stages = stages_of_policy<P>();
    req.element_size = sizeof(T);
    req.max_context = tokens + new_tokens;
    req.max_prompt = tokens;
    plan = placement::plan_decoder(fx::dir(fixture), req);

    using Model = models::Decoder<P, T>;
    const Model model = Model::load(fx::dir(fixture), plan->layout);
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
    const auto generated = generate::generate(model, std::span<const std::int64_t>(ids), options, nullptr);
    ASSERT_EQ(static_cast<std::int64_t>(generated.size()), new_tokens);
  }
  std::map<std::string, Measured> measured;
  for_each_device<P>([&]<class D>() {
    const std::string key = device_key<D>();
    Measured& m = measured[key];
    m.peak = ledger<D>().peak() - before[key];
    m.weights = after_load[key] - before[key];
    m.kv = after_cache[key] - after_load[key];
  });

  std::string busiest;
  for (const auto& d : plan->devices) {
    const Measured& m = measured.at(d.device);
    SCOPED_TRACE(d.device);
    EXPECT_EQ(m.weights, d.weights);
    EXPECT_EQ(m.kv, d.kv);
    EXPECT_LE(m.peak, d.peak()) << plan->table();
    // Activations dominate nothing here (the weights do), so they are held
    // to the bound on their own: above weights + KV, within 25 %.
    const auto activations = static_cast<double>(m.peak) - static_cast<double>(m.weights + m.kv);
    EXPECT_LE(static_cast<double>(d.activations), 1.25 * activations)
        << "measured activations " << activations << "\n" << plan->table();
    if (busiest.empty() || m.peak > measured.at(busiest).peak) busiest = d.device;
  }
  const auto& top = plan->device(busiest);
  EXPECT_LE(static_cast<double>(top.peak()), 1.25 * static_cast<double>(measured.at(busiest).peak))
      << busiest << ": measured " << measured.at(busiest).peak << "\n" << plan->table();
}

// The fixture's longest prompt (the most activation memory).
std::string longest_prompt(const std::string& fixture) {
  const fx::Reference ref(fixture);
  std::string best;
  std::size_t length = 0;
  for (const auto& p : ref.prompts()) {
    const std::size_t n = ref.ints("prompt." + p + ".input_ids").size();
    if (n > length) {
      best = p;
      length = n;
    }
  }
  return best;
}

class PlannerDecoders : public ::testing::TestWithParam<std::string> {};

// Every checkpoint tensor is one the decoder loads, and a single device
// holds them all.
TEST_P(PlannerDecoders, DescriptionClassifiesEveryTensor) {
  const auto m = models::describe_decoder(fx::dir(GetParam()));
  ASSERT_FALSE(m.tensors.empty());
  std::uint64_t numel = 0;
  for (const auto& [name, n] : m.tensors) {
    EXPECT_NE(m.role(name).part, placement::TensorPart::ignored) << name;
    numel += static_cast<std::uint64_t>(n);
  }
  const auto plan = placement::plan_model(m, PlanRequest{});
  EXPECT_TRUE(plan.ignored.empty());
  EXPECT_EQ(plan.devices[0].weights, 2 * numel);
}

TEST_P(PlannerDecoders, SingleDeviceBoundsTheLedger) {
  const std::string prompt = longest_prompt(GetParam());
  check_placed_run<Single<Cpu<0>>, float>(GetParam(), prompt);
  check_placed_run<Single<Cpu<0>>, bf16>(GetParam(), prompt);
}

TEST_P(PlannerDecoders, PipelineOverTwoSlotsBoundsTheLedger) {
  const std::string prompt = longest_prompt(GetParam());
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  const auto plan = placement::plan_decoder(fx::dir(GetParam()), req);
  EXPECT_EQ(plan.layout.layer_stage, (std::vector<std::size_t>{0, 1})) << plan.table();
  check_placed_run<Pipeline<Cpu<0>, Cpu<1>>, float>(GetParam(), prompt);
  check_placed_run<Pipeline<Cpu<0>, Cpu<1>>, bf16>(GetParam(), prompt);
}

TEST_P(PlannerDecoders, TensorParallelOverTwoSlotsBoundsTheLedger) {
  const std::string prompt = longest_prompt(GetParam());
  const auto config = io::DecoderConfig::load(fx::dir(GetParam()));
  if (config.num_key_value_heads % 2 != 0 || config.num_attention_heads % 2 != 0) {
    // The Yi-like fixture: 7 heads and one KV head do not split in two.
    PlanRequest req;
    req.stages = {{"cpu0", "cpu1"}};
    try {
      (void)placement::plan_decoder(fx::dir(GetParam()), req);
      ADD_FAILURE() << "no PlanError";
    } catch (const PlanError& e) {
      EXPECT_NE(std::string(e.what()).find("must divide the language model's num_attention_heads"), std::string::npos)
          << e.what();
    }
    return;
  }
  check_placed_run<TensorParallel<Cpu<0>, Cpu<1>>, float>(GetParam(), prompt);
  check_placed_run<TensorParallel<Cpu<0>, Cpu<1>>, bf16>(GetParam(), prompt);
}

std::string fixture_name(const ::testing::TestParamInfo<std::string>& p) { return p.param; }

INSTANTIATE_TEST_SUITE_P(Families, PlannerDecoders, ::testing::Values("llama", "llama_yi", "phi3", "internlm2"),
                         fixture_name);

}  // namespace
}  // namespace tessera::testing
