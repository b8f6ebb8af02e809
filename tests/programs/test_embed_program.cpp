// SPDX-License-Identifier: MIT
// Program-level tests: run build/bin/turboesm-make-model and turboesm-embed as subprocesses and
// check exit code, the one-line error on stderr and the outputs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "model/model_test_util.h"
#include "programs/program_test_util.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/esm2.h"

namespace turboesm {
namespace {

namespace fs = std::filesystem;
using test::max_abs_diff;
using test::read_tensor;

constexpr double kProgramTol = 1e-5;  // program output vs library forward, same process math

/// Directory of the running test (ctest runs tests as parallel processes: nothing is shared).
std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(TURBOESM_TEST_WORK_DIR) + "/programs_" + info->name();
}

/// Runs `bin/<program> args` with stdout/stderr captured in this test's directory.
test::ProgramRun run(const std::string& program, const std::string& args) {
  const std::string dir = test_dir();
  fs::create_directories(dir);
  return test::run_program(dir, program, args);
}

class ProgramTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::fresh_dir(std::string("programs_") +
                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    model_ = dir_ + "/model";
    auto r = run("turboesm-make-model", "--preset tiny --seed 3 --init-std 0.08 --out " + model_);
    ASSERT_EQ(r.code, 0) << r.err;
    fasta_ = dir_ + "/in.fasta";
    std::ofstream(fasta_) << ">sp|P1/a first protein\nMKTAYIAKQR\nQISFVKSHFSRQ*\n"
                          << ">two\nmk<mask>v\n>three rare\nXBUZO\n>four\nM\n";
  }
  std::string dir_, model_, fasta_;
};

TEST_F(ProgramTest, HelpExitsZero) {
  for (const char* p : {"turboesm-make-model", "turboesm-embed"}) {
    auto r = run(p, "--help");
    EXPECT_EQ(r.code, 0) << p;
    EXPECT_HAS(r.out, "--overwrite");
  }
}

TEST_F(ProgramTest, EmbedWritesEveryOutputAndMatchesTheLibrary) {
  const std::string out = dir_ + "/emb.safetensors";
  auto r = run("turboesm-embed", "--model " + model_ + " --fasta " + fasta_ + " --out " + out +
                                     " --logits --contacts --repr-layers 0,-1 --threads 1 "
                                     "--max-tokens-per-batch 40 --overwrite");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.err, "4 records, 32 residues");
  io::SafetensorsFile f(out);
  EXPECT_EQ(f.tensors().size(), 4u * 6u);
  auto m = model::Esm2Model::load(model_);
  model::ForwardOptions fo;
  fo.need_logits = fo.need_contacts = true;
  fo.repr_layers = {0, -1};
  struct Rec {
    std::string id, seq;
  };
  for (const Rec& rec : {Rec{"sp|P1/a", "MKTAYIAKQRQISFVKSHFSRQ"}, Rec{"two", "MK<mask>V"},
                         Rec{"three", "XBUZO"}, Rec{"four", "M"}}) {
    SCOPED_TRACE(rec.id);
    const auto ids = io::EsmTokenizer::instance().encode(rec.seq);
    const int64_t T = static_cast<int64_t>(ids.size()), L = T - 2;
    auto want = m->forward(at::tensor(ids).unsqueeze(0), at::Tensor(), fo);
    at::Tensor h = read_tensor(f, rec.id + "/last_hidden_state");
    ASSERT_EQ(h.sizes(), (std::vector<int64_t>{T, 128}));
    EXPECT_LE(max_abs_diff(h, want.last_hidden_state[0]), kProgramTol);
    EXPECT_LE(max_abs_diff(read_tensor(f, rec.id + "/mean"), h.narrow(0, 1, L).mean(0)), 1e-6);
    EXPECT_LE(max_abs_diff(read_tensor(f, rec.id + "/logits"), want.logits[0]), kProgramTol);
    at::Tensor c = read_tensor(f, rec.id + "/contacts");
    ASSERT_EQ(c.sizes(), (std::vector<int64_t>{L, L}));
    EXPECT_LE(max_abs_diff(c, want.contacts[0]), kProgramTol);
    EXPECT_LE(max_abs_diff(read_tensor(f, rec.id + "/layer_0"), want.hidden_states.at(0)[0]),
              kProgramTol);
    EXPECT_LE(max_abs_diff(read_tensor(f, rec.id + "/layer_2"), h), kProgramTol);
  }
}

