// SPDX-License-Identifier: MIT
// turboesm-compare: how close the calibrated Turbo KV cache (and the INT8 / FP8 baselines) keep
// ESM-2 to FP32 — per-layer teacher-forced attention cosine and end-to-end append decoding.
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>

#include "cli.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/calibration/compare.h"
#include "turboesm/error.h"
#include "turboesm/io/atomic_file.h"
#include "turboesm/io/fasta.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/mixed_cache.h"

namespace {
constexpr const char* kProg = "turboesm-compare";
}

int main(int argc, char** argv) {
  using namespace turboesm;
  namespace fs = std::filesystem;
  CLI::App app{
      "Measure a calibrated Turbo KV cache against FP32: (a) per layer, teacher-forced, every "
      "position as a query over the compressed K/V (with and without QJL); (b) end to end, "
      "prefill <cls> + the first half of each sequence and append the rest one token at a time "
      "through the FP32 and the compressed cache. INT8 and FP8 caches are measured beside it. "
      "Prints a table; --json writes sequences / summary / timing_ms.",
      kProg};
  std::string model_dir, ckpt_path, fasta, json_out, device = "cpu", baselines = "int8,fp8";
  std::string dense_layers, dense_kind = "int8", ckpt_b, b_layers;
  int threads = 0;
  int64_t max_records = 0, max_residues = 1022;
  bool overwrite = false, no_e2e = false, fold_v = false;
  app.add_option("--model", model_dir, "HF model directory")->required();
  app.add_option("--checkpoint", ckpt_path, "calibration checkpoint (turboesm-calibrate)")
      ->required();
  app.add_option("--fasta", fasta, "sequences to measure")->required();
  app.add_option("--json", json_out, "write the full report as JSON (atomically)");
  app.add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--baselines", baselines,
                 "comma-separated baseline caches: any of fp16, int8, fp8 (empty: none)")
      ->capture_default_str();
  app.add_option("--max-records", max_records, "measure only the first N records (0 = all)");
  app.add_option("--max-residues", max_residues, "crop longer records to this many residues")
      ->capture_default_str();
  app.add_flag("--no-end-to-end", no_e2e, "skip metric (b) (token-by-token append)");
  app.add_option("--dense-layers", dense_layers,
                 "comma-separated layers (0-based) the Turbo cache keeps in --dense-kind instead "
                 "(e.g. 0: layer 0 dominates the end-to-end error); counted in kv_bytes");
  app.add_option("--dense-kind", dense_kind, "format of --dense-layers: int8 | fp8 | fp16 | fp32")
      ->capture_default_str();
  app.add_option("--checkpoint-b", ckpt_b,
                 "a second checkpoint of the same model (e.g. with QJL) used for --b-layers");
  app.add_option("--b-layers", b_layers,
                 "comma-separated layers (0-based) quantized with --checkpoint-b's constants and "
                 "modes; counted in kv_bytes");
  app.add_flag("--fold-v", fold_v,
               "run the Turbo cache on the model with the checkpoint's V rotation folded into "
               "W_V / W_O (the same model up to one rounding; V stored without rotation, faster "
               "on CUDA); the FP32 reference and the baselines run on the model as loaded");
  app.add_option("--threads", threads, "CPU threads (0 = LibTorch default)");
  app.add_flag("--overwrite", overwrite, "replace an existing --json file");
  if (const int rc = tools::parse_args(app, argc, argv, kProg); rc >= 0) return rc;
  try {
    TURBOESM_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
    TURBOESM_CHECK(max_records >= 0, "--max-records must be >= 0, got ", max_records);
    if (threads > 0) at::set_num_threads(threads);
    calibration::CompareOptions co;
    co.baselines.clear();
    std::stringstream ss(baselines);
    for (std::string item; std::getline(ss, item, ',');) {
      if (item.empty()) continue;
      const model::CacheKind k = model::parse_cache_kind(item);
      TURBOESM_CHECK(k == model::CacheKind::kFp16 || k == model::CacheKind::kInt8 ||
                         k == model::CacheKind::kFp8,
                     "--baselines: '", item, "' is not a baseline (expected fp16, int8, fp8)");
      co.baselines.push_back(k);
    }
    co.end_to_end = !no_e2e;
    co.fold_value_rotation = fold_v;
    {
      const model::CacheKind dk = model::parse_cache_kind(dense_kind);
      TURBOESM_CHECK(dk != model::CacheKind::kTurbo,
                     "--dense-kind must be int8, fp8, fp16 or fp32, got turbo");
      for (int l : model::parse_layer_list(dense_layers)) co.dense_layers[l] = dk;
    }
    co.max_residues = max_residues;
    if (!json_out.empty() && !overwrite && fs::exists(json_out))
      TURBOESM_FAIL("refusing to overwrite ", json_out, " (pass --overwrite)");
    auto records = io::read_fasta(fasta);
    if (max_records > 0 && static_cast<int64_t>(records.size()) > max_records)
      records.resize(static_cast<size_t>(max_records));
    // The checkpoint is validated on its own first (cheap), then against the model.
    const calibration::Checkpoint ck = calibration::load_checkpoint(ckpt_path, model_dir);
    model::LoadOptions lo;
    lo.device = model::parse_device(device);
    std::shared_ptr<const model::Esm2Model> model = model::Esm2Model::load(model_dir, lo);
    const model::TurboCacheSpec spec = calibration::turbo_cache_spec_from_checkpoint(ck);
    TURBOESM_CHECK(ckpt_b.empty() == b_layers.empty(),
                   "--checkpoint-b and --b-layers go together (got only one of them)");
    if (!ckpt_b.empty()) {
      co.alt_turbo = std::make_shared<const model::TurboCacheSpec>(
          calibration::turbo_cache_spec_from_checkpoint(
              calibration::load_checkpoint(ckpt_b, model_dir)));
      co.alt_layers = model::parse_layer_list(b_layers);
    }
    co.progress = [](size_t done, size_t total) {
      std::fprintf(stderr, "\r%s: %zu/%zu records", kProg, done, total);
      if (done == total) std::fputc('\n', stderr);
      std::fflush(stderr);
    };
    calibration::CompareReport rep = calibration::compare_records(model, spec, records, co);
    rep.checkpoint_bytes = static_cast<int64_t>(fs::file_size(ckpt_path));
    std::fputs(calibration::report_table(rep).c_str(), stdout);
    if (!json_out.empty()) {
      io::write_file_atomic(json_out, calibration::report_json(rep).dump(2) + "\n", overwrite);
      std::fprintf(stderr, "%s: wrote %s\n", kProg, json_out.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error(kProg, e);
  }
}
