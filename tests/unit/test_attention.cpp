// Typed tests of ops/attention.hpp against a naive double-precision reference
// (explicit score matrix, exp, normalise).
#include <tessera/ops/attention.hpp>

#include <cmath>
#include <initializer_list>
#include <limits>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

template <class C>
class Attention : public ::testing::Test {};
TYPED_TEST_SUITE(Attention, FloatConfigs, ConfigName);

using ops::AttentionOptions;
using ops::MaskKind;

// Sizes of one attention problem: q [sq, hq, dh], k [skv, hkv, dh], v [skv, hkv, dv].
struct Problem {
  std::int64_t sq, skv, hq, hkv, dh, dv;
};

std::ostream& operator<<(std::ostream& os, const Problem& p) {
  return os << "Sq=" << p.sq << " Skv=" << p.skv << " Hq=" << p.hq << " Hkv=" << p.hkv << " Dh=" << p.dh
            << " Dv=" << p.dv;
}

const char* mask_name(MaskKind mask) { return mask == MaskKind::Causal ? "causal" : "full"; }

// Element [t, h, d] of a row-major [tokens, heads, width] tensor.
double at(const std::vector<double>& x, std::int64_t t, std::int64_t heads, std::int64_t h, std::int64_t width,
          std::int64_t d) {
  return x[static_cast<std::size_t>((t * heads + h) * width + d)];
}

// Reference in double, segment by segment and head by head: an explicit
// [lq, lk] score matrix (-inf where masked), softmax (all -inf rows give
// zeros), then P V. cu_q / cu_k are the segment offsets ({0, S} for one).
std::vector<double> attention_reference(const std::vector<double>& q, const std::vector<double>& k,
                                        const std::vector<double>& v, const Problem& p, double scale, MaskKind mask,
                                        const std::vector<std::int64_t>& cu_q, const std::vector<std::int64_t>& cu_k) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> out(static_cast<std::size_t>(p.sq * p.hq * p.dv), 0.0);
  for (std::size_t s = 0; s + 1 < cu_q.size(); ++s) {
    const std::int64_t q0 = cu_q[s], lq = cu_q[s + 1] - q0, k0 = cu_k[s], lk = cu_k[s + 1] - k0;
    for (std::int64_t h = 0; h < p.hq; ++h) {
      const std::int64_t kvh = h / (p.hq / p.hkv);
      std::vector<std::vector<double>> scores(static_cast<std::size_t>(lq),
                                              std::vector<double>(static_cast<std::size_t>(lk)));
      for (std::int64_t i = 0; i < lq; ++i) {
        for (std::int64_t j = 0; j < lk; ++j) {
          double dot = 0.0;
          for (std::int64_t d = 0; d < p.dh; ++d)
            dot += at(q, q0 + i, p.hq, h, p.dh, d) * at(k, k0 + j, p.hkv, kvh, p.dh, d);
          const bool visible = mask == MaskKind::Full || j <= i + (lk - lq);
          scores[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = visible ? scale * dot : neg_inf;
        }
      }
      for (std::int64_t i = 0; i < lq; ++i) {
        auto& row = scores[static_cast<std::size_t>(i)];
        double max = neg_inf;
        for (double x : row) max = std::max(max, x);
        if (max == neg_inf) continue;  // no visible key: zeros
        double sum = 0.0;
        for (double& x : row) sum += (x = std::exp(x - max));
        for (std::int64_t d = 0; d < p.dv; ++d) {
          double acc = 0.0;
          for (std::int64_t j = 0; j < lk; ++j)
            acc += row[static_cast<std::size_t>(j)] * at(v, k0 + j, p.hkv, kvh, p.dv, d);
          out[static_cast<std::size_t>(((q0 + i) * p.hq + h) * p.dv + d)] = acc / sum;
        }
      }
    }
  }
  return out;
}

