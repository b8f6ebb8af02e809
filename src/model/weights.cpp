// SPDX-License-Identifier: MIT
#include "turboesm/model/weights.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"

namespace turboesm::model {
namespace {

namespace fs = std::filesystem;

std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}


bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// Resolves HF names (with/without `esm.`, `.weight/.bias` or `.gamma/.beta`) and checks shapes.
class Resolver {
 public:
  Resolver(const TensorSource& src, const EsmConfig& cfg, const LoadOptions& opts)
      : src_(src), cfg_(cfg), opts_(opts) {
    for (auto& n : src.names()) names_.insert(n);
  }

  bool has(const std::string& full) const { return names_.count(full) != 0; }

  /// The stored name of base-model tensor `base` ("esm." + base or base), or "" if absent.
  std::string base_name(const std::string& base) const {
    if (has("esm." + base)) return "esm." + base;
    if (has(base)) return base;
    return {};
  }

  bool has_base(const std::string& base) const { return !base_name(base).empty(); }

  /// Loads the stored tensor `full`, checks shape and finiteness, converts to device/dtype.
  at::Tensor load(const std::string& full, at::IntArrayRef expected, const std::string& why,
                  at::ScalarType dtype) const {
    at::Tensor t = src_.get(full);
    TURBOESM_CHECK(t.defined(), src_.description, ": missing tensor '", full, "' (expected shape ",
                   shape_str(expected), why, ")");
    TURBOESM_CHECK(at::isFloatingType(t.scalar_type()), src_.description, ": tensor '", full,
                   "' has dtype ", c10::toString(t.scalar_type()),
                   ", expected a floating type (F32, F16 or BF16)");
    TURBOESM_CHECK(t.sizes() == expected, src_.description, ": tensor '", full, "' has shape ",
                   shape_str(t.sizes()), ", expected ", shape_str(expected), why);
    at::Tensor out = t.to(opts_.device, dtype);
    if (opts_.check_finite) {
      TURBOESM_CHECK(at::isfinite(out).all().item<bool>(), src_.description, ": tensor '", full,
                     "' contains NaN or Inf",
                     dtype != t.scalar_type() ? " (after conversion to the model dtype)" : "");
    }
    return out;
  }

  at::Tensor base(const std::string& base, at::IntArrayRef expected, const std::string& why = "") {
    std::string full = base_name(base);
    if (full.empty()) full = prefixed() ? "esm." + base : base;
    return load(full, expected, why, opts_.dtype);
  }

  LayerNormWeights layer_norm(const std::string& base) {
    const int64_t h = cfg_.hidden_size;
    const std::string why = " (hidden_size " + std::to_string(h) + ")";
    LayerNormWeights w;
    if (has_base(base + ".gamma") && !has_base(base + ".weight")) {
      w.weight = this->base(base + ".gamma", {h}, why);
      w.bias = this->base(base + ".beta", {h}, why);
    } else {
      w.weight = this->base(base + ".weight", {h}, why);
      w.bias = this->base(base + ".bias", {h}, why);
    }
    return w;
  }

  /// Whether the checkpoint uses the `esm.` prefix (decides the name reported as missing).
  bool prefixed() const {
    return std::any_of(names_.begin(), names_.end(),
                       [](const std::string& n) { return n.rfind("esm.", 0) == 0; });
  }

  const std::set<std::string>& names() const { return names_; }
  const TensorSource& source() const { return src_; }

 private:
  const TensorSource& src_;
  const EsmConfig& cfg_;
  const LoadOptions& opts_;
  std::set<std::string> names_;
};

void check_layer_count(const Resolver& r, const EsmConfig& cfg) {
  // A checkpoint with more layers than the config would silently lose them.
  for (const auto& n : r.names()) {
    auto pos = n.find("encoder.layer.");
    if (pos == std::string::npos) continue;
    const char* p = n.c_str() + pos + std::strlen("encoder.layer.");
    if (!std::isdigit(static_cast<unsigned char>(*p))) continue;
    const long idx = std::strtol(p, nullptr, 10);
    TURBOESM_CHECK(idx < cfg.num_hidden_layers, r.source().description, ": tensor '", n,
                   "' belongs to layer ", idx, " but config.num_hidden_layers is ",
                   cfg.num_hidden_layers);
  }
}

}  // namespace

at::ScalarType torch_dtype(io::DType d) {
  switch (d) {
    case io::DType::F32:
      return at::kFloat;
    case io::DType::F16:
      return at::kHalf;
    case io::DType::BF16:
      return at::kBFloat16;
    case io::DType::I64:
      return at::kLong;
    case io::DType::I32:
      return at::kInt;
    case io::DType::U8:
      return at::kByte;
  }
  TURBOESM_FAIL("unknown safetensors dtype");
}

