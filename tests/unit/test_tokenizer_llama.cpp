// Tests of the tokenizer.json kinds beyond Qwen2's against Hugging Face
// tokenizers: Llama-style BPE with byte fallback (Phi-3, Yi), Llama-3's
// byte-level BPE (InternVL2-76B's Hermes-2-Theta) and MiniCPM-V 2.6's Qwen2
// BPE with its added tokens.
//
// tests/fixtures/tokenizer_llama/ holds a tiny tokenizer of each kind,
// configured with the component settings of the published files, and for
// each the ids, tokens and decoded text the `tokenizers` library itself
// produced for a corpus (tools/fixtures/make_tokenizer_llama_fixtures.py
// writes them).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
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
  return tessera::testing::fixtures_dir() / "tokenizer_llama" / name;
}

json read_json(const std::string& name) {
  std::ifstream in(fixture(name), std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str());
}

const Tokenizer& load(const std::string& kind) {
  static std::unordered_map<std::string, Tokenizer> cache;
  auto it = cache.find(kind);
  if (it == cache.end()) it = cache.emplace(kind, Tokenizer::from_file(fixture(kind + ".json"))).first;
  return it->second;
}

std::vector<TokenId> ids_of(const json& value) { return value.get<std::vector<TokenId>>(); }

TokenId id(const Tokenizer& tok, const std::string& token) {
  const auto found = tok.token_to_id(token);
  if (!found) ADD_FAILURE() << "no token " << token;
  return found.value_or(-1);
}

// Streams `ids`: every chunk valid UTF-8 on its own, the text so far always a
// prefix of the whole (nothing emitted is ever taken back), and together
// equal to `expected` (the library's decode).
void expect_stream(const Tokenizer& tok, const std::vector<TokenId>& ids, bool skip, const std::string& expected,
                   const std::string& what) {
  auto stream = tok.stream_decoder(skip);
  std::string streamed;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::string chunk = stream.step(ids[i]);
    ASSERT_TRUE(unicode::is_valid_utf8(chunk)) << what << ": chunk after id #" << i << " is not valid UTF-8";
    streamed += chunk;
    ASSERT_TRUE(expected.starts_with(streamed)) << what << ": after id #" << i << " the stream has \"" << streamed
                                                << "\", not a prefix of \"" << expected << "\"";
  }
  const std::string tail = stream.finish();
  EXPECT_TRUE(unicode::is_valid_utf8(tail)) << what;
  streamed += tail;
  EXPECT_FALSE(stream.has_pending()) << what;
  EXPECT_EQ(streamed, expected) << what;
}

// ---- every kind against the library ----------------------------------------------

class LlamaCorpusTest : public ::testing::TestWithParam<const char*> {
 protected:
  const Tokenizer& tok() const { return load(GetParam()); }
  json corpus() const { return read_json(std::string(GetParam()) + "_corpus.json"); }
};

TEST_P(LlamaCorpusTest, IdsAndTokensEqualTokenizers) {
  const json c = corpus();
  ASSERT_GE(c.at("entries").size(), 40u);
  std::unordered_set<TokenId> added;
  for (const auto& t : tok().added_tokens()) added.insert(t.id);
  for (const json& e : c.at("entries")) {
    const std::string name = e.at("name");
    const auto ids = tok().encode(e.at("text").get<std::string>());
    EXPECT_EQ(ids, ids_of(e.at("ids"))) << name;
    if (ids != ids_of(e.at("ids"))) continue;
    // The library's tokens are the matched text for added tokens (with the
    // whitespace rstrip took); for the model's tokens they are the vocabulary's.
    const auto tokens = e.at("tokens").get<std::vector<std::string>>();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (!added.contains(ids[i])) {
        EXPECT_EQ(tok().id_to_token(ids[i]), tokens[i]) << name << " #" << i;
      }
    }
  }
}

TEST_P(LlamaCorpusTest, SplitSpecialTokensEqualsEncodeSpecialTokens) {
  EncodeOptions options;
  options.split_special_tokens = true;
  const json c = corpus();
  for (const json& e : c.at("entries")) {
    EXPECT_EQ(tok().encode(e.at("text").get<std::string>(), options), ids_of(e.at("ids_special_as_text")))
        << e.at("name").get<std::string>();
  }
}

