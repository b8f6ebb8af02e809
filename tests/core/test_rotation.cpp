// SPDX-License-Identifier: MIT
// Rotations: orthogonality of every kind and head dim, fast == ref, FWHT == dense matrix,
// determinism, Paley d = 24, PCA recovery, and refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "turboesm/quant/rotation.h"

namespace tq = turboesm::quant;

namespace {

constexpr double kOrthoTol = 1e-5;  // float storage of an orthogonal matrix
constexpr float kDenseVsFwhtTol = 1e-5f;

class RotationTest : public ::testing::TestWithParam<std::tuple<tq::RotationKind, int>> {};

TEST_P(RotationTest, OrthogonalAndFastEqualsRef) {
  const auto [kind, dim] = GetParam();
  const tq::Rotation r = tq::make_rotation(kind, dim, 42);
  ASSERT_EQ(r.dim, dim);
  EXPECT_LT(tq::orthogonality_error(r), kOrthoTol) << r.description;
  tq::Rng rng(dim);
  std::vector<float> x(dim), y_ref(dim), y_fast(dim), back(dim), back_ref(dim), dense(dim);
  for (int trial = 0; trial < 50; ++trial) {
    tq::fill_normal(rng, x.data(), dim);
    tq::rotate_ref(r, x.data(), y_ref.data());
    tq::rotate(r, x.data(), y_fast.data());
    tq::rotate_transpose_ref(r, y_ref.data(), back_ref.data());
    tq::rotate_transpose(r, y_ref.data(), back.data());
    for (int j = 0; j < dim; ++j) {
      ASSERT_EQ(y_ref[j], y_fast[j]) << "rotate fast != ref at " << j;
      ASSERT_EQ(back_ref[j], back[j]) << "rotate_transpose fast != ref at " << j;
      ASSERT_NEAR(back[j], x[j], 1e-5f * (1.0f + std::abs(x[j])));
    }
    // The fast path applies the same Π as the stored matrix.
    for (int i = 0; i < dim; ++i) {
      double s = 0.0;
      for (int j = 0; j < dim; ++j) s += static_cast<double>(r.matrix[i * dim + j]) * x[j];
      ASSERT_NEAR(y_fast[i], s, kDenseVsFwhtTol * (1.0 + std::abs(s)));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KindsDims, RotationTest,
                         ::testing::Combine(::testing::Values(tq::RotationKind::kIdentity,
                                                              tq::RotationKind::kRandom,
                                                              tq::RotationKind::kHadamard),
                                            ::testing::Values(16, 24, 32, 64, 128)),
                         [](const auto& info) {
                           return std::string(tq::to_string(std::get<0>(info.param))) + "_dim" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(Rotation, SeedsAreDeterministicAndDistinct) {
  const auto a = tq::make_random_rotation(32, 7), b = tq::make_random_rotation(32, 7),
             c = tq::make_random_rotation(32, 8);
  EXPECT_EQ(a.matrix, b.matrix);
  EXPECT_NE(a.matrix, c.matrix);
  const auto h1 = tq::make_hadamard_rotation(64, 7), h2 = tq::make_hadamard_rotation(64, 8);
  EXPECT_NE(h1.hadamard_signs, h2.hadamard_signs);
}

TEST(Rotation, HadamardEntriesHaveEqualMagnitude) {
  for (int dim : {16, 24, 32, 64, 128}) {
    const auto r = tq::make_hadamard_rotation(dim, 3);
    const float m = 1.0f / std::sqrt(static_cast<float>(dim));
    for (float v : r.matrix) ASSERT_NEAR(std::abs(v), m, 1e-7f) << "dim " << dim;
    EXPECT_EQ(r.has_fast_hadamard(), (dim & (dim - 1)) == 0) << "dim " << dim;
  }
  EXPECT_NE(tq::make_hadamard_rotation(24, 0).description.find("Paley-I order 24"),
            std::string::npos);
  // 40 = 2 * (19 + 1): Sylvester ⊗ Paley.
  EXPECT_LT(tq::orthogonality_error(tq::make_hadamard_rotation(40, 1)), kOrthoTol);
}

TEST(Rotation, HadamardRefusesImpossibleDims) {
  try {
    tq::make_hadamard_rotation(56, 0);  // 56 = 8 * 7, 7 - 1 = 6 is not prime = 3 mod 4
    FAIL();
  } catch (const turboesm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("got 56; use rotation 'random'"), std::string::npos)
        << e.what();
  }
}

TEST(Rotation, SvdRecoversPrincipalAxes) {
  // Data with variances 9, 4, 1, 0.25 along a known rotated basis.
  const int d = 4;
  const auto basis = tq::make_random_rotation(d, 11);
  const double sd[d] = {3.0, 2.0, 1.0, 0.5};
  tq::Rng rng(12);
  const size_t n = 50000;
  std::vector<float> x(n * d);
  for (size_t s = 0; s < n; ++s) {
    double coef[d];
    for (int k = 0; k < d; ++k) coef[k] = sd[k] * rng.normal();
    for (int j = 0; j < d; ++j) {
      double v = 5.0;  // mean offset, removed by centering
      for (int k = 0; k < d; ++k) v += coef[k] * basis.matrix[k * d + j];
      x[s * d + j] = static_cast<float>(v);
    }
  }
  std::vector<float> var;
  const auto r = tq::make_svd_rotation(x.data(), n, d, true, &var);
  EXPECT_LT(tq::orthogonality_error(r), kOrthoTol);
  for (int k = 0; k < d; ++k) {
    EXPECT_NEAR(var[k], sd[k] * sd[k], 0.03 * sd[k] * sd[k]) << k;
    double dotp = 0.0;
    int arg = 0;
    for (int j = 0; j < d; ++j) {
      dotp += r.matrix[k * d + j] * basis.matrix[k * d + j];
      if (std::abs(r.matrix[k * d + j]) > std::abs(r.matrix[k * d + arg])) arg = j;
    }
    EXPECT_GT(std::abs(dotp), 0.999) << "axis " << k;
    EXPECT_GT(r.matrix[k * d + arg], 0.0f) << "sign convention, axis " << k;
  }
}

TEST(Rotation, FromMatrixChecksOrthogonality) {
  const auto r = tq::make_random_rotation(16, 1);
  EXPECT_NO_THROW(tq::rotation_from_matrix(r.matrix.data(), 16, tq::RotationKind::kRandom));
  auto bad = r.matrix;
  bad[5] += 0.01f;
  try {
    tq::rotation_from_matrix(bad.data(), 16, tq::RotationKind::kRandom);
    FAIL();
  } catch (const turboesm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not orthogonal"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tq::parse_rotation_kind("qr"), turboesm::Error);
  EXPECT_EQ(tq::parse_rotation_kind("hadamard"), tq::RotationKind::kHadamard);
}

}  // namespace
