// nn::ColumnParallelLinear / nn::RowParallelLinear over CPU slots: the
// column -> row -> all_reduce chain against a double-precision reference of
// x W1^T (+ b1) W2^T, the split-state types of every step, load() from a
// checkpoint (each rank reads its rows / columns, only local ranks are read,
// and Cpu<1>'s ledger grows by exactly rank 1's shard), and the run-time
// errors. The misuse the types reject is in tests/compile_fail/placement.cpp.
#include <tessera/comm/group.hpp>
#include <tessera/io/checkpoint.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/nn/parallel_linear.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

// Rows [begin, end) (axis 0) or columns [begin, end) (axis 1) of a 2-D host tensor.
Tensor<Host, float> slice_of(const Tensor<Host, float>& t, int axis, std::int64_t begin, std::int64_t end) {
  return to<Host>(t.slice(axis, begin, end));
}

template <Device D>
Tensor<D, float> on(const Tensor<Host, float>& t) {
  return to<D>(t);
}

// A full-precision reference of the two-layer chain.
std::vector<double> reference_chain(const Tensor<Host, float>& x, const Tensor<Host, float>& w1,
                                    const Tensor<Host, float>* b1, const Tensor<Host, float>& w2) {
  const std::int64_t hidden = w1.dim(1), mid = w1.dim(0), out = w2.dim(0);
  std::vector<double> bias;
  if (b1) bias = to_doubles(*b1);
  const auto h = reference_linear(to_doubles(x), to_doubles(w1), b1 ? &bias : nullptr, hidden, mid);
  return reference_linear(h, to_doubles(w2), nullptr, mid, out);
}

// The tolerance of two float GEMMs and an n-term float sum: inputs in
// [-1, 1] and these sizes keep every output below ~10, so 1e-5 absolute is
// a few hundred float ulps, and a wrong or misplaced shard is off by O(1).
constexpr double kAtol = 1e-5, kRtol = 1e-5;

// Column -> row -> all_reduce over the group of `Ds...`, with the shards cut
// from w1 [mid, hidden] (rows) and w2 [out, mid] (columns) by hand.
template <Device... Ds>
void check_chain(std::int64_t tokens, std::int64_t hidden, std::int64_t mid, std::int64_t out, bool with_bias) {
  constexpr std::size_t n = sizeof...(Ds);
  const auto x = random_tensor<float>(Shape{tokens, hidden});
  const auto w1 = random_tensor<float>(Shape{mid, hidden});
  const auto b1 = random_tensor<float>(Shape{mid});
  const auto w2 = random_tensor<float>(Shape{out, mid});
  const std::int64_t step = mid / static_cast<std::int64_t>(n);
  const auto begin = [&](std::size_t r) { return static_cast<std::int64_t>(r) * step; };

  auto column = [&]<std::size_t... I>(std::index_sequence<I...>) {
    if (with_bias) {
      return nn::ColumnParallelLinear<float, Ds...>(nn::Linear<Ds, float>(
          on<Ds>(slice_of(w1, 0, begin(I), begin(I + 1))), on<Ds>(slice_of(b1, 0, begin(I), begin(I + 1))))...);
    }
    return nn::ColumnParallelLinear<float, Ds...>(
        nn::Linear<Ds, float>(on<Ds>(slice_of(w1, 0, begin(I), begin(I + 1))))...);
  }(std::make_index_sequence<n>{});
  auto row = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return nn::RowParallelLinear<float, Ds...>(
        nn::Linear<Ds, float>(on<Ds>(slice_of(w2, 1, begin(I), begin(I + 1))))...);
  }(std::make_index_sequence<n>{});
  EXPECT_EQ(column.in_features(), hidden);
  EXPECT_EQ(row.out_features(), out);

  const comm::Group<Ds...> group;
  const auto replicated = group.replicate(x);
  const auto sharded = column.forward(replicated);
  auto partial = row.forward(sharded);
  static_assert(std::is_same_v<std::remove_const_t<decltype(sharded)>, Distributed<Sharded<1, Ds...>, float>>);
  static_assert(std::is_same_v<decltype(partial), Distributed<Partial<Ds...>, float>>);

  // Rank r's features are columns [r*step, (r+1)*step) of x W1^T + b1.
  const auto h_ref = reference_linear(to_doubles(x), to_doubles(w1), nullptr, hidden, mid);
  const auto b_ref = to_doubles(b1);
  sharded.for_each_local([&](auto i, const auto& part) {
    constexpr std::size_t r = decltype(i)::value;
    ASSERT_EQ(part.shape(), (Shape{tokens, step})) << "rank " << r;
    std::vector<double> want;
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t c = 0; c < step; ++c) {
        const std::int64_t col = static_cast<std::int64_t>(r) * step + c;
        want.push_back(h_ref[static_cast<std::size_t>(t * mid + col)] +
                       (with_bias ? b_ref[static_cast<std::size_t>(col)] : 0.0));
      }
    }
    EXPECT_TRUE(all_close(to_doubles(part), want, kAtol, kRtol)) << "column shard of rank " << r;
  });

  auto reduced = group.all_reduce(std::move(partial));
  static_assert(std::is_same_v<decltype(reduced), Distributed<Replicated<Ds...>, float>>);
  const auto want = reference_chain(x, w1, with_bias ? &b1 : nullptr, w2);
  reduced.for_each_local([&](auto i, const auto& part) {
    ASSERT_EQ(part.shape(), (Shape{tokens, out}));
    EXPECT_TRUE(all_close(to_doubles(part), want, kAtol, kRtol)) << "reduced output on rank " << decltype(i)::value;
  });
}

