// SPDX-License-Identifier: MIT
#pragma once
/// \file decode_gemv.h
/// \brief The dense layers of a decode step (CUDA): y = epilogue(W · prologue(x) + b) for a few
/// rows x (one token per sequence), streaming the weight matrix once at close to HBM speed.
///
/// At M = 1 to 8 rows a transformer layer's products are matrix-vector products bound by reading
/// W; cuBLAS runs them as GEMM tiles (plus a split-K reduction) and every LayerNorm, bias, GELU
/// and residual add around them is a launch of its own. decode_gemv is one launch per product
/// with those ops folded in, with the arithmetic of the eager ops (model dtype T = fp16 or bf16,
/// fp32 inside, rounding to T where the eager ops store a T tensor):
///   x'  = T(x)                              (x in T, or fp32 rounded as x.to(T))
///   x'' = T((x' − μ) · rsqrt(σ² + ε) · γ + β)   if ln_weight (LayerNorm; μ, σ² over K, fp32)
///   z   = T(Σ_k W[n, k] · x''[k] + b[n])    (fp32 sum, one rounding: cuBLAS's bias epilogue)
///   out = T(gelu(z))                        if gelu (erf form, as at::gelu)
///   out = T(z + residual[m, n])             if residual (as at::add)
/// or, in the Q/K/V mode (head_dim > 0), q / k / v of attention from z (below).
/// Only the order of the k-sum differs from cuBLAS (fp32 either way), so outputs agree with the
/// eager ops to about one unit in the last place of T. src/model/esm2.cpp uses it for
/// single-token layers on CUDA, with the eager ops as its reference
/// (Esm2Model::set_fused_decode_gemv(false) runs them; tests/cuda/test_decode_gemv.cpp).
///
/// Work layout (kernels/decode_gemv.cu): CTAs of 4 warps at several rows, 8 or 16 at one row
/// (DecodeGemvParams::warps: the same warps in fewer, wider CTAs made the batch-1 step faster on
/// the H100, kernels/NOTES.md "Session 26"); a warp owns 2 output features for all rows and
/// requests its slice of their weight rows (up to 6 16-byte non-caching loads per row and lane
/// per pass: one pass for every product of the 650M model) before the prologue, so that
/// the LayerNorm and the wait for the producer of x (programmatic dependent launch, pdl.h) hide
/// under the weight loads; long or few rows split K over the CTA's warps (partial sums meet in
/// shared memory). Where there are more such tasks than CTAs fit at once (the 15B model's
/// products), a CTA loops over tasks with the prologue done once, the next task's weights
/// requested before the current one's reduction (DecodeGemvParams::ctas_per_sm). The LayerNorm
/// statistics are computed by every warp on its own (shuffles, no CTA barrier); the prologue's x''
/// lives in shared memory (rows · K · sizeof(T) bytes). At one row the kernel also requests
/// early what its epilogue and LayerNorm read besides x (set_decode_gemv_early_loads). No
/// allocation, no synchronisation: capturable in a CUDA graph.

#include <cuda_runtime_api.h>

#include <cstddef>

#include "turboesm/kernels/element_type.h"

