// generate::mask_finished, typed over devices: transformers'
//   next_tokens * unfinished_sequences + pad_token_id * (1 - unfinished_sequences)
// against the same formula evaluated on the host in int64. Mixing devices
// is a compile error (tests/compile_fail/placement.cpp,
// placement_mask_finished_tokens_and_mask_on_two_devices).
#include <tessera/generate/sampling.hpp>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class D>
class MaskFinished : public ::testing::Test {};
using MaskDevices = ::testing::Types<Cpu<0>, Cpu<1>, Cuda<0>, Cuda<1>>;
struct DeviceName {
  template <class D>
  static std::string GetName(int) {
    return device_name<D>();
  }
};
TYPED_TEST_SUITE(MaskFinished, MaskDevices, DeviceName);

Tensor<Host, std::int64_t> ids(std::initializer_list<std::int64_t> values) {
  return Tensor<Host, std::int64_t>::from(values, Shape{static_cast<std::int64_t>(values.size())});
}

// The formula, element by element, on the host.
std::vector<std::int64_t> reference(const Tensor<Host, std::int64_t>& next, const Tensor<Host, std::int64_t>& unfinished,
                                    std::int64_t pad) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; i < next.numel(); ++i) {
    out.push_back(next.at(i) * unfinished.at(i) + pad * (1 - unfinished.at(i)));
  }
  return out;
}

template <Device D>
std::vector<std::int64_t> run(const Tensor<Host, std::int64_t>& next, const Tensor<Host, std::int64_t>& unfinished,
                              std::int64_t pad) {
  const auto result = generate::mask_finished(to<D>(next), to<D>(unfinished), pad);
  static_assert(std::is_same_v<std::remove_const_t<decltype(result)>, Tensor<D, std::int64_t>>,
                "the result lives where its operands do");
  const auto host = to<Host>(result);
  return {host.span().begin(), host.span().end()};
}

TYPED_TEST(MaskFinished, FinishedSequencesGetThePadTokenOthersKeepTheirs) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // Qwen2's <|endoftext|> as the pad id, ids across the vocabulary.
  const auto next = ids({5, 151643, 0, 42, 151935, 7, 100});
  const auto unfinished = ids({1, 0, 1, 0, 1, 1, 0});
  const std::int64_t pad = 151643;
  const auto got = run<D>(next, unfinished, pad);
  EXPECT_EQ(got, reference(next, unfinished, pad));
  EXPECT_EQ(got, (std::vector<std::int64_t>{5, 151643, 0, 151643, 151935, 7, 151643}));
}

TYPED_TEST(MaskFinished, AllRunningIsTheIdentityAllFinishedIsAllPad) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto next = ids({3, 1, 4, 1, 5});
  EXPECT_EQ(run<D>(next, ids({1, 1, 1, 1, 1}), 9), (std::vector<std::int64_t>{3, 1, 4, 1, 5}));
  EXPECT_EQ(run<D>(next, ids({0, 0, 0, 0, 0}), 9), (std::vector<std::int64_t>(5, 9)));
  // pad_id 0 and a negative pad_id (-1 is a common "no pad" sentinel).
  EXPECT_EQ(run<D>(next, ids({0, 1, 0, 1, 0}), 0), (std::vector<std::int64_t>{0, 1, 0, 1, 0}));
  EXPECT_EQ(run<D>(next, ids({0, 1, 0, 1, 0}), -1), (std::vector<std::int64_t>{-1, 1, -1, 1, -1}));
}

TYPED_TEST(MaskFinished, ALargeBatch) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto next = random_ints<std::int64_t>(Shape{1000}, 0, 151935);
  const auto unfinished = random_ints<std::int64_t>(Shape{1000}, 0, 1);
  EXPECT_EQ(run<D>(next, unfinished, 151643), reference(next, unfinished, 151643));
}

TYPED_TEST(MaskFinished, InputsAreNotModified) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto next = to<D>(ids({8, 9}));
  const auto unfinished = to<D>(ids({0, 1}));
  (void)generate::mask_finished(next, unfinished, 2);
  EXPECT_EQ(to<Host>(next).at(0), 8);
  EXPECT_EQ(to<Host>(unfinished).at(0), 0);
}

TYPED_TEST(MaskFinished, ShapesMustBeOneBatch) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  expect_shape_error([] { (void)generate::mask_finished(to<D>(ids({1, 2, 3})), to<D>(ids({1, 0})), 0); },
                     {"generate::mask_finished: next_tokens [3] and unfinished [2] must both be [batch]"});
  const auto square = to<D>(Tensor<Host, std::int64_t>::zeros(Shape{2, 2}));
  expect_shape_error([&] { (void)generate::mask_finished(square, square, 0); }, {"[2, 2]", "must both be [batch]"});
}

TYPED_TEST(MaskFinished, AnEmptyTensorIsRefused) {
  using D = TypeParam;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Tensor<D, std::int64_t> none;
  EXPECT_THROW((void)generate::mask_finished(none, none, 0), Error);
}

// The CPU evaluates in int64, so ids past float's exact range stay exact.
TEST(MaskFinishedCpu, IdsPastTwoToThe24AreExactOnTheCpu) {
  const std::int64_t big = (std::int64_t{1} << 40) + 1;
  const auto got = generate::mask_finished(ids({big, big + 2}), ids({1, 0}), big + 4);
  EXPECT_EQ(got.at(0), big);
  EXPECT_EQ(got.at(1), big + 4);
}

// On CUDA the ops compute through float; a pad id it cannot represent is refused.
TEST(MaskFinishedCuda, APadIdOutsideFloatsExactRangeIsRefused) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  const auto next = to<Cuda<0>>(ids({1, 2}));
  const auto unfinished = to<Cuda<0>>(ids({1, 0}));
  expect_error<ValueError>([&] { (void)generate::mask_finished(next, unfinished, std::int64_t{1} << 24); },
                           {"pad_id 16777216 on Cuda<0> is outside (-2^24, 2^24)"});
  EXPECT_EQ(to<Host>(generate::mask_finished(next, unfinished, (std::int64_t{1} << 24) - 1)).at(1),
            (std::int64_t{1} << 24) - 1);
}

}  // namespace
}  // namespace tessera::testing
