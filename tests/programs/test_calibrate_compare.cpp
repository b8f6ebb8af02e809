// SPDX-License-Identifier: MIT
// turboesm-calibrate → turboesm-compare round trip on the tiny preset (subprocesses), the JSON
// contract of compare, and the one-line errors of both programs on bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "model/model_test_util.h"
#include "programs/program_test_util.h"

namespace turboesm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kMinLayerCosine = 0.9;   // 3-bit tiny model, random weights (std 0.08)
constexpr double kMinInt8Cosine = 0.999;  // INT8 per-token scales are nearly lossless
constexpr double kSignCompression = 9.0;  // issue 5: 3-bit K/V + sign QJL, norm none

/// Runs a program single-threaded (LibTorch's default pool crawls on a loaded 2-core machine).
test::ProgramRun run(const std::string& dir, const std::string& program, const std::string& args) {
  return test::run_program(dir, program, args, "OMP_NUM_THREADS=1");
}

/// Number of lines of `s` that contain "error:".
int error_lines(const std::string& s) {
  int n = 0;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line);)
    if (line.find("error:") != std::string::npos) ++n;
  return n;
}

/// One tiny model + FASTA + sign-QJL checkpoint (built once per test process).
struct World {
  std::string dir, model, fasta, ckpt;
};

const World& world() {
  static const World w = [] {
    World w;
    // One directory per test: ctest runs the tests of this file as parallel processes.
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    w.dir = test::fresh_dir(std::string("programs_calibrate_compare_") + info->name());
    w.model = w.dir + "/tiny";
    w.fasta = w.dir + "/seqs.fasta";
    w.ckpt = w.dir + "/tiny.ckpt";
    std::ofstream(w.fasta)
        << ">HBB_HUMAN hemoglobin beta\n"
           "MVHLTPEEKSAVTALWGKVNVDEVGGEALGRLLVVYPWTQRFFESFGDLSTPDAVMGNPKVKAHGKKV\n"
           ">MYG_HORSE\nGLSDGEWQQVLNVWGKVEADIAGHGQEVLIRLFTGHPETLEKFDKFKHLKTEAEMKASED\n"
           ">GFP\nMSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTT\n";
    const test::ProgramRun mk = run(w.dir, "turboesm-make-model",
                                    "--preset tiny --seed 1 --init-std 0.08 --out " + w.model);
    EXPECT_EQ(mk.code, 0) << mk.err;
    const test::ProgramRun cal =
        run(w.dir, "turboesm-calibrate",
            "--model " + w.model + " --fasta " + w.fasta + " --out " + w.ckpt +
                " --bits 3 --qjl sign --norm none --max-tokens 1024 --threads 1");
    EXPECT_EQ(cal.code, 0) << cal.err;
    EXPECT_HAS(cal.out, "K rel.MSE");
    EXPECT_HAS(cal.err, "ETA");
    return w;
  }();
  return w;
}

