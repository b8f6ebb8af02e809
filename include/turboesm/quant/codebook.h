// SPDX-License-Identifier: MIT
#pragma once
/// \file codebook.h
/// \brief Lloyd-Max scalar codebooks (1..4 bits): analytic for rotated unit vectors, or fitted to
/// data by 1-D k-means; encoding by decision boundaries.
///
/// A codebook of `L = 2^bits` levels is a sorted list of centroids `c[0] <= ... <= c[L-1]` and the
/// `L-1` decision boundaries `b[i] = (c[i] + c[i+1]) / 2`. A value `v` encodes to
/// `code(v) = #{ i : v > b[i] }` — a branchless compare-count that vectorises, and equals the
/// nearest centroid (ties at a boundary go to the lower level; NaN encodes to 0).
///
/// Analytic codebook: a coordinate `t` of a uniformly random unit vector in R^d has density
/// `f(t) ∝ (1 - t^2)^((d-3)/2)` on [-1, 1] (a symmetric Beta law; → N(0, 1/d) as d grows, but for
/// d = 16 or 24 the difference matters). Lloyd-Max for `f` is solved by fixed-point iteration on
/// exact cumulative moments tabulated on a fine grid (`kDensityGridIntervals` cells), to
/// `kLloydTolerance` (relative to 1/sqrt(d)). Results are cached per (d, bits), thread-safe.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/host_device.h"

namespace turboesm::quant {

// ---------------------------------------------------------------------------------------------
// Encoding (host and device)
// ---------------------------------------------------------------------------------------------

/// \brief Code of `v` = number of boundaries strictly below it (branchless; unrolled on BITS).
/// \param boundaries [2^BITS - 1] ascending
template <int BITS>
TURBOESM_HOST_DEVICE TURBOESM_FORCE_INLINE uint32_t encode_value(float v, const float* boundaries) {
  static_assert(BITS >= 1 && BITS <= 4, "encode_value: BITS must be in 1..4");
  uint32_t code = 0;
  TURBOESM_UNROLL
  for (int i = 0; i < (1 << BITS) - 1; ++i) code += (v > boundaries[i]) ? 1u : 0u;
  return code;
}

/// \brief The binary search of encode_value_tree with each code bit handed over as soon as it is
/// known: bit(k, set) for k = BITS − 1 (most significant) down to 0. A caller that packs codes
/// can OR each bit into its word (one predicated instruction) instead of assembling the code.
template <int BITS, class Bit>
TURBOESM_HOST_DEVICE TURBOESM_FORCE_INLINE void encode_value_tree_bits(float v, const float* b,
                                                                       Bit&& bit) {
  static_assert(BITS >= 1 && BITS <= 4, "encode_value_tree: BITS must be in 1..4");
  const bool p0 = v > b[(1 << (BITS - 1)) - 1];
  bit(BITS - 1, p0);
  if constexpr (BITS == 2) {
    bit(0, v > (p0 ? b[2] : b[0]));
  } else if constexpr (BITS == 3) {
    const bool p1 = v > (p0 ? b[5] : b[1]);
    bit(1, p1);
    bit(0, v > (p0 ? (p1 ? b[6] : b[4]) : (p1 ? b[2] : b[0])));
  } else if constexpr (BITS == 4) {
    const bool p1 = v > (p0 ? b[11] : b[3]);
    bit(2, p1);
    const bool p2 = v > (p0 ? (p1 ? b[13] : b[9]) : (p1 ? b[5] : b[1]));
    bit(1, p2);
    const float t3 = p0 ? (p1 ? (p2 ? b[14] : b[12]) : (p2 ? b[10] : b[8]))
                        : (p1 ? (p2 ? b[6] : b[4]) : (p2 ? b[2] : b[0]));
    bit(0, v > t3);
  }
}

/// \brief encode_value by binary search: BITS comparisons, each against a boundary picked by
/// selects on the earlier outcomes (no data-dependent indexing, so a register array of boundaries
/// stays in registers). Same code as encode_value for ascending boundaries, NaN included (every
/// comparison false: code 0). 3 bits: 3 compares + 4 selects instead of 7 compares + 7 adds.
template <int BITS>
TURBOESM_HOST_DEVICE TURBOESM_FORCE_INLINE uint32_t encode_value_tree(float v, const float* b) {
  uint32_t code = 0;
  encode_value_tree_bits<BITS>(v, b, [&](int k, bool set) { code |= set ? 1u << k : 0u; });
  return code;
}

/// \brief Reference encoder: linear search up the sorted boundaries (same result as encode_value).
inline uint32_t encode_value_ref(float v, const float* boundaries, int bits) {
  uint32_t code = 0;
  const uint32_t last = (1u << bits) - 1u;
  while (code < last && v > boundaries[code]) ++code;
  return code;
}

/// \brief Non-owning view of a codebook, for kernels and hot loops.
struct CodebookView {
  const float* centroids = nullptr;   ///< [2^bits] ascending
  const float* boundaries = nullptr;  ///< [2^bits - 1] ascending
  int bits = 0;
};

// ---------------------------------------------------------------------------------------------
// Codebook types
// ---------------------------------------------------------------------------------------------

/// \brief Compile-time-sized Lloyd-Max codebook (faiss `QuantizerLloydMax<NBits>` style).
template <int BITS>
struct LloydMaxCodebook {
  static_assert(BITS >= 1 && BITS <= 4, "LloydMaxCodebook: BITS must be in 1..4");
  static constexpr int kBits = BITS;
  static constexpr int kLevels = 1 << BITS;
  static constexpr int kBoundaries = kLevels - 1;
  std::array<float, kLevels> centroids{};
  std::array<float, kBoundaries> boundaries{};

