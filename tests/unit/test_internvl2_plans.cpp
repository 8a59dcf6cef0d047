// Plans of the seven published InternVL2 sizes on 1, 2, 4 and 8 GPUs of 24,
// 40 and 80 GiB, from headers-only copies of their checkpoints
// (models/internvl2_published.hpp, written once into a temporary directory)
// described by models::internvl2::describe and planned with InternVL's
// split_model strategy in bf16 under the model cards' settings: one image
// of max_num 12 tiles + the thumbnail, a context of 8192 tokens.
//
// What the expectations rest on, independent of the planner:
//   - the parameter counts the model cards give each size;
//   - the tensor table itself: each device's weights are recomputed here
//     from the tensor names and shapes and split_model's layer counts
//     (restated below from the model-card recipe);
//   - InternVL's own split_model maps for 76B
//     (tests/fixtures/planner/internvl.json, written by
//     tools/fixtures/make_planner_fixtures.py from the recipe's Python).
#include <tessera/models/internvl2_description.hpp>
#include <tessera/models/internvl2_published.hpp>
#include <tessera/placement/planner.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "fixtures_dir.hpp"


namespace tessera::testing {
namespace {

namespace fs = std::filesystem;
namespace published = models::internvl2::published;
using placement::Plan;
using placement::PlanRequest;
using placement::Strategy;

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

fs::path fixture_dir() { return tessera::testing::fixtures_dir(); }

// The seven headers-only copies, written once for the suite.
class InternVL2Plans : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::random_device rd;
    root_ = new fs::path(fs::temp_directory_path() / ("tessera_internvl2_plans_" + std::to_string(rd())));
    fs::create_directories(*root_);
    sizes_ = new std::vector<published::Size>;
    descriptions_ = new std::map<std::string, placement::ModelDescription>;
    for (const auto& name : published::names()) {
      sizes_->push_back(published::size(name));
      published::write_headers_only(sizes_->back(), *root_ / name);
      descriptions_->emplace(name, models::internvl2::describe(*root_ / name));
    }
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
    delete sizes_;
    delete descriptions_;
  }

  static fs::path dir(const std::string& name) { return *root_ / name; }
  static const std::vector<published::Size>& sizes() { return *sizes_; }
  static const placement::ModelDescription& description(const std::string& name) { return descriptions_->at(name); }

 private:
  static inline fs::path* root_ = nullptr;
  static inline std::vector<published::Size>* sizes_ = nullptr;
  static inline std::map<std::string, placement::ModelDescription>* descriptions_ = nullptr;
};

// The model-card settings: bf16, one image of 12 tiles + thumbnail, a
// context of 8192 tokens prefilled at once.
PlanRequest model_card_request(std::vector<std::vector<std::string>> stages, std::uint64_t gib) {
  PlanRequest r;
  r.stages = std::move(stages);
  r.element_size = 2;
  r.max_context = 8192;
  r.max_vision_units = 13;
  r.strategy = Strategy::internvl_split;
  for (const auto& group : r.stages) {
    for (const auto& d : group) r.budgets[d] = gib * kGiB;
  }
  return r;
}

std::vector<std::vector<std::string>> pipeline(std::size_t gpus) {
  std::vector<std::vector<std::string>> stages;
  for (std::size_t g = 0; g < gpus; ++g) stages.push_back({"cuda" + std::to_string(g)});
  return stages;
}

std::vector<std::vector<std::string>> tensor_parallel(std::size_t gpus) {
  std::vector<std::string> group;
  for (std::size_t g = 0; g < gpus; ++g) group.push_back("cuda" + std::to_string(g));
  return {group};
}

// split_model's layer counts (model-specs §B.7), restated: GPU 0 counts as
// half a GPU; tessera keeps the last layer on the last stage, which then
// holds what remains.
std::vector<std::int64_t> split_model_counts(std::int64_t layers, std::size_t gpus) {
  if (gpus == 1) return {layers};
  const auto per_gpu = static_cast<std::int64_t>(std::ceil(static_cast<double>(layers) / (static_cast<double>(gpus) - 0.5)));
  std::vector<std::int64_t> counts(gpus, per_gpu);
  counts[0] = (per_gpu + 1) / 2;
  std::int64_t left = layers;
  for (auto& c : counts) {
    c = std::min(c, left);
    left -= c;
  }
  counts.back() += left;
  return counts;
}

// The decoder layer of a language-model tensor, -1 for anything else.
std::int64_t layer_of(const std::string& name) {
  const std::string prefix = "language_model.model.layers.";
  if (!name.starts_with(prefix)) return -1;
  return std::stoll(name.substr(prefix.size(), name.find('.', prefix.size()) - prefix.size()));
}

