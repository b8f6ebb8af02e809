// SPDX-License-Identifier: MIT
#include "turboesm/calibration/compare.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#include "turboesm/calibration/checkpoint.h"
#include "turboesm/calibration/collector.h"
#include "turboesm/error.h"
#include "turboesm/model/session.h"
#include "turboesm/model/value_fold.h"

namespace turboesm::calibration {

using model::CacheKind;
using nlohmann::json;

double cosine(const float* a, const float* b, int64_t n) {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  if (aa == 0.0 && bb == 0.0) return 1.0;
  if (aa == 0.0 || bb == 0.0) return 0.0;
  return ab / std::sqrt(aa * bb);
}

double mean_row_cosine(const at::Tensor& a_in, const at::Tensor& b_in) {
  TURBOESM_CHECK(a_in.dim() == 2 && a_in.sizes() == b_in.sizes() && a_in.size(0) > 0,
                 "mean_row_cosine: a and b must be the same non-empty [rows, n], got ",
                 a_in.sizes(), " and ", b_in.sizes());
  const at::Tensor a = a_in.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor b = b_in.to(at::kCPU, at::kFloat).contiguous();
  const int64_t rows = a.size(0), n = a.size(1);
  double sum = 0.0;
  for (int64_t r = 0; r < rows; ++r)
    sum += cosine(a.data_ptr<float>() + r * n, b.data_ptr<float>() + r * n, n);
  return sum / static_cast<double>(rows);
}

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/// [1, H, T, d] → [T, H·d] (the concatenated heads of each position).
at::Tensor per_position(const at::Tensor& x) {
  return x[0].transpose(0, 1).reshape({x.size(2), x.size(1) * x.size(3)});
}

/// Metric (a): exact attention continues the forward pass; every cache under test sees the
/// layer's K/V and answers every position's query.
class TeacherForcedProbe final : public model::AttentionBackend {
 public:
  struct Target {
    std::string name;
    model::KvCache* cache;
    std::vector<double>* cosines;  // [layers]
  };
  explicit TeacherForcedProbe(std::vector<Target> targets) : targets_(std::move(targets)) {}

  at::Tensor attend(const model::AttentionInputs& in, at::Tensor* probs_out) override {
    at::Tensor exact = exact_.attend(in, probs_out);
    const at::Tensor ref = per_position(exact.to(at::kFloat));
    for (Target& t : targets_) {
      t.cache->append(in.layer, in.k, in.v, at::Tensor());
      const at::Tensor out = t.cache->attend(in.layer, in.q);
      (*t.cosines)[static_cast<size_t>(in.layer)] = mean_row_cosine(per_position(out), ref);
    }
    return exact;
  }

 private:
  std::vector<Target> targets_;
  model::ExactAttention exact_;
};

/// Metric (b) for one cache: hidden states [appended, hidden] fp32 CPU and MLM argmax.
struct SessionRun {
  at::Tensor hidden;
  std::vector<int64_t> top1;
  at::Tensor prefill_out;
  double prefill_ms = 0.0, append_ms = 0.0;
};

/// The cache under test: Turbo (with `dense` layers in a dense format) or a plain kind.
using TurboLayers = std::map<int, const model::TurboCacheSpec*>;

std::unique_ptr<model::KvCache> make_cache(const model::EsmConfig& cfg, c10::Device dev,
                                           CacheKind kind, const model::TurboCacheSpec* spec,
                                           const std::map<int, CacheKind>& dense,
                                           const TurboLayers& turbo_layers) {
  if (kind == CacheKind::kTurbo)
    return model::make_mixed_kv_cache(cfg, 1, dev, *spec, dense, turbo_layers);
  return model::make_kv_cache(kind, cfg, 1, dev, spec);
}

SessionRun run_session(const std::shared_ptr<const model::Esm2Model>& m, CacheKind kind,
                       const model::TurboCacheSpec* spec, const at::Tensor& prefix,
                       const std::vector<int64_t>& rest, const std::map<int, CacheKind>& dense = {},
                       const TurboLayers& turbo_layers = {}) {
  model::Session s(m, make_cache(m->config(), m->device(), kind, spec, dense, turbo_layers));
  SessionRun r;
  auto t0 = Clock::now();
  r.prefill_out = s.prefill(prefix).to(at::kCPU, at::kFloat);  // the copy synchronizes
  r.prefill_ms = ms_since(t0);
  std::vector<at::Tensor> hs;
  for (int64_t id : rest) {
    const at::Tensor tok = at::full({1, 1}, id, at::TensorOptions().dtype(at::kLong));
    t0 = Clock::now();
    const at::Tensor h = s.append(tok).to(at::kCPU, at::kFloat);
    r.append_ms += ms_since(t0);
    hs.push_back(h[0][0]);
    r.top1.push_back(s.logits()[0][0].argmax().item<int64_t>());
  }
  if (!hs.empty()) r.hidden = at::stack(hs);
  return r;
}

std::string kind_name(CacheKind k) { return model::to_string(k); }

}  // namespace

