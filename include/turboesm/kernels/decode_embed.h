// SPDX-License-Identifier: MIT
#pragma once
/// \file decode_embed.h
/// \brief The decode step's preamble (CUDA) in one launch: the new token's embedding with ESM's
/// token dropout, the rotary tables of its position, and the cache lengths after the step. Eager,
/// the same values take about 20 small launches (embedding, masked_fill, scale, divide,
/// conversions, mask multiply; positions to float, product, concatenation, cos, sin, roundings;
/// `lengths + 1`), ~40 µs of a CUDA-graph step.
///
/// Per sequence b (one new token t_b at position p_b = lengths[b]), coordinate i < hidden and
/// j < head_dim / 2, with T the model dtype (round to nearest even; no fused multiply-add):
///   e      = float(W[t_b, i])                                 (0 when t_b is <mask>, token
///   dropout) h[b,i] = T(float(T(e · scale)) / (1 − observed[b]))      (token dropout on; scale = 1
///   − 0.15·0.8) h[b,i] = T(e)                                             (token dropout off) f =
///   float(p_b) · inv_freq[j] cos[b, j] = cos[b, j + d/2] = float(T(cosf(f))), sin likewise
///   after[b] = lengths[b] + 1
/// — exactly Esm2Model::embed_with_ratio (all-true mask, no embedding LayerNorm) and
/// Rotary::cos_sin (the PyTorch ops' roundings: a half tensor times a Python scalar is computed
/// in fp32 and rounded to half; divided by an fp32 tensor it is promoted to fp32). Neither
/// allocates nor synchronises (CUDA-graph capturable).

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboesm/kernels/element_type.h"

namespace turboesm::kernels {

struct DecodeEmbedParams {
  int batch = 0;     ///< ≤ 65535
  int hidden = 0;    ///< > 0
  int head_dim = 0;  ///< even, > 0
  int64_t vocab = 0;
  ElementType dtype = ElementType::kFloat16;  ///< of `word_embeddings` and `h`
  const void* word_embeddings = nullptr;      ///< [vocab, hidden] contiguous
  const int64_t* tokens = nullptr;            ///< [batch] in [0, vocab) (ids outside: h row = 0)
  bool token_dropout = true;
  int64_t mask_token_id = -1;
  float dropout_scale = 0.88f;       ///< float(1 − 0.15 · 0.8), as the eager scalar product uses
  const float* observed = nullptr;   ///< [batch] observed <mask> ratio (token dropout on)
  const float* inv_freq = nullptr;   ///< [head_dim / 2] fp32
  const int32_t* lengths = nullptr;  ///< [batch] cache length before the step = the position
  void* h = nullptr;                 ///< [batch, hidden] in `dtype`
  float* cos = nullptr;              ///< [batch, head_dim]
  float* sin = nullptr;              ///< [batch, head_dim]
  int32_t* after = nullptr;          ///< [batch] lengths + 1
};

/// \brief Launches the preamble on `stream`. \return cudaErrorInvalidValue for bad parameters
/// (non-positive hidden or vocab, odd or non-positive head_dim, batch < 0 or > 65535, an unknown
/// dtype, null pointers; `observed` may be null when token dropout is off), cudaSuccess without a
/// launch when batch is 0, else the launch error.
cudaError_t decode_embed(const DecodeEmbedParams& p, cudaStream_t stream);

}  // namespace turboesm::kernels
