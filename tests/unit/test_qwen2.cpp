// Golden tests of models/qwen2.hpp against transformers' Qwen2ForCausalLM:
// tests/fixtures/qwen2/{untied,tied} are real HF checkpoint directories (two
// shards, config.json, generation_config.json) with reference outputs written
// by tools/fixtures/make_qwen2_fixtures.py (pinned torch and transformers).
// CPU float32 must reproduce the logits at every prompt position within 1e-4
// of the logits' largest magnitude, the 32-token greedy continuations exactly,
// and batched prompts must equal the same prompts run one by one.
#include <tessera/io/safetensors.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/ops/elementwise.hpp>
#include <tessera/ops/reduce.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

using Model = models::Qwen2<Single<Cpu<0>>, float>;

std::filesystem::path fixture_dir(const std::string& variant) {
  return tessera::testing::fixtures_dir() / "qwen2" / variant;
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;

  explicit Reference(const std::string& variant)
      : meta(nlohmann::json::parse(std::ifstream(fixture_dir(variant) / "reference.json"))),
        arrays(io::SafetensorsFile::open(fixture_dir(variant) / "reference.safetensors")) {}

  std::vector<std::int64_t> ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  Tensor<Host, float> floats(const std::string& name) const { return arrays.load<Host, float>(name); }
  std::vector<std::string> prompts() const {
    std::vector<std::string> names;
    for (const auto& [name, _] : meta["prompts"].items()) names.push_back(name);
    return names;
  }
};

const Model& model(const std::string& variant) {
  static const Model untied = Model::load(fixture_dir("untied"));
  static const Model tied = Model::load(fixture_dir("tied"));
  return variant == "tied" ? tied : untied;
}

double max_abs(const Tensor<Host, float>& t) {
  double m = 0.0;
  for (float v : t.span()) m = std::max(m, static_cast<double>(std::abs(v)));
  return m;
}

// Row `row` of `actual` against row `ref_row` of `expected` (both [*, V]).
::testing::AssertionResult rows_close(const Tensor<Host, float>& actual, std::int64_t row,
                                      const Tensor<Host, float>& expected, std::int64_t ref_row, double tol) {
  const std::int64_t vocab = expected.dim(1);
  for (std::int64_t j = 0; j < vocab; ++j) {
    const double a = actual.at(row, j), e = expected.at(ref_row, j);
    if (!(std::abs(a - e) <= tol)) {
      return ::testing::AssertionFailure() << "position " << row << ", token " << j << ": got " << a << ", expected "
                                           << e << " (tolerance " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

std::int64_t argmax_row(const Tensor<Host, float>& logits, std::int64_t row) {
  std::int64_t best = 0;
  for (std::int64_t j = 1; j < logits.dim(1); ++j) {
    if (logits.at(row, j) > logits.at(row, best)) best = j;
  }
  return best;
}

class Qwen2Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen2Golden, PromptLogitsMatchTransformers) {
  const Reference ref(GetParam());
  for (const std::string& prompt : ref.prompts()) {
    const auto ids = ref.ints("prompt." + prompt + ".input_ids");
    const auto expected = ref.floats("prompt." + prompt + ".logits");
    const auto positions = ref.ints("prompt." + prompt + ".logits_positions");
    auto cache = model(GetParam()).new_cache(256);
    const auto logits = to<Host>(model(GetParam()).forward(ids, cache));
    ASSERT_EQ(logits.shape(), Shape({static_cast<std::int64_t>(ids.size()), expected.dim(1)})) << prompt;
    const double tol = 1e-4 * max_abs(expected);
    for (std::size_t r = 0; r < positions.size(); ++r) {
      EXPECT_TRUE(rows_close(logits, positions[r], expected, static_cast<std::int64_t>(r), tol)) << prompt;
    }
  }
}

TEST_P(Qwen2Golden, GreedyContinuationMatchesTransformersFor32Tokens) {
  const Reference ref(GetParam());
  for (const std::string& prompt : ref.prompts()) {
    const auto ids = ref.ints("prompt." + prompt + ".input_ids");
    const auto expected = ref.ints("prompt." + prompt + ".greedy.tokens");
    const auto step_logits = ref.floats("prompt." + prompt + ".greedy.logits");
    auto cache = model(GetParam()).new_cache(256);
    auto logits = to<Host>(model(GetParam()).forward(ids, cache));
    std::vector<std::int64_t> generated;
    for (std::size_t step = 0; step < expected.size(); ++step) {
      // Decode steps run through the KV cache one token at a time; their
      // logits match the reference's saved steps too.
      if (static_cast<std::int64_t>(step) < step_logits.dim(0)) {
        EXPECT_TRUE(rows_close(logits, logits.dim(0) - 1, step_logits, static_cast<std::int64_t>(step),
                               1e-4 * max_abs(step_logits)))
            << prompt << " step " << step;
      }
      const std::int64_t next = argmax_row(logits, logits.dim(0) - 1);
      generated.push_back(next);
      logits = to<Host>(model(GetParam()).forward(std::span<const std::int64_t>(&next, 1), cache));
    }
    EXPECT_EQ(generated, expected) << prompt;
  }
}

TEST_P(Qwen2Golden, BatchedPromptsEqualThePromptsOneByOne) {
  const Reference ref(GetParam());
  const Model& m = model(GetParam());
  // The reference's batch: these prompts, left-padded to one width with an
  // attention mask in transformers; tessera batches them unpadded.
  std::vector<std::vector<std::int64_t>> prompts;
  for (const auto& prompt : ref.meta["batch"]["order"]) {
    prompts.push_back(ref.ints("prompt." + prompt.get<std::string>() + ".input_ids"));
  }
  std::vector<Model::Cache> caches;
  for (std::size_t i = 0; i < prompts.size(); ++i) caches.push_back(m.new_cache(256));
  std::vector<std::span<const std::int64_t>> spans(prompts.begin(), prompts.end());
  std::vector<Model::Cache*> cache_ptrs;
  for (auto& c : caches) cache_ptrs.push_back(&c);
  const auto batched = m.forward_batch(spans, cache_ptrs);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto single_cache = m.new_cache(256);
    const auto single = to<Host>(m.forward(prompts[i], single_cache));
    const auto together = to<Host>(batched[i]);
    ASSERT_EQ(single.shape(), together.shape());
    // The same GEMMs over more rows: equal to float rounding of the BLAS
    // blocking, far inside the golden tolerance.
    EXPECT_TRUE(all_close(to_doubles(together), to_doubles(single), 1e-5 * max_abs(single), 0.0)) << "prompt " << i;
  }
  // A decode step for all sequences at once continues each cache correctly.
  std::vector<std::int64_t> next(prompts.size());
  std::vector<std::span<const std::int64_t>> step;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto l = to<Host>(batched[i]);
    next[i] = argmax_row(l, l.dim(0) - 1);
  }
  for (std::size_t i = 0; i < prompts.size(); ++i) step.emplace_back(&next[i], 1);
  const auto decoded = m.forward_batch(step, cache_ptrs);
  const auto expected_tokens = ref.ints("batch.greedy.tokens");     // [B, 32]
  const auto expected_steps = ref.floats("batch.greedy.logits");    // [steps, B, V]
  const std::int64_t vocab = expected_steps.dim(2);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(next[i], expected_tokens[i * 32]) << "sequence " << i;
    const auto l = to<Host>(decoded[i]);
    EXPECT_EQ(argmax_row(l, 0), expected_tokens[i * 32 + 1]) << "sequence " << i;
    if (expected_steps.dim(0) > 1) {
      auto row = contiguous(expected_steps.view().select(0, 1).select(0, static_cast<std::int64_t>(i)));
      row.reshape_inplace(Shape{1, vocab});
      EXPECT_TRUE(rows_close(l, 0, row, 0, 1e-4 * max_abs(row))) << "sequence " << i;
    }
  }
}

