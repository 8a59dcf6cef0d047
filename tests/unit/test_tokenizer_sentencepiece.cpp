// Tests of the sentencepiece tokenizer (tokenizer/sentencepiece.hpp) and of
// the choice of tokenizer for a directory (tokenizer/auto.hpp).
//
// tests/fixtures/tokenizer_sp/ holds two tiny sentencepiece BPE models, trained
// with the settings of InternLM2's tokenizer.model (internlm2/: no dummy
// prefix, the InternVL2 added tokens in tokenizer_config.json, two of them
// renaming the model's last pieces) and of Llama 2's, which Yi and Phi-3 carry
// (llama/: dummy prefix, added tokens in added_tokens.json and
// special_tokens_map.json), and for each the ids and texts that the Python
// sentencepiece library gives when driven as InternLM2Tokenizer drives it
// (tools/fixtures/make_sentencepiece_fixtures.py writes them, and checks them
// against the real InternLM2Tokenizer when given its source).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <tessera/tokenizer/auto.hpp>
#include <tessera/tokenizer/sentencepiece.hpp>

#include "fixtures_dir.hpp"

namespace {

using tessera::tokenizer::AnyTokenizer;
using tessera::tokenizer::EncodeOptions;
using tessera::tokenizer::SentencePieceTokenizer;
using tessera::tokenizer::TokenId;
namespace unicode = tessera::tokenizer::unicode;
namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path fixtures() { return tessera::testing::fixtures_dir(); }
fs::path sp_dir(const std::string& name) { return fixtures() / "tokenizer_sp" / name; }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}
void write_file(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

[[maybe_unused]] json corpus(const std::string& name) { return json::parse(read_file(sp_dir(name) / "corpus.json")); }

[[maybe_unused]] const SentencePieceTokenizer& tok(const std::string& name) {
  static const SentencePieceTokenizer internlm2 = SentencePieceTokenizer::from_directory(sp_dir("internlm2"));
  static const SentencePieceTokenizer llama = SentencePieceTokenizer::from_directory(sp_dir("llama"));
  return name == "internlm2" ? internlm2 : llama;
}

[[maybe_unused]] std::vector<TokenId> ids_of(const json& value) { return value.get<std::vector<TokenId>>(); }

// A scratch directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / ("tessera_sp_" + name + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

template <class Tok>
void expect_stream_matches_decode(const Tok& t, const std::vector<TokenId>& ids, bool skip, const std::string& what) {
  auto stream = t.stream_decoder(skip);
  std::string streamed;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::string chunk = stream.step(ids[i]);
    ASSERT_TRUE(unicode::is_valid_utf8(chunk)) << what << ": chunk after id #" << i << " is not valid UTF-8";
    streamed += chunk;
  }
  const std::string tail = stream.finish();
  EXPECT_TRUE(unicode::is_valid_utf8(tail)) << what;
  streamed += tail;
  EXPECT_FALSE(stream.has_pending()) << what;
  EXPECT_EQ(streamed, t.decode(ids, skip)) << what << (skip ? " (skipping special tokens)" : "");
}

#if defined(TESSERA_HAS_SENTENCEPIECE)

// ---- the fixtures ------------------------------------------------------------------

