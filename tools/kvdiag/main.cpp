// SPDX-License-Identifier: MIT
// turboesm-kvdiag: where does the end-to-end error of a compressed KV cache come from?
//
// Runs metric (b) of turboesm-compare (prefill <cls> + ⌈L/2⌉ residues, append the rest one token
// at a time, cosine of the last hidden state against the FP32 cache) through a diagnostic cache
// that stores exact K/V and, per (layer, K|V, token), either the exact vector or its Turbo
// round trip x̂ = decode(encode(x)) under checkpoint A or B. Attention is then exact softmax
// attention over the selected vectors, which equals the code-space decode op for QJL none/sign
// (up to float rounding). So one can quantize K only or V only, one layer at a time, mix two
// checkpoints per layer (bit allocation), keep the first tokens (the <cls> attention sink) exact,
// or quantize only the prefix or only the appended tokens — without touching the cache format.
//
// Experiments: --exp "label|K|V|first|region" (repeatable). K and V: one character for every
// layer ('-' exact, 'A' checkpoint A, 'B' checkpoint B, 'I' INT8 with one fp16 scale per token
// per head, as the int8 cache) or one character per layer ("BAAAAAAAAAAA").
// first: this many leading tokens stay exact. region: all | prefix | appended (which tokens are
// quantized). --per-layer adds "layer<l>" experiments (K and V of layer l only, checkpoint A).
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "turboesm/calibration/checkpoint.h"
#include "turboesm/calibration/collector.h"
#include "turboesm/calibration/compare.h"
#include "turboesm/error.h"
#include "turboesm/io/fasta.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace {

constexpr const char* kProg = "turboesm-kvdiag";
using namespace turboesm;

enum class Region { kAll, kPrefix, kAppended };

/// One experiment: per layer the source of K and V (0 exact, 1 A, 2 B), tokens kept exact.
struct Experiment {
  std::string label;
  std::vector<int> k_src, v_src;  // [layers]
  int64_t exact_first = 0;
  Region region = Region::kAll;
};

std::vector<int> parse_sources(const std::string& s, int layers, const std::string& what) {
  auto code = [&](char c) {
    if (c == '-') return 0;
    if (c == 'A') return 1;
    if (c == 'B') return 2;
    if (c == 'I') return 3;
    TURBOESM_FAIL(what, ": source '", c, "' is not one of '-', 'A', 'B', 'I'");
  };
  if (s.size() == 1) return std::vector<int>(static_cast<size_t>(layers), code(s[0]));
  TURBOESM_CHECK(static_cast<int>(s.size()) == layers, what, ": '", s, "' must have 1 or ", layers,
                 " characters (one per layer), got ", s.size());
  std::vector<int> out;
  for (char c : s) out.push_back(code(c));
  return out;
}

Experiment parse_experiment(const std::string& spec, int layers) {
  std::vector<std::string> f;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, '|');) f.push_back(item);
  TURBOESM_CHECK(f.size() == 5, "--exp '", spec, "' must be label|K|V|first|region");
  Experiment e;
  e.label = f[0];
  e.k_src = parse_sources(f[1], layers, "--exp " + f[0] + " K");
  e.v_src = parse_sources(f[2], layers, "--exp " + f[0] + " V");
  e.exact_first = std::stoll(f[3]);
  TURBOESM_CHECK(e.exact_first >= 0, "--exp ", f[0], ": first must be >= 0");
  if (f[4] == "all")
    e.region = Region::kAll;
  else if (f[4] == "prefix")
    e.region = Region::kPrefix;
  else if (f[4] == "appended")
    e.region = Region::kAppended;
  else
    TURBOESM_FAIL("--exp ", f[0], ": region '", f[4], "' (expected all, prefix, appended)");
  return e;
}

/// Per (layer, head) CPU quantizers of one spec.
struct Quantizers {
  std::vector<std::vector<quant::TurboQuantizer>> k, v;  // [layer][head]
  explicit Quantizers(const model::TurboCacheSpec& spec, int heads) {
    for (const auto& l : spec.layers) {
      k.emplace_back();
      v.emplace_back();
      for (int h = 0; h < heads; ++h) {
        k.back().push_back(l.k.quantizer(h, spec.k_config, spec.rotation));
        v.back().push_back(l.v.quantizer(h, spec.v_config, spec.rotation));
      }
    }
  }
};

/// FP32 cache whose stored rows are, per experiment, exact or the Turbo round trip (batch 1).
class DiagCache final : public model::KvCache {
 public:
  DiagCache(const model::CacheShape& shape, const Experiment& e, const Quantizers* a,
            const Quantizers* b, int64_t prefix_len)
      : KvCache(shape), e_(e), a_(a), b_(b), prefix_len_(prefix_len) {
    TURBOESM_CHECK(shape.batch == 1, "DiagCache: batch 1 only");
    layers_.resize(static_cast<size_t>(shape.layers));
  }
  model::CacheKind kind() const override { return model::CacheKind::kFp32; }
  int64_t allocated_bytes() const override { return 0; }
  int64_t bytes_per_token_per_head() const override { return 8 * shape_.head_dim; }
  int64_t capacity(int layer) const override {
    const auto& l = layers_[static_cast<size_t>(layer)];
    return l.k.defined() ? l.k.size(2) : 0;
  }