  /// Code of one value.
  uint32_t encode(float v) const { return encode_value<BITS>(v, boundaries.data()); }
  /// Centroid of one code.
  float decode(uint32_t code) const { return centroids[code]; }
};

/// \brief Runtime-bits codebook (what quantizers and checkpoints hold).
struct Codebook {
  int bits = 0;
  std::vector<float> centroids;   ///< [2^bits] ascending
  std::vector<float> boundaries;  ///< [2^bits - 1] midpoints of adjacent centroids

  int levels() const { return 1 << bits; }
  CodebookView view() const { return {centroids.data(), boundaries.data(), bits}; }

  /// \brief Builds a codebook from sorted centroids; boundaries are the midpoints.
  /// Throws if the count is not 2^bits, a value is not finite, or the order is decreasing.
  static Codebook from_centroids(int bits, std::vector<float> centroids) {
    TURBOESM_CHECK(is_supported_bits(bits), "codebook bits must be in 1..4, got ", bits);
    TURBOESM_CHECK(centroids.size() == (size_t{1} << bits), "a ", bits, "-bit codebook needs ",
                   (1 << bits), " centroids, got ", centroids.size());
    for (size_t i = 0; i < centroids.size(); ++i) {
      TURBOESM_CHECK(std::isfinite(centroids[i]), "codebook centroid ", i, " is not finite (",
                     centroids[i], ")");
      TURBOESM_CHECK(i == 0 || centroids[i] >= centroids[i - 1],
                     "codebook centroids must be ascending; centroid ", i, " = ", centroids[i],
                     " < centroid ", i - 1, " = ", centroids[i - 1]);
    }
    Codebook cb;
    cb.bits = bits;
    cb.centroids = std::move(centroids);
    cb.boundaries.resize(cb.centroids.size() - 1);
    for (size_t i = 0; i + 1 < cb.centroids.size(); ++i)
      cb.boundaries[i] = 0.5f * (cb.centroids[i] + cb.centroids[i + 1]);
    return cb;
  }

  template <int BITS>
  static Codebook from(const LloydMaxCodebook<BITS>& t) {
    return from_centroids(BITS, std::vector<float>(t.centroids.begin(), t.centroids.end()));
  }