std::int64_t llm_layers(const published::Size& s) {
  return s.config.at("llm_config").at("num_hidden_layers").get<std::int64_t>();
}

// Each pipeline stage's weight bytes from the tensor table: stage 0 also
// holds everything that is not a decoder layer (InternViT, mlp1, the
// embeddings, the final norm and the output head).
std::vector<std::uint64_t> expected_stage_weights(const published::Size& s, std::size_t gpus) {
  const std::vector<std::int64_t> counts = split_model_counts(llm_layers(s), gpus);
  std::vector<std::size_t> stage_of_layer;
  for (std::size_t g = 0; g < counts.size(); ++g) stage_of_layer.insert(stage_of_layer.end(), static_cast<std::size_t>(counts[g]), g);
  std::vector<std::uint64_t> out(gpus, 0);
  for (const auto& t : s.tensors) {
    const std::int64_t layer = layer_of(t.name);
    out[layer < 0 ? 0 : stage_of_layer.at(static_cast<std::size_t>(layer))] += t.bytes();
  }
  return out;
}

std::optional<Plan> try_plan(const placement::ModelDescription& m, const PlanRequest& r, std::string& refusal) {
  try {
    return placement::plan_model(m, r);
  } catch (const PlanError& e) {
    refusal = e.what();
    return std::nullopt;
  }
}

// ---- the headers-only copies ----------------------------------------------------

TEST_F(InternVL2Plans, CopiesOpenAsCheckpointsAndCostNoDisk) {
  std::uint64_t allocated = 0;
  for (const auto& s : sizes()) {
    SCOPED_TRACE(s.name);
    const io::Checkpoint ckpt = io::Checkpoint::open(dir(s.name));
    ckpt.validate();  // every shard's header against its file size and the index
    ASSERT_EQ(ckpt.names().size(), s.tensors.size());
    for (const auto& t : s.tensors) {
      const auto info = ckpt.info(t.name);
      EXPECT_EQ(info.dtype, io::SafetensorsDtype::BF16) << t.name;
      EXPECT_EQ(info.shape, Shape(t.shape)) << t.name;
    }
    const auto shards = published::shards(s);
    EXPECT_EQ(fs::exists(dir(s.name) / io::kCheckpointIndexFile), shards.size() > 1);
    std::uint64_t data = 0;
    for (const auto& shard : shards) {
      EXPECT_LE(shard.bytes, 5'000'000'000u) << shard.file;
      const fs::path file = dir(s.name) / shard.file;
      EXPECT_GT(fs::file_size(file), shard.bytes) << shard.file;  // header + the data's full extent
      struct stat st {};
      ASSERT_EQ(::stat(file.c_str(), &st), 0) << file;
      allocated += static_cast<std::uint64_t>(st.st_blocks) * 512;
      data += shard.bytes;
    }
    EXPECT_EQ(data, 2 * s.parameters());
  }
  // 168 GB of tensors on paper, a few MiB of headers on disk.
  EXPECT_LT(allocated, 16u << 20) << allocated << " bytes allocated";
}

TEST_F(InternVL2Plans, CopiesHoldTheModelCardsParameterCountsAndTheModelLoadsEveryTensor) {
  std::vector<std::string> seen;
  for (const auto& s : sizes()) {
    SCOPED_TRACE(s.name);
    seen.push_back(s.name);
    const double billions = static_cast<double>(s.parameters()) / 1e9;
    EXPECT_NEAR(billions, s.card_billions, 0.05 * s.card_billions);
    // Planned on one unlimited device, every tensor is loaded, in bf16.
    PlanRequest r;
    r.stages = {{"cuda0"}};
    r.max_context = 8192;
    r.max_vision_units = 13;
    const Plan plan = placement::plan_internvl2(dir(s.name), r);
    EXPECT_TRUE(plan.ignored.empty()) << plan.ignored.front();
    EXPECT_EQ(plan.devices[0].weights, 2 * s.parameters());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B",
                                            "InternVL2-26B", "InternVL2-40B", "InternVL2-Llama3-76B"}));
  EXPECT_THROW((void)published::size("InternVL2-76B"), ValueError);  // the repository is InternVL2-Llama3-76B
}

TEST_F(InternVL2Plans, WritingIntoANonEmptyDirectoryIsRefusedNamingIt) {
  const auto s = published::size("InternVL2-1B");
  try {
    published::write_headers_only(s, dir("InternVL2-1B"));
    ADD_FAILURE() << "no IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(dir("InternVL2-1B").string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not empty"), std::string::npos) << e.what();
  }
}