 protected:
  void grow(int layer, int64_t tokens) override {
    auto& l = layers_[static_cast<size_t>(layer)];
    const int64_t cap = grown_capacity(capacity(layer), tokens);
    auto fresh = [&](const at::Tensor& old) {
      at::Tensor t = at::zeros({1, shape_.heads, cap, shape_.head_dim}, at::kFloat);
      if (old.defined()) t.narrow(2, 0, old.size(2)).copy_(old);
      return t;
    };
    l.k = fresh(l.k);
    l.v = fresh(l.v);
  }
  void do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                 const std::vector<int64_t>& starts, const std::vector<int64_t>& counts) override {
    auto& l = layers_[static_cast<size_t>(layer)];
    const int64_t n = counts[0], start = starts[0], d = shape_.head_dim;
    store(l.k, k, layer, start, n, true, e_.k_src[static_cast<size_t>(layer)]);
    store(l.v, v, layer, start, n, false, e_.v_src[static_cast<size_t>(layer)]);
    (void)d;
  }
  at::Tensor do_attend(int layer, const at::Tensor& q) const override {
    const auto& l = layers_[static_cast<size_t>(layer)];
    const int64_t len = lengths_[static_cast<size_t>(layer)][0];
    const at::Tensor k = l.k.narrow(2, 0, len), v = l.v.narrow(2, 0, len);
    const at::Tensor p = at::softmax(at::matmul(q, k.transpose(2, 3)), -1);
    return at::matmul(p, v);
  }

 private:
  void store(at::Tensor& dst, const at::Tensor& src, int layer, int64_t start, int64_t n, bool key,
             int source) const {
    dst.narrow(2, start, n).copy_(src.narrow(2, 0, n));
    if (source == 0) return;
    if (source == 3) {  // INT8 as DenseKvCache: one fp16 absmax/127 scale per token per head
      at::Tensor x = dst.narrow(2, start, n);
      const at::Tensor s = (x.abs().amax(-1) / 127.0).to(at::kHalf).to(at::kFloat).unsqueeze(-1);
      const at::Tensor safe = at::where(s > 0, s, at::ones_like(s));
      at::Tensor xh = (x / safe).round().clamp(-127.0, 127.0) * s;
      at::Tensor keep = at::zeros({n}, at::kBool);
      for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = start + t;
        keep[t] = pos < e_.exact_first || (e_.region == Region::kPrefix && pos >= prefix_len_) ||
                  (e_.region == Region::kAppended && pos < prefix_len_);
      }
      x.copy_(at::where(keep.view({1, 1, n, 1}), x, xh));
      return;
    }
    const Quantizers* qs = source == 1 ? a_ : b_;
    TURBOESM_CHECK(qs != nullptr, "experiment ", e_.label, " uses checkpoint B, none given");
    const int H = shape_.heads, d = shape_.head_dim;
    at::Tensor out = dst.narrow(2, start, n).contiguous();
    for (int h = 0; h < H; ++h) {
      const quant::TurboQuantizer& tq =
          (key ? qs->k : qs->v)[static_cast<size_t>(layer)][static_cast<size_t>(h)];
      std::vector<uint8_t> page(static_cast<size_t>(tq.layout().page_bytes));
      for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = start + t;
        if (pos < e_.exact_first) continue;
        if (e_.region == Region::kPrefix && pos >= prefix_len_) continue;
        if (e_.region == Region::kAppended && pos < prefix_len_) continue;
        float* row = out.data_ptr<float>() + (static_cast<int64_t>(h) * n + t) * d;
        std::fill(page.begin(), page.end(), 0);
        tq.encode(row, page.data(), 0);
        tq.decode(page.data(), 0, row);
      }
    }
    dst.narrow(2, start, n).copy_(out);
  }

  struct Layer {
    at::Tensor k, v;  // [1, H, cap, d] fp32, rows as the experiment stores them
  };
  Experiment e_;
  const Quantizers *a_, *b_;
  int64_t prefix_len_;
  std::vector<Layer> layers_;
};

struct Run {
  at::Tensor hidden;  // [appended, hidden]
  std::vector<int64_t> top1;
};

