// SPDX-License-Identifier: MIT
#include "turboesm/model/esm2.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "turboesm/error.h"
#include "turboesm/model/contact_head.h"
#include "turboesm/model/random_init.h"
#include "turboesm/model/token_batch.h"

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernel_element_type.h"
#include "turboesm/kernels/decode_embed.h"
#include "turboesm/kernels/decode_gemv.h"
#include "turboesm/kernels/qkv_rotary.h"
#endif

namespace turboesm::model {

#ifdef TURBOESM_WITH_CUDA
namespace {

/// The [T, d] fp32 table that qkv_rotary_split takes, when `table` is one table [1, T, d] shared
/// by every sequence on `device`; undefined otherwise (per-sequence [B, T, d] tables of a batched
/// Session::append, or anything else: the eager path then runs, with its own checks).
at::Tensor shared_rotary_table(const at::Tensor& table, int64_t T, int64_t d,
                               const c10::Device& device) {
  if (!table.defined() || table.dim() != 3 || table.size(0) != 1 || table.size(1) != T ||
      table.size(2) != d || table.scalar_type() != at::kFloat || table.device() != device)
    return {};
  return table.view({T, d}).contiguous();
}

}  // namespace
#endif

std::shared_ptr<Esm2Model> Esm2Model::load(const std::string& dir, const LoadOptions& opts) {
  EsmConfig config = EsmConfig::from_file(dir);
  EsmWeights weights = load_weights(dir, config, opts);
  return std::make_shared<Esm2Model>(std::move(config), std::move(weights), opts);
}

std::shared_ptr<Esm2Model> Esm2Model::random(const EsmConfig& config, uint64_t seed,
                                             double init_std, const LoadOptions& opts) {
  config.validate();
  auto specs = std::make_shared<std::vector<ParamSpec>>(hf_parameter_specs(config));
  auto tensors = std::make_shared<std::map<std::string, at::Tensor>>();
  for (size_t i = 0; i < specs->size(); ++i) {
    (*tensors)[(*specs)[i].name] = init_parameter(*specs, i, seed, init_std, config);
  }
  TensorSource src;
  src.description = "random init (seed " + std::to_string(seed) + ")";
  src.names = [tensors] {
    std::vector<std::string> n;
    for (auto& kv : *tensors) n.push_back(kv.first);
    return n;
  };
  src.get = [tensors](const std::string& name) -> at::Tensor {
    auto it = tensors->find(name);
    return it == tensors->end() ? at::Tensor() : it->second;
  };
  EsmWeights w = load_weights(src, config, opts);
  return std::make_shared<Esm2Model>(config, std::move(w), opts);
}

std::shared_ptr<Esm2Model> Esm2Model::random_on_device(const EsmConfig& config, uint64_t seed,
                                                       double init_std, const LoadOptions& opts) {
  config.validate();
  EsmWeights w = load_weights(random_tensor_source(config, seed, init_std, opts.device, opts.dtype),
                              config, opts);
  return std::make_shared<Esm2Model>(config, std::move(w), opts);
}

Esm2Model::Esm2Model(EsmConfig config, EsmWeights weights, const LoadOptions& opts)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      device_(opts.device),
      dtype_(opts.dtype) {
  config_.validate();
  TURBOESM_CHECK(static_cast<int64_t>(weights_.layers.size()) == config_.num_hidden_layers,
                 "weights have ", weights_.layers.size(), " layers, config has ",
                 config_.num_hidden_layers);
  rotary_ = Rotary(config_.head_dim(), config_.rope_theta, weights_.rotary_inv_freq, device_);
}

int Esm2Model::normalize_layer(int layer) const {
  const int n = num_layers();
  const int k = layer < 0 ? layer + n + 1 : layer;
  TURBOESM_CHECK(k >= 0 && k <= n, "representation layer ", layer,
                 " out of range for a model with ", n, " layers (valid: ", -(n + 1), "..", n,
                 "; 0 = embeddings)");
  return k;
}

at::Tensor Esm2Model::layer_norm(const at::Tensor& x, const LayerNormWeights& w) const {
  return at::layer_norm(x, {config_.hidden_size}, w.weight, w.bias, config_.layer_norm_eps);
}

at::Tensor Esm2Model::embed(const at::Tensor& tokens, const at::Tensor& attention_mask) const {
  at::Tensor x = at::embedding(weights_.word_embeddings, tokens);  // [B, T, H]
  if (config_.token_dropout) {
    // ESM "mask dropout": zero <mask> rows, rescale by the training/observed unmasked ratio.
    at::Tensor is_mask = tokens.eq(config_.mask_token_id);
    x = x.masked_fill(is_mask.unsqueeze(-1), 0.0);
    const double mask_ratio_train = 0.15 * 0.8;
    at::Tensor src_len =
        attention_mask.defined()
            ? attention_mask.to(at::kLong).sum(-1)
            : at::full({tokens.size(0)}, tokens.size(1),
                       at::TensorOptions().dtype(at::kLong).device(tokens.device()));
    at::Tensor observed = is_mask.sum(-1).to(at::kFloat) / src_len;
    x = (x * (1.0 - mask_ratio_train) / (1.0 - observed).view({-1, 1, 1})).to(x.scalar_type());
  }
  if (weights_.emb_ln_before) x = layer_norm(x, *weights_.emb_ln_before);
  if (attention_mask.defined()) x = (x * attention_mask.unsqueeze(-1).to(x.scalar_type()));
  return x;
}

at::Tensor Esm2Model::embed_with_ratio(const at::Tensor& tokens, const at::Tensor& mask,
                                       const at::Tensor& observed) const {
  at::Tensor x = at::embedding(weights_.word_embeddings, tokens);  // [B, T, hidden]
  if (config_.token_dropout) {
    const at::Tensor is_mask = tokens.eq(config_.mask_token_id) & mask;
    x = x.masked_fill(is_mask.unsqueeze(-1), 0.0);
    const double mask_ratio_train = 0.15 * 0.8;
    x = (x * (1.0 - mask_ratio_train) / (1.0 - observed).view({-1, 1, 1})).to(x.scalar_type());
  }
  if (weights_.emb_ln_before) x = layer_norm(x, *weights_.emb_ln_before);
  return x * mask.unsqueeze(-1).to(x.scalar_type());
}

Esm2Model::StepInputs Esm2Model::decode_step_inputs(const at::Tensor& tokens,
                                                    const at::Tensor& observed_mask_ratio,
                                                    const at::Tensor& lengths) const {
  StepInputs out;
#ifdef TURBOESM_WITH_CUDA
  kernels::ElementType t;
  const int64_t B = tokens.dim() == 2 ? tokens.size(0) : -1;
  const auto on_device = [&](const at::Tensor& x, at::ScalarType type) {
    return x.defined() && x.device() == device_ && x.scalar_type() == type && x.is_contiguous();
  };
  if (!fused_step_inputs_ || !device_.is_cuda() || weights_.emb_ln_before ||
      !kernel_element_type(dtype_, &t) || B < 1 || B > 65535 || tokens.size(1) != 1 ||
      !on_device(tokens, at::kLong) || !on_device(lengths, at::kInt) || lengths.numel() != B ||
      !on_device(weights_.word_embeddings, dtype_) || !on_device(rotary_.inv_freq(), at::kFloat) ||
      (config_.token_dropout &&
       (!on_device(observed_mask_ratio, at::kFloat) || observed_mask_ratio.numel() != B)))
    return out;
  const int64_t hidden = config_.hidden_size, d = config_.head_dim();
  const auto dev = at::TensorOptions().device(device_);
  const c10::cuda::CUDAGuard device_guard(device_);
  out.hidden = at::empty({B, 1, hidden}, dev.dtype(dtype_));
  out.cos = at::empty({B, 1, d}, dev.dtype(at::kFloat));
  out.sin = at::empty({B, 1, d}, dev.dtype(at::kFloat));
  out.after = at::empty({B}, dev.dtype(at::kInt));
  kernels::DecodeEmbedParams p;
  p.batch = static_cast<int>(B);
  p.hidden = static_cast<int>(hidden);
  p.head_dim = static_cast<int>(d);
  p.vocab = weights_.word_embeddings.size(0);
  p.dtype = t;
  p.word_embeddings = weights_.word_embeddings.data_ptr();
  p.tokens = tokens.data_ptr<int64_t>();
  p.token_dropout = config_.token_dropout;
  p.mask_token_id = config_.mask_token_id;
  p.dropout_scale = static_cast<float>(1.0 - 0.15 * 0.8);  // as embed_with_ratio's scalar
  p.observed = config_.token_dropout ? observed_mask_ratio.data_ptr<float>() : nullptr;
  p.inv_freq = rotary_.inv_freq().data_ptr<float>();
  p.lengths = lengths.data_ptr<int32_t>();
  p.h = out.hidden.data_ptr();
  p.cos = out.cos.data_ptr<float>();
  p.sin = out.sin.data_ptr<float>();
  p.after = out.after.data_ptr<int32_t>();
  const cudaError_t e = kernels::decode_embed(p, c10::cuda::getCurrentCUDAStream());
  TURBOESM_CHECK(e == cudaSuccess, "CUDA kernel decode_embed failed (batch ", B, ", hidden ",
                 hidden, ", head_dim ", d, "): ", cudaGetErrorString(e));
#else
  (void)tokens;
  (void)observed_mask_ratio;
  (void)lengths;
#endif
  return out;
}

void Esm2Model::set_decode_gemv_ctas_per_sm(int ctas_per_sm) {
  TURBOESM_CHECK(ctas_per_sm >= -1, "decode_gemv CTAs per SM must be -1 (one per task), 0 (as ",
                 "many as fit) or positive, got ", ctas_per_sm);
  decode_gemv_ctas_per_sm_ = ctas_per_sm;
}

void Esm2Model::set_decode_gemv_warps(int qkv, int out, int fc1, int fc2) {
  const std::array<int, 4> w{qkv, out, fc1, fc2};
  for (int v : w)
    TURBOESM_CHECK(v == 0 || v == 4 || v == 8 || v == 16,
                   "decode_gemv warps per CTA must be 0 (the kernel's default), 4, 8 or 16, got ",
                   v);
  decode_gemv_warps_ = w;
}

bool Esm2Model::use_decode_gemv(const at::Tensor& hidden) const {
#ifdef TURBOESM_WITH_CUDA
  return fused_decode_gemv_ && hidden.is_cuda() && hidden.dim() == 3 && hidden.size(1) == 1 &&
         hidden.size(0) >= 1 && hidden.size(0) <= kernels::kDecodeGemvMaxRows &&
         (dtype_ == at::kHalf || dtype_ == at::kBFloat16) && hidden.scalar_type() == dtype_ &&
         !hidden.requires_grad();
#else
  (void)hidden;
  return false;
#endif
}

at::Tensor Esm2Model::decode_gemv(int product, const at::Tensor& x, const LayerNormWeights* ln,
                                  const at::Tensor& weight, const at::Tensor& bias, bool gelu,
                                  const at::Tensor& residual, const RotaryTables* rotary,
                                  Qkv* qkv) const {
#ifdef TURBOESM_WITH_CUDA
  kernels::ElementType t, xt;
  if (!kernel_element_type(dtype_, &t) || !kernel_element_type(x.scalar_type(), &xt)) return {};
  const auto same = [&](const at::Tensor& a) {
    return !a.defined() ||
           (a.is_contiguous() && a.scalar_type() == dtype_ && a.device() == x.device());
  };
  if (!same(weight) || !same(bias) || !same(residual) ||
      (ln != nullptr && (!same(ln->weight) || !same(ln->bias))) || weight.dim() != 2)
    return {};
  const int64_t B = x.size(0), K = weight.size(1), N = weight.size(0);
  const at::Tensor xc = x.contiguous();
  if (xc.numel() != B * K || (residual.defined() && residual.numel() != B * N)) return {};
  const int64_t d = config_.head_dim();
  const auto table_ok = [&](const at::Tensor& tab) {
    return tab.defined() && tab.scalar_type() == at::kFloat && tab.is_contiguous() &&
           tab.device() == x.device() && tab.numel() == B * d;
  };
  if (qkv != nullptr && (rotary == nullptr || !table_ok(rotary->cos) || !table_ok(rotary->sin)))
    return {};
  at::Tensor out = qkv != nullptr ? at::Tensor() : at::empty({B, 1, N}, x.options().dtype(dtype_));
  kernels::DecodeGemvParams p;
  p.rows = static_cast<int>(B);
  p.in_features = static_cast<int>(K);
  p.out_features = static_cast<int>(N);
  p.dtype = t;
  p.x_dtype = xt;
  p.x = xc.data_ptr();
  if (ln != nullptr) {
    p.ln_weight = ln->weight.data_ptr();
    p.ln_bias = ln->bias.data_ptr();
    p.ln_eps = static_cast<float>(config_.layer_norm_eps);
  }
  p.weight = weight.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.gelu = gelu;
  p.residual = residual.defined() ? residual.data_ptr() : nullptr;
  p.ctas_per_sm = decode_gemv_ctas_per_sm_;
  p.warps = B == 1 ? decode_gemv_warps_[static_cast<size_t>(product)] : 0;
  if (qkv != nullptr) {  // Q/K/V mode: q, k, v fp32 [B, H, 1, d]
    const auto f32 = x.options().dtype(at::kFloat);
    const int64_t H = config_.num_attention_heads;
    *qkv = Qkv{at::empty({B, H, 1, d}, f32), at::empty({B, H, 1, d}, f32),
               at::empty({B, H, 1, d}, f32)};
    p.head_dim = static_cast<int>(d);
    p.cos = rotary->cos.data_ptr<float>();
    p.sin = rotary->sin.data_ptr<float>();
    p.q_scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // as layer_qkv
    p.q_out = qkv->q.data_ptr<float>();
    p.k_out = qkv->k.data_ptr<float>();
    p.v_out = qkv->v.data_ptr<float>();
    out = qkv->q;
  } else {
    p.out = out.data_ptr();
  }
  if (kernels::decode_gemv_invalid_reason(p) != nullptr) return {};
  const c10::cuda::CUDAGuard device_guard(x.device());
  const cudaError_t e = kernels::decode_gemv(p, at::cuda::getCurrentCUDAStream());
  TURBOESM_CHECK(e == cudaSuccess, "CUDA kernel decode_gemv failed (", B, " x ", K, " -> ", N,
                 ", dtype ", c10::toString(dtype_), "): ", cudaGetErrorString(e));
  return out;
#else
  (void)product, (void)x, (void)ln, (void)weight, (void)bias, (void)gelu, (void)residual,
      (void)rotary, (void)qkv;
  return {};
#endif
}

at::Tensor Esm2Model::layer_qkv_projection(int layer, const at::Tensor& hidden) const {
  TURBOESM_CHECK(layer >= 0 && layer < num_layers(), "layer ", layer, " out of range [0, ",
                 num_layers(), ")");
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  if (use_decode_gemv(hidden)) {
    at::Tensor lin = decode_gemv(0, hidden, &w.attn_ln, w.qkv_weight, w.qkv_bias, false, {});
    if (lin.defined()) return lin;
  }
  return at::linear(layer_norm(hidden, w.attn_ln), w.qkv_weight, w.qkv_bias);
}

Qkv Esm2Model::layer_qkv_step_float(int layer, const at::Tensor& hidden, const at::Tensor& cos,
                                    const at::Tensor& sin) const {
  TURBOESM_CHECK(layer >= 0 && layer < num_layers(), "layer ", layer, " out of range [0, ",
                 num_layers(), ")");
  Qkv out;
  if (use_decode_gemv(hidden)) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
    const RotaryTables tables{cos, sin};
    if (!decode_gemv(0, hidden, &w.attn_ln, w.qkv_weight, w.qkv_bias, false, {}, &tables, &out)
             .defined())
      out = Qkv{};
  }
  return out;
}