// ---- pipelines: every size on 1, 2, 4, 8 GPUs of 24, 40, 80 GiB ---------------------

TEST_F(InternVL2Plans, PipelinesFitWhereTheWeightsAllowAndRefuseNamingTheDeviceElsewhere) {
  for (const auto& s : sizes()) {
    const auto& m = description(s.name);
    for (const std::size_t gpus : {1u, 2u, 4u, 8u}) {
      const std::vector<std::uint64_t> weights = expected_stage_weights(s, gpus);
      for (const std::uint64_t gib : {24u, 40u, 80u}) {
        SCOPED_TRACE(s.name + " on " + std::to_string(gpus) + " x " + std::to_string(gib) + " GiB");
        const PlanRequest r = model_card_request(pipeline(gpus), gib);
        std::string refusal;
        const auto plan = try_plan(m, r, refusal);
        const bool weights_fit = std::all_of(weights.begin(), weights.end(), [&](auto w) { return w <= gib * kGiB; });
        if (!weights_fit) {
          // Weights alone past a budget: refused, naming that device, its
          // weights and its budget.
          ASSERT_FALSE(plan) << plan->table();
          for (std::size_t g = 0; g < gpus; ++g) {
            if (weights[g] <= gib * kGiB) continue;
            EXPECT_NE(refusal.find("cuda" + std::to_string(g) + " needs "), std::string::npos) << refusal;
            EXPECT_NE(refusal.find("weights " + format_bytes(weights[g])), std::string::npos) << refusal;
            EXPECT_NE(refusal.find("but its budget is " + format_bytes(gib * kGiB)), std::string::npos) << refusal;
          }
          continue;
        }
        if (!plan) {
          // The weights fit but weights + KV cache + activations do not
          // (40B on one 80 GiB card, 26B on four 24 GiB cards): the
          // refusal gives each device's need, activations included, and
          // its budget.
          EXPECT_NE(refusal.find("does not fit"), std::string::npos) << refusal;
          EXPECT_NE(refusal.find(" + activations "), std::string::npos) << refusal;
          EXPECT_NE(refusal.find("but its budget is " + format_bytes(gib * kGiB)), std::string::npos) << refusal;
          continue;
        }
        ASSERT_EQ(plan->devices.size(), gpus);
        const std::vector<std::int64_t> counts = split_model_counts(llm_layers(s), gpus);
        for (std::size_t g = 0; g < gpus; ++g) {
          const auto& d = plan->devices[g];
          EXPECT_EQ(d.device, "cuda" + std::to_string(g));
          EXPECT_EQ(d.weights, weights[g]) << plan->table();
          EXPECT_LE(d.peak(), gib * kGiB);
          EXPECT_EQ(std::count(plan->layout.layer_stage.begin(), plan->layout.layer_stage.end(), g), counts[g])
              << plan->table();
        }
        EXPECT_EQ(plan->layout.vision_stage, 0u);
        EXPECT_EQ(plan->layout.embed_stage, 0u);
        EXPECT_EQ(plan->layout.head_stage, 0u);
      }
    }
  }
}

TEST_F(InternVL2Plans, WhatFitsWhere) {
  // Fixed points of the grid above that follow from the weights alone
  // (bf16: 2 bytes per parameter): each small size on one 24 GiB card, and
  // 76B (152.5 GB of weights) on no single card and on no two 80 GiB cards
  // under split_model (stage 1 holds 53 of 80 layers, 91 GB).
  for (const char* name : {"InternVL2-1B", "InternVL2-2B", "InternVL2-4B"}) {
    SCOPED_TRACE(name);
    EXPECT_NO_THROW((void)placement::plan_model(description(name), model_card_request(pipeline(1), 24)));
  }
  for (const std::size_t gpus : {1u, 2u}) {
    std::string refusal;
    EXPECT_FALSE(try_plan(description("InternVL2-Llama3-76B"), model_card_request(pipeline(gpus), 80), refusal));
    EXPECT_NE(refusal.find("cuda" + std::to_string(gpus - 1) + " needs"), std::string::npos) << refusal;
  }
  EXPECT_NO_THROW((void)placement::plan_model(description("InternVL2-Llama3-76B"), model_card_request(pipeline(4), 80)));
}

// ---- 76B against InternVL's own split_model map ---------------------------------

