// SPDX-License-Identifier: MIT
#include "turboesm/calibration/checkpoint.h"

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/safetensors_writer.h"
#include "turboesm/io/sha256.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::calibration {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

json CheckpointMetadata::to_json() const {
  const FitOptions& o = options;
  return json{
      {"format_version", format_version},
      {"bits_k", o.bits_k},
      {"bits_v", o.bits_v},
      {"rotation", quant::to_string(o.rotation)},
      {"svd_scales", o.svd_scales},
      {"norm", norm_mode_name(o.norm)},
      {"centering", o.center},
      {"qjl", qjl_mode_name(o.qjl)},
      {"qjl_dim", o.qjl_dim},
      {"codebook", to_string(o.codebook)},
      {"seed", o.seed},
      {"num_layers", num_layers},
      {"num_heads", num_heads},
      {"head_dim", head_dim},
      {"calibration_sha256", calibration_sha256},
      {"calibration_tokens", calibration_tokens},
      {"calibration_records", calibration_records},
      {"tool_version", tool_version},
      {"model_fingerprint", model_fingerprint},
      {"model_config", model_config},
      {"k_rel_mse", k_rel_mse},
      {"v_rel_mse", v_rel_mse},
  };
}

namespace {

template <typename T>
T get_key(const json& j, const char* key, const std::string& source) {
  TURBOESM_CHECK(j.contains(key), source, ": checkpoint metadata is missing key '", key, "'");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    TURBOESM_FAIL(source, ": checkpoint metadata key '", key,
                  "' has the wrong type: ", j.at(key).dump());
  }
}

}  // namespace

