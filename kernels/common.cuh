// SPDX-License-Identifier: MIT
#pragma once
/// \file common.cuh
/// \brief Device helpers shared by the TurboESM kernels: record loads from the page format,
/// compile-time code extraction, warp reductions, fp16 bit conversions.

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace turboesm::kernels::detail {

inline constexpr unsigned kFullMask = 0xffffffffu;

/// fp16 bits -> float (exact; same value as quant::half_bits_to_float).
__device__ __forceinline__ float half_bits_to_float_dev(uint16_t h) {
  float f;
  asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
  return f;
}

/// Reads a 2-byte fp16 from global memory and converts it.
__device__ __forceinline__ float load_half(const uint8_t* p) {
  return half_bits_to_float_dev(*reinterpret_cast<const uint16_t*>(p));
}

/// A global load of `p`, through the L1 (plain) or the L2 only (L2_ONLY: `ld.global.cg`, which a
/// line this SM cached before another kernel rewrote it cannot answer).
template <bool L2_ONLY, typename V>
__device__ __forceinline__ V load_global(const V* p) {
  if constexpr (L2_ONLY) {
    return __ldcg(p);
  } else {
    return *p;
  }
}

/// \brief Loads BYTES bytes starting at `p` into 32-bit words `w` (little endian; stream byte k is
/// byte k % 4 of w[k / 4]; bytes past BYTES in the last word are unspecified).
/// Uses 16-, 8- or 4-byte loads when BYTES (and so the address, see the callers) allows it; else
/// aligned words + funnel shifts, reading only the words that overlap [p, p + BYTES), which stay
/// inside the 16-byte-aligned region that holds the record. L2_ONLY: see load_global. Without
/// L2_ONLY `p` may also point into shared memory (turbo_decode's record ring: LDS after inlining).
template <int BYTES, bool L2_ONLY = false>
__device__ __forceinline__ void load_record(const uint8_t* p, uint32_t (&w)[(BYTES + 3) / 4]) {
  constexpr int N = (BYTES + 3) / 4;
  if constexpr (BYTES % 16 == 0) {
#pragma unroll
    for (int i = 0; i < BYTES / 16; ++i) {
      const uint4 v = load_global<L2_ONLY>(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i + 0] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (BYTES % 8 == 0) {
#pragma unroll
    for (int i = 0; i < BYTES / 8; ++i) {
      const uint2 v = load_global<L2_ONLY>(reinterpret_cast<const uint2*>(p) + i);
      w[2 * i + 0] = v.x;
      w[2 * i + 1] = v.y;
    }
  } else if constexpr (BYTES % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i)
      w[i] = load_global<L2_ONLY>(reinterpret_cast<const uint32_t*>(p) + i);
  } else {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
    const uint32_t off = static_cast<uint32_t>(a & 3u);
    // Words overlapping [a, a + BYTES): ceil((off + BYTES) / 4), i.e. N or N + 1.
    const int nwords = static_cast<int>((off + BYTES + 3u) / 4u);
    uint32_t raw[N + 1];
#pragma unroll
    for (int i = 0; i < N; ++i) raw[i] = load_global<L2_ONLY>(base + i);
    raw[N] = nwords > N ? load_global<L2_ONLY>(base + N) : 0u;
#pragma unroll
    for (int i = 0; i < N; ++i) w[i] = __funnelshift_r(raw[i], raw[i + 1], 8u * off);
  }
}

/// \brief Byte offset (code · 4) of code J of a BITS-bit packed stream held in words `w`
/// (bitpack.h layout). J is a compile-time constant after unrolling, so this is one or two
/// shift/mask instructions and the result indexes a float table directly.
template <int BITS, int J, int NW>
__device__ __forceinline__ uint32_t code_offset(const uint32_t (&w)[NW]) {
  constexpr int kBit = J * BITS;
  constexpr int kWord = kBit / 32;
  constexpr int kShift = kBit % 32;
  constexpr uint32_t kMask = ((1u << BITS) - 1u) << 2;
  if constexpr (kShift + BITS <= 32) {
    if constexpr (kShift >= 2) {
      return (w[kWord] >> (kShift - 2)) & kMask;
    } else {
      return (w[kWord] << (2 - kShift)) & kMask;
    }
  } else {
    return (__funnelshift_r(w[kWord], w[kWord + 1], kShift) << 2) & kMask;
  }
}

/// \brief Code J of a FIELD-bit packed stream held in words `w`, shifted left by SHIFT (a table
/// byte offset for entries 2^SHIFT bytes apart). J is a compile-time constant after unrolling:
/// one shift (or funnel shift) and one mask.
template <int FIELD, int J, int SHIFT, int NW>
__device__ __forceinline__ uint32_t field_offset(const uint32_t (&w)[NW]) {
  constexpr int kBit = J * FIELD;
  constexpr int kWord = kBit / 32;
  constexpr int kShift = kBit % 32;
  constexpr uint32_t kMask = ((1u << FIELD) - 1u) << SHIFT;
  if constexpr (kShift + FIELD <= 32) {
    if constexpr (kShift >= SHIFT) {
      return (w[kWord] >> (kShift - SHIFT)) & kMask;
    } else {
      return (w[kWord] << (SHIFT - kShift)) & kMask;
    }
  } else {
    return (__funnelshift_r(w[kWord], w[kWord + 1], kShift) << SHIFT) & kMask;
  }
}

/// \brief Asks the L2 to fetch [p, p + bytes) ahead of use: one bulk prefetch (sm_90
/// `cp.async.bulk.prefetch.L2`), no registers, no completion to wait for. p and bytes must be
/// multiples of 16 (page starts and page sizes are, format.h).
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
  (void)p;
  (void)bytes;
#endif
}

/// \brief Asynchronous 4-byte copy global → shared (sm_80 `cp.async`, cached in L1): holds no
/// register; complete for the calling thread after cp_async_wait_all().
__device__ __forceinline__ void cp_async_4(float* smem, const float* gmem) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(gmem) : "memory");
}

