// SPDX-License-Identifier: MIT
// EsmConfig: parsing a config.json written by HF transformers, errors, presets, and (when the
// venv is configured) HF transformers loading what we write.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "io_test_util.h"
#include "turboesm/model/config.h"

namespace turboesm::model {
namespace {

using ::testing::HasSubstr;
using turboesm::io::testing::error_of;
using turboesm::io::testing::ScratchDir;
using turboesm::io::testing::write_bytes;
using json = nlohmann::json;

const std::string kHfConfig =
    std::string(TURBOESM_TEST_DATA_DIR) + "/io/data/hf_config_esm2_t6_8M.json";

json hf_json() {
  std::ifstream in(kHfConfig);
  return json::parse(in);
}

TEST(EsmConfig, ParsesConfigWrittenByTransformers) {
  const EsmConfig c = EsmConfig::from_file(kHfConfig);
  EXPECT_EQ(c.vocab_size, 33);
  EXPECT_EQ(c.hidden_size, 320);
  EXPECT_EQ(c.num_hidden_layers, 6);
  EXPECT_EQ(c.num_attention_heads, 20);
  EXPECT_EQ(c.intermediate_size, 1280);
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_EQ(c.max_position_embeddings, 1026);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.token_dropout);
  EXPECT_FALSE(c.emb_layer_norm_before);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.position_embedding_type, "rotary");
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_EQ(c.mask_token_id, 32);
  // Same as the preset with the same published sizes.
  EXPECT_EQ(c.canonical_json(), EsmConfig::preset("esm2_t6_8M").canonical_json());
}

TEST(EsmConfig, FromFileAcceptsModelDirectory) {
  ScratchDir dir;
  write_bytes(dir.file("config.json"), hf_json().dump());
  EXPECT_EQ(EsmConfig::from_file(dir.path().string()).hidden_size, 320);
}

TEST(EsmConfig, UnknownKeysIgnoredAndLegacyKeysRead) {
  json j = hf_json();
  j["some_future_key"] = {{"nested", 1}};
  j["torch_dtype"] = "float16";  // transformers 4.x spelling
  j.erase("rope_theta");         // absent in older hub configs: default 10000
  const EsmConfig c = EsmConfig::from_json(j);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
}

TEST(EsmConfig, AbsentOptionalKeysTakeHFDefaults) {
  json j = hf_json();
  j.erase("layer_norm_eps");
  j.erase("token_dropout");
  const EsmConfig c = EsmConfig::from_json(j);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-12);  // HF EsmConfig default, not ESM-2's 1e-5
  EXPECT_FALSE(c.token_dropout);
  j.erase("position_embedding_type");  // HF default "absolute" → refused
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }),
              HasSubstr("got position_embedding_type 'absolute'"));
}

TEST(EsmConfig, MissingRequiredKey) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "vocab_size"}) {
    json j = hf_json();
    j.erase(key);
    EXPECT_THAT(error_of([&] { EsmConfig::from_json(j, "dir/config.json"); }),
                HasSubstr(std::string("dir/config.json: missing required key '") + key + "'"));
  }
}

TEST(EsmConfig, WrongTypesNameKeyAndExpectedType) {
  json j = hf_json();
  j["hidden_size"] = "320";
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }),
              HasSubstr("key 'hidden_size' must be an integer, got \"320\""));
  j = hf_json();
  j["token_dropout"] = 1;
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }),
              HasSubstr("key 'token_dropout' must be true or false, got 1"));
  j = hf_json();
  j["layer_norm_eps"] = "small";
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }),
              HasSubstr("key 'layer_norm_eps' must be a number"));
  j = hf_json();
  j["hidden_size"] = 320.5;
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }), HasSubstr("must be an integer"));
  j["hidden_size"] = 320.0;
  EXPECT_EQ(EsmConfig::from_json(j).hidden_size, 320);
  EXPECT_THAT(error_of([] { EsmConfig::from_json(json::array()); }),
              HasSubstr("expected a JSON object"));
}

TEST(EsmConfig, BadJsonFile) {
  ScratchDir dir;
  write_bytes(dir.file("config.json"), "{\"hidden_size\": 320,");
  EXPECT_THAT(error_of([&] { EsmConfig::from_file(dir.file("config.json")); }),
              HasSubstr(dir.file("config.json") + ": malformed JSON"));
  EXPECT_THAT(error_of([&] { EsmConfig::from_file(dir.file("missing.json")); }),
              HasSubstr("cannot open model config"));
}

TEST(EsmConfig, RefusesUnsupportedModels) {
  json j = hf_json();
  j["position_embedding_type"] = "absolute";
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }),
              HasSubstr("only rotary (ESM-2) models are supported, got position_embedding_type "
                        "'absolute'"));
  j = hf_json();
  j["model_type"] = "bert";
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }), HasSubstr("expected 'esm'"));
  j = hf_json();
  j["is_folding_model"] = true;
  EXPECT_THAT(error_of([&] { EsmConfig::from_json(j); }), HasSubstr("ESMFold"));
}

