// SPDX-License-Identifier: MIT
// Calibration: record selection, per-head fitting on synthetic data, the checkpoint round trip
// and every validation failure of checkpoint loading.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/calibration/collector.h"
#include "turboesm/calibration/compare.h"
#include "turboesm/calibration/fit.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/safetensors_writer.h"
#include "turboesm/model/random_init.h"
#include "turboesm/model/session.h"
#include "turboesm/quant/random.h"
#include "turboesm/quant/rotation.h"

namespace turboesm {
namespace {

using calibration::FitOptions;
using quant::NormMode;
using quant::QjlMode;
using quant::RotationKind;

constexpr double kOrthoTol = 1e-5;     // PCA rotation from Eigen, stored in fp32
constexpr double kScaleRelTol = 0.10;  // sample std of 8192 Gaussians vs the true std
constexpr double kMeanAbsTol = 0.05;   // sample mean of 8192 draws (std ≤ 4) vs the true mean
constexpr int64_t kSamples = 8192;
constexpr int kDim = 32;

#define EXPECT_THROW_HAS(stmt, needle)                                              \
  do {                                                                              \
    try {                                                                           \
      stmt;                                                                         \
      ADD_FAILURE() << "no exception; expected one containing: " << (needle);       \
    } catch (const Error& e) {                                                      \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                               \
  } while (0)

/// Anisotropic Gaussian samples x = R (s ⊙ g) + m with known axis stds s (descending) and a
/// random orthogonal R: what K of one attention head looks like (a few dominant directions).
struct Synthetic {
  std::vector<float> x;     // [n, d]
  std::vector<float> stds;  // [d] descending
  std::vector<float> mean;  // [d]
};

Synthetic make_synthetic(int64_t n, int d, uint64_t seed) {
  Synthetic s;
  quant::Rng rng(seed);
  const quant::Rotation r = quant::make_random_rotation(d, seed + 1);
  s.stds.resize(d);
  s.mean.resize(d);
  for (int j = 0; j < d; ++j) {
    s.stds[j] = static_cast<float>(4.0 * std::pow(0.85, j));  // 4 … 0.03
    s.mean[j] = static_cast<float>(rng.normal());
  }
  s.x.resize(static_cast<size_t>(n) * d);
  std::vector<float> g(d), y(d);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) g[j] = static_cast<float>(rng.normal()) * s.stds[j];
    quant::rotate_transpose_ref(r, g.data(), y.data());  // x = Rᵀ g: axes of R's rows
    for (int j = 0; j < d; ++j) s.x[i * d + j] = y[j] + s.mean[j];
  }
  return s;
}

double rel_mse(const Synthetic& s, const FitOptions& o, bool key) {
  const quant::QuantizerParams p = calibration::fit_head(s.x.data(), kSamples, kDim, o, key, 7);
  const quant::TurboQuantizer q(o.quantizer_config(kDim, key), p);
  return calibration::relative_mse(q, s.x.data(), kSamples);
}

// ---------------------------------------------------------------------------------------------
// Record selection
// ---------------------------------------------------------------------------------------------

TEST(CalibrationPlan, UsesEverythingWhenItFits) {
  const auto plan = calibration::plan_collection({10, 20, 30}, 1000);
  EXPECT_EQ(plan.order, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(plan.total_tokens, 12 + 22 + 32);
}

TEST(CalibrationPlan, StridesOverTheFileAndStopsAtTheBudget) {
  std::vector<int64_t> lengths(100, 8);  // 10 tokens each, 1000 in all
  const auto plan = calibration::plan_collection(lengths, 250);
  // stride ceil(1000 / 250) = 4: records 0, 4, 8, ... until 250 tokens
  ASSERT_EQ(plan.order.size(), 25u);
  for (size_t i = 0; i < plan.order.size(); ++i) EXPECT_EQ(plan.order[i], 4 * i);
  EXPECT_EQ(plan.total_tokens, 250);
  // A budget that ends inside a record keeps that record's first tokens only.
  const auto cut = calibration::plan_collection(lengths, 255);
  EXPECT_EQ(cut.total_tokens, 255);
  EXPECT_EQ(cut.keep_tokens.back(), 5);
  EXPECT_THROW_HAS(calibration::plan_collection({}, 10), "at least one record");
  EXPECT_THROW_HAS(calibration::plan_collection({5}, 0), "max_tokens must be > 0");
}

// ---------------------------------------------------------------------------------------------
// Fitting one head
// ---------------------------------------------------------------------------------------------

TEST(CalibrationFit, PcaRotationIsOrthogonalAndScalesAreTheAxisStds) {
  const Synthetic s = make_synthetic(kSamples, kDim, 11);
  FitOptions o;  // svd + scales, centered, norm none
  const quant::QuantizerParams p = calibration::fit_head(s.x.data(), kSamples, kDim, o, true, 3);
  EXPECT_LT(quant::orthogonality_error(p.rotation), kOrthoTol);
  ASSERT_EQ(p.scale.size(), static_cast<size_t>(kDim));
  for (int j = 0; j < kDim; ++j) {
    EXPECT_NEAR(p.scale[j], s.stds[j], kScaleRelTol * s.stds[j]) << "axis " << j;
    if (j > 0) EXPECT_LE(p.scale[j], p.scale[j - 1] * (1 + kScaleRelTol)) << "axis " << j;
  }
  ASSERT_EQ(p.mean.size(), static_cast<size_t>(kDim));
  for (int j = 0; j < kDim; ++j) EXPECT_NEAR(p.mean[j], s.mean[j], kMeanAbsTol) << "coord " << j;
}

TEST(CalibrationFit, CodebooksAreStrictlyAscending) {
  const Synthetic s = make_synthetic(kSamples, kDim, 12);
  for (int bits = 1; bits <= 4; ++bits) {
    for (RotationKind rot : {RotationKind::kSvd, RotationKind::kRandom, RotationKind::kHadamard,
                             RotationKind::kIdentity}) {
      FitOptions o;
      o.bits_k = o.bits_v = bits;
      o.rotation = rot;
      const auto p = calibration::fit_head(s.x.data(), kSamples, kDim, o, false, 5);
      ASSERT_EQ(p.codebook.centroids.size(), size_t{1} << bits);
      for (size_t i = 1; i < p.codebook.centroids.size(); ++i)
        EXPECT_LT(p.codebook.centroids[i - 1], p.codebook.centroids[i])
            << bits << " bits, " << quant::to_string(rot) << ", level " << i;
      EXPECT_TRUE(p.scale.empty() == (rot != RotationKind::kSvd));
    }
  }
}

TEST(CalibrationFit, ErrorFallsWithBitsAndScalesHelpThePcaBasis) {
  const Synthetic s = make_synthetic(kSamples, kDim, 13);
  FitOptions o;
  double prev = 1.0;
  for (int bits = 2; bits <= 4; ++bits) {
    o.bits_k = o.bits_v = bits;
    const double e = rel_mse(s, o, false);
    EXPECT_LT(e, prev) << bits << " bits";
    prev = e;
  }
  o.bits_k = o.bits_v = 3;
  FitOptions seed = o;  // the seed: svd without scales, no centering
  seed.svd_scales = false;
  seed.center = false;
  EXPECT_LT(rel_mse(s, o, false), rel_mse(s, seed, false));
}

TEST(CalibrationFit, SignQjlScaleIsPositiveAndLowersKeyError) {
  const Synthetic s = make_synthetic(kSamples, kDim, 14);
  FitOptions o;
  o.qjl = QjlMode::kSign;
  const auto p = calibration::fit_head(s.x.data(), kSamples, kDim, o, true, 9);
  EXPECT_GT(p.qjl_sign_scale, 0.0f);
  FitOptions none = o;
  none.qjl = QjlMode::kNone;
  EXPECT_LT(rel_mse(s, o, true), rel_mse(s, none, true));
  // V never carries QJL.
  EXPECT_EQ(o.quantizer_config(kDim, false).qjl, QjlMode::kNone);
}

TEST(CalibrationFit, ProdProjectionIsSeededPerHead) {
  const Synthetic s = make_synthetic(512, kDim, 15);
  FitOptions o;
  o.qjl = QjlMode::kProd;
  o.qjl_dim = 64;
  const auto a = calibration::fit_head(s.x.data(), 512, kDim, o, true, 1);
  const auto b = calibration::fit_head(s.x.data(), 512, kDim, o, true, 1);
  const auto c = calibration::fit_head(s.x.data(), 512, kDim, o, true, 2);
  EXPECT_EQ(a.qjl_projection.m, 64);
  EXPECT_EQ(a.qjl_projection.matrix, b.qjl_projection.matrix);
  EXPECT_NE(a.qjl_projection.matrix, c.qjl_projection.matrix);
  EXPECT_NE(calibration::head_seed(0, 1, 2, true), calibration::head_seed(0, 1, 2, false));
  EXPECT_NE(calibration::head_seed(0, 1, 2, true), calibration::head_seed(0, 2, 1, true));
}

TEST(CalibrationFit, TokenNormWithAnalyticCodebook) {
  const Synthetic s = make_synthetic(kSamples, kDim, 16);
  FitOptions o;
  o.norm = NormMode::kToken;
  o.rotation = RotationKind::kHadamard;
  o.codebook = calibration::CodebookKind::kAnalytic;
  const auto p = calibration::fit_head(s.x.data(), kSamples, kDim, o, false, 1);
  const quant::Codebook ref = quant::analytic_codebook(kDim, 3);
  EXPECT_EQ(p.codebook.centroids, ref.centroids);
  EXPECT_LT(rel_mse(s, o, false), 0.1);
}

TEST(CalibrationFit, RefusesInvalidOptions) {
  FitOptions o;
  o.codebook = calibration::CodebookKind::kAnalytic;
  EXPECT_THROW_HAS(o.validate(kDim), "needs norm mode token");
  o.norm = NormMode::kToken;
  EXPECT_THROW_HAS(o.validate(kDim), "data-oblivious rotation");
  FitOptions b;
  b.bits_k = 5;
  EXPECT_THROW_HAS(b.validate(kDim), "K bits must be in 1..4, got 5");
  FitOptions m;
  m.qjl = QjlMode::kProd;
  m.qjl_dim = 12;
  EXPECT_THROW_HAS(m.validate(kDim), "multiple of 8");
  EXPECT_THROW_HAS(calibration::parse_qjl_mode("both"), "expected: none, sign, prod");
  EXPECT_THROW_HAS(calibration::parse_norm_mode("l2"), "expected: token, none");
  std::vector<float> bad(kDim, 1.0f);
  bad[3] = std::nanf("");
  EXPECT_THROW_HAS(calibration::fit_head(bad.data(), 1, kDim, FitOptions{}, true, 0),
                   "coordinate 3 is not finite");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: one calibrated tiny model shared by the tests below
// ---------------------------------------------------------------------------------------------

std::vector<io::FastaRecord> synthetic_records() {
  const char* seqs[] = {"MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF",
                        "MVHLTPEEKSAVTALWGKVNVDEVGGEALGRLLVVYPWTQRFFESFGDLS",
                        "GLSDGEWQQVLNVWGKVEADIAGHGQEVLIRLFTGHPETLEKFDKFKHLK",
                        "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTT"};
  std::vector<io::FastaRecord> r;
  for (int i = 0; i < 4; ++i) r.push_back({"seq" + std::to_string(i), "", seqs[i], 0});
  return r;
}

struct Fixture {
  std::string dir, model_dir, ckpt;
  calibration::Checkpoint ck;
};

/// Tiny model (preset tiny, d = 32) calibrated with `opts`, written to <dir>/ckpt.safetensors.
Fixture calibrate_tiny(const std::string& name, const FitOptions& opts, uint64_t model_seed = 1) {
  Fixture f;
  f.dir = test::fresh_dir("calibration_" + name);
  f.model_dir = f.dir + "/model";
  model::write_random_model(model::EsmConfig::preset("tiny"), model_seed, 0.08, at::kFloat,
                            f.model_dir, false);
  auto m = model::Esm2Model::load(f.model_dir);
  calibration::CollectorOptions co;
  co.max_tokens = 150;
  const auto samples = calibration::collect_kv_samples(*m, synthetic_records(), co);
  EXPECT_EQ(samples.tokens, 150);
  const auto fits = calibration::fit_layers(samples, opts);
  f.ck.meta.options = opts;
  f.ck.meta.num_layers = m->num_layers();
  f.ck.meta.num_heads = static_cast<int>(m->config().num_attention_heads);
  f.ck.meta.head_dim = static_cast<int>(m->config().head_dim());
  f.ck.meta.calibration_sha256 = "synthetic";
  f.ck.meta.calibration_tokens = samples.tokens;
  f.ck.meta.model_fingerprint = calibration::model_fingerprint(f.model_dir);
  f.ck.meta.model_config = m->config().canonical_json();
  for (const auto& l : fits) {
    f.ck.layers.push_back(l.constants);
    f.ck.meta.k_rel_mse.push_back(l.k_rel_mse);
    f.ck.meta.v_rel_mse.push_back(l.v_rel_mse);
  }
  f.ckpt = f.dir + "/ckpt.safetensors";
  calibration::write_checkpoint(f.ckpt, f.ck);
  return f;
}

const Fixture& sign_fixture() {
  static const Fixture f = [] {
    FitOptions o;
    o.qjl = QjlMode::kSign;
    return calibrate_tiny("sign", o);
  }();
  return f;
}

TEST(CalibrationCollector, RecordsPostRopeKeysAsTheModelComputesThem) {
  const std::string dir = test::fresh_dir("calibration_collector");
  model::write_random_model(model::EsmConfig::preset("tiny"), 3, 0.08, at::kFloat, dir + "/m",
                            false);
  auto m = model::Esm2Model::load(dir + "/m");
  const auto recs = synthetic_records();
  calibration::CollectorOptions co;
  co.max_tokens = 1000;  // everything
  const auto s = calibration::collect_kv_samples(*m, {recs[0]}, co);
  const auto ids = calibration::record_token_ids(recs[0], 1022);
  ASSERT_EQ(s.tokens, static_cast<int64_t>(ids.size()));
  // Layer 0 K/V recomputed from the embeddings.
  const at::Tensor tok = at::tensor(ids, at::kLong).view({1, -1});
  const at::Tensor h = m->embed(tok, at::Tensor());
  const at::Tensor pos = at::arange(tok.size(1), at::kLong);
  const model::Qkv qkv = m->layer_qkv(0, h, pos);
  EXPECT_EQ(test::max_abs_diff(s.layers[0].k, qkv.k[0]), 0.0);
  EXPECT_EQ(test::max_abs_diff(s.layers[0].v, qkv.v[0]), 0.0);
  EXPECT_THROW_HAS(calibration::collect_kv_samples(*m, {}, co), "at least one FASTA record");
}

TEST(CalibrationCheckpoint, RoundTripIsExactAndLoadsIntoATurboCache) {
  const Fixture& f = sign_fixture();
  const calibration::Checkpoint back = calibration::load_checkpoint(f.ckpt, f.model_dir);
  EXPECT_EQ(back.meta.to_json(), f.ck.meta.to_json());
  ASSERT_EQ(back.layers.size(), f.ck.layers.size());
  for (size_t l = 0; l < back.layers.size(); ++l) {
    for (bool key : {true, false}) {
      const auto& a = key ? back.layers[l].k : back.layers[l].v;
      const auto& b = key ? f.ck.layers[l].k : f.ck.layers[l].v;
      EXPECT_TRUE(a.rotation.equal(b.rotation));
      EXPECT_TRUE(a.centroids.equal(b.centroids));
      EXPECT_TRUE(a.boundaries.equal(b.boundaries));
      EXPECT_TRUE(a.scale.equal(b.scale));
      EXPECT_TRUE(a.mean.equal(b.mean));
      EXPECT_EQ(a.qjl_scale.defined(), key);
      if (key) EXPECT_TRUE(a.qjl_scale.equal(b.qjl_scale));
    }
  }
  const model::TurboCacheSpec spec = calibration::turbo_cache_spec_from_checkpoint(back);
  auto m = model::Esm2Model::load(f.model_dir);
  spec.validate(m->config());
  EXPECT_EQ(spec.k_config.qjl, QjlMode::kSign);
  EXPECT_EQ(calibration::without_qjl(spec).k_config.qjl, QjlMode::kNone);
  // The calibrated cache keeps a short decode close to the FP32 cache.
  const auto ids = calibration::record_token_ids(synthetic_records()[1], 1022);
  const at::Tensor all = at::tensor(ids, at::kLong).view({1, -1});
  const int64_t p = 20;
  model::Session ref(m, model::make_kv_cache(model::CacheKind::kFp32, m->config(), 1, m->device()));
  model::Session turbo(
      m, model::make_kv_cache(model::CacheKind::kTurbo, m->config(), 1, m->device(), &spec));
  ref.prefill(all.narrow(1, 0, p));
  turbo.prefill(all.narrow(1, 0, p));
  const at::Tensor rest = all.narrow(1, p, all.size(1) - p);
  const at::Tensor a = ref.append(rest), b = turbo.append(rest);
  EXPECT_GT(calibration::mean_row_cosine(a[0], b[0]), 0.9);
}

/// A tensor of a checkpoint file, editable.
struct RawTensor {
  io::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
struct RawFile {
  std::vector<std::string> order;
  std::map<std::string, RawTensor> tensors;
  std::map<std::string, std::string> metadata;
};

RawFile read_raw(const std::string& path) {
  io::SafetensorsFile f(path);
  RawFile r;
  r.metadata = f.metadata();
  for (const auto& t : f.tensors()) {
    const auto* p = static_cast<const uint8_t*>(f.data(t));
    r.order.push_back(t.name);
    r.tensors[t.name] = {t.dtype, t.shape, std::vector<uint8_t>(p, p + t.nbytes())};
  }
  return r;
}

std::string write_raw(const RawFile& r, const std::string& path) {
  std::vector<io::TensorView> views;
  for (const auto& n : r.order) {
    auto it = r.tensors.find(n);
    if (it == r.tensors.end()) continue;
    views.push_back({n, it->second.dtype, it->second.shape, it->second.bytes.data()});
  }
  for (const auto& kv : r.tensors)
    if (std::find(r.order.begin(), r.order.end(), kv.first) == r.order.end())
      views.push_back({kv.first, kv.second.dtype, kv.second.shape, kv.second.bytes.data()});
  io::WriteOptions wo;
  wo.overwrite = true;
  wo.metadata = r.metadata;
  io::write_safetensors(path, views, wo);
  return path;
}

/// Writes a mutated copy of the shared checkpoint and returns its path.
std::string mutated(const std::string& name, const std::function<void(RawFile&)>& mutate) {
  RawFile r = read_raw(sign_fixture().ckpt);
  mutate(r);
  return write_raw(r, sign_fixture().dir + "/" + name + ".safetensors");
}

TEST(CalibrationCheckpoint, RefusesWrongShape) {
  const std::string p = mutated("shape", [](RawFile& r) {
    auto& t = r.tensors.at("layers.1.v.codebook");  // [4, 8] → [4, 4]
    t.shape = {4, 4};
    t.bytes.resize(4 * 4 * 4);
  });
  EXPECT_THROW_HAS(calibration::read_checkpoint(p),
                   "tensor 'layers.1.v.codebook' has shape [4, 4], expected [4, 8]");
}

TEST(CalibrationCheckpoint, RefusesWrongDtype) {
  const std::string p = mutated("dtype", [](RawFile& r) {
    auto& t = r.tensors.at("layers.0.k.scale");
    t.dtype = io::DType::F16;
    t.bytes.resize(t.bytes.size() / 2);
  });
  EXPECT_THROW_HAS(calibration::read_checkpoint(p),
                   "tensor 'layers.0.k.scale' has dtype F16, expected F32");
}

TEST(CalibrationCheckpoint, RefusesANonOrthogonalRotation) {
  const std::string p = mutated("ortho", [](RawFile& r) {
    auto& t = r.tensors.at("layers.1.k.rotation");
    float* m = reinterpret_cast<float*>(t.bytes.data()) + 2 * 32 * 32;  // head 2
    for (int j = 0; j < 32; ++j) m[j] *= 1.01f;  // row 0 no longer has unit norm
  });
  EXPECT_THROW_HAS(calibration::read_checkpoint(p),
                   "'layers.1.k.rotation' head 2 is not orthogonal");
}

TEST(CalibrationCheckpoint, RefusesAnotherFormatVersion) {
  const std::string p = mutated("version", [](RawFile& r) {
    auto j = nlohmann::json::parse(r.metadata.at("turboesm"));
    j["format_version"] = 2;
    r.metadata["turboesm"] = j.dump();
  });
  EXPECT_THROW_HAS(calibration::read_checkpoint(p),
                   "checkpoint format version 2 is not supported (this build reads version 1)");
}

TEST(CalibrationCheckpoint, RefusesMissingAndUnexpectedTensorsAndBadValues) {
  EXPECT_THROW_HAS(calibration::read_checkpoint(mutated(
                       "missing", [](RawFile& r) { r.tensors.erase("layers.0.k.qjl_scale"); })),
                   "tensor 'layers.0.k.qjl_scale' is missing (expected F32 [4])");
  EXPECT_THROW_HAS(
      calibration::read_checkpoint(mutated(
          "extra",
          [](RawFile& r) {
            r.tensors["layers.0.v.qjl_scale"] = {io::DType::F32, {4}, std::vector<uint8_t>(16, 0)};
          })),
      "unexpected tensor 'layers.0.v.qjl_scale'");
  EXPECT_THROW_HAS(calibration::read_checkpoint(mutated(
                       "order",
                       [](RawFile& r) {
                         auto& t = r.tensors.at("layers.0.v.codebook");
                         std::swap(t.bytes[0], t.bytes[4]);  // bytes of centroids 0 and 1 swapped
                         std::swap(t.bytes[1], t.bytes[5]);
                         std::swap(t.bytes[2], t.bytes[6]);
                         std::swap(t.bytes[3], t.bytes[7]);
                       })),
                   "ascending");
  EXPECT_THROW_HAS(calibration::read_checkpoint(mutated("nan",
                                                        [](RawFile& r) {
                                                          auto& t = r.tensors.at("layers.1.v.mean");
                                                          const float nan = std::nanf("");
                                                          std::memcpy(t.bytes.data() + 8, &nan, 4);
                                                        })),
                   "'layers.1.v.mean' element 2 is not finite");
  EXPECT_THROW_HAS(
      calibration::read_checkpoint(mutated("nometa", [](RawFile& r) { r.metadata.clear(); })),
      "not a TurboESM checkpoint");
}

TEST(CalibrationCheckpoint, RefusesAnotherModelsCheckpoint) {
  const Fixture& f = sign_fixture();
  // Different config: hidden 64 (head dim 16), otherwise tiny.
  model::EsmConfig other = model::EsmConfig::preset("tiny");
  other.hidden_size = 64;
  const std::string other_dir = f.dir + "/other_config";
  model::write_random_model(other, 1, 0.08, at::kFloat, other_dir, true);
  EXPECT_THROW_HAS(calibration::load_checkpoint(f.ckpt, other_dir),
                   "checkpoint was calibrated for a model with hidden_size 128, this model has 64");
  // Same config, other weights.
  const std::string other_seed = f.dir + "/other_seed";
  model::write_random_model(model::EsmConfig::preset("tiny"), 2, 0.08, at::kFloat, other_seed,
                            true);
  EXPECT_THROW_HAS(calibration::load_checkpoint(f.ckpt, other_seed),
                   "fingerprint mismatch: same config, different weights");
  // The fingerprint is a function of the bytes: rewriting the same model gives the same one.
  EXPECT_EQ(calibration::model_fingerprint(f.model_dir), f.ck.meta.model_fingerprint);
}

TEST(CalibrationCheckpoint, EveryModeRoundTrips) {
  for (QjlMode qjl : {QjlMode::kNone, QjlMode::kProd}) {
    FitOptions o;
    o.rotation = RotationKind::kHadamard;
    o.norm = NormMode::kToken;
    o.center = false;
    o.codebook = calibration::CodebookKind::kAnalytic;
    o.qjl = qjl;
    o.bits_k = 4;
    o.bits_v = 2;
    const Fixture f = calibrate_tiny(std::string("mode_") + calibration::qjl_mode_name(qjl), o);
    const auto back = calibration::load_checkpoint(f.ckpt, f.model_dir);
    EXPECT_EQ(back.meta.options.summary(), o.summary());
    EXPECT_FALSE(back.layers[0].k.scale.defined());
    EXPECT_FALSE(back.layers[0].k.mean.defined());
    EXPECT_EQ(back.layers[1].k.qjl_projection.defined(), qjl == QjlMode::kProd);
    EXPECT_EQ(back.layers[1].k.centroids.size(1), 16);
    EXPECT_EQ(back.layers[1].v.centroids.size(1), 4);
    calibration::turbo_cache_spec_from_checkpoint(back).validate(model::EsmConfig::preset("tiny"));
  }
}

TEST(CalibrationCompare, CosineHelpers) {
  const float a[3] = {1, 0, 0}, b[3] = {0, 2, 0}, c[3] = {3, 0, 0}, z[3] = {0, 0, 0};
  EXPECT_DOUBLE_EQ(calibration::cosine(a, b, 3), 0.0);
  EXPECT_DOUBLE_EQ(calibration::cosine(a, c, 3), 1.0);
  EXPECT_DOUBLE_EQ(calibration::cosine(z, z, 3), 1.0);
  EXPECT_DOUBLE_EQ(calibration::cosine(a, z, 3), 0.0);
  const at::Tensor x = at::tensor({1.0f, 0.0f, 0.0f, 1.0f}).view({2, 2});
  const at::Tensor y = at::tensor({1.0f, 0.0f, 1.0f, 0.0f}).view({2, 2});
  EXPECT_DOUBLE_EQ(calibration::mean_row_cosine(x, y), 0.5);
}

}  // namespace
}  // namespace turboesm
