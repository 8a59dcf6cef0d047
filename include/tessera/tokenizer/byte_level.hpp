// tessera/tokenizer/byte_level.hpp — GPT-2's byte-to-unicode table, used by
// the ByteLevel pre-tokenizer (bytes -> visible characters, so that BPE
// vocabularies hold no raw control bytes or spaces) and by the ByteLevel
// decoder (characters -> bytes).
//
// The table: the printable bytes '!'..'~', 0xA1..0xAC and 0xAE..0xFF map to
// the code point of the same value; the remaining 68 bytes (controls, space,
// 0x7F..0xA0, 0xAD), in increasing order, map to U+0100, U+0101, ... So a
// space becomes 'Ġ' (U+0120) and a newline 'Ċ' (U+010A).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "unicode.hpp"

namespace tessera::tokenizer {

class ByteLevelTable {
 public:
  // The table is a pure function of nothing: one instance for the process.
  static const ByteLevelTable& get() {
    static const ByteLevelTable table;
    return table;
  }

  char32_t char_of(unsigned char byte) const noexcept { return to_char_[byte]; }
  const std::string& utf8_of(unsigned char byte) const noexcept { return to_utf8_[byte]; }

  // The byte a character stands for, or -1 when it is not in the table.
  int byte_of(char32_t c) const noexcept {
    return c < to_byte_.size() ? to_byte_[c] : -1;
  }

  // Maps every byte of `text` to its character (the ByteLevel pre-tokenizer).
  std::string encode(std::string_view text) const {
    std::string out;
    out.reserve(text.size() * 2);
    for (const char c : text) out += to_utf8_[static_cast<unsigned char>(c)];
    return out;
  }

  // Appends the bytes a token stands for: when every character of the token is
  // in the table, the bytes they map to; otherwise (an added token such as a
  // non-ASCII special) the token's own UTF-8, as tokenizers' decoder does.
  void append_bytes(std::string& out, std::string_view token) const {
    std::string bytes;
    bytes.reserve(token.size());
    for (std::size_t pos = 0; pos < token.size();) {
      const int b = byte_of(unicode::next_code_point(token, pos));
      if (b < 0) {
        out.append(token);
        return;
      }
      bytes += static_cast<char>(static_cast<unsigned char>(b));
    }
    out += bytes;
  }

 private:
  ByteLevelTable() {
    to_byte_.fill(-1);
    unsigned next_extra = 0;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t c = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next_extra++);
      to_char_[b] = c;
      to_byte_[c] = static_cast<std::int16_t>(b);
      unicode::append_utf8(to_utf8_[b], c);
    }
  }

  std::array<char32_t, 256> to_char_{};
  std::array<std::string, 256> to_utf8_{};
  std::array<std::int16_t, 256 + 68> to_byte_{};
};

}  // namespace tessera::tokenizer
