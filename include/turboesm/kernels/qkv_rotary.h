// SPDX-License-Identifier: MIT
#pragma once
/// \file qkv_rotary.h
/// \brief Decode-step glue (CUDA): one launch turns the fused Q/K/V projection of one token per
/// sequence into the fp32 q, k, v that quantize_append and turbo_decode take.
///
/// Per sequence b, head h, coordinate j (d = head_dim, j' = j ± d/2 its rotate-half partner):
///   q_s  = T(float(q[j]) · q_scale)                      (ESM scales q before rotary)
///   rot  = j < d/2 ? −float(x[j']) : float(x[j'])        (x = q_s for q, the k row for k)
///   out  = T(float(x[j]) · cos[b, j] + rot · sin[b, j])  (two products, one sum, each rounded)
///   q[b,h,j] = float(out_q), k[b,h,j] = float(out_k), v[b,h,j] = float(v[j])
/// with T the model dtype (fp32, fp16 or bf16; round to nearest even) and no fused multiply-add:
/// exactly the values of Esm2Model::layer_qkv (scale, Rotary::apply) followed by the `.to(float)`
/// of the cache, which take about 18 elementwise launches per layer. Never allocates or
/// synchronises (CUDA-graph capturable).

#include <cuda_runtime_api.h>

#include <cstdint>

namespace turboesm::kernels {

/// Element type of the projection output.
enum class QkvDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

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

}  // namespace turboesm::kernels
