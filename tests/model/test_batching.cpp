// SPDX-License-Identifier: MIT
#include <gtest/gtest.h>

#include "turboesm/error.h"
#include "turboesm/model/batching.h"

namespace turboesm {
namespace {

TEST(Batching, SortsByLengthAndRespectsTokenBudget) {
  const std::vector<int64_t> lengths = {10, 3, 7, 7, 20, 2};
  auto batches = model::make_batches(lengths, 20);
  // sorted: 5(2) 1(3) 2(7) 3(7) 0(10) 4(20)
  ASSERT_EQ(batches.size(), 4u);
  EXPECT_EQ(batches[0], (std::vector<size_t>{5, 1}));  // 3*2=6; adding 7 -> 7*3=21 > 20
  EXPECT_EQ(batches[1], (std::vector<size_t>{2, 3}));  // 7*2=14; adding 10 -> 30
  EXPECT_EQ(batches[2], (std::vector<size_t>{0}));
  EXPECT_EQ(batches[3], (std::vector<size_t>{4}));
  size_t n = 0;
  for (auto& b : batches) {
    int64_t mx = 0;
    for (auto i : b) mx = std::max(mx, lengths[i]);
    EXPECT_TRUE(b.size() == 1 || mx * static_cast<int64_t>(b.size()) <= 20);
    n += b.size();
  }
  EXPECT_EQ(n, lengths.size());
}

TEST(Batching, OversizedSequenceGetsItsOwnBatch) {
  auto batches = model::make_batches({50, 4, 4}, 16);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1], (std::vector<size_t>{0}));
}

TEST(Batching, RejectsZeroBudget) { EXPECT_THROW(model::make_batches({3}, 0), Error); }

TEST(Batching, PadBatchRightPadsAndMasks) {
  std::vector<int64_t> a = {0, 5, 2}, b = {0, 5, 6, 7, 2};
  auto pb = model::pad_batch({&a, &b}, 1);
  ASSERT_EQ(pb.tokens.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(pb.tokens[0][3].item<int64_t>(), 1);
  EXPECT_FALSE(pb.attention_mask[0][3].item<bool>());
  EXPECT_TRUE(pb.attention_mask[1][4].item<bool>());
  EXPECT_EQ(pb.attention_mask.sum().item<int64_t>(), 8);
}

}  // namespace
}  // namespace turboesm
