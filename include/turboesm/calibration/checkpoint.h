// SPDX-License-Identifier: MIT
#pragma once
/// \file checkpoint.h
/// \brief The calibration checkpoint (DESIGN "Checkpoint"): writing, reading with full
/// validation, the model fingerprint, and conversion to the runtime's TurboCacheSpec.
///
/// ## File
/// One safetensors file, every tensor F32, per layer i (H heads, head dim d):
///
/// | tensor                          | shape       | present when                 |
/// |---------------------------------|-------------|------------------------------|
/// | `layers.{i}.k.rotation`         | [H, d, d]   | always (Π row-major, y = Π x)|
/// | `layers.{i}.k.codebook`         | [H, 2^bits] | always (ascending centroids) |
/// | `layers.{i}.k.scale`            | [H, d]      | svd with per-coordinate σ    |
/// | `layers.{i}.k.mean`             | [H, d]      | centering on                 |
/// | `layers.{i}.k.qjl_scale`        | [H]         | qjl sign                     |
/// | `layers.{i}.k.qjl_projection`   | [H, m, d]   | qjl prod                     |
/// | `layers.{i}.v.*`                | same        | (no QJL on V)                |
///
/// `__metadata__` has one key, `turboesm`, whose value is a JSON object string: see
/// CheckpointMetadata (format version, bits, modes, seed, calibration-set sha256, tool version,
/// model fingerprint and the canonical model config, so that a mismatch can name the field).
///
/// ## Model fingerprint
/// sha256 over: "turboesm-model-fingerprint-v1\n", the canonical config JSON
/// (EsmConfig::canonical_json) + "\n", then for every weight tensor in sorted name order
/// "name\ndtype\nshape,…\n" followed by its bytes (the mmapped checkpoint, never converted).

#include <cstdint>
#include <string>
#include <vector>

#include "turboesm/calibration/fit.h"
#include "turboesm/model/config.h"
#include "turboesm/model/turbo_cache.h"

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

/// \brief A checkpoint in memory: metadata + every layer's constants (CPU fp32).
struct Checkpoint {
  CheckpointMetadata meta;
  std::vector<model::TurboLayerConstants> layers;  ///< [num_layers]
};

/// \brief Sha256 fingerprint of a model directory (config + weights; see the file comment).
/// \param model_dir HF model directory (config.json + model.safetensors or shards)
std::string model_fingerprint(const std::string& model_dir);

/// \brief Writes `ckpt` atomically as one safetensors file (see the file comment).
/// \throws turboesm::Error when `path` exists and !overwrite, or on I/O errors.
void write_checkpoint(const std::string& path, const Checkpoint& ckpt, bool overwrite = false);

/// \brief Reads and validates a checkpoint on its own (no model): the metadata and format
/// version, every expected tensor present with its exact shape and dtype F32, no unexpected
/// tensor, finite values, ‖ΠΠᵀ − I‖∞ ≤ 1e-4 per head, ascending codebooks, σ > 0, s ≥ 0.
/// \throws turboesm::Error "<path>: <tensor>: <what is wrong, what was expected>".
Checkpoint read_checkpoint(const std::string& path);

/// \brief Checks that the checkpoint was calibrated for this model: configs compared field by
/// field first ("checkpoint was calibrated for a model with hidden_size 640, this model has
/// 320"), then the fingerprint ("fingerprint mismatch: same config, different weights").
void check_checkpoint_model(const CheckpointMetadata& meta, const model::EsmConfig& config,
                            const std::string& fingerprint, const std::string& source);

/// \brief read_checkpoint + check_checkpoint_model against the model in `model_dir`.
Checkpoint load_checkpoint(const std::string& path, const std::string& model_dir);

/// \brief The runtime constants (boundaries recomputed as centroid midpoints).
model::TurboCacheSpec turbo_cache_spec_from_checkpoint(const Checkpoint& ckpt);

/// \brief The same spec without the QJL correction (K qjl = none; codebooks unchanged), for the
/// "without QJL" metric of turboesm-compare.
model::TurboCacheSpec without_qjl(const model::TurboCacheSpec& spec);

}  // namespace turboesm::calibration