TEST_P(Qwen2Golden, LeftPaddedBatchWithAttentionMaskMatchesTransformers) {
  // transformers' own padded batch (input_ids + attention_mask) gives, at
  // each row's last position, the first-step logits it recorded.
  const Reference ref(GetParam());
  const Model& m = model(GetParam());
  const auto ids = ref.arrays.load<Host, std::int64_t>("batch.input_ids");
  const auto mask = ref.arrays.load<Host, std::int64_t>("batch.attention_mask");
  const auto steps = ref.floats("batch.greedy.logits");  // [steps, B, V]
  std::vector<Model::Cache> caches;
  for (std::int64_t i = 0; i < ids.dim(0); ++i) caches.push_back(m.new_cache(256));
  std::vector<Model::Cache*> cache_ptrs;
  for (auto& c : caches) cache_ptrs.push_back(&c);
  const auto out = m.forward_padded(ids, mask, cache_ptrs);
  ASSERT_EQ(out.size(), static_cast<std::size_t>(ids.dim(0)));
  for (std::int64_t i = 0; i < ids.dim(0); ++i) {
    const auto logits = to<Host>(out[static_cast<std::size_t>(i)]);
    auto expected = contiguous(steps.view().select(0, 0).select(0, i));
    expected.reshape_inplace(Shape{1, steps.dim(2)});
    EXPECT_TRUE(rows_close(logits, logits.dim(0) - 1, expected, 0, 1e-4 * max_abs(expected))) << "row " << i;
  }
  // Padding anywhere but on the left is refused.
  auto bad_mask = contiguous(mask);
  bad_mask.span()[static_cast<std::size_t>(mask.dim(1) - 1)] = 0;
  for (auto& c : caches) c.clear();
  expect_error<ValueError>([&] { (void)m.forward_padded(ids, bad_mask, cache_ptrs); }, {"only left padding"});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen2Golden, ::testing::Values("untied", "tied"));

