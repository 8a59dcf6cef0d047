// tessera/core/cuda.hpp — the CUDA runtime side of tessera: which physical
// GPU each logical Cuda<N> is, one context per logical device (stream,
// cuBLASLt handle and workspace, pinned staging buffers), the RAII device
// guard every CUDA call goes through, and the stream-ordered allocator that
// backs Tensor<Cuda<N>> and charges the device's memory ledger.
//
// Built only with the CUDA backend (TESSERA_WITH_CUDA, set by tessera::cuda).
// Plain C++ against the CUDA runtime API: no kernels here.
//
// Execution model: every op on Cuda<N> is enqueued on Cuda<N>'s stream and
// returns before the GPU has finished; work on one logical device is ordered
// by that stream. to<Host>(t) waits for the data; cross-device copies order
// the two streams with events (core/cuda_transfer.hpp).
#pragma once

#if !defined(TESSERA_WITH_CUDA)
#error "tessera/core/cuda.hpp needs the CUDA backend: link tessera::cuda (TESSERA_CUDA=ON or AUTO with nvcc)"
#endif

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "cuda_arch.hpp"
#include "cuda_error.hpp"
#include "cuda_launch.hpp"
#include "device.hpp"
#include "error.hpp"
#include "memory.hpp"

namespace tessera::cuda {

using tessera::detail::concat;

// ---- the logical-to-physical device map ------------------------------------

// Logical Cuda<N> -> physical device. Identity over the visible GPUs by
// default; TESSERA_CUDA_DEVICES=0,0 maps Cuda<0> and Cuda<1> onto physical
// GPU 0 (pipeline code runs, and is tested, on one GPU). Entries are
// validated when a logical device is first used, so a map naming a GPU this
// machine lacks fails with an error naming both.
struct DeviceMap {
  std::vector<int> physical;  // physical[logical]
  int physical_count = 0;     // GPUs the CUDA runtime sees
  std::string source;         // "TESSERA_CUDA_DEVICES=0,0" or "identity"
  std::string runtime_error;  // why cudaGetDeviceCount found none, if it failed
};

namespace detail {

// Parses "0,0" / "1, 0" into physical indices; anything else is a DeviceError
// that quotes the variable.
inline std::vector<int> parse_device_list(std::string_view text) {
  std::vector<int> out;
  const auto fail = [&](std::string_view why) {
    throw DeviceError(concat("TESSERA_CUDA_DEVICES='", text, "' is not a comma-separated list of physical ",
                             "CUDA device indices (e.g. 0,0 or 1,0): ", why));
  };
  std::size_t i = 0;
  while (true) {
    while (i < text.size() && text[i] == ' ') ++i;
    if (i == text.size() || text[i] < '0' || text[i] > '9') fail("expected a digit");
    long value = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      value = value * 10 + (text[i] - '0');
      if (value > 1024) fail("index too large");
      ++i;
    }
    out.push_back(static_cast<int>(value));
    while (i < text.size() && text[i] == ' ') ++i;
    if (i == text.size()) break;
    if (text[i] != ',') fail(concat("unexpected character '", text[i], "'"));
    ++i;
  }
  return out;
}

inline DeviceMap read_device_map() {
  DeviceMap map;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // No driver or no GPU: zero devices, not an error until one is used.
    (void)cudaGetLastError();
    map.runtime_error = concat(cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
    count = 0;
  }
  map.physical_count = count;
  if (const char* env = std::getenv("TESSERA_CUDA_DEVICES"); env != nullptr && *env != '\0') {
    map.physical = parse_device_list(env);
    map.source = concat("TESSERA_CUDA_DEVICES=", env);
  } else {
    for (int d = 0; d < count; ++d) map.physical.push_back(d);
    map.source = "identity map over the visible GPUs";
  }
  return map;
}

}  // namespace detail

// The process's device map, read once (thread-safe).
inline const DeviceMap& device_map() {
  static const DeviceMap map = detail::read_device_map();
  return map;
}

// Number of logical CUDA devices (0 when there is no GPU or no driver, even
// if TESSERA_CUDA_DEVICES is set: nothing can run).
inline int device_count() {
  const DeviceMap& map = device_map();
  return map.physical_count == 0 ? 0 : static_cast<int>(map.physical.size());
}

// Physical index of logical device `logical`, or a DeviceError that names
// the logical device, the map and what this machine has.
inline int physical_device(int logical) {
  const DeviceMap& map = device_map();
  const std::string name = concat("Cuda<", logical, ">");
  if (map.physical_count == 0) {
    throw DeviceError(concat(name, " is not available: no CUDA device is visible to this process",
                             map.runtime_error.empty() ? std::string() : concat(" (", map.runtime_error, ")")));
  }
  if (logical < 0 || logical >= static_cast<int>(map.physical.size())) {
    throw DeviceError(concat(name, " is not available: the device map (", map.source, ") has ",
                             map.physical.size(), " logical device(s), Cuda<0> to Cuda<", map.physical.size() - 1,
                             ">; set TESSERA_CUDA_DEVICES to map more logical devices onto the GPUs"));
  }
  const int physical = map.physical[static_cast<std::size_t>(logical)];
  if (physical >= map.physical_count) {
    throw DeviceError(concat(name, " maps to physical CUDA device ", physical, " (", map.source,
                             "), but this machine has ", map.physical_count, " CUDA device(s)"));
  }
  return physical;
}

