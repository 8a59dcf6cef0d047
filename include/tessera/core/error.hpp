// tessera/core/error.hpp — the error hierarchy. Every failure tessera reports
// at run time is a tessera::Error, so callers can catch one type; subclasses
// say what kind of thing went wrong. Messages always name where (device,
// tensor, op, file) and what was expected.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("tessera: " + what) {}
};

// An allocation did not fit a device's budget (or the device itself).
class OutOfMemory : public Error {
 public:
  OutOfMemory(std::string device, std::uint64_t requested, std::uint64_t live,
              std::uint64_t budget, const std::string& what)
      : Error(what), device_(std::move(device)), requested_(requested), live_(live),
        budget_(budget) {}
  const std::string& device() const noexcept { return device_; }
  std::uint64_t requested_bytes() const noexcept { return requested_; }
  std::uint64_t live_bytes() const noexcept { return live_; }
  std::uint64_t budget_bytes() const noexcept { return budget_; }

 private:
  std::string device_;
  std::uint64_t requested_, live_, budget_;
};

// Shapes, ranks or sizes that an op cannot accept.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A value outside its valid range (a token id past the vocabulary, k > n, ...).
class ValueError : public Error {
 public:
  using Error::Error;
};

// A device that is missing, or a backend this build does not have.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// A file whose contents are malformed (a safetensors header, a config, ...).
// The message names the file and, where it applies, the entry and byte offset.
class FormatError : public Error {
 public:
  using Error::Error;
};

// A file that cannot be opened, mapped, read or written.
class IoError : public Error {
 public:
  using Error::Error;
};

// A collective (NCCL, MPI) that failed or did not finish within its
// timeout; the message names the backend, the rank and the operation.
class CommError : public Error {
 public:
  using Error::Error;
};

// A placement that cannot work: a plan over a budget, a head count a
// tensor-parallel group does not divide, a pin to a stage that does not
// exist. Raised before any weight is loaded.
class PlanError : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Builds a message from streamable parts: concat("op ", name, " got ", n).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace tessera
