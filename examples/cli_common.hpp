// cli_common.hpp — what the example programs (text_generate, qwen2_5_vl)
// share: the command line (a small flag parser, numbers parsed with clear
// errors, the common input/decoding/running flags and their checks), the
// sampling flags turned into generate::SamplingOptions, --logits-out as a
// NumPy .npy file, streaming the generated text (or ids) to stdout, the
// summary and memory report on stderr, and the exit codes. The driver that
// composes them is model_main.hpp.
//
// The conventions every example follows: stdout carries only the generated
// text (one flush per decoded chunk, then a final newline), or with --ids
// the generated ids; everything else goes to stderr. Exit codes: 0 success,
// 2 bad input (a flag, a number, a path, an id, a file tessera cannot read,
// a placement that cannot work), with a message naming the flag or file,
// and 1 for any other failure.
#pragma once

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <tessera/generate/generate.hpp>
#include <tessera/io/config.hpp>
#include <tessera/io/image.hpp>
#include <tessera/ops/elementwise.hpp>
#include <tessera/tessera.hpp>
#include <tessera/tokenizer/auto.hpp>

namespace tessera::cli {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Bad input: reported with the usage hint and exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The message of a tessera error without its "tessera: " prefix, for
// messages that lead with the flag or file instead.
inline std::string_view reason(const Error& e) {
  const std::string_view what = e.what();
  constexpr std::string_view prefix = "tessera: ";
  return what.starts_with(prefix) ? what.substr(prefix.size()) : what;
}

// ---- numbers ------------------------------------------------------------------

template <class Int>
Int parse_integer(std::string_view flag, std::string_view text) {
  Int value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec == std::errc::result_out_of_range) {
    throw UsageError(detail::concat(flag, ": '", text, "' is out of range"));
  }
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    throw UsageError(detail::concat(flag, ": '", text, "' is not ",
                                    std::is_unsigned_v<Int> ? "a non-negative integer" : "an integer"));
  }
  return value;
}

inline std::int64_t parse_positive(std::string_view flag, std::string_view text) {
  const auto value = parse_integer<std::int64_t>(flag, text);
  if (value <= 0) throw UsageError(detail::concat(flag, ": must be a positive integer, got ", value));
  return value;
}

inline double parse_number(std::string_view flag, std::string_view text) {
  double value = 0.0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || !std::isfinite(value)) {
    throw UsageError(detail::concat(flag, ": '", text, "' is not a finite number"));
  }
  return value;
}

inline float parse_float(std::string_view flag, std::string_view text) {
  return static_cast<float>(parse_number(flag, text));
}

// "1 2 3" or "1,2,3" -> ids (range-checked against the vocabulary later);
// `flag` names the flag they came from in errors.
inline std::vector<std::int64_t> parse_ids(std::string_view text, std::string_view flag = "--input-ids") {
  std::vector<std::int64_t> ids;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto is_sep = [](char c) { return c == ' ' || c == ',' || c == '\t' || c == '\n'; };
    if (is_sep(text[pos])) {
      ++pos;
      continue;
    }
    std::size_t end = pos;
    while (end < text.size() && !is_sep(text[end])) ++end;
    const auto id = parse_integer<std::int64_t>(flag, text.substr(pos, end - pos));
    if (id < 0) throw UsageError(detail::concat(flag, ": token id ", id, " is negative"));
    ids.push_back(id);
    pos = end;
  }
  if (ids.empty()) throw UsageError(detail::concat(flag, ": no token ids given"));
  return ids;
}

// ---- the command line -----------------------------------------------------------

// Flags of three kinds: switches (--greedy), flags with one value
// (--top-k 20 or --top-k=20) and flags with a list of values (--video-frames
// a.png b.png: every argument up to the next one starting with --). A value
// that itself starts with -- needs the --flag=value spelling.
class FlagParser {
 public:
  void add_switch(std::string name, std::function<void()> apply) {
    flags_[std::move(name)] = {Kind::kSwitch, [apply = std::move(apply)](std::vector<std::string>) { apply(); }};
  }
  void add_value(std::string name, std::function<void(const std::string&)> apply) {
    flags_[std::move(name)] = {Kind::kValue,
                               [apply = std::move(apply)](std::vector<std::string> v) { apply(v.front()); }};
  }
  // `apply` gets the values in order; it decides what an empty list means.
  void add_list(std::string name, std::function<void(std::vector<std::string>)> apply) {
    flags_[std::move(name)] = {Kind::kList, std::move(apply)};
  }

