// SPDX-License-Identifier: MIT
#pragma once
/// \file bulk_copy.cuh
/// \brief Hopper bulk copies (the TMA's non-tensor mode) from global into shared memory, tracked
/// by a shared-memory mbarrier: one thread requests any number of contiguous byte ranges with a
/// few instructions and no registers held, every thread waits for the bytes to land.
///
/// Protocol for one use of a barrier (what decode_gemv's tile kernel does):
///   thread 0: mbarrier_init(bar, 1);
///             for each range: mbarrier_expect_tx(bar, bytes); bulk_copy_g2s(dst, src, bytes, bar);
///             mbarrier_arrive(bar);
///   __syncthreads();  (the init is visible to every thread before anyone waits)
///   everyone: mbarrier_wait_parity(bar, 0);   then read dst.
/// Each range: 16-byte aligned source and destination, size a positive multiple of 16. The
/// phase completes when the arrival and all expected bytes are in; a size mismatch would hang,
/// so callers count the bytes they request from the same loop that requests them.

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

/// Adds `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)),
               "r"(bytes)
               : "memory");
#endif
}

/// One arrival on `bar`.
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared::cta.b64 state, [%0];\n}" ::"r"(
                   smem_address(bar))
               : "memory");
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

/// Spins until the phase with parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      " .reg .pred done;\n"
      "WAIT:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(parity)
      : "memory");
#endif
}

}  // namespace turboesm::kernels::detail