Qkv Esm2Model::layer_qkv(int layer, const at::Tensor& hidden,
                         const at::Tensor& position_ids) const {
  auto cs = rotary_.cos_sin(position_ids, dtype_);
  return layer_qkv(layer, hidden, cs.first, cs.second);
}

Qkv Esm2Model::layer_qkv(int layer, const at::Tensor& hidden, const at::Tensor& cos,
                         const at::Tensor& sin) const {
  TURBOESM_CHECK(layer >= 0 && layer < num_layers(), "layer ", layer, " out of range [0, ",
                 num_layers(), ")");
  const int64_t B = hidden.size(0), T = hidden.size(1);
  const int64_t nh = config_.num_attention_heads, d = config_.head_dim();
  at::Tensor lin = layer_qkv_projection(layer, hidden);  // [B, T, 3H]
#ifdef TURBOESM_WITH_CUDA
  // One launch instead of ~18 elementwise ones (the forward on a GPU is host-bound on them).
  kernels::QkvDtype kdtype;
  if (fused_qkv_ && lin.is_cuda() && !lin.requires_grad() && B > 0 && T > 0 && B <= 65535 &&
      T <= std::numeric_limits<int>::max() && kernel_element_type(lin.scalar_type(), &kdtype)) {
    const at::Tensor c = shared_rotary_table(cos, T, d, lin.device());
    const at::Tensor s = shared_rotary_table(sin, T, d, lin.device());
    if (c.defined() && s.defined()) {
      const c10::cuda::CUDAGuard device_guard(lin.device());
      const at::Tensor x = lin.contiguous();
      // Token-major outputs viewed as [B, nh, T, d]: the strides of the eager q and k below.
      const auto make = [&] { return at::empty({B, T, nh, d}, x.options()).permute({0, 2, 1, 3}); };
      Qkv out{make(), make(), make()};
      kernels::QkvRotarySplitParams p;
      p.batch = static_cast<int>(B);
      p.tokens = static_cast<int>(T);
      p.heads = static_cast<int>(nh);
      p.head_dim = static_cast<int>(d);
      p.dtype = kdtype;
      p.layout = kernels::QkvLayout::kTokenMajor;
      p.qkv = x.data_ptr();
      p.cos = c.data_ptr<float>();
      p.sin = s.data_ptr<float>();
      p.q_scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // as below
      p.q = out.q.data_ptr();
      p.k = out.k.data_ptr();
      p.v = out.v.data_ptr();
      const cudaError_t e = kernels::qkv_rotary_split(p, at::cuda::getCurrentCUDAStream());
      TURBOESM_CHECK(e == cudaSuccess, "CUDA kernel qkv_rotary_split failed (layer ", layer,
                     ", batch ", B, ", tokens ", T, ", heads ", nh, ", head_dim ", d, ", dtype ",
                     c10::toString(lin.scalar_type()), "): ", cudaGetErrorString(e));
      return out;
    }
  }
#endif
  at::Tensor qkv = lin.view({B, T, 3, nh, d}).permute({2, 0, 3, 1, 4});  // [3, B, nh, T, d]
  Qkv out;
  // ESM scales q before rotary (not the scores after).
  at::Tensor q = qkv[0] * std::pow(static_cast<double>(d), -0.5);
  out.q = Rotary::apply(q, cos, sin);
  out.k = Rotary::apply(qkv[1], cos, sin);
  out.v = qkv[2];
  return out;
}

