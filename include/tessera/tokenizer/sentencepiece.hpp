// tessera/tokenizer/sentencepiece.hpp — a sentencepiece `tokenizer.model` with
// the added tokens of its checkpoint directory, giving the ids and texts of the
// reference "slow" tokenizer class InternLM2Tokenizer (InternLM2, and so
// InternVL2-2B/8B/26B), through the sentencepiece library.
//
//   auto tok = tessera::tokenizer::SentencePieceTokenizer::from_directory(dir);
//   std::vector<TokenId> ids = tok.encode("<|im_start|>user\nHi<|im_end|>");
//   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
//   auto stream = tok.stream_decoder(true);     // during generation:
//   std::cout << stream.step(next_id);          // only complete UTF-8
//
// The interface is tokenizer::Tokenizer's (bpe.hpp); auto.hpp picks one of the
// two for a directory. What it reads:
//   tokenizer.model          the sentencepiece model (any model type), loaded
//                            by libsentencepiece; a file it rejects is a
//                            FormatError naming the file and the library's
//                            message;
//   tokenizer_config.json    added_tokens_decoder (id -> token), add_bos_token
//                            (default true), add_eos_token (default false),
//                            bos/eos/unk/pad_token, additional_special_tokens,
//                            tokenizer_class (InternLM2Tokenizer or absent);
//   added_tokens.json        token -> id, for tokens not defined above;
//   special_tokens_map.json  bos/eos/unk/pad_token, additional_special_tokens
//                            (it overrides tokenizer_config.json, as
//                            transformers' loader does).
// The special tokens are the named ones (InternLM2Tokenizer's defaults: unk
// <unk>, bos <s>, eos </s>, pad </s>) and the additional ones; one that is no
// added token is looked up among the model's pieces.
//
// Encoding, as InternLM2Tokenizer does it (transformers' slow tokenizer):
//   1. every added token is cut out of the raw text (leftmost-longest, all of
//      them in one pass; lstrip/rstrip take the whitespace beside them);
//   2. each remaining piece is encoded by sentencepiece on its own (with
//      add_dummy_prefix each piece gets its own "▁"); a resulting piece that
//      is an added token's text maps to that token's id;
//   3. add_special_tokens puts the model's bos id first (add_bos_token) and
//      its eos id last (add_eos_token).
//   split_special_tokens skips step 1: the whole text goes to sentencepiece.
// Decoding (InternLM2Tokenizer.convert_tokens_to_string): ids become tokens
// (an added token's text, else the piece); skip_special_tokens drops the
// special tokens' ids; runs of other tokens are decoded by sentencepiece; each
// special token's text is appended after its run, and a space is written
// before that run unless the token before the special one was special too (so
// decode(encode("Hi")) is " <s>Hi", as the reference gives); then
// transformers' clean_up_tokenization (" ." -> ".", " 's" -> "'s", ...) runs
// over the whole text, as that class always does.
//
// tessera built without libsentencepiece (CMake did not find it) keeps this
// header; loading then throws a FormatError saying so.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <limits>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "added_vocabulary.hpp"
#include "bpe.hpp"
#include "unicode.hpp"

#if defined(TESSERA_HAS_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif

namespace tessera::tokenizer {

// What tokenizer_config.json / added_tokens.json / special_tokens_map.json
// say, gathered (SentencePieceTokenizer::read_config reads a directory).
struct SentencePieceConfig {
  std::vector<AddedToken> added_tokens;     // ids may lie inside the model's vocabulary (they rename pieces)
  std::vector<std::string> special_tokens;  // named + additional, in order; resolved at load
  bool add_bos_token = true;
  bool add_eos_token = false;
};

namespace detail {

// The one place that talks to libsentencepiece.
class SpProcessor {
 public:
  explicit SpProcessor(std::string_view serialized, const std::string& source) {
#if defined(TESSERA_HAS_SENTENCEPIECE)
    sentencepiece::util::Status status;
    try {
      status = sp_.LoadFromSerializedProto(serialized);
    } catch (const std::exception& e) {  // e.g. its trie builder on an empty piece
      fail(source, std::string("not a sentencepiece model that libsentencepiece can load (") + e.what() + ")");
    }
    if (!status.ok()) {
      fail(source, "not a sentencepiece model that libsentencepiece can load (" + status.ToString() + ")");
    }
    size_ = sp_.GetPieceSize();
    if (size_ <= 0) fail(source, "the sentencepiece model has no pieces");
#else
    (void)serialized;
    fail(source, "tessera was built without sentencepiece, so tokenizer.model cannot be read; install "
                 "libsentencepiece (Debian: apt-get install libsentencepiece-dev) and reconfigure, or use "
                 "the checkpoint's tokenizer.json");
#endif
  }

