// SPDX-License-Identifier: MIT
#include "turboesm/model/kv_cache.h"

#include <algorithm>
#include <limits>

#include "turboesm/error.h"
#include "turboesm/model/turbo_cache.h"

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace turboesm::model {

const char* to_string(CacheKind kind) {
  switch (kind) {
    case CacheKind::kFp32:
      return "fp32";
    case CacheKind::kFp16:
      return "fp16";
    case CacheKind::kInt8:
      return "int8";
    case CacheKind::kFp8:
      return "fp8";
    case CacheKind::kTurbo:
      return "turbo";
  }
  return "?";
}

CacheKind parse_cache_kind(const std::string& name) {
  for (CacheKind k :
       {CacheKind::kFp32, CacheKind::kFp16, CacheKind::kInt8, CacheKind::kFp8, CacheKind::kTurbo})
    if (name == to_string(k)) return k;
  TURBOESM_FAIL("unknown cache kind '", name, "' (expected: fp32, fp16, int8, fp8, turbo)");
}

CacheShape CacheShape::of(const EsmConfig& config, int batch, c10::Device device) {
  CacheShape s;
  s.layers = static_cast<int>(config.num_hidden_layers);
  s.batch = batch;
  s.heads = static_cast<int>(config.num_attention_heads);
  s.head_dim = static_cast<int>(config.head_dim());
  s.device = device;
  return s;
}

// ---------------------------------------------------------------------------------------------
// KvCache
// ---------------------------------------------------------------------------------------------

KvCache::KvCache(const CacheShape& shape) : shape_(shape) {
  TURBOESM_CHECK(shape.layers > 0 && shape.batch > 0 && shape.heads > 0 && shape.head_dim > 0,
                 "KV cache shape must be positive: layers ", shape.layers, ", batch ", shape.batch,
                 ", heads ", shape.heads, ", head_dim ", shape.head_dim);
  lengths_.assign(static_cast<size_t>(shape.layers),
                  std::vector<int64_t>(static_cast<size_t>(shape.batch), 0));
}

// The side stream of a side-write region and its two events: `fork` (the caller's stream up to
// the rows) and `done` (the last write).
struct KvCache::SideWrites {
#ifdef TURBOESM_WITH_CUDA
  explicit SideWrites(c10::Device device)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}
  c10::cuda::CUDAStream stream;
  at::cuda::CUDAEvent fork, done;  // cudaEventDisableTiming
  bool pending = false;
#endif
};

KvCache::~KvCache() = default;

void KvCache::begin_side_writes() {
  join_side_writes();
  side_region_ = false;
#ifdef TURBOESM_WITH_CUDA
  if (!side_writes_enabled_ || !shape_.device.is_cuda()) return;
  if (!side_) side_ = std::make_unique<SideWrites>(shape_.device);
  side_region_ = true;
#endif
}

void KvCache::end_side_writes() {
  side_region_ = false;
  join_side_writes();
}

void KvCache::join_side_writes() const {
#ifdef TURBOESM_WITH_CUDA
  if (!side_ || !side_->pending) return;
  side_->done.block(c10::cuda::getCurrentCUDAStream(shape_.device.index()));
  side_->pending = false;
#endif
}

void KvCache::launch_write(const std::function<void()>& launch,
                           std::initializer_list<at::Tensor> uses) {
#ifdef TURBOESM_WITH_CUDA
  if (side_region_ && side_) {
    const c10::DeviceIndex dev = shape_.device.index();
    side_->fork.record(c10::cuda::getCurrentCUDAStream(dev));
    side_->fork.block(side_->stream);
    {
      c10::cuda::CUDAStreamGuard guard(side_->stream);
      launch();
    }
    // Blocks made on the caller's stream and freed there while the write may still read them.
    for (const at::Tensor& t : uses)
      if (t.defined() && t.is_cuda()) t.record_stream(side_->stream);
    side_->done.record(side_->stream);
    side_->pending = true;
    ++side_writes_launched_;
    return;
  }
#else
  (void)uses;
#endif
  launch();
}

void KvCache::check_layer(int layer) const {
  TURBOESM_CHECK(layer >= 0 && layer < shape_.layers, "KV cache layer ", layer,
                 " out of range [0, ", shape_.layers, ")");
}

int64_t KvCache::grown_capacity(int64_t current, int64_t needed) {
  return std::max({needed, 2 * current, kMinCapacity});
}

