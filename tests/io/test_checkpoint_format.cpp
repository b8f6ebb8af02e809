// SPDX-License-Identifier: MIT
// Calibration checkpoint format, torch-free (checkpoint_format.h): write/read round trip, the
// tensor layout, and one clear error for each kind of broken file (metadata, tensors, values,
// model match). The LibTorch loader runs the same code (tests/model/test_calibration.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "io/io_test_util.h"
#include "turboesm/calibration/checkpoint_format.h"
#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/model/config.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::calibration {
namespace {

using io::testing::ScratchDir;
using nlohmann::json;

constexpr int kLayers = 2, kHeads = 2, kDim = 8;

/// A valid checkpoint of a hypothetical 2-layer, 2-head, d = 8 model: random rotations,
/// ascending codebooks, K with sign QJL, centering, svd scales (`svd`) or none.
CheckpointArrays valid_checkpoint(bool svd = false) {
  CheckpointArrays ck;
  CheckpointMetadata& m = ck.meta;
  m.options.bits_k = 3;
  m.options.bits_v = 2;
  m.options.rotation = svd ? quant::RotationKind::kSvd : quant::RotationKind::kRandom;
  m.options.svd_scales = svd;
  m.options.norm = quant::NormMode::kToken;
  m.options.center = true;
  m.options.qjl = quant::QjlMode::kSign;
  m.num_layers = kLayers;
  m.num_heads = kHeads;
  m.head_dim = kDim;
  m.calibration_sha256 = std::string(64, 'a');
  m.calibration_tokens = 100;
  m.calibration_records = 3;
  m.model_fingerprint = std::string(64, 'f');
  m.model_config = R"({"hidden_size":16})";
  m.k_rel_mse = {0.1, 0.2};
  m.v_rel_mse = {0.3, 0.4};
  uint64_t seed = 1;
  for (int l = 0; l < kLayers; ++l) {
    for (bool key : {true, false}) {
      CheckpointHeadArrays a;
      const int L = 1 << (key ? 3 : 2);
      for (int h = 0; h < kHeads; ++h) {
        const auto r = quant::make_random_rotation(kDim, seed++);
        a.rotation.insert(a.rotation.end(), r.matrix.begin(), r.matrix.end());
        for (int i = 0; i < L; ++i) a.codebook.push_back(-1.0f + 2.0f * i / (L - 1) + 0.01f * h);
        for (int i = 0; i + 1 < L; ++i)
          a.boundaries.push_back(0.5f * (a.codebook[h * L + i] + a.codebook[h * L + i + 1]));
        for (int j = 0; j < kDim; ++j) {
          a.mean.push_back(0.01f * j - 0.02f * h);
          if (svd) a.scale.push_back(1.0f + 0.1f * j);
        }
        if (key) a.qjl_scale.push_back(0.05f * (h + 1));
      }
      (key ? ck.k : ck.v).push_back(a);
    }
  }
  return ck;
}

/// Writes `ck` through safetensors after `edit` changed the tensor list or the metadata: the
/// way to build files the checkpoint writer would never produce.
struct RawCheckpoint {
  std::vector<std::vector<float>> storage;
  std::vector<io::TensorView> views;
  std::map<std::string, std::string> metadata;
};

RawCheckpoint raw(const CheckpointArrays& ck) {
  RawCheckpoint r;
  const auto specs = checkpoint_tensor_specs(ck.meta);
  r.storage.reserve(specs.size() + 8);
  size_t i = 0;
  for (int l = 0; l < ck.meta.num_layers; ++l)
    for (bool key : {true, false}) {
      const CheckpointHeadArrays& a = key ? ck.k[l] : ck.v[l];
      for (const auto* v :
           {&a.rotation, &a.codebook, &a.scale, &a.mean, &a.qjl_scale, &a.qjl_projection}) {
        if (v->empty()) continue;
        r.storage.push_back(*v);
        r.views.push_back({specs.at(i).name, io::DType::F32, specs.at(i).shape, nullptr});
        ++i;
      }
    }
  EXPECT_EQ(i, specs.size());
  r.metadata[kCheckpointMetadataKey] = ck.meta.to_json().dump();
  return r;
}

std::string write_raw(const ScratchDir& dir, RawCheckpoint r) {
  for (size_t i = 0; i < r.views.size(); ++i)
    if (r.views[i].data == nullptr) r.views[i].data = r.storage[i].data();
  io::WriteOptions wo;
  wo.metadata = r.metadata;
  wo.overwrite = true;
  const std::string path = dir.file("ck.safetensors");
  io::write_safetensors(path, r.views, wo);
  return path;
}

/// The view (and its storage) of tensor `name`.
std::vector<float>& values(RawCheckpoint& r, const std::string& name) {
  for (size_t i = 0; i < r.views.size(); ++i)
    if (r.views[i].name == name) return r.storage[i];
  ADD_FAILURE() << "no tensor " << name;
  return r.storage.front();
}

void edit_meta(RawCheckpoint& r, const std::function<void(json&)>& f) {
  json j = json::parse(r.metadata[kCheckpointMetadataKey]);
  f(j);
  r.metadata[kCheckpointMetadataKey] = j.dump();
}

/// read_checkpoint_arrays must throw a turboesm::Error naming the file and containing `what`.
void expect_refused(const std::string& path, const std::string& what) {
  try {
    read_checkpoint_arrays(path);
    ADD_FAILURE() << "accepted; expected an error containing: " << what;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

bool same(const CheckpointHeadArrays& x, const CheckpointHeadArrays& y) {
  return x.rotation == y.rotation && x.codebook == y.codebook && x.boundaries == y.boundaries &&
         x.scale == y.scale && x.mean == y.mean && x.qjl_scale == y.qjl_scale &&
         x.qjl_projection == y.qjl_projection;
}

TEST(CheckpointFormat, WriteReadRoundTripFromFileAndMemory) {
  ScratchDir dir;
  for (bool svd : {false, true}) {
    const CheckpointArrays ck = valid_checkpoint(svd);
    const std::string path = dir.file(svd ? "svd.safetensors" : "random.safetensors");
    write_checkpoint_arrays(path, ck);
    const std::string bytes = io::testing::read_bytes(path);
    for (const CheckpointArrays& back :
         {read_checkpoint_arrays(path),
          parse_checkpoint(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(),
                           "mem")}) {
      EXPECT_EQ(back.meta.to_json(), ck.meta.to_json());
      ASSERT_EQ(back.k.size(), 2u);
      ASSERT_EQ(back.v.size(), 2u);
      for (int l = 0; l < kLayers; ++l) {
        EXPECT_TRUE(same(back.k[l], ck.k[l])) << "layer " << l << " K";
        EXPECT_TRUE(same(back.v[l], ck.v[l])) << "layer " << l << " V";
      }
    }
    EXPECT_THROW(write_checkpoint_arrays(path, ck), Error);  // exists, no overwrite
  }
}

TEST(CheckpointFormat, TensorSpecsFollowTheMetadata) {
  CheckpointMetadata m = valid_checkpoint().meta;
  auto specs = checkpoint_tensor_specs(m);
  ASSERT_EQ(specs.size(), 2u * (4 + 3));  // K: rotation codebook mean qjl_scale; V: 3
  EXPECT_EQ(specs[0].name, "layers.0.k.rotation");
  EXPECT_EQ(specs[0].shape, (std::vector<int64_t>{2, 8, 8}));
  EXPECT_EQ(specs[1].name, "layers.0.k.codebook");
  EXPECT_EQ(specs[1].shape, (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(specs[3].name, "layers.0.k.qjl_scale");
  EXPECT_EQ(specs[3].shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(specs[5].name, "layers.0.v.codebook");
  EXPECT_EQ(specs[5].shape, (std::vector<int64_t>{2, 4}));
  m.options.qjl = quant::QjlMode::kProd;
  m.options.qjl_dim = 16;
  m.options.center = false;
  specs = checkpoint_tensor_specs(m);
  ASSERT_EQ(specs.size(), 2u * (3 + 2));
  EXPECT_EQ(specs[2].name, "layers.0.k.qjl_projection");
  EXPECT_EQ(specs[2].shape, (std::vector<int64_t>{2, 16, 8}));
}

TEST(CheckpointFormat, RefusesBrokenMetadata) {
  ScratchDir dir;
  const CheckpointArrays ck = valid_checkpoint();
  struct Case {
    std::function<void(RawCheckpoint&)> edit;
    std::string what;
  };
  const std::vector<Case> cases = {
      {[](RawCheckpoint& r) { r.metadata.clear(); }, "not a TurboESM checkpoint"},
      {[](RawCheckpoint& r) { r.metadata[kCheckpointMetadataKey] = "{\"format_version\": 1,"; },
       "checkpoint metadata is not valid JSON"},
      {[](RawCheckpoint& r) { r.metadata[kCheckpointMetadataKey] = "[1, 2]"; },
       "checkpoint metadata must be a JSON object"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["format_version"] = 2; }); },
       "checkpoint format version 2 is not supported (this build reads version 1)"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j.erase("bits_k"); }); },
       "missing key 'bits_k'"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["bits_k"] = 3.5; }); },
       "key 'bits_k' has the wrong type: 3.5"},
      // A float far outside int's range: converting it would be undefined behaviour.
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["num_heads"] = 1e30; }); },
       "key 'num_heads' has the wrong type"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["num_layers"] = 4294967298ll; }); },
       "key 'num_layers' has the wrong type"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["seed"] = -1; }); },
       "key 'seed' has the wrong type"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["rotation"] = "qr"; }); },
       "unknown rotation"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["centering"] = "yes"; }); },
       "key 'centering' has the wrong type"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["head_dim"] = 0; }); },
       "non-positive sizes"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["head_dim"] = 12; }); },
       "invalid configuration: head_dim must be a positive multiple of 8"},
      {[](RawCheckpoint& r) {
         edit_meta(r, [](json& j) {
           j["codebook"] = "analytic";
           j["norm"] = "none";
         });
       },
       "invalid configuration: the analytic codebook"},
      {[](RawCheckpoint& r) {
         r.metadata[kCheckpointMetadataKey].replace(
             r.metadata[kCheckpointMetadataKey].find("\"k_rel_mse\":[") + 13, 0, "1e999,");
       },
       "checkpoint metadata is not valid JSON: [json.exception.out_of_range.406] number "
       "overflow"},
  };
  for (const Case& c : cases) {
    RawCheckpoint r = raw(ck);
    c.edit(r);
    expect_refused(write_raw(dir, r), c.what);
  }
}