// Random host inputs for a problem, rounded to T.
template <class T>
struct Inputs {
  Tensor<Host, T> q, k, v;
  explicit Inputs(const Problem& p)
      : q(random_tensor<T>({p.sq, p.hq, p.dh})), k(random_tensor<T>({p.skv, p.hkv, p.dh})),
        v(random_tensor<T>({p.skv, p.hkv, p.dv})) {}
  std::vector<double> reference(const Problem& p, double scale, MaskKind mask, const std::vector<std::int64_t>& cu_q,
                                const std::vector<std::int64_t>& cu_k) const {
    return attention_reference(to_doubles(q), to_doubles(k), to_doubles(v), p, scale, mask, cu_q, cu_k);
  }
};

double default_scale(const Problem& p) { return 1.0 / std::sqrt(static_cast<double>(p.dh)); }

// Runs ops::attention on D with host inputs and returns the result on the host.
template <class D, class T>
Tensor<Host, T> run_attention(const Inputs<T>& in, const AttentionOptions& opt) {
  return to<Host>(ops::attention(to<D>(in.q), to<D>(in.k), to<D>(in.v), opt));
}

TYPED_TEST(Attention, FullAndCausalMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<Problem> problems = {
      {16, 16, 4, 4, 64, 64},    // MHA, Sq == Skv
      {13, 13, 8, 2, 80, 80},    // GQA 8:2
      {1, 37, 8, 2, 128, 128},   // decode against a cache
      {5, 23, 4, 1, 7, 7},       // MQA, Sq < Skv, odd head dim
      {9, 9, 3, 3, 7, 7},
      {6, 11, 4, 2, 16, 24},     // v has its own head dim
      {11, 11, 8, 8, 128, 128},
  };
  for (const auto& p : problems) {
    const Inputs<T> in(p);
    for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
      const auto out = run_attention<D>(in, {.mask = mask});
      ASSERT_EQ(out.shape(), (Shape{p.sq, p.hq, p.dv}));
      EXPECT_TRUE(all_close<T>(to_doubles(out), in.reference(p, default_scale(p), mask, {0, p.sq}, {0, p.skv})))
          << p << " " << mask_name(mask);
    }
  }
}

// Sizes that exercise the CUDA kernels' edges (and are cheap on the CPU):
// the tensor-core head dims 64, 80 and 128 at lengths that are not multiples
// of the 64-row query and 64-key tiles, Sq != Skv under the causal mask, a
// long causal prefill, and single-token decoding against 1000+ keys (the
// flash-decoding path: key splits, GQA groups of up to 12 query heads, an
// odd head dim and Dv != Dh).
TYPED_TEST(Attention, KernelTileEdgesMatchReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<Problem> problems = {
      {70, 70, 4, 2, 64, 64},       // one full query tile and a partial one
      {65, 130, 2, 1, 80, 80},      // causal offset 65: key tiles cut by the mask
      {129, 100, 2, 2, 128, 128},   // Sq > Skv: causal rows 0..28 see no key
      {300, 300, 1, 1, 64, 64},     // long causal prefill, 5 query tiles
      {100, 164, 3, 3, 64, 64},
      {1, 1500, 8, 2, 128, 128},    // decode, GQA 4:1
      {1, 1200, 4, 4, 64, 64},      // decode, MHA
      {1, 1100, 3, 1, 7, 7},        // decode, odd head dim (scalar loads)
      {1, 1030, 4, 2, 16, 24},      // decode, Dv != Dh
      {1, 700, 12, 1, 64, 64},      // decode, 12 query heads on one kv head
      {1, 0, 4, 2, 64, 64},         // no keys at all: zeros
  };
  for (const auto& p : problems) {
    const Inputs<T> in(p);
    for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
      const auto out = run_attention<D>(in, {.mask = mask});
      ASSERT_EQ(out.shape(), (Shape{p.sq, p.hq, p.dv}));
      EXPECT_TRUE(all_close<T>(to_doubles(out), in.reference(p, default_scale(p), mask, {0, p.sq}, {0, p.skv})))
          << p << " " << mask_name(mask);
    }
  }
}

