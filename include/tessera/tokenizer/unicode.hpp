// tessera/tokenizer/unicode.hpp — the UTF-8 and Unicode pieces the tokenizer
// needs: code point iteration, lossy UTF-8 decoding with the same replacement
// rule as Rust's String::from_utf8_lossy (which Hugging Face tokenizers uses),
// the character classes its added-token matching relies on, and Unicode
// normalization forms through utf8proc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include <utf8proc.h>

#include "../core/error.hpp"

namespace tessera::tokenizer::unicode {

// The replacement character U+FFFD, in UTF-8.
inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

// Appends the UTF-8 encoding of a code point (assumed a valid scalar value).
inline void append_utf8(std::string& out, char32_t cp) {
  const auto byte = [](std::uint32_t v) { return static_cast<char>(static_cast<unsigned char>(v)); };
  const auto c = static_cast<std::uint32_t>(cp);
  if (c < 0x80) {
    out += byte(c);
  } else if (c < 0x800) {
    out += byte(0xC0 | (c >> 6));
    out += byte(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += byte(0xE0 | (c >> 12));
    out += byte(0x80 | ((c >> 6) & 0x3F));
    out += byte(0x80 | (c & 0x3F));
  } else {
    out += byte(0xF0 | (c >> 18));
    out += byte(0x80 | ((c >> 12) & 0x3F));
    out += byte(0x80 | ((c >> 6) & 0x3F));
    out += byte(0x80 | (c & 0x3F));
  }
}

// What starts at a position of a byte string, by the well-formedness table of
// Unicode (Table 3-7): a complete scalar value, an invalid maximal subpart
// (to be replaced by one U+FFFD), or a valid but unfinished prefix that runs
// into the end of the input (a streaming decoder holds it back).
enum class Utf8Status : std::uint8_t { Complete, Invalid, Truncated };

struct Utf8Step {
  Utf8Status status;
  std::size_t length;  // bytes consumed: the character, the maximal subpart, or the prefix
  char32_t code_point;  // only for Complete
};

inline Utf8Step scan_utf8(std::string_view s, std::size_t pos) {
  const auto at = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = at(pos);
  if (lead < 0x80) return {Utf8Status::Complete, 1, lead};
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  char32_t cp = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1, cp = lead & 0x1Fu;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2, cp = lead & 0x0Fu;
    if (lead == 0xE0) lo = 0xA0;  // no overlong 3-byte forms
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3, cp = lead & 0x07u;
    if (lead == 0xF0) lo = 0x90;  // no overlong 4-byte forms
    if (lead == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return {Utf8Status::Invalid, 1, 0};  // a continuation byte, C0/C1 or F5..FF
  }
  for (std::size_t k = 1; k <= need; ++k) {
    if (pos + k >= s.size()) return {Utf8Status::Truncated, k, 0};
    const unsigned char b = at(pos + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {Utf8Status::Invalid, k, 0};
    cp = (cp << 6) | (b & 0x3Fu);
  }
  return {Utf8Status::Complete, need + 1, cp};
}

inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const Utf8Step step = scan_utf8(s, pos);
    if (step.status != Utf8Status::Complete) return false;
    pos += step.length;
  }
  return true;
}

// Appends bytes as text, replacing each invalid maximal subpart (and an
// unfinished sequence at the end) with one U+FFFD, exactly as
// String::from_utf8_lossy does.
inline void append_lossy(std::string& out, std::string_view bytes) {
  for (std::size_t pos = 0; pos < bytes.size();) {
    const Utf8Step step = scan_utf8(bytes, pos);
    if (step.status == Utf8Status::Complete) {
      out.append(bytes.substr(pos, step.length));
    } else {
      out.append(kReplacement);
    }
    pos += step.length;
  }
}

inline std::string from_utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_lossy(out, bytes);
  return out;
}

// Decodes the code point at `pos` of valid UTF-8 and moves `pos` past it.
inline char32_t next_code_point(std::string_view s, std::size_t& pos) {
  const Utf8Step step = scan_utf8(s, pos);
  pos += step.length;
  return step.status == Utf8Status::Complete ? step.code_point : U'\uFFFD';
}

// The code point that ends at `end` (exclusive) of valid UTF-8.
inline char32_t previous_code_point(std::string_view s, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return next_code_point(s, start);
}

// Unicode's White_Space property, which Rust's regex `\s` (used by tokenizers
// to strip around added tokens) matches.
inline bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Rust regex's Unicode `\w`: Alphabetic, marks, decimal digits, connector
// punctuation and the joiners. Alphabetic is letters + Nl + Other_Alphabetic;
// utf8proc has no Other_Alphabetic table, but that property is almost entirely
// combining marks (already counted as M) plus the circled/squared Latin
// letters listed here, so this matches for every assigned code point we know
// of outside a few rare symbols.
inline bool is_word_char(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
      (c >= 0x1F170 && c <= 0x1F189)) {
    return true;
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

enum class NormalForm : std::uint8_t { NFC, NFD, NFKC, NFKD };

inline const char* name(NormalForm f) {
  switch (f) {
    case NormalForm::NFC: return "NFC";
    case NormalForm::NFD: return "NFD";
    case NormalForm::NFKC: return "NFKC";
    case NormalForm::NFKD: return "NFKD";
  }
  return "?";
}

// Normalizes valid UTF-8 text (the caller validates). Embedded NUL bytes are
// kept: the length is passed explicitly rather than relying on termination.
inline std::string normalize(std::string_view text, NormalForm form) {
  if (text.empty()) return {};
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &out, static_cast<utf8proc_option_t>(options));
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(out, &std::free);
  if (n < 0) {
    throw ValueError(detail::concat("tokenizer: ", name(form), " normalization failed: ",
                                    utf8proc_errmsg(n)));
  }
  return std::string(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
}

}  // namespace tessera::tokenizer::unicode
