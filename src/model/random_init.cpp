// SPDX-License-Identifier: MIT
#include "turboesm/model/random_init.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <cmath>
#include <filesystem>

#include "turboesm/error.h"
#include "turboesm/io/atomic_file.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/model/rotary.h"

namespace turboesm::model {
namespace {

namespace fs = std::filesystem;

/// splitmix64: decorrelates the per-tensor seeds (seed, index).
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

io::DType io_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return io::DType::F32;
    case at::kHalf:
      return io::DType::F16;
    case at::kBFloat16:
      return io::DType::BF16;
    default:
      TURBOESM_FAIL("unsupported dtype ", c10::toString(t), ", expected fp32, fp16 or bf16");
  }
}

const char* hf_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    default:
      return "float32";
  }
}

}  // namespace

std::vector<ParamSpec> hf_parameter_specs(const EsmConfig& c) {
  using I = ParamSpec::Init;
  const int64_t h = c.hidden_size, v = c.vocab_size, f = c.intermediate_size;
  std::vector<ParamSpec> s;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    s.push_back({name + ".weight", {out, in}, I::kNormal});
    s.push_back({name + ".bias", {out}, I::kZeros});
  };
  auto layer_norm = [&](const std::string& name) {
    s.push_back({name + ".weight", {h}, I::kOnes});
    s.push_back({name + ".bias", {h}, I::kZeros});
  };
  s.push_back({"esm.embeddings.word_embeddings.weight", {v, h}, I::kEmbedding});
  if (c.emb_layer_norm_before) layer_norm("esm.embeddings.layer_norm");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "esm.encoder.layer." + std::to_string(i) + ".";
    linear(p + "attention.self.query", h, h);
    linear(p + "attention.self.key", h, h);
    linear(p + "attention.self.value", h, h);
    linear(p + "attention.output.dense", h, h);
    layer_norm(p + "attention.LayerNorm");
    linear(p + "intermediate.dense", f, h);
    linear(p + "output.dense", h, f);
    layer_norm(p + "LayerNorm");
  }
  s.push_back({"esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq",
               {c.head_dim() / 2},
               I::kRotaryInvFreq});
  layer_norm("esm.encoder.emb_layer_norm_after");
  s.push_back({"esm.contact_head.regression.weight",
               {1, c.num_hidden_layers * c.num_attention_heads},
               I::kNormal});
  s.push_back({"esm.contact_head.regression.bias", {1}, I::kZeros});
  linear("lm_head.dense", h, h);
  layer_norm("lm_head.layer_norm");
  if (!c.tie_word_embeddings) s.push_back({"lm_head.decoder.weight", {v, h}, I::kNormal});
  s.push_back({"lm_head.bias", {v}, I::kZeros});
  return s;
}

at::Tensor init_parameter(const std::vector<ParamSpec>& specs, std::size_t index, uint64_t seed,
                          double init_std, const EsmConfig& config) {
  const int64_t pad_token_id = config.pad_token_id;
  TURBOESM_CHECK(index < specs.size(), "parameter index ", index, " out of range (", specs.size(),
                 " parameters)");
  TURBOESM_CHECK(init_std > 0 && std::isfinite(init_std), "init std must be positive, got ",
                 init_std);
  const ParamSpec& p = specs[index];
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  switch (p.init) {
    case ParamSpec::Init::kZeros:
      return at::zeros(p.shape, opts);
    case ParamSpec::Init::kOnes:
      return at::ones(p.shape, opts);
    case ParamSpec::Init::kRotaryInvFreq:
      return Rotary::default_inv_freq(config.head_dim(), config.rope_theta);
    case ParamSpec::Init::kNormal:
    case ParamSpec::Init::kEmbedding: {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(mix(seed ^ mix(index + 1)));
      at::Tensor t = at::normal(0.0, init_std, p.shape, gen, opts);
      if (p.init == ParamSpec::Init::kEmbedding && pad_token_id >= 0 && pad_token_id < p.shape[0]) {
        t[pad_token_id].zero_();  // nn.Embedding(padding_idx=pad): HF zeroes that row
      }
      return t;
    }
  }
  TURBOESM_FAIL("unknown init kind");
}

