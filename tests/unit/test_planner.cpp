// Tests of the memory planner (placement/planner.hpp) and of its
// re-implementation of accelerate (placement/accelerate.hpp,
// placement/memory_size.hpp). Every expected number comes from accelerate
// 1.15 itself (tests/fixtures/planner, written by
// tools/fixtures/make_planner_fixtures.py), from the checkpoint headers
// (recomputed here from io::Checkpoint), or from the memory ledger.
#include <tessera/generate/generate.hpp>
#include <tessera/models/decoder_description.hpp>
#include <tessera/models/qwen2_5_vl.hpp>
#include <tessera/models/qwen2_5_vl_description.hpp>
#include <tessera/placement/planner.hpp>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ledger_util.hpp"
#include "qwen2_5_vl_fixtures.hpp"

namespace tessera::testing {
namespace {

namespace fs = std::filesystem;
namespace acc = placement::accelerate;
namespace vl = models::qwen2_5_vl;
using qwen2_5_vl_fixtures::vl_dir;
using placement::PlanRequest;
using placement::Strategy;

fs::path fixtures() { return qwen2_5_vl_fixtures::root(); }

nlohmann::json read_json(const fs::path& path) { return nlohmann::json::parse(std::ifstream(path)); }

// Expects `f` to throw E whose message contains every one of `parts`.
template <class E, class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
  }
}

// ---- parse_memory_size ------------------------------------------------------

TEST(MemorySize, MatchesAccelerateConvertFileSizeToInt) {
  const auto j = read_json(fixtures() / "planner" / "memory_sizes.json");
  ASSERT_GT(j["valid"].size(), 20u);
  for (const auto& entry : j["valid"]) {
    const auto text = entry[0].get<std::string>();
    EXPECT_EQ(placement::parse_memory_size(text), entry[1].get<std::uint64_t>()) << "'" << text << "'";
  }
}

TEST(MemorySize, RejectsWhatAccelerateRejectsButDigitStrings) {
  const auto j = read_json(fixtures() / "planner" / "memory_sizes.json");
  for (const auto& entry : j["invalid"]) {
    const auto text = entry.get<std::string>();
    if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
      // accelerate takes bytes as an int only; tessera reads the digits.
      EXPECT_EQ(placement::parse_memory_size(text), std::stoull(text));
      continue;
    }
    expect_error<ValueError>([&] { (void)placement::parse_memory_size(text); }, {"'" + text + "'"});
  }
  expect_error<ValueError>([] { (void)placement::parse_memory_size("infGB"); }, {"infGB"});
  expect_error<ValueError>([] { (void)placement::parse_memory_size("99999999999999999999GB"); }, {"GB"});
}

// ---- accelerate's device maps -------------------------------------------------

acc::ModuleTree tree_of(const nlohmann::json& model, const nlohmann::json& tied) {
  acc::ModuleTree tree;
  for (const auto& p : model["params"]) tree.add_parameter(p[0].get<std::string>(), p[1].get<std::int64_t>());
  tree.set_class("", model["class"].get<std::string>());
  for (const auto& m : model["modules"]) tree.set_class(m[0].get<std::string>(), m[1].get<std::string>());
  for (const auto& group : tied) tree.tie(group.get<std::vector<std::string>>());
  return tree;
}

acc::MaxMemory memory_of(const nlohmann::json& j) {
  acc::MaxMemory out;
  for (auto it = j.begin(); it != j.end(); ++it) out.emplace_back(it.key(), it.value().get<std::int64_t>());
  return out;
}

std::map<std::string, std::string> as_map(const acc::DeviceMap& m) { return {m.begin(), m.end()}; }