  int size() const noexcept { return size_; }

#if defined(TESSERA_HAS_SENTENCEPIECE)
  void encode(std::string_view text, std::vector<std::string>& pieces) const {
    pieces.clear();
    const auto status = sp_.Encode(text, &pieces);
    if (!status.ok()) throw ValueError("tokenizer: sentencepiece could not encode the text: " + status.ToString());
  }
  std::string decode(const std::vector<std::string>& pieces) const {
    std::string out;
    if (pieces.empty()) return out;
    const auto status = sp_.Decode(pieces, &out);
    if (!status.ok()) throw ValueError("tokenizer: sentencepiece could not decode: " + status.ToString());
    return out;
  }
  int piece_to_id(std::string_view piece) const { return sp_.PieceToId(piece); }
  const std::string& id_to_piece(int id) const { return sp_.IdToPiece(id); }
  bool is_byte(int id) const { return sp_.IsByte(id); }
  int bos_id() const { return sp_.bos_id(); }
  int eos_id() const { return sp_.eos_id(); }
#else
  // Never reached: the constructor throws.
  void encode(std::string_view, std::vector<std::string>& pieces) const { pieces.clear(); }
  std::string decode(const std::vector<std::string>&) const { return {}; }
  int piece_to_id(std::string_view) const { return 0; }
  const std::string& id_to_piece(int) const { return empty_; }
  bool is_byte(int) const { return false; }
  int bos_id() const { return -1; }
  int eos_id() const { return -1; }
#endif

 private:
#if defined(TESSERA_HAS_SENTENCEPIECE)
  sentencepiece::SentencePieceProcessor sp_;
#else
  std::string empty_;
#endif
  int size_ = 0;
};

// transformers' clean_up_tokenization: these str.replace passes, in order,
// each one left to right without overlaps.
inline std::string clean_up_tokenization(std::string s) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    if (s.find(from) == std::string::npos) continue;
    std::string out;
    out.reserve(s.size());
    std::size_t done = 0;
    for (std::size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, done)) {
      out.append(s, done, pos - done);
      out.append(to);
      done = pos + from.size();
    }
    out.append(s, done, std::string::npos);
    s = std::move(out);
  }
  return s;
}

// Where text may be cut so that cleaning the two parts separately equals
// cleaning the whole, whatever follows. Every rule starts with a space, looks
// at most 4 characters ahead, and has no space at position 1 or 3; but a later
// rule can match what an earlier one left, so a deletion on one side of a cut
// can join the other side into a match (" n" + " ' t" -> " n't" -> "n't").
// Safe cuts, then:
//   - at the end, when no space lies in the last 8 bytes (no rule can start
//     there, and no deletion after it can reach back into a rule);
//   - before a space whose two preceding bytes are neither " '" (the " ' "
//     rule would span the cut) nor " n" (" n't" could form after a " ' "
//     deletion), and whose preceding byte is not a space (" 's" and friends
//     could form the same way).
// Returns the last safe cut (0 when there is none). The unit test checks this
// exhaustively against cleaning the whole on short strings.
inline std::size_t safe_cleanup_cut(std::string_view r) {
  const std::size_t last_space = r.rfind(' ');
  if (last_space == std::string_view::npos || r.size() - last_space > 8) return r.size();
  for (std::size_t c = last_space + 1; c-- > 0;) {
    if (r[c] != ' ') continue;
    if (c >= 1 && r[c - 1] == ' ') continue;
    if (c >= 2 && r[c - 2] == ' ' && (r[c - 1] == '\'' || r[c - 1] == 'n')) continue;
    return c;
  }
  return 0;
}

inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(tessera::detail::concat("cannot open tokenizer file ", path.string()));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

inline json read_json_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    json j = json::parse(text);
    if (!j.is_object()) fail(path.string(), "the top level is not a JSON object");
    return j;
  } catch (const json::exception& e) {
    fail(path.string(), std::string("not valid JSON: ") + e.what());
  }
}

