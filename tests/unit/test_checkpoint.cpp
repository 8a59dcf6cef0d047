// Checkpoint directories: small checkpoints written with save_safetensors and
// hand-written index JSON; every tensor loads bit-exact on two CPU slots and
// in two dtypes; one test per structural error with its message; the
// progress bar's rules.
#include <tessera/io/checkpoint.hpp>

#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace tessera;
using namespace tessera::io;
using tessera::testing::expect_error;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("tessera_ckpt_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    // Two shards: floats and bf16 in the first, a mix in the second.
    a_ = tessera::testing::random_tensor<float>(Shape{4, 3});
    b_ = tessera::testing::random_tensor<bf16>(Shape{5});
    c_ = tessera::testing::random_tensor<bf16>(Shape{2, 2, 2});
    d_ = tessera::testing::random_tensor<float>(Shape{7});
    e_ = tessera::testing::random_tensor<f16>(Shape{3, 1});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void write_text(const std::string& name, const std::string& text) {
    std::ofstream out(dir_ / name, std::ios::binary);
    out << text;
  }
  void write_shards() {
    save_safetensors(dir_ / "model-00001-of-00002.safetensors",
                     {safetensors_entry("model.a", a_), safetensors_entry("model.b", b_)});
    save_safetensors(dir_ / "model-00002-of-00002.safetensors",
                     {safetensors_entry("model.c", c_), safetensors_entry("model.d", d_),
                      safetensors_entry("lm_head.e", e_)});
  }
  static std::string index_json(const std::string& extra_entries = "") {
    return R"({"metadata": {"total_size": 118}, "weight_map": {)"
           R"("model.a": "model-00001-of-00002.safetensors", "model.b": "model-00001-of-00002.safetensors",)"
           R"("model.c": "model-00002-of-00002.safetensors", "model.d": "model-00002-of-00002.safetensors",)"
           R"("lm_head.e": "model-00002-of-00002.safetensors")" +
           extra_entries + "}}";
  }
  void write_sharded() {
    write_shards();
    write_text("model.safetensors.index.json", index_json());
  }

  std::filesystem::path dir_;
  Tensor<Host, float> a_, d_;
  Tensor<Host, bf16> b_, c_;
  Tensor<Host, f16> e_;
};

template <class A, class B>
void expect_same_bytes(const A& loaded, const B& original) {
  ASSERT_EQ(loaded.shape(), original.shape());
  EXPECT_EQ(std::memcmp(loaded.raw(), original.raw(), original.bytes()), 0);
}

// The float value of every element, for comparing across dtypes.
template <Device D, class T>
std::vector<float> as_floats(const Tensor<D, T>& t) {
  std::vector<float> out;
  for (const auto& v : t.span()) out.push_back(static_cast<float>(v));
  return out;
}

template <Device D, class T>
Tensor<D, T> ld(const Checkpoint& c, const std::string& name) {
  return c.load<D, T>(name);
}

// Expects Checkpoint::open(dir) (and validate()) to throw E mentioning every fragment.
template <class E>
void expect_open_error(const std::filesystem::path& dir, std::initializer_list<std::string> parts,
                       CheckpointOptions options = {}) {
  expect_error<E>([&] { Checkpoint::open(dir, options).validate(); }, parts);
}

