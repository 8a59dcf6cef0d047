// tessera/io/config.hpp — the JSON files of a Hugging Face checkpoint:
// config.json as a typed DecoderConfig, generation_config.json as a
// GenerationConfig, and the small JSON helpers that checkpoint.hpp shares
// (reading a file, depth-limited parsing, typed field access).
//
// Why io/ and not models/: DESIGN.md puts "config.json" in io/ beside the
// other file readers, and every model file (Qwen2, and the Qwen2 language
// model inside Qwen2.5-VL and InternVL2-1B) consumes the same struct, so it
// is read once here and models/ only uses it.
//
// Absent keys take the defaults of transformers' Qwen2Config and
// GenerationConfig (v4.5x signature; v5's renames `rope_parameters` and
// `dtype` are read too). Unknown keys are ignored, as transformers keeps them
// as plain attributes. Every error is a tessera::FormatError (IoError when
// the file cannot be read) naming the file, the key (with its path for
// nested objects, "text_config.hidden_size") and the bad value.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"

namespace tessera::io {

// JSON nested deeper than this is rejected (HF configs need about 4 levels);
// it keeps hostile inputs from exhausting the stack in recursive code.
inline constexpr int kMaxConfigJsonDepth = 64;

// More decoder layers than any published model has by two orders of
// magnitude: a corrupt count is rejected before per-layer tables are built.
inline constexpr std::int64_t kMaxConfigLayers = 1 << 16;

namespace detail {
using tessera::detail::concat;

// What a JSON value is, for messages ("a JSON string", "a negative integer").
inline std::string json_value_kind(const nlohmann::json& j) {
  if (j.is_number_unsigned()) return "a non-negative integer";
  if (j.is_number_integer()) return "a negative integer";
  if (j.is_number_float()) return "a non-integer number";
  return std::string("a JSON ") + j.type_name();
}

// The value as it appears in the file, shortened so a huge array cannot
// flood a message.
inline std::string json_excerpt(const nlohmann::json& j) {
  std::string s = j.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// The whole file as text; IoError naming the file and `what` it is.
inline std::string read_text_file(const std::filesystem::path& path, std::string_view what) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    throw IoError(concat("cannot read ", what, " '", path.string(), "': ",
                         std::filesystem::exists(path, ec) ? "not a regular file" : "no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(concat("cannot open ", what, " '", path.string(), "': ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw IoError(concat("reading ", what, " '", path.string(), "' failed"));
  return std::move(text).str();
}

// Parses `text` as one JSON document; FormatError naming `where` with the
// parser's position on failure, or when it nests deeper than the limit.
inline nlohmann::json parse_json_text(std::string_view text, const std::string& where) {
  bool too_deep = false;
  auto depth_guard = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) -> bool {
    using E = nlohmann::json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= kMaxConfigJsonDepth) {
      too_deep = true;
      return false;  // discard: the document is rejected below
    }
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.begin(), text.end(), depth_guard, /*allow_exceptions=*/true,
                                 /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(concat("'", where, "' is not valid JSON: ", e.what()));
  }
  if (too_deep) throw FormatError(concat("'", where, "' nests JSON deeper than ", kMaxConfigJsonDepth, " levels"));
  return root;
}

// Typed, validated access to the keys of one JSON object. `prefix` is the
// object's key path within the file ("" for the root, "text_config." for a
// nested one), so messages name the key the way a user would find it.
class JsonFields {
 public:
  JsonFields(const nlohmann::json& object, std::string file, std::string prefix = "")
      : obj_(object), file_(std::move(file)), prefix_(std::move(prefix)) {
    if (!obj_.is_object()) {
      // concat, not "literal" + std::string&&: GCC 12 -O3 warns falsely (-Wrestrict).
      const std::string name =
          prefix_.empty() ? std::string("the file") : concat("\"", prefix_.substr(0, prefix_.size() - 1), "\"");
      throw FormatError(concat("'", file_, "': ", name,
                               " must be a JSON object, but it is ", json_value_kind(obj_)));
    }
  }

