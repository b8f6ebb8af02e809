// SPDX-License-Identifier: MIT
#pragma once
/// \file quantizer.h
/// \brief TurboQuantizer: encode one head's key/value vectors into page slots, decode them, and
/// estimate ⟨q, x⟩ directly in code space (never through a dequantised vector).
///
/// ## Pipeline (DESIGN "The compressed cache"), for x ∈ R^d
///   xc = x − μ                       (optional centering; μ [d])
///   n  = ‖xc‖ (double sum)           (norm mode kToken: stored fp16; kNone: n = 1)
///   y  = Π xc                        (rotation.h)
///   z_j = (y_j · (1/n)) · (1/σ_j)    (optional per-coordinate scale σ [d], e.g. PCA std devs)
///   c_j = code(z_j)                  (codebook decision boundaries), packed (bitpack.h)
///   r  = z − C[c]                    (residual in code space) → QJL bits (qjl.h)
/// Decoding: ẑ = C[c] (+ QJL term), x̂ = Πᵀ (n · σ ⊙ ẑ) + μ.
///
/// ## Inner products in code space
/// With q' = σ ⊙ Π q (computed once per query by prepare_query, plus the table
/// LUT[j][c] = q'_j · C[c] and, for kProd, S q'):
///   ⟨q, x̂⟩ = n · (Σ_j LUT[j][c_j] + QJL term) + ⟨q, μ⟩,
///   QJL term = s · Σ_j ±q'_j (kSign) or sqrt(π/2)/m · ‖r‖ · Σ_i ±(S q')_i (kProd).
/// The V side accumulates acc += p · n · ẑ (code space) per token and rotates back once:
/// out = Πᵀ (σ ⊙ acc) + (Σp) · μ (finish).
///
/// ## Fast and reference paths
/// encode/decode/score have `_ref` twins written as plain scalar loops. encode and decode perform
/// the same floating-point operations in the same order in both paths, so codes and decoded
/// values are bit-identical (tests check it). score's fast path sums with 4 accumulators and so
/// differs from score_ref by rounding only.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/dispatch.h"
#include "turboesm/quant/format.h"
#include "turboesm/quant/half.h"
#include "turboesm/quant/qjl.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::quant {

/// \brief Mode of one quantizer (one head of K or of V).
struct QuantizerConfig {
  int dim = 64;                      ///< head dim d
  int bits = 3;                      ///< bits of the scalar codes (1..4)
  NormMode norm = NormMode::kToken;  ///< per-token norm split
  QjlMode qjl = QjlMode::kNone;      ///< residual correction
  int qjl_dim = 0;                   ///< m for kProd (0 → d; multiple of 8)
  int page_tokens = kPageTokens;     ///< tokens per page
};

/// \brief Fitted constants of one quantizer (checkpoint content, not cache).
struct QuantizerParams {
  Rotation rotation;             ///< Π [d, d]
  Codebook codebook;             ///< 2^bits centroids in code space
  std::vector<float> scale;      ///< σ [d] (> 0) or empty
  std::vector<float> mean;       ///< μ [d] or empty
  float qjl_sign_scale = 0.0f;   ///< s for kSign
  QjlProjection qjl_projection;  ///< S [m, d] for kProd
};

/// \brief A query prepared for code-space scoring against one quantizer.
struct PreparedQuery {
  std::vector<float> q_code;  ///< q' = σ ⊙ Π q  [d]
  std::vector<float> lut;     ///< [d, 2^bits]: lut[j * L + c] = q'_j · C[c]
  std::vector<float> sq;      ///< S q' [m] (kProd), else empty
  float q_dot_mean = 0.0f;    ///< ⟨q, μ⟩ (0 without centering)
};