TEST(ParallelLinear, ColumnThenRowThenAllReduceOnTwoSlotsMatchesTheReference) {
  check_chain<Cpu<0>, Cpu<1>>(5, 16, 24, 12, /*with_bias=*/false);
  check_chain<Cpu<0>, Cpu<1>>(3, 16, 24, 12, /*with_bias=*/true);
}

TEST(ParallelLinear, ColumnThenRowThenAllReduceOnThreeSlotsMatchesTheReference) {
  check_chain<Cpu<0>, Cpu<1>, Cpu<2>>(4, 10, 18, 7, /*with_bias=*/false);
  check_chain<Cpu<0>, Cpu<1>, Cpu<2>>(1, 10, 18, 7, /*with_bias=*/true);
}

TEST(ParallelLinear, GroupOrderDoesNotMatter) {
  // Rank 0 need not be Cpu<0>: the group is (Cpu<2>, Cpu<0>).
  check_chain<Cpu<2>, Cpu<0>>(2, 8, 6, 4, /*with_bias=*/true);
}

// ---- errors the types cannot catch -------------------------------------------------

TEST(ParallelLinear, RowParallelShardWithABiasIsRefused) {
  expect_error<ValueError>(
      [] {
        nn::RowParallelLinear<float, Cpu<0>, Cpu<1>> row(
            nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 3})),
            nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{4, 3})),
                                      on<Cpu<1>>(random_tensor<float>(Shape{4}))));
      },
      {"RowParallelLinear: shard 1 (on Cpu<1>) has a bias", "after group.all_reduce"});
}

TEST(ParallelLinear, ShardsThatDisagreeAreRefused) {
  expect_error<ShapeError>(
      [] {
        nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>> column(
            nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 3})),
            nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{4, 5}))));
      },
      {"ColumnParallelLinear: shard 1 has in_features 5", "earlier shard has 3"});
  expect_error<ValueError>(
      [] {
        nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>> column(
            nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 3}), random_tensor<float>(Shape{4})),
            nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{4, 3}))));
      },
      {"shard 1 has no bias"});
  expect_error<ShapeError>(
      [] {
        nn::RowParallelLinear<float, Cpu<0>, Cpu<1>> row(
            nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 3})),
            nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{6, 3}))));
      },
      {"RowParallelLinear: shard 1 has out_features 6"});
}

TEST(ParallelLinear, AMismatchedShardWidthIsAShapeErrorAtForward) {
  // Column shards of 4 features meet row shards expecting 3.
  nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>> column(
      nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 5})),
      nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{4, 5}))));
  nn::RowParallelLinear<float, Cpu<0>, Cpu<1>> row(nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{2, 3})),
                                                   nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{2, 3}))));
  const comm::Group<Cpu<0>, Cpu<1>> group;
  const auto h = column.forward(group.replicate(random_tensor<float>(Shape{2, 5})));
  EXPECT_THROW((void)row.forward(h), ShapeError);
}

TEST(ParallelLinear, InputsAreTokensByFeatures) {
  nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>> column(
      nn::Linear<Cpu<0>, float>(random_tensor<float>(Shape{4, 5})),
      nn::Linear<Cpu<1>, float>(on<Cpu<1>>(random_tensor<float>(Shape{4, 5}))));
  const comm::Group<Cpu<0>, Cpu<1>> group;
  expect_shape_error([&] { (void)column.forward(group.replicate(random_tensor<float>(Shape{2, 3, 5}))); },
                     {"ColumnParallelLinear::forward: the part of rank 0 has shape [2, 3, 5]", "[tokens, features]"});
}

