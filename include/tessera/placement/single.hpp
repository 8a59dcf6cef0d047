// tessera/placement/single.hpp — the simplest placement policy: the whole
// model on one device. Models are templates over their policy
// (`Qwen2<Single<Cuda<0>>, bf16>`); the pipeline and tensor-parallel
// policies of DESIGN.md § Placement give the same models other layouts.
#pragma once

#include "../core/device.hpp"

namespace tessera {

template <Device D>
struct Single {
  using device = D;  // where every weight, cache and activation lives
};

namespace detail {
template <class P>
struct is_single : std::false_type {};
template <Device D>
struct is_single<Single<D>> : std::true_type {};
}  // namespace detail

// A placement policy (Single today; Pipeline and TensorParallel later).
template <class P>
concept DevicePlacement = detail::is_single<P>::value;

}  // namespace tessera
