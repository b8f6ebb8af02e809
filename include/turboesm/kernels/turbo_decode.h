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
#include <cstdint>

#include "turboesm/kernels/element_type.h"
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

/// \brief Sets one of the process-wide switches below (Set) for a scope and restores the value
/// it had (Get) when the scope ends: benchmarks' A/B variants, tests of either kernel.
template <bool (*Get)(), void (*Set)(bool)>
class ScopedTurboDecodeSwitch {
 public:
  explicit ScopedTurboDecodeSwitch(bool enabled) : was_(Get()) { Set(enabled); }
  ~ScopedTurboDecodeSwitch() { Set(was_); }
  ScopedTurboDecodeSwitch(const ScopedTurboDecodeSwitch&) = delete;
  ScopedTurboDecodeSwitch& operator=(const ScopedTurboDecodeSwitch&) = delete;

 private:
  bool was_;
};

/// \brief Whether DecodeParams::split_counters are used (default true). Off, the second kernel
/// merges and the counters are not touched: the same values, for measuring what the in-kernel
/// merge buys. Process-wide, not synchronised: set it before launching.
void set_turbo_decode_fused_merge(bool enabled);
bool turbo_decode_fused_merge();

/// \brief Whether launches of at most one CTA per SM (rows × splits ≤ SMs: a batch-1 decode
/// step, short caches) run CTAs of 8 warps instead of 4, for 3- and 4-bit codes at head_dim ≤ 64
/// (default true: measured on the H100, the 650M graph step 2.4 % faster in every A/B round,
/// kernels/NOTES.md "Session 13"): twice the warps per SM to hide the latencies of a short
/// split (its q', its tables, one or two tokens per thread). The same values up to the order of
/// the CTA's sums.
/// Process-wide, not synchronised: set it before launching (a CUDA graph keeps the kernel it
/// captured).
void set_turbo_decode_wide_ctas(bool enabled);
bool turbo_decode_wide_ctas();
/// \brief Sets set_turbo_decode_wide_ctas for a scope and restores the previous setting when the
/// scope ends (benchmarks' A/B variants, tests of either kernel).
using ScopedTurboDecodeWideCtas =
    ScopedTurboDecodeSwitch<&turbo_decode_wide_ctas, &set_turbo_decode_wide_ctas>;
/// \brief Whether a launch of `rows` rows (batch · heads · q_len) in `splits` splits on a device
/// of `num_sms` SMs runs 8-warp CTAs: set_turbo_decode_wide_ctas on, `bits` 3 or 4 and
/// `head_dim` ≤ 64 (the instances that compile the general kernel only), rows · splits ≤ num_sms.
bool turbo_decode_wide_applies(int bits, int head_dim, int64_t rows, int splits, int num_sms);

/// \brief Whether turbo_decode streams the cached records through a per-warp ring in shared
/// memory where that measured faster (default true; kernels/NOTES.md "Session 22"): each warp
/// requests its next tokens' K and V records with Hopper bulk copies (one request per page region
/// for 32 tokens, tracked by an mbarrier per stage) and its threads read them from shared memory
/// right before use, instead of loading them into registers one and two iterations ahead. The
/// same values (the same sums in the same order, up to which thread owns which token when a split
/// starts inside a 32-token chunk). Applies to turbo_decode (not turbo_decode_append) launches with
/// 2-bit codes, head_dim 64, norm none on both sides, K QJL none or sign, page_tokens a multiple
/// of 32 (turbo_decode_ring_applies); 3- and 4-bit codes measured slower with it.
/// Process-wide, not synchronised: set it before launching (a CUDA graph keeps the kernel it
/// captured).
void set_turbo_decode_ring(bool enabled);
bool turbo_decode_ring();
/// \brief Sets set_turbo_decode_ring for a scope and restores the previous setting after it.
using ScopedTurboDecodeRing = ScopedTurboDecodeSwitch<&turbo_decode_ring, &set_turbo_decode_ring>;
/// \brief Whether a turbo_decode launch of `p` streams its records through the ring
/// (set_turbo_decode_ring and the conditions listed there).
bool turbo_decode_ring_applies(const quant::DecodeParams& p);

/// Cached positions a staged split holds (one per thread of its 8-warp CTA).
inline constexpr int kDecodeStagedTokens = 256;