TensorSource random_tensor_source(const EsmConfig& config, uint64_t seed, double init_std,
                                  c10::Device device, at::ScalarType dtype) {
  config.validate();
  TURBOESM_CHECK(init_std > 0 && std::isfinite(init_std), "init std must be positive, got ",
                 init_std);
  TURBOESM_CHECK(device.is_cpu() || device.is_cuda(), "random_tensor_source: unsupported device ",
                 device.str(), " (expected cpu or cuda)");
  auto specs = std::make_shared<std::vector<ParamSpec>>(hf_parameter_specs(config));
  TensorSource src;
  src.description = "random init on " + device.str() + " (seed " + std::to_string(seed) + ")";
  src.names = [specs] {
    std::vector<std::string> n;
    for (const auto& p : *specs) n.push_back(p.name);
    return n;
  };
  src.get = [specs, config, seed, init_std, device, dtype](const std::string& name) -> at::Tensor {
    size_t i = 0;
    while (i < specs->size() && (*specs)[i].name != name) ++i;
    if (i == specs->size()) return {};
    const ParamSpec& p = (*specs)[i];
    if (device.is_cpu() || p.init == ParamSpec::Init::kRotaryInvFreq)
      return init_parameter(*specs, i, seed, init_std, config)
          .to(p.init == ParamSpec::Init::kRotaryInvFreq ? at::kFloat : dtype);
    const auto opts = at::TensorOptions().device(device).dtype(dtype);
    switch (p.init) {
      case ParamSpec::Init::kZeros:
        return at::zeros(p.shape, opts);
      case ParamSpec::Init::kOnes:
        return at::ones(p.shape, opts);
      default: {
        at::Generator gen = at::detail::getCUDAHooks().getNewGenerator(device.index());
        gen.set_current_seed(mix(seed ^ mix(i + 1)));
        at::Tensor t = at::empty(p.shape, opts).normal_(0.0, init_std, gen);
        const int64_t pad = config.pad_token_id;
        if (p.init == ParamSpec::Init::kEmbedding && pad >= 0 && pad < p.shape[0]) t[pad].zero_();
        return t;
      }
    }
  };
  return src;
}

void write_random_model(const EsmConfig& config_in, uint64_t seed, double init_std,
                        at::ScalarType dtype, const std::string& out_dir, bool overwrite,
                        const std::function<void(std::size_t, std::size_t)>& progress) {
  config_in.validate();
  EsmConfig config = config_in;
  config.torch_dtype = hf_dtype_name(dtype);
  config.initializer_range = init_std;
  const io::DType st = io_dtype(dtype);
  const fs::path dir(out_dir);
  const fs::path weights_path = dir / "model.safetensors", config_path = dir / "config.json";
  if (!overwrite) {
    for (const auto& p : {weights_path, config_path}) {
      TURBOESM_CHECK(!fs::exists(p), "refusing to overwrite ", p.string(), " (pass --overwrite)");
    }
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  TURBOESM_CHECK(!ec && fs::is_directory(dir), "cannot create output directory ", out_dir, ": ",
                 ec.message());

  const std::vector<ParamSpec> specs = hf_parameter_specs(config);
  std::vector<io::SafetensorsWriter::Spec> ws;
  ws.reserve(specs.size());
  auto stored = [&](const ParamSpec& p) {
    return p.init == ParamSpec::Init::kRotaryInvFreq ? io::DType::F32 : st;
  };
  for (const auto& p : specs) ws.push_back({p.name, stored(p), p.shape});
  io::WriteOptions wo;
  wo.overwrite = overwrite;
  wo.metadata["format"] = "pt";  // transformers refuses safetensors files without it
  io::SafetensorsWriter writer(weights_path.string(), std::move(ws), wo);
  for (size_t i = 0; i < specs.size(); ++i) {
    at::Tensor t = init_parameter(specs, i, seed, init_std, config);
    if (stored(specs[i]) == st) t = t.to(dtype);
    t = t.contiguous();
    writer.write_next(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
    if (progress) progress(i + 1, specs.size());
  }
  writer.commit();
  io::write_file_atomic(config_path.string(), config.to_json().dump(2) + "\n", overwrite);
}

}  // namespace turboesm::model
