// SPDX-License-Identifier: MIT
#pragma once
/// \file kernel_element_type.h
/// \brief (Private to src/model.) at::ScalarType → kernels::ElementType, for the CUDA launch
/// points of the model (fused QKV glue, quantize-on-append).

#include <c10/core/ScalarType.h>

#include "turboesm/kernels/element_type.h"

namespace turboesm::model {

/// Sets `*out` and returns true for fp32 / fp16 / bf16; false for any other type.
inline bool kernel_element_type(at::ScalarType t, kernels::ElementType* out) {
  switch (t) {
    case at::kFloat:
      *out = kernels::ElementType::kFloat32;
      return true;
    case at::kHalf:
      *out = kernels::ElementType::kFloat16;
      return true;
    case at::kBFloat16:
      *out = kernels::ElementType::kBFloat16;
      return true;
    default:
      return false;
  }
}

}  // namespace turboesm::model
