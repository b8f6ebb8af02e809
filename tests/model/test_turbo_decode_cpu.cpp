// SPDX-License-Identifier: MIT
// The fast CPU decode op (code-space scores, pair tables, histogram V, splits) against its scalar
// `_ref` twin (decode_ref of every token, exact softmax in double).
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/ops/turbo_decode.h"

namespace turboesm {
namespace {

using quant::NormMode;
using quant::QjlMode;

/// Fast vs ref: float LUT sums and a polynomial exp against double math; relative to max |ref|.
constexpr double kFastVsRefTol = 2e-4;

model::EsmConfig head_config(int heads, int d, int layers = 1) {
  model::EsmConfig c;
  c.hidden_size = heads * d;
  c.num_attention_heads = heads;
  c.num_hidden_layers = layers;
  c.intermediate_size = 2 * heads * d;
  return c;
}

/// A one-layer Turbo cache filled with random K/V, `lengths[b]` tokens per sequence (appended in
/// two chunks, so the second chunk starts mid-page).
struct Filled {
  std::unique_ptr<model::TurboKvCache> cache;
  std::vector<int64_t> lengths;
};

Filled fill_cache(int heads, int d, int bits, NormMode norm, QjlMode qjl,
                  const std::vector<int64_t>& lengths, uint64_t seed = 5) {
  const auto cfg = head_config(heads, d);
  const double norm_hint = std::sqrt(static_cast<double>(d));  // randn rows have ‖x‖ ≈ sqrt(d)
  auto spec = model::TurboCacheSpec::random(cfg, bits, bits, quant::RotationKind::kRandom, norm,
                                            qjl, seed, 0, norm_hint);
  const int B = static_cast<int>(lengths.size());
  Filled f;
  f.lengths = lengths;
  f.cache = std::make_unique<model::TurboKvCache>(
      model::CacheShape::of(cfg, B, c10::Device(c10::kCPU)), spec);
  int64_t T = 0;
  for (int64_t l : lengths) T = std::max(T, l);
  at::manual_seed(static_cast<int64_t>(seed));
  at::Tensor k = at::randn({B, heads, T, d}), v = at::randn({B, heads, T, d});
  std::vector<int64_t> first(B), second(B);
  for (int b = 0; b < B; ++b) {
    first[b] = lengths[b] / 3;
    second[b] = lengths[b] - first[b];
  }
  const int64_t T1 = std::max<int64_t>(1, *std::max_element(first.begin(), first.end()));
  f.cache->append(0, k.narrow(2, 0, T1), v.narrow(2, 0, T1), at::tensor(first, at::kLong));
  // Second chunk: rows first[b]..lengths[b] of each sequence, moved to the front.
  at::Tensor k2 = at::zeros_like(k), v2 = at::zeros_like(v);
  for (int b = 0; b < B; ++b) {
    if (second[b] == 0) continue;
    k2[b].narrow(1, 0, second[b]).copy_(k[b].narrow(1, first[b], second[b]));
    v2[b].narrow(1, 0, second[b]).copy_(v[b].narrow(1, first[b], second[b]));
  }
  f.cache->append(0, k2, v2, at::tensor(second, at::kLong));
  EXPECT_EQ(f.cache->lengths(), lengths);
  return f;
}

/// Runs the fast op (`splits` = 0: automatic; `simd` false: the portable kernel) and the
/// reference on the same params.
std::pair<at::Tensor, at::Tensor> run_both(const Filled& f, const at::Tensor& q, int splits,
                                           bool simd = true) {
  std::vector<int32_t> l32(f.lengths.begin(), f.lengths.end());
  at::Tensor lens = at::tensor(l32, at::kInt);
  quant::DecodeParams p = f.cache->decode_params(0);
  p.q_len = static_cast<int>(q.size(2));
  p.q = q.data_ptr<float>();
  p.lengths = lens.data_ptr<int32_t>();
  at::Tensor fast = at::full_like(q, 7.0f), ref = at::full_like(q, -7.0f);
  p.out = fast.data_ptr<float>();
  if (!simd) ::setenv("TURBOESM_DECODE_NO_SIMD", "1", 1);
  ops::turbo_decode_cpu(p, splits);
  ::unsetenv("TURBOESM_DECODE_NO_SIMD");
  p.out = ref.data_ptr<float>();
  ops::turbo_decode_ref(p);
  return {fast, ref};
}

void expect_close(const at::Tensor& fast, const at::Tensor& ref, const std::string& what) {
  ASSERT_FALSE(at::isnan(fast).any().item<bool>()) << what << ": NaN in the fast output";
  ASSERT_FALSE(at::isnan(ref).any().item<bool>()) << what << ": NaN in the reference";
  const double scale = std::max(1.0, ref.abs().max().item<double>());
  EXPECT_LE(test::max_abs_diff(fast, ref), kFastVsRefTol * scale) << what;
}

using Case = std::tuple<int, int, NormMode, QjlMode>;  // bits, head_dim, norm, qjl

class TurboDecodeCpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(TurboDecodeCpuTest, FastMatchesRefOnUnequalLengths) {
  const auto [bits, d, norm, qjl] = GetParam();
  // Lengths 1, 7, 64 (one full page), 1000 (split-worthy) and 0 (no tokens → zeros).
  Filled f = fill_cache(2, d, bits, norm, qjl, {1, 7, 64, 1000, 0});
  at::manual_seed(9);
  // Peaked attention: |q| large enough that a few keys dominate.
  at::Tensor q = at::randn({5, 2, 2, d}) * (2.0 / std::sqrt(static_cast<double>(d)));
  // The SIMD kernel (x86-64 with AVX2) and the portable one, with and without token splits.
  for (bool simd : {true, false}) {
    for (int splits : {0, 1, 3}) {
      auto [fast, ref] = run_both(f, q, splits, simd);
      const std::string what =
          std::string(simd ? "simd" : "portable") + ", splits " + std::to_string(splits);
      expect_close(fast, ref, what);
      EXPECT_EQ(fast[4].abs().max().item<float>(), 0.0f) << what << ": length-0 sequence";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    BitsDimsModes, TurboDecodeCpuTest,
    ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Values(16, 24, 32, 64, 128),
                       ::testing::Values(NormMode::kNone, NormMode::kToken),
                       ::testing::Values(QjlMode::kNone, QjlMode::kSign, QjlMode::kProd)),
    [](const ::testing::TestParamInfo<Case>& i) {
      return "b" + std::to_string(std::get<0>(i.param)) + "_d" +
             std::to_string(std::get<1>(i.param)) + "_norm" +
             quant::to_string(std::get<2>(i.param)) + "_qjl" +
             quant::to_string(std::get<3>(i.param));
    });

TEST(TurboDecodeCpu, AllEqualScoresGiveTheMeanOfV) {
  Filled f = fill_cache(2, 32, 3, NormMode::kToken, QjlMode::kNone, {300, 5});
  at::Tensor q = at::zeros({2, 2, 1, 32});  // every score 0
  auto [fast, ref] = run_both(f, q, 0);
  expect_close(fast, ref, "q = 0");
  // Uniform weights: the output is the mean of the dequantized V rows.
  at::Tensor vhat = f.cache->dequantized(0, /*key=*/false);
  at::Tensor mean0 = vhat[0].narrow(1, 0, 300).mean(1);  // [H, d]
  EXPECT_LE(test::max_abs_diff(fast[0].select(1, 0), mean0), 1e-5);
}

TEST(TurboDecodeCpu, ExtremeScoresStayFinite) {
  Filled f = fill_cache(2, 64, 3, NormMode::kToken, QjlMode::kSign, {2000, 65});
  at::manual_seed(2);
  for (double mag : {1e2, 1e4}) {  // scores up to ~1e5: one-hot softmax, no overflow
    at::Tensor q = at::randn({2, 2, 3, 64}) * mag;
    for (int splits : {1, 4}) {
      for (bool simd : {true, false}) {
        auto [fast, ref] = run_both(f, q, splits, simd);
        expect_close(fast, ref, "magnitude " + std::to_string(mag));
      }
    }
  }
}

TEST(TurboDecodeCpu, UsesTheIntraOpThreads) {
  // Regression: the library was once compiled without OpenMP, and ATen's header-only
  // parallel_for then ran every CPU loop of ours (decode op, cache encode) on one thread.
  const int saved = at::get_num_threads();
  at::set_num_threads(2);
  const int used = turboesm::ops::cpu_parallel_threads_used(64);
  at::set_num_threads(saved);
  EXPECT_EQ(used, 2) << "at::parallel_for inside libturboesm used " << used
                     << " thread(s) with at::set_num_threads(2)";
  at::set_num_threads(1);
  EXPECT_EQ(turboesm::ops::cpu_parallel_threads_used(64), 1);
  at::set_num_threads(saved);
}

TEST(TurboDecodeCpu, ThreadCountDoesNotChangeTheResult) {
  Filled f = fill_cache(1, 64, 3, NormMode::kToken, QjlMode::kNone, {4096});
  at::manual_seed(4);
  at::Tensor q = at::randn({1, 1, 1, 64}) * 0.25;
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  auto one = run_both(f, q, 4).first;
  at::set_num_threads(2);
  auto two = run_both(f, q, 4).first;
  at::set_num_threads(saved);
  // Same splits → same partials regardless of which thread ran them.
  EXPECT_EQ(test::max_abs_diff(one, two), 0.0);
}

TEST(TurboDecodeCpu, AutomaticSplitsOnlyForFewRowsAndLongCaches) {
  quant::DecodeParams p;
  p.batch = 1;
  p.heads = 1;
  p.q_len = 1;
  int32_t len = 4096;
  p.lengths = &len;
  EXPECT_GT(ops::turbo_decode_cpu_num_splits(p, 2), 1);
  len = 100;
  EXPECT_EQ(ops::turbo_decode_cpu_num_splits(p, 2), 1);
  len = 4096;
  p.heads = 20;
  EXPECT_EQ(ops::turbo_decode_cpu_num_splits(p, 2), 1);
}

TEST(TurboDecodeOp, TorchFacingChecksNameTheProblem) {
  Filled f = fill_cache(2, 16, 3, NormMode::kToken, QjlMode::kNone, {10});
  quant::DecodeParams p = f.cache->decode_params(0);
  at::Tensor lens = at::tensor(std::vector<int32_t>{10}, at::kInt);
  try {
    ops::turbo_decode(at::zeros({1, 2, 1, 32}), lens, p.k, p.v);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 32"), std::string::npos) << e.what();
  }
  try {
    ops::turbo_decode(at::zeros({1, 2, 1, 16}), lens.to(at::kLong), p.k, p.v);
    FAIL() << "no error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("int32"), std::string::npos) << e.what();
  }
  // Split counters of the wrong dtype or too few for batch · heads · q_len are refused.
  for (const at::Tensor& bad : {at::zeros({2}, at::kLong), at::zeros({1}, at::kInt)}) {
    try {
      ops::turbo_decode(at::zeros({1, 2, 1, 16}), lens, p.k, p.v, 1.0f, bad);
      FAIL() << "no error";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find("split_counters must be a contiguous int32"),
                std::string::npos)
          << e.what();
    }
  }
  // Lengths beyond the capacity are refused, not read out of bounds.
  at::Tensor too_long = at::tensor(std::vector<int32_t>{1 << 20}, at::kInt);
  EXPECT_THROW(ops::turbo_decode(at::zeros({1, 2, 1, 16}), too_long, p.k, p.v), Error);
  // The torch-facing op equals the raw CPU op.
  at::manual_seed(1);
  at::Tensor q = at::randn({1, 2, 3, 16});
  at::Tensor out = ops::turbo_decode(q, lens, p.k, p.v);
  auto both = run_both(f, q, 0);
  EXPECT_EQ(test::max_abs_diff(out, both.first), 0.0);
  // Valid counters are accepted and ignored on the CPU (same result, left untouched).
  const at::Tensor counters = at::zeros({6}, at::kInt);
  EXPECT_EQ(test::max_abs_diff(ops::turbo_decode(q, lens, p.k, p.v, 1.0f, counters), out), 0.0);
  EXPECT_EQ(counters.abs().sum().item<int64_t>(), 0);
}

}  // namespace
}  // namespace turboesm
