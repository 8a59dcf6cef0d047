// The safetensors reader: files built byte by byte here (independent of the
// writer), the reference implementation's own serialisation examples, a
// round trip through the writer, dtype conversion, and one test per
// validation error with its message.
#include <tessera/io/safetensors.hpp>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace tessera;
using namespace tessera::io;
using tessera::testing::expect_error;

// A fresh directory per test under the system temp dir, removed afterwards.
class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("tessera_st_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path write(const std::string& name, const std::vector<std::byte>& bytes) {
    const auto path = dir_ / name;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  std::filesystem::path dir_;
};

// 8-byte little-endian length (the header's unless overridden), the header,
// then the data bytes.
std::vector<std::byte> make_file(const std::string& header, const std::vector<std::uint8_t>& data = {},
                                 std::optional<std::uint64_t> length = std::nullopt) {
  std::vector<std::byte> out;
  std::uint64_t n = length.value_or(header.size());
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<std::byte>(n & 0xffu));
    n >>= 8;
  }
  for (char c : header) out.push_back(static_cast<std::byte>(c));
  for (auto b : data) out.push_back(static_cast<std::byte>(b));
  return out;
}

// file.load<Host, T>(name), spelled without a comma for gtest's macros.
template <class T>
Tensor<Host, T> ld(const SafetensorsFile& file, std::string_view name) {
  return file.load<Host, T>(name);
}

std::vector<std::uint8_t> zeros(std::size_t n) { return std::vector<std::uint8_t>(n, 0); }

template <class T>
void append(std::vector<std::uint8_t>& data, T value) {
  const auto bytes = std::bit_cast<std::array<std::uint8_t, sizeof(T)>>(value);
  data.insert(data.end(), bytes.begin(), bytes.end());
}

// Expects parsing `bytes` to throw FormatError mentioning every fragment.
void expect_format_error(const std::vector<std::byte>& bytes, std::initializer_list<std::string> parts) {
  expect_error<FormatError>([&] { (void)SafetensorsFile::parse(bytes, "bad.safetensors"); }, parts);
}

std::string f32_entry(const std::string& name, const std::string& shape, std::uint64_t begin, std::uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(begin) +
         "," + std::to_string(end) + "]}";
}

// ---- valid files --------------------------------------------------------------

TEST_F(Safetensors, HandBuiltFileOpensAndLoads) {
  std::vector<std::uint8_t> data;
  append(data, 1.5f);
  append(data, -2.0f);
  append<std::uint16_t>(data, 0x3f80);  // bf16 1.0
  append<std::uint16_t>(data, 0xc040);  // bf16 -3.0
  // Deliberately listed out of offset order, with an unknown extra field.
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12],"extra":[1,{"x":2}]},)"
      R"("__metadata__":{"format":"pt","note":"hand built"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const auto path = write("hand.safetensors", make_file(header, data));
  const auto file = SafetensorsFile::open(path);

  EXPECT_EQ(file.path(), path.string());
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");  // data-offset order
  EXPECT_EQ(file.tensors()[1].name, "b");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.metadata().at("note"), "hand built");
  EXPECT_EQ(file.header().data_start, 8 + header.size());

  const TensorInfo* a = file.find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, SafetensorsDtype::F32);
  EXPECT_EQ(a->shape, (Shape{2}));
  EXPECT_EQ(a->begin, 0u);
  EXPECT_EQ(a->end, 8u);
  EXPECT_EQ(file.find("missing"), nullptr);
  expect_error<ValueError>([&] { (void)file.at("missing"); }, {"hand.safetensors", "no tensor 'missing'"});

  const auto raw = file.bytes(file.at("b"));
  ASSERT_EQ(raw.size(), 4u);
  EXPECT_EQ(raw[0], std::byte{0x80});
  EXPECT_EQ(raw[1], std::byte{0x3f});

  const auto ta = file.load<Host, float>("a");
  EXPECT_EQ(ta.shape(), (Shape{2}));
  EXPECT_EQ(ta.at(0), 1.5f);
  EXPECT_EQ(ta.at(1), -2.0f);
  const auto tb = file.load<Cpu<1>, float>("b");  // any CPU slot
  EXPECT_EQ(tb.shape(), (Shape{1, 2}));
  EXPECT_EQ(tb.at(0, 0), 1.0f);
  EXPECT_EQ(tb.at(0, 1), -3.0f);
  const auto tb16 = file.load<Host, bf16>("b");  // same dtype: a byte copy
  EXPECT_EQ(tb16.at(0, 1).bits, 0xc040);
}