TEST(Accelerate, ReproducesAccelerateDeviceMaps) {
  const auto j = read_json(fixtures() / "planner" / "accelerate.json");
  ASSERT_GE(j["cases"].size(), 15u);
  for (const auto& c : j["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const acc::ModuleTree tree = tree_of(j["models"][c["model"].get<std::string>()], c["tied"]);
    const auto no_split = c["no_split"].get<std::vector<std::string>>();

    // compute_module_sizes of the top two levels.
    std::map<std::string, std::int64_t> sizes;
    for (const auto& [k, v] : tree.module_sizes()) sizes[k] = v;
    for (auto it = c["module_sizes"].begin(); it != c["module_sizes"].end(); ++it) {
      EXPECT_EQ(sizes[it.key()], it.value().get<std::int64_t>()) << it.key();
    }

    acc::MaxMemory budget = memory_of(c["max_memory"]);
    const std::string strategy = c["strategy"];
    if (strategy != "sequential") {
      budget = acc::get_balanced_memory(tree, budget, no_split, strategy == "balanced_low_0");
      std::map<std::string, std::int64_t> got(budget.begin(), budget.end());
      EXPECT_EQ(got, (c["balanced_memory"].get<std::map<std::string, std::int64_t>>()));
    }
    const auto expected = c["device_map"].get<std::map<std::string, std::string>>();
    EXPECT_EQ(as_map(acc::infer_auto_device_map(tree, budget, no_split)), expected);
  }
}

TEST(Accelerate, CleanDeviceMapMergesChildrenOnOneDevice) {
  const acc::DeviceMap map{{"a.x", "0"}, {"a.y", "0"}, {"b.x.p", "1"}, {"b.x.q", "1"}, {"b.y", "2"}};
  EXPECT_EQ(as_map(acc::clean_device_map(map)),
            (std::map<std::string, std::string>{{"a", "0"}, {"b.x", "1"}, {"b.y", "2"}}));
}

// ---- InternVL split_model ----------------------------------------------------

TEST(InternVLSplit, Reproduces76BOnTwoFourAndEightGpus) {
  const auto j = read_json(fixtures() / "planner" / "internvl.json");
  ASSERT_EQ(j["cases"].size(), 3u);
  for (const auto& c : j["cases"]) {
    const auto gpus = c["gpus"].get<std::size_t>();
    const auto split = placement::internvl_split_model(c["num_layers"].get<std::int64_t>(), gpus);
    EXPECT_EQ(split.layers_per_gpu, c["layers_per_gpu"].get<std::vector<std::int64_t>>()) << gpus;
    EXPECT_EQ(split.layer_gpu, c["layer_gpu"].get<std::vector<std::size_t>>()) << gpus;

    // The contiguous variant: the same counts, the last layer left in place.
    const auto contiguous = placement::internvl_contiguous_layers(80, gpus);
    ASSERT_EQ(contiguous.size(), 80u);
    EXPECT_TRUE(std::is_sorted(contiguous.begin(), contiguous.end()));
    for (std::size_t l = 0; l + 1 < 80; ++l) EXPECT_EQ(contiguous[l], split.layer_gpu[l]) << gpus << " layer " << l;
    EXPECT_EQ(contiguous[79], gpus - 1);
  }
}

// ---- the model planner --------------------------------------------------------

// Bytes of `names` at `elem` bytes per element, from the checkpoint headers.
std::uint64_t header_bytes(const io::Checkpoint& ckpt, const std::vector<std::string>& names, std::size_t elem) {
  std::uint64_t sum = 0;
  for (const auto& n : names) sum += static_cast<std::uint64_t>(ckpt.info(n).numel()) * elem;
  return sum;
}

std::vector<std::string> names_where(const io::Checkpoint& ckpt, const std::function<bool(const std::string&)>& keep) {
  std::vector<std::string> out;
  for (const auto& n : ckpt.names()) {
    if (keep(n)) out.push_back(n);
  }
  return out;
}


TEST(Planner, SingleStageHoldsEveryCheckpointTensor) {
  for (const std::string variant : {"legacy", "tied"}) {
    SCOPED_TRACE(variant);
    const auto ckpt = io::Checkpoint::open(vl_dir(variant));
    for (const std::size_t elem : {std::size_t{2}, std::size_t{4}}) {
      PlanRequest req;
      req.element_size = elem;
      req.max_context = 64;
      const auto plan = placement::plan_qwen2_5_vl(vl_dir(variant), req);
      ASSERT_EQ(plan.devices.size(), 1u);
      EXPECT_EQ(plan.devices[0].weights, header_bytes(ckpt, ckpt.names(), elem));
      EXPECT_TRUE(plan.ignored.empty());
      EXPECT_EQ(plan.layout.layer_stage, (std::vector<std::size_t>{0, 0}));
    }
  }
  for (const std::string variant : {"tied", "untied"}) {
    const fs::path dir = fixtures() / "qwen2" / variant;
    const auto ckpt = io::Checkpoint::open(dir);
    const auto plan = placement::plan_qwen2(dir, PlanRequest{});
    EXPECT_EQ(plan.devices[0].weights, header_bytes(ckpt, ckpt.names(), 2)) << variant;
  }
}

TEST(Planner, KvCacheBytesFollowTheFormula) {
  const auto cfg = vl::Config::load(vl_dir("legacy"));
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.max_context = 100;
  req.batch = 3;
  req.element_size = 2;
  const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  for (const auto& d : plan.devices) {
    const auto layers = static_cast<std::uint64_t>(
        std::count(plan.layout.layer_stage.begin(), plan.layout.layer_stage.end(), d.stage));
    EXPECT_EQ(d.kv, 2 * layers * 100 * 3 * static_cast<std::uint64_t>(cfg.text.num_key_value_heads) *
                        static_cast<std::uint64_t>(cfg.text.head_dim()) * 2)
        << d.device;
  }
}

TEST(Planner, PipelineStagesSplitTheWeights) {
  const auto ckpt = io::Checkpoint::open(vl_dir("legacy"));
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.element_size = 4;
  req.max_context = 32;
  for (const auto strategy : {Strategy::balanced, Strategy::internvl_split}) {
    req.strategy = strategy;
    const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
    // Two layers over two stages: one each; everything pinned on stage 0.
    EXPECT_EQ(plan.layout.layer_stage, (std::vector<std::size_t>{0, 1}));
    const auto layer1 = names_where(ckpt, [](const std::string& n) { return n.starts_with("model.layers.1."); });
    EXPECT_EQ(plan.device("cpu1").weights, header_bytes(ckpt, layer1, 4));
    EXPECT_EQ(plan.device("cpu0").weights + plan.device("cpu1").weights, header_bytes(ckpt, ckpt.names(), 4));
  }
  // sequential with no budget: stage 0 takes everything.
  req.strategy = Strategy::sequential;
  const auto seq = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  EXPECT_EQ(seq.layout.layer_stage, (std::vector<std::size_t>{0, 0}));
  EXPECT_EQ(seq.device("cpu1").weights, 0u);
  // balanced_low_0: stage 0 keeps only its pinned parts.
  req.strategy = Strategy::balanced_low_0;
  const auto low = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  EXPECT_EQ(low.layout.layer_stage, (std::vector<std::size_t>{1, 1}));
}

TEST(Planner, SequentialMovesOnWhenStageZeroIsFull) {
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.element_size = 4;
  req.max_context = 32;
  req.strategy = Strategy::sequential;
  const auto all_on_0 = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const auto& d0 = all_on_0.device("cpu0");
  // A budget that holds everything but one layer's weights and cache.
  const auto per_layer = (all_on_0.devices[0].weights - all_on_0.modules.front().bytes_per_device -
                          all_on_0.modules[1].bytes_per_device - all_on_0.modules.back().bytes_per_device) / 2 +
                         d0.kv / 2;
  req.budgets = {{"cpu0", d0.peak() - per_layer / 2}};
  const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  EXPECT_EQ(plan.layout.layer_stage, (std::vector<std::size_t>{0, 1}));
}

TEST(Planner, TensorParallelGroupsSplitRowsAndColumns) {
  const auto ckpt = io::Checkpoint::open(vl_dir("legacy"));
  PlanRequest req;
  req.stages = {{"cpu0", "cpu1"}};
  req.element_size = 2;
  req.max_context = 16;
  req.communicator = "in-process";
  const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const auto split = names_where(ckpt, [](const std::string& n) {
    for (const char* s : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "o_proj", "down_proj"}) {
      if (n.starts_with("model.layers.") && n.find(s) != std::string::npos) return true;
    }
    return false;
  });
  const auto replicated = names_where(ckpt, [&](const std::string& n) {
    return std::find(split.begin(), split.end(), n) == split.end();
  });
  const std::uint64_t expected = header_bytes(ckpt, split, 2) / 2 + header_bytes(ckpt, replicated, 2);
  // In one process the vision tower is held once, by the group's first device.
  const auto tower = names_where(ckpt, [](const std::string& n) { return n.starts_with("visual."); });
  EXPECT_EQ(plan.device("cpu0").weights, expected);
  EXPECT_EQ(plan.device("cpu1").weights, expected - header_bytes(ckpt, tower, 2));
  req.one_process = false;  // under MPI every rank's process holds one
  const auto mpi = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  EXPECT_EQ(mpi.device("cpu1").weights, expected);
  EXPECT_NE(plan.table().find("tensor-parallel group, stage 0 (cpu0, cpu1): communicator in-process"),
            std::string::npos);
}