TYPED_TEST(Attention, CustomScale) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Problem p{10, 10, 4, 2, 16, 16};
  const Inputs<T> in(p);
  for (float scale : {0.05f, 0.9f}) {  // nearly uniform, then peaked
    for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
      const auto out = run_attention<D>(in, {.scale = scale, .mask = mask});
      EXPECT_TRUE(all_close<T>(to_doubles(out), in.reference(p, static_cast<double>(scale), mask, {0, 10}, {0, 10})))
          << "scale " << scale << " " << mask_name(mask);
    }
  }
}

// Causal with Sq > Skv: query i sees keys j <= i - 3, so rows 0..2 see none
// and are zeros (bottom-right alignment, as FlashAttention-2).
TYPED_TEST(Attention, CausalRowsWithoutKeysAreZeros) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Problem p{7, 4, 2, 1, 8, 8};
  const Inputs<T> in(p);
  const auto out = run_attention<D>(in, {.mask = MaskKind::Causal});
  EXPECT_TRUE(all_close<T>(to_doubles(out), in.reference(p, default_scale(p), MaskKind::Causal, {0, 7}, {0, 4})));
  for (std::int64_t i = 0; i < 3; ++i) {
    for (std::int64_t h = 0; h < p.hq; ++h) {
      for (std::int64_t d = 0; d < p.dv; ++d)
        EXPECT_EQ(convert<float>(out.at(i, h, d)), 0.0f) << i << "," << h << "," << d;
    }
  }
  // Row 3 sees exactly key 0: its output is v[0] of the only kv head.
  for (std::int64_t d = 0; d < p.dv; ++d) EXPECT_EQ(convert<float>(out.at(3, 1, d)), convert<float>(in.v.at(0, 0, d)));
}

TYPED_TEST(Attention, AcceptsStridedViews) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  // q, k and v as slices of one fused [S, 3 * H, Dh] projection.
  const Problem p{9, 9, 2, 2, 16, 16};
  const auto hqkv = random_tensor<T>({9, 6, 16});
  const auto qkv = to<D>(hqkv);
  const auto out = to<Host>(ops::attention(qkv.slice(1, 0, 2), qkv.slice(1, 2, 4), qkv.slice(1, 4, 6),
                                           {.mask = MaskKind::Causal}));
  const auto expected = attention_reference(to_doubles(hqkv.slice(1, 0, 2)), to_doubles(hqkv.slice(1, 2, 4)),
                                            to_doubles(hqkv.slice(1, 4, 6)), p, default_scale(p), MaskKind::Causal,
                                            {0, 9}, {0, 9});
  EXPECT_TRUE(all_close<T>(to_doubles(out), expected));
}

// The tensor-core head dim read in place from a fused [S, 3H, Dh] qkv
// projection (token stride 3 H Dh), with GQA and the causal mask.
TYPED_TEST(Attention, AcceptsFusedQkvSlicesAtTensorCoreHeadDim) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const Problem p{77, 77, 4, 2, 64, 64};
  const auto hqkv = random_tensor<T>({77, 8, 64});  // 4 query heads, 2 key heads, 2 value heads
  const auto qkv = to<D>(hqkv);
  for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
    const auto out =
        to<Host>(ops::attention(qkv.slice(1, 0, 4), qkv.slice(1, 4, 6), qkv.slice(1, 6, 8), {.mask = mask}));
    const auto expected =
        attention_reference(to_doubles(hqkv.slice(1, 0, 4)), to_doubles(hqkv.slice(1, 4, 6)),
                            to_doubles(hqkv.slice(1, 6, 8)), p, default_scale(p), mask, {0, 77}, {0, 77});
    EXPECT_TRUE(all_close<T>(to_doubles(out), expected)) << mask_name(mask);
  }
}

struct VarlenCase {
  std::vector<std::int64_t> q_lens, k_lens;
};