// The byte-exact examples from the reference implementation's own tests
// (safetensors/src/tensor.rs: test_serialization, test_empty): they parse,
// and the writer reproduces them byte for byte.
TEST_F(Safetensors, MatchesReferenceSerialisationBytes) {
  const std::vector<std::uint8_t> expected = {
      64,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,  58,  123, 34,  100,
      116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,  115, 104, 97,  112, 101, 34,  58,  91,
      49,  44,  50,  44,  51,  93,  44,  34,  100, 97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,
      58,  91,  48,  44,  50,  52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,  0,   0,   0,   64,
      0,   0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64};
  std::vector<std::byte> bytes;
  for (auto b : expected) bytes.push_back(static_cast<std::byte>(b));
  const auto parsed = SafetensorsFile::parse(bytes);
  const auto t = parsed.load<Host, float>("attn.0");
  EXPECT_EQ(t.shape(), (Shape{1, 2, 3}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.at(0, 1, i), static_cast<float>(3 + i));

  const auto src = Tensor<Host, float>::from({0, 1, 2, 3, 4, 5}, Shape{1, 2, 3});
  const auto path = dir_ / "attn.safetensors";
  save_safetensors(path, {safetensors_entry("attn.0", src)});
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(written.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(static_cast<std::uint8_t>(written[i]), expected[i]) << i;

  // An empty file with metadata: {"__metadata__":{"framework":"pt"}} padded to 40.
  const auto empty_path = dir_ / "empty.safetensors";
  save_safetensors(empty_path, {}, {{"framework", "pt"}});
  const auto empty = SafetensorsFile::open(empty_path);
  EXPECT_TRUE(empty.tensors().empty());
  EXPECT_EQ(empty.file_size(), 48u);
  EXPECT_EQ(empty.header().header_bytes, 40u);
  EXPECT_EQ(empty.metadata().at("framework"), "pt");
}

TEST_F(Safetensors, WriterRoundTrip) {
  const auto f = tessera::testing::random_tensor<float>(Shape{3, 5});
  const auto b = tessera::testing::random_tensor<bf16>(Shape{4});
  const auto h = tessera::testing::random_tensor<f16>(Shape{2, 1, 3});
  const auto i32 = tessera::testing::random_ints<std::int32_t>(Shape{7}, -1000, 1000);
  const auto i64 = tessera::testing::random_ints<std::int64_t>(Shape{2, 2}, -(1ll << 40), 1ll << 40);
  const auto scalar = Tensor<Host, float>::from({42.0f}, Shape{});
  const auto empty = Tensor<Host, float>(Shape{0, 3});
  const auto path = dir_ / "round.safetensors";
  save_safetensors(path,
                   {safetensors_entry("z.f32", f), safetensors_entry("y.bf16", b), safetensors_entry("x.f16", h),
                    safetensors_entry("w.i32", i32), safetensors_entry("v.i64", i64),
                    safetensors_entry("scalar", scalar), safetensors_entry("empty", empty)},
                   {{"format", "pt"}});
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.header().header_bytes % 8, 0u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  // Laid out like the reference writer: widest dtype first, then by name.
  std::vector<std::string> order;
  for (const auto& t : file.tensors()) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"v.i64", "empty", "scalar", "z.f32", "w.i32", "y.bf16", "x.f16"}));

  const auto expect_same_bytes = [&](const auto& loaded, const auto& original) {
    ASSERT_EQ(loaded.shape(), original.shape());
    EXPECT_EQ(std::memcmp(loaded.raw(), original.raw(), original.bytes()), 0);
  };
  expect_same_bytes(file.load<Host, float>("z.f32"), f);
  expect_same_bytes(file.load<Host, bf16>("y.bf16"), b);
  expect_same_bytes(file.load<Host, f16>("x.f16"), h);
  expect_same_bytes(file.load<Host, std::int32_t>("w.i32"), i32);
  expect_same_bytes(file.load<Host, std::int64_t>("v.i64"), i64);
  EXPECT_EQ(ld<float>(file, "scalar").at(), 42.0f);
  EXPECT_EQ(ld<float>(file, "empty").shape(), (Shape{0, 3}));

  // load_into an existing tensor; a wrong shape is a ShapeError.
  auto into = Tensor<Host, float>(Shape{3, 5});
  file.load_into(file.at("z.f32"), into);
  expect_same_bytes(into, f);
  auto wrong = Tensor<Host, float>(Shape{5, 3});
  expect_error<ShapeError>([&] { file.load_into(file.at("z.f32"), wrong); }, {"z.f32", "[3, 5]", "[5, 3]"});

  // The writer refuses duplicate names and short data.
  expect_error<ValueError>([&] { save_safetensors(dir_ / "dup.safetensors", {safetensors_entry("a", f), safetensors_entry("a", f)}); },
                           {"'a'", "twice"});
  SafetensorsEntry shortened = safetensors_entry("s", f);
  shortened.data = shortened.data.first(4);
  expect_error<ValueError>([&] { save_safetensors(dir_ / "short.safetensors", {shortened}); }, {"'s'", "needs 60 bytes"});
}

