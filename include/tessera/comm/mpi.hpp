// tessera/comm/mpi.hpp — MPI as a tessera communicator: one process per
// rank under `mpirun -np N`, each process holding only its own rank's part
// of a Distributed value (DESIGN.md § Placement).
//
//   comm::MpiSession mpi(&argc, &argv);              // MPI_Init_thread .. MPI_Finalize
//   auto group = comm::mpi_group<Cpu<0>, Cpu<1>>(mpi);  // rank r holds Cpu<r>'s part
//   auto y = group.all_reduce(std::move(partial));   // bits equal to the in-process group
//
// On CPU devices the reduction is an MPI_Iallgather of every rank's part
// followed by a local sum in rank order, each addition rounded to the
// element type exactly as ops::add does on the CPU, so an MPI run gives the
// same bits as the in-process comm::Group over the same parts. On CUDA
// devices mpi_group returns an NCCL communicator bootstrapped over MPI
// (comm/nccl.hpp).
//
// Timeouts: every wait polls with a deadline (300 s by default; the
// environment variable TESSERA_COMM_TIMEOUT_S or a constructor argument
// overrides it). A collective that misses it throws CommError naming the
// rank and the operation. After a timeout the ranks' collectives no longer
// match (one rank is stuck, dead, or somewhere else in the program): the only
// safe action is to end the job with MpiSession::abort() (MPI_Abort). The
// backend refuses further collectives, and keeps the buffers of the timed-out
// operation alive (MPI may still write them); ~MpiSession waits briefly for
// such operations and calls MPI_Abort instead of an MPI_Finalize that could
// hang if they never complete.
//
// Built with MPI only when CMake found it (TESSERA_HAS_MPI, set on the
// tessera target); otherwise the same API throws
// DeviceError "this build has no MPI (...)".
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../ops/common.hpp"
#include "group.hpp"

#if defined(TESSERA_HAS_MPI)
// The C API only: the deprecated C++ bindings are not used and do not build
// warning-free.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif

