// SPDX-License-Identifier: MIT
#include "turboesm/model/turbo_cache.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "turboesm/error.h"
#include "turboesm/ops/turbo_decode.h"
#include "turboesm/quant/bitpack.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/encode_row.h"
#include "turboesm/quant/half.h"
#include "turboesm/quant/qjl.h"
#include "turboesm/quant/random.h"

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernel_element_type.h"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/kernels/turbo_decode.h"
#endif

namespace turboesm::model {

using quant::NormMode;
using quant::QjlMode;

// ---------------------------------------------------------------------------------------------
// TurboHeadConstants
// ---------------------------------------------------------------------------------------------

namespace {

const float* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

void check_tensor(const at::Tensor& t, std::vector<int64_t> shape, const std::string& name) {
  TURBOESM_CHECK(t.defined(), name, " is missing (expected fp32 ", at::IntArrayRef(shape), ")");
  TURBOESM_CHECK(t.scalar_type() == at::kFloat, name, " must be fp32, got ",
                 c10::toString(t.scalar_type()));
  TURBOESM_CHECK(t.sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape),
                 ", got ", t.sizes());
  TURBOESM_CHECK(at::isfinite(t).all().item<bool>(), name, " has non-finite values");
}

/// Whether rotations `r` have the shape rotation_f16_parts splits: [H, d, d], d a multiple of 16.
bool has_f16_parts_shape(const at::Tensor& r) {
  return r.dim() == 3 && r.size(1) == r.size(2) && r.size(1) % 16 == 0;
}

/// Seed of one (layer, head, K/V, purpose) stream, derived from the spec seed (splitmix64).
uint64_t derive_seed(uint64_t seed, uint64_t layer, uint64_t head, uint64_t what) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (1 + layer * 1000003ull + head * 1009ull + what);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

bool is_identity_rotation(const at::Tensor& rotation) {
  if (!rotation.defined() || rotation.dim() != 3 || rotation.size(1) != rotation.size(2))
    return false;
  const at::Tensor eye = at::eye(rotation.size(1), rotation.options().dtype(at::kFloat));
  return at::equal(rotation.to(at::kFloat), eye.expand_as(rotation));
}

quant::HeadConstantsView TurboHeadConstants::view() const {
  quant::HeadConstantsView v;
  v.rotation = ptr_or_null(rotation);
  v.scale = ptr_or_null(scale);
  v.mean = ptr_or_null(mean);
  v.centroids = ptr_or_null(centroids);
  v.boundaries = ptr_or_null(boundaries);
  v.qjl_scale = ptr_or_null(qjl_scale);
  v.qjl_proj = ptr_or_null(qjl_projection);
  if (rotation_f16.defined()) {
    v.rotation_f16 = reinterpret_cast<const uint16_t*>(rotation_f16.data_ptr<int16_t>());
    v.rotation_f16_lo = rotation_f16_lo.data_ptr<int32_t>();
  }
  v.rotation_identity = rotation_identity;
  return v;
}

TurboHeadConstants TurboHeadConstants::to(c10::Device device) const {
  auto mv = [&](const at::Tensor& t) {
    return t.defined() ? t.to(device, at::kFloat).contiguous() : at::Tensor();
  };
  TurboHeadConstants c;
  c.rotation = mv(rotation);
  c.centroids = mv(centroids);
  c.boundaries = mv(boundaries);
  c.scale = mv(scale);
  c.mean = mv(mean);
  c.qjl_scale = mv(qjl_scale);
  c.qjl_projection = mv(qjl_projection);
  c.rotation_identity = is_identity_rotation(rotation);
  if (device.is_cuda() && c.rotation.defined() && has_f16_parts_shape(c.rotation)) {
    // The prefill kernel's fp16 parts of Π, split once here (on the device: a few elementwise
    // kernels) instead of by each of its CTAs.
    auto parts = rotation_f16_parts(c.rotation);
    c.rotation_f16 = std::move(parts.first);
    c.rotation_f16_lo = std::move(parts.second);
  }
  return c;
}

std::pair<at::Tensor, at::Tensor> rotation_f16_parts(const at::Tensor& rotation) {
  TURBOESM_CHECK(has_f16_parts_shape(rotation) && rotation.scalar_type() == at::kFloat,
                 "rotation_f16_parts: rotations must be fp32 [H, d, d] with d a multiple of 16, "
                 "got ",
                 c10::toString(rotation.scalar_type()), " ", rotation.sizes());
  // kernels::rotation_f16_split's operations as tensor ops (each IEEE-rounded on its own, fp16
  // conversions round to nearest even): hi = fp16(Π), lo = fp16((Π − hi) · 2^12); rows padded
  // with zeros to rotation_f16_row_stride(d).
  const int64_t d = rotation.size(1);
  const at::Tensor hi = rotation.to(at::kHalf);
  const at::Tensor lo =
      rotation.sub(hi.to(at::kFloat)).mul(double{quant::kRotationF16LoScale}).to(at::kHalf);
  const at::Tensor parts = at::constant_pad_nd(
      at::stack({hi, lo}, 1), {0, quant::rotation_f16_row_stride(static_cast<int>(d)) - d}, 0.0);
  return {parts.view(at::kShort).contiguous(), lo.ne(0).flatten(1).any(1).to(at::kInt)};
}

void TurboHeadConstants::validate(const quant::QuantizerConfig& cfg, int heads,
                                  const std::string& what) const {
  quant::check_page_layout_args(cfg.dim, cfg.bits, cfg.norm, cfg.qjl, cfg.qjl_dim, cfg.page_tokens);
  const int64_t H = heads, d = cfg.dim, L = int64_t{1} << cfg.bits;
  check_tensor(rotation, {H, d, d}, what + ".rotation");
  check_tensor(centroids, {H, L}, what + ".codebook");
  check_tensor(boundaries, {H, L - 1}, what + ".boundaries");
  if (scale.defined()) {
    check_tensor(scale, {H, d}, what + ".scale");
    TURBOESM_CHECK(scale.gt(0).all().item<bool>(), what, ".scale must be > 0 everywhere");
  }
  if (mean.defined()) check_tensor(mean, {H, d}, what + ".mean");
  if (cfg.qjl == QjlMode::kSign) {
    check_tensor(qjl_scale, {H}, what + ".qjl_scale");
    TURBOESM_CHECK(qjl_scale.ge(0).all().item<bool>(), what, ".qjl_scale must be >= 0");
  }
  if (cfg.qjl == QjlMode::kProd) {
    const int64_t m = quant::effective_qjl_dim(cfg.dim, cfg.qjl, cfg.qjl_dim);
    check_tensor(qjl_projection, {H, m, d}, what + ".qjl_projection");
  }
  const at::Tensor rot = rotation.to(at::kCPU).contiguous();
  const at::Tensor cen = centroids.to(at::kCPU).contiguous();
  for (int64_t h = 0; h < H; ++h) {
    const double err = quant::orthogonality_error(rot.data_ptr<float>() + h * d * d, cfg.dim);
    TURBOESM_CHECK(err <= quant::kOrthogonalityTolerance, what, ".rotation head ", h,
                   " is not orthogonal: max|P P^T - I| = ", err, " > ",
                   quant::kOrthogonalityTolerance);
    const float* c = cen.data_ptr<float>() + h * L;
    for (int64_t i = 1; i < L; ++i)
      TURBOESM_CHECK(c[i] >= c[i - 1], what, ".codebook head ", h, " is not ascending at level ", i,
                     " (", c[i], " < ", c[i - 1], ")");
  }
}

quant::TurboQuantizer TurboHeadConstants::quantizer(int head, const quant::QuantizerConfig& cfg,
                                                    quant::RotationKind kind) const {
  const int d = cfg.dim, L = 1 << cfg.bits;
  auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU, at::kFloat).contiguous(); };
  auto row = [&](const at::Tensor& t, int64_t n) {
    const at::Tensor c = cpu(t);
    const float* p = c.data_ptr<float>() + head * n;
    return std::vector<float>(p, p + n);
  };
  quant::QuantizerParams prm;
  {
    const std::vector<float> r = row(rotation, int64_t(d) * d);
    prm.rotation = quant::rotation_from_matrix(r.data(), d, kind);
  }
  prm.codebook.bits = cfg.bits;
  prm.codebook.centroids = row(centroids, L);
  prm.codebook.boundaries = row(boundaries, L - 1);
  if (scale.defined()) prm.scale = row(scale, d);
  if (mean.defined()) prm.mean = row(mean, d);
  if (cfg.qjl == QjlMode::kSign) prm.qjl_sign_scale = row(qjl_scale, 1)[0];
  if (cfg.qjl == QjlMode::kProd) {
    const int m = quant::effective_qjl_dim(d, cfg.qjl, cfg.qjl_dim);
    const std::vector<float> s = row(qjl_projection, int64_t(m) * d);
    prm.qjl_projection = quant::qjl_projection_from_matrix(s.data(), m, d);
  }
  return quant::TurboQuantizer(cfg, std::move(prm));
}