std::vector<std::int64_t> cumulative(const std::vector<std::int64_t>& lens) {
  std::vector<std::int64_t> cu{0};
  for (std::int64_t l : lens) cu.push_back(cu.back() + l);
  return cu;
}

template <class D>
Tensor<D, std::int32_t> cu_tensor(const std::vector<std::int64_t>& cu) {
  std::vector<std::int32_t> values(cu.begin(), cu.end());
  return to<D>(
      Tensor<Host, std::int32_t>::from(std::span<const std::int32_t>(values), {static_cast<std::int64_t>(cu.size())}));
}

// Three segments of different lengths, one of length 1; self-attention
// (q lengths == k lengths) and with a cached prefix (k longer than q).
TYPED_TEST(Attention, VarlenMatchesReferenceAndSeparateRuns) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const std::vector<VarlenCase> cases = {{{5, 1, 9}, {5, 1, 9}}, {{5, 1, 9}, {8, 3, 9}}, {{4, 0, 2, 3}, {6, 2, 0, 3}}};
  for (const auto& c : cases) {
    const auto cu_q = cumulative(c.q_lens), cu_k = cumulative(c.k_lens);
    const Problem p{cu_q.back(), cu_k.back(), 4, 2, 16, 12};
    const Inputs<T> in(p);
    const auto q = to<D>(in.q), k = to<D>(in.k), v = to<D>(in.v);
    for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
      const auto out = to<Host>(ops::attention(q, k, v, cu_tensor<D>(cu_q), cu_tensor<D>(cu_k), {.mask = mask}));
      ASSERT_EQ(out.shape(), (Shape{p.sq, p.hq, p.dv}));
      const auto actual = to_doubles(out);
      EXPECT_TRUE(all_close<T>(actual, in.reference(p, default_scale(p), mask, cu_q, cu_k)))
          << p << " " << mask_name(mask);
      // Segment by segment as separate calls on views, concatenated.
      std::vector<double> separate;
      for (std::size_t s = 0; s + 1 < cu_q.size(); ++s) {
        const auto part = ops::attention(q.slice(0, cu_q[s], cu_q[s + 1]), k.slice(0, cu_k[s], cu_k[s + 1]),
                                         v.slice(0, cu_k[s], cu_k[s + 1]), {.mask = mask});
        const auto doubles = to_doubles(to<Host>(part));
        separate.insert(separate.end(), doubles.begin(), doubles.end());
      }
      EXPECT_TRUE(all_close<T>(actual, separate)) << p << " " << mask_name(mask) << " vs separate runs";
    }
  }
}

// Variable-length batches at the tensor-core head dims: segments longer than
// a tile next to segments of one token and empty ones; and a batch of
// single-token queries against caches of different lengths (decoding).
TYPED_TEST(Attention, VarlenAtKernelSizesMatchesReference) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  struct Case {
    VarlenCase lens;
    std::int64_t hq, hkv, dh;
  };
  const std::vector<Case> cases = {
      {{{70, 1, 130}, {70, 1, 130}}, 2, 1, 64},
      {{{70, 1, 0, 65}, {100, 65, 3, 65}}, 2, 1, 128},
      {{{33, 90}, {33, 90}}, 2, 2, 80},
      {{{1, 1, 0, 1, 1}, {300, 0, 5, 1000, 1}}, 4, 1, 128},  // decode batch
      {{{1, 1, 1}, {9, 700, 40}}, 6, 2, 7},
  };
  for (const auto& c : cases) {
    const auto cu_q = cumulative(c.lens.q_lens), cu_k = cumulative(c.lens.k_lens);
    const Problem p{cu_q.back(), cu_k.back(), c.hq, c.hkv, c.dh, c.dh};
    const Inputs<T> in(p);
    const auto q = to<D>(in.q), k = to<D>(in.k), v = to<D>(in.v);
    for (MaskKind mask : {MaskKind::Full, MaskKind::Causal}) {
      const auto out = to<Host>(ops::attention(q, k, v, cu_tensor<D>(cu_q), cu_tensor<D>(cu_k), {.mask = mask}));
      ASSERT_EQ(out.shape(), (Shape{p.sq, p.hq, p.dv}));
      EXPECT_TRUE(all_close<T>(to_doubles(out), in.reference(p, default_scale(p), mask, cu_q, cu_k)))
          << p << " " << mask_name(mask);
    }
  }
}

