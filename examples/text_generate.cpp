// text_generate: run a decoder-only language model checkpoint (a Hugging
// Face directory with config.json, the safetensors weights, tokenizer.json
// or tokenizer.model unless the prompt is given with --ids, and optionally
// generation_config.json) under any placement, and stream what it generates.
// The family (Qwen2 / Qwen2.5, Llama, Phi-3, InternLM2) comes from config.json.
//
//   text_generate --model DIR --prompt "Why is the sky blue?"
//   text_generate --model DIR --input-ids "311 967 768 909" --greedy --logits-out logits.npy
//   text_generate --model DIR --ids 1,2,3 --placement tp:cpu0,cpu1,cpu2,cpu3
//
// The generated text (with --ids: the generated ids) goes to stdout as it is
// produced; everything else (the input, the plan, the summary, the memory
// report, --print-ids, errors) goes to stderr. Exit codes: 0 success, 2 bad
// input (flags, numbers, paths, ids, a placement that cannot work), 1 any
// other failure. Run with --help for the flags. The driver is model_main.hpp.
#include "text_generate.hpp"

#include <span>
#include <string>
#include <vector>

#include <tessera/generate/chat.hpp>
#include <tessera/models/decoder_description.hpp>
#include <tessera/placement/planner.hpp>

namespace tessera::cli {

std::string_view TextGenerate::usage() {
  return R"(usage: text_generate --model DIR (--prompt TEXT | --input-ids "ID ID ..." | --ids ID,ID,...) [options]

Runs a decoder-only language model (Qwen2 / Qwen2.5, Llama, Phi-3 or InternLM2: config.json
says which) under any placement and streams the generated text to stdout.

input (exactly one):
  --prompt TEXT             a user message in the chat template config.json selects
                            (its "template" key, as InternVL2 writes it; ChatML for
                            Qwen2), default system prompt and generation prompt
                            added; for checkpoints without one give the template's
                            text with --raw
  --raw                     with --prompt: tokenize TEXT as it is, no template
  --input-ids "1 2 3"       the prompt as token ids (spaces or commas between)
  --ids 1,2,3               the prompt as token ids, read without a tokenizer (the
                            checkpoint needs no tokenizer); the generated ids go
                            to stdout, space-separated, instead of text

)";
}

TextGenerate::Config TextGenerate::load_config(const fs::path& dir) {
  Config c{io::DecoderConfig::load(dir), {}};
  c.weights = models::weights_for(models::detect_family(c.text, (dir / "config.json").string()));
  return c;
}

placement::Plan TextGenerate::plan(const fs::path& dir, const Config& c, const placement::PlanRequest& r) {
  return placement::plan_model(models::describe_decoder(dir, kPrefix, c.weights.lm_head), r);
}

namespace {

// The chat template config.json selects (generate/chat.hpp: its "template"
// key, as InternVL2 writes it, else ChatML for the Qwen2 model types); a
// checkpoint with none tessera knows is bad input for --prompt, not a guess.
generate::ChatTemplate chat_template(const CommonOptions& c) {
  const fs::path file = c.model / "config.json";
  const auto json = io::detail::parse_json_text(io::detail::read_text_file(file, "config file"), file.string());
  try {
    return generate::template_for(json, file.string());
  } catch (const FormatError& e) {
    throw UsageError(detail::concat("--prompt: ", reason(e), "; give the template's text with --raw, or the ids "
                                    "with --input-ids / --ids"));
  }
}

std::string chat_text(generate::ChatTemplate t, const std::string& user) {
  const generate::ChatMessage message{"user", user};
  return generate::render(t, std::span<const generate::ChatMessage>(&message, 1), true);
}

}  // namespace

Inputs<TextGenerate::Prompt> TextGenerate::prepare(const CommonOptions& c, const Options&,
                                                   const tokenizer::AnyTokenizer* tok, const Config& config) {
  Inputs<Prompt> in;
  const io::DecoderConfig& t = config.text;
  in.lines.push_back(detail::concat("model     ", models::family_name(config.weights.family), ": ",
                                    t.num_hidden_layers, " layers, ", t.num_attention_heads, " heads, ",
                                    t.num_key_value_heads, " key-value heads, vocabulary ", t.vocab_size));
  std::string how = "chat template";  // for the header line
  if (auto ids = given_ids(c)) {
    in.prompt = std::move(*ids);
  } else if (c.raw) {
    in.prompt = encode_prompt(*tok, *c.prompt);
  } else {
    const generate::ChatTemplate chat = chat_template(c);  // config.json read once
    how = detail::concat(generate::template_name(chat), " chat template");
    in.prompt = encode_prompt(*tok, chat_text(chat, *c.prompt));
  }
  in.lines.push_back(detail::concat("prompt    ", prompt_source(c, how), ": ", in.prompt.size(), " tokens"));
  return in;
}

}  // namespace tessera::cli

int main(int argc, char** argv) { return tessera::cli::model_main<tessera::cli::TextGenerate>(argc, argv); }