TEST_F(Safetensors, ZeroSizedAndScalarTensorsAreValid) {
  std::vector<std::uint8_t> data;
  append(data, 7.0f);
  const std::string header = "{" + f32_entry("e0", "[0]", 0, 0) + "," + f32_entry("s", "[]", 0, 4) + "," +
                             f32_entry("e1", "[0,9223372036854775807]", 4, 4) + "}";
  const auto file = SafetensorsFile::parse(make_file(header, data));
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(ld<float>(file, "s").at(), 7.0f);
  EXPECT_EQ(ld<float>(file, "e1").numel(), 0);
  // The reference's empty file: "{}" padded with spaces.
  const auto empty = SafetensorsFile::parse(make_file("{}      "));
  EXPECT_TRUE(empty.tensors().empty());
  EXPECT_TRUE(empty.metadata().empty());
  EXPECT_TRUE(SafetensorsFile::parse(make_file(R"({"__metadata__":null})")).metadata().empty());
}

// tests/fixtures/safetensors/reference.safetensors, written by the reference
// implementation itself (tools/fixtures/make_safetensors_reference.py,
// safetensors 0.8.0). Located from this source file's path.
std::filesystem::path reference_fixture() {
  return tessera::testing::fixtures_dir() / "safetensors" /
         "reference.safetensors";
}