TEST_P(LlamaCorpusTest, DecodeEqualsTokenizers) {
  const json c = corpus();
  for (const json& e : c.at("entries")) {
    const std::string name = e.at("name");
    const auto ids = ids_of(e.at("ids"));
    EXPECT_EQ(tok().decode(ids), e.at("decoded").get<std::string>()) << name;
    EXPECT_EQ(tok().decode(ids, true), e.at("decoded_skip_special").get<std::string>()) << name;
  }
  // Byte-fallback runs and multi-byte characters cut, ids reversed.
  ASSERT_GE(c.at("decode_cases").size(), 40u);
  for (const json& d : c.at("decode_cases")) {
    const auto ids = ids_of(d.at("ids"));
    EXPECT_EQ(tok().decode(ids), d.at("text").get<std::string>()) << d.at("ids").dump();
    EXPECT_EQ(tok().decode(ids, true), d.at("text_skip_special").get<std::string>()) << d.at("ids").dump();
  }
}

TEST_P(LlamaCorpusTest, StreamingConcatenatesToTheLibrarysDecode) {
  const json c = corpus();
  for (const json& e : c.at("entries")) {
    const std::string name = e.at("name");
    expect_stream(tok(), ids_of(e.at("ids")), false, e.at("decoded"), name);
    expect_stream(tok(), ids_of(e.at("ids")), true, e.at("decoded_skip_special"), name + " (skip special)");
  }
  for (const json& d : c.at("decode_cases")) {
    expect_stream(tok(), ids_of(d.at("ids")), false, d.at("text"), d.at("ids").dump());
    expect_stream(tok(), ids_of(d.at("ids")), true, d.at("text_skip_special"), d.at("ids").dump());
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, LlamaCorpusTest, ::testing::Values("phi3", "phi3_unk", "phi3_unk_unfused", "phi3_metaspace",
                                           "phi3_metaspace_split", "yi", "llama3", "minicpmv"),
                         [](const auto& param_info) { return std::string(param_info.param); });

// ---- Llama-style: Phi-3 and Yi ------------------------------------------------------

TEST(TokenizerLlamaStyle, ByteTokensAndTemplate) {
  const Tokenizer& tok = load("phi3");
  EXPECT_EQ(tok.token_to_id("<unk>"), 0);
  EXPECT_EQ(tok.token_to_id("<s>"), 1);
  EXPECT_EQ(tok.token_to_id("<0x00>"), 3);
  EXPECT_EQ(tok.token_to_id("<0xE4>"), 3 + 0xE4);
  // "龘" is not in the vocabulary: "▁" then its three UTF-8 bytes, after <s>.
  const std::string rare = "\xE9\xBE\x98";
  const std::vector<TokenId> expected = {1, id(tok, "\xE2\x96\x81"), 3 + 0xE9, 3 + 0xBE, 3 + 0x98};
  EXPECT_EQ(tok.encode(rare), expected);
  EncodeOptions bare;
  bare.add_special_tokens = false;
  EXPECT_EQ(tok.encode(rare, bare), std::vector<TokenId>(expected.begin() + 1, expected.end()));
  EXPECT_EQ(tok.decode(expected, true), rare);       // the leading space is stripped
  EXPECT_EQ(tok.decode(expected), "<s> " + rare);  // ...but only at the very start
}

TEST(TokenizerLlamaStyle, StreamingHoldsAByteRunUntilTheNextToken) {
  const Tokenizer& tok = load("phi3");
  const TokenId spm = id(tok, "\xE2\x96\x81"), a = id(tok, "a");
  auto stream = tok.stream_decoder();
  EXPECT_EQ(stream.step(spm), "");  // " " stripped at the start
  EXPECT_EQ(stream.step(3 + 0xE4), "");
  EXPECT_EQ(stream.step(3 + 0xB8), "");
  EXPECT_EQ(stream.step(3 + 0xAD), "");  // complete, but a later byte could still spoil the run
  EXPECT_TRUE(stream.has_pending());
  EXPECT_EQ(stream.step(a), "\xE4\xB8\xAD" "a");
  EXPECT_FALSE(stream.has_pending());
  // A run that is not valid UTF-8 as a whole: one U+FFFD per byte, as tokenizers.
  const std::vector<TokenId> spoiled = {3 + 0xE4, 3 + 0xB8, 3 + 0xAD, 3 + 0xE4, a};
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(stream.step(spoiled[i]), "") << i;
  EXPECT_EQ(stream.step(a), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "a");
  EXPECT_EQ(tok.decode(spoiled), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "a");
  // Skipped special tokens do not end a run (tokenizers drops them first).
  auto skipping = tok.stream_decoder(true);
  for (const TokenId i : {3 + 0xE4, 1, 3 + 0xB8, 3 + 0xAD}) EXPECT_EQ(skipping.step(i), "") << i;
  EXPECT_EQ(skipping.finish(), "\xE4\xB8\xAD");
  EXPECT_EQ(tok.decode(std::vector<TokenId>{3 + 0xE4, 1, 3 + 0xB8, 3 + 0xAD}, true), "\xE4\xB8\xAD");
}

TEST(TokenizerLlamaStyle, PhiAddedTokensStripTheWhitespaceAfterThem) {
  const Tokenizer& tok = load("phi3");
  EncodeOptions bare;
  bare.add_special_tokens = false;
  const auto ids = tok.encode("<|user|>\n  hi<|end|>\n", bare);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), id(tok, "<|user|>"));
  EXPECT_EQ(ids.back(), id(tok, "<|end|>"));  // rstrip took the final newline
  EXPECT_TRUE(tok.is_special(id(tok, "<|end|>")));
  EXPECT_FALSE(tok.is_special(id(tok, "</s>")));  // Phi-3's </s> is not special
}

