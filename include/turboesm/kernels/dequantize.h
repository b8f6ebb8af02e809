// SPDX-License-Identifier: MIT
#pragma once
/// \file dequantize.h
/// \brief Unpacks a TurboQuant cache to FP16 in its rotated code space (the "unfused" path that
/// the fused decode kernel is measured against, and a debugging aid).
///
/// out[b, h, t, j] = n_t · (C[c_tj] + QJL sign term) as fp16 bits, for t < tokens: the vector
/// whose inner product with q' = σ ⊙ Π q is the code-space score, and whose softmax-weighted sum
/// Πᵀ(σ ⊙ ·) + μ rotates back to the output. prod-mode QJL is not expanded (its dequantisation
/// is a d×m product per token, which is exactly what the fused kernel avoids).

#include <cuda_runtime_api.h>

#include <cstdint>

#include "turboesm/quant/cache_view.h"

namespace turboesm::kernels {

/// \brief Launches the code-space unpack.
/// \param cache  DEVICE view (pages, centroids, qjl_scale for kSign)
/// \param tokens tokens per (b, h) to unpack (≤ max_pages · page_tokens)
/// \param out    [batch, heads, tokens, head_dim] fp16 bit patterns (DEVICE)
/// \return cudaErrorInvalidValue for bad arguments or prod-mode QJL, else the launch error
cudaError_t dequantize_code_space_half(const quant::CacheView& cache, int batch, int heads,
                                       int tokens, uint16_t* out, cudaStream_t stream);

}  // namespace turboesm::kernels
