// SPDX-License-Identifier: MIT
#pragma once
/// \file collector.h
/// \brief Collects calibration samples: the post-RoPE keys and the values of every layer and head,
/// exactly as the KV cache receives them, from FASTA records run through the FP32 model.
///
/// ## What is recorded
/// The collector is an AttentionBackend: Esm2Model::forward hands it each layer's q/k/v (k with
/// rotary applied; the d^-0.5 query scaling applies to q only, never to k), it copies k and v (and
/// optionally q) and then runs exact attention, so the forward pass is the plain FP32 model's.
/// Every token of a record is recorded, `<cls>` and `<eos>` included (the cache stores them too).
///
/// ## Memory bound and record selection (deterministic)
/// At most `max_tokens` vectors per (layer, head) are kept. The forward pass is the expensive part
/// (an ESM-2 150M forward costs ~0.3 GFLOP per token), so instead of streaming the whole set into a
/// reservoir the collector chooses records up front: with `S = Σ (L_i + 2)` tokens in the file and
/// stride `s = ceil(S / max_tokens)`, records are visited in the order 0, s, 2s, …, 1, s+1, 2s+1, …
/// (every s-th record, then the next residue class), and the visit stops when `max_tokens` tokens
/// are collected; the last record visited contributes its first tokens only. A set that fits is
/// used whole. The choice spreads the budget over the file (which is grouped by family) and costs
/// a forward pass over ~max_tokens tokens only. Records longer than `max_residues` are cropped to
/// their first `max_residues` residues (ESM-2 was trained on crops of 1022).

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "turboesm/io/fasta.h"
#include "turboesm/model/attention.h"
#include "turboesm/model/esm2.h"

namespace turboesm::calibration {

/// \brief Options of collect_kv_samples.
struct CollectorOptions {
  int64_t max_tokens = 8192;     ///< vectors kept per (layer, head); > 0
  int64_t max_residues = 1022;   ///< longer records are cropped to this many residues; > 0
  bool collect_queries = false;  ///< also keep the (scaled, post-RoPE) queries
  /// Called after each record with (tokens collected, tokens planned). May be empty.
  std::function<void(int64_t, int64_t)> progress;
};

/// \brief Samples of one layer, CPU fp32 contiguous.
struct LayerSamples {
  at::Tensor k;  ///< [H, n, d] post-RoPE keys
  at::Tensor v;  ///< [H, n, d] values
  at::Tensor q;  ///< [H, n, d] queries (scaled, post-RoPE), or undefined
};

/// \brief The result of a collection run.
struct CollectedSamples {
  std::vector<LayerSamples> layers;  ///< [num_layers]
  int64_t tokens = 0;                ///< n: vectors per (layer, head)
  int64_t records_used = 0;          ///< records run through the model
  int64_t records_total = 0;         ///< records in the input
  int heads = 0;
  int head_dim = 0;
};

/// \brief The records to visit and how many tokens of each to keep (see the file comment).
struct CollectionPlan {
  std::vector<size_t> order;         ///< record indices in visit order
  std::vector<int64_t> keep_tokens;  ///< tokens kept of each visited record (≤ its L + 2)
  int64_t total_tokens = 0;          ///< Σ keep_tokens
};

/// \brief Plans which records (and how many of their tokens) a collection visits.
/// \param lengths residues per record (after cropping to max_residues)
/// \throws turboesm::Error if `lengths` is empty or max_tokens <= 0.
CollectionPlan plan_collection(const std::vector<int64_t>& lengths, int64_t max_tokens);

/// \brief AttentionBackend that records k/v (and q) of the first `keep` tokens of each layer into
/// preallocated buffers, then runs ExactAttention. Batch size 1.
class KvRecorder final : public model::AttentionBackend {
 public:
  /// \param layers, heads, head_dim model shape; \param capacity vectors per (layer, head)
  KvRecorder(int layers, int heads, int head_dim, int64_t capacity, bool record_queries);

  /// \brief The next forward pass records its first `keep` tokens at the current offset.
  void begin_record(int64_t keep);
  /// \brief Advances the offset by the tokens of the finished record.
  void end_record();

  at::Tensor attend(const model::AttentionInputs& in, at::Tensor* probs_out) override;

  /// \brief Vectors recorded so far per (layer, head).
  int64_t size() const { return offset_; }
  /// \brief Moves the buffers out, narrowed to size().
  std::vector<LayerSamples> take();

 private:
  int heads_, head_dim_;
  int64_t capacity_;
  bool record_queries_;
  int64_t offset_ = 0;
  int64_t keep_ = 0;
  std::vector<LayerSamples> buffers_;
  model::ExactAttention exact_;
};

/// \brief Token ids `<cls> residues <eos>` of a record, residues cropped to `max_residues`.
/// \throws turboesm::Error naming the record for an unknown residue or an empty sequence.
std::vector<int64_t> record_token_ids(const io::FastaRecord& record, int64_t max_residues);

/// \brief Runs `records` (selected per the file comment) through `model` and returns the samples.
/// The model must run in fp32 (calibration statistics of an fp16 forward would not be the FP32
/// model's); any device.
/// \throws turboesm::Error for an empty record list, bad options or a non-fp32 model.
CollectedSamples collect_kv_samples(const model::Esm2Model& model,
                                    const std::vector<io::FastaRecord>& records,
                                    const CollectorOptions& opts = {});

/// \brief Writes collected samples as safetensors (`layers.{i}.k` / `.v` [H, n, d] F32) with
/// `key` (any string identifying what produced them: model fingerprint, FASTA hash, options) in
/// the metadata, so that sweeps over fit options can skip the forward passes.
void save_samples(const std::string& path, const CollectedSamples& samples, const std::string& key,
                  bool overwrite);
/// \brief Reads samples written by save_samples.
/// \throws turboesm::Error if the file's key differs from `key` ("... were collected for a
/// different model, FASTA or options") or a tensor is missing or misshaped.
CollectedSamples load_samples(const std::string& path, const std::string& key);

}  // namespace turboesm::calibration
