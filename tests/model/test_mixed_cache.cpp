// SPDX-License-Identifier: MIT
// MixedKvCache (per-layer formats): every layer answers exactly as a cache of its own format,
// kv_bytes sums the layers' own rates, clear() + append starts over, Session decoding through a
// mixed cache equals decoding through the plain caches it combines, errors name the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/mixed_cache.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

using model::CacheKind;

/// The mixed cache runs the same sub-cache code on the same inputs: equal up to float reorder.
constexpr double kSameTol = 1e-6;

model::EsmConfig cfg3() {
  model::EsmConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 2;
  c.num_hidden_layers = 3;
  c.intermediate_size = 64;
  return c;
}

model::TurboCacheSpec spec_for(const model::EsmConfig& c) {
  return model::TurboCacheSpec::random(c, 3, 3, quant::RotationKind::kHadamard,
                                       quant::NormMode::kNone, quant::QjlMode::kSign, 5, 0,
                                       std::sqrt(double(c.head_dim())));
}

TEST(MixedKvCache, EachLayerAnswersAsItsOwnFormat) {
  const model::EsmConfig c = cfg3();
  const model::TurboCacheSpec spec = spec_for(c);
  const c10::Device cpu(c10::kCPU);
  const std::map<int, CacheKind> dense = {{0, CacheKind::kInt8}, {2, CacheKind::kFp32}};
  auto mixed = model::make_mixed_kv_cache(c, 2, cpu, spec, dense);
  auto turbo = model::make_kv_cache(CacheKind::kTurbo, c, 2, cpu, &spec);
  auto int8 = model::make_kv_cache(CacheKind::kInt8, c, 2, cpu);
  auto fp32 = model::make_kv_cache(CacheKind::kFp32, c, 2, cpu);
  const model::KvCache* want[3] = {int8.get(), turbo.get(), fp32.get()};
  at::manual_seed(11);
  const int H = c.num_attention_heads, d = static_cast<int>(c.head_dim());
  // Two chunks with unequal per-sequence counts (padded rows ignored), crossing the 64-token
  // first capacity so that the sub-caches regrow.
  for (const std::vector<int64_t>& counts : {std::vector<int64_t>{50, 37}, {30, 41}}) {
    const int64_t T = 52;
    for (int l = 0; l < 3; ++l) {
      const at::Tensor k = at::randn({2, H, T, d}), v = at::randn({2, H, T, d});
      const at::Tensor n = at::tensor(counts, at::kLong);
      mixed->append(l, k, v, n);
      for (auto* ref : {turbo.get(), int8.get(), fp32.get()}) ref->append(l, k, v, n);
    }
  }
  const at::Tensor q = at::randn({2, H, 3, d});
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(mixed->lengths(l), (std::vector<int64_t>{80, 78}));
    const double diff = test::max_abs_diff(mixed->attend(l, q), want[l]->attend(l, q));
    EXPECT_LE(diff, kSameTol) << "layer " << l;
  }
  const auto* mc = dynamic_cast<const model::MixedKvCache*>(mixed.get());
  ASSERT_NE(mc, nullptr);
  EXPECT_EQ(mc->layer_kind(0), CacheKind::kInt8);
  EXPECT_EQ(mc->layer_kind(1), CacheKind::kTurbo);
  EXPECT_EQ(mc->layer_kind(2), CacheKind::kFp32);
  // The layers really differ (the test would pass vacuously if every layer were one format).
  EXPECT_GT(test::max_abs_diff(turbo->attend(1, q), fp32->attend(1, q)), 1e-3);
}

