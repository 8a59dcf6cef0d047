// tessera_examples: the four model examples and their checkers in one binary
// (scripts/gpu-bundle; cmake/TesseraBundle.cmake). Each example's own main()
// is compiled as tessera_example_<name>_main, each checker's as
// tessera_check_<name>_main.
//
//   tessera_examples NAME ARGS...   runs NAME (text_generate, check_qwen2_5_vl, ...)
//                                   with argv[0] = NAME
//   NAME ARGS...                    the same through a link named NAME
#include <cstdio>
#include <cstring>
#include <string_view>

int tessera_example_text_generate_main(int argc, char** argv);
int tessera_example_qwen2_5_vl_main(int argc, char** argv);
int tessera_example_minicpm_v_main(int argc, char** argv);
int tessera_example_internvl2_main(int argc, char** argv);
int tessera_check_text_generate_main(int argc, char** argv);
int tessera_check_qwen2_5_vl_main(int argc, char** argv);
int tessera_check_minicpm_v_main(int argc, char** argv);
int tessera_check_internvl2_main(int argc, char** argv);

namespace {

struct Entry {
  std::string_view name;
  int (*main)(int, char**);
};

constexpr Entry kEntries[] = {
    {"text_generate", tessera_example_text_generate_main},
    {"qwen2_5_vl", tessera_example_qwen2_5_vl_main},
    {"minicpm_v", tessera_example_minicpm_v_main},
    {"internvl2", tessera_example_internvl2_main},
    {"check_text_generate", tessera_check_text_generate_main},
    {"check_qwen2_5_vl", tessera_check_qwen2_5_vl_main},
    {"check_minicpm_v", tessera_check_minicpm_v_main},
    {"check_internvl2", tessera_check_internvl2_main},
};

int (*find(std::string_view name))(int, char**) {
  if (const auto slash = name.rfind('/'); slash != std::string_view::npos) name.remove_prefix(slash + 1);
  for (const auto& e : kEntries) {
    if (e.name == name) return e.main;
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 0) {
    if (auto* run = find(argv[0])) return run(argc, argv);
  }
  if (argc > 1) {
    if (auto* run = find(argv[1])) return run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "usage: tessera_examples NAME [ARGS...]\n  NAME: one of");
  for (const auto& e : kEntries) std::fprintf(stderr, " %.*s", static_cast<int>(e.name.size()), e.name.data());
  std::fprintf(stderr, "\n");
  return 2;
}
