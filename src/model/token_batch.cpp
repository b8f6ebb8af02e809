// SPDX-License-Identifier: MIT
#include "turboesm/model/token_batch.h"

#include <algorithm>

#include "turboesm/error.h"

namespace turboesm::model {

at::Tensor to_device_async(const at::Tensor& host, const c10::Device& device) {
  TURBOESM_CHECK(host.defined() && host.device().is_cpu(),
                 "to_device_async: the source must be a defined CPU tensor");
  if (device.is_cpu()) return host;
  if (!device.is_cuda()) return host.to(device);
  at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(device, /*non_blocking=*/true);
}

TokenBatch make_token_batch(const at::Tensor& tokens, const at::Tensor& mask, int64_t vocab_size,
                            int64_t mask_token_id, const c10::Device& device,
                            const std::string& what) {
  const std::string pre = what.empty() ? std::string() : what + ": ";
  TURBOESM_CHECK(tokens.defined() && tokens.dim() == 2, pre,
                 "tokens must be 2-D [batch, tokens], got ", tokens.defined() ? tokens.dim() : 0,
                 "-D");
  TURBOESM_CHECK(tokens.size(0) > 0 && tokens.size(1) > 0, pre, "tokens must be non-empty, got ",
                 tokens.sizes());
  TURBOESM_CHECK(!at::isFloatingType(tokens.scalar_type()) &&
                     !at::isComplexType(tokens.scalar_type()) && tokens.scalar_type() != at::kBool,
                 pre, "tokens must be an integer tensor, got ",
                 c10::toString(tokens.scalar_type()));
  if (mask.defined()) {
    TURBOESM_CHECK(mask.sizes() == tokens.sizes(), pre, "attention_mask must match tokens ",
                   tokens.sizes(), ", got ", mask.sizes());
  }
  const int64_t B = tokens.size(0), T = tokens.size(1);
  // Host copies: no-ops for contiguous int64 / bool host tensors; one copy each otherwise.
  const at::Tensor th = tokens.to(at::kCPU, at::kLong).contiguous();
  const int64_t* tp = th.data_ptr<int64_t>();
  const auto range = std::minmax_element(tp, tp + B * T);
  TURBOESM_CHECK(*range.first >= 0 && *range.second < vocab_size, pre, "token ids must be in [0, ",
                 vocab_size, "), got range [", *range.first, ", ", *range.second, "]");
  TokenBatch out;
  out.real.assign(static_cast<size_t>(B), T);
  out.mask_tokens.assign(static_cast<size_t>(B), 0);
  const bool* mp = nullptr;
  if (mask.defined()) {
    out.mask_host = mask.to(at::kCPU).ne(0).contiguous();
    mp = out.mask_host.data_ptr<bool>();
  }
  for (int64_t b = 0; b < B; ++b) {
    int64_t real = 0;
    bool seen_pad = false;
    for (int64_t t = 0; t < T; ++t) {
      const bool is_real = mp == nullptr || mp[b * T + t];
      if (!is_real) {
        seen_pad = true;
        continue;
      }
      if (seen_pad) out.right_padded = false;
      ++real;
      if (tp[b * T + t] == mask_token_id) ++out.mask_tokens[static_cast<size_t>(b)];
    }
    out.real[static_cast<size_t>(b)] = real;
    out.padded = out.padded || real < T;
  }
  // Device copies: the caller's own tensors when they are already there ("cuda" without an
  // index never matches "cuda:0": such tensors take the host copy, which is correct, only slower).
  out.tokens = tokens.device() == device ? tokens.to(at::kLong) : to_device_async(th, device);
  if (mask.defined())
    out.mask = mask.device() == device ? mask.ne(0) : to_device_async(out.mask_host, device);
  return out;
}

}  // namespace turboesm::model