class TurboQuantizer {
 public:
  /// \brief Validates every size and value; throws turboesm::Error naming the first mismatch.
  TurboQuantizer(const QuantizerConfig& config, QuantizerParams params)
      : config_(config), p_(std::move(params)) {
    const int d = config_.dim;
    check_page_layout_args(d, config_.bits, config_.norm, config_.qjl, config_.qjl_dim,
                           config_.page_tokens);
    layout_ = make_page_layout(d, config_.bits, config_.norm, config_.qjl, config_.qjl_dim,
                               config_.page_tokens);
    TURBOESM_CHECK(p_.rotation.dim == d && p_.rotation.matrix.size() == size_t(d) * d &&
                       p_.rotation.matrix_t.size() == size_t(d) * d,
                   "rotation must be [", d, ", ", d, "], got dim ", p_.rotation.dim);
    TURBOESM_CHECK(p_.codebook.bits == config_.bits &&
                       p_.codebook.centroids.size() == (size_t{1} << config_.bits) &&
                       p_.codebook.boundaries.size() + 1 == p_.codebook.centroids.size(),
                   "codebook must have ", (1 << config_.bits), " levels (", config_.bits,
                   " bits), got ", p_.codebook.centroids.size(), " (", p_.codebook.bits, " bits)");
    TURBOESM_CHECK(p_.scale.empty() || p_.scale.size() == size_t(d), "scale must be [", d,
                   "] or empty, got [", p_.scale.size(), "]");
    inv_scale_.resize(p_.scale.size());
    for (size_t j = 0; j < p_.scale.size(); ++j) {
      TURBOESM_CHECK(std::isfinite(p_.scale[j]) && p_.scale[j] > 0.0f, "scale[", j,
                     "] must be finite and > 0, got ", p_.scale[j]);
      inv_scale_[j] = 1.0f / p_.scale[j];
    }
    TURBOESM_CHECK(p_.mean.empty() || p_.mean.size() == size_t(d), "mean must be [", d,
                   "] or empty, got [", p_.mean.size(), "]");
    for (size_t j = 0; j < p_.mean.size(); ++j)
      TURBOESM_CHECK(std::isfinite(p_.mean[j]), "mean[", j, "] is not finite");
    if (config_.qjl == QjlMode::kSign)
      TURBOESM_CHECK(std::isfinite(p_.qjl_sign_scale) && p_.qjl_sign_scale >= 0.0f,
                     "qjl sign scale must be finite and >= 0, got ", p_.qjl_sign_scale);
    if (config_.qjl == QjlMode::kProd)
      TURBOESM_CHECK(p_.qjl_projection.m == layout_.qjl_dim && p_.qjl_projection.dim == d,
                     "qjl projection must be [", layout_.qjl_dim, ", ", d, "], got [",
                     p_.qjl_projection.m, ", ", p_.qjl_projection.dim, "]");
    TURBOESM_DISPATCH_BITS(config_.bits, BITS, {
      encode_fn_ = &TurboQuantizer::encode_impl<BITS>;
      decode_fn_ = &TurboQuantizer::decode_code_space_impl<BITS>;
      score_fn_ = &TurboQuantizer::score_impl<BITS>;
    });
  }

  const QuantizerConfig& config() const { return config_; }
  const QuantizerParams& params() const { return p_; }
  const PageLayout& layout() const { return layout_; }
  int dim() const { return config_.dim; }

  /// \brief Encodes x into slot t of a page (fast path).
  /// \param x    [dim] finite values
  /// \param page [layout().page_bytes]
  /// \param t    token slot in [0, page_tokens)
  void encode(const float* x, uint8_t* page, int t) const {
    check_slot(t);
    (this->*encode_fn_)(x, page, t);
  }