// The GPU behind logical device `logical` (a DeviceError naming it when there
// is none), read without creating its context, so a start-up check can ask
// before anything is allocated.
inline GpuInfo gpu_info(int logical) {
  const int physical = physical_device(logical);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, physical), concat("cudaGetDeviceProperties for Cuda<", logical, ">"));
  return {concat("Cuda<", logical, ">"), prop.name, physical, prop.major * 10 + prop.minor};
}

// ---- the device guard -------------------------------------------------------

// Makes `physical` the calling thread's current device for its lifetime and
// restores the previous one. Every CUDA call and destructor in tessera runs
// under one, so nothing depends on what the current device happened to be.
class DeviceGuard {
 public:
  explicit DeviceGuard(int physical) : target_(physical) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != target_) check(cudaSetDevice(target_), concat("cudaSetDevice(", target_, ")"));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (previous_ != target_) (void)cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  int target_ = 0;
};

// ---- per-logical-device contexts --------------------------------------------

// Two pinned host buffers used alternately for host<->device copies, so a
// host memcpy into one overlaps the DMA out of the other. Each slot's event
// marks when the GPU has finished with it.
struct PinnedStaging {
  static constexpr std::size_t kSlotBytes = std::size_t{8} << 20;
  std::array<void*, 2> slot{};
  std::array<cudaEvent_t, 2> done{};
  std::mutex mutex;  // one transfer at a time uses the slots
};

// Everything tessera keeps per logical device. Created on first use of the
// device and never destroyed: CUDA objects cannot be released safely from
// static destructors (the runtime may already be gone), and the process exit
// frees them.
struct DeviceContext {
  int logical = 0;
  int physical = 0;
  std::string name;  // "Cuda<1>"
  std::string gpu;   // "NVIDIA H100 80GB HBM3 (physical 0)"
  LaunchContext launch;
  PinnedStaging staging;
};

// cuBLASLt scratch per logical device (32 MiB is NVIDIA's recommendation for
// Hopper; smaller GPUs simply use less of it).
inline constexpr std::size_t kBlasWorkspaceBytes = std::size_t{32} << 20;

namespace detail {

inline std::unique_ptr<DeviceContext> create_context(int logical) {
  auto ctx = std::make_unique<DeviceContext>();
  ctx->logical = logical;
  ctx->physical = physical_device(logical);
  ctx->name = concat("Cuda<", logical, ">");
  const DeviceGuard guard(ctx->physical);
  const std::string where = concat(" for ", ctx->name);

  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, ctx->physical), concat("cudaGetDeviceProperties", where));
  ctx->gpu = concat(prop.name, " (physical ", ctx->physical, ")");

  // Keep freed blocks cached in the pool instead of returning them to the
  // driver at every synchronisation: steady-state decoding then allocates
  // without system calls.
  cudaMemPool_t pool = nullptr;
  check(cudaDeviceGetDefaultMemPool(&pool, ctx->physical), concat("cudaDeviceGetDefaultMemPool", where));
  std::uint64_t keep = UINT64_MAX;
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
        concat("cudaMemPoolSetAttribute", where));

  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), concat("cudaStreamCreate", where));
  cublasLtHandle_t lt = nullptr;
  check(cublasLtCreate(&lt), concat("cublasLtCreate", where));
  void* workspace = nullptr;
  check(cudaMalloc(&workspace, kBlasWorkspaceBytes), concat("cudaMalloc of the cuBLASLt workspace", where));

  ctx->launch.stream = stream;
  ctx->launch.blas_lt = lt;
  ctx->launch.workspace = workspace;
  ctx->launch.workspace_bytes = kBlasWorkspaceBytes;
  ctx->launch.physical_device = ctx->physical;
  ctx->launch.sm_count = prop.multiProcessorCount;
  ctx->launch.compute_capability = prop.major * 10 + prop.minor;
  ctx->launch.max_shared_memory_per_block = prop.sharedMemPerBlockOptin;
  return ctx;
}

struct ContextRegistry {
  std::mutex mutex;
  std::vector<std::unique_ptr<DeviceContext>> contexts;  // by logical index; leaked at exit
  static ContextRegistry& get() {
    static auto* registry = new ContextRegistry();  // never destroyed, see DeviceContext
    return *registry;
  }
};

}  // namespace detail

// The context of logical device `logical`, created on first use; a missing
// device is a DeviceError naming it.
inline DeviceContext& context(int logical) {
  auto& registry = detail::ContextRegistry::get();
  std::lock_guard lock(registry.mutex);
  if (logical >= 0 && static_cast<std::size_t>(logical) < registry.contexts.size() &&
      registry.contexts[static_cast<std::size_t>(logical)]) {
    return *registry.contexts[static_cast<std::size_t>(logical)];
  }
  auto created = detail::create_context(logical);  // validates `logical`
  if (registry.contexts.size() <= static_cast<std::size_t>(logical)) {
    registry.contexts.resize(static_cast<std::size_t>(logical) + 1);
  }
  registry.contexts[static_cast<std::size_t>(logical)] = std::move(created);
  return *registry.contexts[static_cast<std::size_t>(logical)];
}