// ---------------------------------------------------------------------------------------------
// TurboCacheSpec
// ---------------------------------------------------------------------------------------------

namespace {

void validate_spec(const TurboCacheSpec& s, int64_t layers, int64_t heads, int64_t head_dim) {
  TURBOESM_CHECK(s.k_config.dim == head_dim && s.v_config.dim == head_dim,
                 "turbo spec head_dim (K ", s.k_config.dim, ", V ", s.v_config.dim,
                 ") does not match the model's head_dim ", head_dim);
  TURBOESM_CHECK(static_cast<int64_t>(s.layers.size()) == layers, "turbo spec has ",
                 s.layers.size(), " layers, the model has ", layers);
  TURBOESM_CHECK(s.v_config.qjl == QjlMode::kNone, "turbo spec: QJL on V is not supported (got ",
                 quant::to_string(s.v_config.qjl), "); QJL corrects K scores only");
  TURBOESM_CHECK(s.k_config.page_tokens == s.v_config.page_tokens,
                 "turbo spec: K and V page_tokens differ (", s.k_config.page_tokens, " vs ",
                 s.v_config.page_tokens, ")");
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const std::string p = "layers." + std::to_string(l);
    s.layers[l].k.validate(s.k_config, static_cast<int>(heads), p + ".k");
    s.layers[l].v.validate(s.v_config, static_cast<int>(heads), p + ".v");
  }
}