at::Tensor Esm2Model::layer_finish(int layer, const at::Tensor& hidden,
                                   const at::Tensor& attn_out) const {
  const LayerWeights& w = weights_.layers[static_cast<size_t>(layer)];
  const int64_t B = hidden.size(0), T = hidden.size(1);
  at::Tensor o = attn_out.transpose(1, 2).reshape({B, T, config_.hidden_size});
  if (use_decode_gemv(hidden)) {
    // Output projection + residual, LN + FC1 + GELU, FC2 + residual: three launches.
    const at::Tensor h = decode_gemv(1, o, nullptr, w.o_weight, w.o_bias, false, hidden);
    const at::Tensor x = h.defined()
                             ? decode_gemv(2, h, &w.ffn_ln, w.fc1_weight, w.fc1_bias, true, {})
                             : at::Tensor();
    const at::Tensor y =
        x.defined() ? decode_gemv(3, x, nullptr, w.fc2_weight, w.fc2_bias, false, h) : at::Tensor();
    if (y.defined()) return y;
  }
  o = o.to(hidden.scalar_type());
  at::Tensor h = at::linear(o, w.o_weight, w.o_bias) + hidden;
  at::Tensor x = at::gelu(at::linear(layer_norm(h, w.ffn_ln), w.fc1_weight, w.fc1_bias));
  return at::linear(x, w.fc2_weight, w.fc2_bias) + h;
}

