// SPDX-License-Identifier: MIT
#pragma once
/// \file compare.h
/// \brief How close a compressed KV cache keeps ESM-2 to FP32 (what `turboesm-compare` reports).
///
/// For every record of L residues (tokens `<cls> r_1 … r_L <eos>`):
///  (a) teacher-forced, per layer (the seed's metric, every layer): the FP32 model runs the whole
///      record; at each layer its K/V go into a fresh cache of the kind under test and every
///      position queries that cache (bidirectional, as in prefill). `layer_cosine[l]` = mean over
///      positions of cos(attention output over the cache, exact FP32 attention output), each
///      output the [heads·head_dim] vector before the output projection. The model continues
///      with the exact output, so every layer sees FP32 inputs. Turbo is measured with its QJL
///      as configured and with QJL off (`layer_cosine_no_qjl`).
///  (b) end to end: a Session prefills `<cls>` + the first ⌈L/2⌉ residues, then appends the rest
///      (residues and `<eos>`) one token at a time, once through the FP32 cache (reference) and
///      once through the cache under test; errors accumulate over layers and tokens.
///      `final_hidden_cosine` = mean over appended tokens of cos(last hidden state, reference);
///      `mlm_top1_agreement` = fraction of appended tokens whose MLM argmax equals the reference's.
/// `prefill_max_abs_diff` = max |Δ| between the Turbo session's prefill output and
/// Esm2Model::forward on the same prefix (0: prefill is exact).

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "turboesm/io/fasta.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/mixed_cache.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm::calibration {

/// \brief Options of compare_records.
struct CompareOptions {
  /// Baseline caches measured beside Turbo (metrics a and b, timings).
  std::vector<model::CacheKind> baselines = {model::CacheKind::kInt8, model::CacheKind::kFp8};
  bool end_to_end = true;  ///< run metric (b) (the slow part: one step per token)
  /// Layers whose K/V the cache under test keeps in a dense format instead of Turbo
  /// (model::MixedKvCache; e.g. {0: int8}); their bytes are counted in `kv_bytes.turbo`.
  std::map<int, model::CacheKind> dense_layers;
  /// A second Turbo spec (e.g. another checkpoint with QJL) for the layers in `alt_layers`
  /// (model::MixedKvCache); null = none.
  std::shared_ptr<const model::TurboCacheSpec> alt_turbo;
  std::vector<int> alt_layers;
  int64_t max_residues = 1022;  ///< longer records are cropped
  /// Run the Turbo caches on the model with Π_V folded into W_V / W_O and the folded spec
  /// (model/value_fold.h: the same model up to one rounding, V stored without rotation); the FP32
  /// reference and the baselines run on the model as given. Not with alt_turbo.
  bool fold_value_rotation = false;
  /// Called after each record with (records done, records total). May be empty.
  std::function<void(size_t, size_t)> progress;
};

/// \brief Scores of one cache kind on one record.
struct CacheScores {
  std::vector<double> layer_cosine;         ///< metric (a), [layers]
  std::vector<double> layer_cosine_no_qjl;  ///< Turbo only: metric (a) with QJL off
  double final_hidden_cosine = 1.0;         ///< metric (b)
  double mlm_top1_agreement = 1.0;          ///< metric (b)
  double prefill_ms = 0.0;                  ///< Session::prefill wall time
  double append_ms_per_token = 0.0;         ///< Session::append wall time per token
};

/// \brief Results of one record.
struct RecordComparison {
  std::string id;
  int64_t length = 0;                         ///< residues (after cropping)
  int64_t appended = 0;                       ///< tokens appended in metric (b)
  double prefill_max_abs_diff = 0.0;          ///< Turbo prefill vs Esm2Model::forward
  double plain_forward_ms = 0.0;              ///< Esm2Model::forward on the prefix (no cache)
  std::map<std::string, CacheScores> caches;  ///< "turbo", "fp32" (timing only), baselines
};

/// \brief Everything compare_records measured.
struct CompareReport {
  std::vector<RecordComparison> records;
  std::string turbo_description;
  bool value_fold = false;                  ///< CompareOptions::fold_value_rotation
  std::vector<std::string> cache_names;     ///< "turbo" then the baselines
  std::map<std::string, int64_t> kv_bytes;  ///< fp32/fp16/int8/fp8/turbo, all records, L+2
  /// Per format; "turbo" is the Turbo layers' rate (dense layers: see kv_bytes and dense_layers).
  std::map<std::string, int64_t> bytes_per_token_per_head;
  std::map<int, model::CacheKind> dense_layers;  ///< CompareOptions::dense_layers
  int64_t checkpoint_bytes = 0;                  ///< set by the caller (file size)
  int num_layers = 0;
};

/// \brief Cosine similarity of two vectors in double; 1 if both are zero, 0 if one is.
double cosine(const float* a, const float* b, int64_t n);
/// \brief Mean over rows of the row-wise cosine of `a` and `b` ([rows, n] each, any dtype).
double mean_row_cosine(const at::Tensor& a, const at::Tensor& b);

/// \brief Runs metrics (a) and (b) for every record (see the file comment).
/// \param model fp32 model (any device)
/// \param turbo the Turbo constants (validated against the model)
CompareReport compare_records(const std::shared_ptr<const model::Esm2Model>& model,
                              const model::TurboCacheSpec& turbo,
                              const std::vector<io::FastaRecord>& records,
                              const CompareOptions& opts = {});

/// \brief The JSON of turboesm-compare: `sequences`, `summary`, `timing_ms` (keys of issue 5).
nlohmann::json report_json(const CompareReport& report);

/// \brief A readable summary table (per cache: accuracy, bytes, compression, timings).
std::string report_table(const CompareReport& report);

}  // namespace turboesm::calibration
