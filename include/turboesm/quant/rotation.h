// SPDX-License-Identifier: MIT
#pragma once
/// \file rotation.h
/// \brief Orthogonal rotations Π [d × d] applied before scalar quantization: identity, Haar-random,
/// randomized Hadamard, and SVD/PCA of calibration samples.
///
/// Convention: `y = Π x` with Π stored row-major (`matrix[i * d + j] = Π_ij`); Πᵀ undoes it.
///
/// Randomized Hadamard: Π = H D / sqrt(d), D = diag(random ±1), H a Hadamard matrix (entries ±1,
/// H Hᵀ = d I). For d = 2^k, H is Sylvester's and Π x is applied in O(d log d) by the fast
/// Walsh–Hadamard transform. Other d: H = H_{2^k} ⊗ P with P a Paley-I Hadamard matrix of order
/// q + 1 (q prime, q ≡ 3 mod 4); d = 24 uses P of order 24 (q = 23), a true Hadamard matrix (every
/// output mixes all 24 inputs with equal weight, unlike block-diagonal 8×8 blocks). Such Π are
/// applied as a dense matvec. Dims with neither form (e.g. 56) are refused with an error that
/// points to `random`.

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/quant/host_device.h"
#include "turboesm/quant/random.h"

namespace turboesm::quant {

/// \brief The four kinds of rotation.
enum class RotationKind : int { kIdentity = 0, kRandom = 1, kHadamard = 2, kSvd = 3 };

/// \brief "identity" / "random" / "hadamard" / "svd".
inline const char* to_string(RotationKind k) {
  switch (k) {
    case RotationKind::kIdentity:
      return "identity";
    case RotationKind::kRandom:
      return "random";
    case RotationKind::kHadamard:
      return "hadamard";
    case RotationKind::kSvd:
      return "svd";
  }
  return "?";
}

/// \brief Parses a rotation name; throws naming the accepted values.
inline RotationKind parse_rotation_kind(const std::string& s) {
  if (s == "identity") return RotationKind::kIdentity;
  if (s == "random") return RotationKind::kRandom;
  if (s == "hadamard") return RotationKind::kHadamard;
  if (s == "svd") return RotationKind::kSvd;
  TURBOESM_FAIL("unknown rotation '", s, "' (expected: identity, random, hadamard, svd)");
}

/// \brief An orthogonal d × d rotation with an optional fast path.
struct Rotation {
  int dim = 0;
  RotationKind kind = RotationKind::kIdentity;
  std::vector<float> matrix;    ///< [dim, dim] row-major Π
  std::vector<float> matrix_t;  ///< [dim, dim] row-major Πᵀ (fast dense paths walk its rows)
  /// [dim] ±1 diagonal D when Π = H D / sqrt(dim) with H Sylvester (fast Walsh–Hadamard path);
  /// empty otherwise.
  std::vector<float> hadamard_signs;
  std::string description;  ///< human-readable construction, printed by the tools

