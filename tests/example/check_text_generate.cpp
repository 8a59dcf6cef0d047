// check_text_generate: checks one run of examples/text_generate against the
// transformers reference of a Qwen2 fixture (tests/fixtures/qwen2/<variant>,
// written by tools/fixtures/make_qwen2_fixtures.py):
//
//   check_text_generate --fixture DIR --prompt NAME --stdout FILE --stderr FILE [--logits FILE.npy]
//
//   * the "prompt ids:" and "generated ids:" lines text_generate --print-ids
//     wrote on stderr equal reference.json prompts.NAME.ids and
//     prompts.NAME.greedy.tokens;
//   * stdout is exactly prompts.NAME.greedy.text (the bytes transformers'
//     decode gives, U+FFFD included) followed by the final newline;
//   * the --logits-out file is a float32 NumPy .npy v1.0 array of shape
//     [positions, vocab] equal to reference.safetensors prompt.NAME.logits
//     within 1e-4 x max|reference logit| (the Qwen2 golden tests' tolerance).
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

void check_run(std::map<std::string, std::string>& args) {
  const fs::path fixture = args["--fixture"];
  const std::string prompt = args["--prompt"];
  const auto meta = nlohmann::json::parse(read_file(fixture / "reference.json"));
  const auto& p = meta.at("prompts").at(prompt);
  const std::string err = read_file(args["--stderr"]);
  check_ids(err, "prompt ids", p.at("ids").get<std::vector<std::int64_t>>());
  check_ids(err, "generated ids", p.at("greedy").at("tokens").get<std::vector<std::int64_t>>());
  check_text(read_file(args["--stdout"]), p.at("greedy").at("text").get<std::string>());
  if (args.contains("--logits")) {
    check_logits(args["--logits"], io::SafetensorsFile::open(fixture / "reference.safetensors"),
                 "prompt." + prompt + ".logits");
  }
}

}  // namespace

int main(int argc, char** argv) {
  return check::run_checker("check_text_generate", argc, argv, {"--fixture", "--prompt", "--stdout", "--stderr"},
                            "--fixture DIR --prompt NAME --stdout FILE --stderr FILE [--logits FILE.npy]", check_run);
}
