// The MPI communicator under `mpirun -np 2` (CTest: comm_mpi_np2, label mpi).
// Each rank holds only its own part; every rank can recompute every part
// from a seed, so it checks its result against the in-process group over the
// same parts, bit for bit. Also: mismatched part sizes, a group larger than
// the world, and a timeout (rank 1 late) from which both ranks finish
// cleanly. A failed check prints one line and ends the job (MPI_Abort), so
// no rank waits for a peer that has given up. Silent on success except one
// line from rank 0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include <tessera/comm/mpi.hpp>
#include <tessera/tessera.hpp>

namespace {

using namespace tessera;
using G2 = comm::Group<Cpu<0>, Cpu<1>>;

const comm::MpiSession* g_session = nullptr;

[[noreturn]] void fail(int line, const std::string& what) {
  std::fprintf(stderr, "test_comm_mpi: rank %d: line %d: %s\n", g_session->rank(), line, what.c_str());
  std::fflush(stderr);
  g_session->abort(1);
}

#define CHECK(cond, what)                                       \
  do {                                                          \
    if (!(cond)) fail(__LINE__, std::string(#cond ": ") + (what)); \
  } while (false)

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

template <class T>
Tensor<Host, T> random_part(std::uint32_t seed, std::int64_t n) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-12, 12);
  Tensor<Host, T> t(Shape{n});
  for (auto& x : t.span()) x = convert<T>(std::ldexp(mantissa(rng), exponent(rng)));
  return t;
}

// This rank's part (rank r: Cpu<r>) of a two-rank Partial value.
template <class T>
Distributed<Partial<Cpu<0>, Cpu<1>>, T> my_part(int rank, const Tensor<Host, T>& p0, const Tensor<Host, T>& p1) {
  Distributed<Partial<Cpu<0>, Cpu<1>>, T> partial;
  if (rank == 0) {
    partial.template set<0>(to<Cpu<0>>(p0));
  } else {
    partial.template set<1>(to<Cpu<1>>(p1));
  }
  return partial;
}

// Our part of `got` has the bits of the in-process group's sum of p0 + p1.
template <class T>
void expect_in_process_bits(int line, int rank, const Distributed<Replicated<Cpu<0>, Cpu<1>>, T>& got,
                            const Tensor<Host, T>& p0, const Tensor<Host, T>& p1) {
  Distributed<Partial<Cpu<0>, Cpu<1>>, T> both;
  both.template set<0>(to<Cpu<0>>(p0));
  both.template set<1>(to<Cpu<1>>(p1));
  const auto want = G2().all_reduce(std::move(both));
  const auto want_host = to<Host>(want.template part<0>());
  const auto got_host = rank == 0 ? to<Host>(got.template part<0>()) : to<Host>(got.template part<1>());
  if (got.template is_local<0>() != (rank == 0) || got.template is_local<1>() != (rank == 1)) {
    fail(line, "the result holds another rank's part");
  }
  if (got_host.numel() != want_host.numel() ||
      std::memcmp(got_host.raw(), want_host.raw(), want_host.bytes()) != 0) {
    fail(line, std::string("all_reduce of ") + std::to_string(p0.numel()) + " " + std::string(dtype_name<T>()) +
                   " elements differs from the in-process group");
  }
}

template <class T>
void all_reduce_matches_in_process(const comm::MpiSession& session, std::int64_t n, std::uint32_t seed) {
  const G2 group = comm::mpi_group<Cpu<0>, Cpu<1>>(session, 30.0);
  CHECK(group.is_local<0>() == (session.rank() == 0), group.describe());
  CHECK(contains(group.describe(), "mpi (rank"), group.describe());
  const auto p0 = random_part<T>(seed, n);
  const auto p1 = random_part<T>(seed + 1, n);
  const auto sum = group.all_reduce(my_part<T>(session.rank(), p0, p1));
  expect_in_process_bits(__LINE__, session.rank(), sum, p0, p1);
}

void mismatched_sizes_are_an_error_on_every_rank(const comm::MpiSession& session) {
  const int rank = session.rank();
  const G2 group = comm::mpi_group<Cpu<0>, Cpu<1>>(session, 30.0);
  const auto p0 = random_part<float>(7, 10);
  const auto p1 = random_part<float>(8, 12);
  try {
    (void)group.all_reduce(my_part<float>(rank, p0, p1));
    fail(__LINE__, "expected CommError for parts of 10 and 12 elements");
  } catch (const CommError& e) {
    const std::string what = e.what();
    CHECK(contains(what, "mpi rank " + std::to_string(rank) + ": all_reduce of"), what);
    CHECK(contains(what, "the ranks' parts differ"), what);
    CHECK(contains(what, "has 10 float elements") && contains(what, "has 12 float elements"), what);
  }
  // The ranks stay matched: the next collective works.
  const auto q0 = random_part<float>(9, 64);
  const auto q1 = random_part<float>(10, 64);
  expect_in_process_bits(__LINE__, rank, group.all_reduce(my_part<float>(rank, q0, q1)), q0, q1);
}

void group_larger_than_the_world_is_an_error(const comm::MpiSession& session) {
  try {
    (void)comm::mpi_group<Cpu<0>, Cpu<1>, Cpu<2>>(session);
    fail(__LINE__, "expected DeviceError for a 3-device group on 2 processes");
  } catch (const DeviceError& e) {
    const std::string what = e.what();
    CHECK(contains(what, "the group has 3 devices but MPI_COMM_WORLD has 2 processes"), what);
    CHECK(contains(what, "mpirun -np 3"), what);
  }
}

// Point-to-point signals between the two ranks (on MPI_COMM_WORLD, apart
// from the backend's private communicator), with a deadline.
void signal_with_deadline(bool send, int peer, int tag) {
  int value = 1;
  MPI_Request request = MPI_REQUEST_NULL;
  if (send) {
    MPI_Isend(&value, 1, MPI_INT, peer, tag, MPI_COMM_WORLD, &request);
  } else {
    MPI_Irecv(&value, 1, MPI_INT, peer, tag, MPI_COMM_WORLD, &request);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int done = 0;
  while (done == 0) {
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done == 0 && std::chrono::steady_clock::now() > deadline) fail(__LINE__, "a signal between ranks timed out");
  }
}

// Rank 0 calls all_reduce with a 1 s timeout while rank 1 is elsewhere:
// rank 0 gets a CommError naming itself and the operation, and its backend
// refuses further collectives. Rank 1 then calls late; rank 0's timed-out
// operation, still going on in the background, completes it, and rank 1
// gets the right sum. Both ranks then finish cleanly.
void timeout_names_the_rank_and_a_late_rank_still_finishes(const comm::MpiSession& session) {
  const int rank = session.rank();
  const G2 group = comm::mpi_group<Cpu<0>, Cpu<1>>(session, rank == 0 ? 1.0 : 60.0);
  const auto p0 = random_part<bf16>(41, 300);
  const auto p1 = random_part<bf16>(42, 300);
  constexpr int kTimedOut = 101;
  constexpr int kFinished = 102;
  if (rank == 0) {
    const auto start = std::chrono::steady_clock::now();
    try {
      (void)group.all_reduce(my_part<bf16>(rank, p0, p1));
      fail(__LINE__, "expected CommError: rank 1 never joined");
    } catch (const CommError& e) {
      const std::string what = e.what();
      CHECK(contains(what, "mpi rank 0: all_reduce of 300 bf16 elements did not complete within 1 s"), what);
      CHECK(contains(what, "is another rank stuck or dead?"), what);
    }
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(waited >= 0.9 && waited < 30.0, "waited " + std::to_string(waited) + " s");
    try {
      (void)group.all_reduce(my_part<bf16>(rank, p0, p1));
      fail(__LINE__, "expected CommError: the communicator timed out before");
    } catch (const CommError& e) {
      CHECK(contains(e.what(), "mpi rank 0: all_reduce of 300 bf16 elements refused"), e.what());
    }
    signal_with_deadline(true, 1, kTimedOut);
    CHECK(session.drain_timed_out(60.0) == 0, "the timed-out all_reduce never completed");
    signal_with_deadline(false, 1, kFinished);
  } else {
    signal_with_deadline(false, 0, kTimedOut);
    const auto sum = group.all_reduce(my_part<bf16>(rank, p0, p1));
    expect_in_process_bits(__LINE__, rank, sum, p0, p1);
    signal_with_deadline(true, 0, kFinished);
  }
}

#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
// One GPU per rank (rank r on Cuda<r>): NCCL bootstrapped over MPI agrees
// with the rank-order host sum within bf16 tolerance (its reduction order is
// its own). Needs two GPUs; passes trivially with fewer.
void nccl_over_mpi_agrees_within_bf16_tolerance(const comm::MpiSession& session) {
  if (cuda::device_count() < 2) return;
  const int rank = session.rank();
  const auto group = comm::mpi_group<Cuda<0>, Cuda<1>>(session, 60.0);
  CHECK(contains(group.describe(), "nccl (rank " + std::to_string(rank)), group.describe());
  const auto p0 = random_part<bf16>(51, 4096);
  const auto p1 = random_part<bf16>(52, 4096);
  Distributed<Partial<Cuda<0>, Cuda<1>>, bf16> partial;
  if (rank == 0) {
    partial.set<0>(to<Cuda<0>>(p0));
  } else {
    partial.set<1>(to<Cuda<1>>(p1));
  }
  const auto sum = group.all_reduce(std::move(partial));
  const auto got = rank == 0 ? to<Host>(sum.part<0>()) : to<Host>(sum.part<1>());
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    const float want = convert<float>(convert<bf16>(convert<float>(p0.span()[i]) + convert<float>(p1.span()[i])));
    const float g = convert<float>(got.span()[i]);
    CHECK(std::abs(g - want) <= 1e-2f * std::max(1.0f, std::abs(want)),
          "element " + std::to_string(i) + ": " + std::to_string(g) + " vs " + std::to_string(want));
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::optional<comm::MpiSession> session;
  try {
    session.emplace(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_comm_mpi: %s\n", e.what());
    return 1;
  }
  g_session = &*session;
  if (session->size() != 2) {
    std::fprintf(stderr, "test_comm_mpi: run with mpirun -np 2 (this world has %d processes)\n", session->size());
    return 2;
  }
  try {
    all_reduce_matches_in_process<float>(*session, 1000, 1);
    all_reduce_matches_in_process<float>(*session, 100'003, 3);
    all_reduce_matches_in_process<bf16>(*session, 4097, 5);
    all_reduce_matches_in_process<f16>(*session, 33, 7);
    all_reduce_matches_in_process<bf16>(*session, 1, 9);
    mismatched_sizes_are_an_error_on_every_rank(*session);
    group_larger_than_the_world_is_an_error(*session);
#if defined(TESSERA_WITH_CUDA) && defined(TESSERA_HAS_NCCL)
    nccl_over_mpi_agrees_within_bf16_tolerance(*session);
#endif
    timeout_names_the_rank_and_a_late_rank_still_finishes(*session);
  } catch (const std::exception& e) {
    fail(__LINE__, std::string("unexpected exception: ") + e.what());
  }
  if (session->rank() == 0) std::printf("test_comm_mpi: all checks passed on 2 ranks\n");
  return 0;
}
