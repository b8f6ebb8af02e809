// SPDX-License-Identifier: MIT
// fp16 / bf16 conversions: exhaustive round trip, rounding ties, overflow, subnormals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

#include "turboesm/quant/half.h"

namespace tq = turboesm::quant;

TEST(Half, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = tq::half_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(tq::half_bits_to_float(tq::float_to_half_bits(f)))) << h;
      continue;
    }
    ASSERT_EQ(tq::float_to_half_bits(f), h) << "half bits " << h << " -> " << f;
  }
}

TEST(Half, KnownValuesAndRounding) {
  EXPECT_EQ(tq::float_to_half_bits(1.0f), 0x3C00);
  EXPECT_EQ(tq::float_to_half_bits(-2.0f), 0xC000);
  EXPECT_EQ(tq::float_to_half_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(tq::float_to_half_bits(65520.0f), 0x7C00);  // halfway to 2^16 rounds to even = inf
  EXPECT_EQ(tq::float_to_half_bits(1e6f), 0x7C00);
  EXPECT_EQ(tq::float_to_half_bits(5.9604644775390625e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(tq::float_to_half_bits(2.98e-08f), 0x0000);                // below half of it
  // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10 -> 1.
  EXPECT_EQ(tq::float_to_half_bits(1.0f + 0x1.0p-11f), 0x3C00);
  EXPECT_EQ(tq::float_to_half_bits(1.0f + 3 * 0x1.0p-11f), 0x3C02);
  EXPECT_TRUE(std::isnan(tq::half_bits_to_float(tq::float_to_half_bits(std::nanf("")))));
}

TEST(Half, RelativeErrorBound) {
  // Normal range: |half(x) - x| <= 2^-11 |x|.
  for (float x = 6.2e-5f; x < 6.5e4f; x *= 1.001f) {
    const float back = tq::half_bits_to_float(tq::float_to_half_bits(x));
    ASSERT_LE(std::abs(back - x), std::ldexp(std::abs(x), -11)) << x;
  }
}

TEST(Bf16, RoundTripAndRounding) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = tq::bf16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(tq::float_to_bf16_bits(f), b) << b;
  }
  EXPECT_EQ(tq::float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(tq::float_to_bf16_bits(1.0f + 0x1.0p-8f), 0x3F80);      // tie -> even
  EXPECT_EQ(tq::float_to_bf16_bits(1.0f + 3 * 0x1.0p-8f), 0x3F82);  // tie -> even (up)
  EXPECT_TRUE(std::isnan(tq::bf16_bits_to_float(tq::float_to_bf16_bits(std::nanf("")))));
}
