// tessera/io/safetensors.hpp — a memory-mapped reader (and a small writer) for
// the safetensors format of Hugging Face checkpoints.
//
// A safetensors file is: an 8-byte little-endian u64 N, then N bytes of a
// UTF-8 JSON object (the header), then the data section. The header maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section), plus an optional "__metadata__" map of
// strings to strings.
//
// open() validates everything the reference implementation
// (huggingface/safetensors, safetensors/src/tensor.rs) does, and a little
// more, before any tensor is read:
//   - the file holds at least the 8-byte length prefix;
//   - N <= 100'000'000 and 8 + N <= the file size;
//   - the header is well-formed JSON (UTF-8 checked by the parser), a JSON
//     object, "__metadata__" (if present and not null) maps strings to strings;
//   - every tensor has a known "dtype", a "shape" of non-negative integers and
//     "data_offsets" of exactly two non-negative integers with begin <= end;
//     unknown extra fields of a tensor entry are ignored, as the reference does;
//   - sorted by (begin, end), the tensors' byte ranges start at 0, follow one
//     another with no gap and no overlap, and the last ends exactly at the end
//     of the file;
//   - product(shape) x dtype bits is a whole number of bytes equal to
//     end - begin, computed with overflow-checked 64-bit arithmetic.
// Stricter than the reference (it would accept these): a tensor name listed
// twice (the reference keeps the last silently), a rank above tessera's
// kMaxRank (8), a shape whose non-zero dimensions multiply past INT64_MAX, and
// JSON nested deeper than 64 levels.
//
// Every failure is a tessera::FormatError (malformed file), IoError (cannot
// open / map / write) or ValueError (a tensor that is not in the file, or a
// dtype conversion load() does not do), and names the file, the tensor and
// the byte offset in the file where they apply.
//
// The mapping is read-only and private; a file truncated by another process
// while mapped raises SIGBUS on access, as with any mmap-based reader.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/device.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/shape.hpp"
#include "../core/tensor.hpp"
#include "../core/transfer.hpp"

static_assert(std::endian::native == std::endian::little,
              "tessera: the safetensors reader assumes a little-endian host (safetensors data is little-endian)");

namespace tessera::io {

// The dtypes of the safetensors format, in the reference's order (increasing
// alignment; its writer sorts tensors by this order, descending).
enum class SafetensorsDtype : std::uint8_t {
  BOOL,
  F4,
  F6_E2M3,
  F6_E3M2,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  F8_E8M0,
  F8_E4M3FNUZ,
  F8_E5M2FNUZ,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  C64,
  F64,
  I64,
  U64,
};

namespace detail {
using tessera::detail::concat;

struct DtypeEntry {
  std::string_view name;
  SafetensorsDtype dtype;
  unsigned bits;
};
inline constexpr std::array<DtypeEntry, 22> kDtypeTable{{
    {"BOOL", SafetensorsDtype::BOOL, 8},
    {"F4", SafetensorsDtype::F4, 4},
    {"F6_E2M3", SafetensorsDtype::F6_E2M3, 6},
    {"F6_E3M2", SafetensorsDtype::F6_E3M2, 6},
    {"U8", SafetensorsDtype::U8, 8},
    {"I8", SafetensorsDtype::I8, 8},
    {"F8_E5M2", SafetensorsDtype::F8_E5M2, 8},
    {"F8_E4M3", SafetensorsDtype::F8_E4M3, 8},
    {"F8_E8M0", SafetensorsDtype::F8_E8M0, 8},
    {"F8_E4M3FNUZ", SafetensorsDtype::F8_E4M3FNUZ, 8},
    {"F8_E5M2FNUZ", SafetensorsDtype::F8_E5M2FNUZ, 8},
    {"I16", SafetensorsDtype::I16, 16},
    {"U16", SafetensorsDtype::U16, 16},
    {"F16", SafetensorsDtype::F16, 16},
    {"BF16", SafetensorsDtype::BF16, 16},
    {"I32", SafetensorsDtype::I32, 32},
    {"U32", SafetensorsDtype::U32, 32},
    {"F32", SafetensorsDtype::F32, 32},
    {"C64", SafetensorsDtype::C64, 64},
    {"F64", SafetensorsDtype::F64, 64},
    {"I64", SafetensorsDtype::I64, 64},
    {"U64", SafetensorsDtype::U64, 64},
}};
}  // namespace detail

// "BF16", "F32", ... as written in the header.
constexpr std::string_view dtype_name(SafetensorsDtype d) {
  return detail::kDtypeTable[static_cast<std::size_t>(d)].name;
}
// Bits per element (4 and 6 for the sub-byte float formats).
constexpr unsigned dtype_bits(SafetensorsDtype d) { return detail::kDtypeTable[static_cast<std::size_t>(d)].bits; }
constexpr std::optional<SafetensorsDtype> parse_dtype(std::string_view name) {
  for (const auto& e : detail::kDtypeTable) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}
// The safetensors dtype that stores tessera element type T.
template <DType T>
constexpr SafetensorsDtype safetensors_dtype_of() {
  if constexpr (std::is_same_v<T, float>) return SafetensorsDtype::F32;
  else if constexpr (std::is_same_v<T, bf16>) return SafetensorsDtype::BF16;
  else if constexpr (std::is_same_v<T, f16>) return SafetensorsDtype::F16;
  else if constexpr (std::is_same_v<T, std::int32_t>) return SafetensorsDtype::I32;
  else return SafetensorsDtype::I64;
}

// The largest header the reference accepts.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// JSON nesting deeper than this is rejected (a valid header needs 3).
inline constexpr int kMaxSafetensorsJsonDepth = 64;

// One tensor of a file. begin/end are byte offsets into the data section.
struct TensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  Shape shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  std::uint64_t nbytes() const noexcept { return end - begin; }
  std::int64_t numel() const noexcept { return shape.numel(); }
};

