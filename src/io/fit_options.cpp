// SPDX-License-Identifier: MIT
// FitOptions and the mode names (torch-free: the checkpoint metadata parser needs them).
#include "turboesm/calibration/fit_options.h"

#include <sstream>

#include "turboesm/error.h"
#include "turboesm/quant/format.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::calibration {

const char* to_string(CodebookKind kind) {
  return kind == CodebookKind::kAnalytic ? "analytic" : "data";
}

CodebookKind parse_codebook_kind(const std::string& name) {
  if (name == "data") return CodebookKind::kData;
  if (name == "analytic") return CodebookKind::kAnalytic;
  TURBOESM_FAIL("unknown codebook '", name, "' (expected: data, analytic)");
}

const char* norm_mode_name(quant::NormMode mode) {
  return mode == quant::NormMode::kToken ? "token" : "none";
}

quant::NormMode parse_norm_mode(const std::string& name) {
  if (name == "none") return quant::NormMode::kNone;
  if (name == "token") return quant::NormMode::kToken;
  TURBOESM_FAIL("unknown norm mode '", name, "' (expected: token, none)");
}

const char* qjl_mode_name(quant::QjlMode mode) {
  switch (mode) {
    case quant::QjlMode::kNone:
      return "none";
    case quant::QjlMode::kSign:
      return "sign";
    case quant::QjlMode::kProd:
      return "prod";
  }
  return "?";
}

quant::QjlMode parse_qjl_mode(const std::string& name) {
  if (name == "none") return quant::QjlMode::kNone;
  if (name == "sign") return quant::QjlMode::kSign;
  if (name == "prod") return quant::QjlMode::kProd;
  TURBOESM_FAIL("unknown QJL mode '", name, "' (expected: none, sign, prod)");
}

void FitOptions::validate(int head_dim) const {
  TURBOESM_CHECK(bits_k >= 1 && bits_k <= 4, "K bits must be in 1..4, got ", bits_k);
  TURBOESM_CHECK(bits_v >= 1 && bits_v <= 4, "V bits must be in 1..4, got ", bits_v);
  TURBOESM_CHECK(qjl_dim >= 0 && qjl_dim % 8 == 0,
                 "QJL dim m must be a non-negative multiple of 8 (0 = head dim), got ", qjl_dim);
  TURBOESM_CHECK(qjl == quant::QjlMode::kProd || qjl_dim == 0, "a QJL dim (", qjl_dim,
                 ") only applies to qjl mode prod, not ", qjl_mode_name(qjl));
  if (codebook == CodebookKind::kAnalytic) {
    TURBOESM_CHECK(norm == quant::NormMode::kToken,
                   "the analytic codebook models a coordinate of a random unit vector: it needs "
                   "norm mode token, got ",
                   norm_mode_name(norm));
    TURBOESM_CHECK(
        rotation == quant::RotationKind::kRandom || rotation == quant::RotationKind::kHadamard,
        "the analytic codebook needs a data-oblivious rotation (random or hadamard), "
        "got ",
        quant::to_string(rotation));
  }
  // The page format checks the head dim and the (bits, norm, qjl) combination.
  quant::check_page_layout_args(head_dim, bits_k, norm, qjl, qjl_dim, quant::kPageTokens);
  quant::check_page_layout_args(head_dim, bits_v, norm, quant::QjlMode::kNone, 0,
                                quant::kPageTokens);
}

quant::QuantizerConfig FitOptions::quantizer_config(int head_dim, bool key) const {
  quant::QuantizerConfig c;
  c.dim = head_dim;
  c.bits = key ? bits_k : bits_v;
  c.norm = norm;
  c.qjl = key ? qjl : quant::QjlMode::kNone;
  c.qjl_dim = key && qjl == quant::QjlMode::kProd ? qjl_dim : 0;
  return c;
}

std::string FitOptions::summary() const {
  std::ostringstream os;
  os << quant::to_string(rotation);
  if (rotation == quant::RotationKind::kSvd) os << (svd_scales ? "+scales" : "(no scales)");
  os << " k" << bits_k << "/v" << bits_v << " norm=" << norm_mode_name(norm)
     << " center=" << (center ? "on" : "off") << " qjl=" << qjl_mode_name(qjl);
  if (qjl == quant::QjlMode::kProd) os << "(m=" << qjl_dim << ")";
  os << " codebook=" << to_string(codebook);
  return os.str();
}

}  // namespace turboesm::calibration
