// SPDX-License-Identifier: MIT
// EsmConfig: HF config.json <-> struct, presets. Lives in turboesm_io because it is a torch-free
// parser, although the config is a model concept (include/turboesm/model/config.h).
#include "turboesm/model/config.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "json_text.h"
#include "turboesm/error.h"

namespace turboesm::model {

namespace {

using json = nlohmann::json;

std::string short_json(const json& j) { return io::detail::short_json(j, 60); }

/// Reads config keys with HF semantics: absent (or null, where HF allows None) → default.
class Reader {
 public:
  Reader(const json& j, const std::string& source) : j_(j), source_(source) {}

  const json* get(const char* key, bool required) const {
    const auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      TURBOESM_CHECK(!required, source_, ": missing required key '", key, "'");
      return nullptr;
    }
    return &*it;
  }
  void integer(const char* key, int64_t& out, bool required = false) const {
    if (const json* v = get(key, required)) {
      // Accept 320.0 as 320 (some writers emit floats), but not 320.5. Range first: converting
      // a double outside int64's range is undefined behaviour (found by tests/fuzz/fuzz_config).
      if (v->is_number_float()) {
        const double d = v->get<double>();
        constexpr double kTwo63 = 9223372036854775808.0;
        TURBOESM_CHECK(std::isfinite(d) && d >= -kTwo63 && d < kTwo63 && d == std::trunc(d),
                       source_, ": key '", key, "' must be an integer, got ", short_json(*v));
        out = static_cast<int64_t>(d);
        return;
      }
      TURBOESM_CHECK(v->is_number_integer(), source_, ": key '", key, "' must be an integer, got ",
                     short_json(*v));
      TURBOESM_CHECK(!v->is_number_unsigned() ||
                         v->get<std::uint64_t>() <=
                             static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()),
                     source_, ": key '", key, "' = ", short_json(*v),
                     " does not fit a 64-bit signed integer");
      out = v->get<int64_t>();
    }
  }
  void number(const char* key, double& out) const {
    if (const json* v = get(key, false)) {
      TURBOESM_CHECK(v->is_number(), source_, ": key '", key, "' must be a number, got ",
                     short_json(*v));
      out = v->get<double>();
      TURBOESM_CHECK(std::isfinite(out), source_, ": key '", key, "' must be finite, got ", out);
    }
  }
  void boolean(const char* key, bool& out) const {
    if (const json* v = get(key, false)) {
      TURBOESM_CHECK(v->is_boolean(), source_, ": key '", key, "' must be true or false, got ",
                     short_json(*v));
      out = v->get<bool>();
    }
  }
  void string(const char* key, std::string& out) const {
    if (const json* v = get(key, false)) {
      TURBOESM_CHECK(v->is_string(), source_, ": key '", key, "' must be a string, got ",
                     short_json(*v));
      out = v->get<std::string>();
    }
  }

 private:
  const json& j_;
  const std::string& source_;
};

struct Preset {
  const char* name;
  int64_t hidden, layers, heads, intermediate;
};
// Published ESM-2 sizes (facebook/esm2_* config.json on the HF hub) plus a tiny test model.
constexpr Preset kPresets[] = {
    {"tiny", 128, 2, 4, 256},
    {"esm2_t6_8M", 320, 6, 20, 1280},
    {"esm2_t12_35M", 480, 12, 20, 1920},
    {"esm2_t30_150M", 640, 30, 20, 2560},
    {"esm2_t33_650M", 1280, 33, 20, 5120},
    {"esm2_t36_3B", 2560, 36, 40, 10240},
    {"esm2_t48_15B", 5120, 48, 40, 20480},
};

}  // namespace

int64_t EsmConfig::head_dim() const {
  TURBOESM_CHECK(num_attention_heads > 0, "num_attention_heads must be positive, got ",
                 num_attention_heads);
  return hidden_size / num_attention_heads;
}