CompareReport compare_records(const std::shared_ptr<const model::Esm2Model>& model,
                              const model::TurboCacheSpec& turbo_spec,
                              const std::vector<io::FastaRecord>& records,
                              const CompareOptions& opts) {
  TURBOESM_CHECK(model != nullptr, "compare_records: no model");
  TURBOESM_CHECK(!records.empty(), "compare needs at least one FASTA record, got 0");
  TURBOESM_CHECK(model->dtype() == at::kFloat,
                 "compare measures against the FP32 model; this "
                 "model runs in ",
                 c10::toString(model->dtype()), " (load it with dtype fp32)");
  const model::EsmConfig& cfg = model->config();
  turbo_spec.validate(cfg);
  // The Turbo caches' model and spec: as given, or with Π_V folded into the model.
  std::shared_ptr<const model::Esm2Model> tmodel = model;
  model::TurboCacheSpec turbo = turbo_spec;
  if (opts.fold_value_rotation) {
    TURBOESM_CHECK(!opts.alt_turbo,
                   "compare: folding the V rotation into the model applies to one checkpoint; a "
                   "second one (--checkpoint-b) is not supported with it");
    model::ValueFold f = model::fold_value_rotation(*model, turbo_spec);
    tmodel = std::move(f.model);
    turbo = std::move(f.spec);
  }
  for (CacheKind k : opts.baselines)
    TURBOESM_CHECK(k != CacheKind::kTurbo && k != CacheKind::kFp32,
                   "baselines must be fp16, int8 or fp8, got ", kind_name(k));
  const model::TurboCacheSpec turbo_plain = without_qjl(turbo);
  bool has_qjl = turbo.k_config.qjl != quant::QjlMode::kNone;
  // Layers under the second Turbo spec (with and without its QJL, for layer_cosine_no_qjl).
  TurboLayers alt_layers, alt_layers_plain;
  model::TurboCacheSpec alt_plain;
  if (opts.alt_turbo) {
    opts.alt_turbo->validate(cfg);
    alt_plain = without_qjl(*opts.alt_turbo);
    has_qjl = has_qjl || opts.alt_turbo->k_config.qjl != quant::QjlMode::kNone;
    for (int l : opts.alt_layers) {
      alt_layers[l] = opts.alt_turbo.get();
      alt_layers_plain[l] = &alt_plain;
    }
  } else {
    TURBOESM_CHECK(opts.alt_layers.empty(), "compare: alt_layers given without an alt_turbo spec");
  }
  const c10::Device dev = model->device();
  const int L = model->num_layers();

  CompareReport rep;
  rep.dense_layers = opts.dense_layers;
  rep.turbo_description = turbo.summary();
  rep.value_fold = opts.fold_value_rotation;
  {
    const auto c = make_cache(cfg, dev, CacheKind::kTurbo, &turbo, opts.dense_layers, alt_layers);
    if (const auto* mc = dynamic_cast<const model::MixedKvCache*>(c.get()))
      rep.turbo_description = mc->summary();
  }
  rep.num_layers = L;
  rep.cache_names.push_back("turbo");
  for (CacheKind k : opts.baselines) rep.cache_names.push_back(kind_name(k));

  // Bytes per token per head of every format, from the caches themselves.
  for (CacheKind k :
       {CacheKind::kFp32, CacheKind::kFp16, CacheKind::kInt8, CacheKind::kFp8, CacheKind::kTurbo}) {
    auto c = model::make_kv_cache(k, cfg, 1, dev, &turbo);
    rep.bytes_per_token_per_head[kind_name(k)] = c->bytes_per_token_per_head();
    rep.kv_bytes[kind_name(k)] = 0;
  }
  // Σ over layers of each layer's rate (K + V): the dense layers of a mixed cache count theirs.
  std::map<std::string, int64_t> layer_rate_sum;
  for (const auto& kv : rep.bytes_per_token_per_head) layer_rate_sum[kv.first] = kv.second * L;
  {
    const auto mixed =
        make_cache(cfg, dev, CacheKind::kTurbo, &turbo, opts.dense_layers, alt_layers);
    if (const auto* mc = dynamic_cast<const model::MixedKvCache*>(mixed.get())) {
      layer_rate_sum["turbo"] = 0;
      for (int l = 0; l < L; ++l) layer_rate_sum["turbo"] += mc->layer_bytes_per_token_per_head(l);
    }
  }

  c10::InferenceMode guard;
  for (size_t ri = 0; ri < records.size(); ++ri) {
    const std::vector<int64_t> ids = record_token_ids(records[ri], opts.max_residues);
    const int64_t len = static_cast<int64_t>(ids.size()) - 2;
    RecordComparison rc;
    rc.id = records[ri].id;
    rc.length = len;
    for (const auto& kv : layer_rate_sum)
      rep.kv_bytes[kv.first] += kv.second * (len + 2) * cfg.num_attention_heads;

    // (a) teacher-forced, all caches at once on one FP32 forward pass (two when the Turbo caches
    // run on the Π_V-folded model: its forward for them, the given model's for the baselines).
    {
      std::vector<std::unique_ptr<model::KvCache>> caches;
      std::vector<TeacherForcedProbe::Target> turbo_targets, base_targets;
      auto add = [&](std::vector<TeacherForcedProbe::Target>& targets, const std::string& name,
                     CacheKind k, const model::TurboCacheSpec* spec, std::vector<double>* out) {
        caches.push_back(make_cache(cfg, dev, k, spec, opts.dense_layers,
                                    spec == &turbo_plain ? alt_layers_plain : alt_layers));
        out->assign(static_cast<size_t>(L), 0.0);
        targets.push_back({name, caches.back().get(), out});
      };
      CacheScores& ts = rc.caches["turbo"];
      add(turbo_targets, "turbo", CacheKind::kTurbo, &turbo, &ts.layer_cosine);
      if (has_qjl)
        add(turbo_targets, "turbo_no_qjl", CacheKind::kTurbo, &turbo_plain,
            &ts.layer_cosine_no_qjl);
      for (CacheKind k : opts.baselines)
        add(tmodel == model ? turbo_targets : base_targets, kind_name(k), k, nullptr,
            &rc.caches[kind_name(k)].layer_cosine);
      const at::Tensor tokens = at::tensor(ids, at::kLong).view({1, -1});
      const auto probe_forward = [&](const model::Esm2Model& m,
                                     std::vector<TeacherForcedProbe::Target>&& targets) {
        if (targets.empty()) return;
        TeacherForcedProbe probe(std::move(targets));
        model::ForwardOptions fo;
        fo.backend = &probe;
        m.forward(tokens, at::Tensor(), fo);
      };
      probe_forward(*tmodel, std::move(turbo_targets));
      probe_forward(*model, std::move(base_targets));
      if (!has_qjl) ts.layer_cosine_no_qjl = ts.layer_cosine;
    }

    // (b) end to end: prefill <cls> + ceil(L/2) residues, append the rest one at a time.
    const int64_t prefix_len = 1 + (len + 1) / 2;
    const at::Tensor prefix =
        at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + prefix_len), at::kLong)
            .view({1, -1});
    std::vector<int64_t> rest;
    if (opts.end_to_end) rest.assign(ids.begin() + prefix_len, ids.end());
    rc.appended = static_cast<int64_t>(rest.size());
    {
      auto t0 = Clock::now();
      // The Turbo session's model: its prefill runs that model's plain forward bit for bit.
      const at::Tensor plain =
          tmodel->forward(prefix, at::Tensor()).last_hidden_state.to(at::kCPU, at::kFloat);
      rc.plain_forward_ms = ms_since(t0);
      const SessionRun ref = run_session(model, CacheKind::kFp32, nullptr, prefix, rest);
      CacheScores& fs = rc.caches["fp32"];
      fs.prefill_ms = ref.prefill_ms;
      fs.append_ms_per_token = rest.empty() ? 0.0 : ref.append_ms / rest.size();
      auto score = [&](const std::string& name, CacheKind k, const model::TurboCacheSpec* spec) {
        const SessionRun run = run_session(k == CacheKind::kTurbo ? tmodel : model, k, spec, prefix,
                                           rest, opts.dense_layers, alt_layers);
        CacheScores& cs = rc.caches[name];
        cs.prefill_ms = run.prefill_ms;
        cs.append_ms_per_token = rest.empty() ? 0.0 : run.append_ms / rest.size();
        if (!rest.empty()) {
          cs.final_hidden_cosine = mean_row_cosine(run.hidden, ref.hidden);
          int64_t agree = 0;
          for (size_t i = 0; i < rest.size(); ++i) agree += run.top1[i] == ref.top1[i];
          cs.mlm_top1_agreement = static_cast<double>(agree) / rest.size();
        }
        return run;
      };
      const SessionRun tr = score("turbo", CacheKind::kTurbo, &turbo);
      rc.prefill_max_abs_diff = (tr.prefill_out - plain).abs().max().item<double>();
      for (CacheKind k : opts.baselines) score(kind_name(k), k, nullptr);
    }
    rep.records.push_back(std::move(rc));
    if (opts.progress) opts.progress(ri + 1, records.size());
  }
  return rep;
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

