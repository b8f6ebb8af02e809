// SPDX-License-Identifier: MIT
/// \file dequantize.cu
/// \brief Simple code-space unpack to FP16 (one thread per value; see dequantize.h).

#include <cstdint>

#include "common.cuh"
#include "turboesm/kernels/dequantize.h"
#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/format.h"

namespace turboesm::kernels {
namespace {

__global__ void dequantize_code_space_half_kernel(const quant::CacheView cache, int batch,
                                                  int heads, int tokens, uint16_t* out) {
  const quant::PageLayout& l = cache.layout;
  const int d = l.head_dim;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_bh = static_cast<int64_t>(tokens) * d;
  const int bh = static_cast<int>(idx / per_bh);
  if (bh >= batch * heads) return;
  const int64_t rem = idx - bh * per_bh;
  const int t = static_cast<int>(rem / d), j = static_cast<int>(rem - (rem / d) * d);
  const int b = bh / heads, h = bh - (bh / heads) * heads;
  const uint8_t* page = cache.page(b, h, t / l.page_tokens);
  const int slot = t % l.page_tokens;
  const uint32_t c = quant::unpack_one(quant::token_codes(page, l, slot), j, l.bits);
  float z = cache.constants.centroids[h * (1 << l.bits) + c];
  if (l.qjl == quant::QjlMode::kSign) {
    const float s = cache.constants.qjl_scale[h];
    z += quant::unpack_one(quant::token_qjl(page, l, slot), j, 1) ? s : -s;
  }
  if (l.norm == quant::NormMode::kToken)
    z *= detail::half_bits_to_float_dev(*quant::token_norm(page, l, slot));
  uint16_t hb;
  asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(hb) : "f"(z));
  out[idx] = hb;
}

}  // namespace

cudaError_t dequantize_code_space_half(const quant::CacheView& cache, int batch, int heads,
                                       int tokens, uint16_t* out, cudaStream_t stream) {
  const quant::PageLayout& l = cache.layout;
  if (batch < 0 || heads < 0 || tokens < 0 || out == nullptr || cache.pages == nullptr ||
      cache.constants.centroids == nullptr || l.bits < 1 || l.bits > 4 ||
      l.qjl == quant::QjlMode::kProd ||
      (l.qjl == quant::QjlMode::kSign && cache.constants.qjl_scale == nullptr) ||
      static_cast<int64_t>(tokens) > static_cast<int64_t>(cache.max_pages) * l.page_tokens ||
      batch > 65535)
    return cudaErrorInvalidValue;
  const int64_t per_seq = static_cast<int64_t>(heads) * tokens * l.head_dim;
  if (per_seq == 0 || batch == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t total = per_seq * batch;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  dequantize_code_space_half_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      cache, batch, heads, tokens, out);
  return cudaGetLastError();
}

}  // namespace turboesm::kernels
