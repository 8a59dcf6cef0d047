// check_minicpm_v: checks one run of examples/minicpm_v against the MiniCPM-V
// oracle (tests/fixtures/minicpm_v, written by
// tools/fixtures/make_minicpm_v_fixtures.py):
//
//   check_minicpm_v --fixture DIR --case NAME --stdout FILE --stderr FILE [--logits FILE.npy]
//
//   * the "prompt ids:" line minicpm_v --print-ids wrote on stderr equals
//     reference.safetensors NAME.input_ids (image placeholders expanded);
//   * the "generated ids:" line equals NAME.greedy;
//   * stdout is exactly reference.json cases.NAME.greedy.text plus the final
//     newline;
//   * the --logits-out file is a float32 .npy [positions, vocab] equal to
//     NAME.logits within 1e-4 x max|reference logit|.
//
// Prints what it checked; exit 0 when all holds, 1 otherwise, 2 on bad usage.
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "check_common.hpp"

namespace {
using namespace check;

void check_run(std::map<std::string, std::string>& args) {
  const fs::path fixture = args["--fixture"];
  const std::string name = args["--case"];
  const auto ref = io::SafetensorsFile::open(fixture / "reference.safetensors");
  const std::string err = read_file(args["--stderr"]);
  check_ids(err, "prompt ids", ids_tensor(ref, name + ".input_ids"));
  check_ids(err, "generated ids", ids_tensor(ref, name + ".greedy"));
  const auto meta = nlohmann::json::parse(read_file(fixture / "reference.json"));
  check_text(read_file(args["--stdout"]), meta.at("cases").at(name).at("greedy").at("text").get<std::string>());
  if (args.contains("--logits")) check_logits(args["--logits"], ref, name + ".logits");
}

}  // namespace

int main(int argc, char** argv) {
  return check::run_checker("check_minicpm_v", argc, argv, {"--fixture", "--case", "--stdout", "--stderr"},
                            "--fixture DIR --case NAME --stdout FILE --stderr FILE [--logits FILE.npy]", check_run);
}