  const std::string& file() const noexcept { return file_; }
  bool has(std::string_view key) const { return obj_.contains(key); }
  // Present and not null: the Python side would see a value, not None.
  bool has_value(std::string_view key) const { return has(key) && !obj_.at(std::string(key)).is_null(); }
  const nlohmann::json& raw(std::string_view key) const { return obj_.at(std::string(key)); }

  // FormatError "'file': key "k" <problem>, but it is <kind> (<value>)".
  FormatError bad(std::string_view key, std::string_view problem) const {
    const auto& v = raw(key);
    return FormatError(concat("'", file_, "': \"", key_path(key), "\" ", problem, ", but it is ", json_value_kind(v),
                              " (", json_excerpt(v), ")"));
  }
  // FormatError about a key's value in words of our own.
  FormatError error(std::string_view key, std::string_view message) const {
    return FormatError(concat("'", file_, "': \"", key_path(key), "\" ", message));
  }

  std::int64_t integer(std::string_view key, std::int64_t fallback) const {
    return has(key) ? integer_value(key) : fallback;
  }
  // An integer that must be > 0 (sizes, counts).
  // An integer the file must give; `why` says what needs it.
  std::int64_t required_integer(std::string_view key, std::string_view why) const {
    if (!has_value(key)) throw error(key, concat("is missing (", why, ")"));
    return integer_value(key);
  }
  std::int64_t positive(std::string_view key, std::int64_t fallback) const {
    const std::int64_t v = integer(key, fallback);
    if (v <= 0) throw error(key, concat("must be a positive integer, but it is ", v));
    return v;
  }
  // Absent or null: nullopt (Python's None).
  std::optional<std::int64_t> optional_integer(std::string_view key) const {
    if (!has_value(key)) return std::nullopt;
    return integer_value(key);
  }
  // Any JSON number, as Python's float() would take it.
  double number(std::string_view key, double fallback) const {
    if (!has(key)) return fallback;
    const auto& v = raw(key);
    if (!v.is_number()) throw bad(key, "must be a number");
    return v.get<double>();
  }
  bool boolean(std::string_view key, bool fallback) const {
    if (!has(key)) return fallback;
    const auto& v = raw(key);
    if (!v.is_boolean()) throw bad(key, "must be true or false");
    return v.get<bool>();
  }
  std::optional<std::string> optional_string(std::string_view key) const {
    if (!has_value(key)) return std::nullopt;
    const auto& v = raw(key);
    if (!v.is_string()) throw bad(key, "must be a string");
    return v.get<std::string>();
  }
  std::string string(std::string_view key, std::string fallback) const {
    return optional_string(key).value_or(std::move(fallback));
  }
  // A token id or a list of them (eos_token_id); absent or null: empty.
  std::vector<std::int64_t> id_list(std::string_view key) const {
    std::vector<std::int64_t> ids;
    if (!has_value(key)) return ids;
    const auto& v = raw(key);
    if (v.is_array()) {
      for (const auto& e : v) {
        if (!e.is_number_integer() || e.get<std::int64_t>() < 0) {
          throw bad(key, "must be a non-negative integer or a list of them");
        }
        ids.push_back(e.get<std::int64_t>());
      }
      return ids;
    }
    const std::int64_t id = token_id_value(key);
    ids.push_back(id);
    return ids;
  }
  // A single non-negative token id, absent or null: nullopt.
  std::optional<std::int64_t> optional_token_id(std::string_view key) const {
    if (!has_value(key)) return std::nullopt;
    return token_id_value(key);
  }

  std::string key_path(std::string_view key) const { return prefix_ + std::string(key); }

 private:
  std::int64_t integer_value(std::string_view key) const {
    const auto& v = raw(key);
    // Integers only: 2.0 is as wrong for a layer count as "2" is.
    if (!v.is_number_integer()) throw bad(key, "must be an integer");
    if (v.is_number_unsigned() &&
        v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw bad(key, "must fit a 64-bit signed integer");
    }
    return v.get<std::int64_t>();
  }
  std::int64_t token_id_value(std::string_view key) const {
    const auto& v = raw(key);
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0) {
      throw bad(key, "must be a non-negative integer token id");
    }
    return integer_value(key);
  }

