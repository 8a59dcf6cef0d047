// tessera/tokenizer/bpe.hpp — Hugging Face `tokenizer.json` BPE, giving the ids
// the `tokenizers` library gives: byte-level BPE as Qwen2 (Qwen2.5-VL,
// MiniCPM-V 2.6) and Llama-3 (InternVL2-76B's Hermes-2-Theta) use it, and
// Llama's sentencepiece-style BPE with <0xNN> byte fallback as the
// tokenizer.json of Phi-3 and Yi has it.
//
//   auto tok = tessera::tokenizer::Tokenizer::from_file("tokenizer.json");
//   std::vector<TokenId> ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n");
//   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
//   auto stream = tok.stream_decoder();          // during generation:
//   std::cout << stream.step(next_id);           // only complete UTF-8
//
// The pipeline, stage by stage as tokenizers runs it:
//   1. added tokens (added_vocabulary.hpp) are cut out of the raw text;
//   2. each remaining piece is normalized (NFC/NFD/NFKC/NFKD through
//      utf8proc; Llama's Prepend "▁" and Replace " " -> "▁"), and
//      normalized=true added tokens are cut out of it;
//   3. pre-tokenizers split the pieces: Split(regex, Isolated) through PCRE2,
//      ByteLevel (optional prefix space, optional GPT-2 regex, then bytes ->
//      GPT-2's visible characters, byte_level.hpp), Metaspace (spaces ->
//      "▁", the non-legacy Llama conversion);
//   4. the BPE model turns each piece into ids: its characters (a character
//      missing from the vocabulary becomes its <0xNN> byte tokens with
//      byte_fallback, or <unk>, fused with fuse_unk), then merges applied
//      lowest rank first (leftmost first among equal ranks), with a cache of
//      recent words; with ignore_merges a piece in the vocabulary is one id;
//   5. the post-processor adds template tokens (TemplateProcessing) when asked
//      to; ByteLevel adds nothing.
// Decoding maps ids to token strings (an added token decodes as itself), the
// ByteLevel decoder turns them back into bytes, and invalid UTF-8 becomes
// U+FFFD exactly as tokenizers does (one per maximal invalid subpart). Llama's
// decoder instead runs Replace "▁" -> " ", ByteFallback (a run of <0xNN>
// tokens becomes its bytes, or one U+FFFD per byte when the run is not valid
// UTF-8), Fuse and Strip (the leading space).
//
// A file that tessera cannot run exactly is rejected when it is loaded, with a
// FormatError naming the file, what is wrong and what is supported.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "added_vocabulary.hpp"
#include "byte_level.hpp"
#include "regex.hpp"
#include "unicode.hpp"

namespace tessera::tokenizer {

using json = nlohmann::json;

// ---- reading tokenizer.json ---------------------------------------------------

namespace detail {

// Every load error goes through here so that it names the file.
[[noreturn]] inline void fail(const std::string& source, const std::string& what) {
  throw FormatError(tessera::detail::concat(source, ": ", what));
}

inline const json& member(const json& obj, const char* key, const std::string& where,
                          const std::string& source) {
  if (!obj.is_object() || !obj.contains(key)) fail(source, where + " has no \"" + key + "\"");
  return obj.at(key);
}

inline bool flag(const json& obj, const char* key, bool fallback, const std::string& where,
                 const std::string& source) {
  if (!obj.contains(key) || obj.at(key).is_null()) return fallback;
  if (!obj.at(key).is_boolean()) fail(source, where + "." + key + " is not true or false");
  return obj.at(key).get<bool>();
}

inline std::string text(const json& value, const std::string& where, const std::string& source) {
  if (!value.is_string()) fail(source, where + " is not a string");
  return value.get<std::string>();
}

inline std::string type_of(const json& obj, const std::string& where, const std::string& source) {
  return text(member(obj, "type", where, source), where + ".type", source);
}

// A component with a key tessera does not know is refused rather than run with
// the key ignored: an option it does not implement could change the ids.
inline void expect_keys(const json& obj, std::initializer_list<std::string_view> known, const std::string& where,
                        const std::string& source) {
  for (const auto& [key, value] : obj.items()) {
    if (std::find(known.begin(), known.end(), std::string_view(key)) == known.end()) {
      std::string list;
      for (const std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
      fail(source, where + " has the unknown option \"" + key + "\"; tessera reads " + list);
    }
  }
}

inline TokenId token_id(const json& value, const std::string& where, const std::string& source) {
  if (!value.is_number_integer() || value.get<std::int64_t>() < 0 ||
      value.get<std::int64_t>() > std::numeric_limits<TokenId>::max()) {
    fail(source, where + " is not a token id (an integer in [0, 2^31))");
  }
  return static_cast<TokenId>(value.get<std::int64_t>());
}

}  // namespace detail

// ---- the BPE model ----------------------------------------------------------------

class BpeModel {
 public:
  BpeModel() = default;

  // Reads the "model" object of tokenizer.json.
  static BpeModel from_json(const json& model, const std::string& source) {
    BpeModel m;
    m.read_options(model, source);
    m.read_vocab(detail::member(model, "vocab", "model", source), source);
    m.read_merges(detail::member(model, "merges", "model", source), source);
    if (m.unk_token_ && !m.vocab_.contains(*m.unk_token_)) {
      detail::fail(source, "model.unk_token \"" + *m.unk_token_ + "\" is not in the vocabulary");
    }
    return m;
  }

  const std::unordered_map<std::string, TokenId>& vocab() const noexcept { return vocab_; }
  std::size_t merge_count() const noexcept { return merges_.size(); }

  std::optional<TokenId> token_to_id(std::string_view token) const {
    const auto it = vocab_.find(std::string(token));
    return it == vocab_.end() ? std::nullopt : std::optional<TokenId>(it->second);
  }

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<TokenId>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (const auto it = vocab_.find(std::string(word)); it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    if (cache_->lookup(word, out)) return;
    const std::vector<TokenId> ids = merge_word(word);
    out.insert(out.end(), ids.begin(), ids.end());
    cache_->store(word, ids);
  }

 private:
  // Recently seen words and their ids. Words repeat a lot in real text, and
  // merging is the expensive step. Bounded, thread-safe, cleared when full.
  class Cache {
   public:
    bool lookup(std::string_view word, std::vector<TokenId>& out) const {
      const std::lock_guard lock(mutex_);
      const auto it = entries_.find(std::string(word));
      if (it == entries_.end()) return false;
      out.insert(out.end(), it->second.begin(), it->second.end());
      return true;
    }
    void store(std::string_view word, const std::vector<TokenId>& ids) {
      if (word.size() >= kMaxWordBytes) return;
      const std::lock_guard lock(mutex_);
      if (entries_.size() >= kCapacity) entries_.clear();
      entries_.emplace(std::string(word), ids);
    }