TEST_F(CheckpointTest, TwoShardsLoadBitExact) {
  write_sharded();
  const auto ckpt = Checkpoint::open(dir_);
  EXPECT_TRUE(ckpt.sharded());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"lm_head.e", "model.a", "model.b", "model.c", "model.d"}));
  EXPECT_EQ(ckpt.shards(), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                      "model-00002-of-00002.safetensors"}));
  EXPECT_TRUE(ckpt.contains("model.c"));
  EXPECT_FALSE(ckpt.contains("model.z"));
  EXPECT_EQ(ckpt.declared_total_size(), 118u);
  EXPECT_EQ(ckpt.total_bytes(), 48u + 10u + 16u + 28u + 6u);

  // Stored dtype: bit-exact on Cpu<0> and Cpu<1>.
  expect_same_bytes(ld<Host, float>(ckpt, "model.a"), a_);
  expect_same_bytes(ld<Host, bf16>(ckpt, "model.b"), b_);
  expect_same_bytes(ld<Host, bf16>(ckpt, "model.c"), c_);
  expect_same_bytes(ld<Cpu<1>, float>(ckpt, "model.d"), d_);
  expect_same_bytes(ld<Cpu<1>, f16>(ckpt, "lm_head.e"), e_);
  expect_same_bytes(ld<Cpu<1>, bf16>(ckpt, "model.b"), b_);

  // Converted: bf16/f16 -> float is exact; float -> bf16 rounds as convert<> does.
  EXPECT_EQ(as_floats(ld<Host, float>(ckpt, "model.c")), as_floats(c_));
  EXPECT_EQ(as_floats(ld<Cpu<1>, float>(ckpt, "lm_head.e")), as_floats(e_));
  const auto a_bf = ld<Host, bf16>(ckpt, "model.a");
  for (std::size_t i = 0; i < a_.span().size(); ++i) EXPECT_EQ(a_bf.span()[i].bits, bf16(a_.span()[i]).bits) << i;

  const auto info = ckpt.info("model.d");
  EXPECT_EQ(info.name, "model.d");
  EXPECT_EQ(info.dtype, SafetensorsDtype::F32);
  EXPECT_EQ(info.shape, (Shape{7}));
  EXPECT_EQ(info.shard, "model-00002-of-00002.safetensors");
  EXPECT_EQ(info.nbytes, 28u);
  // The byte range is the tensor's bytes in the shard file.
  std::ifstream shard(dir_ / info.shard, std::ios::binary);
  std::vector<char> bytes(info.nbytes);
  shard.seekg(static_cast<std::streamoff>(info.file_offset));
  shard.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_EQ(std::memcmp(bytes.data(), d_.raw(), d_.bytes()), 0);
}

TEST_F(CheckpointTest, SingleFileCheckpoint) {
  save_safetensors(dir_ / "model.safetensors", {safetensors_entry("x", a_), safetensors_entry("y", b_)});
  const auto ckpt = Checkpoint::open(dir_);
  EXPECT_FALSE(ckpt.sharded());
  EXPECT_EQ(ckpt.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ckpt.shards(), (std::vector<std::string>{"model.safetensors"}));
  EXPECT_EQ(ckpt.declared_total_size(), std::nullopt);
  EXPECT_EQ(ckpt.info("y").shard, "model.safetensors");
  expect_same_bytes(ld<Cpu<1>, float>(ckpt, "x"), a_);
  expect_same_bytes(ld<Host, bf16>(ckpt, "y"), b_);
}

TEST_F(CheckpointTest, SingleFileWinsOverIndexLikeTransformers) {
  write_text("model.safetensors.index.json", "this index is never read");
  save_safetensors(dir_ / "model.safetensors", {safetensors_entry("x", a_)});
  EXPECT_EQ(Checkpoint::open(dir_).names(), (std::vector<std::string>{"x"}));
}

TEST_F(CheckpointTest, LoadIntoChecksShape) {
  write_sharded();
  const auto ckpt = Checkpoint::open(dir_);
  auto into = Tensor<Cpu<1>, float>(Shape{4, 3});
  ckpt.load_into("model.a", into);
  expect_same_bytes(into, a_);
  auto bf = Tensor<Host, float>(Shape{2, 2, 2});
  ckpt.load_into("model.c", bf);
  EXPECT_EQ(as_floats(bf), as_floats(c_));
  auto wrong = Tensor<Host, float>(Shape{3, 4});
  expect_error<ShapeError>([&] { ckpt.load_into("model.a", wrong); },
                           {"model.a", "model-00001-of-00002.safetensors", "[4, 3]", "[3, 4]", "Cpu<0>", dir_.string()});
}

