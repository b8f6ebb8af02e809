// SPDX-License-Identifier: MIT
// Issue 4 targets: TurboQuant distortion figures measured by the quantstat experiment
// (include/turboesm/quant/distortion.h), N >= 1e5 where the issue asks for it.
#include <gtest/gtest.h>

#include <cmath>

#include "turboesm/quant/distortion.h"

namespace tq = turboesm::quant;

namespace {

// Optimum d_mse for the exact coordinate density (issue 4), bits 1..4.
double optimum_d_mse(int dim, int bits) {
  static const double k64[4] = {0.3584, 0.1145, 0.03339, 0.00913};
  static const double k128[4] = {0.3609, 0.1160, 0.03397, 0.00931};
  return (dim == 64 ? k64 : k128)[bits - 1];
}

constexpr int64_t kMseVectors = 100000;      // issue: N >= 1e5
constexpr double kMseRelTol = 0.015;         // issue: within 1.5% of the optimum
constexpr double kShrinkSigmas = 5.0;        // mse mode: slope below 1 by more than 5 SE
constexpr double kUnbiasedSigmas = 3.0;      // prod mode: |slope - 1| < 3 SE
constexpr double kProdVarianceSlack = 1.05;  // d_prod·d <= 1.05 · (π/2) · d_mse(bits)
constexpr double kOutlierGain = 5.0;         // rotation lowers outlier MSE >= 5x vs identity
constexpr int64_t kPairs = 4000;
constexpr int64_t kProdVectors = 50000;

using Param = std::tuple<int, int, tq::RotationKind>;  // bits, dim, rotation

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return "bits" + std::to_string(std::get<0>(info.param)) + "_dim" +
         std::to_string(std::get<1>(info.param)) + "_" + tq::to_string(std::get<2>(info.param));
}

class MseTarget : public ::testing::TestWithParam<Param> {};

TEST_P(MseTarget, DmseWithinOnePointFivePercentOfOptimum) {
  const auto [bits, dim, rot] = GetParam();
  tq::DistortionConfig c;
  c.bits = bits;
  c.dim = dim;
  c.rotation = rot;
  c.n = kMseVectors;
  c.pairs = 0;
  c.measure_d_prod = false;
  c.seed = 1;
  const auto r = tq::measure_distortion(c);
  EXPECT_NEAR(r.d_mse, optimum_d_mse(dim, bits), kMseRelTol * optimum_d_mse(dim, bits));
  // The solver's own expected value agrees with the table too.
  EXPECT_NEAR(r.d_mse_optimum, optimum_d_mse(dim, bits), 1e-3 * optimum_d_mse(dim, bits));
  EXPECT_EQ(r.bits_per_value, bits + 16.0 / dim);  // codes + fp16 norm
}

INSTANTIATE_TEST_SUITE_P(
    Issue4, MseTarget,
    ::testing::Combine(::testing::Values(1, 2, 3, 4), ::testing::Values(64, 128),
                       ::testing::Values(tq::RotationKind::kRandom, tq::RotationKind::kHadamard)),
    param_name);

class ShrinkageTarget : public ::testing::TestWithParam<Param> {};

TEST_P(ShrinkageTarget, MseModeSlopeIsBelowOne) {
  const auto [bits, dim, rot] = GetParam();
  tq::DistortionConfig c;
  c.bits = bits;
  c.dim = dim;
  c.rotation = rot;
  c.n = 1;
  c.pairs = rot == tq::RotationKind::kRandom ? kPairs / 4 : kPairs;  // fresh Haar QR per pair
  c.seed = 2;
  const auto r = tq::measure_distortion(c);
  EXPECT_LT(r.ip_slope, 1.0 - kShrinkSigmas * r.ip_slope_se)
      << "slope " << r.ip_slope << " se " << r.ip_slope_se;
  // ... and shrinks by about d_mse (the issue's "about 1 - d_mse").
  EXPECT_NEAR(1.0 - r.ip_slope, r.d_mse_optimum, 0.25 * r.d_mse_optimum + 4 * r.ip_slope_se);
}

