// SPDX-License-Identifier: MIT
// Dispatch macros: every supported value reaches its constant; others throw a clear error.
#include <gtest/gtest.h>

#include <string>

#include "turboesm/quant/dispatch.h"

namespace tq = turboesm::quant;

namespace {
int bits_to_levels(int bits) {
  int out = 0;
  TURBOESM_DISPATCH_BITS(bits, BITS, { out = 1 << BITS; });
  return out;
}
int head_dim_echo(int d) {
  int out = 0;
  TURBOESM_DISPATCH_HEAD_DIM(d, HEAD_DIM, {
    static_assert(HEAD_DIM % 8 == 0, "head dims are multiples of 8");
    out = HEAD_DIM;
  });
  return out;
}
std::string error_of(void (*f)()) {
  try {
    f();
  } catch (const turboesm::Error& e) {
    return e.what();
  }
  return "no error";
}
}  // namespace

TEST(Dispatch, BitsReachTheirConstant) {
  for (int b : tq::kSupportedBits) EXPECT_EQ(bits_to_levels(b), 1 << b);
}

TEST(Dispatch, HeadDimsReachTheirConstant) {
  for (int d : tq::kSupportedHeadDims) {
    EXPECT_EQ(head_dim_echo(d), d);
    EXPECT_TRUE(tq::is_supported_head_dim(d));
  }
  EXPECT_FALSE(tq::is_supported_head_dim(40));
}

TEST(Dispatch, UnsupportedValuesThrowClearErrors) {
  EXPECT_EQ(error_of([] { head_dim_echo(40); }),
            "unsupported head_dim: 40 (supported: 16, 24, 32, 64, 128)");
  EXPECT_EQ(error_of([] { bits_to_levels(0); }), "unsupported bits: 0 (supported: 1, 2, 3, 4)");
  EXPECT_EQ(error_of([] { bits_to_levels(8); }), "unsupported bits: 8 (supported: 1, 2, 3, 4)");
}

TEST(Dispatch, ErrorCarriesFileAndLine) {
  try {
    head_dim_echo(12);
    FAIL();
  } catch (const turboesm::Error& e) {
    EXPECT_NE(e.where().find("test_dispatch.cpp:"), std::string::npos) << e.where();
  }
}
