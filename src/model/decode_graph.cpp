// SPDX-License-Identifier: MIT
#include "turboesm/model/decode_graph.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "turboesm/error.h"

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "turboesm/kernels/pdl.h"
#include "turboesm/kernels/qkv_rotary.h"
#endif

namespace turboesm::model {

void set_programmatic_dependent_launch(bool enabled) {
#ifdef TURBOESM_WITH_CUDA
  kernels::set_programmatic_dependent_launch(enabled);
#else
  (void)enabled;
#endif
}

bool programmatic_dependent_launch() {
#ifdef TURBOESM_WITH_CUDA
  return kernels::programmatic_dependent_launch();
#else
  return false;
#endif
}

#ifdef TURBOESM_WITH_CUDA

struct CudaDecodeGraph::Impl {
  Impl(const Esm2Model& m, KvCache& c)
      : model(m), cache(c), stream(c10::cuda::getStreamFromPool(false, m.device().index())) {}

  const Esm2Model& model;
  KvCache& cache;
  c10::cuda::CUDAStream stream;  // capture and replay (graphs cannot be captured on the default)
  // Static inputs of the graph (allocated once, outside any graph pool).
  at::Tensor tokens;    // [B, 1] int64
  at::Tensor mask;      // [B, 1] bool, all true
  at::Tensor observed;  // [B] fp32 token-dropout ratio
  at::Tensor lengths;   // [B] int32 cache length before the step = the new token's position
                        // (advanced by the graph)
  at::Tensor host_tokens, host_observed;  // pinned staging of the per-step uploads
  at::cuda::CUDAEvent staged;             // the uploads from the staging buffers are done
  std::vector<int64_t> mirror;  // host copy of `lengths` as the device holds it after replays
  // The captured step.
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor out;  // [B, 1, hidden] static output of the graph
  int64_t bucket = 0;
  int64_t reallocations = -1;

  /// The turbo cache takes fp32 q/k/v: scaling, rotary and the conversions of layer_qkv and the
  /// cache (~18 elementwise launches) run as one kernel with the same roundings.
  bool fused_qkv() const {
    const at::ScalarType t = model.dtype();
    return cache.kind() == CacheKind::kTurbo &&
           (t == at::kFloat || t == at::kHalf || t == at::kBFloat16);
  }

  Qkv fused_layer_qkv(int layer, const at::Tensor& h, const at::Tensor& cos,
                      const at::Tensor& sin) {
    // One launch where decode_gemv takes the layer (its Q/K/V mode), else projection + glue.
    Qkv one = model.layer_qkv_step_float(layer, h, cos, sin);
    if (one.q.defined()) return one;
    const at::Tensor lin = model.layer_qkv_projection(layer, h).contiguous();  // [B, 1, 3·hidden]
    const int64_t B = cache.batch(), H = cache.heads(), d = cache.head_dim();
    const auto f32 = at::TensorOptions().device(model.device()).dtype(at::kFloat);
    Qkv out{at::empty({B, H, 1, d}, f32), at::empty({B, H, 1, d}, f32),
            at::empty({B, H, 1, d}, f32)};
    kernels::QkvRotaryParams p;
    p.batch = static_cast<int>(B);
    p.heads = static_cast<int>(H);
    p.head_dim = static_cast<int>(d);
    const at::ScalarType t = model.dtype();
    p.dtype = t == at::kFloat  ? kernels::QkvDtype::kFloat32
              : t == at::kHalf ? kernels::QkvDtype::kFloat16
                               : kernels::QkvDtype::kBFloat16;
    p.qkv = lin.data_ptr();
    p.cos = cos.data_ptr<float>();
    p.sin = sin.data_ptr<float>();
    p.q_scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // as layer_qkv
    p.q = out.q.data_ptr<float>();
    p.k = out.k.data_ptr<float>();
    p.v = out.v.data_ptr<float>();
    const cudaError_t e = kernels::qkv_rotary_to_float(p, c10::cuda::getCurrentCUDAStream());
    TURBOESM_CHECK(e == cudaSuccess, "CUDA kernel qkv_rotary_to_float failed (layer ", layer,
                   ", batch ", B, ", heads ", H, ", head_dim ", d, "): ", cudaGetErrorString(e));
    return out;
  }

