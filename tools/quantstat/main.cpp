// SPDX-License-Identifier: MIT
/// \file main.cpp
/// \brief turboesm-quantstat: measures the quantizer alone on synthetic vectors and prints one
/// JSON object (see include/turboesm/quant/distortion.h for every field's definition).

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli.h"
#include "turboesm/error.h"
#include "turboesm/quant/distortion.h"

int main(int argc, char** argv) {
  namespace tq = turboesm::quant;
  CLI::App app{
      "turboesm-quantstat: quantize N synthetic vectors with the TurboQuant core (analytic "
      "Lloyd-Max codebook) and print distortion, inner-product bias and storage as one JSON "
      "object"};
  int bits = 3, dim = 64, outliers = 0, qjl_dim = 0;
  int64_t n = 100000, pairs = -1;
  uint64_t seed = 0;
  float outlier_scale = 20.0f;
  std::string mode = "mse", rotation = "random", norm = "token";
  app.add_option("--bits", bits, "bits of the scalar codes (1..4)")->capture_default_str();
  app.add_option("--dim", dim, "vector dimension (16, 24, 32, 64, 128)")->capture_default_str();
  app.add_option("--mode", mode,
                 "mse: codes only; prod: codes + 1-bit QJL sign(S r) and ||r|| (unbiased); "
                 "sign: codes + seed-style sign(r)*s correction")
      ->check(CLI::IsMember({"mse", "prod", "sign"}))
      ->capture_default_str();
  app.add_option("--rotation", rotation, "random (Haar), hadamard (randomized), identity")
      ->check(CLI::IsMember({"random", "hadamard", "identity"}))
      ->capture_default_str();
  app.add_option("--norm", norm, "token: store ||x|| in fp16, quantize x/||x||; none")
      ->check(CLI::IsMember({"token", "none"}))
      ->capture_default_str();
  app.add_option("--n", n, "number of vectors for d_mse and d_prod")->capture_default_str();
  app.add_option("--pairs", pairs,
                 "pairs for ip_slope, each with a fresh rotation and QJL projection "
                 "(-1: min(n, 10000); 0: skip)")
      ->capture_default_str();
  app.add_option("--seed", seed, "seed of every random draw")->capture_default_str();
  app.add_option("--outliers", outliers,
                 "K > 0: Gaussian vectors whose K channels are scaled x --outlier-scale")
      ->capture_default_str();
  app.add_option("--outlier-scale", outlier_scale, "scale of the outlier channels")
      ->capture_default_str();
  app.add_option("--qjl-dim", qjl_dim, "m, rows of the QJL projection in prod mode (0: dim)")
      ->capture_default_str();
  if (const int rc = turboesm::tools::parse_args(app, argc, argv, "turboesm-quantstat"); rc >= 0)
    return rc;

  try {
    TURBOESM_CHECK(tq::is_supported_head_dim(dim), "unsupported dim: ", dim,
                   " (supported: 16, 24, 32, 64, 128)");
    tq::DistortionConfig c;
    c.bits = bits;
    c.dim = dim;
    c.qjl = mode == "prod"   ? tq::QjlMode::kProd
            : mode == "sign" ? tq::QjlMode::kSign
                             : tq::QjlMode::kNone;
    c.qjl_dim = qjl_dim;
    c.rotation = tq::parse_rotation_kind(rotation);
    c.norm = tq::parse_norm_mode(norm);
    c.n = n;
    c.pairs = pairs;
    c.seed = seed;
    c.outliers = outliers;
    c.outlier_scale = outlier_scale;
    const tq::DistortionResult r = tq::measure_distortion(c);
    nlohmann::json j;
    j["bits"] = bits;
    j["dim"] = dim;
    j["mode"] = mode;
    j["rotation"] = rotation;
    j["rotation_detail"] = r.rotation_description;
    j["orthogonality_error"] = r.orthogonality_error;
    j["norm"] = norm;
    j["codebook"] = "analytic";
    j["n"] = n;
    j["seed"] = seed;
    j["outliers"] = outliers;
    if (outliers > 0) j["outlier_scale"] = outlier_scale;
    j["d_mse"] = r.d_mse;
    j["d_mse_codes"] = r.d_mse_codes;
    j["d_mse_optimum"] = r.d_mse_optimum;
    j["d_prod_times_dim"] = r.d_prod_times_dim;
    j["ip_slope"] = r.ip_slope;
    j["ip_slope_se"] = r.ip_slope_se;
    j["ip_pairs"] = r.pairs;
    if (c.qjl != tq::QjlMode::kNone) j["qjl_dim"] = r.qjl_dim;
    if (c.qjl == tq::QjlMode::kSign) j["qjl_sign_scale"] = r.qjl_sign_scale;
    j["bytes_per_token"] = r.bytes_per_token;
    j["bits_per_value"] = r.bits_per_value;
    j["seconds"] = r.seconds;
    std::cout << j.dump() << std::endl;
  } catch (const std::exception& e) {
    return turboesm::tools::report_error("turboesm-quantstat", e);
  }
  return 0;
}