at::Tensor Esm2Model::final_norm(const at::Tensor& hidden) const {
  return layer_norm(hidden, weights_.emb_ln_after);
}

at::Tensor Esm2Model::lm_head(const at::Tensor& hidden) const {
  TURBOESM_CHECK(weights_.has_lm_head,
                 "logits requested but the checkpoint has no LM head (lm_head.* tensors); it is a "
                 "bare EsmModel");
  at::Tensor x = at::gelu(at::linear(hidden, weights_.lm_dense_weight, weights_.lm_dense_bias));
  x = layer_norm(x, weights_.lm_ln);
  return at::linear(x, weights_.lm_decoder_weight, weights_.lm_bias);
}

ForwardOutput Esm2Model::forward(const at::Tensor& tokens_in, const at::Tensor& mask_in,
                                 const ForwardOptions& opts) const {
  c10::InferenceMode guard;
  // Checked on the host: host tokens cost no device round trip (token_batch.h).
  return forward(
      make_token_batch(tokens_in, mask_in, config_.vocab_size, config_.mask_token_id, device_),
      opts);
}

ForwardOutput Esm2Model::forward(const TokenBatch& tb, const ForwardOptions& opts) const {
  c10::InferenceMode guard;
  TURBOESM_CHECK(tb.tokens.defined() && tb.tokens.dim() == 2 &&
                     tb.tokens.device().type() == device_.type() &&
                     tb.real.size() == static_cast<size_t>(tb.tokens.size(0)),
                 "forward: expected a token batch from make_token_batch for the model's device ",
                 device_.str(), ", got tokens ",
                 tb.tokens.defined() ? tb.tokens.device().str() : std::string("undefined"));
  const at::Tensor& tokens = tb.tokens;
  const at::Tensor& mask = tb.mask;
  const bool padded = tb.padded;
  const int n = num_layers();
  std::set<int> want;
  for (int k : opts.repr_layers) want.insert(normalize_layer(k));
  if (opts.need_contacts) {
    TURBOESM_CHECK(weights_.has_contact_head,
                   "contacts requested but the checkpoint has no contact head "
                   "(contact_head.regression.*)");
  }

  ForwardOutput out;
  at::Tensor h = embed(tokens, mask);
  if (want.count(0) && n > 0) out.hidden_states[0] = h;

  const int64_t T = tokens.size(1);
  at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device_));
  auto cs = rotary_.cos_sin(pos, dtype_);
  ExactAttention exact;
  AttentionBackend* backend = opts.backend ? opts.backend : &exact;
  std::unique_ptr<ContactAccumulator> contacts;
  if (opts.need_contacts) {
    contacts = std::make_unique<ContactAccumulator>(
        tokens, mask, weights_.contact_weight, weights_.contact_bias, config_.num_attention_heads);
  }
  for (int i = 0; i < n; ++i) {
    Qkv qkv = layer_qkv(i, h, cs.first, cs.second);
    AttentionInputs in;
    in.layer = i;
    in.q = qkv.q;
    in.k = qkv.k;
    in.v = qkv.v;
    if (padded) {
      in.key_padding_mask = mask;
      in.key_padding_mask_host = tb.mask_host;
    }
    in.need_probs = opts.need_contacts;
    at::Tensor probs;
    at::Tensor attn = backend->attend(in, opts.need_contacts ? &probs : nullptr);
    if (contacts) {
      TURBOESM_CHECK(probs.defined(), "attention backend returned no probabilities for layer ", i,
                     " although contacts were requested");
      contacts->add_layer(i, probs);
    }
    h = layer_finish(i, h, attn);
    if (i + 1 < n && want.count(i + 1)) out.hidden_states[i + 1] = h;
  }
  h = final_norm(h);
  out.last_hidden_state = h;
  if (want.count(n)) out.hidden_states[n] = h;  // fair-esm/HF: last layer after the final LN
  if (opts.need_logits) out.logits = lm_head(h);
  if (contacts) out.contacts = contacts->finish();
  return out;
}

}  // namespace turboesm::model
