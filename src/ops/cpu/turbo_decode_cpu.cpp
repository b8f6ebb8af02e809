// SPDX-License-Identifier: MIT
/// \file turbo_decode_cpu.cpp
/// \brief CPU decode attention over the compressed cache (ops/turbo_decode.h), and its `_ref` twin.
///
/// Fast path, per query row (b, h, i) and token range (split):
///  - q' = sm_scale · σ_K ⊙ Π_K q, once. ⟨q, μ_K⟩ is the same for every token and cancels in the
///    softmax, so it is not computed.
///  - Pair table T[k][a | b << BITS] = q'_{2k} C_K[a] + q'_{2k+1} C_K[b] (d/2 × 4^BITS floats: 2 KB
///    at 2 bits, 8 KB at 3 bits, d = 64): one look-up scores two coordinates; 8 codes (= BITS
///    bytes of the bit stream) give 4 look-ups. QJL sign bits are scored with a byte table
///    (Σ over the set bits of a byte of q' or S q'), so Σ ±u = 2 Σ_bytes table − Σ u.
///  - Scores of a chunk of tokens first (chunk max), then p = exp(s − m) with a vectorisable exp,
///    then V: instead of acc_j += p·n·C_V[c_j] (d look-ups and FMAs per token) the weight p·n is
///    added to a pair histogram H[k][pair code] (d/2 adds per token); after the range,
///    acc_{2k} = Σ_pair H[k][pair] C_V[a], acc_{2k+1} = Σ_pair H[k][pair] C_V[b]. The online
///    softmax rescales H when a chunk raises the running max.
///  - Splits (flash-decoding): each range yields (m, l, acc); the merge rescales and sums them;
///    one inverse rotation per row: out = Π_Vᵀ (σ_V ⊙ acc / l) + μ_V.
/// Threads: at::parallel_for over rows × splits.

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/ops/turbo_decode.h"
#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/half.h"
#include "turboesm/quant/qjl.h"
#include "turboesm/quant/quantizer.h"
#include "turboesm/quant/rotation.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the packed code layout is read as little-endian words");

