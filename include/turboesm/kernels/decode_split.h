// SPDX-License-Identifier: MIT
#pragma once
/// \file decode_split.h
/// \brief Which cached positions a split CTA of turbo_decode / turbo_decode_append streams. Host
/// and device share these functions, so the partition is tested on the host
/// (tests/core/test_decode_split.cpp) and the kernel computes the same ranges.
///
/// turbo_decode: a row's `num_splits` CTAs share positions [0, min(length, capacity)) in equal
/// chunks (the last ones may be short or empty). turbo_decode_append: splits [0, num_splits − 1)
/// share the cached positions [0, clamp(start, 0, capacity)), and the last split takes the new
/// token's position `start` (empty when `start` is outside [0, capacity): the kernel flags it).

#include "turboesm/quant/host_device.h"

namespace turboesm::kernels {

/// Positions [first, last) of one split.
struct SplitRange {
  int first = 0, last = 0;
  TURBOESM_HOST_DEVICE bool empty() const { return last <= first; }
};

namespace detail {
TURBOESM_HOST_DEVICE inline int split_min(int a, int b) { return a < b ? a : b; }
}  // namespace detail

/// \brief Split `split` of `num_splits` (≥ 1; ≥ 2 with `append`). `length_or_start`: the cached
/// length (turbo_decode) or the new token's position, i.e. the old length (append).
TURBOESM_HOST_DEVICE inline SplitRange decode_split_range(bool append, int length_or_start,
                                                          int capacity, int num_splits, int split) {
  SplitRange r;
  if (append) {
    const int start = length_or_start;
    const int cached = detail::split_min(start > 0 ? start : 0, capacity);
    if (split == num_splits - 1) {  // the new token's split
      r.first = cached;
      r.last = start >= 0 && start < capacity ? start + 1 : cached;
      return r;
    }
    const int ns = num_splits - 1;
    const int chunk = (cached + ns - 1) / ns;
    r.first = detail::split_min(cached, split * chunk);
    r.last = detail::split_min(cached, r.first + chunk);
    return r;
  }
  const int len = detail::split_min(length_or_start, capacity);
  const int chunk = (len + num_splits - 1) / num_splits;
  r.first = detail::split_min(len, split * chunk);
  r.last = detail::split_min(len, r.first + chunk);
  return r;
}

}  // namespace turboesm::kernels
