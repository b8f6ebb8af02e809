// SPDX-License-Identifier: MIT
// Session: prefill + append through the FP32 cache against a hand-written reference of the decode
// semantics, padded batches = single sequences, Turbo error vs bits, byte accounting.
#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/attention.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

using model::CacheKind;
using model::Session;
constexpr double kFp32Tol = 1e-5;
/// Cosine of the appended hidden states, 4-bit Turbo vs FP32 cache (tiny random model, d = 24).
constexpr double kMinCosine4Bit = 0.99;

std::vector<int64_t> encode(const std::string& s) { return io::EsmTokenizer::instance().encode(s); }
at::Tensor row(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).unsqueeze(0); }

std::shared_ptr<const model::Esm2Model> tiny_model(int layers = 2) {
  return model::Esm2Model::random(test::small_config(layers), 7, 0.08);
}

model::TurboCacheSpec spec_for(const model::EsmConfig& c, int bits) {
  return model::TurboCacheSpec::random(c, bits, bits, quant::RotationKind::kRandom,
                                       quant::NormMode::kToken, quant::QjlMode::kNone, 23);
}

Session make_session(const std::shared_ptr<const model::Esm2Model>& m, CacheKind kind, int batch,
                     const model::TurboCacheSpec* spec = nullptr) {
  return Session(m, model::make_kv_cache(kind, m->config(), batch, m->device(), spec));
}

/// Decode semantics written out with the model's pieces and the scalar attention: the prefix
/// attends to itself; appended token j attends to the prefix and tokens 0..j.
/// Returns the final hidden state of every appended token [R, hidden].
at::Tensor reference_decode(const model::Esm2Model& m, const std::vector<int64_t>& prefix,
                            const std::vector<int64_t>& rest) {
  const int n = m.num_layers();
  std::vector<at::Tensor> ks(n), vs(n);
  const int64_t P = static_cast<int64_t>(prefix.size());
  at::Tensor h = m.embed(row(prefix), at::Tensor());
  at::Tensor pos = at::arange(P, at::kLong);
  for (int i = 0; i < n; ++i) {
    auto qkv = m.layer_qkv(i, h, pos);
    ks[i] = qkv.k;
    vs[i] = qkv.v;
    model::AttentionInputs in{i, qkv.q, qkv.k, qkv.v};
    h = m.layer_finish(i, h, model::attention_ref(in, nullptr));
  }
  std::vector<at::Tensor> outs;
  for (size_t j = 0; j < rest.size(); ++j) {
    // No <mask> in the test sequences: the token-dropout factor is the same for any chunk.
    at::Tensor x = m.embed(row({rest[j]}), at::Tensor());
    at::Tensor p = at::full({1}, P + static_cast<int64_t>(j), at::kLong);
    for (int i = 0; i < n; ++i) {
      auto qkv = m.layer_qkv(i, x, p);
      ks[i] = at::cat({ks[i], qkv.k}, 2);
      vs[i] = at::cat({vs[i], qkv.v}, 2);
      model::AttentionInputs in{i, qkv.q, ks[i], vs[i]};
      x = m.layer_finish(i, x, model::attention_ref(in, nullptr));
    }
    outs.push_back(m.final_norm(x)[0][0]);
  }
  return at::stack(outs);
}

TEST(Session, Fp32AppendMatchesTheReferenceDecode) {
  auto m = tiny_model();
  const auto seq = encode("MKTAYIAKQRQISFVKSHFSRQ");
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 12),
      rest(seq.begin() + 12, seq.end());
  at::Tensor ref = reference_decode(*m, prefix, rest);
  Session s = make_session(m, CacheKind::kFp32, 1);
  at::Tensor pre = s.prefill(row(prefix));
  // Prefill = the plain model, bit for bit.
  EXPECT_EQ(test::max_abs_diff(pre, m->forward(row(prefix), at::Tensor()).last_hidden_state), 0.0);
  for (size_t j = 0; j < rest.size(); ++j) {
    at::Tensor h = s.append(row({rest[j]}));
    ASSERT_EQ(h.sizes(), (at::IntArrayRef{1, 1, 48}));
    EXPECT_LE(test::max_abs_diff(h[0][0], ref[j]), kFp32Tol) << "token " << j;
    EXPECT_EQ(s.logits().sizes(), (at::IntArrayRef{1, 1, 33}));
  }
  EXPECT_EQ(s.lengths()[0], static_cast<int64_t>(seq.size()));
  // Appending the rest as one chunk differs (the chunk attends to itself bidirectionally) but
  // its last token sees exactly what the one-at-a-time last token saw, minus nothing: the same
  // keys. Its hidden state therefore differs only through the earlier chunk tokens' K/V.
  Session s2 = make_session(m, CacheKind::kFp32, 1);
  s2.prefill(row(prefix));
  at::Tensor chunk = s2.append(row(rest));
  EXPECT_EQ(chunk.size(1), static_cast<int64_t>(rest.size()));
  EXPECT_FALSE(at::isnan(chunk).any().item<bool>());
}

