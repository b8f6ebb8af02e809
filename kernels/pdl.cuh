// SPDX-License-Identifier: MIT
#pragma once
/// \file pdl.cuh
/// \brief Device and launch side of programmatic dependent launch (include/turboesm/kernels/pdl.h).

#include <cuda_runtime.h>

#include <utility>

#include "turboesm/kernels/pdl.h"

namespace turboesm::kernels::detail {

/// Lets the next kernel in the stream (if launched with launch_pdl) start its CTAs.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/// Waits until the preceding kernel in the stream has completed and its writes are visible
/// (immediately true when this kernel was not launched programmatically).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// `kernel<<<grid, block, smem, stream>>>(args...)`, with programmatic stream serialization
/// when programmatic_dependent_launch() is on and the shared-memory carve-out
/// decode_shared_carveout() when it is set. \return the launch error.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                       cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (programmatic_dependent_launch()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (const int carveout = decode_shared_carveout(); carveout >= 0) {
    attr[n].id = cudaLaunchAttributePreferredSharedMemoryCarveout;
    attr[n++].val.sharedMemCarveout = static_cast<unsigned>(carveout);
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace turboesm::kernels::detail
