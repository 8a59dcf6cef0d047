// tessera/core/cuda_transfer.hpp — the CUDA paths of tessera::to<>():
// host -> device, device -> host and device -> device (same GPU, peer access,
// or staged through pinned host memory), each ordered against the streams of
// the devices involved with events. Included by core/transfer.hpp in CUDA
// builds; use tessera::to<D>(t) and tessera::to<D>(t, stream), not these.
//
// Ordering rules (what makes an asynchronous copy safe):
// - a copy starts after everything already enqueued on the source device's
//   stream (the data it reads is ready) and on the destination device's
//   stream (the destination block's stream-ordered allocation);
// - work enqueued on the destination's stream after to<> returns runs after
//   the copy (consumers never read too early);
// - the source device's stream also waits for the copy, so the source cannot
//   be freed or overwritten by later work there while it is still being read;
// - copies into host memory have finished when to<> returns.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <set>
#include <utility>

#include "copy_strided.hpp"
#include "cuda.hpp"
#include "cuda_copy_strided.hpp"
#include "tensor.hpp"

namespace tessera::cuda::detail {

// Allocates the pinned staging slots of a context on first use (under the
// staging mutex, with the context's device current).
inline void ensure_staging(DeviceContext& ctx) {
  PinnedStaging& st = ctx.staging;
  if (st.slot[0] != nullptr) return;
  for (std::size_t i = 0; i < st.slot.size(); ++i) {
    check(cudaHostAlloc(&st.slot[i], PinnedStaging::kSlotBytes, cudaHostAllocPortable),
          concat("cudaHostAlloc of ", PinnedStaging::kSlotBytes, " bytes of pinned staging for ", ctx.name));
    check(cudaEventCreateWithFlags(&st.done[i], cudaEventDisableTiming), "cudaEventCreate (staging)");
  }
}

// Host memory -> device memory of `ctx`, on `stream` (a stream of ctx's
// device). Each chunk is copied into a pinned slot and DMA'd from there; the
// host source is fully consumed when this returns, the device copy may still
// be in flight on `stream`.
inline void host_to_device(DeviceContext& ctx, void* dst, const void* src, std::size_t bytes, StreamHandle stream) {
  const DeviceGuard guard(ctx.physical);
  std::lock_guard lock(ctx.staging.mutex);
  ensure_staging(ctx);
  PinnedStaging& st = ctx.staging;
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  std::size_t chunk = 0;
  for (std::size_t offset = 0; offset < bytes; offset += PinnedStaging::kSlotBytes, ++chunk) {
    const std::size_t slot = chunk & 1;
    const std::size_t len = std::min(PinnedStaging::kSlotBytes, bytes - offset);
    check(cudaEventSynchronize(st.done[slot]), concat("waiting for a staging slot of ", ctx.name));
    std::memcpy(st.slot[slot], s + offset, len);
    check(cudaMemcpyAsync(d + offset, st.slot[slot], len, cudaMemcpyHostToDevice, stream),
          concat("host-to-device copy of ", len, " bytes to ", ctx.name));
    check(cudaEventRecord(st.done[slot], stream), "cudaEventRecord (staging)");
  }
}

// Device memory of `ctx` -> host memory, on `stream`; complete on return.
// Chunk i is DMA'd into one pinned slot while chunk i-1 is copied out of the
// other.
inline void device_to_host(DeviceContext& ctx, void* dst, const void* src, std::size_t bytes, StreamHandle stream) {
  const DeviceGuard guard(ctx.physical);
  std::lock_guard lock(ctx.staging.mutex);
  ensure_staging(ctx);
  PinnedStaging& st = ctx.staging;
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  const auto drain = [&](std::size_t slot, std::size_t offset, std::size_t len) {
    check(cudaEventSynchronize(st.done[slot]), concat("device-to-host copy from ", ctx.name));
    std::memcpy(d + offset, st.slot[slot], len);
  };
  std::size_t chunk = 0, prev_offset = 0, prev_len = 0;
  for (std::size_t offset = 0; offset < bytes; offset += PinnedStaging::kSlotBytes, ++chunk) {
    const std::size_t slot = chunk & 1;
    const std::size_t len = std::min(PinnedStaging::kSlotBytes, bytes - offset);
    // The slot may still feed an earlier host-to-device copy on another
    // stream of this device: the DMA into it waits for that (on the GPU).
    check(cudaStreamWaitEvent(stream, st.done[slot], 0), "waiting for a staging slot");
    check(cudaMemcpyAsync(st.slot[slot], s + offset, len, cudaMemcpyDeviceToHost, stream),
          concat("device-to-host copy of ", len, " bytes from ", ctx.name));
    check(cudaEventRecord(st.done[slot], stream), "cudaEventRecord (staging)");
    if (chunk > 0) drain(slot ^ 1, prev_offset, prev_len);
    prev_offset = offset;
    prev_len = len;
  }
  if (chunk > 0) drain((chunk - 1) & 1, prev_offset, prev_len);
}

// Whether the two physical GPUs can copy directly; enables access from
// `dst` to `src` the first time a pair is used.
inline bool peer_access(int dst, int src) {
  static std::mutex mutex;
  static std::set<std::pair<int, int>> enabled;
  std::lock_guard lock(mutex);
  if (enabled.count({dst, src})) return true;
  int can = 0;
  check(cudaDeviceCanAccessPeer(&can, dst, src), "cudaDeviceCanAccessPeer");
  if (!can) return false;
  const DeviceGuard guard(dst);
  const cudaError_t status = cudaDeviceEnablePeerAccess(src, 0);
  if (status == cudaErrorPeerAccessAlreadyEnabled) {
    (void)cudaGetLastError();
  } else {
    check(status, concat("cudaDeviceEnablePeerAccess(", src, ") on physical device ", dst));
  }
  enabled.insert({dst, src});
  return true;
}

// Device `src` -> device `dst` on `stream`, a stream of either device whose
// physical device is `stream_physical`. The caller has ordered `stream`
// after both devices' streams.
inline void device_to_device(DeviceContext& dst_ctx, void* dst, DeviceContext& src_ctx, const void* src,
                             std::size_t bytes, StreamHandle stream, int stream_physical) {
  const std::string what = concat("copy of ", bytes, " bytes from ", src_ctx.name, " to ", dst_ctx.name);
  if (dst_ctx.physical == src_ctx.physical) {
    const DeviceGuard guard(stream_physical);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), what);
    return;
  }
  if (peer_access(dst_ctx.physical, src_ctx.physical)) {
    const DeviceGuard guard(stream_physical);
    check(cudaMemcpyPeerAsync(dst, dst_ctx.physical, src, src_ctx.physical, bytes, stream), what + " (peer)");
    return;
  }
  // No peer access: through the source's pinned staging, chunk by chunk.
  // Rare (GPUs on different PCIe roots), so simple and synchronous.
  std::lock_guard lock(src_ctx.staging.mutex);
  {
    const DeviceGuard guard(src_ctx.physical);
    ensure_staging(src_ctx);
    check(cudaStreamSynchronize(stream), what);  // the caller's ordering, made host-visible
    check(cudaEventSynchronize(src_ctx.staging.done[0]), what);  // an earlier copy may still read the slot
  }
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  void* slot = src_ctx.staging.slot[0];
  for (std::size_t offset = 0; offset < bytes; offset += PinnedStaging::kSlotBytes) {
    const std::size_t len = std::min(PinnedStaging::kSlotBytes, bytes - offset);
    {
      const DeviceGuard guard(src_ctx.physical);
      check(cudaMemcpyAsync(slot, s + offset, len, cudaMemcpyDeviceToHost, src_ctx.launch.stream), what + " (staged)");
      check(cudaStreamSynchronize(src_ctx.launch.stream), what + " (staged)");
    }
    const DeviceGuard guard(dst_ctx.physical);
    check(cudaMemcpyAsync(d + offset, slot, len, cudaMemcpyHostToDevice, dst_ctx.launch.stream), what + " (staged)");
    check(cudaStreamSynchronize(dst_ctx.launch.stream), what + " (staged)");
  }
}

