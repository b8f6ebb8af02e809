// SPDX-License-Identifier: MIT
#pragma once
/// \file checkpoint_format.h
/// \brief The calibration checkpoint's format, parsed and validated without LibTorch: the
/// `turboesm` metadata JSON, the expected tensors (names, F32, shapes), their values (finite,
/// ‖ΠΠᵀ − I‖∞ ≤ 1e-4, ascending codebooks, σ > 0, s ≥ 0) and the check against a model config.
///
/// The layout itself is documented in checkpoint.h. This unit is built into turboesm_io
/// (src/io/checkpoint_format.cpp), so the sanitizer build, the torch-free unit tests and the
/// fuzz_checkpoint libFuzzer target run exactly the code that the LibTorch loader
/// (calibration::read_checkpoint) uses; the loader only turns the arrays into tensors.
///
/// Errors: turboesm::Error "<source>: <tensor or key>: <what is wrong, what was expected>".

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "turboesm/calibration/fit_options.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/model/config.h"

namespace turboesm::calibration {

/// Version of the checkpoint layout; readers refuse any other.
inline constexpr int kCheckpointFormatVersion = 1;
/// The `__metadata__` key holding the JSON.
inline constexpr const char* kCheckpointMetadataKey = "turboesm";
/// Version string recorded as `tool_version`.
inline constexpr const char* kToolVersion = "turboesm 0.1.0";

/// \brief The JSON metadata of a checkpoint.
struct CheckpointMetadata {
  int format_version = kCheckpointFormatVersion;
  FitOptions options;  ///< bits_k/v, rotation, svd_scales, norm, center, qjl, m, seed
  int num_layers = 0;
  int num_heads = 0;
  int head_dim = 0;
  std::string calibration_sha256;  ///< sha256 of the calibration FASTA file
  int64_t calibration_tokens = 0;  ///< vectors per (layer, head) used by the fit
  int64_t calibration_records = 0;
  std::string tool_version = kToolVersion;
  std::string model_fingerprint;  ///< model_fingerprint() of the calibrated model
  std::string model_config;       ///< EsmConfig::canonical_json() of the calibrated model
  std::vector<double> k_rel_mse;  ///< [num_layers] calibration-set relative MSE of K
  std::vector<double> v_rel_mse;  ///< [num_layers] same for V

  nlohmann::json to_json() const;
  /// \throws turboesm::Error naming a missing or ill-typed key, or an unsupported
  /// format_version ("checkpoint format version 2 is not supported (this build reads 1)").
  static CheckpointMetadata from_json(const nlohmann::json& j, const std::string& source);
};

/// \brief `layers.{layer}.{k|v}.{suffix}`.
std::string checkpoint_tensor_name(int layer, bool key, const std::string& suffix);

/// \brief One checkpoint tensor the metadata calls for: name and exact F32 shape.
struct CheckpointTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

/// \brief Every tensor a checkpoint with metadata `m` must hold, in the order they are checked
/// (per layer: K then V; rotation, codebook, scale, mean, qjl_scale, qjl_projection as present).
std::vector<CheckpointTensorSpec> checkpoint_tensor_specs(const CheckpointMetadata& m);

/// \brief One of K or V of one layer as host fp32 arrays, row-major (H heads, head dim d).
/// Optional arrays are empty when the metadata does not call for them.
struct CheckpointHeadArrays {
  std::vector<float> rotation;        ///< [H, d, d], each head orthogonal
  std::vector<float> codebook;        ///< [H, 2^bits], ascending per head
  std::vector<float> boundaries;      ///< [H, 2^bits - 1], centroid midpoints (not stored)
  std::vector<float> scale;           ///< [H, d] (svd with scales), > 0
  std::vector<float> mean;            ///< [H, d] (centering)
  std::vector<float> qjl_scale;       ///< [H] (K, qjl sign), ≥ 0
  std::vector<float> qjl_projection;  ///< [H, m, d] (K, qjl prod)
};

/// \brief A validated checkpoint as host arrays.
struct CheckpointArrays {
  CheckpointMetadata meta;
  std::vector<CheckpointHeadArrays> k, v;  ///< [num_layers] each
};

/// \brief Parses the `turboesm` key of a safetensors `__metadata__` map.
/// \throws turboesm::Error "<source>: not a TurboESM checkpoint ...", invalid JSON, or any
/// CheckpointMetadata::from_json error.
CheckpointMetadata parse_checkpoint_metadata(const std::map<std::string, std::string>& metadata,
                                             const std::string& source);

/// \brief Validates and copies out every tensor of an already parsed safetensors file.
/// \param metadata the file's `__metadata__`
/// \param tensors  the file's tensors (offsets valid for `data`)
/// \param data     returns the first byte of a tensor of `tensors` (any alignment)
/// \param source   the file's name, the first word of every error
/// \throws turboesm::Error naming the tensor (missing, dtype ≠ F32, wrong shape, non-finite
/// element, non-orthogonal rotation head, unsorted codebook, σ ≤ 0, s < 0, unexpected tensor).
CheckpointArrays decode_checkpoint(const std::map<std::string, std::string>& metadata,
                                   const std::vector<io::TensorInfo>& tensors,
                                   const std::function<const void*(const io::TensorInfo&)>& data,
                                   const std::string& source);

/// \brief In-memory checkpoint: io::parse_safetensors + decode_checkpoint.
/// \param bytes [size] a whole checkpoint file; \param name used in errors.
CheckpointArrays parse_checkpoint(const std::uint8_t* bytes, std::uint64_t size,
                                  const std::string& name,
                                  const io::SafetensorsLimits& limits = {});

/// \brief Reads `path` (memory-mapped) and decode_checkpoint()s it.
CheckpointArrays read_checkpoint_arrays(const std::string& path);

/// \brief Writes `ck` as a checkpoint file (layout of checkpoint.h, tensors in
/// checkpoint_tensor_specs() order, `boundaries` not stored), atomically. The torch-free twin of
/// calibration::write_checkpoint, for tests and fuzzing.
/// \throws turboesm::Error when an array's size does not match its tensor's shape, when `path`
/// exists and !overwrite, or on I/O errors.
void write_checkpoint_arrays(const std::string& path, const CheckpointArrays& ck,
                             bool overwrite = false);

/// \brief Checks that the checkpoint was calibrated for this model: configs compared field by
/// field first ("checkpoint was calibrated for a model with hidden_size 640, this model has
/// 320"), then the fingerprint ("fingerprint mismatch: same config, different weights").
void check_checkpoint_model(const CheckpointMetadata& meta, const model::EsmConfig& config,
                            const std::string& fingerprint, const std::string& source);

}  // namespace turboesm::calibration
