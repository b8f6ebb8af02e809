// SPDX-License-Identifier: MIT
// FastaOptions::check_duplicate_ids: on by default (a repeated id is an error naming both lines);
// off, the reader keeps no per-record state and returns repeated ids (turboesm-embed
// --shard-records checks them itself in bounded memory).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "turboesm/io/fasta.h"

namespace turboesm::io {
namespace {

using testing::error_of;
using ::testing::HasSubstr;
using testing::ScratchDir;
using testing::write_bytes;

TEST(FastaDuplicateOption, OnByDefaultOffReturnsRepeatedIds) {
  ScratchDir dir;
  const std::string path = dir.file("dup.fasta");
  write_bytes(path, ">a\nMK\n>b\nV\n>a\nL\n");
  EXPECT_THAT(error_of([&] { read_fasta(path); }),
              HasSubstr(path + ":5: record 'a': duplicate id (first seen on line 1)"));
  FastaOptions o;
  o.check_duplicate_ids = false;
  const auto recs = read_fasta(path, o);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[2].id, "a");
  EXPECT_EQ(recs[2].sequence, "L");
  EXPECT_EQ(recs[2].line, 5u);
}

}  // namespace
}  // namespace turboesm::io
