// text_generate: run a Qwen2 / Qwen2.5 text checkpoint (a Hugging Face
// directory with config.json, the safetensors weights, tokenizer.json and
// optionally generation_config.json) and stream what it generates.
//
//   text_generate --model DIR --prompt "Why is the sky blue?"
//   text_generate --model DIR --input-ids "311 967 768 909" --greedy --logits-out logits.npy
//
// The generated text goes to stdout as it is produced (one flush per
// decoded chunk, then a final newline); everything else (the summary, the
// memory report, --print-ids, errors) goes to stderr. Exit codes: 0 success,
// 2 bad input (flags, numbers, paths, ids), 1 any other failure.
// Run with --help for the flags.
#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <tessera/generate/generate.hpp>
#include <tessera/io/config.hpp>
#include <tessera/models/qwen2.hpp>
#include <tessera/ops/elementwise.hpp>
#include <tessera/tessera.hpp>
#include <tessera/tokenizer/bpe.hpp>

namespace {
using namespace tessera;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: text_generate --model DIR (--prompt TEXT | --input-ids "ID ID ...") [options]

Runs a Qwen2 / Qwen2.5 text checkpoint and streams the generated text to stdout.

input (exactly one):
  --prompt TEXT             a user message, wrapped in the Qwen2 chat template
                            (default system prompt, generation prompt added)
  --raw                     with --prompt: tokenize TEXT as it is, no template
  --input-ids "1 2 3"       the prompt as token ids (spaces or commas between)

decoding (defaults: the checkpoint's generation_config.json):
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

running:
  --device cpu|cuda         cpu: float32 on Cpu<0> (default); cuda: bf16 on Cuda<0>
                            (needs a build with the CUDA backend)
  --logits-out FILE.npy     write the float32 logits of every prompt position,
                            shape [positions, vocab], as a NumPy .npy file
  --print-ids               print the prompt and generated ids on stderr
  --help                    this text
)";

// Bad input: reported with the usage hint and exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  fs::path model;
  std::optional<std::string> prompt;
  std::optional<std::string> input_ids;
  bool raw = false, greedy = false, sample = false, print_ids = false, help = false;
  std::optional<std::int64_t> max_new_tokens, top_k, max_context;
  std::optional<float> temperature, top_p, repetition_penalty;
  std::optional<std::uint64_t> seed;
  std::string device = "cpu";
  std::optional<fs::path> logits_out;
};

// ---- parsing the command line ---------------------------------------------------

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

std::int64_t parse_positive(std::string_view flag, std::string_view text) {
  const auto value = parse_integer<std::int64_t>(flag, text);
  if (value <= 0) throw UsageError(detail::concat(flag, ": must be a positive integer, got ", value));
  return value;
}

float parse_float(std::string_view flag, std::string_view text) {
  double value = 0.0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty() || !std::isfinite(value)) {
    throw UsageError(detail::concat(flag, ": '", text, "' is not a finite number"));
  }
  return static_cast<float>(value);
}

// "1 2 3" or "1,2,3" -> ids (range-checked against the vocabulary later).
std::vector<std::int64_t> parse_ids(std::string_view text) {
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
    const auto id = parse_integer<std::int64_t>("--input-ids", text.substr(pos, end - pos));
    if (id < 0) throw UsageError(detail::concat("--input-ids: token id ", id, " is negative"));
    ids.push_back(id);
    pos = end;
  }
  if (ids.empty()) throw UsageError("--input-ids: no token ids given");
  return ids;
}

constexpr std::array<std::string_view, 12> kValueFlags = {
    "--model", "--prompt", "--input-ids", "--max-new-tokens", "--temperature", "--top-k",
    "--top-p", "--repetition-penalty", "--seed", "--max-context", "--device", "--logits-out"};

// Applies one "--flag value" (a flag of kValueFlags).
void apply_flag(Options& o, std::string_view flag, const std::string& value) {
  if (flag == "--model") o.model = value;
  else if (flag == "--prompt") o.prompt = value;
  else if (flag == "--input-ids") o.input_ids = value;
  else if (flag == "--max-new-tokens") o.max_new_tokens = parse_positive(flag, value);
  else if (flag == "--temperature") o.temperature = parse_float(flag, value);
  else if (flag == "--top-k") o.top_k = parse_integer<std::int64_t>(flag, value);
  else if (flag == "--top-p") o.top_p = parse_float(flag, value);
  else if (flag == "--repetition-penalty") o.repetition_penalty = parse_float(flag, value);
  else if (flag == "--seed") o.seed = parse_integer<std::uint64_t>(flag, value);
  else if (flag == "--max-context") o.max_context = parse_positive(flag, value);
  else if (flag == "--device") o.device = value;
  else if (flag == "--logits-out") o.logits_out = value;
}