TEST(CheckpointFormat, RefusesBrokenTensors) {
  ScratchDir dir;
  const CheckpointArrays ck = valid_checkpoint(/*svd=*/true);
  struct Case {
    std::function<void(RawCheckpoint&)> edit;
    std::string what;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {[](RawCheckpoint& r) {
         r.storage.erase(r.storage.begin() + 1);
         r.views.erase(r.views.begin() + 1);
       },
       "tensor 'layers.0.k.codebook' is missing (expected F32 [2, 8])"},
      {[](RawCheckpoint& r) {
         r.views[0].dtype = io::DType::F16;
         r.views[0].shape = {2, 8, 16};  // same bytes
       },
       "tensor 'layers.0.k.rotation' has dtype F16, expected F32"},
      {[](RawCheckpoint& r) {
         r.views[0].shape = {2, 64};
       },
       "tensor 'layers.0.k.rotation' has shape [2, 64], expected [2, 8, 8]"},
      {[&](RawCheckpoint& r) { values(r, "layers.1.v.mean")[5] = nan; },
       "tensor 'layers.1.v.mean' element 5 is not finite"},
      {[](RawCheckpoint& r) { values(r, "layers.0.v.rotation")[64 + 9] += 0.01f; },
       "tensor 'layers.0.v.rotation' head 1 is not orthogonal"},
      {[](RawCheckpoint& r) {
         std::swap(values(r, "layers.1.k.codebook")[2], values(r, "layers.1.k.codebook")[3]);
       },
       "tensor 'layers.1.k.codebook' head 0: codebook centroids must be ascending"},
      {[](RawCheckpoint& r) { values(r, "layers.0.k.scale")[8 + 3] = 0.0f; },
       "tensor 'layers.0.k.scale' head 1 coordinate 3 is 0, expected > 0"},
      {[](RawCheckpoint& r) { values(r, "layers.1.k.qjl_scale")[1] = -0.5f; },
       "tensor 'layers.1.k.qjl_scale' head 1 is -0.5, expected >= 0"},
      {[](RawCheckpoint& r) {
         r.storage.push_back({1.0f});
         r.views.push_back({"layers.0.k.extra", io::DType::F32, {1}, nullptr});
       },
       "unexpected tensor 'layers.0.k.extra'"},
      // V has no QJL: a qjl_scale for V is unexpected, not ignored.
      {[](RawCheckpoint& r) {
         r.storage.push_back({1.0f, 1.0f});
         r.views.push_back({"layers.0.v.qjl_scale", io::DType::F32, {2}, nullptr});
       },
       "unexpected tensor 'layers.0.v.qjl_scale'"},
      // 2^31 - 1 layers claimed, 2 present: refused at the first missing tensor, nothing
      // allocated for the claimed layers.
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["num_layers"] = 2147483647; }); },
       "tensor 'layers.2.k.rotation' is missing"},
      {[](RawCheckpoint& r) { edit_meta(r, [](json& j) { j["num_heads"] = 2147483647; }); },
       "tensor 'layers.0.k.rotation' has shape [2, 8, 8], expected [2147483647, 8, 8]"},
  };
  for (const Case& c : cases) {
    RawCheckpoint r = raw(ck);
    c.edit(r);
    expect_refused(write_raw(dir, r), c.what);
  }
}

