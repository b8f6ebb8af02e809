// SPDX-License-Identifier: MIT
#pragma once
/// \file batching.h
/// \brief Length-sorted batching (as fair-esm `FastaBatchedDataset.get_batch_indices`) and padding.

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace turboesm::model {

/// \brief Groups sequences into batches: sorted by length (ties by index), a batch grows while
/// (longest length in it) × (count) ≤ max_tokens_per_batch. A sequence longer than the budget
/// forms a batch alone.
/// \param lengths tokens per sequence (specials included).
/// \return batches of indices into `lengths`, shortest first.
/// \throws turboesm::Error if max_tokens_per_batch < 1.
std::vector<std::vector<std::size_t>> make_batches(const std::vector<int64_t>& lengths,
                                                   int64_t max_tokens_per_batch);

/// \brief Right-pads token lists with `pad_id`.
struct PaddedBatch {
  at::Tensor tokens;          ///< [B, T] int64
  at::Tensor attention_mask;  ///< [B, T] bool, true = real token
};
PaddedBatch pad_batch(const std::vector<const std::vector<int64_t>*>& sequences, int64_t pad_id);

}  // namespace turboesm::model