namespace {

double mean_of(const std::vector<double>& v) {
  double s = 0.0;
  for (double x : v) s += x;
  return v.empty() ? std::numeric_limits<double>::quiet_NaN() : s / v.size();
}

double min_of(const std::vector<double>& v) {
  double m = std::numeric_limits<double>::infinity();
  for (double x : v) m = std::min(m, x);
  return v.empty() ? std::numeric_limits<double>::quiet_NaN() : m;
}

json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

/// Means over records of one cache's scores.
struct Aggregate {
  double layer_mean = 0, layer_min = 0, no_qjl_mean = 0, no_qjl_min = 0, hidden = 0, top1 = 0;
  double prefill_ms = 0, append_ms = 0;
  std::vector<double> per_layer;
};

Aggregate aggregate(const CompareReport& rep, const std::string& name) {
  std::vector<double> lm, lmin, nm, nmin, hid, top, pre, app;
  std::vector<double> per_layer(static_cast<size_t>(rep.num_layers), 0.0);
  size_t n = 0;
  for (const auto& r : rep.records) {
    const auto it = r.caches.find(name);
    if (it == r.caches.end()) continue;
    const CacheScores& c = it->second;
    if (!c.layer_cosine.empty()) {
      lm.push_back(mean_of(c.layer_cosine));
      lmin.push_back(min_of(c.layer_cosine));
      for (size_t l = 0; l < c.layer_cosine.size() && l < per_layer.size(); ++l)
        per_layer[l] += c.layer_cosine[l];
      ++n;
    }
    if (!c.layer_cosine_no_qjl.empty()) {
      nm.push_back(mean_of(c.layer_cosine_no_qjl));
      nmin.push_back(min_of(c.layer_cosine_no_qjl));
    }
    if (r.appended > 0) {
      hid.push_back(c.final_hidden_cosine);
      top.push_back(c.mlm_top1_agreement);
      app.push_back(c.append_ms_per_token);
    }
    pre.push_back(c.prefill_ms);
  }
  Aggregate a;
  a.layer_mean = mean_of(lm);
  a.layer_min = min_of(lmin);
  a.no_qjl_mean = mean_of(nm);
  a.no_qjl_min = min_of(nmin);
  a.hidden = mean_of(hid);
  a.top1 = mean_of(top);
  a.prefill_ms = mean_of(pre);
  a.append_ms = mean_of(app);
  if (n > 0)
    for (double& x : per_layer) x /= static_cast<double>(n);
  a.per_layer = per_layer;
  return a;
}

double ratio(const CompareReport& rep, const std::string& num_kind, const std::string& den) {
  const int64_t d = rep.kv_bytes.at(den);
  return d > 0 ? static_cast<double>(rep.kv_bytes.at(num_kind)) / d : 0.0;
}

/// {"0": "int8", ...}: the layers the Turbo cache kept in a dense format.
json dense_layers_json(const CompareReport& rep) {
  json j = json::object();
  for (const auto& [layer, kind] : rep.dense_layers) j[std::to_string(layer)] = kind_name(kind);
  return j;
}

}  // namespace

