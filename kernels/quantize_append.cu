// SPDX-License-Identifier: MIT
/// \file quantize_append.cu
/// \brief Host side of quantize-on-append: checks, grid, head-dim dispatch (bits, norm and QJL
/// mode are runtime: the kernel is dominated by the d×d rotation, not by the encode).

#include <cstdint>

#include "quantize_append.cuh"
#include "turboesm/kernels/quantize_append.h"

namespace turboesm::kernels {
namespace {

template <int D>
cudaError_t launch(const QuantizeAppendParams& p, cudaStream_t stream) {
  const size_t smem = detail::append_smem_bytes(D, p.cache.layout.qjl_dim);
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(detail::quantize_append_kernel<D>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid((p.new_tokens + detail::kAppendTokensPerCta - 1) / detail::kAppendTokensPerCta,
                  p.heads, p.batch);
  detail::quantize_append_kernel<D><<<grid, detail::kAppendWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

const char* quantize_append_invalid_reason(const QuantizeAppendParams& p) {
  using quant::QjlMode;
  const quant::CacheView& c = p.cache;
  const quant::PageLayout& l = c.layout;
  if (p.batch < 0 || p.heads < 0 || p.new_tokens < 0)
    return "batch, heads and new_tokens must be >= 0";
  if (p.batch > 65535 || p.heads > 65535) return "batch and heads must be at most 65535";
  if (!quant::is_supported_head_dim(p.head_dim))
    return "unsupported head_dim (supported: 16, 24, 32, 64, 128)";
  if (l.head_dim != p.head_dim) return "cache layout head_dim differs from head_dim";
  if (!quant::is_supported_bits(l.bits)) return "unsupported bits (supported: 1, 2, 3, 4)";
  if (l.norm != quant::NormMode::kNone && l.norm != quant::NormMode::kToken)
    return "invalid norm mode";
  if (l.qjl != QjlMode::kNone && l.qjl != QjlMode::kSign && l.qjl != QjlMode::kProd)
    return "invalid QJL mode";
  if (l.page_tokens <= 0 || c.max_pages < 0) return "page_tokens/max_pages out of range";
  if (p.batch * p.heads * p.new_tokens == 0) return nullptr;
  if (p.x == nullptr || p.starts == nullptr || c.pages == nullptr)
    return "x, starts and cache.pages must be non-null device pointers";
  if (c.constants.rotation == nullptr || c.constants.centroids == nullptr ||
      c.constants.boundaries == nullptr)
    return "cache constants: rotation, centroids and boundaries are required";
  if (l.qjl == QjlMode::kProd && (c.constants.qjl_proj == nullptr || l.qjl_dim <= 0 ||
                                  l.qjl_dim % 8 != 0 || l.qjl_dim > 8 * p.head_dim))
    return "QJL prod mode needs constants.qjl_proj [heads, m, head_dim], m a multiple of 8 in "
           "[8, 8 * head_dim]";
  if (l.qjl == QjlMode::kSign && l.qjl_dim != p.head_dim)
    return "QJL sign needs qjl_dim == head_dim";
  return nullptr;
}

cudaError_t quantize_append(const QuantizeAppendParams& p, cudaStream_t stream) {
  if (quantize_append_invalid_reason(p) != nullptr) return cudaErrorInvalidValue;
  if (p.batch * p.heads * p.new_tokens == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 16:
      return launch<16>(p, stream);
    case 24:
      return launch<24>(p, stream);
    case 32:
      return launch<32>(p, stream);
    case 64:
      return launch<64>(p, stream);
    case 128:
      return launch<128>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace turboesm::kernels
