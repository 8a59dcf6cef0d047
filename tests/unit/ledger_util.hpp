// What the planner tests share to compare a placement's plan with the
// memory ledgers: each device's key as the planner names it ("cpu1",
// "cuda0"), a policy's stages in those names (PlanRequest::stages), a walk
// over the policy's devices, and what a run measured on one device.
#pragma once

#include <tessera/placement/stage.hpp>

#include <cstddef>
#include <cstdint>
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

}  // namespace tessera::testing
