// tessera/core/dtype.hpp — element types. bf16 and f16 are 2-byte structs
// with the exact bit layout of CUDA's __nv_bfloat16 and __half, so device
// buffers can be reinterpreted by kernels, and they work on the host (where
// the CPU backend converts them to float for compute). Conversions from float
// round to nearest, ties to even, exactly as CUDA's __float2bfloat16_rn and
// __float2half_rn do.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

namespace tessera {

namespace detail {

constexpr std::uint16_t float_to_bf16_bits(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // keep NaN a quiet NaN
  }
  const std::uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding_bias) >> 16);
}

constexpr float bf16_bits_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

constexpr std::uint16_t float_to_f16_bits(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x0200u : 0u));
  }
  if (abs >= 0x477ff000u) {  // rounds to a magnitude >= 65520: overflow to inf
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  const int exponent = static_cast<int>(abs >> 23) - 127;
  if (exponent < -25) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
  std::uint32_t mantissa = (abs & 0x007fffffu) | 0x00800000u;  // implicit leading one
  // Normal halves keep 10 fraction bits (shift 13); subnormals shift further.
  const int shift = exponent < -14 ? 13 + (-14 - exponent) : 13;
  const std::uint32_t kept = mantissa >> shift;
  const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1);
  std::uint32_t rounded = kept + ((remainder > halfway || (remainder == halfway && (kept & 1u))) ? 1u : 0u);
  if (exponent < -14) return static_cast<std::uint16_t>(sign | rounded);  // carries into normal
  // rounded holds 1.fraction as 11 bits; a carry to 12 bits bumps the exponent.
  std::uint32_t biased = static_cast<std::uint32_t>(exponent + 15);
  if (rounded & 0x800u) {
    rounded >>= 1;
    ++biased;
  }
  return static_cast<std::uint16_t>(sign | (biased << 10) | (rounded & 0x3ffu));
}

constexpr float f16_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  std::uint32_t fraction = h & 0x3ffu;
  if (exponent == 0x1fu) return std::bit_cast<float>(sign | 0x7f800000u | (fraction << 13));
  if (exponent == 0) {
    if (fraction == 0) return std::bit_cast<float>(sign);
    int e = -1;  // normalise the subnormal
    do {
      ++e;
      fraction <<= 1;
    } while ((fraction & 0x400u) == 0);
    return std::bit_cast<float>(sign | (static_cast<std::uint32_t>(112 - e) << 23) |
                                ((fraction & 0x3ffu) << 13));
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (fraction << 13));
}

}  // namespace detail

// bfloat16: 1 sign, 8 exponent, 7 fraction bits (the top half of a float).
struct bf16 {
  std::uint16_t bits = 0;
  constexpr bf16() = default;
  constexpr explicit bf16(float v) : bits(detail::float_to_bf16_bits(v)) {}
  static constexpr bf16 from_bits(std::uint16_t b) {
    bf16 r;
    r.bits = b;
    return r;
  }
  constexpr explicit operator float() const { return detail::bf16_bits_to_float(bits); }
  friend constexpr bool operator==(bf16 a, bf16 b) { return float(a) == float(b); }
};

// IEEE binary16: 1 sign, 5 exponent, 10 fraction bits.
struct f16 {
  std::uint16_t bits = 0;
  constexpr f16() = default;
  constexpr explicit f16(float v) : bits(detail::float_to_f16_bits(v)) {}
  static constexpr f16 from_bits(std::uint16_t b) {
    f16 r;
    r.bits = b;
    return r;
  }
  constexpr explicit operator float() const { return detail::f16_bits_to_float(bits); }
  friend constexpr bool operator==(f16 a, f16 b) { return float(a) == float(b); }
};

static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);
static_assert(sizeof(f16) == 2 && alignof(f16) == 2 && std::is_trivially_copyable_v<f16>);

// The element types a Tensor may hold.
template <class T>
concept DType = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16> ||
                std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t>;

// Floating-point element types (what compute ops accept).
template <class T>
concept FloatType = std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

template <class T>
concept IndexType = std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int64_t>;

template <DType T>
constexpr std::string_view dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, bf16>) return "bf16";
  else if constexpr (std::is_same_v<T, f16>) return "f16";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "int32";
  else return "int64";
}

// Element conversion used by every CPU kernel: bf16/f16 compute in float.
template <class To, class From>
constexpr To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, bf16> || std::is_same_v<From, f16>) {
    return convert<To>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bf16> || std::is_same_v<To, f16>) {
    return To(static_cast<float>(v));
  } else {
    return static_cast<To>(v);
  }
}

}  // namespace tessera

// Under nvcc the layouts are checked against CUDA's own types.
#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
static_assert(sizeof(tessera::bf16) == sizeof(__nv_bfloat16) &&
              alignof(tessera::bf16) == alignof(__nv_bfloat16));
static_assert(sizeof(tessera::f16) == sizeof(__half) && alignof(tessera::f16) == alignof(__half));
#endif
