// SPDX-License-Identifier: MIT
// Prefill with KV-cache writing vs prefill without (Google Benchmark; not part of ctest), on the
// esm2_t12_35M and esm2_t30_150M shapes with random weights (init std 0.08), batch 1, 256 tokens,
// 2 threads (TURBOESM_BENCH_THREADS overrides).
//   BM_Prefill/<preset>/0   Esm2Model::forward (exact attention, no cache)
//   BM_Prefill/<preset>/1   the same forward through TurboAttention writing a 3-bit Turbo cache
//                           (norm none, QJL none; encode on the CPU, parallel over heads)
//   BM_Prefill/<preset>/2   ... writing a 3-bit Turbo cache with norm token + QJL sign
//   BM_Prefill/<preset>/3   ... writing the FP32 cache
//   BM_CacheWrite/<preset>/<mode>  only what cache writing adds: every layer's append of the
//                           prefill's K/V (precomputed), modes as above. Short, so it repeats
//                           many times and is robust on a busy machine; overhead ≈ this / mode 0.
// Times: wall time and the CPU time of the whole process (all threads; robust when other programs
// load the machine). Each is repeated (5×); the end of the output prints the overhead of cache
// writing over BM_Prefill/<preset>/0 measured in the same run, from the medians (and the minima)
// of the repetitions. On a shared machine add --benchmark_enable_random_interleaving=true so that
// all modes see the same load.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/model/esm2.h"
#include "turboesm/model/turbo_attention.h"
#include "turboesm/model/turbo_cache.h"

namespace tmod = turboesm::model;
namespace tq = turboesm::quant;