TEST(TokenizerLlamaStyle, YiSpecialsLiveInTheModelVocabulary) {
  const Tokenizer& tok = load("yi");
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 6);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 7);
  EXPECT_EQ(tok.token_to_id("<0x00>"), 9);
  EXPECT_TRUE(tok.is_special(6));
  EXPECT_EQ(tok.encode("<|im_start|>"), std::vector<TokenId>{6});  // no bos: Yi adds none
  EXPECT_EQ(tok.decode(std::vector<TokenId>{6, 7}, true), "");
}

// ---- Llama-3 -------------------------------------------------------------------

TEST(TokenizerLlama3, BeginOfTextAndIgnoreMerges) {
  const Tokenizer& tok = load("llama3");
  const TokenId bos = id(tok, "<|begin_of_text|>");
  const auto ids = tok.encode("x mosaic");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[0], bos);
  // " mosaic" is in the vocabulary but no merge makes it: ignore_merges.
  EXPECT_EQ(ids[2], id(tok, "\xC4\xA0mosaic"));
  EncodeOptions bare;
  bare.add_special_tokens = false;
  EXPECT_EQ(tok.encode("x mosaic", bare), std::vector<TokenId>(ids.begin() + 1, ids.end()));
  EXPECT_EQ(tok.decode(ids, true), "x mosaic");
}

// ---- MiniCPM-V 2.6 ------------------------------------------------------------------

TEST(TokenizerMiniCpmV, AddedTokensAreMatchedBeforeTheModel) {
  const Tokenizer& tok = load("minicpmv");
  for (const char* t : {"<unk>", "<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>", "<ref>",
                        "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>"}) {
    const TokenId i = id(tok, t);
    EXPECT_EQ(tok.encode(t), std::vector<TokenId>{i}) << t;
    EXPECT_TRUE(tok.is_special(i)) << t;
    EXPECT_EQ(tok.decode(std::vector<TokenId>{i}), t);
    EXPECT_EQ(tok.decode(std::vector<TokenId>{i}, true), "");
  }
  const TokenId unk = id(tok, "<unk>");
  const auto ids = tok.encode("<image><unk><unk></image>");
  EXPECT_EQ(ids, (std::vector<TokenId>{id(tok, "<image>"), unk, unk, id(tok, "</image>")}));
  // Typed by a user with split_special_tokens, the same text is plain text.
  EncodeOptions as_text;
  as_text.split_special_tokens = true;
  const auto text_ids = tok.encode("<image><unk><unk></image>", as_text);
  EXPECT_GT(text_ids.size(), 4u);
  for (const TokenId i : text_ids) EXPECT_FALSE(tok.is_special(i));
  EXPECT_FALSE(tok.token_to_id("<tool_call>"));  // Qwen2 (not 2.5): no tool tokens
}

// ---- errors when loading ------------------------------------------------------------