// A special-token entry: "text" or {"content": "text", ...}.
inline std::string token_text(const json& v, const std::string& where, const std::string& source) {
  if (v.is_object() && v.contains("content")) return text(v.at("content"), where + ".content", source);
  return text(v, where, source);
}

}  // namespace detail

class SentencePieceStreamDecoder;

class SentencePieceTokenizer {
 public:
  // tokenizer.model and the JSON files beside it (each optional but the model).
  static SentencePieceTokenizer from_directory(const std::filesystem::path& dir) {
    const std::filesystem::path model = dir / "tokenizer.model";
    if (!std::filesystem::is_regular_file(model)) {
      throw IoError(tessera::detail::concat("cannot open tokenizer file ", model.string(), " (no tokenizer.model in ",
                                            dir.string(), ")"));
    }
    return from_serialized(detail::read_text_file(model), read_config(dir), model.string());
  }

  // A model file with an explicit configuration.
  static SentencePieceTokenizer from_file(const std::filesystem::path& model, SentencePieceConfig config = {}) {
    return from_serialized(detail::read_text_file(model), std::move(config), model.string());
  }

  // A serialized ModelProto; `source` names it in error messages.
  static SentencePieceTokenizer from_serialized(std::string_view model, SentencePieceConfig config = {},
                                                const std::string& source = "<memory>") {
    SentencePieceTokenizer tok;
    tok.source_ = source;
    tok.sp_ = std::make_shared<const detail::SpProcessor>(model, source);
    tok.build(std::move(config));
    return tok;
  }