namespace turboesm::kernels {

/// Most rows (sequences) one decode_gemv launch takes.
inline constexpr int kDecodeGemvMaxRows = 8;
/// Warps per CTA of a one-row launch by default (DecodeGemvParams::warps = 0): 16 (one CTA per SM
/// holds the register file), and 8 in the Q/K/V mode, whose CTAs then leave room on each SM for
/// one 8-warp attention CTA that programmatic dependent launch starts early. Same work per warp
/// at any width; in A/B rounds on two H100s the 650M graph step ran 1.061–1.085 ms with 4-warp
/// CTAs everywhere, 1.002–1.045 with 16, 0.993–1.014 with 16 and 8 for Q/K/V (kernels/NOTES.md
/// "Session 26").
inline constexpr int kDecodeGemvDefaultWarps = 16;
inline constexpr int kDecodeGemvDefaultQkvWarps = 8;
/// Most shared memory the staged x'' may take (bytes): (rows rounded up to 1, 2, 4 or 8) · K · 2
/// must fit, else decode_gemv_invalid_reason says so.
inline constexpr size_t kDecodeGemvMaxSmemBytes = 96 * 1024;

struct DecodeGemvParams {
  int rows = 0;                                 ///< M, 1..kDecodeGemvMaxRows
  int in_features = 0;                          ///< K, a positive multiple of 8
  int out_features = 0;                         ///< N ≥ 1
  ElementType dtype = ElementType::kFloat16;    ///< T of weight, bias, LN, residual, out: fp16/bf16
  ElementType x_dtype = ElementType::kFloat16;  ///< dtype, or fp32 (rounded to T first)
  const void* x = nullptr;                      ///< [rows, K] contiguous, 16-byte aligned
  const void* ln_weight = nullptr;  ///< [K] γ of the pre-LayerNorm, or null (no LayerNorm)
  const void* ln_bias = nullptr;    ///< [K] β, required with ln_weight
  float ln_eps = 1e-5f;
  const void* weight = nullptr;    ///< [N, K] row-major (nn.Linear layout), 16-byte aligned
  const void* bias = nullptr;      ///< [N], or null
  bool gelu = false;               ///< apply GELU (erf) to z
  const void* residual = nullptr;  ///< [rows, N] added to z, or null; not with gelu
  void* out = nullptr;             ///< [rows, N] (unused in the Q/K/V mode)
  /// Q/K/V mode (head_dim > 0): W is the fused [3 · H · head_dim, K] projection of a decode step
  /// and the epilogue is qkv_rotary_to_float's (kernels/qkv_rotary.h) on the T-rounded outputs
  /// z: q = Q scaling + rotary, k = rotary, v = z, written as fp32 [rows, H · head_dim] to
  /// q_out / k_out / v_out, value for value what decode_gemv + qkv_rotary_to_float give. A warp
  /// then owns the rotate-half pair (j, j + head_dim / 2) of a head instead of two neighbours.
  int head_dim = 0;            ///< even; N must be a multiple of 3 · head_dim
  const float* cos = nullptr;  ///< [rows, head_dim] rotary table of each row's position
  const float* sin = nullptr;  ///< [rows, head_dim]
  float q_scale = 1.0f;        ///< head_dim^-0.5 (ESM scales q before rotary)
  float* q_out = nullptr;
  float* k_out = nullptr;
  float* v_out = nullptr;
  /// Grid: a task is 2 output features per warp of a CTA (fewer where K is split over the CTA's
  /// warps: 8 at 4 warps without a split); the launch
  /// runs min(tasks, c · SMs) CTAs that loop over the tasks, staging x'' and the LayerNorm
  /// statistics once per CTA, with c = ctas_per_sm capped by the occupancy (0: the occupancy, as
  /// many as fit). kDecodeGemvCtaPerTask: one CTA per task (the session-6 layout; no loop).
  /// Outputs are bit-identical for every value.
  int ctas_per_sm = 0;
  /// Warps per CTA: 0 (at one row kDecodeGemvDefaultWarps, kDecodeGemvDefaultQkvWarps in the
  /// Q/K/V mode; 4 at several), or 4, 8 or 16 (more than 4 only at one row). A task is then
  /// warps / K-split feature pairs; the K split is chosen for ≥ 8 warps per SM. Outputs are the
  /// same bits for every value at a given K split (the split follows from K and the grid: it can
  /// differ between widths).
  int warps = 0;
};

/// DecodeGemvParams::ctas_per_sm value for one CTA per task.
inline constexpr int kDecodeGemvCtaPerTask = -1;

/// \brief Why `p` cannot run (a static message naming the first violated condition), or null.
const char* decode_gemv_invalid_reason(const DecodeGemvParams& p);

/// \brief Whether the one-row kernels request everything but x ahead of use (default true): the
/// bias of their features and the LayerNorm's γ/β (up to 2 vectors of 8 per thread, i.e. K ≤
/// 2048) before the dependency wait — they are weights —, the residual (or the rotary tables in
/// the Q/K/V mode) right after it. Otherwise each is a dependent memory round trip on the
/// critical path after the wait: γ/β after the statistics, the bias and the residual after the
/// reduction (kernels/NOTES.md "Session 19"). Same values either way (only when loads are issued
/// changes); the instances for 2–8 rows load late (their registers are full). Process-wide, not
/// synchronised: set it before launching (a CUDA graph keeps what it captured).
void set_decode_gemv_early_loads(bool enabled);
bool decode_gemv_early_loads();

/// \brief Launches the product on `stream`. \return cudaErrorInvalidValue when
/// decode_gemv_invalid_reason(p) is not null, else the launch error.
cudaError_t decode_gemv(const DecodeGemvParams& p, cudaStream_t stream);

}  // namespace turboesm::kernels
