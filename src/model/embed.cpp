// SPDX-License-Identifier: MIT
#include "turboesm/model/embed.h"

#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <sstream>

#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/batching.h"

namespace turboesm::model {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Copies a float32, contiguous CPU version of `t` into the writer.
void write_tensor(io::SafetensorsWriter& w, const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  w.write_next(c.data_ptr(), static_cast<size_t>(c.numel()) * sizeof(float));
}

}  // namespace

EmbedSummary embed_records(const Esm2Model& model, const std::vector<io::FastaRecord>& records,
                           const std::string& out_path, const EmbedOptions& opts) {
  c10::InferenceMode guard;
  const auto t0 = Clock::now();
  auto log = [&](const std::string& s) {
    if (opts.log) opts.log(s);
  };
  TURBOESM_CHECK(!records.empty(), "no sequences to embed");
  TURBOESM_CHECK(opts.max_tokens_per_batch >= 1, "--max-tokens-per-batch must be >= 1, got ",
                 opts.max_tokens_per_batch);
  TURBOESM_CHECK(opts.truncate >= 0, "--truncate must be >= 0, got ", opts.truncate);
  if (opts.logits) {
    TURBOESM_CHECK(model.weights().has_lm_head,
                   "--logits requested but the model has no LM head (lm_head.* tensors)");
  }
  if (opts.contacts) {
    TURBOESM_CHECK(model.weights().has_contact_head,
                   "--contacts requested but the model has no contact head (contact_head.*)");
  }
  std::vector<int> layers;  // normalized, unique, in the order given
  for (int k : opts.repr_layers) {
    const int n = model.normalize_layer(k);
    if (std::find(layers.begin(), layers.end(), n) == layers.end()) layers.push_back(n);
  }

  // Tokenize (records were validated by the FASTA reader; encode re-checks for direct callers).
  const auto& tok = io::EsmTokenizer::instance();
  std::vector<std::vector<int64_t>> tokens(records.size());
  std::vector<int64_t> lengths(records.size());
  std::set<std::string> ids;
  EmbedSummary sum;
  std::string first_long;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    TURBOESM_CHECK(ids.insert(r.id).second, "duplicate record id '", r.id, "'");
    std::vector<int64_t> res = tok.encode(r.sequence, false, opts.unknown_to_unk, r.id);
    TURBOESM_CHECK(!res.empty(), "record '", r.id, "' is empty");
    if (opts.truncate > 0 && static_cast<int64_t>(res.size()) > opts.truncate) {
      res.resize(static_cast<size_t>(opts.truncate));
    }
    if (static_cast<int64_t>(res.size()) > kEsmTrainingResidues) {
      if (sum.long_records++ == 0) {
        first_long = "'" + r.id + "' (" + std::to_string(res.size()) + " residues)";
      }
    }
    tokens[i].reserve(res.size() + 2);
    tokens[i].push_back(io::EsmTokenizer::kCls);
    tokens[i].insert(tokens[i].end(), res.begin(), res.end());
    tokens[i].push_back(io::EsmTokenizer::kEos);
    lengths[i] = static_cast<int64_t>(tokens[i].size());
  }
  if (sum.long_records > 0) {
    log("warning: " + std::to_string(sum.long_records) + " record(s) longer than " +
        std::to_string(kEsmTrainingResidues) + " residues (ESM-2's training length), e.g. " +
        first_long + "; they run unchanged (use --truncate 1022 to cut them as fair-esm does)");
  }

  // Output specs in processing order, so tensors stream out batch by batch.
  const auto batches = make_batches(lengths, opts.max_tokens_per_batch);
  const int64_t H = model.config().hidden_size, V = model.config().vocab_size;
  std::vector<io::SafetensorsWriter::Spec> specs;
  for (const auto& batch : batches) {
    for (size_t i : batch) {
      const int64_t T = lengths[i], L = T - 2;
      const std::string& id = records[i].id;
      specs.push_back({id + "/last_hidden_state", io::DType::F32, {T, H}});
      specs.push_back({id + "/mean", io::DType::F32, {H}});
      if (opts.logits) specs.push_back({id + "/logits", io::DType::F32, {T, V}});
      if (opts.contacts) specs.push_back({id + "/contacts", io::DType::F32, {L, L}});
      for (int k : layers)
        specs.push_back({id + "/layer_" + std::to_string(k), io::DType::F32, {T, H}});
    }
  }
  io::WriteOptions wo;
  wo.overwrite = opts.overwrite;
  wo.metadata["format"] = "pt";
  io::SafetensorsWriter writer(out_path, std::move(specs), wo);

  ForwardOptions fo;
  fo.need_logits = opts.logits;
  fo.need_contacts = opts.contacts;
  fo.repr_layers = layers;
  auto last_progress = Clock::now();
  for (const auto& batch : batches) {
    std::vector<const std::vector<int64_t>*> seqs;
    for (size_t i : batch) seqs.push_back(&tokens[i]);
    PaddedBatch pb = pad_batch(seqs, io::EsmTokenizer::kPad);
    ForwardOutput out = model.forward(pb.tokens, pb.attention_mask, fo);
    at::Tensor lhs = out.last_hidden_state.to(at::kCPU, at::kFloat);
    for (size_t b = 0; b < batch.size(); ++b) {
      const int64_t bi = static_cast<int64_t>(b);
      const int64_t T = lengths[batch[b]], L = T - 2;
      at::Tensor h = lhs[bi].narrow(0, 0, T);
      write_tensor(writer, h);
      write_tensor(writer, h.narrow(0, 1, L).mean(0));
      if (opts.logits) write_tensor(writer, out.logits[bi].narrow(0, 0, T));
      if (opts.contacts) write_tensor(writer, out.contacts[bi].narrow(0, 0, L).narrow(1, 0, L));
      for (int k : layers) write_tensor(writer, out.hidden_states.at(k)[bi].narrow(0, 0, T));
      sum.records++;
      sum.residues += L;
    }
    if (opts.log && seconds_since(last_progress) >= opts.progress_interval_s &&
        sum.records < records.size()) {
      last_progress = Clock::now();
      char line[160];
      std::snprintf(line, sizeof line, "embedded %zu/%zu records, %lld residues, %.0f residues/s",
                    sum.records, records.size(), static_cast<long long>(sum.residues),
                    sum.residues / std::max(seconds_since(t0), 1e-9));
      log(line);
    }
  }
  writer.commit();
  sum.seconds = seconds_since(t0);
  return sum;
}

}  // namespace turboesm::model