at::ScalarType parse_scalar_type(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "float32" || s == "fp32" || s == "float") return at::kFloat;
  if (s == "float16" || s == "fp16" || s == "half") return at::kHalf;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  TURBOESM_FAIL("unsupported dtype '", name, "', expected one of fp32, fp16, bf16");
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  const bool cuda_syntax =
      name == "cuda" ||
      (name.rfind("cuda:", 0) == 0 && name.size() > 5 &&
       std::all_of(name.begin() + 5, name.end(), [](unsigned char c) { return std::isdigit(c); }));
  TURBOESM_CHECK(cuda_syntax, "unsupported device '", name, "', expected cpu, cuda or cuda:N");
  const int index = name == "cuda" ? 0 : std::stoi(name.substr(5));
  TURBOESM_CHECK(at::hasCUDA(), "device '", name,
                 "' requested but CUDA is not available (no GPU, or LibTorch without CUDA)");
  const int count = static_cast<int>(at::detail::getCUDAHooks().deviceCount());
  TURBOESM_CHECK(index < count, "device '", name, "' requested but only ", count,
                 " CUDA device(s) are visible");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

TensorSource checkpoint_source(const std::string& path_or_dir) {
  const fs::path p(path_or_dir);
  TURBOESM_CHECK(fs::exists(p), "model path ", path_or_dir, " does not exist");
  if (ends_with(path_or_dir, ".pt") || ends_with(path_or_dir, ".pth")) {
    TURBOESM_FAIL(path_or_dir,
                  ": fair-esm .pt checkpoints (Python pickles) are not supported; use the Hugging "
                  "Face model directory (config.json + model.safetensors), e.g. "
                  "facebook/esm2_t33_650M_UR50D");
  }
  if (fs::is_directory(p) && !fs::exists(p / "model.safetensors") &&
      !fs::exists(p / "model.safetensors.index.json") && fs::exists(p / "pytorch_model.bin")) {
    TURBOESM_FAIL(path_or_dir,
                  ": only pytorch_model.bin (a Python pickle) found; pickled checkpoints are not "
                  "supported, save the model with save_pretrained(safe_serialization=True)");
  }
  auto ckpt =
      std::make_shared<io::SafetensorsCheckpoint>(io::SafetensorsCheckpoint::open(path_or_dir));
  TensorSource src;
  src.description = ckpt->source();
  src.owner = ckpt;
  src.names = [ckpt] { return ckpt->names(); };
  src.get = [ckpt](const std::string& name) -> at::Tensor {
    const io::SafetensorsCheckpoint* raw = ckpt.get();
    const io::TensorInfo* info = raw->find(name);
    if (info == nullptr) return {};
    const at::ScalarType st = torch_dtype(info->dtype);
    const void* ptr = raw->data(name);
    const auto opts = at::TensorOptions().dtype(st);
    const size_t elem = io::dtype_size(info->dtype);
    if (info->numel() == 0) return at::empty(info->shape, opts);
    if (reinterpret_cast<std::uintptr_t>(ptr) % elem == 0) {
      // Zero-copy view of the read-only mapping; the model never writes into weights.
      return at::from_blob(const_cast<void*>(ptr), info->shape, opts);
    }
    at::Tensor t = at::empty(info->shape, opts);
    std::memcpy(t.data_ptr(), ptr, info->nbytes());
    return t;
  };
  return src;
}

EsmWeights load_weights(const std::string& dir, const EsmConfig& config, const LoadOptions& opts) {
  return load_weights(checkpoint_source(dir), config, opts);
}

