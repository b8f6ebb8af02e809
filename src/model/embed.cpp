// SPDX-License-Identifier: MIT
#include "turboesm/model/embed.h"

#include <c10/core/InferenceMode.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "turboesm/error.h"
#include "turboesm/io/atomic_file.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/sha256.h"
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
  if (sum.long_records > 0 && opts.warn_long_records) {
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

// =============================================================================================
// Sharded, resumable embedding
// =============================================================================================

namespace {

constexpr const char* kShardIndexFormat = "turboesm-embed-shards";

std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string strip_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

/// Entry names of `dir` (without "." and ".."). Plain POSIX: the torch wheel's copy of
/// std::filesystem is unreliable in torch-linked code (see tests/model/model_test_util.h).
std::vector<std::string> list_dir(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  TURBOESM_CHECK(d != nullptr, "cannot list directory ", dir, ": ", std::strerror(errno));
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

/// True for "shard-<digits>.safetensors" (a shard this program writes).
bool is_shard_file(const std::string& name) {
  const std::string pre = "shard-", suf = ".safetensors";
  if (name.size() <= pre.size() + suf.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - suf.size(), suf.size(), suf) != 0) {
    return false;
  }
  for (size_t i = pre.size(); i < name.size() - suf.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
  }
  return true;
}

/// True for the temporary files AtomicFile leaves when a run is killed mid-write.
bool is_our_temp_file(const std::string& name) {
  const bool ours = name.rfind("shard-", 0) == 0 || name.rfind(kShardIndexName, 0) == 0;
  return ours && name.find(".tmp-") != std::string::npos;
}

void remove_file(const std::string& path) {
  TURBOESM_CHECK(::unlink(path.c_str()) == 0 || errno == ENOENT, "cannot remove ", path, ": ",
                 std::strerror(errno));
}

/// Deterministic 64-bit FNV-1a of an id (duplicate detection across shards).
std::uint64_t id_hash(const std::string& id) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string records_sha256(const std::vector<io::FastaRecord>& recs) {
  io::Sha256 h;
  for (const auto& r : recs) {
    h.update(r.id);
    h.update("\t");
    h.update(r.sequence);
    h.update("\n");
  }
  return h.hex_final();
}

bool is_hex64(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::string index_json_text(const ShardIndex& idx) {
  nlohmann::ordered_json j;
  j["format"] = kShardIndexFormat;
  j["version"] = idx.version;
  j["options"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : idx.options) j["options"][k] = v;
  j["shards"] = nlohmann::ordered_json::array();
  for (const auto& e : idx.shards) {
    j["shards"].push_back({{"file", e.file},
                           {"records", e.records},
                           {"first_id", e.first_id},
                           {"last_id", e.last_id},
                           {"records_sha256", e.records_sha256},
                           {"bytes", e.bytes},
                           {"sha256", e.sha256}});
  }
  j["total_records"] = idx.total_records;
  j["complete"] = idx.complete;
  return j.dump(1) + "\n";
}

}  // namespace

std::string shard_file_name(std::size_t k) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05zu.safetensors", k);
  return buf;
}

ShardIndex read_shard_index(const std::string& path) {
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    TURBOESM_CHECK(f != nullptr, "cannot open ", path, ": ", std::strerror(errno));
    char buf[1 << 16];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    const std::string what = e.what();
    TURBOESM_FAIL(path, ": malformed JSON (", what.substr(0, 160),
                  "); expected the index written by turboesm-embed --shard-records");
  }
  auto type_error = [&](const std::string& key, const char* expected) {
    TURBOESM_FAIL(path, ": key '", key, "' must be ", expected);
  };
  TURBOESM_CHECK(j.is_object(), path, ": expected a JSON object (turboesm-embed shard index)");
  auto need = [&](const nlohmann::json& o, const std::string& key,
                  const std::string& where) -> const nlohmann::json& {
    TURBOESM_CHECK(o.contains(key), path, ": missing key '", where + key, "'");
    return o.at(key);
  };
  const auto& fmt = need(j, "format", "");
  if (!fmt.is_string() || fmt.get<std::string>() != kShardIndexFormat) {
    type_error("format", "\"turboesm-embed-shards\"");
  }
  const auto& ver = need(j, "version", "");
  if (!ver.is_number_integer()) type_error("version", "an integer");
  ShardIndex idx;
  idx.version = ver.get<int>();
  TURBOESM_CHECK(idx.version == kShardIndexVersion, path, ": index version ", idx.version,
                 " is not supported (this build reads version ", kShardIndexVersion, ")");
  const auto& opts = need(j, "options", "");
  if (!opts.is_object()) type_error("options", "an object of strings");
  for (const auto& [k, v] : opts.items()) {
    if (!v.is_string()) type_error("options." + k, "a string");
    idx.options[k] = v.get<std::string>();
  }
  const auto& shards = need(j, "shards", "");
  if (!shards.is_array()) type_error("shards", "an array");
  for (size_t i = 0; i < shards.size(); ++i) {
    const auto& o = shards[i];
    const std::string w = "shards[" + std::to_string(i) + "].";
    if (!o.is_object()) type_error(w.substr(0, w.size() - 1), "an object");
    ShardEntry e;
    auto str = [&](const char* key) {
      const auto& v = need(o, key, w);
      if (!v.is_string()) type_error(w + key, "a string");
      return v.get<std::string>();
    };
    auto uint = [&](const char* key) {
      const auto& v = need(o, key, w);
      if (!v.is_number_unsigned()) type_error(w + key, "a non-negative integer");
      return v.get<std::uint64_t>();
    };
    e.file = str("file");
    TURBOESM_CHECK(e.file == shard_file_name(i), path, ": ", w, "file is '", e.file,
                   "', expected '", shard_file_name(i), "'");
    e.records = static_cast<size_t>(uint("records"));
    TURBOESM_CHECK(e.records >= 1, path, ": ", w, "records must be >= 1, got 0");
    e.first_id = str("first_id");
    e.last_id = str("last_id");
    e.records_sha256 = str("records_sha256");
    if (!is_hex64(e.records_sha256)) type_error(w + "records_sha256", "64 lowercase hex digits");
    e.bytes = uint("bytes");
    e.sha256 = str("sha256");
    if (!is_hex64(e.sha256)) type_error(w + "sha256", "64 lowercase hex digits");
    idx.total_records += e.records;
    idx.shards.push_back(std::move(e));
  }
  const auto& total = need(j, "total_records", "");
  if (!total.is_number_unsigned()) type_error("total_records", "a non-negative integer");
  TURBOESM_CHECK(total.get<std::uint64_t>() == idx.total_records, path, ": total_records is ",
                 total.get<std::uint64_t>(), ", expected ", idx.total_records,
                 " (the sum of the shards' records)");
  const auto& complete = need(j, "complete", "");
  if (!complete.is_boolean()) type_error("complete", "true or false");
  idx.complete = complete.get<bool>();
  // Every shard but a finished run's last one holds exactly shard_records records.
  const auto it = idx.options.find("shard_records");
  if (it != idx.options.end()) {
    const std::string& n = it->second;
    const bool digits = !n.empty() && n.size() < 19 && std::all_of(n.begin(), n.end(), [](char c) {
      return c >= '0' && c <= '9';
    });
    TURBOESM_CHECK(digits && std::stoull(n) > 0, path, ": options.shard_records is '", n,
                   "', expected a positive integer");
    const auto per = static_cast<size_t>(std::stoull(n));
    for (size_t i = 0; i < idx.shards.size(); ++i) {
      const bool last_of_complete = idx.complete && i + 1 == idx.shards.size();
      const size_t r = idx.shards[i].records;
      TURBOESM_CHECK(last_of_complete ? r <= per : r == per, path, ": shards[", i, "].records is ",
                     r, ", expected ", last_of_complete ? "at most " : "", per,
                     " (options.shard_records)");
    }
  }
  return idx;
}