TEST_F(Safetensors, ReferenceLibraryFixture) {
  const auto file = SafetensorsFile::open(reference_fixture());
  EXPECT_EQ(file.metadata().at("format"), "np");
  EXPECT_EQ(file.metadata().at("writer"), "safetensors 0.8.0");
  ASSERT_EQ(file.tensors().size(), 9u);

  const auto f32 = ld<float>(file, "f32");
  ASSERT_EQ(f32.shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(f32.span()[static_cast<std::size_t>(i)], 0.5f * static_cast<float>(i) - 1.0f);
  const auto b = ld<float>(file, "bf16");
  EXPECT_EQ(b.at(0), 1.0f);
  EXPECT_EQ(b.at(1), -2.5f);
  EXPECT_EQ(b.at(2), 0.166015625f);
  EXPECT_EQ(b.at(3), std::numeric_limits<float>::infinity());
  const auto h = ld<float>(file, "f16");
  EXPECT_EQ(h.at(0), 1.0f);
  EXPECT_EQ(h.at(1), -2.5f);
  EXPECT_EQ(h.at(2), 65504.0f);
  const auto d = ld<float>(file, "f64");
  EXPECT_EQ(d.shape(), Shape{});
  EXPECT_EQ(d.at(), 0.1f);
  const auto i64 = ld<std::int64_t>(file, "i64");
  EXPECT_EQ(i64.at(0), -3);
  EXPECT_EQ(i64.at(1), 1ll << 40);
  const auto i32 = ld<std::int32_t>(file, "i32");
  EXPECT_EQ(i32.at(1, 1), -4);
  const auto u8 = ld<std::int32_t>(file, "u8");
  EXPECT_EQ(u8.at(4), 4);
  const auto flag = ld<std::int64_t>(file, "flag");
  EXPECT_EQ(flag.at(0), 1);
  EXPECT_EQ(flag.at(1), 0);
  EXPECT_EQ(ld<float>(file, "empty").shape(), (Shape{0, 4}));

  // tessera's writer, given the same tensors, reproduces the file byte for byte.
  std::vector<SafetensorsEntry> entries;
  for (const auto& t : file.tensors()) entries.push_back({t.name, t.dtype, t.shape, file.bytes(t)});
  const auto copy = dir_ / "copy.safetensors";
  save_safetensors(copy, entries, file.metadata());
  const auto read_all = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(read_all(copy), read_all(reference_fixture()));
}

// ---- dtype conversion ---------------------------------------------------------

TEST_F(Safetensors, Bf16AndF16ToFloatAreExact) {
  const std::vector<std::uint16_t> bf = {0x3f80, 0xc020, 0x0000, 0x8000, 0x7f80, 0xff80, 0x0001, 0x7f7f, 0x3e2a};
  const std::vector<float> bf_expected = {1.0f,  -2.5f,
                                          0.0f,  -0.0f,
                                          std::numeric_limits<float>::infinity(),
                                          -std::numeric_limits<float>::infinity(),
                                          std::ldexp(1.0f, -133),  // smallest bf16 subnormal
                                          3.38953139e38f,          // largest finite bf16
                                          0.166015625f};
  const std::vector<std::uint16_t> hf = {0x3c00, 0xc100, 0x0001, 0x7bff, 0x3555};
  const std::vector<float> hf_expected = {1.0f, -2.5f, std::ldexp(1.0f, -24), 65504.0f, 0.333251953125f};
  std::vector<std::uint8_t> data;
  for (auto v : bf) append(data, v);
  for (auto v : hf) append(data, v);
  append(data, 0.1);  // F64
  append(data, 1.00390625f);  // F32 1 + 2^-8: halfway between two bf16 values, rounds to even (1.0)
  const std::string header = R"({"bf":{"dtype":"BF16","shape":[9],"data_offsets":[0,18]},)"
                             R"("hf":{"dtype":"F16","shape":[5],"data_offsets":[18,28]},)"
                             R"("d":{"dtype":"F64","shape":[1],"data_offsets":[28,36]},)"
                             R"("f":{"dtype":"F32","shape":[1],"data_offsets":[36,40]}})";
  const auto file = SafetensorsFile::parse(make_file(header, data));
  const auto bft = file.load<Host, float>("bf");
  for (std::size_t i = 0; i < bf.size(); ++i) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(bft.span()[i]), std::bit_cast<std::uint32_t>(bf_expected[i])) << i;
  }
  const auto hft = file.load<Host, float>("hf");
  for (std::size_t i = 0; i < hf.size(); ++i) EXPECT_EQ(hft.span()[i], hf_expected[i]) << i;
  EXPECT_EQ(ld<float>(file, "d").at(0), 0.1f);
  EXPECT_EQ(ld<bf16>(file, "f").at(0).bits, 0x3f80);
  EXPECT_EQ(ld<f16>(file, "bf").at(0).bits, 0x3c00);  // bf16 -> f16 through float
  EXPECT_EQ(ld<bf16>(file, "hf").at(1).bits, 0xc020);
}

