// SPDX-License-Identifier: MIT
#pragma once
/// \file quantize_append.cuh
/// \brief Device code of quantize-on-append (see include/turboesm/kernels/quantize_append.h).
///
/// One warp per new token; a CTA of kAppendWarps warps serves kAppendTokensPerCta consecutive
/// tokens of one (sequence, head), so Π (transposed, padded: conflict-free) is staged in shared
/// memory once per CTA. Lane i owns output coordinates i, i + 32, ... . Every floating-point step
/// is written with explicitly rounded intrinsics (__fmul_rn, __fadd_rn, __dadd_rn, ...) so that
/// nvcc cannot contract it into an FMA: the results equal TurboQuantizer::encode's on the host
/// (quantizer.h), which rounds every multiply and add separately, in this order:
///   xc = x − μ;  n² = Σ_j (double) xc_j² (increasing j);  n = (float) sqrt(n²)
///   y_i = Σ_j Π_ij xc_j (increasing j);  z = y · (1/n) [· (1/σ)];  c = #{b : z > b}
///   r = z − C[c];  sign: r ≥ 0;  prod: u_k = Σ_j S_kj r_j, ‖r‖ = (float) sqrt(Σ (double) r_j²).

#include <cuda_runtime.h>

#include <cstdint>

#include "common.cuh"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/format.h"