  const nlohmann::json& obj_;
  std::string file_;
  std::string prefix_;
};

// config.json may be given as the file or as the checkpoint directory.
inline std::filesystem::path json_file_in(const std::filesystem::path& path, std::string_view file_name) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) ? path / file_name : path;
}

}  // namespace detail

// ---- config.json ---------------------------------------------------------------

// How a layer attends: to every earlier position, or to a sliding window.
enum class AttentionKind : std::uint8_t { full, sliding };

// The rotary embedding variant as config.json writes it ("rope_scaling" in
// transformers 4.x, "rope_parameters" in v5). io/ only parses: every
// variant's parameters are kept as written, and the decoder
// (models/decoder.hpp, Decoder::check_supported) is the one place that
// judges which variants it runs, before any weight is loaded.
//   "default"            plain RoPE with base theta
//   "mrope"              Qwen2-VL's multimodal RoPE: the same frequencies in
//                        temporal/height/width sections (mrope_section)
//   "linear"             positions divided by factor
//   "dynamic"            dynamic NTK: the base grows once a sequence passes
//                        max_position_embeddings (InternLM2, Llama)
//   "su" / "longrope"    Phi-3's LongRoPE: per-frequency short/long factors
//                        chosen against original_max_position_embeddings,
//                        and a magnitude scale
//   "llama3"             Llama-3.1's wavelength-banded scaling
struct RopeConfig {
  std::string type = "default";
  double theta = 10000.0;
  std::vector<std::int64_t> mrope_section;  // only for "mrope": head_dim / 2 split in sections
  std::string key;                          // where it was read ("rope_scaling"), for messages; empty: absent
  std::optional<double> factor;             // linear, dynamic, llama3 (and longrope when written)
  std::vector<double> short_factor, long_factor;  // su / longrope: head_dim / 2 each
  std::optional<std::int64_t> original_max_position_embeddings;  // longrope, llama3 (inside or top level)
  std::optional<double> low_freq_factor, high_freq_factor;       // llama3
  std::optional<double> attention_factor;                        // longrope: the magnitude scale, when written

  bool is_longrope() const { return type == "su" || type == "longrope"; }
};

// A decoder-only language model's configuration: transformers' Qwen2Config,
// and the same keys of LlamaConfig, Phi3Config and InternLM2's remote
// config, which the shared decoder (models/decoder.hpp) runs. Field defaults
// are transformers' Qwen2Config's for an absent key.
struct DecoderConfig {
  std::string model_type = "qwen2";
  std::vector<std::string> architectures;  // "architectures": the class names, e.g. "LlamaForCausalLM"
  std::int64_t vocab_size = 151936;
  std::int64_t hidden_size = 4096;
  std::int64_t intermediate_size = 22016;
  std::int64_t num_hidden_layers = 32;
  std::int64_t num_attention_heads = 32;
  // transformers: 32 when the key is absent, num_attention_heads when null.
  std::int64_t num_key_value_heads = 32;
  // Qwen2Attention takes config.head_dim when present, else hidden / heads.
  std::optional<std::int64_t> head_dim_override;
  std::string hidden_act = "silu";
  std::int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  // The checkpoint's saved dtype ("bfloat16", ...); informative only: load
  // converts each tensor to the element type you ask for.
  std::optional<std::string> torch_dtype;
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  // eos_token_id: an int or a list
  std::optional<std::int64_t> pad_token_id;
  bool use_sliding_window = false;
  std::optional<std::int64_t> sliding_window = 4096;  // as written; see effective_sliding_window()
  std::int64_t max_window_layers = 28;
  std::vector<AttentionKind> layer_types;  // one per layer, always filled
  // Biases beyond Qwen2's q/k/v ones, as each family spells the switch:
  // Llama "attention_bias" (q/k/v/o) and "mlp_bias", InternLM2 "bias"
  // (wqkv, wo). Absent: nullopt, since the defaults differ (Llama false,
  // InternLM2 true).
  std::optional<bool> attention_bias;
  bool mlp_bias = false;
  bool sliding_window_written = false;  // the key is present (Phi-3 applies it whenever it is set)
  double partial_rotary_factor = 1.0;  // Phi-3: the rotated share of head_dim

