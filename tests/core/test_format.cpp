// SPDX-License-Identifier: MIT
// Page format: bytes per token for every mode, region alignment and disjointness, bits per value.
#include <gtest/gtest.h>

#include "turboesm/quant/format.h"

namespace tq = turboesm::quant;
using tq::NormMode;
using tq::QjlMode;

namespace {

class FormatTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(FormatTest, EveryModeIsAlignedDisjointAndAccounted) {
  const auto [bits, dim] = GetParam();
  for (NormMode norm : {NormMode::kNone, NormMode::kToken})
    for (QjlMode qjl : {QjlMode::kNone, QjlMode::kSign, QjlMode::kProd})
      for (int m : {0, 32, 256}) {
        if (qjl != QjlMode::kProd && m != 0) continue;
        tq::check_page_layout_args(dim, bits, norm, qjl, m);
        const tq::PageLayout l = tq::make_page_layout(dim, bits, norm, qjl, m);
        const int mm = qjl == QjlMode::kNone ? 0 : qjl == QjlMode::kSign ? dim : (m ? m : dim);
        const int expect_bpt = dim * bits / 8 + (norm == NormMode::kToken ? 2 : 0) + mm / 8 +
                               (qjl == QjlMode::kProd ? 2 : 0);
        ASSERT_EQ(tq::bytes_per_token_per_head(dim, bits, norm, qjl, m), expect_bpt);
        ASSERT_EQ(l.code_bytes * 8, dim * bits);
        ASSERT_EQ(l.qjl_dim, mm);
        // Regions: 16-byte aligned, in order, large enough, page holds them all.
        const int T = l.page_tokens;
        int end = 0;
        auto region = [&](int offset, int size) {
          ASSERT_EQ(offset % tq::kRegionAlign, 0);
          ASSERT_GE(offset, end);
          end = offset + size;
        };
        region(l.codes_offset, T * l.code_bytes);
        if (norm == NormMode::kToken) region(l.norms_offset, T * 2);
        if (qjl != QjlMode::kNone) region(l.qjl_offset, T * l.qjl_bytes);
        if (qjl == QjlMode::kProd) region(l.rnorms_offset, T * 2);
        ASSERT_LE(end, l.page_bytes);
        ASSERT_EQ(l.page_bytes % tq::kRegionAlign, 0);
        ASSERT_LT(l.page_bytes - T * expect_bpt,
                  4 * tq::kRegionAlign);  // padding only at region ends
      }
}

INSTANTIATE_TEST_SUITE_P(BitsDims, FormatTest,
                         ::testing::Combine(::testing::Values(1, 2, 3, 4),
                                            ::testing::Values(16, 24, 32, 64, 128)),
                         [](const auto& info) {
                           return "bits" + std::to_string(std::get<0>(info.param)) + "_dim" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(Format, BitsPerValue) {
  EXPECT_EQ(tq::bits_per_value(64, 3, NormMode::kNone, QjlMode::kNone), 3.0);
  EXPECT_EQ(tq::bits_per_value(128, 3, NormMode::kNone, QjlMode::kNone), 3.0);
  EXPECT_EQ(tq::bits_per_value(24, 3, NormMode::kNone, QjlMode::kNone), 3.0);
  EXPECT_EQ(tq::bits_per_value(64, 3, NormMode::kToken, QjlMode::kNone), 3.25);
  EXPECT_EQ(tq::bits_per_value(64, 3, NormMode::kToken, QjlMode::kProd), 4.5);
}

TEST(Format, AccessorsAddressTheRightBytes) {
  const auto l = tq::make_page_layout(64, 3, NormMode::kToken, QjlMode::kProd);
  uint8_t page[4096];
  EXPECT_EQ(tq::token_codes(page, l, 5) - page, 5 * 24);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(tq::token_norm(page, l, 5)) - page, l.norms_offset + 10);
  EXPECT_EQ(tq::token_qjl(page, l, 5) - page, l.qjl_offset + 5 * 8);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(tq::token_rnorm(page, l, 5)) - page, l.rnorms_offset + 10);
}

TEST(Format, InvalidArgumentsAreNamed) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const turboesm::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(msg([] { tq::check_page_layout_args(64, 5, NormMode::kToken, QjlMode::kNone); }),
            "unsupported bits: 5 (supported: 1, 2, 3, 4)");
  EXPECT_NE(msg([] {
              tq::check_page_layout_args(20, 3, NormMode::kToken, QjlMode::kNone);
            }).find("got 20"),
            std::string::npos);
  EXPECT_NE(msg([] {
              tq::check_page_layout_args(64, 3, NormMode::kToken, QjlMode::kProd, 12);
            }).find("got 12"),
            std::string::npos);
  EXPECT_THROW(tq::parse_qjl_mode("unbiased"), turboesm::Error);
  EXPECT_EQ(tq::parse_norm_mode("token"), NormMode::kToken);
}

}  // namespace
