// SPDX-License-Identifier: MIT
// FASTA reader: accepted variants and one test per error, each checking the message names the
// file, the line, the record and what was expected.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "turboesm/io/fasta.h"

namespace turboesm::io {
namespace {

using ::testing::AllOf;
using testing::error_of;
using ::testing::HasSubstr;
using testing::ScratchDir;
using testing::write_bytes;

class Fasta : public ::testing::Test {
 protected:
  std::string make(const std::string& text) {
    const std::string path = dir_.file("in.fasta");
    write_bytes(path, text);
    return path;
  }
  std::string error_for(const std::string& text, FastaOptions opts = {}) {
    const std::string path = make(text);
    return error_of([&] { read_fasta(path, opts); });
  }
  ScratchDir dir_;
};

TEST_F(Fasta, MultiLineLowercaseStarCrlfSlashIds) {
  const auto recs =
      read_fasta(make("\n>sp|P69905|HBA_HUMAN/1-142 Hemoglobin subunit alpha  \r\n"
                      "mvlspadktn\r\n"
                      "VKAAwgkv*\r\n"
                      "\r\n"
                      ">seq2\n"
                      "  M K <mask> V  \n"
                      ">x/y/z\n"
                      "B.-\n"));
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].id, "sp|P69905|HBA_HUMAN/1-142");
  EXPECT_EQ(recs[0].description, "Hemoglobin subunit alpha");
  EXPECT_EQ(recs[0].sequence, "MVLSPADKTNVKAAWGKV");  // joined, uppercased, '*' dropped
  EXPECT_EQ(recs[0].line, 2u);
  EXPECT_EQ(recs[1].id, "seq2");
  EXPECT_EQ(recs[1].description, "");
  EXPECT_EQ(recs[1].sequence, "MK<mask>V");  // whitespace dropped, literal token kept
  EXPECT_EQ(recs[1].line, 6u);
  EXPECT_EQ(recs[2].id, "x/y/z");
  EXPECT_EQ(recs[2].sequence, "B.-");
}

TEST_F(Fasta, StreamingReaderCountsRecords) {
  FastaReader reader(make(">a\nAC\n>b\nDE\n"));
  FastaRecord rec;
  ASSERT_TRUE(reader.next(rec));
  EXPECT_EQ(rec.id, "a");
  ASSERT_TRUE(reader.next(rec));
  EXPECT_EQ(rec.sequence, "DE");
  EXPECT_FALSE(reader.next(rec));
  EXPECT_FALSE(reader.next(rec));
  EXPECT_EQ(reader.count(), 2u);
}

TEST_F(Fasta, UnknownToUnkOption) {
  FastaOptions opts;
  opts.unknown_to_unk = true;
  const auto recs = read_fasta(make(">a\nAJB\n"), opts);
  EXPECT_EQ(recs[0].sequence, "A<unk>B");
}

TEST_F(Fasta, EmptyFile) {
  EXPECT_THAT(error_for(""), HasSubstr("empty FASTA file"));
  EXPECT_THAT(error_for("\n \r\n\t\n"), HasSubstr("empty FASTA file"));
}

TEST_F(Fasta, SequenceBeforeFirstHeader) {
  EXPECT_THAT(error_for("\nMKV\n>a\nAC\n"),
              AllOf(HasSubstr("in.fasta:2: "), HasSubstr("sequence data before the first header"),
                    HasSubstr("expected a line starting with '>'")));
}

TEST_F(Fasta, EmptyRecord) {
  EXPECT_THAT(error_for(">a\nAC\n>b\n\n>c\nDE\n"),
              AllOf(HasSubstr("in.fasta:3: "), HasSubstr("record 'b': empty record")));
  EXPECT_THAT(error_for(">a\nAC\n>last desc\n"), HasSubstr("record 'last': empty record"));
  EXPECT_THAT(error_for(">a\n*\n"), HasSubstr("record 'a': empty record"));
}

TEST_F(Fasta, HeaderWithoutId) {
  EXPECT_THAT(error_for(">  \nAC\n"), HasSubstr("header without an id"));
}

TEST_F(Fasta, UnknownResidueNamesRecordLineAndPosition) {
  const std::string msg = error_for(">a\nAC\n>b x\nMK<mask>V\nLLJ\n");
  EXPECT_THAT(msg, HasSubstr("in.fasta:5: "));
  EXPECT_THAT(msg, HasSubstr("record 'b'"));
  EXPECT_THAT(msg, HasSubstr("unknown residue 'J' at position 7 (column 3)"));
  EXPECT_THAT(msg, HasSubstr("expected one of LAGVSERTIDPKQNFYMHWCXBUZO.-"));
  EXPECT_THAT(error_for(">a\nA\xc3\xa9\n"), HasSubstr("unknown residue byte 0xc3 at position 2"));
}

TEST_F(Fasta, StarOnlyAtTheEnd) {
  EXPECT_THAT(error_for(">a\nAC*D\n"),
              AllOf(HasSubstr("record 'a'"), HasSubstr("'*' at position 2 (column 3)"),
                    HasSubstr("only one trailing '*'")));
  EXPECT_THAT(error_for(">a\nAC*\n*\n"), HasSubstr("'*' at position 2"));
  EXPECT_EQ(read_fasta(make(">a\nAC*\n\n>b\nD\n"))[0].sequence, "AC");
}

TEST_F(Fasta, DuplicateId) {
  EXPECT_THAT(error_for(">a one\nAC\n>b\nDE\n>a two\nFG\n"),
              AllOf(HasSubstr("in.fasta:5: "),
                    HasSubstr("record 'a': duplicate id (first seen on line 1)")));
}

TEST_F(Fasta, BinaryJunk) {
  EXPECT_THAT(error_for(std::string(">a\nAC\0D\n", 8)),
              AllOf(HasSubstr("in.fasta:2: "), HasSubstr("binary data (byte 0x00 at column 3)")));
  EXPECT_THAT(error_for("\x7f"
                        "ELF\x02\x01"),
              HasSubstr("binary data"));
}

TEST_F(Fasta, LineTooLong) {
  FastaOptions opts;
  opts.max_line_length = 16;
  EXPECT_THAT(error_for(">a\n" + std::string(17, 'A') + "\n", opts),
              AllOf(HasSubstr("in.fasta:2: "), HasSubstr("line longer than 16 bytes")));
  EXPECT_EQ(read_fasta(make(">a\n" + std::string(16, 'A') + "\n"), opts)[0].sequence.size(), 16u);
}

TEST_F(Fasta, SequenceTooLong) {
  FastaOptions opts;
  opts.max_sequence_length = 5;
  EXPECT_THAT(error_for(">a\nACD\nEFG\n", opts),
              AllOf(HasSubstr("record 'a'"), HasSubstr("longer than 5 residues")));
  EXPECT_EQ(read_fasta(make(">a\nAC<mask>\nEF\n"), opts)[0].sequence, "AC<mask>EF");
}

TEST_F(Fasta, MissingFile) {
  EXPECT_THAT(error_of([] { read_fasta("/nonexistent/in.fasta"); }),
              HasSubstr("cannot open FASTA file /nonexistent/in.fasta"));
}

}  // namespace
}  // namespace turboesm::io
