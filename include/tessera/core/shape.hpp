// tessera/core/shape.hpp — dynamic shapes (rank <= 8) and strides. Batch,
// sequence and image-token counts are run-time values, so shapes are too.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>

#include "error.hpp"

namespace tessera {

inline constexpr int kMaxRank = 8;

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) : Shape(std::span(dims.begin(), dims.size())) {}
  explicit Shape(std::span<const std::int64_t> dims) {
    if (dims.size() > static_cast<std::size_t>(kMaxRank)) {
      throw ShapeError(detail::concat("rank ", dims.size(), " exceeds the maximum rank ", kMaxRank));
    }
    for (std::int64_t d : dims) {
      if (d < 0) throw ShapeError(detail::concat("negative dimension ", d, " in a shape"));
      dims_[rank_++] = d;
    }
  }

  int rank() const noexcept { return rank_; }
  // Dimension i; negative i counts from the end (-1 is the last dimension).
  std::int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(axis(i))]; }
  std::int64_t& operator[](int i) { return dims_[static_cast<std::size_t>(axis(i))]; }
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  std::span<const std::int64_t> dims() const noexcept { return {dims_.data(), static_cast<std::size_t>(rank_)}; }

  // Normalises a possibly negative axis, throwing if it is out of range.
  int axis(int i) const {
    const int a = i < 0 ? i + rank_ : i;
    if (a < 0 || a >= rank_) {
      throw ShapeError(detail::concat("axis ", i, " is out of range for rank ", rank_, " shape ",
                                      to_string()));
    }
    return a;
  }

  void push_back(std::int64_t d) {
    if (rank_ == kMaxRank) throw ShapeError("shape rank would exceed the maximum rank 8");
    dims_[static_cast<std::size_t>(rank_++)] = d;
  }

  std::string to_string() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims_[static_cast<std::size_t>(i)]);
    }
    return s + "]";
  }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.dims_.begin(), a.dims_.begin() + a.rank_, b.dims_.begin());
  }
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.to_string(); }

 private:
  std::array<std::int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

// Element strides (not bytes). Row-major contiguous strides for a shape.
using Strides = std::array<std::int64_t, kMaxRank>;

inline Strides contiguous_strides(const Shape& shape) {
  Strides s{};
  std::int64_t step = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    s[static_cast<std::size_t>(i)] = step;
    step *= shape[i];
  }
  return s;
}

inline bool is_contiguous(const Shape& shape, const Strides& strides) {
  std::int64_t step = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    if (shape[i] != 1 && strides[static_cast<std::size_t>(i)] != step) return false;
    step *= shape[i];
  }
  return true;
}

}  // namespace tessera
