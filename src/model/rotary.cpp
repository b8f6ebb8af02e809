// SPDX-License-Identifier: MIT
#include "turboesm/model/rotary.h"

#include "turboesm/error.h"

namespace turboesm::model {

Rotary::Rotary(int64_t head_dim, double theta, const at::Tensor& inv_freq, c10::Device device)
    : head_dim_(head_dim) {
  TURBOESM_CHECK(head_dim > 0 && head_dim % 2 == 0, "rotary needs an even head_dim, got ",
                 head_dim);
  if (inv_freq.defined()) {
    TURBOESM_CHECK(inv_freq.dim() == 1 && inv_freq.size(0) == head_dim / 2,
                   "rotary inv_freq must be [head_dim/2] = [", head_dim / 2, "], got ",
                   inv_freq.sizes());
    inv_freq_ = inv_freq.to(device, at::kFloat);
  } else {
    inv_freq_ = default_inv_freq(head_dim, theta).to(device);
  }
}

at::Tensor Rotary::default_inv_freq(int64_t head_dim, double theta) {
  TURBOESM_CHECK(theta > 0, "rope_theta must be positive, got ", theta);
  // HF: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), all in fp32.
  at::Tensor exponent = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kFloat)) /
                        static_cast<double>(head_dim);
  return at::reciprocal(at::pow(at::Scalar(theta), exponent));
}

std::pair<at::Tensor, at::Tensor> Rotary::cos_sin(const at::Tensor& position_ids,
                                                  at::ScalarType dtype) const {
  TURBOESM_CHECK(inv_freq_.defined(), "rotary embedding used before initialisation");
  TURBOESM_CHECK(position_ids.dim() == 1 || position_ids.dim() == 2,
                 "position_ids must be [T] or [B, T], got ", position_ids.dim(), "-D");
  at::Tensor pos = position_ids.dim() == 1 ? position_ids.unsqueeze(0) : position_ids;
  pos = pos.to(inv_freq_.device(), at::kFloat);
  at::Tensor freqs = pos.unsqueeze(-1) * inv_freq_.view({1, 1, -1});  // [B, T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                       // [B, T, d]
  // HF casts the tables to the activation dtype before applying them in fp32.
  at::Tensor cos = emb.cos().to(dtype).to(at::kFloat);
  at::Tensor sin = emb.sin().to(dtype).to(at::kFloat);
  return {cos, sin};
}

at::Tensor Rotary::apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TURBOESM_CHECK(x.dim() == 4, "rotary input must be [B, H, T, d], got ", x.dim(), "-D");
  const int64_t d = x.size(3);
  TURBOESM_CHECK(cos.size(-1) == d && cos.size(-2) == x.size(2),
                 "rotary tables [*, T, d] = ", cos.sizes(), " do not match input ", x.sizes());
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor rotated = at::cat({-xf.narrow(3, d / 2, d / 2), xf.narrow(3, 0, d / 2)}, 3);
  at::Tensor out = xf * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
  return out.to(x.scalar_type());
}

}  // namespace turboesm::model
