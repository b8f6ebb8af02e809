// SPDX-License-Identifier: MIT
// Explicit instantiation of the fused decode attention for 2-bit codes, head_dim 16
// (one file per instance, ggml template-instances style; listed in kernels/turbo_decode.cu).
#include "turbo_decode_launch.cuh"

namespace turboesm::kernels::detail {
TURBOESM_DECODE_INSTANCE(, 2, 16);
}  // namespace turboesm::kernels::detail
