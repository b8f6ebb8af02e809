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

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "pdl.cuh"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/format.h"

namespace turboesm::kernels::detail {

inline constexpr int kAppendWarps = 4;
inline constexpr int kAppendTokensPerWarp = 4;
inline constexpr int kAppendTokensPerCta = kAppendWarps * kAppendTokensPerWarp;

/// Element `i` of the input rows as float (exact widening of fp16 / bf16).
__device__ __forceinline__ float load_input(const void* x, AppendInput dtype, int64_t i) {
  switch (dtype) {
    case AppendInput::kFloat16:
      return __half2float(static_cast<const __half*>(x)[i]);
    case AppendInput::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
    default:
      return static_cast<const float*>(x)[i];
  }
}

/// \brief Reads the row-major D×D matrix `src` (16-byte aligned) with 16-byte loads, issued in
/// batches of 8 per thread before any use (a CTA has few warps: one load latency per batch, not
/// per element), and calls put(i, j, v) with elements (i, j…j+3) of each vector v.
template <int D, int THREADS, class Put>
__device__ __forceinline__ void for_each_matrix_vec4(const float* __restrict__ src, int tid,
                                                     Put&& put) {
  constexpr int kVecs = D * D / 4;
  constexpr int kPerThread = (kVecs + THREADS - 1) / THREADS;
  constexpr int kBatch = kPerThread < 8 ? kPerThread : 8;
  const float4* s4 = reinterpret_cast<const float4*>(src);
#pragma unroll
  for (int b0 = 0; b0 < kPerThread; b0 += kBatch) {
    float4 v[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int idx = (b0 + k) * THREADS + tid;
      if (b0 + k < kPerThread && idx < kVecs) v[k] = __ldg(s4 + idx);
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int idx = (b0 + k) * THREADS + tid;
      if (b0 + k < kPerThread && idx < kVecs) put((4 * idx) / D, (4 * idx) % D, v[k]);
    }
  }
}

/// \brief Copies the row-major D×D matrix `src` (16-byte aligned) to shared memory, element
/// (i, j) to dst[i * row_stride + j * col_stride].
template <int D, int THREADS>
__device__ __forceinline__ void stage_matrix(const float* __restrict__ src, float* dst,
                                             int row_stride, int col_stride, int tid) {
  for_each_matrix_vec4<D, THREADS>(src, tid, [&](int i, int j, const float4& v) {
    float* d = dst + i * row_stride + j * col_stride;
    d[0] = v.x;
    d[col_stride] = v.y;
    d[2 * col_stride] = v.z;
    d[3 * col_stride] = v.w;
  });
}

/// Element offset of row (b, h, t) of x: the strides when given, else contiguous [B, H, T, D].
__device__ __forceinline__ int64_t row_offset(const QuantizeAppendParams& p, int b, int h, int t,
                                              int d) {
  if (p.stride_t != 0) return b * p.stride_b + h * p.stride_h + t * p.stride_t;
  return ((static_cast<int64_t>(b) * p.heads + h) * p.new_tokens + t) * d;
}

/// Element stride between consecutive tokens of one (sequence, head).
__device__ __forceinline__ int64_t token_stride(const QuantizeAppendParams& p, int d) {
  return p.stride_t != 0 ? p.stride_t : d;
}

/// float -> fp16 bits, round to nearest even (same as quant::float_to_half_bits).
__device__ __forceinline__ uint16_t float_to_half_bits_dev(float f) {
  uint16_t h;
  asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
  return h;
}

/// The norm steps of TurboQuantizer::encode for a row with Σ xc² = n2 (double, increasing j):
/// with NormMode::kToken stores n as fp16 (when `writer`); a non-finite row or an fp16-overflowing
/// norm sets kQuantizeAppendBadRow (when `writer`). Returns the factor z = y · factor (1/n or 1).
__device__ __forceinline__ float row_norm_factor(double n2, const quant::PageLayout& lay,
                                                 uint8_t* page, int slot, bool writer, int* status,
                                                 float* norm_out = nullptr) {
  bool bad = !isfinite(n2);
  float inv = 1.0f;
  if (writer && norm_out) *norm_out = 1.0f;
  if (lay.norm == quant::NormMode::kToken) {  // sqrt in double only where n is used
    const float n = static_cast<float>(sqrt(n2));
    bad = bad || n > quant::kHalfMax;
    inv = n > 0.0f ? __fdiv_rn(1.0f, n) : 0.0f;
    const uint16_t stored = float_to_half_bits_dev(n);
    if (writer) *quant::token_norm(page, lay, slot) = stored;
    if (writer && norm_out) *norm_out = half_bits_to_float_dev(stored);  // what a decoder reads
  }
  if (bad && writer && status) atomicOr(status, kQuantizeAppendBadRow);
  return inv;
}

/// Shared memory (bytes) of quantize_append_kernel<D>: Πᵀ padded [D][D+1] floats, then per warp
/// xc/r [D] floats and codes/bits [max(D, m)] bytes.
__host__ __device__ inline size_t append_smem_bytes(int d, int m) {
  const int bits_len = (d > m ? d : m);
  return sizeof(float) *
             (static_cast<size_t>(d) * (d + 1) + static_cast<size_t>(kAppendWarps) * d) +
         static_cast<size_t>(kAppendWarps) * ((bits_len + 15) / 16 * 16);
}

/// warp_pack for a compile-time width: the divisions by NBITS are shifts and masks (3: a multiply)
/// instead of a run-time integer division per bit.
template <int NBITS>
__device__ __forceinline__ void warp_pack_bits(const uint8_t* vals, int n, uint8_t* dst, int lane) {
  const int total = n * NBITS;
  const int bytes = (total + 7) / 8;
  for (int k = lane; k < bytes; k += 32) {
    uint32_t byte = 0;
#pragma unroll
    for (int bit = 0; bit < 8; ++bit) {
      const int s = 8 * k + bit;
      if (s < total) byte |= ((static_cast<uint32_t>(vals[s / NBITS]) >> (s % NBITS)) & 1u) << bit;
    }
    dst[k] = static_cast<uint8_t>(byte);
  }
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

/// \brief TurboQuantizer::encode of one row by one warp, in the host's operation order (file
/// comment), written into slot `slot` of `page`. Lane i owns coordinates i, i + 32, ...: x holds
/// them (the raw row, widened), mu / inv_sigma this head's μ and 1/σ at them (used when `cst`
/// has mean / scale). `pi(i, j)` returns Π_ij (both callers read a shared-memory copy: the row
/// kernel's is transposed, the decode-append CTA's row-major). bnd / cen: this head's boundaries
/// and centroids; s_x [D] floats and s_codes [max(D, m)] bytes: this warp's scratch. Shared by the
/// row kernel and turbo_decode's append CTA (kernels/turbo_decode.cuh), so both write the same
/// bytes. BITS: lay.bits when the caller knows it at compile time (0: read at run time).
/// staged_row / staged_norm (optional, the staged decode kernel): the row as a decoder
/// reads it back — centroid C[c_i] at i, and the stored norm (fp16-rounded; 1 without token
/// norms; written by lane 0).
template <int D, int BITS = 0, class Pi>
__device__ __forceinline__ void encode_row_warp(
    const float (&x)[(D + 31) / 32], const float (&mu)[(D + 31) / 32],
    const float (&inv_sigma)[(D + 31) / 32], Pi&& pi, const float* bnd, const float* cen,
    float* s_x, uint8_t* s_codes, const quant::PageLayout& lay, const quant::HeadConstantsView& cst,
    int h, uint8_t* page, int slot, int lane, int* status, float* staged_row = nullptr,
    float* staged_norm = nullptr) {
  constexpr int kPerLane = (D + 31) / 32;
  const int bits = lay.bits;
  const int m = lay.qjl_dim;
  // Center.
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int i = lane + 32 * k;
    if (i < D) s_x[i] = cst.mean ? __fsub_rn(x[k], mu[k]) : x[k];
  }
  __syncwarp();
  // n² in double and the rotation in fp32, both in increasing j with every operation rounded
  // separately (as TurboQuantizer::encode); every lane computes the same sequential n². One
  // loop for both: their dependent chains interleave instead of running one after the other.
  // Without token norms n² only tells whether the row is finite (Σ of squared floats cannot
  // overflow a double), so for the decode kernels (BITS > 0: the append CTA's latency is the
  // step's) the 64-step double chain is replaced by a vote over the lanes' coordinates: the same
  // verdict, n² = NaN or 0. (The row kernel keeps the chain: its registers are at their bound.)
  const bool vote = BITS > 0 && lay.norm != quant::NormMode::kToken;
  double n2 = 0.0;
  float z[kPerLane];
  uint8_t code[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) z[k] = 0.0f;
  if (!vote) {
    if (cst.rotation_identity) {
      for (int j = 0; j < D; ++j) {
        const double v = static_cast<double>(s_x[j]);
        n2 = __dadd_rn(n2, __dmul_rn(v, v));
      }
    } else {
      for (int j = 0; j < D; ++j) {
        const float xj = s_x[j];
        const double v = static_cast<double>(xj);
        n2 = __dadd_rn(n2, __dmul_rn(v, v));
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int i = lane + 32 * k;
          if (i < D) z[k] = __fadd_rn(z[k], __fmul_rn(pi(i, j), xj));
        }
      }
    }
  } else {
    if (!cst.rotation_identity) {
      for (int j = 0; j < D; ++j) {
        const float xj = s_x[j];
#pragma unroll
        for (int k = 0; k < kPerLane; ++k) {
          const int i = lane + 32 * k;
          if (i < D) z[k] = __fadd_rn(z[k], __fmul_rn(pi(i, j), xj));
        }
      }
    }
    bool finite = true;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = lane + 32 * k;
      if (i < D) finite = finite && isfinite(s_x[i]);
    }
    n2 = __all_sync(kFullMask, finite) ? 0.0 : static_cast<double>(NAN);
  }
  if (cst.rotation_identity) {
    // Π = I (HeadConstantsView::rotation_identity; `pi` is not read): the sum above is
    // 0 + … + 1 · xc_i + …, i.e. xc_i + 0.
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = lane + 32 * k;
      if (i < D) z[k] = __fadd_rn(s_x[i], 0.0f);
    }
  }
  const float inv = row_norm_factor(n2, lay, page, slot, lane == 0, status, staged_norm);
  // Scale, encode.
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
      if (staged_row) staged_row[i] = cen[code[k]];
    }
  }
  __syncwarp();
  if constexpr (BITS > 0) {  // the caller's compile-time width (== lay.bits)
    warp_pack_bits<BITS>(s_codes, D, quant::token_codes(page, lay, slot), lane);
  } else {
    warp_pack(s_codes, D, bits, quant::token_codes(page, lay, slot), lane);
  }
  if (lay.qjl == quant::QjlMode::kNone) {
    __syncwarp();
    return;
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
    return;
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

template <int D>
__global__ void __launch_bounds__(kAppendWarps * 32)
    quantize_append_kernel(const __grid_constant__ QuantizeAppendParams p) {
  constexpr int kPerLane = (D + 31) / 32;
  // blockIdx.z = side · batch + b: side 1 is the optional second side (x2, cache2).
  const int side = static_cast<int>(blockIdx.z) >= p.batch ? 1 : 0;  // z < 2 · batch: no division
  const int b = static_cast<int>(blockIdx.z) - side * p.batch;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const quant::CacheView& cache = side ? p.cache2 : p.cache;
  const void* const x_rows = side ? p.x2 : p.x;
  const quant::PageLayout& lay = cache.layout;
  const quant::HeadConstantsView& cst = cache.constants;
  const int bits = lay.bits;
  const int m = lay.qjl_dim;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* s_pit = reinterpret_cast<float*>(smem_raw);  // [D][D+1]: s_pit[j*(D+1)+i] = Π_ij
  float* s_x = s_pit + D * (D + 1) + warp * D;        // this warp's xc, later r
  uint8_t* s_codes = reinterpret_cast<uint8_t*>(s_pit + D * (D + 1) + kAppendWarps * D) +
                     warp * (((D > m ? D : m) + 15) / 16 * 16);
  __shared__ float s_bnd[16], s_cen[16];  // this head's codebook (≤ 15 boundaries, ≤ 16 levels)
  const int levels = 1 << bits;
  // A decode step appends one token per sequence: the kernel is a chain of dependent latencies.
  // The constants (codebook, μ, σ, Π) are requested first, before the wait for the kernel that
  // produced the rows (programmatic dependent launch, pdl.h); then the counts, starts and this
  // warp's first row.
  detail::pdl_launch_dependents();
  const float bnd_r = tid < levels - 1 ? cst.boundaries[h * (levels - 1) + tid] : 0.0f;
  const float cen_r = tid < levels ? cst.centroids[h * levels + tid] : 0.0f;
  float mu[kPerLane], inv_sigma[kPerLane], x_first[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int i = lane + 32 * k;
    mu[k] = (cst.mean && i < D) ? cst.mean[h * D + i] : 0.0f;
    inv_sigma[k] = (cst.scale && i < D) ? cst.scale[h * D + i] : 1.0f;
  }
  // Πᵀ: s_pit[j * (D + 1) + i] = Π_ij (not read when Π = I).
  if (!cst.rotation_identity)
    stage_matrix<D, kAppendWarps * 32>(cst.rotation + static_cast<int64_t>(h) * D * D, s_pit, 1,
                                       D + 1, tid);
  detail::pdl_wait();
  const int count = p.counts ? min(p.counts[b], p.new_tokens) : p.new_tokens;
  const int first = blockIdx.x * kAppendTokensPerCta;
  if (first >= count) return;  // uniform over the CTA
  const int start = p.starts[b];
  const int tok_first = first + warp * kAppendTokensPerWarp;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int i = lane + 32 * k;
    x_first[k] = tok_first < count && i < D
                     ? load_input(x_rows, p.x_dtype, row_offset(p, b, h, tok_first, D) + i)
                     : 0.0f;
  }
  if (tid < levels - 1) s_bnd[tid] = bnd_r;
  if (tid < levels) s_cen[tid] = cen_r;
  __syncthreads();
  // 1/σ as the host computes it: a correctly rounded division.
#pragma unroll
  for (int k = 0; k < kPerLane; ++k)
    if (cst.scale) inv_sigma[k] = __fdiv_rn(1.0f, inv_sigma[k]);
  const float* bnd = s_bnd;
  const float* cen = s_cen;
  const int64_t capacity = static_cast<int64_t>(cache.max_pages) * lay.page_tokens;

  for (int tw = 0; tw < kAppendTokensPerWarp; ++tw) {
    const int tok = first + warp * kAppendTokensPerWarp + tw;
    if (tok >= count) break;  // warp-uniform
    const int64_t pos = static_cast<int64_t>(start) + tok;
    if (pos < 0 || pos >= capacity) {
      if (lane == 0 && p.status) atomicOr(p.status, kQuantizeAppendOutOfCapacity);
      continue;
    }
    const int64_t x0 = row_offset(p, b, h, tok, D);
    uint8_t* page = cache.page(b, h, static_cast<int>(pos / lay.page_tokens));
    const int slot = static_cast<int>(pos % lay.page_tokens);

    float x[kPerLane];
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int i = lane + 32 * k;
      x[k] = i < D ? (tw == 0 ? x_first[k] : load_input(x_rows, p.x_dtype, x0 + i)) : 0.0f;
    }
    encode_row_warp<D>(
        x, mu, inv_sigma, [&](int i, int j) { return s_pit[j * (D + 1) + i]; }, bnd, cen, s_x,
        s_codes, lay, cst, h, page, slot, lane, p.status);
  }
}

