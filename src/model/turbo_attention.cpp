// SPDX-License-Identifier: MIT
#include "turboesm/model/turbo_attention.h"

#include "turboesm/error.h"

namespace turboesm::model {

TurboAttention::TurboAttention(KvCache* cache, Mode mode) : cache_(cache), mode_(mode) {
  TURBOESM_CHECK(cache != nullptr, "TurboAttention needs a KV cache, got null");
}

at::Tensor TurboAttention::counts_from_mask(const at::Tensor& mask, int64_t batch, int64_t tokens) {
  if (!mask.defined()) return at::full({batch}, tokens, at::kLong);
  TURBOESM_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == tokens,
                 "attention mask must be [", batch, ", ", tokens, "], got ", mask.sizes());
  const at::Tensor m = mask.to(at::kCPU).ne(0);
  const at::Tensor counts = m.sum(-1);
  const at::Tensor prefix = at::arange(tokens, at::kLong).unsqueeze(0) < counts.unsqueeze(1);
  TURBOESM_CHECK(prefix.eq(m).all().item<bool>(),
                 "the KV cache needs right-padded batches (real tokens first, then padding); "
                 "the attention mask has a padding position before a real token");
  return counts;
}

at::Tensor TurboAttention::attend(const AttentionInputs& in, at::Tensor* probs_out) {
  TURBOESM_CHECK(in.k.dim() == 4, "TurboAttention: k must be 4-D [batch, heads, tokens, head_dim]");
  // The host copy, when the caller passed one, spares a device→host copy in every layer.
  const at::Tensor& mask =
      in.key_padding_mask_host.defined() ? in.key_padding_mask_host : in.key_padding_mask;
  const at::Tensor counts = counts_from_mask(mask, in.k.size(0), in.k.size(2));
  if (mode_ == Mode::kPrefill) {
    for (int64_t n : cache_->lengths(in.layer))
      TURBOESM_CHECK(n == 0, "TurboAttention prefill: layer ", in.layer,
                     " of the KV cache already holds tokens; prefill starts from an empty cache "
                     "(clear() it, or append instead)");
    at::Tensor out = exact_.attend(in, probs_out);
    cache_->append(in.layer, in.k, in.v, counts);
    return out;
  }
  TURBOESM_CHECK(!in.need_probs,
                 "TurboAttention: attention probabilities are not available in append mode (the "
                 "cache attends in code space); request contacts from a full forward instead");
  cache_->append(in.layer, in.k, in.v, counts);
  return cache_->attend(in.layer, in.q).to(in.v.scalar_type());
}

}  // namespace turboesm::model
