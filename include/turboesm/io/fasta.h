// SPDX-License-Identifier: MIT
#pragma once
/// \file fasta.h
/// \brief Streaming, validating FASTA reader for protein sequences.
///
/// Rules: a record starts with '>'; its id is the first whitespace-delimited word of the header
/// (it may contain '/', '|', ...), the rest is the description. Sequence lines follow (multi-line
/// records are joined); blank lines are ignored; CRLF line ends are tolerated; whitespace inside
/// sequence lines is dropped; residues are uppercased (literal `<mask>` etc. are kept as written);
/// one trailing '*' (stop codon) is dropped. Every sequence is checked against the ESM alphabet
/// (EsmTokenizer). Errors are turboesm::Error "<file>:<line>: record '<id>': <what>, expected
/// <what>" for: empty file / no records, sequence data before the first header, a header without
/// id, an empty record, an unknown residue (with its 1-based position in the sequence), a duplicate
/// id, binary data (NUL or other control bytes), a line longer than the limit, a sequence longer
/// than the limit.

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace turboesm::io {

struct FastaRecord {
  std::string id;           ///< first word of the header
  std::string description;  ///< rest of the header, trimmed (may be empty)
  std::string sequence;     ///< uppercased residues, may contain literal special tokens
  std::size_t line = 0;     ///< 1-based line of the header
};

struct FastaOptions {
  /// Replace each unknown character with the literal "<unk>" (one token per character, so
  /// positions stay aligned with the input; HF EsmTokenizer instead merges a run of unknown
  /// characters into one <unk>) instead of failing.
  bool unknown_to_unk = false;
  /// Longest accepted line in bytes (bounded memory on junk input).
  std::size_t max_line_length = 1 << 20;
  /// Longest accepted sequence in tokens (residues; a literal <mask> counts as one); 0 = unlimited.
  std::size_t max_sequence_length = 0;
  /// Refuse a repeated id. Costs one stored id per record; callers that must run in memory
  /// independent of the file size (turboesm-embed --shard-records) turn it off and check ids
  /// themselves.
  bool check_duplicate_ids = true;
};

/// \brief Reads one record at a time; memory is bounded by the longest record (plus one id per
/// record for duplicate detection).
class FastaReader {
 public:
  /// \throws turboesm::Error if `path` cannot be opened.
  explicit FastaReader(const std::string& path, FastaOptions opts = {});
  ~FastaReader();
  FastaReader(FastaReader&&) noexcept;
  FastaReader& operator=(FastaReader&&) noexcept;

  /// \brief Reads the next record into `rec`. \return false at the end of the file.
  /// \throws turboesm::Error (see file comment); an empty file or one with no record throws on
  /// the first call.
  bool next(FastaRecord& rec);
  /// \brief Number of records returned so far.
  std::size_t count() const;
  const std::string& path() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

/// \brief All records of `path`. \throws as FastaReader.
std::vector<FastaRecord> read_fasta(const std::string& path, const FastaOptions& opts = {});

}  // namespace turboesm::io
