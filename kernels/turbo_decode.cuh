// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_decode.cuh
/// \brief Device code of the fused decode attention (see include/turboesm/kernels/turbo_decode.h
/// for the maths and kernels/NOTES.md for the design and measurements).
///
/// ## Work layout (kernel 1, `turbo_decode_kernel<BITS, D, VARIANT>`)
/// One CTA of 128 threads per (row = (b, h, query i), split). Each thread owns one token at a time
/// (two threads per token when D = 128, each one half of the coordinates), so a token's packed
/// record is read by one thread with the widest aligned loads its size allows, and the code
/// positions inside the loaded words are compile-time constants (unrolled): extracting a code and
/// turning it into a table offset is one or two integer instructions.
///  - K: score = n_t · Σ LUT (+ QJL). For 2 and 3 bits, D ≤ 64, one table entry per PAIR of codes
///    (T[p][c_2p + 2^BITS c_2p+1] = q'_2p C[c_2p] + q'_2p+1 C[c_2p+1], 2^(2·BITS) entries per
///    pair): one look-up per two coordinates; else one entry per code (a 256-entry 4-bit pair
///    table, or two thread halves sharing 64-entry tables, would conflict on banks). Built once per
///    CTA from q' = σ_K ⊙ Π_K q, pre-multiplied by sm_scale·log2(e), in static shared memory (fixed
///    addresses: each look-up is one LDS [reg + imm]; the D = 128 thread half is OR-ed into the
///    offset by the same LOP3 that masks the code).
///  - QJL: Σ_i ±u_i over the m sign bits, u = q' (sign) or S q' (prod), through nibble tables
///    T[n][16] = Σ_{k<4} ±u_{4n+k}: one conflict-free look-up per 4 bits.
///  - online softmax in the log2 domain per thread (m, l), rescaled lazily: only when a score
///    exceeds the running max by more than kRescaleThresholdLog2 (rare after the first token).
///  - V: acc[j] += (p_t · n^V_t) · C_V[c_j], in V's rotated code space, registers. For 2 and 3
///    bits one 8-byte look-up per PAIR of codes in a float2 table (C[c_2p], C[c_2p+1]) replicated
///    16 times (lane l reads copy l % 16: conflict-free); 4 bits: one look-up per code in the
///    2^BITS-entry table all lanes share (conflict-free).
///  - software pipeline: iteration i accumulates V of token t (score from iteration i − 1) and
///    computes the score of token t + S, in one basic block (the rare rescale branch comes first),
///    so the K and V look-ups overlap; K records are loaded two iterations ahead, V one.
/// Bottleneck (kernels/NOTES.md "Session 24", ncu on the H100, ~50 % of HBM peak): per-warp
/// latency at low occupancy (16 warps/SM, register-bound by the 64 V accumulators; 3.5 active and
/// 1.3 eligible warps per scheduler, issue slots ~60–70 % busy). Not the shared-memory pipe:
/// making the K look-ups conflict-free (a fifth of the wavefronts) measured 3 % slower for its
/// extra instructions, and at the headline shape the K or V half alone takes ~55 µs of the
/// whole loop's ~76.
///  - mode variants (DecodeVariant): the general kernel reads the norm and QJL modes at run time;
///    for 2-bit and D = 128 (kDecodeModeVariants, where it measured faster) fixed-mode copies
///    drop the per-token norm/QJL address arithmetic and prefetch their pages into the L2.
///  - record ring (DecodeLaunch::ring; 2-bit D = 64 fixed-mode launches, where it measured faster):
///    instead of the register-timed loads, each warp requests its next chunks of 32 records with
///    Hopper bulk copies into a per-warp ring of shared-memory stages (one mbarrier each) and its
///    threads read them right before use (see kRingChunk).
///  - turbo_decode_append (DecodeLaunch::append): the row's last split CTA encodes the new token
///    (warp 0 K, warp 1 V: quantize_append's encode_row_warp, Π copied into dynamic shared memory
///    by cp.async before the dependency wait) while warps 2 and 3 build the tables, then scores
///    it like a cached token; the other splits stream positions [0, starts[b]) meanwhile.
/// At the end the threads' (m, l, acc) are merged (warp shuffles, then shared memory); with one
/// split the CTA applies out = Π_Vᵀ(σ_V ⊙ acc)/l + μ_V itself, else it writes the partial and
/// `turbo_decode_merge_kernel<D>` merges the splits of each row and rotates back — or, with
/// DecodeParams::split_counters, the last split CTA of the row does (merge_splits, same order).

#include <cuda_runtime.h>

#include <cstdint>

#include "bulk_copy.cuh"
#include "common.cuh"
#include "pdl.cuh"
#include "quantize_append.cuh"
#include "turboesm/kernels/decode_split.h"
#include "turboesm/kernels/decode_timeline.h"
#include "turboesm/kernels/turbo_decode.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/format.h"

// Phase stamps (decode_timeline.h): CMake -DTURBOESM_DECODE_TIMELINE=ON; off by default.
#ifndef TURBOESM_DECODE_TIMELINE
#define TURBOESM_DECODE_TIMELINE 0
#endif

