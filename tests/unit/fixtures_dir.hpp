// Where the tests find tests/fixtures (and the other data under tests/): one
// function for every test, so a binary built elsewhere (scripts/gpu-bundle)
// reads the repository's files wherever that lies.
//
// TESSERA_FIXTURES_DIR, when set, names the fixtures directory (a checkout's
// tests/fixtures); otherwise it is this source tree's, from __FILE__ (the
// absolute path this header had when the test was compiled).
#pragma once

#include <cstdlib>
#include <filesystem>

namespace tessera::testing {

inline std::filesystem::path fixtures_dir() {
  if (const char* dir = std::getenv("TESSERA_FIXTURES_DIR"); dir != nullptr && *dir != '\0') {
    return std::filesystem::path(dir);
  }
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures";
}

// tests/ itself (bad_files/, fuzz/corpus/): the fixtures directory's parent.
inline std::filesystem::path tests_dir() { return fixtures_dir().parent_path(); }

}  // namespace tessera::testing
