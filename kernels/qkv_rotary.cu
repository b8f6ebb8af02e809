// SPDX-License-Identifier: MIT
/// \file qkv_rotary.cu
/// \brief Q/K/V glue: Q scaling + rotary (+ conversion to fp32 for the decode step, + the split
/// into [batch, heads, tokens, head_dim] for prefill) in one launch (see
/// include/turboesm/kernels/qkv_rotary.h for the exact arithmetic it reproduces).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "convert.cuh"
#include "pdl.cuh"
#include "turboesm/kernels/qkv_rotary.h"

namespace turboesm::kernels {
namespace {

/// q and k of one coordinate before their final rounding to T, as the eager ops compute them:
/// q scaled in T first (ESM scales q before rotary), then x·cos + rot·sin in fp32 with separately
/// rounded products and sum, rot = −partner in the first half, +partner in the second.
struct RotatedQk {
  float q, k;
};
template <typename T>
__device__ __forceinline__ RotatedQk rotate_qk(const T* q_row, const T* k_row, int i, int partner,
                                               bool first_half, float c, float s, float q_scale) {
  const float qx = Cvt<T>::round(__fmul_rn(Cvt<T>::to_float(q_row[i]), q_scale));
  const float qy = Cvt<T>::round(__fmul_rn(Cvt<T>::to_float(q_row[partner]), q_scale));
  const float kx = Cvt<T>::to_float(k_row[i]);
  const float ky = Cvt<T>::to_float(k_row[partner]);
  return {__fadd_rn(__fmul_rn(qx, c), __fmul_rn(first_half ? -qy : qy, s)),
          __fadd_rn(__fmul_rn(kx, c), __fmul_rn(first_half ? -ky : ky, s))};
}

/// One thread per (b, h, j); blockIdx.y = b.
template <typename T>
__global__ void qkv_rotary_kernel(QkvRotaryParams p) {
  detail::pdl_launch_dependents();
  detail::pdl_wait();  // the projection comes from the preceding kernel
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
  const RotatedQk qk = rotate_qk(row, row + hd, i, partner, j < half, c, s, p.q_scale);
  p.q[o] = Cvt<T>::round(qk.q);  // rounded to T, stored as fp32
  p.k[o] = Cvt<T>::round(qk.k);
  p.v[o] = Cvt<T>::to_float(row[2 * hd + i]);
}

/// One thread per output element (b, t, h, j) of q, k and v; blockIdx.y = b. Consecutive threads
/// read consecutive elements of one token's projection row and, in the token-major layout, write
/// consecutive elements (head-major: runs of head_dim).
template <typename T, QkvLayout L>
__global__ void qkv_rotary_split_kernel(QkvRotarySplitParams p) {
  const int64_t hd = static_cast<int64_t>(p.heads) * p.head_dim;
  const int64_t n = static_cast<int64_t>(p.tokens) * hd;  // elements per sequence and output
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t b = blockIdx.y;
  const int64_t t = i / hd;
  const int r = static_cast<int>(i - t * hd);  // h · head_dim + j
  const int j = r % p.head_dim;
  const int half = p.head_dim / 2;
  const int partner = j < half ? r + half : r - half;
  const T* row = static_cast<const T*>(p.qkv) + (b * p.tokens + t) * 3 * hd;
  const float c = p.cos[t * p.head_dim + j];
  const float s = p.sin[t * p.head_dim + j];
  int64_t o;
  if constexpr (L == QkvLayout::kTokenMajor) {
    o = b * n + i;
  } else {
    const int h = r / p.head_dim;
    o = ((b * p.heads + h) * p.tokens + t) * p.head_dim + j;
  }
  const RotatedQk qk = rotate_qk(row, row + hd, r, partner, j < half, c, s, p.q_scale);
  static_cast<T*>(p.q)[o] = Cvt<T>::from_float(qk.q);
  static_cast<T*>(p.k)[o] = Cvt<T>::from_float(qk.k);
  static_cast<T*>(p.v)[o] = row[2 * hd + r];
}

template <typename T>
cudaError_t launch_split(const QkvRotarySplitParams& p, dim3 grid, int threads,
                         cudaStream_t stream) {
  if (p.layout == QkvLayout::kTokenMajor)
    qkv_rotary_split_kernel<T, QkvLayout::kTokenMajor><<<grid, threads, 0, stream>>>(p);
  else
    qkv_rotary_split_kernel<T, QkvLayout::kHeadMajor><<<grid, threads, 0, stream>>>(p);
  return cudaGetLastError();
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
      return detail::launch_pdl(qkv_rotary_kernel<float>, grid, dim3(kThreads), 0, stream, p);
    case QkvDtype::kFloat16:
      return detail::launch_pdl(qkv_rotary_kernel<__half>, grid, dim3(kThreads), 0, stream, p);
    case QkvDtype::kBFloat16:
      return detail::launch_pdl(qkv_rotary_kernel<__nv_bfloat16>, grid, dim3(kThreads), 0, stream,
                                p);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t qkv_rotary_split(const QkvRotarySplitParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.tokens < 0 || p.heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0 ||
      p.batch > 65535 || p.qkv == nullptr || p.cos == nullptr || p.sin == nullptr ||
      p.q == nullptr || p.k == nullptr || p.v == nullptr)
    return cudaErrorInvalidValue;
  if (p.layout != QkvLayout::kHeadMajor && p.layout != QkvLayout::kTokenMajor)
    return cudaErrorInvalidValue;
  if (p.dtype != QkvDtype::kFloat32 && p.dtype != QkvDtype::kFloat16 &&
      p.dtype != QkvDtype::kBFloat16)
    return cudaErrorInvalidValue;
  // Row offsets inside one token (h · head_dim + j, up to 3 · heads · head_dim) are int.
  if (3 * static_cast<int64_t>(p.heads) * p.head_dim > 0x7fffffff) return cudaErrorInvalidValue;
  constexpr int kThreads = 256;
  const int64_t n = static_cast<int64_t>(p.tokens) * p.heads * p.head_dim;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;  // grid.x limit (2^31 - 1)
  if (p.batch == 0 || p.tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.batch));
  switch (p.dtype) {
    case QkvDtype::kFloat32:
      return launch_split<float>(p, grid, kThreads, stream);
    case QkvDtype::kFloat16:
      return launch_split<__half>(p, grid, kThreads, stream);
    case QkvDtype::kBFloat16:
      return launch_split<__nv_bfloat16>(p, grid, kThreads, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace turboesm::kernels
