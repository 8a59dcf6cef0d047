// libFuzzer target for the tokenizer.json loader. Every input must either
// load (and then encode and decode a few texts consistently) or fail with a
// tessera::Error; anything else (a crash, a sanitizer report, a foreign
// exception, a broken invariant) is a bug.
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON; the same function is replayed over the committed
// seed corpus (tests/fuzz/corpus/tokenizer, written by
// tools/fixtures/make_tokenizer_fixtures.py) by the fuzz_tokenizer_corpus
// CTest with any compiler.
#include <tessera/tokenizer/bpe.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

// Texts touching every stage: specials, contractions, CJK, emoji, NFD
// accents, whitespace runs, digits.
constexpr std::string_view kTexts[] = {
    "",
    "<|im_start|>user\nHello, it's 12345 \xF0\x9F\x98\x80!<|im_end|>\n",
    "e\xCC\x81t\xC3\xA9  \t\r\n\xE6\x88\x91\xE4\xBB\xAC 'LL <mask> hello <sep>x",
};

void exercise(const tessera::tokenizer::Tokenizer& tok, std::string_view text) {
  std::vector<tessera::tokenizer::TokenId> ids;
  try {
    ids = tok.encode(text);
  } catch (const tessera::ValueError&) {
    return;  // a pattern that hit PCRE2's match limits: a reported error
  }
  for (const auto id : ids) check(id >= 0 && static_cast<std::size_t>(id) < tok.vocab_size());
  const std::string decoded = tok.decode(ids);
  check(tessera::tokenizer::unicode::is_valid_utf8(decoded));
  auto stream = tok.stream_decoder();
  std::string streamed;
  for (const auto id : ids) streamed += stream.step(id);
  streamed += stream.finish();
  check(streamed == decoded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto tok = tessera::tokenizer::Tokenizer::from_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz-input");
    for (const std::string_view text : kTexts) exercise(tok, text);
  } catch (const tessera::Error&) {
    // a rejected file: expected
  }
  return 0;
}
