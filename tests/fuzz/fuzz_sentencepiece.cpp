// libFuzzer target for the sentencepiece tokenizer.model loader
// (tokenizer/sentencepiece.hpp). The first byte of an input picks the text and
// the configuration; the rest is a serialized sentencepiece ModelProto, loaded
// through libsentencepiece. Every input must either load (and then encode and
// decode consistently: ids in range, valid UTF-8, the stream decoder's chunks
// concatenating to decode()) or fail with a tessera::Error; anything else (a
// crash, a sanitizer report, a foreign exception, a broken invariant) is a bug.
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON (libsentencepiece itself is not instrumented); the
// same function is replayed over the committed seed corpus
// (tests/fuzz/corpus/sentencepiece, written by
// tools/fixtures/make_sentencepiece_fixtures.py) by the fuzz_sentencepiece_corpus
// CTest with any compiler. Without libsentencepiece every input is a
// FormatError, which is still checked.
#include <tessera/tokenizer/sentencepiece.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace tk = tessera::tokenizer;

void check(bool ok) {
  if (!ok) std::abort();
}

// Specials, byte fallback (CJK, emoji), digits, whitespace runs, a piece-like
// "▁" and an image placeholder run.
using namespace std::string_view_literals;
constexpr std::string_view kTexts[] = {
    ""sv,
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nHi 12345 \xF0\x9F\x98\x80!<|im_end|>"sv,
    "  \xE9\xBE\x8D\xE9\xB3\xB3 it's a . test\t\r\n\xE2\x96\x81x <s></s><unk> ' s"sv,
    "e\xCC\x81t\xC3\xA9 \x00\x1b[0m"sv,  // with a NUL byte
};

void exercise(const tk::SentencePieceTokenizer& tok, std::string_view text, bool split_special) {
  tk::EncodeOptions options;
  options.split_special_tokens = split_special;
  const std::vector<tk::TokenId> ids = tok.encode(text, options);
  for (const auto id : ids) check(id >= 0 && static_cast<std::size_t>(id) < tok.vocab_size());
  for (const bool skip : {false, true}) {
    const std::string decoded = tok.decode(ids, skip);
    check(tk::unicode::is_valid_utf8(decoded));
    auto stream = tok.stream_decoder(skip);
    std::string streamed;
    for (const auto id : ids) {
      const std::string chunk = stream.step(id);
      check(tk::unicode::is_valid_utf8(chunk));
      streamed += chunk;
    }
    streamed += stream.finish();
    check(streamed == decoded);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned selector = data[0];
  const std::string_view model(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    // First with no added tokens and no special tokens, to learn the size.
    tk::SentencePieceConfig plain;
    plain.add_bos_token = false;
    const auto base = tk::SentencePieceTokenizer::from_serialized(model, plain, "fuzz-input");
    const auto n = static_cast<tk::TokenId>(base.vocab_size());
    exercise(base, kTexts[selector % std::size(kTexts)], (selector & 4) != 0);

    // Then as an InternLM2 directory would configure it: one added token
    // renaming a piece, others after the vocabulary, the default specials.
    tk::SentencePieceConfig internlm2;
    const auto added = [](tk::TokenId id, const char* text, bool special) {
      tk::AddedToken t;
      t.id = id;
      t.content = text;
      t.special = special;
      t.normalized = false;
      return t;
    };
    internlm2.added_tokens = {added(n - 1, "<|im_start|>", true), added(n, "<img>", true),
                              added(n + 1, "</img>", true), added(n + 2, "<IMG_CONTEXT>", true),
                              added(n + 3, "<ref>", false)};
    internlm2.special_tokens = {"<unk>", "<s>", "</s>", "</s>", "<|im_start|>", "<img>", "</img>",
                                "<IMG_CONTEXT>"};
    internlm2.add_eos_token = (selector & 8) != 0;
    const auto tok = tk::SentencePieceTokenizer::from_serialized(model, internlm2, "fuzz-input");
    for (const std::string_view text : kTexts) exercise(tok, text, (selector & 4) != 0);
  } catch (const tessera::Error&) {
    // a rejected model or configuration: expected
  }
  return 0;
}
