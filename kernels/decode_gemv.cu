// SPDX-License-Identifier: MIT
/// \file decode_gemv.cu
/// \brief The dense layers of a decode step: LayerNorm → W·x + b → GELU / residual in one launch
/// (see include/turboesm/kernels/decode_gemv.h for the arithmetic and the work layout).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "common.cuh"
#include "convert.cuh"
#include "pdl.cuh"
#include "turboesm/kernels/decode_gemv.h"

namespace turboesm::kernels {
namespace {

// A CTA is WARPS warps (a template parameter: 4, 8 or 16; DecodeGemvParams::warps).
constexpr int kFeaturesPerWarp = 2;      // output features (rows of W) per warp
constexpr int kChunks = 6;               // 16-byte loads per weight row per lane and pass
constexpr int kPassVecs = 32 * kChunks;  // 16-byte vectors of a row one warp reads per pass

/// 16 bytes of W that are read once: no L1 allocation.
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

/// The 8 elements of T in `v`, widened.
template <typename T>
__device__ __forceinline__ void widen8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t;
    if constexpr (std::is_same_v<T, __half>) {
      t = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
    } else {
      t = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
    }
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

/// 8 floats rounded to T, packed.
template <typename T>
__device__ __forceinline__ uint4 narrow8(const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, __half>) {
      const __half2 h = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
      w[i] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
      w[i] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

/// Vector v (8 elements) of x' = T(x) of row m, from global memory.
template <typename T>
__device__ __forceinline__ uint4 load_x_vec(const DecodeGemvParams& p, int m, int v) {
  const int kvec = p.in_features / 8;
  if (p.x_dtype == ElementType::kFloat32) {  // x.to(T)
    const float4* src = static_cast<const float4*>(p.x) + (int64_t(m) * kvec + v) * 2;
    const float4 a = src[0], b = src[1];
    const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    return narrow8<T>(f);
  }
  return static_cast<const uint4*>(p.x)[int64_t(m) * kvec + v];
}

/// LayerNorm γ/β vectors a thread requests before the dependency wait when the kernel loads early
/// (EARLY, see EpilogueIn): v = threadIdx.x + i · 32 · WARPS for i < kEarlyLnVecs (all of them up
/// to K = 2048 at 4 warps, e.g. the 650M model's 1280; the rest, if any, after the statistics as
/// without EARLY).
constexpr int kEarlyLnVecs = 2;

template <bool EARLY>
struct LnParams {
  static constexpr int kVecs = EARLY ? kEarlyLnVecs : 0;
  uint4 g[EARLY ? kEarlyLnVecs : 1], b[EARLY ? kEarlyLnVecs : 1];
};

template <int WARPS, bool EARLY>
__device__ __forceinline__ void load_ln_params(const DecodeGemvParams& p, LnParams<EARLY>& ln) {
  if (p.ln_weight == nullptr) return;
  const int kvec = p.in_features / 8;
#pragma unroll
  for (int i = 0; i < LnParams<EARLY>::kVecs; ++i) {
    const int v = threadIdx.x + i * 32 * WARPS;
    if (v < kvec) {
      ln.g[i] = static_cast<const uint4*>(p.ln_weight)[v];
      ln.b[i] = static_cast<const uint4*>(p.ln_bias)[v];
    }
  }
}

/// Prologue: xs[m][k] = x'' (rows ≥ p.rows are zeros), as 16-byte vectors of T. With a
/// LayerNorm every warp computes μ and rstd of each row itself from global memory (the same lane-
/// strided sums and butterfly in every warp, so every warp gets the same values; no CTA barrier),
/// then each thread writes its share of x''. The caller synchronises before reading xs.
template <typename T, int WARPS, int MM, bool EARLY>
__device__ void stage_x(const DecodeGemvParams& p, const LnParams<EARLY>& ln, uint4* xs) {
  constexpr int kThreads = 32 * WARPS;
  const int kvec = p.in_features / 8;
  if (p.ln_weight == nullptr) {
#pragma unroll 2
    for (int v = threadIdx.x; v < kvec; v += kThreads)
#pragma unroll
      for (int m = 0; m < MM; ++m)
        xs[m * kvec + v] = m < p.rows ? load_x_vec<T>(p, m, v) : make_uint4(0u, 0u, 0u, 0u);
    return;
  }
  const int lane = threadIdx.x & 31;
  const float inv_k = 1.0f / static_cast<float>(p.in_features);
  float mean[MM], rstd[MM];
#pragma unroll
  for (int m = 0; m < MM; ++m) {
    mean[m] = rstd[m] = 0.0f;
    if (m >= p.rows) continue;
    float s = 0.0f;
#pragma unroll 4
    for (int v = lane; v < kvec; v += 32) {
      float f[8];
      widen8<T>(load_x_vec<T>(p, m, v), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) s += f[i];
    }
    mean[m] = detail::warp_sum(s) * inv_k;
    float q = 0.0f;
#pragma unroll 4
    for (int v = lane; v < kvec; v += 32) {
      float f[8];
      widen8<T>(load_x_vec<T>(p, m, v), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) q += (f[i] - mean[m]) * (f[i] - mean[m]);
    }
    rstd[m] = rsqrtf(detail::warp_sum(q) * inv_k + p.ln_eps);
  }
  int i = 0;
  for (int v = threadIdx.x; v < kvec; v += kThreads, ++i) {
    float g[8], b[8];
    uint4 gv, bv;
    if (i < LnParams<EARLY>::kVecs) {  // requested before the wait (load_ln_params)
#pragma unroll
      for (int k = 0; k < LnParams<EARLY>::kVecs; ++k)
        if (k == i) {
          gv = ln.g[k];
          bv = ln.b[k];
        }
    } else {
      gv = static_cast<const uint4*>(p.ln_weight)[v];
      bv = static_cast<const uint4*>(p.ln_bias)[v];
    }
    widen8<T>(gv, g);
    widen8<T>(bv, b);
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      uint4 out = make_uint4(0u, 0u, 0u, 0u);
      if (m < p.rows) {
        float f[8];
        widen8<T>(load_x_vec<T>(p, m, v), f);
#pragma unroll
        for (int i = 0; i < 8; ++i) f[i] = (f[i] - mean[m]) * rstd[m] * g[i] + b[i];
        out = narrow8<T>(f);
      }
      xs[m * kvec + v] = out;
    }
  }
}

/// The inputs of a lane's epilogue, loaded ahead of the sums that need them (load_epilogue_bias,
/// load_epilogue_inputs): the bias of its feature(s) — a weight, requested before the dependency
/// wait — and, after the wait, the residual (plain mode) or the rotary table entries (Q/K/V mode).
/// Issued early, their memory latency overlaps the prologue and the products instead of following
/// the reduction. Requested early only by the EARLY kernels (one row: the batch-1 step, unless
/// set_decode_gemv_early_loads(false)): the registers they hold stay live through the products,
/// and the instances for more rows have none to spare (they spilled); the others load them where
/// they are used, after the reduction.
struct EpilogueIn {
  // Plain mode: b0 = bias[n], res = residual[m][n]. Q/K/V mode: b0, b1 = bias of the pair
  // (n0, n0 + d/2); c0, c1, s0, s1 = cos / sin at j, j + d/2 (res aliases c0: one is unused).
  float b0 = 0.0f, b1 = 0.0f, c0 = 0.0f, c1 = 0.0f, s0 = 0.0f, s1 = 0.0f;
  __device__ float& res() { return c0; }
  __device__ float res() const { return c0; }
};

/// Which (row m, feature n) lane `lane` finishes for the warp's pair starting at n0 (plain mode:
/// lane r · MM + m, n = n0 + r; Q/K/V mode: lane m, the pair (n0, n0 + d/2)), or false.
template <int MM>
__device__ __forceinline__ bool epilogue_lane(const DecodeGemvParams& p, int lane, int n0, int& m,
                                              int& n) {
  if (p.head_dim > 0) {
    m = lane;
    n = n0;
    return lane < MM && lane < p.rows && n0 < p.out_features;
  }
  const int r = lane / MM;
  m = lane % MM;
  n = n0 + r;
  return r < kFeaturesPerWarp && m < p.rows && n < p.out_features;
}

/// The weights part of the lane's epilogue inputs (any time: no launch of the step writes them).
template <typename T, int MM>
__device__ __forceinline__ void load_epilogue_bias(const DecodeGemvParams& p, int lane, int n0,
                                                   EpilogueIn& e) {
  int m, n;
  const T* bias = static_cast<const T*>(p.bias);
  if (bias == nullptr || !epilogue_lane<MM>(p, lane, n0, m, n)) return;
  e.b0 = Cvt<T>::to_float(bias[n]);
  if (p.head_dim > 0) e.b1 = Cvt<T>::to_float(bias[n + p.head_dim / 2]);
}

/// The activations part (after the dependency wait: the residual and the rotary tables come from
/// earlier launches of the step).
template <typename T, int MM>
__device__ __forceinline__ void load_epilogue_inputs(const DecodeGemvParams& p, int lane, int n0,
                                                     EpilogueIn& e) {
  int m, n;
  if (!epilogue_lane<MM>(p, lane, n0, m, n)) return;
  if (p.head_dim > 0) {
    const int d = p.head_dim, half = d / 2, hd = p.out_features / 3;
    const int region = n0 / hd;
    if (region == 2) return;  // V: no rotation
    const int j = (n0 - region * hd) % d;
    e.c0 = p.cos[int64_t(m) * d + j];
    e.c1 = p.cos[int64_t(m) * d + j + half];
    e.s0 = p.sin[int64_t(m) * d + j];
    e.s1 = p.sin[int64_t(m) * d + j + half];
    return;
  }
  if (p.residual)
    e.res() = Cvt<T>::to_float(static_cast<const T*>(p.residual)[int64_t(m) * p.out_features + n]);
}

/// The Q/K/V epilogue of row m for the rotate-half pair (n0, n0 + d/2) with sums s0, s1: the
/// arithmetic of qkv_rotary_to_float (kernels/qkv_rotary.cu) on z = T(s + b): q scaled in T
/// first, then x·cos + rot·sin with separately rounded products and sum, rounded to T.
template <typename T>
__device__ __forceinline__ void qkv_epilogue(const DecodeGemvParams& p, int m, int n0, float s0,
                                             float s1, const EpilogueIn& e) {
  const int d = p.head_dim, half = d / 2;
  const int hd = p.out_features / 3;
  const int region = n0 / hd;  // 0 q, 1 k, 2 v (a pair never straddles: regions hold whole heads)
  const int c = n0 - region * hd;
  const bool bias = p.bias != nullptr;
  float z0 = Cvt<T>::round(bias ? s0 + e.b0 : s0);
  float z1 = Cvt<T>::round(bias ? s1 + e.b1 : s1);
  const int64_t o = int64_t(m) * hd + c;
  if (region == 2) {
    p.v_out[o] = z0;
    p.v_out[o + half] = z1;
    return;
  }
  if (region == 0) {
    z0 = Cvt<T>::round(__fmul_rn(z0, p.q_scale));
    z1 = Cvt<T>::round(__fmul_rn(z1, p.q_scale));
  }
  const float o0 = __fadd_rn(__fmul_rn(z0, e.c0), __fmul_rn(-z1, e.s0));
  const float o1 = __fadd_rn(__fmul_rn(z1, e.c1), __fmul_rn(z0, e.s1));
  float* dst = region == 0 ? p.q_out : p.k_out;
  dst[o] = Cvt<T>::round(o0);
  dst[o + half] = Cvt<T>::round(o1);
}

/// Finishes the warp's feature pair (n0 and its partner: n0 + 1, or n0 + d/2 in the Q/K/V mode)
/// from the reduced sums: lane r · MM + m holds feature r's sum for row m.
template <typename T, int MM>
__device__ __forceinline__ void finish_pair(const DecodeGemvParams& p, int lane, int n0, float mine,
                                            const EpilogueIn& e) {
  const int N = p.out_features;
  if (p.head_dim > 0) {  // Q/K/V mode: lane m finishes row m's pair
    const float other = __shfl_sync(detail::kFullMask, mine, (lane + MM) & 31);
    if (lane < MM && lane < p.rows && n0 < N) qkv_epilogue<T>(p, lane, n0, mine, other, e);
    return;
  }
  int m, n;
  if (!epilogue_lane<MM>(p, lane, n0, m, n)) return;
  float z = Cvt<T>::round(p.bias ? mine + e.b0 : mine);
  if (p.gelu) z = Cvt<T>::round(z * 0.5f * (1.0f + erff(z * 0.70710678118654752f)));
  if (p.residual) z = Cvt<T>::round(z + e.res());
  static_cast<T*>(p.out)[int64_t(m) * N + n] = Cvt<T>::from_float(z);
}

/// First feature of pair `pair`: neighbours (2·pair, 2·pair + 1), or in the Q/K/V mode the
/// rotate-half pair (j, j + d/2) of one head.
__device__ __forceinline__ int pair_first_feature(const DecodeGemvParams& p, int pair) {
  const int half = p.head_dim / 2;
  return half > 0 ? (pair / half) * p.head_dim + pair % half : pair * 2;
}

/// The warp's sums of its feature pair: lane r · MM + m gets (feature r, row m) — with KSPLIT > 1
/// summed over the slices in slice order through `part` (a __syncthreads inside: call from every
/// warp); valid in the warps of slice 0.
template <int WARPS, int MM, int KSPLIT>
__device__ __forceinline__ float reduce_pair(const float (&acc)[kFeaturesPerWarp][MM], int lane,
                                             int warp, float (*part)[kFeaturesPerWarp * MM]) {
  constexpr int kGroups = WARPS / KSPLIT;
  float mine = 0.0f;
#pragma unroll
  for (int r = 0; r < kFeaturesPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MM; ++m) {
      const float s = detail::warp_sum(acc[r][m]);
      if (lane == r * MM + m) mine = s;
    }
  if constexpr (KSPLIT > 1) {
    if (lane < kFeaturesPerWarp * MM) part[warp][lane] = mine;
    __syncthreads();
    if (warp < kGroups && lane < kFeaturesPerWarp * MM) {
      mine = 0.0f;
#pragma unroll
      for (int k = 0; k < KSPLIT; ++k) mine += part[k * kGroups + warp][lane];
    }
  }
  return mine;
}

/// One CTA: WARPS warps as (WARPS / KSPLIT feature pairs) × (KSPLIT slices of K). A task is what
/// one CTA of the session-6 layout did (there at 4 warps): WARPS / KSPLIT feature pairs; the CTA
/// loops over tasks blockIdx.x, + gridDim.x, … (gridDim.x = the task count gives that layout
/// back), staging x'' (and the LayerNorm statistics) once for all of them. A warp streams its two
/// weight rows' slice in passes of kChunks 16-byte loads per lane: the first task's first pass is
/// issued before the prologue, every later task's first pass before the previous task's reduction
/// and epilogue (for the 650M model every slice is one pass). MM = rows rounded up to 1, 2, 4 or
/// 8. Every task's arithmetic is that of the one-task-per-CTA kernel, so neither the grid size nor
/// the CTA width (at a given KSPLIT) changes a bit of the output.
/// EARLY (one row, set_decode_gemv_early_loads): the epilogue's bias and the LayerNorm's γ/β are
/// requested with the weights before the wait, the residual / rotary tables right after it, so
/// that no memory round trip but x's remains between the wait and the stores.
template <typename T, int WARPS, int MM, int KSPLIT, bool EARLY>
__global__ void __launch_bounds__(32 * WARPS)
    decode_gemv_kernel(const __grid_constant__ DecodeGemvParams p, int tasks) {
  extern __shared__ uint4 xs[];  // [MM][K / 8] x''
  // Two buffers by task parity: a warp may write task t + 1's partials while another still reads
  // task t's (reduce_pair's barrier separates t from t + 2).
  __shared__ float part[2][WARPS][kFeaturesPerWarp * MM];
  constexpr int kGroups = WARPS / KSPLIT;
  const int K = p.in_features, N = p.out_features;
  const int kvec = K / 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int group = warp % kGroups, slice = warp / kGroups;
  // The warp's two features: neighbours, or in the Q/K/V mode the rotate-half pair (j, j + d/2)
  // of one head (pair index → head, j).
  static_assert(kFeaturesPerWarp == 2, "the Q/K/V epilogue pairs the warp's two features");
  const int n_step = p.head_dim > 0 ? p.head_dim / 2 : 1;
  const int slice_vecs = (kvec + KSPLIT - 1) / KSPLIT;
  const int v_begin = min(kvec, slice * slice_vecs);
  const int v_end = min(kvec, v_begin + slice_vecs);
  // Every warp runs the same number of passes (the last slice may be shorter or empty): the
  // K-split reduction has a CTA barrier.
  const int passes = (slice_vecs + kPassVecs - 1) / kPassVecs;
  int n0 = 0;
  const uint4* wrow[kFeaturesPerWarp];
  auto select = [&](int task) {
    n0 = pair_first_feature(p, task * kGroups + group);
#pragma unroll
    for (int r = 0; r < kFeaturesPerWarp; ++r)  // a feature past N re-reads row N − 1, unused
      wrow[r] = static_cast<const uint4*>(p.weight) + int64_t(min(n0 + r * n_step, N - 1)) * kvec;
  };

  uint4 w[kFeaturesPerWarp][kChunks];
  auto load = [&](int v0) {
#pragma unroll
    for (int r = 0; r < kFeaturesPerWarp; ++r)
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        const int v = v0 + u * 32 + lane;
        w[r][u] = v < v_end ? load_stream(wrow[r] + v) : make_uint4(0u, 0u, 0u, 0u);
      }
  };
  detail::pdl_launch_dependents();
  select(blockIdx.x);
  load(v_begin);  // in flight during the wait for the producer of x and the prologue
  EpilogueIn epi;
  if (EARLY && slice == 0) load_epilogue_bias<T, MM>(p, lane, n0, epi);
  LnParams<EARLY> ln;
  load_ln_params<WARPS, EARLY>(p, ln);
  detail::pdl_wait();
  if (EARLY && slice == 0) load_epilogue_inputs<T, MM>(p, lane, n0, epi);
  stage_x<T, WARPS, MM, EARLY>(p, ln, xs);
  __syncthreads();

