// tessera/placement/stage.hpp — what model code needs to run one policy's
// stages without knowing which policy it is. Every stage is a group of
// devices: one for a device stage, several for a TensorParallel stage.
//
//   StageGroup<S>     the communicator of stage S (comm::Group<devices...>)
//   StageValue<S, T>  an activation between blocks of stage S: Replicated
//                     over the stage's devices (one part for a device stage)
//   move_to_stage<S2>(value)  the explicit to<> that crosses a stage boundary
//   for_local_ranks<S>(group, f)  f.template operator()<R>() per held rank
#pragma once

#include <algorithm>
#include <cstddef>
#include <tuple>
#include <utility>
#include <variant>

#include "../comm/group.hpp"
#include "policy.hpp"
#include "split.hpp"

namespace tessera::placement {

namespace detail {
template <class Tuple>
struct group_of_tuple;
template <class... Ds>
struct group_of_tuple<std::tuple<Ds...>> {
  using type = comm::Group<Ds...>;
  template <class T>
  using replicated = Distributed<Replicated<Ds...>, T>;
};

template <class Tuple>
struct variant_of_tuple;
template <class... Ts>
struct variant_of_tuple<std::tuple<Ts...>> {
  using type = std::variant<Ts...>;
};
template <class Tuple, class T>
struct tensors_of;
template <class... Ds, class T>
struct tensors_of<std::tuple<Ds...>, T> {
  using type = std::tuple<Tensor<Ds, T>...>;
};
}  // namespace detail

template <Stage S>
using StageGroup = typename detail::group_of_tuple<devices_of_stage<S>>::type;

template <Stage S, DType T>
using StageValue = typename detail::group_of_tuple<devices_of_stage<S>>::template replicated<T>;

template <Stage S>
inline constexpr std::size_t stage_size = std::tuple_size_v<devices_of_stage<S>>;

template <Stage S, std::size_t R>
using stage_device = std::tuple_element_t<R, devices_of_stage<S>>;

// One communicator per stage of policy P: std::tuple<StageGroup<S0>, ...>.
// Default-constructed, every group is in-process.
template <class Stages>
struct comms_of;
template <class... Ss>
struct comms_of<std::tuple<Ss...>> {
  using type = std::tuple<StageGroup<Ss>...>;
};
template <DevicePlacement P>
using Comms = typename comms_of<stages_of<P>>::type;

// Calls f.template operator()<R>() for every rank R of stage S this process holds.
template <Stage S, class F>
void for_local_ranks(const StageGroup<S>& group, F&& f) {
  [&]<std::size_t... R>(std::index_sequence<R...>) {
    ((group.template is_local<R>() ? (f.template operator()<R>(), 0) : 0), ...);
  }(std::make_index_sequence<stage_size<S>>{});
}

// The first rank of stage S this process holds (0 in one process).
template <Stage S>
std::size_t first_local_rank(const StageGroup<S>& group) {
  std::size_t first = stage_size<S>;
  for_local_ranks<S>(group, [&]<std::size_t R>() { first = std::min(first, R); });
  if (first == stage_size<S>) {
    throw ValueError(tessera::detail::concat("stage ", stage_name<S>(), " has no rank in this process"));
  }
  return first;
}

// The value from `from` (a value of stage S1) on every local device of S2:
// the first local part of S1 copied with to<> to each. Within one stage's
// devices this is the only cross-device copy the model makes.
template <Stage S2, Stage S1, DType T>
StageValue<S2, T> move_to_stage(const StageValue<S1, T>& from, const StageGroup<S1>& from_group,
                                const StageGroup<S2>& to_group) {
  StageValue<S2, T> out;
  const std::size_t source = first_local_rank<S1>(from_group);
  for_local_ranks<S1>(from_group, [&]<std::size_t Q>() {
    if (Q != source) return;
    for_local_ranks<S2>(to_group, [&]<std::size_t R>() {
      out.template set<R>(to<stage_device<S2, R>>(from.template part<Q>()));
    });
  });
  return out;
}

// Every device of every stage of P, in stage order (repeats kept).
template <class Stages>
struct all_devices_of;
template <class... Ss>
struct all_devices_of<std::tuple<Ss...>> {
  using type = decltype(std::tuple_cat(std::declval<devices_of_stage<Ss>>()...));
};
template <DevicePlacement P>
using policy_devices = typename all_devices_of<stages_of<P>>::type;

// Index of rank R of stage K in policy_devices<P>.
template <DevicePlacement P, std::size_t K, std::size_t R>
constexpr std::size_t policy_device_index() {
  return []<std::size_t... I>(std::index_sequence<I...>) {
    return (std::size_t{0} + ... + stage_size<stage_at<P, I>>) + R;
  }(std::make_index_sequence<K>{});
}

// A tensor on any device of policy P (a run-time choice among compile-time
// types): vision features computed on the vision tower's stage before they
// are copied, with to<>, to the embedding stage's devices.
template <DevicePlacement P, DType T>
using AnyPolicyTensor =
    typename detail::variant_of_tuple<typename detail::tensors_of<policy_devices<P>, T>::type>::type;

// std::variant<std::monostate, F<D>...> over policy_devices<P>: an object
// (a vision tower) that lives on one run-time-chosen device of the policy.
template <class Tuple, template <class> class F>
struct variant_over;
template <class... Ds, template <class> class F>
struct variant_over<std::tuple<Ds...>, F> {
  using type = std::variant<std::monostate, F<Ds>...>;
};
template <DevicePlacement P, template <class> class F>
using PolicyVariant = typename variant_over<policy_devices<P>, F>::type;

}  // namespace tessera::placement
