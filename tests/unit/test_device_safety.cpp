// The ways into device memory that stay after the escape hatches closed
// (issue 16): DevicePtr<D, T> from device_ptr(), the named view factories,
// and the braced ops::concat of writable views. What must NOT compile is in
// tests/compile_fail (escapes.cpp, generic_contexts.cpp); here the legitimate
// forms run, on every device the build has, against the host data.
#include <array>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

#include <tessera/core/distributed.hpp>

namespace tessera::testing {
namespace {

// ---- the type rules, at compile time ------------------------------------------

template <class X>
concept HasRaw = requires(X x) { x.raw(); };
static_assert(HasRaw<Tensor<Cpu<1>, float>> && HasRaw<TensorView<Cpu<0>, const bf16>>,
              "CPU slots are host memory: raw() stays");
static_assert(!HasRaw<Tensor<Cuda<0>, float>> && !HasRaw<TensorView<Cuda<1>, const float>>,
              "device memory has no raw(): device_ptr() names it");

static_assert(std::is_same_v<decltype(std::declval<Tensor<Cuda<0>, float>&>().device_ptr()), DevicePtr<Cuda<0>, float>>);
static_assert(std::is_same_v<decltype(std::declval<const Tensor<Cuda<0>, float>&>().device_ptr()),
                             DevicePtr<Cuda<0>, const float>>);
static_assert(!std::is_convertible_v<DevicePtr<Cuda<0>, float>, float*>, "a DevicePtr is not a host pointer");
static_assert(!std::is_convertible_v<DevicePtr<Cuda<0>, float>, std::span<const float>>);
static_assert(std::is_convertible_v<DevicePtr<Cuda<0>, float>, DevicePtr<Cuda<0>, const float>>);
static_assert(!std::is_constructible_v<TensorView<Cuda<0>, float>, DevicePtr<Cuda<0>, float>, Shape>,
              "a view over a pointer is made by a named factory only");

template <class V>
concept HostFactory = requires(typename V::element_type* p) { V::over_host_memory(p, Shape{1}); };
static_assert(HostFactory<TensorView<Cpu<2>, float>> && !HostFactory<TensorView<Cuda<0>, float>>,
              "over_host_memory exists on CPU slots only");

// ---- DevicePtr and the named factories, on every device -----------------------

template <class C>
class DeviceSafety : public ::testing::Test {};
TYPED_TEST_SUITE(DeviceSafety, FloatConfigs, ConfigName);

// A view made over a tensor's device pointer with explicit strides reads the
// same elements as the tensor's own views: the transpose, by strides alone.
TYPED_TEST(DeviceSafety, OverDeviceMemoryReadsTheTensorsElements) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Tensor<Host, T> host = random_tensor<T>(Shape{3, 4});
  Tensor<D, T> t = to<D>(host);

  const DevicePtr<D, T> p = t.device_ptr();
  EXPECT_TRUE(static_cast<bool>(p));
  const auto whole = TensorView<D, T>::over_device_memory(p, t.shape());
  EXPECT_EQ(to_doubles(to<Host>(whole)), to_doubles(host));

  // Row 1 through an offset pointer; the transpose through swapped strides.
  const auto row1 = TensorView<D, T>::over_device_memory(p + 4, Shape{4});
  EXPECT_EQ(to_doubles(to<Host>(row1)), to_doubles(host.select(0, 1)));
  const auto transposed = TensorView<D, const T>::over_device_memory(p, Shape{4, 3}, Strides{1, 4});
  EXPECT_EQ(to_doubles(to<Host>(transposed)), to_doubles(host.transpose(0, 1)));

  // Writing through a mutable view over the pointer changes the tensor.
  ops::copy_into(TensorView<D, T>::over_device_memory(p + 8, Shape{4}), to<D>(host.select(0, 0)));
  const Tensor<Host, T> back = to<Host>(t);
  EXPECT_EQ(to_doubles(back.select(0, 2)), to_doubles(host.select(0, 0)));
  EXPECT_EQ(to_doubles(back.select(0, 1)), to_doubles(host.select(0, 1)));
}

TYPED_TEST(DeviceSafety, EmptyTensorHasANullDevicePointer) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  const Tensor<D, T> empty;
  EXPECT_FALSE(static_cast<bool>(empty.device_ptr()));
  EXPECT_TRUE((empty.device_ptr() == DevicePtr<D, const T>()));
}