  int parity = 0;
  for (int task = blockIdx.x; task < tasks; task += gridDim.x, parity ^= 1) {
    float acc[kFeaturesPerWarp][MM];
#pragma unroll
    for (int r = 0; r < kFeaturesPerWarp; ++r)
#pragma unroll
      for (int m = 0; m < MM; ++m) acc[r][m] = 0.0f;
    for (int pass = 0; pass < passes; ++pass) {
      const int v0 = v_begin + pass * kPassVecs;
      if (pass != 0) load(v0);  // passes after the first (slices longer than kPassVecs)
#pragma unroll
      for (int u = 0; u < kChunks; ++u) {
        const int v = v0 + u * 32 + lane;
        if (v < v_end) {
          float wf[kFeaturesPerWarp][8];
#pragma unroll
          for (int r = 0; r < kFeaturesPerWarp; ++r) widen8<T>(w[r][u], wf[r]);
#pragma unroll
          for (int m = 0; m < MM; ++m) {
            float xf[8];
            widen8<T>(xs[m * kvec + v], xf);
#pragma unroll
            for (int r = 0; r < kFeaturesPerWarp; ++r)
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[r][m] = fmaf(wf[r][i], xf[i], acc[r][m]);
          }
        }
      }
    }
    const int n_done = n0;
    const bool more = task + static_cast<int>(gridDim.x) < tasks;
    if (more) {  // the next task's first pass, in flight during this one's reduction and stores
      select(task + gridDim.x);
      load(v_begin);
    }
    const float mine = reduce_pair<WARPS, MM, KSPLIT>(acc, lane, warp, part[parity]);
    if (slice == 0) {
      if constexpr (!EARLY) {
        epi = EpilogueIn{};
        load_epilogue_bias<T, MM>(p, lane, n_done, epi);
        load_epilogue_inputs<T, MM>(p, lane, n_done, epi);
      }
      finish_pair<T, MM>(p, lane, n_done, mine, epi);
    }
    if (EARLY && more && slice == 0) {  // the next task's epilogue inputs, during its products
      epi = EpilogueIn{};
      load_epilogue_bias<T, MM>(p, lane, n0, epi);
      load_epilogue_inputs<T, MM>(p, lane, n0, epi);
    }
  }
}

int padded_rows(int rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8; }

size_t smem_bytes(const DecodeGemvParams& p) {
  const size_t k = static_cast<size_t>(p.in_features);
  return static_cast<size_t>(padded_rows(p.rows)) * k * 2u;
}

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; }

