// SPDX-License-Identifier: MIT
#pragma once
/// \file convert.cuh
/// \brief Element conversions of the kernels that read and write rows in the model dtype (fp32,
/// fp16, bf16): widening to fp32 (exact) and rounding to nearest even, as PyTorch's `.to(dtype)`
/// and its half / bfloat16 elementwise ops (computed in fp32, rounded once) do.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace turboesm::kernels {

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  __device__ static float to_float(float x) { return x; }
  __device__ static float round(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
};
template <>
struct Cvt<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static float round(float x) { return __half2float(__float2half_rn(x)); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
};
template <>
struct Cvt<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static float round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

}  // namespace turboesm::kernels
