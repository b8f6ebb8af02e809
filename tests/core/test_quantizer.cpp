// SPDX-License-Identifier: MIT
// TurboQuantizer: fast and reference paths agree (codes and decoded values bit for bit, scores to
// rounding), code-space scores equal ⟨q, x̂⟩, the V accumulate/finish path equals Σ p x̂, and every
// bad input is refused with a clear message.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "turboesm/quant/quantizer.h"

namespace tq = turboesm::quant;
using tq::NormMode;
using tq::QjlMode;

namespace {

constexpr int kVectors = 2000;                // per case, across 32 pages
constexpr double kMaxTieMismatchRate = 1e-6;  // issue 4: allowed fast/ref code differences
constexpr float kScoreRelTol = 2e-5f;         // 4-accumulator sum vs sequential sum
constexpr float kDecodeTol = 1e-5f;           // score vs <q, decode(x)>, relative to ‖q‖‖x‖

struct Case {
  int bits, dim;
  NormMode norm;
  QjlMode qjl;
  tq::RotationKind rot;
  bool scale_mean;
};

std::string case_name(const Case& c) {
  return "b" + std::to_string(c.bits) + "_d" + std::to_string(c.dim) + "_" + tq::to_string(c.norm) +
         "_" + tq::to_string(c.qjl) + "_" + tq::to_string(c.rot) + (c.scale_mean ? "_scaled" : "");
}

tq::TurboQuantizer make_quantizer(const Case& c, uint64_t seed) {
  tq::QuantizerConfig cfg;
  cfg.dim = c.dim;
  cfg.bits = c.bits;
  cfg.norm = c.norm;
  cfg.qjl = c.qjl;
  tq::QuantizerParams p;
  p.rotation = tq::make_rotation(c.rot, c.dim, seed);
  if (c.norm == NormMode::kToken) {
    p.codebook = tq::analytic_codebook(c.dim, c.bits);
  } else {  // raw values: codebook from data of the same law as the test vectors
    tq::Rng rng(seed + 1);
    std::vector<float> s(20000);
    tq::fill_normal(rng, s.data(), s.size());
    p.codebook = tq::kmeans_codebook(s.data(), s.size(), c.bits);
  }
  if (c.scale_mean) {
    tq::Rng rng(seed + 2);
    for (int j = 0; j < c.dim; ++j) {
      p.scale.push_back(static_cast<float>(0.5 + rng.uniform()));
      p.mean.push_back(static_cast<float>(0.3 * rng.normal()));
    }
  }
  p.qjl_sign_scale = 0.02f;
  if (c.qjl == QjlMode::kProd) p.qjl_projection = tq::make_qjl_projection(c.dim, c.dim, seed + 3);
  return tq::TurboQuantizer(cfg, std::move(p));
}

class QuantizerTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantizerTest, FastAndRefPathsAgree) {
  const Case c = GetParam();
  const auto q = make_quantizer(c, 17);
  const auto& l = q.layout();
  std::vector<uint8_t> page_fast(l.page_bytes), page_ref(l.page_bytes);
  std::vector<float> x(c.dim), qv(c.dim), d_fast(c.dim), d_ref(c.dim);
  tq::Rng rng(99);
  tq::PreparedQuery pq;
  int64_t code_mismatch = 0, byte_mismatch = 0;
  for (int i = 0; i < kVectors; ++i) {
    const int t = i % l.page_tokens;
    tq::fill_normal(rng, x.data(), c.dim);
    tq::fill_normal(rng, qv.data(), c.dim);
    q.encode(x.data(), page_fast.data(), t);
    q.encode_ref(x.data(), page_ref.data(), t);
    for (int j = 0; j < c.dim; ++j)
      code_mismatch += tq::unpack_one(tq::token_codes(page_fast.data(), l, t), j, c.bits) !=
                       tq::unpack_one(tq::token_codes(page_ref.data(), l, t), j, c.bits);
    if (t == l.page_tokens - 1) {
      byte_mismatch += std::memcmp(page_fast.data(), page_ref.data(), l.page_bytes) != 0;
    }
    q.decode(page_fast.data(), t, d_fast.data());
    q.decode_ref(page_fast.data(), t, d_ref.data());
    for (int j = 0; j < c.dim; ++j)
      ASSERT_EQ(d_fast[j], d_ref[j]) << "decode i=" << i << " j=" << j;
    q.prepare_query(qv.data(), &pq);
    const float s_fast = q.score(pq, page_fast.data(), t),
                s_ref = q.score_ref(pq, page_fast.data(), t);
    double qn = 0.0, xn = 0.0, dot = 0.0;
    for (int j = 0; j < c.dim; ++j) {
      qn += qv[j] * qv[j];
      xn += x[j] * x[j];
      dot += static_cast<double>(qv[j]) * d_ref[j];
    }
    const float scale = static_cast<float>(std::sqrt(qn * xn)) + 1.0f;
    ASSERT_NEAR(s_fast, s_ref, kScoreRelTol * scale) << "i=" << i;
    ASSERT_NEAR(s_ref, dot, kDecodeTol * scale * 4) << "score != <q, decode(x)> at i=" << i;
  }
  // Same operation order: identical codes (the issue allows ties at <= 1e-6 of values).
  EXPECT_LE(code_mismatch, kMaxTieMismatchRate * kVectors * c.dim);
  EXPECT_EQ(code_mismatch, 0) << "fast/ref code differences (ties)";
  EXPECT_EQ(byte_mismatch, 0) << "pages differ byte-wise";
}

