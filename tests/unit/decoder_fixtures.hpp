// The decoder-family fixtures (tests/fixtures/{llama,llama_yi,phi3,internlm2,
// internlm2_wide}, written by tools/fixtures/make_decoder_fixtures.py) as
// tests read them:
// the reference arrays and reference.json, the golden comparison of logits
// rows, and broken copies of a checkpoint for the error tests. Model-agnostic:
// nothing here includes a model header.
#pragma once

#include <tessera/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <unistd.h>
#include <vector>

#include "golden_util.hpp"
#include "test_util.hpp"

namespace tessera::testing::decoder_fixtures {

namespace fs = std::filesystem;
using Ids = std::vector<std::int64_t>;

inline fs::path root() { return tessera::testing::fixtures_dir(); }
inline fs::path dir(const std::string& fixture) { return root() / fixture; }

// Every fixture the generator writes. internlm2_wide is internlm2 with 4
// layers and 8 heads / 4 KV heads, so that groups of 4 ranks and pipelines
// of 4 stages divide it (one KV group per rank, one layer per stage).
inline const std::vector<std::string>& names() {
  static const std::vector<std::string> n = {"llama", "llama_yi", "phi3", "internlm2", "internlm2_wide"};
  return n;
}

struct Reference {
  nlohmann::json meta;
  io::SafetensorsFile arrays;

  explicit Reference(const std::string& fixture)
      : meta(nlohmann::json::parse(std::ifstream(dir(fixture) / "reference.json"))),
        arrays(io::SafetensorsFile::open(dir(fixture) / "reference.safetensors")) {}

  Ids ints(const std::string& name) const {
    const auto t = arrays.load<Host, std::int64_t>(name);
    return {t.span().begin(), t.span().end()};
  }
  Tensor<Host, float> floats(const std::string& name) const { return arrays.load<Host, float>(name); }
  bool has(const std::string& name) const { return arrays.find(name) != nullptr; }