namespace turboesm::kernels::detail {

inline constexpr int kAppendWarps = 4;
inline constexpr int kAppendTokensPerWarp = 4;
inline constexpr int kAppendTokensPerCta = kAppendWarps * kAppendTokensPerWarp;

/// float -> fp16 bits, round to nearest even (same as quant::float_to_half_bits).
__device__ __forceinline__ uint16_t float_to_half_bits_dev(float f) {
  uint16_t h;
  asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
  return h;
}

/// Shared memory (bytes) of quantize_append_kernel<D>: Πᵀ padded [D][D+1] floats, then per warp
/// xc/r [D] floats and codes/bits [max(D, m)] bytes.
__host__ __device__ inline size_t append_smem_bytes(int d, int m) {
  const int bits_len = (d > m ? d : m);
  return sizeof(float) *
             (static_cast<size_t>(d) * (d + 1) + static_cast<size_t>(kAppendWarps) * d) +
         static_cast<size_t>(kAppendWarps) * ((bits_len + 15) / 16 * 16);
}

/// Writes the `nbits`-bit values vals[0..n) (bitpack.h layout) to dst [packed_size(n, nbits)]
/// bytes, one byte per lane per step.
__device__ __forceinline__ void warp_pack(const uint8_t* vals, int n, int nbits, uint8_t* dst,
                                          int lane) {
  const int bytes = (n * nbits + 7) / 8;
  for (int k = lane; k < bytes; k += 32) {
    uint32_t byte = 0;
    for (int bit = 0; bit < 8; ++bit) {
      const int s = 8 * k + bit;
      if (s >= n * nbits) break;
      byte |= ((static_cast<uint32_t>(vals[s / nbits]) >> (s % nbits)) & 1u) << bit;
    }
    dst[k] = static_cast<uint8_t>(byte);
  }
}

template <int D>
__global__ void __launch_bounds__(kAppendWarps * 32)
    quantize_append_kernel(const __grid_constant__ QuantizeAppendParams p) {
  constexpr int kPerLane = (D + 31) / 32;
  const int b = blockIdx.z;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const quant::CacheView& cache = p.cache;
  const quant::PageLayout& lay = cache.layout;
  const quant::HeadConstantsView& cst = cache.constants;
  const int bits = lay.bits;
  const int m = lay.qjl_dim;
  const int count = p.counts ? min(p.counts[b], p.new_tokens) : p.new_tokens;
  const int first = blockIdx.x * kAppendTokensPerCta;
  if (first >= count) return;  // uniform over the CTA

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* s_pit = reinterpret_cast<float*>(smem_raw);  // [D][D+1]: s_pit[j*(D+1)+i] = Π_ij
  float* s_x = s_pit + D * (D + 1) + warp * D;        // this warp's xc, later r
  uint8_t* s_codes = reinterpret_cast<uint8_t*>(s_pit + D * (D + 1) + kAppendWarps * D) +
                     warp * (((D > m ? D : m) + 15) / 16 * 16);
  {
    const float* rot = cst.rotation + static_cast<int64_t>(h) * D * D;
    for (int idx = tid; idx < D * D; idx += kAppendWarps * 32) {
      const int i = idx / D, j = idx - (idx / D) * D;
      s_pit[j * (D + 1) + i] = rot[idx];
    }
  }
  __syncthreads();

  // Per-lane constants (1/σ as the host computes it: a correctly rounded division).
  float mu[kPerLane], inv_sigma[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int i = lane + 32 * k;
    mu[k] = (cst.mean && i < D) ? cst.mean[h * D + i] : 0.0f;
    inv_sigma[k] = (cst.scale && i < D) ? __fdiv_rn(1.0f, cst.scale[h * D + i]) : 1.0f;
  }
  const float* bnd = cst.boundaries + h * ((1 << bits) - 1);
  const float* cen = cst.centroids + h * (1 << bits);
  const int64_t capacity = static_cast<int64_t>(cache.max_pages) * lay.page_tokens;
  const int start = p.starts[b];

  for (int tw = 0; tw < kAppendTokensPerWarp; ++tw) {
    const int tok = first + warp * kAppendTokensPerWarp + tw;
    if (tok >= count) break;  // warp-uniform
    const int64_t pos = static_cast<int64_t>(start) + tok;
    if (pos < 0 || pos >= capacity) {
      if (lane == 0 && p.status) atomicOr(p.status, kQuantizeAppendOutOfCapacity);
      continue;
    }
    const float* x = p.x + ((static_cast<int64_t>(b) * p.heads + h) * p.new_tokens + tok) * D;
    uint8_t* page = cache.page(b, h, static_cast<int>(pos / lay.page_tokens));
    const int slot = static_cast<int>(pos % lay.page_tokens);

    // Center; n² in double, in increasing j (every lane computes the same sequential sum).
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = lane + 32 * k;
      if (i < D) s_x[i] = cst.mean ? __fsub_rn(x[i], mu[k]) : x[i];
    }
    __syncwarp();
    double n2 = 0.0;
    for (int j = 0; j < D; ++j) {
      const double v = static_cast<double>(s_x[j]);
      n2 = __dadd_rn(n2, __dmul_rn(v, v));
    }
    const float n = static_cast<float>(sqrt(n2));
    const bool token_norm = lay.norm == quant::NormMode::kToken;
    bool bad = !isfinite(n2);
    float inv = 1.0f;
    if (token_norm) {
      bad = bad || n > quant::kHalfMax;
      inv = n > 0.0f ? __fdiv_rn(1.0f, n) : 0.0f;
      if (lane == 0) *quant::token_norm(page, lay, slot) = float_to_half_bits_dev(n);
    }
    if (bad && lane == 0 && p.status) atomicOr(p.status, kQuantizeAppendBadRow);

    // Rotate (sequential j, separately rounded), scale, encode.
    float z[kPerLane];
    uint8_t code[kPerLane];
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) z[k] = 0.0f;
    for (int j = 0; j < D; ++j) {
      const float xj = s_x[j];
      const float* col = s_pit + j * (D + 1);
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int i = lane + 32 * k;
        if (i < D) z[k] = __fadd_rn(z[k], __fmul_rn(col[i], xj));
      }
    }
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      z[k] = __fmul_rn(z[k], inv);
      if (cst.scale) z[k] = __fmul_rn(z[k], inv_sigma[k]);
      uint32_t c = 0;
      for (int t = 0; t < (1 << bits) - 1; ++t) c += z[k] > bnd[t] ? 1u : 0u;
      code[k] = static_cast<uint8_t>(c);
    }
    __syncwarp();  // everyone is done reading s_x
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = lane + 32 * k;
      if (i < D) {
        s_codes[i] = code[k];
        s_x[i] = __fsub_rn(z[k], cen[code[k]]);  // residual r (code space)
      }
    }
    __syncwarp();
    warp_pack(s_codes, D, bits, quant::token_codes(page, lay, slot), lane);
    if (lay.qjl == quant::QjlMode::kNone) {
      __syncwarp();
      continue;
    }
    __syncwarp();  // s_codes is reused for sign bits
    if (lay.qjl == quant::QjlMode::kSign) {
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        const int i = lane + 32 * k;
        if (i < D) s_codes[i] = s_x[i] >= 0.0f ? 1 : 0;
      }
      __syncwarp();
      warp_pack(s_codes, D, 1, quant::token_qjl(page, lay, slot), lane);
      __syncwarp();
      continue;
    }
    // prod: u = S r (sequential j per output), signs, ‖r‖.
    const float* proj = cst.qjl_proj + static_cast<int64_t>(h) * m * D;
    for (int k = lane; k < m; k += 32) {
      float u = 0.0f;
      const float* srow = proj + static_cast<int64_t>(k) * D;
      for (int j = 0; j < D; ++j) u = __fadd_rn(u, __fmul_rn(srow[j], s_x[j]));
      s_codes[k] = u >= 0.0f ? 1 : 0;
    }
    if (lane == 0) {
      double r2 = 0.0;
      for (int j = 0; j < D; ++j) {
        const double v = static_cast<double>(s_x[j]);
        r2 = __dadd_rn(r2, __dmul_rn(v, v));
      }
      *quant::token_rnorm(page, lay, slot) = float_to_half_bits_dev(static_cast<float>(sqrt(r2)));
    }
    __syncwarp();
    warp_pack(s_codes, m, 1, quant::token_qjl(page, lay, slot), lane);
    __syncwarp();
  }
}

}  // namespace turboesm::kernels::detail
