// SPDX-License-Identifier: MIT
#include "turboesm/model/contact_head.h"

#include "turboesm/error.h"

namespace turboesm::model {
namespace {

/// [B, T, T] fp32: 1 where both tokens are real and neither is <eos> (HF zeroes those rows/cols).
at::Tensor make_pair_mask(const at::Tensor& tokens, const at::Tensor& attention_mask, int64_t eos) {
  at::Tensor keep = tokens.ne(eos);
  if (attention_mask.defined()) keep = keep.logical_and(attention_mask.to(tokens.device()).ne(0));
  at::Tensor m = keep.to(at::kFloat);
  return m.unsqueeze(2) * m.unsqueeze(1);
}

/// APC(sym(A)) for A [B, L, L] (or [B, C, L, L]).
at::Tensor sym_apc(const at::Tensor& a) {
  at::Tensor x = a + a.transpose(-1, -2);
  at::Tensor a1 = x.sum(-1, true);
  at::Tensor a2 = x.sum(-2, true);
  at::Tensor a12 = x.sum({-1, -2}, true);
  return x - (a1 * a2) / a12;
}

}  // namespace

ContactAccumulator::ContactAccumulator(const at::Tensor& tokens, const at::Tensor& attention_mask,
                                       const at::Tensor& weight, const at::Tensor& bias,
                                       int64_t heads, int64_t eos_id)
    : heads_(heads) {
  TURBOESM_CHECK(tokens.dim() == 2, "contacts: tokens must be [B, T], got ", tokens.sizes());
  TURBOESM_CHECK(tokens.size(1) >= 2, "contacts need <cls> and <eos>: T >= 2, got ",
                 tokens.size(1));
  TURBOESM_CHECK(weight.numel() % heads == 0, "contacts: regression weight ", weight.sizes(),
                 " is not a multiple of ", heads, " heads");
  pair_mask_ = make_pair_mask(tokens, attention_mask, eos_id);
  weight_ = weight.reshape({-1}).to(tokens.device(), at::kFloat);
  at::Tensor wc = weight_.to(at::kCPU, at::kDouble).contiguous();
  weight_cpu_.assign(wc.data_ptr<double>(), wc.data_ptr<double>() + wc.numel());
  bias_ = bias.reshape({-1}).to(tokens.device(), at::kFloat);
  const int64_t B = tokens.size(0), L = tokens.size(1) - 2;
  acc_ = at::zeros({B, L, L}, at::TensorOptions().dtype(at::kFloat).device(tokens.device()));
}

void ContactAccumulator::add_layer(int layer, const at::Tensor& probs) {
  const int64_t T = pair_mask_.size(1);
  TURBOESM_CHECK(probs.dim() == 4 && probs.size(0) == pair_mask_.size(0) &&
                     probs.size(1) == heads_ && probs.size(2) == T && probs.size(3) == T,
                 "contacts: layer ", layer, " attention must be [", pair_mask_.size(0), ", ",
                 heads_, ", ", T, ", ", T, "], got ", probs.sizes());
  TURBOESM_CHECK((layer + 1) * heads_ <= weight_.numel(), "contacts: layer ", layer,
                 " beyond the regression's ", weight_.numel() / heads_, " layers");
  for (int64_t h = 0; h < heads_; ++h) {
    at::Tensor a = probs.select(1, h).to(at::kFloat) * pair_mask_;
    a = a.narrow(1, 1, T - 2).narrow(2, 1, T - 2);
    acc_.add_(sym_apc(a), weight_cpu_[static_cast<size_t>(layer * heads_ + h)]);
  }
}

at::Tensor ContactAccumulator::finish() const { return at::sigmoid(acc_ + bias_); }

at::Tensor contacts_ref(const at::Tensor& tokens, const at::Tensor& attention_mask,
                        const at::Tensor& attentions, const at::Tensor& weight,
                        const at::Tensor& bias, int64_t eos_id) {
  // HF EsmContactPredictionHead.forward after predict_contacts' padding mask.
  const int64_t B = attentions.size(0), C = attentions.size(1) * attentions.size(2);
  const int64_t T = attentions.size(3);
  at::Tensor pm = make_pair_mask(tokens, attention_mask, eos_id);
  at::Tensor a = attentions.to(at::kFloat) * pm.view({B, 1, 1, T, T});
  a = a.narrow(3, 1, T - 2).narrow(4, 1, T - 2).reshape({B, C, T - 2, T - 2});
  a = sym_apc(a).permute({0, 2, 3, 1});  // [B, L, L, C]
  at::Tensor z = at::matmul(a, weight.reshape({C, 1}).to(at::kFloat)).squeeze(-1) +
                 bias.reshape({1}).to(at::kFloat);
  return at::sigmoid(z);
}

}  // namespace turboesm::model
