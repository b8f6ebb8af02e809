// SPDX-License-Identifier: MIT
#pragma once
/// \file attention.h
/// \brief The attention interface of an ESM-2 layer and its exact implementation.
///
/// Esm2Model computes per-layer Q/K/V (pre-LN, projections, Q scaled by head_dim^-0.5, rotary on Q
/// and K) and hands them to an AttentionBackend. ExactAttention is full-precision softmax attention
/// (HF eager / SDPA semantics); the Turbo attention over the compressed KV cache implements the
/// same interface.

#include <ATen/ATen.h>

namespace turboesm::model {

/// \brief Inputs of one layer's self-attention.
struct AttentionInputs {
  int layer = 0;  ///< 0-based layer index
  /// [B, H, T, d]: q already scaled by d^-0.5; rotary applied to q and k.
  at::Tensor q, k, v;
  /// [B, T] bool, true = real token; keys at false positions get zero weight. Undefined = no
  /// padding (every key is real).
  at::Tensor key_padding_mask;
  /// The same mask on the host, when the caller has it (Esm2Model::forward does): backends that
  /// need per-row counts on the host (TurboAttention) read it instead of copying the device mask
  /// back in every layer. Undefined = not given.
  at::Tensor key_padding_mask_host;
  /// The caller needs the attention probabilities (contacts): fill `*probs_out`.
  bool need_probs = false;
};

/// \brief A self-attention implementation. Must not modify its inputs.
class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  /// \brief Computes softmax(q kᵀ + mask) v.
  /// \param in see AttentionInputs.
  /// \param probs_out when `in.need_probs`: set to the probabilities [B, H, T, T] in fp32 (rows
  ///        sum to 1 over real keys; padded keys are 0). Ignored otherwise (may be nullptr).
  /// \return [B, H, T, d] in the dtype of `in.v`.
  virtual at::Tensor attend(const AttentionInputs& in, at::Tensor* probs_out) = 0;
};

/// \brief Exact attention: at::scaled_dot_product_attention when no probabilities are needed,
/// an explicit fp32 softmax when they are. Padded keys are excluded; padded query rows attend the
/// real keys (as HF does), so every row is finite.
class ExactAttention final : public AttentionBackend {
 public:
  at::Tensor attend(const AttentionInputs& in, at::Tensor* probs_out) override;
};

/// \brief Scalar-obvious reference: fp32 scores, mask, softmax, weighted sum (tests compare the
/// fast path against it). Returns [B, H, T, d] fp32; `*probs_out` [B, H, T, T] if non-null.
at::Tensor attention_ref(const AttentionInputs& in, at::Tensor* probs_out);

}  // namespace turboesm::model
