// tessera/nn/parallel_linear.hpp — Megatron-style tensor-parallel linears
// over a group of devices Ds..., with the split state of every value in its
// type (core/distributed.hpp):
//
//   ColumnParallelLinear<T, Ds...>   weight [out, in] split by rows (output
//                                    features): rank r holds rows
//                                    [r*out/n, (r+1)*out/n) and its slice
//                                    of the bias.
//       forward(Distributed<Replicated<Ds...>, T>) -> Distributed<Sharded<1, Ds...>, T>
//   RowParallelLinear<T, Ds...>      weight [out, in] split by columns (input
//                                    features): rank r holds columns
//                                    [r*in/n, (r+1)*in/n).
//       forward(Distributed<Sharded<1, Ds...>, T>) -> Distributed<Partial<Ds...>, T>
//
// The pair makes one MLP (or attention projection + output projection):
//
//   auto h = up.forward(group.replicate(x));          // Sharded<1>: rank r's features
//   auto p = down.forward(h);                         // Partial: per-rank summands
//   auto y = group.all_reduce(std::move(p));          // Replicated: x W_up^T W_down^T
//
// Feeding a layer a value in the wrong split state is one static_assert
// sentence: a Sharded value (another ColumnParallelLinear's output) or a
// Partial one (not yet reduced) into a ColumnParallelLinear, a Replicated
// or Partial value into a RowParallelLinear, a value over another group's
// devices into either.
//
// RowParallelLinear has no bias: its outputs are summands, so a bias added
// on every rank would be summed n times by the all_reduce. A bias of the
// full layer must be added once, to the reduced Replicated value (and
// load() refuses a checkpoint layer that has one rather than drop it).
//
// Each rank's shard is an nn::Linear<D_r, T> on its own device; under MPI a
// process holds only its own ranks' shards (is_local<I>()), and forward
// runs the shards whose input parts it holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "../comm/group.hpp"
#include "../core/distributed.hpp"
#include "../core/error.hpp"
#include "../io/checkpoint.hpp"
#include "../placement/policy.hpp"  // detail::all_distinct
#include "linear.hpp"