// ---- load() from a checkpoint ----------------------------------------------------

// A backend under which this process holds only `mine` (what MPI gives rank
// `mine`); it never reduces.
class OnlyRank final : public comm::Backend {
 public:
  explicit OnlyRank(std::size_t mine) : mine_(mine) {}
  std::string describe() const override { return "test (one rank)"; }
  bool is_local(std::size_t rank) const override { return rank == mine_; }
  void all_reduce_sum(std::span<void* const>, std::size_t, comm::ElementType) override {
    throw CommError("OnlyRank: no collectives in this test");
  }

 private:
  std::size_t mine_;
};

class ParallelLinearLoad : public ::testing::Test {
 protected:
  static constexpr std::int64_t kHidden = 8, kMid = 6, kOut = 5;

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("tessera_parallel_linear_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    up_ = random_tensor<float>(Shape{kMid, kHidden});
    up_bias_ = random_tensor<float>(Shape{kMid});
    down_ = random_tensor<float>(Shape{kOut, kMid});
    odd_ = random_tensor<float>(Shape{5, 4});
    io::save_safetensors(dir_ / "model.safetensors",
                         {io::safetensors_entry("mlp.up_proj.weight", up_),
                          io::safetensors_entry("mlp.up_proj.bias", up_bias_),
                          io::safetensors_entry("mlp.down_proj.weight", down_),
                          io::safetensors_entry("odd.weight", odd_),
                          io::safetensors_entry("biased.weight", down_),
                          io::safetensors_entry("biased.bias", up_bias_)});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  Tensor<Host, float> up_, up_bias_, down_, odd_;
};

template <Device D>
bool same_as_host(const Tensor<D, float>& got, const Tensor<Host, float>& want) {
  return same_bits(to<Host>(got), want);
}

TEST_F(ParallelLinearLoad, EachRankGetsItsRowsOrColumns) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  const comm::Group<Cpu<0>, Cpu<1>> group;
  const auto column = nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "mlp.up_proj", group);
  const auto row = nn::RowParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "mlp.down_proj", group);
  EXPECT_TRUE(same_as_host(column.shard<0>().weight(), slice_of(up_, 0, 0, 3)));
  EXPECT_TRUE(same_as_host(column.shard<1>().weight(), slice_of(up_, 0, 3, 6)));
  ASSERT_TRUE(column.shard<0>().bias() && column.shard<1>().bias());
  EXPECT_TRUE(same_as_host(*column.shard<0>().bias(), slice_of(up_bias_, 0, 0, 3)));
  EXPECT_TRUE(same_as_host(*column.shard<1>().bias(), slice_of(up_bias_, 0, 3, 6)));
  EXPECT_TRUE(same_as_host(row.shard<0>().weight(), slice_of(down_, 1, 0, 3)));
  EXPECT_TRUE(same_as_host(row.shard<1>().weight(), slice_of(down_, 1, 3, 6)));
  EXPECT_FALSE(row.shard<0>().bias().has_value());

  // And the loaded pair computes the layer pair.
  const auto x = random_tensor<float>(Shape{3, kHidden});
  const auto y = group.all_reduce(row.forward(column.forward(group.replicate(x))));
  const auto want = reference_chain(x, up_, &up_bias_, down_);
  EXPECT_TRUE(all_close(to_doubles(y.part<0>()), want, kAtol, kRtol));
  EXPECT_TRUE(all_close(to_doubles(y.part<1>()), want, kAtol, kRtol));
}

TEST_F(ParallelLinearLoad, ThreeRanks) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  const comm::Group<Cpu<0>, Cpu<1>, Cpu<2>> group;
  const auto column = nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>, Cpu<2>>::load(checkpoint, "mlp.up_proj", group);
  const auto row = nn::RowParallelLinear<float, Cpu<0>, Cpu<1>, Cpu<2>>::load(checkpoint, "mlp.down_proj", group);
  EXPECT_TRUE(same_as_host(column.shard<2>().weight(), slice_of(up_, 0, 4, 6)));
  EXPECT_TRUE(same_as_host(row.shard<1>().weight(), slice_of(down_, 1, 2, 4)));
  const auto x = random_tensor<float>(Shape{2, kHidden});
  const auto y = group.all_reduce(row.forward(column.forward(group.replicate(x))));
  EXPECT_TRUE(all_close(to_doubles(y.part<2>()), reference_chain(x, up_, &up_bias_, down_), kAtol, kRtol));
}

