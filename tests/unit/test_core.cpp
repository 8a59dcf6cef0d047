// Core types: dtypes, shapes, views, to<>, the memory ledger.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <type_traits>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

// ---- the type rules, checked at compile time --------------------------------
static_assert(std::is_same_v<Host, Cpu<0>>);
static_assert(Device<Cpu<3>> && Device<Cuda<1>> && !Device<int>);
static_assert(std::is_same_v<Tensor<Cuda<0>>::element_type, bf16>, "the element type defaults to bf16");
// Conversions to another device (and views over plain pointers) are declared,
// their bodies holding the static_assert that names the devices, so type
// traits cannot see the refusal: tests/compile_fail checks it.
static_assert(std::is_convertible_v<Tensor<Cpu<0>, float>&, TensorView<Cpu<0>, const float>>);
static_assert(!std::is_copy_constructible_v<Tensor<Host, float>>, "copies are explicit: clone with to<D>()");

template <class X>
concept HasHostAccess = requires(X x) { x.raw(); x.data(); x.at(0); };
static_assert(HasHostAccess<Tensor<Cpu<2>, float>>);
static_assert(HasHostAccess<TensorView<Cpu<0>, const float>>);
static_assert(!HasHostAccess<Tensor<Cuda<0>, float>>, "device tensors have no host element access");
static_assert(!HasHostAccess<TensorView<Cuda<1>, bf16>>);

// ---- dtypes -------------------------------------------------------------------
TEST(DType, F16ConversionMatchesTheCompilersFloat16Exhaustively) {
  // Every one of the 65536 f16 bit patterns widens exactly and narrows back.
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto h = f16::from_bits(static_cast<std::uint16_t>(bits));
    const float f = static_cast<float>(h);
    _Float16 reference;
    const auto b16 = static_cast<std::uint16_t>(bits);
    std::memcpy(&reference, &b16, 2);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(static_cast<float>(reference)));
      continue;
    }
    ASSERT_EQ(f, static_cast<float>(reference)) << "bits " << bits;
    ASSERT_EQ(f16(f).bits, bits) << "round trip of bits " << bits;
  }
  // Narrowing random floats of every magnitude rounds like the compiler's.
  std::mt19937 gen(7);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = std::bit_cast<float>(any_bits(gen));
    if (std::isnan(f)) continue;
    const _Float16 reference = static_cast<_Float16>(f);
    std::uint16_t ref_bits;
    std::memcpy(&ref_bits, &reference, 2);
    ASSERT_EQ(f16(f).bits, ref_bits) << "float " << f;
  }
}

// bf16 rounding against a reference that picks the nearest of the two
// neighbouring bf16 values in double precision, ties to the even one.
std::uint16_t bf16_reference(float f) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
  const auto down = static_cast<std::uint16_t>(bits >> 16);
  const auto up = static_cast<std::uint16_t>(down + 1);
  const double lo = static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(down) << 16));
  const double hi_f = static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(up) << 16));
  const double x = static_cast<double>(f);
  if ((bits & 0xffffu) == 0) return down;
  // Past the largest finite value the upper neighbour is infinity: compare
  // against the midpoint computed from the finite spacing instead.
  const double hi = std::isinf(hi_f) ? lo + (lo - static_cast<double>(std::bit_cast<float>(
                                                    static_cast<std::uint32_t>(down - 1) << 16)))
                                     : hi_f;
  const double dl = std::abs(x - lo), dh = std::abs(hi - x);
  if (dl < dh) return down;
  if (dh < dl) return up;
  return (down & 1u) ? up : down;
}

TEST(DType, Bf16RoundsToNearestEvenLikeAnIndependentReference) {
  std::mt19937 gen(11);
  std::uniform_int_distribution<std::uint32_t> any_bits;
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = std::bit_cast<float>(any_bits(gen));
    if (std::isnan(f) || std::isinf(f)) continue;
    ASSERT_EQ(bf16(f).bits, bf16_reference(f)) << "float " << f;
  }
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(static_cast<float>(bf16(std::numeric_limits<float>::infinity()))));
  EXPECT_EQ(static_cast<float>(bf16(1.0f)), 1.0f);
}

// ---- shapes and views -----------------------------------------------------------
TEST(Shape, NegativeAxesCountFromTheEndAndErrorsNameTheShape) {
  const Shape s{2, 3, 4};
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s.to_string(), "[2, 3, 4]");
  try {
    (void)s[3];
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3, 4]"), std::string::npos);
  }
  EXPECT_THROW((Shape{1, 2, 3, 4, 5, 6, 7, 8, 9}), ShapeError);
  EXPECT_THROW((Shape{2, -1}), ShapeError);
}

Tensor<Host, float> iota(Shape shape) {
  Tensor<Host, float> t(shape);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.span()[static_cast<std::size_t>(i)] = static_cast<float>(i);
  return t;
}

