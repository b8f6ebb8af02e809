// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_decode.h
/// \brief Decode attention over the compressed (TurboQuant) KV cache: torch-facing op, the fast
/// CPU implementation and its scalar reference twin.
///
/// out[b, h, i] = Σ_{t < lengths[b]} softmax_t(sm_scale · ⟨q[b,h,i], k̂_t⟩) · v̂_t, computed in code
/// space (DESIGN "The compressed cache"): q' = σ_K ⊙ Π_K q once per query, scores from table
/// look-ups (two codes per look-up), online softmax, V accumulated in V's rotated space, one
/// inverse rotation per query. No dequantized K/V tensor is ever formed. A sequence with
/// lengths[b] == 0 gets zeros.
///
/// Dispatch: CPU → turbo_decode_cpu (this library, src/ops/cpu/); CUDA →
/// turboesm::kernels::turbo_decode (kernels/, when built with TURBOESM_WITH_CUDA).

#include <ATen/ATen.h>

#include "turboesm/quant/cache_view.h"

namespace turboesm::ops {

/// \brief Torch-facing decode attention (input checks + CPU/CUDA dispatch).
/// \param q        [batch, heads, q_len, head_dim] fp32 (RoPE applied, not rotated by Π), on the
///                 device of the cache pages
/// \param lengths  [batch] int32, same device; each ≤ the cache capacity
/// \param k, v     views of one layer's K and V cache (pages and constants on the same device)
/// \param sm_scale score multiplier (1 for ESM-2: q is pre-scaled)
/// \param split_counters CUDA, optional: int32 [≥ batch · heads · q_len] on q's device, all zero,
///                 left zero (quant::DecodeParams::split_counters): the splits are then merged
///                 inside the attention kernel instead of by a second launch. Ignored on the CPU.
/// \return [batch, heads, q_len, head_dim] fp32
at::Tensor turbo_decode(const at::Tensor& q, const at::Tensor& lengths, const quant::CacheView& k,
                        const quant::CacheView& v, float sm_scale = 1.0f,
                        const at::Tensor& split_counters = {});

/// \brief Fast CPU implementation (at::parallel_for over (b, h, i) rows, split over tokens when
/// there are fewer rows than threads and the cache is long). All pointers host pointers.
/// \param num_splits token splits per row; 0 = automatic (tests force values ≥ 1)
void turbo_decode_cpu(const quant::DecodeParams& p, int num_splits = 0);

/// \brief Scalar reference twin: every K/V token decoded with TurboQuantizer::decode_ref, exact
/// softmax in double. Slow; for tests. All pointers host pointers.
void turbo_decode_ref(const quant::DecodeParams& p);

/// \brief Token splits turbo_decode_cpu uses for `p` on `threads` threads (automatic mode).
int turbo_decode_cpu_num_splits(const quant::DecodeParams& p, int threads);

/// \brief Number of distinct intra-op threads that one at::parallel_for over `work_items` items
/// (grain 1) used inside this library. ATen's parallel_for runs in parallel only where the
/// including translation unit was compiled with OpenMP, so this is how tests check that the
/// library's CPU loops (decode op, cache encode) really use at::get_num_threads() threads.
int cpu_parallel_threads_used(int64_t work_items);

}  // namespace turboesm::ops
