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
// Run with --help for the flags. The command line, the streaming and the
// report are shared with the other examples: cli_common.hpp.
#include <cstdint>
#include <string>
#include <vector>

#include "cli_common.hpp"
#include <tessera/models/qwen2.hpp>

namespace {
using namespace tessera;
using namespace tessera::cli;

constexpr const char* kUsageInput = R"(usage: text_generate --model DIR (--prompt TEXT | --input-ids "ID ID ...") [options]

Runs a Qwen2 / Qwen2.5 text checkpoint and streams the generated text to stdout.

input (exactly one):
  --prompt TEXT             a user message, wrapped in the Qwen2 chat template
                            (default system prompt, generation prompt added)
  --raw                     with --prompt: tokenize TEXT as it is, no template
  --input-ids "1 2 3"       the prompt as token ids (spaces or commas between)

)";

CommonOptions parse_args(int argc, char** argv) {
  CommonOptions o;
  FlagParser parser;
  add_common_flags(parser, o);
  parser.parse(argc, argv);
  if (!o.help) check_common_options(o);
  return o;
}

std::vector<std::int64_t> prompt_ids(const CommonOptions& o, const tokenizer::Tokenizer& tok) {
  if (o.input_ids) return parse_ids(*o.input_ids);
  return encode_prompt(tok, o.raw ? *o.prompt
                                  : generate::apply_chat_template(
                                        std::vector<generate::ChatMessage>{{"user", *o.prompt}}, true));
}

template <Device D, FloatType T>
int run_on(const CommonOptions& o, const std::string& device_label) {
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
  RunStats stats;
  stats.prompt_tokens = prompt_tokens;
  stats.load_s = seconds(Clock::now() - load_start);
  const std::span<const std::int64_t> prompt(ids);
  if (o.logits_out) write_prompt_logits(model, prompt, prompt_tokens, *o.logits_out);
  generate_streamed(model, prompt, options, tok, o.print_ids, stats);
  print_summary("text_generate", stats, device_label);
  return 0;
}

int run(const CommonOptions& o) {
  check_model_dir(o.model);
  if (o.logits_out) check_output_path(*o.logits_out);
  return run_on_device(o.device,
                       [&]<Device D, FloatType T>(const std::string& label) { return run_on<D, T>(o, label); });
}

}  // namespace

int main(int argc, char** argv) {
  return main_guard("text_generate", [&] {
    const CommonOptions options = parse_args(argc, argv);
    if (options.help) {
      std::cout << kUsageInput << kDecodingHelp << "\n" << kRunningHelp;
      return 0;
    }
    return run(options);
  });
}
