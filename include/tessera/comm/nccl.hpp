// tessera/comm/nccl.hpp — NCCL as a tessera communicator for groups of CUDA
// devices, and the functions that pick a communicator for a group:
//
//   comm::cpu_group<Cpu<0>, Cpu<1>>()    in-process (to<> copies and ops::add)
//   comm::cuda_group<Cuda<0>, Cuda<1>>() NCCL over the GPUs of this process
//                                        (ncclCommInitAll), or in-process when
//                                        two logical devices share one GPU
//   comm::mpi_group<Cuda<0>, Cuda<1>>(mpi)  one rank per process, NCCL
//                                        bootstrapped over MPI (comm/mpi.hpp)
//
// NcclBackend runs ncclAllReduce (in place, sum) on each logical device's
// tessera stream (cuda::context(N).launch.stream), so it is ordered after
// the ops that produced the part, and then waits on the host, polling the
// streams with a deadline (TESSERA_COMM_TIMEOUT_S, 300 s by default): a
// collective that misses it aborts the communicator (ncclCommAbort) and
// throws CommError naming the rank and the operation; the backend refuses
// further collectives (end the job: MpiSession::abort()).
//
// NCCL picks its own reduction order (rings, trees), so its sums agree with
// the in-process and MPI groups within bf16 tolerance, not bit for bit.
//
// The NCCL parts exist only in builds with the CUDA backend and NCCL
// (TESSERA_WITH_CUDA and TESSERA_HAS_NCCL, set by tessera::cuda when CMake
// finds libnccl); cuda_group then falls back to the in-process group and
// mpi_group<Cuda...> throws DeviceError.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../core/device.hpp"
#include "../core/error.hpp"
#include "group.hpp"
#include "mpi.hpp"

#if defined(TESSERA_WITH_CUDA)
#include "../core/cuda.hpp"
#endif
#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
#include <nccl.h>
#endif

namespace tessera::comm {

#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)

namespace detail {

inline ncclDataType_t nccl_type(ElementType type) {
  switch (type) {
    case ElementType::f32: return ncclFloat32;
    case ElementType::bf16: return ncclBfloat16;
    case ElementType::f16: return ncclFloat16;
  }
  return ncclFloat32;
}

// Throws CommError "<who>: <op> failed: <NCCL message> (<last error>)";
// ncclInProgress (a nonblocking communicator still working) is not an error.
inline void nccl_check(ncclResult_t status, std::string_view who, std::string_view op) {
  if (status == ncclSuccess || status == ncclInProgress) return;
  const char* last = ncclGetLastError(nullptr);
  throw CommError(concat(who, ": ", op, " failed: ", ncclGetErrorString(status),
                         last != nullptr && *last != '\0' ? concat(" (", last, ")") : std::string()));
}

}  // namespace detail

class NcclBackend final : public Backend {
 public:
  // One process, every rank: rank r on logical CUDA device logical[r]; the
  // physical GPUs must be distinct (NCCL refuses two ranks on one GPU).
  static std::unique_ptr<NcclBackend> in_process(const std::vector<int>& logical,
                                                 std::optional<double> timeout_s = std::nullopt) {
    std::unique_ptr<NcclBackend> backend(new NcclBackend());
    backend->size_ = logical.size();
    backend->timeout_s_ = detail::collective_timeout_s(timeout_s);
    std::vector<int> physical;
    for (std::size_t r = 0; r < logical.size(); ++r) {
      cuda::DeviceContext& ctx = cuda::context(logical[r]);
      for (std::size_t q = 0; q < r; ++q) {
        if (physical[q] == ctx.physical) {
          throw DeviceError(detail::concat("nccl: ncclCommInitAll: Cuda<", logical[q], "> and Cuda<", logical[r],
                                           "> share physical GPU ", ctx.physical,
                                           "; NCCL refuses two ranks on one GPU (use comm::cuda_group, which "
                                           "falls back to the in-process group)"));
        }
      }
      physical.push_back(ctx.physical);
      backend->local_.push_back(Local{static_cast<int>(r), logical[r], ctx.physical, ctx.launch.stream, nullptr});
    }
    std::string gpus;
    for (int p : physical) gpus += detail::concat(gpus.empty() ? "" : ",", p);
    backend->who_ = detail::concat("nccl ranks 0..", logical.size() - 1, " (one process)");
    backend->describe_ = detail::concat("nccl (ncclCommInitAll over GPUs ", gpus, ")");
    std::vector<ncclComm_t> comms(logical.size(), nullptr);
    {
      const cuda::DeviceGuard guard(physical.front());  // ncclCommInitAll changes the current device
      detail::nccl_check(ncclCommInitAll(comms.data(), static_cast<int>(comms.size()), physical.data()),
                         backend->who_, detail::concat("ncclCommInitAll over GPUs ", gpus));
    }
    for (std::size_t r = 0; r < comms.size(); ++r) backend->local_[r].comm = comms[r];
    return backend;
  }

