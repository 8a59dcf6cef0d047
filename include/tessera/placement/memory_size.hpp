// tessera/placement/memory_size.hpp — "10GiB"-style sizes, read exactly as
// accelerate's convert_file_size_to_int reads them, so a max_memory that
// works with device_map="auto" means the same bytes here:
//
//   parse_memory_size("10GiB") == 10 * 2^30    GiB, MiB, KiB: powers of 1024
//   parse_memory_size("10GB")  == 10 * 10^9    GB, MB, KB: powers of 1000
//   parse_memory_size("10Gb")  == 10^10 / 8    a decimal unit ending in a
//                                              lowercase "b" is bits
//   parse_memory_size("1.5GB") == 1500000000   the number is a Python float:
//                                              int(float(number) * unit)
//
// Units are matched case-insensitively on the last three (GiB, MiB, KiB) or
// two (GB, MB, KB) characters; everything before them must be what Python's
// float() accepts (surrounding spaces, a sign, "_" between digits, an
// exponent). accelerate takes an int for bytes and rejects a string without
// a unit; tessera also reads a string of decimal digits as bytes ("1024").
// Anything else, a negative size, NaN, infinity or more than 2^64 - 1 bytes
// is a ValueError naming the string.
#pragma once

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "../core/error.hpp"

namespace tessera::placement {

namespace memory_size_detail {

inline bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Digits with single underscores between them (Python's digitpart), moved
// into `out` without the underscores. Returns false unless at least one digit.
inline bool digit_part(std::string_view s, std::size_t& i, std::string& out) {
  if (i >= s.size() || !is_digit(s[i])) return false;
  out += s[i++];
  while (i < s.size()) {
    if (is_digit(s[i])) {
      out += s[i++];
    } else if (s[i] == '_' && i + 1 < s.size() && is_digit(s[i + 1])) {
      ++i;
    } else {
      break;
    }
  }
  return true;
}

// Python's float(text) for finite decimal spellings and inf / nan; nullopt-
// like false when float() would raise.
inline bool python_float(std::string_view text, double& value) {
  std::size_t b = 0, e = text.size();
  while (b < e && is_space(text[b])) ++b;
  while (e > b && is_space(text[e - 1])) --e;
  const std::string_view s = text.substr(b, e - b);
  std::string clean;
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
  std::string word;
  for (std::size_t j = i; j < s.size(); ++j) word += static_cast<char>(std::tolower(static_cast<unsigned char>(s[j])));
  if (word == "inf" || word == "infinity" || word == "nan") {
    value = word == "nan" ? std::nan("") : (clean == "-" ? -HUGE_VAL : HUGE_VAL);
    return true;
  }
  const bool int_part = digit_part(s, i, clean);
  bool frac_part = false;
  if (i < s.size() && s[i] == '.') {
    clean += s[i++];
    frac_part = digit_part(s, i, clean);
  }
  if (!int_part && !frac_part) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    clean += s[i++];
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
    if (!digit_part(s, i, clean)) return false;
  }
  if (i != s.size()) return false;
  value = std::strtod(clean.c_str(), nullptr);  // the same correctly rounded value Python computes
  return true;
}

inline bool ends_with_unit(std::string_view s, std::string_view unit) {
  if (s.size() < unit.size()) return false;
  for (std::size_t i = 0; i < unit.size(); ++i) {
    if (std::toupper(static_cast<unsigned char>(s[s.size() - unit.size() + i])) != unit[i]) return false;
  }
  return true;
}

}  // namespace memory_size_detail

// Bytes in `text` (see the top of this file).
inline std::uint64_t parse_memory_size(std::string_view text) {
  namespace d = memory_size_detail;
  const auto fail = [&]() -> std::uint64_t {
    throw ValueError(tessera::detail::concat("memory size '", text, "' is not in a valid format: use a number of bytes or a "
                                    "number with a unit, like '10GiB', '512MiB' or '5.0GB' (GB/MB/KB are powers of "
                                    "1000, GiB/MiB/KiB powers of 1024, a lowercase 'b' means bits)"));
  };
  if (!text.empty() && text.size() <= 20 &&
      text.find_first_not_of("0123456789") == std::string_view::npos) {
    errno = 0;
    const unsigned long long v = std::strtoull(std::string(text).c_str(), nullptr, 10);
    if (errno == ERANGE) return fail();
    return v;
  }
  struct Unit {
    std::string_view suffix;
    double factor;
    bool bits_when_lowercase_b;
  };
  static constexpr Unit units[] = {{"GIB", 1073741824.0, false}, {"MIB", 1048576.0, false}, {"KIB", 1024.0, false},
                                   {"GB", 1e9, true},            {"MB", 1e6, true},         {"KB", 1e3, true}};
  for (const Unit& unit : units) {
    if (!d::ends_with_unit(text, unit.suffix)) continue;
    double number = 0;
    if (!d::python_float(text.substr(0, text.size() - unit.suffix.size()), number)) return fail();
    // int(float * unit) truncates toward zero; NaN and infinity do not convert.
    const double bytes = std::trunc(number * unit.factor);
    if (!std::isfinite(bytes) || bytes < 0 || bytes >= 18446744073709551616.0) return fail();
    const auto whole = static_cast<std::uint64_t>(bytes);
    return unit.bits_when_lowercase_b && text.back() == 'b' ? whole / 8 : whole;
  }
  return fail();
}

}  // namespace tessera::placement