bool apply_switch(Options& o, std::string_view flag) {
  if (flag == "--raw") o.raw = true;
  else if (flag == "--greedy") o.greedy = true;
  else if (flag == "--sample") o.sample = true;
  else if (flag == "--print-ids") o.print_ids = true;
  else if (flag == "--help" || flag == "-h") o.help = true;
  else return false;
  return true;
}

bool takes_value(std::string_view flag) { return std::ranges::find(kValueFlags, flag) != kValueFlags.end(); }

// Ranges and combinations that do not depend on the checkpoint.
void check_options(const Options& o) {
  if (o.model.empty()) throw UsageError("--model DIR is required");
  if (o.prompt.has_value() == o.input_ids.has_value()) {
    throw UsageError("give exactly one of --prompt TEXT and --input-ids \"ID ID ...\"");
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

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;  // --flag=value
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    if (!inline_value && apply_switch(o, arg)) continue;
    if (!takes_value(arg)) {
      Options probe;
      if (apply_switch(probe, arg)) throw UsageError(detail::concat(arg, " takes no value"));
      if (!arg.starts_with("-")) throw UsageError(detail::concat("unexpected argument '", arg, "' (flags start with --)"));
      throw UsageError(detail::concat("unknown flag '", arg, "'"));
    }
    if (!inline_value && (i + 1 >= argc || std::string_view(argv[i + 1]).starts_with("--"))) {
      throw UsageError(detail::concat("missing value for ", arg));
    }
    apply_flag(o, arg, inline_value ? *inline_value : std::string(argv[++i]));
  }
  if (!o.help) check_options(o);
  return o;
}

// ---- the checkpoint and the prompt ----------------------------------------------

void check_model_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw UsageError(detail::concat("--model: '", dir.string(), "' is not a directory"));
  }
  for (const char* file : {"config.json", "tokenizer.json"}) {
    if (!fs::exists(dir / file, ec)) {
      throw UsageError(detail::concat("--model: '", dir.string(), "' has no ", file,
                                      " (expected a Hugging Face checkpoint directory)"));
    }
  }
}

void check_output_path(const fs::path& file) {
  std::error_code ec;
  const fs::path parent = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  if (!fs::is_directory(parent, ec)) {
    throw UsageError(detail::concat("--logits-out: directory '", parent.string(), "' does not exist"));
  }
}

std::vector<std::int64_t> prompt_ids(const Options& o, const tokenizer::Tokenizer& tok) {
  if (o.input_ids) return parse_ids(*o.input_ids);
  const std::string text =
      o.raw ? *o.prompt
            : generate::apply_chat_template(std::vector<generate::ChatMessage>{{"user", *o.prompt}}, true);
  std::vector<std::int64_t> ids;
  try {
    for (const tokenizer::TokenId id : tok.encode(text)) ids.push_back(id);
  } catch (const ValueError& e) {  // not UTF-8
    throw UsageError(detail::concat("--prompt: ", e.what()));
  }
  if (ids.empty()) throw UsageError("--prompt: the text has no tokens");
  return ids;
}

void check_ids(std::span<const std::int64_t> ids, std::int64_t vocab_size) {
  for (const std::int64_t id : ids) {
    if (id >= vocab_size) {
      throw UsageError(detail::concat("--input-ids: token id ", id, " is outside the vocabulary (the model has ",
                                      vocab_size, " ids: 0 .. ", vocab_size - 1, ")"));
    }
  }
}

