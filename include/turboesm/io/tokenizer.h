// SPDX-License-Identifier: MIT
#pragma once
/// \file tokenizer.h
/// \brief The ESM-2 alphabet, exactly as Hugging Face `EsmTokenizer` (and fair-esm) number it.
///
/// Ids: `<cls>`=0 `<pad>`=1 `<eos>`=2 `<unk>`=3, `L A G V S E R T I D P K Q N F Y M H W C X B U Z
/// O . -` = 4..30, `<null_1>`=31, `<mask>`=32.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace turboesm::io {

class EsmTokenizer {
 public:
  static constexpr int64_t kCls = 0, kPad = 1, kEos = 2, kUnk = 3, kNull1 = 31, kMask = 32;
  static constexpr int64_t kVocabSize = 33;
  /// \brief One past the last residue id (4..30 are single-character residue tokens).
  static constexpr int64_t kFirstResidue = 4, kEndResidue = 31;

  /// \brief The process-wide tokenizer (stateless, thread-safe).
  static const EsmTokenizer& instance();

  /// \brief Sequence string → token ids.
  ///
  /// `<cls> residues <eos>` when `add_special`. Literal `<mask>`, `<unk>`, `<cls>`, `<eos>`,
  /// `<pad>`, `<null_1>` inside the string are one token each (exact lowercase spelling, as HF
  /// matches them). Other characters are residues and are uppercased. Whitespace is skipped.
  /// \param record_id named in errors when not empty.
  /// \param unknown_to_unk map unknown characters to `<unk>` instead of throwing.
  /// \throws turboesm::Error naming the character, its 1-based position and `record_id`.
  std::vector<int64_t> encode(std::string_view seq, bool add_special = true,
                              bool unknown_to_unk = false, std::string_view record_id = {}) const;

  /// \brief Ids → the concatenation of their tokens (no separators, special tokens included).
  /// \throws turboesm::Error on an id outside [0, kVocabSize).
  std::string decode(const std::vector<int64_t>& ids) const;

  /// \brief The token string of `id`. \throws turboesm::Error on an id outside [0, kVocabSize).
  const std::string& token(int64_t id) const;
  /// \brief The id of `token` (a vocabulary entry, e.g. "A" or "<mask>"; exact, case-sensitive).
  /// \throws turboesm::Error naming the token.
  int64_t id(std::string_view token) const;
  /// \brief Id of the residue character `c` (case-insensitive), or -1 if it is not one.
  int64_t residue_id(char c) const;
  /// \brief If `s` begins with a special-token literal (e.g. "<mask>"), its id and length.
  /// \return the id, or -1 (then `length` is untouched).
  int64_t match_special(std::string_view s, std::size_t& length) const;
  /// \brief The vocabulary in id order.
  const std::vector<std::string>& vocab() const { return vocab_; }
  /// \brief The residue characters "LAGVSERTIDPKQNFYMHWCXBUZO.-", for error messages.
  static const char* residue_chars();

 private:
  EsmTokenizer();
  std::vector<std::string> vocab_;
  std::array<int8_t, 256> char_to_id_{};
};

}  // namespace turboesm::io
