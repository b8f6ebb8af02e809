// SPDX-License-Identifier: MIT
// libFuzzer target: the streaming FASTA reader and the ESM tokenizer.
//
// Every input is read twice — default options, then small limits with unknown characters mapped
// to <unk> — and the raw bytes are also given to the tokenizer directly. Invariants checked on
// success: ids are non-empty, unique and whitespace-free; every sequence is non-empty, within
// the length limit, tokenizes without error into in-range ids framed by <cls>/<eos>, and decodes
// back to itself. On failure: turboesm::Error naming the file.
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>

#include "fuzz_util.h"
#include "turboesm/error.h"
#include "turboesm/io/fasta.h"
#include "turboesm/io/tokenizer.h"

namespace {

using turboesm::fuzz::ScratchFile;
using turboesm::fuzz::starts_with;
namespace io = turboesm::io;
using Tok = io::EsmTokenizer;

void check_record(const io::FastaRecord& rec, const io::FastaOptions& opts) {
  FUZZ_CHECK(!rec.id.empty(), "empty id");
  for (char c : rec.id) {
    FUZZ_CHECK(!std::isspace(static_cast<unsigned char>(c)), "whitespace in id '" + rec.id + "'");
  }
  FUZZ_CHECK(!rec.sequence.empty(), "empty sequence in record '" + rec.id + "'");
  const Tok& tok = Tok::instance();
  // The reader validated the alphabet: tokenizing its output must not throw.
  const auto ids = tok.encode(rec.sequence, /*add_special=*/true, /*unknown_to_unk=*/false, rec.id);
  FUZZ_CHECK(ids.size() >= 3 && ids.front() == Tok::kCls && ids.back() == Tok::kEos,
             "tokens of '" + rec.id + "' are not framed by <cls> ... <eos>");
  for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < Tok::kVocabSize, "token id out of range");
  if (opts.max_sequence_length > 0) {
    FUZZ_CHECK(ids.size() - 2 <= opts.max_sequence_length,
               "record '" + rec.id + "' is longer than max_sequence_length");
  }
  const auto body = tok.encode(rec.sequence, /*add_special=*/false);
  FUZZ_CHECK(tok.decode(body) == rec.sequence, "decode(encode(s)) != s for '" + rec.id + "'");
}

void read_all(const std::string& path, const io::FastaOptions& opts) {
  try {
    io::FastaReader reader(path, opts);
    io::FastaRecord rec;
    std::unordered_set<std::string> ids;
    while (reader.next(rec)) {
      check_record(rec, opts);
      FUZZ_CHECK(ids.insert(rec.id).second, "duplicate id '" + rec.id + "' returned");
    }
    FUZZ_CHECK(reader.count() == ids.size() && !ids.empty(), "record count mismatch");
    FUZZ_CHECK(!reader.next(rec), "next() after the end returned a record");
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(starts_with(e.what(), path),
               std::string("error does not name the file: ") + e.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch(".fasta");
  const std::string& path = scratch.write(data, size);
  read_all(path, io::FastaOptions{});
  io::FastaOptions small;
  small.unknown_to_unk = true;
  small.max_line_length = 64;
  small.max_sequence_length = 40;
  read_all(path, small);

  // The tokenizer on raw bytes: with unknown_to_unk it accepts anything; without, it may only
  // throw turboesm::Error.
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  const Tok& tok = Tok::instance();
  const auto ids = tok.encode(raw, /*add_special=*/true, /*unknown_to_unk=*/true);
  FUZZ_CHECK(ids.size() >= 2 && ids.size() <= size + 2, "token count out of bounds");
  for (int64_t id : ids) FUZZ_CHECK(id >= 0 && id < Tok::kVocabSize, "token id out of range");
  try {
    tok.encode(raw, /*add_special=*/false, /*unknown_to_unk=*/false, "raw");
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(std::string(e.what()).find("record 'raw'") != std::string::npos,
               std::string("tokenizer error does not name the record: ") + e.what());
  }
  return 0;
}
