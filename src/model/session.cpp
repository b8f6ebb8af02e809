// SPDX-License-Identifier: MIT
#include "turboesm/model/session.h"

#include <c10/core/InferenceMode.h>

#include <string>

#include "turboesm/error.h"
#include "turboesm/model/decode_graph.h"

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace turboesm::model {

Session::Session(std::shared_ptr<const Esm2Model> model, std::unique_ptr<KvCache> cache)
    : model_(std::move(model)),
      cache_(std::move(cache)),
      attention_(cache_.get(), TurboAttention::Mode::kPrefill) {
  TURBOESM_CHECK(model_ != nullptr, "Session needs a model, got null");
  const EsmConfig& c = model_->config();
  const CacheShape& s = cache_->shape();
  TURBOESM_CHECK(s.layers == c.num_hidden_layers && s.heads == c.num_attention_heads &&
                     s.head_dim == c.head_dim(),
                 "Session: the cache shape (layers ", s.layers, ", heads ", s.heads, ", head_dim ",
                 s.head_dim, ") does not match the model (layers ", c.num_hidden_layers, ", heads ",
                 c.num_attention_heads, ", head_dim ", c.head_dim(), ")");
  TURBOESM_CHECK(s.device == model_->device(), "Session: the cache is on ", s.device.str(),
                 " but the model on ", model_->device().str());
  real_tokens_.assign(static_cast<size_t>(s.batch), 0);
  mask_tokens_.assign(static_cast<size_t>(s.batch), 0);
}

Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

void Session::enable_cuda_graph(int64_t max_length, int64_t bucket_tokens) {
  TURBOESM_CHECK(model_->device().is_cuda(), "Session::enable_cuda_graph: the session is on ",
                 model_->device().str(), "; CUDA graphs need a CUDA model and cache");
  TURBOESM_CHECK(cache_->supports_device_step(), "Session::enable_cuda_graph: the ",
                 to_string(cache_->kind()),
                 " cache has no device-resident step (supported: turbo, fp16, fp32)");
  TURBOESM_CHECK(max_length > 0 && bucket_tokens > 0,
                 "Session::enable_cuda_graph: max_length and bucket_tokens must be > 0, got ",
                 max_length, " and ", bucket_tokens);
  graph_.reset();
  c10::InferenceMode guard;
  cache_->reserve(max_length);
  graph_ = std::make_unique<CudaDecodeGraph>(*model_, *cache_, max_length, bucket_tokens);
}

void Session::disable_cuda_graph() { graph_.reset(); }

TokenBatch Session::prepare(const at::Tensor& tokens_in, const at::Tensor& mask_in,
                            const char* what) const {
  const std::string pre = std::string("Session::") + what;
  TURBOESM_CHECK(tokens_in.defined() && tokens_in.dim() == 2, pre,
                 ": tokens must be 2-D [batch, tokens], got ",
                 tokens_in.defined() ? tokens_in.dim() : 0, "-D");
  TURBOESM_CHECK(tokens_in.size(0) == cache_->batch(), pre, ": tokens have batch ",
                 tokens_in.size(0), ", the cache was made for batch ", cache_->batch());
  TURBOESM_CHECK(tokens_in.size(1) > 0, pre, ": no tokens");
  const EsmConfig& c = model_->config();
  TokenBatch tb =
      make_token_batch(tokens_in, mask_in, c.vocab_size, c.mask_token_id, model_->device(), pre);
  TURBOESM_CHECK(tb.right_padded, pre,
                 ": the KV cache needs right-padded batches (real tokens first, then padding); "
                 "the attention mask has a padding position before a real token");
  return tb;
}

at::Tensor Session::prefill(const at::Tensor& tokens_in, const at::Tensor& mask_in) {
  c10::InferenceMode guard;
  const TokenBatch tb = prepare(tokens_in, mask_in, "prefill");
  cache_->clear();
  attention_.set_mode(TurboAttention::Mode::kPrefill);
  ForwardOptions opts;
  opts.backend = &attention_;
  // The plain forward with a caching backend: outputs identical to Esm2Model::forward.
  ForwardOutput out = forward_writing_cache(tb, opts);
  last_hidden_ = out.last_hidden_state;
  real_tokens_ = tb.real;
  mask_tokens_ = tb.mask_tokens;
  cache_->check_device_status();
  return last_hidden_;
}

// Why two extra streams (kernels/NOTES.md "Session 20"): on one stream every layer's cache write
// sits between the layer's attention and its output projection, ~30 µs per layer for the 650M at
// batch 4, all of it added to the prefill. On a side stream of the same priority the write's CTAs
// are dispatched as soon as it is launched and delay the next GEMM about as much. With the forward
// on a high-priority stream, the block scheduler dispatches the forward's CTAs first, and the
// writes run in what the forward leaves idle: the last waves of its GEMMs and attention, its
// memory-bound LayerNorm / elementwise kernels.
// Small prefills keep the writes on the caller's stream (Session::kSideWritesMinTokens): at batch
// 1 (1026 positions) side writes measured 2–3× the serial overhead; there the forward's kernels
// are small and latency-bound, and write CTAs resident on an SM hold the room its next kernel
// waits for (consistent with the measurements, not separated).
ForwardOutput Session::forward_writing_cache(const TokenBatch& tb, const ForwardOptions& opts) {
#ifdef TURBOESM_WITH_CUDA
  if (cache_->side_writes() && cache_->device().is_cuda() &&
      tb.tokens.numel() >= side_writes_min_tokens_) {
    // The pages outlive the call: allocated here, on the caller's stream (the caching allocator
    // ties a block to the stream it was allocated on).
    cache_->reserve(tb.tokens.size(1));
    const c10::DeviceIndex dev = cache_->device().index();
    const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(dev);
    const c10::cuda::CUDAStream forward =
        c10::cuda::getStreamFromPool(/*isHighPriority=*/true, dev);
    at::cuda::CUDAEvent fork, join;
    fork.record(caller);
    fork.block(forward);
    ForwardOutput out;
    {
      c10::cuda::CUDAStreamGuard guard(forward);
      cache_->begin_side_writes();
      try {
        out = model_->forward(tb, opts);
      } catch (...) {
        try {  // order whatever was launched before the caller's next work
          cache_->end_side_writes();
          join.record(forward);
          join.block(caller);
        } catch (...) {  // the forward's error is the one to report
        }
        throw;
      }
      cache_->end_side_writes();
      join.record(forward);
    }
    join.block(caller);
    // The outputs were allocated on the forward's stream and are used on the caller's.
    auto on_caller = [&](const at::Tensor& t) {
      if (t.defined() && t.is_cuda()) t.record_stream(caller);
    };
    on_caller(out.last_hidden_state);
    on_caller(out.logits);
    on_caller(out.contacts);
    for (const auto& kv : out.hidden_states) on_caller(kv.second);
    return out;
  }
#endif
  return model_->forward(tb, opts);
}

at::Tensor Session::embed_appended(const TokenBatch& tb) const {
  const EsmConfig& c = model_->config();
  at::Tensor obs;
  if (c.token_dropout) {
    // As Esm2Model::embed, but the <mask> ratio is over the whole sequence so far.
    std::vector<float> observed(static_cast<size_t>(cache_->batch()));
    for (size_t b = 0; b < observed.size(); ++b) {
      const int64_t real = real_tokens_[b] + tb.real[b];
      const int64_t masks = mask_tokens_[b] + tb.mask_tokens[b];
      // A sequence of masks only has every row zeroed: any finite factor will do.
      observed[b] = (real > 0 && masks < real)
                        ? static_cast<float>(static_cast<double>(masks) / static_cast<double>(real))
                        : 0.0f;
    }
    obs = to_device_async(at::tensor(observed, at::kFloat), tb.tokens.device());
  }
  // The mask multiply needs a mask: all real when none was given.
  const at::Tensor mask =
      tb.mask.defined() ? tb.mask : at::ones_like(tb.tokens, tb.tokens.options().dtype(at::kBool));
  return model_->embed_with_ratio(tb.tokens, mask, obs);
}

at::Tensor Session::append(const at::Tensor& tokens_in, const at::Tensor& mask_in) {
  c10::InferenceMode guard;
  if (graph_ && tokens_in.defined() && tokens_in.dim() == 2 && tokens_in.size(1) == 1 &&
      tokens_in.size(0) == cache_->batch() && !at::isFloatingType(tokens_in.scalar_type())) {
    // Graph path: one real token per sequence, checked on the host (no device round trip).
    bool take = !mask_in.defined() ||
                (mask_in.sizes() == tokens_in.sizes() && mask_in.ne(0).all().item<bool>());
    for (int64_t n : lengths()) take = take && n + 1 <= graph_->max_length();
    if (take) {
      const at::Tensor tok = tokens_in.to(at::kCPU, at::kLong).contiguous();
      const int64_t* tp = tok.data_ptr<int64_t>();
      const int64_t B = tok.size(0), vocab = model_->config().vocab_size;
      const int64_t mask_id = model_->config().mask_token_id;
      std::vector<double> observed(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) {
        TURBOESM_CHECK(tp[b] >= 0 && tp[b] < vocab, "Session::append: token ids must be in [0, ",
                       vocab, "), got ", tp[b]);
        const int64_t real = real_tokens_[b] + 1;
        const int64_t masks = mask_tokens_[b] + (tp[b] == mask_id ? 1 : 0);
        observed[b] = (real > 0 && masks < real) ? double(masks) / double(real) : 0.0;
      }
      last_hidden_ = graph_->step(tok, observed);
      for (int64_t b = 0; b < B; ++b) {
        real_tokens_[b] += 1;
        mask_tokens_[b] += tp[b] == mask_id ? 1 : 0;
      }
      return last_hidden_;
    }
  }
  const TokenBatch tb = prepare(tokens_in, mask_in, "append");
  const int64_t T = tb.length();
  // Positions continue each sequence: lengths[b] + 0, 1, ...
  const std::vector<int64_t>& len = cache_->lengths(cache_->num_layers() - 1);
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(model_->device());
  const at::Tensor pos =
      to_device_async(at::tensor(len, at::kLong), model_->device()).unsqueeze(1) +
      at::arange(T, lopt).unsqueeze(0);  // [B, T]
  at::Tensor h = embed_appended(tb);
  auto cs = model_->rotary().cos_sin(pos, model_->dtype());
  attention_.set_mode(TurboAttention::Mode::kAppend);
  for (int i = 0; i < model_->num_layers(); ++i) {
    Qkv qkv = model_->layer_qkv(i, h, cs.first, cs.second);
    AttentionInputs in;
    in.layer = i;
    in.q = qkv.q;
    in.k = qkv.k;
    in.v = qkv.v;
    if (tb.padded) {
      in.key_padding_mask = tb.mask;
      in.key_padding_mask_host = tb.mask_host;
    }
    at::Tensor attn = attention_.attend(in, nullptr);
    h = model_->layer_finish(i, h, attn);
  }
  last_hidden_ = model_->final_norm(h);
  for (size_t b = 0; b < tb.real.size(); ++b) {
    real_tokens_[b] += tb.real[b];
    mask_tokens_[b] += tb.mask_tokens[b];
  }
  cache_->check_device_status();
  return last_hidden_;
}

at::Tensor Session::logits() const {
  TURBOESM_CHECK(last_hidden_.defined(), "Session::logits: call prefill or append first");
  c10::InferenceMode guard;
  return model_->lm_head(last_hidden_);
}

}  // namespace turboesm::model
