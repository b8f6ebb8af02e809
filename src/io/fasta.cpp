// SPDX-License-Identifier: MIT
#include "turboesm/io/fasta.h"

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <unordered_map>

#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"

namespace turboesm::io {

namespace {
std::string show_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
  static const char* hex = "0123456789abcdef";
  return std::string("byte 0x") + hex[u >> 4] + hex[u & 15];
}
}  // namespace

struct FastaReader::State {
  std::string path;
  FastaOptions opts;
  std::ifstream in;
  std::size_t line_no = 0;     // lines consumed so far
  std::string pending_header;  // header line read ahead (without '>'), valid if has_pending
  std::size_t pending_line = 0;
  bool has_pending = false;
  bool started = false;
  bool eof = false;
  std::size_t count = 0;
  std::unordered_map<std::string, std::size_t> ids;  // id -> header line
  std::string line;

  std::string where(std::size_t line) const { return path + ":" + std::to_string(line) + ": "; }

  /// Reads one line (without '\n' and a trailing '\r') into `line`. Bounded: a line longer
  /// than max_line_length throws before it is fully buffered.
  bool read_line() {
    line.clear();
    std::streambuf* sb = in.rdbuf();
    bool any = false;
    for (;;) {
      const int c = sb->sbumpc();
      if (c == std::char_traits<char>::eof()) break;
      any = true;
      if (c == '\n') break;
      TURBOESM_CHECK(line.size() < opts.max_line_length, where(line_no + 1), "line longer than ",
                     opts.max_line_length, " bytes (max_line_length); not a FASTA file?");
      line.push_back(static_cast<char>(c));
    }
    if (!any) return false;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    for (std::size_t i = 0; i < line.size(); ++i) {
      const auto u = static_cast<unsigned char>(line[i]);
      // Text only: control bytes (NUL, ...) mean a binary or corrupt file. Tabs are whitespace.
      if ((u < 0x20 && u != '\t') || u == 0x7f) {
        static const char* hex = "0123456789abcdef";
        TURBOESM_FAIL(where(line_no), "binary data (byte 0x", hex[u >> 4], hex[u & 15],
                      " at column ", i + 1, "); expected a text FASTA file");
      }
    }
    return true;
  }

  static bool blank(const std::string& s) {
    for (char c : s) {
      if (!std::isspace(static_cast<unsigned char>(c))) return false;
    }
    return true;
  }
};

FastaReader::FastaReader(const std::string& path, FastaOptions opts)
    : s_(std::make_unique<State>()) {
  s_->path = path;
  s_->opts = opts;
  s_->in.open(path, std::ios::binary);
  TURBOESM_CHECK(s_->in.is_open(), "cannot open FASTA file ", path, ": ", std::strerror(errno));
}

FastaReader::~FastaReader() = default;
FastaReader::FastaReader(FastaReader&&) noexcept = default;
FastaReader& FastaReader::operator=(FastaReader&&) noexcept = default;

std::size_t FastaReader::count() const { return s_->count; }
const std::string& FastaReader::path() const { return s_->path; }