// `kind`'s fixture with one change, loaded from memory as "mutated.json".
void expect_format_error(const std::string& kind, const std::function<void(json&)>& change,
                         const std::string& expected_fragment) {
  json j = read_json(kind + ".json");
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

json& decoders_of(json& j) { return j["decoder"]["decoders"]; }

TEST(TokenizerLlamaLoad, UnknownOptionsNameTheComponent) {
  expect_format_error("phi3", [](json& j) { j["normalizer"]["normalizers"][0]["append"] = "x"; },
                      "normalizer.normalizers[0] has the unknown option \"append\"");
  expect_format_error("phi3", [](json& j) { j["model"]["byte_fallback_v2"] = true; },
                      "model has the unknown option \"byte_fallback_v2\"");
  expect_format_error("phi3", [](json& j) { decoders_of(j)[3]["trim"] = true; },
                      "decoder.decoders[3] has the unknown option \"trim\"");
  expect_format_error("llama3", [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["prefix_space"] = true; },
                      "pre_tokenizer.pretokenizers[1] has the unknown option \"prefix_space\"");
  expect_format_error("llama3", [](json& j) { j["post_processor"]["processors"][1]["triple"] = json::array(); },
                      "post_processor.processors[1] has the unknown option \"triple\"");
}

TEST(TokenizerLlamaLoad, UnsupportedComponentsNameThemselves) {
  expect_format_error("phi3", [](json& j) { j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}}; },
                      "normalizer.normalizers[1].pattern is not {\"String\": ...}");
  expect_format_error("phi3", [](json& j) { j["normalizer"]["normalizers"][0] = {{"type", "Precompiled"}}; },
                      "normalizer.normalizers[0].type \"Precompiled\" is not supported");
  expect_format_error("phi3", [](json& j) { decoders_of(j)[0] = {{"type", "Metaspace"}}; },
                      "decoder.decoders[0].type \"Metaspace\" is not supported");
  expect_format_error("phi3", [](json& j) { std::swap(decoders_of(j)[1], decoders_of(j)[2]); },
                      "decoder.decoders[2]: ByteFallback comes out of order");
  expect_format_error("phi3", [](json& j) { decoders_of(j)[3]["stop"] = 1; }, "decoder.decoders[3].stop is not 0");
  expect_format_error("phi3", [](json& j) { decoders_of(j)[3]["content"] = "ab"; },
                      "decoder.decoders[3].content is not one character");
  expect_format_error("phi3", [](json& j) { decoders_of(j)[0]["pattern"] = {{"String", ""}}; },
                      "decoder.decoders[0].pattern.String is empty");
  expect_format_error("phi3", [](json& j) { j["decoder"] = {{"type", "Sequence"}, {"decoders", json::array()}}; },
                      "decoder.decoders is not a non-empty array");
  expect_format_error("phi3_metaspace", [](json& j) { j["pre_tokenizer"]["prepend_scheme"] = "sometimes"; },
                      "pre_tokenizer.prepend_scheme \"sometimes\" is not always, first or never");
  expect_format_error("phi3_metaspace", [](json& j) { j["pre_tokenizer"]["replacement"] = "__"; },
                      "pre_tokenizer.replacement is not one character");
  expect_format_error("llama3", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; },
                      "decoder.type \"WordPiece\" is not supported; tessera supports the ByteLevel decoder");
}

TEST(TokenizerLlamaLoad, DecoderWithoutFuseStripsEveryPiece) {
  // Not a published layout, but a valid tokenizers file: Strip then applies to
  // every piece ("▁a" -> " a" -> "a"), so words run together.
  json j = read_json("phi3.json");
  decoders_of(j).erase(2);
  const Tokenizer tok = Tokenizer::from_json(j.dump(), "no_fuse.json");
  EncodeOptions bare;
  bare.add_special_tokens = false;
  const auto ids = tok.encode("a b", bare);
  EXPECT_EQ(tok.decode(ids), "ab");
  std::string streamed;
  auto stream = tok.stream_decoder();
  for (const TokenId i : ids) streamed += stream.step(i);
  EXPECT_EQ(streamed + stream.finish(), "ab");
}

// The fuzz seeds of the new components (tests/fuzz/corpus/tokenizer/llama_*):
// the valid ones load and round-trip, each broken one is refused by the
// check it was written for, so the fuzzer starts inside every new path.
TEST(TokenizerLlamaLoad, FuzzSeedsReachTheNewComponents) {
  const auto seeds = tessera::testing::tests_dir() / "fuzz" / "corpus" / "tokenizer";
  std::size_t valid = 0, refused = 0;
  for (const auto& entry : std::filesystem::directory_iterator(seeds)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("llama_")) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (name.starts_with("llama_valid_")) {
      const Tokenizer tok = Tokenizer::from_json(text.str(), name);
      const auto ids = tok.encode("Hi \xE9\xBE\x98 <|user|> \xF0\x9F\xA6\x80!");
      EXPECT_FALSE(ids.empty()) << name;
      ++valid;
    } else {
      EXPECT_THROW((void)Tokenizer::from_json(text.str(), name), tessera::FormatError) << name;
      ++refused;
    }
  }
  EXPECT_GE(valid, 4u);
  EXPECT_GE(refused, 8u);
}

}  // namespace