/// \brief Whether turbo_decode_append stages its cached splits before the dependency wait
/// (default true; kernels/NOTES.md "Session 18"). A decode step launched with programmatic
/// dependent launch makes the attention's CTAs resident while the QKV product still runs, and the
/// cached tokens' records do not depend on it: a staged split CTA decodes its ≤
/// kDecodeStagedTokens positions into fp32 centroid values in shared memory before
/// `griddepcontrol.wait`, so that after it only q', one dot product per token, the softmax and one
/// pass over the staged values remain (no look-up tables). Applies where the 8-warp CTAs do
/// (turbo_decode_wide_applies) to K without QJL bits; the automatic split count is raised so that
/// every cached split holds at most kDecodeStagedTokens positions while every CTA still has an SM.
/// The records read before the wait are read again after it (through the L2, beside q) and a
/// position whose bytes changed meanwhile is decoded again, so a kernel that wrote them and ran
/// beside this one (programmatic dependent launch) cannot leave stale values. The same values as
/// the look-up-table kernel up to the order of the sums.
/// Process-wide, not synchronised: set it before launching (a CUDA graph keeps the kernel it
/// captured).
void set_turbo_decode_staged(bool enabled);
bool turbo_decode_staged();
/// \brief Sets set_turbo_decode_staged for a scope and restores the previous setting after it.
using ScopedTurboDecodeStaged =
    ScopedTurboDecodeSwitch<&turbo_decode_staged, &set_turbo_decode_staged>;

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

/// \brief Quantize-on-append of one new token per sequence, fused into the decode launch
/// (turbo_decode_append): the row of (b, h) is read at element b · stride_b + h · stride_h of k
/// and v (head_dim dense, RoPE applied to k), in `dtype` (widened exactly). All DEVICE pointers.
struct DecodeAppend {
  const void* k = nullptr;
  const void* v = nullptr;
  ElementType dtype = ElementType::kFloat32;
  int64_t stride_b = 0, stride_h = 0;  ///< element strides over sequence and head (≥ 0)
  const int32_t* starts = nullptr;     ///< [batch] cache position of the new token (old length)
  int* status = nullptr;  ///< optional: OR of kQuantizeAppend* bits (quantize_append.h)
};

/// Largest head_dim turbo_decode_append takes (its encoding CTA holds both sides' Π in shared
/// memory: 2 · d · (d + 1) floats, 33 KB at d = 64; d = 128 would need 132 KB).
inline constexpr int kDecodeAppendMaxHeadDim = 64;

/// \brief Why `p` with `a` cannot be run by turbo_decode_append, or nullptr when it can
/// (host-side checks as turbo_decode_invalid_reason; p.lengths is not needed).
const char* turbo_decode_append_invalid_reason(const quant::DecodeParams& p, const DecodeAppend& a);

/// \brief Workspace bytes turbo_decode_append needs for `p` on `num_sms` SMs: the partials of
/// turbo_decode_num_splits(p) token splits plus the new token's (never 0).
size_t turbo_decode_append_workspace_bytes(const quant::DecodeParams& p, int num_sms);

/// \brief Whether turbo_decode_append(p, …) with a workspace of
/// turbo_decode_append_workspace_bytes(p, num_sms) runs the staged kernel
/// (set_turbo_decode_staged), under the switches as they are now.
bool turbo_decode_append_staged(const quant::DecodeParams& p, int num_sms);

/// \brief A decode step's append and attention in one launch (plus the merge kernel unless
/// p.split_counters are given, as turbo_decode): encodes the new token of every sequence b into
/// position starts[b] of p.k / p.v (the bytes quantize_append's row path writes: the same device
/// function, host operation order) and attends over positions [0, starts[b]] — the same result as
/// quantize_append followed by turbo_decode with lengths = starts + 1, up to the order in which
/// the splits are summed. The new token is encoded and scored by one extra split CTA per row
/// while the others stream the cached tokens, so the encode leaves the step's critical path.
/// p.q_len must be 1; p.lengths is not read. Positions past the capacity are skipped and set
/// kQuantizeAppendOutOfCapacity in a.status (the row then attends over the cached tokens only).
/// \param workspace  ≥ 2 partials per row, 16-byte aligned; with less than
///                   turbo_decode_append_workspace_bytes fewer splits are used
/// \return cudaSuccess, cudaErrorInvalidValue (invalid_reason, or workspace below 2 partials),
///         or the launch error
cudaError_t turbo_decode_append(const quant::DecodeParams& p, const DecodeAppend& a,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace turboesm::kernels