TEST_F(CheckpointTest, LoadAllAndLoadEach) {
  write_sharded();
  const auto ckpt = Checkpoint::open(dir_);
  const auto all = ckpt.load_all<Cpu<1>, float>();
  ASSERT_EQ(all.size(), 5u);
  expect_same_bytes(all.at("model.a"), a_);
  EXPECT_EQ(as_floats(all.at("model.b")), as_floats(b_));

  // load_each goes shard by shard, in file order, whatever order it is given.
  std::vector<std::string> seen;
  ckpt.load_each<Host, bf16>({"model.d", "model.a", "lm_head.e"},
                             [&](const std::string& name, Tensor<Host, bf16>&& t) {
                               seen.push_back(name);
                               EXPECT_EQ(t.shape(), ckpt.info(name).shape);
                             });
  EXPECT_EQ(seen.front(), "model.a");
  EXPECT_EQ(seen.size(), 3u);
}

TEST_F(CheckpointTest, ConcurrentLoadsOpenEachShardOnce) {
  write_sharded();
  const auto ckpt = Checkpoint::open(dir_);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (const auto& name : ckpt.names()) (void)ckpt.load<Host, float>(name);
    });
  }
  for (auto& t : threads) t.join();
  expect_same_bytes(ld<Host, float>(ckpt, "model.d"), d_);
}

TEST_F(CheckpointTest, UnknownTensorSuggestsPrefixedName) {
  write_sharded();
  const auto ckpt = Checkpoint::open(dir_);
  expect_error<ValueError>([&] { (void)ckpt.info("a"); }, {dir_.string(), "no tensor 'a'", "did you mean 'model.a'"});
  expect_error<ValueError>([&] { (void)ld<Host, float>(ckpt, "visual.x"); }, {"no tensor 'visual.x'", "5 tensors"});
}

// ---- errors ----------------------------------------------------------------------

TEST_F(CheckpointTest, MissingDirectory) {
  expect_open_error<IoError>(dir_ / "nope", {(dir_ / "nope").string(), "does not exist"});
  write_text("file", "x");
  expect_open_error<IoError>(dir_ / "file", {"not a directory"});
}

TEST_F(CheckpointTest, NeitherFilePresent) {
  expect_open_error<IoError>(dir_, {dir_.string(), "neither model.safetensors nor model.safetensors.index.json",
                                    "empty"});
  write_text("pytorch_model.bin", "x");
  write_text("config.json", "{}");
  expect_open_error<IoError>(dir_, {"config.json, pytorch_model.bin", "convert them to safetensors"});
}