TEST_F(Safetensors, IntegerConversionsAreRangeChecked) {
  std::vector<std::uint8_t> data;
  append<std::int64_t>(data, -5);
  append<std::int64_t>(data, 1ll << 40);
  append<std::int32_t>(data, -7);
  data.push_back(200);  // U8
  data.push_back(1);    // BOOL
  const std::string header = R"({"i64":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
                             R"("i32":{"dtype":"I32","shape":[1],"data_offsets":[16,20]},)"
                             R"("u8":{"dtype":"U8","shape":[1],"data_offsets":[20,21]},)"
                             R"("flag":{"dtype":"BOOL","shape":[1],"data_offsets":[21,22]}})";
  const auto file = SafetensorsFile::parse(make_file(header, data), "ints.safetensors");
  const auto a = file.load<Host, std::int64_t>("i64");
  EXPECT_EQ(a.at(0), -5);
  EXPECT_EQ(a.at(1), 1ll << 40);
  EXPECT_EQ(ld<std::int64_t>(file, "i32").at(0), -7);
  EXPECT_EQ(ld<std::int32_t>(file, "u8").at(0), 200);
  EXPECT_EQ(ld<std::int32_t>(file, "flag").at(0), 1);
  expect_error<ValueError>([&] { (void)file.load<Host, std::int32_t>("i64"); },
                           {"ints.safetensors", "'i64'", "element 1", "1099511627776", "I64", "int32"});
}

TEST_F(Safetensors, UnsupportedConversionNamesTensorAndBothDtypes) {
  const std::string header = R"({"fp8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},)"
                             R"("w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]},)"
                             R"("ids":{"dtype":"I32","shape":[1],"data_offsets":[6,10]}})";
  const auto file = SafetensorsFile::parse(make_file(header, zeros(10)), "conv.safetensors");
  expect_error<ValueError>([&] { (void)file.load<Host, float>("fp8"); },
                           {"conv.safetensors", "'fp8'", "F8_E4M3", "float32"});
  expect_error<ValueError>([&] { (void)file.load<Host, std::int32_t>("w"); }, {"'w'", "F32", "int32"});
  expect_error<ValueError>([&] { (void)file.load<Host, bf16>("ids"); }, {"'ids'", "I32", "bf16"});
}

// ---- validation errors ----------------------------------------------------------

TEST_F(Safetensors, TruncatedFile) {
  const auto path = write("short.safetensors", {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}, std::byte{5}});
  expect_error<FormatError>([&] { (void)SafetensorsFile::open(path); },
                            {path.string(), "5 bytes long", "8-byte header length"});
  const auto empty = write("empty.safetensors", {});
  expect_error<FormatError>([&] { (void)SafetensorsFile::open(empty); }, {"empty.safetensors", "0 bytes long"});
}

TEST_F(Safetensors, MissingFileOrDirectoryIsIoError) {
  expect_error<IoError>([&] { (void)SafetensorsFile::open(dir_ / "nope.safetensors"); },
                        {"nope.safetensors", "cannot open"});
  expect_error<IoError>([&] { (void)SafetensorsFile::open(dir_); }, {"not a regular file"});
}

TEST_F(Safetensors, HeaderLengthOverLimit) {
  expect_format_error(make_file("{}", {}, 100'000'001), {"bad.safetensors", "100000001", "over the limit of 100000000"});
  expect_format_error(make_file("{}", {}, ~0ull), {"18446744073709551615", "over the limit"});
}

