// SPDX-License-Identifier: MIT
// The calibration checkpoint's metadata and validation, torch-free (see checkpoint_format.h).
#include "turboesm/calibration/checkpoint_format.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <unordered_map>

#include "json_text.h"
#include "turboesm/error.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::calibration {

using io::detail::short_json;
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

const json& need_key(const json& j, const char* key, const std::string& source) {
  const auto it = j.find(key);
  TURBOESM_CHECK(it != j.end(), source, ": checkpoint metadata is missing key '", key, "'");
  return *it;
}

[[noreturn]] void wrong_type(const json& v, const char* key, const std::string& source) {
  TURBOESM_FAIL(source, ": checkpoint metadata key '", key,
                "' has the wrong type: ", short_json(v));
}

/// An integer key that must fit T exactly. nlohmann's get<int>() would convert a float
/// (undefined behaviour out of range) or wrap a large integer; both are refused here.
template <typename T>
T get_integer(const json& j, const char* key, const std::string& source) {
  const json& v = need_key(j, key, source);
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())) return static_cast<T>(u);
  } else if (v.is_number_integer()) {
    const auto s = v.get<std::int64_t>();
    if (std::numeric_limits<T>::is_signed &&
        s >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
        s <= static_cast<std::int64_t>(std::numeric_limits<T>::max()))
      return static_cast<T>(s);
  }
  wrong_type(v, key, source);
}

template <typename T>
T get_key(const json& j, const char* key, const std::string& source) {
  const json& v = need_key(j, key, source);
  try {
    return v.get<T>();
  } catch (const json::exception&) {
    wrong_type(v, key, source);
  }
}

std::vector<double> get_doubles(const json& j, const char* key, const std::string& source) {
  const json& v = need_key(j, key, source);
  if (!v.is_array()) wrong_type(v, key, source);
  std::vector<double> out;
  out.reserve(v.size());
  for (const json& e : v) {
    if (!e.is_number()) wrong_type(v, key, source);
    out.push_back(e.get<double>());  // finite: the JSON parser refuses 1e999 (overflow)
  }
  return out;
}

}  // namespace

CheckpointMetadata CheckpointMetadata::from_json(const json& j, const std::string& source) {
  TURBOESM_CHECK(j.is_object(), source, ": checkpoint metadata must be a JSON object");
  CheckpointMetadata m;
  m.format_version = get_integer<int>(j, "format_version", source);
  TURBOESM_CHECK(m.format_version == kCheckpointFormatVersion, source,
                 ": checkpoint format version ", m.format_version,
                 " is not supported (this build reads version ", kCheckpointFormatVersion, ")");
  FitOptions& o = m.options;
  o.bits_k = get_integer<int>(j, "bits_k", source);
  o.bits_v = get_integer<int>(j, "bits_v", source);
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
  o.qjl_dim = get_integer<int>(j, "qjl_dim", source);
  o.seed = get_integer<uint64_t>(j, "seed", source);
  m.num_layers = get_integer<int>(j, "num_layers", source);
  m.num_heads = get_integer<int>(j, "num_heads", source);
  m.head_dim = get_integer<int>(j, "head_dim", source);
  TURBOESM_CHECK(m.num_layers > 0 && m.num_heads > 0 && m.head_dim > 0, source,
                 ": checkpoint metadata has non-positive sizes: num_layers ", m.num_layers,
                 ", num_heads ", m.num_heads, ", head_dim ", m.head_dim);
  m.calibration_sha256 = get_key<std::string>(j, "calibration_sha256", source);
  m.calibration_tokens = get_integer<int64_t>(j, "calibration_tokens", source);
  m.calibration_records = get_integer<int64_t>(j, "calibration_records", source);
  m.tool_version = get_key<std::string>(j, "tool_version", source);
  m.model_fingerprint = get_key<std::string>(j, "model_fingerprint", source);
  m.model_config = get_key<std::string>(j, "model_config", source);
  if (j.contains("k_rel_mse")) m.k_rel_mse = get_doubles(j, "k_rel_mse", source);
  if (j.contains("v_rel_mse")) m.v_rel_mse = get_doubles(j, "v_rel_mse", source);
  try {
    o.validate(m.head_dim);
  } catch (const Error& e) {
    TURBOESM_FAIL(source, ": checkpoint metadata describes an invalid configuration: ", e.what());
  }
  return m;
}