TEST(Planner, HeadCountsMustDivideByTheGroup) {
  const auto cfg = vl::Config::load(vl_dir("legacy"));
  PlanRequest req;
  req.stages = {{"cpu0", "cpu1", "cpu2"}};
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); },
                          {"3 devices", "num_attention_heads " + std::to_string(cfg.text.num_attention_heads),
                           "num_key_value_heads " + std::to_string(cfg.text.num_key_value_heads)});
  req.stages = {{"cpu0", "cpu1", "cpu2", "cpu3"}};  // 4 heads but 2 KV heads
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); }, {"4 devices"});
}

TEST(Planner, BadPinsStagesAndBudgetsArePlanErrors) {
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.pins.vision = 2;
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); },
                          {"vision tower is pinned to stage 2", "2 stage(s)"});
  req.pins = {};
  req.pins.embed = 0;
  req.pins.head = 1;
  EXPECT_NO_THROW((void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req));  // untied: allowed
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("tied"), req); },
                          {"tied", "stage 0", "stage 1"});
  req.pins = {};
  req.pins.head = 1;  // tied: the embeddings follow
  const auto tied = placement::plan_qwen2_5_vl(vl_dir("tied"), req);
  EXPECT_EQ(tied.layout.embed_stage, 1u);
  EXPECT_EQ(tied.layout.head_stage, 1u);
  req.pins = {};
  req.stages = {{"cpu0"}, {"cpu1"}, {"cpu2"}};
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); },
                          {"3 stages for 2 decoder layers"});
  req.stages = {{"cpu0"}};
  req.budgets = {{"cuda0", 1}};
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); }, {"cuda0"});
  EXPECT_THROW(placement::parse_strategy("greedy"), ValueError);
  EXPECT_EQ(placement::parse_strategy("auto"), Strategy::balanced);
}