  template <int BITS>
  LloydMaxCodebook<BITS> as() const {
    TURBOESM_CHECK(bits == BITS, "codebook has ", bits, " bits, requested ", BITS);
    LloydMaxCodebook<BITS> t;
    std::copy(centroids.begin(), centroids.end(), t.centroids.begin());
    std::copy(boundaries.begin(), boundaries.end(), t.boundaries.begin());
    return t;
  }
};

// ---------------------------------------------------------------------------------------------
// Analytic codebook: Lloyd-Max for the coordinate density of a random unit vector
// ---------------------------------------------------------------------------------------------

/// Grid cells used to tabulate the cumulative moments of the coordinate density on [-1, 1].
inline constexpr int kDensityGridIntervals = 1 << 18;
/// Lloyd iterations stop when no centroid moves more than this × 1/sqrt(d).
inline constexpr double kLloydTolerance = 1e-11;
/// Upper bound on Lloyd iterations (convergence is linear; 4 bits needs a few thousand).
inline constexpr int kLloydMaxIterations = 200000;

namespace detail {

/// Cumulative moments M_k(t) = ∫_{-1}^{t} s^k f(s) ds, k = 0, 1, 2, of the normalised density
/// f(s) ∝ (1 - s^2)^((d-3)/2), tabulated on a uniform grid (trapezoid rule, double precision).
class SphereCoordinateMoments {
 public:
  explicit SphereCoordinateMoments(int dim) : dim_(dim) {
    const int n = kDensityGridIntervals;
    h_ = 2.0 / n;
    m_[0].assign(n + 1, 0.0);
    m_[1].assign(n + 1, 0.0);
    m_[2].assign(n + 1, 0.0);
    const double a = 0.5 * (dim - 3);
    auto f = [&](double t) {
      const double u = 1.0 - t * t;
      if (u <= 0.0) return a == 0.0 ? 1.0 : 0.0;
      return std::exp(a * std::log(u));
    };
    double prev_t = -1.0, prev_f = f(-1.0);
    for (int i = 1; i <= n; ++i) {
      const double t = -1.0 + h_ * i;
      const double ft = f(t);
      m_[0][i] = m_[0][i - 1] + 0.5 * h_ * (prev_f + ft);
      m_[1][i] = m_[1][i - 1] + 0.5 * h_ * (prev_t * prev_f + t * ft);
      m_[2][i] = m_[2][i - 1] + 0.5 * h_ * (prev_t * prev_t * prev_f + t * t * ft);
      prev_t = t;
      prev_f = ft;
    }
    const double z = m_[0][n];
    for (auto& m : m_)
      for (double& v : m) v /= z;
  }

  /// M_k(t) by linear interpolation between grid nodes, t clamped to [-1, 1].
  double moment(int k, double t) const {
    if (t <= -1.0) return 0.0;
    if (t >= 1.0) return m_[k].back();
    const double x = (t + 1.0) / h_;
    const int i = std::min(static_cast<int>(x), kDensityGridIntervals - 1);
    const double w = x - i;
    return (1.0 - w) * m_[k][i] + w * m_[k][i + 1];
  }

  /// Inverse of M_0 (bisection on the table).
  double quantile(double p) const {
    const auto& c = m_[0];
    const auto it = std::lower_bound(c.begin(), c.end(), p);
    const int i = static_cast<int>(std::clamp<ptrdiff_t>(it - c.begin(), 1, kDensityGridIntervals));
    const double lo = c[i - 1], hi = c[i];
    const double w = hi > lo ? (p - lo) / (hi - lo) : 0.5;
    return -1.0 + h_ * (i - 1 + w);
  }

  int dim() const { return dim_; }