// Indices of the k largest entries of row `row`.
std::vector<std::int64_t> top_k(const Tensor<Host, float>& logits, std::int64_t row, std::size_t k) {
  std::vector<std::int64_t> idx(static_cast<std::size_t>(logits.dim(1)));
  for (std::size_t j = 0; j < idx.size(); ++j) idx[j] = static_cast<std::int64_t>(j);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                    [&](std::int64_t a, std::int64_t b) { return logits.at(row, a) > logits.at(row, b); });
  idx.resize(k);
  return idx;
}

bool contains(const std::vector<std::int64_t>& v, std::int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// CUDA bf16 against the validated CPU float32 model (which reproduces the
// reference above), with vLLM's rule: greedy tokens equal until the first
// divergence, and there each side's token is in the other's top 5.
TEST_P(Qwen2Golden, CudaBf16GreedyFollowsTheReferenceByTheTop5Rule) {
  TESSERA_SKIP_UNLESS_AVAILABLE(Cuda<0>);
  using GpuModel = models::Qwen2<Single<Cuda<0>>, bf16>;
  const GpuModel gpu = GpuModel::load(fixture_dir(GetParam()));
  const Reference ref(GetParam());
  for (const std::string& prompt : ref.prompts()) {
    const auto ids = ref.ints("prompt." + prompt + ".input_ids");
    auto cpu_cache = model(GetParam()).new_cache(256);
    auto gpu_cache = gpu.new_cache(256);
    auto cpu_logits = to<Host>(model(GetParam()).forward(ids, cpu_cache));
    auto gpu_logits = to<Host>(ops::cast<float>(gpu.forward(ids, gpu_cache)));
    for (int step = 0; step < 32; ++step) {
      const std::int64_t cpu_next = argmax_row(cpu_logits, cpu_logits.dim(0) - 1);
      const std::int64_t gpu_next = argmax_row(gpu_logits, gpu_logits.dim(0) - 1);
      if (cpu_next != gpu_next) {
        EXPECT_TRUE(contains(top_k(cpu_logits, cpu_logits.dim(0) - 1, 5), gpu_next)) << prompt << " step " << step;
        EXPECT_TRUE(contains(top_k(gpu_logits, gpu_logits.dim(0) - 1, 5), cpu_next)) << prompt << " step " << step;
        break;
      }
      cpu_logits = to<Host>(model(GetParam()).forward(std::span<const std::int64_t>(&cpu_next, 1), cpu_cache));
      gpu_logits = to<Host>(ops::cast<float>(gpu.forward(std::span<const std::int64_t>(&gpu_next, 1), gpu_cache)));
    }
  }
}

TEST(Qwen2, TiedEmbeddingsServeAsTheOutputProjection) {
  // The tied fixture has no lm_head.weight; loading it must not fail and the
  // logits must be h @ embed_tokens^T (checked through the golden tests).
  EXPECT_TRUE(model("tied").config().tie_word_embeddings);
}

// forward_edited is the entry multimodal models use (an edit of the token
// embeddings and their own positions): with an edit that changes nothing
// and positions cache.length() + i it must be forward(), bit for bit, for
// the prefill and for a decode step after it; [3, S] positions with equal
// rows (M-RoPE on text) give the same tables as [S].
TEST(Qwen2, ForwardEditedWithoutEditsAndPlainPositionsIsForward) {
  const Model& m = model("untied");
  const std::vector<std::int64_t> prompt = {311, 967, 768, 909}, next = {42};
  auto a = m.new_cache(8), b = m.new_cache(8);
  const auto positions = [&](std::int64_t first, std::int64_t n) {
    Tensor<Host, std::int64_t> pos(Shape{n});
    for (std::int64_t i = 0; i < n; ++i) pos.span()[static_cast<std::size_t>(i)] = first + i;
    return pos;
  };
  int edits = 0;
  const auto count_edits = [&](Tensor<Cpu<0>, float>&) { ++edits; };
  EXPECT_TRUE(same_bits(m.forward(prompt, a), m.forward_edited(prompt, positions(0, 4), b, count_edits)));
  EXPECT_TRUE(same_bits(m.forward(next, a), m.forward_edited(next, positions(4, 1), b, count_edits)));
  EXPECT_EQ(edits, 2);
  EXPECT_EQ(b.length(), 5);
  expect_error<ShapeError>([&] { (void)m.forward_edited(next, positions(0, 2), b, [](auto&) {}); },
                           {"positions [2]", "must be [1] or [3, 1]"});
}

TEST(Qwen2, CacheOverflowIsAClearError) {
  auto cache = model("untied").new_cache(4);
  const std::vector<std::int64_t> ids = {1, 2, 3, 4, 5};
  expect_error<ValueError>([&] { (void)model("untied").forward(ids, cache); }, {"capacity of 4", "5 new tokens"});
  EXPECT_EQ(cache.length(), 0);
}

TEST(Qwen2, OutOfVocabularyIdIsAValueError) {
  auto cache = model("untied").new_cache(8);
  const std::vector<std::int64_t> ids = {1, 100000};
  EXPECT_THROW((void)model("untied").forward(ids, cache), ValueError);
}

}  // namespace
}  // namespace tessera::testing