EsmWeights load_weights(const TensorSource& source, const EsmConfig& cfg, const LoadOptions& opts) {
  cfg.validate();
  TURBOESM_CHECK(opts.dtype == at::kFloat || opts.dtype == at::kHalf || opts.dtype == at::kBFloat16,
                 "unsupported model dtype ", c10::toString(opts.dtype),
                 ", expected fp32, fp16 or bf16");
  Resolver r(source, cfg, opts);
  check_layer_count(r, cfg);
  const int64_t h = cfg.hidden_size, v = cfg.vocab_size, f = cfg.intermediate_size;
  const std::string hs = " (hidden_size " + std::to_string(h) + ")";
  EsmWeights w;
  w.storage_owner = source.owner;
  w.word_embeddings =
      r.base("embeddings.word_embeddings.weight", {v, h},
             " (vocab_size " + std::to_string(v) + ", hidden_size " + std::to_string(h) + ")");
  if (cfg.emb_layer_norm_before) w.emb_ln_before = r.layer_norm("embeddings.layer_norm");

  w.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    LayerWeights& L = w.layers[static_cast<size_t>(i)];
    L.attn_ln = r.layer_norm(p + "attention.LayerNorm");
    at::Tensor qw = r.base(p + "attention.self.query.weight", {h, h}, hs);
    at::Tensor qb = r.base(p + "attention.self.query.bias", {h}, hs);
    at::Tensor kw = r.base(p + "attention.self.key.weight", {h, h}, hs);
    at::Tensor kb = r.base(p + "attention.self.key.bias", {h}, hs);
    at::Tensor vw = r.base(p + "attention.self.value.weight", {h, h}, hs);
    at::Tensor vb = r.base(p + "attention.self.value.bias", {h}, hs);
    L.qkv_weight = at::cat({qw, kw, vw}, 0).contiguous();
    L.qkv_bias = at::cat({qb, kb, vb}, 0).contiguous();
    L.q_weight = L.qkv_weight.narrow(0, 0, h);
    L.k_weight = L.qkv_weight.narrow(0, h, h);
    L.v_weight = L.qkv_weight.narrow(0, 2 * h, h);
    L.q_bias = L.qkv_bias.narrow(0, 0, h);
    L.k_bias = L.qkv_bias.narrow(0, h, h);
    L.v_bias = L.qkv_bias.narrow(0, 2 * h, h);
    L.o_weight = r.base(p + "attention.output.dense.weight", {h, h}, hs);
    L.o_bias = r.base(p + "attention.output.dense.bias", {h}, hs);
    L.ffn_ln = r.layer_norm(p + "LayerNorm");
    const std::string fs_ =
        " (intermediate_size " + std::to_string(f) + ", hidden_size " + std::to_string(h) + ")";
    L.fc1_weight = r.base(p + "intermediate.dense.weight", {f, h}, fs_);
    L.fc1_bias = r.base(p + "intermediate.dense.bias", {f}, fs_);
    L.fc2_weight = r.base(p + "output.dense.weight", {h, f}, fs_);
    L.fc2_bias = r.base(p + "output.dense.bias", {h}, hs);
  }
  w.emb_ln_after = r.layer_norm("encoder.emb_layer_norm_after");

  // Rotary inv_freq, as HF's EsmModel.load_hook: the model-level key wins, else the first of the
  // per-layer keys in sorted order ('*' sorts before digits).
  const int64_t half = cfg.head_dim() / 2;
  const std::string why_rot = " (head_dim/2 = " + std::to_string(half) + ")";
  std::string rot = r.base_name("rotary_embeddings.inv_freq");
  if (rot.empty()) {
    for (const auto& n : r.names()) {  // std::set: sorted
      if (ends_with(n, ".attention.self.rotary_embeddings.inv_freq")) {
        rot = n;
        break;
      }
    }
  }
  if (!rot.empty()) w.rotary_inv_freq = r.load(rot, {half}, why_rot, at::kFloat);

  // LM head (absent in bare EsmModel checkpoints).
  const bool any_lm = std::any_of(r.names().begin(), r.names().end(),
                                  [](const std::string& n) { return n.rfind("lm_head.", 0) == 0; });
  if (any_lm) {
    w.has_lm_head = true;
    w.lm_dense_weight = r.load("lm_head.dense.weight", {h, h}, hs, opts.dtype);
    w.lm_dense_bias = r.load("lm_head.dense.bias", {h}, hs, opts.dtype);
    const bool gamma = r.has("lm_head.layer_norm.gamma") && !r.has("lm_head.layer_norm.weight");
    w.lm_ln.weight = r.load(gamma ? "lm_head.layer_norm.gamma" : "lm_head.layer_norm.weight", {h},
                            hs, opts.dtype);
    w.lm_ln.bias =
        r.load(gamma ? "lm_head.layer_norm.beta" : "lm_head.layer_norm.bias", {h}, hs, opts.dtype);
    w.lm_bias = r.load("lm_head.bias", {v}, " (vocab_size " + std::to_string(v) + ")", opts.dtype);
    if (cfg.tie_word_embeddings) {
      w.lm_decoder_weight = w.word_embeddings;
    } else {
      w.lm_decoder_weight = r.load("lm_head.decoder.weight", {v, h},
                                   " (config.tie_word_embeddings is false)", opts.dtype);
    }
  }

  // Contact head: logistic regression over layers × heads attention maps.
  if (r.has_base("contact_head.regression.weight")) {
    w.has_contact_head = true;
    const int64_t c = cfg.num_hidden_layers * cfg.num_attention_heads;
    const std::string why =
        " (num_hidden_layers × num_attention_heads = " + std::to_string(c) + ")";
    w.contact_weight = r.base("contact_head.regression.weight", {1, c}, why);
    w.contact_bias = r.base("contact_head.regression.bias", {1});
  }
  return w;
}

}  // namespace turboesm::model