  void parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      std::optional<std::string> inline_value;  // --flag=value
      if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string::npos) {
        inline_value = arg.substr(eq + 1);
        arg.resize(eq);
      }
      const auto flag = flags_.find(arg);
      if (flag == flags_.end()) {
        if (!arg.starts_with("-")) {
          throw UsageError(detail::concat("unexpected argument '", arg, "' (flags start with --)"));
        }
        throw UsageError(detail::concat("unknown flag '", arg, "'"));
      }
      const auto [kind, apply] = flag->second;
      std::vector<std::string> values;
      if (inline_value) values.push_back(std::move(*inline_value));
      const auto next_is_value = [&] { return i + 1 < argc && !std::string_view(argv[i + 1]).starts_with("--"); };
      switch (kind) {
        case Kind::kSwitch:
          if (!values.empty()) throw UsageError(detail::concat(arg, " takes no value"));
          break;
        case Kind::kValue:
          if (values.empty()) {
            if (!next_is_value()) throw UsageError(detail::concat("missing value for ", arg));
            values.emplace_back(argv[++i]);
          }
          break;
        case Kind::kList:
          while (next_is_value()) values.emplace_back(argv[++i]);
          break;
      }
      apply(std::move(values));
    }
  }

 private:
  enum class Kind { kSwitch, kValue, kList };
  struct Flag {
    Kind kind;
    std::function<void(std::vector<std::string>)> apply;
  };
  std::map<std::string, Flag, std::less<>> flags_;
};

// The flags every example has: the checkpoint, the prompt, decoding and running.
struct CommonOptions {
  fs::path model;
  std::optional<std::string> prompt;
  std::optional<std::string> input_ids;
  std::optional<std::string> ids;  // --ids: ids in, ids out, no tokenizer
  bool raw = false, greedy = false, sample = false, print_ids = false, help = false;
  std::optional<std::int64_t> max_new_tokens, top_k, max_context;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<std::uint64_t> seed;
  std::string device = "cpu";
  std::optional<fs::path> logits_out;
};

inline void add_common_flags(FlagParser& p, CommonOptions& o) {
  p.add_value("--model", [&o](const std::string& v) { o.model = v; });
  p.add_value("--prompt", [&o](const std::string& v) { o.prompt = v; });
  p.add_value("--input-ids", [&o](const std::string& v) { o.input_ids = v; });
  p.add_value("--ids", [&o](const std::string& v) { o.ids = v; });
  p.add_value("--max-new-tokens",
              [&o](const std::string& v) { o.max_new_tokens = parse_positive("--max-new-tokens", v); });
  p.add_value("--temperature", [&o](const std::string& v) { o.temperature = parse_float("--temperature", v); });
  p.add_value("--top-k", [&o](const std::string& v) { o.top_k = parse_integer<std::int64_t>("--top-k", v); });
  p.add_value("--top-p", [&o](const std::string& v) { o.top_p = parse_float("--top-p", v); });
  p.add_value("--repetition-penalty",
              [&o](const std::string& v) { o.repetition_penalty = parse_float("--repetition-penalty", v); });
  p.add_value("--seed", [&o](const std::string& v) { o.seed = parse_integer<std::uint64_t>("--seed", v); });
  p.add_value("--max-context", [&o](const std::string& v) { o.max_context = parse_positive("--max-context", v); });
  p.add_value("--device", [&o](const std::string& v) { o.device = v; });
  p.add_value("--logits-out", [&o](const std::string& v) { o.logits_out = v; });
  p.add_switch("--raw", [&o] { o.raw = true; });
  p.add_switch("--greedy", [&o] { o.greedy = true; });
  p.add_switch("--sample", [&o] { o.sample = true; });
  p.add_switch("--print-ids", [&o] { o.print_ids = true; });
  p.add_switch("--help", [&o] { o.help = true; });
  p.add_switch("-h", [&o] { o.help = true; });
}