TEST(SentencePieceFixture, InternLM2Layout) {
  const SentencePieceTokenizer& t = tok("internlm2");
  // 700 pieces + [UNUSED_TOKEN_145], [UNUSED_TOKEN_146]; then <img> </img> <IMG_CONTEXT> <ref>.
  EXPECT_EQ(t.vocab_size(), 706u);
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 700);    // renames [UNUSED_TOKEN_145]
  EXPECT_EQ(t.token_to_id("<|im_start|>"), 701);  // renames [UNUSED_TOKEN_146]
  EXPECT_EQ(t.token_to_id("<img>"), 702);
  EXPECT_EQ(t.token_to_id("</img>"), 703);
  EXPECT_EQ(t.token_to_id("<IMG_CONTEXT>"), 704);
  EXPECT_EQ(t.token_to_id("<ref>"), 705);
  EXPECT_EQ(t.token_to_id("<s>"), 1);
  EXPECT_EQ(t.token_to_id("</s>"), 2);
  EXPECT_EQ(t.token_to_id("[UNUSED_TOKEN_146]"), 701);  // renamed, still a piece (as convert_tokens_to_ids)
  EXPECT_EQ(t.token_to_id("no such piece"), std::nullopt);
  EXPECT_EQ(t.id_to_token(701), "<|im_start|>");
  EXPECT_EQ(t.id_to_token(13), "<0x0A>");
  EXPECT_EQ(t.token_to_id("<0x0A>"), 13);
  EXPECT_TRUE(t.is_special(701));
  EXPECT_TRUE(t.is_special(704));
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(705));  // <ref> is added but not special
  EXPECT_FALSE(t.is_special(13));
  EXPECT_FALSE(t.id_to_token(706).has_value());
  EXPECT_EQ(t.bos_token_id(), 1);
  EXPECT_EQ(t.eos_token_id(), 2);
}

TEST(SentencePieceFixture, LlamaLayout) {
  const SentencePieceTokenizer& t = tok("llama");
  EXPECT_EQ(t.vocab_size(), 704u);
  EXPECT_EQ(t.token_to_id("<|end|>"), 700);
  EXPECT_EQ(t.token_to_id("<|placeholder|>"), 703);
  EXPECT_TRUE(t.is_special(700));
  EXPECT_FALSE(t.is_special(703));  // in added_tokens.json only
}

class SpCorpusTest : public ::testing::TestWithParam<const char*> {
 protected:
  const SentencePieceTokenizer& t() const { return tok(GetParam()); }
  json c() const { return corpus(GetParam()); }
};

TEST_P(SpCorpusTest, IdsEqualReference) {
  const json cj = c();
  ASSERT_GE(cj.at("entries").size(), 40u);
  EncodeOptions no_special;
  no_special.add_special_tokens = false;
  EncodeOptions split;
  split.split_special_tokens = true;
  for (const json& e : cj.at("entries")) {
    const std::string name = e.at("name"), text = e.at("text");
    EXPECT_EQ(t().encode(text), ids_of(e.at("ids"))) << name;
    EXPECT_EQ(t().encode(text, no_special), ids_of(e.at("ids_no_special"))) << name;
    EXPECT_EQ(t().encode(text, split), ids_of(e.at("ids_special_as_text"))) << name;
  }
}

TEST_P(SpCorpusTest, DecodeEqualsReference) {
  const json cj = c();
  for (const json& e : cj.at("entries")) {
    const std::string name = e.at("name");
    const auto ids = ids_of(e.at("ids"));
    EXPECT_EQ(t().decode(ids), e.at("decoded").get<std::string>()) << name;
    EXPECT_EQ(t().decode(ids, true), e.at("decoded_skip_special").get<std::string>()) << name;
  }
  ASSERT_GE(cj.at("decode_cases").size(), 20u);
  for (const json& d : cj.at("decode_cases")) {
    const auto ids = ids_of(d.at("ids"));
    EXPECT_EQ(t().decode(ids), d.at("text").get<std::string>()) << d.at("ids").dump();
    EXPECT_EQ(t().decode(ids, true), d.at("text_skip_special").get<std::string>()) << d.at("ids").dump();
  }
}

TEST_P(SpCorpusTest, StreamingConcatenatesToDecode) {
  const json cj = c();
  std::vector<TokenId> all;  // every text in a row: long runs (the decoder compacts them)
  for (const json& e : cj.at("entries")) {
    const auto ids = ids_of(e.at("ids"));
    all.insert(all.end(), ids.begin(), ids.end());
    for (const bool skip : {false, true}) expect_stream_matches_decode(t(), ids, skip, e.at("name"));
  }
  for (const json& d : cj.at("decode_cases")) {
    for (const bool skip : {false, true}) expect_stream_matches_decode(t(), ids_of(d.at("ids")), skip, d.at("ids").dump());
  }
  ASSERT_GT(all.size(), 500u);
  for (const bool skip : {false, true}) expect_stream_matches_decode(t(), all, skip, "the whole corpus");
}