  bool has_fast_hadamard() const { return !hadamard_signs.empty(); }
};

/// \brief ‖Π Πᵀ − I‖_max (largest absolute entry), computed in double.
/// \param m [dim, dim] row-major
inline double orthogonality_error(const float* m, int dim) {
  double err = 0.0;
  for (int i = 0; i < dim; ++i)
    for (int k = 0; k < dim; ++k) {
      double s = 0.0;
      for (int j = 0; j < dim; ++j)
        s += static_cast<double>(m[i * dim + j]) * static_cast<double>(m[k * dim + j]);
      err = std::max(err, std::abs(s - (i == k ? 1.0 : 0.0)));
    }
  return err;
}
inline double orthogonality_error(const Rotation& r) {
  return orthogonality_error(r.matrix.data(), r.dim);
}

namespace detail {
inline bool is_power_of_two(int d) { return d > 0 && (d & (d - 1)) == 0; }
inline bool is_prime(int q) {
  if (q < 2) return false;
  for (int f = 2; f * f <= q; ++f)
    if (q % f == 0) return false;
  return true;
}

/// Sylvester Hadamard matrix entry H_{2^k}[i][j] = (-1)^popcount(i & j).
inline int sylvester_entry(int i, int j) {
  return (__builtin_popcount(static_cast<unsigned>(i & j)) & 1) ? -1 : 1;
}

/// Paley construction I: order p = q + 1, q prime ≡ 3 (mod 4). Returns [p, p] row-major ±1.
inline std::vector<int> paley_hadamard(int p) {
  const int q = p - 1;
  std::vector<int> chi(q, -1);  // quadratic character mod q
  chi[0] = 0;
  for (int x = 1; x < q; ++x) chi[(x * x) % q] = 1;
  std::vector<int> h(p * p);
  // S = [[0, 1ᵀ], [-1, Q]] with Q_ij = chi(j - i); H = I + S.
  for (int i = 0; i < p; ++i)
    for (int j = 0; j < p; ++j) {
      int s;
      if (i == 0)
        s = (j == 0) ? 0 : 1;
      else if (j == 0)
        s = -1;
      else
        s = chi[((j - i) % q + q) % q];
      h[i * p + j] = s + (i == j ? 1 : 0);
    }
  return h;
}

/// Splits d = 2^k · p with p = 1 or a Paley order (q + 1, q prime ≡ 3 mod 4); p = 0 if impossible.
inline int paley_factor(int d) {
  if (is_power_of_two(d)) return 1;
  for (int p = d; p >= 1; p /= 2) {
    if (d % p != 0) continue;
    if (!is_power_of_two(d / p)) continue;
    if (p == 1) return 1;
    const int q = p - 1;
    if (q >= 3 && q % 4 == 3 && is_prime(q)) return p;
    if (p % 2 != 0) break;
  }
  return 0;
}

inline void fill_transpose(Rotation& r) {
  const int d = r.dim;
  r.matrix_t.resize(static_cast<size_t>(d) * d);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) r.matrix_t[j * d + i] = r.matrix[i * d + j];
}
}  // namespace detail

/// \brief Identity Π = I.
inline Rotation make_identity_rotation(int dim) {
  TURBOESM_CHECK(dim > 0, "rotation dim must be positive, got ", dim);
  Rotation r;
  r.dim = dim;
  r.kind = RotationKind::kIdentity;
  r.matrix.assign(static_cast<size_t>(dim) * dim, 0.0f);
  for (int i = 0; i < dim; ++i) r.matrix[i * dim + i] = 1.0f;
  detail::fill_transpose(r);
  r.description = "identity";
  return r;
}

/// \brief Haar-random orthogonal Π: QR of a d × d standard Gaussian (seeded Rng, double precision),
/// columns of Q multiplied by sign(R_jj) so the law is exactly Haar.
inline Rotation make_random_rotation(int dim, uint64_t seed) {
  TURBOESM_CHECK(dim > 0, "rotation dim must be positive, got ", dim);
  Rng rng(seed);
  Eigen::MatrixXd g(dim, dim);
  for (int i = 0; i < dim; ++i)
    for (int j = 0; j < dim; ++j) g(i, j) = rng.normal();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(dim, dim);
  const Eigen::MatrixXd& rr = qr.matrixQR();
  for (int j = 0; j < dim; ++j)
    if (rr(j, j) < 0) q.col(j) *= -1.0;
  Rotation r;
  r.dim = dim;
  r.kind = RotationKind::kRandom;
  r.matrix.resize(static_cast<size_t>(dim) * dim);
  for (int i = 0; i < dim; ++i)
    for (int j = 0; j < dim; ++j) r.matrix[i * dim + j] = static_cast<float>(q(i, j));
  detail::fill_transpose(r);
  r.description = "random (Haar: QR of a Gaussian, sign-fixed; seed " + std::to_string(seed) + ")";
  return r;
}

