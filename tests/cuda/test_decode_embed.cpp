// SPDX-License-Identifier: MIT
// decode_embed (the decode step's preamble in one launch: embedding with token dropout, rotary
// tables of the new position, lengths + 1) equals the eager ops it replaces —
// Esm2Model::embed_with_ratio with an all-true mask and Rotary::cos_sin of the lengths — bit for
// bit, for fp32/fp16/bf16, with and without token dropout, <mask> tokens, positions from 0 to
// beyond 2^16. The kernel does the same operations with the same roundings (no FMA), so every
// comparison is at::equal. GPU tests skip without a CUDA device; the parameter checks run
// everywhere.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "turboesm/kernels/decode_embed.h"
#include "turboesm/model/esm2.h"

namespace turboesm {
namespace {

namespace tk = turboesm::kernels;
namespace tm = turboesm::model;

c10::Device gpu() { return c10::Device(c10::kCUDA, 0); }

std::shared_ptr<tm::Esm2Model> tiny(at::ScalarType dtype, bool token_dropout, bool emb_ln = false) {
  tm::EsmConfig c = tm::EsmConfig::preset("tiny");
  c.token_dropout = token_dropout;
  c.emb_layer_norm_before = emb_ln;
  tm::LoadOptions lo;
  lo.device = gpu();
  lo.dtype = dtype;
  return tm::Esm2Model::random(c, 11, 0.5, lo);
}

struct Case {
  at::ScalarType dtype;
  bool token_dropout;
};

class DecodeEmbed : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeEmbed, EqualsEagerOps) {
  TURBOESM_REQUIRE_GPU();
  c10::InferenceMode guard;
  const Case c = GetParam();
  auto m = tiny(c.dtype, c.token_dropout);
  const int64_t mask_id = m->config().mask_token_id;
  const auto dev = at::TensorOptions().device(gpu());
  // Batches 1, 5 (every kind of row) and 8; <mask> tokens and plain ones; observed ratios from
  // 0 to 0.9; positions 0 … 70 000.
  const std::vector<int64_t> ids = {mask_id, 5, 0, 31, mask_id, 20, 4, 17};
  const std::vector<float> ratios = {0.25f, 0.0f, 0.1f, 1.0f / 3.0f, 0.9f, 0.5f, 0.07f, 0.6f};
  const std::vector<int32_t> lens = {7, 0, 1, 1000, 70000, 513, 65535, 2};
  for (int64_t B : {1, 5, 8}) {
    SCOPED_TRACE(::testing::Message() << "batch " << B);
    const at::Tensor tokens =
        at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + B), at::kLong)
            .view({B, 1})
            .to(gpu());
    const at::Tensor observed =
        at::tensor(std::vector<float>(ratios.begin(), ratios.begin() + B), at::kFloat).to(gpu());
    const at::Tensor lengths =
        at::tensor(std::vector<int32_t>(lens.begin(), lens.begin() + B), at::kInt).to(gpu());
    const tm::Esm2Model::StepInputs got = m->decode_step_inputs(tokens, observed, lengths);
    ASSERT_TRUE(got.hidden.defined()) << "the kernel takes a CUDA ESM-2 model";
    const at::Tensor mask = at::ones({B, 1}, dev.dtype(at::kBool));
    const at::Tensor want_h = m->embed_with_ratio(tokens, mask, observed);
    const auto want_cs = m->rotary().cos_sin(lengths.to(at::kLong).unsqueeze(1), m->dtype());
    ASSERT_EQ(got.hidden.sizes(), want_h.sizes());
    EXPECT_EQ(got.hidden.scalar_type(), want_h.scalar_type());
    EXPECT_TRUE(at::equal(got.hidden, want_h))
        << "max |diff| "
        << (got.hidden.to(at::kDouble) - want_h.to(at::kDouble)).abs().max().item<double>();
    ASSERT_EQ(got.cos.sizes(), want_cs.first.sizes());
    EXPECT_TRUE(at::equal(got.cos, want_cs.first));
    EXPECT_TRUE(at::equal(got.sin, want_cs.second));
    EXPECT_TRUE(at::equal(got.after, lengths + 1));
    if (c.token_dropout) {  // the <mask> rows are zero, the others not
      EXPECT_EQ(got.hidden[0].abs().max().item<double>(), 0.0);
      if (B > 1) EXPECT_GT(got.hidden[1].abs().max().item<double>(), 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DecodeEmbed,
                         ::testing::Values(Case{at::kFloat, true}, Case{at::kHalf, true},
                                           Case{at::kBFloat16, true}, Case{at::kHalf, false},
                                           Case{at::kFloat, false}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const char* t = i.param.dtype == at::kFloat  ? "fp32"
                                           : i.param.dtype == at::kHalf ? "fp16"
                                                                        : "bf16";
                           return std::string(t) + (i.param.token_dropout ? "_dropout" : "_plain");
                         });

// Where the kernel does not apply the model says so (undefined tensors) and the caller runs the
// eager ops: an embedding LayerNorm, inputs of other dtypes or shapes.
TEST(DecodeEmbedModel, DeclinesWhatItDoesNotTake) {
  TURBOESM_REQUIRE_GPU();
  c10::InferenceMode guard;
  auto m = tiny(at::kHalf, true);
  const auto dev = at::TensorOptions().device(gpu());
  const at::Tensor tokens = at::full({2, 1}, 5, dev.dtype(at::kLong));
  const at::Tensor observed = at::zeros({2}, dev.dtype(at::kFloat));
  const at::Tensor lengths = at::zeros({2}, dev.dtype(at::kInt));
  ASSERT_TRUE(m->decode_step_inputs(tokens, observed, lengths).hidden.defined());
  EXPECT_FALSE(tiny(at::kHalf, true, /*emb_ln=*/true)
                   ->decode_step_inputs(tokens, observed, lengths)
                   .hidden.defined());
  EXPECT_FALSE(m->decode_step_inputs(tokens.to(at::kInt), observed, lengths).hidden.defined());
  EXPECT_FALSE(m->decode_step_inputs(tokens.view({1, 2}), observed, lengths).hidden.defined());
  EXPECT_FALSE(m->decode_step_inputs(tokens, observed, lengths.to(at::kLong)).hidden.defined());
  EXPECT_FALSE(m->decode_step_inputs(tokens, observed.narrow(0, 0, 1), lengths).hidden.defined());
  EXPECT_FALSE(m->decode_step_inputs(tokens.cpu(), observed, lengths).hidden.defined());
}

/// Parameter validation happens before any CUDA call: runs without a GPU.
TEST(DecodeEmbedParams, RejectsBadParameters) {
  float f[4] = {};
  int64_t t[2] = {};
  int32_t n[2] = {};
  tk::DecodeEmbedParams good;
  good.batch = 2;
  good.hidden = 8;
  good.head_dim = 4;
  good.vocab = 33;
  good.word_embeddings = f;
  good.tokens = t;
  good.observed = f;
  good.inv_freq = f;
  good.lengths = n;
  good.h = f;
  good.cos = f;
  good.sin = f;
  good.after = n;
  using P = tk::DecodeEmbedParams;
  struct Bad {
    const char* what;
    void (*edit)(P&);
  };
  const Bad bad[] = {
      {"negative batch", [](P& p) { p.batch = -1; }},
      {"batch above 65535", [](P& p) { p.batch = 65536; }},
      {"zero hidden", [](P& p) { p.hidden = 0; }},
      {"zero vocab", [](P& p) { p.vocab = 0; }},
      {"odd head_dim", [](P& p) { p.head_dim = 5; }},
      {"zero head_dim", [](P& p) { p.head_dim = 0; }},
      {"unknown dtype", [](P& p) { p.dtype = static_cast<tk::ElementType>(9); }},
      {"null embeddings", [](P& p) { p.word_embeddings = nullptr; }},
      {"null tokens", [](P& p) { p.tokens = nullptr; }},
      {"null observed with token dropout", [](P& p) { p.observed = nullptr; }},
      {"null inv_freq", [](P& p) { p.inv_freq = nullptr; }},
      {"null lengths", [](P& p) { p.lengths = nullptr; }},
      {"null h", [](P& p) { p.h = nullptr; }},
      {"null cos", [](P& p) { p.cos = nullptr; }},
      {"null sin", [](P& p) { p.sin = nullptr; }},
      {"null after", [](P& p) { p.after = nullptr; }},
  };
  for (const Bad& b : bad) {
    P p = good;
    b.edit(p);
    EXPECT_EQ(tk::decode_embed(p, nullptr), cudaErrorInvalidValue) << b.what;
  }
  P p = good;
  p.batch = 0;
  EXPECT_EQ(tk::decode_embed(p, nullptr), cudaSuccess) << "batch 0 is a no-op";
}

}  // namespace
}  // namespace turboesm
