// Typed tests of ops/embedding.hpp: an exact row gather, and range errors
// that name the id, its position and the vocabulary size.
#include <tessera/ops/embedding.hpp>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Embedding : public ::testing::Test {};
TYPED_TEST_SUITE(Embedding, FloatConfigs, ConfigName);

// Reference gather in double: out[k, :] = table[ids[k], :].
std::vector<double> gather_reference(const std::vector<double>& table, std::int64_t hidden,
                                     const std::vector<double>& ids) {
  std::vector<double> out;
  for (double id : ids) {
    const auto row = static_cast<std::size_t>(id) * static_cast<std::size_t>(hidden);
    out.insert(out.end(), table.begin() + static_cast<std::ptrdiff_t>(row),
               table.begin() + static_cast<std::ptrdiff_t>(row + static_cast<std::size_t>(hidden)));
  }
  return out;
}

Shape with_hidden(const Shape& ids, std::int64_t hidden) {
  Shape s = ids;
  s.push_back(hidden);
  return s;
}

template <class D, class T, class I>
void check_gather(const Shape& ids_shape, std::int64_t vocab, std::int64_t hidden) {
  const auto htable = random_tensor<T>({vocab, hidden});
  const auto hids = random_ints<I>(ids_shape, 0, vocab - 1);
  const auto out = to<Host>(ops::embedding(to<D>(htable), to<D>(hids)));
  ASSERT_EQ(out.shape(), with_hidden(ids_shape, hidden));
  // A gather is exact: no tolerance.
  EXPECT_TRUE(all_close(to_doubles(out), gather_reference(to_doubles(htable), hidden, to_doubles(hids)), 0.0, 0.0))
      << "ids " << ids_shape << " (" << dtype_name<I>() << ") table [" << vocab << ", " << hidden << "]";
}

TYPED_TEST(Embedding, GathersRowsForAnyIdShape) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  for (const Shape& ids : {Shape{}, Shape{1}, Shape{5}, Shape{2, 3}, Shape{2, 1, 4}}) {
    for (std::int64_t hidden : {1, 7, 33, 896}) {
      check_gather<D, T, std::int32_t>(ids, 11, hidden);
      check_gather<D, T, std::int64_t>(ids, 11, hidden);
    }
  }
  check_gather<D, T, std::int64_t>({5}, 1, 7);      // a one-row table
  check_gather<D, T, std::int32_t>({0}, 11, 7);     // no ids: an empty [0, H] result
  check_gather<D, T, std::int64_t>({3, 0}, 11, 7);
}

TYPED_TEST(Embedding, AcceptsStridedIdsAndTables) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // ids: the transpose of a [4, 3] tensor; table: the transpose of [H, V].
  const auto hids = random_ints<std::int64_t>({4, 3}, 0, 8);
  const auto hbase = random_tensor<T>({7, 9});
  const auto ids = to<D>(hids);
  const auto base = to<D>(hbase);
  const auto out = to<Host>(ops::embedding(base.transpose(0, 1), ids.transpose(0, 1)));
  ASSERT_EQ(out.shape(), (Shape{3, 4, 7}));
  EXPECT_TRUE(all_close(to_doubles(out),
                        gather_reference(to_doubles(hbase.transpose(0, 1)), 7, to_doubles(hids.transpose(0, 1))), 0.0,
                        0.0));
  // A table slice (rows 2..8 of the vocabulary) is a view too.
  const auto htable = random_tensor<T>({9, 5});
  const auto table = to<D>(htable);
  const auto hsmall = random_ints<std::int32_t>({6}, 0, 5);
  const auto sliced = to<Host>(ops::embedding(table.slice(0, 2, 8), to<D>(hsmall)));
  EXPECT_TRUE(all_close(to_doubles(sliced), gather_reference(to_doubles(htable.slice(0, 2, 8)), 5, to_doubles(hsmall)),
                        0.0, 0.0));
}

TYPED_TEST(Embedding, OutOfRangeIdsAreValueErrorsNamingIdPositionAndVocab) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto table = to<D>(random_tensor<T>({11, 4}));
  const auto too_big = to<D>(Tensor<Host, std::int32_t>::from({0, 3, 10, 5, 11, 2}, {2, 3}));
  try {
    (void)ops::embedding(table, too_big);
    FAIL() << "expected a ValueError";
  } catch (const ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ops::embedding"), std::string::npos) << what;
    EXPECT_NE(what.find("id 11"), std::string::npos) << what;
    EXPECT_NE(what.find("position 4"), std::string::npos) << what;
    EXPECT_NE(what.find("11 rows"), std::string::npos) << what;
    EXPECT_NE(what.find("[2, 3]"), std::string::npos) << what;
  }
  const auto negative = to<D>(Tensor<Host, std::int64_t>::from({-1}, {1}));
  try {
    (void)ops::embedding(table, negative);
    FAIL() << "expected a ValueError";
  } catch (const ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("id -1"), std::string::npos) << what;
    EXPECT_NE(what.find("position 0"), std::string::npos) << what;
  }
  // Large int64 ids are not truncated in the message.
  const auto huge = to<D>(Tensor<Host, std::int64_t>::from({1, 5000000000LL}, {2}));
  try {
    (void)ops::embedding(table, huge);
    FAIL() << "expected a ValueError";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("id 5000000000"), std::string::npos) << e.what();
  }
  // The table must be [V, H].
  EXPECT_THROW((void)ops::embedding(to<D>(random_tensor<T>({11})), too_big), ShapeError);
}

}  // namespace
}  // namespace tessera::testing