/// \brief Randomized Hadamard Π = H D / sqrt(d) (see the file comment for d not a power of two).
inline Rotation make_hadamard_rotation(int dim, uint64_t seed) {
  TURBOESM_CHECK(dim > 0, "rotation dim must be positive, got ", dim);
  const int p = detail::paley_factor(dim);
  TURBOESM_CHECK(p != 0,
                 "hadamard rotation needs head_dim = 2^k or 2^k*(q+1) with q prime = 3 mod 4 "
                 "(e.g. 16, 24, 32, 64, 128), got ",
                 dim, "; use rotation 'random' instead");
  Rng rng(seed);
  std::vector<float> signs(dim);
  for (int j = 0; j < dim; ++j) signs[j] = rng.sign();
  std::vector<int> paley;
  if (p > 1) paley = detail::paley_hadamard(p);
  const float inv_sqrt = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  Rotation r;
  r.dim = dim;
  r.kind = RotationKind::kHadamard;
  r.matrix.resize(static_cast<size_t>(dim) * dim);
  for (int i = 0; i < dim; ++i)
    for (int j = 0; j < dim; ++j) {
      int h;
      if (p == 1) {
        h = detail::sylvester_entry(i, j);
      } else {  // (H_{2^k} ⊗ P)[i][j] = H[i / p][j / p] * P[i % p][j % p]
        h = detail::sylvester_entry(i / p, j / p) * paley[(i % p) * p + (j % p)];
      }
      r.matrix[i * dim + j] = static_cast<float>(h) * signs[j] * inv_sqrt;
    }
  detail::fill_transpose(r);
  if (p == 1) {
    r.hadamard_signs = signs;
    r.description = "hadamard (Sylvester " + std::to_string(dim) +
                    ", random signs, fast Walsh-Hadamard; seed " + std::to_string(seed) + ")";
  } else {
    r.description = "hadamard (" +
                    (dim / p > 1 ? "Sylvester " + std::to_string(dim / p) + " x " : std::string()) +
                    "Paley-I order " + std::to_string(p) + ", random signs, dense matvec; seed " +
                    std::to_string(seed) + ")";
  }
  return r;
}

/// \brief PCA rotation from samples: rows of Π are the eigenvectors of the sample covariance in
/// decreasing eigenvalue order, each signed so its largest-magnitude entry (first on ties) is
/// positive (deterministic). Covariance about the sample mean when `center`, else about 0.
/// \param samples   [n, dim] row-major, n >= 1
/// \param variances if non-null, receives [dim] eigenvalues (variance along each rotated axis)
inline Rotation make_svd_rotation(const float* samples, size_t n, int dim, bool center = true,
                                  std::vector<float>* variances = nullptr) {
  TURBOESM_CHECK(dim > 0, "rotation dim must be positive, got ", dim);
  TURBOESM_CHECK(n >= 1, "svd rotation needs at least one sample, got 0");
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(dim);
  if (center) {
    for (size_t s = 0; s < n; ++s)
      for (int j = 0; j < dim; ++j) mean(j) += samples[s * dim + j];
    mean /= static_cast<double>(n);
  }
  Eigen::MatrixXd cov = Eigen::MatrixXd::Zero(dim, dim);
  Eigen::VectorXd v(dim);
  for (size_t s = 0; s < n; ++s) {
    for (int j = 0; j < dim; ++j) {
      v(j) = samples[s * dim + j] - mean(j);
      TURBOESM_CHECK(std::isfinite(v(j)), "svd rotation: sample ", s, " coordinate ", j,
                     " is not finite");
    }
    cov.selfadjointView<Eigen::Lower>().rankUpdate(v);
  }
  cov = cov.selfadjointView<Eigen::Lower>();
  cov /= static_cast<double>(n);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(cov);
  TURBOESM_CHECK(eig.info() == Eigen::Success, "svd rotation: eigen decomposition failed");
  Rotation r;
  r.dim = dim;
  r.kind = RotationKind::kSvd;
  r.matrix.resize(static_cast<size_t>(dim) * dim);
  if (variances) variances->resize(dim);
  for (int i = 0; i < dim; ++i) {
    const int col = dim - 1 - i;  // eigenvalues come ascending
    Eigen::VectorXd e = eig.eigenvectors().col(col);
    int arg = 0;
    for (int j = 1; j < dim; ++j)
      if (std::abs(e(j)) > std::abs(e(arg)) + 1e-12) arg = j;
    if (e(arg) < 0) e = -e;
    for (int j = 0; j < dim; ++j) r.matrix[i * dim + j] = static_cast<float>(e(j));
    if (variances) (*variances)[i] = static_cast<float>(std::max(0.0, eig.eigenvalues()(col)));
  }
  detail::fill_transpose(r);
  r.description = std::string("svd (PCA of ") + std::to_string(n) + " samples, " +
                  (center ? "centered" : "uncentered") + ")";
  return r;
}