// Streaming a reply releases text token by token (not all at finish()), and
// holds a character whose byte-fallback pieces are not all there yet.
TEST_P(SpCorpusTest, StreamingIsIncrementalAndHoldsPartialCharacters) {
  const auto ids = t().encode("Describe the cat 🐱 and the 龍 dragon, please.", {.add_special_tokens = false});
  auto stream = t().stream_decoder(true);
  std::size_t chunks = 0;
  for (const TokenId id : ids) {
    const std::string chunk = stream.step(id);
    ASSERT_TRUE(unicode::is_valid_utf8(chunk));
    ASSERT_EQ(chunk.find("\xEF\xBF\xBD"), std::string::npos) << "a partial character was released as U+FFFD";
    if (!chunk.empty()) ++chunks;
  }
  EXPECT_GE(chunks, 5u);
  stream.finish();
}

// Random ids, byte pieces especially: decode() and the stream agree.
TEST_P(SpCorpusTest, StreamingRandomIds) {
  std::mt19937 rng(7);
  const auto n = static_cast<TokenId>(t().vocab_size());
  std::uniform_int_distribution<TokenId> any(0, n - 1), byte(3, 3 + 255);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<TokenId> ids;
    const int len = 1 + trial % 40;
    for (int i = 0; i < len; ++i) ids.push_back(i % 3 == 0 ? any(rng) : byte(rng));
    for (const bool skip : {false, true}) expect_stream_matches_decode(t(), ids, skip, "random trial");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SpCorpusTest, ::testing::Values("internlm2", "llama"),
                         [](const auto& param_info) { return std::string(param_info.param); });

TEST(SentencePiece, RejectsUnknownIdsAndInvalidUtf8) {
  const SentencePieceTokenizer& t = tok("internlm2");
  EXPECT_THROW(t.decode(std::vector<TokenId>{5, 706}), tessera::ValueError);
  EXPECT_THROW(t.decode(std::vector<TokenId>{-1}), tessera::ValueError);
  auto stream = t.stream_decoder();
  EXPECT_THROW(stream.step(9999), tessera::ValueError);
  EXPECT_THROW(t.encode("abc\xC3"), tessera::ValueError);
}

TEST(SentencePiece, CleanUpRulesMatchPythonStrReplace) {
  using tessera::tokenizer::detail::clean_up_tokenization;
  EXPECT_EQ(clean_up_tokenization("a . b , c ! d ? e"), "a. b, c! d? e");
  EXPECT_EQ(clean_up_tokenization("a  ."), "a .");  // one pass, no rescan
  EXPECT_EQ(clean_up_tokenization("it ' s"), "it's");
  EXPECT_EQ(clean_up_tokenization("do n't I 'm we 've they 're he 's"), "don't I'm we've they're he's");
  EXPECT_EQ(clean_up_tokenization("  ' s"), "'s");  // " ' " then " 's"
}

// The stream decoder cleans text in pieces, cut where safe_cleanup_cut says;
// every string of up to 7 characters over the rules' alphabet, fed one
// character at a time, must come out as cleaning it whole does.
TEST(SentencePiece, CleanUpCutsAreSafe) {
  using tessera::tokenizer::detail::clean_up_tokenization;
  using tessera::tokenizer::detail::safe_cleanup_cut;
  constexpr char kAlphabet[] = {' ', '\'', 'n', 't', 's', '.', 'm', 'x'};
  constexpr std::size_t kLetters = sizeof kAlphabet;
  for (std::size_t len = 1; len <= 7; ++len) {
    std::size_t count = 1;
    for (std::size_t i = 0; i < len; ++i) count *= kLetters;
    std::string s(len, ' ');
    for (std::size_t code = 0; code < count; ++code) {
      for (std::size_t i = 0, c = code; i < len; ++i, c /= kLetters) s[i] = kAlphabet[c % kLetters];
      std::string raw, out;
      for (const char ch : s) {
        raw += ch;
        const std::size_t cut = safe_cleanup_cut(raw);
        out += clean_up_tokenization(raw.substr(0, cut));
        raw.erase(0, cut);
      }
      out += clean_up_tokenization(raw);
      ASSERT_EQ(out, clean_up_tokenization(s)) << "\"" << s << "\"";
    }
  }
}

