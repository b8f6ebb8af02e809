// SPDX-License-Identifier: MIT
// Bit packing: round trips for every width and length 0..257, fast == ref bytes, the documented
// bit layout, and errors on bad input.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "turboesm/quant/bitpack.h"

namespace tq = turboesm::quant;

namespace {

constexpr size_t kMaxLength = 257;

std::vector<uint8_t> random_codes(size_t n, int bits, uint64_t seed) {
  std::mt19937_64 eng(seed);
  std::vector<uint8_t> c(n);
  for (auto& v : c) v = static_cast<uint8_t>(eng() & ((1u << bits) - 1u));
  return c;
}

class BitpackTest : public ::testing::TestWithParam<int> {};

TEST_P(BitpackTest, RoundTripEveryLengthFastEqualsRef) {
  const int bits = GetParam();
  for (size_t n = 0; n <= kMaxLength; ++n) {
    const auto codes = random_codes(n, bits, 1000 * bits + n);
    const size_t bytes = tq::packed_size(n, bits);
    ASSERT_EQ(bytes, (n * bits + 7) / 8);
    // Guard bytes catch writes past the end.
    std::vector<uint8_t> ref(bytes + 4, 0xAB), fast(bytes + 4, 0xCD);
    tq::pack_codes_ref(codes.data(), n, bits, ref.data());
    tq::pack_codes(codes.data(), n, bits, fast.data());
    for (size_t b = 0; b < bytes; ++b) ASSERT_EQ(ref[b], fast[b]) << "n=" << n << " byte " << b;
    for (size_t b = bytes; b < bytes + 4; ++b) {
      ASSERT_EQ(ref[b], 0xAB) << "ref wrote past the end, n=" << n;
      ASSERT_EQ(fast[b], 0xCD) << "fast wrote past the end, n=" << n;
    }
    if (bytes > 0 && (n * bits) % 8 != 0) {  // unused high bits of the last byte are zero
      ASSERT_EQ(ref[bytes - 1] >> ((n * bits) % 8), 0) << "n=" << n;
    }
    std::vector<uint8_t> back_ref(n + 1, 0xEE), back_fast(n + 1, 0xEE);
    tq::unpack_codes_ref(ref.data(), n, bits, back_ref.data());
    tq::unpack_codes(ref.data(), n, bits, back_fast.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(back_ref[i], codes[i]) << "ref n=" << n << " i=" << i;
      ASSERT_EQ(back_fast[i], codes[i]) << "fast n=" << n << " i=" << i;
      ASSERT_EQ(tq::unpack_one(ref.data(), i, bits), codes[i])
          << "unpack_one n=" << n << " i=" << i;
    }
    ASSERT_EQ(back_fast[n], 0xEE) << "unpack wrote past the end, n=" << n;
  }
}

TEST_P(BitpackTest, UnpackLutMatchesRef) {
  const int bits = GetParam();
  const int levels = 1 << bits;
  std::vector<float> lut(levels);
  for (int c = 0; c < levels; ++c) lut[c] = 0.37f * c - 1.1f;
  for (size_t n : {size_t{0}, size_t{5}, size_t{64}, size_t{131}}) {
    const auto codes = random_codes(n, bits, 7 + n);
    std::vector<uint8_t> packed(tq::packed_size(n, bits) + 1);
    tq::pack_codes_ref(codes.data(), n, bits, packed.data());
    std::vector<float> ref(n), fast(n);
    tq::unpack_lut_ref(packed.data(), n, bits, lut.data(), 2.5f, ref.data());
    TURBOESM_DISPATCH_BITS(
        bits, BITS, { tq::unpack_lut<BITS>(packed.data(), n, lut.data(), 2.5f, fast.data()); });
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(ref[i], fast[i]) << "n=" << n << " i=" << i;
      ASSERT_EQ(ref[i], 2.5f * lut[codes[i]]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bits, BitpackTest, ::testing::Values(1, 2, 3, 4),
                         [](const auto& info) { return "bits" + std::to_string(info.param); });

TEST(Bitpack, ThreeBitLayoutIsDocumented24BitWord) {
  // Codes 0..7 in order: w = Σ i << 3i = 0b111'110'101'100'011'010'001'000 = 0xFAC688.
  const uint8_t codes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  uint8_t out[3];
  tq::pack_codes<3>(codes, 8, out);
  EXPECT_EQ(out[0], 0x88);
  EXPECT_EQ(out[1], 0xC6);
  EXPECT_EQ(out[2], 0xFA);
}

TEST(Bitpack, OneBitIsLsbFirst) {
  const uint8_t codes[10] = {1, 0, 0, 0, 0, 0, 0, 1, 0, 1};
  uint8_t out[2];
  tq::pack_codes<1>(codes, 10, out);
  EXPECT_EQ(out[0], 0x81);
  EXPECT_EQ(out[1], 0x02);
}

TEST(Bitpack, DensityIsExact) {
  EXPECT_EQ(tq::packed_size(64, 3), 24u);
  EXPECT_EQ(tq::packed_size(8, 3), 3u);
  EXPECT_EQ(tq::packed_size(9, 3), 4u);
  EXPECT_EQ(tq::packed_size(128, 4), 64u);
  EXPECT_EQ(tq::packed_size(0, 2), 0u);
}

TEST(Bitpack, ErrorsNameTheProblem) {
  const uint8_t bad[2] = {1, 9};
  uint8_t out[2];
  try {
    tq::pack_codes_ref(bad, 2, 3, out);
    FAIL() << "expected turboesm::Error";
  } catch (const turboesm::Error& e) {
    EXPECT_NE(std::string(e.what()).find("code 9 at index 1 does not fit in 3 bits"),
              std::string::npos)
        << e.what();
  }
  try {
    tq::pack_codes(bad, 2, 5, out);
    FAIL() << "expected turboesm::Error";
  } catch (const turboesm::Error& e) {
    EXPECT_EQ(std::string(e.what()), "unsupported bits: 5 (supported: 1, 2, 3, 4)");
  }
}

}  // namespace
