// SPDX-License-Identifier: MIT
#pragma once
/// \file weights.h
/// \brief ESM-2 weights as LibTorch tensors, loaded from Hugging Face checkpoints.
///
/// Names are resolved the way HF transformers resolves them: the base-model prefix `esm.` may be
/// present or not; LayerNorm parameters may be `.weight/.bias` or the legacy `.gamma/.beta`
/// (transformers 5.x writes the latter for `LayerNorm` modules); the LM decoder is tied to the
/// word embeddings unless `lm_head.decoder.weight` is stored; rotary `inv_freq` may be stored once
/// (`esm.rotary_embeddings.inv_freq`), per layer, or under one key with `*` in place of the layer
/// index (transformers 5.x). Unknown tensors (e.g. `position_ids`) are ignored.

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "turboesm/io/dtype.h"
#include "turboesm/model/config.h"

namespace turboesm::model {

/// \brief Where and in which precision the model runs.
struct LoadOptions {
  c10::Device device = c10::Device(c10::kCPU);
  at::ScalarType dtype = at::kFloat;  ///< kFloat, kHalf or kBFloat16
  /// Reject weights containing NaN/Inf (one pass over every tensor at load time).
  bool check_finite = true;
};

/// \brief LayerNorm affine parameters, both [hidden].
struct LayerNormWeights {
  at::Tensor weight, bias;
};

/// \brief One transformer layer (HF `EsmLayer`). Linear weights are [out, in] as nn.Linear.
struct LayerWeights {
  LayerNormWeights attn_ln;  ///< pre-attention LayerNorm (`attention.LayerNorm`)
  /// Fused query/key/value projection [3*hidden, hidden] / [3*hidden] (one GEMM instead of three);
  /// q_*, k_*, v_* are views into it, rows [0,H), [H,2H), [2H,3H).
  at::Tensor qkv_weight, qkv_bias;
  at::Tensor q_weight, q_bias, k_weight, k_bias, v_weight, v_bias;
  at::Tensor o_weight, o_bias;      ///< attention output dense [hidden, hidden] / [hidden]
  LayerNormWeights ffn_ln;          ///< pre-FFN LayerNorm (`LayerNorm`)
  at::Tensor fc1_weight, fc1_bias;  ///< intermediate dense [intermediate, hidden]
  at::Tensor fc2_weight, fc2_bias;  ///< output dense [hidden, intermediate]
};

/// \brief All weights of an EsmForMaskedLM (the LM and contact heads are optional: checkpoints of
/// a bare EsmModel have neither).
struct EsmWeights {
  at::Tensor word_embeddings;                     ///< [vocab, hidden]
  std::optional<LayerNormWeights> emb_ln_before;  ///< present iff config.emb_layer_norm_before
  std::vector<LayerWeights> layers;
  LayerNormWeights emb_ln_after;  ///< `encoder.emb_layer_norm_after`
  /// Stored rotary inverse frequencies [head_dim/2] in fp32 (undefined: computed from rope_theta).
  at::Tensor rotary_inv_freq;

  bool has_lm_head = false;
  at::Tensor lm_dense_weight, lm_dense_bias;  ///< [hidden, hidden] / [hidden]
  LayerNormWeights lm_ln;
  at::Tensor lm_decoder_weight;  ///< [vocab, hidden]: the word embeddings when tied
  at::Tensor lm_bias;            ///< [vocab]

  bool has_contact_head = false;
  at::Tensor contact_weight;  ///< [1, layers*heads]
  at::Tensor contact_bias;    ///< [1]

  /// Keeps memory-mapped checkpoint files alive while tensors alias them (zero-copy loading).
  std::shared_ptr<const void> storage_owner;
};

/// \brief A source of named CPU tensors in their stored dtype (a checkpoint or an in-memory map).
/// Returns an undefined tensor for an absent name. `shape_of` reports the stored shape without
/// materialising the data (used for error messages).
struct TensorSource {
  std::function<std::vector<std::string>()> names;
  std::function<at::Tensor(const std::string&)> get;
  std::string description;  ///< e.g. the checkpoint path, for messages
  std::shared_ptr<const void> owner;
};

/// \brief Loads `dir` (a HF model directory or a .safetensors file) for `config`.
/// \throws turboesm::Error naming the tensor and the expected and actual shape for a missing or
/// misshaped tensor, naming the tensor for a non-finite weight, and saying that fair-esm `.pt`
/// pickles are not supported when handed one.
EsmWeights load_weights(const std::string& dir, const EsmConfig& config, const LoadOptions& opts);

/// \brief Same as load_weights() for any tensor source (tests, random init).
EsmWeights load_weights(const TensorSource& source, const EsmConfig& config,
                        const LoadOptions& opts);

/// \brief Wraps an opened safetensors checkpoint as a TensorSource (zero-copy `from_blob` views
/// when the data is aligned; the returned source keeps the mapping alive).
TensorSource checkpoint_source(const std::string& path_or_dir);

/// \brief Torch dtype of a config / CLI spelling: "float32"/"fp32", "float16"/"fp16"/"half",
/// "bfloat16"/"bf16". \throws turboesm::Error listing the accepted names.
at::ScalarType parse_scalar_type(const std::string& name);

/// \brief The LibTorch scalar type of a safetensors dtype (F32 → kFloat, ..., U8 → kByte).
at::ScalarType torch_dtype(io::DType d);

/// \brief Parses "cpu", "cuda", "cuda:N". \throws turboesm::Error for anything else, or when CUDA
/// is requested but not available (naming the device count).
c10::Device parse_device(const std::string& name);

}  // namespace turboesm::model