/// [H, ...] fp32 tensor from per-head vectors.
at::Tensor stack_heads(const std::vector<std::vector<float>>& rows, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  for (const auto& r : rows) p = std::copy(r.begin(), r.end(), p);
  return t;
}

}  // namespace

void TurboCacheSpec::validate(const EsmConfig& config) const {
  validate_spec(*this, config.num_hidden_layers, config.num_attention_heads, config.head_dim());
}

int64_t TurboCacheSpec::bytes_per_token_per_head() const {
  return quant::bytes_per_token_per_head(k_config.dim, k_config.bits, k_config.norm, k_config.qjl,
                                         k_config.qjl_dim) +
         quant::bytes_per_token_per_head(v_config.dim, v_config.bits, v_config.norm, v_config.qjl,
                                         v_config.qjl_dim);
}

std::string TurboCacheSpec::summary() const {
  std::ostringstream os;
  os << "K " << k_config.bits << "-bit / V " << v_config.bits << "-bit, rotation "
     << quant::to_string(rotation) << ", norm " << quant::to_string(k_config.norm) << ", qjl "
     << quant::to_string(k_config.qjl);
  if (k_config.qjl == QjlMode::kProd)
    os << " (m = " << quant::effective_qjl_dim(k_config.dim, k_config.qjl, k_config.qjl_dim) << ")";
  os << (centered ? ", centered" : "");
  return os.str();
}