// Ranges and combinations that do not depend on the checkpoint.
// `prompt_required`: false for --plan-only, which loads nothing and runs nothing.
inline void check_common_options(const CommonOptions& o, bool prompt_required = true) {
  if (o.model.empty()) throw UsageError("--model DIR is required");
  const int inputs = int{o.prompt.has_value()} + int{o.input_ids.has_value()} + int{o.ids.has_value()};
  if (inputs > 1 || (prompt_required && inputs == 0)) {
    throw UsageError("give exactly one of --prompt TEXT, --input-ids \"ID ID ...\" and --ids ID,ID,...");
  }
  if (o.raw && !o.prompt) throw UsageError("--raw applies to --prompt only");
  if (o.greedy && o.sample) throw UsageError("--greedy and --sample contradict each other");
  if (o.temperature && !(*o.temperature > 0.0f)) {
    throw UsageError(detail::concat("--temperature: must be > 0, got ", *o.temperature, " (use --greedy for argmax)"));
  }
  if (o.top_k && *o.top_k < 0) throw UsageError(detail::concat("--top-k: must be >= 0, got ", *o.top_k));
  if (o.top_p && !(*o.top_p > 0.0f && *o.top_p <= 1.0f)) {
    throw UsageError(detail::concat("--top-p: must be in (0, 1], got ", *o.top_p));
  }
  if (o.repetition_penalty && !(*o.repetition_penalty > 0.0f)) {
    throw UsageError(detail::concat("--repetition-penalty: must be > 0, got ", *o.repetition_penalty));
  }
  if (o.device != "cpu" && o.device != "cuda") {
    throw UsageError(detail::concat("--device: '", o.device, "' is not a device; use cpu or cuda"));
  }
}

// The --help text of the common decoding and running flags.
inline constexpr const char* kDecodingHelp = R"(decoding (defaults: the checkpoint's generation_config.json):
  --max-new-tokens N        at most N new tokens (default 32 unless the config sets it)
  --greedy                  do_sample = false: argmax (the repetition penalty still
                            applies, as in transformers; add --repetition-penalty 1)
  --sample                  do_sample = true
  --temperature T           > 0, when sampling
  --top-k K                 0 disables
  --top-p P                 in (0, 1]; 1 disables
  --repetition-penalty R    > 0; 1 disables
  --seed S                  the sampler's seed (unsigned 64-bit)
  --max-context N           prompt + new tokens never exceed N
                            (default: config.json's max_position_embeddings)
)";

inline constexpr const char* kRunningHelp = R"(running:
  --device cpu|cuda         cpu: float32 on Cpu<0> (default); cuda: bf16 on Cuda<0>
                            (needs a build with the CUDA backend); the same as
                            --placement cpu|cuda
  --logits-out FILE.npy     write the float32 logits of every prompt position,
                            shape [positions, vocab], as a NumPy .npy file
  --print-ids               print the prompt and generated ids on stderr
  --help                    this text
)";

// ---- the checkpoint and the prompt ----------------------------------------------

// `tokenizer`: whether the run reads a tokenizer (tokenizer.json or
// tokenizer.model; not with --ids).
inline void check_model_dir(const fs::path& dir, bool tokenizer = true) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw UsageError(detail::concat("--model: '", dir.string(), "' is not a directory"));
  }
  if (!fs::exists(dir / "config.json", ec)) {
    throw UsageError(detail::concat("--model: '", dir.string(),
                                    "' has no config.json (expected a Hugging Face checkpoint directory)"));
  }
  if (tokenizer && !fs::exists(dir / "tokenizer.json", ec) && !fs::exists(dir / "tokenizer.model", ec)) {
    throw UsageError(detail::concat("--model: '", dir.string(), "' has neither tokenizer.json nor tokenizer.model ",
                                    "(give the prompt as --ids to run without a tokenizer)"));
  }
}

inline void check_output_path(const fs::path& file) {
  std::error_code ec;
  const fs::path parent = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  if (!fs::is_directory(parent, ec)) {
    throw UsageError(detail::concat("--logits-out: directory '", parent.string(), "' does not exist"));
  }
}

// The ids of `text` (special tokens such as <|im_start|> included).
inline std::vector<std::int64_t> encode_prompt(const tokenizer::AnyTokenizer& tok, const std::string& text) {
  std::vector<std::int64_t> ids;
  try {
    for (const tokenizer::TokenId id : tok.encode(text)) ids.push_back(id);
  } catch (const ValueError& e) {  // not UTF-8
    throw UsageError(detail::concat("--prompt: ", reason(e)));
  }
  if (ids.empty()) throw UsageError("--prompt: the text has no tokens");
  return ids;
}

// Decodes an image file named by `flag` (--image, --video-frames); every
// failure is bad input naming both. `alpha`: what the family's reference
// does with transparency (transformers' processors composite on white;
// InternVL's and MiniCPM-V's Image.convert("RGB") drops it).
inline io::RgbImage load_image_file(std::string_view flag, const fs::path& file,
                                    io::AlphaMode alpha = io::AlphaMode::composite_on_white) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) {
    throw UsageError(detail::concat(flag, ": '", file.string(), "' ",
                                    fs::exists(file, ec) ? "is not a file" : "does not exist"));
  }
  try {
    return io::load_rgb_image(file, alpha);
  } catch (const Error& e) {  // IoError, FormatError: unreadable or undecodable
    throw UsageError(detail::concat(flag, ": ", reason(e)));
  }
}

