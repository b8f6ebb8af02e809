// SPDX-License-Identifier: MIT
#pragma once
/// \file distortion.h
/// \brief The quantizer-alone experiment behind `turboesm-quantstat` and the distortion tests:
/// MSE and inner-product distortion of TurboQuantizer on synthetic vectors, as in the TurboQuant
/// paper (arXiv 2504.19874, Theorems 1–2 and Fig. 3).
///
/// Data: N uniformly random unit vectors of R^d, or (outliers = K > 0) Gaussian N(0, I) vectors
/// whose K channels (a fixed random subset) are scaled × outlier_scale, as real attention keys
/// have. The codebook is analytic (Lloyd-Max for the coordinate of a random unit vector in R^d).
///
/// Measures:
///  - d_mse            mean ‖x − x̂‖² / ‖x‖², x̂ = decode(encode(x)) (QJL term included)
///  - d_mse_codes      the same for the scalar-code stage alone (x̂ without the QJL term)
///  - d_prod_times_dim d × mean (⟨y, x⟩ − est)² / ‖x‖² over independent random unit y, where
///                     est = score(prepare_query(y), code) is the code-space estimate
///  - ip_slope, ip_slope_se: least-squares slope through the origin of est against ⟨y, x⟩ over
///    pairs y = ρ x/‖x‖ + sqrt(1 − ρ²) z (ρ ~ U[−1, 1], z a random unit vector ⊥ x), drawing a
///    fresh rotation (of the same kind) and a fresh QJL projection for every pair — the setting of
///    the paper's unbiasedness (expectation over Π and S). An unbiased estimator has slope 1; an
///    MSE quantizer shrinks it to about 1 − d_mse. The standard error assumes independent pairs.
/// A fresh Haar rotation costs a d × d QR per pair, so `pairs` defaults to min(N, 10000).

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/format.h"
#include "turboesm/quant/qjl.h"
#include "turboesm/quant/quantizer.h"
#include "turboesm/quant/random.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::quant {

/// \brief Experiment settings (quantstat's command line).
struct DistortionConfig {
  int bits = 3;
  int dim = 64;
  QjlMode qjl = QjlMode::kNone;  ///< mse mode = kNone, prod mode = kProd, sign mode = kSign
  int qjl_dim = 0;               ///< m (0 → d)
  RotationKind rotation = RotationKind::kRandom;
  NormMode norm = NormMode::kToken;
  int64_t n = 100000;  ///< vectors for d_mse and d_prod
  int64_t pairs = -1;  ///< pairs for ip_slope (-1 → min(n, 10000); 0 → skip)
  uint64_t seed = 0;
  int outliers = 0;  ///< K outlier channels (0: random unit vectors)
  float outlier_scale = 20.0f;
  int64_t sign_calibration = 4096;  ///< samples used to calibrate the kSign scale
  bool measure_d_prod = true;       ///< false: skip the random-probe loop (d_prod_times_dim = NaN)
};

/// \brief Experiment results (quantstat's JSON).
struct DistortionResult {
  double d_mse = 0.0;
  double d_mse_codes = 0.0;
  double d_mse_optimum = 0.0;  ///< d × expected per-coordinate error of the codebook (unit vectors)
  double d_prod_times_dim = 0.0;
  double ip_slope = 0.0;
  double ip_slope_se = 0.0;
  int64_t pairs = 0;
  double bits_per_value = 0.0;
  int bytes_per_token = 0;
  int qjl_dim = 0;
  float qjl_sign_scale = 0.0f;
  double orthogonality_error = 0.0;
  std::string rotation_description;
  double seconds = 0.0;
};