/// Streaming multiprocessors of the current device (132, the H100/H200's, if it cannot be read).
int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0)
    return 132;
  return n;
}

/// The CTA's warp count for `p`: DecodeGemvParams::warps, or where 0 (decode_gemv.h):
/// kDecodeGemvDefaultQkvWarps in the Q/K/V mode and kDecodeGemvDefaultWarps otherwise at one
/// row, 4 at several.
int warps_for(const DecodeGemvParams& p) {
  if (p.warps != 0) return p.warps;
  if (p.rows > 1) return 4;
  return p.head_dim > 0 ? kDecodeGemvDefaultQkvWarps : kDecodeGemvDefaultWarps;
}

/// K slices per feature pair: enough that a slice is one pass (≤ kPassVecs vectors), and more
/// while fewer than 8 warps per SM would run.
int ksplit_for(const DecodeGemvParams& p, int warps) {
  const int kvec = p.in_features / 8;
  const int min_ctas = 8 * sm_count() / warps;
  const auto ctas = [&](int ks) {
    const int per_cta = (warps / ks) * kFeaturesPerWarp;
    return (p.out_features + per_cta - 1) / per_cta;
  };
  int ks = 1;
  while (ks < 4 && ((kvec + ks - 1) / ks > kPassVecs || ctas(ks) < min_ctas)) ks *= 2;
  return ks;
}