TurboCacheSpec TurboCacheSpec::random(const EsmConfig& config, int bits_k, int bits_v,
                                      quant::RotationKind rotation, NormMode norm, QjlMode qjl,
                                      uint64_t seed, int qjl_dim, double norm_hint) {
  config.validate();
  TURBOESM_CHECK(rotation != quant::RotationKind::kSvd,
                 "the svd rotation is fitted from calibration data: use a checkpoint written by "
                 "turboesm-calibrate, or identity/random/hadamard for data-free constants");
  TURBOESM_CHECK(std::isfinite(norm_hint) && norm_hint > 0,
                 "norm_hint must be finite and > 0, got ", norm_hint);
  const int d = static_cast<int>(config.head_dim());
  const int H = static_cast<int>(config.num_attention_heads);
  const int layers = static_cast<int>(config.num_hidden_layers);
  TurboCacheSpec s;
  s.k_config.dim = s.v_config.dim = d;
  s.k_config.bits = bits_k;
  s.v_config.bits = bits_v;
  s.k_config.norm = s.v_config.norm = norm;
  s.k_config.qjl = qjl;
  s.k_config.qjl_dim = qjl == QjlMode::kProd ? (qjl_dim > 0 ? qjl_dim : d) : 0;
  s.v_config.qjl = QjlMode::kNone;
  quant::check_page_layout_args(d, bits_k, norm, qjl, s.k_config.qjl_dim);
  quant::check_page_layout_args(d, bits_v, norm, QjlMode::kNone);
  s.rotation = rotation;
  s.centered = false;
  {
    std::ostringstream os;
    os << "data-free constants (rotation " << quant::to_string(rotation)
       << ", analytic Lloyd-Max codebook for d = " << d;
    if (norm == NormMode::kNone) os << " scaled by norm_hint " << norm_hint;
    os << ", seed " << seed << ")";
    s.description = os.str();
  }
  const double cb_scale = norm == NormMode::kNone ? norm_hint : 1.0;
  auto codebook = [&](int bits) {
    quant::Codebook cb = quant::analytic_codebook(d, bits);
    if (cb_scale == 1.0) return cb;
    std::vector<float> c(cb.centroids);
    for (float& x : c) x = static_cast<float>(x * cb_scale);
    return quant::Codebook::from_centroids(bits, std::move(c));
  };
  const quant::Codebook cbk = codebook(bits_k), cbv = codebook(bits_v);

  // kSign scale: mean |r| of isotropic Gaussian vectors of norm ~ cb_scale, through layer 0 head
  // 0's K quantizer (rotation-invariant data, so every head has the same residual statistics).
  float sign_scale = 0.0f;
  if (qjl == QjlMode::kSign) {
    quant::QuantizerConfig cfg = s.k_config;
    quant::QuantizerParams prm;
    prm.rotation = quant::make_rotation(rotation, d, derive_seed(seed, 0, 0, 0));
    prm.codebook = cbk;
    const quant::TurboQuantizer tq(cfg, std::move(prm));
    constexpr int kSamples = 512;
    std::vector<float> x(static_cast<size_t>(kSamples) * d);
    quant::Rng rng(derive_seed(seed, 0, 0, 7));
    quant::fill_normal(rng, x.data(), x.size());
    const float f = static_cast<float>(cb_scale / std::sqrt(static_cast<double>(d)));
    for (float& v : x) v *= f;
    sign_scale = quant::calibrate_qjl_sign_scale(tq, x.data(), kSamples);
  }

  s.layers.resize(static_cast<size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const quant::QuantizerConfig& cfg = kv == 0 ? s.k_config : s.v_config;
      const quant::Codebook& cb = kv == 0 ? cbk : cbv;
      std::vector<std::vector<float>> rot, cen, bnd, proj;
      for (int h = 0; h < H; ++h) {
        rot.push_back(quant::make_rotation(rotation, d, derive_seed(seed, l, h, kv)).matrix);
        cen.push_back(cb.centroids);
        bnd.push_back(cb.boundaries);
        if (kv == 0 && qjl == QjlMode::kProd)
          proj.push_back(
              quant::make_qjl_projection(cfg.qjl_dim, d, derive_seed(seed, l, h, 2)).matrix);
      }
      TurboHeadConstants c;
      const int64_t L = int64_t{1} << cfg.bits;
      c.rotation = stack_heads(rot, {H, d, d});
      c.centroids = stack_heads(cen, {H, L});
      c.boundaries = stack_heads(bnd, {H, L - 1});
      if (kv == 0 && qjl == QjlMode::kSign) c.qjl_scale = at::full({H}, sign_scale, at::kFloat);
      if (kv == 0 && qjl == QjlMode::kProd)
        c.qjl_projection = stack_heads(proj, {H, cfg.qjl_dim, d});
      (kv == 0 ? s.layers[l].k : s.layers[l].v) = std::move(c);
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// TurboKvCache
// ---------------------------------------------------------------------------------------------

// Frees the pages only after the side writes that use them (KvCache::begin_side_writes).
TurboKvCache::~TurboKvCache() { join_side_writes(); }

TurboKvCache::TurboKvCache(const CacheShape& shape, const TurboCacheSpec& spec)
    : KvCache(shape), spec_(spec), layers_(static_cast<size_t>(shape.layers)) {
  validate_spec(spec_, shape.layers, shape.heads, shape.head_dim);
  const auto& kc = spec_.k_config;
  const auto& vc = spec_.v_config;
  k_layout_ = quant::make_page_layout(kc.dim, kc.bits, kc.norm, kc.qjl, kc.qjl_dim, kc.page_tokens);
  v_layout_ = quant::make_page_layout(vc.dim, vc.bits, vc.norm, vc.qjl, vc.qjl_dim, vc.page_tokens);
  k_quant_.resize(layers_.size());
  v_quant_.resize(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    layers_[l].constants.k = spec_.layers[l].k.to(shape.device);
    layers_[l].constants.v = spec_.layers[l].v.to(shape.device);
    // A side whose Π is the identity (e.g. V after model/value_fold.h) is labelled so.
    const auto kind = [&](const TurboHeadConstants& c) {
      return c.rotation_identity ? quant::RotationKind::kIdentity : spec_.rotation;
    };
    for (int h = 0; h < shape.heads; ++h) {
      k_quant_[l].push_back(spec_.layers[l].k.quantizer(h, kc, kind(layers_[l].constants.k)));
      v_quant_[l].push_back(spec_.layers[l].v.quantizer(h, vc, kind(layers_[l].constants.v)));
    }
  }
  if (shape.device.is_cuda()) {
    const auto i32 = at::TensorOptions().dtype(at::kInt).device(shape.device);
    device_status_ = at::zeros({1}, i32);
    // One counter per (sequence, head) row of a decode step: zero, and every kernel leaves it so.
    split_counters_ = at::zeros({int64_t{shape.batch} * shape.heads}, i32);
  }
}

int64_t TurboKvCache::bytes_per_token_per_head() const { return spec_.bytes_per_token_per_head(); }

int64_t TurboKvCache::allocated_bytes() const {
  int64_t n = 0;
  for (const Layer& l : layers_) {
    if (l.k_pages.defined()) n += l.k_pages.nbytes();
    if (l.v_pages.defined()) n += l.v_pages.nbytes();
  }
  return n;
}

int64_t TurboKvCache::capacity(int layer) const {
  return int64_t(layers_.at(static_cast<size_t>(layer)).max_pages) * k_layout_.page_tokens;
}

void TurboKvCache::grow(int layer, int64_t tokens) {
  Layer& l = layers_[static_cast<size_t>(layer)];
  const int64_t pt = k_layout_.page_tokens;
  const int64_t cap = grown_capacity(capacity(layer), tokens);
  const int64_t pages = (cap + pt - 1) / pt;
  const auto opts = at::TensorOptions().device(shape_.device).dtype(at::kByte);
  auto regrow = [&](at::Tensor& t, int page_bytes) {
    at::Tensor n = at::zeros({shape_.batch, shape_.heads, pages, page_bytes}, opts);
    if (t.defined() && l.max_pages > 0) n.narrow(2, 0, l.max_pages).copy_(t);
    t = n;
  };
  regrow(l.k_pages, k_layout_.page_bytes);
  regrow(l.v_pages, v_layout_.page_bytes);
  l.max_pages = static_cast<int>(pages);
}

quant::CacheView TurboKvCache::view(int layer, bool key) const {
  const Layer& l = layers_.at(static_cast<size_t>(layer));
  quant::CacheView v;
  v.layout = key ? k_layout_ : v_layout_;
  const at::Tensor& pages = key ? l.k_pages : l.v_pages;
  v.pages = pages.defined() ? pages.data_ptr<uint8_t>() : nullptr;
  v.max_pages = l.max_pages;
  v.head_stride = int64_t(l.max_pages) * v.layout.page_bytes;
  v.seq_stride = v.head_stride * shape_.heads;
  v.constants = (key ? l.constants.k : l.constants.v).view();
  return v;
}

quant::DecodeParams TurboKvCache::decode_params(int layer) const {
  join_side_writes();
  quant::DecodeParams p;
  p.batch = shape_.batch;
  p.heads = shape_.heads;
  p.head_dim = shape_.head_dim;
  p.k = view(layer, true);
  p.v = view(layer, false);
  return p;
}

const quant::TurboQuantizer& TurboKvCache::quantizer(int layer, int head, bool key) const {
  TURBOESM_CHECK(layer >= 0 && layer < shape_.layers && head >= 0 && head < shape_.heads,
                 "quantizer(", layer, ", ", head, ") out of range [0, ", shape_.layers, ") x [0, ",
                 shape_.heads, ")");
  return (key ? k_quant_ : v_quant_)[layer][head];
}

void TurboKvCache::do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& starts,
                             const std::vector<int64_t>& counts) {
  if (shape_.device.is_cpu()) {
    append_cpu(layer, k, true, starts, counts);
    append_cpu(layer, v, false, starts, counts);
  } else {
    append_cuda(layer, k, v, starts, counts);
  }
}

void TurboKvCache::append_cpu(int layer, const at::Tensor& x, bool key,
                              const std::vector<int64_t>& starts,
                              const std::vector<int64_t>& counts) {
  if (reference_encode_) {
    append_cpu_reference(layer, x, key, starts, counts);
    return;
  }
  // Batched: centering and the rotation y = Π (x − μ) of every row at once (one batched GEMM
  // instead of a d × d matvec per row), then per row, in parallel over (sequence, head): the
  // norm (double, from x − μ as TurboQuantizer::encode) and the scalar steps of
  // TurboQuantizer::encode (scale, codes, packing, QJL) in the same order, eight coordinates at a
  // time where the CPU has AVX2 (quant/encode_row.h; byte-identical to its _ref). Codes can differ
  // from TurboQuantizer::encode only for a value within float rounding of a decision boundary
  // (the GEMM sums in another order); tests bound the difference.
  const TurboHeadConstants& c = (key ? layers_[layer].constants.k : layers_[layer].constants.v);
  const quant::QuantizerConfig& cfg = key ? spec_.k_config : spec_.v_config;
  const quant::CacheView cv = view(layer, key);
  const quant::PageLayout& lay = cv.layout;
  const auto& quants = (key ? k_quant_ : v_quant_)[layer];
  const int H = shape_.heads, d = shape_.head_dim, pt = lay.page_tokens;
  const int64_t T = x.size(2);
  const at::Tensor xc = (c.mean.defined() ? x - c.mean.view({1, H, 1, d}) : x).contiguous();
  // Π = I (rotation_identity: e.g. the V side of a Π_V-folded model, model/value_fold.h): y = x −
  // μ, which the GEMM against I gives too (1 · xc_i plus zeros), without the GEMM.
  const at::Tensor y =
      c.rotation_identity
          ? xc
          : at::matmul(xc, c.rotation.transpose(-1, -2)).contiguous();  // [B, H, T, d]
  const float* xp = xc.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  // 1/σ as the quantizer computes it (z · (1/σ_j)), once per layer instead of per value.
  std::vector<float> inv_scale;
  if (c.scale.defined()) {
    const float* sp = c.scale.data_ptr<float>();
    inv_scale.resize(static_cast<size_t>(H) * d);
    for (size_t j = 0; j < inv_scale.size(); ++j) inv_scale[j] = 1.0f / sp[j];
  }
  const float* bnd = c.boundaries.data_ptr<float>();
  const float* cen = c.centroids.data_ptr<float>();
  const int levels = 1 << cfg.bits;
  TURBOESM_DISPATCH_BITS(cfg.bits, BITS, {
    at::parallel_for(0, int64_t(shape_.batch) * H, 1, [&](int64_t r0, int64_t r1) {
      alignas(64) float r[quant::kMaxHeadDim];
      alignas(64) float u[8 * quant::kMaxHeadDim];
      for (int64_t row = r0; row < r1; ++row) {
        const int b = static_cast<int>(row / H), h = static_cast<int>(row % H);
        const float* bh = bnd + int64_t(h) * (levels - 1);
        const float* ch = cen + int64_t(h) * levels;
        const float* ish = inv_scale.empty() ? nullptr : inv_scale.data() + int64_t(h) * d;
        for (int64_t t = 0; t < counts[b]; ++t) {
          const int64_t pos = starts[b] + t;
          uint8_t* page = cv.page(b, h, static_cast<int>(pos / pt));
          const int slot = static_cast<int>(pos % pt);
          const double nn = quant::sum_squares_f64(xp + (row * T + t) * d, d);
          TURBOESM_CHECK(std::isfinite(nn), "turbo cache append, layer ", layer, " ",
                         key ? "K" : "V", " head ", h,
                         ": cannot quantize a vector with "
                         "non-finite values (squared norm ",
                         nn, ")");
          float inv = 1.0f;
          if (cfg.norm == NormMode::kToken) {
            const float nf = static_cast<float>(std::sqrt(nn));
            TURBOESM_CHECK(nf <= quant::kHalfMax, "turbo cache append: vector norm ", nf,
                           " exceeds the fp16 range of stored norms (", quant::kHalfMax, ")");
            *quant::token_norm(page, lay, slot) = quant::float_to_half_bits(nf);
            inv = nf > 0.0f ? 1.0f / nf : 0.0f;
          }
          const float* yr = yp + (row * T + t) * d;
          uint8_t* codes = quant::token_codes(page, lay, slot);
          if (cfg.qjl == QjlMode::kNone) {
            quant::encode_rotated_row<BITS>(yr, d, inv, ish, bh, ch, codes, nullptr, nullptr);
          } else if (cfg.qjl == QjlMode::kSign) {
            quant::encode_rotated_row<BITS>(yr, d, inv, ish, bh, ch, codes, nullptr,
                                            quant::token_qjl(page, lay, slot));
          } else {
            quant::encode_rotated_row<BITS>(yr, d, inv, ish, bh, ch, codes, r, nullptr);
            quant::qjl_project(quants[h].params().qjl_projection, r, u);
            quant::pack_signs(u, lay.qjl_dim, quant::token_qjl(page, lay, slot));
            double rs = 0.0;
            for (int j = 0; j < d; ++j) rs += double(r[j]) * double(r[j]);
            *quant::token_rnorm(page, lay, slot) =
                quant::float_to_half_bits(static_cast<float>(std::sqrt(rs)));
          }
        }
      }
    });
  });
}

void TurboKvCache::append_cpu_reference(int layer, const at::Tensor& x, bool key,
                                        const std::vector<int64_t>& starts,
                                        const std::vector<int64_t>& counts) {
  const quant::CacheView cv = view(layer, key);
  const auto& quants = (key ? k_quant_ : v_quant_)[layer];
  const int H = shape_.heads, d = shape_.head_dim, pt = cv.layout.page_tokens;
  const int64_t T = x.size(2);
  const float* xp = x.data_ptr<float>();
  // One task per (sequence, head): each writes its own pages only.
  at::parallel_for(0, int64_t(shape_.batch) * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int b = static_cast<int>(r / H), h = static_cast<int>(r % H);
      const quant::TurboQuantizer& q = quants[h];
      for (int64_t t = 0; t < counts[b]; ++t) {
        const int64_t pos = starts[b] + t;
        q.encode(xp + (r * T + t) * d, cv.page(b, h, static_cast<int>(pos / pt)),
                 static_cast<int>(pos % pt));
      }
    }
  });
}

