// SPDX-License-Identifier: MIT
// Safetensors reader and sharded checkpoints. Validation mirrors the reference Rust crate
// (safetensors/src/tensor.rs: read_metadata + Metadata::validate).
#include "turboesm/io/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_set>

#include "json_text.h"
#include "turboesm/error.h"

namespace turboesm::io {

namespace {

using json = nlohmann::json;

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

std::string short_json(const json& j) { return io::detail::short_json(j, 80); }

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/// SAX pass that records the first duplicated top-level key. nlohmann's DOM parser keeps the
/// last duplicate silently; a file whose meaning depends on which one wins is refused. (A parser
/// callback would do the same but is quadratic in the number of keys.)
struct DuplicateKeyFinder : nlohmann::json_sax<json> {
  int depth = 0;
  std::unordered_set<std::string> seen;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth == 1 && !seen.insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // the DOM parse reports syntax errors
  }
};

json parse_header_json(const std::string& path, const char* text, std::size_t n) {
  json j;
  try {
    j = json::parse(text, text + n);
  } catch (const json::exception& e) {
    // parse_error, or out_of_range for a number that overflows a double (e.g. 1e999): found by
    // tests/fuzz/fuzz_safetensors; nothing from nlohmann may escape as a foreign exception.
    TURBOESM_FAIL(path, ": malformed JSON header (", e.what(), ")");
  }
  TURBOESM_CHECK(j.is_object(), path, ": header must be a JSON object, got ", j.type_name());
  DuplicateKeyFinder finder;
  json::sax_parse(text, text + n, &finder);
  TURBOESM_CHECK(finder.duplicate.empty(), path, ": header lists tensor '", finder.duplicate,
                 "' twice");
  return j;
}

std::uint64_t get_offset(const std::string& path, const std::string& name, const json& v) {
  TURBOESM_CHECK(v.is_number_unsigned(), path, ": tensor '", name,
                 "': data_offsets must be non-negative integers, got ", short_json(v));
  return v.get<std::uint64_t>();
}

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool dir_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader parse_safetensors(const std::uint8_t* bytes, std::uint64_t size,
                                    const std::string& path, const SafetensorsLimits& limits) {
  SafetensorsHeader out;
  TURBOESM_CHECK(size >= 8, path, ": file is ", size,
                 " bytes, too small for a safetensors file (expected an 8-byte header length "
                 "followed by a JSON header); truncated?");
  const std::uint64_t n = read_u64_le(bytes);
  TURBOESM_CHECK(n <= limits.max_header_bytes, path, ": header length ", n,
                 " bytes exceeds the limit of ", limits.max_header_bytes,
                 " bytes (corrupt file or not a safetensors file)");
  TURBOESM_CHECK(n <= size - 8, path, ": header length ", n, " bytes exceeds the file size (", size,
                 " bytes); truncated or not a safetensors file");
  TURBOESM_CHECK(n >= 2, path, ": header length ", n, " is too small for a JSON object");
  out.data_offset = 8 + n;
  const std::uint64_t data_size = size - out.data_offset;

  const char* text = reinterpret_cast<const char*>(bytes + 8);
  // The format requires the header to be a JSON object; reject early with a clear message
  // (trailing spaces are padding and allowed).
  TURBOESM_CHECK(text[0] == '{', path, ": header must start with '{' (a JSON object), got byte 0x",
                 std::hex, static_cast<int>(static_cast<unsigned char>(text[0])));
  const json header = parse_header_json(path, text, static_cast<std::size_t>(n));

  const std::size_t entries = header.size() - (header.contains("__metadata__") ? 1 : 0);
  TURBOESM_CHECK(entries <= limits.max_tensors, path, ": header lists ", entries,
                 " tensors, more than the limit of ", limits.max_tensors);
  out.tensors.reserve(entries);
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      TURBOESM_CHECK(value.is_object(), path, ": __metadata__ must be an object of strings, got ",
                     value.type_name());
      for (const auto& [k, v] : value.items()) {
        TURBOESM_CHECK(v.is_string(), path, ": __metadata__ value of '", k,
                       "' must be a string, got ", short_json(v));
        out.metadata.emplace(k, v.get<std::string>());
      }
      continue;
    }
    TURBOESM_CHECK(value.is_object(), path, ": tensor '", name,
                   "' must be an object {dtype, shape, data_offsets}, got ", short_json(value));
    TensorInfo t;
    t.name = name;
    const auto dt = value.find("dtype");
    TURBOESM_CHECK(dt != value.end() && dt->is_string(), path, ": tensor '", name,
                   "': missing or non-string 'dtype'");
    try {
      t.dtype = parse_dtype(dt->get<std::string>());
    } catch (const Error& e) {
      TURBOESM_FAIL(path, ": tensor '", name, "': ", e.what());
    }
    const auto sh = value.find("shape");
    TURBOESM_CHECK(sh != value.end() && sh->is_array(), path, ": tensor '", name,
                   "': missing or non-array 'shape'");
    TURBOESM_CHECK(sh->size() <= limits.max_rank, path, ": tensor '", name, "' has rank ",
                   sh->size(), ", more than the limit of ", limits.max_rank);
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : *sh) {
      TURBOESM_CHECK(d.is_number_integer() && !(d.is_number_float()), path, ": tensor '", name,
                     "': shape entries must be integers, got ", short_json(*sh));
      TURBOESM_CHECK(d.is_number_unsigned(), path, ": tensor '", name,
                     "': negative dimension in shape ", short_json(*sh));
      const std::uint64_t dim = d.get<std::uint64_t>();
      TURBOESM_CHECK(dim <= static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()), path,
                     ": tensor '", name, "': dimension ", dim, " is too large");
      if (dim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / dim) overflow = true;
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const std::uint64_t esize = dtype_size(t.dtype);
    overflow = overflow || numel > std::numeric_limits<std::uint64_t>::max() / esize ||
               numel > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max());
    TURBOESM_CHECK(!overflow, path, ": tensor '", name, "': shape ", shape_str(t.shape),
                   " overflows 64-bit sizes");
    const auto off = value.find("data_offsets");
    TURBOESM_CHECK(off != value.end() && off->is_array() && off->size() == 2, path, ": tensor '",
                   name, "': 'data_offsets' must be [begin, end]");
    t.begin = get_offset(path, name, (*off)[0]);
    t.end = get_offset(path, name, (*off)[1]);
    TURBOESM_CHECK(t.end >= t.begin, path, ": tensor '", name, "': data_offsets [", t.begin, ", ",
                   t.end, "] end before begin");
    TURBOESM_CHECK(t.end <= data_size, path, ": tensor '", name, "': data_offsets [", t.begin, ", ",
                   t.end, "] out of bounds (data section is ", data_size,
                   " bytes); truncated file?");
    TURBOESM_CHECK(t.end - t.begin == numel * esize, path, ": tensor '", name,
                   "': ", t.end - t.begin, " bytes at data_offsets [", t.begin, ", ", t.end,
                   "] but dtype ", dtype_name(t.dtype), " x shape ", shape_str(t.shape), " needs ",
                   numel * esize, " bytes");
    out.tensors.push_back(std::move(t));
  }

  // The tensors, in offset order, must tile the data section exactly (the Rust crate's rule).
  std::stable_sort(out.tensors.begin(), out.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  std::uint64_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : out.tensors) {
    TURBOESM_CHECK(t.begin >= cursor, path, ": tensor '", t.name, "' at data_offsets [", t.begin,
                   ", ", t.end, "] overlaps tensor '", prev ? prev->name : "", "' at [",
                   prev ? prev->begin : 0, ", ", cursor, "]");
    TURBOESM_CHECK(t.begin == cursor, path, ": gap of ", t.begin - cursor, " bytes before tensor '",
                   t.name, "' at data_offsets [", t.begin, ", ", t.end,
                   "] (tensors must cover the data section contiguously)");
    cursor = t.end;
    prev = &t;
  }
  TURBOESM_CHECK(cursor == data_size, path, ": data section is ", data_size,
                 " bytes but the tensors cover ", cursor,
                 " bytes (trailing data or wrong header length)");
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path, SafetensorsLimits limits) : map_(path) {
  SafetensorsHeader header = parse_safetensors(map_.data(), map_.size(), path, limits);
  data_offset_ = header.data_offset;
  tensors_ = std::move(header.tensors);
  metadata_ = std::move(header.metadata);
  index_.reserve(tensors_.size());
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  TURBOESM_CHECK(t != nullptr, path(), ": tensor '", name, "' not found");
  return *t;
}