std::atomic<bool> g_early_loads{true};  // set_decode_gemv_early_loads

template <typename T, int WARPS, int MM, int KSPLIT, bool EARLY>
cudaError_t launch(const DecodeGemvParams& p, cudaStream_t stream) {
  constexpr int kThreads = 32 * WARPS;
  const auto kernel = decode_gemv_kernel<T, WARPS, MM, KSPLIT, EARLY>;
  const size_t smem = smem_bytes(p);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  constexpr int kPerCta = (WARPS / KSPLIT) * kFeaturesPerWarp;
  const int tasks = (p.out_features + kPerCta - 1) / kPerCta;
  int ctas = tasks;
  if (p.ctas_per_sm >= 0) {
    int fit = 0;
    const cudaError_t e =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, kThreads, smem);
    if (e != cudaSuccess) return e;
    const int per_sm =
        p.ctas_per_sm > 0 ? std::min(p.ctas_per_sm, std::max(fit, 1)) : std::max(fit, 1);
    ctas = static_cast<int>(std::min<int64_t>(tasks, int64_t(per_sm) * sm_count()));
  }
  return detail::launch_pdl(kernel, dim3(ctas), dim3(kThreads), smem, stream, p, tasks);
}

/// The EARLY kernel for one row (set_decode_gemv_early_loads), else the plain one.
template <typename T, int WARPS, int MM, int KSPLIT>
cudaError_t launch_early(const DecodeGemvParams& p, cudaStream_t stream) {
  if constexpr (MM == 1) {
    if (g_early_loads.load()) return launch<T, WARPS, MM, KSPLIT, true>(p, stream);
  }
  return launch<T, WARPS, MM, KSPLIT, false>(p, stream);
}