template <Device D>
  requires is_cuda_v<D>
DeviceContext& context() {
  static DeviceContext& ctx = context(D::index);  // resolved once per device type
  return ctx;
}

template <Device D>
  requires is_cuda_v<D>
const LaunchContext& launch_context() {
  return context<D>().launch;
}

// Start-up check: every listed device exists. Throws one DeviceError naming
// every missing device, e.g. require_devices<Cuda<0>, Cuda<1>>() on a
// one-GPU machine without TESSERA_CUDA_DEVICES=0,0.
template <Device... Ds>
void require_devices() {
  std::string missing;
  const auto probe = [&](int logical) {
    try {
      (void)context(logical);
    } catch (const DeviceError& e) {
      std::string_view why = e.what();
      if (why.starts_with("tessera: ")) why.remove_prefix(9);
      missing += concat(missing.empty() ? "" : "; ", why);
    }
  };
  (..., (is_cuda_v<Ds> ? probe(Ds::index) : void()));
  if (!missing.empty()) throw DeviceError(concat("required CUDA devices are missing: ", missing));
}

// Blocks the host until all work enqueued on D has finished; an asynchronous
// kernel fault surfaces here as a DeviceError naming D.
template <Device D>
  requires is_cuda_v<D>
void synchronize() {
  DeviceContext& ctx = context<D>();
  const DeviceGuard guard(ctx.physical);
  check(cudaStreamSynchronize(ctx.launch.stream), concat("cudaStreamSynchronize on ", ctx.name));
}

// Makes `waiter` wait (on the GPU, not the host) for everything enqueued on
// `producer` so far. Both are streams of logical devices; `producer_physical`
// is the device the producer stream belongs to (events are recorded there).
inline void stream_wait(StreamHandle waiter, StreamHandle producer, int producer_physical) {
  if (waiter == producer) return;
  const DeviceGuard guard(producer_physical);
  cudaEvent_t event = nullptr;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  const cudaError_t recorded = cudaEventRecord(event, producer);
  const cudaError_t waited = recorded == cudaSuccess ? cudaStreamWaitEvent(waiter, event, 0) : recorded;
  (void)cudaEventDestroy(event);  // safe: the wait has captured the event's work
  check(waited, "ordering two streams with an event");
}

// An extra stream on device D, for overlapping transfers with compute
// (tessera::to<To>(t, stream)). Owns its cudaStream_t.
template <Device D>
  requires is_cuda_v<D>
class Stream {
 public:
  using device_type = D;
  Stream() : physical_(context<D>().physical) {
    const DeviceGuard guard(physical_);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), concat("cudaStreamCreate on ", device_name<D>()));
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (stream_ == nullptr) return;
    const DeviceGuard guard(physical_);
    (void)cudaStreamSynchronize(stream_);
    (void)cudaStreamDestroy(stream_);
  }
  StreamHandle handle() const noexcept { return stream_; }
  void synchronize() const {
    const DeviceGuard guard(physical_);
    check(cudaStreamSynchronize(stream_), concat("cudaStreamSynchronize on a side stream of ", device_name<D>()));
  }

 private:
  int physical_ = 0;
  cudaStream_t stream_ = nullptr;
};

}  // namespace tessera::cuda

namespace tessera {

// Tensor<Cuda<N>> storage: CUDA's stream-ordered pool allocator on N's
// stream. A failed allocation (budget or a real cudaErrorMemoryAllocation)
// is an OutOfMemory naming the device, the request, the live bytes and the
// budget.
template <Device D>
struct Allocator<D, std::enable_if_t<is_cuda_v<D>>> {
  static void* allocate(std::size_t bytes) {
    cuda::DeviceContext& ctx = cuda::context<D>();
    const cuda::DeviceGuard guard(ctx.physical);
    void* p = nullptr;
    const cudaError_t status = cudaMallocAsync(&p, std::max<std::size_t>(bytes, 1), ctx.launch.stream);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      ledger<D>().throw_backend_out_of_memory(bytes);
    }
    cuda::check(status, detail::concat("cudaMallocAsync of ", bytes, " bytes on ", ctx.name));
    if (poison_allocations() && bytes > 0) {
      cuda::check(cudaMemsetAsync(p, 0xFF, bytes, ctx.launch.stream), "poisoning a new allocation");
    }
    return p;
  }
  // Stream-ordered: the block returns to the pool once the work already
  // enqueued on the device's stream (which may still read it) has finished.
  static void deallocate(void* p, std::size_t) noexcept {
    cuda::DeviceContext& ctx = cuda::context<D>();
    const int physical = ctx.physical;
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) return;  // the runtime is shutting down
    if (previous != physical) (void)cudaSetDevice(physical);
    (void)cudaFreeAsync(p, ctx.launch.stream);
    if (previous != physical) (void)cudaSetDevice(previous);
  }
};

}  // namespace tessera
