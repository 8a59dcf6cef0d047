// check_internvl2: checks one run of examples/internvl2 against the InternVL2
// oracle (tests/fixtures/internvl2, written by
// tools/fixtures/make_internvl2_fixtures.py):
//
//   check_internvl2 --fixture DIR --model MODEL --case NAME --stdout FILE --stderr FILE [--logits FILE.npy]
//
//   * the "prompt ids:" line internvl2 --print-ids wrote on stderr equals
//     reference.safetensors MODEL.NAME.ids (the chat template rendered, every
//     "<image>" expanded to <img> <IMG_CONTEXT> x 256 per tile </img>);
//   * the "generated ids:" line is the start of MODEL.NAME.greedy, shorter
//     only when the run stopped at one of the template's stop tokens
//     (reference.json models.MODEL.stop_tokens), as chat() stops. The
//     reference generated without stopping and asserts that none of its 32
//     tokens is a stop token, so a correct run gives all 32: the reference's
//     tokens are the run's whether the example stops there or not;
//   * stdout is the streamed text of those tokens: models.MODEL.cases.NAME
//     .greedy_text (transformers' decode) plus the final newline;
//   * the --logits-out file is a float32 .npy [prompt positions, vocab] equal
//     to MODEL.NAME.logits within 1e-4 x max|reference logit|.
//
// Prints what it checked; exit 0 when all holds, 1 otherwise, 2 on bad usage.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "check_common.hpp"

namespace {
using namespace check;

// The generated ids against the reference's greedy tokens: equal, or a
// prefix ending at a stop token of the model's template.
void check_generated(const std::string& err, const std::vector<std::int64_t>& greedy,
                     const nlohmann::json& stop_tokens) {
  const auto got = ids_line(err, "generated ids");
  const bool prefix = got.size() <= greedy.size() && std::equal(got.begin(), got.end(), greedy.begin());
  if (!prefix) {
    throw Failure("generated ids: got [" + join(got) + "], expected the reference's greedy tokens [" + join(greedy) +
                  "] (or their start up to a stop token)");
  }
  if (got.size() < greedy.size()) {
    bool stopped = false;
    for (const auto& [token, id] : stop_tokens.items()) {
      stopped = stopped || (!got.empty() && got.back() == id.get<std::int64_t>());
    }
    if (!stopped) {
      throw Failure("generated ids: only " + std::to_string(got.size()) + " of the reference's " +
                    std::to_string(greedy.size()) + " greedy tokens, and the last is no stop token of the template (" +
                    stop_tokens.dump() + ")");
    }
  }
  std::cout << "ok: generated ids (" << got.size() << ") are the reference's greedy tokens\n";
}

void check_run(std::map<std::string, std::string>& args) {
  const fs::path fixture = args["--fixture"];
  const std::string model = args["--model"], name = args["--case"];
  const std::string prefix = model + "." + name;
  const auto ref = io::SafetensorsFile::open(fixture / "reference.safetensors");
  const auto meta = nlohmann::json::parse(read_file(fixture / "reference.json"));
  const auto& m = meta.at("models").at(model);
  const auto& c = m.at("cases").at(name);
  const std::string err = read_file(args["--stderr"]);
  check_ids(err, "prompt ids", ids_tensor(ref, prefix + ".ids"));
  const auto greedy = ids_tensor(ref, prefix + ".greedy");
  check_generated(err, greedy, m.at("stop_tokens"));
  if (ids_line(err, "generated ids").size() == greedy.size()) {
    check_text(read_file(args["--stdout"]), c.at("greedy_text").get<std::string>());
  }
  if (args.contains("--logits")) check_logits(args["--logits"], ref, prefix + ".logits");
}

}  // namespace

int main(int argc, char** argv) {
  return check::run_checker("check_internvl2", argc, argv, {"--fixture", "--model", "--case", "--stdout", "--stderr"},
                            "--fixture DIR --model MODEL --case NAME --stdout FILE --stderr FILE [--logits FILE.npy]",
                            check_run);
}
