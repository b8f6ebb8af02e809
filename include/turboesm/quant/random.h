// SPDX-License-Identifier: MIT
#pragma once
/// \file random.h
/// \brief Seeded random numbers whose sequence is fixed by this code, not by the standard library.
///
/// `std::normal_distribution` and `std::uniform_real_distribution` are implementation-defined, so
/// the same seed would give different rotations with libstdc++ and libc++. We draw raw 64-bit words
/// from `std::mt19937_64` (whose output the standard fixes) and turn them into uniforms (53-bit)
/// and normals (Marsaglia polar method) ourselves.

#include <cmath>
#include <cstdint>
#include <random>

namespace turboesm::quant {

/// \brief Deterministic uniform / normal / sign generator over `std::mt19937_64`.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  /// Standard normal N(0, 1) (polar method; pairs are cached).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    spare_ = v * f;
    has_spare_ = true;
    return u * f;
  }

  /// +1 or -1 with probability 1/2 each.
  float sign() { return (engine_() >> 63) ? 1.0f : -1.0f; }

  /// Raw 64-bit word.
  uint64_t next_u64() { return engine_(); }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

/// \brief Fills `out[0..n)` with iid N(0, 1) floats.
inline void fill_normal(Rng& rng, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(rng.normal());
}

/// \brief Writes a uniformly random unit vector of R^dim into `out`.
inline void random_unit_vector(Rng& rng, float* out, int dim) {
  double norm2 = 0.0;
  for (int j = 0; j < dim; ++j) {
    const double g = rng.normal();
    out[j] = static_cast<float>(g);
    norm2 += g * g;
  }
  const double inv = 1.0 / std::sqrt(norm2);
  for (int j = 0; j < dim; ++j) out[j] = static_cast<float>(out[j] * inv);
}

}  // namespace turboesm::quant
