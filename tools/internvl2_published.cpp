// internvl2_published OUTDIR [NAME...]: writes headers-only copies of the
// published InternVL2 checkpoints (all seven, or the named ones) under
// OUTDIR/<name>/: the real config.json and every tensor's safetensors
// header, the data left sparse (models/internvl2_published.hpp). They cost
// almost no disk and plan like the real ones:
//
//   internvl2_published /tmp/internvl2
//   internvl2 --model /tmp/internvl2/InternVL2-Llama3-76B --plan-only ...
#include <tessera/models/internvl2_published.hpp>

#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace published = tessera::models::internvl2::published;

namespace {

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " OUTDIR [NAME...]\n"
            << "writes headers-only copies of the published InternVL2 checkpoints under OUTDIR/<NAME>/\n"
            << "NAME:";
  for (const auto& n : published::names()) std::cerr << " " << n;
  std::cerr << " (default: all)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") return usage(argv[0]);
  const std::filesystem::path out = argv[1];
  std::vector<std::string> wanted(argv + 2, argv + argc);
  if (wanted.empty()) wanted = published::names();
  try {
    // Every name is checked before anything is written.
    std::vector<published::Size> sizes;
    for (const auto& name : wanted) sizes.push_back(published::size(name));
    for (const auto& size : sizes) {
      const auto dir = out / size.name;
      published::write_headers_only(size, dir);
      const auto files = published::shards(size).size();
      std::cout << dir.string() << ": " << size.tensors.size() << " tensors, " << size.parameters()
                << " parameters, " << files << " safetensors file" << (files == 1 ? "" : "s") << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "internvl2_published: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
