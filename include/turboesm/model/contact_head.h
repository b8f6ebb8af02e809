// SPDX-License-Identifier: MIT
#pragma once
/// \file contact_head.h
/// \brief Contact prediction from attention maps (HF `EsmContactPredictionHead` semantics),
/// accumulated head by head.
///
/// HF stacks all attention maps [B, layers, heads, T, T], zeroes `<eos>` and padding rows/columns,
/// drops `<cls>`/`<eos>`, symmetrises, applies APC per map and runs a logistic regression over the
/// layers×heads channels. The regression is linear in the per-map features, so the sum over
/// channels can be accumulated one map at a time: memory is O(B·T²) instead of
/// O(B·layers·heads·T²).

#include <ATen/ATen.h>

#include <vector>

namespace turboesm::model {

class ContactAccumulator {
 public:
  /// \param tokens [B, T] int64; \param attention_mask [B, T] (non-zero = real token).
  /// \param weight [1, layers*heads] regression weight; \param bias [1].
  /// \param heads heads per layer.
  ContactAccumulator(const at::Tensor& tokens, const at::Tensor& attention_mask,
                     const at::Tensor& weight, const at::Tensor& bias, int64_t heads,
                     int64_t eos_id = 2);
  /// \brief Adds one layer's attention probabilities [B, heads, T, T].
  void add_layer(int layer, const at::Tensor& probs);
  /// \brief sigmoid(Σ_c w_c·APC(sym(A_c)) + b): [B, T-2, T-2] fp32.
  at::Tensor finish() const;

 private:
  at::Tensor pair_mask_;            // [B, T, T] fp32: 1 where both tokens are real and not <eos>
  at::Tensor weight_;               // [layers*heads] fp32
  std::vector<double> weight_cpu_;  // same, on the host (no device sync per head)
  at::Tensor bias_;
  at::Tensor acc_;  // [B, T-2, T-2] fp32
  int64_t heads_ = 0;
};

/// \brief Reference (HF formula, all maps at once).
/// \param attentions [B, layers, heads, T, T]; other parameters as ContactAccumulator.
/// \return [B, T-2, T-2] fp32.
at::Tensor contacts_ref(const at::Tensor& tokens, const at::Tensor& attention_mask,
                        const at::Tensor& attentions, const at::Tensor& weight,
                        const at::Tensor& bias, int64_t eos_id = 2);

}  // namespace turboesm::model