TEST_F(CheckpointTest, MalformedIndex) {
  write_shards();
  const auto index = (dir_ / "model.safetensors.index.json").string();
  write_text("model.safetensors.index.json", R"({"weight_map": {"model.a": )");
  expect_open_error<FormatError>(dir_, {index, "not valid JSON"});
  write_text("model.safetensors.index.json", "[1, 2]");
  expect_open_error<FormatError>(dir_, {index, "must be a JSON object", "array"});
  write_text("model.safetensors.index.json", R"({"metadata": {}})");
  expect_open_error<FormatError>(dir_, {index, "no \"weight_map\""});
  write_text("model.safetensors.index.json", R"({"weight_map": ["model.a"]})");
  expect_open_error<FormatError>(dir_, {index, "\"weight_map\" must be a JSON object", "array"});
  write_text("model.safetensors.index.json", R"({"weight_map": {}})");
  expect_open_error<FormatError>(dir_, {index, "empty"});
  write_text("model.safetensors.index.json", R"({"weight_map": {"model.a": 3}})");
  expect_open_error<FormatError>(dir_, {index, "'model.a'", "plain file name", "(3)"});
  write_text("model.safetensors.index.json", R"({"weight_map": {"model.a": "../model-00001-of-00002.safetensors"}})");
  expect_open_error<FormatError>(dir_, {index, "'model.a'", "plain file name", "../model-00001"});
  write_text("model.safetensors.index.json", R"({"metadata": {"total_size": -5}, "weight_map": {"a": "x"}})");
  expect_open_error<FormatError>(dir_, {index, "metadata.total_size", "negative integer", "-5"});
  write_text("model.safetensors.index.json", R"({"metadata": "big", "weight_map": {"a": "x"}})");
  expect_open_error<FormatError>(dir_, {index, "\"metadata\" must be a JSON object"});
  // An integral float total_size is accepted (some converters write one).
  write_text("model.safetensors.index.json", R"({"metadata": {"total_size": 118.0}, "weight_map": )"
                                             R"({"model.a": "model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(Checkpoint::open(dir_, {ExtraTensors::ignore, {}}).declared_total_size(), 118u);
}

TEST_F(CheckpointTest, MissingShardFile) {
  write_shards();
  std::filesystem::remove(dir_ / "model-00002-of-00002.safetensors");
  write_text("model.safetensors.index.json", index_json());
  // Found by open() itself, before any shard is mapped.
  expect_error<IoError>([&] { (void)Checkpoint::open(dir_); },
                        {dir_.string(), "shard 'model-00002-of-00002.safetensors'", "does not exist",
                         "for tensor 'lm_head.e' and 2 more"});
}

TEST_F(CheckpointTest, TensorListedButAbsentFromItsShard) {
  write_shards();
  write_text("model.safetensors.index.json",
             index_json(R"(, "model.ghost": "model-00001-of-00002.safetensors")"));
  const auto ckpt = Checkpoint::open(dir_);  // lazy: the shard is not mapped yet
  EXPECT_TRUE(ckpt.contains("model.ghost"));
  // Any use of that shard reports it, every time.
  for (int i = 0; i < 2; ++i) {
    expect_error<FormatError>([&] { (void)ld<Host, float>(ckpt, "model.a"); },
                              {dir_.string(), "tensor 'model.ghost'", "for shard 'model-00001-of-00002.safetensors'",
                               "no such tensor"});
  }
  // The other shard is fine.
  expect_same_bytes(ld<Host, float>(ckpt, "model.d"), d_);
  expect_error<FormatError>([&] { ckpt.validate(); }, {"model.ghost"});
}

TEST_F(CheckpointTest, TensorPresentInTwoShards) {
  write_shards();
  // model.a is also stored in the second shard.
  save_safetensors(dir_ / "model-00002-of-00002.safetensors",
                   {safetensors_entry("model.c", c_), safetensors_entry("model.d", d_),
                    safetensors_entry("lm_head.e", e_), safetensors_entry("model.a", a_)});
  write_text("model.safetensors.index.json", index_json());
  expect_open_error<FormatError>(dir_, {dir_.string(), "tensor 'model.a'", "stored in shard 'model-00002-of-00002",
                                        "maps it to shard 'model-00001-of-00002", "exactly one shard"});
}

TEST_F(CheckpointTest, ShardTensorNotInIndex) {
  write_shards();
  save_safetensors(dir_ / "model-00002-of-00002.safetensors",
                   {safetensors_entry("model.c", c_), safetensors_entry("model.d", d_),
                    safetensors_entry("lm_head.e", e_), safetensors_entry("extra.x", a_)});
  write_text("model.safetensors.index.json", index_json());
  // Default: a warning naming the shard and tensor; the tensor is not listed.
  std::vector<std::string> warnings;
  const auto ckpt = Checkpoint::open(dir_, {ExtraTensors::warn, [&](const std::string& w) { warnings.push_back(w); }});
  ckpt.validate();
  ckpt.validate();  // reported once per shard, when it is mapped
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("shard 'model-00002-of-00002.safetensors' holds 1 tensor that"), std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("'extra.x'"), std::string::npos);
  EXPECT_FALSE(ckpt.contains("extra.x"));
  expect_same_bytes(ld<Host, float>(ckpt, "model.d"), d_);
  // ExtraTensors::error: a FormatError. ignore: silence.
  expect_open_error<FormatError>(dir_, {"'extra.x'", "does not list"}, {ExtraTensors::error, {}});
  warnings.clear();
  Checkpoint::open(dir_, {ExtraTensors::ignore, [&](const std::string& w) { warnings.push_back(w); }}).validate();
  EXPECT_TRUE(warnings.empty());
}

