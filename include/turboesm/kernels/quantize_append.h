// SPDX-License-Identifier: MIT
#pragma once
/// \file quantize_append.h
/// \brief Fused quantize-on-append (CUDA): center, norm, rotate, scale, encode, pack and QJL for
/// the new K or V rows of a prefill or decode step, written into the cache pages in place.
///
/// Token i < counts[b] of sequence b, head h (row x[b, h, i, :]) is written to cache position
/// starts[b] + i of (b, h): page (starts[b] + i) / page_tokens, slot (starts[b] + i) % page_tokens,
/// in the format.h layout. The arithmetic is TurboQuantizer::encode's, operation for operation
/// (separately rounded multiplies and adds in the same order, double-precision norms): with a
/// dense rotation the pages are byte-identical to the CPU encoder's. (A rotation that the CPU
/// applies by fast Walsh–Hadamard transform rounds differently; the kernel always uses the dense
/// Π from HeadConstantsView, so a code may then differ by one level for values within rounding
/// of a decision boundary.)
///
/// Bad rows cannot throw on the device: a row with a non-finite value (or, with NormMode::kToken,
/// a norm above the fp16 range) is still written (as the CPU would have refused it, its bytes are
/// unspecified) and sets `*status |= kQuantizeAppendBadRow` when `status` is given; a position past
/// the cache capacity is skipped and sets kQuantizeAppendOutOfCapacity. The caller checks `status`
/// when it synchronises anyway.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboesm/quant/cache_view.h"

namespace turboesm::kernels {

/// Status bits written by quantize_append into QuantizeAppendParams::status.
inline constexpr int kQuantizeAppendBadRow = 1;         ///< non-finite row or norm > fp16 max
inline constexpr int kQuantizeAppendOutOfCapacity = 2;  ///< position ≥ max_pages · page_tokens

/// \brief One quantize-on-append call (all pointers DEVICE pointers).
struct QuantizeAppendParams {
  int batch = 0;
  int heads = 0;
  int head_dim = 0;          ///< d (16, 24, 32, 64 or 128)
  int new_tokens = 0;        ///< Tnew: rows per (sequence, head) in x
  const float* x = nullptr;  ///< [batch, heads, new_tokens, head_dim] fp32 (post-RoPE K, or V)
  const int32_t* starts = nullptr;  ///< [batch] cache position of row 0 (the old length)
  const int32_t* counts = nullptr;  ///< [batch] rows to write (≤ new_tokens), nullptr = all
  quant::CacheView cache{};         ///< target pages + this layer's K or V constants
  int* status = nullptr;            ///< optional: OR of kQuantizeAppend* bits (never cleared)
};

/// \brief Why `p` cannot be run by quantize_append, or nullptr when it can (host-side checks).
const char* quantize_append_invalid_reason(const QuantizeAppendParams& p);

/// \brief Launches quantize-on-append on `stream` (no allocation, no synchronisation).
/// \return cudaSuccess, cudaErrorInvalidValue when quantize_append_invalid_reason(p) != nullptr,
///         or the launch error
cudaError_t quantize_append(const QuantizeAppendParams& p, cudaStream_t stream);

}  // namespace turboesm::kernels
