// SPDX-License-Identifier: MIT
// Streaming atomic safetensors writer and AtomicFile: round trip, refusal to overwrite, missing
// directory, abandoned writers, and a real write failure (file size limit in a forked child)
// that must leave the previous file intact.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <numeric>

#include "io_test_util.h"
#include "turboesm/io/atomic_file.h"
#include "turboesm/io/safetensors.h"

namespace turboesm::io {
namespace {

using ::testing::ElementsAre;
using testing::error_of;
using ::testing::HasSubstr;
using testing::read_bytes;
using testing::ScratchDir;
using testing::write_bytes;

TEST(SafetensorsWriter, StreamingRoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("out.safetensors");
  std::vector<float> w(3 * 5);
  std::iota(w.begin(), w.end(), -4.0f);
  const std::vector<std::uint16_t> h = {0x3c00, 0xc000, 0x7bff};
  const std::vector<int32_t> i = {7};
  WriteOptions opts;
  opts.metadata = {{"turboesm", R"({"version":1})"}, {"format", "pt"}};
  SafetensorsWriter writer(path,
                           {{"layer.weight", DType::F32, {3, 5}},
                            {"half", DType::BF16, {3}},
                            {"scalar", DType::I32, {}}},
                           opts);
  EXPECT_EQ(writer.next_spec().name, "layer.weight");
  writer.write_next(w.data(), w.size() * 4);
  // Nothing is visible at the destination before commit().
  EXPECT_FALSE(testing::fs::exists(path));
  writer.write_next(h.data(), h.size() * 2);
  writer.write_next(i.data(), 4);
  writer.commit();
  EXPECT_THAT(dir.entries(), ElementsAre("out.safetensors"));  // no temporary left over

  SafetensorsFile f(path);
  EXPECT_EQ(f.data_offset() % 8, 0u) << "header must be padded to 8 bytes";
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "layer.weight");  // spec order = file order
  EXPECT_EQ(f.at("layer.weight").shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(std::memcmp(f.data(f.at("layer.weight")), w.data(), w.size() * 4), 0);
  EXPECT_EQ(std::memcmp(f.data(f.at("half")), h.data(), h.size() * 2), 0);
  EXPECT_EQ(f.at("half").dtype, DType::BF16);
  EXPECT_TRUE(f.at("scalar").shape.empty());
  EXPECT_EQ(f.metadata(), opts.metadata);
}

TEST(SafetensorsWriter, ValidatesSpecsAndSizes) {
  ScratchDir dir;
  const std::string path = dir.file("x.safetensors");
  EXPECT_THAT(error_of([&] {
                SafetensorsWriter w(path, {{"a", DType::F32, {1}}, {"a", DType::F32, {1}}});
              }),
              HasSubstr("tensor 'a' given twice"));
  EXPECT_THAT(error_of([&] {
                SafetensorsWriter w(path, {{"a", DType::F32, {2, -1}}});
              }),
              HasSubstr("negative dimension -1"));
  EXPECT_THAT(error_of([&] {
                SafetensorsWriter w(path, {{"__metadata__", DType::F32, {1}}});
              }),
              HasSubstr("reserved"));
  EXPECT_THAT(error_of([&] {
                SafetensorsWriter w(path, {{"", DType::F32, {1}}});
              }),
              HasSubstr("must not be empty"));

  const float v[4] = {};
  {
    SafetensorsWriter w(path, {{"a", DType::F32, {2}}});
    EXPECT_THAT(error_of([&] { w.write_next(v, 12); }),
                HasSubstr("tensor 'a' (F32) needs 8 bytes, got 12"));
    w.write_next(v, 8);
    EXPECT_THAT(error_of([&] { w.write_next(v, 8); }), HasSubstr("after all 1 tensors"));
  }  // not committed: discarded
  {
    SafetensorsWriter w(path, {{"a", DType::F32, {2}}, {"b", DType::F32, {1}}});
    w.write_next(v, 8);
    EXPECT_THAT(error_of([&] { w.commit(); }),
                HasSubstr("only 1 of 2 tensors were written (next expected: 'b')"));
  }
  EXPECT_TRUE(dir.entries().empty()) << "abandoned writers must remove their temporary files";
}

TEST(SafetensorsWriter, RefusesToOverwriteUnlessAsked) {
  ScratchDir dir;
  const std::string path = dir.file("out.safetensors");
  write_bytes(path, "previous contents");
  const float v = 1.0f;
  EXPECT_THAT(error_of([&] {
                write_safetensors(path, {{"a", DType::F32, {1}, &v}});
              }),
              HasSubstr("refusing to overwrite " + path + " (pass --overwrite)"));
  EXPECT_EQ(read_bytes(path), "previous contents");

  WriteOptions opts;
  opts.overwrite = true;
  write_safetensors(path, {{"a", DType::F32, {1}, &v}}, opts);
  SafetensorsFile f(path);
  EXPECT_EQ(*static_cast<const float*>(f.data(f.at("a"))), 1.0f);
  EXPECT_THAT(dir.entries(), ElementsAre("out.safetensors"));
}

TEST(SafetensorsWriter, AbandonedOverwriteKeepsPreviousFile) {
  ScratchDir dir;
  const std::string path = dir.file("out.safetensors");
  write_bytes(path, "previous contents");
  {
    WriteOptions opts;
    opts.overwrite = true;
    SafetensorsWriter w(path, {{"a", DType::F32, {1}}}, opts);
    const float v = 2.0f;
    w.write_next(&v, 4);
    // e.g. an exception elsewhere unwinds before commit()
  }
  EXPECT_EQ(read_bytes(path), "previous contents");
  EXPECT_THAT(dir.entries(), ElementsAre("out.safetensors"));
}

TEST(SafetensorsWriter, MissingDirectory) {
  ScratchDir dir;
  const std::string missing = dir.file("no/such/dir");
  EXPECT_THAT(error_of([&] { SafetensorsWriter w(missing + "/out.safetensors", {}); }),
              HasSubstr("output directory " + missing + " does not exist"));
  EXPECT_THAT(error_of([&] { SafetensorsWriter w(dir.path().string(), {}); }),
              HasSubstr("is a directory"));
}

// A write that fails half-way (here: RLIMIT_FSIZE, as a full disk would) must throw an Error
// naming the path, remove the temporary file and leave the previous output untouched. Runs in a
// forked child so the limit does not affect the test process.
TEST(SafetensorsWriter, WriteFailureLeavesPreviousFileIntact) {
  ScratchDir dir;
  const std::string path = dir.file("out.safetensors");
  const std::string previous = "previous contents";
  write_bytes(path, previous);
  constexpr rlim_t kLimit = 64 * 1024;
  const std::vector<float> big(1 << 16);  // 256 KiB > limit

  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);  // make write() fail with EFBIG instead of killing us
    rlimit lim{kLimit, kLimit};
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(10);
    try {
      WriteOptions opts;
      opts.overwrite = true;
      write_safetensors(path, {{"big", DType::F32, {int64_t(big.size())}, big.data()}}, opts);
    } catch (const Error& e) {
      const std::string msg = e.what();
      ::_exit(msg.find("cannot write " + path) != std::string::npos ? 0 : 11);
    } catch (...) {
      ::_exit(12);
    }
    ::_exit(13);  // nothing thrown
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died from signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "10: setrlimit failed, 11: message lacks the path, 12: wrong exception, 13: no error";
  EXPECT_EQ(read_bytes(path), previous);
  EXPECT_THAT(dir.entries(), ElementsAre("out.safetensors"));
}

TEST(AtomicFile, WritesTextAtomically) {
  ScratchDir dir;
  const std::string path = dir.file("report.json");
  write_file_atomic(path, "{\"a\": 1}\n", false);
  EXPECT_EQ(read_bytes(path), "{\"a\": 1}\n");
  EXPECT_THAT(error_of([&] { write_file_atomic(path, "x", false); }),
              HasSubstr("refusing to overwrite"));
  write_file_atomic(path, "x", true);
  EXPECT_EQ(read_bytes(path), "x");

  AtomicFile f(path, true);
  f.write("partial");
  EXPECT_EQ(f.bytes_written(), 7u);
  f.discard();
  EXPECT_EQ(read_bytes(path), "x");
  EXPECT_THAT(error_of([&] { f.commit(); }), HasSubstr("already committed or discarded"));
  EXPECT_THAT(dir.entries(), ElementsAre("report.json"));
}

TEST(AtomicFile, TwoWritersToOnePathUseDistinctTemporaries) {
  ScratchDir dir;
  const std::string path = dir.file("a.txt");
  AtomicFile a(path, true);
  AtomicFile b(path, true);
  EXPECT_NE(a.temp_path(), b.temp_path());
  a.write("first");
  b.write("second");
  a.commit();
  b.commit();
  EXPECT_EQ(read_bytes(path), "second");
}

}  // namespace
}  // namespace turboesm::io
