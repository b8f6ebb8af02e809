// SPDX-License-Identifier: MIT
/// \file quantize_append.cu
/// \brief Host side of quantize-on-append: checks, path choice, grid, head-dim dispatch. The row
/// (exact) kernel takes bits, norm and QJL mode at run time (it is dominated by the d×d
/// rotation); the tile kernels (fp16 rows: quantize_append_tile_f16_kernel, other rows: the
/// 3xTF32 quantize_append_tile_kernel) are also templated on bits (their packing is unrolled).

#include <algorithm>
#include <cstdint>

#include "quantize_append.cuh"
#include "turboesm/kernels/quantize_append.h"

namespace turboesm::kernels {
namespace {

template <int D>
cudaError_t launch(const QuantizeAppendParams& p, cudaStream_t stream) {
  const int sides = p.x2 != nullptr ? 2 : 1;  // both sides in one grid
  size_t smem = detail::append_smem_bytes(D, p.cache.layout.qjl_dim);
  if (sides == 2) smem = std::max(smem, detail::append_smem_bytes(D, p.cache2.layout.qjl_dim));
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(detail::quantize_append_kernel<D>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const dim3 grid((p.new_tokens + detail::kAppendTokensPerCta - 1) / detail::kAppendTokensPerCta,
                  p.heads, p.batch * sides);
  return detail::launch_pdl(detail::quantize_append_kernel<D>, grid,
                            dim3(detail::kAppendWarps * 32), smem, stream, p);
}

/// The fp16 tile kernel for every side (all tile_f16_side), else the TF32 one.
template <int D, int BITS>
cudaError_t launch_tile_bits(const QuantizeAppendParams& p, bool f16, cudaStream_t stream) {
  auto kernel = detail::quantize_append_tile_kernel<D, BITS>;
  size_t smem = detail::append_tile_smem_bytes(D);
  if constexpr (detail::tile_f16_dim(D)) {
    if (f16) {
      kernel = detail::quantize_append_tile_f16_kernel<D, BITS>;
      smem = detail::append_tile_f16_smem_bytes(D);
    }
  }
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  const int sides = p.x2 != nullptr ? 2 : 1;  // both sides in one grid (same bits and kernel)
  const dim3 grid((p.new_tokens + detail::kTileRows - 1) / detail::kTileRows, p.heads,
                  p.batch * sides);
  kernel<<<grid, detail::kTileWarps * 32, smem, stream>>>(p);
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_tile(const QuantizeAppendParams& p, bool f16, cudaStream_t stream) {
  switch (p.cache.layout.bits) {
    case 1:
      return launch_tile_bits<D, 1>(p, f16, stream);
    case 2:
      return launch_tile_bits<D, 2>(p, f16, stream);
    case 3:
      return launch_tile_bits<D, 3>(p, f16, stream);
    case 4:
      return launch_tile_bits<D, 4>(p, f16, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

/// One side as its own call (x2/cache2 moved into x/cache when `second`).
QuantizeAppendParams side_params(const QuantizeAppendParams& p, bool second) {
  QuantizeAppendParams q = p;
  if (second) {
    q.x = p.x2;
    q.cache = p.cache2;
  }
  q.x2 = nullptr;
  q.cache2 = quant::CacheView{};
  return q;
}

template <int D>
cudaError_t launch_path(const QuantizeAppendParams& p, cudaStream_t stream) {
  if (resolved_path(p) != AppendPath::kTile) return launch<D>(p, stream);
  const bool f16 = detail::tile_f16_side(D, p.x_dtype, p.cache.constants);
  if (p.x2 == nullptr) return launch_tile<D>(p, f16, stream);
  const bool f16_2 = detail::tile_f16_side(D, p.x_dtype, p.cache2.constants);
  if (p.cache.layout.bits == p.cache2.layout.bits && f16 == f16_2)
    return launch_tile<D>(p, f16, stream);
  for (const bool second : {false, true}) {  // the tile kernels are templated on bits
    const cudaError_t e = launch_tile<D>(side_params(p, second), second ? f16_2 : f16, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

AppendPath resolved_path(const QuantizeAppendParams& p) {
  if (p.path != AppendPath::kAuto) return p.path;
  const bool prod = p.cache.layout.qjl == quant::QjlMode::kProd ||
                    (p.x2 != nullptr && p.cache2.layout.qjl == quant::QjlMode::kProd);
  return p.new_tokens >= kQuantizeAppendTileMinTokens && !prod ? AppendPath::kTile
                                                               : AppendPath::kRows;
}

namespace {
/// The checks of one side (x, cache); the messages name the field, the caller names the side.
const char* side_invalid_reason(const QuantizeAppendParams& p) {
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
  if (p.x_dtype != AppendInput::kFloat32 && p.x_dtype != AppendInput::kFloat16 &&
      p.x_dtype != AppendInput::kBFloat16)
    return "invalid x_dtype (supported: fp32, fp16, bf16)";
  if (p.path != AppendPath::kAuto && p.path != AppendPath::kRows && p.path != AppendPath::kTile)
    return "invalid path";
  if (p.path == AppendPath::kTile && l.qjl == QjlMode::kProd)
    return "the tile path has no prod QJL (use kRows or kAuto)";
  if ((p.stride_b != 0 || p.stride_h != 0 || p.stride_t != 0) &&
      (p.stride_b < 0 || p.stride_h < 0 || p.stride_t < p.head_dim))
    return "x strides must be all 0 (contiguous) or non-negative with stride_t >= head_dim";
  if (p.batch * p.heads * p.new_tokens == 0) return nullptr;
  if (p.x == nullptr || p.starts == nullptr || c.pages == nullptr)
    return "x, starts and cache.pages must be non-null device pointers";
  if (c.constants.rotation == nullptr || c.constants.centroids == nullptr ||
      c.constants.boundaries == nullptr)
    return "cache constants: rotation, centroids and boundaries are required";
  if (reinterpret_cast<uintptr_t>(c.constants.rotation) % 16 != 0)
    return "cache constants: rotation must be 16-byte aligned (it is staged with 16-byte loads)";
  if (c.constants.rotation_f16 != nullptr &&
      (c.constants.rotation_f16_lo == nullptr || p.head_dim % 16 != 0 ||
       reinterpret_cast<uintptr_t>(c.constants.rotation_f16) % 16 != 0))
    return "cache constants: rotation_f16 needs rotation_f16_lo, head_dim a multiple of 16 and "
           "16-byte alignment";
  if (l.qjl == QjlMode::kProd && (c.constants.qjl_proj == nullptr || l.qjl_dim <= 0 ||
                                  l.qjl_dim % 8 != 0 || l.qjl_dim > 8 * p.head_dim))
    return "QJL prod mode needs constants.qjl_proj [heads, m, head_dim], m a multiple of 8 in "
           "[8, 8 * head_dim]";
  if (l.qjl == QjlMode::kSign && l.qjl_dim != p.head_dim)
    return "QJL sign needs qjl_dim == head_dim";
  return nullptr;
}

}  // namespace

const char* quantize_append_invalid_reason(const QuantizeAppendParams& p) {
  if (const char* why = side_invalid_reason(side_params(p, false))) return why;
  if (p.x2 == nullptr) return nullptr;
  if (p.batch > 32767) return "batch must be at most 32767 with a second side (x2)";
  return side_invalid_reason(side_params(p, true));  // the same checks for the second side
}

cudaError_t quantize_append(const QuantizeAppendParams& p, cudaStream_t stream) {
  if (quantize_append_invalid_reason(p) != nullptr) return cudaErrorInvalidValue;
  if (p.batch * p.heads * p.new_tokens == 0) return cudaSuccess;
  switch (p.head_dim) {
    case 16:
      return launch_path<16>(p, stream);
    case 24:
      return launch_path<24>(p, stream);
    case 32:
      return launch_path<32>(p, stream);
    case 64:
      return launch_path<64>(p, stream);
    case 128:
      return launch_path<128>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace turboesm::kernels
