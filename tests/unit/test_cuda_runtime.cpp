// The CUDA runtime: the logical-to-physical device map and its errors,
// transfers in every direction (host <-> device, device <-> device on one or
// two GPUs, strided views, the stream-taking overload), the stream-ordered
// allocator's ledger accounting, out-of-memory errors, and poisoning. The
// parsing and error-path tests run everywhere; the rest need a GPU and are
// reported as skipped without one. CTest also runs this file with
// TESSERA_CUDA_DEVICES=0,0, so Cuda<1> is a second logical device on GPU 0.
#include <tessera/ops/elementwise.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class T>
Tensor<Host, T> pattern(Shape shape) {
  // Distinct bit patterns per element (including the dtype's high byte), so a
  // misplaced chunk or swapped halves cannot go unnoticed.
  Tensor<Host, T> t(shape);
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  for (auto& v : t.span()) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    if constexpr (std::is_floating_point_v<T>) v = static_cast<T>(static_cast<double>(state >> 40) / 65536.0 - 64.0);
    else if constexpr (std::is_integral_v<T>) v = static_cast<T>(state >> 33);
    else v = T::from_bits(static_cast<std::uint16_t>((state >> 48) & 0x7BFFu));  // finite for f16 and bf16
  }
  return t;
}

#if defined(TESSERA_WITH_CUDA)

TEST(CudaDeviceMap, ParsesCommaSeparatedPhysicalIndices) {
  using cuda::detail::parse_device_list;
  EXPECT_EQ(parse_device_list("0"), (std::vector<int>{0}));
  EXPECT_EQ(parse_device_list("0,0"), (std::vector<int>{0, 0}));
  EXPECT_EQ(parse_device_list(" 1, 0 ,2"), (std::vector<int>{1, 0, 2}));
}

TEST(CudaDeviceMap, RejectsMalformedListsQuotingTheVariable) {
  for (const char* bad : {"", ",", "0,", ",0", "0,,1", "0;1", "-1", "a", "0 1", "99999"}) {
    expect_error<DeviceError>([&] { (void)cuda::detail::parse_device_list(bad); },
                              {"TESSERA_CUDA_DEVICES='" + std::string(bad) + "'"});
  }
}

TEST(CudaDeviceMap, MissingLogicalDeviceIsNamed) {
  const int count = cuda::device_count();
  expect_error<DeviceError>([&] { (void)cuda::physical_device(count + 3); },
                            {"Cuda<" + std::to_string(count + 3) + ">", "not available"});
  expect_error<DeviceError>([] { cuda::require_devices<Cuda<0>, Cuda<7>>(); }, {"Cuda<7>"});
}

TEST(CudaDeviceMap, WithoutAGpuUsingADeviceIsAClearError) {
  if (cuda::device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  const auto h = pattern<float>({4});
  expect_error<DeviceError>([&] { (void)to<Cuda<0>>(h); }, {"Cuda<0>", "no CUDA device"});
  expect_error<DeviceError>([] { cuda::require_devices<Cuda<0>>(); }, {"Cuda<0>"});
}

template <class C>
class CudaTransfer : public ::testing::Test {};
using TransferTypes = ::testing::Types<float, bf16, f16, std::int32_t, std::int64_t>;
TYPED_TEST_SUITE(CudaTransfer, TransferTypes);

// Sizes: empty, one element, odd, and one that spans several 8 MiB pinned
// staging chunks with a partial last one.
const std::vector<Shape> kTransferShapes = {{0}, {1}, {7, 13}, {3, 1024 * 1024 + 77}};

TYPED_TEST(CudaTransfer, HostDeviceHostRoundTripIsBitExact) {
  using T = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  for (const Shape& shape : kTransferShapes) {
    const auto h = pattern<T>(shape);
    const auto back = to<Host>(to<Cuda<0>>(h));
    EXPECT_TRUE(same_bits(h, back)) << "shape " << shape;
  }
}

TYPED_TEST(CudaTransfer, DeviceToDeviceBothWaysIsBitExact) {
  using T = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<1>);
  for (const Shape& shape : kTransferShapes) {
    const auto h = pattern<T>(shape);
    const auto on0 = to<Cuda<0>>(h);
    const auto on1 = to<Cuda<1>>(on0);
    const auto again0 = to<Cuda<0>>(on1);
    EXPECT_TRUE(same_bits(h, to<Host>(on1))) << "Cuda<0> -> Cuda<1>, shape " << shape;
    EXPECT_TRUE(same_bits(h, to<Host>(again0))) << "Cuda<1> -> Cuda<0>, shape " << shape;
  }
}

TYPED_TEST(CudaTransfer, SameDeviceCopyIsIndependent) {
  using T = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  const auto h = pattern<T>({33, 5});
  auto a = to<Cuda<0>>(h);
  const auto b = contiguous(a);
  EXPECT_NE(a.device_ptr().get(), b.device_ptr().get());
  a = to<Cuda<0>>(pattern<T>({2}));  // frees the original; b must be unaffected
  EXPECT_TRUE(same_bits(h, to<Host>(b)));
}

TYPED_TEST(CudaTransfer, StridedViewsAreGatheredOnEitherSide) {
  using T = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  const auto h = pattern<T>({5, 7, 3});
  const auto on_device = to<Cuda<0>>(h);
  // Device-side strided view -> host (packed on the GPU first).
  const auto from_device = to<Host>(on_device.view().transpose(0, 2).slice(1, 2, 6));
  const auto expected = to<Host>(h.view().transpose(0, 2).slice(1, 2, 6));
  EXPECT_TRUE(same_bits(expected, from_device));
  // Host-side strided view -> device.
  const auto to_device = to<Host>(to<Cuda<0>>(h.view().select(1, 4)));
  EXPECT_TRUE(same_bits(to<Host>(h.view().select(1, 4)), to_device));
  // Device -> device of a strided view.
  if (testing::device_available<Cuda<1>>()) {
    const auto across = to<Host>(to<Cuda<1>>(on_device.view().transpose(0, 1)));
    EXPECT_TRUE(same_bits(to<Host>(h.view().transpose(0, 1)), across));
  }
}