  /// \brief Reference twin of encode (scalar loops, same operation order: identical bytes).
  void encode_ref(const float* x, uint8_t* page, int t) const {
    check_slot(t);
    const int d = config_.dim;
    float xc[kMaxHeadDim], y[kMaxHeadDim], z[kMaxHeadDim];
    uint8_t codes[kMaxHeadDim];
    const float inv = prologue(x, xc, page, t);
    rotate_ref(p_.rotation, xc, y);
    for (int j = 0; j < d; ++j) {
      z[j] = y[j] * inv;
      if (!inv_scale_.empty()) z[j] = z[j] * inv_scale_[j];
      codes[j] =
          static_cast<uint8_t>(encode_value_ref(z[j], p_.codebook.boundaries.data(), config_.bits));
    }
    pack_codes_ref(codes, d, config_.bits, token_codes(page, layout_, t));
    if (config_.qjl == QjlMode::kNone) return;
    float r[kMaxHeadDim];
    for (int j = 0; j < d; ++j) r[j] = z[j] - p_.codebook.centroids[codes[j]];
    if (config_.qjl == QjlMode::kSign) {
      uint8_t s[kMaxHeadDim];
      for (int j = 0; j < d; ++j) s[j] = r[j] >= 0.0f ? 1 : 0;
      pack_codes_ref(s, d, 1, token_qjl(page, layout_, t));
      return;
    }
    const int m = layout_.qjl_dim;
    float u[8 * kMaxHeadDim];
    uint8_t s[8 * kMaxHeadDim];
    qjl_project_ref(p_.qjl_projection, r, u);
    for (int i = 0; i < m; ++i) s[i] = u[i] >= 0.0f ? 1 : 0;
    pack_codes_ref(s, m, 1, token_qjl(page, layout_, t));
    *token_rnorm(page, layout_, t) = float_to_half_bits(residual_norm(r));
  }

  /// \brief Decodes slot t: x̂ = Πᵀ (n · σ ⊙ ẑ) + μ (QJL term included).
  /// \param x [dim] output
  void decode(const uint8_t* page, int t, float* x) const {
    check_slot(t);
    float z[kMaxHeadDim];
    (this->*decode_fn_)(page, t, z);
    const float n = token_scale(page, t);
    for (int j = 0; j < config_.dim; ++j) {
      if (!p_.scale.empty()) z[j] = z[j] * p_.scale[j];
      z[j] = z[j] * n;
    }
    rotate_transpose(p_.rotation, z, x);
    add_mean(x, 1.0f);
  }

  /// \brief Reference twin of decode (bit-by-bit unpack; identical results).
  void decode_ref(const uint8_t* page, int t, float* x) const {
    check_slot(t);
    const int d = config_.dim;
    float z[kMaxHeadDim];
    const uint8_t* codes = token_codes(page, layout_, t);
    for (int j = 0; j < d; ++j)
      z[j] = 1.0f * p_.codebook.centroids[unpack_one(codes, j, config_.bits)];
    add_qjl_dequant(page, t, 1.0f, z);
    const float n = token_scale(page, t);
    for (int j = 0; j < d; ++j) {
      if (!p_.scale.empty()) z[j] = z[j] * p_.scale[j];
      z[j] = z[j] * n;
    }
    rotate_transpose_ref(p_.rotation, z, x);
    add_mean(x, 1.0f);
  }

  /// \brief ẑ of slot t in code space (centroids + QJL term; no norm, scale, rotation).
  /// \param z [dim] output
  void decode_code_space(const uint8_t* page, int t, float* z) const {
    check_slot(t);
    (this->*decode_fn_)(page, t, z);
  }

  /// \brief Rotates, scales and tabulates a query once (see file comment).
  /// \param q [dim]
  void prepare_query(const float* q, PreparedQuery* out) const {
    const int d = config_.dim, L = 1 << config_.bits;
    out->q_code.resize(d);
    out->lut.resize(static_cast<size_t>(d) * L);
    rotate(p_.rotation, q, out->q_code.data());
    for (int j = 0; j < d; ++j) {
      if (!p_.scale.empty()) out->q_code[j] *= p_.scale[j];
      for (int c = 0; c < L; ++c) out->lut[j * L + c] = out->q_code[j] * p_.codebook.centroids[c];
    }
    out->q_dot_mean = 0.0f;
    for (size_t j = 0; j < p_.mean.size(); ++j) out->q_dot_mean += q[j] * p_.mean[j];
    if (config_.qjl == QjlMode::kProd) {
      out->sq.resize(layout_.qjl_dim);
      qjl_project(p_.qjl_projection, out->q_code.data(), out->sq.data());
    } else {
      out->sq.clear();
    }
  }
  PreparedQuery prepare_query(const float* q) const {
    PreparedQuery p;
    prepare_query(q, &p);
    return p;
  }