  // Reads tokenizer_config.json, added_tokens.json and special_tokens_map.json
  // (those present) of a checkpoint directory.
  static SentencePieceConfig read_config(const std::filesystem::path& dir) {
    SentencePieceConfig c;
    json cfg = json::object(), map = json::object();
    const auto config_path = dir / "tokenizer_config.json", map_path = dir / "special_tokens_map.json";
    const auto added_path = dir / "added_tokens.json";
    if (std::filesystem::exists(config_path)) cfg = detail::read_json_file(config_path);
    if (std::filesystem::exists(map_path)) map = detail::read_json_file(map_path);
    const std::string cs = config_path.string(), ms = map_path.string();

    if (cfg.contains("tokenizer_class") && !cfg.at("tokenizer_class").is_null()) {
      const std::string cls = detail::text(cfg.at("tokenizer_class"), "tokenizer_class", cs);
      if (cls != "InternLM2Tokenizer" && cls != "InternLM2TokenizerFast") {
        detail::fail(cs, "tokenizer_class is \"" + cls + "\"; tessera reads tokenizer.model with "
                         "InternLM2Tokenizer's rules only (another class splits, adds spaces and decodes "
                         "differently): use the checkpoint's tokenizer.json");
      }
    }
    c.add_bos_token = detail::flag(cfg, "add_bos_token", true, "tokenizer_config", cs);
    c.add_eos_token = detail::flag(cfg, "add_eos_token", false, "tokenizer_config", cs);

    std::map<TokenId, std::string> owner;  // id -> content, to refuse two tokens on one id
    std::set<std::string> defined;
    const auto add = [&](AddedToken t, const std::string& where, const std::string& source) {
      if (t.single_word) {
        detail::fail(source, where + " sets single_word, which tessera does not support with tokenizer.model");
      }
      if (t.content.empty()) detail::fail(source, where + " is an empty token");
      if (!unicode::is_valid_utf8(t.content)) detail::fail(source, where + " is not valid UTF-8");
      if (defined.contains(t.content)) return;  // the first definition wins
      const auto [it, fresh] = owner.emplace(t.id, t.content);
      if (!fresh) {
        detail::fail(source, tessera::detail::concat(where, " gives id ", t.id, " to \"", t.content,
                                                     "\", which \"", it->second, "\" already has"));
      }
      defined.insert(t.content);
      c.added_tokens.push_back(std::move(t));
    };
    if (cfg.contains("added_tokens_decoder")) {
      const json& d = cfg.at("added_tokens_decoder");
      if (!d.is_object()) detail::fail(cs, "added_tokens_decoder is not an object of id -> token");
      // In id order, whatever the file's order.
      std::map<std::int64_t, const json*> by_id;
      for (const auto& [key, value] : d.items()) {
        std::int64_t id = -1;
        try {
          std::size_t used = 0;
          id = std::stoll(key, &used);
          if (used != key.size()) id = -1;
        } catch (const std::exception&) {
          id = -1;
        }
        if (id < 0 || id > std::numeric_limits<TokenId>::max()) {
          detail::fail(cs, "added_tokens_decoder key \"" + key + "\" is not a token id");
        }
        by_id[id] = &value;
      }
      for (const auto& [id, value] : by_id) {
        const std::string where = tessera::detail::concat("added_tokens_decoder[\"", id, "\"]");
        const json& t = *value;
        AddedToken a;
        a.id = static_cast<TokenId>(id);
        a.content = detail::text(detail::member(t, "content", where, cs), where + ".content", cs);
        a.special = detail::flag(t, "special", false, where, cs);
        a.single_word = detail::flag(t, "single_word", false, where, cs);
        a.lstrip = detail::flag(t, "lstrip", false, where, cs);
        a.rstrip = detail::flag(t, "rstrip", false, where, cs);
        a.normalized = false;
        add(std::move(a), where, cs);
      }
    }
    if (std::filesystem::exists(added_path)) {
      const json a = detail::read_json_file(added_path);
      std::map<TokenId, std::string> ordered;
      for (const auto& [content, id] : a.items()) {
        ordered.emplace(detail::token_id(id, "\"" + content + "\"", added_path.string()), content);
      }
      for (const auto& [id, content] : ordered) {
        AddedToken t;
        t.id = id;
        t.content = content;
        t.normalized = false;
        add(std::move(t), "\"" + content + "\"", added_path.string());
      }
    }

    // Named special tokens, then the additional ones; special_tokens_map.json
    // wins over tokenizer_config.json.
    const auto setting = [&](const char* key) -> std::optional<std::pair<const json*, std::string>> {
      if (map.contains(key) && !map.at(key).is_null()) return std::pair{&map.at(key), ms};
      if (cfg.contains(key) && !cfg.at(key).is_null()) return std::pair{&cfg.at(key), cs};
      return std::nullopt;
    };
    const std::pair<const char*, const char*> named[] = {
        {"unk_token", "<unk>"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"pad_token", "</s>"}};
    for (const auto& [key, fallback] : named) {
      const auto s = setting(key);
      c.special_tokens.push_back(s ? detail::token_text(*s->first, key, s->second) : std::string(fallback));
    }
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
      const auto s = setting(key);
      if (!s) continue;
      if (!s->first->is_array()) detail::fail(s->second, std::string(key) + " is not a list");
      for (std::size_t i = 0; i < s->first->size(); ++i) {
        c.special_tokens.push_back(
            detail::token_text((*s->first)[i], tessera::detail::concat(key, "[", i, "]"), s->second));
      }
    }
    return c;
  }

  // ---- the interface of tokenizer::Tokenizer ----

  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options = {}) const {
    check_utf8(text);
    std::vector<TokenId> ids;
    if (options.add_special_tokens && add_bos_) ids.push_back(bos_id_);
    std::vector<std::string> pieces;
    const auto encode_piece = [&](std::string_view piece) {
      sp_->encode(piece, pieces);
      for (const std::string& p : pieces) {
        const auto it = added_ids_.find(p);
        ids.push_back(it != added_ids_.end() ? it->second : static_cast<TokenId>(sp_->piece_to_id(p)));
      }
    };
    if (options.split_special_tokens) {
      if (!text.empty()) encode_piece(text);
    } else {
      std::vector<Piece> parts;
      added_.split_raw(text, false, parts);
      for (const Piece& p : parts) {
        if (p.id) {
          ids.push_back(*p.id);
        } else {
          encode_piece(p.text);
        }
      }
    }
    if (options.add_special_tokens && add_eos_) ids.push_back(eos_id_);
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    std::string out;
    std::vector<std::string> run;
    bool prev_special = false;
    for (const TokenId id : ids) {
      check_id(id);
      if (skip_special_tokens && skip(id)) continue;
      if (special_text(id)) {
        if (!prev_special) out += ' ';
        out += sp_->decode(run);
        out += token_of(id);
        run.clear();
        prev_special = true;
      } else {
        run.push_back(token_of(id));
        prev_special = false;
      }
    }
    out += sp_->decode(run);
    return detail::clean_up_tokenization(std::move(out));
  }
  std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const {
    return decode(std::span<const TokenId>(ids), skip_special_tokens);
  }

  inline SentencePieceStreamDecoder stream_decoder(bool skip_special_tokens = false) const;

  // Ids are 0 .. vocab_size()-1: the model's pieces, then added tokens past them.
  std::size_t vocab_size() const noexcept { return static_cast<std::size_t>(vocab_size_); }

  std::optional<TokenId> token_to_id(std::string_view token) const {
    if (const auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
    // A piece an added token renames still maps to its id, as the reference's
    // convert_tokens_to_ids does; a string that is no piece is nullopt (the
    // reference would give the unknown token's id).
    const int id = sp_->piece_to_id(token);
    if (id >= 0 && id < sp_->size() && sp_->id_to_piece(id) == token) return id;
    return std::nullopt;
  }

  // An added token's text, or the model's piece (e.g. "▁the", "<0x0A>").
  std::optional<std::string> id_to_token(TokenId id) const {
    if (!valid(id)) return std::nullopt;
    return token_of(id);
  }

  const std::vector<AddedToken>& added_tokens() const noexcept { return added_.tokens(); }
  // The special tokens: what skip_special_tokens drops.
  bool is_special(TokenId id) const { return valid(id) && skip(id); }
  const std::string& source() const noexcept { return source_; }
  // The model's bos / eos ids (what add_bos_token / add_eos_token insert).
  std::optional<TokenId> bos_token_id() const { return bos_id_ >= 0 ? std::optional(bos_id_) : std::nullopt; }
  std::optional<TokenId> eos_token_id() const { return eos_id_ >= 0 ? std::optional(eos_id_) : std::nullopt; }

 private:
  friend class SentencePieceStreamDecoder;

  SentencePieceTokenizer() = default;

  void build(SentencePieceConfig config) {
    const int n = sp_->size();
    // Decoding passes pieces through as they are: each must be text.
    for (int i = 0; i < n; ++i) {
      if (!unicode::is_valid_utf8(sp_->id_to_piece(i))) {
        detail::fail(source_, tessera::detail::concat("piece ", i, " of the sentencepiece model is not valid UTF-8"));
      }
    }
    bos_id_ = sp_->bos_id();
    eos_id_ = sp_->eos_id();
    add_bos_ = config.add_bos_token;
    add_eos_ = config.add_eos_token;
    if (add_bos_ && bos_id_ < 0) {
      detail::fail(source_, "add_bos_token is true but the sentencepiece model has no bos piece");
    }
    if (add_eos_ && eos_id_ < 0) {
      detail::fail(source_, "add_eos_token is true but the sentencepiece model has no eos piece");
    }
    std::vector<AddedToken> tokens = std::move(config.added_tokens);
    std::unordered_map<TokenId, std::string> owner;
    for (AddedToken& t : tokens) {
      t.normalized = false;  // the slow tokenizer matches every added token in the raw text, in one pass
      if (t.single_word) detail::fail(source_, "added token \"" + t.content + "\" sets single_word (unsupported)");
      if (t.id < 0) detail::fail(source_, tessera::detail::concat("added token \"", t.content, "\" has id ", t.id));
      const auto [it, fresh] = owner.emplace(t.id, t.content);
      if (!fresh) {
        detail::fail(source_, tessera::detail::concat("added tokens \"", it->second, "\" and \"", t.content,
                                                      "\" have the same id ", t.id));
      }
    }
    // Special tokens that are not added tokens: the model's pieces.
    std::set<std::string> contents;
    for (const AddedToken& t : tokens) contents.insert(t.content);
    for (const std::string& s : config.special_tokens) {
      if (contents.contains(s)) continue;
      const int id = sp_->piece_to_id(s);
      if (id < 0 || id >= n || sp_->id_to_piece(id) != s) {
        detail::fail(source_, "special token \"" + s + "\" is neither an added token nor a piece of the model");
      }
      if (owner.contains(id)) {
        detail::fail(source_, tessera::detail::concat("special token \"", s, "\" is piece ", id,
                                                      ", which added token \"", owner.at(id), "\" renames"));
      }
      AddedToken t;
      t.id = id;
      t.content = s;
      t.normalized = false;
      t.special = true;
      owner.emplace(id, s);
      contents.insert(s);
      tokens.push_back(std::move(t));
    }
    special_texts_.clear();
    special_texts_.insert(config.special_tokens.begin(), config.special_tokens.end());
    TokenId max_id = n - 1;
    for (AddedToken& t : tokens) {
      if (special_texts_.contains(t.content)) t.special = true;
      max_id = std::max(max_id, t.id);
    }
    const std::size_t entries = static_cast<std::size_t>(n) + tokens.size();
    if (static_cast<std::size_t>(max_id) + 1 > 2 * entries + 1024) {
      detail::fail(source_, tessera::detail::concat("added token id ", max_id, " is far past the ", entries,
                                                    " tokens defined (ids must be nearly dense)"));
    }
    vocab_size_ = max_id + 1;
    added_ids_.clear();
    for (const AddedToken& t : tokens) added_ids_.emplace(t.content, t.id);
    added_ = AddedVocabulary(std::move(tokens), [](const std::string& s) { return s; });

    // Per id: skipped by skip_special_tokens (the special tokens' ids), and
    // treated as special text while decoding (its token string is one).
    const auto size = static_cast<std::size_t>(vocab_size_);
    skip_.assign(size, false);
    special_text_.assign(size, false);
    for (const std::string& s : special_texts_) skip_[static_cast<std::size_t>(added_ids_.at(s))] = true;
    for (std::size_t i = 0; i < size; ++i) {
      const auto id = static_cast<TokenId>(i);
      if (valid(id)) special_text_[i] = special_texts_.contains(token_of(id));
      // A kept special text that skip_special_tokens does not drop forces the
      // stream decoder to hold text back even when skipping (see there).
      if (special_text_[i] && !skip_[i]) special_kept_when_skipping_ = true;
    }
  }

  bool valid(TokenId id) const noexcept {
    return id >= 0 && id < vocab_size_ && (id < sp_->size() || added_.find(id) != nullptr);
  }
  void check_id(TokenId id) const {
    if (!valid(id)) {
      throw ValueError(tessera::detail::concat("tokenizer: token id ", id, " is not in the vocabulary of ", source_,
                                               " (ids are 0..", vocab_size_ - 1, ")"));
    }
  }
  bool skip(TokenId id) const { return skip_[static_cast<std::size_t>(id)]; }
  bool special_text(TokenId id) const { return special_text_[static_cast<std::size_t>(id)]; }
  const std::string& token_of(TokenId id) const {
    if (const AddedToken* t = added_.find(id)) return t->content;
    return sp_->id_to_piece(id);
  }
  bool is_byte_piece(TokenId id) const { return id < sp_->size() && !added_.find(id) && sp_->is_byte(id); }

  static void check_utf8(std::string_view text) {
    for (std::size_t pos = 0; pos < text.size();) {
      const unicode::Utf8Step step = unicode::scan_utf8(text, pos);
      if (step.status != unicode::Utf8Status::Complete) {
        throw ValueError(tessera::detail::concat("tokenizer: the text to encode is not valid UTF-8 (byte offset ",
                                                 pos, ")"));
      }
      pos += step.length;
    }
  }

  std::string source_;
  std::shared_ptr<const detail::SpProcessor> sp_;
  AddedVocabulary added_;
  std::unordered_map<std::string, TokenId> added_ids_;  // content -> id
  std::unordered_set<std::string> special_texts_;
  std::vector<bool> skip_, special_text_;
  bool special_kept_when_skipping_ = false;
  TokenId vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1;
  bool add_bos_ = true, add_eos_ = false;
};