TEST(CudaTransferStreams, SideStreamCopiesAreOrderedBeforeLaterWork) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<1>);
  // Many copies on a side stream of the destination, each immediately
  // consumed by an op on the destination's own stream: the op must see the
  // copied data, never the poisoned or stale allocation.
  cuda::Stream<Cuda<1>> side;
  const auto ha = pattern<float>({256, 1024});
  const auto hb = pattern<float>({256, 1024});
  const auto a0 = to<Cuda<0>>(ha);
  const auto b0 = to<Cuda<0>>(hb);
  for (int i = 0; i < 8; ++i) {
    const auto a1 = to<Cuda<1>>(a0, side);
    const auto b1 = to<Cuda<1>>(b0, side);
    const auto sum = to<Host>(ops::add(a1, b1));
    const auto expected = to<Host>(ops::add(ha, hb));
    ASSERT_TRUE(same_bits(expected, sum)) << "iteration " << i;
  }
  // The source side's stream may also carry the copy.
  cuda::Stream<Cuda<0>> source_side;
  EXPECT_TRUE(same_bits(ha, to<Host>(to<Cuda<1>>(a0, source_side))));
  EXPECT_TRUE(same_bits(ha, to<Host>(to<Cuda<0>>(ha, source_side))));
}

TEST(CudaMemory, LedgerTracksLiveAndPeakBytes) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  auto& l = ledger<Cuda<0>>();
  const auto live_before = l.live();
  {
    Tensor<Cuda<0>, float> t({1024, 256});
    EXPECT_EQ(l.live(), live_before + 1024 * 256 * sizeof(float));
    EXPECT_GE(l.peak(), l.live());
  }
  EXPECT_EQ(l.live(), live_before);
}

TEST(CudaMemory, BudgetOverrunNamesDeviceRequestAndBudget) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  auto& l = ledger<Cuda<0>>();
  const auto saved = l.budget();
  l.set_budget(l.live() + (1u << 20));
  try {
    Tensor<Cuda<0>, float> t({1 << 20});  // 4 MiB > 1 MiB left
    ADD_FAILURE() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("Cuda<0>"), std::string::npos) << what;
    EXPECT_NE(what.find("4194304 bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("budget"), std::string::npos) << what;
  }
  l.set_budget(saved);
}

TEST(CudaMemory, RealDeviceOutOfMemoryBecomesOutOfMemory) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  const auto live_before = ledger<Cuda<0>>().live();
  // 2^48 bytes (256 TiB) is more than any GPU has; the ledger has no budget,
  // so this is CUDA's own failure, reported the same way.
  expect_error<OutOfMemory>([] { Tensor<Cuda<0>, float> t({std::int64_t{1} << 46}); },
                            {"Cuda<0>", "281474976710656 bytes"});
  EXPECT_EQ(ledger<Cuda<0>>().live(), live_before) << "a failed allocation must not stay charged";
  // The device still works afterwards.
  const auto h = pattern<float>({16});
  EXPECT_TRUE(same_bits(h, to<Host>(to<Cuda<0>>(h))));
}

TEST(CudaMemory, NewAllocationsArePoisonedWhenAsked) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  if (!poison_allocations()) GTEST_SKIP() << "TESSERA_POISON_ALLOCATIONS is not set";
  Tensor<Cuda<0>, float> t({1000});
  const auto h = to<Host>(t);
  for (float v : h.span()) ASSERT_TRUE(std::isnan(v));
}

TEST(CudaDeviceGuard, RestoresTheCallersDevice) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  int before = -1, after = -1;
  ASSERT_EQ(cudaGetDevice(&before), cudaSuccess);
  {
    const cuda::DeviceGuard guard(cuda::physical_device(cuda::device_count() - 1));
    int inside = -1;
    ASSERT_EQ(cudaGetDevice(&inside), cudaSuccess);
    EXPECT_EQ(inside, cuda::physical_device(cuda::device_count() - 1));
  }
  ASSERT_EQ(cudaGetDevice(&after), cudaSuccess);
  EXPECT_EQ(before, after);
}

TEST(CudaDeviceGuard, OpsDoNotDependOnTheCurrentDevice) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<1>);
  // Whatever device the caller left current, Cuda<1> work lands on Cuda<1>.
  ASSERT_EQ(cudaSetDevice(cuda::physical_device(0)), cudaSuccess);
  const auto h = pattern<float>({64});
  const auto on1 = to<Cuda<1>>(h);
  const auto doubled = to<Host>(ops::add(on1, on1));
  EXPECT_TRUE(same_bits(to<Host>(ops::add(h, h)), doubled));
}

#else  // a build without the CUDA backend

TEST(CudaWithoutBackend, TransfersFailNamingTheDevice) {
  const auto h = pattern<float>({4});
  expect_error<DeviceError>([&] { (void)to<Cuda<0>>(h); }, {"Cuda<0>", "no CUDA backend"});
  expect_error<DeviceError>([] { Tensor<Cuda<1>, float> t({4}); }, {"Cuda<1>", "no CUDA backend"});
}

#endif

}  // namespace
}  // namespace tessera::testing