  /// The step on the current stream; with `advance` it also moves lengths forward.
  at::Tensor body(int64_t max_tokens, bool advance) {
    // One launch (kernels/decode_embed.h) where it applies, else the ~20 eager ops.
    Esm2Model::StepInputs in = model.decode_step_inputs(tokens, observed, lengths);
    if (!in.hidden.defined()) {
      in.hidden = model.embed_with_ratio(tokens, mask, observed);
      auto cs = model.rotary().cos_sin(lengths.to(at::kLong).unsqueeze(1), model.dtype());
      in.cos = cs.first.contiguous();
      in.sin = cs.second.contiguous();
      in.after = lengths + 1;
    }
    at::Tensor h = in.hidden;
    const at::Tensor &cos = in.cos, &sin = in.sin, &after = in.after;
    const bool fused = fused_qkv();
    for (int i = 0; i < model.num_layers(); ++i) {
      const Qkv qkv = fused ? fused_layer_qkv(i, h, cos, sin) : model.layer_qkv(i, h, cos, sin);
      const at::Tensor attn = cache.device_step(i, qkv.q, qkv.k, qkv.v, lengths, after, max_tokens);
      h = model.layer_finish(i, h, attn);  // fp32 attn: rounded to the model dtype there
    }
    at::Tensor o = model.final_norm(h);
    if (advance) lengths.add_(1);
    return o;
  }
};

CudaDecodeGraph::CudaDecodeGraph(const Esm2Model& model, KvCache& cache, int64_t max_length,
                                 int64_t bucket_tokens)
    : max_length_(max_length), bucket_tokens_(bucket_tokens) {
  TURBOESM_CHECK(model.device().is_cuda() && cache.device() == model.device(),
                 "CudaDecodeGraph: model (", model.device().str(), ") and cache (",
                 cache.device().str(), ") must be on the same CUDA device");
  TURBOESM_CHECK(cache.supports_device_step(), "CudaDecodeGraph: the ", to_string(cache.kind()),
                 " cache has no device-resident step (supported: turbo, fp16, fp32 on CUDA)");
  TURBOESM_CHECK(max_length > 0 && bucket_tokens > 0,
                 "CudaDecodeGraph: max_length and bucket_tokens must be > 0, got ", max_length,
                 " and ", bucket_tokens);
  for (int l = 0; l < cache.num_layers(); ++l)
    TURBOESM_CHECK(cache.capacity(l) >= max_length, "CudaDecodeGraph: layer ", l,
                   " of the cache holds ", cache.capacity(l), " tokens, less than max_length ",
                   max_length, " (KvCache::reserve first)");
  c10::InferenceMode guard;
  impl_ = std::make_unique<Impl>(model, cache);
  const int64_t B = cache.batch();
  const auto dev = at::TensorOptions().device(model.device());
  impl_->tokens = at::zeros({B, 1}, dev.dtype(at::kLong));
  impl_->mask = at::ones({B, 1}, dev.dtype(at::kBool));
  impl_->observed = at::zeros({B}, dev.dtype(at::kFloat));
  impl_->lengths = at::zeros({B}, dev.dtype(at::kInt));
  const auto pinned = at::TensorOptions().pinned_memory(true);
  impl_->host_tokens = at::zeros({B, 1}, pinned.dtype(at::kLong));
  impl_->host_observed = at::zeros({B}, pinned.dtype(at::kFloat));
  impl_->mirror.assign(static_cast<size_t>(B), -1);  // forces an upload at the first step
}

CudaDecodeGraph::~CudaDecodeGraph() {
  if (impl_) {
    impl_->out = at::Tensor();  // lives in the graph's pool: release before the graph
    impl_->graph.reset();
  }
}

int64_t CudaDecodeGraph::bucket_for(int64_t length) const {
  const int64_t up = (length + bucket_tokens_ - 1) / bucket_tokens_ * bucket_tokens_;
  return std::min(std::max<int64_t>(up, 1), max_length_);
}

at::Tensor CudaDecodeGraph::step(const at::Tensor& tokens,
                                 const std::vector<double>& observed_mask_ratio) {
  c10::InferenceMode guard;
  Impl& s = *impl_;
  KvCache& cache = s.cache;
  const int64_t B = cache.batch();
  TURBOESM_CHECK(tokens.dim() == 2 && tokens.size(0) == B && tokens.size(1) == 1 &&
                     tokens.scalar_type() == at::kLong && tokens.device().is_cpu(),
                 "CudaDecodeGraph::step: tokens must be int64 CPU [", B, ", 1], got ",
                 tokens.sizes(), " ", c10::toString(tokens.scalar_type()), " on ",
                 tokens.device().str());
  {
    const at::Tensor ids = tokens.contiguous();
    const int64_t vocab = s.model.config().vocab_size;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t id = ids.data_ptr<int64_t>()[b];
      TURBOESM_CHECK(id >= 0 && id < vocab, "CudaDecodeGraph::step: token id ", id, " of sequence ",
                     b, " is outside the vocabulary [0, ", vocab, ")");
    }
  }
  TURBOESM_CHECK(static_cast<int64_t>(observed_mask_ratio.size()) == B,
                 "CudaDecodeGraph::step: observed_mask_ratio must have ", B, " entries, got ",
                 observed_mask_ratio.size());
  const std::vector<int64_t>& len = cache.lengths(cache.num_layers() - 1);
  for (int l = 0; l < cache.num_layers(); ++l)
    TURBOESM_CHECK(cache.lengths(l) == len, "CudaDecodeGraph::step: layer ", l,
                   " holds other lengths than the last layer (a half-finished step?)");
  int64_t longest = 0;
  for (int64_t n : len) longest = std::max(longest, n + 1);
  TURBOESM_CHECK(longest <= max_length_, "CudaDecodeGraph::step: a sequence would hold ", longest,
                 " tokens, beyond max_length ", max_length_);
  const int64_t bucket = bucket_for(longest);

