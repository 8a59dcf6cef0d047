// tessera/core/memory.hpp — per-device memory ledger and raw buffers.
// Every allocation on every device passes through its device's ledger, which
// tracks live and peak bytes and enforces an optional budget. The planner
// predicts these numbers; the ledger measures them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "device.hpp"
#include "error.hpp"

namespace tessera {

// "1.50 MiB (1572864 bytes)"-style text for messages and reports.
inline std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[64];
  if (unit == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.2f %s", value, units[unit]);
  return buf;
}

class MemoryLedger {
 public:
  explicit MemoryLedger(std::string device) : device_(std::move(device)) {}
  MemoryLedger(const MemoryLedger&) = delete;
  MemoryLedger& operator=(const MemoryLedger&) = delete;

  const std::string& device() const noexcept { return device_; }

  // Records an allocation of `bytes`, or throws OutOfMemory if it would take
  // the live total past the budget. Nothing is recorded when it throws.
  void reserve(std::uint64_t bytes) {
    std::lock_guard lock(mutex_);
    if (budget_ && live_ + bytes > *budget_) {
      throw OutOfMemory(device_, bytes, live_, *budget_,
                        detail::concat("out of memory on ", device_, ": requested ",
                                       format_bytes(bytes), " (", bytes, " bytes) with ",
                                       format_bytes(live_), " (", live_, " bytes) live, budget ",
                                       format_bytes(*budget_), " (", *budget_, " bytes)"));
    }
    live_ += bytes;
    peak_ = std::max(peak_, live_);
    ++allocations_;
  }

  void release(std::uint64_t bytes) noexcept {
    std::lock_guard lock(mutex_);
    live_ -= std::min(live_, bytes);
  }

  // A real allocator failure (malloc returned null, cudaErrorMemoryAllocation)
  // becomes the same exception as a budget overrun.
  [[noreturn]] void throw_backend_out_of_memory(std::uint64_t bytes) const {
    std::lock_guard lock(mutex_);
    const std::uint64_t budget = budget_.value_or(0);
    throw OutOfMemory(device_, bytes, live_, budget,
                      detail::concat("out of memory on ", device_, ": the allocator could not provide ",
                                     format_bytes(bytes), " (", bytes, " bytes) with ",
                                     format_bytes(live_), " (", live_, " bytes) live, budget ",
                                     budget_ ? format_bytes(budget) : std::string("unlimited")));
  }

  std::uint64_t live() const { std::lock_guard lock(mutex_); return live_; }
  std::uint64_t peak() const { std::lock_guard lock(mutex_); return peak_; }
  std::uint64_t allocations() const { std::lock_guard lock(mutex_); return allocations_; }
  std::optional<std::uint64_t> budget() const { std::lock_guard lock(mutex_); return budget_; }

  // A budget below the live total is accepted: the next allocation fails.
  void set_budget(std::optional<std::uint64_t> bytes) { std::lock_guard lock(mutex_); budget_ = bytes; }
  void reset_peak() { std::lock_guard lock(mutex_); peak_ = live_; }

