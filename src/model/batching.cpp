// SPDX-License-Identifier: MIT
#include "turboesm/model/batching.h"

#include <algorithm>
#include <numeric>

#include "turboesm/error.h"

namespace turboesm::model {

std::vector<std::vector<std::size_t>> make_batches(const std::vector<int64_t>& lengths,
                                                   int64_t max_tokens_per_batch) {
  TURBOESM_CHECK(max_tokens_per_batch >= 1, "max tokens per batch must be >= 1, got ",
                 max_tokens_per_batch);
  std::vector<std::size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return lengths[a] < lengths[b]; });
  std::vector<std::vector<std::size_t>> batches;
  std::vector<std::size_t> buf;
  int64_t max_len = 0;
  for (std::size_t i : order) {
    const int64_t sz = lengths[i];
    if (!buf.empty() &&
        std::max(sz, max_len) * static_cast<int64_t>(buf.size() + 1) > max_tokens_per_batch) {
      batches.push_back(std::move(buf));
      buf.clear();
      max_len = 0;
    }
    max_len = std::max(max_len, sz);
    buf.push_back(i);
  }
  if (!buf.empty()) batches.push_back(std::move(buf));
  return batches;
}

PaddedBatch pad_batch(const std::vector<const std::vector<int64_t>*>& sequences, int64_t pad_id) {
  TURBOESM_CHECK(!sequences.empty(), "pad_batch: no sequences");
  int64_t T = 0;
  for (const auto* s : sequences) T = std::max<int64_t>(T, static_cast<int64_t>(s->size()));
  const int64_t B = static_cast<int64_t>(sequences.size());
  PaddedBatch out;
  out.tokens = at::full({B, T}, pad_id, at::TensorOptions().dtype(at::kLong));
  out.attention_mask = at::zeros({B, T}, at::TensorOptions().dtype(at::kBool));
  auto ta = out.tokens.accessor<int64_t, 2>();
  auto ma = out.attention_mask.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = *sequences[static_cast<size_t>(b)];
    for (size_t t = 0; t < s.size(); ++t) {
      ta[b][static_cast<int64_t>(t)] = s[t];
      ma[b][static_cast<int64_t>(t)] = true;
    }
  }
  return out;
}

}  // namespace turboesm::model
