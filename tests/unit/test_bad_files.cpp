// The corpus of malformed user files in tests/bad_files: every safetensors
// file, checkpoint directory, config.json and tokenizer.json there must fail
// to load with the exception and message fragments listed for it in
// tests/bad_files/expected.json (regenerate the files with
// tools/fixtures/make_bad_files.py). Nothing may crash or load silently.
#include <tessera/io/checkpoint.hpp>
#include <tessera/io/config.hpp>
#include <tessera/io/safetensors.hpp>
#include <tessera/models/decoder_family.hpp>
#include <tessera/tokenizer/bpe.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>

#include "test_util.hpp"

namespace tessera::testing {
namespace {

const std::filesystem::path kRoot = tessera::testing::tests_dir() / "bad_files";

std::function<void()> loader_for(const std::string& loader, const std::filesystem::path& path) {
  if (loader == "safetensors") return [path] { (void)io::SafetensorsFile::open(path); };
  if (loader == "checkpoint") return [path] { io::Checkpoint::open(path).validate(); };
  if (loader == "config") return [path] { (void)io::Qwen2Config::load(path); };
  // Parsed, then judged as the decoder judges it before loading a weight.
  if (loader == "decoder_config") {
    return [path] {
      const auto config = io::DecoderConfig::load(path);
      models::check_decoder_config(config, models::weights_for(models::detect_family(config, path.string())),
                                   path.string());
    };
  }
  if (loader == "tokenizer") return [path] { (void)tokenizer::Tokenizer::from_file(path); };
  throw std::invalid_argument("unknown loader " + loader);
}

// The exception's dynamic type, by name, for the manifest's "error" field.
std::string error_name(const std::exception& e) {
  if (dynamic_cast<const FormatError*>(&e)) return "FormatError";
  if (dynamic_cast<const IoError*>(&e)) return "IoError";
  if (dynamic_cast<const ValueError*>(&e)) return "ValueError";
  if (dynamic_cast<const ShapeError*>(&e)) return "ShapeError";
  if (dynamic_cast<const Error*>(&e)) return "tessera::Error";
  return "not a tessera::Error";
}

TEST(BadFiles, EveryMalformedFileFailsWithItsExpectedError) {
  const auto manifest = nlohmann::json::parse(std::ifstream(kRoot / "expected.json"));
  ASSERT_GE(manifest["cases"].size(), 20u);
  for (const auto& c : manifest["cases"]) {
    const auto path = kRoot / c["path"].get<std::string>();
    SCOPED_TRACE(path.string());
    ASSERT_TRUE(std::filesystem::exists(path)) << "missing corpus entry";
    try {
      loader_for(c["loader"].get<std::string>(), path)();
      ADD_FAILURE() << "loaded without an error";
    } catch (const std::exception& e) {
      EXPECT_EQ(error_name(e), c["error"].get<std::string>()) << e.what();
      const std::string what = e.what();
      for (const auto& fragment : c["contains"]) {
        EXPECT_NE(what.find(fragment.get<std::string>()), std::string::npos)
            << "'" << fragment.get<std::string>() << "' not in: " << what;
      }
    }
  }
}

TEST(BadFiles, EveryFileInTheCorpusHasAnExpectation) {
  const auto manifest = nlohmann::json::parse(std::ifstream(kRoot / "expected.json"));
  std::set<std::string> listed;
  for (const auto& c : manifest["cases"]) listed.insert(c["path"].get<std::string>());
  for (const char* kind : {"safetensors", "configs", "tokenizers"}) {
    for (const auto& entry : std::filesystem::directory_iterator(kRoot / kind)) {
      const auto rel = std::filesystem::relative(entry.path(), kRoot).string();
      EXPECT_TRUE(listed.count(rel)) << rel << " has no entry in expected.json";
    }
  }
  for (const auto& entry : std::filesystem::directory_iterator(kRoot / "checkpoints")) {
    const auto rel = std::filesystem::relative(entry.path(), kRoot).string();
    EXPECT_TRUE(listed.count(rel)) << rel << " has no entry in expected.json";
  }
}

}  // namespace
}  // namespace tessera::testing
