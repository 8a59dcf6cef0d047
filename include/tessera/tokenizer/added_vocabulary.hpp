// tessera/tokenizer/added_vocabulary.hpp — the `added_tokens` of a
// tokenizer.json (special tokens such as <|im_start|>, and non-special ones
// such as <tool_call>), found in the text before the model sees it.
//
// The matching follows Hugging Face tokenizers' AddedVocabulary:
//   - tokens with normalized=false are matched in the raw text first; the
//     pieces between them are normalized, and tokens with normalized=true are
//     then matched in those normalized pieces (against their own normalized
//     form);
//   - matching is leftmost-longest and non-overlapping, over all tokens of one
//     kind at once;
//   - a single_word token is dropped (left as text) when a word character
//     (Unicode \w) touches it on either side;
//   - lstrip / rstrip extend the match over the whitespace (Unicode
//     White_Space) before / after it, but never back over text an earlier
//     match already took;
//   - with split_special_tokens, special tokens are not matched at all.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "regex.hpp"
#include "unicode.hpp"

namespace tessera::tokenizer {

using TokenId = std::int32_t;

struct AddedToken {
  TokenId id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A piece of the input on its way through the pipeline: text still to be
// tokenized, or an added token already resolved to its id.
struct Piece {
  std::string text;
  std::optional<TokenId> id;
};

// A byte trie over token contents, for leftmost-longest search.
class TokenTrie {
 public:
  void insert(std::string_view key, std::size_t value) {
    std::int32_t node = 0;
    for (const char c : key) {
      const auto edge = edge_key(node, c);
      auto it = edges_.find(edge);
      if (it == edges_.end()) {
        it = edges_.emplace(edge, static_cast<std::int32_t>(values_.size())).first;
        values_.push_back(kNone);
      }
      node = it->second;
    }
    values_[static_cast<std::size_t>(node)] = value;  // a later duplicate wins
  }

  bool empty() const noexcept { return values_.size() == 1; }

  // The longest key starting at `pos`: {length, value}, or length 0.
  std::pair<std::size_t, std::size_t> longest_at(std::string_view s, std::size_t pos) const {
    std::pair<std::size_t, std::size_t> best{0, kNone};
    std::int32_t node = 0;
    for (std::size_t i = pos; i < s.size(); ++i) {
      const auto it = edges_.find(edge_key(node, s[i]));
      if (it == edges_.end()) break;
      node = it->second;
      const std::size_t v = values_[static_cast<std::size_t>(node)];
      if (v != kNone) best = {i + 1 - pos, v};
    }
    return best;
  }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  static std::uint64_t edge_key(std::int32_t node, char c) {
    return (static_cast<std::uint64_t>(node) << 8) | static_cast<unsigned char>(c);
  }
  std::unordered_map<std::uint64_t, std::int32_t> edges_;
  std::vector<std::size_t> values_{kNone};  // per node: index of the token ending there
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;

  // `normalize` gives the normalized form of a normalized=true token's content
  // (what it is matched against, and what decoding returns for it).
  template <class Normalize>
  AddedVocabulary(std::vector<AddedToken> tokens, Normalize&& normalize) : tokens_(std::move(tokens)) {
    forms_.reserve(tokens_.size());
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      forms_.push_back(t.normalized ? normalize(t.content) : t.content);
      by_id_[t.id] = i;
      if (forms_.back().empty()) continue;  // an empty token can never match
      (t.normalized ? normalized_ : raw_).insert(forms_.back(), i);
    }
  }

  const std::vector<AddedToken>& tokens() const noexcept { return tokens_; }

  const AddedToken* find(TokenId id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second];
  }

  // The string decoding uses for an added token: its normalized form for
  // normalized=true tokens, its content otherwise.
  // `id` must be an added token's (see find()).
  const std::string& decoding_form(TokenId id) const { return forms_[by_id_.at(id)]; }

  // Splits raw text on the normalized=false tokens.
  void split_raw(std::string_view text, bool split_special, std::vector<Piece>& out) const {
    split(text, raw_, split_special, out);
  }
  // Splits already-normalized text on the normalized=true tokens.
  void split_normalized(std::string_view text, bool split_special, std::vector<Piece>& out) const {
    split(text, normalized_, split_special, out);
  }

 private:
  struct Match {
    std::size_t begin, end, token;
  };

  // All leftmost-longest, non-overlapping matches of the trie's keys.
  static std::vector<Match> leftmost_longest(std::string_view s, const TokenTrie& trie) {
    std::vector<Match> out;
    for (std::size_t pos = 0; pos < s.size();) {
      const auto [len, token] = trie.longest_at(s, pos);
      if (len == 0) {
        ++pos;
        continue;
      }
      out.push_back({pos, pos + len, token});
      pos += len;
    }
    return out;
  }

  static bool ends_with_word(std::string_view s) {
    return !s.empty() && unicode::is_word_char(unicode::previous_code_point(s, s.size()));
  }
  static bool starts_with_word(std::string_view s) {
    std::size_t pos = 0;
    return !s.empty() && unicode::is_word_char(unicode::next_code_point(s, pos));
  }
  // Where the run of whitespace at the end of `s` starts.
  static std::size_t trailing_space_begin(std::string_view s) {
    std::size_t end = s.size();
    while (end > 0) {
      std::size_t start = end - 1;
      while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      std::size_t p = start;
      if (!unicode::is_white_space(unicode::next_code_point(s, p))) break;
      end = start;
    }
    return end;
  }
  // The length of the run of whitespace at the start of `s`.
  static std::size_t leading_space_length(std::string_view s) {
    std::size_t pos = 0;
    while (pos < s.size()) {
      std::size_t next = pos;
      if (!unicode::is_white_space(unicode::next_code_point(s, next))) break;
      pos = next;
    }
    return pos;
  }

  // The splits of `s`: unmatched text and matched tokens, in order (the
  // matched pieces may overlap an rstrip'ed neighbour, as in tokenizers).
  void split(std::string_view s, const TokenTrie& trie, bool split_special, std::vector<Piece>& out) const {
    if (trie.empty() || s.empty()) {
      if (!s.empty()) out.push_back({std::string(s), std::nullopt});
      return;
    }
    std::size_t done = 0;  // everything before this is in `out`
    for (Match m : leftmost_longest(s, trie)) {
      const AddedToken& t = tokens_[m.token];
      if (split_special && t.special) continue;
      if (t.single_word) {
        const bool free_left = m.begin == 0 || !ends_with_word(s.substr(0, m.begin));
        const bool free_right = m.end == s.size() || !starts_with_word(s.substr(m.end));
        if (!free_left || !free_right) continue;
      }
      if (t.lstrip) m.begin = std::max(trailing_space_begin(s.substr(0, m.begin)), done);
      if (t.rstrip) m.end += leading_space_length(s.substr(m.end));
      if (done < m.begin) out.push_back({std::string(s.substr(done, m.begin - done)), std::nullopt});
      out.push_back({std::string(s.substr(m.begin, m.end - m.begin)), t.id});
      done = m.end;
    }
    if (done < s.size()) out.push_back({std::string(s.substr(done)), std::nullopt});
  }

  std::vector<AddedToken> tokens_;
  std::vector<std::string> forms_;  // per token: the string it is matched (and decoded) as
  TokenTrie raw_, normalized_;
  std::unordered_map<TokenId, std::size_t> by_id_;
};

}  // namespace tessera::tokenizer