const void* SafetensorsFile::data(const TensorInfo& t) const {
  TURBOESM_CHECK(t.end >= t.begin && t.end <= map_.size() - data_offset_, path(), ": tensor '",
                 t.name, "' does not belong to this file (offsets out of bounds)");
  return map_.data() + data_offset_ + t.begin;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint
// ---------------------------------------------------------------------------------------------

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::string& path_or_dir,
                                                  SafetensorsLimits limits) {
  SafetensorsCheckpoint ckpt;
  ckpt.source_ = path_or_dir;
  std::string dir, index_path, single_path;
  if (dir_exists(path_or_dir)) {
    dir = path_or_dir;
    if (file_exists(dir + "/model.safetensors.index.json")) {
      index_path = dir + "/model.safetensors.index.json";
    } else if (file_exists(dir + "/model.safetensors")) {
      single_path = dir + "/model.safetensors";
    } else {
      const bool has_pickle = file_exists(dir + "/pytorch_model.bin") ||
                              file_exists(dir + "/pytorch_model.bin.index.json");
      TURBOESM_CHECK(!has_pickle, path_or_dir,
                     ": only PyTorch pickle weights (pytorch_model.bin) found; TurboESM reads "
                     "safetensors only (re-save with save_pretrained(safe_serialization=True))");
      TURBOESM_FAIL(path_or_dir,
                    ": no model.safetensors or model.safetensors.index.json in this directory");
    }
  } else {
    TURBOESM_CHECK(file_exists(path_or_dir), path_or_dir, ": no such file or directory");
    TURBOESM_CHECK(!ends_with(path_or_dir, ".pt") && !ends_with(path_or_dir, ".bin"), path_or_dir,
                   ": PyTorch pickles (fair-esm .pt, pytorch_model.bin) are not supported; use an "
                   "HF safetensors checkpoint");
    if (ends_with(path_or_dir, ".index.json")) {
      index_path = path_or_dir;
      dir = parent_of(path_or_dir);
    } else {
      single_path = path_or_dir;
    }
  }

  if (!single_path.empty()) {
    ckpt.files_.push_back(std::make_unique<SafetensorsFile>(single_path, limits));
    for (const auto& t : ckpt.files_[0]->tensors()) ckpt.entries_.emplace(t.name, Entry{0, &t});
    return ckpt;
  }

  // Sharded: {"metadata": {...}, "weight_map": {"tensor": "shard-file"}}.
  std::ifstream in(index_path, std::ios::binary);
  TURBOESM_CHECK(in, "cannot open ", index_path);
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TURBOESM_FAIL(index_path, ": malformed JSON (", e.what(), ")");
  }
  TURBOESM_CHECK(
      index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
      index_path, ": expected an object with a 'weight_map' object");
  const auto& wm = index["weight_map"];
  TURBOESM_CHECK(!wm.empty(), index_path, ": 'weight_map' is empty");
  std::vector<std::string> shard_names;
  std::unordered_map<std::string, std::size_t> shard_ids;
  for (const auto& [tensor, shard] : wm.items()) {
    TURBOESM_CHECK(shard.is_string(), index_path, ": weight_map['", tensor,
                   "'] must be a file name, got ", short_json(shard));
    const std::string s = shard.get<std::string>();
    // Shards live next to the index: refuse paths that would escape the model directory.
    TURBOESM_CHECK(!s.empty() && s.find('/') == std::string::npos && s != "." && s != "..",
                   index_path, ": weight_map['", tensor, "'] = '", s,
                   "' must be a plain file name in the model directory");
    if (shard_ids.emplace(s, shard_names.size()).second) shard_names.push_back(s);
  }
  for (const auto& s : shard_names) {
    const std::string shard_path = dir + "/" + s;
    TURBOESM_CHECK(file_exists(shard_path), index_path, " lists shard '", s,
                   "', which does not exist in ", dir);
    ckpt.files_.push_back(std::make_unique<SafetensorsFile>(shard_path, limits));
  }
  for (std::size_t f = 0; f < ckpt.files_.size(); ++f) {
    for (const auto& t : ckpt.files_[f]->tensors()) {
      const auto [it, inserted] = ckpt.entries_.emplace(t.name, Entry{f, &t});
      TURBOESM_CHECK(inserted, index_path, ": tensor '", t.name, "' is stored in both '",
                     shard_names[it->second.file], "' and '", shard_names[f], "'");
    }
  }
  for (const auto& [tensor, shard] : wm.items()) {
    const std::size_t f = shard_ids.at(shard.get<std::string>());
    const auto it = ckpt.entries_.find(tensor);
    TURBOESM_CHECK(it != ckpt.entries_.end() && it->second.file == f, index_path, " lists tensor '",
                   tensor, "' in shard '", shard_names[f], "', but that shard does not contain it");
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

const TensorInfo* SafetensorsCheckpoint::find(const std::string& name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.info;
}

const SafetensorsCheckpoint::Entry& SafetensorsCheckpoint::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  TURBOESM_CHECK(it != entries_.end(), source_, ": tensor '", name, "' not found");
  return it->second;
}

const TensorInfo& SafetensorsCheckpoint::at(const std::string& name) const {
  return *entry(name).info;
}

const void* SafetensorsCheckpoint::data(const std::string& name) const {
  const Entry& e = entry(name);
  return files_[e.file]->data(*e.info);
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  return *files_[entry(name).file];
}

std::uint64_t SafetensorsCheckpoint::total_bytes() const {
  std::uint64_t total = 0;
  for (const auto& kv : entries_) total += kv.second.info->nbytes();
  return total;
}

}  // namespace turboesm::io
