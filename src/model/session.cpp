// SPDX-License-Identifier: MIT
#include "turboesm/model/session.h"

#include <c10/core/InferenceMode.h>

#include "turboesm/error.h"
#include "turboesm/model/decode_graph.h"

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

std::pair<at::Tensor, at::Tensor> Session::prepare(const at::Tensor& tokens_in,
                                                   const at::Tensor& mask_in,
                                                   const char* what) const {
  TURBOESM_CHECK(tokens_in.defined() && tokens_in.dim() == 2, "Session::", what,
                 ": tokens must be 2-D [batch, tokens], got ",
                 tokens_in.defined() ? tokens_in.dim() : 0, "-D");
  TURBOESM_CHECK(tokens_in.size(0) == cache_->batch(), "Session::", what, ": tokens have batch ",
                 tokens_in.size(0), ", the cache was made for batch ", cache_->batch());
  TURBOESM_CHECK(tokens_in.size(1) > 0, "Session::", what, ": no tokens");
  TURBOESM_CHECK(!at::isFloatingType(tokens_in.scalar_type()), "Session::", what,
                 ": tokens must be integer, got ", c10::toString(tokens_in.scalar_type()));
  const at::Tensor tokens = tokens_in.to(model_->device(), at::kLong);
  const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
  const int64_t vocab = model_->config().vocab_size;
  TURBOESM_CHECK(lo >= 0 && hi < vocab, "Session::", what, ": token ids must be in [0, ", vocab,
                 "), got range [", lo, ", ", hi, "]");
  at::Tensor mask;
  if (mask_in.defined()) {
    TURBOESM_CHECK(mask_in.sizes() == tokens.sizes(), "Session::", what,
                   ": attention_mask must match tokens ", tokens.sizes(), ", got ",
                   mask_in.sizes());
    mask = mask_in.to(model_->device()).ne(0);
  } else {
    mask = at::ones(tokens.sizes(), tokens.options().dtype(at::kBool));
  }
  return {tokens, mask};
}

at::Tensor Session::prefill(const at::Tensor& tokens_in, const at::Tensor& mask_in) {
  c10::InferenceMode guard;
  auto tm = prepare(tokens_in, mask_in, "prefill");
  const at::Tensor counts =
      TurboAttention::counts_from_mask(tm.second, tm.first.size(0), tm.first.size(1));
  cache_->clear();
  attention_.set_mode(TurboAttention::Mode::kPrefill);
  ForwardOptions opts;
  opts.backend = &attention_;
  // The plain forward with a caching backend: outputs identical to Esm2Model::forward.
  ForwardOutput out = model_->forward(tm.first, mask_in.defined() ? tm.second : at::Tensor(), opts);
  last_hidden_ = out.last_hidden_state;
  const at::Tensor masks =
      (tm.first.eq(model_->config().mask_token_id) & tm.second).sum(-1).to(at::kCPU);
  for (int64_t b = 0; b < cache_->batch(); ++b) {
    real_tokens_[b] = counts[b].item<int64_t>();
    mask_tokens_[b] = masks[b].item<int64_t>();
  }
  cache_->check_device_status();
  return last_hidden_;
}

at::Tensor Session::embed_appended(const at::Tensor& tokens, const at::Tensor& mask,
                                   const at::Tensor& counts) const {
  const EsmConfig& c = model_->config();
  at::Tensor obs;
  if (c.token_dropout) {
    // As Esm2Model::embed, but the <mask> ratio is over the whole sequence so far.
    const at::Tensor is_mask = tokens.eq(c.mask_token_id) & mask;
    std::vector<double> observed(static_cast<size_t>(cache_->batch()));
    const at::Tensor new_masks = is_mask.sum(-1).to(at::kCPU);
    for (int64_t b = 0; b < cache_->batch(); ++b) {
      const int64_t real = real_tokens_[b] + counts[b].item<int64_t>();
      const int64_t masks = mask_tokens_[b] + new_masks[b].item<int64_t>();
      // A sequence of masks only has every row zeroed: any finite factor will do.
      observed[b] = (real > 0 && masks < real) ? double(masks) / double(real) : 0.0;
    }
    obs = at::tensor(observed, at::kDouble).to(tokens.device(), at::kFloat);
  }
  return model_->embed_with_ratio(tokens, mask, obs);
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
  auto tm = prepare(tokens_in, mask_in, "append");
  const at::Tensor& tokens = tm.first;
  const at::Tensor& mask = tm.second;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const at::Tensor counts = TurboAttention::counts_from_mask(mask, B, T);
  // Positions continue each sequence: lengths[b] + 0, 1, ...
  const std::vector<int64_t>& len = cache_->lengths(cache_->num_layers() - 1);
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(model_->device());
  const at::Tensor pos = at::tensor(len, at::kLong).to(model_->device()).unsqueeze(1) +
                         at::arange(T, lopt).unsqueeze(0);  // [B, T]
  at::Tensor h = embed_appended(tokens, mask, counts);
  auto cs = model_->rotary().cos_sin(pos, model_->dtype());
  attention_.set_mode(TurboAttention::Mode::kAppend);
  const bool padded = !mask.all().item<bool>();
  for (int i = 0; i < model_->num_layers(); ++i) {
    Qkv qkv = model_->layer_qkv(i, h, cs.first, cs.second);
    AttentionInputs in;
    in.layer = i;
    in.q = qkv.q;
    in.k = qkv.k;
    in.v = qkv.v;
    if (padded) in.key_padding_mask = mask;
    at::Tensor attn = attention_.attend(in, nullptr);
    h = model_->layer_finish(i, h, attn);
  }
  last_hidden_ = model_->final_norm(h);
  const at::Tensor masks = (tokens.eq(model_->config().mask_token_id) & mask).sum(-1).to(at::kCPU);
  for (int64_t b = 0; b < B; ++b) {
    real_tokens_[b] += counts[b].item<int64_t>();
    mask_tokens_[b] += masks[b].item<int64_t>();
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
