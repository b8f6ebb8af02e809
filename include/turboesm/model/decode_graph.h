// SPDX-License-Identifier: MIT
#pragma once
/// \file decode_graph.h
/// \brief The whole-model decode step (one token per sequence) captured in a CUDA graph.
///
/// An eager Session::append step of esm2_t33_650M launches several hundred small kernels and
/// synchronises with the host many times; at batch 1 the GPU then waits on the CPU. This class
/// captures the step once per cache-length bucket and replays it:
///  - static shapes: the cache reserves `max_length` tokens (KvCache::reserve), so no buffer
///    moves; the step's length bound is the bucket (lengths rounded up to `bucket_tokens`);
///  - lengths on the device: per-sequence cache lengths and positions live in device buffers that
///    the graph reads (quantize-on-append writes at lengths[b], the decode kernel reads
///    lengths[b] + 1 tokens) and advances at its end, so no host value is baked into the graph;
///  - no host synchronisation or host→device copy inside: KvCache::device_step (turbo: fused
///    quantize_append + turbo_decode; fp16/fp32: scatter + masked SDPA), Esm2Model layers,
///    rotary tables from the device positions.
/// Per step the host uploads the tokens and the token-dropout ratios, replays, and copies the
/// hidden states out of the graph's static output. The graph is recaptured when the bucket
/// changes or the cache was reallocated; the device lengths are re-read from the cache when the
/// host lengths changed behind its back (prefill, eager append).
///
/// Normally used through Session::enable_cuda_graph; the class is public for tests and
/// benchmarks. Not thread-safe (one session, one thread).

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"

namespace turboesm::model {

/// \brief Whether the decode-step kernels (decode_gemv, the Q/K/V glue, quantize-on-append,
/// turbo_decode) use programmatic dependent launch on CUDA (include/turboesm/kernels/pdl.h): on
/// by default; off launches them the plain way (for measurements). Process-wide; set it before
/// capturing graphs (captured graphs keep the launches they were captured with). No-op without
/// CUDA.
void set_programmatic_dependent_launch(bool enabled);
bool programmatic_dependent_launch();

class CudaDecodeGraph {
 public:
  /// \param model, cache on the same CUDA device; both must outlive this object. The cache must
  ///        support device steps and hold capacity ≥ max_length (Session::enable_cuda_graph
  ///        reserves it).
  /// \param max_length largest cache length (per sequence, after the step) a replay may reach
  /// \param bucket_tokens length granularity of the captured graphs
  /// \throws turboesm::Error for a CPU model, a cache without device steps, too small a capacity,
  ///         or a build without CUDA.
  CudaDecodeGraph(const Esm2Model& model, KvCache& cache, int64_t max_length,
                  int64_t bucket_tokens);
  ~CudaDecodeGraph();
  CudaDecodeGraph(const CudaDecodeGraph&) = delete;
  CudaDecodeGraph& operator=(const CudaDecodeGraph&) = delete;

  /// \brief Appends one token per sequence through the graph (captured first when needed).
  /// \param tokens [batch, 1] int64 CPU, ids already range-checked
  /// \param observed_mask_ratio [batch] token-dropout ratio of each sequence including this token
  ///        (as Session computes it)
  /// \return hidden states [batch, 1, hidden] (after the final LayerNorm), a fresh tensor
  /// \throws turboesm::Error when a sequence would exceed max_length, or on a device-side error
  at::Tensor step(const at::Tensor& tokens, const std::vector<double>& observed_mask_ratio);

  /// \brief The bucket (static length bound) of a step whose longest sequence reaches `length`.
  int64_t bucket_for(int64_t length) const;
  int64_t max_length() const { return max_length_; }
  int64_t bucket_tokens() const { return bucket_tokens_; }
  /// \brief Graph captures so far (tests check that replays do not recapture).
  int64_t captures() const { return captures_; }
  /// \brief Graph replays so far.
  int64_t replays() const { return replays_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t max_length_ = 0;
  int64_t bucket_tokens_ = 0;
  int64_t captures_ = 0;
  int64_t replays_ = 0;
};

}  // namespace turboesm::model
