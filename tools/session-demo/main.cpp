// SPDX-License-Identifier: MIT
// turboesm-session-demo: the intended use of a Session. Prefill a prefix, append the remaining
// residues one at a time, and print at each new position the MLM top-3 residues and the cache
// size, for the FP32 cache and the Turbo (compressed) cache side by side.
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace {

using namespace turboesm;

/// "A 0.91 G 0.03 L 0.02" for position 0 of logits [1, 1, vocab].
std::string top3(const at::Tensor& logits) {
  const at::Tensor p = at::softmax(logits[0][0].to(at::kFloat), -1);
  const auto top = p.topk(3);
  std::string s;
  const auto& tok = io::EsmTokenizer::instance();
  for (int i = 0; i < 3; ++i) {
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%s%s %.2f", i ? " " : "",
                  tok.token(std::get<1>(top)[i].item<int64_t>()).c_str(),
                  std::get<0>(top)[i].item<double>());
    s += buf;
  }
  return s;
}

std::string human_bytes(int64_t b) {
  char buf[32];
  if (b >= (int64_t(1) << 20))
    std::snprintf(buf, sizeof(buf), "%.2f MiB", b / 1048576.0);
  else
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Session demo: prefill a prefix, then append residues one at a time and print, at each new "
      "position, the MLM top-3 residues and the KV-cache size for the FP32 and the Turbo cache.",
      "turboesm-session-demo"};
  std::string model_dir, preset = "tiny", sequence, checkpoint, rotation = "random", norm = "token",
                         qjl = "none";
  int prefix = -1, bits = 3, threads = 0;
  uint64_t seed = 1;
  double init_std = 0.08;
  bool random_rotation = false;
  app.add_option("--model", model_dir, "HF model directory (default: a random --preset model)");
  app.add_option("--preset", preset, "random-weight model preset when --model is not given");
  app.add_option("--seed", seed, "seed of the random model and of --random-rotation constants");
  app.add_option("--init-std", init_std, "init std of the random model (0.08: peaked attention)");
  app.add_option("--sequence", sequence, "protein sequence (default: a globin fragment)");
  app.add_option("--prefix", prefix, "residues in the prefix (default: half)");
  auto* ck = app.add_option("--checkpoint", checkpoint,
                            "calibration checkpoint (turboesm-calibrate) for the Turbo cache");
  auto* rr = app.add_flag("--random-rotation", random_rotation,
                          "data-free Turbo constants: random rotation + analytic codebook");
  ck->excludes(rr);
  app.add_option("--bits", bits, "K and V bits with --random-rotation (2, 3, 4)");
  app.add_option("--rotation", rotation, "identity | random | hadamard (--random-rotation)");
  app.add_option("--norm", norm, "token | none (--random-rotation)");
  app.add_option("--qjl", qjl, "none | sign | prod (--random-rotation)");
  app.add_option("--threads", threads, "CPU threads (0: LibTorch default)");
  if (const int rc = tools::parse_args(app, argc, argv, "turboesm-session-demo"); rc >= 0)
    return rc;
  try {
    c10::InferenceMode guard;
    if (threads > 0) at::set_num_threads(threads);
    if (sequence.empty()) sequence = "VLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF";  // HBA_HUMAN
    std::shared_ptr<const model::Esm2Model> m =
        model_dir.empty()
            ? model::Esm2Model::random(model::EsmConfig::preset(preset), seed, init_std)
            : model::Esm2Model::load(model_dir);
    const std::string model_desc = model_dir.empty()
                                       ? "random " + preset + " (seed " + std::to_string(seed) +
                                             ", init-std " + std::to_string(init_std) + ")"
                                       : model_dir;
    model::TurboCacheSpec spec;
    std::string spec_source;
    if (!checkpoint.empty()) {
      TURBOESM_CHECK(!model_dir.empty(),
                     "--checkpoint needs --model (the checkpoint is checked against the model it "
                     "was calibrated for)");
      spec = calibration::turbo_cache_spec_from_checkpoint(
          calibration::load_checkpoint(checkpoint, model_dir));
      spec_source = "checkpoint " + checkpoint;
    } else {
      TURBOESM_CHECK(random_rotation,
                     "the Turbo cache needs constants: pass --checkpoint CKPT (from "
                     "turboesm-calibrate) or --random-rotation (data-free constants)");
      spec = model::TurboCacheSpec::random(
          m->config(), bits, bits, quant::parse_rotation_kind(rotation),
          quant::parse_norm_mode(norm), quant::parse_qjl_mode(qjl), seed);
      spec_source = "--random-rotation (" + spec.description + ")";
    }
    const auto& tok = io::EsmTokenizer::instance();
    const std::vector<int64_t> ids = tok.encode(sequence);  // <cls> residues <eos>
    const int residues = static_cast<int>(ids.size()) - 2;
    TURBOESM_CHECK(residues >= 2, "--sequence needs at least 2 residues, got ", residues);
    if (prefix < 0) prefix = residues / 2;
    TURBOESM_CHECK(prefix >= 1 && prefix < residues, "--prefix must be in [1, ", residues - 1,
                   "], got ", prefix);

    model::Session fp32(m,
                        model::make_kv_cache(model::CacheKind::kFp32, m->config(), 1, m->device()));
    model::Session turbo(
        m, model::make_kv_cache(model::CacheKind::kTurbo, m->config(), 1, m->device(), &spec));
    std::printf("model:       %s\n", model_desc.c_str());
    std::printf("turbo cache: %s\n             constants from %s\n", spec.summary().c_str(),
                spec_source.c_str());
    std::printf("sequence:    %d residues, prefix <cls> + %d residues, then one at a time\n\n",
                residues, prefix);
    const std::vector<int64_t> pre(ids.begin(), ids.begin() + 1 + prefix);
    const at::Tensor pre_t = at::tensor(pre, at::kLong).unsqueeze(0);
    fp32.prefill(pre_t);
    turbo.prefill(pre_t);
    std::printf("after prefill: FP32 cache %s, Turbo cache %s (%.1fx smaller)\n\n",
                human_bytes(fp32.kv_bytes()).c_str(), human_bytes(turbo.kv_bytes()).c_str(),
                double(fp32.kv_bytes()) / double(turbo.kv_bytes()));
    std::printf("%4s %3s | %-28s %10s | %-28s %10s\n", "pos", "res", "FP32 top-3", "cache",
                "Turbo top-3", "cache");
    int agree = 0, steps = 0;
    for (size_t t = pre.size(); t + 1 < ids.size(); ++t) {  // the remaining residues
      const at::Tensor x = at::tensor(std::vector<int64_t>{ids[t]}, at::kLong).unsqueeze(0);
      fp32.append(x);
      turbo.append(x);
      const at::Tensor lf = fp32.logits(), lt = turbo.logits();
      agree += lf.argmax(-1).item<int64_t>() == lt.argmax(-1).item<int64_t>();
      ++steps;
      std::printf("%4zu %3s | %-28s %10s | %-28s %10s\n", t, tok.token(ids[t]).c_str(),
                  top3(lf).c_str(), human_bytes(fp32.kv_bytes()).c_str(), top3(lt).c_str(),
                  human_bytes(turbo.kv_bytes()).c_str());
    }
    std::printf(
        "\ntop-1 agreement Turbo vs FP32: %d / %d; final cache: FP32 %s, Turbo %s "
        "(%.1fx smaller; allocated %s)\n",
        agree, steps, human_bytes(fp32.kv_bytes()).c_str(), human_bytes(turbo.kv_bytes()).c_str(),
        double(fp32.kv_bytes()) / double(turbo.kv_bytes()),
        human_bytes(turbo.allocated_bytes()).c_str());
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error("turboesm-session-demo", e);
  }
}
