// SPDX-License-Identifier: MIT
#pragma once
/// \file rotary.h
/// \brief Rotary position embedding (rotate-half, as ESM-2 / HF `EsmRotaryEmbedding`).
///
/// Positions are explicit so that a token appended at position p (KV-cache decoding) gets the same
/// rotation it would get inside the full sequence. Angles are computed in fp32 (as HF does); the
/// stored `inv_freq` of a checkpoint is used when present (it may be fp16-rounded).

#include <ATen/ATen.h>

#include <cstdint>

namespace turboesm::model {

class Rotary {
 public:
  Rotary() = default;
  /// \param inv_freq [head_dim/2] stored inverse frequencies, or undefined to compute
  ///        1 / theta^(2i/head_dim) in fp32.
  Rotary(int64_t head_dim, double theta, const at::Tensor& inv_freq, c10::Device device);

  /// \brief Default inverse frequencies 1/theta^(2i/d), i = 0..d/2-1, fp32 [d/2] (HF formula).
  static at::Tensor default_inv_freq(int64_t head_dim, double theta);

  /// \brief cos and sin tables for `position_ids`.
  /// \param position_ids [B, T] or [T] int64.
  /// \param dtype the activations' dtype: the tables are rounded to it, as HF does.
  /// \return {cos, sin}, each [B or 1, T, d] fp32 (values rounded through `dtype`).
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids,
                                            at::ScalarType dtype) const;

  /// \brief x·cos + rotate_half(x)·sin computed in fp32, returned in x's dtype.
  /// \param x [B, H, T, d]
  /// \param cos, sin [B or 1, T, d] from cos_sin().
  static at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

  const at::Tensor& inv_freq() const { return inv_freq_; }
  int64_t head_dim() const { return head_dim_; }

 private:
  int64_t head_dim_ = 0;
  at::Tensor inv_freq_;  // [d/2] fp32 on the model's device
};

}  // namespace turboesm::model