  std::int64_t head_dim() const { return head_dim_override.value_or(hidden_size / num_attention_heads); }
  // transformers keeps sliding_window only when use_sliding_window is true.
  std::optional<std::int64_t> effective_sliding_window() const {
    return use_sliding_window ? sliding_window : std::nullopt;
  }

  // Reads the config from a parsed JSON object. `file` names the file in
  // messages; `prefix` is the object's key path ("text_config.") when the
  // Qwen2 fields sit in a nested object of a multimodal config.
  static DecoderConfig from_json(const nlohmann::json& object, const std::string& file, const std::string& prefix = "");
  // Parses config.json text; `file` names it in messages.
  static DecoderConfig parse(std::string_view text, const std::string& file = "config.json") {
    return from_json(detail::parse_json_text(text, file), file);
  }
  // Reads `path`: a config.json file or a checkpoint directory holding one.
  static DecoderConfig load(const std::filesystem::path& path) {
    const auto file = detail::json_file_in(path, "config.json");
    return parse(detail::read_text_file(file, "config file"), file.string());
  }
};

// The name every Qwen2 call site has used; the struct is the shared
// decoder's configuration.
using Qwen2Config = DecoderConfig;

namespace detail {

// A list of positive numbers (LongRoPE's factors).
inline std::vector<double> read_factors(const JsonFields& r, std::string_view key) {
  std::vector<double> out;
  if (!r.has_value(key)) return out;
  const auto& list = r.raw(key);
  if (!list.is_array()) throw r.bad(key, "must be a list of positive numbers");
  for (const auto& e : list) {
    if (!e.is_number() || !(e.get<double>() > 0.0) || !std::isfinite(e.get<double>())) {
      throw r.bad(key, "must be a list of positive numbers");
    }
    out.push_back(e.get<double>());
  }
  return out;
}

// "rope_type" (new spelling) or "type" (old); absent: an error, since a
// rope_scaling object without a type is a config we cannot interpret.
// Every variant's parameters are read as written; which variants run is
// the decoder's call (see RopeConfig).
inline RopeConfig read_rope(const JsonFields& f, std::string_view key, double theta) {
  RopeConfig rope;
  rope.theta = theta;
  if (!f.has_value(key)) return rope;
  const JsonFields r(f.raw(key), f.file(), f.key_path(key) + ".");
  rope.key = f.key_path(key);
  auto type = r.optional_string("rope_type");
  if (!type) type = r.optional_string("type");
  if (!type) throw f.error(key, "has neither \"rope_type\" nor \"type\"; tessera supports \"default\" and \"mrope\"");
  if (r.has("rope_theta")) {  // transformers v5 keeps rope_theta here
    rope.theta = r.number("rope_theta", theta);
  }
  if (*type == "mrope" || (*type == "default" && r.has_value("mrope_section"))) {
    // Qwen2-VL writes {"type": "mrope", "mrope_section": [...]}; transformers
    // reads it as default RoPE with sections.
    rope.type = "mrope";
    if (!r.has_value("mrope_section") || !r.raw("mrope_section").is_array()) {
      throw f.error(key, "has type \"mrope\" but no \"mrope_section\" list of positive integers");
    }
    for (const auto& s : r.raw("mrope_section")) {
      if (!s.is_number_integer() || s.get<std::int64_t>() <= 0) {
        throw r.bad("mrope_section", "must be a list of positive integers");
      }
      rope.mrope_section.push_back(s.get<std::int64_t>());
    }
    return rope;
  }
  rope.type = *type;
  const auto positive_number = [&](std::string_view k) -> std::optional<double> {
    if (!r.has_value(k)) return std::nullopt;
    const double v = r.number(k, 0.0);
    if (!(v > 0.0) || !std::isfinite(v)) throw r.bad(k, concat("must be a positive number, but it is ", v));
    return v;
  };
  rope.factor = positive_number("factor");
  rope.low_freq_factor = positive_number("low_freq_factor");
  rope.high_freq_factor = positive_number("high_freq_factor");
  rope.attention_factor = positive_number("attention_factor");
  if (r.has_value("original_max_position_embeddings")) {
    rope.original_max_position_embeddings = r.positive("original_max_position_embeddings", 0);
  }
  rope.short_factor = read_factors(r, "short_factor");
  rope.long_factor = read_factors(r, "long_factor");
  return rope;
}

inline std::vector<AttentionKind> read_layer_types(const JsonFields& f, const DecoderConfig& c) {
  std::vector<AttentionKind> kinds;
  if (!f.has_value("layer_types")) {
    // transformers: sliding for layers at or past max_window_layers, when a
    // sliding window is in effect.
    const auto window = c.effective_sliding_window();
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
      kinds.push_back(window && i >= c.max_window_layers ? AttentionKind::sliding : AttentionKind::full);
    }
    return kinds;
  }
  const auto& list = f.raw("layer_types");
  if (!list.is_array()) throw f.bad("layer_types", "must be a list of \"full_attention\" / \"sliding_attention\"");
  for (const auto& e : list) {
    if (e == "full_attention") kinds.push_back(AttentionKind::full);
    else if (e == "sliding_attention") kinds.push_back(AttentionKind::sliding);
    else throw f.bad("layer_types", "must hold only \"full_attention\" and \"sliding_attention\"");
  }
  if (static_cast<std::int64_t>(kinds.size()) != c.num_hidden_layers) {
    throw f.error("layer_types", concat("has ", kinds.size(), " entries but num_hidden_layers is ",
                                        c.num_hidden_layers));
  }
  return kinds;
}