void KvCache::append(int layer, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& new_lengths) {
  check_layer(layer);
  if (!side_region_) join_side_writes();
  const int64_t B = shape_.batch, H = shape_.heads, d = shape_.head_dim;
  TURBOESM_CHECK(k.defined() && v.defined() && k.dim() == 4 && v.dim() == 4,
                 "KV cache append: k and v must be 4-D [batch, heads, new_tokens, head_dim]");
  TURBOESM_CHECK(k.sizes() == v.sizes(), "KV cache append: k ", k.sizes(), " and v ", v.sizes(),
                 " differ");
  TURBOESM_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == d, "KV cache append: k must be [",
                 B, ", ", H, ", new_tokens, ", d, "], got ", k.sizes());
  TURBOESM_CHECK(at::isFloatingType(k.scalar_type()) && at::isFloatingType(v.scalar_type()),
                 "KV cache append: k and v must be floating point, got ",
                 c10::toString(k.scalar_type()), " and ", c10::toString(v.scalar_type()));
  const int64_t T = k.size(2);
  std::vector<int64_t> counts(static_cast<size_t>(B), T);
  if (new_lengths.defined()) {
    TURBOESM_CHECK(new_lengths.dim() == 1 && new_lengths.size(0) == B &&
                       !at::isFloatingType(new_lengths.scalar_type()),
                   "KV cache append: new_lengths must be an integer [", B, "] tensor, got ",
                   new_lengths.sizes(), " ", c10::toString(new_lengths.scalar_type()));
    const at::Tensor nl = new_lengths.to(at::kCPU, at::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) {
      counts[b] = nl.data_ptr<int64_t>()[b];
      TURBOESM_CHECK(counts[b] >= 0 && counts[b] <= T, "KV cache append: new_lengths[", b,
                     "] = ", counts[b], " outside [0, ", T, "]");
    }
  }
  const std::vector<int64_t> starts = lengths_[layer];
  int64_t needed = 0;
  for (int64_t b = 0; b < B; ++b) needed = std::max(needed, starts[b] + counts[b]);
  TURBOESM_CHECK(needed <= std::numeric_limits<int32_t>::max(), "KV cache append: ", needed,
                 " tokens per sequence exceed the int32 range of cache lengths");
  if (needed > capacity(layer)) {
    join_side_writes();  // grow copies the layer's buffers and frees the old ones on this stream
    if (capacity(layer) > 0) ++reallocations_;
    grow(layer, needed);
  }
  if (T > 0) {
    at::Tensor kf = k.to(shape_.device, append_dtype(k.scalar_type()));
    at::Tensor vf = v.to(shape_.device, append_dtype(v.scalar_type()));
    if (!append_keeps_strides() || kf.stride(3) != 1 || vf.stride(3) != 1) {
      kf = kf.contiguous();
      vf = vf.contiguous();
    }
    launch_write([&] { do_append(layer, kf, vf, starts, counts); }, {kf, vf});
  }
  for (int64_t b = 0; b < B; ++b) lengths_[layer][b] += counts[b];
}

at::ScalarType KvCache::append_dtype(at::ScalarType) const { return at::kFloat; }

at::ScalarType KvCache::model_dtype_on_cuda(at::ScalarType given) const {
  return shape_.device.is_cuda() && (given == at::kHalf || given == at::kBFloat16) ? given
                                                                                   : at::kFloat;
}

at::Tensor KvCache::attend(int layer, const at::Tensor& q) const {
  check_layer(layer);
  join_side_writes();
  TURBOESM_CHECK(q.defined() && q.dim() == 4 && q.size(0) == shape_.batch &&
                     q.size(1) == shape_.heads && q.size(3) == shape_.head_dim,
                 "KV cache attend: q must be [", shape_.batch, ", ", shape_.heads, ", q_len, ",
                 shape_.head_dim, "], got ", q.defined() ? q.sizes() : at::IntArrayRef{});
  TURBOESM_CHECK(at::isFloatingType(q.scalar_type()),
                 "KV cache attend: q must be floating point, got ", c10::toString(q.scalar_type()));
  const at::Tensor qf = q.to(shape_.device, at::kFloat).contiguous();
  return do_attend(layer, qf).to(q.scalar_type());
}

const std::vector<int64_t>& KvCache::lengths(int layer) const {
  check_layer(layer);
  return lengths_[layer];
}

int64_t KvCache::total_tokens(int layer) const {
  int64_t n = 0;
  for (int64_t l : lengths(layer)) n += l;
  return n;
}

int64_t KvCache::kv_bytes() const {
  int64_t tokens = 0;
  for (int l = 0; l < shape_.layers; ++l) tokens += total_tokens(l);
  return tokens * shape_.heads * bytes_per_token_per_head();
}

