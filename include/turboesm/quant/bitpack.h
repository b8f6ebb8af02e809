// SPDX-License-Identifier: MIT
#pragma once
/// \file bitpack.h
/// \brief Packing of 1-, 2-, 3- and 4-bit codes at true density, host and device.
///
/// ## Layout (the contract read by the CUDA decode kernel)
/// Codes form one little-endian bit stream: code `i` of a `bits`-bit sequence occupies stream bits
/// `[i*bits, (i+1)*bits)`, its least significant bit first; stream bit `k` is bit `k % 8` (LSB = 0)
/// of byte `k / 8`. Consequences:
///  - 1, 2, 4 bits: 8, 4, 2 codes per byte, code `i` at bit `(i*bits) % 8` of byte `i*bits/8`.
///  - 3 bits: every group of 8 codes is one 24-bit little-endian word
///    `w = b[0] | b[1] << 8 | b[2] << 16`, code `i` of the group = `(w >> 3*i) & 7`
///    (codes 2 and 5 straddle a byte boundary).
///  - A sequence of `n` codes takes `ceil(n*bits/8)` bytes; unused high bits of the last byte are
///  0.
/// QJL sign bits use the same layout with `bits = 1`.
///
/// `*_ref` functions are the plain bit-by-bit definition; the templated functions are the fast
/// paths (whole groups of 8 codes = `BITS` bytes at a time) and must produce identical bytes.

#include <cstddef>
#include <cstdint>

#include "turboesm/error.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/host_device.h"

namespace turboesm::quant {

/// \brief Bytes taken by `n` codes of `bits` bits (no padding beyond the last byte).
TURBOESM_HOST_DEVICE constexpr size_t packed_size(size_t n, int bits) {
  return (n * static_cast<size_t>(bits) + 7) / 8;
}

/// \brief Reads code `i` of a packed `bits`-bit stream (any bits in 1..8), host or device.
/// Never reads beyond byte `packed_size(i + 1, bits) - 1`.
TURBOESM_HOST_DEVICE inline uint32_t unpack_one(const uint8_t* packed, size_t i, int bits) {
  const size_t bit = i * static_cast<size_t>(bits);
  const size_t byte = bit >> 3;
  const unsigned shift = static_cast<unsigned>(bit & 7u);
  uint32_t v = packed[byte];
  if (shift + static_cast<unsigned>(bits) > 8u) v |= static_cast<uint32_t>(packed[byte + 1]) << 8;
  return (v >> shift) & ((1u << bits) - 1u);
}

/// \brief Reference packer: writes `codes[0..n)` bit by bit.
/// \param codes [n] values in [0, 2^bits)
/// \param out   [packed_size(n, bits)] bytes, fully overwritten
inline void pack_codes_ref(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  TURBOESM_CHECK(bits >= 1 && bits <= 8, "pack_codes_ref: bits must be in 1..8, got ", bits);
  const size_t bytes = packed_size(n, bits);
  for (size_t b = 0; b < bytes; ++b) out[b] = 0;
  for (size_t i = 0; i < n; ++i) {
    TURBOESM_CHECK(codes[i] < (1u << bits), "pack_codes_ref: code ", static_cast<int>(codes[i]),
                   " at index ", i, " does not fit in ", bits, " bits");
    for (int k = 0; k < bits; ++k) {
      const size_t s = i * static_cast<size_t>(bits) + static_cast<size_t>(k);
      out[s >> 3] = static_cast<uint8_t>(out[s >> 3] | (((codes[i] >> k) & 1u) << (s & 7u)));
    }
  }
}

/// \brief Reference unpacker (bit by bit).
/// \param packed [packed_size(n, bits)]
/// \param codes  [n] output codes
inline void unpack_codes_ref(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  TURBOESM_CHECK(bits >= 1 && bits <= 8, "unpack_codes_ref: bits must be in 1..8, got ", bits);
  for (size_t i = 0; i < n; ++i) {
    uint32_t c = 0;
    for (int k = 0; k < bits; ++k) {
      const size_t s = i * static_cast<size_t>(bits) + static_cast<size_t>(k);
      c |= static_cast<uint32_t>((packed[s >> 3] >> (s & 7u)) & 1u) << k;
    }
    codes[i] = static_cast<uint8_t>(c);
  }
}

namespace detail {
/// Packs `count` (<= 8) codes into a little-endian word of `count*BITS` bits.
template <int BITS>
TURBOESM_FORCE_INLINE uint32_t pack_word(const uint8_t* codes, size_t count) {
  uint32_t w = 0;
  for (size_t k = 0; k < count; ++k) w |= static_cast<uint32_t>(codes[k]) << (BITS * k);
  return w;
}
}  // namespace detail

/// \brief Fast packer: 8 codes -> `BITS` bytes per step, tail handled. Codes must be < 2^BITS
/// (not checked here; use `pack_codes_ref` to validate untrusted codes).
/// \param codes [n]
/// \param out   [packed_size(n, BITS)]
template <int BITS>
TURBOESM_HOST_DEVICE inline void pack_codes(const uint8_t* codes, size_t n, uint8_t* out) {
  static_assert(BITS >= 1 && BITS <= 4, "pack_codes: BITS must be in 1..4");
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint32_t w = 0;
    TURBOESM_UNROLL
    for (int k = 0; k < 8; ++k) w |= static_cast<uint32_t>(codes[8 * g + k]) << (BITS * k);
    TURBOESM_UNROLL
    for (int b = 0; b < BITS; ++b) out[BITS * g + b] = static_cast<uint8_t>(w >> (8 * b));
  }
  const size_t rem = n - 8 * groups;
  if (rem) {
    uint32_t w = 0;
    for (size_t k = 0; k < rem; ++k)
      w |= static_cast<uint32_t>(codes[8 * groups + k]) << (BITS * k);
    const size_t tail_bytes = packed_size(rem, BITS);
    for (size_t b = 0; b < tail_bytes; ++b)
      out[BITS * groups + b] = static_cast<uint8_t>(w >> (8 * b));
  }
}