TEST(Planner, OverBudgetNamesEveryDevicesNeedAndBudget) {
  // One stage (a tensor-parallel pair), so the budgets cannot move layers:
  // the failing plan's figures are those of the fitting one.
  PlanRequest req;
  req.stages = {{"cpu0", "cpu1"}};
  req.element_size = 4;
  req.max_context = 64;
  req.max_prompt = 64;
  req.max_image_patches = 256;
  const auto fits = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const auto& d0 = fits.device("cpu0");
  const auto& d1 = fits.device("cpu1");
  req.budgets = {{"cpu0", d0.peak() - 1}, {"cpu1", d1.peak() / 2}};
  const auto need = [](const placement::DeviceFigures& d) {
    return d.device + " needs " + format_bytes(d.peak()) + " (weights " + format_bytes(d.weights) + " + KV " +
           format_bytes(d.kv) + " + activations " + format_bytes(d.activations) + ") but its budget is ";
  };
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); },
                          {"does not fit", need(d0) + format_bytes(d0.peak() - 1),
                           need(d1) + format_bytes(d1.peak() / 2)});

  // Two stages, stage 0 too small for its pinned parts: the layers move on,
  // the pins cannot, and the message still names both devices.
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.budgets = {{"cpu0", 1024}};
  req.strategy = Strategy::sequential;
  expect_error<PlanError>([&] { (void)placement::plan_qwen2_5_vl(vl_dir("legacy"), req); },
                          {"cpu0 needs", "but its budget is 1.00 KiB", "the other devices: cpu1 needs", "no budget"});
}

