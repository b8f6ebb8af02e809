// SPDX-License-Identifier: MIT
// turboesm-embed --shard-records / --resume (issue 7, "Large inputs, interruptions"): sharded
// output equals the single file tensor by tensor, a kill -9 mid-run leaves only complete shards,
// --resume finishes to the same bytes as an uninterrupted run, and changed inputs or a broken
// index are refused with a clear error.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model/model_test_util.h"
#include "programs/program_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/sha256.h"
#include "turboesm/model/embed.h"

namespace turboesm {
namespace {

constexpr const char* kEmbed = "turboesm-embed";

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

/// `n` records of 20..80 random residues, ids r0000.. (deterministic for a seed).
std::string make_fasta(int n, unsigned seed) {
  static const char kAa[] = "LAGVSERTIDPKQNFYMHWC";
  std::mt19937 rng(seed);
  std::string s;
  for (int i = 0; i < n; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, ">r%04d protein %d\n", i, i);
    s += id;
    const int len = 20 + static_cast<int>(rng() % 61);
    for (int j = 0; j < len; ++j) s += kAa[rng() % 20];
    s += "\n";
  }
  return s;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class EmbedShardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::fresh_dir(std::string("shards_") +
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    model_ = dir_ + "/model";
    auto r = run("turboesm-make-model", "--preset tiny --seed 3 --init-std 0.08 --out " + model_);
    ASSERT_EQ(r.code, 0) << r.err;
  }
  test::ProgramRun run(const std::string& program, const std::string& args) {
    return test::run_program(dir_, program, args);
  }
  /// Common embed arguments: one record per batch, one thread (batches equal across runs).
  std::string embed_args(const std::string& fasta, const std::string& out,
                         const std::string& extra = "") {
    return "--model " + model_ + " --fasta " + fasta + " --out " + out +
           " --threads 1 --max-tokens-per-batch 1 " + extra;
  }
  std::string dir_, model_;
};

/// Every file the index names exists, has the recorded size and sha256, parses as safetensors
/// and holds `tensors_per_record` tensors per record; returns the number of records listed.
std::size_t check_index_names_only_good_shards(const std::string& out,
                                               std::size_t tensors_per_record = 2) {
  const auto idx = model::read_shard_index(out + "/index.json");
  std::size_t total = 0;
  for (const auto& e : idx.shards) {
    SCOPED_TRACE(e.file);
    const std::string p = out + "/" + e.file;
    io::SafetensorsFile f(p);  // throws on a torn file
    EXPECT_EQ(f.file_size(), e.bytes);
    EXPECT_EQ(io::sha256_file_hex(p), e.sha256);
    EXPECT_EQ(f.tensors().size(), tensors_per_record * e.records);
    EXPECT_NE(f.find(e.first_id + "/mean"), nullptr);
    EXPECT_NE(f.find(e.last_id + "/mean"), nullptr);
    total += e.records;
  }
  EXPECT_EQ(total, idx.total_records);
  return total;
}

/// Both directories hold the same file names with the same bytes.
void expect_same_directory(const std::string& a, const std::string& b) {
  const auto na = list_dir(a), nb = list_dir(b);
  ASSERT_EQ(na, nb);
  for (const auto& n : na) {
    EXPECT_TRUE(test::slurp(a + "/" + n) == test::slurp(b + "/" + n)) << n << " differs";
  }
}

TEST_F(EmbedShardsTest, ShardsEqualTheSingleFileBitForBit) {
  const std::string fasta = dir_ + "/in.fasta";
  write_text(fasta, make_fasta(7, 1));
  const std::string flags = "--logits --contacts --repr-layers 0,-1";
  auto one = run(kEmbed, embed_args(fasta, dir_ + "/one.safetensors", flags));
  ASSERT_EQ(one.code, 0) << one.err;
  const std::string out = dir_ + "/sharded";
  auto sh = run(kEmbed, embed_args(fasta, out, flags + " --shard-records 3"));
  ASSERT_EQ(sh.code, 0) << sh.err;
  EXPECT_HAS(sh.err, "7 records");
  EXPECT_EQ(list_dir(out),
            (std::vector<std::string>{"index.json", "shard-00000.safetensors",
                                      "shard-00001.safetensors", "shard-00002.safetensors"}));
  const auto idx = model::read_shard_index(out + "/index.json");
  ASSERT_EQ(idx.shards.size(), 3u);
  EXPECT_TRUE(idx.complete);
  EXPECT_EQ(idx.total_records, 7u);
  EXPECT_EQ(idx.shards[0].records, 3u);
  EXPECT_EQ(idx.shards[2].records, 1u);
  EXPECT_EQ(idx.shards[0].first_id, "r0000");
  EXPECT_EQ(idx.shards[1].last_id, "r0005");
  EXPECT_EQ(idx.shards[2].first_id, "r0006");
  EXPECT_EQ(idx.options.at("logits"), "true");
  EXPECT_EQ(idx.options.at("repr_layers"), "0,2");
  EXPECT_EQ(idx.options.at("shard_records"), "3");
  EXPECT_EQ(idx.options.at("model_fingerprint").size(), 64u);

  io::SafetensorsFile single(dir_ + "/one.safetensors");
  std::size_t compared = 0;
  for (const auto& e : idx.shards) {
    io::SafetensorsFile f(out + "/" + e.file);
    for (const auto& t : f.tensors()) {
      SCOPED_TRACE(t.name);
      const io::TensorInfo& s = single.at(t.name);
      ASSERT_EQ(s.shape, t.shape);
      ASSERT_EQ(s.dtype, t.dtype);
      ASSERT_EQ(s.nbytes(), t.nbytes());
      EXPECT_EQ(std::memcmp(single.data(s), f.data(t), t.nbytes()), 0);
      ++compared;
    }
  }
  EXPECT_EQ(compared, single.tensors().size());  // 7 records × 6 tensors, none missing
  EXPECT_EQ(compared, 7u * 6u);
  check_index_names_only_good_shards(out, 6);
}

TEST_F(EmbedShardsTest, KillMidRunLeavesOnlyCompleteShardsAndResumeFinishesTheSame) {
  const std::string fasta = dir_ + "/in.fasta";
  write_text(fasta, make_fasta(240, 2));
  const std::string args = " --shard-records 4";
  const std::string ref = dir_ + "/ref", out = dir_ + "/out";
  auto r = run(kEmbed, embed_args(fasta, ref, args));
  ASSERT_EQ(r.code, 0) << r.err;

  // Start the same run, wait until the index lists its first shard, then SIGKILL it.
  const std::string bin = std::string(TURBOESM_BIN_DIR) + "/" + kEmbed;
  const std::string log = dir_ + "/killed.log";
  std::vector<std::string> argv_s = {bin,    "--model",
                                     model_, "--fasta",
                                     fasta,  "--out",
                                     out,    "--threads",
                                     "1",    "--max-tokens-per-batch",
                                     "1",    "--shard-records",
                                     "4"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  bool listed = false;
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 60000 && !listed && !exited; ++i) {  // polls for up to ~60 s
    if (exists(out + "/index.json")) {
      listed = !model::read_shard_index(out + "/index.json").shards.empty();
    }
    if (!listed) {
      exited = ::waitpid(pid, &status, WNOHANG) == pid;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  ASSERT_TRUE(listed) << "the run ended before listing a shard: " << test::slurp(log);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run finished before it was killed; make the input larger";

  // Nothing torn: the index is complete JSON naming only intact shards; any other shard file
  // (committed just before the kill, not yet listed) parses too; temporaries may remain.
  const auto killed = model::read_shard_index(out + "/index.json");
  EXPECT_FALSE(killed.complete);
  const std::size_t done = check_index_names_only_good_shards(out);
  EXPECT_LT(done, 240u);
  for (const auto& n : list_dir(out)) {
    if (n == "index.json" || n.find(".tmp-") != std::string::npos) continue;
    EXPECT_NO_THROW(io::SafetensorsFile(out + "/" + n)) << n;
  }

  auto res = run(kEmbed, embed_args(fasta, out, args + " --resume"));
  ASSERT_EQ(res.code, 0) << res.err;
  EXPECT_HAS(res.err, "resuming after " + std::to_string(killed.shards.size()) + " finished");
  EXPECT_HAS(res.err, std::to_string(killed.shards.size()) + " kept from an earlier run");
  for (const auto& n : list_dir(out)) EXPECT_EQ(n.find(".tmp-"), std::string::npos) << n;
  expect_same_directory(ref, out);  // index.json included: same shards, sizes and sha256
}

TEST_F(EmbedShardsTest, ResumeRefusesChangedOptionsModelOrFasta) {
  const std::string fasta = dir_ + "/in.fasta", out = dir_ + "/out";
  const std::string text = make_fasta(9, 3);
  write_text(fasta, text);
  auto r = run(kEmbed, embed_args(fasta, out, "--shard-records 4"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string index_before = test::slurp(out + "/index.json");

  auto same = run(kEmbed, embed_args(fasta, out, "--shard-records 4 --resume"));
  EXPECT_EQ(same.code, 0) << same.err;
  EXPECT_HAS(same.err, "all 3 shards (9 records) were already complete");

  struct Case {
    std::string args, needle;
  };
  const std::string changed = dir_ + "/changed.fasta", shorter = dir_ + "/short.fasta",
                    longer = dir_ + "/long.fasta", renamed = dir_ + "/renamed.fasta";
  {
    std::string t = text;  // one residue of record r0005 (shard 1) changed
    const auto at = t.find('\n', t.find(">r0005")) + 3;
    t[at] = t[at] == 'W' ? 'C' : 'W';
    write_text(changed, t);
    write_text(shorter, make_fasta(6, 3));
    write_text(longer, make_fasta(10, 3));
    std::string u = text;
    u.replace(u.find(">r0004"), 6, ">x0004");
    write_text(renamed, u);
  }
  auto m2 = run("turboesm-make-model",
                "--preset tiny --seed 4 --init-std 0.08 --out " + dir_ + "/model2");
  ASSERT_EQ(m2.code, 0) << m2.err;
  const std::vector<Case> cases = {
      {embed_args(fasta, out, "--shard-records 4 --resume --logits"),
       "was written with logits=false, this run has logits=true"},
      {embed_args(fasta, out, "--shard-records 5 --resume"),
       "was written with shard_records=4, this run has shard_records=5"},
      {embed_args(fasta, out, "--shard-records 4 --resume --repr-layers -1"),
       "was written with repr_layers=, this run has repr_layers=2"},
      {embed_args(fasta, out, "--shard-records 4 --resume --dtype bf16"),
       "was written with dtype=Float, this run has dtype=BFloat16"},
      {"--model " + dir_ + "/model2 --fasta " + fasta + " --out " + out +
           " --threads 1 --max-tokens-per-batch 1 --shard-records 4 --resume",
       "was written with model_fingerprint="},
      {embed_args(changed, out, "--shard-records 4 --resume"),
       "shard-00001.safetensors holds records 'r0004'..'r0007' but records 5..8 of " + changed +
           " are 'r0004'..'r0007' with other ids or sequences in between; the FASTA changed"},
      {embed_args(renamed, out, "--shard-records 4 --resume"),
       "shard-00001.safetensors holds records 'r0004'..'r0007' but records 5..8 of " + renamed +
           " are 'x0004'..'r0007'"},
      {embed_args(shorter, out, "--shard-records 4 --resume"),
       shorter + " ends after 6 records, but " + out + "/shard-00001.safetensors holds records"},
      {embed_args(longer, out, "--shard-records 4 --resume"),
       longer + " has more records than the finished run in " + out + " (9; record 'r0009'"},
      {embed_args(fasta, out, "--shard-records 4"),
       "refusing to overwrite " + out + ": the directory is not empty"},
      {embed_args(fasta, out, "--shard-records 4 --resume --overwrite"),
       "--resume and --overwrite exclude each other"},
      {embed_args(fasta, dir_ + "/single.safetensors", "--resume"),
       "--resume needs --shard-records"},
      {embed_args(fasta, fasta, "--shard-records 4"), "with --shard-records it names a directory"},
      {embed_args(fasta, dir_ + "/no/such", "--shard-records 4"),
       "output directory " + dir_ + "/no does not exist"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    auto e = run(kEmbed, c.args);
    EXPECT_EQ(e.code, 1);
    EXPECT_EQ(e.err.rfind("turboesm-embed: error: ", 0), 0u) << e.err;
    EXPECT_EQ(std::count(e.err.begin(), e.err.end(), '\n'), 1) << e.err;
    EXPECT_HAS(e.err, c.needle);
  }
  EXPECT_EQ(test::slurp(out + "/index.json"), index_before);  // refusals change nothing
  check_index_names_only_good_shards(out);
}

TEST_F(EmbedShardsTest, DamagedShardIsEmbeddedAgainOnResume) {
  const std::string fasta = dir_ + "/in.fasta", out = dir_ + "/out", ref = dir_ + "/ref";
  write_text(fasta, make_fasta(10, 4));
  ASSERT_EQ(run(kEmbed, embed_args(fasta, ref, "--shard-records 3")).code, 0);
  ASSERT_EQ(run(kEmbed, embed_args(fasta, out, "--shard-records 3")).code, 0);
  {  // flip one byte in the data of shard 1, add a stray temporary file
    std::fstream f(out + "/shard-00001.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    const char c = static_cast<char>(f.get());
    f.seekp(-5, std::ios::end);
    f.put(static_cast<char>(~c));
  }
  write_text(out + "/shard-00002.safetensors.tmp-999999", "partial");
  auto r = run(kEmbed, embed_args(fasta, out, "--shard-records 3 --resume"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.err,
             "shard-00001.safetensors does not match its sha256 in the index; embedding "
             "it and the shards after it again");
  EXPECT_HAS(r.err, "1 kept from an earlier run");
  expect_same_directory(ref, out);
}

TEST_F(EmbedShardsTest, OverwriteStartsAgainAndDuplicateIdsAcrossShardsAreRefused) {
  const std::string fasta = dir_ + "/in.fasta", out = dir_ + "/out";
  write_text(fasta, make_fasta(7, 5));
  ASSERT_EQ(run(kEmbed, embed_args(fasta, out, "--shard-records 2")).code, 0);
  write_text(out + "/notes.txt", "mine");
  auto r = run(kEmbed, embed_args(fasta, out, "--shard-records 7 --overwrite"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(list_dir(out),
            (std::vector<std::string>{"index.json", "notes.txt", "shard-00000.safetensors"}));
  EXPECT_EQ(check_index_names_only_good_shards(out), 7u);

  // r0001 again as the 6th record: in shard 2, while the first one is in shard 0.
  const std::string dup = dir_ + "/dup.fasta";
  write_text(dup, make_fasta(5, 5) + ">r0001 again\nMKV\n");
  const std::string dout = dir_ + "/dup";
  auto d = run(kEmbed, embed_args(dup, dout, "--shard-records 2"));
  EXPECT_EQ(d.code, 1);
  EXPECT_HAS(d.err, dup + ":11: record 'r0001': duplicate id (an earlier record with it is in " +
                        dout + "/shard-00000.safetensors)");
  EXPECT_EQ(std::count(d.err.begin(), d.err.end(), '\n'), 1) << d.err;
  EXPECT_EQ(check_index_names_only_good_shards(dout), 4u);  // shards before the error stay
  auto dd = run(kEmbed, embed_args(dup, dir_ + "/dup2", "--shard-records 9"));
  EXPECT_EQ(dd.code, 1);
  EXPECT_HAS(dd.err, dup + ":11: record 'r0001': duplicate id (first seen on line 3)");
}

TEST_F(EmbedShardsTest, BrokenIndexIsAClearError) {
  const std::string fasta = dir_ + "/in.fasta", out = dir_ + "/out";
  write_text(fasta, make_fasta(5, 6));
  ASSERT_EQ(run(kEmbed, embed_args(fasta, out, "--shard-records 2")).code, 0);
  const std::string good = test::slurp(out + "/index.json");
  const std::string index = out + "/index.json";
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    const auto at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? t : t.replace(at, from.size(), to);
  };
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {good.substr(0, good.size() / 2), index + ": malformed JSON"},
      {"", index + ": malformed JSON"},
      {"[1, 2]", index + ": expected a JSON object"},
      {replaced("\"records\": 2", "\"records\": \"2\""),
       index + ": key 'shards[0].records' must be a non-negative integer"},
      {replaced("\"records\": 2", "\"records\": -2"),
       index + ": key 'shards[0].records' must be a non-negative integer"},
      {replaced("\"complete\": true", "\"complete\": 1"),
       index + ": key 'complete' must be true or false"},
      {replaced("\"shard-00001.safetensors\"", "\"../../etc/passwd\""),
       index + ": shards[1].file is '../../etc/passwd', expected 'shard-00001.safetensors'"},
      {replaced("\"version\": 1", "\"version\": 7"), index + ": index version 7 is not supported"},
      {replaced("\"format\": \"turboesm-embed-shards\"", "\"format\": \"hf\""),
       index + ": key 'format' must be \"turboesm-embed-shards\""},
      {replaced("\"total_records\": 5", "\"total_records\": 6"),
       index + ": total_records is 6, expected 5"},
      {replaced("\"shards\": [", "\"shardz\": ["), index + ": missing key 'shards'"},
      {replaced("\"first_id\": \"r0000\"", "\"first_id\": null"),
       index + ": key 'shards[0].first_id' must be a string"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    write_text(index, c.text);
    std::string what = "(no error)";
    try {
      model::read_shard_index(index);
    } catch (const Error& e) {
      what = e.what();
    }
    EXPECT_HAS(what, c.needle);
  }
  // The program reports it as one line and leaves the directory alone.
  write_text(index, good.substr(0, good.size() / 2));
  auto r = run(kEmbed, embed_args(fasta, out, "--shard-records 2 --resume"));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_HAS(r.err, "turboesm-embed: error: " + index + ": malformed JSON");
  EXPECT_EQ(test::slurp(index), good.substr(0, good.size() / 2));
}

}  // namespace
}  // namespace turboesm