at::ScalarType TurboKvCache::append_dtype(at::ScalarType given) const {
  return model_dtype_on_cuda(given);
}

void TurboKvCache::launch_quantize_append(int layer, const at::Tensor& k, const at::Tensor& v,
                                          const int32_t* starts, const int32_t* counts) {
#ifdef TURBOESM_WITH_CUDA
  auto input = [](const at::Tensor& x) {
    kernels::ElementType t;
    TURBOESM_CHECK(kernel_element_type(x.scalar_type(), &t),
                   "turbo cache append (CUDA): rows must be fp32, fp16 or bf16, got ",
                   c10::toString(x.scalar_type()));
    return t;
  };
  TURBOESM_CHECK(k.sizes() == v.sizes() && k.scalar_type() == v.scalar_type(),
                 "turbo cache append (CUDA): K ", k.sizes(), " ", c10::toString(k.scalar_type()),
                 " and V ", v.sizes(), " ", c10::toString(v.scalar_type()), " differ");
  // Strided rows are read in place (head_dim dense, same strides for K and V), else copied.
  const bool in_place = k.strides() == v.strides() && k.stride(3) == 1 && k.stride(0) >= 0 &&
                        k.stride(1) >= 0 && k.stride(2) >= k.size(3);
  const at::Tensor kx = in_place ? k : k.contiguous();
  const at::Tensor vx = in_place ? v : v.contiguous();
  kernels::QuantizeAppendParams p;  // K, with V as the second side: one launch for both
  p.batch = shape_.batch;
  p.heads = shape_.heads;
  p.head_dim = shape_.head_dim;
  p.new_tokens = static_cast<int>(k.size(2));
  p.x = kx.data_ptr();
  p.x2 = vx.data_ptr();
  p.x_dtype = input(k);
  p.stride_b = kx.stride(0);
  p.stride_h = kx.stride(1);
  p.stride_t = kx.stride(2);
  p.starts = starts;
  p.counts = counts;
  p.cache = view(layer, true);
  p.cache2 = view(layer, false);
  p.status = device_status_.data_ptr<int>();
  p.path = static_cast<kernels::AppendPath>(static_cast<int>(cuda_append_path_));
  static_assert(
      static_cast<int>(CudaAppendPath::kTile) == static_cast<int>(kernels::AppendPath::kTile) &&
          static_cast<int>(CudaAppendPath::kRows) == static_cast<int>(kernels::AppendPath::kRows),
      "TurboKvCache::CudaAppendPath mirrors kernels::AppendPath");
  const char* why = kernels::quantize_append_invalid_reason(p);
  TURBOESM_CHECK(why == nullptr, "turbo cache append (CUDA), layer ", layer, " (K and V): ", why);
  const cudaError_t err = kernels::quantize_append(p, at::cuda::getCurrentCUDAStream());
  TURBOESM_CHECK(err == cudaSuccess, "CUDA kernel quantize_append failed (layer ", layer,
                 ", K and V, ", p.batch, " x ", p.heads, " x ", p.new_tokens, " x ", p.head_dim,
                 "): ", cudaGetErrorString(err));
#else
  TURBOESM_FAIL("CUDA turbo cache not built (TURBOESM_WITH_CUDA=OFF): layer ", layer, ", ",
                k.size(2), " tokens, V ", v.sizes(), ", starts ", starts != nullptr, ", counts ",
                counts != nullptr);
#endif
}

