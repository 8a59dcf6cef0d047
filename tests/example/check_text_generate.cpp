// check_text_generate: checks one run of examples/text_generate against the
// transformers reference of a decoder fixture (tests/fixtures/qwen2/<variant>,
// written by tools/fixtures/make_qwen2_fixtures.py; tests/fixtures/{llama,
// llama_yi,phi3,internlm2,internlm2_wide}, by make_decoder_fixtures.py):
//
//   check_text_generate --fixture DIR --prompt NAME --stdout FILE --stderr FILE [--logits FILE.npy]
//
//   * the "prompt ids:" line text_generate --print-ids wrote on stderr
//     equals reference.json prompts.NAME.ids;
//   * the generated ids equal prompts.NAME.greedy.tokens: the
//     "generated ids:" line on stderr, and with --ids (no tokenizer) stdout
//     itself, the ids space-separated then a newline;
//   * otherwise stdout is exactly prompts.NAME.greedy.text (the bytes
//     transformers' decode gives, U+FFFD included) followed by the final
//     newline;
//   * the --logits-out file is a float32 NumPy .npy v1.0 array of shape
//     [positions, vocab] equal to reference.safetensors prompt.NAME.logits
//     within 1e-4 x max|reference logit| (the golden tests' tolerance); where
//     the reference kept only some positions (prompt.NAME.logits_positions),
//     those rows.
//
// Prints what it checked; exit 0 when all holds, 1 otherwise, 2 on bad usage.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "check_common.hpp"

namespace {
using namespace check;

// stdout of a --ids run: the generated ids, space-separated, then a newline.
std::vector<std::int64_t> stdout_ids(const std::string& out) {
  if (!out.ends_with("\n")) throw Failure("stdout does not end with a newline: '" + out + "'");
  return ids_line("stdout: " + out, "stdout");
}

void check_run(std::map<std::string, std::string>& args) {
  const fs::path fixture = args["--fixture"];
  const std::string prompt = args["--prompt"];
  const auto meta = nlohmann::json::parse(read_file(fixture / "reference.json"));
  const auto& p = meta.at("prompts").at(prompt);
  const std::string err = read_file(args["--stderr"]);
  const std::string out = read_file(args["--stdout"]);
  const auto tokens = p.at("greedy").at("tokens").get<std::vector<std::int64_t>>();
  check_ids(err, "prompt ids", p.at("ids").get<std::vector<std::int64_t>>());
  check_ids(err, "generated ids", tokens);
  if (err.find("\nprompt    --ids:") != std::string::npos) {
    const auto got = stdout_ids(out);
    if (got != tokens) throw Failure("stdout ids [" + join(got) + "], expected [" + join(tokens) + "]");
    std::cout << "ok: stdout holds the " << got.size() << " reference ids\n";
  } else {
    check_text(out, p.at("greedy").at("text").get<std::string>());
  }
  if (args.contains("--logits")) {
    const auto ref = io::SafetensorsFile::open(fixture / "reference.safetensors");
    const std::string positions = "prompt." + prompt + ".logits_positions";
    std::vector<std::int64_t> rows;  // empty: all
    if (ref.find(positions) != nullptr) {
      const auto kept = ref.load<Host, std::int64_t>(positions);
      rows.assign(kept.span().begin(), kept.span().end());
    }
    check_logits(args["--logits"], ref, "prompt." + prompt + ".logits", rows);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return check::run_checker(
      "check_text_generate", argc, argv, {"--fixture", "--prompt", "--stdout", "--stderr"},
      "--fixture DIR --prompt NAME --stdout FILE --stderr FILE [--logits FILE.npy]", check_run);
}