TEST_F(ParallelLinearLoad, TheLedgerOfCpu1HoldsExactlyTheRank1Shard) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  checkpoint.validate();  // map and check the file before measuring
  const comm::Group<Cpu<0>, Cpu<1>> group;
  auto& slot1 = ledger<Cpu<1>>();

  const auto before_column = slot1.live();
  const auto column = nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "mlp.up_proj", group);
  // Rows 3..5 of the [6, 8] weight and of the [6] bias, as float.
  EXPECT_EQ(slot1.live() - before_column, (3 * kHidden + 3) * sizeof(float));

  const auto before_row = slot1.live();
  const auto row = nn::RowParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "mlp.down_proj", group);
  // Columns 3..5 of the [5, 6] weight.
  EXPECT_EQ(slot1.live() - before_row, kOut * 3 * sizeof(float));
  EXPECT_EQ(row.shard<1>().weight().bytes(), kOut * 3 * sizeof(float));
}

TEST_F(ParallelLinearLoad, OnlyLocalRanksAreRead) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  checkpoint.validate();
  const comm::Group<Cpu<2>, Cpu<3>> group(std::make_unique<OnlyRank>(1));
  const auto slot2 = ledger<Cpu<2>>().live();
  const auto slot3 = ledger<Cpu<3>>().live();
  const auto column = nn::ColumnParallelLinear<float, Cpu<2>, Cpu<3>>::load(checkpoint, "mlp.up_proj", group);
  EXPECT_FALSE(column.is_local<0>());
  EXPECT_TRUE(column.is_local<1>());
  EXPECT_EQ(ledger<Cpu<2>>().live(), slot2) << "rank 0's rows were loaded by the process that holds only rank 1";
  EXPECT_EQ(ledger<Cpu<3>>().live() - slot3, (3 * kHidden + 3) * sizeof(float));
  EXPECT_TRUE(same_as_host(column.shard<1>().weight(), slice_of(up_, 0, 3, 6)));
  expect_error<ValueError>([&] { (void)column.shard<0>(); },
                           {"ColumnParallelLinear: the shard of rank 0 (on Cpu<2>) is not held by this process"});

  // forward runs the held shard on the held part only.
  Distributed<Replicated<Cpu<2>, Cpu<3>>, float> x;
  const auto input = random_tensor<float>(Shape{2, kHidden});
  x.set<1>(to<Cpu<3>>(input));
  const auto h = column.forward(x);
  EXPECT_FALSE(h.is_local<0>());
  ASSERT_TRUE(h.is_local<1>());
  std::vector<double> bias = to_doubles(slice_of(up_bias_, 0, 3, 6));
  EXPECT_TRUE(all_close(to_doubles(h.part<1>()),
                        reference_linear(to_doubles(input), to_doubles(slice_of(up_, 0, 3, 6)), &bias, kHidden, 3),
                        kAtol, kRtol));
}

TEST_F(ParallelLinearLoad, AnIndivisibleSplitIsAPlanError) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  const comm::Group<Cpu<0>, Cpu<1>> group;
  // odd.weight is [5, 4]: 5 rows do not split over 2 ranks, 4 columns do not split over 3.
  expect_error<PlanError>(
      [&] { (void)nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "odd", group); },
      {"ColumnParallelLinear::load: 'odd.weight' has 5 rows (out_features), which 2 devices do not divide evenly"});
  const comm::Group<Cpu<0>, Cpu<1>, Cpu<2>> three;
  expect_error<PlanError>(
      [&] { (void)nn::RowParallelLinear<float, Cpu<0>, Cpu<1>, Cpu<2>>::load(checkpoint, "odd", three); },
      {"RowParallelLinear::load: 'odd.weight' has 4 columns (in_features), which 3 devices do not divide evenly"});
}

TEST_F(ParallelLinearLoad, ARowParallelLayerWithABiasInTheCheckpointIsRefused) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  const comm::Group<Cpu<0>, Cpu<1>> group;
  expect_error<ValueError>(
      [&] { (void)nn::RowParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "biased", group); },
      {"the checkpoint has 'biased.bias'", "add it after group.all_reduce"});
}

TEST_F(ParallelLinearLoad, AMissingWeightNamesTheTensor) {
  const auto checkpoint = io::Checkpoint::open(dir_);
  const comm::Group<Cpu<0>, Cpu<1>> group;
  expect_error<ValueError>(
      [&] { (void)nn::ColumnParallelLinear<float, Cpu<0>, Cpu<1>>::load(checkpoint, "mlp.gate_proj", group); },
      {"mlp.gate_proj.weight"});
}

}  // namespace
}  // namespace tessera::testing
