// tessera/tokenizer/regex.hpp — a small RAII wrapper over PCRE2 for the
// pre-tokenizer's Split patterns.
//
// Hugging Face tokenizers runs these patterns with Oniguruma; PCRE2 with UTF
// and UCP has the same semantics for the constructs tokenizer files use
// (Unicode properties \p{L} \p{N}, \s under Unicode rules, scoped (?i:...),
// lookahead, leftmost-first alternation, greedy backtracking). The one
// difference found by differential testing over the BMP, U+180E under \s, is
// corrected in find_all(). The pattern is
// compiled once (JIT-compiled where PCRE2 supports it) and can be matched
// from several threads: each call makes its own match data.
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"

namespace tessera::tokenizer {

// A [begin, end) byte range of a subject string.
struct ByteRange {
  std::size_t begin = 0, end = 0;
  friend bool operator==(const ByteRange&, const ByteRange&) = default;
};

class Regex {
 public:
  // Throws FormatError naming `source` (the file) and the position in the
  // pattern where PCRE2 stopped.
  Regex(std::string pattern, const std::string& source) : pattern_(std::move(pattern)) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern_.data()), pattern_.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (code == nullptr) {
      throw FormatError(detail::concat(source, ": the pre-tokenizer regex /", pattern_,
                                       "/ does not compile at offset ", offset, ": ", error_text(error)));
    }
    code_.reset(code);
    // JIT is an optimisation only: where it is unavailable the interpreter
    // gives the same matches.
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  const std::string& pattern() const noexcept { return pattern_; }

  // Every non-overlapping match, left to right, as find_iter does: after an
  // empty match the search resumes one character further.
  // `subject` must be valid UTF-8 (the tokenizer validates its input once).
  std::vector<ByteRange> find_all(std::string_view subject) const {
    // PCRE2's \s keeps U+180E MONGOLIAN VOWEL SEPARATOR in its horizontal
    // space list; Oniguruma follows Unicode 6.3+, where it is a format
    // character (Cf), not a space. Matching on a copy where it is replaced by
    // U+200B ZERO WIDTH SPACE (also Cf, also three UTF-8 bytes, not a space to
    // either engine) gives Oniguruma's matches at the same byte offsets.
    static constexpr std::string_view kMvs = "\xE1\xA0\x8E", kZwsp = "\xE2\x80\x8B";
    if (subject.find(kMvs) != std::string_view::npos) {
      std::string copy(subject);
      for (std::size_t p = copy.find(kMvs); p != std::string::npos; p = copy.find(kMvs, p + kZwsp.size())) {
        copy.replace(p, kMvs.size(), kZwsp);
      }
      return find_all_raw(copy);
    }
    return find_all_raw(subject);
  }

 private:
  std::vector<ByteRange> find_all_raw(std::string_view subject) const {
    std::vector<ByteRange> out;
    const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), &pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
    const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
    std::size_t start = 0;
    while (start <= subject.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_.get(), text, subject.size(), start, 0, md.get(), nullptr)
                          : pcre2_match(code_.get(), text, subject.size(), start, PCRE2_NO_UTF_CHECK,
                                        md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        throw ValueError(detail::concat("tokenizer: matching /", pattern_, "/ failed: ", error_text(rc)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const ByteRange m{ov[0], ov[1]};
      if (m.end > m.begin) {
        out.push_back(m);
        start = m.end;
      } else {
        start = next_char(subject, m.end);  // an empty match: step over one character
      }
    }
    return out;
  }

  struct CodeFree {
    void operator()(pcre2_code* c) const noexcept { pcre2_code_free(c); }
  };

  static std::string error_text(int code) {
    PCRE2_UCHAR buffer[256];
    const int n = pcre2_get_error_message(code, buffer, sizeof buffer);
    return n < 0 ? detail::concat("PCRE2 error ", code) : std::string(reinterpret_cast<const char*>(buffer));
  }

  static std::size_t next_char(std::string_view s, std::size_t pos) {
    if (pos >= s.size()) return s.size() + 1;
    ++pos;
    while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
    return pos;
  }

  std::string pattern_;
  std::unique_ptr<pcre2_code, CodeFree> code_;
  bool jit_ = false;
};

}  // namespace tessera::tokenizer