// `flag`: where the ids came from, for the message.
inline void check_ids(std::span<const std::int64_t> ids, std::int64_t vocab_size,
                      std::string_view flag = "--input-ids") {
  for (const std::int64_t id : ids) {
    if (id >= vocab_size) {
      throw UsageError(detail::concat(flag, ": token id ", id, " is outside the vocabulary (the model has ",
                                      vocab_size, " ids: 0 .. ", vocab_size - 1, ")"));
    }
  }
}

// The checkpoint's generation_config.json (or transformers' defaults), then
// the flags, then the context limit.
inline generate::SamplingOptions sampling_options(const CommonOptions& o, const io::GenerationConfig& config,
                                                  std::int64_t prompt_length, std::int64_t max_context) {
  auto s = generate::SamplingOptions::from(config);
  if (o.greedy) s.do_sample = false;
  if (o.sample) s.do_sample = true;
  if (o.temperature) s.temperature = *o.temperature;
  if (o.top_k) s.top_k = *o.top_k;
  if (o.top_p) s.top_p = *o.top_p;
  if (o.repetition_penalty) s.repetition_penalty = *o.repetition_penalty;
  if (o.seed) s.seed = *o.seed;
  if (o.max_new_tokens) s.max_new_tokens = *o.max_new_tokens;
  if (s.do_sample && !(s.temperature > 0.0f)) {
    throw UsageError("sampling needs a temperature > 0 (generation_config.json has 0): pass --temperature or --greedy");
  }
  if (prompt_length >= max_context) {
    throw UsageError(detail::concat("the prompt has ", prompt_length, " tokens, which leaves no room in a context of ",
                                    max_context, " (--max-context or max_position_embeddings)"));
  }
  if (prompt_length + s.max_new_tokens > max_context) {
    s.max_new_tokens = max_context - prompt_length;
    std::cerr << "note: at most " << s.max_new_tokens << " new tokens fit the context of " << max_context << "\n";
  }
  return s;
}

// ---- --logits-out: a NumPy .npy v1.0 file -------------------------------------

// Header: magic, version 1.0, a little-endian uint16 length, then a Python
// dict literal padded with spaces and a newline so the data starts at a
// multiple of 64 bytes (what numpy itself writes).
inline void write_npy(const fs::path& path, std::span<const float> data, std::int64_t rows, std::int64_t cols) {
  const char* descr = std::endian::native == std::endian::little ? "<f4" : ">f4";
  std::string dict = detail::concat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", rows, ", ", cols,
                                    "), }");
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  const auto header_len = static_cast<std::uint16_t>(dict.size());

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(detail::concat("--logits-out: cannot create '", path.string(), "'"));
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {static_cast<char>(header_len & 0xFF), static_cast<char>(header_len >> 8)};
  out.write(len, 2);
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size_bytes()));
  if (!out.flush()) throw IoError(detail::concat("--logits-out: writing '", path.string(), "' failed"));
}

// One extra prefill over the prompt (generate() keeps its logits to itself),
// in the model's precision, converted to float32 on the device. `prompt` is
// what model.forward takes for a prefill (ids, or ids with images), of
// `positions` tokens. Float logits on the host are written as they are, so
// the run never holds more than the plan's prefill does.
template <class Model, class Prompt>
void write_prompt_logits(const Model& model, const Prompt& prompt, std::int64_t positions, const fs::path& path) {
  auto cache = model.new_cache(positions);
  const auto logits = model.forward(prompt, cache);
  using L = std::remove_cvref_t<decltype(logits)>;
  const auto write = [&](const Tensor<Host, float>& host) {
    write_npy(path, host.span(), host.dim(0), host.dim(1));
  };
  if constexpr (std::same_as<device_of<L>, Host> && std::same_as<element_of<L>, float>) {
    write(logits);
  } else {
    write(to<Host>(ops::cast<float>(logits)));
  }
  std::cerr << "logits of " << logits.dim(0) << " prompt positions written to " << path.string() << "\n";
}

// ---- streaming and the summary --------------------------------------------------

// Decodes ids as they come and writes each complete piece of UTF-8 to stdout
// at once (without a tokenizer, --ids: each id, space-separated); records
// when the first token arrived.
class TextStream {
 public:
  explicit TextStream(const tokenizer::AnyTokenizer* tok) : tok_(tok) {
    if (tok != nullptr) decoder_.emplace(tok->stream_decoder(true));
  }