TEST_P(QuantizerTest, AccumulateFinishEqualsWeightedDecode) {
  const Case c = GetParam();
  const auto q = make_quantizer(c, 5);
  const auto& l = q.layout();
  std::vector<uint8_t> page(l.page_bytes);
  std::vector<float> x(c.dim), acc(c.dim, 0.0f), out(c.dim), dec(c.dim);
  std::vector<double> expect(c.dim, 0.0);
  tq::Rng rng(7);
  double wsum = 0.0;
  for (int t = 0; t < l.page_tokens; ++t) {
    tq::fill_normal(rng, x.data(), c.dim);
    q.encode(x.data(), page.data(), t);
    const float p = static_cast<float>(rng.uniform()) / l.page_tokens;
    wsum += p;
    q.accumulate(page.data(), t, p, acc.data());
    q.decode(page.data(), t, dec.data());
    for (int j = 0; j < c.dim; ++j) expect[j] += p * dec[j];
  }
  q.finish(acc.data(), static_cast<float>(wsum), out.data());
  for (int j = 0; j < c.dim; ++j) EXPECT_NEAR(out[j], expect[j], 1e-4) << j;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int bits : {1, 2, 3, 4})
    for (int dim : {16, 24, 32, 64, 128})
      for (QjlMode qjl : {QjlMode::kNone, QjlMode::kSign, QjlMode::kProd})
        cases.push_back({bits, dim, NormMode::kToken, qjl,
                         dim == 64 ? tq::RotationKind::kRandom : tq::RotationKind::kHadamard,
                         false});
  for (auto rot :
       {tq::RotationKind::kIdentity, tq::RotationKind::kRandom, tq::RotationKind::kHadamard}) {
    cases.push_back({3, 64, NormMode::kNone, QjlMode::kNone, rot, false});
    cases.push_back({3, 64, NormMode::kToken, QjlMode::kProd, rot, true});
    cases.push_back({2, 24, NormMode::kToken, QjlMode::kSign, rot, true});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Modes, QuantizerTest, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---------------------------------------------------------------------------------------------

tq::TurboQuantizer simple(int dim = 64) {
  return make_quantizer(
      {3, dim, NormMode::kToken, QjlMode::kNone, tq::RotationKind::kHadamard, false}, 1);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const turboesm::Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Quantizer, FourBitErrorNearOptimumAndSignModeLowersIt) {
  constexpr double kFourBitBound = 0.0125;  // optimum 0.009-0.0095 for isotropic data, d >= 16
  for (int dim : {16, 24, 32, 64, 128}) {
    Case c{4, dim, NormMode::kToken, QjlMode::kNone, tq::RotationKind::kHadamard, false};
    const auto q = make_quantizer(c, 3);
    tq::Rng rng(8);
    std::vector<float> cal(static_cast<size_t>(dim) * 2000);
    tq::fill_normal(rng, cal.data(), cal.size());
    tq::QuantizerConfig cfg = q.config();
    cfg.qjl = QjlMode::kSign;
    tq::QuantizerParams p = q.params();
    p.qjl_sign_scale = tq::calibrate_qjl_sign_scale(q, cal.data(), 2000);
    const tq::TurboQuantizer qs(cfg, p);
    auto rel_mse = [&](const tq::TurboQuantizer& qq) {
      std::vector<uint8_t> page(qq.layout().page_bytes);
      std::vector<float> x(dim), xh(dim);
      tq::Rng r2(9);
      double e = 0.0, n = 0.0;
      for (int i = 0; i < 2000; ++i) {
        tq::fill_normal(r2, x.data(), dim);
        qq.encode(x.data(), page.data(), 0);
        qq.decode(page.data(), 0, xh.data());
        for (int j = 0; j < dim; ++j) {
          e += (x[j] - xh[j]) * (x[j] - xh[j]);
          n += x[j] * x[j];
        }
      }
      return e / n;
    };
    const double plain = rel_mse(q), sign = rel_mse(qs);
    EXPECT_LT(plain, kFourBitBound) << "dim " << dim;
    EXPECT_LT(sign, plain) << "dim " << dim;
  }
}

TEST(Quantizer, ZeroVectorDecodesToZero) {
  const auto q = simple();
  std::vector<uint8_t> page(q.layout().page_bytes);
  std::vector<float> x(64, 0.0f), xh(64, 1.0f);
  q.encode(x.data(), page.data(), 3);
  q.decode(page.data(), 3, xh.data());
  for (float v : xh) EXPECT_EQ(v, 0.0f);
}

TEST(Quantizer, RefusesBadInput) {
  const auto q = simple();
  std::vector<uint8_t> page(q.layout().page_bytes);
  std::vector<float> x(64, 1.0f);
  x[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(error_of([&] { q.encode(x.data(), page.data(), 0); }).find("non-finite"),
            std::string::npos);
  x[7] = 1e5f;
  EXPECT_NE(error_of([&] { q.encode(x.data(), page.data(), 0); }).find("exceeds the fp16 range"),
            std::string::npos);
  x[7] = 1.0f;
  EXPECT_EQ(error_of([&] { q.encode(x.data(), page.data(), 64); }),
            "token slot 64 outside the page [0, 64)");
  EXPECT_EQ(error_of([&] { q.encode_ref(x.data(), page.data(), -1); }),
            "token slot -1 outside the page [0, 64)");
}

TEST(Quantizer, RefusesInconsistentParams) {
  tq::QuantizerConfig cfg;
  cfg.dim = 64;
  cfg.bits = 3;
  auto params = [] {
    tq::QuantizerParams p;
    p.rotation = tq::make_identity_rotation(64);
    p.codebook = tq::analytic_codebook(64, 3);
    return p;
  };
  EXPECT_NO_THROW(tq::TurboQuantizer(cfg, params()));
  {
    auto p = params();
    p.rotation = tq::make_identity_rotation(32);
    EXPECT_NE(
        error_of([&] { tq::TurboQuantizer(cfg, p); }).find("rotation must be [64, 64], got dim 32"),
        std::string::npos);
  }
  {
    auto p = params();
    p.codebook = tq::analytic_codebook(64, 2);
    EXPECT_NE(error_of([&] { tq::TurboQuantizer(cfg, p); }).find("codebook must have 8 levels"),
              std::string::npos);
  }
  {
    auto p = params();
    p.scale.assign(64, 1.0f);
    p.scale[3] = 0.0f;
    EXPECT_NE(error_of([&] { tq::TurboQuantizer(cfg, p); }).find("scale[3] must be finite and > 0"),
              std::string::npos);
  }
  {
    auto p = params();
    p.mean.assign(10, 0.0f);
    EXPECT_NE(error_of([&] { tq::TurboQuantizer(cfg, p); }).find("mean must be [64]"),
              std::string::npos);
  }
  {
    auto c2 = cfg;
    c2.qjl = QjlMode::kProd;
    auto p = params();
    p.qjl_projection = tq::make_qjl_projection(32, 64, 0);
    EXPECT_NE(error_of([&] {
                tq::TurboQuantizer(c2, p);
              }).find("qjl projection must be [64, 64], got [32, 64]"),
              std::string::npos);
  }
  {
    auto c2 = cfg;
    c2.dim = 20;
    EXPECT_NE(error_of([&] {
                tq::TurboQuantizer(c2, params());
              }).find("head_dim must be a positive multiple of 8"),
              std::string::npos);
  }
}

TEST(Quantizer, SignScaleCalibrationIsMeanAbsResidual) {
  const auto q = simple();
  tq::Rng rng(2);
  std::vector<float> x(64 * 500), r(64);
  tq::fill_normal(rng, x.data(), x.size());
  double s = 0.0;
  for (int i = 0; i < 500; ++i) {
    q.residual(x.data() + 64 * i, r.data());
    for (float v : r) s += std::abs(v);
  }
  EXPECT_NEAR(tq::calibrate_qjl_sign_scale(q, x.data(), 500), s / (64 * 500), 1e-7);
}

}  // namespace