CheckpointMetadata parse_checkpoint_metadata(const std::map<std::string, std::string>& metadata,
                                             const std::string& source) {
  const auto it = metadata.find(kCheckpointMetadataKey);
  TURBOESM_CHECK(it != metadata.end(), source, ": not a TurboESM checkpoint (no '",
                 kCheckpointMetadataKey, "' key in __metadata__)");
  json j;
  try {
    j = json::parse(it->second);
  } catch (const json::exception& e) {
    TURBOESM_FAIL(source, ": checkpoint metadata is not valid JSON: ", e.what());
  }
  return CheckpointMetadata::from_json(j, source);
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

std::string checkpoint_tensor_name(int layer, bool key, const std::string& suffix) {
  return "layers." + std::to_string(layer) + (key ? ".k." : ".v.") + suffix;
}

namespace {

/// What the metadata calls for in one (layer, K/V); shapes as in checkpoint.h.
struct HeadLayout {
  bool scale = false, mean = false, qjl_scale = false, qjl_projection = false;
  int64_t levels = 0, qjl_dim = 0;
};

HeadLayout head_layout(const CheckpointMetadata& m, bool key) {
  const FitOptions& o = m.options;
  HeadLayout h;
  h.levels = int64_t{1} << (key ? o.bits_k : o.bits_v);
  h.scale = o.rotation == quant::RotationKind::kSvd && o.svd_scales;
  h.mean = o.center;
  h.qjl_scale = key && o.qjl == quant::QjlMode::kSign;
  h.qjl_projection = key && o.qjl == quant::QjlMode::kProd;
  h.qjl_dim = o.qjl_dim > 0 ? o.qjl_dim : m.head_dim;
  return h;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// The tensors of one file by name, and their bytes.
class TensorSource {
 public:
  TensorSource(const std::vector<io::TensorInfo>& tensors,
               const std::function<const void*(const io::TensorInfo&)>& data,
               const std::string& source)
      : tensors_(tensors), data_(data), source_(source) {
    for (const auto& t : tensors) index_.emplace(t.name, &t);
  }

  /// Tensor `name` (must have `shape`, dtype F32, finite values) as a host array.
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& shape) {
    expected_.insert(name);
    const auto it = index_.find(name);
    TURBOESM_CHECK(it != index_.end(), source_, ": tensor '", name, "' is missing (expected F32 ",
                   shape_str(shape), ")");
    const io::TensorInfo& t = *it->second;
    TURBOESM_CHECK(t.dtype == io::DType::F32, source_, ": tensor '", name, "' has dtype ",
                   io::dtype_name(t.dtype), ", expected F32");
    TURBOESM_CHECK(t.shape == shape, source_, ": tensor '", name, "' has shape ",
                   shape_str(t.shape), ", expected ", shape_str(shape));
    // The safetensors parser guarantees nbytes = 4 x numel and that the bytes exist.
    std::vector<float> out(static_cast<size_t>(t.nbytes() / sizeof(float)));
    if (!out.empty()) std::memcpy(out.data(), data_(t), out.size() * sizeof(float));
    for (size_t i = 0; i < out.size(); ++i)
      TURBOESM_CHECK(std::isfinite(out[i]), source_, ": tensor '", name, "' element ", i,
                     " is not finite (", out[i], ")");
    return out;
  }

  /// Refuses any tensor that read() was not asked for.
  void check_no_unexpected(const FitOptions& o) const {
    for (const auto& t : tensors_)
      TURBOESM_CHECK(expected_.count(t.name), source_, ": unexpected tensor '", t.name,
                     "' for a checkpoint with ", o.summary());
  }

 private:
  const std::vector<io::TensorInfo>& tensors_;
  const std::function<const void*(const io::TensorInfo&)>& data_;
  const std::string& source_;
  std::unordered_map<std::string, const io::TensorInfo*> index_;
  std::set<std::string> expected_;
};

}  // namespace

std::vector<CheckpointTensorSpec> checkpoint_tensor_specs(const CheckpointMetadata& m) {
  const int64_t H = m.num_heads, d = m.head_dim;
  std::vector<CheckpointTensorSpec> out;
  for (int l = 0; l < m.num_layers; ++l) {
    for (bool key : {true, false}) {
      const HeadLayout h = head_layout(m, key);
      out.push_back({checkpoint_tensor_name(l, key, "rotation"), {H, d, d}});
      out.push_back({checkpoint_tensor_name(l, key, "codebook"), {H, h.levels}});
      if (h.scale) out.push_back({checkpoint_tensor_name(l, key, "scale"), {H, d}});
      if (h.mean) out.push_back({checkpoint_tensor_name(l, key, "mean"), {H, d}});
      if (h.qjl_scale) out.push_back({checkpoint_tensor_name(l, key, "qjl_scale"), {H}});
      if (h.qjl_projection)
        out.push_back({checkpoint_tensor_name(l, key, "qjl_projection"), {H, h.qjl_dim, d}});
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

CheckpointArrays decode_checkpoint(const std::map<std::string, std::string>& metadata,
                                   const std::vector<io::TensorInfo>& tensors,
                                   const std::function<const void*(const io::TensorInfo&)>& data,
                                   const std::string& source) {
  CheckpointArrays ck;
  ck.meta = parse_checkpoint_metadata(metadata, source);
  const CheckpointMetadata& m = ck.meta;
  const FitOptions& o = m.options;
  const int64_t H = m.num_heads, d = m.head_dim;
  TensorSource src(tensors, data, source);
  // Layers are appended as they are read, never reserved from num_layers: a hostile header can
  // claim 2^31 layers, and the first missing tensor must stop it before any allocation.
  for (int l = 0; l < m.num_layers; ++l) {
    for (bool key : {true, false}) {
      CheckpointHeadArrays c;
      const HeadLayout hl = head_layout(m, key);
      const int bits = key ? o.bits_k : o.bits_v;
      const std::string rot_name = checkpoint_tensor_name(l, key, "rotation");
      c.rotation = src.read(rot_name, {H, d, d});
      for (int64_t h = 0; h < H; ++h) {
        const double err =
            quant::orthogonality_error(c.rotation.data() + h * d * d, static_cast<int>(d));
        TURBOESM_CHECK(err <= quant::kOrthogonalityTolerance, source, ": tensor '", rot_name,
                       "' head ", h, " is not orthogonal: max|P P^T - I| = ", err, " > ",
                       quant::kOrthogonalityTolerance);
      }
      const std::string cb_name = checkpoint_tensor_name(l, key, "codebook");
      c.codebook = src.read(cb_name, {H, hl.levels});
      c.boundaries.reserve(static_cast<size_t>(H * (hl.levels - 1)));
      for (int64_t h = 0; h < H; ++h) {
        std::vector<float> cv(c.codebook.begin() + h * hl.levels,
                              c.codebook.begin() + (h + 1) * hl.levels);
        try {
          const quant::Codebook cb = quant::Codebook::from_centroids(bits, cv);
          c.boundaries.insert(c.boundaries.end(), cb.boundaries.begin(), cb.boundaries.end());
        } catch (const Error& e) {
          TURBOESM_FAIL(source, ": tensor '", cb_name, "' head ", h, ": ", e.what());
        }
      }
      if (hl.scale) {
        const std::string n = checkpoint_tensor_name(l, key, "scale");
        c.scale = src.read(n, {H, d});
        for (int64_t i = 0; i < H * d; ++i)
          TURBOESM_CHECK(c.scale[i] > 0.0f, source, ": tensor '", n, "' head ", i / d,
                         " coordinate ", i % d, " is ", c.scale[i], ", expected > 0");
      }
      if (hl.mean) c.mean = src.read(checkpoint_tensor_name(l, key, "mean"), {H, d});
      if (hl.qjl_scale) {
        const std::string n = checkpoint_tensor_name(l, key, "qjl_scale");
        c.qjl_scale = src.read(n, {H});
        for (int64_t h = 0; h < H; ++h)
          TURBOESM_CHECK(c.qjl_scale[h] >= 0.0f, source, ": tensor '", n, "' head ", h, " is ",
                         c.qjl_scale[h], ", expected >= 0");
      }
      if (hl.qjl_projection)
        c.qjl_projection =
            src.read(checkpoint_tensor_name(l, key, "qjl_projection"), {H, hl.qjl_dim, d});
      (key ? ck.k : ck.v).push_back(std::move(c));
    }
  }
  src.check_no_unexpected(o);
  return ck;
}

CheckpointArrays parse_checkpoint(const std::uint8_t* bytes, std::uint64_t size,
                                  const std::string& name, const io::SafetensorsLimits& limits) {
  const io::SafetensorsHeader h = io::parse_safetensors(bytes, size, name, limits);
  return decode_checkpoint(
      h.metadata, h.tensors,
      [&](const io::TensorInfo& t) -> const void* { return bytes + h.data_offset + t.begin; },
      name);
}

CheckpointArrays read_checkpoint_arrays(const std::string& path) {
  const io::SafetensorsFile f(path);
  return decode_checkpoint(
      f.metadata(), f.tensors(), [&](const io::TensorInfo& t) { return f.data(t); }, path);
}

void write_checkpoint_arrays(const std::string& path, const CheckpointArrays& ck, bool overwrite) {
  const CheckpointMetadata& m = ck.meta;
  TURBOESM_CHECK(ck.k.size() == static_cast<size_t>(m.num_layers) && ck.v.size() == ck.k.size(),
                 path, ": checkpoint metadata says ", m.num_layers, " layers, got K ", ck.k.size(),
                 " and V ", ck.v.size());
  std::vector<io::TensorView> views;
  for (const CheckpointTensorSpec& spec : checkpoint_tensor_specs(m)) {
    // "layers.{l}.{k|v}.{suffix}"
    const size_t dot1 = spec.name.find('.'), dot2 = spec.name.find('.', dot1 + 1);
    const size_t l = std::stoul(spec.name.substr(dot1 + 1, dot2 - dot1 - 1));
    const bool key = spec.name[dot2 + 1] == 'k';
    const std::string suffix = spec.name.substr(dot2 + 3);
    const CheckpointHeadArrays& a = key ? ck.k[l] : ck.v[l];
    const std::vector<float>* values = suffix == "rotation"    ? &a.rotation
                                       : suffix == "codebook"  ? &a.codebook
                                       : suffix == "scale"     ? &a.scale
                                       : suffix == "mean"      ? &a.mean
                                       : suffix == "qjl_scale" ? &a.qjl_scale
                                                               : &a.qjl_projection;
    int64_t numel = 1;
    for (int64_t s : spec.shape) numel *= s;
    TURBOESM_CHECK(static_cast<int64_t>(values->size()) == numel, path, ": tensor '", spec.name,
                   "' has ", values->size(), " values, expected ", shape_str(spec.shape));
    views.push_back({spec.name, io::DType::F32, spec.shape, values->data()});
  }
  io::WriteOptions wo;
  wo.overwrite = overwrite;
  wo.metadata[kCheckpointMetadataKey] = m.to_json().dump();
  io::write_safetensors(path, views, wo);
}

// ---------------------------------------------------------------------------------------------
// Model match
// ---------------------------------------------------------------------------------------------

void check_checkpoint_model(const CheckpointMetadata& meta, const model::EsmConfig& config,
                            const std::string& fingerprint, const std::string& source) {
  json theirs;
  try {
    theirs = json::parse(meta.model_config);
  } catch (const json::exception&) {
    TURBOESM_FAIL(source, ": checkpoint metadata 'model_config' is not valid JSON");
  }
  TURBOESM_CHECK(theirs.is_object(), source,
                 ": checkpoint metadata 'model_config' must be a JSON object, got ",
                 short_json(theirs));
  const json mine = json::parse(config.canonical_json());
  for (auto it = mine.begin(); it != mine.end(); ++it) {
    const auto other = theirs.find(it.key());
    const std::string was = other == theirs.end() ? "(absent)" : short_json(*other);
    TURBOESM_CHECK(other != theirs.end() && *other == it.value(), source,
                   ": checkpoint was calibrated for a model with ", it.key(), " ", was,
                   ", this model has ", it.value().dump());
  }
  for (auto it = theirs.begin(); it != theirs.end(); ++it)
    TURBOESM_CHECK(mine.contains(it.key()), source, ": checkpoint was calibrated for a model with ",
                   it.key(), " ", short_json(it.value()), ", this model has none");
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

}  // namespace turboesm::calibration
