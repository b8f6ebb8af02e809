// SPDX-License-Identifier: MIT
#pragma once
/// \file half.h
/// \brief IEEE fp16 and bfloat16 <-> float conversion on host and device, bit-exact everywhere.
///
/// The compressed cache stores per-token norms as fp16 bit patterns (`uint16_t`), so that the CPU
/// reference and the CUDA kernel read identical bytes without depending on `__half` or `_Float16`.
/// Conversions round to nearest, ties to even (as `__float2half_rn` and numpy do); NaN stays NaN,
/// overflow becomes ±inf, subnormals are handled exactly.

#include <cstdint>
#include <cstring>

#include "turboesm/quant/host_device.h"

namespace turboesm::quant {

/// \brief Bit pattern of a float (memcpy on host, an intrinsic on device).
TURBOESM_HOST_DEVICE inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

/// \brief Float with the given bit pattern.
TURBOESM_HOST_DEVICE inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

/// \brief float -> IEEE binary16 bits, round to nearest even.
TURBOESM_HOST_DEVICE inline uint16_t float_to_half_bits(float value) {
  const uint32_t f = float_bits(value);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t exp = (f >> 23) & 0xffu;
  uint32_t mant = f & 0x7fffffu;
  if (exp == 0xffu) {  // inf or NaN (keep NaN quiet and non-zero)
    return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  }
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {                                                 // subnormal half or zero
    if (e < -10) return static_cast<uint16_t>(sign);            // rounds to zero
    mant |= 0x800000u;                                          // implicit leading one
    const int shift = 14 - e;                                   // 14..24
    uint32_t half_mant = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_mant & 1u))) ++half_mant;
    return static_cast<uint16_t>(sign | half_mant);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: correct
  return static_cast<uint16_t>(sign | h);
}

/// \brief IEEE binary16 bits -> float (exact).
TURBOESM_HOST_DEVICE inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: value = mant * 2^-24, exactly representable in float.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

/// \brief float -> bfloat16 bits, round to nearest even (NaN stays NaN).
TURBOESM_HOST_DEVICE inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t f = float_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((f >> 16) & 1u);
  return static_cast<uint16_t>((f + rounding) >> 16);
}

/// \brief bfloat16 bits -> float (exact).
TURBOESM_HOST_DEVICE inline float bf16_bits_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

/// Largest finite fp16 value; norms above it cannot be stored.
inline constexpr float kHalfMax = 65504.0f;

}  // namespace turboesm::quant