// The relations between fields that transformers' modeling code relies on.
inline void check_decoder_shapes(const JsonFields& f, const DecoderConfig& c) {
  if (!c.head_dim_override && c.hidden_size % c.num_attention_heads != 0) {
    throw f.error("num_attention_heads", concat(c.num_attention_heads, " does not divide hidden_size ", c.hidden_size,
                                                " (head_dim = hidden_size / num_attention_heads; no \"head_dim\" key)"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    throw f.error("num_key_value_heads",
                  concat(c.num_key_value_heads, f.has("num_key_value_heads") ? "" : " (the default: the key is absent)",
                         " does not divide num_attention_heads ", c.num_attention_heads,
                         " (each key/value head serves a whole group of query heads)"));
  }
  if (c.rope.type == "mrope") {
    // Sections are positive; stop summing once past head_dim (no overflow).
    std::int64_t sum = 0;
    for (auto s : c.rope.mrope_section) sum = std::min(sum + std::min(s, c.head_dim()), c.head_dim() + 1);
    if (sum * 2 != c.head_dim()) {
      throw f.error("rope_scaling", concat("mrope_section sums to ", sum, " but must be head_dim / 2 = ",
                                           c.head_dim() / 2));
    }
  }
  if (c.use_sliding_window && !c.sliding_window) {
    throw f.error("sliding_window", "is null but use_sliding_window is true");
  }
}

}  // namespace detail

inline DecoderConfig DecoderConfig::from_json(const nlohmann::json& object, const std::string& file,
                                              const std::string& prefix) {
  const detail::JsonFields f(object, file, prefix);
  DecoderConfig c;
  c.model_type = f.string("model_type", c.model_type);
  if (f.has_value("architectures")) {
    const auto& list = f.raw("architectures");
    if (!list.is_array()) throw f.bad("architectures", "must be a list of class names");
    for (const auto& e : list) {
      if (!e.is_string()) throw f.bad("architectures", "must be a list of class names");
      c.architectures.push_back(e.get<std::string>());
    }
  }
  c.vocab_size = f.positive("vocab_size", c.vocab_size);
  c.hidden_size = f.positive("hidden_size", c.hidden_size);
  c.intermediate_size = f.positive("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = f.positive("num_hidden_layers", c.num_hidden_layers);
  if (c.num_hidden_layers > kMaxConfigLayers) {
    throw f.error("num_hidden_layers", detail::concat("is ", c.num_hidden_layers, ", above tessera's limit of ",
                                                      kMaxConfigLayers, " layers (a corrupt config?)"));
  }
  c.num_attention_heads = f.positive("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = f.has_value("num_key_value_heads") || !f.has("num_key_value_heads")
                              ? f.positive("num_key_value_heads", c.num_key_value_heads)
                              : c.num_attention_heads;  // null: "for backward compatibility"
  if (f.has_value("head_dim")) c.head_dim_override = f.positive("head_dim", 0);
  c.hidden_act = f.string("hidden_act", c.hidden_act);
  c.max_position_embeddings = f.positive("max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = f.number("rms_norm_eps", c.rms_norm_eps);
  if (!(c.rms_norm_eps > 0.0) || !std::isfinite(c.rms_norm_eps)) {
    throw f.error("rms_norm_eps", detail::concat("must be a positive number, but it is ", c.rms_norm_eps));
  }
  const double theta = f.number("rope_theta", c.rope.theta);
  // v5 writes rope_parameters (with rope_theta inside); v4 rope_scaling.
  c.rope = detail::read_rope(f, f.has_value("rope_parameters") ? "rope_parameters" : "rope_scaling", theta);
  if (!(c.rope.theta > 0.0) || !std::isfinite(c.rope.theta)) {
    throw f.error("rope_theta", detail::concat("must be a positive number, but it is ", c.rope.theta));
  }
  // Phi-3 writes original_max_position_embeddings at the top level.
  if (!c.rope.original_max_position_embeddings && f.has_value("original_max_position_embeddings")) {
    c.rope.original_max_position_embeddings = f.positive("original_max_position_embeddings", 0);
  }
  for (const char* key : {"attention_bias", "bias"}) {
    if (!c.attention_bias && f.has_value(key)) c.attention_bias = f.boolean(key, false);
  }
  c.mlp_bias = f.boolean("mlp_bias", false);
  c.partial_rotary_factor = f.number("partial_rotary_factor", 1.0);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", c.tie_word_embeddings);
  c.torch_dtype = f.optional_string(f.has("torch_dtype") ? "torch_dtype" : "dtype");
  c.bos_token_id = f.optional_token_id("bos_token_id");
  c.eos_token_ids = f.id_list("eos_token_id");
  c.pad_token_id = f.optional_token_id("pad_token_id");
  c.use_sliding_window = f.boolean("use_sliding_window", c.use_sliding_window);
  if (f.has("sliding_window")) {
    c.sliding_window_written = true;
    c.sliding_window = f.optional_integer("sliding_window");
    if (c.sliding_window && *c.sliding_window <= 0) {
      throw f.error("sliding_window", detail::concat("must be a positive integer or null, but it is ",
                                                     *c.sliding_window));
    }
  }
  c.max_window_layers = f.integer("max_window_layers", c.max_window_layers);
  if (c.max_window_layers < 0) {
    throw f.error("max_window_layers", detail::concat("must be >= 0, but it is ", c.max_window_layers));
  }
  // attention_dropout, initializer_range, use_cache: training-only, ignored.
  detail::check_decoder_shapes(f, c);
  c.layer_types = detail::read_layer_types(f, c);
  return c;
}

// ---- generation_config.json ------------------------------------------------------

// Decoding defaults shipped with a checkpoint (transformers'
// GenerationConfig; only the fields tessera's generation loop uses).
struct GenerationConfig {
  bool do_sample = false;
  double temperature = 1.0;
  std::int64_t top_k = 50;  // 0: no top-k filtering (a null top_k)
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  std::optional<std::int64_t> max_new_tokens;  // absent: max_length bounds prompt + output
  std::int64_t max_length = 20;
  std::vector<std::int64_t> eos_token_ids;  // eos_token_id: an int or a list
  std::optional<std::int64_t> bos_token_id;
  std::optional<std::int64_t> pad_token_id;

  static GenerationConfig from_json(const nlohmann::json& object, const std::string& file);
  static GenerationConfig parse(std::string_view text, const std::string& file = "generation_config.json") {
    return from_json(detail::parse_json_text(text, file), file);
  }
  // Reads `path`: a generation_config.json file or a directory holding one.
  static GenerationConfig load(const std::filesystem::path& path) {
    const auto file = detail::json_file_in(path, "generation_config.json");
    return parse(detail::read_text_file(file, "generation config"), file.string());
  }
  // What transformers uses when a checkpoint has no generation_config.json:
  // the defaults, with the model config's special token ids.
  static GenerationConfig from_model_config(const DecoderConfig& model) {
    GenerationConfig g;
    g.eos_token_ids = model.eos_token_ids;
    g.bos_token_id = model.bos_token_id;
    g.pad_token_id = model.pad_token_id;
    return g;
  }
  // generation_config.json from `dir` if it exists, from_model_config otherwise.
  static GenerationConfig load_or_default(const std::filesystem::path& dir, const DecoderConfig& model) {
    std::error_code ec;
    if (std::filesystem::exists(dir / "generation_config.json", ec)) return load(dir / "generation_config.json");
    return from_model_config(model);
  }
};

inline GenerationConfig GenerationConfig::from_json(const nlohmann::json& object, const std::string& file) {
  const detail::JsonFields f(object, file);
  GenerationConfig g;
  // A null sampling knob is Python's None: that processor is not applied,
  // which is the neutral value (and no top-k at all).
  const auto knob = [&](std::string_view key, double fallback, double neutral) {
    return f.has(key) && !f.has_value(key) ? neutral : f.number(key, fallback);
  };
  g.do_sample = f.has_value("do_sample") ? f.boolean("do_sample", false) : false;
  g.temperature = knob("temperature", g.temperature, 1.0);
  if (!std::isfinite(g.temperature) || g.temperature < 0.0 || (g.do_sample && g.temperature == 0.0)) {
    throw f.error("temperature", detail::concat("must be a positive number", g.do_sample ? "" : " (or 0)",
                                                ", but it is ", g.temperature,
                                                g.do_sample ? " (for greedy decoding set do_sample to false)" : ""));
  }
  g.top_k = f.has("top_k") && !f.has_value("top_k") ? 0 : f.integer("top_k", g.top_k);
  if (g.top_k < 0) throw f.error("top_k", detail::concat("must be >= 0 (0 disables it), but it is ", g.top_k));
  g.top_p = knob("top_p", g.top_p, 1.0);
  if (!(g.top_p > 0.0 && g.top_p <= 1.0)) {
    throw f.error("top_p", detail::concat("must be in (0, 1], but it is ", g.top_p));
  }
  g.repetition_penalty = knob("repetition_penalty", g.repetition_penalty, 1.0);
  if (!std::isfinite(g.repetition_penalty) || !(g.repetition_penalty > 0.0)) {
    throw f.error("repetition_penalty",
                  detail::concat("must be a positive number (1.0: no penalty), but it is ", g.repetition_penalty));
  }
  g.max_new_tokens = f.optional_integer("max_new_tokens");
  if (g.max_new_tokens && *g.max_new_tokens <= 0) {
    throw f.error("max_new_tokens", detail::concat("must be a positive integer, but it is ", *g.max_new_tokens));
  }
  if (f.has_value("max_length")) g.max_length = f.positive("max_length", g.max_length);
  g.eos_token_ids = f.id_list("eos_token_id");
  g.bos_token_id = f.optional_token_id("bos_token_id");
  g.pad_token_id = f.optional_token_id("pad_token_id");
  return g;
}

}  // namespace tessera::io
