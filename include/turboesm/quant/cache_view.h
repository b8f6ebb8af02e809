// SPDX-License-Identifier: MIT
#pragma once
/// \file cache_view.h
/// \brief Non-owning views of one layer's compressed K or V cache for a batch of sequences, and
/// the parameters of one decode-attention call. The CPU decode op (src/ops/cpu/) and the CUDA
/// kernel (kernels/turbo_decode*.cu) take exactly these structs, so both read the same bytes.
///
/// ## Storage of one layer's K (or V) cache
/// One contiguous byte buffer `pages` laid out [batch, heads, max_pages, page_bytes]: sequence b,
/// head h, page p starts at `pages + b * seq_stride + h * head_stride + p * layout.page_bytes`
/// (strides in bytes; head_stride = max_pages * page_bytes, seq_stride = heads * head_stride for
/// a dense cache). Token t of (b, h) lives in page t / page_tokens, slot t % page_tokens, in the
/// format.h layout. Growth reallocates with doubled max_pages (amortized O(1) per token).
///
/// ## Per-head constants (checkpoint content, float32, device-resident for the kernel)
///   rotation  [H, d, d]  Π, row-major (y = Π x)
///   scale     [H, d]     σ, or nullptr (no per-coordinate scale)
///   mean      [H, d]     μ, or nullptr (no centering)
///   centroids [H, 2^bits], boundaries [H, 2^bits - 1] (midpoints; encode side only)
///   qjl_scale [H]        s for QjlMode::kSign, else nullptr
///   qjl_proj  [H, m, d]  S for QjlMode::kProd, else nullptr
/// Semantics exactly as quantizer.h (TurboQuantizer with the same constants).

#include <cstdint>

#include "turboesm/quant/format.h"
#include "turboesm/quant/host_device.h"

namespace turboesm::quant {

/// \brief Per-head quantizer constants of one layer's K or V (all heads).
struct HeadConstantsView {
  const float* rotation = nullptr;    ///< [H, d, d]
  const float* scale = nullptr;       ///< [H, d] or nullptr
  const float* mean = nullptr;        ///< [H, d] or nullptr
  const float* centroids = nullptr;   ///< [H, 2^bits]
  const float* boundaries = nullptr;  ///< [H, 2^bits - 1]
  const float* qjl_scale = nullptr;   ///< [H] (kSign) or nullptr
  const float* qjl_proj = nullptr;    ///< [H, m, d] (kProd) or nullptr
  /// Optional, device copies only: Π pre-split into fp16 parts for the tile append kernel's fp16
  /// tensor-core path, [H][2][d][rotation_f16_row_stride(d)] fp16 bits: hi = fp16(Π), then
  /// lo = fp16((Π − hi) · kRotationF16LoScale), rows zero-padded (host reference:
  /// kernels::rotation_f16_split), so that its CTAs copy Π instead of splitting it; nullptr: they
  /// split.
  const uint16_t* rotation_f16 = nullptr;
  const int32_t* rotation_f16_lo = nullptr;  ///< [H]: 1 where head h's low part is nonzero
  /// Every head's Π is exactly the identity (`rotation` still points at it): the CUDA kernels
  /// skip the rotation and its inverse (y = x), which gives the values the identity matrix gives
  /// (a zero's sign aside, which no code, sign bit or output depends on). The V side of a cache
  /// whose Π_V is folded into the model's weights (model/value_fold.h) has it.
  bool rotation_identity = false;
};

/// Row stride (fp16 elements) of a head's Π parts in HeadConstantsView::rotation_f16: d + 8, the
/// tile append kernel's shared-memory layout, so that a CTA stages them with plain 16-byte copies.
constexpr int rotation_f16_row_stride(int d) { return d + 8; }
/// Scale of the low fp16 part in HeadConstantsView::rotation_f16: lo = fp16((Π − hi) · 2^12) keeps
/// the residual in fp16's normal range (|Π − hi| ≤ 2^-11 |Π|); products are scaled back by 2^-12.
inline constexpr float kRotationF16LoScale = 4096.0f;

/// \brief One layer's compressed K or V cache for a batch (see file comment).
struct CacheView {
  PageLayout layout{};       ///< format.h page layout (bits, norm, qjl, page_tokens)
  uint8_t* pages = nullptr;  ///< [batch, heads, max_pages, page_bytes]
  int64_t seq_stride = 0;    ///< bytes between sequences
  int64_t head_stride = 0;   ///< bytes between heads of one sequence
  int max_pages = 0;         ///< pages allocated per (sequence, head)
  HeadConstantsView constants{};

  TURBOESM_HOST_DEVICE uint8_t* page(int b, int h, int p) const {
    return pages + b * seq_stride + h * head_stride + int64_t(p) * layout.page_bytes;
  }
};

/// \brief One decode-attention call: every sequence b has `q_len` query tokens per head (1 in the
/// decode step; more when appending several tokens or when scoring every position, as compare's
/// teacher-forced metric does), each attending to all `lengths[b]` cached tokens (new tokens
/// already appended). out[b, h, i] = Σ_t softmax_t(⟨q[b,h,i], k_t⟩ · sm_scale) v_t, in code space.
struct DecodeParams {
  int batch = 0;
  int heads = 0;
  int head_dim = 0;
  int q_len = 1;                     ///< queries per (sequence, head)
  const float* q = nullptr;          ///< [batch, heads, q_len, head_dim], RoPE applied, not Π
  float* out = nullptr;              ///< [batch, heads, q_len, head_dim]
  const int32_t* lengths = nullptr;  ///< [batch] cached tokens per sequence (0 → output zeros)
  float sm_scale = 1.0f;             ///< score multiplier (1 when q is pre-scaled, as in ESM-2)
  CacheView k{};
  CacheView v{};
  int num_splits = 0;  ///< CUDA: token splits per row, 0 = automatic (benchmarks, tuning)
  /// CUDA, optional: [batch · heads · q_len] counters, all zero before the call and left zero by
  /// it. With them the last split CTA of each row merges the row's splits itself (no second
  /// kernel; kernels/turbo_decode.h). One call at a time per buffer (a cache owns its own).
  uint32_t* split_counters = nullptr;
};

}  // namespace turboesm::quant
