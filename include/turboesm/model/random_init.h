// SPDX-License-Identifier: MIT
#pragma once
/// \file random_init.h
/// \brief Random-init ESM-2 weights with HF names and HF `_init_weights` (what
/// `turboesm-make-model` writes and Esm2Model::random builds).
///
/// Init: Linear / Embedding weights ~ N(0, init_std), biases 0, LayerNorm weight 1 / bias 0, the
/// `<pad>` row of the word embeddings 0, LM-head bias 0. Each tensor is drawn from its own
/// generator seeded by (seed, tensor index), so a tensor can be produced without the others (the
/// 3B/15B presets are written one tensor at a time).

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "turboesm/model/config.h"
#include "turboesm/model/weights.h"

namespace turboesm::model {

/// \brief One parameter of an HF EsmForMaskedLM checkpoint.
struct ParamSpec {
  /// kRotaryInvFreq: HF's default 1/theta^(2i/d), always stored as F32.
  enum class Init { kNormal, kZeros, kOnes, kEmbedding, kRotaryInvFreq };
  std::string name;  ///< HF name, e.g. "esm.encoder.layer.0.attention.self.query.weight"
  std::vector<int64_t> shape;
  Init init = Init::kNormal;
};

/// \brief The parameters HF saves for `config` (`.weight/.bias` LayerNorm names, `esm.` prefix,
/// `lm_head.decoder.weight` only when the embeddings are untied; the rotary inv_freq under the
/// transformers 5.x key `esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq`, in fp32,
/// so HF reports no missing key), in a fixed order.
std::vector<ParamSpec> hf_parameter_specs(const EsmConfig& config);

/// \brief Draws parameter `index` of `specs`: fp32 CPU tensor of spec.shape.
at::Tensor init_parameter(const std::vector<ParamSpec>& specs, std::size_t index, uint64_t seed,
                          double init_std, const EsmConfig& config);

/// \brief The parameters of hf_parameter_specs as a lazy TensorSource (each tensor drawn when
/// the loader asks for it, so peak memory stays at the model plus one tensor).
/// On the CPU the values are init_parameter's (identical to Esm2Model::random), converted to
/// `dtype`. On a CUDA device every normal tensor is drawn there, in `dtype`, from a device
/// generator seeded by (seed, tensor index): same distribution and structure (zeros, ones, `<pad>`
/// row, rotary inv_freq), other values, no host round trip (the 15B shapes take ~30 GB in fp16).
TensorSource random_tensor_source(const EsmConfig& config, uint64_t seed, double init_std,
                                  c10::Device device, at::ScalarType dtype);

/// \brief Writes `<out_dir>/config.json` and `<out_dir>/model.safetensors` (tensor by tensor, in
/// `dtype`), both atomically. Creates `out_dir` if needed.
/// \param progress called after each tensor with (done, total); may be empty.
/// \throws turboesm::Error when the outputs exist and !overwrite, or on I/O failure.
void write_random_model(const EsmConfig& config, uint64_t seed, double init_std,
                        at::ScalarType dtype, const std::string& out_dir, bool overwrite,
                        const std::function<void(std::size_t, std::size_t)>& progress = {});

}  // namespace turboesm::model
