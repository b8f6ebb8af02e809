// SPDX-License-Identifier: MIT
#pragma once
/// \file session.h
/// \brief Incremental ESM-2 inference over a KV cache (DESIGN "Decode semantics").
///
/// \code
///   auto model = turboesm::model::Esm2Model::load(dir);
///   auto spec = ...;  // TurboCacheSpec from a checkpoint, or TurboCacheSpec::random
///   Session s(model, make_kv_cache(CacheKind::kTurbo, model->config(), 1, model->device(),
///   &spec)); s.prefill(prefix_tokens);           // exact attention, every layer's K/V cached
///   s.append(next_token);               // attends to the cache; hidden states of the new token
///   at::Tensor logits = s.logits();     // MLM logits of the appended positions
///   int64_t bytes = s.kv_bytes();
/// \endcode
/// prefill(tokens) runs the plain model (bit-identical outputs) and fills the cache; append(tokens)
/// runs the new tokens at positions continuing each sequence, attending to all cached tokens plus
/// themselves. Earlier tokens do not see later ones (their K/V are frozen in the cache), which is
/// what makes the step O(cached tokens) instead of a full re-run.
///
/// Token dropout (ESM-2): appended embeddings are scaled with the `<mask>` ratio of the whole
/// sequence so far (prefix + appended real tokens), the ratio a full forward would use.
///
/// CUDA graphs (decode_graph.h): after `enable_cuda_graph(max_length)`, append() of one token per
/// sequence without padding replays a captured whole-model step (one graph launch instead of
/// hundreds of kernel launches and host synchronisations); other calls run eagerly. Results equal
/// the eager step's (same kernels and shapes; the decode kernel's split count may follow the
/// graph's length bucket instead of the cache capacity, which only reorders float sums).

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/token_batch.h"
#include "turboesm/model/turbo_attention.h"

namespace turboesm::model {

class CudaDecodeGraph;

class Session {
 public:
  /// \param model the model (shared, read-only)
  /// \param cache an empty cache of the model's shape (batch = the batch of every call)
  Session(std::shared_ptr<const Esm2Model> model, std::unique_ptr<KvCache> cache);
  ~Session();
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;

  /// \brief Replays single-token appends from CUDA graphs (see the file comment). Reserves
  /// `max_length` tokens per sequence in the cache; steps whose cache would exceed it run eagerly.
  /// One graph is captured per length bucket (lengths rounded up to `bucket_tokens`; the dense
  /// caches attend over the whole bucket with a mask, the turbo kernel reads only real tokens)
  /// and recaptured when the step moves to another bucket.
  /// \throws turboesm::Error when the session is not on CUDA, the cache kind has no device step
  /// (int8, fp8), or the build has no CUDA.
  void enable_cuda_graph(int64_t max_length, int64_t bucket_tokens = 256);
  /// \brief Back to eager appends (frees the graphs).
  void disable_cuda_graph();
  /// \brief The decode graph, or nullptr when not enabled.
  const CudaDecodeGraph* cuda_graph() const { return graph_.get(); }

  /// Prefills of at least this many token positions (B × T) write a CUDA cache on a side stream
  /// under a high-priority forward (KvCache::begin_side_writes; kernels/NOTES.md "Session 20").
  /// H100, 650M, 1024 residues, turbo cache, overhead over the plain forward, side vs serial
  /// writes: batch 4 (4104 positions) +6.6–6.9 % vs +9.2–9.6 %, batch 2 +8.5 vs +10.6 %, batch 1
  /// +18.7–20.0 % vs +7.3–10.1 % (there the write's CTAs hold SMs the forward's next, small,
  /// latency-bound kernels wait for).
  static constexpr int64_t kSideWritesMinTokens = 2048;
  /// \brief Changes that threshold (0: every CUDA prefill). The cache's
  /// KvCache::set_side_writes(false) turns side writes off whatever the size.
  void set_side_writes_min_tokens(int64_t tokens) { side_writes_min_tokens_ = tokens; }

  /// \brief Runs the prefix with exact attention and caches every layer's K/V. Clears the cache.
  /// \param tokens [B, T] integer token ids, right-padded with `<pad>`
  /// \param attention_mask [B, T] non-zero = real token, or undefined = all real
  /// \return last hidden states [B, T, hidden] (after the final LayerNorm), = last_hidden()
  at::Tensor prefill(const at::Tensor& tokens, const at::Tensor& attention_mask = {});

  /// \brief Appends tokens at positions lengths()[b], lengths()[b] + 1, ... of each sequence.
  /// \param tokens [B, Tn] integer token ids, right-padded
  /// \param attention_mask [B, Tn] non-zero = real token (a sequence may add 0 tokens), or
  ///        undefined = all real
  /// \return hidden states of the appended positions [B, Tn, hidden] (after the final LayerNorm;
  ///         padded rows are unspecified), = last_hidden()
  at::Tensor append(const at::Tensor& tokens, const at::Tensor& attention_mask = {});

  /// \brief Hidden states [B, T, hidden] of the last prefill/append call.
  const at::Tensor& last_hidden() const { return last_hidden_; }
  /// \brief MLM logits [B, T, vocab] of the last prefill/append call (computed on demand).
  at::Tensor logits() const;

  /// \brief Cached tokens per sequence.
  const std::vector<int64_t>& lengths() const { return cache_->lengths(); }
  /// \brief DESIGN "Memory accounting" bytes of the cache (KvCache::kv_bytes).
  int64_t kv_bytes() const { return cache_->kv_bytes(); }
  /// \brief Bytes the cache buffers really take (KvCache::allocated_bytes).
  int64_t allocated_bytes() const { return cache_->allocated_bytes(); }

  const KvCache& cache() const { return *cache_; }
  KvCache& cache() { return *cache_; }
  const Esm2Model& model() const { return *model_; }

 private:
  /// Shape checks against the cache, then make_token_batch (ids, mask, counts checked on the
  /// host; token_batch.h); the mask must be right-padded.
  TokenBatch prepare(const at::Tensor& tokens, const at::Tensor& mask, const char* what) const;
  /// The prefill's forward (attention_ in prefill mode): its cache writes on the cache's side
  /// stream (KvCache::begin_side_writes) and, on CUDA, the forward on a high-priority stream, both
  /// joined back into the caller's stream before it returns (see session.cpp).
  ForwardOutput forward_writing_cache(const TokenBatch& tb, const ForwardOptions& opts);
  /// Embeddings of appended tokens with the cumulative token-dropout ratio.
  at::Tensor embed_appended(const TokenBatch& batch) const;

  std::shared_ptr<const Esm2Model> model_;
  std::unique_ptr<KvCache> cache_;
  TurboAttention attention_;
  at::Tensor last_hidden_;
  std::vector<int64_t> real_tokens_;  // per sequence: real tokens so far
  std::vector<int64_t> mask_tokens_;  // per sequence: <mask> tokens among them
  std::unique_ptr<CudaDecodeGraph> graph_;
  int64_t side_writes_min_tokens_ = kSideWritesMinTokens;  // set_side_writes_min_tokens
};

}  // namespace turboesm::model