 private:
  int dim_;
  double h_;
  std::array<std::vector<double>, 3> m_;
};

inline const SphereCoordinateMoments& sphere_moments(int dim) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<SphereCoordinateMoments>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[dim];
  if (!slot) slot = std::make_unique<SphereCoordinateMoments>(dim);
  return *slot;
}

/// Expected squared error of a codebook (nearest-centroid cells) under the tabulated density.
inline double expected_mse(const SphereCoordinateMoments& mom, const std::vector<double>& c) {
  const size_t L = c.size();
  double mse = 0.0;
  double lo = -1.0;
  for (size_t i = 0; i < L; ++i) {
    const double hi = (i + 1 < L) ? 0.5 * (c[i] + c[i + 1]) : 1.0;
    const double p = mom.moment(0, hi) - mom.moment(0, lo);
    const double m1 = mom.moment(1, hi) - mom.moment(1, lo);
    const double m2 = mom.moment(2, hi) - mom.moment(2, lo);
    mse += m2 - 2.0 * c[i] * m1 + c[i] * c[i] * p;
    lo = hi;
  }
  return mse;
}

inline std::vector<double> solve_lloyd_max_sphere(int dim, int bits) {
  const auto& mom = sphere_moments(dim);
  const int L = 1 << bits;
  std::vector<double> c(L), next(L);
  for (int i = 0; i < L; ++i) c[i] = mom.quantile((i + 0.5) / L);
  const double tol = kLloydTolerance / std::sqrt(static_cast<double>(dim));
  for (int it = 0; it < kLloydMaxIterations; ++it) {
    double lo = -1.0, moved = 0.0;
    for (int i = 0; i < L; ++i) {
      const double hi = (i + 1 < L) ? 0.5 * (c[i] + c[i + 1]) : 1.0;
      const double p = mom.moment(0, hi) - mom.moment(0, lo);
      next[i] = p > 0.0 ? (mom.moment(1, hi) - mom.moment(1, lo)) / p : c[i];
      lo = hi;
    }
    for (int i = 0; i < L / 2; ++i) {  // the density is even: keep the codebook exactly symmetric
      const double s = 0.5 * (next[L - 1 - i] - next[i]);
      next[i] = -s;
      next[L - 1 - i] = s;
    }
    for (int i = 0; i < L; ++i) moved = std::max(moved, std::abs(next[i] - c[i]));
    c.swap(next);
    if (moved < tol) break;
  }
  return c;
}

}  // namespace detail

/// \brief Lloyd-Max codebook for one coordinate of a uniformly random unit vector in R^dim
/// (what every coordinate of Π x / ‖x‖ is, for any orthogonal Π and isotropic x). Cached.
/// \param dim vector dimension, >= 3
template <int BITS>
LloydMaxCodebook<BITS> lloyd_max_analytic(int dim) {
  TURBOESM_CHECK(dim >= 3, "analytic codebook needs dim >= 3, got ", dim);
  static std::mutex mu;
  static std::map<int, LloydMaxCodebook<BITS>> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(dim);
    if (it != cache.end()) return it->second;
  }
  const std::vector<double> c = detail::solve_lloyd_max_sphere(dim, BITS);
  LloydMaxCodebook<BITS> cb;
  for (int i = 0; i < cb.kLevels; ++i) cb.centroids[i] = static_cast<float>(c[i]);
  for (int i = 0; i < cb.kBoundaries; ++i)
    cb.boundaries[i] = 0.5f * (cb.centroids[i] + cb.centroids[i + 1]);
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(dim, cb).first->second;
}

/// \brief Runtime-bits front end of lloyd_max_analytic.
inline Codebook analytic_codebook(int dim, int bits) {
  Codebook out;
  TURBOESM_DISPATCH_BITS(bits, BITS, { out = Codebook::from(lloyd_max_analytic<BITS>(dim)); });
  return out;
}

/// \brief Expected squared error per coordinate of `cb` for a coordinate of a random unit vector
/// in R^dim (numerical integration). `dim * analytic_coordinate_mse(...)` is the expected
/// ‖y - ŷ‖² of a unit vector, i.e. the TurboQuant D_mse.
inline double analytic_coordinate_mse(const Codebook& cb, int dim) {
  TURBOESM_CHECK(dim >= 3, "analytic_coordinate_mse needs dim >= 3, got ", dim);
  std::vector<double> c(cb.centroids.begin(), cb.centroids.end());
  return detail::expected_mse(detail::sphere_moments(dim), c);
}