// ---------------------------------------------------------------------------------------------
// Tile path (prefill): tensor-core rotation (fp16 or 3xTF32) of 128-row tiles, then 1-2 lanes per
// row.
// ---------------------------------------------------------------------------------------------

// Warps per CTA of the tile path (16 rows each): 8 measured 8% faster than 4 on the 650M prefill
// (kernels/NOTES.md); a compile-time knob for re-measuring (-DTURBOESM_TILE_WARPS=4).
#ifndef TURBOESM_TILE_WARPS
#define TURBOESM_TILE_WARPS 8
#endif
inline constexpr int kTileWarps = TURBOESM_TILE_WARPS;
inline constexpr int kTileRowsPerWarp = 16;  ///< one 16-row MMA tile per warp
inline constexpr int kTileRows = kTileWarps * kTileRowsPerWarp;

/// Lanes that encode one row after the MMA: 2 (each half of the coordinates) when a half's codes
/// and sign bits fill whole 32-bit words (d = 64, 128), else 1.
__host__ __device__ constexpr int tile_tail_lanes(int d, int bits) {
  return ((d / 2) * bits) % 32 == 0 && (d / 2) % 32 == 0 ? 2 : 1;
}

/// Row stride (floats) of the shared x/y tile and of Π: D + 4 makes the MMA fragment loads
/// (8 rows × 4 columns per instruction) hit 32 distinct banks.
__host__ __device__ constexpr int tile_stride(int d) { return d + 4; }