namespace tessera::nn {

namespace detail {

using tessera::detail::concat;

// What a forward() argument is, as far as the split-state gates care.
enum class SplitKind { not_distributed, replicated, sharded, partial };

template <class X>
struct split_info {
  static constexpr SplitKind kind = SplitKind::not_distributed;
  static constexpr int axis = -1;
  using devices = void;
  using element = void;
};
template <Device... Gs, class U>
struct split_info<Distributed<Replicated<Gs...>, U>> {
  static constexpr SplitKind kind = SplitKind::replicated;
  static constexpr int axis = -1;
  using devices = std::tuple<Gs...>;
  using element = U;
};
template <int A, Device... Gs, class U>
struct split_info<Distributed<Sharded<A, Gs...>, U>> {
  static constexpr SplitKind kind = SplitKind::sharded;
  static constexpr int axis = A;
  using devices = std::tuple<Gs...>;
  using element = U;
};
template <Device... Gs, class U>
struct split_info<Distributed<Partial<Gs...>, U>> {
  static constexpr SplitKind kind = SplitKind::partial;
  static constexpr int axis = -1;
  using devices = std::tuple<Gs...>;
  using element = U;
};

// Which gate a forward() argument X fails for a layer over Ds... with
// element type T that wants `want` (and, for Sharded, axis `want_axis`);
// `none` when it is the accepted type. Exactly one gate fires per misuse.
enum class Problem { none, not_distributed, partial, sharded, replicated, wrong_axis, other_group, dtype };

template <class X, SplitKind want, int want_axis, class T, class... Ds>
constexpr Problem problem_of() {
  using I = split_info<std::remove_cvref_t<X>>;
  if constexpr (I::kind == SplitKind::not_distributed) {
    return Problem::not_distributed;
  } else if constexpr (I::kind != want) {
    if constexpr (I::kind == SplitKind::partial) return Problem::partial;
    else if constexpr (I::kind == SplitKind::sharded) return Problem::sharded;
    else return Problem::replicated;
  } else if constexpr (I::kind == SplitKind::sharded && I::axis != want_axis) {
    return Problem::wrong_axis;
  } else if constexpr (!std::is_same_v<typename I::devices, std::tuple<Ds...>>) {
    return Problem::other_group;
  } else if constexpr (!std::is_same_v<typename I::element, T>) {
    return Problem::dtype;
  } else {
    return Problem::none;
  }
}

// Rows [begin, end) of rank r when `total` is split evenly over n ranks.
inline std::pair<std::int64_t, std::int64_t> even_split(std::string_view layer, std::string_view name,
                                                        std::string_view what, std::int64_t total, std::size_t r,
                                                        std::size_t n) {
  const auto ranks = static_cast<std::int64_t>(n);
  if (total % ranks != 0) {
    throw PlanError(concat(layer, "::load: '", name, "' has ", total, " ", what, ", which ", ranks,
                           " devices do not divide evenly; use a group size that divides it"));
  }
  const std::int64_t step = total / ranks;
  return {static_cast<std::int64_t>(r) * step, static_cast<std::int64_t>(r + 1) * step};
}

// The split axis of Sharded<1, ...> is the feature axis of a [tokens, features] value.
inline void require_matrix(std::string_view layer, std::size_t rank, const Shape& shape) {
  if (shape.rank() != 2) {
    throw ShapeError(concat(layer, "::forward: the part of rank ", rank, " has shape ", shape.to_string(),
                            "; the layer takes [tokens, features] (flatten the leading dimensions first)"));
  }
}

inline io::CheckpointTensorInfo weight_info(const io::Checkpoint& checkpoint, std::string_view layer,
                                            const std::string& name) {
  io::CheckpointTensorInfo info = checkpoint.info(name);  // ValueError naming the tensor if absent
  if (info.shape.rank() != 2) {
    throw ShapeError(concat(layer, "::load: '", name, "' has shape ", info.shape.to_string(),
                            "; a linear weight must be 2-D [out_features, in_features]"));
  }
  return info;
}

// The shards of a parallel layer: one optional nn::Linear per rank.
template <FloatType T, Device... Ds>
class Shards {
 public:
  static constexpr std::size_t size = sizeof...(Ds);
  template <std::size_t I>
  using device_at = std::tuple_element_t<I, std::tuple<Ds...>>;

  Shards() = default;
  explicit Shards(std::tuple<std::optional<Linear<Ds, T>>...> shards) : shards_(std::move(shards)) {}

  template <std::size_t I>
  bool is_local() const noexcept {
    return std::get<I>(shards_).has_value();
  }

  template <std::size_t I>
  const Linear<device_at<I>, T>& shard(std::string_view layer) const {
    const auto& s = std::get<I>(shards_);
    if (!s) {
      throw ValueError(concat(layer, ": the shard of rank ", I, " (on ", device_name<device_at<I>>(),
                              ") is not held by this process"));
    }
    return *s;
  }

  template <class F>
  void for_each_local(F&& f) const {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((std::get<I>(shards_) ? (f(std::integral_constant<std::size_t, I>{}, *std::get<I>(shards_)), 0) : 0), ...);
    }(std::make_index_sequence<size>{});
  }

  // Every held shard applied to the input part of its rank, into a value of
  // split state Out: the forward pass both parallel layers share once their
  // input's split state has been checked.
  template <class Out, class X>
  Out apply(const X& x, std::string_view layer) const {
    Out out;
    x.for_each_local([&](auto i, const auto& part) {
      constexpr std::size_t I = decltype(i)::value;
      require_matrix(layer, I, part.shape());
      out.template set<I>(shard<I>(layer).forward(part));
    });
    return out;
  }