namespace turboesm::ops {
namespace {

using quant::CacheView;
using quant::DecodeParams;
using quant::NormMode;
using quant::QjlMode;

/// A split shorter than this costs more in table building and merging than it saves.
constexpr int kSplitMinTokens = 512;
/// Tokens scored before their softmax weights are formed (bounds the score buffer).
constexpr int kChunkTokens = 512;
/// Largest page the SIMD row kernel's score buffer holds (format.h default: 64).
constexpr int kMaxPageTokens = 256;
/// Tasks per thread the automatic split aims at (load balance across unequal lengths).
constexpr int kTasksPerThread = 2;

/// exp(x) for x ≤ 0 (x ≥ −87 clamped), relative error < 3e-7, branch-free so the loop over a
/// chunk vectorises: 2^n · 2^f with n = round(x·log2 e) (magic-number rounding), |f| ≤ 1/2,
/// 2^f by a degree-6 Taylor polynomial of e^(f ln 2).
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.4426950408889634f;
  constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23: adding it rounds to an integer
  const float r = (t + kMagic) - kMagic;
  const float f = (t - r) * 0.6931471805599453f;  // in [−ln2/2, ln2/2]
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int n = static_cast<int>(r);
  uint32_t bits = static_cast<uint32_t>(n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

/// Little-endian load of the BITS bytes that hold 8 codes (byte by byte: never reads past them).
template <int BITS>
inline uint32_t load_group(const uint8_t* p) {
  uint32_t w = p[0];
  if (BITS > 1) w |= static_cast<uint32_t>(p[1]) << 8;
  if (BITS > 2) w |= static_cast<uint32_t>(p[2]) << 16;
  if (BITS > 3) w |= static_cast<uint32_t>(p[3]) << 24;
  return w;
}

/// Same, as one unaligned 32-bit load; for 3 bits it reads the first byte of the next group, so
/// callers use it for every group of a token but the last (x86/ARM little-endian hosts).
template <int BITS>
inline uint32_t load_group_wide(const uint8_t* p) {
  if constexpr (BITS == 3 || BITS == 4) {
    uint32_t w;
    std::memcpy(&w, p, sizeof(w));
    return BITS == 3 ? (w & 0xFFFFFFu) : w;
  } else {
    return load_group<BITS>(p);
  }
}

/// Byte table of a sign-bit stream over u[0..n): tab[g * 256 + byte] = Σ_{bit k of byte} u[8g + k].
void build_sign_table(const float* u, int n, float* tab) {
  for (int g = 0; g < n / 8; ++g) {
    float* t = tab + g * 256;
    t[0] = 0.0f;
    for (int byte = 1; byte < 256; ++byte)
      t[byte] = t[byte & (byte - 1)] + u[8 * g + __builtin_ctz(static_cast<unsigned>(byte))];
  }
}

/// Σ_i ±u_i (+ where bit i is set) from the byte table: 2 Σ_g tab[g][byte_g] − Σ u.
inline float signed_sum_table(const float* tab, const uint8_t* bits, int n_bytes, float u_sum) {
  float a = 0.0f;
  for (int g = 0; g < n_bytes; ++g) a += tab[g * 256 + bits[g]];
  return 2.0f * a - u_sum;
}

/// Per-thread scratch (sized for the largest mode on first use).
struct Scratch {
  std::vector<float> q_rot;      // [d]
  std::vector<float> k_table;    // [d/2, L²]
  std::vector<float> qjl_u;      // [m] (S q' for kProd, q' for kSign)
  std::vector<float> qjl_table;  // [m/8, 256]
  std::vector<float> v_hist;     // [d/2, L²]
  std::vector<float> scores;     // [kChunkTokens]
};

/// One row's partial result over a token range.
struct Partial {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.0f;
};

/// q' = sm_scale · σ ⊙ Π q (dense matvec, 4 partial sums per output).
void rotate_query(const float* rot, const float* scale, const float* q, int d, float sm_scale,
                  float* out) {
  for (int i = 0; i < d; ++i) {
    const float* row = rot + static_cast<size_t>(i) * d;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (int j = 0; j < d; j += 4) {
      a0 += row[j] * q[j];
      a1 += row[j + 1] * q[j + 1];
      a2 += row[j + 2] * q[j + 2];
      a3 += row[j + 3] * q[j + 3];
    }
    float y = (a0 + a1) + (a2 + a3);
    if (scale) y *= scale[i];
    out[i] = y * sm_scale;
  }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA row kernel (x86-64, chosen at run time; K bits == V bits ∈ {2, 3, 4}, K norm/QJL any,
// V norm any). 8 codes = BITS bytes → one vector of 8 indices (variable shifts); centroids by an
// in-register table look-up (vpermps; 4 bits: two tables + blend on bit 3); scores by FMA with q',
// V accumulated directly as acc += p·n · C_V[codes] (8-wide FMAs, acc in registers). Processed
// page by page: scores of the page (8 tokens at a time, their partial-sum vectors reduced
// together by reduce8), QJL terms and norms, online-softmax rescale, exp and its sum (8 wide), V
// (the weight broadcast from memory). The shuffle port (vpermps) is the bottleneck, so the
// per-token horizontal sums and weight broadcasts that also used it are gone.
// ---------------------------------------------------------------------------------------------
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TURBOESM_DECODE_AVX2 1

using SimdRowFn = void (*)(const DecodeParams&, int, int, int, int, const Scratch&, Partial*,
                           float*);

namespace avx2 {

#define TURBOESM_AVX2 __attribute__((target("avx2,fma,f16c")))

/// The 8 codes of group g (BITS bytes at codes + g·BITS), one per lane in the low bits (higher
/// bits hold neighbouring codes; lookup() ignores them). `wide`: one 4-byte broadcast load
/// straight from memory (no shuffle-port uop), which for BITS < 4 reads up to 3 bytes past the
/// group; the caller clears it where those bytes might lie past the page buffer.
template <int BITS>
TURBOESM_AVX2 inline __m256i group_indices(const uint8_t* codes, int g, bool wide) {
  const __m256i shifts =
      _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  int32_t w;
  if (BITS == 4 || wide) {
    std::memcpy(&w, codes + BITS * g, 4);
  } else {
    w = static_cast<int32_t>(load_group<BITS>(codes + BITS * g));
  }
  return _mm256_srlv_epi32(_mm256_set1_epi32(w), shifts);
}

/// C[idx & (2^BITS − 1)] for 8 lanes; lo = C[0..8) (replicated for BITS < 3), hi = C[8..16).
template <int BITS>
TURBOESM_AVX2 inline __m256 lookup(__m256 lo, __m256 hi, __m256i idx) {
  if constexpr (BITS == 4) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    const __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  } else {
    // vpermps reads the low 3 bits. For BITS < 3 they include bits of the neighbouring code; the
    // table is replicated (entry c = C[c mod 2^BITS], see run_row), so no mask is needed.
    (void)hi;
    return _mm256_permutevar8x32_ps(lo, idx);
  }
}

TURBOESM_AVX2 inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

TURBOESM_AVX2 inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

/// exp_nonpositive for 8 lanes (same polynomial and rounding trick).
TURBOESM_AVX2 inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 r = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
  const __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, r), _mm256_set1_ps(0.6931471805599453f));
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i n = _mm256_cvtps_epi32(r);
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/// Sums of the lanes of 8 vectors, as one vector (lane u = Σ lanes of a[u]). Blends run on three
/// ports; only 7 shuffles (the port vpermps also needs) per 8 tokens instead of 3 per token.
/// Even lanes: x[2k] + x[2k+1], odd lanes: y[2k] + y[2k+1].
TURBOESM_AVX2 inline __m256 reduce_pair(__m256 x, __m256 y) {
  const __m256 b = _mm256_blend_ps(x, y, 0xAA);
  const __m256 c = _mm256_permute_ps(_mm256_blend_ps(y, x, 0xAA), _MM_SHUFFLE(2, 3, 0, 1));
  return _mm256_add_ps(b, c);
}

/// Lanes 0,1 (4,5): x[k] + x[k+2] of its half, lanes 2,3 (6,7): the same of y.
TURBOESM_AVX2 inline __m256 reduce_quad(__m256 x, __m256 y) {
  const __m256 b = _mm256_blend_ps(x, y, 0xCC);
  const __m256 c = _mm256_permute_ps(_mm256_blend_ps(y, x, 0xCC), _MM_SHUFFLE(1, 0, 3, 2));
  return _mm256_add_ps(b, c);
}

TURBOESM_AVX2 inline __m256 reduce8(const __m256* a) {
  const __m256 lo = reduce_quad(reduce_pair(a[0], a[1]), reduce_pair(a[2], a[3]));
  const __m256 hi = reduce_quad(reduce_pair(a[4], a[5]), reduce_pair(a[6], a[7]));
  return _mm256_add_ps(_mm256_blend_ps(lo, hi, 0xF0), _mm256_permute2f128_ps(lo, hi, 0x21));
}

/// fp16 → float of 8 consecutive values.
TURBOESM_AVX2 inline __m256 load_half8(const uint16_t* h) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

/// Σ_j q'_j C_K[code_j] of one token, as 8 partial sums (`wide_last`: its last group may be
/// loaded 4 bytes wide).
template <int BITS, int D>
TURBOESM_AVX2 inline __m256 k_dot_slot(const uint8_t* codes, bool wide_last, __m256 klo, __m256 khi,
                                       const __m256* qv) {
  constexpr int G = D / 8;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (int g = 0; g < G; ++g) {
    const __m256 c = lookup<BITS>(klo, khi, group_indices<BITS>(codes, g, g + 1 < G || wide_last));
    if (g & 1)
      a1 = _mm256_fmadd_ps(qv[g], c, a1);
    else
      a0 = _mm256_fmadd_ps(qv[g], c, a0);
  }
  return _mm256_add_ps(a0, a1);
}

/// acc[8·G0 .. 8·(G0 + NG)) += Σ_i w[i] · C_V[codes of slot slot0 + i]: NG ≤ 8 accumulators kept
/// in registers for the whole page (AVX2 has 16; an accumulator array over the whole row made
/// GCC keep them in memory, a store and a load per FMA).
template <int BITS, int D, int G0, int NG>
TURBOESM_AVX2 inline void v_accumulate(const uint8_t* vpage, const quant::PageLayout& vl, int slot0,
                                       int n, int safe_slots, const float* w, __m256 vlo,
                                       __m256 vhi, float* acc) {
  static_assert(NG >= 1 && NG <= 8 && G0 + NG <= D / 8, "v_accumulate: bad group range");
  __m256 a[NG];
#pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) a[g] = _mm256_load_ps(acc + 8 * (G0 + g));
  for (int i = 0; i < n; ++i) {
    const int slot = slot0 + i;
    const __m256 wv = _mm256_broadcast_ss(w + i);  // from memory: no shuffle-port uop
    const uint8_t* codes = quant::token_codes(vpage, vl, slot);
    const bool wide_last = slot < safe_slots;
#pragma GCC unroll 8
    for (int g = 0; g < NG; ++g)
      a[g] = _mm256_fmadd_ps(
          wv,
          lookup<BITS>(vlo, vhi,
                       group_indices<BITS>(codes, G0 + g, G0 + g + 1 < D / 8 || wide_last)),
          a[g]);
  }
#pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) _mm256_store_ps(acc + 8 * (G0 + g), a[g]);
}

template <int BITS, int D>
TURBOESM_AVX2 void run_row(const DecodeParams& p, int b, int h, int t0, int t1, const Scratch& s,
                           Partial* part, float* acc_out) {
  constexpr int G = D / 8;
  constexpr int L = 1 << BITS;
  const CacheView& kc = p.k;
  const CacheView& vc = p.v;
  const quant::PageLayout& kl = kc.layout;
  const quant::PageLayout& vl = vc.layout;
  const int pt = kl.page_tokens;
  alignas(32) float kt[16] = {0}, vt[16] = {0};
  for (int c = 0; c < std::max(L, 8); ++c) {  // BITS < 3: replicated, as lookup() expects
    kt[c] = kc.constants.centroids[h * L + c % L];
    vt[c] = vc.constants.centroids[h * L + c % L];
  }
  const __m256 klo = _mm256_load_ps(kt), khi = _mm256_load_ps(kt + 8);
  const __m256 vlo = _mm256_load_ps(vt), vhi = _mm256_load_ps(vt + 8);
  __m256 qv[G];
  for (int g = 0; g < G; ++g) qv[g] = _mm256_loadu_ps(s.q_rot.data() + 8 * g);
  alignas(32) float acc[D] = {0};
  const bool k_norm = kl.norm == NormMode::kToken, v_norm = vl.norm == NormMode::kToken;
  const float qjl_sign_s = kl.qjl == QjlMode::kSign ? kc.constants.qjl_scale[h] : 0.0f;
  const float qjl_prod_c =
      kl.qjl == QjlMode::kProd ? static_cast<float>(quant::kSqrtHalfPi / kl.qjl_dim) : 0.0f;
  float qjl_usum = 0.0f;
  if (kl.qjl != QjlMode::kNone)
    for (int j = 0; j < kl.qjl_dim; ++j) qjl_usum += s.qjl_u[j];
  alignas(32) float sc[kMaxPageTokens];
  // Slots whose last code group may be loaded 4 bytes wide: every slot but the last reads into
  // the next token's codes; the last one only if the page has ≥ 3 bytes after its codes region.
  auto safe_slots = [pt](const quant::PageLayout& lay) {
    return lay.codes_offset + pt * lay.code_bytes + 3 <= lay.page_bytes ? pt : pt - 1;
  };
  const int k_safe_slots = safe_slots(kl), v_safe_slots = safe_slots(vl);
  float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
  for (int t = t0; t < t1;) {
    const int page_no = t / pt, slot0 = t % pt;
    const int n = std::min(pt - slot0, t1 - t);
    const uint8_t* kpage = kc.page(b, h, page_no);
    const uint8_t* vpage = vc.page(b, h, page_no);
    // Scores of the page's tokens: 8 at a time (one transposed reduction), then the rest.
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256 a[8];
      for (int u = 0; u < 8; ++u) {
        const int slot = slot0 + i + u;
        a[u] = k_dot_slot<BITS, D>(quant::token_codes(kpage, kl, slot), slot < k_safe_slots, klo,
                                   khi, qv);
      }
      _mm256_store_ps(sc + i, reduce8(a));
    }
    for (; i < n; ++i) {
      const int slot = slot0 + i;
      sc[i] = hsum(k_dot_slot<BITS, D>(quant::token_codes(kpage, kl, slot), slot < k_safe_slots,
                                       klo, khi, qv));
    }
    if (kl.qjl == QjlMode::kSign) {
      for (i = 0; i < n; ++i)
        sc[i] += qjl_sign_s * signed_sum_table(s.qjl_table.data(),
                                               quant::token_qjl(kpage, kl, slot0 + i), kl.qjl_bytes,
                                               qjl_usum);
    } else if (kl.qjl == QjlMode::kProd) {
      for (i = 0; i < n; ++i)
        sc[i] += qjl_prod_c * half_to_float(*quant::token_rnorm(kpage, kl, slot0 + i)) *
                 signed_sum_table(s.qjl_table.data(), quant::token_qjl(kpage, kl, slot0 + i),
                                  kl.qjl_bytes, qjl_usum);
    }
    if (k_norm) {
      const uint16_t* kn = quant::token_norm(kpage, kl, slot0);
      for (i = 0; i + 8 <= n; i += 8)
        _mm256_store_ps(sc + i, _mm256_mul_ps(_mm256_load_ps(sc + i), load_half8(kn + i)));
      for (; i < n; ++i) sc[i] *= half_to_float(kn[i]);
    }
    float cmax = -std::numeric_limits<float>::infinity();
    {
      __m256 mx = _mm256_set1_ps(cmax);
      for (i = 0; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(sc + i));
      alignas(32) float mm[8];
      _mm256_store_ps(mm, mx);
      for (int k = 0; k < 8; ++k) cmax = std::max(cmax, mm[k]);
      for (; i < n; ++i) cmax = std::max(cmax, sc[i]);
    }
    if (cmax > m) {
      if (l > 0.0f) {
        const float r = std::exp(m - cmax);
        const __m256 rv = _mm256_set1_ps(r);
        for (int g = 0; g < G; ++g)
          _mm256_store_ps(acc + 8 * g, _mm256_mul_ps(_mm256_load_ps(acc + 8 * g), rv));
        l *= r;
      }
      m = cmax;
    }
    // Softmax weights, their sum, then (V norms) the weights of the V sum.
    {
      const __m256 mv = _mm256_set1_ps(m);
      __m256 lsum = _mm256_setzero_ps();
      for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp_nonpositive8(_mm256_sub_ps(_mm256_load_ps(sc + i), mv));
        lsum = _mm256_add_ps(lsum, e);
        _mm256_store_ps(sc + i, e);
      }
      float lt = hsum(lsum);
      for (; i < n; ++i) {
        sc[i] = exp_nonpositive(sc[i] - m);
        lt += sc[i];
      }
      l += lt;
    }
    if (v_norm) {
      const uint16_t* vn = quant::token_norm(vpage, vl, slot0);
      for (i = 0; i + 8 <= n; i += 8)
        _mm256_store_ps(sc + i, _mm256_mul_ps(_mm256_load_ps(sc + i), load_half8(vn + i)));
      for (; i < n; ++i) sc[i] *= half_to_float(vn[i]);
    }
    if constexpr (G <= 8) {
      v_accumulate<BITS, D, 0, G>(vpage, vl, slot0, n, v_safe_slots, sc, vlo, vhi, acc);
    } else {
      v_accumulate<BITS, D, 0, 8>(vpage, vl, slot0, n, v_safe_slots, sc, vlo, vhi, acc);
      v_accumulate<BITS, D, 8, G - 8>(vpage, vl, slot0, n, v_safe_slots, sc, vlo, vhi, acc);
    }
    t += n;
  }
  std::memcpy(acc_out, acc, sizeof(acc));
  part->m = m;
  part->l = l;
}

#undef TURBOESM_AVX2

inline bool cpu_ok() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}

