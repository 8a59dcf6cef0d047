// tessera/comm/group.hpp — a communicator over the devices of one
// tensor-parallel group, and the collectives the model code uses:
//
//   all_reduce(group, Distributed<Partial<Ds...>, T>) -> Replicated<Ds...>
//
// the only way out of Partial. Sums are taken in rank order, so every
// backend gives the same bits for the same parts.
//
// Backends:
//   in-process  (default) every rank's part lives in this process: parts are
//               copied to the first device with to<>, added there with
//               ops::add in rank order, and copied back. This is the CPU-slot
//               communicator, and the fallback when logical CUDA devices
//               share one physical GPU (NCCL refuses two ranks on one GPU).
//   mpi / nccl  a Backend (comm/mpi.hpp, comm/nccl.hpp) that moves raw bytes;
//               under MPI each process holds only its own rank's part.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>

#include "../core/distributed.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/transfer.hpp"
#include "../ops/elementwise.hpp"

namespace tessera::comm {

namespace detail {
template <class>
inline constexpr bool always_false = false;
}  // namespace detail

// The element types a backend reduces.
enum class ElementType { f32, bf16, f16 };

template <FloatType T>
constexpr ElementType element_type_of() {
  if constexpr (std::is_same_v<T, float>) return ElementType::f32;
  else if constexpr (std::is_same_v<T, bf16>) return ElementType::bf16;
  else return ElementType::f16;
}

// A byte-moving collective implementation over `size()` ranks, of which this
// process holds some (all for NCCL in one process, one under MPI).
class Backend {
 public:
  virtual ~Backend() = default;
  // "mpi (rank 1 of 2)", "nccl (2 GPUs, one process)": said in plans and errors.
  virtual std::string describe() const = 0;
  virtual bool is_local(std::size_t rank) const = 0;
  // Sums `count` elements over all ranks in rank order (each addition
  // rounded to the element type, as ops::add does) and leaves the sum in
  // every local rank's buffer. buffers[r] is rank r's part (device memory on
  // CUDA), null where the rank is not local. Errors name the rank and the
  // operation; a collective that does not finish within the backend's
  // timeout throws CommError instead of hanging.
  virtual void all_reduce_sum(std::span<void* const> buffers, std::size_t count, ElementType type) = 0;
};

template <Device... Ds>
class Group {
 public:
  static constexpr std::size_t size = sizeof...(Ds);
  template <std::size_t I>
  using device_at = std::tuple_element_t<I, std::tuple<Ds...>>;

  // Every rank in this process, reduced with to<> and ops::add.
  Group() = default;
  // In-process, with a note for plans and reports (why it is in-process,
  // e.g. two logical CUDA devices sharing one GPU).
  explicit Group(std::string note) : note_(std::move(note)) {}
  explicit Group(std::unique_ptr<Backend> backend) : backend_(std::move(backend)) {}

  std::string describe() const {
    if (backend_) return backend_->describe();
    return note_.empty() ? std::string("in-process (to<> copies and ops::add)") : note_;
  }

  template <std::size_t I>
  bool is_local() const {
    return !backend_ || backend_->is_local(I);
  }

  // A value every local rank gets a copy of, from where it is now.
  template <Device From, DType T>
  Distributed<Replicated<Ds...>, T> replicate(const Tensor<From, T>& value) const {
    Distributed<Replicated<Ds...>, T> out;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((is_local<I>() ? out.template set<I>(to<device_at<I>>(value)) : void()), ...);
    }(std::make_index_sequence<size>{});
    return out;
  }

  // Anything else: summands of another group's devices (the wrong
  // communicator), a value that is not Partial, or a Partial passed as an
  // lvalue. One sentence instead of an overload list.
  template <class X>
  void all_reduce(X&&) const {
    static_assert(detail::always_false<X>,
                  "tessera: comm::Group::all_reduce takes a Distributed<Partial<...>> over this group's own devices, "
                  "passed with std::move; use the communicator of the group that produced the summands");
  }

  template <FloatType T>
  Distributed<Replicated<Ds...>, T> all_reduce(Distributed<Partial<Ds...>, T>&& partial) const {
    Distributed<Replicated<Ds...>, T> out;
    if (backend_) {
      std::array<void*, size> buffers{};
      std::size_t count = 0;
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        ((std::get<I>(partial.parts_) ? (buffers[I] = std::get<I>(partial.parts_)->device_ptr().get(),
                                         count = static_cast<std::size_t>(std::get<I>(partial.parts_)->numel()), 0)
                                      : 0),
         ...);
      }(std::make_index_sequence<size>{});
      backend_->all_reduce_sum(buffers, count, element_type_of<T>());
      out.parts_ = std::move(partial.parts_);  // same storage type; only the split state changes
      return out;
    }
    auto& parts = partial.parts_;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      if ((!std::get<I>(parts) || ...)) {
        throw ValueError("comm::Group::all_reduce: an in-process group needs every rank's part");
      }
    }(std::make_index_sequence<size>{});
    using D0 = device_at<0>;
    Tensor<D0, T> sum = std::move(*std::get<0>(parts));
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((sum = ops::add(sum, to<D0>(*std::get<I + 1>(parts)))), ...);
    }(std::make_index_sequence<size - 1>{});
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((out.template set<I + 1>(to<device_at<I + 1>>(sum))), ...);
    }(std::make_index_sequence<size - 1>{});
    out.template set<0>(std::move(sum));
    return out;
  }

 private:
  std::unique_ptr<Backend> backend_;
  std::string note_;
};

}  // namespace tessera::comm
