// SPDX-License-Identifier: MIT
// make_token_batch: the host-side checks and counts of one model call (ids, mask shape, real and
// <mask> tokens per row, padding), broken inputs, and the callers that rely on it (forward,
// Session) refusing the same inputs with their own prefixes.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io/io_test_util.h"
#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/token_batch.h"

namespace turboesm {
namespace {

using model::make_token_batch;
using model::TokenBatch;

constexpr int64_t kVocab = 33, kMaskId = 32;
const c10::Device kCpu(c10::kCPU);

at::Tensor ids(std::vector<int64_t> v, int64_t rows) {
  return at::tensor(v, at::kLong).view({rows, static_cast<int64_t>(v.size()) / rows});
}

using io::testing::error_of;

TEST(TokenBatch, CountsRealAndMaskTokensPerRow) {
  // Row 0: 4 real, one <mask>; row 1: 2 real then padding, one <mask> among the real ones and
  // one under the padding (not counted).
  const at::Tensor t = ids({0, 5, kMaskId, 2, 0, kMaskId, 1, kMaskId}, 2);
  const at::Tensor m = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 1, 0, 0}).view({2, 4});
  const TokenBatch tb = make_token_batch(t, m, kVocab, kMaskId, kCpu);
  EXPECT_EQ(tb.real, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(tb.mask_tokens, (std::vector<int64_t>{1, 1}));
  EXPECT_TRUE(tb.padded);
  EXPECT_TRUE(tb.right_padded);
  EXPECT_EQ(tb.batch(), 2);
  EXPECT_EQ(tb.length(), 4);
  EXPECT_EQ(tb.tokens.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(tb.tokens, t));
  ASSERT_TRUE(tb.mask.defined() && tb.mask_host.defined());
  EXPECT_EQ(tb.mask.scalar_type(), at::kBool);
  EXPECT_TRUE(at::equal(tb.mask, m.ne(0)));
  EXPECT_TRUE(at::equal(tb.mask_host, m.ne(0)));
}

TEST(TokenBatch, NoMaskMeansEveryTokenIsReal) {
  const TokenBatch tb =
      make_token_batch(ids({0, kMaskId, kMaskId, 2}, 1).to(at::kInt), {}, kVocab, kMaskId, kCpu);
  EXPECT_EQ(tb.real, (std::vector<int64_t>{4}));
  EXPECT_EQ(tb.mask_tokens, (std::vector<int64_t>{2}));
  EXPECT_FALSE(tb.padded);
  EXPECT_TRUE(tb.right_padded);
  EXPECT_FALSE(tb.mask.defined());
  EXPECT_FALSE(tb.mask_host.defined());
  EXPECT_EQ(tb.tokens.scalar_type(), at::kLong);  // int32 ids widened
  // A mask of ones is a mask (defined) without padding; a negative mask id counts nothing.
  const TokenBatch ones =
      make_token_batch(ids({0, kMaskId, 2}, 1), at::ones({1, 3}, at::kBool), kVocab, -1, kCpu);
  EXPECT_TRUE(ones.mask.defined());
  EXPECT_FALSE(ones.padded);
  EXPECT_EQ(ones.mask_tokens, (std::vector<int64_t>{0}));
}

TEST(TokenBatch, LeftPaddingIsReportedNotRefused) {
  // Esm2Model::forward takes any mask; the KV cache needs right padding (Session checks it).
  const at::Tensor m = at::tensor(std::vector<int64_t>{0, 1, 1, 1, 1, 0}).view({2, 3});
  const TokenBatch tb = make_token_batch(ids({1, 5, 2, 0, 5, 1}, 2), m, kVocab, kMaskId, kCpu);
  EXPECT_FALSE(tb.right_padded);
  EXPECT_TRUE(tb.padded);
  EXPECT_EQ(tb.real, (std::vector<int64_t>{2, 2}));
}

TEST(TokenBatch, BrokenInputsNameTheProblem) {
  auto err = [](const at::Tensor& t, const at::Tensor& m) {
    return error_of([&] { make_token_batch(t, m, kVocab, kMaskId, kCpu, "caller"); });
  };
  EXPECT_NE(err({}, {}).find("caller: tokens must be 2-D [batch, tokens], got 0-D"),
            std::string::npos);
  EXPECT_NE(err(at::tensor({0, 5, 2}), {}).find("tokens must be 2-D [batch, tokens], got 1-D"),
            std::string::npos);
  EXPECT_NE(err(at::zeros({1, 0}, at::kLong), {}).find("tokens must be non-empty, got [1, 0]"),
            std::string::npos);
  EXPECT_NE(err(at::zeros({0, 3}, at::kLong), {}).find("tokens must be non-empty"),
            std::string::npos);
  EXPECT_NE(err(at::rand({1, 3}), {}).find("tokens must be an integer tensor, got Float"),
            std::string::npos);
  EXPECT_NE(err(at::ones({1, 3}, at::kBool), {}).find("integer tensor, got Bool"),
            std::string::npos);
  EXPECT_NE(
      err(ids({0, 33, 2}, 1), {}).find("caller: token ids must be in [0, 33), got range [0, 33]"),
      std::string::npos);
  EXPECT_NE(err(ids({0, -1, 2}, 1), {}).find("token ids must be in [0, 33), got range [-1, 2]"),
            std::string::npos);
  EXPECT_NE(err(ids({0, 5, 2}, 1), at::ones({1, 4}))
                .find("attention_mask must match tokens [1, 3], got [1, 4]"),
            std::string::npos);
  // No prefix when none is given.
  EXPECT_EQ(error_of([] {
              make_token_batch(at::tensor({1}), {}, kVocab, kMaskId, kCpu);
            }).rfind("tokens must be 2-D", 0),
            0u);
}

TEST(TokenBatch, ToDeviceAsyncKeepsHostTensorsOnTheHostAndRefusesOthers) {
  const at::Tensor t = ids({1, 2, 3}, 1);
  EXPECT_TRUE(model::to_device_async(t, kCpu).is_same(t));
  EXPECT_NE(error_of([] {
              model::to_device_async(at::Tensor(), c10::Device(c10::kCPU));
            }).find("must be a defined CPU tensor"),
            std::string::npos);
}

TEST(TokenBatch, ForwardAndSessionUseItWithTheirPrefixes) {
  auto m = model::Esm2Model::random(test::small_config(1), 3, 0.05);
  // forward(TokenBatch) is the same computation as forward(tokens, mask).
  const at::Tensor t = ids({0, 5, 6, 2, 0, 7, 2, 1}, 2);
  const at::Tensor mask = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 1, 1, 0}).view({2, 4});
  const TokenBatch tb =
      make_token_batch(t, mask, m->config().vocab_size, m->config().mask_token_id, m->device());
  EXPECT_TRUE(at::equal(m->forward(tb).last_hidden_state, m->forward(t, mask).last_hidden_state));
  EXPECT_NE(error_of([&] {
              m->forward(TokenBatch{});
            }).find("forward: expected a token batch from make_token_batch"),
            std::string::npos);
  // Session: the cache-specific checks first, then the shared ones with "Session::<call>: ".
  model::Session s(m, model::make_kv_cache(model::CacheKind::kFp32, m->config(), 2, m->device()));
  const at::Tensor left = at::tensor(std::vector<int64_t>{0, 1, 1, 1, 1, 1, 1, 0}).view({2, 4});
  EXPECT_NE(error_of([&] {
              s.prefill(t, left);
            }).find("Session::prefill: the KV cache needs right-padded batches"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              s.prefill(ids({0, 40, 2, 2}, 2));
            }).find("Session::prefill: token ids must be in [0, 33), got range [0, 40]"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              s.prefill(ids({0, 5, 2}, 1));
            }).find("Session::prefill: tokens have batch 1, the cache was made for batch 2"),
            std::string::npos);
  // The counts a prefill keeps are the batch's: lengths follow the mask.
  s.prefill(t, mask);
  EXPECT_EQ(s.lengths(), (std::vector<int64_t>{4, 3}));
  EXPECT_NE(error_of([&] {
              s.append(ids({5, 5}, 2), at::ones({2, 2}));
            }).find("Session::append: attention_mask must match tokens [2, 1], got [2, 2]"),
            std::string::npos);
}

}  // namespace
}  // namespace turboesm