  /// \brief Estimate of ⟨q, x⟩ for slot t from codes and a prepared query (fast path).
  float score(const PreparedQuery& pq, const uint8_t* page, int t) const {
    check_slot(t);
    return (this->*score_fn_)(pq, page, t);
  }

  /// \brief Reference twin of score: Σ_j q'_j · C[c_j] summed in increasing j.
  float score_ref(const PreparedQuery& pq, const uint8_t* page, int t) const {
    check_slot(t);
    const uint8_t* codes = token_codes(page, layout_, t);
    float acc = 0.0f;
    for (int j = 0; j < config_.dim; ++j)
      acc += pq.q_code[j] * p_.codebook.centroids[unpack_one(codes, j, config_.bits)];
    return finish_score(pq, page, t, acc);
  }

  /// \brief V side: acc += p · n_t · ẑ_t in code space.
  /// \param acc [dim] accumulator (code space)
  void accumulate(const uint8_t* page, int t, float p, float* acc) const {
    float z[kMaxHeadDim];
    decode_code_space(page, t, z);
    const float w = p * token_scale(page, t);
    for (int j = 0; j < config_.dim; ++j) acc[j] += w * z[j];
  }

  /// \brief out = Πᵀ (σ ⊙ acc) + weight_sum · μ (one rotation per query).
  /// \param acc [dim] code-space accumulator  \param out [dim]
  void finish(const float* acc, float weight_sum, float* out) const {
    float y[kMaxHeadDim];
    for (int j = 0; j < config_.dim; ++j) y[j] = p_.scale.empty() ? acc[j] : acc[j] * p_.scale[j];
    rotate_transpose(p_.rotation, y, out);
    add_mean(out, weight_sum);
  }

  /// \brief Code-space residual r = z − C[code(z)] of x (no QJL), e.g. to calibrate the kSign
  /// scale. \param x [dim]  \param r [dim] output
  void residual(const float* x, float* r) const {
    const int d = config_.dim;
    float xc[kMaxHeadDim], y[kMaxHeadDim];
    const float inv = center_and_norm(x, xc, nullptr);
    rotate(p_.rotation, xc, y);
    for (int j = 0; j < d; ++j) {
      float z = y[j] * inv;
      if (!inv_scale_.empty()) z = z * inv_scale_[j];
      r[j] =
          z -
          p_.codebook.centroids[encode_value_ref(z, p_.codebook.boundaries.data(), config_.bits)];
    }
  }

 private:
  void check_slot(int t) const {
    TURBOESM_CHECK(t >= 0 && t < layout_.page_tokens, "token slot ", t, " outside the page [0, ",
                   layout_.page_tokens, ")");
  }

  /// Centers x into xc and returns 1/n (1 for kNone); checks finiteness and the fp16 range.
  float center_and_norm(const float* x, float* xc, float* norm_out) const {
    const int d = config_.dim;
    // Four interleaved double partial sums (d is a multiple of 8): breaks the add latency chain
    // that otherwise dominates the Hadamard encode; shared by encode and encode_ref.
    double a[4] = {0.0, 0.0, 0.0, 0.0};
    for (int j = 0; j < d; ++j) {
      xc[j] = p_.mean.empty() ? x[j] : x[j] - p_.mean[j];
      a[j & 3] += static_cast<double>(xc[j]) * static_cast<double>(xc[j]);
    }
    const double n2 = (a[0] + a[1]) + (a[2] + a[3]);
    TURBOESM_CHECK(std::isfinite(n2),
                   "cannot quantize a vector with non-finite values (or norm "
                   "overflow): squared norm = ",
                   n2);
    const float n = static_cast<float>(std::sqrt(n2));
    if (norm_out) *norm_out = n;
    if (config_.norm == NormMode::kNone) return 1.0f;
    TURBOESM_CHECK(n <= kHalfMax, "vector norm ", n, " exceeds the fp16 range of stored norms (",
                   kHalfMax, ")");
    return n > 0.0f ? 1.0f / n : 0.0f;
  }