// The validated header of a file: tensors sorted by data offset.
struct SafetensorsHeader {
  std::uint64_t header_bytes = 0;  // N, the JSON header's length
  std::uint64_t data_start = 0;    // 8 + N: file offset of the data section
  std::uint64_t data_bytes = 0;    // length of the data section
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

namespace detail {

inline std::string json_kind(const nlohmann::json& j) {
  if (j.is_number_unsigned()) return "a non-negative integer";
  if (j.is_number_integer()) return "a negative integer";
  if (j.is_number_float()) return "a non-integer number";
  return std::string("a JSON ") + j.type_name();
}

inline std::string shape_text(const std::vector<std::uint64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

// Parses and validates the header of `file` (the whole file's bytes). `where`
// names the file in messages.
inline SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& where) {
  const auto fail = [&](const auto&... parts) {
    return FormatError(concat("safetensors file '", where, "': ", parts...));
  };
  if (file.size() < 8) {
    throw fail("the file is ", file.size(),
               " bytes long, too short for the 8-byte header length at its start (truncated or not a "
               "safetensors file)");
  }
  // A Git LFS pointer in place of the weights is the most common "corrupt"
  // checkpoint (a clone without git-lfs): say so instead of quoting a length.
  constexpr std::string_view kLfsPointer = "version https://git-lfs";
  if (file.size() >= kLfsPointer.size() &&
      std::memcmp(file.data(), kLfsPointer.data(), kLfsPointer.size()) == 0) {
    throw fail("this is a Git LFS pointer file, not the weights: fetch the real file (git lfs pull, or "
               "download it from the hub)");
  }
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint64_t>(file[static_cast<std::size_t>(i)]);
  if (n > kMaxSafetensorsHeaderBytes) {
    throw fail("the header length at byte 0 is ", n, " bytes, over the limit of ", kMaxSafetensorsHeaderBytes,
               " bytes (corrupt or not a safetensors file)");
  }
  const std::uint64_t after_prefix = file.size() - 8;
  if (n > after_prefix) {
    throw fail("the header length at byte 0 is ", n, " bytes but only ", after_prefix,
               " bytes follow it: the file is truncated or not a safetensors file (file size ", file.size(),
               " bytes)");
  }
  SafetensorsHeader header;
  header.header_bytes = n;
  header.data_start = 8 + n;
  header.data_bytes = after_prefix - n;

  // JSON: parsed iteratively by nlohmann; a callback rejects duplicate tensor
  // names and drops (then reports) anything nested too deep.
  std::set<std::string, std::less<>> seen;
  std::optional<std::string> duplicate;
  bool too_deep = false;
  nlohmann::json root;
  {
    const char* first = reinterpret_cast<const char*>(file.data()) + 8;
    const char* last = first + n;
    auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) -> bool {
      using E = nlohmann::json::parse_event_t;
      if (event == E::object_start || event == E::array_start) {
        if (depth >= kMaxSafetensorsJsonDepth) {
          too_deep = true;
          return false;
        }
      } else if (event == E::key && depth == 1 && parsed.is_string()) {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!seen.insert(key).second && !duplicate) duplicate = key;
      }
      return true;
    };
    try {
      root = nlohmann::json::parse(first, last, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    } catch (const nlohmann::json::exception& e) {
      // parse_error::byte counts from 1 within the header.
      std::size_t at = 8;
      if (const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e)) {
        at = 8 + (pe->byte > 0 ? pe->byte - 1 : 0);
      }
      throw fail("the header (bytes 8 to ", 8 + n, ") is not valid JSON; near file byte ", at, ": ", e.what());
    }
  }
  if (too_deep) throw fail("the header nests JSON deeper than ", kMaxSafetensorsJsonDepth, " levels");
  if (duplicate) throw fail("tensor '", *duplicate, "' is listed twice in the header");
  if (!root.is_object()) throw fail("the header must be a JSON object, but it is ", json_kind(root));

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) throw fail("\"__metadata__\" must map strings to strings, but it is ", json_kind(entry));
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          throw fail("\"__metadata__\" entry '", m.key(), "' must be a string, but it is ", json_kind(m.value()));
        }
        header.metadata.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    const auto tfail = [&](const auto&... parts) { return fail("tensor '", name, "': ", parts...); };
    if (!entry.is_object()) throw tfail("the header entry must be a JSON object, but it is ", json_kind(entry));

    TensorInfo info;
    info.name = name;
    // dtype
    const auto dt = entry.find("dtype");
    if (dt == entry.end()) throw tfail("missing \"dtype\"");
    if (!dt->is_string()) throw tfail("\"dtype\" must be a string, but it is ", json_kind(*dt));
    const auto& dtype_text = dt->get_ref<const std::string&>();
    const auto dtype = parse_dtype(dtype_text);
    if (!dtype) {
      throw tfail("unknown dtype \"", dtype_text,
                  "\" (known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, C64, F8_E4M3, "
                  "F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F4, F6_E2M3, F6_E3M2)");
    }
    info.dtype = *dtype;
    // shape
    const auto sh = entry.find("shape");
    if (sh == entry.end()) throw tfail("missing \"shape\"");
    if (!sh->is_array()) throw tfail("\"shape\" must be an array of non-negative integers, but it is ", json_kind(*sh));
    std::vector<std::uint64_t> dims;
    for (std::size_t i = 0; i < sh->size(); ++i) {
      const auto& d = (*sh)[i];
      if (!d.is_number_unsigned()) {
        throw tfail("\"shape\" dimension ", i, " must be a non-negative integer, but it is ", json_kind(d),
                    " (", d.dump(), ")");
      }
      dims.push_back(d.get<std::uint64_t>());
    }
    if (dims.size() > static_cast<std::size_t>(kMaxRank)) {
      throw tfail("shape ", shape_text(dims), " has rank ", dims.size(), ", above tessera's maximum rank ", kMaxRank);
    }
    // Overflow-checked element count (the reference's order: the running
    // product from the first dimension), and the non-zero dimensions' product
    // must also fit int64 so that Shape's numel and strides cannot overflow.
    constexpr auto kInt64Max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
    std::uint64_t numel = 1, nonzero = 1;
    bool overflow = false;
    for (std::uint64_t d : dims) {
      overflow = overflow || __builtin_mul_overflow(numel, d, &numel);
      if (d != 0) overflow = overflow || __builtin_mul_overflow(nonzero, d, &nonzero) || nonzero > kInt64Max;
    }
    std::uint64_t nbits = 0;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<std::uint64_t>(dtype_bits(info.dtype)), &nbits);
    if (overflow) {
      throw tfail("shape ", shape_text(dims), " with dtype ", dtype_name(info.dtype),
                  " is too large: its size overflows 64-bit arithmetic");
    }
    if (nbits % 8 != 0) {
      throw tfail("shape ", shape_text(dims), " with dtype ", dtype_name(info.dtype), " (", dtype_bits(info.dtype),
                  " bits) is not a whole number of bytes (", nbits, " bits)");
    }
    std::vector<std::int64_t> sdims(dims.begin(), dims.end());  // each <= kInt64Max, checked above
    info.shape = Shape(std::span<const std::int64_t>(sdims));
    // data_offsets
    const auto off = entry.find("data_offsets");
    if (off == entry.end()) throw tfail("missing \"data_offsets\"");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      throw tfail("\"data_offsets\" must be [begin, end] of two non-negative integers, but it is ", off->dump());
    }
    info.begin = (*off)[0].get<std::uint64_t>();
    info.end = (*off)[1].get<std::uint64_t>();
    if (info.end < info.begin) {
      throw tfail("data_offsets [", info.begin, ", ", info.end, "] end before they begin");
    }
    if (info.end - info.begin != nbits / 8) {
      throw tfail("shape ", shape_text(dims), " with dtype ", dtype_name(info.dtype), " needs ", nbits / 8,
                  " bytes, but data_offsets [", info.begin, ", ", info.end, "] span ", info.end - info.begin,
                  " bytes");
    }
    if (info.end > header.data_bytes) {
      throw tfail("data_offsets [", info.begin, ", ", info.end, "] run past the end of the data section, which is ",
                  header.data_bytes, " bytes long (file bytes ", header.data_start, " to ", file.size(),
                  "): the file is truncated or the offsets are wrong");
    }
    header.tensors.push_back(std::move(info));
  }

  // Contiguity: sorted by (begin, end) the ranges must tile the data section.
  std::stable_sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin > cursor) {
      if (prev) {
        throw fail("tensor '", t.name, "' starts at data offset ", t.begin, " (file byte ", header.data_start + t.begin,
                   ") but the previous tensor '", prev->name, "' ends at ", cursor, ": ", t.begin - cursor,
                   " bytes between them belong to no tensor (ranges must be contiguous)");
      }
      throw fail("the first tensor '", t.name, "' starts at data offset ", t.begin, " (file byte ",
                 header.data_start + t.begin, "), not 0: ", t.begin,
                 " bytes at the start of the data section belong to no tensor");
    }
    if (t.begin < cursor) {
      throw fail("tensor '", t.name, "' data_offsets [", t.begin, ", ", t.end, "] (file byte ",
                 header.data_start + t.begin, ") overlap tensor '", prev->name, "' [", prev->begin, ", ", prev->end,
                 "]");
    }
    cursor = t.end;
    prev = &t;
  }
  if (cursor != header.data_bytes) {
    throw fail("the tensors cover ", cursor, " bytes of the data section but it is ", header.data_bytes,
               " bytes long: ", header.data_bytes - cursor, " bytes from file byte ", header.data_start + cursor,
               " belong to no tensor");
  }
  return header;
}

