// check_qwen2_5_vl: checks one run of examples/qwen2_5_vl against the
// transformers reference of a Qwen2.5-VL fixture (tests/fixtures/qwen2_5_vl/
// <variant>, written by tools/fixtures/make_qwen2_5_vl_fixtures.py):
//
//   check_qwen2_5_vl --fixture DIR --case NAME [--expect PREFIX] --stdout FILE --stderr FILE [--logits FILE.npy]
//
//   * the "prompt ids:" line qwen2_5_vl --print-ids wrote on stderr equals
//     reference.safetensors NAME.input_ids (placeholders expanded);
//   * the "generated ids:" line equals PREFIX.greedy (PREFIX defaults to
//     NAME; the video case's tessera reference is "video.v4", the rope index
//     of transformers 4.5x / the original Qwen code, see docs/fixtures.md);
//   * stdout is exactly reference.json cases.NAME.greedy.text plus the final
//     newline (when PREFIX is NAME; the v4 tokens have no reference text);
//   * the --logits-out file is a float32 .npy [positions, vocab] equal to
//     PREFIX.logits within 1e-4 x max|reference logit|.
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
  const std::string expect = args.contains("--expect") ? args["--expect"] : name;
  const auto ref = io::SafetensorsFile::open(fixture / "reference.safetensors");
  const std::string err = read_file(args["--stderr"]);
  check_ids(err, "prompt ids", ids_tensor(ref, name + ".input_ids"));
  check_ids(err, "generated ids", ids_tensor(ref, expect + ".greedy"));
  if (expect == name) {
    const auto meta = nlohmann::json::parse(read_file(fixture / "reference.json"));
    check_text(read_file(args["--stdout"]), meta.at("cases").at(name).at("greedy").at("text").get<std::string>());
  } else {
    std::cout << "note: " << expect << " has no reference text; stdout not compared\n";
  }
  if (args.contains("--logits")) check_logits(args["--logits"], ref, expect + ".logits");
}

}  // namespace

int main(int argc, char** argv) {
  return check::run_checker("check_qwen2_5_vl", argc, argv, {"--fixture", "--case", "--stdout", "--stderr"},
                            "--fixture DIR --case NAME [--expect PREFIX] --stdout FILE --stderr FILE "
                            "[--logits FILE.npy]",
                            check_run);
}
