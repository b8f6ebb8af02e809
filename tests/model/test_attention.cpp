// SPDX-License-Identifier: MIT
// ExactAttention (SDPA and explicit-softmax paths), rotary and the contact accumulator against
// their scalar / all-at-once references.
#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/model/attention.h"
#include "turboesm/model/contact_head.h"
#include "turboesm/model/rotary.h"

namespace turboesm {
namespace {

using test::max_abs_diff;
constexpr double kFp32Tol = 1e-5;

model::AttentionInputs random_inputs(int64_t B, int64_t H, int64_t T, int64_t d, bool pad) {
  at::manual_seed(11);
  model::AttentionInputs in;
  in.q = at::randn({B, H, T, d}) * 0.5;
  in.k = at::randn({B, H, T, d});
  in.v = at::randn({B, H, T, d});
  if (pad) {
    in.key_padding_mask = at::ones({B, T}, at::kBool);
    for (int64_t b = 1; b < B; ++b) in.key_padding_mask[b].narrow(0, T - b * 2, b * 2).fill_(false);
  }
  return in;
}

class ExactAttentionTest : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

TEST_P(ExactAttentionTest, MatchesScalarReference) {
  const auto [d, pad] = GetParam();
  auto in = random_inputs(3, 2, 9, d, pad);
  at::Tensor ref_probs;
  at::Tensor ref = model::attention_ref(in, &ref_probs);
  model::ExactAttention exact;
  in.need_probs = false;
  at::Tensor fast = exact.attend(in, nullptr);
  EXPECT_LE(max_abs_diff(fast, ref), kFp32Tol);
  in.need_probs = true;
  at::Tensor probs;
  at::Tensor explicit_out = exact.attend(in, &probs);
  EXPECT_LE(max_abs_diff(explicit_out, ref), kFp32Tol);
  EXPECT_LE(max_abs_diff(probs, ref_probs), kFp32Tol);
  if (pad) {  // padded keys get exactly zero weight
    EXPECT_EQ(probs[2].select(-1, 8).abs().max().item<float>(), 0.0f);
  }
  EXPECT_LE(max_abs_diff(probs.sum(-1), at::ones({3, 2, 9})), kFp32Tol);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, ExactAttentionTest,
                         ::testing::Combine(::testing::Values(16, 24, 64), ::testing::Bool()));

TEST(ExactAttention, RejectsBadShapes) {
  auto in = random_inputs(2, 2, 5, 8, false);
  in.k = in.k.narrow(3, 0, 4);
  in.v = in.v.narrow(3, 0, 4);
  model::ExactAttention exact;
  try {
    exact.attend(in, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match"), std::string::npos) << e.what();
  }
}

TEST(Rotary, DefaultInvFreqIsHfFormula) {
  at::Tensor f = model::Rotary::default_inv_freq(24, 10000.0);
  ASSERT_EQ(f.numel(), 12);
  for (int i = 0; i < 12; ++i) {
    EXPECT_NEAR(f[i].item<double>(), 1.0 / std::pow(10000.0, 2.0 * i / 24.0), 1e-7);
  }
}

TEST(Rotary, ExplicitPositionsMatchSlicesOfTheFullSequence) {
  model::Rotary rot(16, 10000.0, at::Tensor(), c10::Device(c10::kCPU));
  at::manual_seed(3);
  at::Tensor x = at::randn({1, 2, 20, 16});
  auto full = rot.cos_sin(at::arange(20), at::kFloat);
  at::Tensor y_full = model::Rotary::apply(x, full.first, full.second);
  // Tokens 15..19 rotated alone with explicit positions (as appended tokens in a KV cache).
  auto tail = rot.cos_sin(at::arange(15, 20), at::kFloat);
  at::Tensor y_tail = model::Rotary::apply(x.narrow(2, 15, 5), tail.first, tail.second);
  EXPECT_LE(max_abs_diff(y_tail, y_full.narrow(2, 15, 5)), 1e-6);
  // Rotation preserves norms and changes vectors at positions > 0.
  EXPECT_LE(max_abs_diff(y_full.norm(2, -1), x.norm(2, -1)), 1e-5);
  EXPECT_GT(max_abs_diff(y_full.narrow(2, 1, 19), x.narrow(2, 1, 19)), 1e-3);
  EXPECT_LE(max_abs_diff(y_full.narrow(2, 0, 1), x.narrow(2, 0, 1)), 1e-7);
}

TEST(ContactAccumulator, MatchesAllAtOnceReference) {
  at::manual_seed(5);
  const int64_t B = 2, layers = 3, heads = 2, T = 11;
  at::Tensor probs = at::softmax(at::randn({B, layers, heads, T, T}), -1);
  at::Tensor tokens = at::randint(4, 30, {B, T}, at::kLong);
  at::Tensor mask = at::ones({B, T}, at::kLong);
  tokens.index_put_({0, 0}, 0);
  tokens.index_put_({1, 0}, 0);
  tokens.index_put_({0, T - 1}, 2);
  tokens.index_put_({1, 7}, 2);  // shorter second sequence, padded after <eos>
  tokens[1].narrow(0, 8, T - 8).fill_(1);
  mask[1].narrow(0, 8, T - 8).fill_(0);
  at::Tensor w = at::randn({1, layers * heads}) * 5;
  at::Tensor b = at::full({1}, 0.3);
  model::ContactAccumulator acc(tokens, mask, w, b, heads);
  for (int l = 0; l < layers; ++l) acc.add_layer(l, probs.select(1, l));
  at::Tensor got = acc.finish();
  at::Tensor want = model::contacts_ref(tokens, mask, probs, w, b);
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE(max_abs_diff(got, want), kFp32Tol);
  EXPECT_GT(want.std().item<double>(), 1e-2);  // not a constant map
}

}  // namespace
}  // namespace turboesm