// A row-major copy of a strided device view on its own device (the packing
// step before a transfer of a non-contiguous view).
template <Device D, class T>
Tensor<D, T> pack_on_device(const TensorView<D, const T>& view) {
  Tensor<D, T> out(view.shape());
  DeviceContext& ctx = context<D>();
  const DeviceGuard guard(ctx.physical);
  copy_strided(ctx.launch, out.device_ptr().get(), out.strides(), view.device_ptr().get(), view.strides(),
               view.shape());
  return out;
}

// The copy stream of a transfer: the user's stream, or the default choice
// (the destination device's stream; the source's for device -> host).
struct CopyStream {
  StreamHandle stream = nullptr;  // null: use the default
  int physical = -1;
};

template <Device To, Device From, class T>
Tensor<To, T> transfer(const TensorView<From, const T>& view, CopyStream user) {
  if constexpr (is_cuda_v<From>) {
    if (!view.is_contiguous()) {
      const Tensor<From, T> packed = pack_on_device(view);
      return transfer<To, From, T>(packed.view(), user);
    }
  }
  Tensor<To, T> out(view.shape());
  const std::size_t bytes = out.bytes();
  if constexpr (is_cpu_v<From>) {
    // Host -> device. A strided host view is packed on the host first.
    DeviceContext& dst = context<To>();
    const StreamHandle stream = user.stream ? user.stream : dst.launch.stream;
    if (user.stream) stream_wait(stream, dst.launch.stream, dst.physical);  // the allocation
    if (view.is_contiguous()) {
      host_to_device(dst, out.device_ptr().get(), view.raw(), bytes, stream);
    } else {
      Tensor<From, T> packed(view.shape());
      tessera::detail::gather_strided(packed.raw(), view.raw(), view.shape(), view.strides());
      host_to_device(dst, out.device_ptr().get(), packed.raw(), bytes, stream);
    }
    if (user.stream) stream_wait(dst.launch.stream, stream, dst.physical);  // consumers
  } else if constexpr (is_cpu_v<To>) {
    // Device -> host: complete on return.
    DeviceContext& src = context<From>();
    const StreamHandle stream = user.stream ? user.stream : src.launch.stream;
    if (user.stream) stream_wait(stream, src.launch.stream, src.physical);  // the data
    device_to_host(src, out.raw(), view.device_ptr().get(), bytes, stream);
  } else {
    DeviceContext& dst = context<To>();
    DeviceContext& src = context<From>();
    const StreamHandle stream = user.stream ? user.stream : dst.launch.stream;
    const int stream_physical = user.stream ? user.physical : dst.physical;
    stream_wait(stream, src.launch.stream, src.physical);  // the data is ready
    stream_wait(stream, dst.launch.stream, dst.physical);  // the destination is allocated
    if (bytes > 0) device_to_device(dst, out.device_ptr().get(), src, view.device_ptr().get(), bytes, stream,
                                      stream_physical);
    stream_wait(dst.launch.stream, stream, stream_physical);  // consumers on To read after the copy
    stream_wait(src.launch.stream, stream, stream_physical);  // the source outlives the read
  }
  return out;
}

}  // namespace tessera::cuda::detail