void check_shard_output(const std::string& out_dir_in, bool overwrite, bool resume) {
  TURBOESM_CHECK(!(overwrite && resume),
                 "--resume and --overwrite exclude each other (--resume continues an interrupted "
                 "run, --overwrite starts again)");
  const std::string out_dir = strip_slashes(out_dir_in);
  TURBOESM_CHECK(!out_dir.empty(), "output directory name is empty");
  struct stat st {};
  if (::stat(out_dir.c_str(), &st) != 0) {
    const std::string parent = parent_of(out_dir);
    TURBOESM_CHECK(::stat(parent.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "output directory ",
                   parent, " does not exist");
    return;
  }
  TURBOESM_CHECK(S_ISDIR(st.st_mode), "--out ", out_dir,
                 " is a file; with --shard-records it names a directory (shards and ",
                 kShardIndexName, " go inside)");
  if (!overwrite && !resume) {
    TURBOESM_CHECK(list_dir(out_dir).empty(), "refusing to overwrite ", out_dir,
                   ": the directory is not empty (pass --overwrite to start again, or --resume "
                   "to continue an interrupted run)");
  }
}

namespace {

/// State of one sharded run (see embed_fasta_sharded).
class ShardedRun {
 public:
  ShardedRun(const Esm2Model& model, const std::string& fasta_path,
             const io::FastaOptions& fasta_opts, const std::string& out_dir,
             const EmbedOptions& opts, const ShardOptions& shard)
      : model_(model),
        fasta_path_(fasta_path),
        reader_(fasta_path, no_duplicate_check(fasta_opts)),
        dir_(strip_slashes(out_dir)),
        index_path_(join_path(dir_, kShardIndexName)),
        opts_(opts),
        shard_(shard) {}

  ShardedEmbedSummary run() {
    const auto t0 = Clock::now();
    TURBOESM_CHECK(shard_.shard_records >= 1, "--shard-records must be >= 1, got ",
                   shard_.shard_records);
    check_shard_output(dir_, opts_.overwrite, shard_.resume);
    idx_.options = wanted_options();
    // Read the first record before touching the directory: an empty or broken FASTA leaves
    // nothing behind.
    has_lookahead_ = reader_.next(lookahead_);
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0) {
      TURBOESM_CHECK(::mkdir(dir_.c_str(), 0777) == 0 || errno == EEXIST, "cannot create ", dir_,
                     ": ", std::strerror(errno));
    }
    bool resumed_complete = false;
    if (shard_.resume && ::stat(index_path_.c_str(), &st) == 0) {
      resumed_complete = verify_previous();
      if (resumed_complete) {
        sum_.seconds = seconds_since(t0);
        sum_.shards = idx_.shards.size();
        log("all " + std::to_string(sum_.shards) + " shards (" +
            std::to_string(sum_.records_skipped) + " records) were already complete");
        return sum_;
      }
      write_index();              // names only the shards kept
      remove_stale_files(false);  // then unlisted shards and temporaries go
    } else {
      if (shard_.resume) {
        log("no " + index_path_ + " yet: starting from the first record");
      }
      remove_file(index_path_);  // first, so no index ever names a shard being removed
      remove_stale_files(true);
      write_index();
    }
    t_start_ = Clock::now();
    // A damaged shard found by --resume left its records pending.
    if (buf_.size() == static_cast<size_t>(shard_.shard_records)) finish_shard(false);
    io::FastaRecord r;
    while (pull(r)) {
      check_id(r);
      buf_.push_back(std::move(r));
      r = io::FastaRecord();
      if (buf_.size() == static_cast<size_t>(shard_.shard_records)) finish_shard(false);
    }
    if (!buf_.empty()) {
      finish_shard(true);
    } else {
      idx_.complete = true;
      write_index();
    }
    if (long_records_ > 0 && opts_.warn_long_records) {
      log("warning: " + std::to_string(long_records_) + " record(s) longer than " +
          std::to_string(kEsmTrainingResidues) +
          " residues (ESM-2's training length); they run unchanged (use --truncate 1022 to cut "
          "them as fair-esm does)");
    }
    sum_.long_records = long_records_;
    sum_.shards = idx_.shards.size();
    sum_.seconds = seconds_since(t0);
    return sum_;
  }

 private:
  static io::FastaOptions no_duplicate_check(io::FastaOptions o) {
    o.check_duplicate_ids = false;  // ShardedRun checks ids itself, in bounded memory
    return o;
  }

  void log(const std::string& s) const {
    if (opts_.log) opts_.log(s);
  }

  /// Settings that change the output; stored in the index and compared on --resume.
  std::map<std::string, std::string> wanted_options() const {
    std::map<std::string, std::string> o = shard_.identity;
    std::string layers;
    for (int k : opts_.repr_layers) {
      const int n = model_.normalize_layer(k);
      const std::string t = std::to_string(n);
      if (("," + layers + ",").find("," + t + ",") != std::string::npos) continue;
      layers += (layers.empty() ? "" : ",") + t;
    }
    o["logits"] = opts_.logits ? "true" : "false";
    o["contacts"] = opts_.contacts ? "true" : "false";
    o["repr_layers"] = layers;
    o["truncate"] = std::to_string(opts_.truncate);
    o["max_tokens_per_batch"] = std::to_string(opts_.max_tokens_per_batch);
    o["unknown_to_unk"] = opts_.unknown_to_unk ? "true" : "false";
    o["shard_records"] = std::to_string(shard_.shard_records);
    return o;
  }

  bool pull(io::FastaRecord& r) {
    if (has_lookahead_) {
      r = std::move(lookahead_);
      has_lookahead_ = false;
      return true;
    }
    return reader_.next(r);
  }

  /// Refuses a repeated id: exactly within the pending shard; across finished shards through
  /// 64-bit hashes, a hit confirmed by looking the key up in the shard files.
  void check_id(const io::FastaRecord& r) {
    const auto [it, inserted] = pending_ids_.emplace(r.id, r.line);
    TURBOESM_CHECK(inserted, fasta_path_, ":", r.line, ": record '", r.id,
                   "': duplicate id (first seen on line ", it->second,
                   "); every record needs a unique first word in its header");
    if (!std::binary_search(seen_.begin(), seen_.end(), id_hash(r.id))) return;
    for (const auto& e : idx_.shards) {
      const std::string p = join_path(dir_, e.file);
      if (io::SafetensorsFile(p).find(r.id + "/last_hidden_state") != nullptr) {
        TURBOESM_FAIL(fasta_path_, ":", r.line, ": record '", r.id,
                      "': duplicate id (an earlier record with it is in ", p,
                      "); every record needs a unique first word in its header");
      }
    }
  }

  /// Moves the pending shard's ids into the sorted hash list.
  void seal_pending_ids() {
    const size_t old = seen_.size();
    for (const auto& r : buf_) seen_.push_back(id_hash(r.id));
    std::sort(seen_.begin() + static_cast<std::ptrdiff_t>(old), seen_.end());
    std::inplace_merge(seen_.begin(), seen_.begin() + static_cast<std::ptrdiff_t>(old),
                       seen_.end());
    pending_ids_.clear();
    buf_.clear();
  }

  void write_index() const { io::write_file_atomic(index_path_, index_json_text(idx_), true); }

  /// Removes temporaries and shard files the index does not list (all of them when `all`).
  void remove_stale_files(bool all) {
    std::set<std::string> listed;
    if (!all) {
      for (const auto& e : idx_.shards) listed.insert(e.file);
    }
    for (const std::string& n : list_dir(dir_)) {
      if (is_our_temp_file(n) || (is_shard_file(n) && listed.count(n) == 0)) {
        remove_file(join_path(dir_, n));
      }
    }
  }

  void finish_shard(bool last) {
    const size_t k = idx_.shards.size();
    ShardEntry e;
    e.file = shard_file_name(k);
    const std::string path = join_path(dir_, e.file);
    EmbedOptions o = opts_;
    o.overwrite = true;  // a stale file of that name is not listed by the index
    o.warn_long_records = false;
    o.log = nullptr;
    const EmbedSummary s = embed_records(model_, buf_, path, o);
    e.records = buf_.size();
    e.first_id = buf_.front().id;
    e.last_id = buf_.back().id;
    e.records_sha256 = records_sha256(buf_);
    struct stat st {};
    TURBOESM_CHECK(::stat(path.c_str(), &st) == 0, "cannot stat ", path, ": ",
                   std::strerror(errno));
    e.bytes = static_cast<std::uint64_t>(st.st_size);
    e.sha256 = io::sha256_file_hex(path);  // read back: hashes what is on disk
    idx_.shards.push_back(e);
    idx_.total_records += e.records;
    idx_.complete = last;
    write_index();
    seal_pending_ids();
    sum_.records += s.records;
    sum_.residues += s.residues;
    long_records_ += s.long_records;
    if (opts_.log && (last || seconds_since(last_progress_) >= opts_.progress_interval_s)) {
      last_progress_ = Clock::now();
      char line[256];
      std::snprintf(line, sizeof line,
                    "%s: %zu shard(s), %zu records (%zu this run), %lld residues, %.0f "
                    "residues/s",
                    e.file.c_str(), idx_.shards.size(), idx_.total_records, sum_.records,
                    static_cast<long long>(sum_.residues),
                    sum_.residues / std::max(seconds_since(t_start_), 1e-9));
      log(line);
    }
  }

  /// --resume with an index: compares the options, then re-reads the FASTA shard by shard and
  /// keeps each listed shard whose records match and whose file is intact. Stops at the first
  /// damaged or missing file (its records stay pending and are embedded again).
  /// \return true when the previous run was complete (nothing left to do).
  bool verify_previous() {
    const ShardIndex old = read_shard_index(index_path_);
    const auto& want = idx_.options;
    std::set<std::string> keys;
    for (const auto& kv : want) keys.insert(kv.first);
    for (const auto& kv : old.options) keys.insert(kv.first);
    for (const std::string& k : keys) {
      const auto a = old.options.find(k), b = want.find(k);
      const std::string was = a == old.options.end() ? "(not set)" : a->second;
      const std::string now = b == want.end() ? "(not set)" : b->second;
      TURBOESM_CHECK(was == now, "--resume: ", index_path_, " was written with ", k, "=", was,
                     ", this run has ", k, "=", now,
                     "; resume with the same model and options (or pass --overwrite to start "
                     "again)");
    }
    size_t consumed = 0;
    for (const ShardEntry& e : old.shards) {
      io::FastaRecord r;
      while (buf_.size() < e.records && pull(r)) {
        check_id(r);
        buf_.push_back(std::move(r));
        r = io::FastaRecord();
      }
      const std::string path = join_path(dir_, e.file);
      TURBOESM_CHECK(buf_.size() == e.records, "--resume: ", fasta_path_, " ends after ",
                     consumed + buf_.size(), " records, but ", path, " holds records '", e.first_id,
                     "'..'", e.last_id, "' (", consumed + 1, "..", consumed + e.records,
                     "); the FASTA changed since the interrupted run (pass --overwrite to start "
                     "again)");
      const bool same_ends = buf_.front().id == e.first_id && buf_.back().id == e.last_id;
      TURBOESM_CHECK(same_ends && records_sha256(buf_) == e.records_sha256, "--resume: ", path,
                     " holds records '", e.first_id, "'..'", e.last_id, "' but records ",
                     consumed + 1, "..", consumed + e.records, " of ", fasta_path_, " are '",
                     buf_.front().id, "'..'", buf_.back().id, "'",
                     same_ends ? " with other ids or sequences in between" : "",
                     "; the FASTA changed since the interrupted run (pass --overwrite to start "
                     "again)");
      struct stat st {};
      std::string damage;
      if (::stat(path.c_str(), &st) != 0) {
        damage = "is missing";
      } else if (static_cast<std::uint64_t>(st.st_size) != e.bytes) {
        damage = "has " + std::to_string(st.st_size) + " bytes, the index says " +
                 std::to_string(e.bytes);
      } else if (io::sha256_file_hex(path) != e.sha256) {
        damage = "does not match its sha256 in the index";
      }
      if (!damage.empty()) {
        log("warning: " + path + " " + damage + "; embedding it and the shards after it again");
        return false;  // buf_ holds its records: they become the pending shard
      }
      idx_.shards.push_back(e);
      idx_.total_records += e.records;
      consumed += e.records;
      sum_.shards_skipped++;
      sum_.records_skipped += e.records;
      seal_pending_ids();
    }
    if (!old.complete) {
      if (!old.shards.empty()) {
        log("resuming after " + std::to_string(old.shards.size()) + " finished shard(s) (" +
            std::to_string(consumed) + " records)");
      }
      return false;
    }
    io::FastaRecord extra;
    TURBOESM_CHECK(!pull(extra), "--resume: ", fasta_path_, " has more records than the finished ",
                   "run in ", dir_, " (", consumed, "; record '", extra.id, "' on line ",
                   extra.line,
                   " is new); the FASTA changed since that run (pass --overwrite to start again)");
    idx_.complete = true;
    return true;
  }

  const Esm2Model& model_;
  std::string fasta_path_;
  io::FastaReader reader_;
  std::string dir_, index_path_;
  EmbedOptions opts_;
  ShardOptions shard_;
  ShardIndex idx_;
  io::FastaRecord lookahead_;
  bool has_lookahead_ = false;
  std::vector<io::FastaRecord> buf_;                          // the pending shard's records
  std::unordered_map<std::string, std::size_t> pending_ids_;  // their ids -> FASTA line
  std::vector<std::uint64_t> seen_;  // sorted id hashes of every finished shard
  ShardedEmbedSummary sum_;
  int64_t long_records_ = 0;
  Clock::time_point t_start_ = Clock::now(), last_progress_ = Clock::now();
};

}  // namespace

ShardedEmbedSummary embed_fasta_sharded(const Esm2Model& model, const std::string& fasta_path,
                                        const io::FastaOptions& fasta_opts,
                                        const std::string& out_dir, const EmbedOptions& opts,
                                        const ShardOptions& shard) {
  c10::InferenceMode guard;
  ShardedRun run(model, fasta_path, fasta_opts, out_dir, opts, shard);
  return run.run();
}

}  // namespace turboesm::model
