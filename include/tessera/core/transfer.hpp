// tessera/core/transfer.hpp — to<D2>(t), the only bridge between devices, and
// same-device copies. CPU slot to CPU slot here; the CUDA backend adds
// host<->device and device<->device paths.
#pragma once

#include <cstring>

#include "tensor.hpp"

namespace tessera {

namespace detail {

// Copies a strided CPU view into contiguous memory, row-major order.
template <class T>
void gather_strided(T* dst, const T* src, const Shape& shape, const Strides& strides) {
  const int rank = shape.rank();
  const std::int64_t n = shape.numel();
  if (n == 0) return;
  if (is_contiguous(shape, strides)) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));
    return;
  }
  if (rank == 0) {
    *dst = *src;
    return;
  }
  // Walk the outer dimensions with an odometer; copy the innermost as a run.
  const std::int64_t inner = shape[rank - 1];
  const std::int64_t inner_stride = strides[static_cast<std::size_t>(rank - 1)];
  std::array<std::int64_t, kMaxRank> index{};
  std::int64_t offset = 0;
  for (std::int64_t row = 0, rows = n / inner; row < rows; ++row) {
    const T* s = src + offset;
    if (inner_stride == 1) {
      std::memcpy(dst, s, static_cast<std::size_t>(inner) * sizeof(T));
    } else {
      for (std::int64_t i = 0; i < inner; ++i) dst[i] = s[i * inner_stride];
    }
    dst += inner;
    for (int d = rank - 2; d >= 0; --d) {
      const auto ud = static_cast<std::size_t>(d);
      offset += strides[ud];
      if (++index[ud] < shape[d]) break;
      offset -= strides[ud] * shape[d];
      index[ud] = 0;
    }
  }
}

// Byte copy between two devices' memories. Specialised by the CUDA backend.
template <Device To, Device From>
struct DeviceCopy {
  static void copy(void* dst, const void* src, std::size_t bytes) {
    if constexpr (is_cpu_v<To> && is_cpu_v<From>) {
      std::memcpy(dst, src, bytes);
    } else {
      throw DeviceError(concat("cannot copy ", bytes, " bytes from ", device_name<From>(), " to ",
                               device_name<To>(), ": this build of tessera has no CUDA backend"));
    }
  }
};

}  // namespace detail

// A contiguous copy of `src` on device To, charged to To's ledger. Works on
// Tensors and views (a strided view is gathered into row-major order).
// to<D>(t) on t's own device is an explicit copy too.
template <Device To, AnyTensor Src>
Tensor<To, element_of<Src>> to(const Src& src) {
  using From = device_of<Src>;
  using T = element_of<Src>;
  const TensorView<From, const T> view = as_view(src);
  Tensor<To, T> out(view.shape());
  if (view.is_contiguous()) {
    detail::DeviceCopy<To, From>::copy(out.raw(), view.raw(), out.bytes());
  } else if constexpr (is_cpu_v<From>) {
    if constexpr (is_cpu_v<To>) {
      detail::gather_strided(out.raw(), view.raw(), view.shape(), view.strides());
    } else {
      Tensor<From, T> packed(view.shape());
      detail::gather_strided(packed.raw(), view.raw(), view.shape(), view.strides());
      detail::DeviceCopy<To, From>::copy(out.raw(), packed.raw(), out.bytes());
    }
  } else {
    throw DeviceError(detail::concat("to<", device_name<To>(), ">: a non-contiguous view on ",
                                     device_name<From>(), " needs ops::contiguous first"));
  }
  return out;
}

// A same-device contiguous copy (materialises views; clones tensors).
template <AnyTensor Src>
Tensor<device_of<Src>, element_of<Src>> contiguous(const Src& src) {
  return to<device_of<Src>>(src);
}

}  // namespace tessera
