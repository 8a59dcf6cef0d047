// libFuzzer target for the safetensors header parser and loader. Every input
// must either parse (and then satisfy the reader's invariants and load) or
// fail with a tessera::Error; anything else (a crash, a sanitizer report, a
// foreign exception, a broken invariant) is a bug.
//
// Built with clang -fsanitize=fuzzer,address,undefined when
// TESSERA_BUILD_FUZZERS=ON; the same function is replayed over the committed
// seed corpus by the fuzz_safetensors_corpus CTest with any compiler.
#include <tessera/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

template <tessera::DType T>
void try_load(const tessera::io::SafetensorsFile& file, const tessera::io::TensorInfo& info) {
  try {
    const auto t = file.load<tessera::Host, T>(info);
    check(t.shape() == info.shape);
  } catch (const tessera::ValueError&) {
    // an unsupported conversion or an integer out of range: expected
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace tessera::io;
  try {
    const auto file = SafetensorsFile::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz-input");
    const auto& header = file.header();
    check(header.data_start == 8 + header.header_bytes);
    check(header.data_start + header.data_bytes == size);
    std::uint64_t cursor = 0;
    for (const auto& t : file.tensors()) {
      check(t.begin == cursor && t.end >= t.begin && t.end <= header.data_bytes);
      cursor = t.end;
      check(file.find(t.name) == &t);
      check(file.bytes(t).size() == t.nbytes());
      check(t.numel() >= 0);
      try_load<float>(file, t);
      try_load<tessera::bf16>(file, t);
      try_load<std::int64_t>(file, t);
    }
    check(cursor == header.data_bytes);
  } catch (const tessera::Error&) {
    // a rejected file: expected
  }
  return 0;
}
