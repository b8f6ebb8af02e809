// SPDX-License-Identifier: MIT
#pragma once
/// \file dispatch.h
/// \brief Runtime -> compile-time switches for the two template axes: code bits and head dim.
///
/// Usage (FlashInfer `DISPATCH_HEAD_DIM` style; the body is a statement block in which the named
/// constant is a `constexpr int`):
/// \code
///   TURBOESM_DISPATCH_BITS(bits, BITS, { run<BITS>(args); });
///   TURBOESM_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, { launch<HEAD_DIM>(params, stream); });
/// \endcode
/// The default case throws turboesm::Error naming the value and the supported list. The macros are
/// host code (they may throw); they compile under nvcc in .cu host functions. Keep the case lists
/// identical to the lists below and to the compiled kernel instantiations.

#include "turboesm/error.h"

namespace turboesm::quant {

/// Code widths the quant core supports (bits of the scalar codes per value).
inline constexpr int kSupportedBits[] = {1, 2, 3, 4};
/// ESM-2 head dims: 8M (16), 35M (24), 150M (32), 650M/3B (64), 15B (128).
inline constexpr int kSupportedHeadDims[] = {16, 24, 32, 64, 128};
/// Largest supported head dim (sizes fixed scratch buffers).
inline constexpr int kMaxHeadDim = 128;

/// \brief True when `bits` is one of kSupportedBits.
constexpr bool is_supported_bits(int bits) { return bits >= 1 && bits <= 4; }

/// \brief True when `head_dim` is one of kSupportedHeadDims.
constexpr bool is_supported_head_dim(int head_dim) {
  for (int d : kSupportedHeadDims)
    if (d == head_dim) return true;
  return false;
}

}  // namespace turboesm::quant

#define TURBOESM_DISPATCH_CASE_(NAME, VALUE, ...) \
  case VALUE: {                                   \
    constexpr int NAME = VALUE;                   \
    __VA_ARGS__                                   \
    break;                                        \
  }

/// Dispatches a runtime bit width (1..4) to `constexpr int BITS`.
#define TURBOESM_DISPATCH_BITS(bits, BITS, ...)                                \
  switch (bits) {                                                              \
    TURBOESM_DISPATCH_CASE_(BITS, 1, __VA_ARGS__)                              \
    TURBOESM_DISPATCH_CASE_(BITS, 2, __VA_ARGS__)                              \
    TURBOESM_DISPATCH_CASE_(BITS, 3, __VA_ARGS__)                              \
    TURBOESM_DISPATCH_CASE_(BITS, 4, __VA_ARGS__)                              \
    default:                                                                   \
      TURBOESM_FAIL("unsupported bits: ", (bits), " (supported: 1, 2, 3, 4)"); \
  }

/// Dispatches a runtime head dim to `constexpr int HEAD_DIM` (16, 24, 32, 64, 128).
#define TURBOESM_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, ...)                                     \
  switch (head_dim) {                                                                           \
    TURBOESM_DISPATCH_CASE_(HEAD_DIM, 16, __VA_ARGS__)                                          \
    TURBOESM_DISPATCH_CASE_(HEAD_DIM, 24, __VA_ARGS__)                                          \
    TURBOESM_DISPATCH_CASE_(HEAD_DIM, 32, __VA_ARGS__)                                          \
    TURBOESM_DISPATCH_CASE_(HEAD_DIM, 64, __VA_ARGS__)                                          \
    TURBOESM_DISPATCH_CASE_(HEAD_DIM, 128, __VA_ARGS__)                                         \
    default:                                                                                    \
      TURBOESM_FAIL("unsupported head_dim: ", (head_dim), " (supported: 16, 24, 32, 64, 128)"); \
  }