/// Row stride (halves) of Π's fp16 parts on the fp16 MMA path: (D + 8) / 2 words ≡ 4 (mod 32)
/// for D = 64, 128 (and a permutation of the banks for 16, 32): conflict-free B fragments.
/// The same layout as HeadConstantsView::rotation_f16 (copied as is when the cache has it).
__host__ __device__ constexpr int tile_stride_f16(int d) { return rotation_f16_row_stride(d); }

/// The fp16 MMA path (m16n8k16) applies: fp16 rows (exact fp16 A operands) that are not centered,
/// D a multiple of 16.
__host__ __device__ constexpr bool tile_f16_dim(int d) { return d % 16 == 0; }

/// Shared memory (bytes) of quantize_append_tile_kernel<D>: Π split into TF32 high and low parts
/// [2][D][D+4] (the fp16 path's [2][D][D+8] halves fit in it), the x/y tile [kTileRows][D+4],
/// then 1/σ [D] and the codebook (≤ 15 boundaries, ≤ 16 centroids).
__host__ __device__ inline size_t append_tile_smem_bytes(int d) {
  return sizeof(float) * (static_cast<size_t>(2 * d + kTileRows) * tile_stride(d) + d + 32);
}

/// fp32 -> TF32 (round to nearest, ties away: cvt.rna), as a float bit pattern.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

/// 3xTF32 split: x = hi + lo + O(2^-22 |x|), both TF32 (x − hi is exact).
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(x);
  lo = to_tf32(__fsub_rn(x, __uint_as_float(hi)));
}

/// D += A·B, m16n8k8, TF32 inputs, fp32 accumulators (PTX fragment layouts).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// \brief stage_matrix for the tile kernel: the row-major D×D Π (16-byte aligned) to shared
/// memory split into TF32 parts, hi[i * stride + j] and lo[i * stride + j] (split in registers
/// between the 16-byte loads and the stores: one pass, no second sweep over shared memory).
/// Returns whether this thread saw a nonzero lo part.
template <int D, int THREADS>
__device__ __forceinline__ bool stage_rotation_split(const float* __restrict__ src, float* hi,
                                                     uint32_t* lo, int stride, int tid) {
  bool lo_any = false;
  for_each_matrix_vec4<D, THREADS>(src, tid, [&](int i, int j, const float4& v) {
    const float e[4] = {v.x, v.y, v.z, v.w};
    uint32_t h4[4], l4[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      split_tf32(e[c], h4[c], l4[c]);
      lo_any = lo_any || (l4[c] & 0x7fffffffu) != 0u;
    }
    *reinterpret_cast<uint4*>(hi + i * stride + j) = make_uint4(h4[0], h4[1], h4[2], h4[3]);
    *reinterpret_cast<uint4*>(lo + i * stride + j) = make_uint4(l4[0], l4[1], l4[2], l4[3]);
  });
  return lo_any;
}

/// Writes N 32-bit words (little-endian byte stream) to `dst`: word stores when `dst` is 4-byte
/// aligned, else bytes; only the first `bytes` bytes are written.
template <int N>
__device__ __forceinline__ void store_words(uint8_t* dst, const uint32_t (&w)[N], int bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) & 3u) == 0 && bytes == 4 * N) {
#pragma unroll
    for (int i = 0; i < N; ++i) reinterpret_cast<uint32_t*>(dst)[i] = w[i];
  } else {
#pragma unroll
    for (int i = 0; i < 4 * N; ++i)
      if (i < bytes) dst[i] = static_cast<uint8_t>(w[i / 4] >> (8 * (i % 4)));
  }
}

/// Calls f(std::true_type{}) or f(std::false_type{}): a uniform runtime flag as a template
/// argument (`decltype(flag)::value`), one instantiation per value.
template <class F>
__device__ __forceinline__ void with_bool(bool b, F&& f) {
  if (b)
    f(std::true_type{});
  else
    f(std::false_type{});
}