/// The AVX2 row function for (bits, d), or nullptr when the mode or the CPU is not covered.
inline SimdRowFn select(const DecodeParams& p) {
  if (!cpu_ok() || p.k.layout.bits != p.v.layout.bits) return nullptr;
  if (p.k.layout.page_tokens > kMaxPageTokens) return nullptr;
  if (std::getenv("TURBOESM_DECODE_NO_SIMD")) return nullptr;
  SimdRowFn fn = nullptr;
  switch (p.k.layout.bits) {
    case 2:
      TURBOESM_DISPATCH_HEAD_DIM(p.head_dim, D, { fn = &run_row<2, D>; });
      break;
    case 3:
      TURBOESM_DISPATCH_HEAD_DIM(p.head_dim, D, { fn = &run_row<3, D>; });
      break;
    case 4:
      TURBOESM_DISPATCH_HEAD_DIM(p.head_dim, D, { fn = &run_row<4, D>; });
      break;
    default:
      break;
  }
  return fn;
}

}  // namespace avx2
#endif  // x86-64

/// Processes rows × splits for one bit width pair.
template <int KBITS, int VBITS>
class RowKernel {
 public:
  static constexpr int kKL = 1 << KBITS, kKLL = kKL * kKL;
  static constexpr int kVL = 1 << VBITS, kVLL = kVL * kVL;