void TurboKvCache::append_cuda(int layer, const at::Tensor& k, const at::Tensor& v,
                               const std::vector<int64_t>& starts,
                               const std::vector<int64_t>& counts) {
#ifdef TURBOESM_WITH_CUDA
  // CUDA dispatch point: fused quantize-on-append (kernels/quantize_append.cu). No
  // synchronisation: starts and counts travel in one pinned asynchronous copy (shared by K and
  // V, and by every layer of a prefill: the device copy is kept while they do not change), bad
  // rows are recorded in device_status_ and reported by check_device_status().
  c10::cuda::CUDAGuard guard(shape_.device);
  const int64_t B = shape_.batch;
  std::vector<int32_t> sc(static_cast<size_t>(2 * B));
  for (int64_t b = 0; b < B; ++b) {
    sc[b] = static_cast<int32_t>(starts[b]);
    sc[B + b] = static_cast<int32_t>(counts[b]);
  }
  if (sc != starts_counts_host_ || !starts_counts_dev_.defined()) {
    // The old copy may still be read by work queued on this stream (it may have been allocated
    // on another one: KvCache::begin_side_writes).
    if (starts_counts_dev_.defined())
      starts_counts_dev_.record_stream(at::cuda::getCurrentCUDAStream());
    at::Tensor host = at::empty({2 * B}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    std::copy(sc.begin(), sc.end(), host.data_ptr<int32_t>());
    starts_counts_dev_ = host.to(shape_.device, /*non_blocking=*/true);
    starts_counts_host_ = sc;
  }
  const int32_t* sp = starts_counts_dev_.data_ptr<int32_t>();
  launch_quantize_append(layer, k, v, sp, sp + B);
#else
  TURBOESM_FAIL(
      "CUDA turbo cache not built: this TurboESM was built without CUDA "
      "(TURBOESM_WITH_CUDA=OFF); cache device ",
      shape_.device.str(), " (layer ", layer, ", ", k.size(2), " tokens, ", starts.size(), "/",
      counts.size(), " sequences, v ", v.sizes(), ")");
#endif
}

void TurboKvCache::set_step_splits(int cached_splits, bool merge_in_kernel) {
  TURBOESM_CHECK(cached_splits >= 0,
                 "turbo cache set_step_splits: cached_splits must be >= 0 (0: automatic; at most "
                 "64 are used), got ",
                 cached_splits);
  step_cached_splits_ = cached_splits;
  step_merge_in_kernel_ = merge_in_kernel;
}

at::Tensor TurboKvCache::device_step(int layer, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& lengths,
                                     const at::Tensor& lengths_after, int64_t max_tokens) {
  if (!supports_device_step())
    return KvCache::device_step(layer, q, k, v, lengths, lengths_after, max_tokens);
  check_device_step_args("turbo cache", layer, q, k, v, lengths, lengths_after, max_tokens);
#ifdef TURBOESM_WITH_CUDA
  c10::cuda::CUDAGuard guard(shape_.device);
  // The kernel reads fp16 / bf16 / fp32 rows through their strides (no conversion launches);
  // widening is exact, so the codes equal those of fp32 copies.
  const at::Tensor kf = k.to(append_dtype(k.scalar_type()));  // no-op in the model dtype
  const at::Tensor vf = v.to(append_dtype(v.scalar_type()));
  // A view of the first max_tokens slots (strides of the full buffer): the kernel's split count
  // follows the bucket, not the reserved capacity.
  quant::CacheView kv = view(layer, true), vv = view(layer, false);
  const int pages =
      static_cast<int>((max_tokens + k_layout_.page_tokens - 1) / k_layout_.page_tokens);
  kv.max_pages = vv.max_pages = pages;
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  if (!fused_step_append_ || shape_.head_dim > kernels::kDecodeAppendMaxHeadDim ||
      kf.stride(3) != 1 || kf.strides() != vf.strides()) {
    launch_quantize_append(layer, kf, vf, lengths.data_ptr<int32_t>(), nullptr);
    return ops::turbo_decode(qf, lengths_after, kv, vv, 1.0f, split_counters_).to(q.scalar_type());
  }
  // One attention launch (+ the merge kernel): the new rows are read through their strides (the
  // QKV kernel's token-major output), encoded at lengths[b] and attended with the cached tokens.
  kernels::DecodeAppend a;
  a.k = kf.data_ptr();
  a.v = vf.data_ptr();
  TURBOESM_CHECK(kernel_element_type(kf.scalar_type(), &a.dtype),
                 "turbo cache device_step: K/V rows must be fp32, fp16 or bf16, got ",
                 c10::toString(kf.scalar_type()));
  a.stride_b = kf.stride(0);
  a.stride_h = kf.stride(1);
  a.starts = lengths.data_ptr<int32_t>();
  a.status = device_status_.data_ptr<int>();
  at::Tensor out = at::empty_like(qf);
  quant::DecodeParams p;
  p.batch = shape_.batch;
  p.heads = shape_.heads;
  p.head_dim = shape_.head_dim;
  p.q_len = 1;
  p.q = qf.data_ptr<float>();
  p.out = out.data_ptr<float>();
  p.k = kv;
  p.v = vv;
  // By default no split counters: the second (merge) kernel merges the splits. The row's last
  // split CTA was then usually the encoding one, and merging there as well lengthened the step
  // (1–4 % in 7 of 8 interleaved rounds, kernels/NOTES.md "Decode step v8"); the merge kernel
  // loads its column of Π_V while the splits finish. set_step_splits changes both choices.
  p.num_splits = step_cached_splits_;
  if (step_merge_in_kernel_)
    p.split_counters = reinterpret_cast<uint32_t*>(split_counters_.data_ptr<int32_t>());
  const char* why = kernels::turbo_decode_append_invalid_reason(p, a);
  TURBOESM_CHECK(why == nullptr, "turbo cache device_step, layer ", layer, ": ", why);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const size_t ws_bytes = kernels::turbo_decode_append_workspace_bytes(p, sms);
  const at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, qf.options().dtype(at::kByte));
  const cudaError_t err =
      kernels::turbo_decode_append(p, a, ws.data_ptr(), ws_bytes, at::cuda::getCurrentCUDAStream());
  TURBOESM_CHECK(err == cudaSuccess, "turbo cache device_step, layer ", layer,
                 ": CUDA kernel turbo_decode_append failed: ", cudaGetErrorString(err), " (batch ",
                 p.batch, ", heads ", p.heads, ", head_dim ", p.head_dim, ", ", max_tokens,
                 " slots)");
  return out.to(q.scalar_type());
#else
  TURBOESM_FAIL("turbo cache device_step needs CUDA (built without TURBOESM_WITH_CUDA)");
#endif
}

