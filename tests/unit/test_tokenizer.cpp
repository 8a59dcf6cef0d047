// Tests of the byte-level BPE tokenizer against Hugging Face tokenizers.
//
// tests/fixtures/tokenizer/ holds a small BPE configured exactly like Qwen2's
// tokenizer.json (tokenizer.json), a variant with the other options tessera
// reads (variant.json), and for each the ids and decoded text that the
// `tokenizers` library itself produced for a corpus chosen to exercise every
// stage (tools/fixtures/make_tokenizer_fixtures.py writes them).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <tessera/tokenizer/bpe.hpp>

#include "fixtures_dir.hpp"

namespace {

using tessera::tokenizer::EncodeOptions;
using tessera::tokenizer::TokenId;
using tessera::tokenizer::Tokenizer;
namespace unicode = tessera::tokenizer::unicode;
using json = nlohmann::json;

std::filesystem::path fixture(const std::string& name) {
  return tessera::testing::fixtures_dir() / "tokenizer" / name;
}

json read_json(const std::string& name) {
  std::ifstream in(fixture(name), std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str());
}

const Tokenizer& qwen2_like() {
  static const Tokenizer tok = Tokenizer::from_file(fixture("tokenizer.json"));
  return tok;
}

const Tokenizer& variant() {
  static const Tokenizer tok = Tokenizer::from_file(fixture("variant.json"));
  return tok;
}

std::vector<TokenId> ids_of(const json& value) { return value.get<std::vector<TokenId>>(); }

// Streams `ids` through a StreamDecoder: every chunk must be valid UTF-8 on
// its own, and together they must equal decode(ids).
void expect_stream_matches_decode(const Tokenizer& tok, const std::vector<TokenId>& ids, bool skip,
                                  const std::string& what) {
  auto stream = tok.stream_decoder(skip);
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
  EXPECT_EQ(streamed, tok.decode(ids, skip)) << what;
}

// ---- the Qwen2-like fixture ------------------------------------------------------

TEST(TokenizerCorpus, LoadsTheFixture) {
  const Tokenizer& tok = qwen2_like();
  EXPECT_EQ(tok.vocab_size(), 1047u);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 1043);
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 1044);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 1045);
  EXPECT_EQ(tok.token_to_id("<tool_call>"), 1046);
  EXPECT_TRUE(tok.is_special(1045));
  EXPECT_FALSE(tok.is_special(1046));  // <tool_call> is added but not special
  EXPECT_EQ(tok.id_to_token(1044), "<|im_start|>");
  EXPECT_EQ(tok.token_to_id("\xC4\xA0"), 220);  // "Ġ": the space byte
  EXPECT_EQ(tok.id_to_token(220), "\xC4\xA0");
}

class CorpusTest : public ::testing::TestWithParam<const char*> {
 protected:
  const Tokenizer& tok() const { return std::string(GetParam()) == "corpus.json" ? qwen2_like() : variant(); }
  json corpus() const { return read_json(GetParam()); }
};

TEST_P(CorpusTest, IdsEqualTokenizers) {
  const json c = corpus();
  ASSERT_GE(c.at("entries").size(), 20u);
  for (const json& e : c.at("entries")) {
    const std::string name = e.at("name");
    EXPECT_EQ(tok().encode(e.at("text").get<std::string>()), ids_of(e.at("ids"))) << name;
  }
}

TEST_P(CorpusTest, SplitSpecialTokensEqualsEncodeSpecialTokens) {
  EncodeOptions options;
  options.split_special_tokens = true;
  const json c = corpus();  // named: a temporary's member would die before the loop runs
  for (const json& e : c.at("entries")) {
    EXPECT_EQ(tok().encode(e.at("text").get<std::string>(), options), ids_of(e.at("ids_special_as_text")))
        << e.at("name").get<std::string>();
  }
}

TEST_P(CorpusTest, DecodeEqualsTokenizers) {
  const json c = corpus();
  for (const json& e : c.at("entries")) {
    const std::string name = e.at("name");
    const auto ids = ids_of(e.at("ids"));
    EXPECT_EQ(tok().decode(ids), e.at("decoded").get<std::string>()) << name;
    EXPECT_EQ(tok().decode(ids, true), e.at("decoded_skip_special").get<std::string>()) << name;
  }
  // Cut multi-byte characters and reversed ids: U+FFFD as tokenizers puts it.
  ASSERT_GE(c.at("decode_cases").size(), 10u);
  for (const json& d : c.at("decode_cases")) {
    const auto ids = ids_of(d.at("ids"));
    EXPECT_EQ(tok().decode(ids), d.at("text").get<std::string>()) << d.at("ids").dump();
    EXPECT_EQ(tok().decode(ids, true), d.at("text_skip_special").get<std::string>()) << d.at("ids").dump();
  }
}