  c10::cuda::CUDAGuard device_guard(cache.device());
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream();
  {
    // The graph's stream waits for the caller's work (prefill, eager appends, the last clone).
    at::cuda::CUDAEvent ready;
    ready.record(caller);
    ready.block(s.stream);
  }
  c10::cuda::CUDAStreamGuard stream_guard(s.stream);
  // Inputs: tokens and ratios every step; lengths only when the host lengths moved
  // behind the graph's back (prefill, eager append, first step).
  s.staged.synchronize();  // the previous step's uploads have left the staging buffers
  s.host_tokens.copy_(tokens);
  s.host_observed.copy_(at::tensor(observed_mask_ratio, at::kDouble).to(at::kFloat));
  s.tokens.copy_(s.host_tokens, /*non_blocking=*/true);
  s.observed.copy_(s.host_observed, /*non_blocking=*/true);
  s.staged.record(s.stream);
  if (s.mirror != len) {
    const at::Tensor l64 = at::tensor(len, at::kLong);
    s.lengths.copy_(l64.to(at::kInt));
    s.mirror = len;
  }
  if (!s.graph || s.bucket != bucket || s.reallocations != cache.reallocations()) {
    s.out = at::Tensor();
    s.graph.reset();
    // Warm-up on the capture stream (cuBLAS workspaces, lazy module loads): the same step without
    // advancing, which writes the same K/V slot the replay below rewrites.
    (void)s.body(bucket, /*advance=*/false);
    auto g = std::make_unique<at::cuda::CUDAGraph>();
    g->capture_begin();
    s.out = s.body(bucket, /*advance=*/true);
    g->capture_end();
    s.graph = std::move(g);
    s.bucket = bucket;
    s.reallocations = cache.reallocations();
    ++captures_;
  }
  s.graph->replay();
  ++replays_;
  for (int64_t& n : s.mirror) n += 1;
  {
    at::cuda::CUDAEvent done;
    done.record(s.stream);
    done.block(caller);
  }
  c10::cuda::CUDAStreamGuard back(caller);
  at::Tensor hidden = s.out.clone();  // on the caller's stream: the static output is reused
  cache.commit_device_steps(1);
  cache.check_device_status();
  return hidden;
}

#else  // !TURBOESM_WITH_CUDA

struct CudaDecodeGraph::Impl {};

CudaDecodeGraph::CudaDecodeGraph(const Esm2Model& model, KvCache& cache, int64_t max_length,
                                 int64_t bucket_tokens)
    : max_length_(max_length), bucket_tokens_(bucket_tokens) {
  TURBOESM_FAIL(
      "CudaDecodeGraph: this TurboESM was built without CUDA (TURBOESM_WITH_CUDA=OFF); "
      "model on ",
      model.device().str(), ", ", to_string(cache.kind()), " cache");
}

CudaDecodeGraph::~CudaDecodeGraph() = default;

int64_t CudaDecodeGraph::bucket_for(int64_t length) const {
  const int64_t up = (length + bucket_tokens_ - 1) / bucket_tokens_ * bucket_tokens_;
  return std::min(std::max<int64_t>(up, 1), max_length_);
}

at::Tensor CudaDecodeGraph::step(const at::Tensor&, const std::vector<double>&) {
  TURBOESM_FAIL("CudaDecodeGraph: built without CUDA");
}

#endif

}  // namespace turboesm::model