TEST_F(ProgramTest, TruncateCutsResidues) {
  const std::string out = dir_ + "/trunc.safetensors";
  auto r = run("turboesm-embed", "--model " + model_ + " --fasta " + fasta_ + " --out " + out +
                                     " --truncate 3 --overwrite");
  ASSERT_EQ(r.code, 0) << r.err;
  io::SafetensorsFile f(out);
  EXPECT_EQ(f.at("sp|P1/a/last_hidden_state").shape, (std::vector<int64_t>{5, 128}));
  EXPECT_EQ(f.at("four/last_hidden_state").shape, (std::vector<int64_t>{3, 128}));
}

TEST_F(ProgramTest, WarnsOnceAboutSequencesLongerThanTrainingLength) {
  const std::string fasta = dir_ + "/long.fasta", out = dir_ + "/long.safetensors";
  std::ofstream(fasta) << ">long1\n"
                       << std::string(1030, 'A') << "\n>long2\n"
                       << std::string(1025, 'G') << "\n>short\nMKV\n";
  auto r = run("turboesm-embed", "--model " + model_ + " --fasta " + fasta + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.err, "warning: 2 record(s) longer than 1022 residues");
  io::SafetensorsFile f(out);
  EXPECT_EQ(f.at("long1/last_hidden_state").shape, (std::vector<int64_t>{1032, 128}));
}

TEST_F(ProgramTest, RefusesToOverwriteAndKeepsTheOldFile) {
  const std::string out = dir_ + "/keep.safetensors";
  std::ofstream(out) << "previous";
  auto r = run("turboesm-embed", "--model " + model_ + " --fasta " + fasta_ + " --out " + out);
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "turboesm-embed: error: refusing to overwrite");
  EXPECT_EQ(test::slurp(out), "previous");
  auto m = run("turboesm-make-model", "--preset tiny --seed 3 --out " + model_);
  EXPECT_EQ(m.code, 1);
  EXPECT_HAS(m.err, "turboesm-make-model: error: refusing to overwrite");
}

TEST_F(ProgramTest, BadInputsGiveOneLineErrorsAndNoOutput) {
  const std::string out = dir_ + "/never.safetensors";
  const std::string bad_fasta = dir_ + "/bad.fasta";
  std::ofstream(bad_fasta) << ">ok\nMKV\n>broken\nMK1V\n";
  struct Case {
    std::string program, args, needle;
  };
  const std::string base = "--model " + model_ + " --out " + out + " ";
  const std::vector<Case> cases = {
      {"turboesm-embed", base + "--fasta " + bad_fasta, "broken"},
      {"turboesm-embed", base + "--fasta " + dir_ + "/missing.fasta", "missing.fasta"},
      {"turboesm-embed", "--model " + dir_ + "/nomodel --out " + out + " --fasta " + fasta_,
       "nomodel"},
      {"turboesm-embed", base + "--fasta " + fasta_ + " --repr-layers 0,x", "--repr-layers"},
      {"turboesm-embed", base + "--fasta " + fasta_ + " --repr-layers 9", "out of range"},
      {"turboesm-embed", base + "--fasta " + fasta_ + " --dtype int4", "unsupported dtype"},
      {"turboesm-embed", base + "--fasta " + fasta_ + " --device tpu", "unsupported device"},
      {"turboesm-embed", base + "--fasta " + fasta_ + " --max-tokens-per-batch 0", "must be >= 1"},
      {"turboesm-embed", "--fasta " + fasta_, "--model"},
      {"turboesm-make-model", "--preset huge --seed 1 --out " + dir_ + "/m2", "huge"},
      {"turboesm-make-model", "--preset tiny --seed 1 --dtype fp8 --out " + dir_ + "/m2", "fp8"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.program + " " + c.args);
    auto r = run(c.program, c.args);
    EXPECT_EQ(r.code, 1);
    EXPECT_EQ(r.err.rfind(c.program + ": error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_HAS(r.err, c.needle);
    EXPECT_FALSE(fs::exists(out));
  }
  EXPECT_FALSE(fs::exists(dir_ + "/m2/model.safetensors"));
}

TEST_F(ProgramTest, CudaRequestWithoutGpuIsAClearError) {
  if (at::hasCUDA()) GTEST_SKIP() << "a GPU is present";
  auto r = run("turboesm-embed", "--model " + model_ + " --fasta " + fasta_ + " --out " + dir_ +
                                     "/cuda.safetensors --device cuda:0");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "CUDA is not available");
}

}  // namespace
}  // namespace turboesm
