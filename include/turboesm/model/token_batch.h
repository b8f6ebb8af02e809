// SPDX-License-Identifier: MIT
#pragma once
/// \file token_batch.h
/// \brief The token ids and attention mask of one model call, checked once on the host and moved
/// to the model's device without a synchronising copy.
///
/// Every check that reads values (ids in the vocabulary, the mask's shape) and every count the
/// caller needs on the host (real tokens per row, <mask> tokens, padding) is computed from a host
/// copy. Tokens given on the host (FASTA batches, tokenizer output: the usual case) then cost no
/// device round trip at all — the device copies go through pinned staging buffers
/// (`non_blocking`), so the host keeps launching while the GPU still works on earlier calls.
/// Tokens given on a device are copied to the host once (one synchronisation, where the former
/// code had one per check).

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace turboesm::model {

struct TokenBatch {
  at::Tensor tokens;     ///< [B, T] int64 on the target device
  at::Tensor mask;       ///< [B, T] bool on the target device, true = real; undefined if none given
  at::Tensor mask_host;  ///< the same mask on the host (CPU); undefined if none given
  std::vector<int64_t> real;         ///< real tokens per row (T each without a mask)
  std::vector<int64_t> mask_tokens;  ///< real tokens per row that are <mask> (mask_token_id)
  bool padded = false;               ///< the mask has at least one false entry
  /// Every row is of the form 1…1 0…0 (real tokens first): what a KV cache needs.
  bool right_padded = true;

  int64_t batch() const { return tokens.size(0); }
  int64_t length() const { return tokens.size(1); }
};

/// \brief Checks `tokens` ([B, T] integer, B, T > 0, ids in [0, vocab_size)) and `mask`
/// (undefined, or any dtype of shape [B, T]; nonzero = real token) and returns them on `device`.
/// \param what prefix of error messages (e.g. "Session::prefill"); empty = none
/// \param mask_token_id id counted in TokenBatch::mask_tokens; negative = count none
/// \throws turboesm::Error naming the first problem (no partial state: nothing is launched before
///         the checks pass)
TokenBatch make_token_batch(const at::Tensor& tokens, const at::Tensor& mask, int64_t vocab_size,
                            int64_t mask_token_id, const c10::Device& device,
                            const std::string& what = std::string());

/// \brief `host` (a CPU tensor) on `device`: itself on the CPU; on a CUDA device an asynchronous
/// copy through a pinned staging buffer (the caching host allocator keeps the buffer until the
/// copy has run), so the call does not wait for the device's queue.
at::Tensor to_device_async(const at::Tensor& host, const c10::Device& device);

}  // namespace turboesm::model