TEST_P(CorpusTest, StreamingConcatenatesToDecode) {
  const json c = corpus();
  for (const json& e : c.at("entries")) {
    for (const bool skip : {false, true}) {
      expect_stream_matches_decode(tok(), ids_of(e.at("ids")), skip, e.at("name").get<std::string>());
    }
  }
  for (const json& d : c.at("decode_cases")) {
    expect_stream_matches_decode(tok(), ids_of(d.at("ids")), false, d.at("ids").dump());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CorpusTest, ::testing::Values("corpus.json", "variant_corpus.json"),
                         [](const auto& param_info) { return std::string(param_info.param).substr(0, 6); });

TEST(TokenizerRoundTrip, DecodeOfEncodeIsNfcText) {
  const json corpus = read_json("corpus.json");  // a named object: the loop's range must outlive it
  for (const json& e : corpus.at("entries")) {
    const std::string text = e.at("text");
    EXPECT_EQ(qwen2_like().decode(qwen2_like().encode(text)), unicode::normalize(text, unicode::NormalForm::NFC))
        << e.at("name").get<std::string>();
  }
}

TEST(TokenizerRoundTrip, NfdInputEncodesLikeNfc) {
  const std::string nfc = "\xC3\xA9l\xC3\xA8ve";   // "élève" precomposed
  const std::string nfd = "e\xCC\x81le\xCC\x80ve";  // e + U+0301, e + U+0300
  EXPECT_EQ(qwen2_like().encode(nfd), qwen2_like().encode(nfc));
}

TEST(TokenizerSpecial, ChatPromptKeepsControlTokens) {
  const Tokenizer& tok = qwen2_like();
  const auto ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 1044);
  EXPECT_EQ(tok.decode(ids), "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), "user\nHi\n");
  // Non-special added tokens survive skip_special_tokens.
  EXPECT_EQ(tok.decode(tok.encode("<tool_call>x"), true), "<tool_call>x");
}

// The id of the vocabulary token that stands for one raw byte.
TokenId byte_token(const Tokenizer& tok, unsigned char b) {
  std::string spelling;
  unicode::append_utf8(spelling, tessera::tokenizer::ByteLevelTable::get().char_of(b));
  return tok.token_to_id(spelling).value();
}

TEST(TokenizerStreaming, HoldsBackAPartialCharacter) {
  const Tokenizer& tok = qwen2_like();
  // "😀" (F0 9F 98 80) one byte per token, then "!".
  const std::vector<TokenId> ids = {byte_token(tok, 0xF0), byte_token(tok, 0x9F), byte_token(tok, 0x98),
                                    byte_token(tok, 0x80), byte_token(tok, '!')};
  auto stream = tok.stream_decoder();
  EXPECT_EQ(stream.step(ids[0]), "");
  EXPECT_EQ(stream.step(ids[1]), "");
  EXPECT_EQ(stream.step(ids[2]), "");
  EXPECT_TRUE(stream.has_pending());
  EXPECT_EQ(stream.step(ids[3]), "\xF0\x9F\x98\x80");
  EXPECT_EQ(stream.step(ids[4]), "!");
  EXPECT_EQ(stream.finish(), "");
  EXPECT_EQ(tok.decode(ids), "\xF0\x9F\x98\x80!");
}

TEST(TokenizerStreaming, UnfinishedOrImpossibleBytesBecomeReplacement) {
  const Tokenizer& tok = qwen2_like();
  auto stream = tok.stream_decoder();
  EXPECT_EQ(stream.step(byte_token(tok, 0xF0)), "");
  EXPECT_EQ(stream.step(byte_token(tok, 0x9F)), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
  // A lone continuation byte can never start a character: replaced at once.
  EXPECT_EQ(stream.step(byte_token(tok, 0x80)), "\xEF\xBF\xBD");
  // A broken sequence is replaced as soon as the byte that breaks it arrives,
  // and that byte starts afresh.
  EXPECT_EQ(stream.step(byte_token(tok, 0xE4)), "");
  EXPECT_EQ(stream.step(byte_token(tok, 'a')), "\xEF\xBF\xBD" "a");
  EXPECT_FALSE(stream.has_pending());
}

TEST(TokenizerDecode, IdOutOfRangeIsValueError) {
  const Tokenizer& tok = qwen2_like();
  const auto vocab = static_cast<TokenId>(tok.vocab_size());
  EXPECT_THROW(tok.decode(std::vector<TokenId>{1, vocab}), tessera::ValueError);
  EXPECT_THROW(tok.decode(std::vector<TokenId>{-1}), tessera::ValueError);
  auto stream = tok.stream_decoder();
  EXPECT_THROW(stream.step(vocab + 5), tessera::ValueError);
  try {
    tok.decode(std::vector<TokenId>{vocab});
    FAIL() << "expected a ValueError";
  } catch (const tessera::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("token id 1047"), std::string::npos) << e.what();
  }
}

TEST(TokenizerEncode, InvalidUtf8IsValueError) {
  EXPECT_THROW(qwen2_like().encode("ok \xC3("), tessera::ValueError);
  EXPECT_THROW(qwen2_like().encode("\xED\xA0\x80"), tessera::ValueError);  // a UTF-16 surrogate
}

TEST(TokenizerEncode, EmbeddedNulIsAByte) {
  const auto ids = qwen2_like().encode(std::string("a\0b", 3));
  EXPECT_EQ(qwen2_like().decode(ids), std::string("a\0b", 3));
}

// ---- errors when loading ----------------------------------------------------------

// The fixture with one change, loaded from memory as "mutated.json".
template <class Change>
void expect_format_error(Change change, const std::string& expected_fragment) {
  json j = read_json("tokenizer.json");
  change(j);
  try {
    (void)Tokenizer::from_json(j.dump(), "mutated.json");
    FAIL() << "expected a FormatError containing: " << expected_fragment;
  } catch (const tessera::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("mutated.json"), std::string::npos) << what;
    EXPECT_NE(what.find(expected_fragment), std::string::npos) << what;
  }
}

