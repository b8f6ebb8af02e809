// SPDX-License-Identifier: MIT
#pragma once
/// \file embed.h
/// \brief The embed job behind `turboesm-embed`: FASTA in, one safetensors file of float32
/// per-sequence outputs out.
///
/// Keys, for each record (id = first word of the FASTA header; it may itself contain '/', so
/// readers split a key at its last '/'):
///   `<id>/last_hidden_state` [L+2, hidden] (rows for `<cls>`/`<eos>` included, as HF returns),
///   `<id>/mean` [hidden] (mean over the L residue rows), `<id>/logits` [L+2, vocab],
///   `<id>/contacts` [L, L], `<id>/layer_<k>` [L+2, hidden] (k normalized as fair-esm does: -1 →
///   layers).
/// Sequences are processed in length-sorted batches (fair-esm); tensors are streamed to the
/// output in that order, so memory holds one batch. The output appears only when complete.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "turboesm/io/fasta.h"
#include "turboesm/model/esm2.h"

namespace turboesm::model {

struct EmbedOptions {
  bool logits = false;
  bool contacts = false;
  std::vector<int> repr_layers;         ///< fair-esm numbering (0 = embeddings, -1 = last)
  int64_t max_tokens_per_batch = 4096;  ///< padded tokens per batch (fair-esm default)
  int64_t truncate = 0;                 ///< keep the first N residue tokens (0: no truncation)
  bool overwrite = false;
  bool unknown_to_unk = false;  ///< map unknown residue letters to `<unk>`
  /// Receives warnings and progress lines (no trailing newline); may be empty.
  std::function<void(const std::string&)> log;
  double progress_interval_s = 2.0;  ///< minimum seconds between progress lines
};

struct EmbedSummary {
  std::size_t records = 0;
  int64_t residues = 0;      ///< residue tokens embedded (after truncation)
  double seconds = 0.0;      ///< wall time of the model work and writing
  int64_t long_records = 0;  ///< records longer than ESM-2's training length (1022 residues)
};

/// ESM-2 was trained on crops of at most this many residues.
constexpr int64_t kEsmTrainingResidues = 1022;

/// \brief Embeds `records` with `model` and writes `out_path` atomically.
/// \throws turboesm::Error for an existing output without overwrite, an empty record list, bad
/// options (naming them), a duplicate output key, or I/O failure (no partial output remains).
EmbedSummary embed_records(const Esm2Model& model, const std::vector<io::FastaRecord>& records,
                           const std::string& out_path, const EmbedOptions& opts);

}  // namespace turboesm::model