  /// Shared start of encode and encode_ref: centering, norm (stored), returns 1/n.
  float prologue(const float* x, float* xc, uint8_t* page, int t) const {
    float n = 0.0f;
    const float inv = center_and_norm(x, xc, &n);
    if (config_.norm == NormMode::kToken) *token_norm(page, layout_, t) = float_to_half_bits(n);
    return inv;
  }

  static float residual_norm(const float* r, int d) {
    double s = 0.0;
    for (int j = 0; j < d; ++j) s += static_cast<double>(r[j]) * static_cast<double>(r[j]);
    return static_cast<float>(std::sqrt(s));
  }
  float residual_norm(const float* r) const { return residual_norm(r, config_.dim); }

  /// n of slot t (stored fp16 norm, or 1 for kNone).
  float token_scale(const uint8_t* page, int t) const {
    return config_.norm == NormMode::kToken ? half_bits_to_float(*token_norm(page, layout_, t))
                                            : 1.0f;
  }

  void add_mean(float* x, float w) const {
    for (size_t j = 0; j < p_.mean.size(); ++j) x[j] += w * p_.mean[j];
  }

  /// Adds the QJL dequantisation term (× w) to a code-space vector.
  void add_qjl_dequant(const uint8_t* page, int t, float w, float* z) const {
    const int d = config_.dim;
    if (config_.qjl == QjlMode::kSign) {
      const uint8_t* bits = token_qjl(page, layout_, t);
      const float s = w * p_.qjl_sign_scale;
      for (int j = 0; j < d; ++j) z[j] += ((bits[j >> 3] >> (j & 7)) & 1u) ? s : -s;
    } else if (config_.qjl == QjlMode::kProd) {
      const float rn = half_bits_to_float(*token_rnorm(page, layout_, t));
      const float coef = w * static_cast<float>(kSqrtHalfPi / layout_.qjl_dim) * rn;
      qjl_add_dequant(p_.qjl_projection, token_qjl(page, layout_, t), coef, z);
    }
  }

  /// QJL term, norm and mean of a score, given acc = Σ_j q'_j C[c_j].
  float finish_score(const PreparedQuery& pq, const uint8_t* page, int t, float acc) const {
    if (config_.qjl == QjlMode::kSign) {
      acc += p_.qjl_sign_scale *
             signed_sum(pq.q_code.data(), token_qjl(page, layout_, t), config_.dim);
    } else if (config_.qjl == QjlMode::kProd) {
      const float rn = half_bits_to_float(*token_rnorm(page, layout_, t));
      acc += static_cast<float>(kSqrtHalfPi / layout_.qjl_dim) * rn *
             signed_sum(pq.sq.data(), token_qjl(page, layout_, t), layout_.qjl_dim);
    }
    return token_scale(page, t) * acc + pq.q_dot_mean;
  }