TYPED_TEST(Attention, ShapeErrorsNameTheOpAndArgument) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto make = [](Shape s) { return to<D>(random_tensor<T>(s)); };
  const auto q = make({4, 6, 16});
  expect_error<ShapeError>([&] { (void)ops::attention(q, make({4, 4, 16}), make({4, 4, 16})); },
                           {"ops::attention", "Hq = 6", "Hkv = 4"});
  expect_error<ShapeError>([&] { (void)ops::attention(q, make({4, 2, 8}), make({4, 2, 8})); },
                           {"ops::attention", "head dim", "[4, 6, 16]", "[4, 2, 8]"});
  expect_error<ShapeError>([&] { (void)ops::attention(q, make({4, 2, 16}), make({5, 2, 16})); },
                           {"ops::attention", "k has 4 tokens", "v has 5"});
  expect_error<ShapeError>([&] { (void)ops::attention(q, make({4, 2, 16}), make({4, 3, 16})); },
                           {"ops::attention", "kv heads"});
  expect_error<ShapeError>([&] { (void)ops::attention(make({4, 96}), make({4, 2, 16}), make({4, 2, 16})); },
                           {"ops::attention", "q must be"});
  expect_error<ValueError>(
      [&] { (void)ops::attention(q, make({4, 2, 16}), make({4, 2, 16}), {.scale = std::nanf("")}); },
      {"ops::attention", "scale"});
}

TYPED_TEST(Attention, BadCuSeqlensAreRejected) {
  using D = typename TypeParam::device;
  using T = typename TypeParam::dtype;
  TESSERA_SKIP_UNLESS_AVAILABLE(D);
  const auto q = to<D>(random_tensor<T>({6, 4, 8}));
  const auto k = to<D>(random_tensor<T>({7, 2, 8}));
  const auto v = to<D>(random_tensor<T>({7, 2, 8}));
  const auto good_q = cu_tensor<D>({0, 2, 6});
  const auto good_k = cu_tensor<D>({0, 3, 7});
  const auto run = [&](const auto& cu_q, const auto& cu_k) { (void)ops::attention(q, k, v, cu_q, cu_k); };
  EXPECT_NO_THROW(run(good_q, good_k));
  expect_error<ValueError>([&] { run(cu_tensor<D>({1, 2, 6}), good_k); }, {"ops::attention", "cu_seqlens_q[0] is 1"});
  expect_error<ValueError>([&] { run(good_q, cu_tensor<D>({0, 5, 3})); },
                           {"ops::attention", "cu_seqlens_k decreases at index 2"});
  expect_error<ValueError>([&] { run(cu_tensor<D>({0, 2, 5}), good_k); },
                           {"ops::attention", "cu_seqlens_q[2]", "q has 6 tokens"});
  expect_error<ValueError>([&] { run(good_q, cu_tensor<D>({0, 3, 8})); },
                           {"ops::attention", "cu_seqlens_k[2]", "k has 7 tokens"});
  expect_error<ShapeError>([&] { run(cu_tensor<D>({0, 2, 4, 6}), good_k); },
                           {"ops::attention", "cu_seqlens_q has 4 entries", "cu_seqlens_k has 3"});
  const auto matrix = to<D>(Tensor<Host, std::int32_t>::from({0, 2, 2, 6}, {2, 2}));
  expect_error<ShapeError>([&] { run(matrix, good_k); }, {"ops::attention", "cu_seqlens_q", "[2, 2]"});
}

}  // namespace
}  // namespace tessera::testing