json report_json(const CompareReport& rep) {
  json seqs = json::array();
  for (const auto& r : rep.records) {
    const CacheScores& t = r.caches.at("turbo");
    json s = {{"id", r.id},
              {"length", r.length},
              {"appended_tokens", r.appended},
              {"prefill_max_abs_diff", r.prefill_max_abs_diff},
              {"layer_cosine", t.layer_cosine},
              {"layer_cosine_no_qjl", t.layer_cosine_no_qjl},
              {"final_hidden_cosine", r.appended > 0 ? num(t.final_hidden_cosine) : json()},
              {"mlm_top1_agreement", r.appended > 0 ? num(t.mlm_top1_agreement) : json()}};
    json b = json::object();
    for (size_t i = 1; i < rep.cache_names.size(); ++i) {
      const CacheScores& c = r.caches.at(rep.cache_names[i]);
      b[rep.cache_names[i]] = {
          {"layer_cosine", c.layer_cosine},
          {"final_hidden_cosine", r.appended > 0 ? num(c.final_hidden_cosine) : json()},
          {"mlm_top1_agreement", r.appended > 0 ? num(c.mlm_top1_agreement) : json()}};
    }
    s["baselines"] = b;
    seqs.push_back(s);
  }
  const Aggregate t = aggregate(rep, "turbo");
  double max_diff = 0.0;
  for (const auto& r : rep.records) max_diff = std::max(max_diff, r.prefill_max_abs_diff);
  json summary = {{"records", rep.records.size()},
                  {"turbo", rep.turbo_description},
                  {"value_fold", rep.value_fold},
                  {"layer_cosine_mean", num(t.layer_mean)},
                  {"layer_cosine_min", num(t.layer_min)},
                  {"layer_cosine_no_qjl_mean", num(t.no_qjl_mean)},
                  {"layer_cosine_no_qjl_min", num(t.no_qjl_min)},
                  {"layer_cosine_per_layer", t.per_layer},
                  {"final_hidden_cosine_mean", num(t.hidden)},
                  {"mlm_top1_agreement", num(t.top1)},
                  {"prefill_max_abs_diff", max_diff},
                  {"kv_bytes", rep.kv_bytes},
                  {"bytes_per_token_per_head", rep.bytes_per_token_per_head},
                  {"checkpoint_bytes", rep.checkpoint_bytes},
                  {"dense_layers", dense_layers_json(rep)},
                  {"compression_vs_fp32", ratio(rep, "fp32", "turbo")},
                  {"compression_vs_fp16", ratio(rep, "fp16", "turbo")}};
  json baselines = json::object();
  for (size_t i = 1; i < rep.cache_names.size(); ++i) {
    const std::string& n = rep.cache_names[i];
    const Aggregate a = aggregate(rep, n);
    baselines[n] = {{"layer_cosine_mean", num(a.layer_mean)},
                    {"layer_cosine_min", num(a.layer_min)},
                    {"final_hidden_cosine_mean", num(a.hidden)},
                    {"mlm_top1_agreement", num(a.top1)},
                    {"compression_vs_fp32", ratio(rep, "fp32", n)}};
  }
  summary["baselines"] = baselines;
  json timing = json::object();
  std::vector<std::string> names = {"fp32"};
  names.insert(names.end(), rep.cache_names.begin(), rep.cache_names.end());
  for (const std::string& n : names) {
    const Aggregate a = aggregate(rep, n);
    timing[n] = {{"prefill", num(a.prefill_ms)}, {"append_per_token", num(a.append_ms)}};
  }
  std::vector<double> plain;
  for (const auto& r : rep.records) plain.push_back(r.plain_forward_ms);
  timing["no_cache"] = {{"prefill", num(mean_of(plain))}};
  return json{{"sequences", seqs}, {"summary", summary}, {"timing_ms", timing}};
}

