// tessera/core/copy_strided.hpp — element copies between strided layouts in
// CPU memory: what to<>, contiguous() and the materialising shape ops run on
// CPU slots (and on the host side of a transfer).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "shape.hpp"

namespace tessera {

namespace detail {

// Copies the elements of a `shape`-shaped strided source into a strided
// destination, element for element and bit for bit, for any element type
// (the two strides describe the same logical shape; CPU memory only). When
// both are contiguous it is one memcpy; otherwise runs along the last
// dimension are memcpy'd when both are unit-stride. When the destination's
// last dimension is unit-stride but the source's is not, and another source
// dimension is unit-stride (a transpose), the copy goes in square tiles so
// both sides stay in cache. tessera::to / contiguous and the materialising
// shape ops (ops::concat, ops::transpose, ...) all copy through here.
template <class T>
void copy_strided(T* dst, const Strides& dst_strides, const T* src, const Strides& src_strides,
                  const Shape& shape) {
  const int rank = shape.rank();
  const std::int64_t n = shape.numel();
  if (n == 0) return;
  if (is_contiguous(shape, dst_strides) && is_contiguous(shape, src_strides)) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(T));  // rank 0 too
    return;
  }
  const auto last = static_cast<std::size_t>(rank - 1);
  // Tiled path: find the source's unit-stride dimension other than the last.
  int unit = -1;
  if (rank >= 2 && dst_strides[last] == 1 && src_strides[last] != 1 && shape[rank - 1] > 1) {
    for (int d = rank - 2; d >= 0; --d) {
      if (src_strides[static_cast<std::size_t>(d)] == 1 && shape[d] > 1) {
        unit = d;
        break;
      }
    }
  }
  if (unit >= 0) {
    // Outer dimensions: all but `unit` and the last, walked with an odometer.
    std::array<std::int64_t, kMaxRank> odims{}, ods{}, oss{}, index{};
    int orank = 0;
    for (int d = 0; d < rank - 1; ++d) {
      if (d == unit) continue;
      const auto ud = static_cast<std::size_t>(d);
      const auto uo = static_cast<std::size_t>(orank++);
      odims[uo] = shape[d];
      ods[uo] = dst_strides[ud];
      oss[uo] = src_strides[ud];
    }
    const std::int64_t rows = shape[unit], cols = shape[rank - 1];
    const std::int64_t dst_row = dst_strides[static_cast<std::size_t>(unit)];
    const std::int64_t src_col = src_strides[last];
    std::int64_t outer = 1;
    for (int d = 0; d < orank; ++d) outer *= odims[static_cast<std::size_t>(d)];
    constexpr std::int64_t kTile = 8;  // measured best of 4..64 for 2-, 4- and 8-byte elements
    std::int64_t doff = 0, soff = 0;
    for (std::int64_t o = 0; o < outer; ++o) {
      T* dbase = dst + doff;
      const T* sbase = src + soff;
      for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const std::int64_t r1 = std::min(rows, r0 + kTile);
        for (std::int64_t c0 = 0; c0 < cols; c0 += kTile) {
          const std::int64_t c1 = std::min(cols, c0 + kTile);
          for (std::int64_t r = r0; r < r1; ++r) {
            T* drow = dbase + r * dst_row;
            const T* scol = sbase + r;
            for (std::int64_t c = c0; c < c1; ++c) drow[c] = scol[c * src_col];
          }
        }
      }
      for (int d = orank - 1; d >= 0; --d) {
        const auto ud = static_cast<std::size_t>(d);
        doff += ods[ud];
        soff += oss[ud];
        if (++index[ud] < odims[ud]) break;
        doff -= ods[ud] * odims[ud];
        soff -= oss[ud] * odims[ud];
        index[ud] = 0;
      }
    }
    return;
  }
  // Row path: odometer over all but the last dimension, one run per row.
  const std::int64_t inner = shape[rank - 1];
  const std::int64_t dstep = dst_strides[last], sstep = src_strides[last];
  std::array<std::int64_t, kMaxRank> index{};
  std::int64_t doff = 0, soff = 0;
  for (std::int64_t row = 0, rows = n / inner; row < rows; ++row) {
    T* d = dst + doff;
    const T* s = src + soff;
    if (dstep == 1 && sstep == 1) {
      std::memcpy(d, s, static_cast<std::size_t>(inner) * sizeof(T));
    } else {
      for (std::int64_t i = 0; i < inner; ++i) d[i * dstep] = s[i * sstep];
    }
    for (int dd = rank - 2; dd >= 0; --dd) {
      const auto ud = static_cast<std::size_t>(dd);
      doff += dst_strides[ud];
      soff += src_strides[ud];
      if (++index[ud] < shape[dd]) break;
      doff -= dst_strides[ud] * shape[dd];
      soff -= src_strides[ud] * shape[dd];
      index[ud] = 0;
    }
  }
}

// Copies a strided CPU view into contiguous memory, row-major order.
template <class T>
void gather_strided(T* dst, const T* src, const Shape& shape, const Strides& strides) {
  copy_strided(dst, contiguous_strides(shape), src, strides, shape);
}

}  // namespace detail

}  // namespace tessera