  explicit RowKernel(const DecodeParams& p) : p_(p), d_(p.head_dim) {
#ifdef TURBOESM_DECODE_AVX2
    simd_ = avx2::select(p);
#endif
  }

  /// Attention of row (b, h, i) over tokens [t0, t1) into (part, acc[d]) in V's code space.
  void run(int b, int h, int i, int t0, int t1, Scratch& s, Partial* part, float* acc) const {
    const int d = d_;
    std::fill(acc, acc + d, 0.0f);
    *part = Partial{};
    if (t1 <= t0) return;
    prepare(b, h, i, s);
#ifdef TURBOESM_DECODE_AVX2
    if (simd_) {
      simd_(p_, b, h, t0, t1, s, part, acc);
      return;
    }
#endif
    const CacheView& kc = p_.k;
    const CacheView& vc = p_.v;
    const quant::PageLayout& kl = kc.layout;
    const quant::PageLayout& vl = vc.layout;
    const int pt = kl.page_tokens;
    const float qjl_sign_s = kl.qjl == QjlMode::kSign ? kc.constants.qjl_scale[h] : 0.0f;
    const float qjl_prod_c =
        kl.qjl == QjlMode::kProd ? static_cast<float>(quant::kSqrtHalfPi / kl.qjl_dim) : 0.0f;
    float qjl_usum = 0.0f;
    if (kl.qjl != QjlMode::kNone)
      for (int j = 0; j < kl.qjl_dim; ++j) qjl_usum += s.qjl_u[j];

    float* hist = s.v_hist.data();
    std::fill(hist, hist + (d / 2) * kVLL, 0.0f);
    float* sc = s.scores.data();
    const float* tab = s.k_table.data();
    float m = -std::numeric_limits<float>::infinity(), l = 0.0f;

    for (int c0 = t0; c0 < t1; c0 += kChunkTokens) {
      const int c1 = std::min(t1, c0 + kChunkTokens);
      // Scores.
      float cmax = -std::numeric_limits<float>::infinity();
      for (int t = c0; t < c1; ++t) {
        const uint8_t* page = kc.page(b, h, t / pt);
        const int slot = t % pt;
        const uint8_t* codes = quant::token_codes(page, kl, slot);
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        constexpr uint32_t kMask = kKLL - 1;
        constexpr int kShift = 2 * KBITS;
        for (int g = 0; g < d / 8; ++g) {
          const uint32_t w = g + 1 < d / 8 ? load_group_wide<KBITS>(codes + g * KBITS)
                                           : load_group<KBITS>(codes + g * KBITS);
          const float* tg = tab + static_cast<size_t>(4 * g) * kKLL;
          a0 += tg[w & kMask];
          a1 += tg[kKLL + ((w >> kShift) & kMask)];
          a2 += tg[2 * kKLL + ((w >> (2 * kShift)) & kMask)];
          a3 += tg[3 * kKLL + ((w >> (3 * kShift)) & kMask)];
        }
        float score = (a0 + a1) + (a2 + a3);
        if (kl.qjl == QjlMode::kSign) {
          score +=
              qjl_sign_s * signed_sum_table(s.qjl_table.data(), quant::token_qjl(page, kl, slot),
                                            kl.qjl_bytes, qjl_usum);
        } else if (kl.qjl == QjlMode::kProd) {
          const float rn = quant::half_bits_to_float(*quant::token_rnorm(page, kl, slot));
          score += qjl_prod_c * rn *
                   signed_sum_table(s.qjl_table.data(), quant::token_qjl(page, kl, slot),
                                    kl.qjl_bytes, qjl_usum);
        }
        if (kl.norm == NormMode::kToken)
          score *= quant::half_bits_to_float(*quant::token_norm(page, kl, slot));
        sc[t - c0] = score;
        cmax = std::max(cmax, score);
      }
      // Online softmax: rescale the histogram when the max grows.
      if (cmax > m) {
        if (l > 0.0f) {
          const float r = std::exp(m - cmax);
          const int n = (d / 2) * kVLL;
          for (int j = 0; j < n; ++j) hist[j] *= r;
          l *= r;
        }
        m = cmax;
      }
      const int n = c1 - c0;
      for (int t = 0; t < n; ++t) sc[t] = exp_nonpositive(sc[t] - m);
      // V: weights into the pair histogram.
      for (int t = c0; t < c1; ++t) {
        const uint8_t* page = vc.page(b, h, t / pt);
        const int slot = t % vl.page_tokens;
        float w = sc[t - c0];
        l += w;
        if (vl.norm == NormMode::kToken)
          w *= quant::half_bits_to_float(*quant::token_norm(page, vl, slot));
        const uint8_t* codes = quant::token_codes(page, vl, slot);
        constexpr uint32_t kMask = kVLL - 1;
        constexpr int kShift = 2 * VBITS;
        for (int g = 0; g < d / 8; ++g) {
          const uint32_t x = g + 1 < d / 8 ? load_group_wide<VBITS>(codes + g * VBITS)
                                           : load_group<VBITS>(codes + g * VBITS);
          float* hg = hist + static_cast<size_t>(4 * g) * kVLL;
          hg[x & kMask] += w;
          hg[kVLL + ((x >> kShift) & kMask)] += w;
          hg[2 * kVLL + ((x >> (2 * kShift)) & kMask)] += w;
          hg[3 * kVLL + ((x >> (3 * kShift)) & kMask)] += w;
        }
      }
    }
    // Histogram → code-space accumulator.
    const float* vcent = vc.constants.centroids + static_cast<size_t>(h) * kVL;
    for (int k = 0; k < d / 2; ++k) {
      const float* hk = hist + static_cast<size_t>(k) * kVLL;
      float e = 0.0f, o = 0.0f;
      for (int bb = 0; bb < kVL; ++bb) {
        float row = 0.0f;
        for (int a = 0; a < kVL; ++a) {
          const float wgt = hk[a | (bb << VBITS)];
          e += wgt * vcent[a];
          row += wgt;
        }
        o += row * vcent[bb];
      }
      acc[2 * k] = e;
      acc[2 * k + 1] = o;
    }
    part->m = m;
    part->l = l;
  }

