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
/// The metadata, the layout and every check on the values are torch-free, in
/// checkpoint_format.h (check_checkpoint_model() is declared there too); this header adds the
/// LibTorch side: writing from tensors, reading into tensors, the runtime TurboCacheSpec.
///
/// ## Model fingerprint
/// sha256 over: "turboesm-model-fingerprint-v1\n", the canonical config JSON
/// (EsmConfig::canonical_json) + "\n", then for every weight tensor in sorted name order
/// "name\ndtype\nshape,…\n" followed by its bytes (the mmapped checkpoint, never converted).

#include <cstdint>
#include <string>
#include <vector>

#include "turboesm/calibration/checkpoint_format.h"
#include "turboesm/calibration/fit.h"
#include "turboesm/model/config.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm::calibration {

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

/// \brief Reads and validates a checkpoint on its own (no model; read_checkpoint_arrays() of
/// checkpoint_format.h, then the arrays as tensors): the metadata and format
/// version, every expected tensor present with its exact shape and dtype F32, no unexpected
/// tensor, finite values, ‖ΠΠᵀ − I‖∞ ≤ 1e-4 per head, ascending codebooks, σ > 0, s ≥ 0.
/// \throws turboesm::Error "<path>: <tensor>: <what is wrong, what was expected>".
Checkpoint read_checkpoint(const std::string& path);

/// \brief read_checkpoint + check_checkpoint_model against the model in `model_dir`.
Checkpoint load_checkpoint(const std::string& path, const std::string& model_dir);

/// \brief The runtime constants (boundaries recomputed as centroid midpoints).
model::TurboCacheSpec turbo_cache_spec_from_checkpoint(const Checkpoint& ckpt);

/// \brief The same spec without the QJL correction (K qjl = none; codebooks unchanged), for the
/// "without QJL" metric of turboesm-compare.
model::TurboCacheSpec without_qjl(const model::TurboCacheSpec& spec);

}  // namespace turboesm::calibration