// A read-only private mapping of a whole file (RAII; move-only).
class MappedFile {
 public:
  MappedFile() = default;
  static MappedFile open(const std::filesystem::path& path) {
    const auto sys_fail = [&](const char* what) {
      return IoError(concat("cannot ", what, " safetensors file '", path.string(), "': ", std::strerror(errno)));
    };
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw sys_fail("open");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const auto err = sys_fail("stat");
      ::close(fd);
      throw err;
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw IoError(concat("cannot read safetensors file '", path.string(), "': not a regular file"));
    }
    MappedFile m;
    m.size_ = static_cast<std::size_t>(st.st_size);
    if (m.size_ > 0) {
      void* addr = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (addr == MAP_FAILED) {
        const auto err = sys_fail("map");
        ::close(fd);
        throw err;
      }
      m.addr_ = addr;
    }
    ::close(fd);  // the mapping stays valid
    return m;
  }
  MappedFile(MappedFile&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() { unmap(); }

  std::span<const std::byte> bytes() const noexcept { return {static_cast<const std::byte*>(addr_), size_}; }

 private:
  void unmap() noexcept {
    if (addr_) ::munmap(addr_, size_);
    addr_ = nullptr;
    size_ = 0;
  }
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

template <class S>
S read_unaligned(const std::byte* p) {
  S v;
  std::memcpy(&v, p, sizeof(S));
  return v;
}

// Converts n stored elements at src (any alignment) into dst. Returns false
// when the conversion from `stored` to T is not supported.
template <DType T>
bool convert_stored(const std::byte* src, SafetensorsDtype stored, T* dst, std::size_t n, const std::string& where,
                    const std::string& tensor) {
  using D = SafetensorsDtype;
  if (stored == safetensors_dtype_of<T>()) {
    if (n) std::memcpy(dst, src, n * sizeof(T));
    return true;
  }
  if constexpr (FloatType<T>) {
    const auto each = [&](auto read) {
      for (std::size_t i = 0; i < n; ++i) dst[i] = read(i);
    };
    switch (stored) {
      case D::F32: each([&](std::size_t i) { return convert<T>(read_unaligned<float>(src + 4 * i)); }); return true;
      case D::BF16:
        each([&](std::size_t i) { return convert<T>(bf16::from_bits(read_unaligned<std::uint16_t>(src + 2 * i))); });
        return true;
      case D::F16:
        each([&](std::size_t i) { return convert<T>(f16::from_bits(read_unaligned<std::uint16_t>(src + 2 * i))); });
        return true;
      case D::F64:
        each([&](std::size_t i) { return convert<T>(static_cast<float>(read_unaligned<double>(src + 8 * i))); });
        return true;
      default: return false;
    }
  } else {
    // Integer destinations: any integer (or BOOL) source, range-checked.
    unsigned width = 0;
    bool is_signed = true;
    switch (stored) {
      case D::BOOL: case D::U8: width = 1; is_signed = false; break;
      case D::I8: width = 1; break;
      case D::U16: width = 2; is_signed = false; break;
      case D::I16: width = 2; break;
      case D::U32: width = 4; is_signed = false; break;
      case D::I32: width = 4; break;
      case D::U64: width = 8; is_signed = false; break;
      case D::I64: width = 8; break;
      default: return false;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::byte* p = src + static_cast<std::size_t>(width) * i;
      bool in_range = true;
      std::int64_t v = 0;
      if (is_signed) {
        switch (width) {
          case 1: v = read_unaligned<std::int8_t>(p); break;
          case 2: v = read_unaligned<std::int16_t>(p); break;
          case 4: v = read_unaligned<std::int32_t>(p); break;
          default: v = read_unaligned<std::int64_t>(p); break;
        }
      } else {
        std::uint64_t u = 0;
        switch (width) {
          case 1: u = read_unaligned<std::uint8_t>(p); break;
          case 2: u = read_unaligned<std::uint16_t>(p); break;
          case 4: u = read_unaligned<std::uint32_t>(p); break;
          default: u = read_unaligned<std::uint64_t>(p); break;
        }
        in_range = u <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
        v = static_cast<std::int64_t>(in_range ? u : 0);
        if (!in_range) {
          throw ValueError(concat("safetensors file '", where, "': tensor '", tensor, "' element ", i, " (", u,
                                  ", ", dtype_name(stored), ") does not fit ", tessera::dtype_name<T>()));
        }
      }
      if (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
          v > static_cast<std::int64_t>(std::numeric_limits<T>::max())) {
        throw ValueError(concat("safetensors file '", where, "': tensor '", tensor, "' element ", i, " (", v, ", ",
                                dtype_name(stored), ") does not fit ", tessera::dtype_name<T>()));
      }
      dst[i] = static_cast<T>(v);
    }
    return true;
  }
}

}  // namespace detail