TEST_F(InternVL2Plans, Llama3_76BFollowsSplitModelExceptTheLastLayer) {
  const auto j = nlohmann::json::parse(std::ifstream(fixture_dir() / "planner" / "internvl.json"));
  ASSERT_EQ(j["cases"].size(), 3u);
  for (const auto& c : j["cases"]) {
    ASSERT_EQ(c["model"], "InternVL2-Llama3-76B");
    const auto gpus = c["gpus"].get<std::size_t>();
    SCOPED_TRACE(std::to_string(gpus) + " GPUs");
    const auto map = c["layer_gpu"].get<std::vector<std::size_t>>();
    ASSERT_EQ(map.size(), 80u);
    // 80 GiB where that fits, unlimited otherwise: the layout is the
    // strategy's either way.
    PlanRequest r = model_card_request(pipeline(gpus), 80);
    if (gpus == 2) r.budgets.clear();
    const Plan plan = placement::plan_internvl2(dir("InternVL2-Llama3-76B"), r);
    const auto& stage = plan.layout.layer_stage;
    ASSERT_EQ(stage.size(), 80u);
    for (std::size_t l = 0; l < 79; ++l) EXPECT_EQ(stage[l], map[l]) << "layer " << l;
    EXPECT_EQ(map[79], 0u);          // split_model: the last layer back on GPU 0
    EXPECT_EQ(stage[79], gpus - 1);  // tessera: kept on the last stage
    EXPECT_EQ(std::count(stage.begin(), stage.end(), 0u), std::count(map.begin(), map.end(), 0u) - 1);
    // Both pin InternViT, mlp1, the embeddings, the norm and the head on
    // GPU 0, so the residual stream returns to GPU 0 exactly once: before
    // layer 79 in split_model, before the final norm in tessera.
    EXPECT_EQ(plan.layout.vision_stage, 0u);
    EXPECT_EQ(plan.layout.embed_stage, 0u);
    EXPECT_EQ(plan.layout.head_stage, 0u);
    const auto returns = [](const std::vector<std::size_t>& path) {
      std::vector<std::size_t> at;
      for (std::size_t i = 1; i < path.size(); ++i) {
        if (path[i] == 0 && path[i - 1] != 0) at.push_back(i);
      }
      return at;
    };
    std::vector<std::size_t> theirs{0};  // embeddings, the layers, the norm
    theirs.insert(theirs.end(), map.begin(), map.end());
    theirs.push_back(0);
    std::vector<std::size_t> ours{plan.layout.embed_stage};
    ours.insert(ours.end(), stage.begin(), stage.end());
    ours.push_back(plan.layout.head_stage);
    EXPECT_EQ(returns(theirs), std::vector<std::size_t>{80});  // entering layer 79 (1 + 79)
    EXPECT_EQ(returns(ours), std::vector<std::size_t>{81});    // entering the norm
  }
}

// ---- tensor-parallel groups: InternViT-6B runs whole -------------------------------

TEST_F(InternVL2Plans, TensorParallelGroupsKeepInternViT6BWholeAndSaySo) {
  for (const char* name : {"InternVL2-26B", "InternVL2-40B", "InternVL2-Llama3-76B"}) {
    const auto& s = *std::find_if(sizes().begin(), sizes().end(), [&](const auto& x) { return x.name == name; });
    std::uint64_t vision = 0;
    for (const auto& t : s.tensors) {
      if (t.name.starts_with("vision_model.") || t.name.starts_with("mlp1.")) vision += t.bytes();
    }
    for (const std::size_t gpus : {4u, 8u}) {
      SCOPED_TRACE(std::string(name) + " TP " + std::to_string(gpus));
      const Plan plan = placement::plan_model(description(name), model_card_request(tensor_parallel(gpus), 80));
      std::string notes;
      for (const auto& n : plan.notes) notes += n + "\n";
      EXPECT_NE(notes.find("InternViT-6B-style + mlp1 (45 layers) runs whole on cuda0 only"),
                std::string::npos)
          << notes;
      EXPECT_NE(notes.find("its 25 attention heads do not divide the group of " + std::to_string(gpus)),
                std::string::npos)
          << notes;
      // The tower and mlp1 on cuda0 alone; every other device holds the
      // same share of the language model.
      EXPECT_EQ(plan.device("cuda0").weights - plan.device("cuda1").weights, vision) << plan.table();
      for (std::size_t g = 2; g < gpus; ++g) {
        EXPECT_EQ(plan.device("cuda" + std::to_string(g)).weights, plan.device("cuda1").weights);
      }
    }
  }
}

}  // namespace
}  // namespace tessera::testing