/// \brief Fast unpacker: `BITS` bytes -> 8 codes per step, tail handled.
/// \param packed [packed_size(n, BITS)]
/// \param codes  [n]
template <int BITS>
TURBOESM_HOST_DEVICE inline void unpack_codes(const uint8_t* packed, size_t n, uint8_t* codes) {
  static_assert(BITS >= 1 && BITS <= 4, "unpack_codes: BITS must be in 1..4");
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint32_t w = 0;
    TURBOESM_UNROLL
    for (int b = 0; b < BITS; ++b) w |= static_cast<uint32_t>(packed[BITS * g + b]) << (8 * b);
    TURBOESM_UNROLL
    for (int k = 0; k < 8; ++k) codes[8 * g + k] = static_cast<uint8_t>((w >> (BITS * k)) & kMask);
  }
  const size_t rem = n - 8 * groups;
  if (rem) {
    uint32_t w = 0;
    const size_t tail_bytes = packed_size(rem, BITS);
    for (size_t b = 0; b < tail_bytes; ++b)
      w |= static_cast<uint32_t>(packed[BITS * groups + b]) << (8 * b);
    for (size_t k = 0; k < rem; ++k)
      codes[8 * groups + k] = static_cast<uint8_t>((w >> (BITS * k)) & kMask);
  }
}

/// \brief Fast unpack + table look-up: `out[i] = scale * lut[code_i]`.
/// This is the decode inner loop (lut = codebook centroids, scale = token norm).
/// \param packed [packed_size(n, BITS)]
/// \param lut    [2^BITS]
/// \param out    [n]
template <int BITS>
TURBOESM_HOST_DEVICE inline void unpack_lut(const uint8_t* packed, size_t n, const float* lut,
                                            float scale, float* out) {
  static_assert(BITS >= 1 && BITS <= 4, "unpack_lut: BITS must be in 1..4");
  constexpr uint32_t kMask = (1u << BITS) - 1u;
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint32_t w = 0;
    TURBOESM_UNROLL
    for (int b = 0; b < BITS; ++b) w |= static_cast<uint32_t>(packed[BITS * g + b]) << (8 * b);
    TURBOESM_UNROLL
    for (int k = 0; k < 8; ++k) out[8 * g + k] = scale * lut[(w >> (BITS * k)) & kMask];
  }
  for (size_t i = 8 * groups; i < n; ++i) out[i] = scale * lut[unpack_one(packed, i, BITS)];
}

/// \brief Reference of `unpack_lut`: one code at a time through `unpack_one`.
inline void unpack_lut_ref(const uint8_t* packed, size_t n, int bits, const float* lut, float scale,
                           float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = scale * lut[unpack_one(packed, i, bits)];
}

/// \brief Runtime-bits front end of `pack_codes<BITS>` (bits in 1..4, else turboesm::Error).
inline void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  TURBOESM_DISPATCH_BITS(bits, BITS, { pack_codes<BITS>(codes, n, out); });
}

/// \brief Runtime-bits front end of `unpack_codes<BITS>` (bits in 1..4, else turboesm::Error).
inline void unpack_codes(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  TURBOESM_DISPATCH_BITS(bits, BITS, { unpack_codes<BITS>(packed, n, codes); });
}

}  // namespace turboesm::quant
