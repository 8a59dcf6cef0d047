// tessera/core/transfer.hpp — to<D2>(t), the only bridge between devices, and
// same-device copies. CPU slot to CPU slot here; the CUDA paths (host<->device,
// device<->device) are in cuda_transfer.hpp.
#pragma once

#include <cstring>

#include "copy_strided.hpp"
#include "tensor.hpp"

#if defined(TESSERA_WITH_CUDA)
#include "cuda_transfer.hpp"
#endif

namespace tessera {

// A contiguous copy of `src` on device To, charged to To's ledger. Works on
// Tensors and views (a strided view is gathered into row-major order).
// to<D>(t) on t's own device is an explicit copy too.
//
// Between CPU slots the copy is done on return. With CUDA, copies are
// enqueued on streams and ordered with events (core/cuda_transfer.hpp): a
// copy to a Cuda<N> may still be in flight when to<> returns, and everything
// later enqueued on Cuda<N> runs after it; a copy to a CPU slot has finished.
template <Device To, AnyTensor Src>
Tensor<To, element_of<Src>> to(const Src& src) {
  using From = device_of<Src>;
  using T = element_of<Src>;
  const TensorView<From, const T> view = as_view(src);
  if constexpr (is_cpu_v<To> && is_cpu_v<From>) {
    Tensor<To, T> out(view.shape());
    if (view.is_contiguous()) std::memcpy(out.raw(), view.raw(), out.bytes());
    else detail::gather_strided(out.raw(), view.raw(), view.shape(), view.strides());
    return out;
  } else {
#if defined(TESSERA_WITH_CUDA)
    return cuda::detail::transfer<To, From, T>(view, {});
#else
    throw DeviceError(detail::concat("to<", device_name<To>(), ">: cannot copy ", view.numel(), " elements from ",
                                     device_name<From>(), " to ", device_name<To>(),
                                     ": this build of tessera has no CUDA backend"));
#endif
  }
}

#if defined(TESSERA_WITH_CUDA)
// The same copy enqueued on `stream`, a side stream of the source or the
// destination device, so it overlaps with work already enqueued on the
// devices' own streams; later work on either device's stream waits for it
// (see core/cuda_transfer.hpp for the exact ordering).
template <Device To, AnyTensor Src, Device S>
  requires(is_cuda_v<S> && (same_device<S, To> || same_device<S, device_of<Src>>))
Tensor<To, element_of<Src>> to(const Src& src, const cuda::Stream<S>& stream) {
  using From = device_of<Src>;
  using T = element_of<Src>;
  return cuda::detail::transfer<To, From, T>(as_view(src), {stream.handle(), cuda::context<S>().physical});
}
#endif

// A same-device contiguous copy (materialises views; clones tensors).
template <AnyTensor Src>
Tensor<device_of<Src>, element_of<Src>> contiguous(const Src& src) {
  return to<device_of<Src>>(src);
}

}  // namespace tessera
