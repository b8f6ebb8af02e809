// SPDX-License-Identifier: MIT
// turboesm-make-model: writes a random-init ESM-2 as a Hugging Face model directory
// (config.json + model.safetensors) that HF transformers loads with EsmForMaskedLM.from_pretrained.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include "cli.h"
#include "turboesm/error.h"
#include "turboesm/model/config.h"
#include "turboesm/model/random_init.h"
#include "turboesm/model/weights.h"

int main(int argc, char** argv) {
  using namespace turboesm;
  CLI::App app{
      "Write a random-init ESM-2 model (HF format: config.json + model.safetensors, HF names and "
      "HF init) that Hugging Face transformers loads. Weights are written tensor by tensor, so "
      "large presets fit in memory.",
      "turboesm-make-model"};
  std::string preset, out, dtype = "fp32";
  uint64_t seed = 0;
  double init_std = 0.02;
  bool overwrite = false;
  std::string presets;
  for (const auto& n : model::EsmConfig::preset_names())
    presets += (presets.empty() ? "" : "|") + n;
  app.add_option("--preset", preset, "model size: " + presets)->required();
  app.add_option("--seed", seed, "random seed")->required();
  app.add_option("--init-std", init_std,
                 "std of the normal init of Linear/Embedding weights (HF default 0.02; 0.08 gives "
                 "peaked attention closer to a trained model)");
  app.add_option("--dtype", dtype, "stored dtype: fp32|fp16|bf16");
  app.add_option("--out", out, "output model directory")->required();
  app.add_flag("--overwrite", overwrite, "replace an existing config.json/model.safetensors");
  if (const int rc = tools::parse_args(app, argc, argv, "turboesm-make-model"); rc >= 0) return rc;
  try {
    const model::EsmConfig config = model::EsmConfig::preset(preset);
    const auto st = model::parse_scalar_type(dtype);
    TURBOESM_CHECK(init_std > 0, "--init-std must be positive, got ", init_std);
    const auto t0 = std::chrono::steady_clock::now();
    auto last = t0;
    model::write_random_model(
        config, seed, init_std, st, out, overwrite, [&](std::size_t done, std::size_t total) {
          auto now = std::chrono::steady_clock::now();
          if (std::chrono::duration<double>(now - last).count() >= 2.0) {
            last = now;
            std::fprintf(stderr, "turboesm-make-model: %zu/%zu tensors\n", done, total);
          }
        });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr,
                 "turboesm-make-model: wrote %s (preset %s, %lld layers, hidden %lld, %s, seed "
                 "%llu, init std %g) in %.1f s\n",
                 out.c_str(), preset.c_str(), static_cast<long long>(config.num_hidden_layers),
                 static_cast<long long>(config.hidden_size), dtype.c_str(),
                 static_cast<unsigned long long>(seed), init_std, s);
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error("turboesm-make-model", e);
  }
}
