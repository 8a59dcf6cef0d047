// tessera/core/device.hpp — device tags. The device of every tensor is part
// of its type: Cpu<N> is CPU slot N (a separately budgeted host arena),
// Cuda<N> is logical CUDA device N of this process. Only host code ever sees
// N; kernels are never templated on it.
#pragma once

#include <concepts>
#include <string>
#include <type_traits>

namespace tessera {

enum class DeviceKind { cpu, cuda };

// CPU slot N. Several slots let pipeline and tensor-parallel placement run,
// and be tested, without a GPU; they map naturally to NUMA nodes.
template <int N>
struct Cpu {
  static_assert(N >= 0, "tessera: a CPU slot index must be non-negative");
  static constexpr DeviceKind kind = DeviceKind::cpu;
  static constexpr int index = N;
};

// Logical CUDA device N. The logical-to-physical map is a run-time table
// owned by the CUDA backend; start-up checks that every Cuda<N> used exists.
template <int N>
struct Cuda {
  static_assert(N >= 0, "tessera: a CUDA device index must be non-negative");
  static constexpr DeviceKind kind = DeviceKind::cuda;
  static constexpr int index = N;
};

// The host: where processors build their outputs and where files are read.
using Host = Cpu<0>;

namespace detail {
template <class T>
struct is_device_tag : std::false_type {};
template <int N>
struct is_device_tag<Cpu<N>> : std::true_type {};
template <int N>
struct is_device_tag<Cuda<N>> : std::true_type {};
}  // namespace detail

template <class D>
concept Device = detail::is_device_tag<D>::value;

template <class D>
inline constexpr bool is_cpu_v = Device<D> && D::kind == DeviceKind::cpu;
template <class D>
inline constexpr bool is_cuda_v = Device<D> && D::kind == DeviceKind::cuda;

// Human-readable name, "Cpu<1>" or "Cuda<0>", used in every error message.
template <Device D>
std::string device_name() {
  return std::string(D::kind == DeviceKind::cpu ? "Cpu<" : "Cuda<") + std::to_string(D::index) +
         ">";
}

// The compile-time gate every op and layer goes through. It is a variable
// template so that the failing static_assert prints the two device types in
// its condition ("same_device<tessera::Cpu<0>, tessera::Cpu<1>>").
template <class A, class B>
inline constexpr bool same_device = std::is_same_v<A, B>;

}  // namespace tessera
