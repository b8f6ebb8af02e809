// SPDX-License-Identifier: MIT
#include "turboesm/model/attention.h"

#include <limits>
#include <vector>

#include "turboesm/error.h"

namespace turboesm::model {
namespace {

void check_inputs(const AttentionInputs& in) {
  TURBOESM_CHECK(in.q.dim() == 4 && in.k.dim() == 4 && in.v.dim() == 4,
                 "attention: q, k, v must be 4-D [batch, heads, tokens, head_dim], got ",
                 in.q.dim(), "-D, ", in.k.dim(), "-D, ", in.v.dim(), "-D");
  TURBOESM_CHECK(in.k.sizes() == in.v.sizes(), "attention: k ", in.k.sizes(), " and v ",
                 in.v.sizes(), " must have the same shape");
  TURBOESM_CHECK(
      in.q.size(0) == in.k.size(0) && in.q.size(1) == in.k.size(1) && in.q.size(3) == in.k.size(3),
      "attention: q ", in.q.sizes(), " does not match k ", in.k.sizes());
  if (in.key_padding_mask.defined()) {
    TURBOESM_CHECK(in.key_padding_mask.dim() == 2 && in.key_padding_mask.size(0) == in.k.size(0) &&
                       in.key_padding_mask.size(1) == in.k.size(2),
                   "attention: key_padding_mask must be [batch, key_tokens] = [", in.k.size(0),
                   ", ", in.k.size(2), "], got ", in.key_padding_mask.sizes());
  }
}

at::Tensor bool_mask(const AttentionInputs& in) {
  return in.key_padding_mask.to(in.k.device(), at::kBool);
}

}  // namespace

at::Tensor ExactAttention::attend(const AttentionInputs& in, at::Tensor* probs_out) {
  check_inputs(in);
  const int64_t B = in.k.size(0), Tk = in.k.size(2);
  if (!in.need_probs) {
    std::optional<at::Tensor> mask;
    if (in.key_padding_mask.defined()) mask = bool_mask(in).view({B, 1, 1, Tk});
    // scale = 1: q is already scaled by head_dim^-0.5 (before rotary, as ESM does).
    return at::scaled_dot_product_attention(in.q, in.k, in.v, mask, 0.0, false, 1.0);
  }
  TURBOESM_CHECK(probs_out != nullptr, "attention: need_probs set but probs_out is null");
  at::Tensor scores = at::matmul(in.q.to(at::kFloat), in.k.to(at::kFloat).transpose(-1, -2));
  if (in.key_padding_mask.defined()) {
    // Finite lowest (as HF's additive mask): a row without real keys stays finite.
    scores.masked_fill_(bool_mask(in).logical_not().view({B, 1, 1, Tk}),
                        std::numeric_limits<float>::lowest());
  }
  at::Tensor probs = at::softmax(scores, -1);
  *probs_out = probs;
  return at::matmul(probs.to(in.v.scalar_type()), in.v);
}

at::Tensor attention_ref(const AttentionInputs& in, at::Tensor* probs_out) {
  check_inputs(in);
  const at::Tensor q = in.q.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor k = in.k.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor v = in.v.to(at::kCPU, at::kFloat).contiguous();
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), d = q.size(3), Tk = k.size(2);
  at::Tensor mask = in.key_padding_mask.defined()
                        ? in.key_padding_mask.to(at::kCPU, at::kBool).contiguous()
                        : at::ones({B, Tk}, at::kBool);
  at::Tensor out = at::zeros({B, H, Tq, d}, at::kFloat);
  at::Tensor probs = at::zeros({B, H, Tq, Tk}, at::kFloat);
  auto qa = q.accessor<float, 4>(), ka = k.accessor<float, 4>(), va = v.accessor<float, 4>();
  auto ma = mask.accessor<bool, 2>();
  auto oa = out.accessor<float, 4>(), pa = probs.accessor<float, 4>();
  std::vector<double> s(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < Tq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j) {
          if (!ma[b][j]) continue;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c) dot += double(qa[b][h][i][c]) * ka[b][h][j][c];
          s[j] = dot;
          mx = std::max(mx, dot);
        }
        double z = 0;
        for (int64_t j = 0; j < Tk; ++j) z += ma[b][j] ? std::exp(s[j] - mx) : 0.0;
        for (int64_t j = 0; j < Tk; ++j) {
          const double p = ma[b][j] ? std::exp(s[j] - mx) / z : 0.0;
          pa[b][h][i][j] = static_cast<float>(p);
          for (int64_t c = 0; c < d; ++c) oa[b][h][i][c] += static_cast<float>(p * va[b][h][j][c]);
        }
      }
    }
  }
  if (probs_out != nullptr) *probs_out = probs;
  return out;
}

}  // namespace turboesm::model