namespace turboesm::kernels::detail {

inline constexpr int kDecodeThreads = 128;
inline constexpr int kDecodeWarps = kDecodeThreads / 32;
/// Resident CTAs per SM the kernel is compiled for (caps registers at 128 per thread); the split
/// heuristic in turbo_decode.cu assumes the same number.
inline constexpr int kDecodeMinBlocksPerSm = 4;
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kSqrtHalfPiF = 1.2533141373155002f;

/// \brief Everything a decode launch needs beyond DecodeParams (computed by the host launcher).
struct DecodeLaunch {
  quant::DecodeParams p;
  int num_splits = 1;
  int qjl_m = 0;            ///< K QJL bits per token (0: none)
  int capacity = 0;         ///< min(K, V) allocated tokens per (b, h): lengths are clamped to it
  float* ws_acc = nullptr;  ///< [rows, num_splits, D]
  float* ws_m = nullptr;    ///< [rows, num_splits] running max (log2 domain)
  float* ws_l = nullptr;    ///< [rows, num_splits] softmax denominators
  /// turbo_decode_append: split num_splits − 1 of each row encodes the new token (app) and
  /// scores it; splits [0, num_splits − 1) stream positions [0, starts[b]).
  bool append = false;
  DecodeAppend app{};
  /// kernel 1 with 8 warps per CTA where kDecodeWideCtas (set_turbo_decode_wide_ctas)
  bool wide = false;
  /// the staged kernel instead of kernel 1 (turbo_decode_staged.cuh; append, wide, no K QJL)
  bool staged = false;
  /// kernel 1 with its records staged through the per-warp ring (kDecodeRing instances, fixed-mode
  /// variants; not append; set_turbo_decode_ring)
  bool ring = false;
#if TURBOESM_DECODE_TIMELINE
  void* timeline = nullptr;  ///< decode_timeline.h buffer, or null
  uint32_t timeline_capacity = 0;
  uint32_t timeline_launch = 0;
#endif
};

/// Thread 0's phase stamps of one CTA (include/turboesm/kernels/decode_timeline.h); empty
/// functions unless the build defines TURBOESM_DECODE_TIMELINE.
struct TimelineStamp {
#if TURBOESM_DECODE_TIMELINE
  DecodeTimelineRecord* rec = nullptr;
  int64_t entry = 0;
  __device__ static uint64_t globaltimer() {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
  }
  __device__ void open(const DecodeLaunch& l, uint32_t flags) {
    if (threadIdx.x != 0 || l.timeline == nullptr) return;
    entry = clock64();
    const uint64_t t = globaltimer();
    const uint32_t i = atomicAdd(static_cast<uint32_t*>(l.timeline), 1u);
    if (i >= l.timeline_capacity) return;
    rec = reinterpret_cast<DecodeTimelineRecord*>(static_cast<char*>(l.timeline) + 64) + i;
    uint32_t smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    rec->launch = l.timeline_launch;
    rec->row = blockIdx.x;
    rec->split = blockIdx.y;
    rec->flags = flags;
    rec->smid = smid;
    rec->globaltimer_start = t;
    rec->clock[0] = entry;
  }
  __device__ void mark(int phase) {
    if (rec) rec->clock[phase] = clock64();
  }
  __device__ void close(int phase) {
    if (!rec) return;
    rec->clock[phase] = clock64();
    rec->globaltimer_end = globaltimer();
  }
#else
  __device__ void open(const DecodeLaunch&, uint32_t) {}
  __device__ void mark(int) {}
  __device__ void close(int) {}
#endif
};

/// \brief Dynamic shared memory (floats) of turbo_decode_kernel. QJL prod mode, whose m is a
/// runtime value: S q' [m], then the nibble tables [(m/4) · 16 + 16]. The append CTA
/// (turbo_decode_append): per side (K, V) Π row-major with a padded stride [d][d + 1], the
/// encoder's scratch xc/r [d], codes/bits [max(d, m)] bytes (rounded to 16),
/// boundaries [16] and centroids [16], from `app`. Host and device agree on it through this
/// function.
struct DecodeDynSmem {
  int sq, table, half_nibbles, app, app_side, app_codes, app_scratch, total_floats;
};

__host__ __device__ inline DecodeDynSmem decode_dyn_smem(int d, int qjl_m, bool prod,
                                                         bool append = false) {
  DecodeDynSmem s{};
  if (prod) {
    const int lpt = d > 64 ? 2 : 1;
    const int mb = qjl_m / 8;
    s.sq = 0;
    s.table = (qjl_m + 3) / 4 * 4;
    // Thread half 0 reads record bytes [0, ceil(mb/2)), half 1 the rest (lpt == 2).
    s.half_nibbles = lpt == 2 ? 2 * ((mb + 1) / 2) : 2 * mb;
    s.total_floats = s.table + (qjl_m / 4) * 16 + 16;
  }
  if (append) {
    s.app = (s.total_floats + 3) / 4 * 4;                    // 16-byte aligned
    s.app_codes = ((d > qjl_m ? d : qjl_m) + 15) / 16 * 16;  // bytes
    s.app_scratch = d * (d + 1);                             // after Π
    s.app_side = s.app_scratch + d + s.app_codes / 4 + 32;
    s.total_floats = s.app + 2 * s.app_side;
  }
  return s;
}

/// \brief The record ring of kernel 1 (DecodeLaunch::ring): each warp streams its tokens' K and V
/// records into shared memory with Hopper bulk copies (bulk_copy.cuh) — one request per region of
/// a page for kRingChunk consecutive tokens (the warp's 32 tokens of one iteration) — into a ring
/// of kRingStages stages, each tracked by its own mbarrier, and its threads read their records
/// from there right before use (conflict-free shared-memory loads) instead of loading them into
/// registers one and two iterations ahead. Measured (kernels/NOTES.md "Session 22", H100): 8.5 %
/// faster for 2-bit codes at head_dim 64 (16-byte records), 5–15 % slower for 3 and 4 bits
/// whatever the occupancy, stage count or read-ahead — so only the 2-bit instance has it.
inline constexpr int kRingChunk = 32;
inline constexpr int kRingStages = 3;

/// \brief Byte offsets of the regions of one ring stage (kRingChunk tokens of one warp): K codes,
/// K sign bits (sign QJL; empty without), V codes. The ring runs the fixed-mode variants only
/// (norm none on both sides), so there are no norm regions. Every region is a multiple of 16
/// bytes (32 records), as bulk copies need. Host and device agree on it through this function.
struct RingLayout {
  int k_codes, k_signs, v_codes, stage_bytes;
};

__host__ __device__ inline RingLayout ring_layout(const quant::PageLayout& kl,
                                                  const quant::PageLayout& vl) {
  RingLayout r{};
  int off = 0;
  r.k_codes = off;
  off += kRingChunk * kl.code_bytes;
  r.k_signs = off;
  if (kl.qjl == quant::QjlMode::kSign) off += kRingChunk * kl.qjl_bytes;
  r.v_codes = off;
  off += kRingChunk * vl.code_bytes;
  r.stage_bytes = off;
  return r;
}

/// Dynamic shared memory (bytes) of the ring of one CTA of `warps` warps.
__host__ __device__ inline int ring_smem_bytes(const quant::PageLayout& kl,
                                               const quant::PageLayout& vl, int warps) {
  return warps * kRingStages * ring_layout(kl, vl).stage_bytes;
}

/// \brief The (BITS, D) instances that compile kernel 1 with the record ring (fixed-mode variants
/// only): 2 bits, D = 64 (one thread per token; where it measured faster).
template <int BITS, int D>
inline constexpr bool kDecodeRing = BITS == 2 && D == 64;

/// Compile-time shape of the per-thread work.
template <int BITS, int D>
struct DecodeTraits {
  static_assert(BITS >= 2 && BITS <= 4, "turbo_decode: BITS must be 2, 3 or 4");
  static_assert(D % 8 == 0 && D <= 128, "turbo_decode: D must be a multiple of 8, at most 128");
  static constexpr int kLevels = 1 << BITS;
  static constexpr int kLanesPerToken = D > 64 ? 2 : 1;
  static constexpr int kSub = D / kLanesPerToken;     ///< coordinates per thread
  static constexpr int kCodeBytes = kSub * BITS / 8;  ///< code bytes per thread per token
  static constexpr int kCodeWords = (kCodeBytes + 3) / 4;
  static constexpr int kSignBytes = D / 8 / kLanesPerToken;  ///< QJL sign bytes per thread (kSign)
  static constexpr int kSignWords = (kSignBytes + 3) / 4;
  // K table: for 2 and 3 bits (D ≤ 64) one entry per PAIR of codes (2^(2·BITS) entries, one look-up
  // per two coordinates); for 4 bits (256 entries per pair: bank conflicts) one entry per code.
  // Only with one thread per token: with two (D = 128) the two halves' look-ups into 64-entry
  // tables collide on banks (measured slower than per-code tables, kernels/NOTES.md).
  static constexpr bool kPairLut = BITS <= 3 && kLanesPerToken == 1;
  static constexpr int kFieldBits = kPairLut ? 2 * BITS : BITS;
  static constexpr int kLutEntries = 1 << kFieldBits;
  static constexpr int kLutRows = kPairLut ? kSub / 2 : kSub;
  // Per-half stride in words. The half's byte base is OR-ed into the extracted byte offset
  // (LOP3), so it must be a multiple of the offset range (kLutEntries · 4 bytes); tables of fewer
  // than 32 entries get a 16-word skew so the two halves of a warp use different banks.
  static constexpr int kLutStride = kLutRows * kLutEntries + (kLutEntries < 32 ? 16 : 0);
  static_assert((kLutStride * 4) % (kLutEntries * 4) == 0 || kLutEntries < 32, "");
  // V table: for 2 and 3 bits one float2 entry per PAIR of codes, (C[c_2p], C[c_2p+1]), read with
  // one 8-byte look-up per two coordinates (half the extract instructions and look-ups of a
  // per-code table). Replicated 16 times, lane l of each half-warp reading copy l % 16 at banks
  // 2l, 2l + 1: conflict-free whatever the codes (an 8-byte access is served per half-warp).
  static constexpr bool kVPairLut = BITS <= 3;
  static constexpr int kVPairEntries = 1 << (2 * BITS);
  static constexpr int kVPairWords = kVPairLut ? kVPairEntries * 32 : 2;
  static constexpr int kSignNibbles = 2 * kSignBytes;         ///< nibbles per thread half
  static constexpr int kSignStride = kSignNibbles * 16 + 16;  ///< words, skewed, 64-byte multiple
  static_assert(kSub * BITS % 8 == 0, "per-thread code bytes must be whole");
  static_assert(kSub % 2 == 0, "pairs of codes");
};

/// Loads bytes [p, p + n) (1 ≤ n ≤ 4) as one little-endian word (bytes past n unspecified),
/// reading only aligned words that overlap the range.
__device__ __forceinline__ uint32_t load_bytes_u32(const uint8_t* p, int n) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
  const uint32_t off = static_cast<uint32_t>(a & 3u);
  const uint32_t w0 = base[0];
  const uint32_t w1 = off + static_cast<uint32_t>(n) > 4u ? base[1] : 0u;
  return __funnelshift_r(w0, w1, 8u * off);
}