// ---- two stages, layers on both ---------------------------------------------------

// accelerate 1.15's get_balanced_memory on the fixtures as transformers 5.23
// builds them (Qwen2_5_VLForConditionalGeneration from config.json on the
// meta device, no_split_module_classes = model._no_split_modules =
// {Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock}, max_memory {0: 10 GiB,
// 1: 10 GiB}, dtype float32 / bfloat16): GPU 0's cap. It is total / 2 +
// 1.25 x one decoder layer: the vision *block*, not the tower, is the
// vision no-split unit, and it is smaller than a decoder layer.
// accelerate's total also counts the rotary embeddings' non-persistent
// buffers (inv_freq and original_inv_freq of the vision and text rotary
// embeddings: 2 x (4 + 16) floats, cast like the weights), which no
// checkpoint holds; the test adds them to tessera's tree.
TEST(Planner, BalancedShareIsAcceleratesOnTheFixtures) {
  const std::map<std::pair<std::string, std::size_t>, std::int64_t> accelerate_gpu0{
      {{"tied", 4}, 877456}, {{"tied", 2}, 438728}, {{"legacy", 4}, 2552016}, {{"legacy", 2}, 1276008}};
  for (const auto& [key, expected] : accelerate_gpu0) {
    const auto& [variant, elem] = key;
    SCOPED_TRACE(variant + " " + std::to_string(elem));
    const auto m = vl::describe(vl_dir(variant));
    auto tree = placement::plan_detail::balance_tree(m, 1, elem, 0);  // weights only, as accelerate
    tree.add_parameter("rotary_buffers", static_cast<std::int64_t>(40 * elem));
    const acc::MaxMemory memory{{"0", std::int64_t{10} << 30}, {"1", std::int64_t{10} << 30}};
    const auto balanced = acc::get_balanced_memory(tree, memory, {"DecoderLayer"});
    EXPECT_EQ(balanced[0].second, expected);
    EXPECT_EQ(balanced[1].second, std::int64_t{10} << 30);
  }
}

// A plain pipeline over two slots (--placement pipeline:cpu0,cpu1, no
// budgets) puts decoder layers on both stages whatever the sizes. It used to
// put both layers of the tied fixture on stage 0 (the vision tower counted
// as one no-split unit widened stage 0's balanced share by 1.25 x the
// tower), and both layers of either fixture there once the KV cache made a
// layer large (total / 2 + 1.25 layers is every layer of a two-layer model);
// accelerate's balanced map puts the language model's layers on the second
// device.
TEST(Planner, TwoStagesGetLayersOnBoth) {
  for (const std::string variant : {"legacy", "tied"}) {
    for (const std::size_t elem : {std::size_t{2}, std::size_t{4}}) {
      for (const std::int64_t context : {16, 64, 512, 4096, 32768}) {
        SCOPED_TRACE(variant + " element size " + std::to_string(elem) + " context " + std::to_string(context));
        PlanRequest req;
        req.stages = {{"cpu0"}, {"cpu1"}};
        req.element_size = elem;
        req.max_context = context;
        req.max_image_pixels = 1280 * 28 * 28;
        const auto plan = placement::plan_qwen2_5_vl(vl_dir(variant), req);
        EXPECT_EQ(plan.layout.layer_stage, (std::vector<std::size_t>{0, 1})) << plan.table();
        EXPECT_TRUE(plan.notes.empty()) << plan.table();
      }
    }
  }
}