TEST(EsmConfig, ValidateChecksShapes) {
  EsmConfig c = EsmConfig::preset("tiny");
  c.num_attention_heads = 3;
  EXPECT_THAT(error_of([&] { c.validate(); }),
              HasSubstr("hidden_size 128 must be divisible by num_attention_heads 3"));
  c = EsmConfig::preset("tiny");
  c.hidden_size = 132;  // head_dim 33
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("head_dim 33"));
  c = EsmConfig::preset("tiny");
  c.num_hidden_layers = 0;
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("num_hidden_layers must be positive"));
  c = EsmConfig::preset("tiny");
  c.mask_token_id = 40;
  EXPECT_THAT(error_of([&] { c.validate(); }), HasSubstr("mask_token_id 40 is outside"));
}

struct PresetFacts {
  const char* name;
  int64_t hidden, layers, heads, intermediate;
};

TEST(EsmConfig, PresetsHavePublishedHyperParameters) {
  // facebook/esm2_* config.json on the Hugging Face hub.
  const PresetFacts facts[] = {
      {"tiny", 128, 2, 4, 256},
      {"esm2_t6_8M", 320, 6, 20, 1280},
      {"esm2_t12_35M", 480, 12, 20, 1920},
      {"esm2_t30_150M", 640, 30, 20, 2560},
      {"esm2_t33_650M", 1280, 33, 20, 5120},
      {"esm2_t36_3B", 2560, 36, 40, 10240},
      {"esm2_t48_15B", 5120, 48, 40, 20480},
  };
  EXPECT_EQ(EsmConfig::preset_names().size(), std::size(facts));
  for (const auto& f : facts) {
    SCOPED_TRACE(f.name);
    const EsmConfig c = EsmConfig::preset(f.name);
    EXPECT_EQ(c.hidden_size, f.hidden);
    EXPECT_EQ(c.num_hidden_layers, f.layers);
    EXPECT_EQ(c.num_attention_heads, f.heads);
    EXPECT_EQ(c.intermediate_size, f.intermediate);
    EXPECT_EQ(c.vocab_size, 33);
    EXPECT_EQ(c.max_position_embeddings, 1026);
    EXPECT_TRUE(c.token_dropout);
    EXPECT_FALSE(c.emb_layer_norm_before);
    EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
    EXPECT_EQ(c.position_embedding_type, "rotary");
    // to_json → from_json reproduces the preset.
    EXPECT_EQ(EsmConfig::from_json(c.to_json()).canonical_json(), c.canonical_json());
  }
  EXPECT_THAT(error_of([] { EsmConfig::preset("esm2_t99"); }),
              HasSubstr("unknown model preset 'esm2_t99' (available: tiny, esm2_t6_8M"));
}

TEST(EsmConfig, CanonicalJsonIsStableAndSensitive) {
  EsmConfig a = EsmConfig::preset("tiny");
  EsmConfig b = EsmConfig::preset("tiny");
  b.initializer_range = 0.08;  // does not change the function of a model
  EXPECT_EQ(a.canonical_json(), b.canonical_json());
  b.layer_norm_eps = 1e-6;
  EXPECT_NE(a.canonical_json(), b.canonical_json());
  const json j = json::parse(a.canonical_json());
  EXPECT_EQ(j["hidden_size"], 128);
  EXPECT_EQ(a.canonical_json().find(' '), std::string::npos) << "compact dump expected";
}

TEST(EsmConfig, TransformersLoadsWhatWeWrite) {
  const std::string py = TURBOESM_PYTHON;
  if (py.empty()) GTEST_SKIP() << "TURBOESM_PYTHON not configured";
  ScratchDir dir;
  EsmConfig c = EsmConfig::preset("esm2_t12_35M");
  c.torch_dtype = "float16";
  write_bytes(dir.file("config.json"), c.to_json().dump(2));
  write_bytes(dir.file("check.py"), R"PY(
import sys
from transformers import AutoConfig
c = AutoConfig.from_pretrained(sys.argv[1])
assert type(c).__name__ == "EsmConfig", type(c)
assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (480, 12, 20, 1920)
assert c.position_embedding_type == "rotary" and c.token_dropout and not c.emb_layer_norm_before
assert c.layer_norm_eps == 1e-5 and c.vocab_size == 33 and c.mask_token_id == 32 and c.pad_token_id == 1
assert not c.is_folding_model and c.architectures == ["EsmForMaskedLM"]
assert str(c.dtype).endswith("float16"), c.dtype
)PY");
  EXPECT_EQ(std::system((py + " " + dir.file("check.py") + " " + dir.path().string()).c_str()), 0);
}

}  // namespace
}  // namespace turboesm::model