/// Σ over this thread's sign bytes [lo, hi) of record `rec` of the nibble tables (prod mode,
/// runtime m). `table` points at nibble `2 * lo`'s row for this thread half.
__device__ __forceinline__ float qjl_sum_runtime(const uint8_t* rec, int lo, int hi,
                                                 const float* table) {
  float s = 0.0f;
  for (int k = lo; k < hi; k += 4) {
    const int n = min(4, hi - k);
    const uint32_t w = load_bytes_u32(rec + k, n);
    const float* t = table + 2 * (k - lo) * 16;
#pragma unroll
    for (int v = 0; v < 8; ++v)
      if (v < 2 * n) s += lut_at(t + v * 16, ((w >> (4 * v)) & 15u) << 2);
  }
  return s;
}

/// Thread-private state of the online softmax.
template <int SUB>
struct SoftmaxState {
  float m = -INFINITY;  ///< running max of scores (log2 domain)
  float l = 0.0f;       ///< Σ exp2(s − m)
  float acc[SUB];       ///< Σ exp2(s − m) · n^V · C_V[c] (code space)
};

/// K part of one token's record as a thread holds it (prefetched two iterations ahead).
template <int BITS, int D>
struct KeyRegs {
  using T = DecodeTraits<BITS, D>;
  uint32_t kw[T::kCodeWords];
  uint32_t qw[T::kSignWords];
  float kn, rn;
};

/// V part of one token's record as a thread holds it (prefetched one iteration ahead).
template <int BITS, int D>
struct ValueRegs {
  using T = DecodeTraits<BITS, D>;
  uint32_t vw[T::kCodeWords];
  float vn;
};

/// Iterations (of a CTA's threads / lanes per token tokens) between the L2 page prefetch and the
/// K loads.
#ifndef TURBOESM_DECODE_PREFETCH_ITERS
#define TURBOESM_DECODE_PREFETCH_ITERS 2
#endif
inline constexpr int kPrefetchIters = TURBOESM_DECODE_PREFETCH_ITERS;

/// Lazy rescaling of the online softmax (log2 domain): the running max m is only raised when a
/// score exceeds it by more than this, so weights exp2(s − m) stay ≤ 2^8 (harmless in fp32) and
/// the rescale of the SUB accumulators, a divergent branch, becomes rare.
inline constexpr float kRescaleThresholdLog2 = 8.0f;

/// \brief Cache-mode specialisations of kernel 1. The general one reads the modes at run time
/// (CTA-uniform branches, but their predicated address and load instructions still take issue
/// slots every token); the others fix them at compile time for the common layouts.
enum class DecodeVariant : int {
  kGeneral = 0,   ///< any supported K/V norm and K QJL mode (run-time branches)
  kPlain = 1,     ///< K and V norm none, K QJL none
  kSignPlain = 2  ///< K and V norm none, K QJL sign
};

/// \brief Whether the (BITS, D) instantiation compiles and uses the fixed-mode variants. Measured
/// (kernels/NOTES.md, v7): fewer instructions per token made 2-bit and D = 128 faster, but the
/// 3- and 4-bit D = 64 kernels slower (their loads are less hidden), so those keep the general
/// kernel only (also fewer kernels to compile).
template <int BITS, int D>
inline constexpr bool kDecodeModeVariants = BITS == 2 || D > 64;

/// The fixed-mode variant that fits a launch's modes (host).
inline DecodeVariant decode_variant(const quant::DecodeParams& p) {
  const bool no_norms =
      p.k.layout.norm == quant::NormMode::kNone && p.v.layout.norm == quant::NormMode::kNone;
  if (no_norms && p.k.layout.qjl == quant::QjlMode::kNone) return DecodeVariant::kPlain;
  if (no_norms && p.k.layout.qjl == quant::QjlMode::kSign) return DecodeVariant::kSignPlain;
  return DecodeVariant::kGeneral;
}

/// Loads per batch of inverse_rotate (all issued before their products).
inline constexpr int kInverseRotateBatch = 32;

/// o + Σ_{j ≥ j0} Π[j][i] · y[j] in increasing j (one fused multiply-add per term, as the loop
/// `o += rot[j * D + i] * y[j]` compiles), with the loads of Π in batches of kInverseRotateBatch
/// issued before their products: a few load latencies per output instead of one per unrolled
/// group. The output coordinate i of out = Πᵀ y.
template <int D>
__device__ __forceinline__ float inverse_rotate(const float* __restrict__ rot, const float* y,
                                                int i, int j0 = 0, float o = 0.0f) {
  constexpr int kB = D < kInverseRotateBatch ? D : kInverseRotateBatch;
  for (int jb = j0; jb < D; jb += kB) {
    float r[kB];
#pragma unroll
    for (int k = 0; k < kB; ++k) r[k] = __ldg(rot + (jb + k) * D + i);
#pragma unroll
    for (int k = 0; k < kB; ++k) o = fmaf(r[k], y[jb + k], o);
  }
  return o;
}

/// \brief out[row] = Π_Vᵀ s_y + μ_V (μ_V only for a non-empty row, l > 0): the end of a row,
/// after one split or after merging several. s_y complete (synchronised) before the call.
/// Π_V = I (HeadConstantsView::rotation_identity): out = s_y + 0 + μ_V, what the fma chain gives
/// for the identity matrix.
template <int D>
__device__ __forceinline__ void rotate_back_and_store(const quant::DecodeParams& p, int row, int h,
                                                      const float* s_y, float l) {
  const float* rot = p.v.constants.rotation + static_cast<int64_t>(h) * D * D;
  const float* mu = p.v.constants.mean;
  const bool identity = p.v.constants.rotation_identity;
  for (int i = threadIdx.x; i < D; i += kDecodeThreads) {
    float o = identity ? __fadd_rn(s_y[i], 0.0f) : inverse_rotate<D>(rot, s_y, i);
    if (mu && l > 0.0f) o += mu[h * D + i];
    p.out[static_cast<int64_t>(row) * D + i] = o;
  }
}

/// Splits merge_splits<D, true> reads in one batch of loads (more: the loops). Kernel 1 keeps the
/// loops (BATCH false): the batch's registers made its 128-register instances spill.
inline constexpr int kMergeBatch = 8;

/// \brief Merges the num_splits partials of `row` (written by kernel 1, read through the L2):
/// s_y = σ_V ⊙ acc / l in V's rotated space, the splits combined in split order. Ends with a
/// __syncthreads (s_y complete). \return the merged softmax denominator l (0 for an empty row).
template <int D, bool BATCH = false>
__device__ __forceinline__ float merge_splits(const DecodeLaunch& launch, int row, int h,
                                              float* s_y) {
  const quant::DecodeParams& p = launch.p;
  const int ns = launch.num_splits;
  const float* pm = launch.ws_m + static_cast<int64_t>(row) * ns;
  const float* pl = launch.ws_l + static_cast<int64_t>(row) * ns;
  const float* pa = launch.ws_acc + static_cast<int64_t>(row) * ns * D;
  const float* sv = p.v.constants.scale;
  if (BATCH && ns <= kMergeBatch && static_cast<int>(blockDim.x) >= D) {
    // Every partial this thread needs requested at once (one L2 round trip instead of three
    // dependent ones); the same sums in the same order as the loops below.
    const int j = threadIdx.x;
    float mm[kMergeBatch], ll[kMergeBatch], aa[kMergeBatch];
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s) {
      mm[s] = s < ns ? __ldcg(pm + s) : -INFINITY;
      ll[s] = s < ns ? __ldcg(pl + s) : 0.0f;
      aa[s] = s < ns && j < D ? __ldcg(pa + s * D + j) : 0.0f;
    }
    const float sv_j = sv != nullptr && j < D ? sv[h * D + j] : 1.0f;
    float m = -INFINITY;
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s)
      if (s < ns) m = fmaxf(m, mm[s]);
    float l = 0.0f, acc = 0.0f;
