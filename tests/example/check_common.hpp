// check_common.hpp — what the checkers of the example programs share
// (tests/example/check_*.cpp): reading the files a run left, the ids
// --print-ids wrote on stderr, the streamed text, and a NumPy .npy reader to
// compare --logits-out with a reference.safetensors tensor. Every check
// prints "ok: ..." or throws check::Failure.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <span>
#include <string>
#include <vector>

#include <tessera/io/safetensors.hpp>

namespace check {
namespace fs = std::filesystem;
using namespace tessera;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(std::string("cannot read ").append(path.string()));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string join(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

// An int64 array of the reference (input ids, greedy tokens) as a vector.
inline std::vector<std::int64_t> ids_tensor(const io::SafetensorsFile& ref, const std::string& name) {
  const auto t = ref.load<Host, std::int64_t>(name);
  const std::span<const std::int64_t> ids = t.span();
  return {ids.begin(), ids.end()};
}

// The ids after "<label>: " on a line of `text`.
inline std::vector<std::int64_t> ids_line(const std::string& text, const std::string& label) {
  const std::string key = label + ":";
  std::size_t pos = text.rfind("\n" + key);
  pos = pos == std::string::npos ? (text.starts_with(key) ? 0 : std::string::npos) : pos + 1;
  if (pos == std::string::npos) throw Failure("stderr has no '" + key + "' line (was --print-ids given?)");
  const std::size_t end = text.find('\n', pos);
  std::istringstream line(text.substr(pos + key.size(), end == std::string::npos ? std::string::npos
                                                                                 : end - pos - key.size()));
  std::vector<std::int64_t> ids;
  for (std::int64_t id = 0; line >> id;) ids.push_back(id);
  return ids;
}

inline void check_ids(const std::string& err, const std::string& label, const std::vector<std::int64_t>& expected) {
  const auto got = ids_line(err, label);
  if (got != expected) throw Failure(label + ": got [" + join(got) + "], expected [" + join(expected) + "]");
  std::cout << "ok: " << label << " (" << got.size() << ") match the reference\n";
}

inline void check_text(const std::string& out, const std::string& expected_text) {
  const std::string expected = expected_text + "\n";
  if (out == expected) {
    std::cout << "ok: stdout is the reference text (" << out.size() << " bytes)\n";
    return;
  }
  const auto diff = std::ranges::mismatch(out, expected);
  throw Failure("stdout differs from the reference text at byte " + std::to_string(diff.in1 - out.begin()) +
                "\n  got:      " + out + "\n  expected: " + expected);
}

// ---- a NumPy .npy reader (v1.0 to v3.0, little-endian float32, C order) -----

struct Npy {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};

// The text after 'key': in the header dict, up to the next top-level ','.
inline std::string npy_field(const std::string& header, const std::string& key) {
  const std::size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw Failure("npy header has no '" + key + "': " + header);
  std::size_t pos = header.find(':', at) + 1;
  while (header[pos] == ' ') ++pos;
  if (header[pos] == '(') return header.substr(pos, header.find(')', pos) - pos + 1);
  return header.substr(pos, header.find(',', pos) - pos);
}

inline Npy read_npy(const fs::path& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw Failure(path.string() + ": not a .npy file");
  const auto major = static_cast<unsigned char>(bytes[6]);
  const std::size_t len_size = major == 1 ? 2 : 4;
  std::size_t header_len = 0;
  for (std::size_t i = 0; i < len_size; ++i) header_len |= std::size_t{static_cast<unsigned char>(bytes[8 + i])} << (8 * i);
  const std::size_t data_at = 8 + len_size + header_len;
  if (data_at > bytes.size() || data_at % 16 != 0) throw Failure(path.string() + ": bad header length");
  const std::string header = bytes.substr(8 + len_size, header_len);
  if (!header.ends_with("\n")) throw Failure(path.string() + ": the header does not end with a newline");
  if (npy_field(header, "descr") != "'<f4'") throw Failure(path.string() + ": descr is not '<f4': " + header);
  if (npy_field(header, "fortran_order") != "False") throw Failure(path.string() + ": not C order: " + header);

  Npy npy;
  std::string dims = npy_field(header, "shape");
  std::replace_if(dims.begin(), dims.end(), [](char c) { return c == '(' || c == ')' || c == ','; }, ' ');
  std::istringstream ds(dims);
  std::int64_t count = 1;
  for (std::int64_t d = 0; ds >> d;) {
    npy.shape.push_back(d);
    count *= d;
  }
  if (bytes.size() - data_at != static_cast<std::size_t>(count) * sizeof(float)) {
    throw Failure(path.string() + ": " + std::to_string(bytes.size() - data_at) + " data bytes for shape " + dims);
  }
  npy.data.resize(static_cast<std::size_t>(count));
  std::memcpy(npy.data.data(), bytes.data() + data_at, npy.data.size() * sizeof(float));
  return npy;
}

// The .npy file equals tensor `name` of the reference within
// 1e-4 x max|reference logit| (the golden tests' tolerance). `rows`: which
// rows of the .npy the reference kept, in its order (empty: all of them).
inline void check_logits(const fs::path& npy_path, const io::SafetensorsFile& ref, const std::string& name,
                         const std::vector<std::int64_t>& rows = {}) {
  const Npy got = read_npy(npy_path);
  const auto expected = ref.load<Host, float>(name);
  const std::int64_t vocab = expected.dim(1);
  const std::vector<std::int64_t> shape{rows.empty() ? expected.dim(0) : got.shape.at(0), vocab};
  if (got.shape != shape) throw Failure("logits shape [" + join(got.shape) + "], expected [" + join(shape) + "]");
  if (!rows.empty() && static_cast<std::int64_t>(rows.size()) != expected.dim(0)) {
    throw Failure(name + " has " + std::to_string(expected.dim(0)) + " rows but " + std::to_string(rows.size()) +
                  " positions");
  }
  const auto e = expected.span();
  float max_ref = 0.0f;
  for (float v : e) max_ref = std::max(max_ref, std::abs(v));
  const double tol = 1e-4 * max_ref;
  double worst = 0.0;
  for (std::size_t i = 0; i < e.size(); ++i) {
    const std::size_t r = i / static_cast<std::size_t>(vocab), c = i % static_cast<std::size_t>(vocab);
    const std::int64_t row = rows.empty() ? static_cast<std::int64_t>(r) : rows[r];
    if (row < 0 || row >= got.shape[0]) {
      throw Failure(name + ": position " + std::to_string(row) + " is not in the .npy");
    }
    const float g = got.data[static_cast<std::size_t>(row) * static_cast<std::size_t>(vocab) + c];
    const double d = std::abs(static_cast<double>(g) - static_cast<double>(e[i]));
    if (!(d <= tol)) {
      throw Failure("logits[" + std::to_string(row) + ", " + std::to_string(c) + "] = " + std::to_string(g) +
                    ", expected " + std::to_string(e[i]) + " (tolerance " + std::to_string(tol) + ")");
    }
    worst = std::max(worst, d);
  }
  std::cout << "ok: logits [" << join(shape) << "] match " << name
            << (rows.empty() ? std::string() : " at positions [" + join(rows) + "]") << ", max |diff| " << worst
            << " <= " << tol << "\n";
}

// A checker's main(): reads "--key value" pairs (each of `required` must be
// present, else the usage and exit 2), then runs check(args): exit 0 when it
// returns, 1 with the reason when it throws.
template <class Check>
int run_checker(const char* name, int argc, char** argv, std::initializer_list<const char*> required,
                const char* usage, Check&& check) {
  std::map<std::string, std::string> args;
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  for (const char* key : required) {
    if (!args.contains(key)) {
      std::cerr << name << ": missing " << key << "\nusage: " << name << " " << usage << "\n";
      return 2;
    }
  }
  try {
    check(args);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << name << ": FAILED: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace check