  void on_token(std::int64_t id) {
    const bool first = !first_;
    if (first) first_ = Clock::now();
    if (!decoder_) {
      write(detail::concat(first ? "" : " ", id));
      return;
    }
    // Ids the model has but the tokenizer lacks (padding rows of the
    // embedding) have no text.
    if (id < 0 || static_cast<std::size_t>(id) >= tok_->vocab_size()) return;
    write(decoder_->step(static_cast<tokenizer::TokenId>(id)));
  }
  void finish() { write((decoder_ ? decoder_->finish() : std::string()) + "\n"); }

  std::optional<Clock::time_point> first_token_at() const noexcept { return first_; }

 private:
  static void write(const std::string& text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
  const tokenizer::AnyTokenizer* tok_;
  std::optional<tokenizer::AnyStreamDecoder> decoder_;
  std::optional<Clock::time_point> first_;
};

inline double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

inline void print_ids(const char* what, std::span<const std::int64_t> ids) {
  std::cerr << what << ":";
  for (const std::int64_t id : ids) std::cerr << ' ' << id;
  std::cerr << "\n";
}

struct RunStats {
  std::int64_t prompt_tokens = 0, generated_tokens = 0, max_new_tokens = 0;
  bool stopped_at_eos = false;
  double load_s = 0, total_s = 0;
  std::optional<double> first_token_s;
};

// generate::generate over `prompt` (ids, or ids with images) with the text
// (the ids when `tok` is null) streamed to stdout; fills what it measured
// into `stats` and prints the generated ids when asked.
template <class Model, class Prompt>
void generate_streamed(const Model& model, const Prompt& prompt, const generate::SamplingOptions& options,
                       const tokenizer::AnyTokenizer* tok, bool print_generated_ids, RunStats& stats) {
  TextStream stream(tok);
  const auto start = Clock::now();
  const std::vector<std::int64_t> generated =
      generate::generate(model, prompt, options, [&](std::int64_t id) { stream.on_token(id); });
  stats.total_s = seconds(Clock::now() - start);
  stream.finish();

  stats.max_new_tokens = options.max_new_tokens;
  stats.generated_tokens = static_cast<std::int64_t>(generated.size());
  stats.stopped_at_eos = !generated.empty() && std::ranges::find(options.eos_token_ids, generated.back()) !=
                                                   options.eos_token_ids.end();
  if (const auto first = stream.first_token_at()) stats.first_token_s = seconds(*first - start);
  if (print_generated_ids) print_ids("generated ids", generated);
}

// The run's numbers, then the memory ledger, on stderr.
inline void print_summary(std::string_view program, const RunStats& s, const std::string& device) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "-- " << program << " on " << device << "\n"
     << "prompt tokens     " << s.prompt_tokens << "\n"
     << "generated tokens  " << s.generated_tokens << " (stopped at "
     << (s.stopped_at_eos ? "an eos token" : detail::concat("max_new_tokens = ", s.max_new_tokens)) << ")\n"
     << "load              " << s.load_s << " s\n";
  if (s.first_token_s) {
    os << "prefill           " << *s.first_token_s << " s (time to the first token)\n";
    if (s.generated_tokens > 1 && s.total_s > *s.first_token_s) {
      os.precision(1);
      os << "decode            " << static_cast<double>(s.generated_tokens - 1) / (s.total_s - *s.first_token_s)
         << " tokens/s\n";
    }
  }
  os.precision(1);
  os << "overall           " << (s.total_s > 0 ? static_cast<double>(s.generated_tokens) / s.total_s : 0.0);
  os.precision(3);
  os << " tokens/s (" << s.generated_tokens << " tokens in " << s.total_s << " s, prefill included)\n";
  std::cerr << os.str();
  print_memory_report(std::cerr);
}

// ---- main() ------------------------------------------------------------------

// Runs body() and turns what it throws into a message on stderr and the
// exit code: 2 for bad input (UsageError, a placement that does not fit
// or cannot work, and a checkpoint, config, tokenizer or image file
// tessera cannot read or open), 1 otherwise.
template <class Body>
int main_guard(std::string_view program, Body&& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::cerr << program << ": error: " << e.what() << "\n(run " << program << " --help for the flags)\n";
    return 2;
  } catch (const FormatError& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 2;
  } catch (const PlanError& e) {  // a placement that cannot work: nothing was loaded
    std::cerr << program << ": error: " << e.what() << "\n";
    return 2;
  } catch (const IoError& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << program << ": failed: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace tessera::cli