#pragma unroll
    for (int s = 0; s < kMergeBatch; ++s)
      if (s < ns) {
        const float f = rescale_factor(mm[s], m);
        l += f * ll[s];
        acc += f * aa[s];
      }
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    if (j < D) s_y[j] = (sv ? sv_j * acc : acc) * inv_l;
    __syncthreads();
    return l;
  }
  float m = -INFINITY;
  for (int s = 0; s < ns; ++s) m = fmaxf(m, __ldcg(pm + s));
  float l = 0.0f;
  for (int s = 0; s < ns; ++s) l += rescale_factor(__ldcg(pm + s), m) * __ldcg(pl + s);
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  for (int j = threadIdx.x; j < D; j += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < ns; ++s) acc += rescale_factor(__ldcg(pm + s), m) * __ldcg(pa + s * D + j);
    s_y[j] = (sv ? sv[h * D + j] * acc : acc) * inv_l;
  }
  __syncthreads();
  return l;
}

/// Resident CTAs per SM kernel 1 of `warps` warps is compiled for: 128 registers per thread
/// either way (4 CTAs of 4 warps, 2 of 8).
constexpr int decode_min_blocks_per_sm(int warps) {
  return kDecodeMinBlocksPerSm * kDecodeWarps / warps;
}

/// \brief Whether (BITS, D) also compiles kernel 1 with 8 warps per CTA (DecodeLaunch::wide):
/// the general-variant instances that turbo_decode_append takes (3 and 4 bits, D ≤ 64).
template <int BITS, int D>
inline constexpr bool kDecodeWideCtas = !kDecodeModeVariants<BITS, D> && D <= 64;