void EsmConfig::validate() const {
  TURBOESM_CHECK(position_embedding_type == "rotary",
                 "only rotary (ESM-2) models are supported, got position_embedding_type '",
                 position_embedding_type, "'");
  TURBOESM_CHECK(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  TURBOESM_CHECK(hidden_size > 0, "hidden_size must be positive, got ", hidden_size);
  TURBOESM_CHECK(num_hidden_layers > 0, "num_hidden_layers must be positive, got ",
                 num_hidden_layers);
  TURBOESM_CHECK(num_attention_heads > 0, "num_attention_heads must be positive, got ",
                 num_attention_heads);
  TURBOESM_CHECK(intermediate_size > 0, "intermediate_size must be positive, got ",
                 intermediate_size);
  TURBOESM_CHECK(max_position_embeddings > 0, "max_position_embeddings must be positive, got ",
                 max_position_embeddings);
  TURBOESM_CHECK(hidden_size % num_attention_heads == 0, "hidden_size ", hidden_size,
                 " must be divisible by num_attention_heads ", num_attention_heads);
  TURBOESM_CHECK(head_dim() % 2 == 0, "head_dim ", head_dim(),
                 " (hidden_size / num_attention_heads) must be even for rotary embeddings");
  TURBOESM_CHECK(layer_norm_eps > 0, "layer_norm_eps must be positive, got ", layer_norm_eps);
  TURBOESM_CHECK(rope_theta > 0, "rope_theta must be positive, got ", rope_theta);
  TURBOESM_CHECK(pad_token_id >= 0 && pad_token_id < vocab_size, "pad_token_id ", pad_token_id,
                 " is outside the vocabulary [0, ", vocab_size, ")");
  TURBOESM_CHECK(mask_token_id >= 0 && mask_token_id < vocab_size, "mask_token_id ", mask_token_id,
                 " is outside the vocabulary [0, ", vocab_size, ")");
}

EsmConfig EsmConfig::from_json(const nlohmann::json& j, const std::string& source) {
  TURBOESM_CHECK(j.is_object(), source, ": expected a JSON object, got ", j.type_name());
  if (j.contains("model_type") && j["model_type"].is_string()) {
    const std::string mt = j["model_type"].get<std::string>();
    TURBOESM_CHECK(mt == "esm", source, ": model_type is '", mt, "', expected 'esm'");
  }
  if (j.contains("is_folding_model") && j["is_folding_model"].is_boolean()) {
    TURBOESM_CHECK(!j["is_folding_model"].get<bool>(), source,
                   ": ESMFold (is_folding_model true) is not supported, expected an ESM-2 "
                   "language model");
  }
  EsmConfig c;
  // Where a key is absent, use what HF transformers' EsmConfig would use for the same file.
  c.layer_norm_eps = 1e-12;
  c.position_embedding_type = "absolute";
  c.token_dropout = false;
  c.emb_layer_norm_before = false;
  c.hidden_dropout_prob = 0.1;
  c.attention_probs_dropout_prob = 0.1;
  c.torch_dtype = "float32";

  const Reader r(j, source);
  r.integer("vocab_size", c.vocab_size, /*required=*/true);
  r.integer("hidden_size", c.hidden_size, true);
  r.integer("num_hidden_layers", c.num_hidden_layers, true);
  r.integer("num_attention_heads", c.num_attention_heads, true);
  r.integer("intermediate_size", c.intermediate_size, true);
  r.integer("max_position_embeddings", c.max_position_embeddings);
  r.number("layer_norm_eps", c.layer_norm_eps);
  r.number("rope_theta", c.rope_theta);
  r.number("initializer_range", c.initializer_range);
  r.number("hidden_dropout_prob", c.hidden_dropout_prob);
  r.number("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  r.boolean("token_dropout", c.token_dropout);
  r.boolean("emb_layer_norm_before", c.emb_layer_norm_before);
  r.boolean("tie_word_embeddings", c.tie_word_embeddings);
  r.string("position_embedding_type", c.position_embedding_type);
  r.string("hidden_act", c.hidden_act);  // informational: HF's ESM always uses erf GELU
  r.string("torch_dtype", c.torch_dtype);
  r.string("dtype", c.torch_dtype);  // transformers 5.x name wins when both are present
  r.integer("pad_token_id", c.pad_token_id);
  r.integer("mask_token_id", c.mask_token_id);
  try {
    c.validate();
  } catch (const Error& e) {
    TURBOESM_FAIL(source, ": ", e.what());
  }
  return c;
}

EsmConfig EsmConfig::from_file(const std::string& path) {
  std::string file = path;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) file = path + "/config.json";
  std::ifstream in(file, std::ios::binary);
  TURBOESM_CHECK(in.is_open(), "cannot open model config ", file, ": ", std::strerror(errno));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number overflow
    TURBOESM_FAIL(file, ": malformed JSON (", e.what(), ")");
  }
  return from_json(j, file);
}

nlohmann::json EsmConfig::to_json() const {
  json j = {
      {"architectures", {"EsmForMaskedLM"}},
      {"model_type", "esm"},
      {"is_folding_model", false},
      {"esmfold_config", nullptr},
      {"vocab_list", nullptr},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"intermediate_size", intermediate_size},
      {"max_position_embeddings", max_position_embeddings},
      {"layer_norm_eps", layer_norm_eps},
      {"rope_theta", rope_theta},
      {"initializer_range", initializer_range},
      {"hidden_dropout_prob", hidden_dropout_prob},
      {"attention_probs_dropout_prob", attention_probs_dropout_prob},
      {"token_dropout", token_dropout},
      {"emb_layer_norm_before", emb_layer_norm_before},
      {"tie_word_embeddings", tie_word_embeddings},
      {"position_embedding_type", position_embedding_type},
      {"hidden_act", hidden_act},
      {"dtype", torch_dtype},
      {"pad_token_id", pad_token_id},
      {"mask_token_id", mask_token_id},
      {"eos_token_id", 2},
      {"use_cache", true},
  };
  return j;
}

EsmConfig EsmConfig::preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    EsmConfig c;  // member defaults are ESM-2's values
    c.hidden_size = p.hidden;
    c.num_hidden_layers = p.layers;
    c.num_attention_heads = p.heads;
    c.intermediate_size = p.intermediate;
    c.validate();
    return c;
  }
  std::ostringstream names;
  for (const Preset& p : kPresets) names << (&p == kPresets ? "" : ", ") << p.name;
  TURBOESM_FAIL("unknown model preset '", name, "' (available: ", names.str(), ")");
}

std::vector<std::string> EsmConfig::preset_names() {
  std::vector<std::string> out;
  for (const Preset& p : kPresets) out.emplace_back(p.name);
  return out;
}

std::string EsmConfig::canonical_json() const {
  // Only fields that change the model's outputs; nlohmann objects keep keys sorted.
  const json j = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"intermediate_size", intermediate_size},
      {"max_position_embeddings", max_position_embeddings},
      {"layer_norm_eps", layer_norm_eps},
      {"rope_theta", rope_theta},
      {"token_dropout", token_dropout},
      {"emb_layer_norm_before", emb_layer_norm_before},
      {"tie_word_embeddings", tie_word_embeddings},
      {"position_embedding_type", position_embedding_type},
      {"pad_token_id", pad_token_id},
      {"mask_token_id", mask_token_id},
  };
  return j.dump();
}

}  // namespace turboesm::model
