// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_decode.h
/// \brief Fused decode attention on the packed TurboQuant cache (CUDA), plain C++ interface.
///
/// Computes, for every sequence b, head h and query row i of a quant::DecodeParams (DEVICE
/// pointers everywhere: q, out, lengths, pages and every HeadConstantsView array),
///   out[b,h,i] = Σ_t softmax_t(sm_scale · ⟨q[b,h,i], k̂_t⟩) · v̂_t   over t < lengths[b],
/// without ever materialising k̂ or v̂ (DESIGN "Attention never needs dequantized K/V"):
///   q' = σ_K ⊙ Π_K q (once per row), score_t = n_t · (Σ_j q'_j C_K[c_tj] + QJL term),
///   acc  = Σ_t p_t · n^V_t · C_V[c^V_t]  (V's rotated code space),
///   out  = Π_Vᵀ (σ_V ⊙ acc) / Σ_t p_t + μ_V.
/// ⟨q, μ_K⟩ is the same for every token and cancels in the softmax, so it is never computed.
/// A sequence with lengths[b] == 0 gets an all-zero output row.
///
/// Work split (flash-decoding): grid = rows (b, h, i) × `num_splits` token ranges; each CTA
/// streams its range with online softmax and writes a partial (m, l, acc) to the workspace; a
/// second kernel merges the splits and applies the inverse rotation. With one split the first
/// kernel finishes the row itself. With DecodeParams::split_counters (zeroed, one per row, left
/// zeroed) there is no second kernel: the last split CTA of a row to finish (an atomic count)
/// merges the row, in the same operations and order as the second kernel (same output bits).
/// See kernels/NOTES.md for the design and its measurements.
///
/// Supported: bits ∈ {2, 3, 4} (the compiled instantiations), head_dim ∈ {16, 24, 32, 64, 128},
/// K: norm none/token, QJL none/sign/prod (any m, multiple of 8, ≤ 8·head_dim); V: norm
/// none/token, QJL none. K and V must have the same bits. Pages, strides and page sizes must be
/// 16-byte aligned (as format.h and cache_view.h produce them).
///
/// The launchers never allocate, never synchronise and are safe to capture in a CUDA graph.

#include <cuda_runtime_api.h>

#include <cstddef>

#include "turboesm/quant/cache_view.h"

namespace turboesm::kernels {

/// Smallest number of tokens a split is given (below it the merge costs more than it saves).
inline constexpr int kMinTokensPerSplit = 256;
/// Upper bound of the number of splits per row.
inline constexpr int kMaxSplits = 64;

/// \brief Number of token splits turbo_decode uses for `p` on a GPU with `num_sms` SMs
/// (p.num_splits when positive, clamped to [1, kMaxSplits]).
/// Depends only on batch, heads, q_len, head_dim and the allocated cache capacity
/// (k.max_pages · page_tokens), never on the device-resident lengths, so the host can size the
/// workspace and capture the call in a graph.
int turbo_decode_num_splits(const quant::DecodeParams& p, int num_sms);

/// \brief Workspace bytes turbo_decode needs for `p` on a GPU with `num_sms` SMs (0 when the
/// call runs in one split). Pass the device's multiProcessorCount.
size_t turbo_decode_workspace_bytes(const quant::DecodeParams& p, int num_sms);

/// \brief Why `p` cannot be run by turbo_decode, or nullptr when it can. Checks only what the
/// host can see (shapes, modes, non-null pointers, alignment); device data is not read.
/// The op layer puts this text into its exception next to the shapes.
const char* turbo_decode_invalid_reason(const quant::DecodeParams& p);

/// \brief Whether DecodeParams::split_counters are used (default true). Off, the second kernel
/// merges and the counters are not touched: the same values, for measuring what the in-kernel
/// merge buys. Process-wide, not synchronised: set it before launching.
void set_turbo_decode_fused_merge(bool enabled);
bool turbo_decode_fused_merge();

/// \brief Launches the fused decode attention on `stream`.
/// \param p                 all pointers DEVICE pointers; q [batch, heads, q_len, head_dim] fp32,
///                          out [batch, heads, q_len, head_dim] fp32, lengths [batch] int32
///                          (each ≤ k.max_pages · page_tokens and ≤ v.max_pages · page_tokens)
/// \param workspace         device buffer of at least `workspace_bytes`, 16-byte aligned
///                          (may be nullptr when turbo_decode_workspace_bytes(p, sms) == 0)
/// \param workspace_bytes   its size; if smaller than turbo_decode_workspace_bytes, fewer splits
///                          are used (down to one), never an error
/// \param stream            CUDA stream
/// \return cudaSuccess, cudaErrorInvalidValue when turbo_decode_invalid_reason(p) != nullptr,
///         or the launch error
cudaError_t turbo_decode(const quant::DecodeParams& p, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream);

}  // namespace turboesm::kernels