/// \brief Kernel 1: one CTA of WARPS warps per (row, split); see the file comment. WARPS = 8
/// (DecodeLaunch::wide) for launches of at most one CTA per SM: twice the warps to hide a short
/// split's latencies (q', tables, few tokens per thread), compiled for the same 128 registers.
/// RING (DecodeLaunch::ring, 4 warps, kDecodeRing instances): records through the per-warp ring
/// of bulk copies (see kRingChunk).
template <int BITS, int D, DecodeVariant VARIANT, int WARPS = kDecodeWarps, bool RING = false>
__global__ void __launch_bounds__(32 * WARPS, decode_min_blocks_per_sm(WARPS))
    turbo_decode_kernel(const __grid_constant__ DecodeLaunch launch) {
  static_assert(WARPS == 4 || WARPS == 8, "turbo_decode_kernel: 4 or 8 warps");
  static_assert(!RING || (WARPS == 4 && D <= 64 && VARIANT != DecodeVariant::kGeneral),
                "the ring: 4 warps, one thread per token, fixed cache modes");
  constexpr int kWarps = WARPS;
  constexpr int kThreads = 32 * WARPS;
  using T = DecodeTraits<BITS, D>;
  constexpr int kS = kThreads / T::kLanesPerToken;  // tokens per iteration of the CTA
  constexpr int kL = T::kLevels;
  constexpr int kLpt = T::kLanesPerToken;
  constexpr int kSub = T::kSub;
  constexpr int kE = T::kLutEntries;
  const quant::DecodeParams& p = launch.p;
  const int row = blockIdx.x;
  const int split = blockIdx.y;
  const int num_splits = launch.num_splits;
  const int bh = row / p.q_len;
  const int h = bh % p.heads;
  const int b = bh / p.heads;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int qjl_m = launch.qjl_m;
  constexpr bool kGeneral = VARIANT == DecodeVariant::kGeneral;
  const quant::QjlMode qjl = VARIANT == DecodeVariant::kPlain       ? quant::QjlMode::kNone
                             : VARIANT == DecodeVariant::kSignPlain ? quant::QjlMode::kSign
                                                                    : p.k.layout.qjl;
  const bool prod = kGeneral && qjl == quant::QjlMode::kProd;

  // Static shared memory: fixed addresses, so every table look-up is one LDS [reg + imm].
  __shared__ float s_q[D];
  __shared__ __align__(256) float s_klut[kLpt * T::kLutStride];
  __shared__ __align__(64) float s_sign[kLpt * T::kSignStride];
  __shared__ float s_ck[16];
  __shared__ float s_cv[16];
  __shared__ __align__(128) float s_vpair[T::kVPairWords];
  __shared__ float s_red[kWarps * (D + 2)];
  __shared__ float s_y[D];
  __shared__ uint64_t s_ring_bar[RING ? kWarps * kRingStages : 1];  // one mbarrier per stage
  extern __shared__ __align__(16) float s_dyn[];
  const DecodeDynSmem dl = decode_dyn_smem(D, qjl_m, prod, launch.append);
  float* s_sq = s_dyn + dl.sq;
  float* s_prod = s_dyn + dl.table;
  // turbo_decode_append: the row's last split encodes the new token (warp 0 K, warp 1 V) before
  // it scores it like any cached token; the other splits stream the cached positions meanwhile.
  const bool app_cta = launch.append && split == num_splits - 1;
  constexpr int kAppLane = (D + 31) / 32;  // coordinates per lane of the encoder
  const quant::CacheView& app_cache = warp == 1 ? p.v : p.k;

  TimelineStamp stamp;
  stamp.open(launch, app_cta ? kTimelineAppendCta : 0u);
  if constexpr (RING) {  // this warp's stage barriers, one arrival (lane 0's) per phase
    if (lane == 0) {
      for (int s = 0; s < kRingStages; ++s) mbarrier_init(s_ring_bar + warp * kRingStages + s, 1);
    }
    __syncwarp();
  }
  // Constants first (programmatic dependent launch, pdl.h): the codebooks and this warp's rows
  // of Π_K are requested before the wait for the kernels that wrote q, the lengths and the pages.
  pdl_launch_dependents();
  const float ck_reg = tid < kL ? p.k.constants.centroids[h * kL + tid] : 0.0f;
  const float cv_reg = tid < kL ? p.v.constants.centroids[h * kL + tid] : 0.0f;
  constexpr int kRowsPerWarp = (D + kWarps - 1) / kWarps;
  constexpr int kCols = (D + 31) / 32;
  // D ≤ 64: this warp's rows of Π_K in registers (32 per lane); D = 128 would need 128, so the
  // matrix is only prefetched into the L2 there (one 128-byte line per request).
  constexpr bool kHoldRot = kRowsPerWarp * kCols <= 32;
  const float* rot_k = p.k.constants.rotation + static_cast<int64_t>(h) * D * D;
  float rot_r[kHoldRot ? kRowsPerWarp : 1][kHoldRot ? kCols : 1];
  if constexpr (kHoldRot) {
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
#pragma unroll
      for (int c = 0; c < kCols; ++c)
        rot_r[rr][c] = r < D && lane + 32 * c < D ? __ldg(rot_k + r * D + lane + 32 * c) : 0.0f;
    }
  } else {
    for (int line = tid; line < D * D / 32; line += kThreads)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(rot_k + line * 32));
  }
  // The row's merge (the last split CTA, unknown yet) reads Π_V by columns at the very end of
  // the chain; split 0 asks the L2 for it now, so those loads need not go to HBM.
  if (split == 0 && num_splits > 1 && p.split_counters != nullptr &&
      !p.v.constants.rotation_identity) {
    const float* rot_v = p.v.constants.rotation + static_cast<int64_t>(h) * D * D;
    for (int line = tid; line < D * D / 32; line += kThreads)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(rot_v + line * 32));
  }
  // The encoder's constants, also before the wait: μ, σ and the codebook in registers (Π below).
  float app_mu[kAppLane], app_sigma[kAppLane];
  float app_bnd = 0.0f, app_cen = 0.0f;
  if (app_cta && warp < 2) {
    const quant::HeadConstantsView& cst = app_cache.constants;
    const int levels = 1 << app_cache.layout.bits;
#pragma unroll
    for (int k = 0; k < kAppLane; ++k) {
      const int i = lane + 32 * k;
      app_mu[k] = (cst.mean && i < D) ? cst.mean[h * D + i] : 0.0f;
      app_sigma[k] = (cst.scale && i < D) ? cst.scale[h * D + i] : 1.0f;
    }
    if (lane < levels - 1) app_bnd = cst.boundaries[h * (levels - 1) + lane];
    if (lane < levels) app_cen = cst.centroids[h * levels + lane];
  }
  if (app_cta) {
    // Π of both sides into shared memory, row-major with a padded stride D + 1 (the encoder's
    // lane i reads Π_ij at i(D + 1) + j: conflict-free): 4-byte asynchronous copies, all in
    // flight at once and holding no registers, completed after the wait.
    for (int side = 0; side < 2; ++side) {
      if ((side ? p.v : p.k).constants.rotation_identity) continue;  // the encoder skips Π
      const float* src = (side ? p.v : p.k).constants.rotation + static_cast<int64_t>(h) * D * D;
      float* dst = s_dyn + dl.app + side * dl.app_side;
      for (int e = tid; e < D * D; e += kThreads)
        cp_async_4(dst + (e / D) * (D + 1) + e % D, src + e);
    }
  }
  stamp.mark(kPhaseBeforeWait);
  pdl_wait();
  stamp.mark(kPhaseAfterWait);
  // The append CTA's warps 0 (K) and 1 (V) request their new row now; they encode it into its
  // slot while warps 2 and 3 build the look-up tables (between q' and the tables' barrier).
  const int app_start = launch.append ? launch.app.starts[b] : 0;
  const bool app_fits = app_start >= 0 && app_start < launch.capacity;
  float app_x[kAppLane];
  if (app_cta) {
    cp_async_wait_all();
    if (warp < 2) {
      const void* rows = warp == 1 ? launch.app.v : launch.app.k;
      const int64_t x0 = b * launch.app.stride_b + h * launch.app.stride_h;
#pragma unroll
      for (int k = 0; k < kAppLane; ++k) {
        const int i = lane + 32 * k;
        app_x[k] = i < D && app_fits ? load_input(rows, launch.app.dtype, x0 + i) : 0.0f;
      }
    }
  }
  auto encode_new_token = [&] {
    const quant::PageLayout& lay = app_cache.layout;
    const quant::HeadConstantsView& cst = app_cache.constants;
    const float* s_pi = s_dyn + dl.app + warp * dl.app_side;  // [D][D+1]: Π_ij at i(D+1)+j
    float* scratch = s_dyn + dl.app + warp * dl.app_side + dl.app_scratch;
    uint8_t* s_codes = reinterpret_cast<uint8_t*>(scratch + D);
    float* s_bnd = scratch + D + dl.app_codes / 4;
    float* s_cen = s_bnd + 16;
    const int levels = 1 << lay.bits;
    if (lane < levels - 1) s_bnd[lane] = app_bnd;
    if (lane < levels) s_cen[lane] = app_cen;
    if (!app_fits) {
      if (lane == 0 && launch.app.status) atomicOr(launch.app.status, kQuantizeAppendOutOfCapacity);
      return;
    }
    float inv_sigma[kAppLane];
#pragma unroll
    for (int k = 0; k < kAppLane; ++k)  // 1/σ as the host computes it: correctly rounded
      inv_sigma[k] = cst.scale ? __fdiv_rn(1.0f, app_sigma[k]) : 1.0f;
    __syncwarp();  // the codebook in s_bnd / s_cen
    encode_row_warp<D>(
        app_x, app_mu, inv_sigma, [&](int i, int j) { return s_pi[i * (D + 1) + j]; }, s_bnd, s_cen,
        scratch, s_codes, lay, cst, h, app_cache.page(b, h, app_start / lay.page_tokens),
        app_start % lay.page_tokens, lane, launch.app.status);
  };

  // ---- stream this split's tokens -----------------------------------------------------------
  const quant::PageLayout& kl = p.k.layout;
  const quant::PageLayout& vl = p.v.layout;
  // This split's positions [t0, t1) (decode_split.h).
  const SplitRange range =
      decode_split_range(launch.append, launch.append ? launch.app.starts[b] : p.lengths[b],
                         launch.capacity, num_splits, split);
  const int t0 = range.first, t1 = range.last;
  const int sub = kLpt == 2 ? (lane & 1) : 0;
  const uint8_t* kbase = p.k.pages + b * p.k.seq_stride + h * p.k.head_stride;
  const uint8_t* vbase = p.v.pages + b * p.v.seq_stride + h * p.v.head_stride;
  const uint32_t ksub_base = kLpt == 2 ? static_cast<uint32_t>(sub * T::kLutStride * 4) : 0u;
  const uint32_t vlane_base = static_cast<uint32_t>(8 * (lane & 15));  // byte offset of copy
  const uint32_t ssub_base = kLpt == 2 ? static_cast<uint32_t>(sub * T::kSignStride * 4) : 0u;
  const bool k_norm = kGeneral && kl.norm == quant::NormMode::kToken;
  const bool v_norm = kGeneral && vl.norm == quant::NormMode::kToken;
  const int pt = kl.page_tokens;  // K and V share page_tokens (checked by the launcher)
  // prod: this thread's byte range of the sign record, and its nibble table.
  const int qb = kl.qjl_bytes;
  const int qlo = kLpt == 2 && sub ? (qb + 1) / 2 : 0;
  const int qhi = kLpt == 2 && !sub ? (qb + 1) / 2 : qb;
  const float* ptab = s_prod + (sub ? dl.half_nibbles * 16 + 16 : 0);
  const float prod_coef = qjl_m > 0 ? kSqrtHalfPiF / static_cast<float>(qjl_m) : 0.0f;

  SoftmaxState<kSub> st;