  template <int BITS>
  void encode_impl(const float* x, uint8_t* page, int t) const {
    constexpr int kBoundaries = (1 << BITS) - 1;
    const int d = config_.dim;
    alignas(64) float xc[kMaxHeadDim];
    alignas(64) float y[kMaxHeadDim];
    alignas(64) int32_t count[kMaxHeadDim];
    alignas(64) uint8_t codes[kMaxHeadDim];
    const float inv = prologue(x, xc, page, t);
    rotate(p_.rotation, xc, y);
    for (int j = 0; j < d; ++j) y[j] = y[j] * inv;
    if (!inv_scale_.empty()) {
      const float* is = inv_scale_.data();
      for (int j = 0; j < d; ++j) y[j] = y[j] * is[j];
    }
    // Branchless compare-count over the boundaries, vectorised across coordinates.
    const float* b = p_.codebook.boundaries.data();
    for (int j = 0; j < d; ++j) count[j] = 0;
    for (int i = 0; i < kBoundaries; ++i) {
      const float bi = b[i];
      for (int j = 0; j < d; ++j) count[j] += (y[j] > bi) ? 1 : 0;
    }
    for (int j = 0; j < d; ++j) codes[j] = static_cast<uint8_t>(count[j]);
    pack_codes<BITS>(codes, static_cast<size_t>(d), token_codes(page, layout_, t));
    if (config_.qjl == QjlMode::kNone) return;
    alignas(64) float r[kMaxHeadDim];
    const float* c = p_.codebook.centroids.data();
    for (int j = 0; j < d; ++j) r[j] = y[j] - c[codes[j]];
    if (config_.qjl == QjlMode::kSign) {
      pack_signs(r, d, token_qjl(page, layout_, t));
      return;
    }
    alignas(64) float u[8 * kMaxHeadDim];
    qjl_project(p_.qjl_projection, r, u);
    pack_signs(u, layout_.qjl_dim, token_qjl(page, layout_, t));
    *token_rnorm(page, layout_, t) = float_to_half_bits(residual_norm(r));
  }

  template <int BITS>
  void decode_code_space_impl(const uint8_t* page, int t, float* z) const {
    unpack_lut<BITS>(token_codes(page, layout_, t), static_cast<size_t>(config_.dim),
                     p_.codebook.centroids.data(), 1.0f, z);
    add_qjl_dequant(page, t, 1.0f, z);
  }

  template <int BITS>
  float score_impl(const PreparedQuery& pq, const uint8_t* page, int t) const {
    constexpr int L = 1 << BITS;
    const int d = config_.dim;
    alignas(64) uint8_t codes[kMaxHeadDim];
    unpack_codes<BITS>(token_codes(page, layout_, t), static_cast<size_t>(d), codes);
    const float* lut = pq.lut.data();
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (int j = 0; j < d; j += 4) {  // d is a multiple of 8
      a0 += lut[(j + 0) * L + codes[j + 0]];
      a1 += lut[(j + 1) * L + codes[j + 1]];
      a2 += lut[(j + 2) * L + codes[j + 2]];
      a3 += lut[(j + 3) * L + codes[j + 3]];
    }
    return finish_score(pq, page, t, (a0 + a1) + (a2 + a3));
  }

  QuantizerConfig config_;
  QuantizerParams p_;
  PageLayout layout_{};
  std::vector<float> inv_scale_;
  void (TurboQuantizer::*encode_fn_)(const float*, uint8_t*, int) const = nullptr;
  void (TurboQuantizer::*decode_fn_)(const uint8_t*, int, float*) const = nullptr;
  float (TurboQuantizer::*score_fn_)(const PreparedQuery&, const uint8_t*, int) const = nullptr;
};

/// \brief Calibrates the kSign scale s = mean |r| over the code-space residuals of samples.
/// `q` may have any QJL mode (the residual does not depend on it).
/// \param samples [n, dim] row-major
inline float calibrate_qjl_sign_scale(const TurboQuantizer& q, const float* samples, size_t n) {
  TURBOESM_CHECK(n > 0, "calibrate_qjl_sign_scale needs samples, got 0");
  const int d = q.dim();
  std::vector<float> r(static_cast<size_t>(n) * d);
  for (size_t i = 0; i < n; ++i) q.residual(samples + i * d, r.data() + i * d);
  return calibrate_sign_scale(r.data(), r.size());
}

}  // namespace turboesm::quant
