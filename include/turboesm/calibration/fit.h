// SPDX-License-Identifier: MIT
#pragma once
/// \file fit.h
/// \brief Fits the TurboQuant constants of every (layer, head) of K and V from calibration samples.
///
/// For the samples x [n, d] of one head (DESIGN "The compressed cache"):
///  1. μ = mean of x (when centering; exact for attention: softmax is shift-invariant for K, and
///     Σp = 1 restores V's mean); xc = x − μ.
///  2. u = xc / ‖xc‖ in norm mode `token` (zero vectors skipped), u = xc in mode `none`.
///  3. Π: `svd` = PCA basis of u (quant::make_svd_rotation about 0: u is already centered when
///     centering is on, and the seed's uncentered SVD otherwise); `random` = Haar QR, `hadamard` =
///     randomized Walsh–Hadamard, `identity` (seeded per layer/head/K-V, see head_seed()).
///  4. σ_j (svd with scales on): root mean square of the rotated coordinate (Π u)_j, the standard
///     deviation when centered. The quantizer divides by σ_j before the shared codebook, so a
///     PCA basis, which piles the variance into the leading axes, no longer wastes the codebook's
///     levels on the trailing ones. Floored at kMinScaleFraction × max σ (strictly positive).
///  5. Codebook: `data` = 1-D Lloyd-Max k-means on the values (Π u)_j / σ_j pooled over all
///     coordinates of the head (the seed's data-driven LUT); `analytic` = the Lloyd-Max codebook
///     of a coordinate of a random unit vector in R^d (valid for norm `token` and a data-oblivious
///     rotation: random, hadamard).
///  6. K only: QJL `sign` s = mean |r| of the code-space residuals r = z − C[code(z)] (seed);
///     `prod` S [m, d] iid N(0, 1), seeded per head.
/// The relative MSE Σ‖x − x̂‖² / Σ‖x‖² of the fitted quantizer (QJL included for K) on the same
/// samples is reported per layer for the summary table.

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "turboesm/calibration/collector.h"
#include "turboesm/calibration/fit_options.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/quant/quantizer.h"

namespace turboesm::calibration {

/// σ_j is floored at this fraction of the head's largest σ (keeps 1/σ finite for dead axes).
inline constexpr float kMinScaleFraction = 1e-4f;

/// \brief Deterministic seed of (layer, head, K/V) derived from the user seed (SplitMix64).
uint64_t head_seed(uint64_t seed, int layer, int head, bool key);

/// \brief Fits one head's constants (steps 1–6 of the file comment).
/// \param samples [n, d] row-major finite values, n >= 1
/// \param key     K (QJL as configured) or V (no QJL)
/// \param seed    this head's seed (head_seed())
quant::QuantizerParams fit_head(const float* samples, int64_t n, int d, const FitOptions& opts,
                                bool key, uint64_t seed);

/// \brief Σ‖x − x̂‖² / Σ‖x‖² of `q` over samples (x̂ = decode(encode(x)), QJL term included).
/// \param samples [n, d] row-major. Returns 0 when all samples are 0.
double relative_mse(const quant::TurboQuantizer& q, const float* samples, int64_t n);

/// \brief One layer's fitted constants and their quality on the calibration samples.
struct LayerFit {
  model::TurboLayerConstants constants;  ///< CPU fp32 tensors (see turbo_cache.h)
  double k_rel_mse = 0.0;                ///< mean over heads of relative_mse (K, QJL included)
  double v_rel_mse = 0.0;                ///< same for V
};

/// \brief Fits every layer (parallel over heads with at::parallel_for).
/// \param progress called after each layer with (layers done, layers total); may be empty.
std::vector<LayerFit> fit_layers(const CollectedSamples& samples, const FitOptions& opts,
                                 const std::function<void(int, int)>& progress = {});

/// \brief Packs per-head params into the [H, ...] tensors of TurboHeadConstants.
model::TurboHeadConstants pack_head_constants(const std::vector<quant::QuantizerParams>& heads,
                                              const quant::QuantizerConfig& config);

}  // namespace turboesm::calibration