// ---- streaming ------------------------------------------------------------------

// Decodes ids one at a time during generation. The concatenation of every
// step() and finish() equals decode() of all the ids, and each piece of text
// is complete UTF-8:
//   - byte-fallback pieces (<0xE4><0xB8><0xAD>) of an unfinished character are
//     held until the character is complete;
//   - the clean-up rules look a few characters ahead (" ." -> "."), so text
//     ending near a space is held until what follows is known;
//   - with skip_special_tokens=false, the reference writes a space before a run
//     of text that a special token follows, so a run is released only when the
//     next special token (or finish()) arrives. With skip_special_tokens=true
//     (what streaming a reply uses) text flows token by token.
// The tokenizer must outlive the decoder.
class SentencePieceStreamDecoder {
 public:
  explicit SentencePieceStreamDecoder(const SentencePieceTokenizer& tokenizer, bool skip_special_tokens = false)
      : tok_(&tokenizer),
        skip_special_(skip_special_tokens),
        eager_(skip_special_tokens && !tokenizer.special_kept_when_skipping_) {}

  std::string step(TokenId id) {
    tok_->check_id(id);
    if (skip_special_ && tok_->skip(id)) return {};
    if (tok_->special_text(id)) {  // only when not eager
      if (!prev_special_) raw_ += ' ';
      raw_ += tok_->sp_->decode(run_);
      raw_ += tok_->token_of(id);
      run_.clear();
      run_byte_.clear();
      prev_special_ = true;
      return release(false);
    }
    prev_special_ = false;
    run_.push_back(tok_->token_of(id));
    run_byte_.push_back(tok_->is_byte_piece(id));
    if (!eager_) return {};
    const std::size_t k = complete_prefix();
    if (k == 0) return {};
    std::string text = k == run_.size() ? tok_->sp_->decode(run_) : decode_prefix(k);
    if (text.size() > run_emitted_) raw_.append(text, run_emitted_, std::string::npos);
    run_emitted_ = std::max(run_emitted_, text.size());
    if (k == run_.size() && run_.size() > kCompactAfter) compact();
    return release(false);
  }

