// tessera/placement/policy.hpp — placement policies: the types a model is
// instantiated with (DESIGN.md § Placement).
//
//   Single<D>                    everything on device D
//   TensorParallel<D0, D1, ...>  Megatron-style: heads and MLP columns split
//                                across the devices, activations Replicated
//                                between blocks (placement/split.hpp)
//   Pipeline<S0, S1, ...>        consecutive stages, each a device or a
//                                TensorParallel group; which decoder layers
//                                go to which stage is the planner's run-time
//                                decision, which device each stage is, is
//                                fixed here, at compile time
//
// A model sees every policy as a list of stages (`stages_of<P>`): Single<D>
// is one stage D, TensorParallel<Ds...> one group stage.
#pragma once

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../core/device.hpp"
#include "../core/error.hpp"

namespace tessera {

template <Device D>
struct Single {
  using device = D;  // where every weight, cache and activation lives
};

template <Device... Ds>
struct TensorParallel {
  static_assert(sizeof...(Ds) >= 2, "tessera: TensorParallel needs at least two devices");
  static constexpr std::size_t size = sizeof...(Ds);
  using devices = std::tuple<Ds...>;
};

namespace detail {
template <class S>
struct is_tp_group : std::false_type {};
template <Device... Ds>
struct is_tp_group<TensorParallel<Ds...>> : std::true_type {};

template <class... Ts>
inline constexpr bool all_distinct = true;
template <class T, class... Ts>
inline constexpr bool all_distinct<T, Ts...> = (!std::is_same_v<T, Ts> && ...) && all_distinct<Ts...>;
}  // namespace detail

// A pipeline stage: one device, or a tensor-parallel group of devices.
template <class S>
concept Stage = Device<S> || detail::is_tp_group<S>::value;

template <Stage... Ss>
struct Pipeline {
  static_assert(sizeof...(Ss) >= 1, "tessera: a Pipeline needs at least one stage");
  static constexpr std::size_t size = sizeof...(Ss);
  using stages = std::tuple<Ss...>;
};

namespace detail {
template <class P>
struct policy_traits {
  static constexpr bool valid = false;
};
template <Device D>
struct policy_traits<Single<D>> {
  static constexpr bool valid = true;
  using stages = std::tuple<D>;
};
template <Device... Ds>
struct policy_traits<TensorParallel<Ds...>> {
  static constexpr bool valid = detail::all_distinct<Ds...>;
  using stages = std::tuple<TensorParallel<Ds...>>;
};
template <Stage... Ss>
struct policy_traits<Pipeline<Ss...>> {
  static constexpr bool valid = true;
  using stages = std::tuple<Ss...>;
};

// Every device a stage uses, in order.
template <class S>
struct stage_devices;
template <Device D>
struct stage_devices<D> {
  using type = std::tuple<D>;
};
template <Device... Ds>
struct stage_devices<TensorParallel<Ds...>> {
  using type = std::tuple<Ds...>;
};
}  // namespace detail

// A placement policy: Single, TensorParallel (over distinct devices) or Pipeline.
template <class P>
concept DevicePlacement = detail::policy_traits<P>::valid;

// The stages of a policy as a std::tuple of stage types.
template <DevicePlacement P>
using stages_of = typename detail::policy_traits<P>::stages;

template <DevicePlacement P>
inline constexpr std::size_t stage_count = std::tuple_size_v<stages_of<P>>;

template <DevicePlacement P, std::size_t K>
using stage_at = std::tuple_element_t<K, stages_of<P>>;

template <Stage S>
using devices_of_stage = typename detail::stage_devices<S>::type;

// The device that holds a stage's undivided values: the device itself, or
// the first device of a tensor-parallel group (where its logits land).
template <Stage S>
using lead_device = std::tuple_element_t<0, devices_of_stage<S>>;

// Where a model's outputs (logits) are returned: the lead device of the
// first stage, the same device the inputs enter through, so the generation
// loop's tokens and masks never straddle two devices (§2.6 #6).
template <DevicePlacement P>
using output_device = lead_device<stage_at<P, 0>>;

template <Stage S>
std::string stage_name() {
  if constexpr (Device<S>) {
    return device_name<S>();
  } else {
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      std::string out = "TensorParallel<";
      ((out += (I ? ", " : "") + device_name<std::tuple_element_t<I, devices_of_stage<S>>>()), ...);
      return out + ">";
    }(std::make_index_sequence<std::tuple_size_v<devices_of_stage<S>>>{});
  }
}

// "Single<Cpu<0>>", "Pipeline<Cpu<0>, TensorParallel<Cuda<0>, Cuda<1>>>".
template <DevicePlacement P>
std::string policy_name() {
  using S = stages_of<P>;
  if constexpr (detail::is_tp_group<P>::value) {
    return stage_name<P>();
  } else if constexpr (requires { typename P::device; }) {
    return "Single<" + device_name<typename P::device>() + ">";
  } else {
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      std::string out = "Pipeline<";
      ((out += (I ? std::string(", ") : std::string()) + stage_name<std::tuple_element_t<I, S>>()), ...);
      return out + ">";
    }(std::make_index_sequence<std::tuple_size_v<S>>{});
  }
}

namespace detail {
template <std::size_t I, std::size_t N, class F>
decltype(auto) with_stage_index_from(std::size_t k, F& f) {
  if constexpr (I + 1 == N) {
    return f.template operator()<I>();
  } else {
    if (k == I) return f.template operator()<I>();
    return with_stage_index_from<I + 1, N>(k, f);
  }
}
}  // namespace detail

// Calls f.template operator()<K>() for the run-time stage index k < N: how a
// run-time placement decision (the planner's) meets compile-time stage types.
// Every K must give the same return type.
template <std::size_t N, class F>
decltype(auto) with_stage_index(std::size_t k, F&& f) {
  if (k >= N) throw ValueError(detail::concat("stage index ", k, " is out of range for ", N, " stage(s)"));
  return detail::with_stage_index_from<0, N>(k, f);
}

}  // namespace tessera
