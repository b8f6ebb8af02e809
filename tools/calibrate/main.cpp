// SPDX-License-Identifier: MIT
// turboesm-calibrate: FASTA through the FP32 model → per layer/head rotations, scales, means,
// codebooks and QJL constants → one safetensors checkpoint (DESIGN "Checkpoint").
#include <ATen/Parallel.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/calibration/collector.h"
#include "turboesm/calibration/fit.h"
#include "turboesm/error.h"
#include "turboesm/io/fasta.h"
#include "turboesm/io/sha256.h"
#include "turboesm/model/esm2.h"

namespace {

namespace fs = std::filesystem;
constexpr const char* kProg = "turboesm-calibrate";

/// A one-line progress bar with ETA on stderr (redrawn at most every 0.2 s).
class ProgressBar {
 public:
  explicit ProgressBar(std::string what) : what_(std::move(what)), t0_(Clock::now()) {}
  void update(int64_t done, int64_t total, const char* unit) {
    const auto now = Clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double el = std::chrono::duration<double>(now - t0_).count();
    const double frac = total > 0 ? static_cast<double>(done) / total : 1.0;
    const double eta = frac > 0 ? el * (1.0 - frac) / frac : 0.0;
    constexpr int kWidth = 30;
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%s: %-9s [%s] %3d%% %lld/%lld %s  %.1fs  ETA %.1fs   ", kProg,
                 what_.c_str(), bar.c_str(), static_cast<int>(frac * 100),
                 static_cast<long long>(done), static_cast<long long>(total), unit, el, eta);
    if (done >= total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_;
  Clock::time_point t0_, last_{};
};

/// calibration/default.fasta: next to the working directory, the source tree above build/bin, or
/// the installed share directory.
std::string default_fasta(const char* argv0) {
  std::vector<fs::path> tried = {fs::path("calibration") / "default.fasta"};
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) exe = fs::absolute(argv0, ec);
  const fs::path dir = exe.parent_path();
  tried.push_back(dir / ".." / ".." / "calibration" / "default.fasta");
  tried.push_back(dir / ".." / "share" / "turboesm" / "calibration" / "default.fasta");
  std::string list;
  for (const auto& p : tried) {
    if (fs::is_regular_file(p, ec)) return fs::weakly_canonical(p, ec).string();
    list += (list.empty() ? "" : ", ") + p.string();
  }
  TURBOESM_FAIL("no --fasta given and the default calibration set was not found (tried ", list,
                ")");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace turboesm;
  CLI::App app{
      "Calibrate the TurboQuant KV cache of an ESM-2 model: run the FASTA through the FP32 "
      "model, collect post-RoPE K and V per layer and head, fit rotation, per-coordinate scales, "
      "means, Lloyd-Max codebooks and QJL constants, and write one safetensors checkpoint.",
      kProg};
  std::string model_dir, fasta, out, rotation = "svd", qjl = "sign", norm = "none", center = "on",
                                     svd_scales = "on", codebook = "data", device = "cpu";
  int bits = 3, k_bits = 0, v_bits = 0, qjl_dim = 0, threads = 0;
  uint64_t seed = 0;
  int64_t max_tokens = 8192, max_residues = 1022;
  bool overwrite = false;
  std::string samples_cache;
  app.add_option("--model", model_dir, "HF model directory (config.json + model.safetensors)")
      ->required();
  app.add_option("--fasta", fasta,
                 "calibration FASTA (default: calibration/default.fasta, 343 real proteins from "
                 "Debian hmmer-examples; see calibration/PROVENANCE.md)");
  app.add_option("--out", out, "output checkpoint (.safetensors)")->required();
  app.add_option("--bits", bits, "bits per value of K and V codes (1..4)")->capture_default_str();
  app.add_option("--k-bits", k_bits, "bits of K codes (overrides --bits)");
  app.add_option("--v-bits", v_bits, "bits of V codes (overrides --bits)");
  app.add_option("--rotation", rotation, "svd | random | hadamard | identity")
      ->capture_default_str();
  app.add_option("--svd-scales", svd_scales,
                 "per-coordinate scales after the svd rotation: on | off (off = the seed)")
      ->capture_default_str();
  app.add_option("--qjl", qjl, "K residual correction: none | sign (seed) | prod (TurboQuant)")
      ->capture_default_str();
  app.add_option("--qjl-dim", qjl_dim, "m, sign bits per key for --qjl prod (0 = head dim)");
  app.add_option("--norm", norm, "token (store ||x||, quantize x/||x||) | none")
      ->capture_default_str();
  app.add_option("--center", center, "subtract a calibrated per-head mean: on | off")
      ->capture_default_str();
  app.add_option("--codebook", codebook,
                 "data (k-means on calibration values) | analytic (random/hadamard + norm token)")
      ->capture_default_str();
  app.add_option("--seed", seed, "seed of random rotations and QJL projections")
      ->capture_default_str();
  app.add_option("--max-tokens", max_tokens,
                 "vectors collected per layer and head (bounds memory and time; records are "
                 "picked with a deterministic stride over the file)")
      ->capture_default_str();
  app.add_option("--max-residues", max_residues, "crop longer records to this many residues")
      ->capture_default_str();
  app.add_option("--device", device, "cpu | cuda | cuda:N (the forward pass; fitting is CPU)")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = LibTorch default)");
  app.add_option("--samples-cache", samples_cache,
                 "reuse the collected K/V samples from this file if it was written for the same "
                 "model, FASTA and collection options, else collect and write it (sweeps over fit "
                 "options then skip the forward passes)");
  app.add_flag("--overwrite", overwrite, "replace an existing output file");
  if (const int rc = tools::parse_args(app, argc, argv, kProg); rc >= 0) return rc;
  try {
    const auto t_start = std::chrono::steady_clock::now();
    TURBOESM_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
    if (threads > 0) at::set_num_threads(threads);
    TURBOESM_CHECK(max_tokens > 0, "--max-tokens must be > 0, got ", max_tokens);
    TURBOESM_CHECK(center == "on" || center == "off", "--center must be on or off, got '", center,
                   "'");
    TURBOESM_CHECK(svd_scales == "on" || svd_scales == "off",
                   "--svd-scales must be on or off, got '", svd_scales, "'");
    calibration::FitOptions fo;
    fo.bits_k = k_bits > 0 ? k_bits : bits;
    fo.bits_v = v_bits > 0 ? v_bits : bits;
    fo.rotation = quant::parse_rotation_kind(rotation);
    fo.svd_scales = svd_scales == "on";
    fo.qjl = calibration::parse_qjl_mode(qjl);
    fo.qjl_dim = qjl_dim;
    fo.norm = calibration::parse_norm_mode(norm);
    fo.center = center == "on";
    fo.codebook = calibration::parse_codebook_kind(codebook);
    fo.seed = seed;
    // Cheap checks before the model load and the forward passes.
    const model::EsmConfig config = model::EsmConfig::from_file(model_dir);
    fo.validate(static_cast<int>(config.head_dim()));
    if (!overwrite && fs::exists(out))
      TURBOESM_FAIL("refusing to overwrite ", out, " (pass --overwrite)");
    if (fasta.empty()) fasta = default_fasta(argv[0]);
    const auto records = io::read_fasta(fasta);
    const std::string fasta_sha = io::sha256_file_hex(fasta);
    model::LoadOptions lo;
    lo.device = model::parse_device(device);
    auto model = model::Esm2Model::load(model_dir, lo);
    std::fprintf(stderr, "%s: %s (%lld layers, %lld heads, head_dim %lld), %zu records in %s\n",
                 kProg, model_dir.c_str(), static_cast<long long>(config.num_hidden_layers),
                 static_cast<long long>(config.num_attention_heads),
                 static_cast<long long>(config.head_dim()), records.size(), fasta.c_str());
    std::fprintf(stderr, "%s: fitting %s\n", kProg, fo.summary().c_str());
    const std::string fingerprint = calibration::model_fingerprint(model_dir);

    calibration::CollectorOptions co;
    co.max_tokens = max_tokens;
    co.max_residues = max_residues;
    ProgressBar collect_bar("collect");
    co.progress = [&](int64_t done, int64_t total) { collect_bar.update(done, total, "tokens"); };
    const std::string samples_key = fingerprint + " " + fasta_sha +
                                    " max_tokens=" + std::to_string(max_tokens) +
                                    " max_residues=" + std::to_string(max_residues);
    calibration::CollectedSamples samples;
    if (!samples_cache.empty() && fs::exists(samples_cache)) {
      samples = calibration::load_samples(samples_cache, samples_key);
      std::fprintf(stderr, "%s: reusing samples from %s\n", kProg, samples_cache.c_str());
    } else {
      samples = calibration::collect_kv_samples(*model, records, co);
      if (!samples_cache.empty())
        calibration::save_samples(samples_cache, samples, samples_key, /*overwrite=*/false);
    }
    ProgressBar fit_bar("fit");
    const auto fits = calibration::fit_layers(
        samples, fo, [&](int done, int total) { fit_bar.update(done, total, "layers"); });

    calibration::Checkpoint ck;
    ck.meta.options = fo;
    ck.meta.num_layers = model->num_layers();
    ck.meta.num_heads = static_cast<int>(config.num_attention_heads);
    ck.meta.head_dim = static_cast<int>(config.head_dim());
    ck.meta.calibration_sha256 = fasta_sha;
    ck.meta.calibration_tokens = samples.tokens;
    ck.meta.calibration_records = samples.records_used;
    ck.meta.model_fingerprint = fingerprint;
    ck.meta.model_config = config.canonical_json();
    for (const auto& f : fits) {
      ck.layers.push_back(f.constants);
      ck.meta.k_rel_mse.push_back(f.k_rel_mse);
      ck.meta.v_rel_mse.push_back(f.v_rel_mse);
    }
    calibration::write_checkpoint(out, ck, overwrite);

    std::printf("layer  K rel.MSE   V rel.MSE\n");
    double ks = 0, vs = 0;
    for (size_t l = 0; l < fits.size(); ++l) {
      std::printf("%5zu  %9.5f   %9.5f\n", l, fits[l].k_rel_mse, fits[l].v_rel_mse);
      ks += fits[l].k_rel_mse;
      vs += fits[l].v_rel_mse;
    }
    std::printf(" mean  %9.5f   %9.5f\n", ks / fits.size(), vs / fits.size());
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    std::fprintf(stderr,
                 "%s: %lld vectors per layer/head from %lld of %lld records, %.1f s -> %s (%lld "
                 "bytes)\n",
                 kProg, static_cast<long long>(samples.tokens),
                 static_cast<long long>(samples.records_used),
                 static_cast<long long>(samples.records_total), secs, out.c_str(),
                 static_cast<long long>(fs::file_size(out)));
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error(kProg, e);
  }
}
