// SPDX-License-Identifier: MIT
#include "turboesm/io/tokenizer.h"

#include <cctype>

#include "turboesm/error.h"

namespace turboesm::io {

namespace {
// HF EsmTokenizer / fair-esm ESM-2 alphabet, in id order.
const char* const kVocab[] = {"<cls>", "<pad>",    "<eos>", "<unk>", "L", "A", "G", "V", "S", "E",
                              "R",     "T",        "I",     "D",     "P", "K", "Q", "N", "F", "Y",
                              "M",     "H",        "W",     "C",     "X", "B", "U", "Z", "O", ".",
                              "-",     "<null_1>", "<mask>"};
static_assert(sizeof(kVocab) / sizeof(kVocab[0]) == EsmTokenizer::kVocabSize);

// Literal special tokens recognized inside sequences (all vocabulary entries of the form <...>).
constexpr int64_t kSpecialIds[] = {EsmTokenizer::kCls, EsmTokenizer::kPad,   EsmTokenizer::kEos,
                                   EsmTokenizer::kUnk, EsmTokenizer::kNull1, EsmTokenizer::kMask};

std::string printable(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (std::isprint(u)) return std::string("'") + c + "'";
  static const char* hex = "0123456789abcdef";
  return std::string("byte 0x") + hex[u >> 4] + hex[u & 15];
}
}  // namespace

const char* EsmTokenizer::residue_chars() { return "LAGVSERTIDPKQNFYMHWCXBUZO.-"; }

EsmTokenizer::EsmTokenizer() {
  vocab_.assign(std::begin(kVocab), std::end(kVocab));
  char_to_id_.fill(-1);
  for (int64_t id = kFirstResidue; id < kEndResidue; ++id) {
    const auto c = static_cast<unsigned char>(vocab_[id][0]);
    char_to_id_[c] = static_cast<int8_t>(id);
    char_to_id_[static_cast<unsigned char>(std::tolower(c))] = static_cast<int8_t>(id);
  }
}

const EsmTokenizer& EsmTokenizer::instance() {
  static const EsmTokenizer tok;
  return tok;
}

int64_t EsmTokenizer::residue_id(char c) const {
  return char_to_id_[static_cast<unsigned char>(c)];
}

int64_t EsmTokenizer::match_special(std::string_view s, std::size_t& length) const {
  if (s.empty() || s[0] != '<') return -1;
  for (int64_t id : kSpecialIds) {
    const std::string& tok = vocab_[id];
    if (s.compare(0, tok.size(), tok) == 0) {
      length = tok.size();
      return id;
    }
  }
  return -1;
}

std::vector<int64_t> EsmTokenizer::encode(std::string_view seq, bool add_special,
                                          bool unknown_to_unk, std::string_view record_id) const {
  std::vector<int64_t> ids;
  ids.reserve(seq.size() + 2);
  if (add_special) ids.push_back(kCls);
  std::size_t i = 0;
  std::size_t position = 0;  // 1-based index of the current token among the sequence's tokens
  while (i < seq.size()) {
    const char c = seq[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    ++position;
    std::size_t len = 0;
    const int64_t special = match_special(seq.substr(i), len);
    if (special >= 0) {
      ids.push_back(special);
      i += len;
      continue;
    }
    const int64_t id = residue_id(c);
    if (id >= 0) {
      ids.push_back(id);
    } else if (unknown_to_unk) {
      ids.push_back(kUnk);
    } else {
      TURBOESM_FAIL(record_id.empty() ? std::string() : "record '" + std::string(record_id) + "': ",
                    "unknown residue ", printable(c), " at position ", position, " (character ",
                    i + 1, "); expected one of ", residue_chars(),
                    " or <mask>, <unk>, <cls>, <eos>, <pad>, <null_1>");
    }
    ++i;
  }
  if (add_special) ids.push_back(kEos);
  return ids;
}

const std::string& EsmTokenizer::token(int64_t id) const {
  TURBOESM_CHECK(id >= 0 && id < kVocabSize, "token id ", id, " is out of range [0, ", kVocabSize,
                 ")");
  return vocab_[static_cast<std::size_t>(id)];
}

std::string EsmTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int64_t id : ids) out += token(id);
  return out;
}

int64_t EsmTokenizer::id(std::string_view tok) const {
  for (std::size_t i = 0; i < vocab_.size(); ++i) {
    if (vocab_[i] == tok) return static_cast<int64_t>(i);
  }
  TURBOESM_FAIL("unknown token '", std::string(tok), "' (the ESM vocabulary has ", kVocabSize,
                " tokens: <cls> <pad> <eos> <unk> ", residue_chars(), " <null_1> <mask>)");
}

}  // namespace turboesm::io