 private:
  std::tuple<std::optional<Linear<Ds, T>>...> shards_;
};

}  // namespace detail

// ---- ColumnParallelLinear ------------------------------------------------------

template <FloatType T, Device... Ds>
class ColumnParallelLinear {
  static_assert(sizeof...(Ds) >= 1, "tessera: ColumnParallelLinear needs at least one device");
  static_assert(tessera::detail::all_distinct<Ds...>, "tessera: ColumnParallelLinear's devices must be distinct");

 public:
  static constexpr std::size_t size = sizeof...(Ds);
  using element_type = T;
  using Group = comm::Group<Ds...>;
  using Input = Distributed<Replicated<Ds...>, T>;
  using Output = Distributed<Sharded<1, Ds...>, T>;
  template <std::size_t I>
  using device_at = std::tuple_element_t<I, std::tuple<Ds...>>;

  // Every rank's shard in this process: shard r holds rows r of the weight
  // (and bias). Shards must agree on in_features and on having a bias.
  explicit ColumnParallelLinear(Linear<Ds, T>... shards)
      : ColumnParallelLinear(std::tuple<std::optional<Linear<Ds, T>>...>(std::move(shards)...)) {}

  // Some ranks' shards (the others nullopt: held by other processes).
  explicit ColumnParallelLinear(std::tuple<std::optional<Linear<Ds, T>>...> shards) : shards_(std::move(shards)) {
    check();
  }

  // Loads `<name>.weight` [out, in] (and `<name>.bias` [out] if the
  // checkpoint has it), split evenly by rows over the group, reading only
  // the rows of the ranks this process holds (group.is_local<I>()).
  static ColumnParallelLinear load(const io::Checkpoint& checkpoint, std::string_view name, const Group& group) {
    const std::string weight = std::string(name) + ".weight";
    const std::string bias = std::string(name) + ".bias";
    const io::CheckpointTensorInfo info = detail::weight_info(checkpoint, "ColumnParallelLinear", weight);
    const bool has_bias = checkpoint.contains(bias);
    std::tuple<std::optional<Linear<Ds, T>>...> shards;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (..., [&] {
        if (!group.template is_local<I>()) return;
        using D = device_at<I>;
        const auto [begin, end] =
            detail::even_split("ColumnParallelLinear", weight, "rows (out_features)", info.shape[0], I, size);
        Tensor<D, T> w = checkpoint.load_slice<D, T>(weight, 0, begin, end);
        if (has_bias) {
          std::get<I>(shards).emplace(std::move(w), checkpoint.load_slice<D, T>(bias, 0, begin, end));
        } else {
          std::get<I>(shards).emplace(std::move(w));
        }
      }());
    }(std::make_index_sequence<size>{});
    return ColumnParallelLinear(std::move(shards));
  }

  // x [tokens, in_features] on every rank -> rank r's output features
  // [tokens, out_features / n]. Takes exactly Distributed<Replicated<Ds...>, T>;
  // anything else is one static_assert saying what to do instead.
  template <class X>
  Output forward(const X& x) const {
    constexpr auto problem = detail::problem_of<X, detail::SplitKind::replicated, -1, T, Ds...>();
    using P = detail::Problem;
    static_assert(problem != P::not_distributed,
                  "tessera: ColumnParallelLinear takes a Distributed<Replicated<Ds...>, T> value; make one from a "
                  "tensor with group.replicate(x)");
    static_assert(problem != P::partial,
                  "tessera: ColumnParallelLinear needs a Replicated input; a Partial value must go through "
                  "group.all_reduce first");
    static_assert(problem != P::sharded,
                  "tessera: ColumnParallelLinear needs a Replicated input; got Sharded (the output of another "
                  "ColumnParallelLinear): pass it through a RowParallelLinear and group.all_reduce first");
    static_assert(problem != P::other_group,
                  "tessera: ColumnParallelLinear's input is Replicated over other devices than the layer's group; "
                  "a value of another group crosses with to<> (placement::move_to_stage) first");
    static_assert(problem != P::dtype,
                  "tessera: operands have different element types; convert one with tessera::ops::cast<T>(t)");
    if constexpr (problem != P::none) {
      return {};  // a gate above has failed; nothing below is instantiated
    } else {
      return shards_.template apply<Output>(x, "ColumnParallelLinear");
    }
  }

  template <std::size_t I>
  bool is_local() const noexcept {
    return shards_.template is_local<I>();
  }
  // Rank I's shard (ValueError if another process holds it).
  template <std::size_t I>
  const Linear<device_at<I>, T>& shard() const {
    return shards_.template shard<I>("ColumnParallelLinear");
  }
  std::int64_t in_features() const { return in_features_; }

 private:
  void check() {
    bool first = true;
    bool with_bias = false;
    shards_.for_each_local([&](auto i, const auto& s) {
      constexpr std::size_t I = decltype(i)::value;
      if (first) {
        in_features_ = s.in_features();
        with_bias = s.bias().has_value();
        first = false;
        return;
      }
      if (s.in_features() != in_features_) {
        throw ShapeError(detail::concat("ColumnParallelLinear: shard ", I, " has in_features ", s.in_features(),
                                        " but an earlier shard has ", in_features_,
                                        "; every rank sees the whole input"));
      }
      if (s.bias().has_value() != with_bias) {
        throw ValueError(detail::concat("ColumnParallelLinear: shard ", I, (with_bias ? " has no bias" : " has a bias"),
                                        " but an earlier shard ", (with_bias ? "has one" : "has none"),
                                        "; all shards or none carry a slice of the bias"));
      }
    });
    if (first) throw ValueError("ColumnParallelLinear: no shard is held by this process");
  }

  detail::Shards<T, Ds...> shards_;
  std::int64_t in_features_ = 0;
};

