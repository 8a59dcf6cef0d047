// What the planner tests share to compare a placement's plan with the
// memory ledgers: each device's key as the planner names it ("cpu1",
// "cuda0"), a policy's stages in those names (PlanRequest::stages), a walk
// over the policy's devices, and what a run measured on one device.
#pragma once

#include <tessera/generate/generate.hpp>
#include <tessera/placement/planner.hpp>
#include <tessera/placement/stage.hpp>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace tessera::testing {

template <class D>
std::string device_key() {
  return (is_cpu_v<D> ? "cpu" : "cuda") + std::to_string(D::index);
}

template <class... Ds>
std::vector<std::string> stage_keys(std::tuple<Ds...>*) {
  return {device_key<Ds>()...};
}

template <DevicePlacement P>
std::vector<std::vector<std::string>> stages_of_policy() {
  return [&]<std::size_t... K>(std::index_sequence<K...>) {
    return std::vector<std::vector<std::string>>{
        stage_keys(static_cast<devices_of_stage<stage_at<P, K>>*>(nullptr))...};
  }(std::make_index_sequence<stage_count<P>>{});
}

// f.template operator()<D>() for every device of P, in stage order.
template <DevicePlacement P, class F>
void for_each_device(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f.template operator()<std::tuple_element_t<I, placement::policy_devices<P>>>(), ...);
  }(std::make_index_sequence<std::tuple_size_v<placement::policy_devices<P>>>{});
}

// One device's figures from a placed run, above what was live before it.
struct Measured {
  std::uint64_t peak = 0, weights = 0, kv = 0;
};

// A multimodal model's run under P against its plan: the prompt made by
// make_prompt() (its processor outputs count: the plan charges them to
// cpu0), planned by plan_for(request) with units_of(prompt) vision units,
// loaded by load(layout) with the plan's layout, a cache made, a few tokens
// generated. Each device's figures are taken above what was live before
// (the ledgers are process-wide): its weights and KV cache must equal the
// plan's, its measured peak lie within the plan, and the busiest device's
// prediction within 25 % of its measure.
template <DevicePlacement P, class MakePrompt, class UnitsOf, class PlanFor, class Load>
void check_plan_against_ledger(MakePrompt&& make_prompt, UnitsOf&& units_of, PlanFor&& plan_for, Load&& load) {
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
    const auto prompt = make_prompt();
    snapshot(after_prompt);
    const auto tokens = static_cast<std::int64_t>(prompt.ids.size());
    placement::PlanRequest req;
    req.stages = stages_of_policy<P>();
    req.element_size = sizeof(float);
    req.max_context = tokens + new_tokens;
    req.max_prompt = tokens;
    req.max_vision_units = units_of(prompt);
    plan = plan_for(req);

    const auto model = load(plan->layout);
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

}  // namespace tessera::testing