namespace detail {

/// Draws one data vector: random unit vector, or Gaussian with scaled outlier channels.
inline void draw_data_vector(Rng& rng, const DistortionConfig& c,
                             const std::vector<int>& outlier_ch, float* x) {
  if (c.outliers == 0) {
    random_unit_vector(rng, x, c.dim);
    return;
  }
  fill_normal(rng, x, static_cast<size_t>(c.dim));
  for (int ch : outlier_ch) x[ch] *= c.outlier_scale;
}

inline double dot(const float* a, const float* b, int d) {
  double s = 0.0;
  for (int j = 0; j < d; ++j) s += static_cast<double>(a[j]) * b[j];
  return s;
}

inline TurboQuantizer make_experiment_quantizer(const DistortionConfig& c, const Codebook& cb,
                                                uint64_t rotation_seed, uint64_t qjl_seed,
                                                float sign_scale) {
  QuantizerConfig qc;
  qc.dim = c.dim;
  qc.bits = c.bits;
  qc.norm = c.norm;
  qc.qjl = c.qjl;
  qc.qjl_dim = c.qjl_dim;
  QuantizerParams p;
  p.rotation = make_rotation(c.rotation, c.dim, rotation_seed);
  p.codebook = cb;
  p.qjl_sign_scale = sign_scale;
  if (c.qjl == QjlMode::kProd)
    p.qjl_projection =
        make_qjl_projection(effective_qjl_dim(c.dim, c.qjl, c.qjl_dim), c.dim, qjl_seed);
  return TurboQuantizer(qc, std::move(p));
}

}  // namespace detail