// ---- RowParallelLinear ---------------------------------------------------------

template <FloatType T, Device... Ds>
class RowParallelLinear {
  static_assert(sizeof...(Ds) >= 1, "tessera: RowParallelLinear needs at least one device");
  static_assert(tessera::detail::all_distinct<Ds...>, "tessera: RowParallelLinear's devices must be distinct");

 public:
  static constexpr std::size_t size = sizeof...(Ds);
  using element_type = T;
  using Group = comm::Group<Ds...>;
  using Input = Distributed<Sharded<1, Ds...>, T>;
  using Output = Distributed<Partial<Ds...>, T>;
  template <std::size_t I>
  using device_at = std::tuple_element_t<I, std::tuple<Ds...>>;

  // Every rank's shard in this process: shard r holds columns r of the
  // weight. Shards must agree on out_features and have no bias (see the
  // header comment: a bias is added once, after the reduction).
  explicit RowParallelLinear(Linear<Ds, T>... shards)
      : RowParallelLinear(std::tuple<std::optional<Linear<Ds, T>>...>(std::move(shards)...)) {}

  // Some ranks' shards (the others nullopt: held by other processes).
  explicit RowParallelLinear(std::tuple<std::optional<Linear<Ds, T>>...> shards) : shards_(std::move(shards)) {
    check();
  }