/// \brief Rotation of the given kind (svd needs samples: use make_svd_rotation).
inline Rotation make_rotation(RotationKind kind, int dim, uint64_t seed) {
  switch (kind) {
    case RotationKind::kIdentity:
      return make_identity_rotation(dim);
    case RotationKind::kRandom:
      return make_random_rotation(dim, seed);
    case RotationKind::kHadamard:
      return make_hadamard_rotation(dim, seed);
    case RotationKind::kSvd:
      break;
  }
  TURBOESM_FAIL("rotation '", to_string(kind), "' is fitted from samples: use make_svd_rotation");
}

/// Largest ‖Π Πᵀ − I‖_max accepted by rotation_from_matrix (DESIGN: checkpoints are checked to
/// 1e-4).
inline constexpr double kOrthogonalityTolerance = 1e-4;

/// \brief Wraps a stored matrix (e.g. from a checkpoint); refuses one that is not orthogonal.
/// \param m [dim, dim] row-major
inline Rotation rotation_from_matrix(const float* m, int dim, RotationKind kind,
                                     double tolerance = kOrthogonalityTolerance) {
  TURBOESM_CHECK(dim > 0, "rotation dim must be positive, got ", dim);
  const double err = orthogonality_error(m, dim);
  TURBOESM_CHECK(err <= tolerance, "rotation matrix is not orthogonal: max|P P^T - I| = ", err,
                 " > ", tolerance);
  Rotation r;
  r.dim = dim;
  r.kind = kind;
  r.matrix.assign(m, m + static_cast<size_t>(dim) * dim);
  detail::fill_transpose(r);
  r.description = std::string(to_string(kind)) + " (stored matrix)";
  return r;
}

// ---------------------------------------------------------------------------------------------
// Application. `_ref` and fast variants perform the same floating-point operations in the same
// order (so downstream codes agree bit for bit); the fast ones are written to vectorise.
// ---------------------------------------------------------------------------------------------

