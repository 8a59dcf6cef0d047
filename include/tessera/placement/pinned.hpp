// tessera/placement/pinned.hpp — a one-device module (a vision encoder with
// its projector or resampler) pinned to one stage of a placement policy:
// which stage is the planner's run-time choice, which device each stage is
// is the policy's compile-time fact, so the module is held as a variant over
// the policy's devices and its output is an AnyPolicyTensor.
//
//   Pinned<P, Tower> vision = Pinned<P, Tower>::load(layout.vision_stage, comms,
//       [&]<Device D>() { return Tower<D>::load(checkpoint, ...); });
//   AnyPolicyTensor<P, T> features = vision.run<T>([&]<Device D>(const Tower<D>& tower) {
//     return tower.forward(to<D>(pixels));           // a Tensor<D, T>
//   });
//
// The module sits on the first device of its stage that this process holds
// (in one process, the stage's first device; under MPI each process of a
// tensor-parallel stage holds its own copy, never a split one). Its output
// crosses to another device only through to<> (models/scatter.hpp).
#pragma once

#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>

#include "../core/error.hpp"
#include "stage.hpp"

namespace tessera::placement {

template <DevicePlacement P, template <class> class Module>
class Pinned {
 public:
  Pinned() = default;

  // Builds the module with load_on.template operator()<D>() on the first
  // held device D of stage `stage` (a run-time index below the policy's
  // stage count). A process holding no device of that stage holds nothing.
  template <class Load>
  static Pinned load(std::size_t stage, const Comms<P>& comms, Load&& load_on) {
    Pinned pinned;
    with_stage_index<stage_count<P>>(stage, [&]<std::size_t K>() {
      using S = stage_at<P, K>;
      const auto& group = std::get<K>(comms);
      const std::size_t first = first_local_rank<S>(group);
      for_local_ranks<S>(group, [&]<std::size_t R>() {
        if (R != first) return;
        using D = stage_device<S, R>;
        pinned.held_.template emplace<policy_device_index<P, K, R>() + 1>(load_on.template operator()<D>());
      });
    });
    return pinned;
  }

  bool loaded() const noexcept { return held_.index() != 0; }

  // f.template operator()<D>(module) -> Tensor<D, T> on the module's device
  // D; the result, still there, as a tensor of some device of P.
  template <FloatType T, class F>
  AnyPolicyTensor<P, T> run(F&& f) const {
    if (!loaded()) throw ValueError("Pinned::run: this process holds no device of the module's stage");
    std::optional<AnyPolicyTensor<P, T>> out;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (void)((held_.index() == I + 1 ? (run_at<I, T>(f, out), true) : false) || ...);
    }(std::make_index_sequence<std::variant_size_v<AnyPolicyTensor<P, T>>>{});
    return std::move(*out);
  }

 private:
  template <std::size_t I, FloatType T, class F>
  void run_at(F& f, std::optional<AnyPolicyTensor<P, T>>& out) const {
    using D = device_of<std::variant_alternative_t<I, AnyPolicyTensor<P, T>>>;
    using Result = std::remove_cvref_t<decltype(f.template operator()<D>(std::get<I + 1>(held_)))>;
    static_assert(std::is_same_v<Result, Tensor<D, T>>,
                  "tessera: a pinned module's run() must return a tensor on the module's own device (the D it is "
                  "called with) in the element type run<T> names; move the result afterwards with "
                  "tessera::to<Device>(t) or models::scatter_rows");
    if constexpr (std::is_same_v<Result, Tensor<D, T>>) {
      out.emplace(std::in_place_index<I>, f.template operator()<D>(std::get<I + 1>(held_)));
    }
  }

  PolicyVariant<P, Module> held_;
};

}  // namespace tessera::placement
