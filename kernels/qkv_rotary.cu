// SPDX-License-Identifier: MIT
/// \file qkv_rotary.cu
/// \brief Decode-step glue: Q scaling + rotary + conversion to fp32 in one launch (see
/// include/turboesm/kernels/qkv_rotary.h for the exact arithmetic it reproduces).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "turboesm/kernels/qkv_rotary.h"

namespace turboesm::kernels {
namespace {

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  __device__ static float to_float(float x) { return x; }
  __device__ static float round(float x) { return x; }
};
template <>
struct Cvt<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static float round(float x) { return __half2float(__float2half_rn(x)); }
};
template <>
struct Cvt<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static float round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
};

/// One thread per (b, h, j); blockIdx.y = b.
template <typename T>
__global__ void qkv_rotary_kernel(QkvRotaryParams p) {
  const int hd = p.heads * p.head_dim;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= hd) return;
  const int b = blockIdx.y;
  const int j = i % p.head_dim;
  const int half = p.head_dim / 2;
  const int partner = j < half ? i + half : i - half;
  const T* row = static_cast<const T*>(p.qkv) + static_cast<int64_t>(b) * 3 * hd;
  const float c = p.cos[static_cast<int64_t>(b) * p.head_dim + j];
  const float s = p.sin[static_cast<int64_t>(b) * p.head_dim + j];
  const int64_t o = static_cast<int64_t>(b) * hd + i;
  // q: scaled in T, then rotary in fp32, rounded to T.
  {
    const float x = Cvt<T>::round(__fmul_rn(Cvt<T>::to_float(row[i]), p.q_scale));
    const float y = Cvt<T>::round(__fmul_rn(Cvt<T>::to_float(row[partner]), p.q_scale));
    const float r = j < half ? -y : y;
    p.q[o] = Cvt<T>::round(__fadd_rn(__fmul_rn(x, c), __fmul_rn(r, s)));
  }
  {
    const float x = Cvt<T>::to_float(row[hd + i]);
    const float y = Cvt<T>::to_float(row[hd + partner]);
    const float r = j < half ? -y : y;
    p.k[o] = Cvt<T>::round(__fadd_rn(__fmul_rn(x, c), __fmul_rn(r, s)));
  }
  p.v[o] = Cvt<T>::to_float(row[2 * hd + i]);
}

}  // namespace

cudaError_t qkv_rotary_to_float(const QkvRotaryParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0 || p.batch > 65535 ||
      p.qkv == nullptr || p.cos == nullptr || p.sin == nullptr || p.q == nullptr ||
      p.k == nullptr || p.v == nullptr)
    return cudaErrorInvalidValue;
  if (p.batch == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int hd = p.heads * p.head_dim;
  const dim3 grid((hd + kThreads - 1) / kThreads, p.batch);
  switch (p.dtype) {
    case QkvDtype::kFloat32:
      qkv_rotary_kernel<float><<<grid, kThreads, 0, stream>>>(p);
      break;
    case QkvDtype::kFloat16:
      qkv_rotary_kernel<__half><<<grid, kThreads, 0, stream>>>(p);
      break;
    case QkvDtype::kBFloat16:
      qkv_rotary_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace turboesm::kernels