  // The prompt names, in reference.json order.
  std::vector<std::string> prompts() const {
    std::vector<std::string> out;
    for (const auto& [name, _] : meta["prompts"].items()) out.push_back(name);
    return out;
  }
  std::vector<std::string> batch_order() const { return meta["batch"]["order"].get<std::vector<std::string>>(); }
  Ids eos_token_ids() const { return meta["generation"]["eos_token_id"].get<Ids>(); }
  std::int64_t max_new_tokens() const { return meta["generation"]["max_new_tokens"].get<std::int64_t>(); }
};

// Row `row` of `actual` [*, V] against row `ref_row` of `expected` [*, V]:
// every logit within `tol`; the failure names the worst token.
inline ::testing::AssertionResult rows_close(const Tensor<Host, float>& actual, std::int64_t row,
                                             const Tensor<Host, float>& expected, std::int64_t ref_row, double tol) {
  if (actual.dim(1) != expected.dim(1)) {
    return ::testing::AssertionFailure() << "vocab " << actual.dim(1) << " != reference vocab " << expected.dim(1);
  }
  std::int64_t worst = -1;
  double worst_diff = 0.0;
  for (std::int64_t j = 0; j < expected.dim(1); ++j) {
    const double d = std::abs(static_cast<double>(actual.at(row, j)) - expected.at(ref_row, j));
    if (!(d <= tol) && (worst < 0 || !(d <= worst_diff))) {
      worst = j;
      worst_diff = d;
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "row " << row << ", token " << worst << ": got " << actual.at(row, worst)
                                       << ", expected " << expected.at(ref_row, worst) << " (|diff| " << worst_diff
                                       << ", tolerance " << tol << ")";
}

// Row i of a [S, B, V] array as a [1, V] tensor.
inline Tensor<Host, float> step_row(const Tensor<Host, float>& steps, std::int64_t step, std::int64_t i) {
  auto row = contiguous(steps.view().select(0, step).select(0, i));
  row.reshape_inplace(Shape{1, steps.dim(2)});
  return row;
}

inline std::int64_t argmax_row(const Tensor<Host, float>& logits, std::int64_t row) {
  std::int64_t best = 0;
  for (std::int64_t j = 1; j < logits.dim(1); ++j) {
    if (logits.at(row, j) > logits.at(row, best)) best = j;
  }
  return best;
}

// The shard file a checkpoint directory's index names for `tensor`.
inline std::string shard_of(const fs::path& checkpoint, const std::string& tensor) {
  const auto index = nlohmann::json::parse(std::ifstream(checkpoint / "model.safetensors.index.json"));
  return index["weight_map"].at(tensor).get<std::string>();
}

// A writable copy of a fixture's checkpoint (config and shards, no
// references) in a fresh temporary directory, removed on destruction; the
// helpers rewrite one shard or the index to make it broken.
class CheckpointCopy {
 public:
  CheckpointCopy(const std::string& fixture, const std::string& tag)
      : dir_(fs::temp_directory_path() /
             ("tessera_decoder_" + fixture + "_" + tag + "_" + std::to_string(::getpid()))) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const auto& e : fs::directory_iterator(dir(fixture))) {
      const std::string name = e.path().filename().string();
      if (name.rfind("reference", 0) != 0) fs::copy_file(e.path(), dir_ / name);
    }
  }
  ~CheckpointCopy() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  CheckpointCopy(const CheckpointCopy&) = delete;
  CheckpointCopy& operator=(const CheckpointCopy&) = delete;

  const fs::path& path() const { return dir_; }

  nlohmann::json index() const {
    return nlohmann::json::parse(std::ifstream(dir_ / "model.safetensors.index.json"));
  }
  void write_index(const nlohmann::json& index) const {
    std::ofstream(dir_ / "model.safetensors.index.json") << index.dump(2);
  }
  // The shard file the index names for `tensor`.
  std::string shard_of(const std::string& tensor) const { return decoder_fixtures::shard_of(dir_, tensor); }

  // Rewrites the shard holding `tensor`: without it (edit returns false), or
  // with the entry `edit` changed (its shape and bytes).
  void rewrite_shard_of(const std::string& tensor,
                        const std::function<bool(io::SafetensorsEntry&)>& edit = [](io::SafetensorsEntry&) {
                          return false;
                        }) const {
    const std::string shard = shard_of(tensor);
    const fs::path original = dir_ / shard, staged = dir_ / (shard + ".new");
    {
      const auto file = io::SafetensorsFile::open(original);
      std::vector<io::SafetensorsEntry> entries;
      bool found = false;
      for (const auto& t : file.tensors()) {
        io::SafetensorsEntry e{t.name, t.dtype, t.shape, file.bytes(t)};
        if (t.name == tensor) {
          found = true;
          if (!edit(e)) continue;
        }
        entries.push_back(std::move(e));
      }
      EXPECT_TRUE(found) << tensor << " is not in " << shard;
      io::save_safetensors(staged, std::move(entries), file.metadata());
    }
    fs::rename(staged, original);
  }

  // Drops `tensor` from its shard and, if `from_index`, from the index too.
  void drop(const std::string& tensor, bool from_index) const {
    rewrite_shard_of(tensor);
    if (from_index) {
      auto index = this->index();
      index["weight_map"].erase(tensor);
      write_index(index);
    }
  }

  // Keeps only the first `rows` rows of a 2-D float32 `tensor`.
  void truncate_rows(const std::string& tensor, std::int64_t rows) const {
    rewrite_shard_of(tensor, [&](io::SafetensorsEntry& e) {
      const std::int64_t cols = e.shape.dims()[1];
      e.shape = Shape{rows, cols};
      e.data = e.data.first(static_cast<std::size_t>(rows * cols) * sizeof(float));
      return true;
    });
  }

 private:
  fs::path dir_;
};

}  // namespace tessera::testing::decoder_fixtures