// An open safetensors file: the validated header and the mapped bytes. The
// mapping lives as long as this object (move-only); spans from bytes() and
// TensorInfo references from tensors()/find() are valid until it is
// destroyed.
class SafetensorsFile {
 public:
  // Maps `path` read-only and validates its header; throws IoError or
  // FormatError.
  static SafetensorsFile open(const std::filesystem::path& path) {
    SafetensorsFile f;
    f.path_ = path.string();
    f.map_ = detail::MappedFile::open(path);
    f.file_ = f.map_.bytes();
    f.init();
    return f;
  }

  // Validates an in-memory file (copied); `name` stands for the path in
  // messages. The same checks as open(); the fuzz target's entry point.
  static SafetensorsFile parse(std::span<const std::byte> bytes, std::string_view name = "<memory>") {
    SafetensorsFile f;
    f.path_ = std::string(name);
    f.owned_.assign(bytes.begin(), bytes.end());
    f.file_ = std::span<const std::byte>(f.owned_);
    f.init();
    return f;
  }

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const noexcept { return path_; }
  // Tensors in data-offset order (the order they lie in the file).
  const std::vector<TensorInfo>& tensors() const noexcept { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const noexcept { return header_.metadata; }
  const SafetensorsHeader& header() const noexcept { return header_; }
  std::size_t file_size() const noexcept { return file_.size(); }

  // The tensor called `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &header_.tensors[it->second];
  }
  // The tensor called `name`; throws ValueError naming the file if absent.
  const TensorInfo& at(std::string_view name) const {
    if (const TensorInfo* t = find(name)) return *t;
    throw ValueError(detail::concat("safetensors file '", path_, "' has no tensor '", name, "' (it holds ",
                                    header_.tensors.size(), " tensors)"));
  }

