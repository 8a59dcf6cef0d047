// comm::Group in one process (CPU slots): all_reduce of Partial parts is the
// rank-order chain of ops::add, bit for bit; replicate copies to every slot;
// misuse is a clear error. Also the host summation the MPI backend uses
// (comm::detail::sum_in_rank_order), which must give the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <tessera/comm/group.hpp>
#include <tessera/comm/mpi.hpp>
#include <tessera/comm/nccl.hpp>
#include <tessera/tessera.hpp>

namespace {

using namespace tessera;

// Values over many magnitudes, so a different summation order or a missing
// rounding step changes bits.
template <class T>
Tensor<Host, T> random_part(std::uint32_t seed, const Shape& shape) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-12, 12);
  Tensor<Host, T> t(shape);
  for (auto& x : t.span()) x = convert<T>(std::ldexp(mantissa(rng), exponent(rng)));
  return t;
}

template <Device D, class T>
Tensor<D, T> on(const Tensor<Host, T>& t) {
  return to<D>(t);
}

// acc = p0; acc = round_T(acc + p1); acc = round_T(acc + p2); ... in float.
template <class T>
std::vector<T> naive_rank_order_sum(const std::vector<const Tensor<Host, T>*>& parts) {
  std::vector<T> acc(parts[0]->span().begin(), parts[0]->span().end());
  for (std::size_t r = 1; r < parts.size(); ++r) {
    const auto p = parts[r]->span();
    for (std::size_t i = 0; i < acc.size(); ++i) acc[i] = convert<T>(convert<float>(acc[i]) + convert<float>(p[i]));
  }
  return acc;
}

template <class T, Device D>
void expect_bits(const Tensor<D, T>& got, const std::vector<T>& want, const std::string& what) {
  const auto host = to<Host>(got);
  ASSERT_EQ(static_cast<std::size_t>(host.numel()), want.size()) << what;
  EXPECT_EQ(std::memcmp(host.raw(), want.data(), want.size() * sizeof(T)), 0) << what << ": bits differ";
}

template <class T>
class CommAllReduce : public ::testing::Test {};
using CommTypes = ::testing::Types<float, bf16, f16>;
TYPED_TEST_SUITE(CommAllReduce, CommTypes);

TYPED_TEST(CommAllReduce, InProcessGroupEqualsNaiveRankOrderSumBitForBit) {
  using T = TypeParam;
  using G = comm::Group<Cpu<0>, Cpu<1>, Cpu<2>>;
  const Shape shape{3, 257};
  const auto p0 = random_part<T>(11, shape);
  const auto p1 = random_part<T>(12, shape);
  const auto p2 = random_part<T>(13, shape);
  const auto want = naive_rank_order_sum<T>({&p0, &p1, &p2});

  Distributed<Partial<Cpu<0>, Cpu<1>, Cpu<2>>, T> partial;
  partial.template set<0>(on<Cpu<0>>(p0));
  partial.template set<1>(on<Cpu<1>>(p1));
  partial.template set<2>(on<Cpu<2>>(p2));
  const G group = comm::cpu_group<Cpu<0>, Cpu<1>, Cpu<2>>();
  const auto sum = group.all_reduce(std::move(partial));
  EXPECT_EQ(sum.template part<0>().shape(), shape);
  expect_bits(sum.template part<0>(), want, "Cpu<0>");
  expect_bits(sum.template part<1>(), want, "Cpu<1>");
  expect_bits(sum.template part<2>(), want, "Cpu<2>");
}

// The MPI backend gathers the parts and sums them on the host with
// sum_in_rank_order: it must give the in-process group's bits, including
// above the size where the loop runs on several threads.
TYPED_TEST(CommAllReduce, MpiHostSummationEqualsInProcessGroupBitForBit) {
  using T = TypeParam;
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{1000}, std::int64_t{100'003}}) {
    const Shape shape{n};
    const auto p0 = random_part<T>(21, shape);
    const auto p1 = random_part<T>(22, shape);
    const auto p2 = random_part<T>(23, shape);
    std::vector<T> gathered;
    for (const auto* p : {&p0, &p1, &p2}) gathered.insert(gathered.end(), p->span().begin(), p->span().end());
    std::vector<T> host_sum(static_cast<std::size_t>(n));
    comm::detail::sum_in_rank_order(host_sum.data(), reinterpret_cast<const std::byte*>(gathered.data()), 3,
                                    static_cast<std::size_t>(n), comm::element_type_of<T>());

    Distributed<Partial<Cpu<0>, Cpu<1>, Cpu<2>>, T> partial;
    partial.template set<0>(on<Cpu<0>>(p0));
    partial.template set<1>(on<Cpu<1>>(p1));
    partial.template set<2>(on<Cpu<2>>(p2));
    const auto sum = comm::Group<Cpu<0>, Cpu<1>, Cpu<2>>().all_reduce(std::move(partial));
    expect_bits(sum.template part<2>(), host_sum, "n = " + std::to_string(n));
  }
}

