// SPDX-License-Identifier: MIT
#pragma once
/// \file config.h
/// \brief ESM-2 hyper-parameters: parsed from a Hugging Face `config.json`, written back as one
/// transformers loads, and presets with the published ESM-2 sizes. Torch-free (built into
/// turboesm_io).

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace turboesm::model {

/// \brief ESM-2 configuration. Member defaults are ESM-2's values; from_json() instead fills
/// absent optional keys with HF `EsmConfig`'s class defaults (what transformers would use for the
/// same file, e.g. layer_norm_eps 1e-12, position_embedding_type "absolute", token_dropout false).
struct EsmConfig {
  int64_t vocab_size = 33;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 1026;
  double layer_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double initializer_range = 0.02;
  double hidden_dropout_prob = 0.0;
  double attention_probs_dropout_prob = 0.0;
  bool token_dropout = true;
  bool emb_layer_norm_before = false;
  bool tie_word_embeddings = true;
  std::string position_embedding_type = "rotary";
  std::string hidden_act = "gelu";
  std::string torch_dtype = "float32";  ///< "dtype" (transformers 5) or "torch_dtype" (4.x)
  int64_t pad_token_id = 1;
  int64_t mask_token_id = 32;

  /// \brief hidden_size / num_attention_heads.
  int64_t head_dim() const;

  /// \brief Checks the configuration is one TurboESM runs.
  /// \throws turboesm::Error: non-positive sizes, hidden_size % num_attention_heads != 0, odd
  /// head_dim (rotary rotates halves), position_embedding_type != "rotary" ("only rotary
  /// (ESM-2) models are supported, got 'absolute'"), hidden_act not gelu, token ids outside
  /// the vocabulary, layer_norm_eps <= 0, rope_theta <= 0.
  void validate() const;

  /// \brief Parses an HF config.json object. Unknown keys are ignored.
  /// Required: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
  /// vocab_size. Missing → "<source>: missing required key 'hidden_size'"; wrong type →
  /// "<source>: key 'x' must be <type>, got <json>". Calls validate().
  static EsmConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  /// \brief Reads and parses `path` (a config.json, or a model directory containing one).
  /// \throws turboesm::Error naming the file on I/O or JSON syntax errors.
  static EsmConfig from_file(const std::string& path);

  /// \brief A config.json HF transformers 5.x loads as EsmForMaskedLM.
  nlohmann::json to_json() const;

  /// \brief Published ESM-2 sizes: tiny, esm2_t6_8M, esm2_t12_35M, esm2_t30_150M,
  /// esm2_t33_650M, esm2_t36_3B, esm2_t48_15B. tiny = hidden 128, 4 heads, 2 layers,
  /// intermediate 256. \throws turboesm::Error listing the names for an unknown one.
  static EsmConfig preset(const std::string& name);
  static std::vector<std::string> preset_names();

  /// \brief Sorted-key compact JSON of the fields that define the model's function (for
  /// fingerprints): identical configs give identical strings.
  std::string canonical_json() const;
};

}  // namespace turboesm::model