/// \brief Loads rows [0, ROWS) of x (row r at element first_elem + r · row_stride), widened to
/// fp32 and, with CENTER, centered (xc = x − μ), into dst[r * stride + j] (stride a multiple of
/// 4); rows past `valid` are zero. 16-byte loads, all of a thread's issued before its stores,
/// when every row is 16-byte aligned; 16-byte shared stores. The vector width is a template
/// parameter (WIDE: 8 fp16/bf16 elements per 16 bytes, else 4 fp32), so that row and column
/// indices are shifts, not runtime divisions; CENTER too, so that the uncentered rows (the
/// default caches) carry no predicated μ loads.
template <int D, int ROWS, int THREADS, bool WIDE, bool CENTER>
__device__ __forceinline__ void load_tile_rows_vec(const void* x, AppendInput dtype,
                                                   int64_t first_elem, int64_t row_stride,
                                                   int valid, const float* __restrict__ mu,
                                                   float* dst, int stride, int tid) {
  constexpr int kPerVec = WIDE ? 8 : 4, kElemBytes = WIDE ? 2 : 4;
  constexpr int kVecsPerRow = D / kPerVec, kVecs = ROWS * kVecsPerRow;
  constexpr int kPerThread = (kVecs + THREADS - 1) / THREADS;
  const uint8_t* base = static_cast<const uint8_t*>(x) + first_elem * kElemBytes;
  uint4 v[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int idx = k * THREADS + tid;
    const int r = idx / kVecsPerRow, c = idx % kVecsPerRow;
    v[k] = (idx < kVecs && r < valid)
               ? __ldg(reinterpret_cast<const uint4*>(base + r * row_stride * kElemBytes) + c)
               : make_uint4(0u, 0u, 0u, 0u);  // rows past `valid` stay 0 (not −μ) below
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int idx = k * THREADS + tid;
    if (idx >= kVecs) continue;
    const int r = idx / kVecsPerRow, j0 = (idx % kVecsPerRow) * kPerVec;
    float f[kPerVec];
    const uint32_t w[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
    if constexpr (!WIDE) {
#pragma unroll
      for (int e = 0; e < 4; ++e) f[e] = __uint_as_float(w[e]);
    } else if (dtype == AppendInput::kFloat16) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        f[e] = half_bits_to_float_dev(static_cast<uint16_t>(w[e / 2] >> (16 * (e % 2))));
    } else {  // bf16: the high half of an fp32
#pragma unroll
      for (int e = 0; e < 8; ++e)
        f[e] = __uint_as_float(e % 2 ? (w[e / 2] & 0xffff0000u) : (w[e / 2] << 16));
    }
    if constexpr (CENTER) {
      if (r < valid) {
#pragma unroll
        for (int e = 0; e < kPerVec; ++e) f[e] = __fsub_rn(f[e], __ldg(mu + j0 + e));
      }
    }
    float4* d = reinterpret_cast<float4*>(dst + r * stride + j0);  // 16-byte aligned
#pragma unroll
    for (int e = 0; e < kPerVec; e += 4) d[e / 4] = make_float4(f[e], f[e + 1], f[e + 2], f[e + 3]);
  }
}

/// load_tile_rows_vec when the rows are 16-byte aligned, else element by element.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_rows(const void* x, AppendInput dtype, int64_t first_elem,
                                               int64_t row_stride, int valid,
                                               const float* __restrict__ mu, float* dst, int stride,
                                               int tid) {
  const bool wide = dtype != AppendInput::kFloat32;
  const int esize = wide ? 2 : 4;
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) &&
                       ((first_elem * esize) % 16 == 0) && ((row_stride * esize) % 16 == 0);
  if (aligned) {  // D % 8 == 0 (the kernel's static_assert): whole vectors per row
    with_bool(wide, [&](auto kWide) {
      with_bool(mu != nullptr, [&](auto kCenter) {
        load_tile_rows_vec<D, ROWS, THREADS, decltype(kWide)::value, decltype(kCenter)::value>(
            x, dtype, first_elem, row_stride, valid, mu, dst, stride, tid);
      });
    });
    return;
  }
  for (int idx = tid; idx < ROWS * D; idx += THREADS) {
    const int r = idx / D, j = idx % D;
    float v = 0.0f;
    if (r < valid) {
      v = load_input(x, dtype, first_elem + r * row_stride + j);
      if (mu) v = __fsub_rn(v, __ldg(mu + j));
    }
    dst[r * stride + j] = v;
  }
}

/// D += A·B, m16n8k16, fp16 inputs, fp32 accumulators (PTX fragment layouts).
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// \brief The row-major D×D Π (16-byte aligned) to shared memory as two fp16 parts, hi[i·stride+j]
/// = fp16(Π_ij) and lo[i·stride+j] = fp16((Π_ij − hi) · 2^12): Π to ~22 bits, like 3xTF32.
/// Returns whether this thread saw a nonzero lo part (Π exact in fp16, e.g. a Hadamard rotation
/// with entries ±2^-k, needs no lo products).
template <int D, int THREADS>
__device__ __forceinline__ bool stage_rotation_split_f16(const float* __restrict__ src, __half* hi,
                                                         __half* lo, int stride, int tid) {
  bool lo_any = false;
  for_each_matrix_vec4<D, THREADS>(src, tid, [&](int i, int j, const float4& v) {
    const float e[4] = {v.x, v.y, v.z, v.w};
    __half h4[4], l4[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      h4[c] = __float2half_rn(e[c]);
      l4[c] = __float2half_rn(__fmul_rn(__fsub_rn(e[c], __half2float(h4[c])), kRotationF16LoScale));
      lo_any = lo_any || __half2float(l4[c]) != 0.0f;
    }
    const int o = i * stride + j;
    *reinterpret_cast<__half2*>(hi + o) = __halves2half2(h4[0], h4[1]);
    *reinterpret_cast<__half2*>(hi + o + 2) = __halves2half2(h4[2], h4[3]);
    *reinterpret_cast<__half2*>(lo + o) = __halves2half2(l4[0], l4[1]);
    *reinterpret_cast<__half2*>(lo + o + 2) = __halves2half2(l4[2], l4[3]);
  });
  return lo_any;
}

/// Copies `chunks` 16-byte chunks from global `src` to shared `dst` (both 16-byte aligned) by
/// cp.async (no registers); complete after cp_async_wait_all() and a barrier.
template <int THREADS>
__device__ __forceinline__ void copy_to_shared_16_async(const void* __restrict__ src, void* dst,
                                                        int chunks, int tid) {
  const uint4* s4 = static_cast<const uint4*>(src);
  uint4* d4 = static_cast<uint4*>(dst);
  for (int c = tid; c < chunks; c += THREADS) cp_async_16_zfill(d4 + c, s4 + c, 16u);
}

/// \brief Writes the warp's m16n8 accumulator fragments acc[n-tile][4] (rows g, g + 8; columns
/// 8·n-tile + 2t, + 1) over its 16 rows at w (row stride tile_stride(D)), after every lane has read
/// those rows (the TF32 kernel's MMA A operands, which y replaces).
template <int D>
__device__ __forceinline__ void store_tile_fragments(float* w, const float (&acc)[D / 8][4],
                                                     int lane) {
  constexpr int S = tile_stride(D);
  const int g = lane >> 2, t = lane & 3;
  __syncwarp();  // every lane has read the tile's xc
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const int col = nt * 8 + 2 * t;
    *reinterpret_cast<float2*>(w + g * S + col) = make_float2(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<float2*>(w + (g + 8) * S + col) = make_float2(acc[nt][2], acc[nt][3]);
  }
}