TEST(CalibrateCompareProgram, RoundTripWritesTheJsonContract) {
  const World& w = world();
  ASSERT_TRUE(fs::exists(w.ckpt));
  const std::string out_json = w.dir + "/report.json";
  const test::ProgramRun r = run(w.dir, "turboesm-compare",
                                 "--model " + w.model + " --checkpoint " + w.ckpt + " --fasta " +
                                     w.fasta + " --json " + out_json + " --overwrite --threads 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "layer_cos");
  const json j = json::parse(test::slurp(out_json));
  ASSERT_EQ(j.at("sequences").size(), 3u);
  for (const auto& s : j.at("sequences")) {
    for (const char* k : {"id", "length", "prefill_max_abs_diff", "layer_cosine",
                          "layer_cosine_no_qjl", "final_hidden_cosine", "mlm_top1_agreement"})
      EXPECT_TRUE(s.contains(k)) << k;
    EXPECT_EQ(s.at("prefill_max_abs_diff").get<double>(), 0.0);
    ASSERT_EQ(s.at("layer_cosine").size(), 2u);
    for (const auto& c : s.at("layer_cosine")) {
      EXPECT_GT(c.get<double>(), kMinLayerCosine);
      EXPECT_LE(c.get<double>(), 1.0 + 1e-9);
    }
  }
  EXPECT_EQ(j["sequences"][0]["id"], "HBB_HUMAN");
  const json& s = j.at("summary");
  for (const char* k :
       {"layer_cosine_mean", "layer_cosine_min", "final_hidden_cosine_mean", "mlm_top1_agreement",
        "kv_bytes", "checkpoint_bytes", "compression_vs_fp32", "compression_vs_fp16", "baselines"})
    EXPECT_TRUE(s.contains(k)) << k;
  EXPECT_LE(s["layer_cosine_min"].get<double>(), s["layer_cosine_mean"].get<double>());
  EXPECT_GT(s["final_hidden_cosine_mean"].get<double>(), kMinLayerCosine);
  const double top1 = s["mlm_top1_agreement"].get<double>();
  EXPECT_GE(top1, 0.0);
  EXPECT_LE(top1, 1.0);
  const json& kv = s.at("kv_bytes");
  for (const char* k : {"fp32", "fp16", "int8", "fp8", "turbo"}) EXPECT_GT(kv.at(k), 0) << k;
  EXPECT_EQ(kv["fp32"].get<int64_t>(), 2 * kv["fp16"].get<int64_t>());
  EXPECT_GE(s["compression_vs_fp32"].get<double>(), kSignCompression);
  EXPECT_NEAR(s["compression_vs_fp32"].get<double>(), 2 * s["compression_vs_fp16"].get<double>(),
              1e-9);
  EXPECT_EQ(s["checkpoint_bytes"].get<int64_t>(), static_cast<int64_t>(fs::file_size(w.ckpt)));
  for (const char* b : {"int8", "fp8"}) {
    const json& bl = s.at("baselines").at(b);
    for (const char* k : {"layer_cosine_mean", "final_hidden_cosine_mean", "mlm_top1_agreement"})
      EXPECT_TRUE(bl.contains(k)) << b << " " << k;
  }
  EXPECT_GT(s["baselines"]["int8"]["layer_cosine_mean"].get<double>(), kMinInt8Cosine);
  for (const char* c : {"fp32", "turbo", "int8", "fp8"}) {
    const json& t = j.at("timing_ms").at(c);
    EXPECT_GT(t.at("prefill").get<double>(), 0.0) << c;
    EXPECT_GT(t.at("append_per_token").get<double>(), 0.0) << c;
  }
  // --json refuses to overwrite without --overwrite.
  const test::ProgramRun again = run(w.dir, "turboesm-compare",
                                     "--model " + w.model + " --checkpoint " + w.ckpt +
                                         " --fasta " + w.fasta + " --json " + out_json);
  EXPECT_EQ(again.code, 1);
  EXPECT_HAS(again.err, "refusing to overwrite");
}

TEST(CalibrateCompareProgram, CompareMixesFormatsPerLayer) {
  // Layer 0 in INT8, layer 1 from a second checkpoint (here the same file): the JSON says so,
  // kv_bytes counts each layer at its own rate, layer 0 is as close as INT8.
  const World& w = world();
  ASSERT_TRUE(fs::exists(w.ckpt));
  const std::string out_json = w.dir + "/mixed.json";
  const test::ProgramRun r =
      run(w.dir, "turboesm-compare",
          "--model " + w.model + " --checkpoint " + w.ckpt + " --fasta " + w.fasta + " --json " +
              out_json + " --overwrite --threads 1 --no-end-to-end --baselines '' " +
              "--dense-layers 0 --dense-kind int8 --checkpoint-b " + w.ckpt + " --b-layers 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(test::slurp(out_json));
  const json& s = j.at("summary");
  EXPECT_EQ(s.at("dense_layers"), json({{"0", "int8"}}));
  EXPECT_HAS(s.at("turbo").get<std::string>(), "dense layers 0:int8; layers 1:");
  int64_t tokens = 0;
  for (const auto& q : j.at("sequences")) {
    tokens += q.at("length").get<int64_t>() + 2;
    EXPECT_GT(q.at("layer_cosine")[0].get<double>(), kMinInt8Cosine);
  }
  const int64_t heads = 4, d = 32;  // tiny preset: hidden 128, 4 heads
  const int64_t int8_rate = 2 * (d + 2), turbo_rate = s["bytes_per_token_per_head"]["turbo"];
  EXPECT_EQ(turbo_rate, 3 * d / 8 + d / 8 + 3 * d / 8);  // K 3-bit + sign bits, V 3-bit
  EXPECT_EQ(s["kv_bytes"]["turbo"].get<int64_t>(), tokens * heads * (int8_rate + turbo_rate));
  // The two options of the second checkpoint go together; layers must exist.
  const std::string base = "--model " + w.model + " --checkpoint " + w.ckpt + " --fasta " +
                           w.fasta + " --no-end-to-end --baselines '' --threads 1 ";
  const test::ProgramRun only_b = run(w.dir, "turboesm-compare", base + "--b-layers 1");
  EXPECT_EQ(only_b.code, 1);
  EXPECT_HAS(only_b.err, "--checkpoint-b and --b-layers go together");
  EXPECT_EQ(error_lines(only_b.err), 1) << only_b.err;
  const test::ProgramRun far = run(w.dir, "turboesm-compare", base + "--dense-layers 5");
  EXPECT_EQ(far.code, 1);
  EXPECT_HAS(far.err, "dense layer 5 out of range [0, 2)");
}

TEST(CalibrateCompareProgram, CompareWithTheValueRotationFolded) {
  // --fold-v: the Turbo cache runs on the model with Π_V folded into W_V / W_O. The same model up
  // to one rounding, so its scores match the unfolded run closely; its prefill is still its plain
  // forward bit for bit; the JSON says which it was.
  const World& w = world();
  ASSERT_TRUE(fs::exists(w.ckpt));
  const std::string base = "--model " + w.model + " --checkpoint " + w.ckpt + " --fasta " +
                           w.fasta + " --overwrite --threads 1 --baselines int8 --json ";
  const test::ProgramRun plain = run(w.dir, "turboesm-compare", base + w.dir + "/plain.json");
  ASSERT_EQ(plain.code, 0) << plain.err;
  const test::ProgramRun folded =
      run(w.dir, "turboesm-compare", base + w.dir + "/folded.json --fold-v");
  ASSERT_EQ(folded.code, 0) << folded.err;
  EXPECT_HAS(folded.out, "V rotation folded");
  const json a = json::parse(test::slurp(w.dir + "/plain.json"));
  const json b = json::parse(test::slurp(w.dir + "/folded.json"));
  EXPECT_FALSE(a["summary"]["value_fold"].get<bool>());
  EXPECT_TRUE(b["summary"]["value_fold"].get<bool>());
  EXPECT_EQ(b["summary"]["prefill_max_abs_diff"].get<double>(), 0.0);
  EXPECT_EQ(a["summary"]["kv_bytes"], b["summary"]["kv_bytes"]);
  for (const char* k : {"layer_cosine_mean", "final_hidden_cosine_mean"})
    EXPECT_NEAR(a["summary"][k].get<double>(), b["summary"][k].get<double>(), 1e-5) << k;
  // The baselines run on the model as loaded: the same numbers either way.
  EXPECT_EQ(a["summary"]["baselines"]["int8"]["layer_cosine_mean"],
            b["summary"]["baselines"]["int8"]["layer_cosine_mean"]);
  // One checkpoint only.
  const test::ProgramRun both = run(
      w.dir, "turboesm-compare",
      base + w.dir + "/x.json --fold-v --no-end-to-end --checkpoint-b " + w.ckpt + " --b-layers 1");
  EXPECT_EQ(both.code, 1);
  EXPECT_HAS(both.err, "not supported with it");
  EXPECT_EQ(error_lines(both.err), 1) << both.err;
  EXPECT_FALSE(fs::exists(w.dir + "/x.json"));
}

TEST(CalibrateCompareProgram, CalibrateRefusesBadInput) {
  const World& w = world();
  const std::string base = "--model " + w.model + " --fasta " + w.fasta + " --threads 1 ";
  struct Case {
    std::string args, needle;
  };
  const Case cases[] = {
      {base + "--out " + w.ckpt, "refusing to overwrite"},
      {base + "--out " + w.dir + "/x.ckpt --bits 5", "K bits must be in 1..4, got 5"},
      {base + "--out " + w.dir + "/x.ckpt --rotation qr", "unknown rotation 'qr'"},
      {base + "--out " + w.dir + "/x.ckpt --qjl maybe", "unknown QJL mode 'maybe'"},
      {base + "--out " + w.dir + "/x.ckpt --center yes", "--center must be on or off"},
      {base + "--out " + w.dir + "/x.ckpt --codebook analytic", "needs norm mode token"},
      {"--model " + w.dir + "/nope --fasta " + w.fasta + " --out " + w.dir + "/x.ckpt", "nope"},
      {"--model " + w.model + " --fasta " + w.dir + "/nope.fasta --out " + w.dir + "/x.ckpt",
       "nope.fasta"},
      {base, "--out is required"},
  };
  for (const Case& c : cases) {
    const test::ProgramRun r = run(w.dir, "turboesm-calibrate", c.args);
    EXPECT_EQ(r.code, 1) << c.args;
    EXPECT_HAS(r.err, c.needle);
    EXPECT_EQ(error_lines(r.err), 1) << r.err;
    EXPECT_FALSE(fs::exists(w.dir + "/x.ckpt")) << c.args;
  }
}

TEST(CalibrateCompareProgram, CompareRefusesAnotherModelsCheckpoint) {
  const World& w = world();
  const std::string other = w.dir + "/other";
  ASSERT_EQ(run(w.dir, "turboesm-make-model",
                "--preset tiny --seed 2 --init-std 0.08 --out " + other + " --overwrite")
                .code,
            0);
  const test::ProgramRun r =
      run(w.dir, "turboesm-compare",
          "--model " + other + " --checkpoint " + w.ckpt + " --fasta " + w.fasta);
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "fingerprint mismatch: same config, different weights");
  EXPECT_EQ(error_lines(r.err), 1);
  const test::ProgramRun bad =
      run(w.dir, "turboesm-compare",
          "--model " + w.model + " --checkpoint " + w.fasta + " --fasta " + w.fasta);
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(error_lines(bad.err), 1) << bad.err;
  const test::ProgramRun base = run(w.dir, "turboesm-compare",
                                    "--model " + w.model + " --checkpoint " + w.ckpt + " --fasta " +
                                        w.fasta + " --baselines int4");
  EXPECT_EQ(base.code, 1);
  EXPECT_HAS(base.err, "int4");
}

}  // namespace
}  // namespace turboesm