/// \brief Asynchronous 8-byte copy global → shared (both 8-byte aligned), as cp_async_4.
__device__ __forceinline__ void cp_async_8(float* smem, const float* gmem) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(s), "l"(gmem) : "memory");
}

/// \brief Asynchronous 16-byte copy global → shared (both 16-byte aligned; L2 only, `.cg`): the
/// first `src_bytes` (0 or 16) bytes come from `gmem`, the rest are zero-filled — with 0 nothing
/// is read (gmem must still be a valid address). As cp_async_4.
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, uint32_t src_bytes) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(src_bytes)
               : "memory");
}

/// \brief ldmatrix .x4: four 8×8 b16 matrices from shared memory; lanes 8m … 8m + 7 give the
/// 16-byte row addresses of matrix m, and lane l receives in r[m] the two elements (l / 4,
/// 2 (l % 4) … + 1) of matrix m — the mma.m16n8k16 fragment layouts.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}

/// Waits for every cp.async the calling thread issued (other threads' copies need a barrier).
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;" ::: "memory");
}

/// Two consecutive floats of a table at a byte offset (one 8-byte shared-memory load).
__device__ __forceinline__ float2 lut2_at(const float* table, uint32_t byte_offset) {
  return *reinterpret_cast<const float2*>(reinterpret_cast<const char*>(table) + byte_offset);
}

/// Table entry at a byte offset.
__device__ __forceinline__ float lut_at(const float* table, uint32_t byte_offset) {
  return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(table) + byte_offset);
}

/// Compile-time loop: f(std::integral_constant<int, I>) for I in [0, N).
template <int I, int N, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  if constexpr (I < N) {
    f(std::integral_constant<int, I>{});
    static_for<I + 1, N>(f);
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

/// Values a lane keeps after warp_reduce_scatter<N, MIN_OFFSET> before offset step `step`
/// (offset 16 >> step): halved at every step whose offset is ≥ MIN_OFFSET while the count is
/// even.
constexpr int reduce_scatter_count(int n, int min_offset, int step) {
  for (int s = 0, o = 16; s < step; ++s, o >>= 1)
    if (o >= min_offset && n % 2 == 0) n /= 2;
  return n;
}

/// \brief Sums v[0, N) over the lanes that differ in bits ≥ MIN_OFFSET (a power of two ≤ 16),
/// as a reduce-scatter butterfly: at offset o (16, 8, ..., MIN_OFFSET) a lane with an even count
/// n keeps one half (the upper one when lane & o), sends the other to lane ^ o and adds the half
/// it receives (n/2 shuffles instead of n); an odd count is summed whole (n shuffles, every lane
/// of the pair keeps the same sums). Every sum pairs the same partners in the same order as
/// warp_sum's xor tree (fp addition is commutative), so the bits equal a per-value warp_sum.
/// Afterwards v[0, kept) hold the sums of indices [base, base + kept), kept =
/// reduce_scatter_count(N, MIN_OFFSET, 5), base returned; the lanes sharing a base hold the same
/// values (reduce_scatter_writer picks one). N = 64, MIN_OFFSET = 1: 62 shuffles, not 320.
template <int N, int MIN_OFFSET>
__device__ __forceinline__ int warp_reduce_scatter(float (&v)[N], int lane) {
  int base = 0;
  static_for<0, 5>([&](auto S) {
    constexpr int s = decltype(S)::value;
    constexpr int o = 16 >> s;
    constexpr int n = reduce_scatter_count(N, MIN_OFFSET, s);
    if constexpr (o >= MIN_OFFSET) {
      if constexpr (n % 2 == 0) {
        constexpr int half = n / 2;
        const bool up = (lane & o) != 0;
#pragma unroll
        for (int j = 0; j < half; ++j) {
          const float send = up ? v[j] : v[j + half];
          const float keep = up ? v[j + half] : v[j];
          v[j] = keep + __shfl_xor_sync(kFullMask, send, o);
        }
        if (up) base += half;
      } else {
#pragma unroll
        for (int j = 0; j < n; ++j) v[j] += __shfl_xor_sync(kFullMask, v[j], o);
      }
    }
  });
  return base;
}

/// Whether `lane` writes its sums after warp_reduce_scatter<N, MIN_OFFSET>: of the lanes holding
/// the same indices (they differ only in the bits of whole-sum steps), the one with those bits 0.
constexpr int reduce_scatter_whole_mask(int n, int min_offset) {
  int whole = 0;
  for (int s = 0, o = 16; s < 5; ++s, o >>= 1)
    if (o >= min_offset && reduce_scatter_count(n, min_offset, s) % 2 != 0) whole |= o;
  return whole;
}
template <int N, int MIN_OFFSET>
__device__ __forceinline__ bool reduce_scatter_writer(int lane) {
  constexpr int kWhole = reduce_scatter_whole_mask(N, MIN_OFFSET);
  return (lane & kWhole) == 0;
}

/// exp2(x − m) that is 0 for m = −inf (an empty partial), never NaN for finite x.
__device__ __forceinline__ float rescale_factor(float x, float m) {
  return x == -INFINITY ? 0.0f : exp2f(x - m);
}

}  // namespace turboesm::kernels::detail