// ---- loading errors ---------------------------------------------------------------

TEST(SentencePieceLoad, MissingModelNamesTheDirectory) {
  TempDir d("missing");
  try {
    SentencePieceTokenizer::from_directory(d.path);
    FAIL() << "no error";
  } catch (const tessera::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(d.path.string()), std::string::npos) << e.what();
  }
}

TEST(SentencePieceLoad, CorruptModelIsAFormatErrorNamingTheFile) {
  TempDir d("corrupt");
  const std::string model = read_file(sp_dir("internlm2") / "tokenizer.model");
  for (const std::string& bad : {std::string("not a model at all"), model.substr(0, model.size() / 3)}) {
    write_file(d.path / "tokenizer.model", bad);
    try {
      SentencePieceTokenizer::from_directory(d.path);
      FAIL() << "no error";
    } catch (const tessera::FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find((d.path / "tokenizer.model").string()), std::string::npos) << what;
      EXPECT_NE(what.find("sentencepiece"), std::string::npos) << what;
    }
  }
}

TEST(SentencePieceLoad, CollidingAddedTokenIds) {
  TempDir d("collide");
  fs::copy_file(sp_dir("internlm2") / "tokenizer.model", d.path / "tokenizer.model");
  json cfg = json::parse(read_file(sp_dir("internlm2") / "tokenizer_config.json"));
  // added_tokens.json gives <img>'s id to another token.
  write_file(d.path / "tokenizer_config.json", cfg.dump());
  write_file(d.path / "added_tokens.json", R"({"<other>": 702})");
  try {
    SentencePieceTokenizer::from_directory(d.path);
    FAIL() << "no error";
  } catch (const tessera::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("added_tokens.json"), std::string::npos) << what;
    EXPECT_NE(what.find("702"), std::string::npos) << what;
    EXPECT_NE(what.find("<img>"), std::string::npos) << what;
  }
  // A special token that is neither added nor a piece.
  fs::remove(d.path / "added_tokens.json");
  cfg["additional_special_tokens"].push_back("<nowhere>");
  write_file(d.path / "tokenizer_config.json", cfg.dump());
  EXPECT_THROW(SentencePieceTokenizer::from_directory(d.path), tessera::FormatError);
  // Another slow tokenizer class: its rules differ, so it is refused.
  cfg = json::parse(read_file(sp_dir("internlm2") / "tokenizer_config.json"));
  cfg["tokenizer_class"] = "LlamaTokenizer";
  write_file(d.path / "tokenizer_config.json", cfg.dump());
  try {
    SentencePieceTokenizer::from_directory(d.path);
    FAIL() << "no error";
  } catch (const tessera::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("LlamaTokenizer"), std::string::npos) << e.what();
  }
}

#else  // built without libsentencepiece

