// SPDX-License-Identifier: MIT
// Checkpoint loading: every broken input gives its own clear error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/atomic_file.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/random_init.h"

namespace turboesm {
namespace {

namespace fs = std::filesystem;

/// Writes a small make-model checkpoint, then a copy edited by `edit` (name → tensor map).
std::string edited_checkpoint(const std::string& name,
                              const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const std::string base = test::fresh_dir("weights_base_" + name);
  model::write_random_model(test::small_config(2), 1, 0.02, at::kFloat, base, false);
  io::SafetensorsFile f(base + "/model.safetensors");
  std::map<std::string, at::Tensor> t;
  for (const auto& info : f.tensors()) t[info.name] = test::read_tensor(f, info.name);
  edit(t);
  const std::string dir = test::fresh_dir("weights_" + name);
  fs::copy_file(base + "/config.json", dir + "/config.json");
  std::vector<io::TensorView> views;
  for (auto& kv : t) {
    kv.second = kv.second.contiguous();
    io::DType dt = kv.second.scalar_type() == at::kLong ? io::DType::I64 : io::DType::F32;
    views.push_back({kv.first, dt, kv.second.sizes().vec(), kv.second.data_ptr()});
  }
  io::write_safetensors(dir + "/model.safetensors", views);
  return dir;
}

std::string load_error(const std::string& dir) {
  try {
    model::Esm2Model::load(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE((haystack).find(needle), std::string::npos) << "message: " << (haystack)

TEST(Weights, MissingTensorNamesItAndItsShape) {
  auto dir = edited_checkpoint(
      "missing", [](auto& t) { t.erase("esm.encoder.layer.1.attention.self.key.weight"); });
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, "missing tensor 'esm.encoder.layer.1.attention.self.key.weight'");
  EXPECT_HAS(msg, "[48, 48]");
}

TEST(Weights, MisshapedTensorNamesExpectedAndActual) {
  auto dir = edited_checkpoint("misshaped", [](auto& t) {
    t["esm.encoder.layer.0.intermediate.dense.weight"] = at::zeros({95, 48});
  });
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, "'esm.encoder.layer.0.intermediate.dense.weight' has shape [95, 48]");
  EXPECT_HAS(msg, "expected [96, 48]");
}

TEST(Weights, NanWeightIsNamed) {
  auto dir = edited_checkpoint("nan", [](auto& t) {
    t["lm_head.dense.weight"][3][4] = std::numeric_limits<float>::quiet_NaN();
  });
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, "'lm_head.dense.weight' contains NaN or Inf");
}

TEST(Weights, IntegerWeightIsRefused) {
  auto dir = edited_checkpoint("int", [](auto& t) {
    t["esm.encoder.emb_layer_norm_after.bias"] = at::zeros({48}, at::kLong);
  });
  EXPECT_HAS(load_error(dir), "expected a floating type");
}

TEST(Weights, ExtraLayerIsRefused) {
  auto dir = edited_checkpoint(
      "extra_layer", [](auto& t) { t["esm.encoder.layer.2.output.dense.bias"] = at::zeros({48}); });
  EXPECT_HAS(load_error(dir), "belongs to layer 2 but config.num_hidden_layers is 2");
}

TEST(Weights, ExtraBuffersAreIgnoredAndHeadsAreOptional) {
  auto dir = edited_checkpoint("bare", [](auto& t) {
    t["esm.embeddings.position_ids"] = at::arange(1026, at::kLong).unsqueeze(0);
    for (auto it = t.begin(); it != t.end();) {
      const bool head = it->first.rfind("lm_head.", 0) == 0 ||
                        it->first.find("contact_head") != std::string::npos;
      it = head ? t.erase(it) : std::next(it);
    }
  });
  auto m = model::Esm2Model::load(dir);
  EXPECT_FALSE(m->weights().has_lm_head);
  EXPECT_FALSE(m->weights().has_contact_head);
  model::ForwardOptions fo;
  fo.need_logits = true;
  try {
    m->forward(at::tensor({0, 5, 2}).unsqueeze(0), at::Tensor(), fo);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), "no LM head");
  }
}

TEST(Weights, FairEsmPickleIsNotSupported) {
  const std::string dir = test::fresh_dir("weights_pt");
  { std::ofstream(dir + "/esm2_t6_8M_UR50D.pt") << "not a pickle"; }
  try {
    model::load_weights(dir + "/esm2_t6_8M_UR50D.pt", test::small_config(), {});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), "not supported");
  }
}

TEST(Weights, MissingDirectoryAndConfig) {
  EXPECT_THROW(model::Esm2Model::load(std::string(TURBOESM_TEST_WORK_DIR) + "/no/such/model"),
               Error);
  const std::string dir = test::fresh_dir("weights_noconfig");
  model::write_random_model(test::small_config(), 1, 0.02, at::kFloat, dir, false);
  fs::remove(dir + "/config.json");
  EXPECT_THROW(model::Esm2Model::load(dir), Error);
}

TEST(Weights, NonRotaryConfigIsRefused) {
  auto cfg = test::small_config();
  cfg.position_embedding_type = "absolute";
  try {
    model::Esm2Model::random(cfg, 1, 0.02);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_HAS(std::string(e.what()), "rotary");
  }
}

TEST(Weights, DtypeAndDeviceStrings) {
  EXPECT_EQ(model::parse_scalar_type("fp16"), at::kHalf);
  EXPECT_EQ(model::parse_scalar_type("bfloat16"), at::kBFloat16);
  EXPECT_EQ(model::parse_scalar_type("float32"), at::kFloat);
  EXPECT_THROW(model::parse_scalar_type("int8"), Error);
  EXPECT_EQ(model::parse_device("cpu").type(), c10::kCPU);
  EXPECT_THROW(model::parse_device("tpu"), Error);
  EXPECT_THROW(model::parse_device("cuda:x"), Error);
  if (!at::hasCUDA()) {
    try {
      model::parse_device("cuda:0");
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_HAS(std::string(e.what()), "CUDA is not available");
    }
  }
}

}  // namespace
}  // namespace turboesm