TEST(MixedKvCache, LayersUnderAnotherTurboSpec) {
  // Layer 1 quantized with a second spec (4-bit, no QJL): it answers as that spec's cache, the
  // other layers as the first spec's, and kv_bytes counts each layer's own rate.
  const model::EsmConfig c = cfg3();
  const model::TurboCacheSpec spec = spec_for(c);
  const model::TurboCacheSpec other =
      model::TurboCacheSpec::random(c, 4, 4, quant::RotationKind::kRandom, quant::NormMode::kNone,
                                    quant::QjlMode::kNone, 9, 0, std::sqrt(double(c.head_dim())));
  const c10::Device cpu(c10::kCPU);
  auto mixed = model::make_mixed_kv_cache(c, 1, cpu, spec, {{0, CacheKind::kInt8}}, {{1, &other}});
  auto a = model::make_kv_cache(CacheKind::kTurbo, c, 1, cpu, &spec);
  auto b = model::make_kv_cache(CacheKind::kTurbo, c, 1, cpu, &other);
  const int H = c.num_attention_heads, d = static_cast<int>(c.head_dim());
  at::manual_seed(3);
  for (int l = 0; l < 3; ++l) {
    const at::Tensor k = at::randn({1, H, 20, d}), v = at::randn({1, H, 20, d});
    mixed->append(l, k, v, at::Tensor());
    a->append(l, k, v, at::Tensor());
    b->append(l, k, v, at::Tensor());
  }
  const at::Tensor q = at::randn({1, H, 2, d});
  EXPECT_LE(test::max_abs_diff(mixed->attend(1, q), b->attend(1, q)), kSameTol);
  EXPECT_LE(test::max_abs_diff(mixed->attend(2, q), a->attend(2, q)), kSameTol);
  EXPECT_GT(test::max_abs_diff(a->attend(1, q), b->attend(1, q)), 1e-4);
  EXPECT_EQ(
      mixed->kv_bytes(),
      20 * H * (2 * (d + 2) + other.bytes_per_token_per_head() + spec.bytes_per_token_per_head()));
  const auto* mc = dynamic_cast<const model::MixedKvCache*>(mixed.get());
  ASSERT_NE(mc, nullptr);
  EXPECT_NE(mc->summary().find("dense layers 0:int8; layers 1: K 4-bit"), std::string::npos)
      << mc->summary();
  try {
    model::MixedKvCache(model::CacheShape::of(c, 1, cpu), spec, {{1, CacheKind::kInt8}},
                        {{1, &other}});
    FAIL() << "layer 1 both dense and Turbo accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1 is both dense and under another Turbo spec"),
              std::string::npos)
        << e.what();
  }
}

TEST(MixedKvCache, KvBytesSumTheLayersOwnRates) {
  const model::EsmConfig c = cfg3();
  const model::TurboCacheSpec spec = spec_for(c);
  const int H = c.num_attention_heads, d = static_cast<int>(c.head_dim());
  model::MixedKvCache m(model::CacheShape::of(c, 1, c10::Device(c10::kCPU)), spec,
                        {{0, CacheKind::kInt8}});
  const at::Tensor x = at::randn({1, H, 10, d});
  for (int l = 0; l < 3; ++l) m.append(l, x, x, at::Tensor());
  const int64_t int8_rate = 2 * (d + 2);  // K and V: d int8 codes + one fp16 scale each
  const int64_t turbo_rate = spec.bytes_per_token_per_head();
  EXPECT_EQ(m.layer_bytes_per_token_per_head(0), int8_rate);
  EXPECT_EQ(m.layer_bytes_per_token_per_head(1), turbo_rate);
  EXPECT_EQ(m.kv_bytes(), 10 * H * (int8_rate + 2 * turbo_rate));
  // Through the base-class interface too (Session::kv_bytes calls it).
  const model::KvCache& base = m;
  EXPECT_EQ(base.kv_bytes(), m.kv_bytes());
  EXPECT_GT(m.allocated_bytes(), 0);
}

