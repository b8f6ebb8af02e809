// SPDX-License-Identifier: MIT
#pragma once
/// \file qkv_rotary.h
/// \brief Q/K/V glue (CUDA): one launch turns the fused Q/K/V projection into the q (scaled,
/// rotary), k (rotary) and v of attention. Two entry points: qkv_rotary_to_float (decode step, one
/// token per sequence, fp32 outputs for quantize_append and turbo_decode) and qkv_rotary_split
/// (prefill / forward, T tokens sharing one rotary table, outputs in the model dtype).
///
/// Per sequence b, head h, coordinate j (d = head_dim, j' = j ± d/2 its rotate-half partner):
///   q_s  = T(float(q[j]) · q_scale)                      (ESM scales q before rotary)
///   rot  = j < d/2 ? −float(x[j']) : float(x[j'])        (x = q_s for q, the k row for k)
///   out  = T(float(x[j]) · cos[b, j] + rot · sin[b, j])  (two products, one sum, each rounded)
///   q[b,h,j] = float(out_q), k[b,h,j] = float(out_k), v[b,h,j] = float(v[j])
/// with T the model dtype (fp32, fp16 or bf16; round to nearest even) and no fused multiply-add:
/// exactly the values of Esm2Model::layer_qkv (scale, Rotary::apply) followed by the `.to(float)`
/// of the cache, which take about 18 elementwise launches per layer. qkv_rotary_split computes
/// the same out_q, out_k and v per token t (tables cos[t, j], sin[t, j]) and stores them in T.
/// Neither allocates or synchronises (CUDA-graph capturable).

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboesm/kernels/element_type.h"

namespace turboesm::kernels {

/// Element type of the projection output.
using QkvDtype = ElementType;

struct QkvRotaryParams {
  int batch = 0;
  int heads = 0;
  int head_dim = 0;  ///< even
  QkvDtype dtype = QkvDtype::kFloat16;
  const void* qkv = nullptr;   ///< [batch, 3, heads, head_dim] contiguous (Linear output, T = 1)
  const float* cos = nullptr;  ///< [batch, head_dim] (Rotary::cos_sin of the positions)
  const float* sin = nullptr;  ///< [batch, head_dim]
  float q_scale = 1.0f;        ///< head_dim^-0.5 as a float
  float* q = nullptr;          ///< [batch, heads, head_dim] fp32 out
  float* k = nullptr;          ///< [batch, heads, head_dim] fp32 out
  float* v = nullptr;          ///< [batch, heads, head_dim] fp32 out
};

/// \brief Launches the glue on `stream`. \return cudaErrorInvalidValue for bad parameters (odd
/// or non-positive head_dim, null pointers), else the launch error.
cudaError_t qkv_rotary_to_float(const QkvRotaryParams& p, cudaStream_t stream);

/// Memory order of the [batch, heads, tokens, head_dim] outputs of qkv_rotary_split.
enum class QkvLayout : int {
  /// Contiguous [batch, heads, tokens, head_dim].
  kHeadMajor = 0,
  /// Memory [batch, tokens, heads, head_dim], i.e. strides {T·H·d, d, H·d, 1} of the
  /// [batch, heads, tokens, head_dim] view: the strides of the eager q and k of
  /// Esm2Model::layer_qkv (elementwise ops keep the permuted Linear output's order), so that
  /// attention sees the same tensors, strides included, on both paths.
  kTokenMajor = 1,
};

struct QkvRotarySplitParams {
  int batch = 0;   ///< ≤ 65535
  int tokens = 0;  ///< T
  int heads = 0;
  int head_dim = 0;  ///< even
  QkvDtype dtype = QkvDtype::kFloat16;
  QkvLayout layout = QkvLayout::kHeadMajor;
  const void* qkv = nullptr;   ///< [batch, tokens, 3, heads, head_dim] contiguous (Linear output)
  const float* cos = nullptr;  ///< [tokens, head_dim] (Rotary::cos_sin of the positions, shared
                               ///< by every sequence)
  const float* sin = nullptr;  ///< [tokens, head_dim]
  float q_scale = 1.0f;        ///< head_dim^-0.5 as a float
  void* q = nullptr;           ///< [batch, heads, tokens, head_dim] in `dtype`, order `layout`
  void* k = nullptr;           ///< [batch, heads, tokens, head_dim] in `dtype`, order `layout`
  void* v = nullptr;           ///< [batch, heads, tokens, head_dim] in `dtype`, order `layout`
};

/// \brief Launches the prefill glue on `stream`: q, k, v of every token of every sequence.
/// \return cudaErrorInvalidValue for bad parameters (odd or non-positive head_dim, non-positive
/// heads, negative batch or tokens, batch > 65535, an unknown dtype or layout, null pointers),
/// cudaSuccess without a launch when batch or tokens is 0, else the launch error.
cudaError_t qkv_rotary_split(const QkvRotarySplitParams& p, cudaStream_t stream);

}  // namespace turboesm::kernels