namespace {

constexpr int64_t kTokens = 256;
const char* const kPresets[] = {"esm2_t12_35M", "esm2_t30_150M"};

const std::shared_ptr<tmod::Esm2Model>& model_for(int preset) {
  static std::map<int, std::shared_ptr<tmod::Esm2Model>> models;
  auto& m = models[preset];
  if (!m) m = tmod::Esm2Model::random(tmod::EsmConfig::preset(kPresets[preset]), 1, 0.08);
  return m;
}

void BM_Prefill(benchmark::State& state) {
  const char* env = std::getenv("TURBOESM_BENCH_THREADS");
  at::set_num_threads(env ? std::atoi(env) : 2);
  c10::InferenceMode guard;
  const int preset = static_cast<int>(state.range(0));
  const int mode = static_cast<int>(state.range(1));
  const auto& m = model_for(preset);
  at::manual_seed(3);
  at::Tensor tokens = at::randint(4, 24, {1, kTokens}, at::kLong);
  tokens[0][0] = 0;
  tokens[0][kTokens - 1] = 2;
  std::unique_ptr<tmod::KvCache> cache;
  if (mode == 1 || mode == 2) {
    const bool rich = mode == 2;
    auto spec =
        tmod::TurboCacheSpec::random(m->config(), 3, 3, tq::RotationKind::kRandom,
                                     rich ? tq::NormMode::kToken : tq::NormMode::kNone,
                                     rich ? tq::QjlMode::kSign : tq::QjlMode::kNone, 1, 0, 4.0);
    cache = tmod::make_kv_cache(tmod::CacheKind::kTurbo, m->config(), 1, m->device(), &spec);
    state.SetLabel(spec.summary());
  } else if (mode == 3) {
    cache = tmod::make_kv_cache(tmod::CacheKind::kFp32, m->config(), 1, m->device());
    state.SetLabel("fp32 cache");
  } else {
    state.SetLabel("no cache");
  }
  std::unique_ptr<tmod::TurboAttention> att;
  tmod::ForwardOptions fo;
  if (cache) {
    att = std::make_unique<tmod::TurboAttention>(cache.get());
    fo.backend = att.get();
  }
  for (auto _ : state) {
    if (cache) cache->clear();  // buffers kept: steady-state cost of a prefill
    auto out = m->forward(tokens, at::Tensor(), fo);
    benchmark::DoNotOptimize(out.last_hidden_state.data_ptr());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(kTokens) * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Prefill)
    ->ArgsProduct({{0, 1}, {0, 1, 2, 3}})
    ->Iterations(2)
    ->Repetitions(5)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_CacheWrite(benchmark::State& state) {
  const char* env = std::getenv("TURBOESM_BENCH_THREADS");
  at::set_num_threads(env ? std::atoi(env) : 2);
  c10::InferenceMode guard;
  const int preset = static_cast<int>(state.range(0));
  const int mode = static_cast<int>(state.range(1));
  const auto& m = model_for(preset);
  const auto& c = m->config();
  std::unique_ptr<tmod::KvCache> cache;
  if (mode == 3) {
    cache = tmod::make_kv_cache(tmod::CacheKind::kFp32, c, 1, m->device());
  } else {
    const bool rich = mode == 2;
    auto spec = tmod::TurboCacheSpec::random(
        c, 3, 3, tq::RotationKind::kRandom, rich ? tq::NormMode::kToken : tq::NormMode::kNone,
        rich ? tq::QjlMode::kSign : tq::QjlMode::kNone, 1, 0, 4.0);
    cache = tmod::make_kv_cache(tmod::CacheKind::kTurbo, c, 1, m->device(), &spec);
    state.SetLabel(spec.summary());
  }
  at::manual_seed(5);
  const int64_t H = c.num_attention_heads, d = c.head_dim();
  std::vector<at::Tensor> ks, vs;
  for (int l = 0; l < m->num_layers(); ++l) {
    ks.push_back(at::randn({1, H, kTokens, d}) * 0.5);
    vs.push_back(at::randn({1, H, kTokens, d}) * 0.5);
  }
  for (auto _ : state) {
    cache->clear();
    for (int l = 0; l < m->num_layers(); ++l) cache->append(l, ks[l], vs[l], at::Tensor());
  }
}
BENCHMARK(BM_CacheWrite)
    ->ArgsProduct({{0, 1}, {1, 2, 3}})
    ->Repetitions(5)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

class OverheadReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      Times& t = times_[r.run_name.str()];
      t.wall.push_back(r.GetAdjustedRealTime());
      t.cpu.push_back(r.GetAdjustedCPUTime());
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf(
        "\nPrefill overhead of cache writing (same run, %d threads; median of repetitions, "
        "[min]; cpu = process CPU time of all threads):\n",
        at::get_num_threads());
    for (int p = 0; p < 2; ++p) {
      const Times* base = find("BM_Prefill", p, 0);
      if (!base) continue;
      const double bw = median(base->wall), bc = median(base->cpu), bmin = min(base->wall);
      for (int mode = 1; mode <= 3; ++mode) {
        const Times* t = find("BM_Prefill", p, mode);
        const Times* w = find("BM_CacheWrite", p, mode);
        if (!t) continue;
        std::printf(
            "  %-14s mode %d: wall %8.1f ms vs %8.1f ms (%+6.2f%%) [min %+6.2f%%]; cpu %8.1f vs "
            "%8.1f ms (%+6.2f%%)",
            kPresets[p], mode, median(t->wall), bw, 100.0 * (median(t->wall) / bw - 1.0),
            100.0 * (min(t->wall) / bmin - 1.0), median(t->cpu), bc,
            100.0 * (median(t->cpu) / bc - 1.0));
        if (w)
          std::printf(
              "; cache write alone %6.1f ms wall, %6.1f ms cpu = %5.2f%% of the plain "
              "prefill's cpu",
              median(w->wall), median(w->cpu), 100.0 * median(w->cpu) / bc);
        std::printf("\n");
      }
    }
  }

 private:
  struct Times {
    std::vector<double> wall, cpu;
  };
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  static double min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
  /// Times of <bench>/<preset>/<mode>[/...], or nullptr.
  const Times* find(const std::string& bench, int preset, int mode) const {
    const std::string key = bench + "/" + std::to_string(preset) + "/" + std::to_string(mode);
    for (const auto& [name, t] : times_)
      if (!t.wall.empty() && (name == key || name.rfind(key + "/", 0) == 0)) return &t;
    return nullptr;
  }
  std::map<std::string, Times> times_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  OverheadReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