// The checkpoint's generation_config.json (or transformers' defaults), then
// the flags, then the context limit.
generate::SamplingOptions sampling_options(const Options& o, const io::GenerationConfig& config,
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
void write_npy(const fs::path& path, std::span<const float> data, std::int64_t rows, std::int64_t cols) {
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
// in the model's precision, converted to float32 on the device.
template <class Model>
void write_prompt_logits(const Model& model, std::span<const std::int64_t> ids, const fs::path& path) {
  auto cache = model.new_cache(static_cast<std::int64_t>(ids.size()));
  const auto logits = to<Host>(ops::cast<float>(model.forward(ids, cache)));
  write_npy(path, logits.span(), logits.dim(0), logits.dim(1));
  std::cerr << "logits of " << logits.dim(0) << " prompt positions written to " << path.string() << "\n";
}

// ---- streaming and the summary --------------------------------------------------

// Decodes ids as they come and writes each complete piece of UTF-8 to stdout
// at once; records when the first token arrived.
class TextStream {
 public:
  explicit TextStream(const tokenizer::Tokenizer& tok) : tok_(&tok), decoder_(tok.stream_decoder(true)) {}

  void on_token(std::int64_t id) {
    if (!first_) first_ = Clock::now();
    ++count_;
    // Ids the model has but the tokenizer lacks (padding rows of the
    // embedding) have no text.
    if (id < 0 || static_cast<std::size_t>(id) >= tok_->vocab_size()) return;
    write(decoder_.step(static_cast<tokenizer::TokenId>(id)));
  }
  void finish() { write(decoder_.finish() + "\n"); }

  std::int64_t count() const noexcept { return count_; }
  std::optional<Clock::time_point> first_token_at() const noexcept { return first_; }

 private:
  static void write(const std::string& text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
  const tokenizer::Tokenizer* tok_;
  tokenizer::StreamDecoder decoder_;
  std::int64_t count_ = 0;
  std::optional<Clock::time_point> first_;
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void print_ids(const char* what, std::span<const std::int64_t> ids) {
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

void print_summary(const RunStats& s, const std::string& device) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(3);
  os << "-- text_generate on " << device << "\n"
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

// ---- the run ------------------------------------------------------------------

template <Device D, FloatType T>
int run_on(const Options& o, const std::string& device_label) {
  const io::Qwen2Config config = io::Qwen2Config::load(o.model);
  const auto tok = tokenizer::Tokenizer::from_file(o.model / "tokenizer.json");
  const std::vector<std::int64_t> ids = prompt_ids(o, tok);
  check_ids(ids, config.vocab_size);
  const auto prompt_tokens = static_cast<std::int64_t>(ids.size());
  const auto options = sampling_options(o, io::GenerationConfig::load_or_default(o.model, config), prompt_tokens,
                                        o.max_context.value_or(config.max_position_embeddings));
  if (o.print_ids) print_ids("prompt ids", ids);

  const auto load_start = Clock::now();
  const auto model = models::Qwen2<Single<D>, T>::load(o.model);
  RunStats stats{prompt_tokens, 0, options.max_new_tokens, false, seconds(Clock::now() - load_start), 0, {}};
  if (o.logits_out) write_prompt_logits(model, ids, *o.logits_out);

  TextStream stream(tok);
  const auto start = Clock::now();
  const std::vector<std::int64_t> generated =
      generate::generate(model, ids, options, [&](std::int64_t id) { stream.on_token(id); });
  stats.total_s = seconds(Clock::now() - start);
  stream.finish();

  stats.generated_tokens = static_cast<std::int64_t>(generated.size());
  stats.stopped_at_eos = !generated.empty() && std::ranges::find(options.eos_token_ids, generated.back()) !=
                                                   options.eos_token_ids.end();
  if (const auto first = stream.first_token_at()) stats.first_token_s = seconds(*first - start);
  if (o.print_ids) print_ids("generated ids", generated);
  print_summary(stats, device_label);
  return 0;
}

int run(const Options& o) {
  check_model_dir(o.model);
  if (o.logits_out) check_output_path(*o.logits_out);
  if (o.device == "cpu") return run_on<Cpu<0>, float>(o, "Cpu<0>, float32");
#if defined(TESSERA_WITH_CUDA)
  return run_on<Cuda<0>, bf16>(o, "Cuda<0>, bf16");
#else
  throw UsageError("--device cuda: this build has no CUDA backend (configure with -DTESSERA_CUDA=ON on a machine "
                   "with nvcc), use --device cpu");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse_args(argc, argv);
    if (options.help) {
      std::cout << kUsage;
      return 0;
    }
    return run(options);
  } catch (const UsageError& e) {
    std::cerr << "text_generate: error: " << e.what() << "\n(run text_generate --help for the flags)\n";
    return 2;
  } catch (const FormatError& e) {  // a checkpoint, config or tokenizer file tessera cannot read
    std::cerr << "text_generate: error: " << e.what() << "\n";
    return 2;
  } catch (const IoError& e) {
    std::cerr << "text_generate: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "text_generate: failed: " << e.what() << "\n";
    return 1;
  }
}