#pragma unroll
  for (int j = 0; j < kSub; ++j) st.acc[j] = 0.0f;

  auto load_k = [&](KeyRegs<BITS, D>& r, int page, int slot) {
    const uint8_t* kp = kbase + static_cast<int64_t>(page) * kl.page_bytes;
    load_record<T::kCodeBytes>(kp + kl.codes_offset + slot * kl.code_bytes + sub * T::kCodeBytes,
                               r.kw);
    r.kn = k_norm ? load_half(kp + kl.norms_offset + 2 * slot) : 1.0f;
    if (qjl == quant::QjlMode::kSign)
      load_record<T::kSignBytes>(kp + kl.qjl_offset + slot * kl.qjl_bytes + sub * T::kSignBytes,
                                 r.qw);
    r.rn = prod ? load_half(kp + kl.rnorms_offset + 2 * slot) : 0.0f;
  };
  auto load_v = [&](ValueRegs<BITS, D>& r, int page, int slot) {
    const uint8_t* vp = vbase + static_cast<int64_t>(page) * vl.page_bytes;
    load_record<T::kCodeBytes>(vp + vl.codes_offset + slot * vl.code_bytes + sub * T::kCodeBytes,
                               r.vw);
    r.vn = v_norm ? load_half(vp + vl.norms_offset + 2 * slot) : 1.0f;
  };
  auto advance = [&](int& page, int& slot) {
    slot += kS;
    while (slot >= pt) {
      slot -= pt;
      ++page;
    }
  };

  // The record ring (RING): this warp's chunk i holds tokens [c_i, c_i + kRingChunk), c_i =
  // rbase + i·kS + kRingChunk·warp, where rbase is t0 rounded down to a chunk, so that a chunk
  // never straddles a page (the launcher checked page_tokens % kRingChunk == 0) and its regions
  // start 16-byte aligned; tokens outside [t0, t1) are masked as in the register pipeline. Chunk
  // i goes to stage i mod kRingStages, whose barrier completes its ⌊i / kRingStages⌋-th phase.
  // Lane 0 requests the chunks in order through a cursor (the next request's page and slot: no
  // division per request); the first kRingStages right after the wait, before q' and the tables,
  // then chunk i + kRingStages into chunk i's stage once the warp has read chunk i.
  const RingLayout rl = ring_layout(kl, vl);
  uint8_t* const ring =
      reinterpret_cast<uint8_t*>(s_dyn + dl.total_floats) + warp * kRingStages * rl.stage_bytes;
  uint64_t* const ring_bars = s_ring_bar + (RING ? warp * kRingStages : 0);
  const int rbase = t0 < t1 ? t0 & ~(kRingChunk - 1) : t1;
  int iss_page = (rbase + warp * kRingChunk) / pt;           // the next request's page
  int iss_slot = rbase + warp * kRingChunk - iss_page * pt;  // and slot
  // Lane 0 requests chunk `first` (its first position) into `stage` if it holds positions < t1.
  auto ring_issue = [&](int first, int stage) {
    if (lane == 0 && first < t1) {
      uint8_t* dst = ring + stage * rl.stage_bytes;
      uint64_t* bar = ring_bars + stage;
      mbarrier_arrive_expect_tx(bar, static_cast<uint32_t>(rl.stage_bytes));
      const uint8_t* kp = kbase + static_cast<int64_t>(iss_page) * kl.page_bytes;
      const uint8_t* vp = vbase + static_cast<int64_t>(iss_page) * vl.page_bytes;
      bulk_copy_g2s(dst + rl.k_codes, kp + kl.codes_offset + iss_slot * kl.code_bytes,
                    kRingChunk * kl.code_bytes, bar);
      if (qjl == quant::QjlMode::kSign)
        bulk_copy_g2s(dst + rl.k_signs, kp + kl.qjl_offset + iss_slot * kl.qjl_bytes,
                      kRingChunk * kl.qjl_bytes, bar);
      bulk_copy_g2s(dst + rl.v_codes, vp + vl.codes_offset + iss_slot * vl.code_bytes,
                    kRingChunk * vl.code_bytes, bar);
    }
    advance(iss_page, iss_slot);
  };
  if constexpr (RING) {
    for (int i = 0; i < kRingStages; ++i) ring_issue(rbase + i * kS + warp * kRingChunk, i);
  }

  // Σ of the K pair/code table over this thread's coordinates (no QJL, no norm).
  auto lut_score = [&](const KeyRegs<BITS, D>& r) {
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    static_for<0, T::kLutRows>([&](auto R) {
      constexpr int rr = decltype(R)::value;
      a[rr & 3] += lut_at(s_klut + rr * kE, code_offset<T::kFieldBits, rr>(r.kw) | ksub_base);
    });
    return (a[0] + a[1]) + (a[2] + a[3]);
  };
  // QJL term of the score (K mode branches are CTA-uniform).
  auto qjl_score = [&](const KeyRegs<BITS, D>& r, bool valid, int page, int slot) {
    float qs = 0.0f;
    if (qjl == quant::QjlMode::kSign) {
      static_for<0, T::kSignNibbles>([&](auto N) {
        constexpr int n = decltype(N)::value;
        qs += lut_at(s_sign + n * 16, code_offset<4, n>(r.qw) | ssub_base);
      });
    } else if (prod && valid) {
      const uint8_t* rec =
          kbase + static_cast<int64_t>(page) * kl.page_bytes + kl.qjl_offset + slot * kl.qjl_bytes;
      qs = prod_coef * r.rn * qjl_sum_runtime(rec, qlo, qhi, ptab);
    }
    return qs;
  };
  // Full score of a token from its partial (the D = 128 pair exchange needs both lanes).
  auto finish_score = [&](float partial, const KeyRegs<BITS, D>& r) {
    if constexpr (kLpt == 2) partial += __shfl_xor_sync(kFullMask, partial, 1);
    return r.kn * partial;
  };

  // Software pipeline over this thread's tokens tv, tv + S, ... (S = kS tokens per CTA). Iteration
  // i accumulates V of token tv (score computed in iteration i − 1), computes the score of
  // tk = tv + S (K codes loaded in iteration i − 1), and loads K of tk + S and V of tk. The
  // K table sums of tk and the V look-ups of tv are independent and sit in one basic block
  // (the rare lazy-rescale branch comes before it), so their shared-memory look-ups overlap.
  // The loop is warp-uniform (the D = 128 pair exchange needs both lanes of a pair): a thread
  // whose token is past t1 loads nothing and contributes weight 0.
  // The first records (K of this thread's first two tokens, V of its first) are requested right
  // after the wait, before q' and the tables: their latency overlaps that work.
  const int my_off = tid / kLpt;
  int tv = t0 + my_off;
  int pcur = tv / pt;
  int scur = tv - pcur * pt;
  KeyRegs<BITS, D> kcur{};
  ValueRegs<BITS, D> vcur{};
  if (!RING && tv < t1 && !app_cta) {  // the append CTA's token is not written yet
    load_k(kcur, pcur, scur);
    load_v(vcur, pcur, scur);
  }
  int tk = tv + kS;
  int pk = pcur;
  int sk = scur;
  advance(pk, sk);
  KeyRegs<BITS, D> knxt{};
  if (!RING && tk < t1 && !app_cta) load_k(knxt, pk, sk);
  // ---- q' = σ_K ⊙ Π_K q: warp w computes rows w, w+4, ... (Π_K in registers; d 128: in L2) ---
  {
    const float* q = p.q + static_cast<int64_t>(row) * D;
    float qv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) qv[c] = lane + 32 * c < D ? q[lane + 32 * c] : 0.0f;
    // σ_K in the same round trip as q: lane rr holds row warp + 4·rr's and stores that row below
    // (q' is a warp_sum, the same in every lane). Read row by row after each sum, the σ loads
    // formed a dependent chain behind the shared-memory stores (kernels/NOTES.md, session 12).
    static_assert(kRowsPerWarp <= 32, "one σ_K row per lane");
    const float* sc_k = p.k.constants.scale;
    const int sig_row = warp + lane * kWarps;
    const float sig_k = sc_k != nullptr && lane < kRowsPerWarp && sig_row < D
                            ? __ldg(sc_k + h * D + sig_row)
                            : 1.0f;
    float part[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      float s = 0.0f;
#pragma unroll
      for (int c = 0; c < kCols; ++c)
        if (r < D && lane + 32 * c < D) {
          if constexpr (kHoldRot) {
            s += rot_r[rr][c] * qv[c];
          } else {
            s += rot_k[r * D + lane + 32 * c] * qv[c];
          }
        }
      part[rr] = s;
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      const float s = warp_sum(part[rr]);
      if (lane == rr && r < D) s_q[r] = sc_k ? s * sig_k : s;
    }
  }
  if (tid < kL) {
    s_ck[tid] = ck_reg;
    s_cv[tid] = cv_reg;
  }
  __syncthreads();
  stamp.mark(kPhaseQuery);
  if (prod) {  // S q' [m]
    const float* proj = p.k.constants.qjl_proj + static_cast<int64_t>(h) * qjl_m * D;
    for (int r = warp; r < qjl_m; r += kWarps) {
      float s = 0.0f;
      for (int j = lane; j < D; j += 32) s += proj[static_cast<int64_t>(r) * D + j] * s_q[j];
      s = warp_sum(s);
      if (lane == 0) s_sq[r] = s;
    }
    __syncthreads();
  }

  // ---- tables -------------------------------------------------------------------------------
  const float alpha = p.sm_scale * kLog2e;  // scores in the log2 domain
  // Table builders: every thread, or in the append CTA warps 2 and 3 only (0 and 1 encode).
  const int tb0 = app_cta ? tid - 64 : tid;
  const int tbs = app_cta ? kThreads - 64 : kThreads;
  if (app_cta && warp < 2) {
    encode_new_token();
  } else {
    const float* ck = s_ck;
    for (int idx = tb0; idx < kLpt * T::kLutRows * kE; idx += tbs) {
      const int half = idx / (T::kLutRows * kE);
      const int rem = idx - half * (T::kLutRows * kE);
      const int r = rem / kE, e = rem - (rem / kE) * kE;
      float v;
      if constexpr (T::kPairLut) {
        const int j = half * kSub + 2 * r;
        v = alpha * (s_q[j] * ck[e & (kL - 1)] + s_q[j + 1] * ck[e >> BITS]);
      } else {
        v = alpha * s_q[half * kSub + r] * ck[e];
      }
      s_klut[half * T::kLutStride + r * kE + e] = v;
    }
    if (qjl == quant::QjlMode::kSign) {
      const float coef = alpha * p.k.constants.qjl_scale[h];
      for (int idx = tb0; idx < (D / 4) * 16; idx += tbs) {
        const int n = idx >> 4, v = idx & 15;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) s += ((v >> k) & 1) ? s_q[4 * n + k] : -s_q[4 * n + k];
        const int half = n / T::kSignNibbles, nn = n - half * T::kSignNibbles;
        s_sign[half * T::kSignStride + nn * 16 + v] = coef * s;
      }
    } else if (prod) {
      for (int idx = tb0; idx < (qjl_m / 4) * 16; idx += tbs) {
        const int n = idx >> 4, v = idx & 15;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) s += ((v >> k) & 1) ? s_sq[4 * n + k] : -s_sq[4 * n + k];
        s_prod[n * 16 + v + (n >= dl.half_nibbles ? 16 : 0)] = alpha * s;
      }
    }
    if constexpr (T::kVPairLut) {
      const float* cv = s_cv;
      for (int idx = tb0; idx < T::kVPairEntries * 16; idx += tbs) {
        const int e = idx >> 4, copy = idx & 15;
        s_vpair[e * 32 + 2 * copy] = cv[e & (kL - 1)];
        s_vpair[e * 32 + 2 * copy + 1] = cv[e >> BITS];
      }
    }
  }
  __syncthreads();  // tables built; the append CTA's new token is in the pages
  stamp.mark(kPhaseTables);
  if (app_cta && tv < t1) {  // read back like any cached token
    load_k(kcur, pcur, scur);
    load_v(vcur, pcur, scur);
  }

  // Softmax weight of a token whose score is s, and its V record accumulated (both loops).
  auto accumulate_v = [&](const ValueRegs<BITS, D>& v, float s, bool valid) {
    if (valid && s > st.m + kRescaleThresholdLog2) {  // rare after the first token
      const float f = rescale_factor(st.m, s);
      st.l *= f;
#pragma unroll
      for (int j = 0; j < kSub; ++j) st.acc[j] *= f;
      st.m = s;
    }
    const float pw = valid ? exp2f(s - st.m) : 0.0f;
    st.l += pw;
    const float w = valid ? pw * v.vn : 0.0f;
    if constexpr (T::kVPairLut) {
      static_for<0, kSub / 2>([&](auto P) {
        constexpr int pp = decltype(P)::value;
        const float2 c = lut2_at(s_vpair, field_offset<2 * BITS, pp, 7>(v.vw) | vlane_base);
        st.acc[2 * pp] = fmaf(w, c.x, st.acc[2 * pp]);
        st.acc[2 * pp + 1] = fmaf(w, c.y, st.acc[2 * pp + 1]);
      });
    } else {
      static_for<0, kSub>([&](auto J) {
        constexpr int j = decltype(J)::value;
        st.acc[j] = fmaf(w, lut_at(s_cv, code_offset<BITS, j>(v.vw)), st.acc[j]);
      });
    }
  };

  if constexpr (RING) {
    // This thread's token in chunk i is c_i + lane (kLpt == 1). A chunk that holds no position
    // < t1 was not requested: nothing is read from or waited for in its stage (all masked).
    auto ring_k = [&](KeyRegs<BITS, D>& r, int stage) {
      const uint8_t* sp = ring + stage * rl.stage_bytes;
      load_record<T::kCodeBytes>(sp + rl.k_codes + lane * T::kCodeBytes, r.kw);
      if (qjl == quant::QjlMode::kSign)
        load_record<T::kSignBytes>(sp + rl.k_signs + lane * T::kSignBytes, r.qw);
      r.kn = 1.0f;  // fixed-mode variants: no norms, no prod QJL
      r.rn = 0.0f;
    };
    auto ring_v = [&](ValueRegs<BITS, D>& r, int stage) {
      const uint8_t* sp = ring + stage * rl.stage_bytes;
      load_record<T::kCodeBytes>(sp + rl.v_codes + lane * T::kCodeBytes, r.vw);
      r.vn = 1.0f;
    };
    auto next_stage = [](int st) { return st + 1 == kRingStages ? 0 : st + 1; };
    // Iteration i accumulates V of chunk i (its score from iteration i − 1) and scores K of
    // chunk i + 1 (waited for here), both read from the ring right before use; then chunk i's
    // stage is refilled with chunk i + kRingStages. sv: chunk i's stage; sk, pk: chunk i + 1's
    // stage and phase parity.
    int sv = 0, sk = 0;
    uint32_t pk = 0;
    KeyRegs<BITS, D> k0{};
    if (rbase + warp * kRingChunk < t1) {
      mbarrier_wait_parity(ring_bars, 0u);
      ring_k(k0, 0);
    }
    float s_cur = finish_score(lut_score(k0) + qjl_score(k0, false, 0, 0), k0);
    for (int base = rbase; base < t1; base += kS) {
      const int t = base + tid;                // this thread's token
      const int c = base + warp * kRingChunk;  // this warp's chunk
      sv = sk;
      sk = next_stage(sk);
      pk ^= sk == 0 ? 1u : 0u;
      ValueRegs<BITS, D> v{};
      KeyRegs<BITS, D> k{};
      if (c < t1) ring_v(v, sv);
      if (c + kS < t1) {
        mbarrier_wait_parity(ring_bars + sk, pk);
        ring_k(k, sk);
      }
      accumulate_v(v, s_cur, t >= t0 && t < t1);
      s_cur = finish_score(lut_score(k) + qjl_score(k, false, 0, 0), k);
      __syncwarp();  // every lane's reads of chunk i's stage are done: refill it
      ring_issue(c + kRingStages * kS, sv);
    }
  } else {
    float s_cur = finish_score(lut_score(kcur) + qjl_score(kcur, tv < t1, pcur, scur), kcur);
    // The L2 page prefetch (below) is compiled into the fixed-mode variants only: measured, it
    // slowed the general kernel's D = 64 shapes by 5–10 % (kernels/NOTES.md, v7).
    constexpr bool kPrefetch = kPrefetchIters > 0 && !kGeneral;
    const int pf_first = t0 + (2 + kPrefetchIters) * kS;  // first token of the prefetch window
    int pf_page = kPrefetch ? pf_first / pt : 0;
    int pf_slot = pf_first - pf_page * pt;
    for (int base = t0; base < t1; base += kS) {
      // L2 prefetch, kPrefetchIters iterations ahead of the K loads below: pages pf_page and
      // pf_page + 1 of K (warps 0, 1) and of V (warps 2, 3), one bulk request each, where pf_page
      // holds token base + (2 + kPrefetchIters)·S. With 64-token pages and S = 128 (D ≤ 64) an
      // iteration spans two pages, so every page is requested once (a page the window only starts
      // in, an iteration later); at D = 128 (S = 64) each page is requested twice, and other page
      // sizes get a partial or repeated hint. The
      // address is warp-uniform, as the uniform-datapath instruction wants. The K and V loads then
      // wait for the L2 rather than HBM.
      if constexpr (kPrefetch) {
        const int64_t pg = pf_page + (warp & 1);
        if (pg * pt < t1) {
          if (warp < 2) {
            prefetch_l2_bulk(kbase + pg * kl.page_bytes, static_cast<uint32_t>(kl.page_bytes));
          } else {
            prefetch_l2_bulk(vbase + pg * vl.page_bytes, static_cast<uint32_t>(vl.page_bytes));
          }
        }
        pf_slot += kS;
        while (pf_slot >= pt) {
          pf_slot -= pt;
          ++pf_page;
        }
      }
      // Loads: K two tokens ahead, V one token ahead.
      const int tk2 = tk + kS;
      int pk2 = pk;
      int sk2 = sk;
      advance(pk2, sk2);
      KeyRegs<BITS, D> knn{};
      if (tk2 < t1) load_k(knn, pk2, sk2);
      ValueRegs<BITS, D> vnx{};
      if (tk < t1) load_v(vnx, pk, sk);

      accumulate_v(vcur, s_cur, tv < t1);
      float partial = lut_score(knxt);
      partial += qjl_score(knxt, tk < t1, pk, sk);
      s_cur = finish_score(partial, knxt);

      tv = tk;
      vcur = vnx;
      knxt = knn;
      tk = tk2;
      pk = pk2;
      sk = sk2;
    }
  }
  stamp.mark(kPhaseLoop);
  // ---- merge the threads: warp (shuffles), then CTA (shared memory) -------------------------
  {
    const float wm = warp_max(st.m);
    const float f = rescale_factor(st.m, wm);
    float l = st.l * f;
#pragma unroll
    for (int o = 16; o >= kLpt; o >>= 1) l += __shfl_xor_sync(kFullMask, l, o);
#pragma unroll
    for (int j = 0; j < kSub; ++j) st.acc[j] *= f;
    // Reduce-scatter over the lanes of a thread half (common.cuh: D = 64 62 shuffles instead of
    // 320, the same sums bit for bit); lane keeps kKept sums of coordinates [base, base + kKept).
    constexpr int kKept = reduce_scatter_count(kSub, kLpt, 5);
    const int base = warp_reduce_scatter<kSub, kLpt>(st.acc, lane);
    float* r = s_red + warp * (D + 2);
    if (reduce_scatter_writer<kSub, kLpt>(lane)) {
#pragma unroll
      for (int j = 0; j < kKept; ++j) r[sub * kSub + base + j] = st.acc[j];
    }
    if (lane == 0) {
      r[D] = wm;
      r[D + 1] = l;
    }
  }
  __syncthreads();
  stamp.mark(kPhaseReduced);
  float cta_m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) cta_m = fmaxf(cta_m, s_red[w * (D + 2) + D]);
  float cta_l = 0.0f;
  float fw[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    fw[w] = rescale_factor(s_red[w * (D + 2) + D], cta_m);
    cta_l += fw[w] * s_red[w * (D + 2) + D + 1];
  }
  if (num_splits > 1) {
    const int64_t part = static_cast<int64_t>(row) * num_splits + split;
    for (int j = tid; j < D; j += kThreads) {
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) acc += fw[w] * s_red[w * (D + 2) + j];
      launch.ws_acc[part * D + j] = acc;
    }
    if (tid == 0) {
      launch.ws_m[part] = cta_m;
      launch.ws_l[part] = cta_l;
    }
    if (p.split_counters == nullptr) {  // kernel 2 merges
      stamp.close(kPhaseEnd);
      return;
    }
    // The row's last split CTA to finish merges (the threadfence-reduction pattern): every CTA
    // makes its partial visible device-wide, then counts itself in; the one that completes the
    // count resets it for the next launch (all splits are in) and reads the partials via the L2.
    __shared__ bool s_last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
      s_last = atomicAdd(p.split_counters + row, 1u) == static_cast<uint32_t>(num_splits - 1);
      if (s_last) p.split_counters[row] = 0u;
    }
    __syncthreads();
    if (!s_last) {
      stamp.close(kPhaseEnd);
      return;
    }
    __threadfence();
    // The merge kernel's sums, in its order (its held Π_V column is the first terms of the same
    // sequential fma chain).
    rotate_back_and_store<D>(p, row, h, s_y, merge_splits<D>(launch, row, h, s_y));
    stamp.close(kPhaseEnd);
    return;
  }
  // One split: finish here. y = σ_V ⊙ acc / l, out = Π_Vᵀ y + μ_V (zeros for an empty row).
  const float inv_l = cta_l > 0.0f ? 1.0f / cta_l : 0.0f;
  const float* sv = p.v.constants.scale;
  for (int j = tid; j < D; j += kThreads) {
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) acc += fw[w] * s_red[w * (D + 2) + j];
    s_y[j] = (sv ? sv[h * D + j] * acc : acc) * inv_l;
  }
  __syncthreads();
  rotate_back_and_store<D>(p, row, h, s_y, cta_l);
  stamp.close(kPhaseEnd);
}

