// SPDX-License-Identifier: MIT
// Hard limits on untrusted input (issue 7): their documented defaults, and each one's boundary
// (at the limit accepted, one past it refused with a message naming the limit). Plus inputs the
// fuzzers found or that target recursion: they must fail cleanly, never crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "io_test_util.h"
#include "turboesm/io/fasta.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/model/config.h"

namespace turboesm::io {
namespace {

using ::testing::AllOf;
using testing::error_of;
using ::testing::HasSubstr;
using testing::safetensors_bytes;
using testing::ScratchDir;
using testing::write_bytes;

constexpr std::uint64_t kDefaultMaxHeaderBytes = 100ull << 20;  // the Rust crate's cap
constexpr std::size_t kDefaultMaxTensors = 1u << 20;
constexpr std::size_t kDefaultMaxRank = 8;
constexpr std::size_t kDefaultMaxFastaLine = 1u << 20;

const std::uint8_t* bytes_of(const std::string& s) {
  return reinterpret_cast<const std::uint8_t*>(s.data());
}

/// A header of `n` one-float tensors t0..t{n-1} and its data section.
std::string file_with_tensors(std::size_t n) {
  std::string h = "{";
  for (std::size_t i = 0; i < n; ++i) {
    h += (i ? "," : "") + std::string("\"t") + std::to_string(i) +
         "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" + std::to_string(4 * i) + "," +
         std::to_string(4 * i + 4) + "]}";
  }
  return safetensors_bytes(h + "}", std::string(4 * n, '\0'));
}

TEST(Limits, DefaultsAreTheDocumentedOnes) {
  const SafetensorsLimits l;
  EXPECT_EQ(l.max_header_bytes, kDefaultMaxHeaderBytes);
  EXPECT_EQ(l.max_tensors, kDefaultMaxTensors);
  EXPECT_EQ(l.max_rank, kDefaultMaxRank);
  const FastaOptions f;
  EXPECT_EQ(f.max_line_length, kDefaultMaxFastaLine);
  EXPECT_EQ(f.max_sequence_length, 0u) << "0 = unlimited; programs set their own";
}

TEST(Limits, HeaderSizeBoundary) {
  const std::string file = file_with_tensors(2);
  const std::uint64_t header_len = file.size() - 8 - 8;  // 8-byte length, 8 data bytes
  SafetensorsLimits l;
  l.max_header_bytes = header_len;
  EXPECT_EQ(parse_safetensors(bytes_of(file), file.size(), "f", l).tensors.size(), 2u);
  l.max_header_bytes = header_len - 1;
  EXPECT_THAT(error_of([&] { parse_safetensors(bytes_of(file), file.size(), "f", l); }),
              HasSubstr("f: header length " + std::to_string(header_len) +
                        " bytes exceeds the limit of " + std::to_string(header_len - 1)));
}

TEST(Limits, DefaultHeaderCapRefusesBeforeReading) {
  // A length one past the default cap in an 8-byte file: refused on the length alone.
  const std::string file = safetensors_bytes("", "", kDefaultMaxHeaderBytes + 1);
  EXPECT_THAT(error_of([&] { parse_safetensors(bytes_of(file), file.size(), "f"); }),
              HasSubstr("exceeds the limit of " + std::to_string(kDefaultMaxHeaderBytes)));
}

TEST(Limits, TensorCountBoundary) {
  constexpr std::size_t kTensors = 5;
  const std::string file = file_with_tensors(kTensors);
  SafetensorsLimits l;
  l.max_tensors = kTensors;
  EXPECT_EQ(parse_safetensors(bytes_of(file), file.size(), "f", l).tensors.size(), kTensors);
  l.max_tensors = kTensors - 1;
  EXPECT_THAT(error_of([&] { parse_safetensors(bytes_of(file), file.size(), "f", l); }),
              HasSubstr("header lists 5 tensors, more than the limit of 4"));
}

TEST(Limits, InMemoryParserAgreesWithFileReader) {
  ScratchDir dir;
  const std::string file = file_with_tensors(3);
  write_bytes(dir.file("x.safetensors"), file);
  const SafetensorsFile f(dir.file("x.safetensors"));
  const SafetensorsHeader h = parse_safetensors(bytes_of(file), file.size(), "mem");
  ASSERT_EQ(h.tensors.size(), f.tensors().size());
  EXPECT_EQ(h.data_offset, f.data_offset());
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    EXPECT_EQ(h.tensors[i].name, f.tensors()[i].name);
    EXPECT_EQ(h.tensors[i].begin, f.tensors()[i].begin);
    EXPECT_EQ(h.tensors[i].end, f.tensors()[i].end);
  }
}

TEST(Limits, FastaLineBoundaryAtDefault) {
  ScratchDir dir;
  const std::string at_limit = ">a\n" + std::string(kDefaultMaxFastaLine, 'A') + "\n";
  write_bytes(dir.file("ok.fasta"), at_limit);
  EXPECT_EQ(read_fasta(dir.file("ok.fasta"))[0].sequence.size(), kDefaultMaxFastaLine);
  write_bytes(dir.file("long.fasta"), ">a\n" + std::string(kDefaultMaxFastaLine + 1, 'A') + "\n");
  EXPECT_THAT(error_of([&] { read_fasta(dir.file("long.fasta")); }),
              AllOf(HasSubstr("long.fasta:2: "),
                    HasSubstr("line longer than " + std::to_string(kDefaultMaxFastaLine))));
}

TEST(Limits, SequenceLengthBoundary) {
  ScratchDir dir;
  constexpr std::size_t kMax = 50;
  FastaOptions opts;
  opts.max_sequence_length = kMax;
  // Over several lines, so the limit is on the record, not the line.
  write_bytes(dir.file("ok.fasta"), ">a\n" + std::string(kMax - 10, 'M') + "\nACDEFGHIKL\n");
  EXPECT_EQ(read_fasta(dir.file("ok.fasta"), opts)[0].sequence.size(), kMax);
  write_bytes(dir.file("long.fasta"), ">a\n" + std::string(kMax - 10, 'M') + "\nACDEFGHIKLM\n");
  EXPECT_THAT(error_of([&] { read_fasta(dir.file("long.fasta"), opts); }),
              AllOf(HasSubstr("record 'a'"), HasSubstr("longer than 50 residues")));
}

// Found by tests/fuzz/fuzz_safetensors: a number too large for a double made nlohmann throw
// out_of_range, which escaped as a foreign exception (programs printed no file name).
TEST(FuzzFound, NumberOverflowInHeaderIsAMalformedHeader) {
  const std::string file = safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,31e3082]}})", std::string(4, '\0'));
  EXPECT_THAT(
      error_of([&] { parse_safetensors(bytes_of(file), file.size(), "f.safetensors"); }),
      AllOf(HasSubstr("f.safetensors: malformed JSON header"), HasSubstr("number overflow")));
}