  // The stored (little-endian, possibly unaligned) bytes of a tensor.
  std::span<const std::byte> bytes(const TensorInfo& info) const {
    if (info.end < info.begin || info.end > header_.data_bytes) {
      throw ValueError(detail::concat("safetensors file '", path_, "': tensor '", info.name, "' data_offsets [",
                                      info.begin, ", ", info.end, "] are not within this file's data section"));
    }
    return file_.subspan(static_cast<std::size_t>(header_.data_start + info.begin),
                         static_cast<std::size_t>(info.nbytes()));
  }

  // Reads a tensor into device D as element type T, converting: F32, BF16,
  // F16, F64 to any floating-point T; BOOL and (un)signed 8- to 64-bit
  // integers to int32/int64 (range-checked). On CPU devices the bytes are
  // read straight into the new tensor; other devices stage one tensor in
  // host memory and copy it with to<D>. Anything else throws ValueError
  // naming the tensor and both dtypes.
  template <Device D, DType T>
  Tensor<D, T> load(const TensorInfo& info) const {
    if constexpr (is_cpu_v<D>) {
      Tensor<D, T> out(info.shape);
      read_into(info, out.raw());
      return out;
    } else {
      if (info.numel() == 0) return Tensor<D, T>(info.shape);
      return to<D>(load<Host, T>(info));
    }
  }
  template <Device D, DType T>
  Tensor<D, T> load(std::string_view name) const {
    return load<D, T>(at(name));
  }

