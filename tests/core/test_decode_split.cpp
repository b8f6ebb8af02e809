// SPDX-License-Identifier: MIT
// decode_split.h, the positions each split CTA of turbo_decode / turbo_decode_append streams (the
// kernels call the same functions): the splits of a row partition its positions exactly once, in
// order, with the new token alone in the append launch's last split.
#include <gtest/gtest.h>

#include <vector>

#include "turboesm/kernels/decode_split.h"

namespace turboesm {
namespace {

using kernels::decode_split_range;
using kernels::SplitRange;

/// How often each position in [0, n) is covered by the splits; positions outside count in `out`.
std::vector<int> coverage(bool append, int length_or_start, int capacity, int splits, int n,
                          int* outside, int last_split_skip = 0) {
  std::vector<int> cov(static_cast<size_t>(n), 0);
  *outside = 0;
  int prev_last = 0;
  for (int s = 0; s < splits - last_split_skip; ++s) {
    const SplitRange r = decode_split_range(append, length_or_start, capacity, splits, s);
    if (!r.empty()) {
      EXPECT_GE(r.first, prev_last) << "split " << s << " starts before the previous one ends";
      prev_last = r.last;
    }
    for (int t = r.first; t < r.last; ++t) {
      if (t < 0 || t >= n)
        ++*outside;
      else
        ++cov[static_cast<size_t>(t)];
    }
  }
  return cov;
}

TEST(DecodeSplit, PlainSplitsPartitionTheCachedPositions) {
  for (int capacity : {1, 64, 1000, 16384})
    for (int length : {0, 1, 7, 63, 64, 65, 999, 1000, 16384, 20000})
      for (int splits : {1, 2, 3, 4, 7, 26, 64}) {
        int outside = 0;
        const int n = length < capacity ? length : capacity;
        const std::vector<int> cov = coverage(false, length, capacity, splits, n, &outside);
        EXPECT_EQ(outside, 0);
        for (int t = 0; t < n; ++t)
          ASSERT_EQ(cov[static_cast<size_t>(t)], 1)
              << "position " << t << ", length " << length << ", capacity " << capacity << ", "
              << splits << " splits";
      }
}

TEST(DecodeSplit, AppendSplitsPartitionTheCachedPositionsAndTheLastTakesTheNewToken) {
  for (int capacity : {64, 1088, 20001})
    for (int start : {0, 1, 63, 64, 1024, 1087, 20000})
      for (int splits : {2, 3, 5, 9, 27}) {
        if (start > capacity) continue;
        // Cached splits: exactly [0, start).
        int outside = 0;
        const int cached = start < capacity ? start : capacity;
        const std::vector<int> cov =
            coverage(true, start, capacity, splits, cached, &outside, /*last_split_skip=*/1);
        EXPECT_EQ(outside, 0);
        for (int t = 0; t < cached; ++t)
          ASSERT_EQ(cov[static_cast<size_t>(t)], 1)
              << "position " << t << ", start " << start << ", " << splits << " splits";
        // The last split: the new token alone, or nothing when it does not fit.
        const SplitRange last = decode_split_range(true, start, capacity, splits, splits - 1);
        if (start < capacity) {
          EXPECT_EQ(last.first, start);
          EXPECT_EQ(last.last, start + 1);
        } else {
          EXPECT_TRUE(last.empty());
        }
      }
  // A negative start (the kernel flags it) gives empty splits, never negative positions.
  for (int s = 0; s < 4; ++s) EXPECT_TRUE(decode_split_range(true, -5, 64, 4, s).empty());
}

}  // namespace
}  // namespace turboesm
