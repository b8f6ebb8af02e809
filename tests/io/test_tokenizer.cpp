// SPDX-License-Identifier: MIT
// EsmTokenizer against HF EsmTokenizer ids (fixture made by data/make_tokenizer_fixture.py).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "turboesm/io/tokenizer.h"

namespace turboesm::io {
namespace {

using testing::error_of;
using ::testing::HasSubstr;

nlohmann::json load_fixture() {
  std::ifstream in(std::string(TURBOESM_TEST_DATA_DIR) + "/io/data/tokenizer_fixture.json");
  EXPECT_TRUE(in.is_open()) << "missing tests/io/data/tokenizer_fixture.json";
  return nlohmann::json::parse(in);
}

TEST(EsmTokenizer, VocabularyMatchesHF) {
  const auto fx = load_fixture();
  const auto& tok = EsmTokenizer::instance();
  EXPECT_EQ(tok.vocab(), fx["vocab"].get<std::vector<std::string>>());
  EXPECT_EQ(tok.id("<cls>"), EsmTokenizer::kCls);
  EXPECT_EQ(tok.id("<pad>"), EsmTokenizer::kPad);
  EXPECT_EQ(tok.id("<eos>"), EsmTokenizer::kEos);
  EXPECT_EQ(tok.id("<unk>"), EsmTokenizer::kUnk);
  EXPECT_EQ(tok.id("<mask>"), EsmTokenizer::kMask);
  EXPECT_EQ(static_cast<int64_t>(tok.vocab().size()), EsmTokenizer::kVocabSize);
}

TEST(EsmTokenizer, EncodeMatchesHFIds) {
  const auto fx = load_fixture();
  const auto& tok = EsmTokenizer::instance();
  ASSERT_GE(fx["cases"].size(), 10u);
  for (const auto& c : fx["cases"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok.encode(text), c["ids"].get<std::vector<int64_t>>()) << "text: '" << text << "'";
  }
}

TEST(EsmTokenizer, LowercaseResiduesAreUppercasedButSpecialTokensKept) {
  const auto& tok = EsmTokenizer::instance();
  EXPECT_EQ(tok.encode("mk<mask>ay"), tok.encode("MK<mask>AY"));
  EXPECT_EQ(tok.encode("xbuzo"), tok.encode("XBUZO"));
  // "<MASK>" is not a special token: '<' is an unknown character.
  EXPECT_THAT(error_of([&] { tok.encode("A<MASK>"); }), HasSubstr("unknown residue '<'"));
}

TEST(EsmTokenizer, AddSpecialAndDecode) {
  const auto& tok = EsmTokenizer::instance();
  const auto ids = tok.encode("MK<mask>A", /*add_special=*/false);
  EXPECT_EQ(ids, (std::vector<int64_t>{20, 15, 32, 5}));
  EXPECT_EQ(tok.decode(ids), "MK<mask>A");
  EXPECT_EQ(tok.decode(tok.encode("ACD")), "<cls>ACD<eos>");
  EXPECT_EQ(tok.token(4), "L");
  EXPECT_THAT(error_of([&] { tok.token(33); }), HasSubstr("token id 33 is out of range [0, 33)"));
  EXPECT_THAT(error_of([&] { tok.decode({0, -1}); }), HasSubstr("token id -1"));
  EXPECT_THAT(error_of([&] { tok.id("J"); }), HasSubstr("unknown token 'J'"));
}

TEST(EsmTokenizer, UnknownCharacterNamesCharPositionAndRecord) {
  const auto& tok = EsmTokenizer::instance();
  const std::string msg = error_of([&] { tok.encode("AC<mask>DJK", true, false, "sp|P1/2"); });
  EXPECT_THAT(msg, HasSubstr("record 'sp|P1/2'"));
  EXPECT_THAT(msg, HasSubstr("unknown residue 'J' at position 5"));  // <mask> counts as one
  EXPECT_THAT(msg, HasSubstr("expected one of LAGVSERTIDPKQNFYMHWCXBUZO.-"));
  EXPECT_THAT(error_of([&] { tok.encode(std::string("A\0B", 3)); }), HasSubstr("byte 0x00"));
  // With unknown_to_unk each unknown character becomes one <unk>, keeping positions aligned.
  EXPECT_EQ(tok.encode("AJ*B", true, true),
            (std::vector<int64_t>{0, 5, EsmTokenizer::kUnk, EsmTokenizer::kUnk, 25, 2}));
}

}  // namespace
}  // namespace turboesm::io
