// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_decode_staged.cuh
/// \brief The decode step's attention with its cached splits staged before the dependency wait
/// (turbo_decode_append, DecodeLaunch::staged; set_turbo_decode_staged in
/// include/turboesm/kernels/turbo_decode.h; kernels/NOTES.md "Session 18").
///
/// Why: in a decode step launched with programmatic dependent launch, a cached split's CTA is
/// resident ~5 µs before the QKV product it waits for ends (kernels/NOTES.md, session 11
/// timeline), and what it streams — the cached tokens' K and V records — was written by earlier
/// steps. The look-up-table kernel (turbo_decode_kernel) can use little of that time: its tables
/// need q', which needs the wait. Here a cached split CTA (8 warps, ≤ kDecodeStagedTokens = 256
/// positions: one per thread) decodes its records into fp32 centroid values in shared memory
/// before the wait:
///   K'[t][j] = C_K[c_tj], V'[t][j] = C_V[c^V_tj], norms n_t, n^V_t   (rows padded to D + 4 floats:
///   a thread's 16-byte row accesses, lanes 1 row apart, are conflict-free)
/// and after it:
///   q' = σ_K ⊙ Π_K q (Π_K rows held in registers since before the wait, as kernel 1),
///   s_t = sm_scale · log2(e) · n_t · ⟨q', K'[t]⟩ (thread t; 16-byte loads of its row and q'),
///   m = max_t s_t, p_t = exp2(s_t − m), l = Σ p_t, w_t = p_t · n^V_t,
///   acc_j = Σ_t w_t V'[t][j]   (thread (j, g) sums tokens g, g + G, …; the G groups in order),
/// and writes the split's partial (m, l, acc) exactly as kernel 1 does (the merge is the same).
/// The row's last split (launched as blockIdx.y 0, so that it is placed first) encodes the new
/// token as kernel 1's append CTA does (warp 0 K, warp 1 V: quantize_append's encode_row_warp, Π
/// copied by 8-byte cp.async before the wait) and writes it, as a decoder reads it back, into its
/// staged row 0, while warps 2… compute q' from the copy of Π_K; then it scores that one token the
/// same way.
///
/// starts[b] (which positions a split owns) and the records are read before the wait, where a
/// kernel that may still run beside this one (programmatic dependent launch: quantize_append right
/// before, say) could be writing them. So after the wait both are read again — through the L2, the
/// records' loads issued beside q's, so their latency overlaps q' — and a row whose bytes changed
/// is decoded again (a moved range: every row). The early work is thus only ever a head start.
///
/// Same values as kernel 1 up to the order of the sums: kernel 1 sums pair-table entries that
/// already hold α·q'C products and rescales its running max lazily; here each score is one
/// fp32 dot product and the softmax max is exact.

#include "turbo_decode.cuh"

