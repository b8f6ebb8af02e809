// SPDX-License-Identifier: MIT
// Codebooks: the analytic Lloyd-Max solution against the issue's optimum table and Max's Gaussian
// table; boundary encoding against brute-force nearest centroid; k-means on data, constant data and
// duplicated data.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "turboesm/quant/codebook.h"
#include "turboesm/quant/random.h"

namespace tq = turboesm::quant;

namespace {

// Issue 4 targets: d · (optimal per-coordinate MSE) for the exact coordinate density.
struct OptimumRow {
  int dim;
  double d_mse[4];
};
constexpr OptimumRow kOptimum[] = {{64, {0.3584, 0.1145, 0.03339, 0.00913}},
                                   {128, {0.3609, 0.1160, 0.03397, 0.00931}}};
// Gaussian limits (d → ∞) and Max (1960) Lloyd-Max levels for N(0, 1) (positive half).
constexpr double kGaussianDmse[4] = {0.3634, 0.1175, 0.03454, 0.00950};
const std::vector<std::vector<double>> kMaxGaussianLevels = {
    {0.7979},
    {0.4528, 1.5104},
    {0.2451, 0.7560, 1.3440, 2.1520},
    {0.1284, 0.3881, 0.6568, 0.9424, 1.2562, 1.6180, 2.0690, 2.7326}};
// The tables are printed to 4 significant digits: relative tolerance covering the rounding.
constexpr double kTableRelTol = 1e-3;
constexpr double kMaxTableAbsTol = 2e-3;  // absolute, on levels × sqrt(d), d = 4096
constexpr int kLargeDim = 4096;

class AnalyticCodebookTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(AnalyticCodebookTest, SortedSymmetricWithMidpointBoundaries) {
  const auto [bits, dim] = GetParam();
  const tq::Codebook cb = tq::analytic_codebook(dim, bits);
  ASSERT_EQ(cb.levels(), 1 << bits);
  for (int i = 0; i < cb.levels(); ++i) {
    EXPECT_TRUE(std::isfinite(cb.centroids[i]));
    EXPECT_FLOAT_EQ(cb.centroids[i], -cb.centroids[cb.levels() - 1 - i]);
    if (i > 0) EXPECT_LT(cb.centroids[i - 1], cb.centroids[i]);
    if (i + 1 < cb.levels()) {
      EXPECT_FLOAT_EQ(cb.boundaries[i], 0.5f * (cb.centroids[i] + cb.centroids[i + 1]));
    }
  }
  EXPECT_LT(cb.centroids.back(), 1.0f);
}

TEST_P(AnalyticCodebookTest, EncodeEqualsNearestCentroid) {
  const auto [bits, dim] = GetParam();
  const tq::Codebook cb = tq::analytic_codebook(dim, bits);
  tq::Rng rng(bits * 1000 + dim);
  for (int k = 0; k < 20000; ++k) {
    const float v = static_cast<float>(rng.normal() * 1.5 / std::sqrt(dim));
    int best = 0;
    for (int c = 1; c < cb.levels(); ++c)
      if (std::abs(v - cb.centroids[c]) < std::abs(v - cb.centroids[best])) best = c;
    uint32_t fast = 0, tree = 0;
    TURBOESM_DISPATCH_BITS(bits, BITS, {
      fast = tq::encode_value<BITS>(v, cb.boundaries.data());
      tree = tq::encode_value_tree<BITS>(v, cb.boundaries.data());
    });
    const uint32_t ref = tq::encode_value_ref(v, cb.boundaries.data(), bits);
    ASSERT_EQ(fast, ref) << v;
    ASSERT_EQ(tree, ref) << v;
    // Nearest centroid, up to exact ties (where encode picks the lower level).
    ASSERT_LE(std::abs(std::abs(v - cb.centroids[ref]) - std::abs(v - cb.centroids[best])), 1e-7f)
        << v;
  }
  // Every boundary exactly, just above it, NaN and ±inf: the binary search = the linear one.
  std::vector<float> edge = {std::nanf(""), std::numeric_limits<float>::infinity(),
                             -std::numeric_limits<float>::infinity()};
  for (float b : cb.boundaries) {
    edge.push_back(b);
    edge.push_back(std::nextafter(b, 2.0f));
    edge.push_back(std::nextafter(b, -2.0f));
  }
  for (float v : edge) {
    uint32_t tree = 0;
    TURBOESM_DISPATCH_BITS(bits, BITS,
                           { tree = tq::encode_value_tree<BITS>(v, cb.boundaries.data()); });
    EXPECT_EQ(tree, tq::encode_value_ref(v, cb.boundaries.data(), bits)) << v;
  }
  // Beyond the extreme boundaries and at a boundary exactly.
  EXPECT_EQ(tq::encode_value_ref(-1.0f, cb.boundaries.data(), bits), 0u);
  EXPECT_EQ(tq::encode_value_ref(1.0f, cb.boundaries.data(), bits), uint32_t(cb.levels() - 1));
  EXPECT_EQ(tq::encode_value_ref(cb.boundaries[0], cb.boundaries.data(), bits), 0u);
}

INSTANTIATE_TEST_SUITE_P(BitsDims, AnalyticCodebookTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(16, 24, 32, 64, 128)),
                         [](const auto& info) {
                           return "bits" + std::to_string(std::get<0>(info.param)) + "_dim" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(AnalyticCodebook, ExpectedMseMatchesIssueOptimumTable) {
  for (const auto& row : kOptimum)
    for (int bits = 1; bits <= 4; ++bits) {
      const double got =
          row.dim * tq::analytic_coordinate_mse(tq::analytic_codebook(row.dim, bits), row.dim);
      EXPECT_NEAR(got, row.d_mse[bits - 1], kTableRelTol * row.d_mse[bits - 1])
          << "dim " << row.dim << " bits " << bits;
    }
}

TEST(AnalyticCodebook, ConvergesToGaussianLloydMax) {
  for (int bits = 1; bits <= 4; ++bits) {
    const tq::Codebook cb = tq::analytic_codebook(kLargeDim, bits);
    const double s = std::sqrt(static_cast<double>(kLargeDim));
    const auto& levels = kMaxGaussianLevels[bits - 1];
    const int half = cb.levels() / 2;
    for (int i = 0; i < half; ++i)
      EXPECT_NEAR(cb.centroids[half + i] * s, levels[i], kMaxTableAbsTol)
          << "bits " << bits << " level " << i;
    const double dmse = kLargeDim * tq::analytic_coordinate_mse(cb, kLargeDim);
    EXPECT_NEAR(dmse, kGaussianDmse[bits - 1], kTableRelTol * kGaussianDmse[bits - 1])
        << "bits " << bits;
  }
}

TEST(AnalyticCodebook, CacheIsThreadSafe) {
  // Dims no other test uses, so the threads race on the first solve.
  std::vector<tq::Codebook> got(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back(
        [&got, i] { got[i] = tq::analytic_codebook(40 + 8 * (i % 2), 2 + i % 3); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    const auto fresh = tq::analytic_codebook(40 + 8 * (i % 2), 2 + i % 3);
    EXPECT_EQ(got[i].centroids, fresh.centroids) << i;
  }
}

TEST(AnalyticCodebook, SmallDimsDifferFromGaussian) {
  // The exact density matters at d = 16: its optimum is clearly below the Gaussian one.
  const double d16 = 16 * tq::analytic_coordinate_mse(tq::analytic_codebook(16, 2), 16);
  EXPECT_LT(d16, 0.98 * kGaussianDmse[1]);
}

TEST(AnalyticCodebook, TemplateAndRuntimeAgree) {
  const auto t = tq::lloyd_max_analytic<3>(64);
  const auto r = tq::analytic_codebook(64, 3);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(t.centroids[i], r.centroids[i]);
  EXPECT_EQ(tq::Codebook::from(t).boundaries, r.boundaries);
  EXPECT_THROW(tq::analytic_codebook(2, 3), turboesm::Error);
  EXPECT_THROW(tq::analytic_codebook(64, 5), turboesm::Error);
}

// ---------------------------------------------------------------------------------------------

// The Lloyd fixed point of an empirical distribution is ill-conditioned along a common shift of
// all levels (the MSE is flat in that direction), so 2e5 samples move every level by up to ~0.03
// together. We therefore check what Lloyd-Max guarantees: no worse empirical MSE than Max's
// Gaussian levels, that MSE near the Gaussian optimum, and shift-invariant level spacings.
constexpr double kKMeansMseRelTol = 0.01;
constexpr double kKMeansSpacingTol = 0.01;

double empirical_mse(const std::vector<float>& x, const tq::Codebook& cb) {
  double e = 0.0;
  for (float v : x) {
    const float c = cb.centroids[tq::encode_value_ref(v, cb.boundaries.data(), cb.bits)];
    e += (v - c) * (v - c);
  }
  return e / x.size();
}

TEST(KMeansCodebook, GaussianSamplesGiveMaxQuantizer) {
  tq::Rng rng(5);
  std::vector<float> x(200000);
  tq::fill_normal(rng, x.data(), x.size());
  const tq::Codebook cb = tq::kmeans_codebook(x.data(), x.size(), 3);
  std::vector<float> max_levels;
  for (int i = 3; i >= 0; --i) max_levels.push_back(static_cast<float>(-kMaxGaussianLevels[2][i]));
  for (int i = 0; i < 4; ++i) max_levels.push_back(static_cast<float>(kMaxGaussianLevels[2][i]));
  const tq::Codebook max_cb = tq::Codebook::from_centroids(3, max_levels);
  const double got = empirical_mse(x, cb);
  EXPECT_LE(got, empirical_mse(x, max_cb) * (1.0 + 1e-6));
  EXPECT_NEAR(got, kGaussianDmse[2], kKMeansMseRelTol * kGaussianDmse[2]);
  for (int i = 1; i < 8; ++i)
    EXPECT_NEAR(cb.centroids[i] - cb.centroids[i - 1], max_levels[i] - max_levels[i - 1],
                kKMeansSpacingTol)
        << "spacing " << i;
  // Deterministic.
  EXPECT_EQ(tq::kmeans_codebook(x.data(), x.size(), 3).centroids, cb.centroids);
}

TEST(KMeansCodebook, ConstantDataEncodesLosslessly) {
  const std::vector<float> x(1000, 0.75f);
  const tq::Codebook cb = tq::kmeans_codebook(x.data(), x.size(), 4);
  for (float c : cb.centroids) EXPECT_EQ(c, 0.75f);
  const uint32_t code = tq::encode_value_ref(0.75f, cb.boundaries.data(), 4);
  EXPECT_EQ(cb.centroids[code], 0.75f);
}

TEST(KMeansCodebook, DuplicatedDataWithFewDistinctValues) {
  std::vector<float> x;
  for (int i = 0; i < 300; ++i) x.push_back(static_cast<float>(i % 3) - 1.0f);  // -1, 0, 1
  const tq::Codebook cb = tq::kmeans_codebook(x.data(), x.size(), 3);
  for (int i = 1; i < 8; ++i) EXPECT_LE(cb.centroids[i - 1], cb.centroids[i]);
  for (float v : {-1.0f, 0.0f, 1.0f})
    EXPECT_EQ(cb.centroids[tq::encode_value_ref(v, cb.boundaries.data(), 3)], v);
  // Many duplicates but more distinct values than levels: still sorted and finite.
  std::vector<float> y;
  for (int i = 0; i < 5000; ++i)
    y.push_back(static_cast<float>((i * 7) % 11) * (i % 2 ? 1.0f : 0.0f));
  const tq::Codebook cy = tq::kmeans_codebook(y.data(), y.size(), 2);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(std::isfinite(cy.centroids[i]));
  for (int i = 1; i < 4; ++i) EXPECT_LE(cy.centroids[i - 1], cy.centroids[i]);
}

TEST(KMeansCodebook, RejectsEmptyAndNonFinite) {
  const float bad[3] = {0.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f};
  EXPECT_THROW(tq::kmeans_codebook(bad, 0, 2), turboesm::Error);
  try {
    tq::kmeans_codebook(bad, 3, 2);
    FAIL();
  } catch (const turboesm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sample 1 is not finite"), std::string::npos) << e.what();
  }
}

TEST(Codebook, FromCentroidsValidates) {
  EXPECT_THROW(tq::Codebook::from_centroids(2, {0.0f, 1.0f, 2.0f}), turboesm::Error);
  EXPECT_THROW(tq::Codebook::from_centroids(1, {1.0f, 0.0f}), turboesm::Error);
  const auto cb = tq::Codebook::from_centroids(1, {-1.0f, 3.0f});
  EXPECT_EQ(cb.boundaries[0], 1.0f);
}

}  // namespace