INSTANTIATE_TEST_SUITE_P(Issue4, ShrinkageTarget,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Values(64),
                                            ::testing::Values(tq::RotationKind::kRandom,
                                                              tq::RotationKind::kHadamard)),
                         param_name);

class ProdTarget : public ::testing::TestWithParam<Param> {};

TEST_P(ProdTarget, UnbiasedWithBoundedVariance) {
  const auto [bits, dim, rot] = GetParam();
  tq::DistortionConfig c;
  c.bits = bits;
  c.dim = dim;
  c.rotation = rot;
  c.qjl = tq::QjlMode::kProd;
  c.n = kProdVectors;
  c.pairs = kPairs;
  c.seed = 3;
  const auto r = tq::measure_distortion(c);
  EXPECT_LT(std::abs(r.ip_slope - 1.0), kUnbiasedSigmas * r.ip_slope_se)
      << "slope " << r.ip_slope << " se " << r.ip_slope_se;
  EXPECT_LE(r.d_prod_times_dim, kProdVarianceSlack * (M_PI / 2) * optimum_d_mse(dim, bits));
  EXPECT_EQ(r.qjl_dim, dim);
  EXPECT_EQ(r.bits_per_value, bits + 1 + 32.0 / dim);  // codes + QJL bit + 2 fp16 norms
}

INSTANTIATE_TEST_SUITE_P(Issue4, ProdTarget,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(tq::RotationKind::kHadamard)),
                         param_name);

TEST(Distortion, ProdUnbiasedWithHaarRotation) {
  tq::DistortionConfig c;
  c.bits = 2;
  c.dim = 64;
  c.rotation = tq::RotationKind::kRandom;
  c.qjl = tq::QjlMode::kProd;
  c.n = 2000;
  c.pairs = kPairs / 4;
  c.seed = 4;
  const auto r = tq::measure_distortion(c);
  EXPECT_LT(std::abs(r.ip_slope - 1.0), kUnbiasedSigmas * r.ip_slope_se)
      << r.ip_slope << " se " << r.ip_slope_se;
}

TEST(Distortion, RotationTamesOutlierChannels) {
  tq::DistortionConfig c;
  c.bits = 3;
  c.dim = 64;
  c.outliers = 4;
  c.n = 20000;
  c.pairs = 0;
  c.measure_d_prod = false;
  c.rotation = tq::RotationKind::kIdentity;
  const double identity = tq::measure_distortion(c).d_mse;
  for (auto rot : {tq::RotationKind::kRandom, tq::RotationKind::kHadamard}) {
    c.rotation = rot;
    const double rotated = tq::measure_distortion(c).d_mse;
    EXPECT_GE(identity / rotated, kOutlierGain)
        << tq::to_string(rot) << ": " << rotated << " vs identity " << identity;
  }
}

TEST(Distortion, SignModeLowersMseButBiasesInnerProducts) {
  tq::DistortionConfig c;
  c.bits = 2;
  c.dim = 32;
  c.rotation = tq::RotationKind::kHadamard;
  c.n = 20000;
  c.pairs = kPairs;
  c.qjl = tq::QjlMode::kSign;
  const auto s = tq::measure_distortion(c);
  EXPECT_LT(s.d_mse, 0.8 * s.d_mse_codes);
  EXPECT_GT(std::abs(s.ip_slope - 1.0), kShrinkSigmas * s.ip_slope_se) << s.ip_slope;
  EXPECT_GT(s.qjl_sign_scale, 0.0f);
}

TEST(Distortion, DeterministicAndValidated) {
  tq::DistortionConfig c;
  c.n = 500;
  c.pairs = 50;
  const auto a = tq::measure_distortion(c), b = tq::measure_distortion(c);
  EXPECT_EQ(a.d_mse, b.d_mse);
  EXPECT_EQ(a.ip_slope, b.ip_slope);
  c.rotation = tq::RotationKind::kSvd;
  EXPECT_THROW(tq::measure_distortion(c), turboesm::Error);
  c.rotation = tq::RotationKind::kRandom;
  c.outliers = 65;
  EXPECT_THROW(tq::measure_distortion(c), turboesm::Error);
}

}  // namespace
