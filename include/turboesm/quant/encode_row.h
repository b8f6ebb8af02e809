// SPDX-License-Identifier: MIT
#pragma once
/// \file encode_row.h
/// \brief The per-row scalar steps of the CPU cache append (model/turbo_cache.cpp), after the
/// rotation has been applied to a whole batch of rows by one GEMM: scaling, Lloyd-Max codes,
/// packing, and the QJL residual / sign bits. `encode_rotated_row_ref` is the plain twin (the
/// exact steps of TurboQuantizer::encode after its rotation); `encode_rotated_row_avx2` is the
/// x86-64 AVX2 version (chosen at run time, see `encode_row_avx2_supported`), byte-identical to
/// the ref: the same float multiplies and comparisons, only eight coordinates at a time (codes
/// by counting the boundaries below z with compare masks, packing by variable shifts and a
/// horizontal sum, sign bits by movemask).
///
/// Formats exactly as format.h / bitpack.h / qjl.h: codes packed at BITS bits each, little-endian
/// bit order (8 codes = BITS bytes); sign bit j set where r_j ≥ 0 (pack_signs).

#include <cstdint>
#include <cstring>

#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/qjl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TURBOESM_ENCODE_ROW_AVX2 1
#endif

namespace turboesm::quant {

/// \brief Σ_j x_j² in double, four partial sums (the order differs from a sequential sum only
/// in the last bits of a double).
/// \param x [d]
inline double sum_squares_f64_ref(const float* x, int d) {
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  int j = 0;
  for (; j + 4 <= d; j += 4) {
    a0 += double(x[j]) * double(x[j]);
    a1 += double(x[j + 1]) * double(x[j + 1]);
    a2 += double(x[j + 2]) * double(x[j + 2]);
    a3 += double(x[j + 3]) * double(x[j + 3]);
  }
  for (; j < d; ++j) a0 += double(x[j]) * double(x[j]);
  return (a0 + a1) + (a2 + a3);
}

/// \brief Quantizes one rotated row y = Π (x − μ) [d] as TurboQuantizer::encode does after its
/// rotation: z_j = (y_j · inv_norm) · inv_scale_j, code_j = #{i : z_j > boundaries[i]}.
/// \param y          [d] rotated row
/// \param d          row length (any; the AVX2 twin needs a multiple of 8)
/// \param inv_norm   1/‖x − μ‖ for NormMode::kToken (0 for a zero vector), else 1
/// \param inv_scale  [d] 1/σ_j (computed as `1.0f / σ_j`), or nullptr (no per-coordinate scale)
/// \param boundaries [2^BITS − 1] ascending decision boundaries
/// \param centroids  [2^BITS] (read only when `residual` or `sign_bits` is set)
/// \param packed     [d·BITS/8] output codes
/// \param residual   [d] r_j = z_j − centroids[code_j], or nullptr
/// \param sign_bits  [d/8] bit j set where r_j ≥ 0, or nullptr
template <int BITS>
inline void encode_rotated_row_ref(const float* y, int d, float inv_norm, const float* inv_scale,
                                   const float* boundaries, const float* centroids, uint8_t* packed,
                                   float* residual, uint8_t* sign_bits) {
  static_assert(BITS >= 1 && BITS <= 4, "encode_rotated_row_ref: BITS must be in 1..4");
  TURBOESM_CHECK(d > 0 && d <= kMaxHeadDim && (sign_bits == nullptr || d % 8 == 0),
                 "encode_rotated_row_ref: d must be in [1, ", kMaxHeadDim,
                 "] (a multiple of 8 with sign bits), got ", d);
  uint8_t codes[kMaxHeadDim];
  float r[kMaxHeadDim];
  // Two plain loops, the residual one outside any condition inside the loop: GCC 12/13 at -O3
  // (loop unswitching on `residual || sign_bits` + vectorisation) miscompiled the fused loop for
  // BITS = 1 (the residual used the wrong centroid; EncodeRowTest *b1* caught it on the GPU
  // machine's g++ 13, reproduced with a standalone g++ 12 -O3 build).
  for (int j = 0; j < d; ++j) {
    float z = y[j] * inv_norm;
    if (inv_scale) z = z * inv_scale[j];
    r[j] = z;
    codes[j] = static_cast<uint8_t>(encode_value<BITS>(z, boundaries));
  }
  pack_codes<BITS>(codes, static_cast<size_t>(d), packed);
  if (residual == nullptr && sign_bits == nullptr) return;
  for (int j = 0; j < d; ++j) r[j] -= centroids[codes[j]];
  if (residual)
    for (int j = 0; j < d; ++j) residual[j] = r[j];
  if (sign_bits) pack_signs(r, d, sign_bits);
}

#ifdef TURBOESM_ENCODE_ROW_AVX2

/// \brief True when the CPU runs the AVX2 twins (AVX2 + FMA).
inline bool encode_row_avx2_supported() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

/// \brief sum_squares_f64_ref with four-wide double FMAs (d a multiple of 8).
__attribute__((target("avx2,fma"))) inline double sum_squares_f64_avx2(const float* x, int d) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (int j = 0; j < d; j += 8) {
    const __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
    const __m256d hi = _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  const __m256d a = _mm256_add_pd(a0, a1);
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/// \brief encode_rotated_row_ref, eight coordinates at a time; byte-identical output. `d` must be
/// a multiple of 8 (every supported head dim is).
template <int BITS>
__attribute__((target("avx2,fma"))) inline void encode_rotated_row_avx2(
    const float* y, int d, float inv_norm, const float* inv_scale, const float* boundaries,
    const float* centroids, uint8_t* packed, float* residual, uint8_t* sign_bits) {
  static_assert(BITS >= 1 && BITS <= 4, "encode_rotated_row_avx2: BITS must be in 1..4");
  constexpr int kLevels = 1 << BITS;
  __m256 bnd[kLevels - 1];
  for (int i = 0; i < kLevels - 1; ++i) bnd[i] = _mm256_set1_ps(boundaries[i]);
  const bool want_r = residual != nullptr || sign_bits != nullptr;
  alignas(32) float cent[16] = {0};
  if (want_r)
    for (int c = 0; c < kLevels; ++c) cent[c] = centroids[c];
  const __m256 clo = _mm256_load_ps(cent), chi = _mm256_load_ps(cent + 8);
  const __m256 vinv = _mm256_set1_ps(inv_norm);
  const __m256i shifts =
      _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  // Groups are written 4 bytes wide while that stays inside `packed` (the extra bytes are
  // overwritten by the next groups), the rest BITS bytes: never writes past `packed`.
  for (int g = 0; g < d / 8; ++g) {
    __m256 z = _mm256_mul_ps(_mm256_loadu_ps(y + 8 * g), vinv);
    if (inv_scale) z = _mm256_mul_ps(z, _mm256_loadu_ps(inv_scale + 8 * g));
    __m256i cnt = _mm256_setzero_si256();
    for (int i = 0; i < kLevels - 1; ++i)  // mask lanes are −1 where z > b_i (false for NaN)
      cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(z, bnd[i], _CMP_GT_OQ)));
    // Σ code_k << (BITS·k): the fields do not overlap, so the sum is the bitwise or.
    const __m256i f = _mm256_sllv_epi32(cnt, shifts);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(f), _mm256_extracti128_si256(f, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    const uint32_t w = static_cast<uint32_t>(_mm_cvtsi128_si32(s));
    if (BITS * g + 4 <= BITS * (d / 8))
      std::memcpy(packed + BITS * g, &w, sizeof(w));
    else
      std::memcpy(packed + BITS * g, &w, BITS);
    if (!want_r) continue;
    __m256 c;
    if constexpr (BITS == 4) {
      const __m256 a = _mm256_permutevar8x32_ps(clo, cnt);
      const __m256 b = _mm256_permutevar8x32_ps(chi, cnt);
      c = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(cnt, 28)));
    } else {
      c = _mm256_permutevar8x32_ps(clo, cnt);
    }
    const __m256 r = _mm256_sub_ps(z, c);
    if (residual) _mm256_storeu_ps(residual + 8 * g, r);
    if (sign_bits)
      sign_bits[g] = static_cast<uint8_t>(
          _mm256_movemask_ps(_mm256_cmp_ps(r, _mm256_setzero_ps(), _CMP_GE_OQ)));
  }
}