TEST(TensorView, SliceSelectTransposePermuteReshapeAddressTheRightElements) {
  const auto t = iota({2, 3, 4});  // t[i][j][k] = 12 i + 4 j + k
  const auto s = t.slice(2, 1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(s.at(1, 2, 1), 12 + 8 + 2);
  EXPECT_FALSE(s.is_contiguous());
  const auto sel = t.select(1, 2);
  EXPECT_EQ(sel.shape(), (Shape{2, 4}));
  EXPECT_EQ(sel.at(1, 3), 12 + 8 + 3);
  const auto tr = t.transpose(0, 2);
  EXPECT_EQ(tr.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(tr.at(3, 1, 1), 12 + 4 + 3);
  const auto p = t.permute({1, 2, 0});
  EXPECT_EQ(p.shape(), (Shape{3, 4, 2}));
  EXPECT_EQ(p.at(2, 1, 1), 12 + 8 + 1);
  const auto r = t.reshape({6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.at(5, 3), 23);
  const auto u = t.view().unsqueeze(1);
  EXPECT_EQ(u.shape(), (Shape{2, 1, 3, 4}));
  EXPECT_EQ(u.at(1, 0, 2, 3), 23);
  EXPECT_THROW((void)t.slice(0, 1, 3), ShapeError);
  EXPECT_THROW((void)t.reshape({5, -1}), ShapeError);
  EXPECT_THROW((void)tr.reshape({24}), ShapeError);  // not contiguous
  EXPECT_THROW((void)t.permute({0, 0, 1}), ShapeError);
  EXPECT_THROW((void)t.at(0, 3, 0), ShapeError);
  EXPECT_THROW((void)t.at(0, 0), ShapeError);
}

// ---- to<> between CPU slots -----------------------------------------------------
TEST(Transfer, ToCopiesBetweenSlotsAndGathersStridedViews) {
  const auto t = iota({3, 5});
  const Tensor<Cpu<1>, float> moved = to<Cpu<1>>(t);
  EXPECT_EQ(moved.shape(), t.shape());
  EXPECT_EQ(std::memcmp(moved.raw(), t.raw(), t.bytes()), 0);
  EXPECT_NE(static_cast<const void*>(moved.raw()), static_cast<const void*>(t.raw()));
  const auto back = to<Host>(moved.transpose(0, 1));
  EXPECT_EQ(back.shape(), (Shape{5, 3}));
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 3; ++j) EXPECT_EQ(back.at(i, j), t.at(j, i));
  const auto col = to<Cpu<2>>(t.slice(1, 4, 5));
  EXPECT_EQ(col.at(2, 0), 14);
  const auto same = contiguous(t);  // an explicit same-device copy
  EXPECT_EQ(same.at(2, 4), 14);
}

TEST(Transfer, CudaWithoutABackendFailsClearly) {
  const auto t = iota({2, 2});
  try {
    (void)to<Cuda<0>>(t);
    FAIL() << "expected a DeviceError";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("Cuda<0>"), std::string::npos) << e.what();
  }
}

TEST(Tensor, EmptyAndMovedFromTensorsAreRefusedNotDereferenced) {
  Tensor<Cpu<1>, float> empty;
  EXPECT_TRUE(empty.empty());
  try {
    (void)to<Host>(empty);
    FAIL() << "expected a ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("empty Tensor<Cpu<1>, float32>"), std::string::npos) << e.what();
  }
  auto source = iota({2, 3});
  const auto target = std::move(source);
  EXPECT_TRUE(source.empty());  // NOLINT(bugprone-use-after-move): the state after a move is the point
  EXPECT_EQ(source.numel(), 1) << "a moved-from tensor has shape [], like a default one";
  EXPECT_THROW((void)contiguous(source), ValueError);
  EXPECT_THROW((void)source.slice(0, 0, 1), ValueError);
  EXPECT_EQ(target.at(1, 2), 5);
  const auto scalar = Tensor<Host, float>::full(Shape{}, 2.5f);  // rank 0 is not empty
  EXPECT_FALSE(scalar.empty());
  EXPECT_EQ(to<Cpu<1>>(scalar).at(), 2.5f);
}

// ---- the memory ledger ------------------------------------------------------------
TEST(Ledger, TracksLiveAndPeakBytesPerDevice) {
  auto& l = ledger<Cpu<5>>();
  const auto live0 = l.live();
  l.reset_peak();
  {
    Tensor<Cpu<5>, float> a({1000});
    EXPECT_EQ(l.live(), live0 + 4000);
    {
      Tensor<Cpu<5>, bf16> b({500});
      EXPECT_EQ(l.live(), live0 + 5000);
    }
    EXPECT_EQ(l.live(), live0 + 4000);
    Tensor<Cpu<5>, float> moved = std::move(a);  // a move is not an allocation
    EXPECT_EQ(l.live(), live0 + 4000);
  }
  EXPECT_EQ(l.live(), live0);
  EXPECT_EQ(l.peak(), live0 + 5000);
  EXPECT_EQ(ledger<Cpu<6>>().live(), 0u) << "slots are accounted separately";
}

TEST(Ledger, AnAllocationOverBudgetThrowsOutOfMemoryNamingEverything) {
  auto& l = ledger<Cpu<7>>();
  l.set_budget(10'000);
  Tensor<Cpu<7>, float> keep({2000});  // 8000 bytes live
  try {
    Tensor<Cpu<7>, float> too_big({1000});  // 4000 more: over the 10000 budget
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.device(), "Cpu<7>");
    EXPECT_EQ(e.requested_bytes(), 4000u);
    EXPECT_EQ(e.live_bytes(), 8000u);
    EXPECT_EQ(e.budget_bytes(), 10000u);
    EXPECT_NE(what.find("Cpu<7>"), std::string::npos) << what;
    EXPECT_NE(what.find("4000 bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("8000 bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("10000 bytes"), std::string::npos) << what;
  }
  EXPECT_EQ(l.live(), 8000u) << "a failed allocation records nothing";
  EXPECT_NO_THROW((Tensor<Cpu<7>, float>({500})));  // exactly fills the budget
  l.set_budget(std::nullopt);
  EXPECT_NO_THROW((Tensor<Cpu<7>, float>({100000})));
  const bool is_tessera_error = std::is_base_of_v<Error, OutOfMemory>;
  EXPECT_TRUE(is_tessera_error);
}

TEST(Ledger, ReportListsEveryDeviceTouched) {
  Tensor<Cpu<3>, float> a({10});
  std::ostringstream out;
  print_memory_report(out);
  EXPECT_NE(out.str().find("Cpu<3>"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("40 B"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace tessera::testing