  // One rank per process: this process is rank session.rank() of
  // session.size(), on logical device logical[rank]. Rank 0's
  // ncclGetUniqueId is broadcast over MPI; the communicator is created
  // nonblocking so a rank that never joins is a timeout, not a hang.
  static std::unique_ptr<NcclBackend> over_mpi(const MpiSession& session, const std::vector<int>& logical,
                                               std::optional<double> timeout_s = std::nullopt) {
    const int rank = session.rank();
    const std::string who = detail::concat("nccl rank ", rank);
    if (logical.size() != static_cast<std::size_t>(session.size())) {
      throw DeviceError(detail::concat(who, ": the group has ", logical.size(), " devices but MPI_COMM_WORLD has ",
                                       session.size(), " processes"));
    }
    std::unique_ptr<NcclBackend> backend(new NcclBackend());
    backend->size_ = logical.size();
    backend->timeout_s_ = detail::collective_timeout_s(timeout_s);
    backend->nonblocking_ = true;
    backend->who_ = who;
    const int mine = logical[static_cast<std::size_t>(rank)];
    cuda::DeviceContext& ctx = cuda::context(mine);
    backend->local_.push_back(Local{rank, mine, ctx.physical, ctx.launch.stream, nullptr});
    backend->describe_ = detail::concat("nccl (rank ", rank, " of ", session.size(), " on Cuda<", mine,
                                        "> = GPU ", ctx.physical, ", bootstrapped over MPI)");

    ncclUniqueId id{};
    if (rank == 0) detail::nccl_check(ncclGetUniqueId(&id), who, "ncclGetUniqueId");
    mpi_broadcast_bytes(session, std::as_writable_bytes(std::span<ncclUniqueId, 1>(&id, 1)), 0,
                        "the NCCL unique id", backend->timeout_s_);

    const auto deadline = detail::deadline_after(backend->timeout_s_);
    const cuda::DeviceGuard guard(ctx.physical);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t comm = nullptr;
    const std::string op = detail::concat("ncclCommInitRankConfig (rank ", rank, " of ", session.size(), ")");
    detail::nccl_check(ncclCommInitRankConfig(&comm, session.size(), id, rank, &config), who, op);
    backend->local_.front().comm = comm;
    backend->wait_ready(deadline, op);  // on timeout the communicator is aborted
    return backend;
  }

  NcclBackend(const NcclBackend&) = delete;
  NcclBackend& operator=(const NcclBackend&) = delete;

  ~NcclBackend() override {
    for (Local& l : local_) {
      if (l.comm == nullptr) continue;
      try {
        const cuda::DeviceGuard guard(l.physical);
        if (nonblocking_) {
          // A nonblocking communicator finalises asynchronously; one that
          // does not within the timeout is aborted instead.
          bool finished = ncclCommFinalize(l.comm) == ncclSuccess;
          if (!finished) {
            finished = detail::poll_until(detail::deadline_after(timeout_s_), [&] {
              ncclResult_t state = ncclSuccess;
              return ncclCommGetAsyncError(l.comm, &state) != ncclSuccess || state != ncclInProgress;
            });
          }
          if (!finished) {
            (void)ncclCommAbort(l.comm);
            l.comm = nullptr;
            continue;
          }
        }
        (void)ncclCommDestroy(l.comm);
      } catch (...) {
        // A destructor reports nothing; the process is usually ending.
      }
      l.comm = nullptr;
    }
  }

  std::string describe() const override { return describe_; }
  bool is_local(std::size_t rank) const override {
    for (const Local& l : local_) {
      if (static_cast<std::size_t>(l.rank) == rank) return true;
    }
    return false;
  }
  double timeout_s() const noexcept { return timeout_s_; }