/// \brief Runs the experiment (deterministic for a given config). Throws turboesm::Error on an
/// invalid config.
inline DistortionResult measure_distortion(const DistortionConfig& c) {
  const auto t0 = std::chrono::steady_clock::now();
  TURBOESM_CHECK(c.n >= 1, "n must be >= 1, got ", c.n);
  TURBOESM_CHECK(c.outliers >= 0 && c.outliers <= c.dim, "outliers must be in [0, dim=", c.dim,
                 "], got ", c.outliers);
  TURBOESM_CHECK(
      c.rotation != RotationKind::kSvd,
      "the distortion experiment supports rotations random, hadamard, identity (svd needs "
      "calibration data)");
  check_page_layout_args(c.dim, c.bits, c.norm, c.qjl, c.qjl_dim);
  const int d = c.dim;
  Rng rng(c.seed);
  // Independent streams for data, rotations and projections.
  const uint64_t rot_seed = rng.next_u64(), qjl_seed = rng.next_u64();
  Rng data(rng.next_u64()), probe(rng.next_u64()), pair_rng(rng.next_u64());

  std::vector<int> outlier_ch;
  if (c.outliers > 0) {  // fixed random subset of channels (partial Fisher–Yates)
    std::vector<int> perm(d);
    for (int j = 0; j < d; ++j) perm[j] = j;
    for (int j = 0; j < c.outliers; ++j) {
      const int k = j + static_cast<int>(rng.next_u64() % static_cast<uint64_t>(d - j));
      std::swap(perm[j], perm[k]);
      outlier_ch.push_back(perm[j]);
    }
  }

  const Codebook cb = analytic_codebook(d, c.bits);
  DistortionResult res;
  res.d_mse_optimum = d * analytic_coordinate_mse(cb, d);

  float sign_scale = 0.0f;
  if (c.qjl == QjlMode::kSign) {  // calibrate s on separate samples, as calibration would
    DistortionConfig cn = c;
    cn.qjl = QjlMode::kNone;
    const TurboQuantizer q0 = detail::make_experiment_quantizer(cn, cb, rot_seed, qjl_seed, 0.0f);
    Rng cal(rng.next_u64());
    std::vector<float> samples(static_cast<size_t>(c.sign_calibration) * d);
    for (int64_t i = 0; i < c.sign_calibration; ++i)
      detail::draw_data_vector(cal, c, outlier_ch, samples.data() + i * d);
    sign_scale =
        calibrate_qjl_sign_scale(q0, samples.data(), static_cast<size_t>(c.sign_calibration));
  }
  res.qjl_sign_scale = sign_scale;

  const TurboQuantizer q = detail::make_experiment_quantizer(c, cb, rot_seed, qjl_seed, sign_scale);
  const PageLayout& lay = q.layout();
  res.rotation_description = q.params().rotation.description;
  res.orthogonality_error = orthogonality_error(q.params().rotation);
  res.bytes_per_token = bytes_per_token_per_head(d, c.bits, c.norm, c.qjl, c.qjl_dim);
  res.bits_per_value = bits_per_value(d, c.bits, c.norm, c.qjl, c.qjl_dim);
  res.qjl_dim = lay.qjl_dim;

  std::vector<uint8_t> page(lay.page_bytes);
  std::vector<float> x(d), xh(d), y(d), r(d);
  PreparedQuery pq;
  double sum_mse = 0.0, sum_mse_codes = 0.0, sum_prod = 0.0;
  for (int64_t i = 0; i < c.n; ++i) {
    const int t = static_cast<int>(i % lay.page_tokens);
    detail::draw_data_vector(data, c, outlier_ch, x.data());
    const double x2 = detail::dot(x.data(), x.data(), d);
    q.encode(x.data(), page.data(), t);
    q.decode(page.data(), t, xh.data());
    double e2 = 0.0;
    for (int j = 0; j < d; ++j)
      e2 += (static_cast<double>(x[j]) - xh[j]) * (static_cast<double>(x[j]) - xh[j]);
    sum_mse += e2 / x2;
    q.residual(x.data(), r.data());
    const double r2 = detail::dot(r.data(), r.data(), d);
    sum_mse_codes += (c.norm == NormMode::kToken ? r2 : r2 / x2);
    if (!c.measure_d_prod) continue;
    random_unit_vector(probe, y.data(), d);
    q.prepare_query(y.data(), &pq);
    const double err = detail::dot(y.data(), x.data(), d) - q.score(pq, page.data(), t);
    sum_prod += err * err / x2;
  }
  res.d_mse = sum_mse / c.n;
  res.d_mse_codes = sum_mse_codes / c.n;
  res.d_prod_times_dim = c.measure_d_prod ? d * sum_prod / c.n : std::nan("");

  res.pairs = c.pairs < 0 ? std::min<int64_t>(c.n, 10000) : c.pairs;
  if (res.pairs > 0) {
    double stt = 0.0, ste = 0.0, see = 0.0;
    std::vector<float> g(d);
    for (int64_t i = 0; i < res.pairs; ++i) {
      const TurboQuantizer qi = detail::make_experiment_quantizer(c, cb, pair_rng.next_u64(),
                                                                  pair_rng.next_u64(), sign_scale);
      detail::draw_data_vector(pair_rng, c, outlier_ch, x.data());
      const double xn = std::sqrt(detail::dot(x.data(), x.data(), d));
      // z: random unit vector orthogonal to x (Gram–Schmidt in double, twice for accuracy).
      random_unit_vector(pair_rng, g.data(), d);
      std::vector<double> zd(g.begin(), g.end());
      for (int pass = 0; pass < 2; ++pass) {
        double pr = 0.0;
        for (int j = 0; j < d; ++j) pr += zd[j] * x[j] / xn;
        for (int j = 0; j < d; ++j) zd[j] -= pr * x[j] / xn;
      }
      double zn = 0.0;
      for (int j = 0; j < d; ++j) zn += zd[j] * zd[j];
      zn = std::sqrt(zn);
      const double rho = 2.0 * pair_rng.uniform() - 1.0;
      const double cz = std::sqrt(std::max(0.0, 1.0 - rho * rho));
      for (int j = 0; j < d; ++j) y[j] = static_cast<float>(rho * x[j] / xn + cz * zd[j] / zn);
      qi.encode(x.data(), page.data(), 0);
      qi.prepare_query(y.data(), &pq);
      const double truth = detail::dot(y.data(), x.data(), d) / xn;
      const double est = qi.score(pq, page.data(), 0) / xn;
      stt += truth * truth;
      ste += truth * est;
      see += est * est;
    }
    res.ip_slope = ste / stt;
    // Residual variance of est - slope*truth, then SE of the slope through the origin.
    const double rss =
        std::max(0.0, see - 2.0 * res.ip_slope * ste + res.ip_slope * res.ip_slope * stt);
    const double sigma2 = res.pairs > 1 ? rss / static_cast<double>(res.pairs - 1) : 0.0;
    res.ip_slope_se = std::sqrt(sigma2 / stt);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace turboesm::quant