TEST_F(Safetensors, HeaderLengthOverFileSize) {
  const auto path = write("cut.safetensors", make_file("{}", {}, 50));
  expect_error<FormatError>([&] { (void)SafetensorsFile::open(path); },
                            {"cut.safetensors", "header length at byte 0 is 50 bytes but only 2 bytes follow it"});
}

TEST_F(Safetensors, BadJson) {
  expect_format_error(make_file(R"({"a": {"dtype": )"), {"bad.safetensors", "not valid JSON", "near file byte"});
  expect_format_error(make_file(""), {"not valid JSON"});
  expect_format_error(make_file("{\"a\xff\": 1}"), {"not valid JSON"});  // invalid UTF-8
  expect_format_error(make_file("{} trailing"), {"not valid JSON"});
  expect_format_error(make_file("[1, 2]"), {"must be a JSON object", "array"});
  expect_format_error(make_file(std::string(100, '[') + std::string(100, ']')), {"deeper than 64"});
}

TEST_F(Safetensors, MetadataMustMapStringsToStrings) {
  expect_format_error(make_file(R"({"__metadata__":{"epoch":3}})"), {"__metadata__", "'epoch'", "must be a string"});
  expect_format_error(make_file(R"({"__metadata__":["pt"]})"), {"__metadata__", "must map strings to strings"});
}

TEST_F(Safetensors, UnknownDtype) {
  expect_format_error(make_file(R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", zeros(16)),
                      {"bad.safetensors", "tensor 'w'", "unknown dtype \"F128\""});
  expect_format_error(make_file(R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,4]}})", zeros(4)),
                      {"tensor 'w'", "\"dtype\" must be a string"});
}

TEST_F(Safetensors, MalformedTensorEntries) {
  expect_format_error(make_file(R"({"w":[1]})"), {"tensor 'w'", "must be a JSON object"});
  expect_format_error(make_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", zeros(4)), {"'w'", "missing \"dtype\""});
  expect_format_error(make_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", zeros(4)), {"'w'", "missing \"shape\""});
  expect_format_error(make_file(R"({"w":{"dtype":"F32","shape":[1]}})", zeros(4)), {"'w'", "missing \"data_offsets\""});
  expect_format_error(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", zeros(4)),
                      {"'w'", "\"data_offsets\" must be [begin, end]"});
  expect_format_error(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", zeros(4)),
                      {"'w'", "\"data_offsets\" must be [begin, end]"});
  expect_format_error(make_file(R"({"w":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", zeros(4)),
                      {"'w'", "\"shape\" must be an array"});
}

TEST_F(Safetensors, NegativeOrFloatShape) {
  expect_format_error(make_file("{" + f32_entry("w", "[2,-1]", 0, 8) + "}", zeros(8)),
                      {"tensor 'w'", "dimension 1", "negative integer", "-1"});
  expect_format_error(make_file("{" + f32_entry("w", "[2.0]", 0, 8) + "}", zeros(8)),
                      {"tensor 'w'", "dimension 0", "non-integer number"});
  expect_format_error(make_file("{" + f32_entry("w", "[\"2\"]", 0, 8) + "}", zeros(8)), {"tensor 'w'", "string"});
  expect_format_error(make_file("{" + f32_entry("w", "[1,1,1,1,1,1,1,1,1]", 0, 4) + "}", zeros(4)),
                      {"tensor 'w'", "rank 9", "maximum rank 8"});
}

TEST_F(Safetensors, OffsetsOutOfRange) {
  expect_format_error(make_file("{" + f32_entry("w", "[4]", 0, 16) + "}", zeros(8)),
                      {"bad.safetensors", "tensor 'w'", "data_offsets [0, 16]", "run past the end of the data section",
                       "8 bytes long"});
  expect_format_error(make_file("{" + f32_entry("w", "[1]", 8, 4) + "}", zeros(8)),
                      {"tensor 'w'", "data_offsets [8, 4] end before they begin"});
}