void TurboKvCache::check_device_status() {
  join_side_writes();
  if (!device_status_.defined()) return;
  const int bits = device_status_.item<int>();  // synchronises
  if (bits == 0) return;
  device_status_.zero_();
#ifdef TURBOESM_WITH_CUDA
  TURBOESM_CHECK((bits & kernels::kQuantizeAppendBadRow) == 0,
                 "turbo cache append (CUDA): a K or V row has non-finite values or a norm beyond "
                 "the fp16 range; its codes are unspecified");
  TURBOESM_CHECK((bits & kernels::kQuantizeAppendOutOfCapacity) == 0,
                 "turbo cache append (CUDA): position beyond the cache capacity (internal error)");
#endif
  TURBOESM_FAIL("turbo cache append (CUDA): device status ", bits);
}

at::Tensor TurboKvCache::do_attend(int layer, const at::Tensor& q) const {
  const auto& len = lengths(layer);
  std::vector<int32_t> l32(len.begin(), len.end());
  at::Tensor lens = at::tensor(l32, at::TensorOptions().dtype(at::kInt)).to(shape_.device);
  if (layers_[static_cast<size_t>(layer)].max_pages == 0) return at::zeros_like(q);
  return ops::turbo_decode(q, lens, view(layer, true), view(layer, false), 1.0f);
}

at::Tensor TurboKvCache::dequantized(int layer, bool key) const {
  join_side_writes();
  const auto& len = lengths(layer);
  int64_t n = 0;
  for (int64_t x : len) n = std::max(n, x);
  const int H = shape_.heads, d = shape_.head_dim;
  at::Tensor out = at::zeros({shape_.batch, H, n, d}, at::kFloat);
  if (n == 0) return out;
  const Layer& l = layers_[static_cast<size_t>(layer)];
  const at::Tensor pages = (key ? l.k_pages : l.v_pages).to(at::kCPU).contiguous();
  quant::CacheView cv = view(layer, key);
  cv.pages = pages.data_ptr<uint8_t>();
  const int pt = cv.layout.page_tokens;
  float* o = out.data_ptr<float>();
  for (int b = 0; b < shape_.batch; ++b)
    for (int h = 0; h < H; ++h)
      for (int64_t t = 0; t < len[b]; ++t)
        quantizer(layer, h, key)
            .decode_ref(cv.page(b, h, static_cast<int>(t / pt)), static_cast<int>(t % pt),
                        o + ((int64_t(b) * H + h) * n + t) * d);
  return out;
}

}  // namespace turboesm::model