   private:
    static constexpr std::size_t kCapacity = 10000, kMaxWordBytes = 256;
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::vector<TokenId>> entries_;
  };

  struct MergeRule {
    std::uint32_t rank;
    TokenId merged;
  };

  static std::uint64_t pair_key(TokenId a, TokenId b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  void read_options(const json& model, const std::string& source) {
    const std::string where = "model";
    detail::expect_keys(model,
                        {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
                         "byte_fallback", "ignore_merges", "vocab", "merges"},
                        where, source);
    if (model.contains("dropout") && !model.at("dropout").is_null()) {
      if (!model.at("dropout").is_number() || model.at("dropout").get<double>() != 0.0) {
        detail::fail(source, "model.dropout is set; tessera tokenizes deterministically and supports only "
                             "null or 0");
      }
    }
    const auto optional_text = [&](const char* key) -> std::optional<std::string> {
      if (!model.contains(key) || model.at(key).is_null()) return std::nullopt;
      return detail::text(model.at(key), where + "." + key, source);
    };
    unk_token_ = optional_text("unk_token");
    prefix_ = optional_text("continuing_subword_prefix").value_or("");
    suffix_ = optional_text("end_of_word_suffix").value_or("");
    fuse_unk_ = detail::flag(model, "fuse_unk", false, where, source);
    byte_fallback_ = detail::flag(model, "byte_fallback", false, where, source);
    ignore_merges_ = detail::flag(model, "ignore_merges", false, where, source);
  }

  void read_vocab(const json& vocab, const std::string& source) {
    if (!vocab.is_object()) detail::fail(source, "model.vocab is not an object of token -> id");
    // Two tokens with one id would make decoding ambiguous.
    std::unordered_map<TokenId, std::string> owner;
    vocab_.reserve(vocab.size());
    for (const auto& [token, value] : vocab.items()) {
      const TokenId id = detail::token_id(value, "model.vocab[\"" + token + "\"]", source);
      const auto [previous, first] = owner.emplace(id, token);
      if (!first) {
        detail::fail(source, tessera::detail::concat("model.vocab gives id ", id, " to both \"",
                                                     previous->second, "\" and \"", token, "\""));
      }
      vocab_.emplace(token, id);
    }
  }

  // A merge is "a b" (one space) or ["a", "b"]; its rank is its position.
  std::pair<std::string, std::string> read_merge(const json& entry, std::size_t rank,
                                                 const std::string& source) const {
    const std::string where = tessera::detail::concat("model.merges[", rank, "]");
    if (entry.is_string()) {
      const std::string& s = entry.get_ref<const std::string&>();
      const std::size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        detail::fail(source, where + " \"" + s + "\" is not two tokens separated by one space");
      }
      return {s.substr(0, space), s.substr(space + 1)};
    }
    if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      return {entry[0].get<std::string>(), entry[1].get<std::string>()};
    }
    detail::fail(source, where + " is neither \"a b\" nor [\"a\", \"b\"]");
  }

  TokenId vocab_id(const std::string& token, const std::string& where, const std::string& source) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) detail::fail(source, where + " names \"" + token + "\", which is not in the vocabulary");
    return it->second;
  }

  void read_merges(const json& merges, const std::string& source) {
    if (!merges.is_array()) detail::fail(source, "model.merges is not an array");
    merges_.reserve(merges.size());
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto [a, b] = read_merge(merges[rank], rank, source);
      const std::string where = tessera::detail::concat("model.merges[", rank, "] (\"", a, "\", \"", b, "\")");
      const TokenId ia = vocab_id(a, where, source), ib = vocab_id(b, where, source);
      // With a continuing-subword prefix, b carries it and the merge drops it.
      const std::string b_body = b.starts_with(prefix_) ? b.substr(prefix_.size()) : b;
      const TokenId merged = vocab_id(a + b_body, where + ": the merged token", source);
      // A repeated pair keeps its last rank, as a map built in order does.
      merges_[pair_key(ia, ib)] = {static_cast<std::uint32_t>(rank), merged};
    }
  }

  // The initial symbols of a word: its characters (with prefix/suffix), byte
  // fallback tokens, or the unknown token; characters with none are dropped.
  void initial_symbols(std::string_view word, std::vector<TokenId>& ids) const {
    std::optional<TokenId> pending_unk;
    const auto flush_unk = [&] {
      if (pending_unk) ids.push_back(*pending_unk);
      pending_unk.reset();
    };
    for (std::size_t pos = 0; pos < word.size();) {
      const std::size_t begin = pos;
      unicode::next_code_point(word, pos);
      std::string symbol(word.substr(begin, pos - begin));
      if (begin != 0) symbol = prefix_ + symbol;
      if (pos == word.size()) symbol += suffix_;
      if (const auto it = vocab_.find(symbol); it != vocab_.end()) {
        flush_unk();
        ids.push_back(it->second);
        continue;
      }
      if (byte_fallback_ && append_byte_tokens(symbol, ids)) continue;
      if (unk_token_) {
        if (!fuse_unk_) flush_unk();
        pending_unk = vocab_.at(*unk_token_);
      }
    }
    flush_unk();
  }

  // The <0xAB> tokens of every byte of a symbol, all or nothing.
  bool append_byte_tokens(std::string_view symbol, std::vector<TokenId>& ids) const {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::vector<TokenId> bytes;
    for (const char c : symbol) {
      const auto b = static_cast<unsigned char>(c);
      const std::string name{'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      const auto it = vocab_.find(name);
      if (it == vocab_.end()) return false;
      bytes.push_back(it->second);
    }
    ids.insert(ids.end(), bytes.begin(), bytes.end());
    return true;
  }

  // Applies merges lowest rank first; among equal ranks the leftmost pair.
  // Symbols form a linked list; the queue may hold stale pairs (a side was
  // merged since), which are recognised and skipped when popped.
  std::vector<TokenId> merge_word(std::string_view word) const {
    std::vector<TokenId> sym;
    initial_symbols(word, sym);
    constexpr std::size_t kEnd = static_cast<std::size_t>(-1);
    const std::size_t n = sym.size();
    std::vector<std::size_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = i == 0 ? kEnd : i - 1;
      next[i] = i + 1 == n ? kEnd : i + 1;
    }

    struct Candidate {
      std::uint32_t rank;
      std::size_t pos;
      TokenId merged;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    const auto consider = [&](std::size_t left) {
      if (left == kEnd || next[left] == kEnd) return;
      const auto it = merges_.find(pair_key(sym[left], sym[next[left]]));
      if (it != merges_.end()) queue.push({it->second.rank, left, it->second.merged});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) consider(i);

    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      const std::size_t left = top.pos;
      if (!alive[left] || next[left] == kEnd) continue;
      const std::size_t right = next[left];
      // Stale when the pair at this position now merges into something else
      // (tokenizers compares the merged id only, and so does this).
      const auto it = merges_.find(pair_key(sym[left], sym[right]));
      if (it == merges_.end() || it->second.merged != top.merged) continue;
      sym[left] = top.merged;
      alive[right] = false;
      next[left] = next[right];
      if (next[left] != kEnd) prev[next[left]] = left;
      consider(prev[left]);
      consider(left);
    }
    std::vector<TokenId> out;
    for (std::size_t i = 0; i < n; ++i) {
      if (alive[i]) out.push_back(sym[i]);
    }
    return out;
  }

  std::unordered_map<std::string, TokenId> vocab_;
  std::unordered_map<std::uint64_t, MergeRule> merges_;
  std::optional<std::string> unk_token_;
  std::string prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::unique_ptr<Cache> cache_ = std::make_unique<Cache>();
};