  std::string finish() {
    if (eager_) {
      const std::string text = tok_->sp_->decode(run_);
      if (text.size() > run_emitted_) raw_.append(text, run_emitted_, std::string::npos);
    } else {
      raw_ += tok_->sp_->decode(run_);
    }
    std::string out = release(true);
    run_.clear();
    run_byte_.clear();
    run_emitted_ = 0;
    prev_special_ = false;
    return out;
  }

  // Whether finish() would return text (or U+FFFD for unfinished bytes).
  bool has_pending() const {
    if (!raw_.empty()) return true;
    if (run_.empty()) return false;
    return !eager_ || complete_prefix() < run_.size();
  }

 private:
  static constexpr std::size_t kCompactAfter = 64;

  // How many pieces of the run decode to complete text: all but a trailing
  // run of byte pieces that ends inside a UTF-8 character.
  std::size_t complete_prefix() const {
    std::size_t first = run_.size();
    while (first > 0 && run_byte_[first - 1]) --first;
    if (first == run_.size()) return first;
    std::string bytes;
    for (std::size_t i = first; i < run_.size(); ++i) bytes += byte_of(run_[i]);
    std::size_t pos = 0, piece = first;
    while (pos < bytes.size()) {
      const unicode::Utf8Step s = unicode::scan_utf8(bytes, pos);
      if (s.status == unicode::Utf8Status::Truncated) return piece;
      pos += s.length;
      piece = first + pos;
    }
    return run_.size();
  }

