// SPDX-License-Identifier: MIT
#pragma once
/// \file qjl.h
/// \brief 1-bit QJL corrections of the scalar-quantization residual r = z − ẑ (code space).
///
/// Two modes (format.h `QjlMode`):
///  - `kSign` (the seed's behaviour): store sign(r_j) for every coordinate; the decoder adds
///    ±s to ẑ_j, s = calibrated per-head mean |r_j|. Cheap and lowers MSE, but biased for ⟨q, x⟩.
///  - `kProd` (TurboQuant_prod, arXiv 2504.19874 §3.2): store sign(S r) for a Gaussian
///    S ∈ R^{m×d} (iid N(0,1)) and ‖r‖. For any q,
///        ⟨q, r⟩ ≈ sqrt(π/2)/m · ‖r‖ · ⟨S q, sign(S r)⟩,
///    unbiased over S, variance ≤ (π/2)/m · ‖r‖²‖q‖². The dequantised residual is
///    sqrt(π/2)/m · ‖r‖ · Sᵀ sign(S r).
/// Sign bits use the 1-bit bitpack layout; bit = 1 means the projected value is ≥ 0 (+1).

#include <cmath>
#include <cstdint>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/random.h"

namespace turboesm::quant {

/// sqrt(π/2): E|g| = sqrt(2/π) for g ~ N(0,1), so E[sign(⟨s,r⟩)⟨s,q⟩] = sqrt(2/π)⟨q,r⟩/‖r‖.
inline constexpr double kSqrtHalfPi = 1.2533141373155002512;

/// \brief The Gaussian projection of QJL `prod` mode.
struct QjlProjection {
  int m = 0;                    ///< rows (sign bits per token)
  int dim = 0;                  ///< columns (head dim)
  std::vector<float> matrix;    ///< [m, dim] row-major, iid N(0, 1)
  std::vector<float> matrix_t;  ///< [dim, m] row-major transpose (fast paths)

  bool empty() const { return m == 0; }
};

/// \brief Fills S with iid N(0, 1) from a seeded Rng (deterministic across platforms).
inline QjlProjection make_qjl_projection(int m, int dim, uint64_t seed) {
  TURBOESM_CHECK(m > 0 && m % 8 == 0,
                 "QJL projection rows m must be a positive multiple of 8, got ", m);
  TURBOESM_CHECK(dim > 0, "QJL projection dim must be positive, got ", dim);
  QjlProjection p;
  p.m = m;
  p.dim = dim;
  p.matrix.resize(static_cast<size_t>(m) * dim);
  Rng rng(seed);
  fill_normal(rng, p.matrix.data(), p.matrix.size());
  p.matrix_t.resize(p.matrix.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < dim; ++j) p.matrix_t[j * m + i] = p.matrix[i * dim + j];
  return p;
}

/// \brief Wraps a stored projection (e.g. from a checkpoint).
/// \param s [m, dim] row-major
inline QjlProjection qjl_projection_from_matrix(const float* s, int m, int dim) {
  TURBOESM_CHECK(m > 0 && m % 8 == 0,
                 "QJL projection rows m must be a positive multiple of 8, got ", m);
  QjlProjection p;
  p.m = m;
  p.dim = dim;
  p.matrix.assign(s, s + static_cast<size_t>(m) * dim);
  p.matrix_t.resize(p.matrix.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < dim; ++j) {
      TURBOESM_CHECK(std::isfinite(p.matrix[i * dim + j]), "QJL projection entry (", i, ", ", j,
                     ") is not finite");
      p.matrix_t[j * m + i] = p.matrix[i * dim + j];
    }
  return p;
}

/// \brief Reference projection u = S v, u_i = Σ_j S_ij v_j in increasing j.
/// \param v [dim]  \param u [m]
inline void qjl_project_ref(const QjlProjection& p, const float* v, float* u) {
  for (int i = 0; i < p.m; ++i) {
    float acc = 0.0f;
    for (int j = 0; j < p.dim; ++j) acc += p.matrix[i * p.dim + j] * v[j];
    u[i] = acc;
  }
}

/// \brief Fast u = S v, same operation order as qjl_project_ref (accumulates rows of Sᵀ).
inline void qjl_project(const QjlProjection& p, const float* v, float* u) {
  const int m = p.m;
  for (int i = 0; i < m; ++i) u[i] = 0.0f;
  for (int j = 0; j < p.dim; ++j) {
    const float vj = v[j];
    const float* row = p.matrix_t.data() + static_cast<size_t>(j) * m;
    for (int i = 0; i < m; ++i) u[i] += row[i] * vj;
  }
}

/// \brief Packs sign bits of `u[0..n)` (bit 1 = u ≥ 0) into [packed_size(n, 1)] bytes.
inline void pack_signs(const float* u, int n, uint8_t* out) {
  for (int g = 0; g < n / 8; ++g) {
    uint32_t w = 0;
    for (int k = 0; k < 8; ++k) w |= (u[8 * g + k] >= 0.0f ? 1u : 0u) << k;
    out[g] = static_cast<uint8_t>(w);
  }
}

/// \brief Σ_i ±v_i with + where sign bit i is 1 (the ⟨v, sign(·)⟩ of QJL), increasing i.
TURBOESM_HOST_DEVICE inline float signed_sum(const float* v, const uint8_t* sign_bits, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc += ((sign_bits[i >> 3] >> (i & 7)) & 1u) ? v[i] : -v[i];
  return acc;
}

/// \brief Adds `coef · Sᵀ sign` to `z` (prod-mode dequantisation; coef = sqrt(π/2)/m · ‖r‖).
/// \param sign_bits [m/8]  \param z [dim]
inline void qjl_add_dequant(const QjlProjection& p, const uint8_t* sign_bits, float coef,
                            float* z) {
  for (int i = 0; i < p.m; ++i) {
    const float c = ((sign_bits[i >> 3] >> (i & 7)) & 1u) ? coef : -coef;
    const float* row = p.matrix.data() + static_cast<size_t>(i) * p.dim;
    for (int j = 0; j < p.dim; ++j) z[j] += c * row[j];
  }
}

/// \brief Calibrates the `kSign` scale: mean |r| over residual samples (seed behaviour).
/// \param residuals [n] residuals z − ẑ in code space
inline float calibrate_sign_scale(const float* residuals, size_t n) {
  TURBOESM_CHECK(n > 0, "calibrate_sign_scale needs residual samples, got 0");
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += std::abs(static_cast<double>(residuals[i]));
  return static_cast<float>(s / static_cast<double>(n));
}

}  // namespace turboesm::quant