TEST_F(CheckpointTest, CorruptShardNamesTheShardFile) {
  write_sharded();
  write_text("model-00002-of-00002.safetensors", "not a safetensors file");
  const auto ckpt = Checkpoint::open(dir_);
  expect_same_bytes(ld<Host, float>(ckpt, "model.a"), a_);  // the good shard still loads
  expect_error<FormatError>([&] { (void)ckpt.info("model.c"); }, {"model-00002-of-00002.safetensors"});
}

TEST_F(CheckpointTest, UnsupportedConversionNamesTensor) {
  const auto ids = Tensor<Host, std::int64_t>::from({1, 2, 3}, Shape{3});
  save_safetensors(dir_ / "model.safetensors", {safetensors_entry("ids", ids)});
  const auto ckpt = Checkpoint::open(dir_);
  expect_error<ValueError>([&] { (void)ld<Host, float>(ckpt, "ids"); }, {"'ids'", "I64", "float32"});
}

// ---- progress ----------------------------------------------------------------------

TEST(Progress, RendersBarPercentAndBytes) {
  EXPECT_EQ(ProgressBar::render("load", 512, 1024, 1.0, 10), "load [#####     ]  50% 512 B / 1.0 KiB 512 B/s");
  EXPECT_EQ(ProgressBar::format_bytes(3.5 * 1024 * 1024 * 1024), "3.5 GiB");
  EXPECT_EQ(ProgressBar::render("x", 0, 0, 0.0, 2), "x [##] 100% 0 B / 0 B 0 B/s");
}

TEST(Progress, SilentWhenQuickOrNotATerminal) {
  std::string out;
  const auto sink = [&](std::string_view s) { out += s; };
  {
    ProgressBar quick("q", 100, {ProgressMode::always, std::chrono::milliseconds(60'000), {}, 10, sink});
    quick.advance(100);
    quick.finish();
    EXPECT_FALSE(quick.shown());
  }
  {
    ProgressBar off("n", 100, {ProgressMode::never, std::chrono::milliseconds(0), {}, 10, sink});
    off.advance(50);
  }
  if (::isatty(STDERR_FILENO) != 1) {  // as under ctest: auto mode stays silent
    ProgressBar tty("t", 100, {ProgressMode::auto_tty, std::chrono::milliseconds(0), {}, 10, sink});
    tty.advance(50);
  }
  EXPECT_EQ(out, "");
}

TEST(Progress, DrawsAfterTheDelayAndEndsTheLine) {
  std::string out;
  ProgressBar bar("w", 100, {ProgressMode::always, std::chrono::milliseconds(0), std::chrono::milliseconds(0), 4,
                             [&](std::string_view s) { out += s; }});
  bar.advance(50);
  EXPECT_TRUE(bar.shown());
  EXPECT_NE(out.find("\rw [##  ]  50%"), std::string::npos) << out;
  bar.advance(50);
  bar.finish();
  EXPECT_NE(out.find("100%"), std::string::npos);
  EXPECT_EQ(out.back(), '\n');
}

TEST_F(CheckpointTest, LoadAllReportsProgressThroughTheSink) {
  write_sharded();
  std::string out;
  const auto all = Checkpoint::open(dir_).load_all<Host, float>(
      {ProgressMode::always, std::chrono::milliseconds(0), std::chrono::milliseconds(0), 10,
       [&](std::string_view s) { out += s; }});
  EXPECT_EQ(all.size(), 5u);
  EXPECT_NE(out.find("100% 108 B / 108 B"), std::string::npos) << out;
}

}  // namespace