namespace tessera::comm {

class MpiSession;

namespace detail {

using tessera::detail::concat;

inline constexpr double kDefaultTimeoutSeconds = 300.0;

inline const char* no_mpi_message() {
  return "this build has no MPI (install libopenmpi-dev and reconfigure)";
}

inline std::size_t element_bytes(ElementType type) {
  return type == ElementType::f32 ? sizeof(float) : sizeof(std::uint16_t);
}

inline const char* element_name(ElementType type) {
  switch (type) {
    case ElementType::f32: return "float";
    case ElementType::bf16: return "bf16";
    case ElementType::f16: return "f16";
  }
  return "?";
}

// The collective timeout in seconds: `given` if set, else
// TESSERA_COMM_TIMEOUT_S, else 300. Not positive or not a number: ValueError.
inline double collective_timeout_s(std::optional<double> given) {
  if (given) {
    if (!(*given > 0.0)) throw ValueError(concat("comm: a collective timeout must be > 0 seconds (got ", *given, ")"));
    return *given;
  }
  const char* env = std::getenv("TESSERA_COMM_TIMEOUT_S");
  if (env == nullptr || *env == '\0') return kDefaultTimeoutSeconds;
  char* end = nullptr;
  const double value = std::strtod(env, &end);
  if (end == env || *end != '\0' || !(value > 0.0)) {
    throw ValueError(concat("TESSERA_COMM_TIMEOUT_S='", env, "' is not a positive number of seconds"));
  }
  return value;
}

inline std::chrono::steady_clock::time_point deadline_after(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

// Polls `done()` until it returns true or `deadline` passes (then false):
// spins first (collectives between layers are short), then sleeps a little
// between polls so a long wait does not burn a core.
template <class Done>
bool poll_until(std::chrono::steady_clock::time_point deadline, Done&& done) {
  for (std::uint64_t polls = 0;; ++polls) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    if (polls > 4096) std::this_thread::sleep_for(std::chrono::microseconds(polls > 65536 ? 500 : 20));
  }
}

// out = parts[0] + parts[1] + ... + parts[ranks-1], left to right, each
// addition computed in float and rounded to T, as ops::add does on the CPU
// (so the result has the bits of the in-process group's chain of ops::add).
// `parts` holds `ranks` consecutive blocks of `count` elements.
template <class T>
void sum_in_rank_order(T* out, const T* parts, std::size_t ranks, std::size_t count) {
  const auto n = static_cast<std::int64_t>(count);
  if (ranks == 0) return;
  std::memmove(out, parts, count * sizeof(T));
  for (std::size_t r = 1; r < ranks; ++r) {
    const T* part = parts + r * count;
    TESSERA_OMP_PARALLEL_FOR_IF(n >= ops::detail::kParallelMinElements)
    for (std::int64_t i = 0; i < n; ++i) {
      out[i] = convert<T>(convert<float>(out[i]) + convert<float>(part[i]));
    }
  }
}

inline void sum_in_rank_order(void* out, const std::byte* parts, std::size_t ranks, std::size_t count,
                              ElementType type) {
  switch (type) {
    case ElementType::f32:
      sum_in_rank_order(static_cast<float*>(out), reinterpret_cast<const float*>(parts), ranks, count);
      return;
    case ElementType::bf16:
      sum_in_rank_order(static_cast<bf16*>(out), reinterpret_cast<const bf16*>(parts), ranks, count);
      return;
    case ElementType::f16:
      sum_in_rank_order(static_cast<f16*>(out), reinterpret_cast<const f16*>(parts), ranks, count);
      return;
  }
}

template <Device... Ds>
constexpr bool all_cpu = (is_cpu_v<Ds> && ...);
template <Device... Ds>
constexpr bool all_cuda = (is_cuda_v<Ds> && ...);

template <Device... Ds>
std::string device_list() {
  std::string out;
  ((out += (out.empty() ? "" : ", ") + device_name<Ds>()), ...);
  return out;
}

// Defined in comm/nccl.hpp (included at the end of this header when the
// build has NCCL): an NCCL backend for this process's rank, bootstrapped
// over MPI.
template <Device... Ds>
std::unique_ptr<Backend> make_nccl_backend_over_mpi(const MpiSession& session, std::optional<double> timeout_s);

#if defined(TESSERA_HAS_MPI)

// Throws CommError "mpi rank R: <op> failed: <MPI_Error_string>".
inline void mpi_check(int code, int rank, std::string_view op) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  throw CommError(concat(rank >= 0 ? concat("mpi rank ", rank) : std::string("mpi"), ": ", op, " failed: ",
                         length > 0 ? std::string(text, static_cast<std::size_t>(length))
                                    : concat("MPI error code ", code)));
}

// A nonblocking MPI operation and the buffers it reads and writes. If its
// wait times out, MPI may still use the buffers, so the operation is handed
// to the abandoned list below instead of being freed. `then`, if set, runs
// when the request completes and may post the next step of the operation
// (into `request`, with the `next_*` buffers): a timed-out all_reduce keeps
// taking part in the background, so a rank that was merely late can still
// finish its call.
struct PendingOp {
  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<std::byte> send;
  std::vector<std::byte> recv;
  std::vector<std::byte> next_send;
  std::vector<std::byte> next_recv;
  std::function<void(PendingOp&)> then;
};

struct AbandonedOps {
  std::mutex mutex;
  std::vector<std::unique_ptr<PendingOp>> ops;
  static AbandonedOps& get() {
    static auto* list = new AbandonedOps();  // never destroyed: MPI may write the buffers until exit
    return *list;
  }
};

inline void abandon(std::unique_ptr<PendingOp> op) {
  auto& list = AbandonedOps::get();
  std::lock_guard lock(list.mutex);
  list.ops.push_back(std::move(op));
}

// Whether `op` is over: its request (and any steps `then` posts) completed
// or failed. Progresses MPI.
inline bool advance(PendingOp& op) {
  while (true) {
    int done = 0;
    if (MPI_Test(&op.request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return true;  // failed: over
    if (done == 0) return false;
    if (!op.then) return true;
    auto next = std::move(op.then);
    op.then = nullptr;
    next(op);
    if (op.request == MPI_REQUEST_NULL) return true;
  }
}

// Gives abandoned operations until `grace` to complete and frees those that
// did. Returns how many are still pending. MPI must be initialised.
inline std::size_t drain_abandoned(std::chrono::duration<double> grace) {
  auto& list = AbandonedOps::get();
  std::lock_guard lock(list.mutex);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(grace);
  poll_until(deadline, [&] {
    std::erase_if(list.ops, [](const std::unique_ptr<PendingOp>& op) { return advance(*op); });
    return list.ops.empty();
  });
  return list.ops.size();
}

inline bool mpi_usable() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

// "" when every rank's {count, type} header in `headers` equals ours, else
// which ranks differ and how.
inline std::string header_mismatch(const std::vector<std::byte>& headers, int size, int rank, std::size_t count,
                                   ElementType type) {
  for (int r = 0; r < size; ++r) {
    std::uint64_t theirs[2];
    std::memcpy(theirs, headers.data() + sizeof theirs * static_cast<std::size_t>(r), sizeof theirs);
    if (theirs[0] != count || theirs[1] != static_cast<std::uint64_t>(type)) {
      return concat("rank ", rank, " has ", count, " ", element_name(type), " elements, rank ", r, " has ", theirs[0],
                    " ", theirs[1] <= 2 ? element_name(static_cast<ElementType>(theirs[1])) : "?", " elements");
    }
  }
  return {};
}

// Waits for `op` until `deadline`. On timeout or error the operation is
// abandoned (see PendingOp) and a CommError is thrown: `timeout_message` or
// the MPI error naming `rank` and `what`.
// `then_if_abandoned` becomes the abandoned operation's next step.
inline void wait_or_abandon(std::unique_ptr<PendingOp>& op, std::chrono::steady_clock::time_point deadline, int rank,
                            std::string_view what, const std::string& timeout_message,
                            std::function<void(PendingOp&)> then_if_abandoned = {}) {
  int code = MPI_SUCCESS;
  const bool done = poll_until(deadline, [&] {
    int flag = 0;
    code = MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE);
    return code != MPI_SUCCESS || flag != 0;
  });
  if (done && code == MPI_SUCCESS) return;
  if (!done) op->then = std::move(then_if_abandoned);
  abandon(std::move(op));
  if (!done) throw CommError(timeout_message);
  mpi_check(code, rank, what);
}

// Broadcasts `data` from `root` over `comm` with a deadline.
inline void broadcast_bytes(MPI_Comm comm, int rank, std::span<std::byte> data, int root, std::string_view what,
                            double timeout_s) {
  if (data.size() > static_cast<std::size_t>(INT_MAX)) {
    throw CommError(concat("mpi rank ", rank, ": broadcast of ", what, ": ", data.size(),
                           " bytes is more than one MPI call moves (", INT_MAX, ")"));
  }
  auto op = std::make_unique<PendingOp>();
  op->send.assign(data.begin(), data.end());
  const std::string name = concat("MPI_Ibcast of ", what, " from rank ", root);
  mpi_check(MPI_Ibcast(op->send.data(), static_cast<int>(data.size()), MPI_BYTE, root, comm, &op->request), rank,
            name);
  wait_or_abandon(op, deadline_after(timeout_s), rank, name,
                  concat("mpi rank ", rank, ": broadcast of ", what, " from rank ", root, " did not complete within ",
                         timeout_s, " s; is another rank stuck or dead?"));
  std::copy(op->send.begin(), op->send.end(), data.begin());
}

#endif  // TESSERA_HAS_MPI

}  // namespace detail

// MPI for the lifetime of this object: MPI_Init_thread (MPI_THREAD_FUNNELED:
// tessera calls MPI from the thread that runs the model; OpenMP workers
// never do) and MPI_Finalize in the destructor. If MPI is already
// initialised (by the application or another library) the session uses it
// and leaves finalisation to its owner. MPI_COMM_WORLD's errors are returned
// (MPI_ERRORS_RETURN), so a failure is a CommError, not an abort.
class MpiSession {
 public:
  MpiSession() : MpiSession(nullptr, nullptr) {}
  MpiSession(int* argc, char*** argv) {
#if defined(TESSERA_HAS_MPI)
    int initialized = 0;
    int finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (finalized != 0) throw CommError("mpi: MPI_Init_thread: MPI has already been finalized in this process");
    int provided = 0;
    if (initialized == 0) {
      detail::mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), -1, "MPI_Init_thread");
      owns_ = true;
    } else {
      detail::mpi_check(MPI_Query_thread(&provided), -1, "MPI_Query_thread");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    detail::mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), -1, "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &size_), rank_, "MPI_Comm_size");
    if (provided < MPI_THREAD_FUNNELED) {
      const std::string message = detail::concat("mpi rank ", rank_, ": MPI_Init_thread: the MPI library provides thread level ",
                                                 provided, ", tessera needs MPI_THREAD_FUNNELED or better");
      if (owns_) MPI_Finalize();
      throw CommError(message);
    }
#else
    (void)argc;
    (void)argv;
    throw DeviceError(detail::no_mpi_message());
#endif
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  ~MpiSession() {
#if defined(TESSERA_HAS_MPI)
    if (!owns_ || !detail::mpi_usable()) return;
    // Collectives that timed out must complete before MPI_Finalize, or it
    // may wait for them forever: give them a moment, then abort the job.
    if (detail::drain_abandoned(std::chrono::seconds(5)) != 0) {
      std::fprintf(stderr,
                   "tessera: mpi rank %d: a collective that timed out never completed; calling MPI_Abort instead "
                   "of MPI_Finalize\n",
                   rank_);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
#endif
  }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  // Lets collectives that timed out on this rank go on in the background for
  // up to `grace_s` seconds, so ranks that were merely late can finish
  // theirs; returns how many are still pending (0: all done). The
  // destructor does this for 5 s before MPI_Finalize.
  std::size_t drain_timed_out(double grace_s) const {
#if defined(TESSERA_HAS_MPI)
    if (!detail::mpi_usable()) return 0;
    return detail::drain_abandoned(std::chrono::duration<double>(grace_s));
#else
    (void)grace_s;
    return 0;
#endif
  }

  // Whether this session initialised MPI (and so finalises it).
  bool owns_mpi() const noexcept { return owns_; }
  std::string describe() const { return detail::concat("mpi rank ", rank_, " of ", size_); }

  // Ends every process of the job (MPI_Abort): what to do after a CommError,
  // when the ranks' collectives no longer match.
  [[noreturn]] void abort(int code = 1) const {
#if defined(TESSERA_HAS_MPI)
    MPI_Abort(MPI_COMM_WORLD, code);
#endif
    std::_Exit(code);
  }

#if defined(TESSERA_HAS_MPI)
  MPI_Comm world() const noexcept { return MPI_COMM_WORLD; }
#endif

 private:
  int rank_ = 0;
  int size_ = 1;
  bool owns_ = false;
};

// Broadcasts `data` from rank `root` to every rank of the session (e.g. an
// NCCL unique id), with the collective timeout; `what` names the data in
// errors.
inline void mpi_broadcast_bytes(const MpiSession& session, std::span<std::byte> data, int root, std::string_view what,
                                std::optional<double> timeout_s = std::nullopt) {
#if defined(TESSERA_HAS_MPI)
  if (root < 0 || root >= session.size()) {
    throw CommError(detail::concat("mpi rank ", session.rank(), ": broadcast of ", what, ": root rank ", root,
                                   " is not in 0..", session.size() - 1));
  }
  detail::broadcast_bytes(session.world(), session.rank(), data, root, what, detail::collective_timeout_s(timeout_s));
#else
  (void)session, (void)data, (void)root, (void)what, (void)timeout_s;
  throw DeviceError(detail::no_mpi_message());
#endif
}

// The MPI backend for host (CPU) parts: this process is one rank of the
// communicator (a private duplicate of MPI_COMM_WORLD, or of a given one, so
// its collectives never match the application's own).
class MpiBackend final : public Backend {
 public:
  explicit MpiBackend(const MpiSession& session, std::optional<double> timeout_s = std::nullopt)
#if defined(TESSERA_HAS_MPI)
      : MpiBackend(session.world(), timeout_s) {
  }
#else
  {
    (void)session;
    (void)timeout_s;
    throw DeviceError(detail::no_mpi_message());
  }
#endif

#if defined(TESSERA_HAS_MPI)
  // Over `comm` (duplicated here: a collective call on every rank of comm).
  explicit MpiBackend(MPI_Comm comm, std::optional<double> timeout_s = std::nullopt)
      : timeout_s_(detail::collective_timeout_s(timeout_s)) {
    int rank = -1;
    detail::mpi_check(MPI_Comm_rank(comm, &rank), -1, "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_dup(comm, &comm_), rank, "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    detail::mpi_check(MPI_Comm_rank(comm_, &rank_), rank, "MPI_Comm_rank");
    detail::mpi_check(MPI_Comm_size(comm_, &size_), rank_, "MPI_Comm_size");
  }
#endif

  MpiBackend(const MpiBackend&) = delete;
  MpiBackend& operator=(const MpiBackend&) = delete;

  ~MpiBackend() override {
#if defined(TESSERA_HAS_MPI)
    // After a failure an abandoned operation may still post on comm_: it is
    // then left for MPI_Finalize to release.
    if (comm_ == MPI_COMM_NULL || !broken_.empty() || !detail::mpi_usable()) return;
    MPI_Comm_free(&comm_);
#endif
  }

  std::string describe() const override {
    return detail::concat("mpi (rank ", rank_, " of ", size_, "; MPI_Iallgather, then a sum in rank order)");
  }
  bool is_local(std::size_t rank) const override { return rank == static_cast<std::size_t>(rank_); }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  double timeout_s() const noexcept { return timeout_s_; }

  void all_reduce_sum(std::span<void* const> buffers, std::size_t count, ElementType type) override {
#if defined(TESSERA_HAS_MPI)
    using detail::concat;
    const char* tname = detail::element_name(type);
    const std::string op = concat("all_reduce of ", count, " ", tname, " elements");
    if (!broken_.empty()) {
      throw CommError(concat("mpi rank ", rank_, ": ", op, " refused: an earlier collective on this communicator ",
                             "failed (", broken_, "); the ranks' collectives no longer match, end the job with ",
                             "MPI_Abort"));
    }
    if (buffers.size() != static_cast<std::size_t>(size_)) {
      throw CommError(concat("mpi rank ", rank_, ": ", op, ": got ", buffers.size(), " buffers for a communicator of ",
                             size_, " ranks"));
    }
    void* mine = buffers[static_cast<std::size_t>(rank_)];
    if (mine == nullptr && count > 0) {
      throw CommError(concat("mpi rank ", rank_, ": ", op, ": this process holds no part for its own rank ", rank_));
    }
    if (count > static_cast<std::size_t>(INT_MAX)) {
      throw CommError(concat("mpi rank ", rank_, ": ", op, ": more than ", INT_MAX,
                             " elements per rank is more than one MPI call moves"));
    }
    const auto deadline = detail::deadline_after(timeout_s_);
    const std::string timeout_message = concat("mpi rank ", rank_, ": ", op, " did not complete within ", timeout_s_,
                                               " s; is another rank stuck or dead?");
    // After a failure the ranks' collectives no longer match: refuse more,
    // and keep the communicator (an abandoned operation may still use it).
    const auto failed = [&](std::string_view why) {
      if (why.starts_with("tessera: ")) why.remove_prefix(9);
      broken_ = std::string(why);
    };

    // One operation in two steps; our part is copied first so the caller's
    // tensor may be freed even if the operation is abandoned.
    const std::size_t bytes = count * detail::element_bytes(type);
    const MPI_Datatype mpi_type = type == ElementType::f32 ? MPI_UINT32_T : MPI_UINT16_T;
    auto pending = std::make_unique<detail::PendingOp>();
    const std::uint64_t header[2] = {count, static_cast<std::uint64_t>(type)};
    pending->send.resize(sizeof header);
    std::memcpy(pending->send.data(), header, sizeof header);
    pending->recv.resize(sizeof header * static_cast<std::size_t>(size_));
    if (bytes > 0) {
      pending->next_send.assign(static_cast<const std::byte*>(mine), static_cast<const std::byte*>(mine) + bytes);
    }
    pending->next_recv.resize(bytes * static_cast<std::size_t>(size_));

    // 1. Agree on the element count and type: MPI_Iallgather with unequal
    //    counts is undefined behaviour, a mismatch here is a clear error.
    //    Should this step time out, the abandoned operation still posts step
    //    2 once every rank has joined, so a late rank completes its call.
    const MPI_Comm comm = comm_;
    const int size = size_;
    const int rank = rank_;
    auto post_data = [comm, size, rank, count, type, mpi_type](detail::PendingOp& o) {
      if (!detail::header_mismatch(o.recv, size, rank, count, type).empty()) return;
      (void)MPI_Iallgather(o.next_send.data(), static_cast<int>(count), mpi_type, o.next_recv.data(),
                           static_cast<int>(count), mpi_type, comm, &o.request);
    };
    try {
      const std::string name = concat("MPI_Iallgather of the part sizes (", op, ")");
      detail::mpi_check(MPI_Iallgather(pending->send.data(), 2, MPI_UINT64_T, pending->recv.data(), 2, MPI_UINT64_T,
                                       comm_, &pending->request),
                        rank_, name);
      detail::wait_or_abandon(pending, deadline, rank_, name, timeout_message, post_data);
    } catch (const CommError& e) {
      failed(e.what());
      throw;
    }
    if (const std::string mismatch = detail::header_mismatch(pending->recv, size_, rank_, count, type);
        !mismatch.empty()) {
      // Every rank sees the same sizes and throws: the ranks stay matched.
      throw CommError(concat("mpi rank ", rank_, ": ", op, ": the ranks' parts differ: ", mismatch));
    }

    // 2. Every rank's part to every rank.
    try {
      const std::string name = concat("MPI_Iallgather (", op, ")");
      detail::mpi_check(MPI_Iallgather(pending->next_send.data(), static_cast<int>(count), mpi_type,
                                       pending->next_recv.data(), static_cast<int>(count), mpi_type, comm_,
                                       &pending->request),
                        rank_, name);
      detail::wait_or_abandon(pending, deadline, rank_, name, timeout_message);
    } catch (const CommError& e) {
      failed(e.what());
      throw;
    }

    // 3. The sum, in rank order, into our part.
    if (bytes > 0) {
      detail::sum_in_rank_order(mine, pending->next_recv.data(), static_cast<std::size_t>(size_), count, type);
    }
#else
    (void)buffers, (void)count, (void)type;
    throw DeviceError(detail::no_mpi_message());
#endif
  }

 private:
#if defined(TESSERA_HAS_MPI)
  MPI_Comm comm_ = MPI_COMM_NULL;
#endif
  int rank_ = 0;
  int size_ = 1;
  double timeout_s_ = detail::kDefaultTimeoutSeconds;
  std::string broken_;  // why collectives are refused, after a failure or timeout
};

// The group for this process under mpirun: rank r of MPI_COMM_WORLD holds
// device r's part. The world size must equal the group size. CPU devices:
// an MpiBackend. CUDA devices: NCCL, bootstrapped over MPI (comm/nccl.hpp;
// DeviceError when the build has no NCCL).
template <Device... Ds>
Group<Ds...> mpi_group(const MpiSession& session, std::optional<double> timeout_s = std::nullopt) {
  static_assert(detail::all_cpu<Ds...> || detail::all_cuda<Ds...>,
                "tessera: comm::mpi_group: a group's devices must be all CPU or all CUDA");
  if (session.size() != static_cast<int>(sizeof...(Ds))) {
    throw DeviceError(detail::concat("comm::mpi_group<", detail::device_list<Ds...>(), ">: the group has ",
                                     sizeof...(Ds), " devices but MPI_COMM_WORLD has ", session.size(),
                                     " processes (this is rank ", session.rank(), "); run with mpirun -np ",
                                     sizeof...(Ds)));
  }
  if constexpr (detail::all_cpu<Ds...>) {
    return Group<Ds...>(std::make_unique<MpiBackend>(session, timeout_s));
  } else {
#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
    return Group<Ds...>(detail::make_nccl_backend_over_mpi<Ds...>(session, timeout_s));
#else
    (void)timeout_s;
    throw DeviceError(detail::concat("comm::mpi_group<", detail::device_list<Ds...>(), ">: mpi rank ",
                                     session.rank(),
                                     ": CUDA groups under MPI need NCCL, and this build has no NCCL "
                                     "(install NCCL and reconfigure with the CUDA backend)"));
#endif
  }
}

}  // namespace tessera::comm

#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
#include "nccl.hpp"
#endif