// Where a stage is left without layers, the plan says why, in its table.
TEST(Planner, AStageWithoutLayersIsExplained) {
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.element_size = 4;
  req.max_context = 32;
  req.strategy = Strategy::sequential;
  const auto seq = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  ASSERT_EQ(seq.notes.size(), 1u);
  EXPECT_NE(seq.notes[0].find("stage 1 (cpu1) holds no decoder layers: the sequential strategy"), std::string::npos)
      << seq.notes[0];
  EXPECT_NE(seq.table().find("note: stage 1 (cpu1) holds no decoder layers"), std::string::npos);

  req.strategy = Strategy::balanced_low_0;
  const auto low = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  ASSERT_EQ(low.notes.size(), 1u);
  EXPECT_NE(low.notes[0].find("stage 0 (cpu0) holds no decoder layers: balanced_low_0"), std::string::npos)
      << low.notes[0];

  // A budget on cpu1 below one layer's weights and KV cache: balanced keeps
  // every layer on stage 0 and names the budget.
  req.strategy = Strategy::balanced;
  const auto free = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  req.budgets = {{"cpu1", free.device("cpu1").activations + free.device("cpu1").weights / 2}};
  const auto forced = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  EXPECT_EQ(forced.layout.layer_stage, (std::vector<std::size_t>{0, 0}));
  ASSERT_EQ(forced.notes.size(), 1u);
  EXPECT_NE(forced.notes[0].find("stage 1 (cpu1) holds no decoder layers: one layer needs"), std::string::npos)
      << forced.notes[0];
  EXPECT_NE(forced.notes[0].find("but its budget of"), std::string::npos) << forced.notes[0];
}

TEST(Planner, TableListsModulesAndDevices) {
  PlanRequest req;
  req.stages = {{"cpu0"}, {"cpu1"}};
  req.budgets = {{"cpu0", placement::parse_memory_size("1GiB")}};
  const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const std::string table = plan.table();
  for (const char* row : {"vision tower + merger", "embeddings", "layer 0", "layer 1", "final norm + lm_head",
                          "predicted peak", "headroom", "1.00 GiB", "unlimited", "cpu1"}) {
    EXPECT_NE(table.find(row), std::string::npos) << row << " not in\n" << table;
  }
  const auto tied = placement::plan_qwen2_5_vl(vl_dir("tied"), PlanRequest{});
  EXPECT_NE(tied.table().find("final norm (lm_head tied to the embeddings)"), std::string::npos);
  EXPECT_NE(tied.table().find("layers 0-1"), std::string::npos);
}

// ---- the prediction against the ledger ------------------------------------------

// A case of the legacy fixture (images only: the single-stage checks take no video).
vl::Prompt prompt_of(const std::string& c) {
  return qwen2_5_vl_fixtures::prompt_of(qwen2_5_vl_fixtures::Reference("legacy"), "legacy", c);
}

// Loads the model as T on Cpu<0>, prefills `c`, and checks the ledger's
// peak (above what was live before) against a single-stage plan for it.
template <class T>
void check_prediction(const std::string& c) {
  SCOPED_TRACE(c + (std::is_same_v<T, float> ? " float" : " bf16"));
  using Model = models::Qwen2_5_VL<Single<Cpu<0>>, T>;
  const vl::Prompt prompt = prompt_of(c);
  std::int64_t patches = 0;
  for (const auto& image : prompt.images) patches += image.pixel_values.dim(0);
  const auto capacity = static_cast<std::int64_t>(prompt.ids.size());

  PlanRequest req;
  req.element_size = sizeof(T);
  req.max_context = capacity;
  req.max_prompt = capacity;
  req.max_image_patches = patches;
  const auto plan = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const auto& predicted = plan.device("cpu0");

  auto& ledger = tessera::ledger<Cpu<0>>();
  const std::uint64_t before = ledger.live();
  ledger.reset_peak();
  std::uint64_t weights = 0, kv = 0;
  {
    const Model model = Model::load(vl_dir("legacy"));
    weights = ledger.live() - before;
    auto cache = model.new_cache(capacity);
    kv = ledger.live() - before - weights;
    const auto logits = model.forward(prompt, cache);
    ASSERT_EQ(logits.dim(0), capacity);
  }
  const std::uint64_t measured = ledger.peak() - before;
  EXPECT_EQ(weights, predicted.weights);
  EXPECT_EQ(kv, predicted.kv);
  EXPECT_LE(measured, predicted.peak()) << plan.table();
  const std::uint64_t activations = measured - weights - kv;
  EXPECT_LE(activations, predicted.activations);
  EXPECT_LE(predicted.activations, 2 * activations) << "the activation bound is loose: measured " << activations;
}