/// \brief Kernel 2 (num_splits > 1, no split_counters): merges the splits of one row and rotates
/// back. One CTA of kDecodeThreads per row.
template <int D>
__global__ void __launch_bounds__(kDecodeThreads)
    turbo_decode_merge_kernel(const __grid_constant__ DecodeLaunch launch) {
  const quant::DecodeParams& p = launch.p;
  const int row = blockIdx.x;
  const int h = (row / p.q_len) % p.heads;
  const float* rot = p.v.constants.rotation + static_cast<int64_t>(h) * D * D;
  const bool identity = p.v.constants.rotation_identity;  // Π_V = I: no column, no products
  __shared__ float s_y[D];
  // Column i = threadIdx.x of Π_V, requested first: its HBM latency overlaps the partials' loads.
  constexpr int kHeld = D < 64 ? D : 64;
  float col[kHeld];
  TimelineStamp stamp;
  stamp.open(launch, kTimelineMerge);
  pdl_launch_dependents();
  if (threadIdx.x < D && !identity) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) col[j] = __ldg(rot + j * D + threadIdx.x);
  }
  // μ_V too (a constant): its load would otherwise follow the merge on the critical path.
  const float* mu = p.v.constants.mean;
  const float mu_i = mu != nullptr && threadIdx.x < D ? __ldg(mu + h * D + threadIdx.x) : 0.0f;
  stamp.mark(kMergeBeforeWait);
  pdl_wait();  // the partials come from kernel 1
  stamp.mark(kMergeAfterWait);
  const float l = merge_splits<D, true>(launch, row, h, s_y);
  if (threadIdx.x < D) {  // blockDim.x = kDecodeThreads ≥ D
    const int i = threadIdx.x;
    float o = 0.0f;
    if (identity) {
      o = __fadd_rn(s_y[i], 0.0f);  // the chain below for Π_V = I
    } else {
#pragma unroll
      for (int j = 0; j < kHeld; ++j) o = fmaf(col[j], s_y[j], o);
      o = inverse_rotate<D>(rot, s_y, i, kHeld, o);
    }
    if (mu && l > 0.0f) o += mu_i;
    p.out[static_cast<int64_t>(row) * D + i] = o;
  }
  stamp.close(kMergeEnd);
}

}  // namespace turboesm::kernels::detail
