// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_decode_launch.cuh
/// \brief The host launcher of one (BITS, D) instance of the fused decode attention: kernel 1
/// (turbo_decode.cuh; with or without its record ring), the staged kernel
/// (turbo_decode_staged.cuh) and the merge kernel.

#include "turbo_decode.cuh"
#include "turbo_decode_staged.cuh"

namespace turboesm::kernels::detail {

/// \brief Launches kernel 1 or the staged kernel (and kernel 2 when launch.num_splits > 1 without
/// split counters) for one (BITS, D).
/// Explicitly instantiated in kernels/instances/turbo_decode_b{BITS}_d{D}.cu.
template <int BITS, int D>
cudaError_t launch_turbo_decode(const DecodeLaunch& launch, cudaStream_t stream) {
  const quant::DecodeParams& p = launch.p;
  const int rows = p.batch * p.heads * p.q_len;
  if (rows == 0) return cudaSuccess;
  const DecodeDynSmem dl =
      decode_dyn_smem(D, launch.qjl_m, p.k.layout.qjl == quant::QjlMode::kProd, launch.append);
  const size_t smem = static_cast<size_t>(dl.total_floats) * sizeof(float);
  // Static tables take up to ~22 KB of the default 48 KB; beyond 32 KB of dynamic memory (prod
  // QJL with a large m, the append CTA's Π) the kernel must opt in to more.
  const auto run = [&](auto kernel, int threads, size_t dyn = 0) {
    dyn += smem;
    if (dyn > 32 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn));
      if (e != cudaSuccess) return e;
    }
    return launch_pdl(kernel, dim3(rows, launch.num_splits), dim3(threads), dyn, stream, launch);
  };
  DecodeVariant variant = DecodeVariant::kGeneral;
  if constexpr (kDecodeModeVariants<BITS, D>) variant = decode_variant(p);
  cudaError_t e = cudaSuccess;
  if constexpr (kDecodeRing<BITS, D>) {
    if (launch.ring) {  // the launcher checked: not append, a fixed-mode variant
      const size_t ring = ring_smem_bytes(p.k.layout, p.v.layout, kDecodeWarps);
      if (variant == DecodeVariant::kSignPlain)
        e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kSignPlain, kDecodeWarps, true>,
                kDecodeThreads, ring);
      else
        e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kPlain, kDecodeWarps, true>,
                kDecodeThreads, ring);
      if (e != cudaSuccess) return e;
      if (launch.num_splits == 1 || p.split_counters != nullptr) return cudaSuccess;
      return launch_pdl(turbo_decode_merge_kernel<D>, dim3(rows), dim3(kDecodeThreads), 0, stream,
                        launch);
    }
  }
  if constexpr (kDecodeModeVariants<BITS, D>) {
    if (variant == DecodeVariant::kPlain)
      e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kPlain>, kDecodeThreads);
    if (variant == DecodeVariant::kSignPlain)
      e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kSignPlain>, kDecodeThreads);
  }
  bool wide = false;
  if constexpr (kDecodeWideCtas<BITS, D>) {
    if (launch.staged) {  // the launcher checked: append, wide, no K QJL
      const size_t staged_smem = staged_smem_bytes(D);
      const auto kernel = turbo_decode_staged_kernel<BITS, D>;
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(staged_smem));
      if (e == cudaSuccess)
        e = launch_pdl(kernel, dim3(rows, launch.num_splits), dim3(kStagedThreads), staged_smem,
                       stream, launch);
      wide = true;
    } else if (launch.wide && variant == DecodeVariant::kGeneral) {
      e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kGeneral, 2 * kDecodeWarps>,
              2 * kDecodeThreads);
      wide = true;
    }
  }
  if (variant == DecodeVariant::kGeneral && !wide)
    e = run(turbo_decode_kernel<BITS, D, DecodeVariant::kGeneral>, kDecodeThreads);
  if (e != cudaSuccess) return e;
  if (launch.num_splits == 1 || p.split_counters != nullptr) return cudaSuccess;
  return launch_pdl(turbo_decode_merge_kernel<D>, dim3(rows), dim3(kDecodeThreads), 0, stream,
                    launch);
}

/// Declares (extern) or defines the instantiation of launch_turbo_decode<BITS, D>.
#define TURBOESM_DECODE_INSTANCE(EXTERN, BITS, D)                                      \
  EXTERN template cudaError_t launch_turbo_decode<BITS, D>(const DecodeLaunch& launch, \
                                                           cudaStream_t stream)

}  // namespace turboesm::kernels::detail
