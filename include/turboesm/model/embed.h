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
///
/// Single file (embed_records): the caller holds every record (turboesm-embed reads the whole
/// FASTA first). Sharded (embed_fasta_sharded, `turboesm-embed --shard-records N`): the FASTA is
/// streamed and every N records become one file `<dir>/shard-00000.safetensors`, ... (same keys
/// and tensors as the single file; records in FASTA order across shards, length-sorted within
/// one), listed by `<dir>/index.json`:
///
///     {"format": "turboesm-embed-shards", "version": 1,
///      "options": {"logits": "false", "model_fingerprint": "…", "shard_records": "1000", …},
///      "shards": [{"file": "shard-00000.safetensors", "records": 1000, "first_id": "P1",
///                  "last_id": "P1000", "records_sha256": "…", "bytes": 5242880,
///                  "sha256": "…"}, …],
///      "total_records": 1000, "complete": false}
///
/// `records_sha256` hashes "id\tsequence\n" of the shard's records in FASTA order; `sha256` and
/// `bytes` describe the file. Each shard is written atomically (temp + fsync + rename) and the
/// index is rewritten atomically after every finished shard, so the directory only ever holds
/// complete shards and an index naming only complete shards; `complete` becomes true with the
/// last shard. Memory holds one shard's records and one batch's tensors, plus 8 bytes per record
/// for the duplicate-id check (8 MB per million records) and one index entry per shard.

#include <cstdint>
#include <functional>
#include <map>
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
  /// Log the warning about records longer than kEsmTrainingResidues (the sharded run turns it
  /// off per shard and warns once at the end).
  bool warn_long_records = true;
};

struct EmbedSummary {
  std::size_t records = 0;
  int64_t residues = 0;      ///< residue tokens embedded (after truncation)
  double seconds = 0.0;      ///< wall time of the model work and writing
  int64_t long_records = 0;  ///< records longer than ESM-2's training length (1022 residues)
};

/// ESM-2 was trained on crops of at most this many residues.
constexpr int64_t kEsmTrainingResidues = 1022;

/// \brief Options of a sharded run (see the file comment).
struct ShardOptions {
  int64_t shard_records = 0;  ///< records per shard file (>= 1)
  /// Continue an interrupted run: keep the shards the index lists whose file still matches
  /// (size and sha256) and whose records match the FASTA's, embed the rest. Refused when the
  /// options or the FASTA changed. Without an index, starts from the first record.
  bool resume = false;
  /// Further settings that change the output (model fingerprint, dtype, device, ...), stored in
  /// the index's "options" next to the EmbedOptions ones and compared on resume.
  std::map<std::string, std::string> identity;
};

struct ShardedEmbedSummary : EmbedSummary {
  std::size_t shards = 0;           ///< shards listed by the index at the end
  std::size_t shards_skipped = 0;   ///< shards kept from an interrupted run (--resume)
  std::size_t records_skipped = 0;  ///< their records
};

/// \brief One shard as index.json lists it.
struct ShardEntry {
  std::string file;  ///< name inside the output directory: shard_file_name(position)
  std::size_t records = 0;
  std::string first_id, last_id;
  std::string records_sha256;  ///< sha256 of "id\tsequence\n" over the records, FASTA order
  std::uint64_t bytes = 0;     ///< file size
  std::string sha256;          ///< of the whole file
};

/// \brief The parsed `index.json` of a sharded output directory.
struct ShardIndex {
  int version = 1;
  std::map<std::string, std::string> options;  ///< settings that change the output
  std::vector<ShardEntry> shards;
  std::size_t total_records = 0;  ///< sum of the shards' records
  bool complete = false;          ///< the run reached the end of the FASTA
};

/// Name of the index file inside a sharded output directory.
inline constexpr const char* kShardIndexName = "index.json";
/// Version of the index layout; readers refuse any other.
inline constexpr int kShardIndexVersion = 1;

/// \brief "shard-00000.safetensors" for k = 0 (five digits, more when k needs them).
std::string shard_file_name(std::size_t k);

/// \brief Reads and validates `path` (an index.json).
/// \throws turboesm::Error "<path>: <what is wrong>, expected <what>" for unreadable files,
/// malformed JSON, a wrong format or version, missing keys or keys of the wrong type, shard files
/// not named shard_file_name(position), or counts that do not add up.
ShardIndex read_shard_index(const std::string& path);

/// \brief Cheap checks of a sharded output directory before the model is loaded: the parent
/// exists, `out_dir` is not a file, and a non-empty directory is refused unless `overwrite` or
/// `resume` (not both). \throws turboesm::Error naming the path and what was expected.
void check_shard_output(const std::string& out_dir, bool overwrite, bool resume);

/// \brief Streams `fasta_path` through `model`, writing shards and the index into `out_dir`
/// (created if missing; its parent must exist). `opts.overwrite` removes a previous run's index,
/// shards and temporary files first (other files in the directory are left alone).
/// \throws turboesm::Error as embed_records and read_shard_index, for a duplicate id (naming the
/// FASTA line and the shard holding the first one), and on --resume for changed options or a
/// changed FASTA (naming the option or the shard and records). Shards finished before an error
/// stay listed by the index, so --resume continues after it.
ShardedEmbedSummary embed_fasta_sharded(const Esm2Model& model, const std::string& fasta_path,
                                        const io::FastaOptions& fasta_opts,
                                        const std::string& out_dir, const EmbedOptions& opts,
                                        const ShardOptions& shard);

/// \brief Embeds `records` with `model` and writes `out_path` atomically.
/// \throws turboesm::Error for an existing output without overwrite, an empty record list, bad
/// options (naming them), a duplicate output key, or I/O failure (no partial output remains).
EmbedSummary embed_records(const Esm2Model& model, const std::vector<io::FastaRecord>& records,
                           const std::string& out_path, const EmbedOptions& opts);

}  // namespace turboesm::model