TEST(MixedKvCache, ClearStartsOver) {
  const model::EsmConfig c = cfg3();
  const model::TurboCacheSpec spec = spec_for(c);
  const int H = c.num_attention_heads, d = static_cast<int>(c.head_dim());
  const c10::Device cpu(c10::kCPU);
  auto mixed = model::make_mixed_kv_cache(c, 1, cpu, spec, {{0, CacheKind::kFp32}});
  auto fp32 = model::make_kv_cache(CacheKind::kFp32, c, 1, cpu);
  mixed->append(0, at::randn({1, H, 7, d}), at::randn({1, H, 7, d}), at::Tensor());
  mixed->clear();
  const at::Tensor k = at::randn({1, H, 5, d}), v = at::randn({1, H, 5, d});
  mixed->append(0, k, v, at::Tensor());
  fp32->append(0, k, v, at::Tensor());
  const at::Tensor q = at::randn({1, H, 2, d});
  EXPECT_EQ(mixed->lengths(0), std::vector<int64_t>{5});
  EXPECT_LE(test::max_abs_diff(mixed->attend(0, q), fp32->attend(0, q)), kSameTol);
}

TEST(MixedKvCache, SessionThroughMixedCacheEqualsItsParts) {
  // Every layer dense fp32: a Session must give the FP32 cache's hidden states. Layer 0 int8 and
  // layer 1 Turbo must differ from FP32 (the formats are really used) and stay finite.
  auto m = model::Esm2Model::random(test::small_config(2), 7, 0.08);
  const model::TurboCacheSpec spec = spec_for(m->config());
  const std::vector<int64_t> ids = io::EsmTokenizer::instance().encode("MKTAYIAKQRQISFVKSHFSRQ");
  const at::Tensor prefix =
      at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + 12), at::kLong).unsqueeze(0);
  auto run = [&](std::unique_ptr<model::KvCache> cache) {
    model::Session s(m, std::move(cache));
    s.prefill(prefix);
    std::vector<at::Tensor> hs;
    for (size_t i = 12; i < ids.size(); ++i)
      hs.push_back(s.append(at::full({1, 1}, ids[i], at::kLong))[0][0]);
    return at::stack(hs);
  };
  const c10::Device cpu(c10::kCPU);
  const at::Tensor ref = run(model::make_kv_cache(CacheKind::kFp32, m->config(), 1, cpu));
  const at::Tensor all_dense = run(model::make_mixed_kv_cache(
      m->config(), 1, cpu, spec, {{0, CacheKind::kFp32}, {1, CacheKind::kFp32}}));
  EXPECT_LE(test::max_abs_diff(all_dense, ref), 1e-5);
  const at::Tensor mixed =
      run(model::make_mixed_kv_cache(m->config(), 1, cpu, spec, {{0, CacheKind::kInt8}}));
  EXPECT_GT(test::max_abs_diff(mixed, ref), 1e-4);
  EXPECT_TRUE(at::isfinite(mixed).all().item<bool>());
}

TEST(MixedKvCache, ErrorsNameTheProblem) {
  const model::EsmConfig c = cfg3();
  const model::TurboCacheSpec spec = spec_for(c);
  const auto shape = model::CacheShape::of(c, 1, c10::Device(c10::kCPU));
  try {
    model::MixedKvCache(shape, spec, {{3, CacheKind::kInt8}});
    FAIL() << "layer 3 of 3 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dense layer 3 out of range [0, 3)"), std::string::npos)
        << e.what();
  }
  try {
    model::MixedKvCache(shape, spec, {{0, CacheKind::kTurbo}});
    FAIL() << "turbo accepted as a dense format";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be fp32, fp16, int8 or fp8, got turbo"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(model::parse_layer_list(""), std::vector<int>{});
  EXPECT_EQ(model::parse_layer_list("0,2"), (std::vector<int>{0, 2}));
  try {
    model::parse_layer_list("0,x");
    FAIL() << "'x' accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x' is not a non-negative layer index"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(model::parse_layer_list("-1"), Error);
}

}  // namespace
}  // namespace turboesm