TEST(SentencePieceLoad, BuiltWithoutSentencePieceSaysSo) {
  try {
    SentencePieceTokenizer::from_directory(sp_dir("internlm2"));
    FAIL() << "no error";
  } catch (const tessera::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("built without sentencepiece"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tessera::tokenizer::load_tokenizer(sp_dir("internlm2")), tessera::FormatError);
}

#endif

// ---- load_tokenizer -----------------------------------------------------------------

TEST(LoadTokenizer, PicksTheKindFromTheFiles) {
  const fs::path qwen_json = fixtures() / "tokenizer" / "tokenizer.json";
  {  // tokenizer.json only
    TempDir d("json");
    fs::copy_file(qwen_json, d.path / "tokenizer.json");
    const AnyTokenizer t = tessera::tokenizer::load_tokenizer(d.path);
    EXPECT_EQ(t.kind(), AnyTokenizer::Kind::TokenizerJson);
    EXPECT_EQ(t.token_to_id("<|im_end|>"), 1045);
  }
#if defined(TESSERA_HAS_SENTENCEPIECE)
  {  // tokenizer.model only (the committed fixture directory)
    const AnyTokenizer t = tessera::tokenizer::load_tokenizer(sp_dir("internlm2"));
    EXPECT_EQ(t.kind(), AnyTokenizer::Kind::SentencePiece);
    const json cj = corpus("internlm2");
    for (const json& e : cj.at("entries")) {
      EXPECT_EQ(t.encode(e.at("text").get<std::string>()), ids_of(e.at("ids")));
      expect_stream_matches_decode(t, ids_of(e.at("ids")), true, e.at("name"));
    }
  }
  {  // both, InternLM2Tokenizer: the reference is slow-only, so tokenizer.model
    TempDir d("both_internlm2");
    for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) fs::copy_file(sp_dir("internlm2") / f, d.path / f);
    fs::copy_file(qwen_json, d.path / "tokenizer.json");
    EXPECT_EQ(tessera::tokenizer::load_tokenizer(d.path).kind(), AnyTokenizer::Kind::SentencePiece);
  }
#endif
  {  // both, another class: the fast tokenizer.json
    TempDir d("both_llama");
    fs::copy_file(sp_dir("llama") / "tokenizer.model", d.path / "tokenizer.model");
    write_file(d.path / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
    fs::copy_file(qwen_json, d.path / "tokenizer.json");
    const AnyTokenizer t = tessera::tokenizer::load_tokenizer(d.path);
    EXPECT_EQ(t.kind(), AnyTokenizer::Kind::TokenizerJson);
    expect_stream_matches_decode(t, t.encode("Hi 😀 there"), false, "json via AnyTokenizer");
  }
  {  // tokenizer.model of another slow class, no tokenizer.json: refused, naming the class and the files
    TempDir d("model_llama_only");
    fs::copy_file(sp_dir("llama") / "tokenizer.model", d.path / "tokenizer.model");
    write_file(d.path / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
    try {
      tessera::tokenizer::load_tokenizer(d.path);
      FAIL() << "no error";
    } catch (const tessera::FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("LlamaTokenizer"), std::string::npos) << what;
      EXPECT_NE(what.find("tokenizer.model, tokenizer_config.json"), std::string::npos) << what;
      EXPECT_NE(what.find(d.path.string()), std::string::npos) << what;
    }
  }
  {  // neither: the message lists what is there
    TempDir d("neither");
    write_file(d.path / "config.json", "{}");
    write_file(d.path / "vocab.txt", "a\n");
    try {
      tessera::tokenizer::load_tokenizer(d.path);
      FAIL() << "no error";
    } catch (const tessera::IoError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(d.path.string()), std::string::npos) << what;
      EXPECT_NE(what.find("config.json, vocab.txt"), std::string::npos) << what;
      EXPECT_NE(what.find("tokenizer.json"), std::string::npos) << what;
    }
  }
  {  // a tokenizer.json tessera cannot run: bpe.hpp's message, naming the file
    TempDir d("bad_json");
    write_file(d.path / "tokenizer.json", R"({"model": {"type": "WordPiece"}})");
    try {
      tessera::tokenizer::load_tokenizer(d.path);
      FAIL() << "no error";
    } catch (const tessera::FormatError& e) {
      EXPECT_NE(std::string(e.what()).find((d.path / "tokenizer.json").string()), std::string::npos) << e.what();
    }
  }
}

}  // namespace
