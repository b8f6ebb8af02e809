// SPDX-License-Identifier: MIT
// QJL: the prod estimator is unbiased over S with the predicted variance; projections fast == ref.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "turboesm/quant/qjl.h"

namespace tq = turboesm::quant;

namespace {

constexpr double kBiasSigmas = 4.0;       // |mean - truth| allowed in standard errors
constexpr double kVarianceRelTol = 0.05;  // Monte Carlo accuracy of the variance (4000 draws)

TEST(Qjl, ProdEstimatorIsUnbiasedWithPredictedVariance) {
  const int d = 64, m = 64, draws = 4000;
  tq::Rng rng(1);
  std::vector<float> q(d), r(d), sq(m), sr(m);
  tq::fill_normal(rng, q.data(), d);
  tq::fill_normal(rng, r.data(), d);
  for (int j = 0; j < d; ++j) r[j] = 0.3f * r[j] + 0.2f * q[j];  // correlated, so <q, r> != 0
  double qr = 0.0, q2 = 0.0, r2 = 0.0;
  for (int j = 0; j < d; ++j) {
    qr += q[j] * r[j];
    q2 += q[j] * q[j];
    r2 += r[j] * r[j];
  }
  const float rn = static_cast<float>(std::sqrt(r2));
  std::vector<uint8_t> bits(m / 8);
  double sum = 0.0, sum2 = 0.0;
  for (int k = 0; k < draws; ++k) {
    const auto s = tq::make_qjl_projection(m, d, 100 + k);
    tq::qjl_project(s, q.data(), sq.data());
    tq::qjl_project(s, r.data(), sr.data());
    tq::pack_signs(sr.data(), m, bits.data());
    const double est = tq::kSqrtHalfPi / m * rn * tq::signed_sum(sq.data(), bits.data(), m);
    sum += est;
    sum2 += est * est;
  }
  const double mean = sum / draws, var = sum2 / draws - mean * mean;
  const double predicted = (M_PI / 2 * r2 * q2 - qr * qr) / m;
  EXPECT_NEAR(mean, qr, kBiasSigmas * std::sqrt(var / draws)) << "truth " << qr;
  EXPECT_NEAR(var, predicted, kVarianceRelTol * predicted * 2);
}

TEST(Qjl, ProjectionFastEqualsRefAndSignsPack) {
  const auto s = tq::make_qjl_projection(96, 24, 3);
  tq::Rng rng(4);
  std::vector<float> v(24), a(96), b(96);
  tq::fill_normal(rng, v.data(), 24);
  tq::qjl_project_ref(s, v.data(), a.data());
  tq::qjl_project(s, v.data(), b.data());
  EXPECT_EQ(a, b);
  std::vector<uint8_t> bits(12), bits_ref(12);
  tq::pack_signs(a.data(), 96, bits.data());
  std::vector<uint8_t> sgn(96);
  for (int i = 0; i < 96; ++i) sgn[i] = a[i] >= 0.0f;
  tq::pack_codes_ref(sgn.data(), 96, 1, bits_ref.data());
  EXPECT_EQ(bits, bits_ref);
  // signed_sum with all bits set is the plain sum.
  std::vector<uint8_t> ones(12, 0xFF);
  float plain = 0.0f;
  for (float x : a) plain += x;
  EXPECT_FLOAT_EQ(tq::signed_sum(a.data(), ones.data(), 96), plain);
}

TEST(Qjl, DequantIsSTransposeSigns) {
  const auto s = tq::make_qjl_projection(16, 8, 9);
  std::vector<uint8_t> bits = {0b10110010, 0b01001101};
  std::vector<float> z(8, 0.0f);
  tq::qjl_add_dequant(s, bits.data(), 0.5f, z.data());
  for (int j = 0; j < 8; ++j) {
    double e = 0.0;
    for (int i = 0; i < 16; ++i)
      e += 0.5 * (((bits[i / 8] >> (i % 8)) & 1) ? 1 : -1) * s.matrix[i * 8 + j];
    EXPECT_NEAR(z[j], e, 1e-5);
  }
}

TEST(Qjl, Validation) {
  EXPECT_THROW(tq::make_qjl_projection(12, 64, 0), turboesm::Error);
  const float r[4] = {-1.0f, 1.0f, -3.0f, 3.0f};
  EXPECT_FLOAT_EQ(tq::calibrate_sign_scale(r, 4), 2.0f);
  EXPECT_THROW(tq::calibrate_sign_scale(r, 0), turboesm::Error);
}

}  // namespace