TEST(Planner, PredictedPeakBoundsTheLedgerForAPrefill) {
  for (const std::string c : {"one_image", "two_images", "text_only"}) {
    check_prediction<float>(c);
    check_prediction<bf16>(c);
  }
}


// ---- placed runs against the ledgers ---------------------------------------------


// What the example does, measured: the prompt processed (its pixels stay on
// the host), the model loaded with the plan's layout, a cache of the plan's
// capacity, generate() with a few new tokens. Every device's peak is taken
// above what was live before (the ledgers are process-wide: other tests may
// leave tensors alive), and compared with the plan: peak <= predicted on
// every device, weights and KV exact, and the busiest device within 25%.
template <DevicePlacement P, FloatType T>
void check_placed_run(const std::string& variant, const std::string& c, placement::Pins pins) {
  SCOPED_TRACE(variant + " " + c + " " + policy_name<P>() + (std::is_same_v<T, float> ? " float" : " bf16") +
               " pins " + std::to_string(pins.vision.value_or(0)) + std::to_string(pins.embed.value_or(0)) +
               std::to_string(pins.head.value_or(0)));
  namespace pf = qwen2_5_vl_fixtures;
  constexpr std::int64_t new_tokens = 3;
  const pf::Reference ref(variant);

  std::map<std::string, std::uint64_t> before, after_prompt, after_load, after_cache;
  for_each_device<P>([&]<class D>() {
    before[device_key<D>()] = ledger<D>().live();
    ledger<D>().reset_peak();
  });
  const auto snapshot = [&](std::map<std::string, std::uint64_t>& into) {
    for_each_device<P>([&]<class D>() { into[device_key<D>()] = ledger<D>().live(); });
  };
  std::map<std::string, Measured> measured;
  std::optional<placement::Plan> plan;
  {
    const vl::Prompt prompt = pf::prompt_of(ref, variant, c);
    snapshot(after_prompt);
    std::int64_t patches = 0;
    for (const auto& image : prompt.images) patches += image.pixel_values.dim(0);
    for (const auto& video : prompt.videos) patches += video.pixel_values.dim(0);
    const auto tokens = static_cast<std::int64_t>(prompt.ids.size());

    PlanRequest req;
    req.stages = stages_of_policy<P>();
    req.element_size = sizeof(T);
    req.max_context = tokens + new_tokens;
    req.max_prompt = tokens;
    req.max_image_patches = patches;  // every image and video together
    req.pins = pins;
    plan = placement::plan_qwen2_5_vl(vl_dir(variant), req);

    using Model = models::Qwen2_5_VL<P, T>;
    const Model model = Model::load(vl_dir(variant), plan->layout);
    snapshot(after_load);
    {
      const auto cache = model.new_cache(req.max_context);
      snapshot(after_cache);
    }
    generate::SamplingOptions options;
    options.max_new_tokens = new_tokens;
    options.do_sample = false;
    options.repetition_penalty = 1.0;
    options.eos_token_ids.clear();
    const auto generated = generate::generate(model, prompt, options, nullptr);
    ASSERT_EQ(static_cast<std::int64_t>(generated.size()), new_tokens);
  }
  for_each_device<P>([&]<class D>() {
    const std::string key = device_key<D>();
    Measured& m = measured[key];
    m.peak = ledger<D>().peak() - before[key];
    m.weights = after_load[key] - after_prompt[key];
    m.kv = after_cache[key] - after_load[key];
  });

  std::string busiest;
  for (const auto& d : plan->devices) {
    const Measured& m = measured.at(d.device);
    SCOPED_TRACE(d.device);
    EXPECT_EQ(m.weights, d.weights);
    EXPECT_EQ(m.kv, d.kv);
    EXPECT_LE(m.peak, d.peak()) << plan->table();
    if (busiest.empty() || m.peak > measured.at(busiest).peak) busiest = d.device;
  }
  const auto& top = plan->device(busiest);
  EXPECT_LE(static_cast<double>(top.peak()), 1.25 * static_cast<double>(measured.at(busiest).peak))
      << busiest << ": measured " << measured.at(busiest).peak << "\n" << plan->table();
}