// ---- the pipeline around it ----------------------------------------------------------

struct EncodeOptions {
  // Apply the post-processor's template (TemplateProcessing). Qwen2's
  // tokenizer has none, so this changes nothing there; like tokenizers'
  // encode(), it is on by default.
  bool add_special_tokens = true;
  // Treat special added tokens as plain text (tokenizers'
  // encode_special_tokens, transformers' split_special_tokens): "<|im_end|>"
  // typed by a user then tokenizes as characters, not as the control token.
  bool split_special_tokens = false;
};

class StreamDecoder;

class Tokenizer {
 public:
  static constexpr int kMaxJsonDepth = 32;

  static Tokenizer from_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError(tessera::detail::concat("cannot open tokenizer file ", path.string()));
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return from_json(buffer.str(), path.string());
  }

  // `source` names the text in error messages (a path, or "<memory>").
  static Tokenizer from_json(std::string_view text, const std::string& source = "<memory>") {
    // Parsed iteratively by nlohmann; the callback drops anything nested
    // deeper than any real tokenizer.json, so that neither the parser's
    // recursive destruction nor tessera's readers of nested Sequences can
    // run out of stack on a hostile file.
    json root;
    bool too_deep = false;
    const auto limit_depth = [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
          depth >= kMaxJsonDepth) {
        too_deep = true;
        return false;
      }
      return true;
    };
    try {
      root = json::parse(text.begin(), text.end(), limit_depth);
    } catch (const json::exception& e) {
      detail::fail(source, std::string("not valid JSON: ") + e.what());
    }
    if (too_deep) detail::fail(source, tessera::detail::concat("JSON nested deeper than ", kMaxJsonDepth, " levels"));
    if (!root.is_object()) detail::fail(source, "the top level is not a JSON object");
    Tokenizer tok;
    tok.source_ = source;
    tok.read(root);
    return tok;
  }

  // The ids of `text` (UTF-8; ValueError names the offset of invalid bytes).
  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options = {}) const {
    check_utf8(text);
    std::vector<TokenId> ids;
    for (const Piece& piece : pre_tokenize(split_added(text, options.split_special_tokens))) {
      if (piece.id) {
        ids.push_back(*piece.id);
      } else {
        model_.tokenize(piece.text, ids);
      }
    }
    return options.add_special_tokens ? apply_template(std::move(ids)) : ids;
  }

  // The text of `ids`; an id with no token is a ValueError.
  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    if (piece_decoder_) {
      DecodeState state;
      std::string text;
      for (const TokenId id : ids) text += decode_step(state, id, skip_special_tokens);
      return text + decode_finish(state);
    }
    std::string bytes;
    for (const TokenId id : ids) append_token_bytes(bytes, id, skip_special_tokens);
    return unicode::from_utf8_lossy(bytes);
  }
  std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const {
    return decode(std::span<const TokenId>(ids), skip_special_tokens);
  }

  inline StreamDecoder stream_decoder(bool skip_special_tokens = false) const;

  // Ids are 0 .. vocab_size()-1 (model vocabulary and added tokens together).
  std::size_t vocab_size() const noexcept { return id_bytes_.size(); }

  std::optional<TokenId> token_to_id(std::string_view token) const {
    for (const AddedToken& t : added_.tokens()) {
      if (t.content == token) return t.id;
    }
    return model_.token_to_id(token);
  }

  // The token string of an id (an added token's content; a vocabulary token
  // in its byte-level spelling, e.g. "Ġthe"), or nullopt.
  std::optional<std::string> id_to_token(TokenId id) const {
    if (const AddedToken* t = added_.find(id)) return t->content;
    if (id >= 0 && static_cast<std::size_t>(id) < tokens_.size() && has_token_[static_cast<std::size_t>(id)]) {
      return tokens_[static_cast<std::size_t>(id)];
    }
    return std::nullopt;
  }

  const std::vector<AddedToken>& added_tokens() const noexcept { return added_.tokens(); }
  bool is_special(TokenId id) const { return valid(id) && skip_[static_cast<std::size_t>(id)]; }
  const BpeModel& model() const noexcept { return model_; }
  const std::string& source() const noexcept { return source_; }

  // The bytes an id decodes to on its own (possibly part of a UTF-8
  // character; a <0xNN> token's byte under the ByteFallback decoder); empty
  // for a special token when skipping them. ValueError for an unknown id.
  void append_token_bytes(std::string& out, TokenId id, bool skip_special_tokens) const {
    check_id(id);
    const auto i = static_cast<std::size_t>(id);
    if (skip_special_tokens && skip_[i]) return;
    out += id_bytes_[i];
  }

  // Decoding id by id (decode() and StreamDecoder): decode_step() returns the
  // text that is final once `id` is known, decode_finish() the rest; together
  // they give decode(). What a state holds back: with the ByteLevel decoder
  // the start of a UTF-8 character split across tokens; with the piece
  // decoder a run of <0xNN> tokens, until the token after it (tokenizers
  // judges a run as a whole, so a later byte can still turn it into U+FFFDs).
  struct DecodeState {
    std::string pending;
    std::size_t stripped = 0;  // Strip: leading characters removed so far
    bool strip_done = false;   // Strip: a character that stays was seen
  };

  std::string decode_step(DecodeState& state, TokenId id, bool skip_special_tokens) const {
    if (!piece_decoder_) {
      append_token_bytes(state.pending, id, skip_special_tokens);
      std::string out;
      std::size_t pos = 0;
      while (pos < state.pending.size()) {
        const unicode::Utf8Step s = unicode::scan_utf8(state.pending, pos);
        if (s.status == unicode::Utf8Status::Truncated) break;  // wait for the continuation bytes
        if (s.status == unicode::Utf8Status::Complete) {
          out.append(state.pending, pos, s.length);
        } else {
          out.append(unicode::kReplacement);
        }
        pos += s.length;
      }
      state.pending.erase(0, pos);
      return out;
    }
    check_id(id);
    const auto i = static_cast<std::size_t>(id);
    if (skip_special_tokens && skip_[i]) return {};  // dropped before the decoder sees it
    if (byte_[i] >= 0) {
      state.pending += static_cast<char>(byte_[i]);
      return {};
    }
    std::string out = flush_byte_run(state);
    out += decoded_piece(state, id_bytes_[i]);
    return out;
  }

  std::string decode_finish(DecodeState& state) const {
    if (piece_decoder_) return flush_byte_run(state);
    std::string out = unicode::from_utf8_lossy(state.pending);
    state.pending.clear();
    return out;
  }

 private:
  struct SplitStep {
    std::shared_ptr<const Regex> regex;
  };
  // Normalizers besides the Unicode forms: Prepend (Llama's "▁" before
  // every non-empty piece) and Replace with a literal pattern (" " -> "▁").
  struct PrependStep {
    std::string prefix;
  };
  struct ReplaceStep {
    std::string pattern, content;
  };
  using NormalizerStep = std::variant<unicode::NormalForm, PrependStep, ReplaceStep>;
  struct ByteLevelStep {
    bool add_prefix_space = false;
    bool use_regex = true;
  };
  // Metaspace (the non-legacy Llama conversion): spaces become `replacement`,
  // which is put in front of the piece too (always, or only for the piece at
  // the start of the input: prepend_scheme "first"), unless already there;
  // with split, a piece is cut before each run of `replacement`s.
  struct MetaspaceStep {
    std::string replacement;  // one character
    enum class Prepend : std::uint8_t { Always, First, Never } prepend = Prepend::Always;
    bool split = true;
  };
  using PreTokenizerStep = std::variant<SplitStep, ByteLevelStep, MetaspaceStep>;
  // Llama's decoder: per token the Replaces, then runs of <0xNN> tokens
  // become their bytes (ByteFallback: one U+FFFD per byte when the run as a
  // whole is not valid UTF-8), everything is joined (Fuse) and up to `start`
  // leading `content` characters are stripped (Strip; from every piece
  // instead when there is no Fuse before it).
  struct PieceDecoder {
    struct Strip {
      std::string content;  // one character
      std::size_t start = 0;
    };
    std::vector<std::pair<std::string, std::string>> replaces;
    bool byte_fallback = false;
    bool fuse = false;
    std::optional<Strip> strip;
  };
  // An entry of the TemplateProcessing "single" template: the sequence ($A)
  // or the ids of a special token.
  using TemplateItem = std::optional<std::vector<TokenId>>;

  // GPT-2's pattern, which ByteLevel(use_regex=true) splits with.
  static std::shared_ptr<const Regex> gpt2_regex() {
    static const auto re = std::make_shared<const Regex>(
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "tessera's GPT-2 regex");
    return re;
  }

  void check_id(TokenId id) const {
    if (!valid(id)) {
      throw ValueError(tessera::detail::concat("tokenizer: token id ", id, " is not in the vocabulary of ",
                                               source_, " (ids are 0..", vocab_size() - 1, ")"));
    }
  }

  // ByteFallback: a finished run of <0xNN> bytes, as its text when it is
  // valid UTF-8 and as one U+FFFD per byte otherwise (what tokenizers does).
  std::string flush_byte_run(DecodeState& state) const {
    std::string out;
    if (state.pending.empty()) return out;
    if (unicode::is_valid_utf8(state.pending)) {
      out = decoded_piece(state, state.pending);
    } else {
      for (std::size_t k = 0; k < state.pending.size(); ++k) out += decoded_piece(state, unicode::kReplacement);
    }
    state.pending.clear();
    return out;
  }

  // A piece after ByteFallback, through Strip: with a Fuse before it, the
  // leading characters of the whole text; without, those of every piece.
  std::string decoded_piece(DecodeState& state, std::string_view piece) const {
    if (!piece_decoder_->strip) return std::string(piece);
    const PieceDecoder::Strip& strip = *piece_decoder_->strip;
    std::size_t pos = 0;
    if (piece_decoder_->fuse) {
      while (!state.strip_done && pos < piece.size()) {
        if (state.stripped < strip.start && piece.substr(pos).starts_with(strip.content)) {
          pos += strip.content.size();
          ++state.stripped;
        } else {
          state.strip_done = true;
        }
      }
    } else {
      for (std::size_t k = 0; k < strip.start && piece.substr(pos).starts_with(strip.content); ++k) {
        pos += strip.content.size();
      }
    }
    return std::string(piece.substr(pos));
  }

  bool valid(TokenId id) const noexcept {
    return id >= 0 && static_cast<std::size_t>(id) < has_token_.size() && has_token_[static_cast<std::size_t>(id)];
  }

  void check_utf8(std::string_view text) const {
    for (std::size_t pos = 0; pos < text.size();) {
      const unicode::Utf8Step step = unicode::scan_utf8(text, pos);
      if (step.status != unicode::Utf8Status::Complete) {
        throw ValueError(tessera::detail::concat("tokenizer: the text to encode is not valid UTF-8 (byte offset ",
                                                 pos, ")"));
      }
      pos += step.length;
    }
  }

  std::string normalize(std::string_view text) const {
    std::string s(text);
    for (const NormalizerStep& step : normalizers_) {
      if (const auto* form = std::get_if<unicode::NormalForm>(&step)) {
        s = unicode::normalize(s, *form);
      } else if (const auto* prepend = std::get_if<PrependStep>(&step)) {
        if (!s.empty()) s.insert(0, prepend->prefix);  // an empty piece stays empty
      } else {
        const auto& r = std::get<ReplaceStep>(step);
        s = replace_all(std::move(s), r.pattern, r.content);
      }
    }
    return s;
  }

  // Stages 1-2: added tokens out of the raw text, normalization, added tokens
  // out of the normalized text. Empty pieces are dropped, as tokenizers does.
  std::vector<Piece> split_added(std::string_view text, bool split_special) const {
    std::vector<Piece> raw, out;
    added_.split_raw(text, split_special, raw);
    for (Piece& p : raw) {
      if (p.id) {
        out.push_back(std::move(p));
      } else {
        added_.split_normalized(normalize(p.text), split_special, out);
      }
    }
    return out;
  }

  // Stage 3: each step on every piece not yet resolved to an id.
  std::vector<Piece> pre_tokenize(std::vector<Piece> pieces) const {
    for (const PreTokenizerStep& step : pre_tokenizers_) {
      std::vector<Piece> next;
      for (std::size_t k = 0; k < pieces.size(); ++k) {
        Piece& p = pieces[k];
        if (p.id) {
          next.push_back(std::move(p));
          continue;
        }
        std::visit(
            [&](const auto& s) {
              if constexpr (std::is_same_v<std::decay_t<decltype(s)>, MetaspaceStep>) {
                // Only the first piece can start at offset 0 of the input: pieces
                // are never empty, and an added token there comes first itself.
                apply(s, std::move(p.text), k == 0, next);
              } else {
                apply(s, std::move(p.text), next);
              }
            },
            step);
      }
      pieces = std::move(next);
    }
    return pieces;
  }

  // Split with behavior Isolated: every match and every gap is its own piece.
  static void isolate(const Regex& regex, const std::string& text, std::vector<Piece>& out) {
    std::size_t done = 0;
    for (const ByteRange m : regex.find_all(text)) {
      if (m.begin > done) out.push_back({text.substr(done, m.begin - done), std::nullopt});
      out.push_back({text.substr(m.begin, m.end - m.begin), std::nullopt});
      done = m.end;
    }
    if (done < text.size()) out.push_back({text.substr(done), std::nullopt});
  }

  static void apply(const SplitStep& step, std::string text, std::vector<Piece>& out) {
    isolate(*step.regex, text, out);
  }

  static void apply(const MetaspaceStep& step, std::string text, bool at_start, std::vector<Piece>& out) {
    text = replace_all(std::move(text), " ", step.replacement);
    const bool prepend = step.prepend == MetaspaceStep::Prepend::Always ||
                         (step.prepend == MetaspaceStep::Prepend::First && at_start);
    if (prepend && !text.starts_with(step.replacement)) text.insert(0, step.replacement);
    if (!step.split) {
      out.push_back({std::move(text), std::nullopt});
      return;
    }
    // MergedWithNext: a run of replacements starts the piece after it.
    const std::string_view r = step.replacement;
    std::size_t begin = 0;
    for (std::size_t pos = text.find(r); pos != std::string::npos; pos = text.find(r, pos + r.size())) {
      const bool run_start = pos == 0 || !std::string_view(text).substr(0, pos).ends_with(r);
      if (run_start && pos > begin) {
        out.push_back({text.substr(begin, pos - begin), std::nullopt});
        begin = pos;
      }
    }
    if (begin < text.size()) out.push_back({text.substr(begin), std::nullopt});
  }

  static void apply(const ByteLevelStep& step, std::string text, std::vector<Piece>& out) {
    if (step.add_prefix_space && !text.starts_with(' ')) text.insert(text.begin(), ' ');
    std::vector<Piece> parts;
    if (step.use_regex) {
      isolate(*gpt2_regex(), text, parts);
    } else {
      parts.push_back({std::move(text), std::nullopt});
    }
    for (Piece& p : parts) out.push_back({ByteLevelTable::get().encode(p.text), std::nullopt});
  }

  std::vector<TokenId> apply_template(std::vector<TokenId> ids) const {
    if (!single_template_) return ids;
    std::vector<TokenId> out;
    for (const TemplateItem& item : *single_template_) {
      const std::vector<TokenId>& part = item ? *item : ids;
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  }

  // ---- loading ----

  void read(const json& root) {
    for (const char* key : {"truncation", "padding"}) {
      if (root.contains(key) && !root.at(key).is_null()) {
        detail::fail(source_, std::string("\"") + key + "\" is set; tessera does not truncate or pad in the "
                              "tokenizer (set it to null)");
      }
    }
    read_model(detail::member(root, "model", "the file", source_));
    // The normalizer first: normalized=true added tokens are matched in their
    // normalized form.
    read_normalizer(root.value("normalizer", json()), "normalizer");
    read_added_tokens(root.value("added_tokens", json::array()));
    read_pre_tokenizer(root.value("pre_tokenizer", json()), "pre_tokenizer");
    read_post_processor(root.value("post_processor", json()), "post_processor");
    read_decoder(root.value("decoder", json()));
    build_decoding_table();
    check_template_ids();
  }

  // Every id the template inserts must decode.
  void check_template_ids() const {
    if (!single_template_) return;
    for (const TemplateItem& item : *single_template_) {
      for (const TokenId id : item.value_or(std::vector<TokenId>{})) {
        if (!valid(id)) {
          detail::fail(source_, tessera::detail::concat("post_processor: the template inserts token id ", id,
                                                        ", which is not in the vocabulary"));
        }
      }
    }
  }

  void read_model(const json& model) {
    if (!model.is_object()) detail::fail(source_, "\"model\" is not an object");
    // Files written by old versions of tokenizers have no "type"; the BPE
    // fields identify the model then.
    const std::string type = model.contains("type") ? detail::type_of(model, "model", source_) : "BPE";
    if (type != "BPE") {
      detail::fail(source_, "model.type is \"" + type + "\"; tessera supports only \"BPE\" (byte-level BPE as "
                            "Qwen2 and Llama-3 use it, or Llama's BPE with byte fallback as Phi-3 and Yi use it)");
    }
    model_ = BpeModel::from_json(model, source_);
  }

  void read_added_tokens(const json& list) {
    if (!list.is_array()) detail::fail(source_, "\"added_tokens\" is not an array");
    std::vector<AddedToken> tokens;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string where = tessera::detail::concat("added_tokens[", i, "]");
      const json& t = list[i];
      AddedToken a;
      a.id = detail::token_id(detail::member(t, "id", where, source_), where + ".id", source_);
      a.content = detail::text(detail::member(t, "content", where, source_), where + ".content", source_);
      a.special = detail::flag(t, "special", false, where, source_);
      a.single_word = detail::flag(t, "single_word", false, where, source_);
      a.lstrip = detail::flag(t, "lstrip", false, where, source_);
      a.rstrip = detail::flag(t, "rstrip", false, where, source_);
      a.normalized = detail::flag(t, "normalized", !a.special, where, source_);
      if (!unicode::is_valid_utf8(a.content)) detail::fail(source_, where + ".content is not valid UTF-8");
      tokens.push_back(std::move(a));
    }
    added_ = AddedVocabulary(std::move(tokens), [this](const std::string& s) { return normalize(s); });
  }

  static constexpr const char* kSupportedNormalizers =
      "null, NFC, NFD, NFKC, NFKD, Prepend, Replace (a String pattern) and a Sequence of them";

  void read_normalizer(const json& n, const std::string& where) {
    if (n.is_null()) return;
    const std::string type = detail::type_of(n, where, source_);
    if (type == "Sequence") {
      detail::expect_keys(n, {"type", "normalizers"}, where, source_);
      const json& list = detail::member(n, "normalizers", where, source_);
      if (!list.is_array()) detail::fail(source_, where + ".normalizers is not an array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        read_normalizer(list[i], tessera::detail::concat(where, ".normalizers[", i, "]"));
      }
    } else if (type == "Prepend") {
      detail::expect_keys(n, {"type", "prepend"}, where, source_);
      const std::string prefix = detail::text(detail::member(n, "prepend", where, source_), where + ".prepend", source_);
      if (!unicode::is_valid_utf8(prefix)) detail::fail(source_, where + ".prepend is not valid UTF-8");
      normalizers_.push_back(PrependStep{prefix});
    } else if (type == "Replace") {
      detail::expect_keys(n, {"type", "pattern", "content"}, where, source_);
      const auto [pattern, content] = read_replace(n, where);
      normalizers_.push_back(ReplaceStep{pattern, content});
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      detail::expect_keys(n, {"type"}, where, source_);
      normalizers_.push_back(type == "NFC"    ? unicode::NormalForm::NFC
                             : type == "NFD"  ? unicode::NormalForm::NFD
                             : type == "NFKC" ? unicode::NormalForm::NFKC
                                              : unicode::NormalForm::NFKD);
    } else {
      detail::fail(source_, where + ".type \"" + type + "\" is not supported; tessera supports normalizers " +
                                kSupportedNormalizers);
    }
  }

  // A Replace normalizer's or decoder's {"pattern": {"String": ...}, "content"}.
  // Regex patterns are refused: none of the supported checkpoints uses one.
  std::pair<std::string, std::string> read_replace(const json& n, const std::string& where) const {
    const json& pattern = detail::member(n, "pattern", where, source_);
    if (!pattern.is_object() || !pattern.contains("String") || pattern.size() != 1) {
      detail::fail(source_, where + ".pattern is not {\"String\": ...}; tessera supports Replace with a String "
                                "pattern only");
    }
    std::string literal = detail::text(pattern.at("String"), where + ".pattern.String", source_);
    std::string content = detail::text(detail::member(n, "content", where, source_), where + ".content", source_);
    if (literal.empty()) detail::fail(source_, where + ".pattern.String is empty");
    if (!unicode::is_valid_utf8(literal) || !unicode::is_valid_utf8(content)) {
      detail::fail(source_, where + ": the pattern or the content is not valid UTF-8");
    }
    return {std::move(literal), std::move(content)};
  }

  static constexpr const char* kSupportedPreTokenizers =
      "null, Split (a Regex or String pattern, behavior Isolated, invert false), ByteLevel, Metaspace and a "
      "Sequence of them";

  void read_pre_tokenizer(const json& p, const std::string& where) {
    if (p.is_null()) return;
    const std::string type = detail::type_of(p, where, source_);
    if (type == "Sequence") {
      detail::expect_keys(p, {"type", "pretokenizers"}, where, source_);
      const json& list = detail::member(p, "pretokenizers", where, source_);
      if (!list.is_array()) detail::fail(source_, where + ".pretokenizers is not an array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        read_pre_tokenizer(list[i], tessera::detail::concat(where, ".pretokenizers[", i, "]"));
      }
    } else if (type == "Split") {
      detail::expect_keys(p, {"type", "pattern", "behavior", "invert"}, where, source_);
      pre_tokenizers_.push_back(read_split(p, where));
    } else if (type == "Metaspace") {
      pre_tokenizers_.push_back(read_metaspace(p, where));
    } else if (type == "ByteLevel") {
      detail::expect_keys(p, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, where, source_);
      pre_tokenizers_.push_back(ByteLevelStep{detail::flag(p, "add_prefix_space", true, where, source_),
                                              detail::flag(p, "use_regex", true, where, source_)});
    } else {
      detail::fail(source_, where + ".type \"" + type + "\" is not supported; tessera supports pre-tokenizers " +
                                kSupportedPreTokenizers);
    }
  }

  MetaspaceStep read_metaspace(const json& p, const std::string& where) const {
    detail::expect_keys(p, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"}, where,
                        source_);
    MetaspaceStep m;
    m.replacement = detail::text(detail::member(p, "replacement", where, source_), where + ".replacement", source_);
    const unicode::Utf8Step c = m.replacement.empty() ? unicode::Utf8Step{unicode::Utf8Status::Invalid, 0, 0}
                                                      : unicode::scan_utf8(m.replacement, 0);
    if (c.status != unicode::Utf8Status::Complete || c.length != m.replacement.size()) {
      detail::fail(source_, where + ".replacement is not one character");
    }
    if (p.contains("str_rep") && p.at("str_rep") != p.at("replacement")) {
      detail::fail(source_, where + ".str_rep differs from .replacement");
    }
    // Files from before prepend_scheme have add_prefix_space (true: always).
    const bool add_prefix_space = detail::flag(p, "add_prefix_space", true, where, source_);
    m.prepend = add_prefix_space ? MetaspaceStep::Prepend::Always : MetaspaceStep::Prepend::Never;
    if (p.contains("prepend_scheme") && !p.at("prepend_scheme").is_null()) {
      const std::string scheme = detail::text(p.at("prepend_scheme"), where + ".prepend_scheme", source_);
      if (scheme == "always") {
        m.prepend = MetaspaceStep::Prepend::Always;
      } else if (scheme == "first") {
        m.prepend = MetaspaceStep::Prepend::First;
      } else if (scheme == "never") {
        m.prepend = MetaspaceStep::Prepend::Never;
      } else {
        detail::fail(source_, where + ".prepend_scheme \"" + scheme + "\" is not always, first or never");
      }
    }
    m.split = detail::flag(p, "split", true, where, source_);
    return m;
  }

  SplitStep read_split(const json& p, const std::string& where) const {
    const std::string behavior = detail::text(detail::member(p, "behavior", where, source_), where + ".behavior",
                                              source_);
    if (behavior != "Isolated") {
      detail::fail(source_, where + ".behavior \"" + behavior +
                                "\" is not supported; tessera supports pre-tokenizers " + kSupportedPreTokenizers);
    }
    if (detail::flag(p, "invert", false, where, source_)) {
      detail::fail(source_, where + ".invert is true; tessera supports pre-tokenizers " + kSupportedPreTokenizers);
    }
    const json& pattern = detail::member(p, "pattern", where, source_);
    if (pattern.is_object() && pattern.contains("Regex")) {
      return {std::make_shared<const Regex>(detail::text(pattern.at("Regex"), where + ".pattern.Regex", source_),
                                            source_)};
    }
    if (pattern.is_object() && pattern.contains("String")) {
      // A literal: quoted so that PCRE2 matches it character for character.
      const std::string literal = detail::text(pattern.at("String"), where + ".pattern.String", source_);
      return {std::make_shared<const Regex>("\\Q" + replace_all(literal, "\\E", "\\E\\\\E\\Q") + "\\E", source_)};
    }
    detail::fail(source_, where + ".pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
  }

  static std::string replace_all(std::string s, std::string_view from, std::string_view to) {
    for (std::size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) {
      s.replace(pos, from.size(), to);
    }
    return s;
  }

  static constexpr const char* kSupportedPostProcessors =
      "null, ByteLevel, TemplateProcessing and a Sequence of them";

  void read_post_processor(const json& p, const std::string& where) {
    if (p.is_null()) return;
    const std::string type = detail::type_of(p, where, source_);
    if (type == "Sequence") {
      detail::expect_keys(p, {"type", "processors"}, where, source_);
      const json& list = detail::member(p, "processors", where, source_);
      if (!list.is_array()) detail::fail(source_, where + ".processors is not an array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        read_post_processor(list[i], tessera::detail::concat(where, ".processors[", i, "]"));
      }
    } else if (type == "TemplateProcessing") {
      detail::expect_keys(p, {"type", "single", "pair", "special_tokens"}, where, source_);
      if (single_template_) detail::fail(source_, where + ": only one TemplateProcessing is supported");
      single_template_ = read_template(p, where);
    } else if (type == "ByteLevel") {  // ByteLevel only trims offsets: nothing to do for ids
      detail::expect_keys(p, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, where, source_);
    } else {
      detail::fail(source_, where + ".type \"" + type + "\" is not supported; tessera supports post-processors " +
                                kSupportedPostProcessors);
    }
  }

  std::vector<TemplateItem> read_template(const json& p, const std::string& where) const {
    const json& special = p.value("special_tokens", json::object());
    const json& single = detail::member(p, "single", where, source_);
    if (!single.is_array()) detail::fail(source_, where + ".single is not an array");
    std::vector<TemplateItem> items;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string at = tessera::detail::concat(where, ".single[", i, "]");
      const json& item = single[i];
      if (item.is_object() && item.contains("Sequence")) {
        items.emplace_back(std::nullopt);
      } else if (item.is_object() && item.contains("SpecialToken")) {
        const std::string name = detail::text(detail::member(item.at("SpecialToken"), "id", at, source_),
                                              at + ".SpecialToken.id", source_);
        if (!special.is_object() || !special.contains(name)) {
          detail::fail(source_, at + " uses special token \"" + name + "\", which special_tokens does not define");
        }
        const json& ids = detail::member(special.at(name), "ids", where + ".special_tokens." + name, source_);
        if (!ids.is_array()) detail::fail(source_, where + ".special_tokens." + name + ".ids is not an array");
        std::vector<TokenId> v;
        for (const json& id : ids) v.push_back(detail::token_id(id, where + ".special_tokens." + name, source_));
        items.emplace_back(std::move(v));
      } else {
        detail::fail(source_, at + " is neither {\"Sequence\": ...} nor {\"SpecialToken\": ...}");
      }
    }
    return items;
  }

  static constexpr const char* kSupportedDecoders =
      "the ByteLevel decoder, or Replace (a String pattern), ByteFallback, Fuse and Strip (stop 0), in that order, "
      "alone or in a Sequence (Llama's decoder)";

  void read_decoder(const json& d) {
    const std::string type = d.is_null() ? "null" : detail::type_of(d, "decoder", source_);
    if (type == "ByteLevel") {
      detail::expect_keys(d, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, "decoder", source_);
      return;
    }
    PieceDecoder pd;
    int stage = -1;
    if (type == "Sequence") {
      detail::expect_keys(d, {"type", "decoders"}, "decoder", source_);
      const json& list = detail::member(d, "decoders", "decoder", source_);
      if (!list.is_array() || list.empty()) detail::fail(source_, "decoder.decoders is not a non-empty array");
      for (std::size_t i = 0; i < list.size(); ++i) {
        read_piece_decoder(list[i], tessera::detail::concat("decoder.decoders[", i, "]"), pd, stage);
      }
    } else {
      read_piece_decoder(d, "decoder", pd, stage);
    }
    piece_decoder_ = std::move(pd);
  }

  // One step of a piece decoder; `stage` enforces the order Replace* ByteFallback Fuse Strip.
  void read_piece_decoder(const json& d, const std::string& where, PieceDecoder& pd, int& stage) const {
    const std::string type = d.is_null() ? "null" : detail::type_of(d, where, source_);
    const int step = type == "Replace" ? 0 : type == "ByteFallback" ? 1 : type == "Fuse" ? 2 : type == "Strip" ? 3 : -1;
    if (step < 0) {
      detail::fail(source_, where + ".type \"" + type + "\" is not supported; tessera supports " + kSupportedDecoders);
    }
    if (step < stage || (step == stage && step != 0)) {
      detail::fail(source_, where + ": " + type + " comes out of order; tessera supports " + kSupportedDecoders);
    }
    stage = step;
    if (type == "Replace") {
      detail::expect_keys(d, {"type", "pattern", "content"}, where, source_);
      pd.replaces.push_back(read_replace(d, where));
    } else if (type == "ByteFallback") {
      detail::expect_keys(d, {"type"}, where, source_);
      pd.byte_fallback = true;
    } else if (type == "Fuse") {
      detail::expect_keys(d, {"type"}, where, source_);
      pd.fuse = true;
    } else {
      detail::expect_keys(d, {"type", "content", "start", "stop"}, where, source_);
      const std::string content = detail::text(detail::member(d, "content", where, source_), where + ".content",
                                               source_);
      const unicode::Utf8Step c = content.empty() ? unicode::Utf8Step{unicode::Utf8Status::Invalid, 0, 0}
                                                  : unicode::scan_utf8(content, 0);
      if (c.status != unicode::Utf8Status::Complete || c.length != content.size()) {
        detail::fail(source_, where + ".content is not one character");
      }
      const auto count = [&](const char* key) {
        const json& v = detail::member(d, key, where, source_);
        if (!v.is_number_unsigned() || v.get<std::uint64_t>() > 1024) {
          detail::fail(source_, where + "." + key + " is not a count (an integer in [0, 1024])");
        }
        return static_cast<std::size_t>(v.get<std::uint64_t>());
      };
      const std::size_t start = count("start");
      if (count("stop") != 0) {
        detail::fail(source_, where + ".stop is not 0; tessera supports Strip from the start only (stop 0)");
      }
      pd.strip = PieceDecoder::Strip{content, start};
    }
  }

  // tokenizers' ByteFallback test: six bytes "<0x" + two characters u8::from_str_radix reads in base 16 + ">".
  static std::optional<unsigned char> byte_token_value(std::string_view t) {
    if (t.size() != 6 || !t.starts_with("<0x") || t.back() != '>') return std::nullopt;
    const auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = t[3] == '+' ? 0 : hex(t[3]), lo = hex(t[4]);  // from_str_radix takes a leading '+'
    if (hi < 0 || lo < 0) return std::nullopt;
    return static_cast<unsigned char>(hi * 16 + lo);
  }

  // Per id: the bytes it decodes to and whether skip_special_tokens drops it.
  // tokenizers skips by the token's string: any id whose string is the content
  // of a special added token.
  void build_decoding_table() {
    TokenId max_id = -1;
    for (const auto& [token, id] : model_.vocab()) max_id = std::max(max_id, id);
    for (const AddedToken& t : added_.tokens()) max_id = std::max(max_id, t.id);
    const auto n = static_cast<std::size_t>(max_id + 1);
    // The tables are indexed by id; real vocabularies are dense, so a few
    // holes are allowed but not an id that would make them huge.
    const std::size_t entries = model_.vocab().size() + added_.tokens().size();
    if (n > 2 * entries + 1024) {
      detail::fail(source_, tessera::detail::concat("token id ", max_id, " is far past the ", entries,
                                                    " tokens defined (ids must be nearly dense)"));
    }
    tokens_.assign(n, {});
    has_token_.assign(n, false);
    for (const auto& [token, id] : model_.vocab()) {
      tokens_[static_cast<std::size_t>(id)] = token;
      has_token_[static_cast<std::size_t>(id)] = true;
    }
    std::unordered_set<std::string> special;
    for (const AddedToken& t : added_.tokens()) {
      if (t.special) special.insert(t.content);
    }
    id_bytes_.assign(n, {});
    skip_.assign(n, false);
    byte_.assign(piece_decoder_ ? n : 0, -1);
    const ByteLevelTable& table = ByteLevelTable::get();
    for (std::size_t i = 0; i < n; ++i) {
      const auto id = static_cast<TokenId>(i);
      const bool added = added_.find(id) != nullptr;
      if (!added && !has_token_[i]) continue;
      if (added) has_token_[i] = true;
      const std::string& token = added ? added_.decoding_form(id) : tokens_[i];
      skip_[i] = special.contains(token);
      if (!piece_decoder_) {
        table.append_bytes(id_bytes_[i], token);
        continue;
      }
      // The piece decoder's per-token steps: the Replaces, then the byte test.
      std::string piece = token;
      for (const auto& [from, to] : piece_decoder_->replaces) piece = replace_all(std::move(piece), from, to);
      const std::optional<unsigned char> byte =
          piece_decoder_->byte_fallback ? byte_token_value(piece) : std::nullopt;
      if (byte) {
        byte_[i] = *byte;
        id_bytes_[i] = std::string(1, static_cast<char>(*byte));
      } else {
        id_bytes_[i] = std::move(piece);
      }
    }
  }

  std::string source_;
  BpeModel model_;
  AddedVocabulary added_;
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::optional<std::vector<TemplateItem>> single_template_;
  std::vector<std::string> tokens_;    // model vocabulary by id
  std::vector<bool> has_token_;        // ids that exist (model or added)
  std::vector<std::string> id_bytes_;  // bytes each id decodes to on its own
  std::optional<PieceDecoder> piece_decoder_;  // unset: the ByteLevel decoder
  std::vector<std::int16_t> byte_;     // piece decoder: the byte of a <0xNN> token, or -1
  std::vector<bool> skip_;             // dropped by skip_special_tokens
};

// ---- streaming ------------------------------------------------------------------

// Decodes ids one at a time during generation, emitting text only once it is
// final and complete UTF-8: the bytes of a character split across tokens (an
// emoji is often two or three byte-level tokens, or a run of <0xNN>
// byte-fallback tokens) are held back until the rest arrives. With the
// ByteLevel decoder, bytes that can never become valid are emitted as U+FFFD
// right away; with Llama's decoder a run of <0xNN> tokens is emitted when the
// token after it arrives. The concatenation of every step() and finish()
// equals decode() of all the ids. The tokenizer must outlive the decoder.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

  // The text that `id` completes (often empty while a character is partial).
  std::string step(TokenId id) { return tokenizer_->decode_step(state_, id, skip_special_); }

  // At the end of generation: whatever is held back can no longer complete.
  std::string finish() { return tokenizer_->decode_finish(state_); }

  bool has_pending() const noexcept { return !state_.pending.empty(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  Tokenizer::DecodeState state_;
};

inline StreamDecoder Tokenizer::stream_decoder(bool skip_special_tokens) const {
  return StreamDecoder(*this, skip_special_tokens);
}

}  // namespace tessera::tokenizer