TEST(CommGroup, ReplicateCopiesTheValueToEverySlot) {
  const auto value = random_part<bf16>(5, Shape{4, 8});
  const comm::Group<Cpu<0>, Cpu<1>> group;
  const auto replicated = group.replicate(value);
  const std::vector<bf16> want(value.span().begin(), value.span().end());
  expect_bits(replicated.part<0>(), want, "Cpu<0>");
  expect_bits(replicated.part<1>(), want, "Cpu<1>");
  EXPECT_TRUE(group.is_local<0>());
  EXPECT_TRUE(group.is_local<1>());
}

TEST(CommGroup, DescribeSaysInProcess) {
  using G = comm::Group<Cpu<0>, Cpu<1>>;
  const G group = comm::cpu_group<Cpu<0>, Cpu<1>>();
  EXPECT_NE(group.describe().find("in-process"), std::string::npos);
  EXPECT_EQ(G("why this group is in-process").describe(), "why this group is in-process");
}

TEST(CommGroup, AllReduceWithAMissingPartIsAValueError) {
  Distributed<Partial<Cpu<0>, Cpu<1>>, float> partial;
  partial.set<0>(on<Cpu<0>>(random_part<float>(1, Shape{4})));
  try {
    (void)comm::Group<Cpu<0>, Cpu<1>>().all_reduce(std::move(partial));
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("every rank's part"), std::string::npos) << e.what();
  }
}

TEST(CommGroup, AllReduceOfPartsWithDifferentShapesIsAShapeError) {
  Distributed<Partial<Cpu<0>, Cpu<1>>, float> partial;
  partial.set<0>(on<Cpu<0>>(random_part<float>(1, Shape{4})));
  partial.set<1>(on<Cpu<1>>(random_part<float>(2, Shape{5})));
  using G = comm::Group<Cpu<0>, Cpu<1>>;
  EXPECT_THROW((void)G().all_reduce(std::move(partial)), ShapeError);
}

TEST(CommTimeout, ComesFromTheArgumentTheEnvironmentOrTheDefault) {
  ::unsetenv("TESSERA_COMM_TIMEOUT_S");
  EXPECT_EQ(comm::detail::collective_timeout_s(std::nullopt), 300.0);
  EXPECT_EQ(comm::detail::collective_timeout_s(2.5), 2.5);
  ::setenv("TESSERA_COMM_TIMEOUT_S", "7", 1);
  EXPECT_EQ(comm::detail::collective_timeout_s(std::nullopt), 7.0);
  EXPECT_EQ(comm::detail::collective_timeout_s(1.0), 1.0);
  ::setenv("TESSERA_COMM_TIMEOUT_S", "soon", 1);
  try {
    (void)comm::detail::collective_timeout_s(std::nullopt);
    FAIL() << "expected ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("TESSERA_COMM_TIMEOUT_S='soon'"), std::string::npos) << e.what();
  }
  ::unsetenv("TESSERA_COMM_TIMEOUT_S");
  EXPECT_THROW((void)comm::detail::collective_timeout_s(0.0), ValueError);
  EXPECT_THROW((void)comm::detail::collective_timeout_s(-1.0), ValueError);
}

#if !defined(TESSERA_HAS_MPI)
TEST(CommMpi, WithoutMpiTheSessionIsADeviceError) {
  try {
    comm::MpiSession session;
    FAIL() << "expected DeviceError";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("this build has no MPI"), std::string::npos) << e.what();
  }
}
#endif
// The MPI backend itself runs under mpirun: tests/mpi/test_comm_mpi.cpp.

#if defined(TESSERA_WITH_CUDA)
TEST(CommCuda, CudaGroupPicksNcclOrSaysWhyNot) {
  if (cuda::device_count() < 2) GTEST_SKIP() << "needs two logical CUDA devices";
  const auto group = comm::cuda_group<Cuda<0>, Cuda<1>>();
  const std::string what = group.describe();
  if (cuda::physical_device(0) == cuda::physical_device(1)) {
    EXPECT_NE(what.find("share physical GPU"), std::string::npos) << what;
  } else {
#if defined(TESSERA_HAS_NCCL)
    EXPECT_NE(what.find("nccl (ncclCommInitAll over GPUs"), std::string::npos) << what;
#endif
  }
  // Within bf16 tolerance of the host rank-order sum (NCCL's order is its own).
  const Shape shape{4, 129};
  const auto p0 = random_part<bf16>(31, shape);
  const auto p1 = random_part<bf16>(32, shape);
  const auto want = naive_rank_order_sum<bf16>({&p0, &p1});
  Distributed<Partial<Cuda<0>, Cuda<1>>, bf16> partial;
  partial.set<0>(on<Cuda<0>>(p0));
  partial.set<1>(on<Cuda<1>>(p1));
  const auto sum = group.all_reduce(std::move(partial));
  for (const auto& got : {to<Host>(sum.part<0>()), to<Host>(sum.part<1>())}) {
    const auto g = got.span();
    for (std::size_t i = 0; i < want.size(); ++i) {
      const float w = convert<float>(want[i]);
      EXPECT_NEAR(convert<float>(g[i]), w, 1e-2f * std::max(1.0f, std::abs(w))) << "element " << i;
    }
  }
}
#endif

}  // namespace