 private:
  std::string device_;
  mutable std::mutex mutex_;
  std::uint64_t live_ = 0, peak_ = 0, allocations_ = 0;
  std::optional<std::uint64_t> budget_;
};

namespace detail {
struct LedgerRegistry {
  std::mutex mutex;
  std::vector<MemoryLedger*> ledgers;
  static LedgerRegistry& get() {
    static LedgerRegistry registry;
    return registry;
  }
};
}  // namespace detail

// The ledger of device D, created (and registered for reports) on first use.
template <Device D>
MemoryLedger& ledger() {
  static MemoryLedger* instance = [] {
    auto* l = new MemoryLedger(device_name<D>());  // never destroyed: outlives static tensors
    auto& registry = detail::LedgerRegistry::get();
    std::lock_guard lock(registry.mutex);
    registry.ledgers.push_back(l);
    return l;
  }();
  return *instance;
}

// Every ledger touched so far, ordered by device name.
inline std::vector<const MemoryLedger*> all_ledgers() {
  auto& registry = detail::LedgerRegistry::get();
  std::lock_guard lock(registry.mutex);
  std::vector<const MemoryLedger*> out(registry.ledgers.begin(), registry.ledgers.end());
  std::sort(out.begin(), out.end(),
            [](const MemoryLedger* a, const MemoryLedger* b) { return a->device() < b->device(); });
  return out;
}

// A table of live, peak and budget per device.
inline void print_memory_report(std::ostream& os) {
  char line[160];
  std::snprintf(line, sizeof line, "%-10s %14s %14s %14s %8s\n", "device", "live", "peak", "budget",
                "allocs");
  os << line;
  for (const MemoryLedger* l : all_ledgers()) {
    const auto budget = l->budget();
    std::snprintf(line, sizeof line, "%-10s %14s %14s %14s %8llu\n", l->device().c_str(),
                  format_bytes(l->live()).c_str(), format_bytes(l->peak()).c_str(),
                  budget ? format_bytes(*budget).c_str() : "unlimited",
                  static_cast<unsigned long long>(l->allocations()));
    os << line;
  }
}

// With TESSERA_POISON_ALLOCATIONS=1 every new tensor's bytes are set to 0xFF
// (NaN for float, bf16 and f16; -1 for integers) before anything writes them,
// so an op that leaves an output element unwritten is caught by the tests,
// which turn it on. It costs a memset per allocation.
inline bool poison_allocations() {
  static const bool on = [] {
    const char* env = std::getenv("TESSERA_POISON_ALLOCATIONS");
    return env != nullptr && *env != '\0' && !(env[0] == '0' && env[1] == '\0');
  }();
  return on;
}

// Raw memory of a device kind. The CUDA specialisation is in core/cuda.hpp
// (included at the end of this header in CUDA builds); without the CUDA
// backend, allocating on a Cuda<N> fails with a DeviceError.
template <Device D, class Enable = void>
struct Allocator;

template <Device D>
struct Allocator<D, std::enable_if_t<is_cpu_v<D>>> {
  static constexpr std::size_t alignment = 64;  // a cache line; what SIMD loads like
  static void* allocate(std::size_t bytes) {
    const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, rounded);
    if (!p) ledger<D>().throw_backend_out_of_memory(bytes);
    if (poison_allocations()) std::memset(p, 0xFF, rounded);
    return p;
  }
  static void deallocate(void* p, std::size_t) noexcept { std::free(p); }
};

#if !defined(TESSERA_WITH_CUDA)
template <Device D>
struct Allocator<D, std::enable_if_t<is_cuda_v<D>>> {
  [[noreturn]] static void* allocate(std::size_t bytes) {
    throw DeviceError(detail::concat("cannot allocate ", bytes, " bytes on ", device_name<D>(),
                                     ": this build of tessera has no CUDA backend"));
  }
  static void deallocate(void*, std::size_t) noexcept {}
};
#endif

// An owning, ledger-accounted block of device memory.
template <Device D>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t bytes) : bytes_(bytes) {
    ledger<D>().reserve(bytes);
    try {
      ptr_ = Allocator<D>::allocate(bytes);
    } catch (...) {
      ledger<D>().release(bytes);
      throw;
    }
  }
  Buffer(Buffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void* get() const noexcept { return ptr_; }
  std::size_t bytes() const noexcept { return bytes_; }

 private:
  void reset() noexcept {
    if (ptr_) {
      Allocator<D>::deallocate(ptr_, bytes_);
      ledger<D>().release(bytes_);
      ptr_ = nullptr;
    }
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace tessera

// The CUDA runtime and the Cuda<N> allocator. Included last: cuda.hpp
// includes this header first, so either include order sees the ledger.
#if defined(TESSERA_WITH_CUDA)
#include "cuda.hpp"
#endif