// ---------------------------------------------------------------------------------------------
// Data-driven codebook: 1-D k-means (Lloyd) on samples
// ---------------------------------------------------------------------------------------------

/// \brief Options of the 1-D k-means fit.
struct KMeansOptions {
  int max_iterations = 1000;  ///< Lloyd iterations at most
  double tolerance = 1e-7;    ///< stop when no centroid moves more than tolerance × (max - min)
};

/// \brief Data-driven Lloyd-Max codebook: 1-D k-means on `samples`, deterministic quantile init
/// (centroid i starts at the (i + 1/2)/L quantile). Exact on sorted data with prefix sums, so one
/// iteration costs O(L log n). If the data has at most L distinct values the codebook is exactly
/// those values (the last one repeated to fill L levels): constant data encodes losslessly.
/// \param samples [n] finite values, n >= 1
template <int BITS>
LloydMaxCodebook<BITS> lloyd_max_kmeans(const float* samples, size_t n,
                                        const KMeansOptions& opt = {}) {
  constexpr int L = 1 << BITS;
  TURBOESM_CHECK(n >= 1, "k-means codebook needs at least one sample, got 0");
  std::vector<float> x(samples, samples + n);
  for (size_t i = 0; i < n; ++i)
    TURBOESM_CHECK(std::isfinite(x[i]), "k-means codebook: sample ", i, " is not finite (", x[i],
                   ")");
  std::sort(x.begin(), x.end());
  LloydMaxCodebook<BITS> cb;

  std::vector<float> distinct;
  for (size_t i = 0; i < n && static_cast<int>(distinct.size()) <= L; ++i)
    if (distinct.empty() || x[i] != distinct.back()) distinct.push_back(x[i]);
  if (static_cast<int>(distinct.size()) <= L) {
    for (int i = 0; i < L; ++i)
      cb.centroids[i] = distinct[std::min<size_t>(static_cast<size_t>(i), distinct.size() - 1)];
  } else {
    std::vector<double> prefix(n + 1, 0.0);
    for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + x[i];
    std::array<double, L> c{};
    for (int i = 0; i < L; ++i) {
      const size_t idx = std::min(n - 1, static_cast<size_t>((i + 0.5) * n / L));
      c[i] = x[idx];
    }
    const double tol = opt.tolerance * (static_cast<double>(x.back()) - x.front());
    for (int it = 0; it < opt.max_iterations; ++it) {
      double moved = 0.0;
      size_t lo = 0;
      std::array<double, L> next = c;
      for (int i = 0; i < L; ++i) {
        size_t hi = n;
        if (i + 1 < L) {  // cell i = { v : b[i-1] < v <= b[i] }, as encode_value assigns
          const float b = static_cast<float>(0.5 * (c[i] + c[i + 1]));
          hi = static_cast<size_t>(std::upper_bound(x.begin(), x.end(), b) - x.begin());
        }
        if (hi > lo) next[i] = (prefix[hi] - prefix[lo]) / static_cast<double>(hi - lo);
        moved = std::max(moved, std::abs(next[i] - c[i]));
        lo = std::max(lo, hi);
      }
      c = next;
      if (moved <= tol) break;
    }
    for (int i = 0; i < L; ++i) cb.centroids[i] = static_cast<float>(c[i]);
    std::sort(cb.centroids.begin(), cb.centroids.end());
  }
  for (int i = 0; i + 1 < L; ++i) cb.boundaries[i] = 0.5f * (cb.centroids[i] + cb.centroids[i + 1]);
  return cb;
}

/// \brief Runtime-bits front end of lloyd_max_kmeans.
inline Codebook kmeans_codebook(const float* samples, size_t n, int bits,
                                const KMeansOptions& opt = {}) {
  Codebook out;
  TURBOESM_DISPATCH_BITS(bits, BITS,
                         { out = Codebook::from(lloyd_max_kmeans<BITS>(samples, n, opt)); });
  return out;
}

}  // namespace turboesm::quant