  /// out = Π_Vᵀ (σ_V ⊙ acc / l) + μ_V (zeros when l == 0).
  void finish(int h, float l, const float* acc, float* out) const {
    const int d = d_;
    if (!(l > 0.0f)) {
      std::fill(out, out + d, 0.0f);
      return;
    }
    const quant::HeadConstantsView& c = p_.v.constants;
    const float inv = 1.0f / l;
    float y[quant::kMaxHeadDim];
    const float* sc = c.scale ? c.scale + static_cast<size_t>(h) * d : nullptr;
    for (int j = 0; j < d; ++j) y[j] = acc[j] * inv * (sc ? sc[j] : 1.0f);
    if (c.rotation_identity) {
      // Π_V = I (HeadConstantsView::rotation_identity): the sum below is 0 + … + 1 · y_j + …,
      // i.e. y_j + 0.
      for (int j = 0; j < d; ++j) out[j] = y[j] + 0.0f;
    } else {
      const float* rot = c.rotation + static_cast<size_t>(h) * d * d;
      for (int j = 0; j < d; ++j) out[j] = 0.0f;
      for (int i = 0; i < d; ++i) {
        const float yi = y[i];
        const float* row = rot + static_cast<size_t>(i) * d;
        for (int j = 0; j < d; ++j) out[j] += row[j] * yi;
      }
    }
    if (c.mean) {
      const float* mu = c.mean + static_cast<size_t>(h) * d;
      for (int j = 0; j < d; ++j) out[j] += mu[j];
    }
  }