// Found by tests/fuzz/fuzz_config: 1.8e20 for an integer key was converted to int64 (undefined
// behaviour; UBSan report).
TEST(FuzzFound, ConfigIntegerOutOfRange) {
  auto j = model::EsmConfig::preset("tiny").to_json();
  j["num_attention_heads"] = 1.8446744073709552e20;
  EXPECT_THAT(error_of([&] { model::EsmConfig::from_json(j, "c.json"); }),
              HasSubstr("c.json: key 'num_attention_heads' must be an integer, got 1.8"));
  j["num_attention_heads"] = UINT64_MAX;
  EXPECT_THAT(error_of([&] { model::EsmConfig::from_json(j, "c.json"); }),
              HasSubstr("does not fit a 64-bit signed integer"));
}

TEST(FuzzFound, ConfigFileNumberOverflowNamesTheFile) {
  ScratchDir dir;
  write_bytes(dir.file("config.json"), R"({"hidden_size": 1e999})");
  EXPECT_THAT(error_of([&] { model::EsmConfig::from_file(dir.file("config.json")); }),
              AllOf(HasSubstr("config.json: malformed JSON"), HasSubstr("number overflow")));
}

// Deeply nested JSON where a tensor entry should be: must be refused without recursing through
// the nesting (a recursive dump for the error message would overflow the stack).
TEST(Limits, DeeplyNestedHeaderValueFailsCleanly) {
  constexpr std::size_t kDepth = 1'000'000;
  const std::string header = "{\"a\":" + std::string(kDepth, '[') + std::string(kDepth, ']') + "}";
  const std::string file = safetensors_bytes(header, "");
  EXPECT_THAT(error_of([&] { parse_safetensors(bytes_of(file), file.size(), "deep"); }),
              HasSubstr("deep: tensor 'a' must be an object {dtype, shape, data_offsets}"));
}

TEST(Limits, DeeplyNestedConfigValueFailsCleanly) {
  constexpr std::size_t kDepth = 1'000'000;
  ScratchDir dir;
  write_bytes(dir.file("config.json"),
              "{\"vocab_size\":" + std::string(kDepth, '[') + std::string(kDepth, ']') + "}");
  EXPECT_THAT(error_of([&] { model::EsmConfig::from_file(dir.file("config.json")); }),
              HasSubstr("config.json: key 'vocab_size' must be an integer, got an array of 1 "
                        "entries"));
}

}  // namespace
}  // namespace turboesm::io
