// SPDX-License-Identifier: MIT
/// \file decode_embed.cu
/// \brief The decode step's preamble in one launch (include/turboesm/kernels/decode_embed.h has
/// the arithmetic it reproduces).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "convert.cuh"
#include "pdl.cuh"
#include "turboesm/kernels/decode_embed.h"

namespace turboesm::kernels {
namespace {

/// One CTA per sequence (blockIdx.x = b): the hidden row strided over the threads, the rotary
/// pairs over the first head_dim / 2 threads' second loop, `after` by thread 0.
template <typename T>
__global__ void decode_embed_kernel(DecodeEmbedParams p) {
  // The first node of a graph step: nothing before it to wait for, but the next launch (the QKV
  // product) may start its weight loads now.
  detail::pdl_launch_dependents();
  detail::pdl_wait();
  const int b = blockIdx.x;
  const int64_t tok = p.tokens[b];
  const bool valid = tok >= 0 && tok < p.vocab;
  const bool dropped = p.token_dropout && tok == p.mask_token_id;
  const T* row = static_cast<const T*>(p.word_embeddings) + (valid ? tok : 0) * p.hidden;
  T* out = static_cast<T*>(p.h) + static_cast<int64_t>(b) * p.hidden;
  const float denom = p.token_dropout ? __fsub_rn(1.0f, p.observed[b]) : 1.0f;
  for (int i = threadIdx.x; i < p.hidden; i += blockDim.x) {
    float e = valid && !dropped ? Cvt<T>::to_float(row[i]) : 0.0f;
    if (p.token_dropout) e = __fdiv_rn(Cvt<T>::round(__fmul_rn(e, p.dropout_scale)), denom);
    out[i] = Cvt<T>::from_float(e);
  }
  const int32_t position = p.lengths[b];
  const int half = p.head_dim / 2;
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    const float f = __fmul_rn(static_cast<float>(position), p.inv_freq[j]);
    const float c = Cvt<T>::round(cosf(f)), s = Cvt<T>::round(sinf(f));
    const int64_t o = static_cast<int64_t>(b) * p.head_dim + j;
    p.cos[o] = c;
    p.cos[o + half] = c;
    p.sin[o] = s;
    p.sin[o + half] = s;
  }
  if (threadIdx.x == 0) p.after[b] = position + 1;
}

}  // namespace

cudaError_t decode_embed(const DecodeEmbedParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.batch > 65535 || p.hidden <= 0 || p.vocab <= 0 || p.head_dim <= 0 ||
      p.head_dim % 2 != 0 || p.word_embeddings == nullptr || p.tokens == nullptr ||
      (p.token_dropout && p.observed == nullptr) || p.inv_freq == nullptr || p.lengths == nullptr ||
      p.h == nullptr || p.cos == nullptr || p.sin == nullptr || p.after == nullptr)
    return cudaErrorInvalidValue;
  if (p.batch == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const dim3 grid(p.batch);
  switch (p.dtype) {
    case ElementType::kFloat32:
      return detail::launch_pdl(decode_embed_kernel<float>, grid, dim3(kThreads), 0, stream, p);
    case ElementType::kFloat16:
      return detail::launch_pdl(decode_embed_kernel<__half>, grid, dim3(kThreads), 0, stream, p);
    case ElementType::kBFloat16:
      return detail::launch_pdl(decode_embed_kernel<__nv_bfloat16>, grid, dim3(kThreads), 0, stream,
                                p);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace turboesm::kernels