 private:
  /// q', the K pair table and the QJL byte table of row (b, h, i).
  void prepare(int b, int h, int i, Scratch& s) const {
    const int d = d_;
    const quant::HeadConstantsView& c = p_.k.constants;
    const quant::PageLayout& kl = p_.k.layout;
    const float* q = p_.q + ((static_cast<size_t>(b) * p_.heads + h) * p_.q_len + i) * d;
    s.q_rot.resize(d);
    rotate_query(c.rotation + static_cast<size_t>(h) * d * d,
                 c.scale ? c.scale + static_cast<size_t>(h) * d : nullptr, q, d, p_.sm_scale,
                 s.q_rot.data());
    if (!simd_active()) {
      const float* cent = c.centroids + static_cast<size_t>(h) * kKL;
      s.k_table.resize(static_cast<size_t>(d / 2) * kKLL);
      for (int k = 0; k < d / 2; ++k) {
        float* t = s.k_table.data() + static_cast<size_t>(k) * kKLL;
        const float qe = s.q_rot[2 * k], qo = s.q_rot[2 * k + 1];
        for (int bb = 0; bb < kKL; ++bb) {
          const float ob = qo * cent[bb];
          for (int a = 0; a < kKL; ++a) t[a | (bb << KBITS)] = qe * cent[a] + ob;
        }
      }
    }
    if (kl.qjl == QjlMode::kNone) return;
    const int m = kl.qjl_dim;
    s.qjl_u.resize(m);
    if (kl.qjl == QjlMode::kSign) {
      std::copy(s.q_rot.begin(), s.q_rot.end(), s.qjl_u.begin());
    } else {
      const float* S = c.qjl_proj + static_cast<size_t>(h) * m * d;
      for (int r = 0; r < m; ++r) {
        float a = 0.0f;
        for (int j = 0; j < d; ++j) a += S[static_cast<size_t>(r) * d + j] * s.q_rot[j];
        s.qjl_u[r] = a;
      }
    }
    s.qjl_table.resize(static_cast<size_t>(m / 8) * 256);
    build_sign_table(s.qjl_u.data(), m, s.qjl_table.data());
  }

  bool simd_active() const {
#ifdef TURBOESM_DECODE_AVX2
    return simd_ != nullptr;
#else
    return false;
#endif
  }

  const DecodeParams& p_;
  int d_;
#ifdef TURBOESM_DECODE_AVX2
  SimdRowFn simd_ = nullptr;
#endif
};