#endif  // TURBOESM_ENCODE_ROW_AVX2

/// \brief The fastest twin this CPU runs (AVX2 for d a multiple of 8 on x86-64, else the ref).
template <int BITS>
inline void encode_rotated_row(const float* y, int d, float inv_norm, const float* inv_scale,
                               const float* boundaries, const float* centroids, uint8_t* packed,
                               float* residual, uint8_t* sign_bits) {
#ifdef TURBOESM_ENCODE_ROW_AVX2
  if (d % 8 == 0 && d <= kMaxHeadDim && encode_row_avx2_supported()) {
    encode_rotated_row_avx2<BITS>(y, d, inv_norm, inv_scale, boundaries, centroids, packed,
                                  residual, sign_bits);
    return;
  }
#endif
  encode_rotated_row_ref<BITS>(y, d, inv_norm, inv_scale, boundaries, centroids, packed, residual,
                               sign_bits);
}

/// \brief sum_squares_f64_ref, or its AVX2 twin where the CPU runs it.
inline double sum_squares_f64(const float* x, int d) {
#ifdef TURBOESM_ENCODE_ROW_AVX2
  if (d % 8 == 0 && encode_row_avx2_supported()) return sum_squares_f64_avx2(x, d);
#endif
  return sum_squares_f64_ref(x, d);
}

}  // namespace turboesm::quant