/// \brief y = x · Πᵀ for the warp's 16 raw fp16 rows at x16 (row stride tile_stride_f16(D)) on
/// fp16 tensor cores (m16n8k16), written as fp32 to y (row stride tile_stride(D)). A fragments (x)
/// and B fragments (Π's fp16 parts, [n][k] rows: B[k][n] = Π[n][k]) come by ldmatrix, one .x4 per
/// k-step for A and per two n-tiles for B. Per 16-wide k-step, hi·A goes into a fresh accumulator
/// that is added (IEEE-rounded) into the running sum, as the TF32 kernel does per 8; LO: the lo·A
/// products accumulate across k-steps inside the tensor core (their sum is 2^-12 of the result)
/// and are added at the end, y = acc + acc_lo · 2^-12. The output columns go in passes of 32
/// (four n-tiles), so that the accumulators of one pass fit in registers with the lo parts'.
template <int D, bool LO>
__device__ __forceinline__ void rotate_tile_rows_f16(const __half* x16, float* y, const __half* s_hi,
                                                     const __half* s_lo, int lane) {
  static_assert(tile_f16_dim(D), "fp16 MMA path: head_dim must be a multiple of 16");
  constexpr int SH = tile_stride_f16(D), S = tile_stride(D);
  constexpr int kPassTiles = D < 32 ? D / 8 : 4;  // n-tiles per pass (pairs: a multiple of 2)
  const int g = lane >> 2, t = lane & 3;
  // ldmatrix row addresses. A (rows × k): matrices (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15),
  // (8-15, 8-15) = a0..a3. B (n × k rows of Π): (n 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7),
  // (8-15, 8-15) of an n-tile pair = b0, b1 of its first n-tile, then of its second.
  const __half* a_row = x16 + (lane & 15) * SH + (lane >> 4) * 8;
  const int b_row = ((lane & 7) + ((lane >> 4) << 3)) * SH + ((lane >> 3) & 1) * 8;
#pragma unroll 1
  for (int n0 = 0; n0 < D / 8; n0 += kPassTiles) {
    float acc[kPassTiles][4], acc_lo[kPassTiles][4];
#pragma unroll
    for (int nt = 0; nt < kPassTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = acc_lo[nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      const int k0 = ks * 16;
      uint32_t a[4];
      ldmatrix_x4(a, a_row + k0);
#pragma unroll
      for (int np = 0; np < kPassTiles / 2; ++np) {
        const int b_at = b_row + (n0 + 2 * np) * 8 * SH + k0;
        uint32_t bh[4];
        ldmatrix_x4(bh, s_hi + b_at);
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          mma_f16(part, a, bh[2 * q], bh[2 * q + 1]);
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[2 * np + q][e] = __fadd_rn(acc[2 * np + q][e], part[e]);
        }
        if (LO) {
          uint32_t bl[4];
          ldmatrix_x4(bl, s_lo + b_at);
          mma_f16(acc_lo[2 * np], a, bl[0], bl[1]);
          mma_f16(acc_lo[2 * np + 1], a, bl[2], bl[3]);
        }
      }
    }
#pragma unroll
    for (int nt = 0; nt < kPassTiles; ++nt) {
      if (LO) {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          acc[nt][e] = __fmaf_rn(acc_lo[nt][e], 1.0f / kRotationF16LoScale, acc[nt][e]);
      }
      const int col = (n0 + nt) * 8 + 2 * t;
      *reinterpret_cast<float2*>(y + g * S + col) = make_float2(acc[nt][0], acc[nt][1]);
      *reinterpret_cast<float2*>(y + (g + 8) * S + col) = make_float2(acc[nt][2], acc[nt][3]);
    }
  }
}

