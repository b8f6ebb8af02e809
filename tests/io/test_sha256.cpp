// SPDX-License-Identifier: MIT
// SHA-256 against the FIPS 180-4 / NIST test vectors, streaming in odd chunks.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "turboesm/io/dtype.h"
#include "turboesm/io/sha256.h"

namespace turboesm::io {
namespace {

using testing::error_of;
using ::testing::HasSubstr;

TEST(Sha256, NistVectors) {
  EXPECT_EQ(Sha256::hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256::hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256::hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, StreamingEqualsOneShotAcrossBlockBoundaries) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>((i * 37) & 0xff);
  for (std::size_t len : {0u, 55u, 56u, 63u, 64u, 65u, 119u, 120u, 1000u}) {
    const std::string part = text.substr(0, len);
    for (std::size_t chunk : {1u, 3u, 63u, 64u, 100u}) {
      Sha256 h;
      for (std::size_t i = 0; i < part.size(); i += chunk) h.update(part.substr(i, chunk));
      EXPECT_EQ(h.hex_final(), Sha256::hex(part)) << "len " << len << " chunk " << chunk;
    }
  }
  Sha256 h;  // final() resets: the object can be reused
  h.update("abc");
  (void)h.final();
  h.update("abc");
  EXPECT_EQ(h.hex_final(), Sha256::hex("abc"));
}

TEST(Sha256, File) {
  testing::ScratchDir dir;
  testing::write_bytes(dir.file("f"), "abc");
  EXPECT_EQ(sha256_file_hex(dir.file("f")), Sha256::hex("abc"));
  EXPECT_THAT(error_of([] { sha256_file_hex("/nonexistent/f"); }),
              HasSubstr("cannot open /nonexistent/f"));
}

TEST(DType, NamesSizesAndParse) {
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::U8}) {
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  }
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_THAT(error_of([] { parse_dtype("float32"); }),
              HasSubstr("unsupported dtype 'float32' (supported: F32, F16, BF16, I64, I32, U8)"));
}

}  // namespace
}  // namespace turboesm::io
