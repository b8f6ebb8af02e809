// SPDX-License-Identifier: MIT
// Esm2Model behaviour that needs no Python reference: batch = single, layer numbering, token
// dropout, random() = make-model output, input checks.
#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/batching.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/random_init.h"

namespace turboesm {
namespace {

using model::Esm2Model;
using test::max_abs_diff;
constexpr double kBatchTol = 1e-5;

std::vector<int64_t> encode(const std::string& s) { return io::EsmTokenizer::instance().encode(s); }

TEST(Esm2, PaddedBatchMatchesSingleSequences) {
  auto m = Esm2Model::random(test::small_config(3), 42, 0.08);
  std::vector<std::vector<int64_t>> seqs = {encode("MKTAYIAKQR<mask>ISFVKSHFSRQ"), encode("M"),
                                            encode("XBUZOACDEF"), encode("GLK<mask><mask>VV")};
  std::vector<const std::vector<int64_t>*> ptrs;
  for (auto& s : seqs) ptrs.push_back(&s);
  auto pb = model::pad_batch(ptrs, io::EsmTokenizer::kPad);
  model::ForwardOptions fo;
  fo.need_logits = fo.need_contacts = true;
  fo.repr_layers = {0, 1, -1};
  auto batch = m->forward(pb.tokens, pb.attention_mask, fo);
  for (size_t i = 0; i < seqs.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    const int64_t T = static_cast<int64_t>(seqs[i].size()), L = T - 2;
    auto single = m->forward(at::tensor(seqs[i]).unsqueeze(0), at::Tensor(), fo);
    const int64_t b = static_cast<int64_t>(i);
    EXPECT_LE(max_abs_diff(batch.last_hidden_state[b].narrow(0, 0, T), single.last_hidden_state[0]),
              kBatchTol);
    EXPECT_LE(max_abs_diff(batch.logits[b].narrow(0, 0, T), single.logits[0]), kBatchTol);
    EXPECT_LE(max_abs_diff(batch.contacts[b].narrow(0, 0, L).narrow(1, 0, L), single.contacts[0]),
              kBatchTol);
    for (int k : {0, 1, 3}) {
      EXPECT_LE(
          max_abs_diff(batch.hidden_states.at(k)[b].narrow(0, 0, T), single.hidden_states.at(k)[0]),
          kBatchTol);
    }
  }
}

TEST(Esm2, LayerNumberingFollowsFairEsm) {
  auto m = Esm2Model::random(test::small_config(2), 1, 0.02);
  EXPECT_EQ(m->normalize_layer(-1), 2);
  EXPECT_EQ(m->normalize_layer(-3), 0);
  EXPECT_EQ(m->normalize_layer(2), 2);
  EXPECT_THROW(m->normalize_layer(3), Error);
  EXPECT_THROW(m->normalize_layer(-4), Error);
  model::ForwardOptions fo;
  fo.repr_layers = {-1, 0};
  auto out = m->forward(at::tensor(encode("MKV")).unsqueeze(0), at::Tensor(), fo);
  ASSERT_EQ(out.hidden_states.size(), 2u);
  // The last layer's representation is the final-normed state (HF hidden_states[-1], fair-esm).
  EXPECT_EQ(max_abs_diff(out.hidden_states.at(2), out.last_hidden_state), 0.0);
  // Layer 0 is the embedding output.
  EXPECT_EQ(max_abs_diff(out.hidden_states.at(0),
                         m->embed(at::tensor(encode("MKV")).unsqueeze(0), at::Tensor())),
            0.0);
}

TEST(Esm2, TokenDropoutZeroesMaskRowsAndRescales) {
  auto m = Esm2Model::random(test::small_config(1), 3, 0.02);
  at::Tensor ids = at::tensor(encode("MK<mask>V")).unsqueeze(0);  // 6 tokens, 1 mask
  at::Tensor e = m->embed(ids, at::Tensor());
  EXPECT_EQ(e[0][3].abs().max().item<float>(), 0.0f);
  const at::Tensor raw = m->weights().word_embeddings.index_select(0, ids[0]);
  const double scale = (1.0 - 0.15 * 0.8) / (1.0 - 1.0 / 6.0);
  EXPECT_LE(max_abs_diff(e[0][1], raw[1] * scale), 1e-6);
  // Padding rows are zero and do not count in the mask ratio.
  at::Tensor padded = at::cat({ids, at::full({1, 2}, 1, at::kLong)}, 1);
  at::Tensor mask = at::cat({at::ones({1, 6}, at::kBool), at::zeros({1, 2}, at::kBool)}, 1);
  at::Tensor ep = m->embed(padded, mask);
  EXPECT_LE(max_abs_diff(ep.narrow(1, 0, 6), e), 1e-7);
  EXPECT_EQ(ep[0][7].abs().max().item<float>(), 0.0f);
}

TEST(Esm2, RandomEqualsMakeModelOutput) {
  const auto cfg = test::small_config(2);
  const std::string dir = test::fresh_dir("esm2_random_vs_make");
  model::write_random_model(cfg, 9, 0.05, at::kFloat, dir, false);
  auto loaded = Esm2Model::load(dir);
  auto rnd = Esm2Model::random(cfg, 9, 0.05);
  EXPECT_EQ(max_abs_diff(loaded->weights().word_embeddings, rnd->weights().word_embeddings), 0.0);
  EXPECT_EQ(
      max_abs_diff(loaded->weights().layers[1].fc2_weight, rnd->weights().layers[1].fc2_weight),
      0.0);
  EXPECT_EQ(loaded->weights().word_embeddings[io::EsmTokenizer::kPad].abs().max().item<float>(),
            0.0f);
  // Different tensors get different draws; the std is the requested one.
  EXPECT_GT(max_abs_diff(rnd->weights().layers[0].q_weight, rnd->weights().layers[0].k_weight),
            0.0);
  EXPECT_NEAR(rnd->weights().layers[0].fc1_weight.std().item<double>(), 0.05, 0.005);
  // Different seeds differ.
  auto other = Esm2Model::random(cfg, 10, 0.05);
  EXPECT_GT(max_abs_diff(other->weights().word_embeddings, rnd->weights().word_embeddings), 0.0);
  // fp16 output loads, and refuses to overwrite without the flag.
  model::write_random_model(cfg, 9, 0.05, at::kHalf, dir, true);
  EXPECT_THROW(model::write_random_model(cfg, 9, 0.05, at::kHalf, dir, false), Error);
  auto half = Esm2Model::load(dir);
  EXPECT_LE(max_abs_diff(half->weights().word_embeddings, rnd->weights().word_embeddings), 1e-3);
}

TEST(Esm2, HalfAndBf16RunOnCpu) {
  for (auto dt : {at::kHalf, at::kBFloat16}) {
    model::LoadOptions lo;
    lo.dtype = dt;
    auto m = Esm2Model::random(test::small_config(2), 5, 0.08, lo);
    auto f32 = Esm2Model::random(test::small_config(2), 5, 0.08);
    model::ForwardOptions fo;
    fo.need_logits = fo.need_contacts = true;
    at::Tensor ids = at::tensor(encode("MKTAYIAKQRQISFV")).unsqueeze(0);
    auto a = m->forward(ids, at::Tensor(), fo);
    auto b = f32->forward(ids, at::Tensor(), fo);
    EXPECT_EQ(a.last_hidden_state.scalar_type(), dt);
    EXPECT_LE(max_abs_diff(a.last_hidden_state, b.last_hidden_state), 0.1) << c10::toString(dt);
    EXPECT_LE(max_abs_diff(a.contacts, b.contacts), 0.05) << c10::toString(dt);
  }
}

TEST(Esm2, ForwardRejectsBadInputs) {
  auto m = Esm2Model::random(test::small_config(1), 1, 0.02);
  auto expect_error = [](auto fn, const std::string& needle) {
    try {
      fn();
      FAIL() << "no error, expected one containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { m->forward(at::tensor({0, 5, 2}), at::Tensor()); }, "2-D");
  expect_error(
      [&] {
        m->forward(at::tensor({0, 40, 2}).unsqueeze(0), at::Tensor());
      },
      "token ids must be in [0, 33)");
  expect_error(
      [&] {
        m->forward(at::tensor({0, 5, 2}).unsqueeze(0), at::ones({1, 4}));
      },
      "attention_mask must match");
  expect_error([&] { m->forward(at::rand({1, 3}), at::Tensor()); }, "integer");
  model::ForwardOptions fo;
  fo.repr_layers = {7};
  expect_error(
      [&] {
        m->forward(at::tensor({0, 5, 2}).unsqueeze(0), at::Tensor(), fo);
      },
      "representation layer 7 out of range");
}

}  // namespace
}  // namespace turboesm