Run run(const std::shared_ptr<const model::Esm2Model>& m, std::unique_ptr<model::KvCache> cache,
        const at::Tensor& prefix, const std::vector<int64_t>& rest) {
  model::Session s(m, std::move(cache));
  s.prefill(prefix);
  Run r;
  std::vector<at::Tensor> hs;
  for (int64_t id : rest) {
    const at::Tensor h = s.append(at::full({1, 1}, id, at::TensorOptions().dtype(at::kLong)));
    hs.push_back(h[0][0].to(at::kFloat));
    r.top1.push_back(s.logits()[0][0].argmax().item<int64_t>());
  }
  r.hidden = at::stack(hs);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Diagnose the end-to-end error of a compressed KV cache (metric (b) of turboesm-compare): "
      "quantize K or V only, per layer, with two checkpoints mixed per layer, with the first "
      "tokens exact, or only the prefix / appended tokens. Prints one line per experiment.",
      kProg};
  std::string model_dir, ckpt_a, ckpt_b, fasta;
  std::vector<std::string> exps;
  int threads = 0;
  int64_t max_records = 0;
  bool per_layer = false;
  app.add_option("--model", model_dir, "HF model directory")->required();
  app.add_option("--checkpoint", ckpt_a, "checkpoint A")->required();
  app.add_option("--checkpoint-b", ckpt_b, "checkpoint B (for 'B' sources)");
  app.add_option("--fasta", fasta, "sequences")->required();
  app.add_option("--exp", exps, "label|K|V|first|region (see the file comment)");
  app.add_flag("--per-layer", per_layer, "add one experiment per layer (K+V of that layer, A)");
  app.add_option("--max-records", max_records, "first N records only (0 = all)");
  app.add_option("--threads", threads, "CPU threads (0 = LibTorch default)");
  if (const int rc = tools::parse_args(app, argc, argv, kProg); rc >= 0) return rc;
  try {
    if (threads > 0) at::set_num_threads(threads);
    c10::InferenceMode guard;
    auto records = io::read_fasta(fasta);
    if (max_records > 0 && static_cast<int64_t>(records.size()) > max_records)
      records.resize(static_cast<size_t>(max_records));
    std::shared_ptr<const model::Esm2Model> m = model::Esm2Model::load(model_dir);
    const model::EsmConfig& cfg = m->config();
    const int L = m->num_layers(), H = static_cast<int>(cfg.num_attention_heads);
    const model::TurboCacheSpec sa = calibration::turbo_cache_spec_from_checkpoint(
        calibration::load_checkpoint(ckpt_a, model_dir));
    sa.validate(cfg);
    const Quantizers qa(sa, H);
    std::unique_ptr<Quantizers> qb;
    if (!ckpt_b.empty()) {
      const model::TurboCacheSpec sb = calibration::turbo_cache_spec_from_checkpoint(
          calibration::load_checkpoint(ckpt_b, model_dir));
      sb.validate(cfg);
      qb = std::make_unique<Quantizers>(sb, H);
    }
    std::vector<Experiment> ex;
    for (const std::string& s : exps) ex.push_back(parse_experiment(s, L));
    if (per_layer)
      for (int l = 0; l < L; ++l) {
        std::string src(static_cast<size_t>(L), '-');
        src[static_cast<size_t>(l)] = 'A';
        ex.push_back(
            parse_experiment("layer" + std::to_string(l) + "|" + src + "|" + src + "|0|all", L));
      }
    TURBOESM_CHECK(!ex.empty(), "no experiments (pass --exp or --per-layer)");
    std::vector<double> cos_sum(ex.size(), 0.0), top_sum(ex.size(), 0.0);
    for (size_t ri = 0; ri < records.size(); ++ri) {
      const std::vector<int64_t> ids = calibration::record_token_ids(records[ri], 1022);
      const int64_t len = static_cast<int64_t>(ids.size()) - 2, prefix_len = 1 + (len + 1) / 2;
      const at::Tensor prefix =
          at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + prefix_len), at::kLong)
              .view({1, -1});
      const std::vector<int64_t> rest(ids.begin() + prefix_len, ids.end());
      const Run ref =
          run(m, model::make_kv_cache(model::CacheKind::kFp32, cfg, 1, m->device()), prefix, rest);
      for (size_t e = 0; e < ex.size(); ++e) {
        const Run r = run(m,
                          std::make_unique<DiagCache>(model::CacheShape::of(cfg, 1, m->device()),
                                                      ex[e], &qa, qb.get(), prefix_len),
                          prefix, rest);
        const double c = calibration::mean_row_cosine(r.hidden, ref.hidden);
        int64_t agree = 0;
        for (size_t i = 0; i < rest.size(); ++i) agree += r.top1[i] == ref.top1[i];
        cos_sum[e] += c;
        top_sum[e] += static_cast<double>(agree) / rest.size();
        std::fprintf(stderr, "%s: record %zu %s: %.5f\n", kProg, ri, ex[e].label.c_str(), c);
      }
    }
    const double n = static_cast<double>(records.size());
    std::printf("%-24s %12s %8s\n", "experiment", "final_cos", "top1");
    for (size_t e = 0; e < ex.size(); ++e)
      std::printf("%-24s %12.5f %8.3f\n", ex[e].label.c_str(), cos_sum[e] / n, top_sum[e] / n);
    return 0;
  } catch (const std::exception& e) {
    return tools::report_error(kProg, e);
  }
}
