// tessera/tokenizer/auto.hpp — the tokenizer of a checkpoint directory, chosen
// from the files it holds, behind one interface.
//
//   tessera::tokenizer::AnyTokenizer tok = tessera::tokenizer::load_tokenizer(dir);
//   auto ids = tok.encode(prompt);
//   auto stream = tok.stream_decoder(/*skip_special_tokens=*/true);
//
// The choice, as transformers' AutoTokenizer makes it for these checkpoints:
//   - tokenizer_config.json names InternLM2Tokenizer (InternLM2, so
//     InternVL2-2B/8B/26B): its reference is a slow-only tokenizer class, so
//     tokenizer.model is read (SentencePieceTokenizer), even when a
//     tokenizer.json lies beside it;
//   - otherwise tokenizer.json is read when present (the fast tokenizer that
//     AutoTokenizer uses: Qwen2, MiniCPM-V, Llama-3, Phi-3, Yi);
//   - otherwise tokenizer.model (SentencePieceTokenizer) when tokenizer_class
//     is InternLM2's or absent; another class (LlamaTokenizer, ...) splits and
//     decodes differently, so that is a FormatError naming the directory, the
//     files in it and the class;
//   - neither: an IoError naming the directory and the files found.
// A file that is there but cannot be used throws its loader's error (a
// FormatError naming the file and the component), never a silent fallback.
#pragma once

#include <algorithm>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "../core/error.hpp"
#include "bpe.hpp"
#include "sentencepiece.hpp"

namespace tessera::tokenizer {

class AnyStreamDecoder {
 public:
  explicit AnyStreamDecoder(StreamDecoder d) : d_(std::move(d)) {}
  explicit AnyStreamDecoder(SentencePieceStreamDecoder d) : d_(std::move(d)) {}

  std::string step(TokenId id) {
    return std::visit([&](auto& d) { return d.step(id); }, d_);
  }
  std::string finish() {
    return std::visit([](auto& d) { return d.finish(); }, d_);
  }
  bool has_pending() const {
    return std::visit([](const auto& d) { return d.has_pending(); }, d_);
  }

 private:
  std::variant<StreamDecoder, SentencePieceStreamDecoder> d_;
};

class AnyTokenizer {
 public:
  enum class Kind { TokenizerJson, SentencePiece };

  AnyTokenizer(Tokenizer t) : t_(std::move(t)) {}                // NOLINT: implicit on purpose
  AnyTokenizer(SentencePieceTokenizer t) : t_(std::move(t)) {}  // NOLINT

  Kind kind() const noexcept { return t_.index() == 0 ? Kind::TokenizerJson : Kind::SentencePiece; }
  // The underlying tokenizer, or nullptr when it is the other kind.
  const Tokenizer* tokenizer_json() const noexcept { return std::get_if<Tokenizer>(&t_); }
  const SentencePieceTokenizer* sentencepiece() const noexcept { return std::get_if<SentencePieceTokenizer>(&t_); }

  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options = {}) const {
    return std::visit([&](const auto& t) { return t.encode(text, options); }, t_);
  }
  std::string decode(std::span<const TokenId> ids, bool skip_special_tokens = false) const {
    return std::visit([&](const auto& t) { return t.decode(ids, skip_special_tokens); }, t_);
  }
  std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens = false) const {
    return decode(std::span<const TokenId>(ids), skip_special_tokens);
  }
  AnyStreamDecoder stream_decoder(bool skip_special_tokens = false) const {
    return std::visit([&](const auto& t) { return AnyStreamDecoder(t.stream_decoder(skip_special_tokens)); }, t_);
  }
  std::size_t vocab_size() const {
    return std::visit([](const auto& t) { return t.vocab_size(); }, t_);
  }
  std::optional<TokenId> token_to_id(std::string_view token) const {
    return std::visit([&](const auto& t) { return t.token_to_id(token); }, t_);
  }
  std::optional<std::string> id_to_token(TokenId id) const {
    return std::visit([&](const auto& t) { return t.id_to_token(id); }, t_);
  }
  bool is_special(TokenId id) const {
    return std::visit([&](const auto& t) { return t.is_special(id); }, t_);
  }
  const std::vector<AddedToken>& added_tokens() const {
    return std::visit([](const auto& t) -> const std::vector<AddedToken>& { return t.added_tokens(); }, t_);
  }
  const std::string& source() const {
    return std::visit([](const auto& t) -> const std::string& { return t.source(); }, t_);
  }

 private:
  std::variant<Tokenizer, SentencePieceTokenizer> t_;
};

namespace detail {

// tokenizer_config.json's tokenizer_class, when the file and key exist and parse.
inline std::optional<std::string> tokenizer_class(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(path)) return std::nullopt;
  const json cfg = read_json_file(path);
  if (!cfg.contains("tokenizer_class") || !cfg.at("tokenizer_class").is_string()) return std::nullopt;
  return cfg.at("tokenizer_class").get<std::string>();
}

inline std::string files_found(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  if (names.empty()) return "it is empty";
  std::string out = "it holds ";
  for (std::size_t i = 0; i < names.size() && i < 40; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 40) out += tessera::detail::concat(" and ", names.size() - 40, " more");
  return out;
}

}  // namespace detail

// The tokenizer of a checkpoint directory (see the top of this file).
inline AnyTokenizer load_tokenizer(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir)) {
    throw IoError(tessera::detail::concat("load_tokenizer: ", dir.string(), " is not a directory"));
  }
  const bool has_json = std::filesystem::is_regular_file(dir / "tokenizer.json");
  const bool has_model = std::filesystem::is_regular_file(dir / "tokenizer.model");
  const std::optional<std::string> cls = detail::tokenizer_class(dir);
  const bool internlm2 = cls && *cls == "InternLM2Tokenizer";
  if (has_model && !has_json && cls && !internlm2 && *cls != "InternLM2TokenizerFast") {
    throw FormatError(tessera::detail::concat(
        "load_tokenizer: ", dir.string(), " has tokenizer.model but no tokenizer.json (", detail::files_found(dir),
        "), and its tokenizer_class \"", *cls, "\" is not one tessera reads from tokenizer.model (only "
        "InternLM2Tokenizer's rules are implemented); add the checkpoint's tokenizer.json"));
  }
  if (has_model && (internlm2 || !has_json)) return SentencePieceTokenizer::from_directory(dir);
  if (has_json) return Tokenizer::from_file(dir / "tokenizer.json");
  throw IoError(tessera::detail::concat("load_tokenizer: ", dir.string(),
                                        " has neither tokenizer.json nor tokenizer.model (", detail::files_found(dir),
                                        "); tessera reads a Hugging Face tokenizer.json or a sentencepiece "
                                        "tokenizer.model"));
}

}  // namespace tessera::tokenizer
