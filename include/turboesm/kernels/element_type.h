// SPDX-License-Identifier: MIT
#pragma once
/// \file element_type.h
/// \brief Element type of the floating-point rows a kernel reads or writes (torch-free; the
/// launchers take it in their params structs, so rows arrive in the model dtype without a
/// conversion pass). QkvDtype (qkv_rotary.h) and AppendInput (quantize_append.h) are this type.

namespace turboesm::kernels {

enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace turboesm::kernels
