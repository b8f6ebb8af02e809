// SPDX-License-Identifier: MIT
// Π_V folded into W_V / W_O (model/value_fold.h): the folded model is the same model up to one
// rounding of the new weights, the folded spec stores what the original stored, the cache marks
// the identity V rotation and skips it, and bad specs are refused.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/model/value_fold.h"
#include "turboesm/ops/turbo_decode.h"

namespace turboesm {
namespace {

using model::CacheKind;
using model::Session;

at::Tensor row(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).unsqueeze(0); }
std::vector<int64_t> encode(const std::string& s) { return io::EsmTokenizer::instance().encode(s); }

std::shared_ptr<const model::Esm2Model> tiny_model(int layers = 3) {
  return model::Esm2Model::random(test::small_config(layers), 7, 0.08);
}

/// A random 3-bit spec, with V means (so that the fold's μ' = Π μ is exercised) when `centered`.
model::TurboCacheSpec spec_for(const model::EsmConfig& c, bool centered, uint64_t seed = 23) {
  model::TurboCacheSpec s = model::TurboCacheSpec::random(
      c, 3, 3, quant::RotationKind::kRandom, quant::NormMode::kToken, quant::QjlMode::kNone, seed);
  if (centered) {
    s.centered = true;
    at::Generator g = at::detail::createCPUGenerator(seed);
    for (auto& l : s.layers) {
      l.k.mean = 0.05 * at::randn({c.num_attention_heads, c.head_dim()}, g);
      l.v.mean = 0.05 * at::randn({c.num_attention_heads, c.head_dim()}, g);
    }
  }
  return s;
}

Session make_session(const std::shared_ptr<const model::Esm2Model>& m, CacheKind kind,
                     const model::TurboCacheSpec* spec = nullptr) {
  return Session(m, model::make_kv_cache(kind, m->config(), 1, m->device(), spec));
}

TEST(ValueFold, SpecHasIdentityValueRotationsAndRotatedMeans) {
  const model::EsmConfig c = test::small_config(2);
  const model::TurboCacheSpec s = spec_for(c, true);
  const model::TurboCacheSpec f = model::fold_value_spec(s);
  f.validate(c);
  ASSERT_EQ(f.layers.size(), s.layers.size());
  for (size_t l = 0; l < s.layers.size(); ++l) {
    EXPECT_TRUE(model::is_identity_rotation(f.layers[l].v.rotation)) << l;
    EXPECT_FALSE(model::is_identity_rotation(f.layers[l].k.rotation)) << l;
    EXPECT_TRUE(at::equal(f.layers[l].k.rotation, s.layers[l].k.rotation)) << l;
    EXPECT_TRUE(at::equal(f.layers[l].k.mean, s.layers[l].k.mean)) << l;
    EXPECT_TRUE(at::equal(f.layers[l].v.centroids, s.layers[l].v.centroids)) << l;
    // μ' = Π μ per head.
    const at::Tensor expect = at::matmul(s.layers[l].v.rotation.to(at::kDouble),
                                         s.layers[l].v.mean.to(at::kDouble).unsqueeze(-1))
                                  .squeeze(-1);
    EXPECT_LT(test::max_abs_diff(f.layers[l].v.mean, expect), 1e-7) << l;
  }
  EXPECT_NE(f.description.find("folded"), std::string::npos) << f.description;
}

TEST(ValueFold, FoldedModelIsTheSameModel) {
  auto m = tiny_model();
  const model::TurboCacheSpec s = spec_for(m->config(), false);
  const model::ValueFold f = model::fold_value_rotation(*m, s);
  const at::Tensor tokens = row(encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV"));
  model::ForwardOptions o;
  o.need_logits = true;
  const model::ForwardOutput a = m->forward(tokens, at::Tensor(), o);
  const model::ForwardOutput b = f.model->forward(tokens, at::Tensor(), o);
  // fp32 weights rounded once from fp64 products: ~1e-7 relative per weight.
  EXPECT_LT(test::max_abs_diff(a.logits, b.logits), 1e-4 * a.logits.abs().max().item<double>());
  // The projections changed where the fold says and nowhere else.
  const auto& w0 = m->weights().layers[0];
  const auto& w1 = f.model->weights().layers[0];
  const int64_t E = m->config().hidden_size;
  EXPECT_TRUE(at::equal(w0.qkv_weight.narrow(0, 0, 2 * E), w1.qkv_weight.narrow(0, 0, 2 * E)));
  EXPECT_FALSE(at::equal(w0.v_weight, w1.v_weight));
  EXPECT_FALSE(at::equal(w0.o_weight, w1.o_weight));
  EXPECT_TRUE(at::equal(w0.o_bias, w1.o_bias));
  EXPECT_TRUE(at::equal(w0.fc1_weight, w1.fc1_weight));
  // The fold's views alias its fused projection, as the loader's do.
  EXPECT_EQ(w1.v_weight.data_ptr(), w1.qkv_weight.narrow(0, 2 * E, E).data_ptr());
  // The source model is untouched (its tensors are shared, not written).
  const model::ForwardOutput a2 = m->forward(tokens, at::Tensor(), o);
  EXPECT_TRUE(at::equal(a.logits, a2.logits));
}

// Turbo sessions: the folded pair (model, spec) decodes like the original pair. Codes may differ
// where the fold's rounding moves a value across a decision boundary, so the difference between
// the two must be far below the quantization error itself (measured against an FP32 cache).
TEST(ValueFold, FoldedSessionDecodesLikeTheOriginal) {
  auto m = tiny_model();
  for (const bool centered : {false, true}) {
    const model::TurboCacheSpec s = spec_for(m->config(), centered);
    const model::ValueFold f = model::fold_value_rotation(*m, s);
    const auto seq = encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQF");
    const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 30);
    const at::Tensor rest = row(std::vector<int64_t>(seq.begin() + 30, seq.end()));
    Session exact = make_session(m, CacheKind::kFp32);
    Session orig = make_session(m, CacheKind::kTurbo, &s);
    Session fold = make_session(f.model, CacheKind::kTurbo, &f.spec);
    exact.prefill(row(prefix));
    orig.prefill(row(prefix));
    fold.prefill(row(prefix));
    const at::Tensor he = exact.append(rest), ho = orig.append(rest), hf = fold.append(rest);
    const double quant_err = (ho - he).norm().item<double>();
    const double fold_diff = (hf - ho).norm().item<double>();
    EXPECT_GT(quant_err, 0.0);
    EXPECT_LT(fold_diff, 0.05 * quant_err)
        << (centered ? "centered" : "plain") << ": fold moved the output by " << fold_diff
        << " vs the quantization error " << quant_err;
    // Layer 0's V codes: the same inputs, the values rounded differently only.
    const auto& oc = dynamic_cast<const model::TurboKvCache&>(orig.cache());
    const auto& fc = dynamic_cast<const model::TurboKvCache&>(fold.cache());
    const at::Tensor vo = oc.dequantized(0, false), vf = fc.dequantized(0, false);
    // The folded cache returns values in the rotated basis; rotate the original's back into it.
    const at::Tensor rot = s.layers[0].v.rotation;  // [H, d, d]
    const at::Tensor vo_rot = at::matmul(vo, rot.transpose(-1, -2).unsqueeze(0));
    const double close = (vo_rot - vf).abs().lt(1e-4).to(at::kDouble).mean().item<double>();
    EXPECT_GT(close, 0.999) << "share of layer-0 V values decoded alike";
    // The cache knows its V rotation is the identity, and labels the quantizer so.
    EXPECT_EQ(fc.quantizer(0, 0, false).params().rotation.kind, quant::RotationKind::kIdentity);
    EXPECT_NE(fc.quantizer(0, 0, true).params().rotation.kind, quant::RotationKind::kIdentity);
  }
}

// The CPU op's identity skip (HeadConstantsView::rotation_identity) against the matrix product it
// replaces: the same bits.
TEST(ValueFold, CpuDecodeIdentitySkipEqualsTheMatrix) {
  auto m = tiny_model(2);
  const model::ValueFold f = model::fold_value_rotation(*m, spec_for(m->config(), true));
  Session s = make_session(f.model, CacheKind::kTurbo, &f.spec);
  s.prefill(row(encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRV")));
  const auto& cache = dynamic_cast<const model::TurboKvCache&>(s.cache());
  quant::DecodeParams p = cache.decode_params(1);
  ASSERT_TRUE(p.v.constants.rotation_identity);
  ASSERT_FALSE(p.k.constants.rotation_identity);
  const int64_t H = f.model->config().num_attention_heads, d = f.model->config().head_dim();
  at::Generator g = at::detail::createCPUGenerator(5);
  const at::Tensor q = at::randn({1, H, 1, d}, g);
  const std::vector<int32_t> lengths{static_cast<int32_t>(s.lengths()[0])};
  at::Tensor out_skip = at::empty({1, H, 1, d}), out_matrix = at::empty({1, H, 1, d});
  p.batch = 1;
  p.q_len = 1;
  p.q = q.data_ptr<float>();
  p.lengths = lengths.data();
  p.sm_scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.out = out_skip.data_ptr<float>();
  ops::turbo_decode_cpu(p);
  p.v.constants.rotation_identity = false;
  p.out = out_matrix.data_ptr<float>();
  ops::turbo_decode_cpu(p);
  EXPECT_EQ(std::memcmp(out_skip.data_ptr<float>(), out_matrix.data_ptr<float>(),
                        out_skip.numel() * sizeof(float)),
            0);
  EXPECT_GT(out_skip.abs().max().item<double>(), 0.0);
}

// The CPU append's identity skip (y = x − μ without the batched GEMM) writes the V codes the
// reference encoder (TurboQuantizer::encode, row by row, set_reference_encode) writes: the same
// decoded values in every layer, centered or not.
TEST(ValueFold, CpuAppendIdentitySkipEqualsTheReferenceEncoder) {
  auto m = tiny_model(2);
  for (const bool centered : {false, true}) {
    const model::ValueFold f = model::fold_value_rotation(*m, spec_for(m->config(), centered));
    Session fast = make_session(f.model, CacheKind::kTurbo, &f.spec);
    Session ref = make_session(f.model, CacheKind::kTurbo, &f.spec);
    dynamic_cast<model::TurboKvCache&>(ref.cache()).set_reference_encode(true);
    const at::Tensor toks = row(encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRV"));
    fast.prefill(toks);
    ref.prefill(toks);
    const auto& fc = dynamic_cast<const model::TurboKvCache&>(fast.cache());
    const auto& rc = dynamic_cast<const model::TurboKvCache&>(ref.cache());
    for (int l = 0; l < fc.num_layers(); ++l) {
      const at::Tensor a = fc.dequantized(l, false), b = rc.dequantized(l, false);
      EXPECT_TRUE(at::equal(a, b)) << (centered ? "centered" : "plain") << ", layer " << l;
      EXPECT_GT(a.abs().max().item<double>(), 0.0);
    }
  }
}

TEST(ValueFold, BadSpecsAreRefused) {
  auto m = tiny_model(2);
  model::TurboCacheSpec wrong_layers = spec_for(test::small_config(3), false);
  try {
    model::fold_value_rotation(*m, wrong_layers);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer"), std::string::npos) << e.what();
  }
  model::TurboCacheSpec no_rotation = spec_for(m->config(), false);
  no_rotation.layers[1].v.rotation = at::Tensor();
  try {
    model::fold_value_spec(no_rotation);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1's V rotation must be [heads, d, d]"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace turboesm