template <typename T, int WARPS, int MM>
cudaError_t launch_split(const DecodeGemvParams& p, cudaStream_t stream) {
  switch (ksplit_for(p, WARPS)) {
    case 1:
      return launch_early<T, WARPS, MM, 1>(p, stream);
    case 2:
      return launch_early<T, WARPS, MM, 2>(p, stream);
    default:
      return launch_early<T, WARPS, MM, 4>(p, stream);
  }
}

template <typename T>
cudaError_t launch_rows(const DecodeGemvParams& p, cudaStream_t stream) {
  switch (padded_rows(p.rows)) {
    case 1:  // one row: 4, 8 or 16 warps; several rows: 4 (decode_gemv_invalid_reason)
      switch (warps_for(p)) {
        case 4:
          return launch_split<T, 4, 1>(p, stream);
        case 8:
          return launch_split<T, 8, 1>(p, stream);
        default:
          return launch_split<T, 16, 1>(p, stream);
      }
    case 2:
      return launch_split<T, 4, 2>(p, stream);
    case 4:
      return launch_split<T, 4, 4>(p, stream);
    default:
      return launch_split<T, 4, 8>(p, stream);
  }
}

}  // namespace

const char* decode_gemv_invalid_reason(const DecodeGemvParams& p) {
  if (p.rows < 1 || p.rows > kDecodeGemvMaxRows) return "rows must be in [1, 8]";
  if (p.in_features <= 0 || p.in_features % 8 != 0)
    return "in_features must be a positive multiple of 8";
  if (p.out_features <= 0) return "out_features must be positive";
  if (p.dtype != ElementType::kFloat16 && p.dtype != ElementType::kBFloat16)
    return "dtype must be fp16 or bf16";
  if (p.x_dtype != p.dtype && p.x_dtype != ElementType::kFloat32)
    return "x_dtype must be dtype or fp32";
  if (p.head_dim < 0 || p.head_dim % 2 != 0) return "head_dim must be 0 or a positive even number";
  const bool qkv = p.head_dim > 0;
  if (qkv) {
    if (p.out_features % (3 * p.head_dim) != 0)
      return "the Q/K/V mode needs out_features = 3 x heads x head_dim";
    if (p.cos == nullptr || p.sin == nullptr || p.q_out == nullptr || p.k_out == nullptr ||
        p.v_out == nullptr)
      return "the Q/K/V mode needs cos, sin, q_out, k_out and v_out";
    if (p.gelu || p.residual != nullptr) return "the Q/K/V mode takes no gelu or residual";
  }
  if (p.x == nullptr || p.weight == nullptr || (p.out == nullptr && !qkv))
    return "x, weight and out must not be null";
  if (!aligned16(p.x) || !aligned16(p.weight)) return "x and weight must be 16-byte aligned";
  if ((p.ln_weight == nullptr) != (p.ln_bias == nullptr))
    return "ln_weight and ln_bias go together";
  if (p.ln_weight != nullptr && (!aligned16(p.ln_weight) || !aligned16(p.ln_bias)))
    return "ln_weight and ln_bias must be 16-byte aligned";
  if (p.gelu && p.residual != nullptr) return "gelu and residual are exclusive";
  if (p.warps != 0 && p.warps != 4 && p.warps != 8 && p.warps != 16)
    return "warps must be 0 (the default), 4, 8 or 16";
  if (p.rows > 1 && p.warps != 0 && p.warps != 4) return "warps other than 4 need rows = 1";
  if (p.ctas_per_sm < kDecodeGemvCtaPerTask)
    return "ctas_per_sm must be kDecodeGemvCtaPerTask (-1), 0 (as many as fit) or positive";
  if (smem_bytes(p) > kDecodeGemvMaxSmemBytes)
    return "rows (rounded up to a power of two) x in_features x 2 bytes exceed the shared memory "
           "budget";
  return nullptr;
}

void set_decode_gemv_early_loads(bool enabled) { g_early_loads.store(enabled); }
bool decode_gemv_early_loads() { return g_early_loads.load(); }

cudaError_t decode_gemv(const DecodeGemvParams& p, cudaStream_t stream) {
  if (decode_gemv_invalid_reason(p) != nullptr) return cudaErrorInvalidValue;
  return p.dtype == ElementType::kFloat16 ? launch_rows<__half>(p, stream)
                                          : launch_rows<__nv_bfloat16>(p, stream);
}

}  // namespace turboesm::kernels