  // Reads the slice [begin, end) along `axis` of a tensor into device D as T:
  // how tensor-parallel ranks load only their shard of a weight (rows of a
  // column-parallel linear, columns of a row-parallel one). The slice is
  // `outer` runs of contiguous stored elements, each converted in place.
  template <Device D, DType T>
  Tensor<D, T> load_slice(const TensorInfo& info, int axis, std::int64_t begin, std::int64_t end) const {
    const std::int64_t rank = static_cast<std::int64_t>(info.shape.rank());
    if (axis < 0 || axis >= rank || begin < 0 || end < begin || end > info.shape.dims()[static_cast<std::size_t>(axis)]) {
      throw ValueError(detail::concat("safetensors file '", path_, "': slice [", begin, ", ", end, ") along axis ",
                                      axis, " is outside tensor '", info.name, "' of shape ", info.shape.to_string()));
    }
    std::vector<std::int64_t> dims(info.shape.dims().begin(), info.shape.dims().end());
    std::int64_t outer = 1, inner = 1;
    for (int a = 0; a < axis; ++a) outer *= dims[static_cast<std::size_t>(a)];
    for (std::int64_t a = axis + 1; a < rank; ++a) inner *= dims[static_cast<std::size_t>(a)];
    const std::int64_t full = dims[static_cast<std::size_t>(axis)];
    dims[static_cast<std::size_t>(axis)] = end - begin;
    // CPU slots are read straight into the shard; other devices stage it on the host.
    using Stage = std::conditional_t<is_cpu_v<D>, D, Host>;
    Tensor<Stage, T> host{Shape(std::span<const std::int64_t>(dims))};
    const std::uint64_t bits = dtype_bits(info.dtype);
    const auto src = bytes(info);
    const auto run = static_cast<std::size_t>((end - begin) * inner);
    for (std::int64_t o = 0; o < outer && run > 0; ++o) {
      const auto first = static_cast<std::uint64_t>((o * full + begin) * inner);
      const std::byte* from = src.data() + first * bits / 8;
      if (!detail::convert_stored<T>(from, info.dtype, host.raw() + o * (end - begin) * inner, run, path_,
                                     info.name)) {
        throw ValueError(detail::concat("safetensors file '", path_, "': tensor '", info.name, "' is stored as ",
                                        dtype_name(info.dtype), " and cannot be loaded as ", tessera::dtype_name<T>()));
      }
    }
    if constexpr (is_cpu_v<D>) {
      return host;
    } else {
      return to<D>(host);
    }
  }