template <DevicePlacement P, FloatType T>
void check_cases(const std::string& variant, const std::vector<std::string>& cases, placement::Pins pins = {}) {
  for (const auto& c : cases) check_placed_run<P, T>(variant, c, pins);
}

placement::Pins pins_of(std::optional<std::size_t> vision, std::optional<std::size_t> embed,
                        std::optional<std::size_t> head) {
  placement::Pins p;
  p.vision = vision;
  p.embed = embed;
  p.head = head;
  return p;
}

const std::vector<std::string> all_cases{"one_image", "two_images", "video", "text_only"};

TEST(PlannerLedger, PipelineDefaultAndPinnedLayouts) {
  using P = Pipeline<Cpu<0>, Cpu<1>>;
  check_cases<P, float>("legacy", all_cases);
  check_cases<P, float>("legacy", {"two_images", "video"}, pins_of(1, std::nullopt, std::nullopt));
  check_cases<P, float>("legacy", {"two_images"}, pins_of(std::nullopt, 1, std::nullopt));
  check_cases<P, float>("legacy", {"two_images"}, pins_of(std::nullopt, std::nullopt, 1));
  check_cases<P, float>("legacy", {"two_images", "text_only"}, pins_of(1, 1, 1));
  check_cases<P, float>("tied", {"one_image", "text_only"});
  check_cases<P, float>("tied", {"one_image"}, pins_of(1, std::nullopt, 1));
  check_cases<P, bf16>("legacy", {"two_images"}, pins_of(1, std::nullopt, 1));
}

TEST(PlannerLedger, TensorParallelHoldsOneVisionTower) {
  using P = TensorParallel<Cpu<0>, Cpu<1>>;
  check_cases<P, float>("legacy", all_cases);
  check_cases<P, bf16>("legacy", {"two_images", "text_only"});
}

TEST(PlannerLedger, PipelineOfATensorParallelGroupAndADevice) {
  using P = Pipeline<TensorParallel<Cpu<0>, Cpu<1>>, Cpu<2>>;
  check_cases<P, float>("legacy", {"one_image", "video"});
  check_cases<P, float>("legacy", {"two_images"}, pins_of(1, 1, 1));
  check_cases<P, bf16>("legacy", {"two_images"}, pins_of(1, std::nullopt, std::nullopt));
}

TEST(PlannerLedger, OneProcessHoldsTheTowerOnTheFirstRankOnly) {
  PlanRequest req;
  req.stages = {{"cpu0", "cpu1"}};
  req.element_size = 4;
  req.max_context = 64;
  req.max_image_patches = 256;
  const auto one = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  req.one_process = false;
  const auto mpi = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const std::uint64_t tower = one.modules.front().bytes_per_device;
  EXPECT_EQ(one.device("cpu0").weights, one.device("cpu1").weights + tower);
  EXPECT_EQ(mpi.device("cpu0").weights, mpi.device("cpu1").weights);
  EXPECT_EQ(mpi.device("cpu1").weights, one.device("cpu0").weights);
  EXPECT_GT(mpi.device("cpu1").activations, one.device("cpu1").activations);  // its own vision pass

  // The host inputs: the float pixels of every patch by default, charged to cpu0 only.
  req.one_process = true;
  req.host_input_bytes = 0;
  const auto none = placement::plan_qwen2_5_vl(vl_dir("legacy"), req);
  const auto cfg = vl::Config::load(vl_dir("legacy"));
  EXPECT_EQ(one.device("cpu0").activations - none.device("cpu0").activations,
            256u * static_cast<std::uint64_t>(cfg.vision.patch_dim()) * 4u);
  EXPECT_EQ(one.device("cpu1").activations, none.device("cpu1").activations);
}

}  // namespace
}  // namespace tessera::testing