std::string report_table(const CompareReport& rep) {
  std::ostringstream os;
  char buf[512];
  os << "turbo: " << rep.turbo_description
     << (rep.value_fold ? " (V rotation folded into the model's W_V / W_O)" : "") << "\n";
  os << "records: " << rep.records.size() << ", layers: " << rep.num_layers
     << ", checkpoint bytes: " << rep.checkpoint_bytes << "\n\n";
  std::snprintf(buf, sizeof buf, "%-7s %10s %10s %10s %10s %8s %14s %8s %10s %12s\n", "cache",
                "layer_cos", "layer_min", "no_qjl", "final_cos", "top1", "kv_bytes", "x_fp32",
                "prefill_ms", "append_ms/t");
  os << buf;
  std::vector<std::string> names = {"fp32"};
  names.insert(names.end(), rep.cache_names.begin(), rep.cache_names.end());
  for (const std::string& n : names) {
    const Aggregate a = aggregate(rep, n);
    const bool ref = n == "fp32";
    auto f = [](double x, bool blank) {
      char b[32];
      if (blank || !std::isfinite(x))
        std::snprintf(b, sizeof b, "%s", "-");
      else
        std::snprintf(b, sizeof b, "%.5f", x);
      return std::string(b);
    };
    std::snprintf(buf, sizeof buf, "%-7s %10s %10s %10s %10s %8s %14lld %8.2f %10.2f %12.3f\n",
                  n.c_str(), f(a.layer_mean, ref).c_str(), f(a.layer_min, ref).c_str(),
                  f(a.no_qjl_mean, n != "turbo").c_str(), f(a.hidden, ref).c_str(),
                  f(a.top1, ref).c_str(), static_cast<long long>(rep.kv_bytes.at(n)),
                  ratio(rep, "fp32", n), a.prefill_ms, a.append_ms);
    os << buf;
  }
  std::snprintf(buf, sizeof buf, "%-7s %14lld bytes (compression vs fp16: %.2fx)\n", "fp16",
                static_cast<long long>(rep.kv_bytes.at("fp16")), ratio(rep, "fp16", "turbo"));
  os << "\n" << buf;
  const Aggregate t = aggregate(rep, "turbo");
  os << "turbo layer_cosine per layer:";
  for (size_t l = 0; l < t.per_layer.size(); ++l) {
    std::snprintf(buf, sizeof buf, " %.4f", t.per_layer[l]);
    os << buf;
  }
  os << "\n";
  return os.str();
}

}  // namespace turboesm::calibration
