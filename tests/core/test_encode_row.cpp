// SPDX-License-Identifier: MIT
// The cache append's row encoder (quant/encode_row.h): the AVX2 twin writes the same bytes as the
// ref for every width, supported head dim and output combination (values on the boundaries, NaN
// and guard bytes included), and the ref equals TurboQuantizer's building blocks (codebook
// encode, pack_codes, pack_signs).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/encode_row.h"
#include "turboesm/quant/qjl.h"

namespace tq = turboesm::quant;

namespace {

/// Guard bytes after every output catch writes past the end.
constexpr int kGuard = 8;
constexpr uint8_t kGuardByte = 0xA5;

struct Row {
  std::vector<float> y, inv_scale;
};

/// Random rows plus rows that sit exactly on decision boundaries and a NaN.
std::vector<Row> rows_for(int d, const tq::Codebook& cb, uint64_t seed) {
  std::mt19937_64 eng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.5f, 2.0f);
  std::vector<Row> rows;
  for (int k = 0; k < 6; ++k) {
    Row r;
    r.y.resize(d);
    r.inv_scale.resize(d);
    for (int j = 0; j < d; ++j) {
      r.y[j] = nd(eng) * 0.3f;
      r.inv_scale[j] = 1.0f / ud(eng);
    }
    if (k == 1)  // exactly on the boundaries (z > b is false there)
      for (int j = 0; j < d; ++j) r.y[j] = cb.boundaries[j % cb.boundaries.size()];
    if (k == 2) r.y[d / 2] = std::numeric_limits<float>::quiet_NaN();
    if (k == 3) r.y[0] = -0.0f;
    rows.push_back(r);
  }
  return rows;
}

template <int BITS>
void check_avx2_equals_ref(int d) {
#ifdef TURBOESM_ENCODE_ROW_AVX2
  if (!tq::encode_row_avx2_supported()) GTEST_SKIP() << "no AVX2 + FMA on this CPU";
  const tq::Codebook cb = tq::analytic_codebook(d, BITS);
  const size_t code_bytes = tq::packed_size(static_cast<size_t>(d), BITS);
  int row_no = 0;
  for (const Row& row : rows_for(d, cb, 100 * BITS + d)) {
    for (int variant = 0; variant < 8; ++variant) {
      const bool scaled = variant & 1, with_r = variant & 2, with_s = variant & 4;
      const float inv_norm = (variant % 3 == 0) ? 1.0f : 0.7f;
      SCOPED_TRACE("row " + std::to_string(row_no) + " variant " + std::to_string(variant));
      std::vector<uint8_t> pr(code_bytes + kGuard, kGuardByte), pf = pr;
      std::vector<uint8_t> sr(d / 8 + kGuard, kGuardByte), sf = sr;
      std::vector<float> rr(d + kGuard, 9.0f), rf = rr;
      const float* is = scaled ? row.inv_scale.data() : nullptr;
      tq::encode_rotated_row_ref<BITS>(row.y.data(), d, inv_norm, is, cb.boundaries.data(),
                                       cb.centroids.data(), pr.data(), with_r ? rr.data() : nullptr,
                                       with_s ? sr.data() : nullptr);
      tq::encode_rotated_row_avx2<BITS>(row.y.data(), d, inv_norm, is, cb.boundaries.data(),
                                        cb.centroids.data(), pf.data(),
                                        with_r ? rf.data() : nullptr, with_s ? sf.data() : nullptr);
      ASSERT_EQ(pr, pf) << "packed codes differ";
      ASSERT_EQ(sr, sf) << "sign bits differ";
      for (int j = 0; j < d + kGuard; ++j) {
        if (std::isnan(rr[j])) {
          ASSERT_TRUE(std::isnan(rf[j])) << "residual " << j;
        } else {
          ASSERT_EQ(rr[j], rf[j]) << "residual " << j;
        }
      }
      for (int k = 0; k < kGuard; ++k) {
        ASSERT_EQ(pf[code_bytes + k], kGuardByte) << "AVX2 wrote past the packed codes";
        ASSERT_EQ(pr[code_bytes + k], kGuardByte) << "ref wrote past the packed codes";
      }
    }
    ++row_no;
  }
  std::vector<float> x(d);
  std::mt19937_64 eng(d);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (float& v : x) v = nd(eng);
  const double a = tq::sum_squares_f64_ref(x.data(), d), b = tq::sum_squares_f64_avx2(x.data(), d);
  EXPECT_NEAR(a, b, 1e-12 * a);
#else
  (void)d;
  GTEST_SKIP() << "the AVX2 row encoder is x86-64 only";
#endif
}

using Case = std::tuple<int, int>;  // bits, head_dim

class EncodeRowTest : public ::testing::TestWithParam<Case> {};

TEST_P(EncodeRowTest, Avx2WritesTheSameBytesAsRef) {
  const auto [bits, d] = GetParam();
  TURBOESM_DISPATCH_BITS(bits, BITS, { check_avx2_equals_ref<BITS>(d); });
}

TEST_P(EncodeRowTest, RefMatchesTheQuantizerBuildingBlocks) {
  const auto [bits, d] = GetParam();
  const tq::Codebook cb = tq::analytic_codebook(d, bits);
  const auto rows = rows_for(d, cb, 7 * bits + d);
  const Row& row = rows[0];
  std::vector<float> z(d), r(d);
  std::vector<uint8_t> codes(d);
  for (int j = 0; j < d; ++j) {
    z[j] = row.y[j] * 0.7f;
    z[j] = z[j] * row.inv_scale[j];
    codes[j] = static_cast<uint8_t>(tq::encode_value_ref(z[j], cb.boundaries.data(), bits));
    r[j] = z[j] - cb.centroids[codes[j]];
  }
  std::vector<uint8_t> want(tq::packed_size(d, bits)), got(want.size());
  tq::pack_codes_ref(codes.data(), d, bits, want.data());
  std::vector<uint8_t> want_s(d / 8), got_s(d / 8);
  tq::pack_signs(r.data(), d, want_s.data());
  TURBOESM_DISPATCH_BITS(bits, BITS, {
    tq::encode_rotated_row_ref<BITS>(row.y.data(), d, 0.7f, row.inv_scale.data(),
                                     cb.boundaries.data(), cb.centroids.data(), got.data(), nullptr,
                                     got_s.data());
  });
  EXPECT_EQ(want, got);
  EXPECT_EQ(want_s, got_s);
}

INSTANTIATE_TEST_SUITE_P(BitsDims, EncodeRowTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(16, 24, 32, 64, 128)),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return "b" + std::to_string(std::get<0>(i.param)) + "_d" +
                                  std::to_string(std::get<1>(i.param));
                         });

TEST(EncodeRow, RefRejectsAnOversizedRow) {
  std::vector<float> y(tq::kMaxHeadDim + 8, 0.0f), b = {0.0f}, c = {-1.0f, 1.0f};
  std::vector<uint8_t> out(y.size());
  EXPECT_THROW(tq::encode_rotated_row_ref<1>(y.data(), static_cast<int>(y.size()), 1.0f, nullptr,
                                             b.data(), c.data(), out.data(), nullptr, nullptr),
               turboesm::Error);
}

}  // namespace