TEST_F(Safetensors, OverlappingTensors) {
  const std::string header = "{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 4, 12) + "}";
  const auto bytes = make_file(header, zeros(12));
  const std::string at = std::to_string(8 + header.size() + 4);
  expect_format_error(bytes, {"tensor 'b'", "[4, 12]", "file byte " + at, "overlap tensor 'a' [0, 8]"});
  // Two tensors on the same bytes.
  expect_format_error(make_file("{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 0, 8) + "}", zeros(8)),
                      {"overlap"});
}

TEST_F(Safetensors, GapBetweenTensors) {
  const std::string header = "{" + f32_entry("a", "[2]", 0, 8) + "," + f32_entry("b", "[2]", 12, 20) + "}";
  expect_format_error(make_file(header, zeros(20)),
                      {"tensor 'b' starts at data offset 12", "previous tensor 'a' ends at 8", "4 bytes between them"});
  expect_format_error(make_file("{" + f32_entry("a", "[1]", 4, 8) + "}", zeros(8)),
                      {"first tensor 'a' starts at data offset 4", "not 0"});
}

TEST_F(Safetensors, TrailingBytesNotCovered) {
  const std::string header = "{" + f32_entry("a", "[2]", 0, 8) + "}";
  const std::string at = std::to_string(8 + header.size() + 8);
  expect_format_error(make_file(header, zeros(11)),
                      {"the tensors cover 8 bytes of the data section but it is 11 bytes long", "3 bytes from file byte " + at});
}

TEST_F(Safetensors, ShapeDtypeSizeMismatch) {
  expect_format_error(make_file("{" + f32_entry("w", "[3]", 0, 8) + "}", zeros(8)),
                      {"tensor 'w'", "shape [3] with dtype F32 needs 12 bytes", "span 8 bytes"});
  expect_format_error(make_file(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", zeros(2)),
                      {"tensor 'w'", "F4", "not a whole number of bytes"});
}

TEST_F(Safetensors, HugeShapeProductOverflows) {
  expect_format_error(make_file("{" + f32_entry("w", "[4294967296,4294967296]", 0, 4) + "}", zeros(4)),
                      {"tensor 'w'", "[4294967296, 4294967296]", "overflows 64-bit arithmetic"});
  // Fits u64 elements, but not u64 bytes.
  expect_format_error(make_file("{" + f32_entry("w", "[4611686018427387904]", 0, 4) + "}", zeros(4)),
                      {"tensor 'w'", "overflows"});
  // Non-zero dimensions whose product passes INT64_MAX, even with a zero.
  expect_format_error(make_file("{" + f32_entry("w", "[0,4294967296,4294967296]", 0, 0) + "}"),
                      {"tensor 'w'", "overflows"});
  expect_format_error(make_file("{" + f32_entry("w", "[18446744073709551615]", 0, 4) + "}", zeros(4)),
                      {"tensor 'w'", "overflows"});
}

TEST_F(Safetensors, DuplicateTensorName) {
  const std::string header = "{" + f32_entry("w", "[1]", 0, 4) + "," + f32_entry("w", "[1]", 4, 8) + "}";
  expect_format_error(make_file(header, zeros(8)), {"tensor 'w' is listed twice"});
}

TEST_F(Safetensors, FileIsMovableAndOutlivesItsSource) {
  std::vector<std::uint8_t> data;
  append(data, 2.5f);
  const auto path = write("m.safetensors", make_file("{" + f32_entry("x", "[1]", 0, 4) + "}", data));
  auto file = SafetensorsFile::open(path);
  auto moved = std::move(file);
  std::filesystem::remove(path);  // the mapping stays valid
  EXPECT_EQ(ld<float>(moved, "x").at(0), 2.5f);
  auto mem = SafetensorsFile::parse(make_file("{" + f32_entry("x", "[1]", 0, 4) + "}", data));
  SafetensorsFile other = std::move(mem);
  EXPECT_EQ(ld<float>(other, "x").at(0), 2.5f);
}

}  // namespace
