// SPDX-License-Identifier: MIT
// turboesm-embed: FASTA in, per-sequence embeddings / logits / contacts out (float32 safetensors).
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/error.h"
#include "turboesm/io/fasta.h"
#include "turboesm/model/embed.h"
#include "turboesm/model/esm2.h"

namespace {

std::vector<int> parse_layers(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    int v = 0;
    try {
      v = std::stoi(item, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    TURBOESM_CHECK(pos == item.size() && !item.empty(), "--repr-layers: '", item,
                   "' is not an integer (expected e.g. 0,6,-1)");
    out.push_back(v);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace turboesm;
  CLI::App app{
      "Embed protein sequences with an ESM-2 model (HF directory). Writes float32 tensors "
      "<id>/last_hidden_state [L+2,hidden], <id>/mean [hidden], and optionally <id>/logits, "
      "<id>/contacts [L,L], <id>/layer_<k>; <id> is the first word of the FASTA header. "
      "With --shard-records N, --out is a directory: every N records become one file "
      "shard-00000.safetensors, shard-00001.safetensors, ... (same keys), listed by index.json; "
      "the FASTA is streamed, so memory does not grow with its size, and --resume continues an "
      "interrupted run. Without it, all records are read first and one file is written.",
      "turboesm-embed"};
  std::string model_dir, fasta, out, device = "cpu", dtype = "fp32", repr;
  bool logits = false, contacts = false, overwrite = false, unk = false, resume = false;
  int64_t max_tokens = 4096, truncate = 0, max_len = 10000, shard_records = 0;
  int threads = 0;
  app.add_option("--model", model_dir, "HF model directory (config.json + model.safetensors)")
      ->required();
  app.add_option("--fasta", fasta, "input FASTA")->required();
  app.add_option("--out", out,
                 "output .safetensors file, or with --shard-records the output directory")
      ->required();
  app.add_option("--device", device, "cpu | cuda | cuda:N");
  app.add_option("--dtype", dtype, "compute dtype: fp32 | fp16 | bf16 (outputs are float32)");
  app.add_flag("--logits", logits, "also write <id>/logits [L+2, vocab]");
  app.add_flag("--contacts", contacts, "also write <id>/contacts [L, L]");
  app.add_option("--repr-layers", repr,
                 "comma-separated layers to write as <id>/layer_<k> (0 = embeddings, negative "
                 "from the end, e.g. 0,6,-1)");
  app.add_option("--max-tokens-per-batch", max_tokens,
                 "padded tokens per batch (length-sorted batching, as fair-esm)");
  app.add_option("--truncate", truncate, "keep the first N residues of each sequence (0 = off)");
  app.add_option("--max-sequence-length", max_len,
                 "refuse records longer than N residues (bounds memory; 0 = unlimited; not applied "
                 "with --truncate, which bounds them itself)")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0 = LibTorch default)");
  app.add_flag("--unknown-to-unk", unk, "map unknown residue letters to <unk> instead of failing");
  app.add_option("--shard-records", shard_records,
                 "write one safetensors file per N records into the directory --out, plus "
                 "index.json (files, record counts, first/last id, sizes, sha256, options); "
                 "bounded memory for FASTA files of any size (0 = one file)")
      ->capture_default_str();
  app.add_flag("--resume", resume,
               "with --shard-records: keep the shards an interrupted run finished (checked "
               "against index.json and the FASTA) and continue with the first unfinished one; "
               "refused if the FASTA, the model or an option that changes the output differs");
  app.add_flag("--overwrite", overwrite,
               "replace an existing output file (with --shard-records: start again in a "
               "non-empty directory, removing the previous shards and index)");
  if (const int rc = tools::parse_args(app, argc, argv, "turboesm-embed"); rc >= 0) return rc;
  try {
    TURBOESM_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
    if (threads > 0) at::set_num_threads(threads);
    model::EmbedOptions eo;
    eo.logits = logits;
    eo.contacts = contacts;
    if (!repr.empty()) eo.repr_layers = parse_layers(repr);
    eo.max_tokens_per_batch = max_tokens;
    eo.truncate = truncate;
    eo.overwrite = overwrite;
    eo.unknown_to_unk = unk;
    eo.log = [](const std::string& s) { std::fprintf(stderr, "turboesm-embed: %s\n", s.c_str()); };
    // Check cheap things before the (possibly slow) model load.
    model::LoadOptions lo;
    lo.device = model::parse_device(device);
    lo.dtype = model::parse_scalar_type(dtype);
    io::FastaOptions fo;
    fo.unknown_to_unk = unk;
    TURBOESM_CHECK(max_len >= 0, "--max-sequence-length must be >= 0, got ", max_len);
    fo.max_sequence_length = truncate > 0 ? 0 : static_cast<std::size_t>(max_len);
    TURBOESM_CHECK(shard_records >= 0, "--shard-records must be >= 0, got ", shard_records);
    if (shard_records > 0) {
      model::check_shard_output(out, overwrite, resume);
      auto model = model::Esm2Model::load(model_dir, lo);
      model::ShardOptions so;
      so.shard_records = shard_records;
      so.resume = resume;
      // What else changes the output: the weights and config, the compute dtype and device.
      so.identity["model_fingerprint"] = calibration::model_fingerprint(model_dir);
      so.identity["dtype"] = c10::toString(lo.dtype);
      so.identity["device"] = lo.device.is_cuda() ? "cuda" : "cpu";
      const auto summary = model::embed_fasta_sharded(*model, fasta, fo, out, eo, so);
      std::string kept;
      if (resume) {
        kept = " (" + std::to_string(summary.shards_skipped) + " kept from an earlier run, " +
               std::to_string(summary.records_skipped) + " records)";
      }
      std::fprintf(stderr,
                   "turboesm-embed: %zu records, %lld residues, %.2f s, %.1f residues/s; %zu "
                   "shard(s)%s -> %s\n",
                   summary.records, static_cast<long long>(summary.residues), summary.seconds,
                   summary.residues / std::max(summary.seconds, 1e-9), summary.shards, kept.c_str(),
                   out.c_str());
      return 0;
    }
    TURBOESM_CHECK(!resume,
                   "--resume needs --shard-records (the single-file output is written "
                   "in one piece)");
    const auto records = io::read_fasta(fasta, fo);
    if (!overwrite) {
      std::FILE* f = std::fopen(out.c_str(), "rb");
      if (f != nullptr) {
        std::fclose(f);
        TURBOESM_FAIL("refusing to overwrite ", out, " (pass --overwrite)");
      }
    }
    auto model = model::Esm2Model::load(model_dir, lo);
    const auto summary = model::embed_records(*model, records, out, eo);
    std::fprintf(stderr,
                 "turboesm-embed: %zu records, %lld residues, %.2f s, %.1f residues/s -> %s\n",
                 summary.records, static_cast<long long>(summary.residues), summary.seconds,
                 summary.residues / std::max(summary.seconds, 1e-9), out.c_str());
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error("turboesm-embed", e);
  }
}