void check_params(const DecodeParams& p) {
  TURBOESM_CHECK(p.batch >= 0 && p.heads > 0 && p.q_len >= 0, "turbo_decode: invalid sizes batch ",
                 p.batch, ", heads ", p.heads, ", q_len ", p.q_len);
  TURBOESM_CHECK(p.head_dim > 0 && p.head_dim % 8 == 0 && p.head_dim <= quant::kMaxHeadDim,
                 "turbo_decode: head_dim must be a positive multiple of 8 and at most ",
                 quant::kMaxHeadDim, ", got ", p.head_dim);
  TURBOESM_CHECK(p.k.layout.head_dim == p.head_dim && p.v.layout.head_dim == p.head_dim,
                 "turbo_decode: cache head_dim (K ", p.k.layout.head_dim, ", V ",
                 p.v.layout.head_dim, ") does not match the query head_dim ", p.head_dim);
  TURBOESM_CHECK(p.k.layout.page_tokens == p.v.layout.page_tokens,
                 "turbo_decode: K and V page_tokens differ (", p.k.layout.page_tokens, " vs ",
                 p.v.layout.page_tokens, ")");
  TURBOESM_CHECK(p.q && p.out && p.lengths && p.k.pages && p.v.pages,
                 "turbo_decode: null q/out/lengths/pages pointer");
  TURBOESM_CHECK(p.k.constants.rotation && p.k.constants.centroids && p.v.constants.rotation &&
                     p.v.constants.centroids,
                 "turbo_decode: K and V need rotation and centroids");
  TURBOESM_CHECK(p.k.layout.qjl != QjlMode::kSign || p.k.constants.qjl_scale,
                 "turbo_decode: K has QJL sign bits but no qjl_scale");
  TURBOESM_CHECK(p.k.layout.qjl != QjlMode::kProd || p.k.constants.qjl_proj,
                 "turbo_decode: K has QJL prod bits but no qjl_proj");
  for (int b = 0; b < p.batch; ++b) {
    const int64_t cap_k = int64_t(p.k.max_pages) * p.k.layout.page_tokens;
    const int64_t cap_v = int64_t(p.v.max_pages) * p.v.layout.page_tokens;
    TURBOESM_CHECK(p.lengths[b] >= 0 && p.lengths[b] <= cap_k && p.lengths[b] <= cap_v,
                   "turbo_decode: lengths[", b, "] = ", p.lengths[b],
                   " outside the cache capacity [0, ", std::min(cap_k, cap_v), "]");
  }
}

template <int KBITS, int VBITS>
void decode_impl(const DecodeParams& p, int splits) {
  const int d = p.head_dim;
  const int64_t rows = int64_t(p.batch) * p.heads * p.q_len;
  int max_len = 0;
  for (int b = 0; b < p.batch; ++b) max_len = std::max(max_len, static_cast<int>(p.lengths[b]));
  const int pt = p.k.layout.page_tokens;
  // Tokens per split, a whole number of pages.
  const int per_split = std::max(pt, (max_len + splits - 1) / splits + pt - 1) / pt * pt;
  splits = std::max(1, (max_len + per_split - 1) / per_split);
  RowKernel<KBITS, VBITS> kernel(p);
  auto row_index = [&](int64_t r, int* b, int* h, int* i) {
    *i = static_cast<int>(r % p.q_len);
    *h = static_cast<int>((r / p.q_len) % p.heads);
    *b = static_cast<int>(r / (int64_t(p.q_len) * p.heads));
  };
  if (splits == 1) {
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      Scratch s;
      s.scores.resize(kChunkTokens);
      s.v_hist.resize(static_cast<size_t>(d / 2) * (1 << VBITS) * (1 << VBITS));
      float acc[quant::kMaxHeadDim];
      for (int64_t r = r0; r < r1; ++r) {
        int b, h, i;
        row_index(r, &b, &h, &i);
        Partial part;
        kernel.run(b, h, i, 0, p.lengths[b], s, &part, acc);
        kernel.finish(h, part.l, acc, p.out + r * d);
      }
    });
    return;
  }
  // Split over tokens: partial (m, l, acc) per (row, split), then a merge per row.
  std::vector<Partial> parts(static_cast<size_t>(rows * splits));
  std::vector<float> accs(static_cast<size_t>(rows * splits) * d);
  at::parallel_for(0, rows * splits, 1, [&](int64_t w0, int64_t w1) {
    Scratch s;
    s.scores.resize(kChunkTokens);
    s.v_hist.resize(static_cast<size_t>(d / 2) * (1 << VBITS) * (1 << VBITS));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t r = w / splits;
      const int sp = static_cast<int>(w % splits);
      int b, h, i;
      row_index(r, &b, &h, &i);
      const int t0 = sp * per_split;
      const int t1 = std::min<int>(p.lengths[b], t0 + per_split);
      kernel.run(b, h, i, t0, t1, s, &parts[w], accs.data() + w * d);
    }
  });
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    float acc[quant::kMaxHeadDim];
    for (int64_t r = r0; r < r1; ++r) {
      int b, h, i;
      row_index(r, &b, &h, &i);
      float m = -std::numeric_limits<float>::infinity();
      for (int sp = 0; sp < splits; ++sp) m = std::max(m, parts[r * splits + sp].m);
      std::fill(acc, acc + d, 0.0f);
      float l = 0.0f;
      for (int sp = 0; sp < splits; ++sp) {
        const Partial& pa = parts[r * splits + sp];
        if (!(pa.l > 0.0f)) continue;
        const float f = std::exp(pa.m - m);
        l += pa.l * f;
        const float* a = accs.data() + (r * splits + sp) * d;
        for (int j = 0; j < d; ++j) acc[j] += f * a[j];
      }
      kernel.finish(h, l, acc, p.out + r * d);
    }
  });
}

}  // namespace