TEST(TokenizerLoad, MalformedJson) {
  try {
    (void)Tokenizer::from_json("{\"model\": {", "broken.json");
    FAIL();
  } catch (const tessera::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json: not valid JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)Tokenizer::from_json("[1, 2]", "array.json"), tessera::FormatError);
}

TEST(TokenizerLoad, MissingFileIsIoError) {
  EXPECT_THROW((void)Tokenizer::from_file(fixture("does-not-exist.json")), tessera::IoError);
}

TEST(TokenizerLoad, MergeNamingAnUnknownToken) {
  expect_format_error([](json& j) { j["model"]["merges"][5] = json::array({"Ġ", "notatoken"}); },
                      "model.merges[5] (\"Ġ\", \"notatoken\") names \"notatoken\", which is not in the vocabulary");
  expect_format_error([](json& j) { j["model"]["merges"][0] = "a b c"; }, "is not two tokens separated by one space");
  expect_format_error([](json& j) { j["model"]["merges"][0] = 7; }, "model.merges[0] is neither");
}

TEST(TokenizerLoad, MergedTokenNotInTheVocabulary) {
  expect_format_error([](json& j) { j["model"]["merges"][0] = json::array({"x", "y"}); },
                      "the merged token names \"xy\"");
}

TEST(TokenizerLoad, UnsupportedPreTokenizerListsWhatIsSupported) {
  expect_format_error([](json& j) { j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Whitespace"}}; },
                      "pre_tokenizer.pretokenizers[0].type \"Whitespace\" is not supported; tessera supports "
                      "pre-tokenizers null, Split");
  expect_format_error([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
                      "behavior \"Removed\" is not supported");
  expect_format_error([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}}; },
                      "does not compile");
}

TEST(TokenizerLoad, UnsupportedModelNormalizerDecoder) {
  expect_format_error([](json& j) { j["model"]["type"] = "WordPiece"; },
                      "model.type is \"WordPiece\"; tessera supports only \"BPE\"");
  expect_format_error([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; },
                      "normalizer.type \"Lowercase\" is not supported; tessera supports normalizers null, NFC");
  expect_format_error([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "ByteLevel decoder");
  expect_format_error([](json& j) { j["post_processor"] = {{"type", "BertProcessing"}}; },
                      "post_processor.type \"BertProcessing\" is not supported");
  expect_format_error([](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout");
  expect_format_error([](json& j) { j["truncation"] = {{"max_length", 8}}; }, "\"truncation\" is set");
}

TEST(TokenizerLoad, BadVocabularyAndAddedTokens) {
  expect_format_error([](json& j) { j["model"]["vocab"]["Ġ"] = -3; }, "model.vocab[\"Ġ\"] is not a token id");
  expect_format_error([](json& j) { j["model"]["vocab"]["zzzz"] = 0; }, "model.vocab gives id 0 to both");
  expect_format_error([](json& j) { j["added_tokens"][0].erase("content"); }, "added_tokens[0] has no \"content\"");
  expect_format_error([](json& j) { j["added_tokens"][1]["special"] = "yes"; },
                      "added_tokens[1].special is not true or false");
  expect_format_error([](json& j) { j.erase("model"); }, "the file has no \"model\"");
}

TEST(TokenizerLoad, StringPatternSplitsOnALiteral) {
  json j = read_json("tokenizer.json");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", "a.\\E"}};
  const Tokenizer tok = Tokenizer::from_json(j.dump(), "literal.json");
  // "a.\E" is split out as one piece; "xa.\Ey" becomes "x", "a.\E", "y".
  EXPECT_EQ(tok.decode(tok.encode("xa.\\Ey")), "xa.\\Ey");
  std::vector<TokenId> pieces = tok.encode("x");
  for (const char* part : {"a.\\E", "y"}) {
    const auto ids = tok.encode(part);
    pieces.insert(pieces.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(tok.encode("xa.\\Ey"), pieces);
}

}  // namespace
