// SPDX-License-Identifier: MIT
#pragma once
/// \file fit_options.h
/// \brief The options that select a calibration (FitOptions) and the names of their modes.
///
/// Torch-free (built into turboesm_io, src/io/fit_options.cpp): the checkpoint metadata
/// (checkpoint_format.h) records these options, and its parser must build without LibTorch so
/// that the sanitizer build and the fuzz_checkpoint target can run it. The fitting itself is in
/// fit.h.

#include <cstdint>
#include <string>

#include "turboesm/quant/quantizer.h"

namespace turboesm::calibration {

/// \brief Where the scalar codebook comes from.
enum class CodebookKind : int {
  kData = 0,      ///< 1-D k-means on the calibration values (seed)
  kAnalytic = 1,  ///< Lloyd-Max for a coordinate of a random unit vector (norm token only)
};
/// \brief "data" / "analytic".
const char* to_string(CodebookKind kind);
/// \brief Parses "data" / "analytic"; throws turboesm::Error naming the accepted values.
CodebookKind parse_codebook_kind(const std::string& name);

/// \brief "none" / "token" and its parser (throws naming the accepted values).
const char* norm_mode_name(quant::NormMode mode);
quant::NormMode parse_norm_mode(const std::string& name);
/// \brief "none" / "sign" / "prod" and its parser (throws naming the accepted values).
const char* qjl_mode_name(quant::QjlMode mode);
quant::QjlMode parse_qjl_mode(const std::string& name);

/// \brief Everything that selects a calibration (the tool's options).
struct FitOptions {
  int bits_k = 3;  ///< 1..4
  int bits_v = 3;  ///< 1..4
  quant::RotationKind rotation = quant::RotationKind::kSvd;
  bool svd_scales = true;  ///< per-coordinate σ (svd only)
  quant::NormMode norm = quant::NormMode::kNone;
  bool center = true;
  quant::QjlMode qjl = quant::QjlMode::kNone;  ///< K only (V never has QJL)
  int qjl_dim = 0;                             ///< m for prod (0 → d; multiple of 8)
  CodebookKind codebook = CodebookKind::kData;
  uint64_t seed = 0;

  /// \brief Checks the combination (bits range, analytic codebook needs norm token and a random
  /// or hadamard rotation, qjl_dim multiple of 8, ...). \throws turboesm::Error naming it.
  void validate(int head_dim) const;
  /// \brief K (`key`) or V quantizer mode for head dim `d`.
  quant::QuantizerConfig quantizer_config(int head_dim, bool key) const;
  /// \brief "svd+scales k3/v3 norm=none center=on qjl=sign codebook=data" style one-liner.
  std::string summary() const;
};

}  // namespace turboesm::calibration