  static char byte_of(const std::string& piece) {  // "<0xAB>"
    const auto hex = [](char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; };
    if (piece.size() != 6) return '?';
    return static_cast<char>((hex(piece[3]) << 4) | hex(piece[4]));
  }

  std::string decode_prefix(std::size_t k) const {
    const std::vector<std::string> head(run_.begin(), run_.begin() + static_cast<std::ptrdiff_t>(k));
    return tok_->sp_->decode(head);
  }

  // Drops the middle of a long run whose text is all out: decoding the first
  // pieces (up to one with text, ending on a whole character) followed by new
  // pieces gives that text followed by the new pieces' text, as the whole run
  // would (sentencepiece strips a leading "▁" only while its text is empty).
  void compact() {
    for (std::size_t j = 0; j < run_.size(); ++j) {
      if (run_byte_[j]) continue;
      std::string text = decode_prefix(j + 1);
      if (text.empty()) continue;
      run_.resize(j + 1);
      run_byte_.resize(j + 1);
      run_emitted_ = text.size();
      return;
    }
  }

  // Cleans and returns the raw text up to the last cut that what follows
  // cannot change (all of it at the end).
  std::string release(bool all) {
    const std::size_t cut = all ? raw_.size() : detail::safe_cleanup_cut(raw_);
    if (cut == 0) return {};
    std::string out = detail::clean_up_tokenization(raw_.substr(0, cut));
    raw_.erase(0, cut);
    return out;
  }

  const SentencePieceTokenizer* tok_;
  bool skip_special_;
  bool eager_;                     // text flows token by token (see above)
  bool prev_special_ = false;      // the previous kept token was special text
  std::vector<std::string> run_;   // tokens since the last special text
  std::vector<bool> run_byte_;     // per token of run_: a byte-fallback piece
  std::size_t run_emitted_ = 0;    // bytes of decode(run_) already moved to raw_
  std::string raw_;                // decoded, not yet cleaned and returned
};

inline SentencePieceStreamDecoder SentencePieceTokenizer::stream_decoder(bool skip_special_tokens) const {
  return SentencePieceStreamDecoder(*this, skip_special_tokens);
}

}  // namespace tessera::tokenizer