// The documented braced form works with writable views too (it used to
// deduce only read-only ones), and with read-only ones.
TYPED_TEST(DeviceSafety, BracedConcatTakesWritableOrReadOnlyViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Tensor<Host, T> ha = random_tensor<T>(Shape{2, 3}), hb = random_tensor<T>(Shape{1, 3});
  Tensor<D, T> a = to<D>(ha), b = to<D>(hb);
  const Tensor<Host, T> expected = ops::concat(0, ha, hb);
  EXPECT_EQ(to_doubles(to<Host>(ops::concat({a.view(), b.view()}, 0))), to_doubles(expected));
  const Tensor<D, T>& ca = a;
  const Tensor<D, T>& cb = b;
  EXPECT_EQ(to_doubles(to<Host>(ops::concat({ca.view(), cb.view()}, 0))), to_doubles(expected));
  EXPECT_EQ(to_doubles(to<Host>(ops::concat({a.view().as_const(), cb.view()}, 0))), to_doubles(expected));
}

// ---- host memory the caller owns ----------------------------------------------

TEST(DeviceSafetyHost, OverHostMemoryViewsAVectorWithoutCopying) {
  std::vector<float> values{1, 2, 3, 4, 5, 6};
  const auto v = TensorView<Host, float>::over_host_memory(values.data(), Shape{2, 3});
  EXPECT_EQ(v.at(1, 2), 6.0f);
  values[4] = 50.0f;  // the view sees the vector: no copy was made
  EXPECT_EQ(v.at(1, 1), 50.0f);
  const auto columns = TensorView<Host, const float>::over_host_memory(values.data(), Shape{3, 2}, Strides{1, 3});
  const float first = columns.at(0, 0);
  EXPECT_EQ(first, 1.0f);
  EXPECT_EQ(columns.at(2, 1), 6.0f);
  EXPECT_EQ(columns.at(1, 0), 2.0f);
  // An op reads it like any view.
  EXPECT_EQ(ops::add(v, v).at(1, 1), 100.0f);
}

TEST(DeviceSafetyHost, DevicePtrOfACpuSlotIsItsHostAddress) {
  Tensor<Cpu<1>, float> t = Tensor<Cpu<1>, float>::from({1, 2, 3}, Shape{3});
  EXPECT_EQ(t.device_ptr().get(), t.data());
  EXPECT_EQ(t.device_ptr().get(), t.raw());
  EXPECT_EQ((t.device_ptr() + 2).get(), t.data() + 2);
  const DevicePtr<Cpu<1>, const float> read_only = t.device_ptr();
  EXPECT_EQ(*read_only.get(), 1.0f);
  const auto second = DevicePtr<Cpu<1>, float>::assume_on_device(t.data() + 1);
  EXPECT_EQ(second.get()[0], 2.0f);
}

// Values kept in std::optional and containers of their own device still move
// in and out (the refusing conversions must not get in the way).
TEST(DeviceSafetyHost, SameDeviceTensorsMoveThroughOptionalAndVector) {
  std::optional<Tensor<Cpu<1>, float>> slot;
  slot = to<Cpu<1>>(Tensor<Host, float>::from({7, 8}, Shape{2}));
  std::vector<Tensor<Cpu<1>, float>> kept;
  kept.push_back(std::move(*slot));
  kept.emplace_back(Shape{3});
  EXPECT_EQ(kept[0].at(1), 8.0f);
  EXPECT_EQ(kept[1].numel(), 3);
  EXPECT_TRUE(slot->empty());
}

TEST(DeviceSafetyHost, DistributedValuesMoveAndKeepTheirParts) {
  Distributed<Replicated<Cpu<0>, Cpu<1>>, float> value;
  value.set<0>(Tensor<Cpu<0>, float>::from({1, 2}, Shape{2}));
  value.set<1>(Tensor<Cpu<1>, float>::from({1, 2}, Shape{2}));
  std::optional<Distributed<Replicated<Cpu<0>, Cpu<1>>, float>> slot;
  slot = std::move(value);
  EXPECT_EQ(slot->part<1>().at(1), 2.0f);
  static_assert(!std::is_copy_constructible_v<Distributed<Replicated<Cpu<0>>, float>>);
}

}  // namespace
}  // namespace tessera::testing