void KvCache::clear() {
  join_side_writes();
  for (auto& l : lengths_) std::fill(l.begin(), l.end(), 0);
}

void KvCache::reserve(int64_t tokens) {
  TURBOESM_CHECK(tokens > 0 && tokens <= std::numeric_limits<int32_t>::max(),
                 "KV cache reserve: tokens must be in [1, ", std::numeric_limits<int32_t>::max(),
                 "], got ", tokens);
  join_side_writes();
  for (int layer = 0; layer < shape_.layers; ++layer) {
    if (tokens <= capacity(layer)) continue;
    if (capacity(layer) > 0) ++reallocations_;
    grow(layer, tokens);
  }
}

at::Tensor KvCache::device_step(int layer, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, int64_t) {
  TURBOESM_FAIL("KV cache device_step (layer ", layer, "): not supported by the ",
                to_string(kind()), " cache on ", shape_.device.str(),
                " (supported: turbo, fp16 and fp32 caches on CUDA)");
}

void KvCache::check_device_step_args(const char* who, int layer, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& lengths, const at::Tensor& lengths_after,
                                     int64_t max_tokens) const {
  join_side_writes();
  TURBOESM_CHECK(layer >= 0 && layer < shape_.layers, who, " device_step: layer ", layer,
                 " out of range [0, ", shape_.layers, ")");
  const int64_t B = shape_.batch, H = shape_.heads, d = shape_.head_dim;
  TURBOESM_CHECK(k.dim() == 4 && k.size(0) == B && k.size(1) == H && k.size(2) == 1 &&
                     k.size(3) == d && k.sizes() == v.sizes() && q.sizes() == k.sizes(),
                 who, " device_step: q, k, v must be [", B, ", ", H, ", 1, ", d, "], got q ",
                 q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TURBOESM_CHECK(lengths.scalar_type() == at::kInt && lengths_after.scalar_type() == at::kInt &&
                     lengths.numel() == B && lengths_after.numel() == B &&
                     lengths.device() == shape_.device && lengths_after.device() == shape_.device,
                 who, " device_step: lengths and lengths_after must be int32 [", B, "] on ",
                 shape_.device.str());
  TURBOESM_CHECK(max_tokens > 0 && max_tokens <= capacity(layer), who, " device_step: max_tokens ",
                 max_tokens, " outside [1, capacity ", capacity(layer), "] (reserve first)");
}

void KvCache::commit_device_steps(int64_t steps) {
  TURBOESM_CHECK(steps >= 0, "KV cache commit_device_steps: steps must be >= 0, got ", steps);
  for (int layer = 0; layer < shape_.layers; ++layer) {
    for (int64_t& n : lengths_[layer]) {
      TURBOESM_CHECK(n + steps <= capacity(layer), "KV cache commit_device_steps: layer ", layer,
                     " would hold ", n + steps, " tokens, beyond its capacity ", capacity(layer));
      n += steps;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// DenseKvCache
// ---------------------------------------------------------------------------------------------

namespace {
/// Largest finite e4m3 value: the fp8 scale maps each row's absmax onto it.
constexpr double kFp8E4m3Max = 448.0;
constexpr double kInt8Max = 127.0;
}  // namespace

// Frees the buffers only after the side writes that use them (KvCache::begin_side_writes).
DenseKvCache::~DenseKvCache() { join_side_writes(); }

DenseKvCache::DenseKvCache(CacheKind kind, const CacheShape& shape)
    : KvCache(shape), kind_(kind), layers_(static_cast<size_t>(shape.layers)) {
  switch (kind) {
    case CacheKind::kFp32:
      storage_dtype_ = at::kFloat;
      break;
    case CacheKind::kFp16:
      storage_dtype_ = at::kHalf;
      break;
    case CacheKind::kInt8:
      storage_dtype_ = at::kChar;
      break;
    case CacheKind::kFp8:
      storage_dtype_ = at::kFloat8_e4m3fn;
      break;
    default:
      TURBOESM_FAIL("DenseKvCache supports fp32, fp16, int8 and fp8, got ", to_string(kind));
  }
}

int64_t DenseKvCache::bytes_per_token_per_head() const {
  const int64_t d = shape_.head_dim;
  switch (kind_) {
    case CacheKind::kFp32:
      return 2 * 4 * d;
    case CacheKind::kFp16:
      return 2 * 2 * d;
    default:  // int8 / fp8: one byte per value + one fp16 scale per token per head, K and V
      return 2 * (d + 2);
  }
}

int64_t DenseKvCache::allocated_bytes() const {
  int64_t n = 0;
  for (const Layer& l : layers_)
    for (const at::Tensor* t : {&l.k, &l.v, &l.k_scale, &l.v_scale})
      if (t->defined()) n += t->nbytes();
  return n;
}

int64_t DenseKvCache::capacity(int layer) const {
  const Layer& l = layers_.at(static_cast<size_t>(layer));
  return l.k.defined() ? l.k.size(2) : 0;
}

void DenseKvCache::grow(int layer, int64_t tokens) {
  Layer& l = layers_[static_cast<size_t>(layer)];
  const int64_t old_cap = capacity(layer);
  const int64_t cap = grown_capacity(old_cap, tokens);
  const int64_t B = shape_.batch, H = shape_.heads, d = shape_.head_dim;
  const auto opts = at::TensorOptions().device(shape_.device);
  auto regrow = [&](at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype) {
    at::Tensor n = at::zeros(sizes, opts.dtype(dtype));
    if (t.defined() && old_cap > 0) n.narrow(2, 0, old_cap).copy_(t);
    t = n;
  };
  regrow(l.k, {B, H, cap, d}, storage_dtype_);
  regrow(l.v, {B, H, cap, d}, storage_dtype_);
  if (kind_ == CacheKind::kInt8 || kind_ == CacheKind::kFp8) {
    regrow(l.k_scale, {B, H, cap}, at::kHalf);
    regrow(l.v_scale, {B, H, cap}, at::kHalf);
  }
}

std::pair<at::Tensor, at::Tensor> DenseKvCache::encode(const at::Tensor& x) const {
  if (kind_ == CacheKind::kFp32 || kind_ == CacheKind::kFp16)
    return {x.to(storage_dtype_), at::Tensor()};
  const double qmax = kind_ == CacheKind::kInt8 ? kInt8Max : kFp8E4m3Max;
  // The fp16-rounded scale is the one stored, so quantize with it (decode is then consistent).
  at::Tensor scale = (x.abs().amax(-1) / qmax).to(at::kHalf);  // [B, H, T]
  at::Tensor s = scale.to(at::kFloat).unsqueeze(-1);
  at::Tensor y = x / at::where(s > 0, s, at::ones_like(s));
  if (kind_ == CacheKind::kInt8) return {y.round().clamp(-kInt8Max, kInt8Max).to(at::kChar), scale};
  return {y.clamp(-kFp8E4m3Max, kFp8E4m3Max).to(at::kFloat8_e4m3fn), scale};
}

at::Tensor DenseKvCache::decode(const at::Tensor& x, const at::Tensor& scale) const {
  if (!scale.defined()) return x.to(at::kFloat);
  return x.to(at::kFloat) * scale.to(at::kFloat).unsqueeze(-1);
}

at::ScalarType DenseKvCache::append_dtype(at::ScalarType given) const {
  // fp16 / fp32 storage: one converting copy from the model dtype (fp16 -> fp32 -> fp16 and
  // bf16 -> fp32 -> fp16 round the same as the direct conversion). INT8 / FP8 scale in fp32.
  const bool plain = kind_ == CacheKind::kFp32 || kind_ == CacheKind::kFp16;
  return plain ? model_dtype_on_cuda(given) : at::kFloat;
}

void DenseKvCache::do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& starts,
                             const std::vector<int64_t>& counts) {
  Layer& l = layers_[static_cast<size_t>(layer)];
  const int64_t T = k.size(2);
  bool uniform = true;  // every sequence appends all T rows at the same position: one copy
  for (int64_t b = 0; b < shape_.batch; ++b)
    uniform = uniform && starts[b] == starts[0] && counts[b] == T;
  if (uniform && (kind_ == CacheKind::kFp32 || kind_ == CacheKind::kFp16)) {
    l.k.narrow(2, starts[0], T).copy_(k);  // converts to the storage dtype
    l.v.narrow(2, starts[0], T).copy_(v);
    return;
  }
  auto ek = encode(k), ev = encode(v);
  for (int64_t b = 0; b < shape_.batch; ++b) {
    const int64_t n = counts[b];
    if (n == 0) continue;
    l.k[b].narrow(1, starts[b], n).copy_(ek.first[b].narrow(1, 0, n));
    l.v[b].narrow(1, starts[b], n).copy_(ev.first[b].narrow(1, 0, n));
    if (ek.second.defined()) {
      l.k_scale[b].narrow(1, starts[b], n).copy_(ek.second[b].narrow(1, 0, n));
      l.v_scale[b].narrow(1, starts[b], n).copy_(ev.second[b].narrow(1, 0, n));
    }
  }
}

std::pair<at::Tensor, at::Tensor> DenseKvCache::dequantized(int layer) const {
  join_side_writes();
  const Layer& l = layers_.at(static_cast<size_t>(layer));
  const auto& len = lengths(layer);
  const int64_t n = *std::max_element(len.begin(), len.end());
  if (n == 0 || !l.k.defined()) {
    at::Tensor z = at::zeros({shape_.batch, shape_.heads, 0, shape_.head_dim},
                             at::TensorOptions().device(shape_.device));
    return {z, z};
  }
  auto sl = [&](const at::Tensor& t) { return t.defined() ? t.narrow(2, 0, n) : at::Tensor(); };
  return {decode(sl(l.k), sl(l.k_scale)), decode(sl(l.v), sl(l.v_scale))};
}

at::Tensor DenseKvCache::do_attend(int layer, const at::Tensor& q) const {
  const auto& len = lengths(layer);
  const int64_t n = *std::max_element(len.begin(), len.end());
  if (n == 0) return at::zeros_like(q);
  auto kv = dequantized(layer);
  const int64_t B = shape_.batch;
  at::Tensor lens = at::tensor(len, at::kLong).to(shape_.device);
  at::Tensor valid =
      at::arange(n, at::TensorOptions().dtype(at::kLong).device(shape_.device)).unsqueeze(0) <
      lens.unsqueeze(1);  // [B, n]
  bool all_full = true;
  for (int64_t x : len) all_full = all_full && x == n;
  std::optional<at::Tensor> mask;
  if (!all_full) mask = valid.view({B, 1, 1, n});
  // scale = 1: q is pre-scaled by head_dim^-0.5 (ESM).
  at::Tensor out = at::scaled_dot_product_attention(q, kv.first, kv.second, mask, 0.0, false, 1.0);
  bool any_empty = false;
  for (int64_t x : len) any_empty = any_empty || x == 0;
  if (any_empty) out.masked_fill_((lens == 0).view({B, 1, 1, 1}), 0.0);
  return out;
}

bool DenseKvCache::supports_device_step() const {
  return shape_.device.is_cuda() && (kind_ == CacheKind::kFp32 || kind_ == CacheKind::kFp16);
}

at::Tensor DenseKvCache::device_step(int layer, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& lengths,
                                     const at::Tensor& lengths_after, int64_t max_tokens) {
  if (!supports_device_step())
    return KvCache::device_step(layer, q, k, v, lengths, lengths_after, max_tokens);
  check_device_step_args("KV cache", layer, q, k, v, lengths, lengths_after, max_tokens);
  const int64_t B = shape_.batch, H = shape_.heads, d = shape_.head_dim;
  Layer& l = layers_[static_cast<size_t>(layer)];
  // Scatter with a device index: no host-side position, so the step can be graph-captured.
  const at::Tensor idx = lengths.to(at::kLong).view({B, 1, 1, 1}).expand({B, H, 1, d});
  l.k.scatter_(2, idx, k.to(storage_dtype_));
  l.v.scatter_(2, idx, v.to(storage_dtype_));
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(shape_.device);
  const at::Tensor valid =
      at::arange(max_tokens, lopt).unsqueeze(0) < lengths_after.to(at::kLong).unsqueeze(1);
  const std::optional<at::Tensor> mask = valid.view({B, 1, 1, max_tokens});
  // Compute in the storage dtype when q has it (fp16 model + fp16 cache: half SDPA), else fp32
  // (as do_attend). scale = 1: q is pre-scaled by head_dim^-0.5 (ESM). Every row has ≥ 1 key.
  const at::ScalarType ct = q.scalar_type() == storage_dtype_ ? storage_dtype_ : at::kFloat;
  const at::Tensor out =
      at::scaled_dot_product_attention(q.to(ct), l.k.narrow(2, 0, max_tokens).to(ct),
                                       l.v.narrow(2, 0, max_tokens).to(ct), mask, 0.0, false, 1.0);
  return out.to(q.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// Factory
// ---------------------------------------------------------------------------------------------

std::unique_ptr<KvCache> make_kv_cache(CacheKind kind, const EsmConfig& config, int batch,
                                       c10::Device device, const TurboCacheSpec* turbo) {
  const CacheShape shape = CacheShape::of(config, batch, device);
  if (kind == CacheKind::kTurbo) {
    TURBOESM_CHECK(turbo != nullptr,
                   "a turbo KV cache needs its constants (TurboCacheSpec from a calibration "
                   "checkpoint or TurboCacheSpec::random), got none");
    turbo->validate(config);
    return std::make_unique<TurboKvCache>(shape, *turbo);
  }
  return std::make_unique<DenseKvCache>(kind, shape);
}

}  // namespace turboesm::model
