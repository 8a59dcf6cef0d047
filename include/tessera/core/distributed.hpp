// tessera/core/distributed.hpp — values spread over a tensor-parallel group,
// with their split state in the type (DESIGN.md § Placement):
//
//   Replicated<Ds...>        every device holds the whole value
//   Sharded<Axis, Ds...>     device r holds slice r along Axis
//   Partial<Ds...>           device r holds a summand; the value is their sum
//
// A Distributed<Partial<...>> has no way out but comm::all_reduce (reading a
// part of it, or visiting its parts, is a static_assert saying so, and no
// layer takes one), so a forgotten reduction does not compile; a layer that
// needs Replicated input does not accept Sharded (nn/parallel_linear.hpp).
//
// Under MPI a process holds only its own rank's part: parts of other ranks
// are empty, `is_local<I>()` says which, and for_each_local visits the held
// ones. In one process every part is local.
//
// Core, not placement: the collectives (comm/group.hpp) produce and consume
// these values and the placement stages (placement/stage.hpp) carry them, so
// they sit below both; placement/split.hpp forwards here.
#pragma once

#include <cstddef>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "error.hpp"
#include "tensor.hpp"

namespace tessera {

template <Device... Ds>
struct Replicated {};
template <int Axis, Device... Ds>
struct Sharded {};
template <Device... Ds>
struct Partial {};

namespace detail {
template <class Split>
struct split_traits;
template <Device... Ds>
struct split_traits<Replicated<Ds...>> {
  using devices = std::tuple<Ds...>;
  static constexpr const char* name = "Replicated";
};
template <int Axis, Device... Ds>
struct split_traits<Sharded<Axis, Ds...>> {
  using devices = std::tuple<Ds...>;
  static constexpr const char* name = "Sharded";
};
template <Device... Ds>
struct split_traits<Partial<Ds...>> {
  using devices = std::tuple<Ds...>;
  static constexpr const char* name = "Partial";
};
template <class Split, class T, class Devices>
struct parts_of;
template <class Split, class T, class... Ds>
struct parts_of<Split, T, std::tuple<Ds...>> {
  using type = std::tuple<std::optional<Tensor<Ds, T>>...>;
};

template <class Split>
struct is_partial : std::false_type {};
template <Device... Ds>
struct is_partial<Partial<Ds...>> : std::true_type {};
}  // namespace detail

template <class Split>
concept SplitState = requires { typename detail::split_traits<Split>::devices; };

namespace comm {
template <Device... Ds>
class Group;
}

template <SplitState Split, DType T>
class Distributed {
 public:
  using split = Split;
  using element_type = T;
  using devices = typename detail::split_traits<Split>::devices;
  static constexpr std::size_t size = std::tuple_size_v<devices>;
  template <std::size_t I>
  using device_at = std::tuple_element_t<I, devices>;

  Distributed() = default;
  Distributed(Distributed&&) noexcept = default;
  Distributed& operator=(Distributed&&) noexcept = default;
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  // A value of other devices or of another split never converts. Declared
  // (not deleted) so the sentence says which crossing was meant, in every
  // context (a variable, std::optional, a function argument).
  template <SplitState Split2, DType U>
    requires(!std::is_same_v<Split2, Split> || !std::is_same_v<U, T>)
  Distributed(const Distributed<Split2, U>&) {  // NOLINT: implicit, so that the sentence shows
    refuse_conversion_from<Split2, U>();
  }
  template <SplitState Split2, DType U>
    requires(!std::is_same_v<Split2, Split> || !std::is_same_v<U, T>)
  Distributed& operator=(const Distributed<Split2, U>&) {
    refuse_conversion_from<Split2, U>();
    return *this;
  }

  // Whether this process holds part I (always, in one process).
  template <std::size_t I>
  bool is_local() const noexcept {
    return std::get<I>(parts_).has_value();
  }

  // Part I, on device_at<I>. Not available on Partial values: their parts
  // are summands, and the only thing to do with them is comm::all_reduce.
  // (A static_assert rather than a constraint, so the misuse is one sentence
  // instead of a list of rejected overloads.)
  template <std::size_t I>
  const Tensor<device_at<I>, T>& part() const {
    require_readable();
    return checked<I>();
  }
  template <std::size_t I>
  Tensor<device_at<I>, T>& part() {
    require_readable();
    return const_cast<Tensor<device_at<I>, T>&>(std::as_const(*this).template checked<I>());
  }

  // Stores part I (a layer's output on device_at<I>).
  template <std::size_t I>
  void set(Tensor<device_at<I>, T> t) {
    std::get<I>(parts_).emplace(std::move(t));
  }

  // f(std::integral_constant<size_t, I>, part) for every local part, in rank
  // order. Not available on Partial values, like part().
  template <class F>
  void for_each_local(F&& f) const {
    require_readable();
    if constexpr (!detail::is_partial<Split>::value) visit(*this, f);
  }
  template <class F>
  void for_each_local(F&& f) {
    require_readable();
    if constexpr (!detail::is_partial<Split>::value) visit(*this, f);
  }

 private:
  static constexpr void require_readable() {
    static_assert(!detail::is_partial<Split>::value,
                  "tessera: a Partial<...> value holds per-device summands and cannot be read; reduce it with "
                  "group.all_reduce(std::move(value)) first");
  }

  // One sentence per kind of crossing; each condition names both types.
  template <class Split2, class U>
  static constexpr void refuse_conversion_from() {
    using from_devices = typename detail::split_traits<Split2>::devices;
    if constexpr (!std::is_same_v<from_devices, devices>) {
      static_assert(std::is_same_v<from_devices, devices>,
                    "tessera: a Distributed value lives on its group's devices; a value of another stage or group "
                    "crosses with placement::move_to_stage<S2>(value, from_group, to_group) (or to<> per part)");
    } else if constexpr (detail::is_partial<Split2>::value && !detail::is_partial<Split>::value) {
      static_assert(std::is_same_v<Split2, Split>,
                    "tessera: a Partial<...> value becomes Replicated only through group.all_reduce(std::move(value))");
    } else {
      static_assert(std::is_same_v<Split2, Split>,
                    "tessera: a Distributed value changes its split only through the layer or collective that "
                    "makes it (ColumnParallelLinear, RowParallelLinear, group.all_reduce)");
      static_assert(std::is_same_v<U, T>,
                    "tessera: operands have different element types; convert one with tessera::ops::cast<T>(t)");
    }
  }

  template <Device... Gs>
  friend class comm::Group;

  template <std::size_t I>
  const Tensor<device_at<I>, T>& checked() const {
    const auto& p = std::get<I>(parts_);
    if (!p) {
      throw ValueError(detail::concat("Distributed<", detail::split_traits<Split>::name, ">: part ", I, " (on ",
                                      device_name<device_at<I>>(), ") is not held by this process"));
    }
    return *p;
  }

  // (One part per call, not a `(void)(cond ? (f(...), 0) : 0, ...)` fold,
  // which clang 14 does not parse.)
  template <class Self, class F>
  static void visit(Self& self, F& f) {
    [&]<std::size_t... I>(std::index_sequence<I...>) { (visit_one<I>(self, f), ...); }(std::make_index_sequence<size>{});
  }
  template <std::size_t I, class Self, class F>
  static void visit_one(Self& self, F& f) {
    if (auto& p = std::get<I>(self.parts_)) f(std::integral_constant<std::size_t, I>{}, *p);
  }

  typename detail::parts_of<Split, T, devices>::type parts_;
};

}  // namespace tessera