int turbo_decode_cpu_num_splits(const DecodeParams& p, int threads) {
  const int64_t rows = int64_t(p.batch) * p.heads * p.q_len;
  int max_len = 0;
  for (int b = 0; b < p.batch; ++b) max_len = std::max(max_len, static_cast<int>(p.lengths[b]));
  if (rows <= 0 || rows >= int64_t(kTasksPerThread) * threads) return 1;
  const int want = static_cast<int>((int64_t(kTasksPerThread) * threads + rows - 1) / rows);
  return std::max(1, std::min(want, max_len / kSplitMinTokens));
}

int cpu_parallel_threads_used(int64_t work_items) {
  TURBOESM_CHECK(work_items >= 0, "cpu_parallel_threads_used: work_items must be >= 0, got ",
                 work_items);
  std::vector<std::atomic<int>> seen(static_cast<size_t>(std::max(1, at::get_num_threads())));
  at::parallel_for(0, work_items, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && static_cast<size_t>(t) < seen.size()) seen[static_cast<size_t>(t)] = 1;
  });
  int n = 0;
  for (const auto& s : seen) n += s.load();
  return n;
}

void turbo_decode_cpu(const DecodeParams& p, int num_splits) {
  check_params(p);
  TURBOESM_CHECK(p.v.layout.qjl == QjlMode::kNone,
                 "turbo_decode_cpu: QJL on V is not supported (V qjl = ",
                 quant::to_string(p.v.layout.qjl), "; QJL corrects K scores only)");
  TURBOESM_CHECK(num_splits >= 0, "turbo_decode_cpu: num_splits must be >= 0, got ", num_splits);
  if (p.batch == 0 || p.q_len == 0) return;
  const int splits =
      num_splits > 0 ? num_splits : turbo_decode_cpu_num_splits(p, at::get_num_threads());
  TURBOESM_DISPATCH_BITS(p.k.layout.bits, KBITS, {
    TURBOESM_DISPATCH_BITS(p.v.layout.bits, VBITS, { decode_impl<KBITS, VBITS>(p, splits); });
  });
}

// ---------------------------------------------------------------------------------------------
// Reference twin
// ---------------------------------------------------------------------------------------------

namespace {

/// A TurboQuantizer over the constants of head h of a cache view (decode side only).
quant::TurboQuantizer quantizer_from_view(const CacheView& c, int h) {
  const quant::PageLayout& l = c.layout;
  const int d = l.head_dim, L = 1 << l.bits;
  quant::QuantizerConfig cfg;
  cfg.dim = d;
  cfg.bits = l.bits;
  cfg.norm = l.norm;
  cfg.qjl = l.qjl;
  cfg.qjl_dim = l.qjl_dim;
  cfg.page_tokens = l.page_tokens;
  quant::QuantizerParams prm;
  prm.rotation = quant::rotation_from_matrix(c.constants.rotation + size_t(h) * d * d, d,
                                             quant::RotationKind::kRandom);
  prm.codebook = quant::Codebook::from_centroids(
      l.bits, std::vector<float>(c.constants.centroids + size_t(h) * L,
                                 c.constants.centroids + size_t(h + 1) * L));
  if (c.constants.scale)
    prm.scale.assign(c.constants.scale + size_t(h) * d, c.constants.scale + size_t(h + 1) * d);
  if (c.constants.mean)
    prm.mean.assign(c.constants.mean + size_t(h) * d, c.constants.mean + size_t(h + 1) * d);
  if (l.qjl == QjlMode::kSign) prm.qjl_sign_scale = c.constants.qjl_scale[h];
  if (l.qjl == QjlMode::kProd)
    prm.qjl_projection = quant::qjl_projection_from_matrix(
        c.constants.qjl_proj + size_t(h) * l.qjl_dim * d, l.qjl_dim, d);
  return quant::TurboQuantizer(cfg, std::move(prm));
}

}  // namespace

void turbo_decode_ref(const DecodeParams& p) {
  check_params(p);
  const int d = p.head_dim;
  const int pt = p.k.layout.page_tokens;
  std::vector<double> scores;
  std::vector<float> kx(d), vx(d);
  for (int h = 0; h < p.heads; ++h) {
    const quant::TurboQuantizer kq = quantizer_from_view(p.k, h);
    const quant::TurboQuantizer vq = quantizer_from_view(p.v, h);
    for (int b = 0; b < p.batch; ++b) {
      const int n = p.lengths[b];
      for (int i = 0; i < p.q_len; ++i) {
        const size_t row = (size_t(b) * p.heads + h) * p.q_len + i;
        const float* q = p.q + row * d;
        float* out = p.out + row * d;
        if (n == 0) {
          for (int j = 0; j < d; ++j) out[j] = 0.0f;
          continue;
        }
        scores.assign(n, 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int t = 0; t < n; ++t) {
          kq.decode_ref(p.k.page(b, h, t / pt), t % pt, kx.data());
          double s = 0.0;
          for (int j = 0; j < d; ++j) s += double(q[j]) * double(kx[j]);
          scores[t] = s * double(p.sm_scale);
          mx = std::max(mx, scores[t]);
        }
        double z = 0.0;
        for (int t = 0; t < n; ++t) z += std::exp(scores[t] - mx);
        std::vector<double> o(d, 0.0);
        for (int t = 0; t < n; ++t) {
          vq.decode_ref(p.v.page(b, h, t / pt), t % pt, vx.data());
          const double w = std::exp(scores[t] - mx) / z;
          for (int j = 0; j < d; ++j) o[j] += w * double(vx[j]);
        }
        for (int j = 0; j < d; ++j) out[j] = static_cast<float>(o[j]);
      }
    }
  }
}

}  // namespace turboesm::ops