namespace turboesm::kernels::detail {

inline constexpr int kStagedWarps = 8;
inline constexpr int kStagedThreads = 32 * kStagedWarps;
static_assert(kDecodeStagedTokens == kStagedThreads, "one staged position per thread");

/// Row stride (floats) of the staged K' and V': D + 4, so that lanes reading 16 bytes of rows one
/// apart hit distinct banks (D / 4 + 1 is odd for D = 16, 24, 32, 64).
__host__ __device__ constexpr int staged_stride(int d) { return d + 4; }

/// Row stride (floats) of the append CTA's copies of Π: D + 2, so that rows start 8 bytes aligned
/// (8-byte asynchronous copies: a quarter of the issue slots of 4-byte ones, which held that CTA's
/// wait back by ~1.5 µs) while the encoder's lanes, each reading its own row i at one column j,
/// meet at most two to a bank (2i + j mod 32).
__host__ __device__ constexpr int staged_pi_stride(int d) { return d + 2; }

/// \brief Dynamic shared memory (float offsets) of turbo_decode_staged_kernel: K' and V'
/// [kDecodeStagedTokens][D + 4], the norms and weights [kDecodeStagedTokens] each, the V groups'
/// partial sums [kStagedThreads]. The append CTA, which stages one position (row 0), puts the
/// encoder's region over K' rows 1…: per side (K, V) Π [D][D + 2], the encoder's scratch xc/r [D],
/// codes [D] bytes (rounded to 16), boundaries [16] and centroids [16].
struct StagedSmem {
  int k, v, kn, vn, w, part, total_floats;
  int app, app_side, app_scratch, app_codes;  ///< app_codes in bytes
};

__host__ __device__ inline StagedSmem staged_smem(int d) {
  StagedSmem s{};
  const int rows = kDecodeStagedTokens * staged_stride(d);
  s.k = 0;
  s.v = rows;
  s.kn = 2 * rows;
  s.vn = s.kn + kDecodeStagedTokens;
  s.w = s.vn + kDecodeStagedTokens;
  s.part = s.w + kDecodeStagedTokens;
  s.total_floats = s.part + kStagedThreads;
  s.app = staged_stride(d);  // K' row 1 (16-byte aligned)
  s.app_codes = (d + 15) / 16 * 16;
  s.app_scratch = d * staged_pi_stride(d);
  s.app_side = s.app_scratch + d + s.app_codes / 4 + 32;
  return s;
}

/// Whether the encoder's region fits over K' rows 1… (true for every D ≤ 64: checked below).
__host__ __device__ constexpr bool staged_encoder_fits(int d) {
  const int app_side = d * staged_pi_stride(d) + d + (d + 15) / 16 * 4 + 32;
  return 2 * app_side <= (kDecodeStagedTokens - 1) * staged_stride(d) &&
         (d * staged_pi_stride(d)) % 2 == 0 && staged_stride(d) % 4 == 0;
}
static_assert(staged_encoder_fits(16) && staged_encoder_fits(24) && staged_encoder_fits(32) &&
                  staged_encoder_fits(64),
              "the append CTA's encoder region must fit over the staged K' rows 1…");

/// Bytes of dynamic shared memory of turbo_decode_staged_kernel<BITS, D>.
__host__ __device__ inline size_t staged_smem_bytes(int d) {
  return static_cast<size_t>(staged_smem(d).total_floats) * sizeof(float);
}

/// \brief The staged kernel: one CTA of 8 warps per (row, split) of a turbo_decode_append launch
/// (q_len 1, num_splits ≥ 2, K without QJL bits). See the file comment.
template <int BITS, int D>
__global__ void __launch_bounds__(kStagedThreads, 2)
    turbo_decode_staged_kernel(const __grid_constant__ DecodeLaunch launch) {
  static_assert(D <= kDecodeAppendMaxHeadDim && D % 8 == 0, "staged: D ≤ 64");
  using T = DecodeTraits<BITS, D>;
  static_assert(T::kLanesPerToken == 1, "staged: one thread per position");
  constexpr int kThreads = kStagedThreads;
  constexpr int kWarps = kStagedWarps;
  constexpr int kL = T::kLevels;
  constexpr int S = staged_stride(D);
  constexpr int kGroups = kThreads / D;  // V pass: thread (j, g), g < kGroups
  const quant::DecodeParams& p = launch.p;
  const int row = blockIdx.x;  // (b, h): q_len is 1
  // The new token's CTA, logically the last split (decode_split_range), takes blockIdx.y 0: CTAs
  // are dispatched in block order, and the encode it must do after the wait is the launch's
  // longest path, so it gets the first SMs that free up.
  const int split = blockIdx.y == 0 ? launch.num_splits - 1 : static_cast<int>(blockIdx.y) - 1;
  const int num_splits = launch.num_splits;
  const int h = row % p.heads;
  const int b = row / p.heads;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const bool app_cta = split == num_splits - 1;

  extern __shared__ float4 s_dyn4[];
  float* s_dyn = reinterpret_cast<float*>(s_dyn4);
  const StagedSmem sm = staged_smem(D);
  float* s_k = s_dyn + sm.k;
  float* s_v = s_dyn + sm.v;
  float* s_kn = s_dyn + sm.kn;
  float* s_vn = s_dyn + sm.vn;
  float* s_w = s_dyn + sm.w;
  float* s_part = s_dyn + sm.part;
  __shared__ __align__(16) float s_q[D];
  __shared__ float s_ck[16];
  __shared__ float s_cv[16];
  __shared__ float s_red[2 * kWarps];
  __shared__ float s_y[D];
  // The append CTA's encoder (over K' rows 1…).
  constexpr int P = staged_pi_stride(D);
  float* s_app = s_dyn + sm.app;
  constexpr int kAppLane = (D + 31) / 32;
  const quant::CacheView& app_cache = warp == 1 ? p.v : p.k;

  TimelineStamp stamp;
  stamp.open(launch, app_cta ? kTimelineAppendCta : 0u);
  pdl_launch_dependents();
  // ---- before the wait: constants, then (cached splits) the split's records ------------------
  if (tid < kL) {
    s_ck[tid] = p.k.constants.centroids[h * kL + tid];
    s_cv[tid] = p.v.constants.centroids[h * kL + tid];
  }
  constexpr int kRowsPerWarp = (D + kWarps - 1) / kWarps;
  constexpr int kCols = (D + 31) / 32;
  const float* rot_k = p.k.constants.rotation + static_cast<int64_t>(h) * D * D;
  float rot_r[kRowsPerWarp][kCols];  // cached splits: this warp's rows of Π_K
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      rot_r[rr][c] =
          !app_cta && r < D && lane + 32 * c < D ? __ldg(rot_k + r * D + lane + 32 * c) : 0.0f;
  }
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
  if (app_cta) {  // Π of both sides for the encoder (Π_K also for q', even when it is I)
    for (int side = 0; side < 2; ++side) {
      if (side == 1 && p.v.constants.rotation_identity) continue;  // the encoder skips Π
      const float* src = (side ? p.v : p.k).constants.rotation + static_cast<int64_t>(h) * D * D;
      float* dst = s_app + side * sm.app_side;
      for (int e = 2 * tid; e < D * D; e += 2 * kThreads)  // D even: pairs never cross a row
        cp_async_8(dst + (e / D) * P + e % D, src + e);
    }
  }