bool FastaReader::next(FastaRecord& rec) {
  State& s = *s_;
  if (s.eof) return false;
  if (!s.started) {
    s.started = true;
    // Find the first header; anything but blank lines before it is an error.
    bool any_text = false;
    while (s.read_line()) {
      if (State::blank(s.line)) continue;
      any_text = true;
      TURBOESM_CHECK(s.line[0] == '>', s.where(s.line_no),
                     "sequence data before the first header; expected a line starting with '>'");
      s.pending_header = s.line.substr(1);
      s.pending_line = s.line_no;
      s.has_pending = true;
      break;
    }
    TURBOESM_CHECK(any_text, s.path, ": empty FASTA file; expected at least one record '>id'");
  }
  if (!s.has_pending) {
    s.eof = true;
    return false;
  }

  // Header: id = first whitespace-delimited word, description = the rest.
  rec = FastaRecord{};
  rec.line = s.pending_line;
  {
    const std::string& h = s.pending_header;
    std::size_t b = 0;
    while (b < h.size() && std::isspace(static_cast<unsigned char>(h[b]))) ++b;
    std::size_t e = b;
    while (e < h.size() && !std::isspace(static_cast<unsigned char>(h[e]))) ++e;
    TURBOESM_CHECK(e > b, s.where(rec.line), "header without an id; expected '>id [description]'");
    rec.id = h.substr(b, e - b);
    std::size_t d = e;
    while (d < h.size() && std::isspace(static_cast<unsigned char>(h[d]))) ++d;
    std::size_t de = h.size();
    while (de > d && std::isspace(static_cast<unsigned char>(h[de - 1]))) --de;
    rec.description = h.substr(d, de - d);
  }
  if (s.opts.check_duplicate_ids) {
    const auto [first, inserted] = s.ids.emplace(rec.id, rec.line);
    TURBOESM_CHECK(inserted, s.where(rec.line), "record '", rec.id,
                   "': duplicate id (first seen on line ", first->second,
                   "); every record needs a unique first word in its header");
  }
  s.has_pending = false;

  const EsmTokenizer& tok = EsmTokenizer::instance();
  std::size_t position = 0;   // 1-based token position in the sequence, for errors
  std::size_t star_line = 0;  // line of a trailing '*' seen so far (must be the last residue)
  std::size_t star_column = 0;
  while (s.read_line()) {
    if (!s.line.empty() && s.line[0] == '>') {
      s.pending_header = s.line.substr(1);
      s.pending_line = s.line_no;
      s.has_pending = true;
      break;
    }
    const std::string& l = s.line;
    for (std::size_t i = 0; i < l.size();) {
      const char c = l[i];
      if (std::isspace(static_cast<unsigned char>(c))) {
        ++i;
        continue;
      }
      // Something follows a '*': it was not the trailing stop codon.
      TURBOESM_CHECK(star_line == 0, s.where(star_line), "record '", rec.id, "': '*' at position ",
                     position, " (column ", star_column,
                     ") is not at the end of the sequence; only one trailing '*' is allowed");
      ++position;
      std::size_t len = 0;
      const int64_t special = tok.match_special(std::string_view(l).substr(i), len);
      if (special >= 0) {
        rec.sequence.append(l, i, len);
        i += len;
      } else if (tok.residue_id(c) >= 0) {
        rec.sequence.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
        ++i;
      } else if (c == '*') {
        star_line = s.line_no;
        star_column = i + 1;
        --position;
        ++i;
      } else if (s.opts.unknown_to_unk) {
        rec.sequence += tok.token(EsmTokenizer::kUnk);
        ++i;
      } else {
        TURBOESM_FAIL(s.where(s.line_no), "record '", rec.id, "': unknown residue ", show_char(c),
                      " at position ", position, " (column ", i + 1, "); expected one of ",
                      EsmTokenizer::residue_chars(),
                      " or a literal <mask>/<unk>/<cls>/<eos>/<pad>/<null_1> (or pass the option "
                      "that maps unknown characters to <unk>)");
      }
      TURBOESM_CHECK(s.opts.max_sequence_length == 0 || position <= s.opts.max_sequence_length,
                     s.where(s.line_no), "record '", rec.id, "': sequence longer than ",
                     s.opts.max_sequence_length, " residues (max_sequence_length)");
    }
  }
  TURBOESM_CHECK(position > 0, s.where(rec.line), "record '", rec.id,
                 "': empty record; expected sequence lines after the header");
  ++s.count;
  return true;
}

std::vector<FastaRecord> read_fasta(const std::string& path, const FastaOptions& opts) {
  FastaReader reader(path, opts);
  std::vector<FastaRecord> out;
  FastaRecord rec;
  while (reader.next(rec)) out.push_back(std::move(rec));
  return out;
}

}  // namespace turboesm::io