namespace detail {
/// In-place unnormalised Walsh–Hadamard transform, butterflies with stride h = 1, 2, 4, ...
inline void fwht_ref(float* v, int d) {
  for (int h = 1; h < d; h *= 2)
    for (int i = 0; i < d; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
}

/// Same butterflies and order of operations as fwht_ref (each output is the same a ± b), grouped
/// so that the compiler vectorises the inner loops.
template <int D>
TURBOESM_FORCE_INLINE void fwht_fixed(float* v) {
  static_assert((D & (D - 1)) == 0, "fwht: D must be a power of two");
  for (int h = 1; h < D; h *= 2) {
    if (h >= 4) {
      for (int i = 0; i < D; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          const float a = v[j], b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
    } else {
      float tmp[D];
      for (int j = 0; j < D; ++j) {
        const int partner = j ^ h;
        tmp[j] = (j & h) ? v[partner] - v[j] : v[j] + v[partner];
      }
      for (int j = 0; j < D; ++j) v[j] = tmp[j];
    }
  }
}

inline void fwht_fast(float* v, int d) {
  switch (d) {
    case 16:
      fwht_fixed<16>(v);
      return;
    case 32:
      fwht_fixed<32>(v);
      return;
    case 64:
      fwht_fixed<64>(v);
      return;
    case 128:
      fwht_fixed<128>(v);
      return;
    case 256:
      fwht_fixed<256>(v);
      return;
    default:
      fwht_ref(v, d);
  }
}
}  // namespace detail

/// \brief Reference y = Π x: scalar FWHT for fast-Hadamard rotations (then × 1/sqrt(d)), else the
/// dense sum y_i = Σ_j Π_ij x_j in increasing j.
/// \param x [dim]  \param y [dim] (must not alias x)
inline void rotate_ref(const Rotation& r, const float* x, float* y) {
  const int d = r.dim;
  if (r.has_fast_hadamard()) {
    for (int j = 0; j < d; ++j) y[j] = x[j] * r.hadamard_signs[j];
    detail::fwht_ref(y, d);
    const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    for (int j = 0; j < d; ++j) y[j] *= s;
    return;
  }
  for (int i = 0; i < d; ++i) {
    float acc = 0.0f;
    for (int j = 0; j < d; ++j) acc += r.matrix[i * d + j] * x[j];
    y[i] = acc;
  }
}

/// \brief Fast y = Π x (same results as rotate_ref): FWHT, or the dense sum accumulated over j
/// across all outputs at once (rows of Πᵀ), which vectorises and keeps rotate_ref's order.
inline void rotate(const Rotation& r, const float* x, float* y) {
  const int d = r.dim;
  if (r.has_fast_hadamard()) {
    const float* sg = r.hadamard_signs.data();
    for (int j = 0; j < d; ++j) y[j] = x[j] * sg[j];
    detail::fwht_fast(y, d);
    const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    for (int j = 0; j < d; ++j) y[j] *= s;
    return;
  }
  const float* mt = r.matrix_t.data();
  for (int i = 0; i < d; ++i) y[i] = 0.0f;
  for (int j = 0; j < d; ++j) {
    const float xj = x[j];
    const float* row = mt + static_cast<size_t>(j) * d;
    for (int i = 0; i < d; ++i) y[i] += row[i] * xj;
  }
}

/// \brief Reference x = Πᵀ y (dense sum in increasing i, or FWHT then signs).
inline void rotate_transpose_ref(const Rotation& r, const float* y, float* x) {
  const int d = r.dim;
  if (r.has_fast_hadamard()) {  // Πᵀ = D H / sqrt(d), H symmetric
    for (int j = 0; j < d; ++j) x[j] = y[j];
    detail::fwht_ref(x, d);
    const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    for (int j = 0; j < d; ++j) x[j] = x[j] * s * r.hadamard_signs[j];
    return;
  }
  for (int j = 0; j < d; ++j) {
    float acc = 0.0f;
    for (int i = 0; i < d; ++i) acc += r.matrix[i * d + j] * y[i];
    x[j] = acc;
  }
}

/// \brief Fast x = Πᵀ y (same results as rotate_transpose_ref).
inline void rotate_transpose(const Rotation& r, const float* y, float* x) {
  const int d = r.dim;
  if (r.has_fast_hadamard()) {
    for (int j = 0; j < d; ++j) x[j] = y[j];
    detail::fwht_fast(x, d);
    const float s = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    const float* sg = r.hadamard_signs.data();
    for (int j = 0; j < d; ++j) x[j] = x[j] * s * sg[j];
    return;
  }
  const float* m = r.matrix.data();
  for (int j = 0; j < d; ++j) x[j] = 0.0f;
  for (int i = 0; i < d; ++i) {
    const float yi = y[i];
    const float* row = m + static_cast<size_t>(i) * d;
    for (int j = 0; j < d; ++j) x[j] += row[j] * yi;
  }
}

}  // namespace turboesm::quant