/// \brief y = xc · Πᵀ for the 16 rows at w (row stride tile_stride(D)) on tensor cores, written
/// over xc: 3xTF32 (both operands split into TF32 hi + lo; lo·hi + hi·lo + hi·hi per k-step in a
/// fresh accumulator, then one IEEE-rounded add into the running fp32 sum). A_EXACT: the rows are
/// exact TF32 values (bf16 / fp16 inputs, not centered), their lo parts are 0 and lo·hi is skipped;
/// !PI_LO: Π is exact in TF32 (every lo part 0), hi·lo is skipped. Skipped terms are all zeros.
template <int D, bool A_EXACT, bool PI_LO>
__device__ __forceinline__ void rotate_tile_rows(float* w, const float* s_pi,
                                                 const uint32_t* s_pi_lo, int lane) {
  constexpr int S = tile_stride(D);
  const int g = lane >> 2, t = lane & 3;
  float acc[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
#pragma unroll 2
  for (int ks = 0; ks < D / 8; ++ks) {
    const int k0 = ks * 8;
    const float a_f[4] = {w[g * S + k0 + t], w[(g + 8) * S + k0 + t], w[g * S + k0 + t + 4],
                          w[(g + 8) * S + k0 + t + 4]};
    uint32_t a_hi[4], a_lo[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (A_EXACT) {
        a_hi[e] = __float_as_uint(a_f[e]);
        a_lo[e] = 0u;
      } else {
        split_tf32(a_f[e], a_hi[e], a_lo[e]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const int bo = (nt * 8 + g) * S + k0 + t;  // B[k][n] = Π[n][k]
      const uint32_t b0_hi = __float_as_uint(s_pi[bo]), b1_hi = __float_as_uint(s_pi[bo + 4]);
      // This k-step's products (small terms first) in a fresh accumulator, then one IEEE-rounded
      // add into the running sum: the tensor core's internal accumulation only spans one k-step.
      float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (!A_EXACT) mma_tf32(part, a_lo, b0_hi, b1_hi);
      if (PI_LO) mma_tf32(part, a_hi, s_pi_lo[bo], s_pi_lo[bo + 4]);
      mma_tf32(part, a_hi, b0_hi, b1_hi);
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = __fadd_rn(acc[nt][e], part[e]);
    }
  }
  store_tile_fragments<D>(w, acc, lane);
}

/// Four consecutive values of y (16-byte aligned fp32, or 8-byte aligned raw fp16 rows: the
/// tile kernels' y when Π = I) as floats (fp16 widening is exact).
__device__ __forceinline__ void load4(const float* y, float (&v)[4]) {
  const float4 y4 = *reinterpret_cast<const float4*>(y);
  v[0] = y4.x;
  v[1] = y4.y;
  v[2] = y4.z;
  v[3] = y4.w;
}
__device__ __forceinline__ void load4(const __half* y, float (&v)[4]) {
  const uint2 w = *reinterpret_cast<const uint2*>(y);
  v[0] = half_bits_to_float_dev(static_cast<uint16_t>(w.x));
  v[1] = half_bits_to_float_dev(static_cast<uint16_t>(w.x >> 16));
  v[2] = half_bits_to_float_dev(static_cast<uint16_t>(w.y));
  v[3] = half_bits_to_float_dev(static_cast<uint16_t>(w.y >> 16));
}

/// \brief The exact path's per-value steps for SPAN coordinates y[0..SPAN) of one row (T: float,
/// or __half for the raw rows when Π = I; see load4): z = y · inv (TOKEN) · 1/σ_j (SCALED),
/// code = #{boundaries < z} (binary search), packed at bit j·BITS of `codes`; SIGN: bit j of
/// `signs` = (z − C[code] ≥ 0).
template <int SPAN, int BITS, bool TOKEN, bool SCALED, bool SIGN, class T>
__device__ __forceinline__ void encode_span(const T* y, float inv, const float* isig,
                                            const float* cen, const float* bnd,
                                            uint32_t (&codes)[(SPAN * BITS + 31) / 32],
                                            uint32_t (&signs)[(SPAN + 31) / 32]) {
#pragma unroll
  for (int w = 0; w < (SPAN * BITS + 31) / 32; ++w) codes[w] = 0u;
#pragma unroll
  for (int w = 0; w < (SPAN + 31) / 32; ++w) signs[w] = 0u;
#pragma unroll
  for (int j4 = 0; j4 < SPAN; j4 += 4) {
    float yv[4];
    load4(y + j4, yv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int j = j4 + e;
      float z = yv[e];
      if (TOKEN) z = __fmul_rn(z, inv);
      if (SCALED) z = __fmul_rn(z, isig[j]);
      // Value j occupies bits [j·BITS, (j + 1)·BITS) of the span's record; its code is the
      // compare-count code. Without sign bits each code bit is ORed into its word as soon as the
      // search knows it (a predicated OR at a compile-time position).
      if constexpr (SIGN) {
        const uint32_t c = quant::encode_value_tree<BITS>(z, bnd);
        const int bit = j * BITS;
        codes[bit / 32] |= c << (bit % 32);
        if (bit % 32 + BITS > 32) codes[bit / 32 + 1] |= c >> (32 - bit % 32);
        signs[j / 32] |= (__fsub_rn(z, cen[c]) >= 0.0f ? 1u : 0u) << (j % 32);
      } else {
        quant::encode_value_tree_bits<BITS>(z, bnd, [&](int k, bool set) {
          const int bit = j * BITS + k;
          if (set) codes[bit / 32] |= 1u << (bit % 32);
        });
      }
    }
  }
}

/// \brief The tile kernels' last step, for the lane that encodes span `part` (of
/// tile_tail_lanes(D, BITS)) of token `tok`: the row's norm factor from n2 (NaN: a non-finite row,
/// flagged), the codes (and sign bits) of y[0..D / lanes) — the span's first coordinate j0 —
/// written into the token's page slot. Positions beyond the cache capacity are flagged, not
/// written.
template <int D, int BITS, class T>
__device__ __forceinline__ void tile_encode_store(const QuantizeAppendParams& p,
                                                  const quant::CacheView& cache, int b, int tok,
                                                  int part, double n2, const T* y,
                                                  const float* s_isig, const float* s_cen,
                                                  const float* s_bnd) {
  constexpr int kLevels = 1 << BITS;
  constexpr int kSpan = D / tile_tail_lanes(D, BITS);
  constexpr int kCodeWords = (kSpan * BITS + 31) / 32;
  constexpr int kSignWords = (kSpan + 31) / 32;
  const quant::PageLayout& lay = cache.layout;
  const int64_t pos = static_cast<int64_t>(p.starts[b]) + tok;
  const int64_t capacity = static_cast<int64_t>(cache.max_pages) * lay.page_tokens;
  if (pos < 0 || pos >= capacity) {
    if (part == 0 && p.status) atomicOr(p.status, kQuantizeAppendOutOfCapacity);
    return;
  }
  const int h = blockIdx.y;
  uint8_t* page = cache.page(b, h, static_cast<int>(pos / lay.page_tokens));
  const int slot = static_cast<int>(pos % lay.page_tokens);
  const float inv = row_norm_factor(n2, lay, page, slot, part == 0, p.status);
  const int j0 = part * kSpan;
  float bnd[kLevels - 1];
#pragma unroll
  for (int q = 0; q < kLevels - 1; ++q) bnd[q] = s_bnd[q];
  uint32_t codes[kCodeWords], signs[kSignWords];
  // One loop per (token norm, σ, sign QJL) combination: the steps a mode does not have cost no
  // issue slots (a multiply by 1 and the sign bit would be exact no-ops, yet predicated slots).
  const bool token = lay.norm == quant::NormMode::kToken, scaled = cache.constants.scale != nullptr;
  const bool sign = lay.qjl == quant::QjlMode::kSign;
  const float* isig = s_isig + j0;
  with_bool(token, [&](auto kToken) {
    with_bool(scaled, [&](auto kScaled) {
      with_bool(sign, [&](auto kSign) {
        encode_span<kSpan, BITS, decltype(kToken)::value, decltype(kScaled)::value,
                    decltype(kSign)::value>(y + j0, inv, isig, s_cen, bnd, codes, signs);
      });
    });
  });
  const int code_off = part * (kSpan * BITS / 8), sign_off = part * (kSpan / 8);
  store_words(quant::token_codes(page, lay, slot) + code_off, codes, kSpan * BITS / 8);
  if (sign) store_words(quant::token_qjl(page, lay, slot) + sign_off, signs, kSpan / 8);
}

/// \brief Stages this head's 1/σ (1 without scales), boundaries and centroids in shared memory.
template <int D, int BITS, int THREADS>
__device__ __forceinline__ void stage_tile_codebook(const quant::HeadConstantsView& cst, int h,
                                                    float* s_isig, float* s_bnd, float* s_cen,
                                                    int tid) {
  constexpr int kLevels = 1 << BITS;
  for (int i = tid; i < D; i += THREADS) {
    s_isig[i] = cst.scale ? __fdiv_rn(1.0f, cst.scale[h * D + i]) : 1.0f;
  }
  if (tid < kLevels - 1) s_bnd[tid] = cst.boundaries[h * (kLevels - 1) + tid];
  if (tid < kLevels) s_cen[tid] = cst.centroids[h * kLevels + tid];
}

/// What a tile CTA serves: blockIdx.z = side · batch + b (side 1: the optional second side, x2 /
/// cache2), head blockIdx.y, the kTileRows tokens from `first` of the sequence's `count` new ones.
struct TileCta {
  int side, b, h, count, first;
  const quant::CacheView* cache;  ///< the side's cache (p.cache or p.cache2)
  const void* x;                  ///< the side's rows (p.x or p.x2)
};
__device__ __forceinline__ TileCta tile_cta(const QuantizeAppendParams& p) {
  TileCta t;
  t.side = static_cast<int>(blockIdx.z) >= p.batch ? 1 : 0;  // z < 2 · batch: no division
  t.b = static_cast<int>(blockIdx.z) - t.side * p.batch;
  t.h = static_cast<int>(blockIdx.y);
  t.count = p.counts ? min(p.counts[t.b], p.new_tokens) : p.new_tokens;
  t.first = static_cast<int>(blockIdx.x) * kTileRows;
  t.cache = t.side ? &p.cache2 : &p.cache;
  t.x = t.side ? p.x2 : p.x;
  return t;
}

/// Without a token norm, the n² a tail lane passes on: NaN (flags the row) when its span or its
/// partner's (TAIL_LANES = 2: lanes 2r, 2r + 1) has a non-finite value, else 0.
template <int TAIL_LANES>
__device__ __forceinline__ double row_flag(bool nonfinite) {
  if (TAIL_LANES == 2) nonfinite = __shfl_xor_sync(kFullMask, nonfinite ? 1 : 0, 1) || nonfinite;
  return nonfinite ? __longlong_as_double(0x7ff8000000000000LL) : 0.0;
}

/// 0 · v summed over a span (one FMA per value, four chains; the rounded intrinsics keep nvcc
/// from folding the products away): ±0 for a finite span, NaN as soon as one value is ±inf or
/// NaN (0 · inf = NaN). SPAN values at `v`: fp32 (16-byte aligned) or raw fp16 (in pairs).
template <int SPAN>
__device__ __forceinline__ bool span_nonfinite(const float* v) {
  float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < SPAN; j += 4) {
    const float4 x = *reinterpret_cast<const float4*>(v + j);
    f[0] = __fmaf_rn(x.x, 0.0f, f[0]);
    f[1] = __fmaf_rn(x.y, 0.0f, f[1]);
    f[2] = __fmaf_rn(x.z, 0.0f, f[2]);
    f[3] = __fmaf_rn(x.w, 0.0f, f[3]);
  }
  return __fadd_rn(__fadd_rn(f[0], f[1]), __fadd_rn(f[2], f[3])) != 0.0f;  // NaN
}
template <int SPAN>
__device__ __forceinline__ bool span_nonfinite(const __half* v) {
  const __half2 zero = __float2half2_rn(0.0f);
  __half2 f[4] = {zero, zero, zero, zero};
#pragma unroll
  for (int j = 0; j < SPAN; j += 8) {
    const uint4 x = *reinterpret_cast<const uint4*>(v + j);
    const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) f[q] = __hfma2(*reinterpret_cast<const __half2*>(&w[q]), zero, f[q]);
  }
  const __half2 sum = __hadd2(__hadd2(f[0], f[1]), __hadd2(f[2], f[3]));
  return (*reinterpret_cast<const uint32_t*>(&sum) & 0x7fff7fffu) != 0u;  // a NaN half
}

__device__ __forceinline__ float as_float(float v) { return v; }
__device__ __forceinline__ float as_float(__half v) { return __half2float(v); }

/// \brief The n² a tile kernel's tail lane (r, part) passes to tile_encode_store, from the warp's
/// 16 rows xc at `rows` (`stride` elements apart; fp32 or raw fp16), read before y replaces them.
/// Token norm: Σ xc_j² in double, increasing j (TurboQuantizer::encode's order), by lane r < 16
/// for row r. Without a norm n² only flags non-finite rows (n² is finite iff every xc is): each
/// tail lane checks its own span, and n² is NaN for a flagged row, else 0 (row_flag).
template <int D, int BITS, class T>
__device__ __forceinline__ double tile_row_n2(const T* rows, int stride, quant::NormMode norm,
                                              int lane) {
  constexpr int kTailLanes = tile_tail_lanes(D, BITS), kSpan = D / kTailLanes;
  const int r = lane / kTailLanes, part = lane % kTailLanes;
  if (norm == quant::NormMode::kToken) {
    double n2 = 0.0;
    if (lane < kTileRowsPerWarp) {
#pragma unroll 8
      for (int j = 0; j < D; ++j) {
        const double v = static_cast<double>(as_float(rows[lane * stride + j]));
        n2 = __dadd_rn(n2, __dmul_rn(v, v));
      }
    }
    return __shfl_sync(kFullMask, n2, r < kTileRowsPerWarp ? r : 0);
  }
  const bool bad = r < kTileRowsPerWarp && span_nonfinite<kSpan>(rows + r * stride + part * kSpan);
  return row_flag<kTailLanes>(bad);
}

/// Minimum CTAs per SM the tile kernels are compiled for: 3 at D ≤ 64 (≤ 85 registers; shared
/// memory allows 3 there) measured 9–11% faster than the 2 that 116 registers allowed
/// (kernels/NOTES.md); at D = 128 shared memory allows one CTA whatever the registers.
__host__ __device__ constexpr int tile_min_blocks(int d) { return d <= 64 ? 3 : 1; }

/// The 3xTF32 tile kernel: rows that the fp16 kernel does not take (fp32 or bf16 rows, centered
/// rows, D not a multiple of 16; tile_f16_side). Rows are widened (and centered) into an fp32
/// tile that y then replaces.
template <int D, int BITS>
__global__ void __launch_bounds__(kTileWarps * 32, tile_min_blocks(D))
    quantize_append_tile_kernel(const __grid_constant__ QuantizeAppendParams p) {
  static_assert(D % 8 == 0, "head_dim must be a multiple of 8 (MMA k and n steps)");
  constexpr int S = tile_stride(D);
  const TileCta t = tile_cta(p);
  if (t.first >= t.count) return;  // uniform over the CTA
  const int b = t.b, h = t.h, count = t.count, first = t.first;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const quant::HeadConstantsView& cst = t.cache->constants;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* s_pi = reinterpret_cast<float*>(smem_raw);  // [D][S]: TF32 high part of Π_ij at i*S + j
  uint32_t* s_pi_lo = reinterpret_cast<uint32_t*>(s_pi + D * S);  // [D][S]: TF32 low parts
  float* s_x = s_pi + 2 * D * S;                                  // [kTileRows][S]: xc, then y
  float* s_isig = s_x + kTileRows * S;                            // [D]
  float* s_bnd = s_isig + D;                                      // [kLevels - 1]
  float* s_cen = s_bnd + 16;                                      // [kLevels]
  const bool a_exact = p.x_dtype != AppendInput::kFloat32 && cst.mean == nullptr;
  const float* rot = cst.rotation + static_cast<int64_t>(h) * D * D;
  // Π = I (HeadConstantsView::rotation_identity): no Π in shared memory, no MMAs; y = xc, the
  // values the MMAs give for the identity matrix (a zero's sign aside: no code or sign bit
  // depends on it).
  const bool identity = cst.rotation_identity;
  bool lo_mine = false;
  if (!identity) lo_mine = stage_rotation_split<D, kTileWarps * 32>(rot, s_pi, s_pi_lo, S, tid);
  stage_tile_codebook<D, BITS, kTileWarps * 32>(cst, h, s_isig, s_bnd, s_cen, tid);
  // Rows of the tile, centered (xc = x − μ, as the host), zero past `count`.
  load_tile_rows<D, kTileRows, kTileWarps * 32>(
      t.x, p.x_dtype, row_offset(p, b, h, first, D), token_stride(p, D),
      count - first, cst.mean ? cst.mean + h * D : nullptr, s_x, S, tid);
  const bool pi_lo = __syncthreads_or(lo_mine ? 1 : 0) != 0;

  // Each warp owns the 16 rows [16 warp, 16 warp + 16) (one MMA tile).
  float* w_x = s_x + warp * kTileRowsPerWarp * S;
  constexpr int kTailLanes = tile_tail_lanes(D, BITS);
  const int r = lane / kTailLanes, part = lane % kTailLanes;
  const double n2 = tile_row_n2<D, BITS>(w_x, S, t.cache->layout.norm, lane);  // before y
  __syncwarp();

  // y = xc · Πᵀ (k = j, n = i) on tensor cores, written over the tile's xc.
  if (!identity) {
    with_bool(a_exact, [&](auto kAExact) {
      with_bool(pi_lo, [&](auto kPiLo) {
        rotate_tile_rows<D, decltype(kAExact)::value, decltype(kPiLo)::value>(w_x, s_pi, s_pi_lo,
                                                                              lane);
      });
    });
  }
  __syncwarp();

  // Encode: kTailLanes lanes per row, each a contiguous span of kSpan coordinates whose codes
  // and sign bits fill whole 32-bit words (the exact path's arithmetic per value).
  const int tok = first + warp * kTileRowsPerWarp + r;
  if (r >= kTileRowsPerWarp || tok >= count) return;
  tile_encode_store<D, BITS>(p, *t.cache, b, tok, part, n2, w_x + r * S, s_isig, s_cen, s_bnd);
}

/// Shared memory (bytes) of quantize_append_tile_f16_kernel<D>: Π's fp16 parts [2][D][SH] (hi,
/// lo), the raw fp16 rows [kTileRows][SH] (SH = tile_stride_f16(D)), y [kTileRows][D + 4]
/// floats, then 1/σ [D] and the codebook (≤ 15 boundaries, ≤ 16 centroids).
__host__ __device__ inline size_t append_tile_f16_smem_bytes(int d) {
  return sizeof(__half) * static_cast<size_t>(2 * d + kTileRows) * tile_stride_f16(d) +
         sizeof(float) * (static_cast<size_t>(kTileRows) * tile_stride(d) + d + 32);
}

/// Whether the fp16 tile kernel takes a side: fp16 rows (exact fp16 MMA operands) that are not
/// centered, D a multiple of 16 (m16n8k16).
__host__ __device__ inline bool tile_f16_side(int d, AppendInput dtype,
                                              const quant::HeadConstantsView& cst) {
  return tile_f16_dim(d) && dtype == AppendInput::kFloat16 && cst.mean == nullptr;
}

/// \brief The fp16 tile kernel (the prefill's usual case: fp16 K/V, uncentered caches). As the
/// TF32 kernel, with the rows kept as they are: cp.async copies the raw fp16 rows (and Π's
/// pre-split fp16 parts) into shared memory without passing through registers, the MMAs take
/// their A and B fragments by ldmatrix, the finiteness check runs on fp16 pairs, and y goes to
/// its own fp32 tile — or, with Π = I, the tail encodes the raw rows. The launcher sends only
/// sides with tile_f16_side() here (no centering).
template <int D, int BITS>
__global__ void __launch_bounds__(kTileWarps * 32, tile_min_blocks(D))
    quantize_append_tile_f16_kernel(const __grid_constant__ QuantizeAppendParams p) {
  static_assert(tile_f16_dim(D), "the fp16 tile kernel needs head_dim a multiple of 16");
  constexpr int S = tile_stride(D), SH = tile_stride_f16(D);
  constexpr int kThreads = kTileWarps * 32;
  const TileCta t = tile_cta(p);
  if (t.first >= t.count) return;  // uniform over the CTA
  const int b = t.b, h = t.h, count = t.count, first = t.first;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const quant::HeadConstantsView& cst = t.cache->constants;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* s_hi = reinterpret_cast<__half*>(smem_raw);  // [D][SH]: fp16(Π), [n][k] rows
  __half* s_lo = s_hi + D * SH;                        // [D][SH]: the low parts
  __half* s_x = s_lo + D * SH;                         // [kTileRows][SH]: raw rows
  float* s_y = reinterpret_cast<float*>(s_x + kTileRows * SH);  // [kTileRows][S]: y
  float* s_isig = s_y + kTileRows * S;                          // [D]
  float* s_bnd = s_isig + D;                                    // [kLevels - 1]
  float* s_cen = s_bnd + 16;                                    // [kLevels]
  const bool identity = cst.rotation_identity;  // as the TF32 kernel: no Π, no MMAs
  bool lo_mine = false;
  if (!identity && cst.rotation_f16 != nullptr) {  // pre-split by the cache: copy hi (and lo)
    lo_mine = __ldg(cst.rotation_f16_lo + h) != 0;
    copy_to_shared_16_async<kThreads>(cst.rotation_f16 + static_cast<int64_t>(h) * 2 * D * SH, s_hi,
                                      (lo_mine ? 2 : 1) * D * SH * 2 / 16, tid);
  } else if (!identity) {
    lo_mine = stage_rotation_split_f16<D, kThreads>(cst.rotation + static_cast<int64_t>(h) * D * D,
                                                    s_hi, s_lo, SH, tid);
  }
  // The tile's rows, zero past `count`: 16-byte copies when every row is 16-byte aligned.
  {
    const __half* x = static_cast<const __half*>(t.x) + row_offset(p, b, h, first, D);
    const int64_t stride = token_stride(p, D);
    const int valid = count - first;
    constexpr int kVecsPerRow = D / 8;
    if (reinterpret_cast<uintptr_t>(x) % 16 == 0 && stride % 8 == 0) {
      for (int idx = tid; idx < kTileRows * kVecsPerRow; idx += kThreads) {
        const int rr = idx / kVecsPerRow, c = idx % kVecsPerRow;
        const bool in = rr < valid;
        cp_async_16_zfill(s_x + rr * SH + c * 8, in ? x + rr * stride + c * 8 : x, in ? 16u : 0u);
      }
    } else {
      for (int idx = tid; idx < kTileRows * D; idx += kThreads) {
        const int rr = idx / D, j = idx % D;
        s_x[rr * SH + j] = rr < valid ? x[rr * stride + j] : __float2half_rn(0.0f);
      }
    }
  }
  stage_tile_codebook<D, BITS, kThreads>(cst, h, s_isig, s_bnd, s_cen, tid);
  cp_async_wait_all();
  const bool pi_lo = __syncthreads_or(lo_mine ? 1 : 0) != 0;

  const __half* w_x = s_x + warp * kTileRowsPerWarp * SH;  // this warp's 16 rows
  float* w_y = s_y + warp * kTileRowsPerWarp * S;
  constexpr int kTailLanes = tile_tail_lanes(D, BITS);
  const int r = lane / kTailLanes, part = lane % kTailLanes;
  const double n2 = tile_row_n2<D, BITS>(w_x, SH, t.cache->layout.norm, lane);  // xc = x here

  if (!identity) {
    with_bool(pi_lo, [&](auto kPiLo) {
      rotate_tile_rows_f16<D, decltype(kPiLo)::value>(w_x, w_y, s_hi, s_lo, lane);
    });
    __syncwarp();  // y's fragments were written by other lanes of the warp
  }

  const int tok = first + warp * kTileRowsPerWarp + r;
  if (r >= kTileRowsPerWarp || tok >= count) return;
  if (identity) {
    tile_encode_store<D, BITS>(p, *t.cache, b, tok, part, n2, w_x + r * SH, s_isig, s_cen, s_bnd);
  } else {
    tile_encode_store<D, BITS>(p, *t.cache, b, tok, part, n2, w_y + r * S, s_isig, s_cen, s_bnd);
  }
}

}  // namespace turboesm::kernels::detail
