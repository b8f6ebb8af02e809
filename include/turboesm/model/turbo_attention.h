// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_attention.h
/// \brief Attention through a KV cache (DESIGN "Decode semantics"), as an AttentionBackend.
///
/// The model applies Q scaling and RoPE before the backend; the cache applies Π (RoPE first, then
/// Π, as DESIGN says). Two modes:
///  - prefill: exact full-precision attention (ExactAttention on the inputs, so the outputs equal
///    the plain model's to the last bit), and every layer's K/V is written into the cache;
///  - append: the new K/V are written first, then the queries attend to every cached token of
///    their sequence (old and new) through the cache.
/// Padded batches: `key_padding_mask` [B, T] marks the real tokens of the current call; it must be
/// right-padded (real tokens first), and only those rows are cached.

#include <ATen/ATen.h>

#include "turboesm/model/attention.h"
#include "turboesm/model/kv_cache.h"

namespace turboesm::model {

class TurboAttention final : public AttentionBackend {
 public:
  enum class Mode { kPrefill, kAppend };

  /// \param cache not owned; must outlive this backend
  explicit TurboAttention(KvCache* cache, Mode mode = Mode::kPrefill);

  void set_mode(Mode mode) { mode_ = mode; }
  Mode mode() const { return mode_; }
  KvCache* cache() const { return cache_; }

  /// \brief See the file comment. Probabilities (need_probs) are available in prefill only.
  /// \return [B, H, T, d] in the dtype of `in.v`
  at::Tensor attend(const AttentionInputs& in, at::Tensor* probs_out) override;

  /// \brief Per-sequence real-token counts of a right-padded mask [B, T] (undefined → T each);
  /// throws turboesm::Error if a row is not of the form 1…1 0…0.
  static at::Tensor counts_from_mask(const at::Tensor& key_padding_mask, int64_t batch,
                                     int64_t tokens);

 private:
  KvCache* cache_;
  Mode mode_;
  ExactAttention exact_;
};

}  // namespace turboesm::model
