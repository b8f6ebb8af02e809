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
        v.name = checkpoint_tensor_name(l, key, e.suffix);
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
// Reading: validation is torch-free (checkpoint_format.h); here the arrays become tensors.
// ---------------------------------------------------------------------------------------------

namespace {

/// A CPU fp32 tensor of `shape` holding `values` (undefined when `values` is empty: absent).
at::Tensor to_tensor(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  if (values.empty()) return at::Tensor();
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  TURBOESM_CHECK(out.numel() == static_cast<int64_t>(values.size()),
                 "checkpoint array of ", values.size(), " values does not fill shape ",
                 out.sizes());
  std::memcpy(out.data_ptr<float>(), values.data(), values.size() * sizeof(float));
  return out;
}

model::TurboHeadConstants to_constants(const CheckpointHeadArrays& a, const CheckpointMetadata& m,
                                       bool key) {
  const int64_t H = m.num_heads, d = m.head_dim;
  const int64_t L = int64_t{1} << (key ? m.options.bits_k : m.options.bits_v);
  const int64_t mq = m.options.qjl_dim > 0 ? m.options.qjl_dim : d;
  model::TurboHeadConstants c;
  c.rotation = to_tensor(a.rotation, {H, d, d});
  c.centroids = to_tensor(a.codebook, {H, L});
  c.boundaries = to_tensor(a.boundaries, {H, L - 1});
  c.scale = to_tensor(a.scale, {H, d});
  c.mean = to_tensor(a.mean, {H, d});
  c.qjl_scale = to_tensor(a.qjl_scale, {H});
  c.qjl_projection = to_tensor(a.qjl_projection, {H, mq, d});
  return c;
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path) {
  const CheckpointArrays arrays = read_checkpoint_arrays(path);
  Checkpoint ck;
  ck.meta = arrays.meta;
  ck.layers.resize(static_cast<size_t>(ck.meta.num_layers));
  for (size_t l = 0; l < ck.layers.size(); ++l) {
    ck.layers[l].k = to_constants(arrays.k[l], ck.meta, true);
    ck.layers[l].v = to_constants(arrays.v[l], ck.meta, false);
  }
  return ck;
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
