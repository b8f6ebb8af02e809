// SPDX-License-Identifier: MIT
#pragma once
/// \file bulk_copy.cuh
/// \brief Hopper bulk copies (the TMA's non-tensor mode) from global into shared memory, tracked
/// by a shared-memory mbarrier: one thread requests any number of contiguous byte ranges with a
/// few instructions and no registers held, the consumers wait for the bytes to land. Used by
/// turbo_decode's record ring (turbo_decode.cuh, DecodeLaunch::ring).
///
/// Protocol for one phase of a barrier initialised for one arrival:
///   one thread: mbarrier_arrive_expect_tx(bar, total bytes);
///               for each range: bulk_copy_g2s(dst, src, bytes, bar);
///   consumers:  mbarrier_wait_parity(bar, phase & 1);   then read dst.
/// (mbarrier_init once before, visible to the consumers through a barrier or __syncwarp.)
/// Each range: 16-byte aligned source and destination, size a positive multiple of 16. The
/// phase completes when the arrival and all expected bytes are in; a size mismatch would hang,
/// so callers count the bytes they request from the same expressions that request them.

#include <cuda_runtime.h>

#include <cstdint>

namespace turboesm::kernels::detail {

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/// Initialises `bar` for `count` arrivals and makes the init visible to the async proxy.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(count)
               : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/// Copies `bytes` from global `src` to shared `dst`; completion is counted on `bar`.
__device__ __forceinline__ void bulk_copy_g2s(void* dst, const void* src, uint32_t bytes,
                                              uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(smem_address(dst)),
      "l"(src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
#endif
}

/// The arrival of this phase and `bytes` more expected (one instruction).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .b64 state;\n mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}" ::"r"(
          smem_address(bar)),
      "r"(bytes)
      : "memory");
#endif
}

/// Whether the phase with parity `parity` of `bar` has completed (one try, with the hardware's
/// time-limited suspend).
__device__ __forceinline__ bool mbarrier_try_wait_parity(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t done;
  asm volatile(
      "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      " selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(smem_address(bar)), "r"(parity)
      : "memory");
  return done != 0;
#else
  (void)bar;
  (void)parity;
  return true;
#endif
}

/// Spins until the phase with parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

}  // namespace turboesm::kernels::detail