  void all_reduce_sum(std::span<void* const> buffers, std::size_t count, ElementType type) override {
    using detail::concat;
    const std::string op = concat("all_reduce of ", count, " ", detail::element_name(type), " elements");
    if (!broken_.empty()) {
      throw CommError(concat(who_, ": ", op, " refused: an earlier collective on this communicator failed (",
                             broken_, "); end the job (MPI_Abort under mpirun)"));
    }
    if (buffers.size() != size_) {
      throw CommError(concat(who_, ": ", op, ": got ", buffers.size(), " buffers for a communicator of ", size_,
                             " ranks"));
    }
    for (const Local& l : local_) {
      if (buffers[static_cast<std::size_t>(l.rank)] == nullptr && count > 0) {
        throw CommError(concat(who_, ": ", op, ": no part for local rank ", l.rank, " (Cuda<", l.logical, ">)"));
      }
    }
    if (count == 0) return;
    const auto deadline = detail::deadline_after(timeout_s_);
    try {
      detail::nccl_check(ncclGroupStart(), who_, concat("ncclGroupStart (", op, ")"));
      ncclResult_t first_error = ncclSuccess;
      std::string failed_call;
      for (const Local& l : local_) {
        const cuda::DeviceGuard guard(l.physical);
        void* buffer = buffers[static_cast<std::size_t>(l.rank)];
        const ncclResult_t status =
            ncclAllReduce(buffer, buffer, count, detail::nccl_type(type), ncclSum, l.comm, l.stream);
        if (status != ncclSuccess && status != ncclInProgress && first_error == ncclSuccess) {
          first_error = status;
          failed_call = concat("ncclAllReduce on rank ", l.rank, " (Cuda<", l.logical, ">, ", op, ")");
        }
      }
      const ncclResult_t ended = ncclGroupEnd();
      detail::nccl_check(first_error, who_, failed_call);
      detail::nccl_check(ended, who_, concat("ncclGroupEnd (", op, ")"));
      if (nonblocking_) wait_ready(deadline, op);
      wait_streams(deadline, op);
    } catch (const CommError& e) {
      std::string_view why = e.what();
      if (why.starts_with("tessera: ")) why.remove_prefix(9);
      if (broken_.empty()) broken_ = std::string(why);
      throw;
    }
  }

 private:
  struct Local {
    int rank = 0;
    int logical = 0;
    int physical = 0;
    cuda::StreamHandle stream = nullptr;
    ncclComm_t comm = nullptr;
  };

  NcclBackend() = default;

  // Aborts every local communicator (after a timeout or an asynchronous
  // error) and throws CommError(`message`).
  [[noreturn]] void abort_and_throw(const std::string& message) {
    for (Local& l : local_) {
      if (l.comm == nullptr) continue;
      try {
        const cuda::DeviceGuard guard(l.physical);
        (void)ncclCommAbort(l.comm);
      } catch (...) {
      }
      l.comm = nullptr;
    }
    broken_ = message;
    throw CommError(message);
  }

  std::string timeout_message(std::string_view op, const Local& l) const {
    return detail::concat(who_, ": ", op, " did not complete within ", timeout_s_, " s on rank ", l.rank, " (Cuda<",
                          l.logical, ">, GPU ", l.physical,
                          "); is another rank stuck or dead? (the communicator was aborted)");
  }

  // Nonblocking communicators: waits until NCCL has finished the last call
  // (initialisation, or enqueueing a group), checking for errors.
  void wait_ready(std::chrono::steady_clock::time_point deadline, std::string_view op) {
    for (Local& l : local_) {
      ncclResult_t state = ncclInProgress;
      const bool ready = detail::poll_until(deadline, [&] {
        const ncclResult_t queried = ncclCommGetAsyncError(l.comm, &state);
        if (queried != ncclSuccess) state = queried;
        return state != ncclInProgress;
      });
      if (!ready) abort_and_throw(timeout_message(op, l));
      if (state != ncclSuccess) {
        abort_and_throw(detail::concat(who_, ": ", op, " failed on rank ", l.rank, " (Cuda<", l.logical,
                                       ">): ", ncclGetErrorString(state)));
      }
    }
  }