  // Reads a tensor into an existing CPU tensor of the same shape.
  template <Device D, DType T>
    requires is_cpu_v<D>
  void load_into(const TensorInfo& info, Tensor<D, T>& out) const {
    if (!(out.shape() == info.shape)) {
      throw ShapeError(detail::concat("safetensors file '", path_, "': tensor '", info.name, "' has shape ",
                                      info.shape.to_string(), " but the destination has shape ",
                                      out.shape().to_string()));
    }
    read_into(info, out.raw());
  }

 private:
  SafetensorsFile() = default;

  void init() {
    header_ = detail::parse_safetensors_header(file_, path_);
    for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
  }

  template <DType T>
  void read_into(const TensorInfo& info, T* dst) const {
    const auto src = bytes(info);
    const auto n = static_cast<std::size_t>(info.numel());
    if (n == 0) return;
    if (!detail::convert_stored<T>(src.data(), info.dtype, dst, n, path_, info.name)) {
      throw ValueError(detail::concat(
          "safetensors file '", path_, "': tensor '", info.name, "' is stored as ", dtype_name(info.dtype),
          " and cannot be loaded as ", tessera::dtype_name<T>(),
          " (supported: F32/BF16/F16/F64 to float32/bf16/f16; BOOL and 8- to 64-bit integers to int32/int64)"));
    }
  }

  std::string path_;
  detail::MappedFile map_;
  std::vector<std::byte> owned_;
  std::span<const std::byte> file_;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// ---- writer -------------------------------------------------------------------

// One tensor to write: raw little-endian bytes of `shape` elements of `dtype`.
struct SafetensorsEntry {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::F32;
  Shape shape;
  std::span<const std::byte> data;
};

// An entry viewing a CPU tensor's storage (the tensor must outlive the write).
template <Device D, DType T>
  requires is_cpu_v<D>
SafetensorsEntry safetensors_entry(std::string name, const Tensor<D, T>& t) {
  return {std::move(name), safetensors_dtype_of<T>(), t.shape(),
          std::span<const std::byte>(reinterpret_cast<const std::byte*>(t.raw()), t.bytes())};
}

// Writes a safetensors file as the reference writer lays it out: tensors
// sorted by dtype (widest first) then name, contiguous; the JSON header
// padded with spaces to a multiple of 8 bytes; "__metadata__" first when not
// empty. Throws ValueError on bad entries, IoError when writing fails.
inline void save_safetensors(const std::filesystem::path& path, std::vector<SafetensorsEntry> entries,
                             const std::map<std::string, std::string>& metadata = {}) {
  const std::string where = path.string();
  std::stable_sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.dtype != b.dtype ? a.dtype > b.dtype : a.name < b.name;
  });
  std::set<std::string, std::less<>> names;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& e : entries) {
    if (e.name == "__metadata__" || !names.insert(e.name).second) {
      throw ValueError(detail::concat("save_safetensors '", where, "': tensor name '", e.name,
                                      e.name == "__metadata__" ? "' is reserved" : "' is used twice"));
    }
    std::uint64_t nbits = static_cast<std::uint64_t>(e.shape.numel()) * dtype_bits(e.dtype);
    if (nbits % 8 != 0 || nbits / 8 != e.data.size()) {
      throw ValueError(detail::concat("save_safetensors '", where, "': tensor '", e.name, "' of shape ",
                                      e.shape.to_string(), " and dtype ", dtype_name(e.dtype), " needs ", nbits / 8,
                                      " bytes but ", e.data.size(), " were given"));
    }
    std::vector<std::int64_t> dims(e.shape.dims().begin(), e.shape.dims().end());
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", dims},
                      {"data_offsets", {offset, offset + e.data.size()}}};
    offset += e.data.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::array<char, 8> prefix{};
  std::uint64_t n = text.size();
  for (auto& c : prefix) {
    c = static_cast<char>(n & 0xffu);
    n >>= 8;
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw IoError(detail::concat("cannot create safetensors file '", where, "': ", std::strerror(errno)));
  out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& e : entries) {
    out.write(reinterpret_cast<const char*>(e.data.data()), static_cast<std::streamsize>(e.data.size()));
  }
  out.close();
  if (!out) throw IoError(detail::concat("writing safetensors file '", where, "' failed"));
}

}  // namespace tessera::io