  const quant::PageLayout& kl = p.k.layout;
  const quant::PageLayout& vl = p.v.layout;
  const bool k_norm = kl.norm == quant::NormMode::kToken;
  const bool v_norm = vl.norm == quant::NormMode::kToken;
  const int pt = kl.page_tokens;  // K and V share page_tokens (checked by the launcher)
  const uint8_t* kbase = p.k.pages + b * p.k.seq_stride + h * p.k.head_stride;
  const uint8_t* vbase = p.v.pages + b * p.v.seq_stride + h * p.v.head_stride;
  // A position's record as a thread holds it: codes of both sides and the norms' fp16 bits.
  struct Record {
    uint32_t kw[T::kCodeWords], vw[T::kCodeWords];
    uint32_t norms;  // K's bits in the low half, V's in the high half (0 without token norms)
  };
  // Position t's record, through the L2 only (load_global): the re-read after the wait must not
  // be answered by a line this SM cached before it.
  auto load = [&](int t, Record& r) {
    const int page = t / pt;
    const int slot = t - page * pt;
    const uint8_t* kp = kbase + static_cast<int64_t>(page) * kl.page_bytes;
    const uint8_t* vp = vbase + static_cast<int64_t>(page) * vl.page_bytes;
    load_record<T::kCodeBytes, true>(kp + kl.codes_offset + slot * kl.code_bytes, r.kw);
    load_record<T::kCodeBytes, true>(vp + vl.codes_offset + slot * vl.code_bytes, r.vw);
    const uint32_t kn =
        k_norm ? __ldcg(reinterpret_cast<const unsigned short*>(kp + kl.norms_offset + 2 * slot))
               : 0u;
    const uint32_t vn =
        v_norm ? __ldcg(reinterpret_cast<const unsigned short*>(vp + vl.norms_offset + 2 * slot))
               : 0u;
    r.norms = kn | (vn << 16);
  };
  // Row `tid` (K', V', norms) from a record.
  auto decode = [&](const Record& r) {
    s_kn[tid] = k_norm ? half_bits_to_float_dev(static_cast<uint16_t>(r.norms & 0xffffu)) : 1.0f;
    s_vn[tid] = v_norm ? half_bits_to_float_dev(static_cast<uint16_t>(r.norms >> 16)) : 1.0f;
    float4* kr = reinterpret_cast<float4*>(s_k + tid * S);
    float4* vr = reinterpret_cast<float4*>(s_v + tid * S);
    static_for<0, D / 4>([&](auto Q) {
      constexpr int q = decltype(Q)::value;
      kr[q] = make_float4(lut_at(s_ck, code_offset<BITS, 4 * q>(r.kw)),
                          lut_at(s_ck, code_offset<BITS, 4 * q + 1>(r.kw)),
                          lut_at(s_ck, code_offset<BITS, 4 * q + 2>(r.kw)),
                          lut_at(s_ck, code_offset<BITS, 4 * q + 3>(r.kw)));
      vr[q] = make_float4(lut_at(s_cv, code_offset<BITS, 4 * q>(r.vw)),
                          lut_at(s_cv, code_offset<BITS, 4 * q + 1>(r.vw)),
                          lut_at(s_cv, code_offset<BITS, 4 * q + 2>(r.vw)),
                          lut_at(s_cv, code_offset<BITS, 4 * q + 3>(r.vw)));
    });
  };
  // The split's positions from starts[b] as read now: a hint, since the kernels the wait is for
  // may still write it (read through the L2 like the re-read below).
  const int hint = __ldcg(launch.app.starts + b);
  SplitRange range = decode_split_range(true, hint, launch.capacity, num_splits, split);
  __syncthreads();  // the codebooks in s_ck / s_cv
  // Thread i stages position first + i into row i.
  const bool staged_early = !app_cta && range.first + tid < range.last;
  Record early{};
  if (staged_early) {
    load(range.first + tid, early);
    decode(early);
  }
  stamp.mark(kPhaseBeforeWait);
  pdl_wait();
  stamp.mark(kPhaseAfterWait);
  // After the wait every kernel before this one is complete: starts[b] and the records as read
  // now are final. Their loads are issued here, beside q's, and checked after q'.
  const int start = __ldcg(launch.app.starts + b);
  const bool moved = start != hint;  // CTA-uniform: the split's range moved, stage it again
  if (moved) range = decode_split_range(true, start, launch.capacity, num_splits, split);
  const bool stage_now = !app_cta && range.first + tid < range.last && (moved || staged_early);
  Record now{};
  if (stage_now) load(range.first + tid, now);
  const bool app_fits = start >= 0 && start < launch.capacity;
  const float* q = p.q + static_cast<int64_t>(row) * D;
  const float* sc_k = p.k.constants.scale;
  static_assert(kRowsPerWarp <= 32, "one σ_K row per lane");
  if (app_cta) {
    // The new token's CTA: warps 0 (K) and 1 (V) encode it into its slot as kernel 1's append CTA
    // does, and write it as a decoder reads it back into row 0 (K', V', norms); meanwhile warps
    // 2… compute q' from the encoder's copy of Π_K (the same products and sums as the registers'
    // path below).
    cp_async_wait_all();
    __syncthreads();  // every thread's copies of Π
    if (warp < 2) {
      float app_x[kAppLane];
      const void* rows = warp == 1 ? launch.app.v : launch.app.k;
      const int64_t x0 = b * launch.app.stride_b + h * launch.app.stride_h;
#pragma unroll
      for (int k = 0; k < kAppLane; ++k) {
        const int i = lane + 32 * k;
        app_x[k] = i < D && app_fits ? load_input(rows, launch.app.dtype, x0 + i) : 0.0f;
      }
      const quant::PageLayout& lay = app_cache.layout;
      const quant::HeadConstantsView& cst = app_cache.constants;
      const float* s_pi = s_app + warp * sm.app_side;  // [D][D+2]: Π_ij at i(D+2)+j
      float* scratch = s_app + warp * sm.app_side + sm.app_scratch;
      uint8_t* s_codes = reinterpret_cast<uint8_t*>(scratch + D);
      float* s_bnd = scratch + D + sm.app_codes / 4;
      float* s_cen = s_bnd + 16;
      const int levels = 1 << lay.bits;
      if (lane < levels - 1) s_bnd[lane] = app_bnd;
      if (lane < levels) s_cen[lane] = app_cen;
      if (!app_fits) {
        if (lane == 0 && launch.app.status)
          atomicOr(launch.app.status, kQuantizeAppendOutOfCapacity);
      } else {
        float inv_sigma[kAppLane];
#pragma unroll
        for (int k = 0; k < kAppLane; ++k)  // 1/σ as the host computes it: correctly rounded
          inv_sigma[k] = cst.scale ? __fdiv_rn(1.0f, app_sigma[k]) : 1.0f;
        __syncwarp();  // the codebook in s_bnd / s_cen
        encode_row_warp<D, BITS>(
            app_x, app_mu, inv_sigma, [&](int i, int j) { return s_pi[i * P + j]; }, s_bnd, s_cen,
            scratch, s_codes, lay, cst, h, app_cache.page(b, h, start / lay.page_tokens),
            start % lay.page_tokens, lane, launch.app.status, warp == 1 ? s_v : s_k,
            warp == 1 ? s_vn : s_kn);
      }
    } else {
      constexpr int kQWarps = kWarps - 2;
      constexpr int kAppRows = (D + kQWarps - 1) / kQWarps;
      static_assert(kAppRows <= 32, "one σ_K row per lane");
      const int w = warp - 2;
      float qv[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) qv[c] = lane + 32 * c < D ? q[lane + 32 * c] : 0.0f;
      const int sig_row = w + lane * kQWarps;
      const float sig_k =
          sc_k != nullptr && lane < kAppRows && sig_row < D ? __ldg(sc_k + h * D + sig_row) : 1.0f;
      const float* s_pik = s_app;  // side 0: Π_K, [D][D+2]
      float part[kAppRows];
#pragma unroll
      for (int rr = 0; rr < kAppRows; ++rr) {
        const int r = w + rr * kQWarps;
        float s = 0.0f;
#pragma unroll
        for (int c = 0; c < kCols; ++c)
          if (r < D && lane + 32 * c < D) s += s_pik[r * P + lane + 32 * c] * qv[c];
        part[rr] = s;
      }
#pragma unroll
      for (int rr = 0; rr < kAppRows; ++rr) {
        const int r = w + rr * kQWarps;
        const float s = warp_sum(part[rr]);
        if (lane == rr && r < D) s_q[r] = sc_k ? s * sig_k : s;
      }
    }
  } else {
    // ---- q' = σ_K ⊙ Π_K q: warp w computes rows w, w + 8, … (kernel 1's arithmetic) ----------
    float qv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) qv[c] = lane + 32 * c < D ? q[lane + 32 * c] : 0.0f;
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
        if (r < D && lane + 32 * c < D) s += rot_r[rr][c] * qv[c];
      part[rr] = s;
    }
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      const float s = warp_sum(part[rr]);
      if (lane == rr && r < D) s_q[r] = sc_k ? s * sig_k : s;
    }
    if (stage_now) {  // a row whose bytes changed since the early read (or a moved range)
      bool same = !moved && now.norms == early.norms;
#pragma unroll
      for (int w = 0; w < T::kCodeWords; ++w)
        same = same && now.kw[w] == early.kw[w] && now.vw[w] == early.vw[w];
      if (!same) decode(now);
    }
  }
  __syncthreads();  // q' in shared memory; the split's rows staged (the new token's encoded)
  stamp.mark(kPhaseQuery);
  stamp.mark(kPhaseTables);

  // ---- scores, softmax, V ----------------------------------------------------------------------
  const int n = range.last > range.first ? range.last - range.first : 0;
  const float alpha = p.sm_scale * kLog2e;  // scores in the log2 domain
  float score = -INFINITY;
  if (tid < n) {
    const float4* kr = reinterpret_cast<const float4*>(s_k + tid * S);
    const float4* qr = reinterpret_cast<const float4*>(s_q);
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < D / 4; ++q) {
      const float4 kv = kr[q], qv = qr[q];
      a[0] = fmaf(qv.x, kv.x, a[0]);
      a[1] = fmaf(qv.y, kv.y, a[1]);
      a[2] = fmaf(qv.z, kv.z, a[2]);
      a[3] = fmaf(qv.w, kv.w, a[3]);
    }
    score = alpha * (s_kn[tid] * ((a[0] + a[1]) + (a[2] + a[3])));
  }
  {
    const float wm = warp_max(score);
    if (lane == 0) s_red[warp] = wm;
  }
  __syncthreads();
  float m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_red[w]);
  const float pw = tid < n ? exp2f(score - m) : 0.0f;
  if (tid < n) s_w[tid] = pw * s_vn[tid];
  {
    const float wl = warp_sum(pw);
    if (lane == 0) s_red[kWarps + warp] = wl;
  }
  __syncthreads();
  float l = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) l += s_red[kWarps + w];
  if (tid < kGroups * D) {
    const int j = tid % D, g = tid / D;
    float acc = 0.0f;
    for (int t = g; t < n; t += kGroups) acc = fmaf(s_w[t], s_v[t * S + j], acc);
    s_part[g * D + j] = acc;
  }
  stamp.mark(kPhaseLoop);
  __syncthreads();
  stamp.mark(kPhaseReduced);
  // ---- the split's partial (kernel 1's format), then the merge as kernel 1 -------------------
  const int64_t part = static_cast<int64_t>(row) * num_splits + split;
  if (tid < D) {
    float acc = 0.0f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) acc += s_part[g * D + tid];
    launch.ws_acc[part * D + tid] = acc;
  }
  if (tid == 0) {
    launch.ws_m[part] = m;
    launch.ws_l[part] = l;
  }
  if (p.split_counters == nullptr) {  // kernel 2 merges
    stamp.close(kPhaseEnd);
    return;
  }
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
  rotate_back_and_store<D>(p, row, h, s_y, merge_splits<D, true>(launch, row, h, s_y));
  stamp.close(kPhaseEnd);
}

}  // namespace turboesm::kernels::detail
