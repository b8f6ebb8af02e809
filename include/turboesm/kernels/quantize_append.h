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
/// Two paths compute this (QuantizeAppendParams::path):
/// - kRows, "exact": one warp per row, the d×d rotation as separately rounded multiplies and adds
///   in the host's order (above). Used for appends of few rows and as the reference; the graph
///   decode step runs the same per-row device function inside the attention launch
///   (turbo_decode_append, turbo_decode.h), so its pages are the same bytes.
/// - kTile, "prefill": a CTA encodes a tile of 128 rows of one (sequence, head); the rotation
///   Y = Xc·Πᵀ runs on tensor cores: fp16 rows that are not centered go through fp16 MMAs (the
///   rows are exact fp16 operands; Π split into fp16 hi + lo·2^-12 parts, ~22 bits), all other
///   rows through 3xTF32 (each fp32 operand split into a TF32 high and low part, hi·hi + hi·lo +
///   lo·hi); a part that is zero everywhere (an exact operand: fp16/bf16 rows, a Hadamard Π) is
///   skipped. Per k-step one fresh accumulator, IEEE-rounded adds across k-steps: relative error
///   of the order of an fp32 GEMM's, ~1e-7. The rest (centering, double-precision norm in
///   increasing j for token norms, scaling, codes, packing, sign bits) is the exact path's
///   arithmetic, one or two lanes per row. A code can differ from the exact path's by one level
///   only for a value within that error of a decision boundary (tests count them: ≤ 1e-6 of
///   values). No `prod` QJL (its S·r projection stays on kRows). Π's fp16 parts come pre-split
///   from the cache when it has them (HeadConstantsView::rotation_f16: the model's CUDA caches
///   do), else every CTA splits Π itself: the same bits either way.
/// kAuto takes kTile for new_tokens ≥ kQuantizeAppendTileMinTokens without prod QJL, else kRows.
///
/// Bad rows cannot throw on the device: a row with a non-finite value (or, with NormMode::kToken,
/// a norm above the fp16 range) is still written (as the CPU would have refused it, its bytes are
/// unspecified) and sets `*status |= kQuantizeAppendBadRow` when `status` is given; a position past
/// the cache capacity is skipped and sets kQuantizeAppendOutOfCapacity. The caller checks `status`
/// when it synchronises anyway.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboesm/kernels/element_type.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/half.h"

namespace turboesm::kernels {

/// Status bits written by quantize_append into QuantizeAppendParams::status.
inline constexpr int kQuantizeAppendBadRow = 1;         ///< non-finite row or norm > fp16 max
inline constexpr int kQuantizeAppendOutOfCapacity = 2;  ///< position ≥ max_pages · page_tokens

/// Element type of the input rows (the model dtype: no conversion pass is needed before the call).
using AppendInput = ElementType;

/// Which kernel encodes the rows (see the file comment).
enum class AppendPath : int { kAuto = 0, kRows = 1, kTile = 2 };

/// kAuto uses the tile path from this many new tokens per sequence on.
inline constexpr int kQuantizeAppendTileMinTokens = 32;

/// \brief One quantize-on-append call (all pointers DEVICE pointers).
struct QuantizeAppendParams {
  int batch = 0;
  int heads = 0;
  int head_dim = 0;         ///< d (16, 24, 32, 64 or 128)
  int new_tokens = 0;       ///< Tnew: rows per (sequence, head) in x
  const void* x = nullptr;  ///< [batch, heads, new_tokens, head_dim] (post-RoPE K, or V)
  AppendInput x_dtype = AppendInput::kFloat32;  ///< element type of x (widened exactly)
  /// Element strides of x (and x2) over sequence, head and token; the head_dim axis is dense.
  /// All 0 (default): contiguous [batch, heads, new_tokens, head_dim]. E.g. the token-major
  /// [batch, new_tokens, heads, head_dim] output of a fused QKV kernel needs no copy.
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
  AppendPath path = AppendPath::kAuto;
  const int32_t* starts = nullptr;  ///< [batch] cache position of row 0 (the old length)
  const int32_t* counts = nullptr;  ///< [batch] rows to write (≤ new_tokens), nullptr = all
  quant::CacheView cache{};  ///< target pages + this layer's K or V constants (rotation 16-byte
                             ///< aligned: it is staged with 16-byte loads)
  int* status = nullptr;     ///< optional: OR of kQuantizeAppend* bits (never cleared)
  /// Optional second side encoded by the same call (V when x/cache are K): its own rows (same
  /// shape and x_dtype) and cache; batch, heads, starts and counts are shared. One launch for
  /// both (twice the CTAs of one side), except the tile path with unequal bits (two launches).
  const void* x2 = nullptr;
  quant::CacheView cache2{};
};

using quant::kRotationF16LoScale;
using quant::rotation_f16_row_stride;

/// \brief Host reference of HeadConstantsView::rotation_f16 (the tests' oracle; the model's CUDA
/// caches compute the same bits on the device, model::rotation_f16_parts): splits the row-major
/// rotations `rot` [heads][d][d] (d a multiple of 16) into that layout:
/// out[((h · 2 + part) · d + i) · (d + 8) + j] = hi = fp16(Π_ij) (part 0) or
/// lo = fp16((Π_ij − hi) · 2^12) (part 1), padding 0; lo_any[h] = 1 iff a lo of head h is nonzero.
/// The same roundings, in the same order, as the kernel's own split (bit-identical parts).
inline void rotation_f16_split(const float* rot, int heads, int d, uint16_t* out, int32_t* lo_any) {
  const int s = rotation_f16_row_stride(d);
  for (int h = 0; h < heads; ++h) {
    uint16_t* hi = out + static_cast<size_t>(h) * 2 * d * s;
    uint16_t* lo = hi + static_cast<size_t>(d) * s;
    lo_any[h] = 0;
    for (int i = 0; i < d; ++i) {
      for (int j = 0; j < s; ++j) {
        if (j >= d) {
          hi[i * s + j] = lo[i * s + j] = 0;
          continue;
        }
        const float e = rot[(static_cast<size_t>(h) * d + i) * d + j];
        const uint16_t hb = quant::float_to_half_bits(e);
        const float rest = e - quant::half_bits_to_float(hb);  // exact
        const uint16_t lb = quant::float_to_half_bits(rest * kRotationF16LoScale);
        hi[i * s + j] = hb;
        lo[i * s + j] = lb;
        if ((lb & 0x7fffu) != 0) lo_any[h] = 1;
      }
    }
  }
}

/// \brief Why `p` cannot be run by quantize_append, or nullptr when it can (host-side checks).
const char* quantize_append_invalid_reason(const QuantizeAppendParams& p);

/// \brief The path quantize_append takes for `p` (kAuto resolved).
AppendPath resolved_path(const QuantizeAppendParams& p);

/// \brief Launches quantize-on-append on `stream` (no allocation, no synchronisation).
/// \return cudaSuccess, cudaErrorInvalidValue when quantize_append_invalid_reason(p) != nullptr,
///         or the launch error
cudaError_t quantize_append(const QuantizeAppendParams& p, cudaStream_t stream);

}  // namespace turboesm::kernels
