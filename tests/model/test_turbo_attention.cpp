// SPDX-License-Identifier: MIT
// TurboAttention: prefill = the plain model to the last bit (and fills the cache); append mode
// attends through the cache; input errors.
#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/batching.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/turbo_attention.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

using model::CacheKind;
using model::TurboAttention;
constexpr double kFp32Tol = 1e-5;

std::vector<int64_t> encode(const std::string& s) { return io::EsmTokenizer::instance().encode(s); }

model::TurboCacheSpec spec_for(const model::EsmConfig& c, int bits) {
  return model::TurboCacheSpec::random(c, bits, bits, quant::RotationKind::kHadamard,
                                       quant::NormMode::kToken, quant::QjlMode::kSign, 17);
}

TEST(TurboAttention, PrefillIsBitIdenticalToThePlainModel) {
  auto m = model::Esm2Model::random(test::small_config(3), 42, 0.08);
  std::vector<std::vector<int64_t>> seqs = {encode("MKTAYIAKQR<mask>ISFVKSHFSRQ"), encode("M"),
                                            encode("GLKVVA")};
  std::vector<const std::vector<int64_t>*> ptrs;
  for (auto& s : seqs) ptrs.push_back(&s);
  auto pb = model::pad_batch(ptrs, io::EsmTokenizer::kPad);
  model::ForwardOptions fo;
  fo.need_logits = true;
  const auto plain = m->forward(pb.tokens, pb.attention_mask, fo);
  auto spec = spec_for(m->config(), 3);
  for (CacheKind kind : {CacheKind::kTurbo, CacheKind::kFp32, CacheKind::kInt8}) {
    auto cache = model::make_kv_cache(kind, m->config(), 3, m->device(), &spec);
    TurboAttention att(cache.get());
    fo.backend = &att;
    const auto cached = m->forward(pb.tokens, pb.attention_mask, fo);
    EXPECT_EQ(test::max_abs_diff(cached.last_hidden_state, plain.last_hidden_state), 0.0)
        << to_string(kind);
    EXPECT_EQ(test::max_abs_diff(cached.logits, plain.logits), 0.0) << to_string(kind);
    for (int l = 0; l < 3; ++l)
      EXPECT_EQ(cache->lengths(l),
                (std::vector<int64_t>{int64_t(seqs[0].size()), int64_t(seqs[1].size()),
                                      int64_t(seqs[2].size())}));
  }
}

TEST(TurboAttention, AppendAttendsToCachedAndNewTokens) {
  auto m = model::Esm2Model::random(test::small_config(1), 3, 0.08);
  const auto& c = m->config();
  auto cache = model::make_kv_cache(CacheKind::kFp32, c, 1, m->device());
  TurboAttention att(cache.get());
  at::manual_seed(4);
  const int64_t H = c.num_attention_heads, d = c.head_dim();
  model::AttentionInputs pre;
  pre.q = at::randn({1, H, 6, d}) * 0.3;
  pre.k = at::randn({1, H, 6, d});
  pre.v = at::randn({1, H, 6, d});
  att.attend(pre, nullptr);
  att.set_mode(TurboAttention::Mode::kAppend);
  model::AttentionInputs app;
  app.q = at::randn({1, H, 2, d}) * 0.3;
  app.k = at::randn({1, H, 2, d});
  app.v = at::randn({1, H, 2, d});
  at::Tensor out = att.attend(app, nullptr);
  model::AttentionInputs ref = app;
  ref.k = at::cat({pre.k, app.k}, 2);
  ref.v = at::cat({pre.v, app.v}, 2);
  EXPECT_LE(test::max_abs_diff(out, model::attention_ref(ref, nullptr)), kFp32Tol);
  EXPECT_EQ(cache->lengths()[0], 8);
  // Probabilities are a prefill-only feature.
  app.need_probs = true;
  at::Tensor probs;
  EXPECT_THROW(att.attend(app, &probs), Error);
}

TEST(TurboAttention, RefusesLeftPaddingAndPrefillIntoAFullCache) {
  auto m = model::Esm2Model::random(test::small_config(1), 3, 0.08);
  auto cache = model::make_kv_cache(CacheKind::kFp32, m->config(), 2, m->device());
  TurboAttention att(cache.get());
  model::ForwardOptions fo;
  fo.backend = &att;
  at::Tensor tokens = at::tensor(std::vector<int64_t>{0, 5, 6, 2, 1, 0, 7, 2}).view({2, 4});
  at::Tensor left = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 0, 1, 1, 1}).view({2, 4});
  try {
    m->forward(tokens, left, fo);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("right-padded"), std::string::npos) << e.what();
  }
  cache->clear();
  m->forward(tokens, at::Tensor(), fo);
  try {
    m->forward(tokens, at::Tensor(), fo);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds tokens"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace turboesm