TEST(Session, PaddedBatchEqualsSingleSequences) {
  auto m = tiny_model();
  const std::vector<std::vector<int64_t>> prefixes = {encode("MKTAYIAK"), encode("GL"),
                                                      encode("ACDEFGHIKLMNPQ")};
  // Appended chunks per sequence (right-padded in the batch), of unequal lengths (0 included).
  const std::vector<std::vector<int64_t>> adds = {{5, 6, 7}, {}, {8}};
  auto spec = spec_for(m->config(), 3);
  for (CacheKind kind : {CacheKind::kFp32, CacheKind::kTurbo}) {
    SCOPED_TRACE(to_string(kind));
    const int64_t B = 3, P = 16, A = 3;
    at::Tensor tok = at::full({B, P}, 1, at::kLong), mask = at::zeros({B, P}, at::kLong);
    at::Tensor atok = at::full({B, A}, 1, at::kLong), amask = at::zeros({B, A}, at::kLong);
    for (int64_t b = 0; b < B; ++b) {
      for (size_t t = 0; t < prefixes[b].size(); ++t) {
        tok[b][t] = prefixes[b][t];
        mask[b][t] = 1;
      }
      for (size_t t = 0; t < adds[b].size(); ++t) {
        atok[b][t] = adds[b][t];
        amask[b][t] = 1;
      }
    }
    Session batch = make_session(m, kind, 3, &spec);
    batch.prefill(tok, mask);
    at::Tensor hb = batch.append(atok, amask);
    at::Tensor lb = batch.logits();
    for (int64_t b = 0; b < B; ++b) {
      Session one = make_session(m, kind, 1, &spec);
      one.prefill(row(prefixes[b]));
      EXPECT_EQ(batch.lengths()[b], static_cast<int64_t>(prefixes[b].size() + adds[b].size()));
      if (adds[b].empty()) continue;
      at::Tensor h1 = one.append(row(adds[b]));
      const int64_t n = static_cast<int64_t>(adds[b].size());
      EXPECT_LE(test::max_abs_diff(hb[b].narrow(0, 0, n), h1[0]), kFp32Tol) << b;
      EXPECT_LE(test::max_abs_diff(lb[b].narrow(0, 0, n), one.logits()[0]), 1e-4) << b;
    }
  }
}

TEST(Session, TurboErrorFallsWithBits) {
  auto m = tiny_model(3);
  const auto seq = encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQF");
  const int64_t P = 30;
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + P);
  at::Tensor rest = row(std::vector<int64_t>(seq.begin() + P, seq.end()));
  Session ref = make_session(m, CacheKind::kFp32, 1);
  ref.prefill(row(prefix));
  at::Tensor href = ref.append(rest);
  double prev = 1e30, cos4 = 0.0;
  for (int bits : {2, 3, 4}) {
    auto spec = spec_for(m->config(), bits);
    Session s = make_session(m, CacheKind::kTurbo, 1, &spec);
    s.prefill(row(prefix));
    at::Tensor h = s.append(rest);
    const double rel = ((h - href).norm() / href.norm()).item<double>();
    EXPECT_LT(rel, prev) << bits << " bits";
    prev = rel;
    cos4 = at::cosine_similarity(h[0], href[0], 1).mean().item<double>();
  }
  EXPECT_GE(cos4, kMinCosine4Bit) << "mean cosine of the appended hidden states at 4 bits";
}

TEST(Session, BytesAndErrors) {
  auto m = tiny_model();
  auto spec = spec_for(m->config(), 3);
  Session s = make_session(m, CacheKind::kTurbo, 1, &spec);
  EXPECT_THROW(s.logits(), Error);
  s.prefill(row(encode("MKTAY")));  // 7 tokens with <cls>/<eos>
  const int64_t per = s.cache().bytes_per_token_per_head();
  const int64_t H = 2, L = 2;
  EXPECT_EQ(s.kv_bytes(), 7 * H * L * per);
  s.append(row({5}));
  s.append(row({32}));  // a lone <mask>: its row is zeroed, the output stays finite
  EXPECT_FALSE(at::isnan(s.last_hidden()).any().item<bool>());
  EXPECT_EQ(s.kv_bytes(), 9 * H * L * per);
  EXPECT_GE(s.allocated_bytes(), s.kv_bytes());
  // A new prefill starts over.
  s.prefill(row(encode("MK")));
  EXPECT_EQ(s.lengths()[0], 4);
  try {
    s.append(at::tensor(std::vector<int64_t>{5, 99}).unsqueeze(0));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token ids must be in [0, 33)"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(s.append(at::ones({2, 1}, at::kLong)), Error);  // batch 2 on a batch-1 cache
  // A cache for another model is refused.
  auto other = model::make_kv_cache(CacheKind::kFp32, test::small_config(3), 1, m->device());
  EXPECT_THROW(Session(m, std::move(other)), Error);
}

}  // namespace
}  // namespace turboesm