CheckpointMetadata CheckpointMetadata::from_json(const json& j, const std::string& source) {
  TURBOESM_CHECK(j.is_object(), source, ": checkpoint metadata must be a JSON object");
  CheckpointMetadata m;
  m.format_version = get_key<int>(j, "format_version", source);
  TURBOESM_CHECK(m.format_version == kCheckpointFormatVersion, source,
                 ": checkpoint format version ", m.format_version,
                 " is not supported (this build reads version ", kCheckpointFormatVersion, ")");
  FitOptions& o = m.options;
  o.bits_k = get_key<int>(j, "bits_k", source);
  o.bits_v = get_key<int>(j, "bits_v", source);
  try {
    o.rotation = quant::parse_rotation_kind(get_key<std::string>(j, "rotation", source));
    o.norm = parse_norm_mode(get_key<std::string>(j, "norm", source));
    o.qjl = parse_qjl_mode(get_key<std::string>(j, "qjl", source));
    o.codebook = parse_codebook_kind(get_key<std::string>(j, "codebook", source));
  } catch (const Error& e) {
    TURBOESM_FAIL(source, ": checkpoint metadata: ", e.what());
  }
  o.svd_scales = get_key<bool>(j, "svd_scales", source);
  o.center = get_key<bool>(j, "centering", source);
  o.qjl_dim = get_key<int>(j, "qjl_dim", source);
  o.seed = get_key<uint64_t>(j, "seed", source);
  m.num_layers = get_key<int>(j, "num_layers", source);
  m.num_heads = get_key<int>(j, "num_heads", source);
  m.head_dim = get_key<int>(j, "head_dim", source);
  TURBOESM_CHECK(m.num_layers > 0 && m.num_heads > 0 && m.head_dim > 0, source,
                 ": checkpoint metadata has non-positive sizes: num_layers ", m.num_layers,
                 ", num_heads ", m.num_heads, ", head_dim ", m.head_dim);
  m.calibration_sha256 = get_key<std::string>(j, "calibration_sha256", source);
  m.calibration_tokens = get_key<int64_t>(j, "calibration_tokens", source);
  m.calibration_records = get_key<int64_t>(j, "calibration_records", source);
  m.tool_version = get_key<std::string>(j, "tool_version", source);
  m.model_fingerprint = get_key<std::string>(j, "model_fingerprint", source);
  m.model_config = get_key<std::string>(j, "model_config", source);
  if (j.contains("k_rel_mse")) m.k_rel_mse = get_key<std::vector<double>>(j, "k_rel_mse", source);
  if (j.contains("v_rel_mse")) m.v_rel_mse = get_key<std::vector<double>>(j, "v_rel_mse", source);
  try {
    o.validate(m.head_dim);
  } catch (const Error& e) {
    TURBOESM_FAIL(source, ": checkpoint metadata describes an invalid configuration: ", e.what());
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Fingerprint
// ---------------------------------------------------------------------------------------------

std::string model_fingerprint(const std::string& model_dir) {
  const model::EsmConfig config = model::EsmConfig::from_file(model_dir);
  const io::SafetensorsCheckpoint ckpt = io::SafetensorsCheckpoint::open(model_dir);
  io::Sha256 h;
  h.update("turboesm-model-fingerprint-v1\n");
  h.update(config.canonical_json());
  h.update("\n");
  for (const std::string& name : ckpt.names()) {  // sorted
    const io::TensorInfo& t = ckpt.at(name);
    std::string head = name + "\n" + io::dtype_name(t.dtype) + "\n";
    for (size_t i = 0; i < t.shape.size(); ++i) head += (i ? "," : "") + std::to_string(t.shape[i]);
    head += "\n";
    h.update(head);
    h.update(ckpt.data(name), static_cast<size_t>(t.nbytes()));
  }
  return h.hex_final();
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

namespace {

struct Entry {
  std::string suffix;  // "rotation", "codebook", ...
  at::Tensor model::TurboHeadConstants::*member;
};

const std::vector<Entry>& entries() {
  static const std::vector<Entry> e = {
      {"rotation", &model::TurboHeadConstants::rotation},
      {"codebook", &model::TurboHeadConstants::centroids},
      {"scale", &model::TurboHeadConstants::scale},
      {"mean", &model::TurboHeadConstants::mean},
      {"qjl_scale", &model::TurboHeadConstants::qjl_scale},
      {"qjl_projection", &model::TurboHeadConstants::qjl_projection},
  };
  return e;
}

std::string tensor_name(int layer, bool key, const std::string& suffix) {
  return "layers." + std::to_string(layer) + (key ? ".k." : ".v.") + suffix;
}

}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& ckpt, bool overwrite) {
  TURBOESM_CHECK(static_cast<int>(ckpt.layers.size()) == ckpt.meta.num_layers,
                 "write_checkpoint: metadata says ", ckpt.meta.num_layers, " layers, got ",
                 ckpt.layers.size());
  std::vector<at::Tensor> keep;  // contiguous CPU fp32 copies, alive until written
  std::vector<io::TensorView> views;
  for (int l = 0; l < ckpt.meta.num_layers; ++l) {
    for (bool key : {true, false}) {
      const auto& c =
          key ? ckpt.layers[static_cast<size_t>(l)].k : ckpt.layers[static_cast<size_t>(l)].v;
      for (const Entry& e : entries()) {
        const at::Tensor& t = c.*(e.member);
        if (!t.defined()) continue;
        keep.push_back(t.to(at::kCPU, at::kFloat).contiguous());
        io::TensorView v;
        v.name = tensor_name(l, key, e.suffix);
        v.dtype = io::DType::F32;
        v.shape.assign(keep.back().sizes().begin(), keep.back().sizes().end());
        v.data = keep.back().data_ptr<float>();
        views.push_back(std::move(v));
      }
    }
  }
  io::WriteOptions wo;
  wo.overwrite = overwrite;
  wo.metadata[kCheckpointMetadataKey] = ckpt.meta.to_json().dump();
  io::write_safetensors(path, views, wo);
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// Loads tensor `name` (must have `shape`, dtype F32, finite values) into a CPU fp32 tensor.
at::Tensor read_tensor(const io::SafetensorsFile& f, const std::string& name,
                       const std::vector<int64_t>& shape) {
  const io::TensorInfo* t = f.find(name);
  TURBOESM_CHECK(t != nullptr, f.path(), ": tensor '", name, "' is missing (expected F32 ",
                 shape_str(shape), ")");
  TURBOESM_CHECK(t->dtype == io::DType::F32, f.path(), ": tensor '", name, "' has dtype ",
                 io::dtype_name(t->dtype), ", expected F32");
  TURBOESM_CHECK(t->shape == shape, f.path(), ": tensor '", name, "' has shape ",
                 shape_str(t->shape), ", expected ", shape_str(shape));
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  std::memcpy(out.data_ptr<float>(), f.data(*t), static_cast<size_t>(t->nbytes()));
  const float* p = out.data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i)
    TURBOESM_CHECK(std::isfinite(p[i]), f.path(), ": tensor '", name, "' element ", i,
                   " is not finite (", p[i], ")");
  return out;
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path) {
  const io::SafetensorsFile f(path);
  const auto& md = f.metadata();
  const auto it = md.find(kCheckpointMetadataKey);
  TURBOESM_CHECK(it != md.end(), path, ": not a TurboESM checkpoint (no '", kCheckpointMetadataKey,
                 "' key in __metadata__)");
  json j;
  try {
    j = json::parse(it->second);
  } catch (const json::exception& e) {
    TURBOESM_FAIL(path, ": checkpoint metadata is not valid JSON: ", e.what());
  }
  Checkpoint ck;
  ck.meta = CheckpointMetadata::from_json(j, path);
  const auto& m = ck.meta;
  const FitOptions& o = m.options;
  const int64_t H = m.num_heads, d = m.head_dim;
  std::set<std::string> expected;
  ck.layers.resize(static_cast<size_t>(m.num_layers));
  for (int l = 0; l < m.num_layers; ++l) {
    for (bool key : {true, false}) {
      model::TurboHeadConstants& c =
          key ? ck.layers[static_cast<size_t>(l)].k : ck.layers[static_cast<size_t>(l)].v;
      const int bits = key ? o.bits_k : o.bits_v;
      const int64_t L = int64_t{1} << bits;
      auto want = [&](const std::string& suffix) {
        const std::string n = tensor_name(l, key, suffix);
        expected.insert(n);
        return n;
      };
      c.rotation = read_tensor(f, want("rotation"), {H, d, d});
      for (int64_t h = 0; h < H; ++h) {
        const double err =
            quant::orthogonality_error(c.rotation[h].data_ptr<float>(), static_cast<int>(d));
        TURBOESM_CHECK(err <= quant::kOrthogonalityTolerance, path, ": tensor '",
                       tensor_name(l, key, "rotation"), "' head ", h,
                       " is not orthogonal: max|P P^T - I| = ", err, " > ",
                       quant::kOrthogonalityTolerance);
      }
      c.centroids = read_tensor(f, want("codebook"), {H, L});
      c.boundaries = at::empty({H, L - 1}, at::TensorOptions().dtype(at::kFloat));
      for (int64_t h = 0; h < H; ++h) {
        const float* cp = c.centroids[h].data_ptr<float>();
        std::vector<float> cv(cp, cp + L);
        try {
          const quant::Codebook cb = quant::Codebook::from_centroids(bits, cv);
          std::copy(cb.boundaries.begin(), cb.boundaries.end(), c.boundaries[h].data_ptr<float>());
        } catch (const Error& e) {
          TURBOESM_FAIL(path, ": tensor '", tensor_name(l, key, "codebook"), "' head ", h, ": ",
                        e.what());
        }
      }
      if (o.rotation == quant::RotationKind::kSvd && o.svd_scales) {
        c.scale = read_tensor(f, want("scale"), {H, d});
        const float* s = c.scale.data_ptr<float>();
        for (int64_t i = 0; i < H * d; ++i)
          TURBOESM_CHECK(s[i] > 0.0f, path, ": tensor '", tensor_name(l, key, "scale"), "' head ",
                         i / d, " coordinate ", i % d, " is ", s[i], ", expected > 0");
      }
      if (o.center) c.mean = read_tensor(f, want("mean"), {H, d});
      if (key && o.qjl == quant::QjlMode::kSign) {
        c.qjl_scale = read_tensor(f, want("qjl_scale"), {H});
        const float* s = c.qjl_scale.data_ptr<float>();
        for (int64_t h = 0; h < H; ++h)
          TURBOESM_CHECK(s[h] >= 0.0f, path, ": tensor '", tensor_name(l, key, "qjl_scale"),
                         "' head ", h, " is ", s[h], ", expected >= 0");
      }
      if (key && o.qjl == quant::QjlMode::kProd) {
        const int64_t mq = o.qjl_dim > 0 ? o.qjl_dim : d;
        c.qjl_projection = read_tensor(f, want("qjl_projection"), {H, mq, d});
      }
    }
  }
  for (const auto& t : f.tensors())
    TURBOESM_CHECK(expected.count(t.name), path, ": unexpected tensor '", t.name,
                   "' for a checkpoint with ", m.options.summary());
  return ck;
}

void check_checkpoint_model(const CheckpointMetadata& meta, const model::EsmConfig& config,
                            const std::string& fingerprint, const std::string& source) {
  json mine, theirs;
  try {
    theirs = json::parse(meta.model_config);
  } catch (const json::exception&) {
    TURBOESM_FAIL(source, ": checkpoint metadata 'model_config' is not valid JSON");
  }
  mine = json::parse(config.canonical_json());
  for (auto it = mine.begin(); it != mine.end(); ++it) {
    const auto other = theirs.find(it.key());
    const std::string was = other == theirs.end() ? "(absent)" : other->dump();
    TURBOESM_CHECK(other != theirs.end() && *other == it.value(), source,
                   ": checkpoint was calibrated for a model with ", it.key(), " ", was,
                   ", this model has ", it.value().dump());
  }
  for (auto it = theirs.begin(); it != theirs.end(); ++it)
    TURBOESM_CHECK(mine.contains(it.key()), source, ": checkpoint was calibrated for a model with ",
                   it.key(), " ", it.value().dump(), ", this model has none");
  TURBOESM_CHECK(meta.num_layers == config.num_hidden_layers &&
                     meta.num_heads == config.num_attention_heads &&
                     meta.head_dim == config.head_dim(),
                 source, ": checkpoint has ", meta.num_layers, " layers x ", meta.num_heads,
                 " heads x head_dim ", meta.head_dim, ", the model has ", config.num_hidden_layers,
                 " x ", config.num_attention_heads, " x ", config.head_dim());
  TURBOESM_CHECK(meta.model_fingerprint == fingerprint, source,
                 ": fingerprint mismatch: same config, different weights (checkpoint ",
                 meta.model_fingerprint.substr(0, 12), "…, model ", fingerprint.substr(0, 12),
                 "…): calibrate for this model");
}

Checkpoint load_checkpoint(const std::string& path, const std::string& model_dir) {
  Checkpoint ck = read_checkpoint(path);
  const model::EsmConfig config = model::EsmConfig::from_file(model_dir);
  check_checkpoint_model(ck.meta, config, model_fingerprint(model_dir), path);
  return ck;
}

model::TurboCacheSpec turbo_cache_spec_from_checkpoint(const Checkpoint& ckpt) {
  const CheckpointMetadata& m = ckpt.meta;
  model::TurboCacheSpec spec;
  spec.k_config = m.options.quantizer_config(m.head_dim, true);
  spec.v_config = m.options.quantizer_config(m.head_dim, false);
  spec.rotation = m.options.rotation;
  spec.centered = m.options.center;
  spec.description =
      "checkpoint " + m.options.summary() + " (model " + m.model_fingerprint.substr(0, 12) + ")";
  spec.layers = ckpt.layers;
  return spec;
}

model::TurboCacheSpec without_qjl(const model::TurboCacheSpec& spec) {
  model::TurboCacheSpec s = spec;
  s.k_config.qjl = quant::QjlMode::kNone;
  s.k_config.qjl_dim = 0;
  for (auto& l : s.layers) {
    l.k.qjl_scale = at::Tensor();
    l.k.qjl_projection = at::Tensor();
  }
  s.description = spec.description + " [QJL off]";
  return s;
}

}  // namespace turboesm::calibration