  // Loads `<name>.weight` [out, in] split evenly by columns over the group,
  // reading only the columns of the ranks this process holds. A checkpoint
  // with `<name>.bias` is refused (ValueError): load the bias whole and add
  // it to the reduced value.
  static RowParallelLinear load(const io::Checkpoint& checkpoint, std::string_view name, const Group& group) {
    const std::string weight = std::string(name) + ".weight";
    const std::string bias = std::string(name) + ".bias";
    const io::CheckpointTensorInfo info = detail::weight_info(checkpoint, "RowParallelLinear", weight);
    if (checkpoint.contains(bias)) {
      throw ValueError(detail::concat("RowParallelLinear::load: the checkpoint has '", bias,
                                      "', but a row-parallel layer's outputs are per-device summands, so a bias "
                                      "there would be added once per rank; load it whole and add it after "
                                      "group.all_reduce"));
    }
    std::tuple<std::optional<Linear<Ds, T>>...> shards;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (..., [&] {
        if (!group.template is_local<I>()) return;
        using D = device_at<I>;
        const auto [begin, end] =
            detail::even_split("RowParallelLinear", weight, "columns (in_features)", info.shape[1], I, size);
        std::get<I>(shards).emplace(checkpoint.load_slice<D, T>(weight, 1, begin, end));
      }());
    }(std::make_index_sequence<size>{});
    return RowParallelLinear(std::move(shards));
  }

  // Rank r's features [tokens, in_features / n] -> rank r's summand
  // [tokens, out_features]; group.all_reduce turns the summands into the
  // Replicated output. Takes exactly Distributed<Sharded<1, Ds...>, T>.
  template <class X>
  Output forward(const X& x) const {
    constexpr auto problem = detail::problem_of<X, detail::SplitKind::sharded, 1, T, Ds...>();
    using P = detail::Problem;
    static_assert(problem != P::not_distributed,
                  "tessera: RowParallelLinear takes a Distributed<Sharded<1, ...>, T> input (the output of a "
                  "ColumnParallelLinear), not a tensor");
    static_assert(problem != P::replicated,
                  "tessera: RowParallelLinear takes a Sharded<1, ...> input (the output of a ColumnParallelLinear); "
                  "got Replicated");
    static_assert(problem != P::partial,
                  "tessera: RowParallelLinear takes a Sharded<1, ...> input (the output of a ColumnParallelLinear); "
                  "got Partial, which must go through group.all_reduce first");
    static_assert(problem != P::wrong_axis,
                  "tessera: RowParallelLinear takes a Sharded<1, ...> input (split along the feature axis, as a "
                  "ColumnParallelLinear leaves it); got a value sharded along another axis");
    static_assert(problem != P::other_group,
                  "tessera: RowParallelLinear's input is Sharded over other devices than the layer's group; a "
                  "layer reads only its own group's shards");
    static_assert(problem != P::dtype,
                  "tessera: operands have different element types; convert one with tessera::ops::cast<T>(t)");
    if constexpr (problem != P::none) {
      return {};  // a gate above has failed; nothing below is instantiated
    } else {
      return shards_.template apply<Output>(x, "RowParallelLinear");
    }
  }

  template <std::size_t I>
  bool is_local() const noexcept {
    return shards_.template is_local<I>();
  }
  // Rank I's shard (ValueError if another process holds it).
  template <std::size_t I>
  const Linear<device_at<I>, T>& shard() const {
    return shards_.template shard<I>("RowParallelLinear");
  }
  std::int64_t out_features() const { return out_features_; }

 private:
  void check() {
    bool first = true;
    shards_.for_each_local([&](auto i, const auto& s) {
      constexpr std::size_t I = decltype(i)::value;
      if (s.bias()) {
        throw ValueError(detail::concat("RowParallelLinear: shard ", I, " (on ", device_name<device_at<I>>(),
                                        ") has a bias, but a row-parallel layer's outputs are per-device summands, "
                                        "so the bias would be summed once per rank; add it once after "
                                        "group.all_reduce"));
      }
      if (first) {
        out_features_ = s.out_features();
        first = false;
      } else if (s.out_features() != out_features_) {
        throw ShapeError(detail::concat("RowParallelLinear: shard ", I, " has out_features ", s.out_features(),
                                        " but an earlier shard has ", out_features_,
                                        "; every rank's summand is the whole output"));
      }
    });
    if (first) throw ValueError("RowParallelLinear: no shard is held by this process");
  }

  detail::Shards<T, Ds...> shards_;
  std::int64_t out_features_ = 0;
};

}  // namespace tessera::nn
