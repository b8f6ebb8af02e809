// SPDX-License-Identifier: MIT
/// \file turbo_decode.cpp
/// \brief Torch-facing decode attention over the compressed cache: input checks + dispatch
/// (CPU: src/ops/cpu/turbo_decode_cpu.cpp; CUDA: kernels/turbo_decode.cu).

#include "turboesm/ops/turbo_decode.h"

#include <c10/util/Exception.h>

#include <cmath>

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "turboesm/kernels/turbo_decode.h"
#endif

namespace turboesm::ops {
namespace {
#ifdef TURBOESM_WITH_CUDA
constexpr const char* kBuiltDevices = "cpu, cuda";
#else
constexpr const char* kBuiltDevices = "cpu";
#endif
}  // namespace

at::Tensor turbo_decode(const at::Tensor& q, const at::Tensor& lengths, const quant::CacheView& k,
                        const quant::CacheView& v, float sm_scale,
                        const at::Tensor& split_counters) {
  TORCH_CHECK(q.defined() && q.dim() == 4,
              "turbo_decode: q must be 4-D [batch, heads, q_len, head_dim], got ",
              q.defined() ? q.dim() : 0, "-D");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "turbo_decode: q must be float32, got ",
              q.scalar_type());
  TORCH_CHECK(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == q.size(0),
              "turbo_decode: lengths must be [batch] = [", q.size(0), "], got ",
              lengths.defined() ? lengths.sizes() : at::IntArrayRef{});
  TORCH_CHECK(lengths.scalar_type() == at::kInt, "turbo_decode: lengths must be int32, got ",
              lengths.scalar_type());
  TORCH_CHECK(lengths.device() == q.device(), "turbo_decode: lengths on ", lengths.device(),
              " but q on ", q.device());
  TORCH_CHECK(q.size(3) == k.layout.head_dim && q.size(3) == v.layout.head_dim,
              "turbo_decode: q head_dim ", q.size(3), " does not match the cache (K ",
              k.layout.head_dim, ", V ", v.layout.head_dim, ")");
  TORCH_CHECK(std::isfinite(sm_scale), "turbo_decode: sm_scale must be finite, got ", sm_scale);
  if (split_counters.defined()) {
    TORCH_CHECK(split_counters.scalar_type() == at::kInt && split_counters.is_contiguous() &&
                    split_counters.device() == q.device() &&
                    split_counters.numel() >= q.size(0) * q.size(1) * q.size(2),
                "turbo_decode: split_counters must be a contiguous int32 tensor of at least "
                "batch * heads * q_len = ",
                q.size(0) * q.size(1) * q.size(2), " elements on ", q.device(), ", got ",
                split_counters.scalar_type(), " ", split_counters.sizes(), " on ",
                split_counters.device());
  }
  const at::Tensor qc = q.contiguous();
  const at::Tensor lc = lengths.contiguous();
  at::Tensor out = at::empty_like(qc);
  quant::DecodeParams p;
  p.batch = static_cast<int>(q.size(0));
  p.heads = static_cast<int>(q.size(1));
  p.q_len = static_cast<int>(q.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.q = qc.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.lengths = lc.data_ptr<int32_t>();
  p.sm_scale = sm_scale;
  p.k = k;
  p.v = v;
  if (split_counters.defined() && q.device().is_cuda())
    p.split_counters = reinterpret_cast<uint32_t*>(split_counters.data_ptr<int32_t>());
  if (q.numel() == 0) return out;
  if (q.device().is_cpu()) {
    turbo_decode_cpu(p);
    return out;
  }
#ifdef TURBOESM_WITH_CUDA
  if (q.device().is_cuda()) {
    const char* why = kernels::turbo_decode_invalid_reason(p);
    TORCH_CHECK(why == nullptr, "turbo_decode (CUDA): ", why, " (q ", q.sizes(), ", K bits ",
                k.layout.bits, ", V bits ", v.layout.bits, ")");
    c10::cuda::CUDAGuard guard(q.device());
    const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const size_t ws_bytes = kernels::turbo_decode_workspace_bytes(p, sms);
    at::Tensor ws;
    if (ws_bytes > 0)
      ws = at::empty({static_cast<int64_t>(ws_bytes)}, q.options().dtype(at::kByte));
    const cudaError_t err = kernels::turbo_decode(p, ws_bytes ? ws.data_ptr() : nullptr, ws_bytes,
                                                  at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess,
                "turbo_decode: CUDA kernel turbo_decode failed: ", cudaGetErrorString(err));
    return out;
  }
#endif
  TORCH_CHECK(false, "turbo_decode: unsupported device ", q.device(), " (this build supports ",
              kBuiltDevices, ")");
}

}  // namespace turboesm::ops