TEST(CheckpointFormat, RefusesTruncatedFiles) {
  ScratchDir dir;
  const std::string path = dir.file("ck.safetensors");
  write_checkpoint_arrays(path, valid_checkpoint());
  const std::string bytes = io::testing::read_bytes(path);
  for (size_t n : {size_t{0}, size_t{7}, size_t{100}, bytes.size() - 1}) {
    const std::string cut = bytes.substr(0, n);
    EXPECT_THROW(
        parse_checkpoint(reinterpret_cast<const std::uint8_t*>(cut.data()), cut.size(), "cut"),
        Error)
        << n << " bytes";
  }
}

// The fuzz seeds (tests/fuzz/make_corpus.py, and turboesm-calibrate output for the tiny preset)
// must stay valid checkpoints, or fuzzing starts from nothing but rejected inputs.
TEST(CheckpointFormat, FuzzSeedsAreValidCheckpoints) {
  const auto dir = std::filesystem::path(TURBOESM_TEST_DATA_DIR) / "fuzz/corpus/fuzz_checkpoint";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    ++n;
    EXPECT_NO_THROW(read_checkpoint_arrays(e.path().string())) << e.path();
  }
  EXPECT_GE(n, 4);
}

TEST(CheckpointFormat, ModelCheckNamesWhatDiffers) {
  const model::EsmConfig tiny = model::EsmConfig::preset("tiny");
  CheckpointMetadata m = valid_checkpoint().meta;
  m.num_layers = 2;
  m.num_heads = 4;
  m.head_dim = 32;
  m.model_config = tiny.canonical_json();
  EXPECT_NO_THROW(check_checkpoint_model(m, tiny, m.model_fingerprint, "ck"));

  auto expect_error = [&](const CheckpointMetadata& meta, const std::string& fp,
                          const std::string& what) {
    try {
      check_checkpoint_model(meta, tiny, fp, "ck");
      ADD_FAILURE() << "accepted; expected: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(m, std::string(64, '0'), "fingerprint mismatch: same config, different weights");
  model::EsmConfig other = tiny;
  other.hidden_size = 256;
  CheckpointMetadata bigger = m;
  bigger.model_config = other.canonical_json();
  expect_error(bigger, m.model_fingerprint,
               "checkpoint was calibrated for a model with hidden_size 256, this model has 128");
  CheckpointMetadata bad = m;
  bad.model_config = "[1]";
  expect_error(bad, m.model_fingerprint, "'model_config' must be a JSON object, got [1]");
  bad.model_config = "{";
  expect_error(bad, m.model_fingerprint, "'model_config' is not valid JSON");
  // Quoted in the error without recursing once per level (json::dump would overflow the stack).
  bad.model_config = std::string(100000, '[') + std::string(100000, ']');
  expect_error(bad, m.model_fingerprint, "must be a JSON object, got an array of 1 entries");
  bad = m;
  bad.num_heads = 2;
  expect_error(bad, m.model_fingerprint, "checkpoint has 2 layers x 2 heads x head_dim 32");
}

}  // namespace
}  // namespace turboesm::calibration