  // Waits for the all-reduce kernels on every local stream, watching for
  // asynchronous NCCL errors (a peer that died, a network failure).
  void wait_streams(std::chrono::steady_clock::time_point deadline, std::string_view op) {
    for (Local& l : local_) {
      const cuda::DeviceGuard guard(l.physical);
      cudaError_t status = cudaSuccess;
      ncclResult_t async = ncclSuccess;
      const bool done = detail::poll_until(deadline, [&] {
        status = cudaStreamQuery(l.stream);
        if (status != cudaErrorNotReady) return true;
        if (ncclCommGetAsyncError(l.comm, &async) != ncclSuccess) async = ncclInternalError;
        return async != ncclSuccess && async != ncclInProgress;
      });
      if (!done) abort_and_throw(timeout_message(op, l));
      if (async != ncclSuccess && async != ncclInProgress) {
        abort_and_throw(detail::concat(who_, ": ", op, " failed on rank ", l.rank, " (Cuda<", l.logical,
                                       ">): ", ncclGetErrorString(async)));
      }
      if (status != cudaSuccess) {
        (void)cudaGetLastError();
        abort_and_throw(detail::concat(who_, ": ", op, " failed on rank ", l.rank, " (Cuda<", l.logical, ">, GPU ",
                                       l.physical, "): ", cudaGetErrorName(status), " (",
                                       cudaGetErrorString(status), ")"));
      }
    }
  }

  std::vector<Local> local_;
  std::size_t size_ = 0;
  bool nonblocking_ = false;
  double timeout_s_ = detail::kDefaultTimeoutSeconds;
  std::string who_;       // "nccl rank 1", "nccl ranks 0..1 (one process)"
  std::string describe_;  // for plans
  std::string broken_;    // why collectives are refused
};

namespace detail {
template <Device... Ds>
std::unique_ptr<Backend> make_nccl_backend_over_mpi(const MpiSession& session, std::optional<double> timeout_s) {
  return NcclBackend::over_mpi(session, std::vector<int>{Ds::index...}, timeout_s);
}
}  // namespace detail

#endif  // TESSERA_WITH_CUDA && TESSERA_HAS_NCCL

// The in-process group over CPU slots (the only CPU communicator in one process).
template <Device... Ds>
Group<Ds...> cpu_group() {
  static_assert(detail::all_cpu<Ds...>, "tessera: comm::cpu_group takes CPU devices (Cpu<N>)");
  return Group<Ds...>();
}

// The communicator for a group of logical CUDA devices in this process:
// NCCL over their GPUs, or the in-process group (peer copies and the
// reduction kernel on the first device) when two of them share one physical
// GPU, or when the build has no NCCL. describe() says which and why.
template <Device... Ds>
Group<Ds...> cuda_group(std::optional<double> timeout_s = std::nullopt) {
  static_assert(detail::all_cuda<Ds...>, "tessera: comm::cuda_group takes CUDA devices (Cuda<N>)");
#if defined(TESSERA_WITH_CUDA)
  using D0 = typename Group<Ds...>::template device_at<0>;
  const std::array<int, sizeof...(Ds)> logical{Ds::index...};
  std::array<int, sizeof...(Ds)> physical{};
  for (std::size_t i = 0; i < logical.size(); ++i) physical[i] = cuda::physical_device(logical[i]);
  for (std::size_t j = 0; j < logical.size(); ++j) {
    for (std::size_t i = 0; i < j; ++i) {
      if (physical[i] == physical[j]) {
        (void)timeout_s;
        return Group<Ds...>(detail::concat("peer copies + reduction kernel on ", device_name<D0>(), " (Cuda<",
                                           logical[i], "> and Cuda<", logical[j], "> share physical GPU ",
                                           physical[i], "; NCCL refuses two ranks on one GPU)"));
      }
    }
  }
#if defined(TESSERA_HAS_NCCL)
  return Group<Ds...>(NcclBackend::in_process(std::vector<int>(logical.begin(), logical.end()), timeout_s));
#else
  (void)timeout_s;
  return Group<Ds...>(detail::concat("peer copies + reduction kernel on ", device_name<D0>(),
                                     " (this build has no NCCL: install it and reconfigure for NCCL all-reduce)"));
#endif
#else
  (void)timeout_s;
  throw DeviceError(detail::concat("comm::cuda_group<", detail::device_list<Ds...>(),
                                   ">: this build has no CUDA backend (configure with TESSERA_CUDA=ON)"));
#endif
}

}  // namespace tessera::comm
