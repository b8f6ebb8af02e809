// SPDX-License-Identifier: MIT
// CPU decode attention, the op alone (Google Benchmark; not part of ctest): one query per head
// against `tokens` cached tokens, batch 1, 20 heads × 64 dims (esm2_t33_650M's attention shape),
// 2 threads (at::set_num_threads; override with TURBOESM_BENCH_THREADS).
//   BM_Fp32Sdpa     at::scaled_dot_product_attention on contiguous fp32 K/V (the FP32 baseline)
//   BM_Fp32Cache    DenseKvCache(fp32)::attend (slices the grown buffers, then SDPA)
//   BM_Fp16Sdpa     SDPA on fp16 K/V (CPU fp16 is emulated: context only)
//   BM_Turbo        ops::turbo_decode on a TurboKvCache, bits (K = V) × norm × QJL
// Counters: `tokens/s` (cached tokens × heads per second), `cache_MB` (bytes the op reads:
// DESIGN kv_bytes for the token count). Times: real (wall) time, and the CPU time of the whole
// process (all threads; robust when other programs load the machine, as it excludes the time the
// threads wait for a core). At the end the program prints, per benchmark, the medians over the
// repetitions and each speed-up over BM_Fp32Sdpa and BM_Fp32Cache with the same token count,
// measured in the same run. On a shared machine run with
//   --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
// so that baseline and candidate see the same load.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/model/kv_cache.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/ops/turbo_decode.h"

namespace tmod = turboesm::model;
namespace tq = turboesm::quant;

namespace {

constexpr int kHeads = 20;
constexpr int kHeadDim = 64;

tmod::EsmConfig bench_config() {
  tmod::EsmConfig c;
  c.hidden_size = kHeads * kHeadDim;
  c.num_attention_heads = kHeads;
  c.num_hidden_layers = 1;
  c.intermediate_size = 4 * c.hidden_size;
  return c;
}

void set_threads() {
  const char* env = std::getenv("TURBOESM_BENCH_THREADS");
  at::set_num_threads(env ? std::atoi(env) : 2);
}

void report(benchmark::State& state, int64_t tokens, int64_t bytes_per_token_per_head) {
  state.counters["tokens/s"] =
      benchmark::Counter(double(tokens) * kHeads * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["cache_MB"] = double(tokens) * kHeads * bytes_per_token_per_head / 1e6;
}

/// The SDPA baselines: exact attention of one query over T cached tokens stored in `dtype`.
void sdpa_baseline(benchmark::State& state, at::ScalarType dtype) {
  set_threads();
  const int64_t T = state.range(0);
  at::manual_seed(1);
  at::Tensor q = (at::randn({1, kHeads, 1, kHeadDim}) * 0.125).to(dtype);
  at::Tensor k = at::randn({1, kHeads, T, kHeadDim}).to(dtype);
  at::Tensor v = at::randn({1, kHeads, T, kHeadDim}).to(dtype);
  for (auto _ : state) {
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, 1.0);
    benchmark::DoNotOptimize(o.data_ptr());
  }
  report(state, T, 2 * static_cast<int64_t>(c10::elementSize(dtype)) * kHeadDim);
}

void BM_Fp32Sdpa(benchmark::State& state) { sdpa_baseline(state, at::kFloat); }
BENCHMARK(BM_Fp32Sdpa)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_Fp16Sdpa(benchmark::State& state) { sdpa_baseline(state, at::kHalf); }
BENCHMARK(BM_Fp16Sdpa)
    ->Arg(4096)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_Fp32Cache(benchmark::State& state) {
  set_threads();
  const int64_t T = state.range(0);
  at::manual_seed(1);
  auto cache =
      tmod::make_kv_cache(tmod::CacheKind::kFp32, bench_config(), 1, c10::Device(c10::kCPU));
  cache->append(0, at::randn({1, kHeads, T, kHeadDim}), at::randn({1, kHeads, T, kHeadDim}), {});
  at::Tensor q = at::randn({1, kHeads, 1, kHeadDim}) * 0.125;
  for (auto _ : state) {
    at::Tensor o = cache->attend(0, q);
    benchmark::DoNotOptimize(o.data_ptr<float>());
  }
  report(state, T, cache->bytes_per_token_per_head() / 1);
}
BENCHMARK(BM_Fp32Cache)
    ->Arg(1024)
    ->Arg(4096)
    ->Arg(16384)
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

/// args: tokens, bits, norm (0 none / 1 token), qjl (0 none / 1 sign / 2 prod)
void BM_Turbo(benchmark::State& state) {
  set_threads();
  const int64_t T = state.range(0);
  const int bits = static_cast<int>(state.range(1));
  const auto norm = static_cast<tq::NormMode>(state.range(2));
  const auto qjl = static_cast<tq::QjlMode>(state.range(3));
  const auto cfg = bench_config();
  auto spec = tmod::TurboCacheSpec::random(cfg, bits, bits, tq::RotationKind::kRandom, norm, qjl, 1,
                                           0, std::sqrt(double(kHeadDim)));
  tmod::TurboKvCache cache(tmod::CacheShape::of(cfg, 1, c10::Device(c10::kCPU)), spec);
  at::manual_seed(1);
  cache.append(0, at::randn({1, kHeads, T, kHeadDim}), at::randn({1, kHeads, T, kHeadDim}), {});
  at::Tensor q = at::randn({1, kHeads, 1, kHeadDim}) * 0.125;
  at::Tensor lens = at::full({1}, static_cast<int32_t>(T), at::kInt);
  const tq::DecodeParams p = cache.decode_params(0);
  for (auto _ : state) {
    at::Tensor o = turboesm::ops::turbo_decode(q, lens, p.k, p.v, 1.0f);
    benchmark::DoNotOptimize(o.data_ptr<float>());
  }
  report(state, T, cache.bytes_per_token_per_head());
  state.SetLabel(spec.summary());
}
BENCHMARK(BM_Turbo)
    ->ArgsProduct({{1024, 4096, 16384}, {2, 3, 4}, {0, 1}, {0}})
    ->ArgsProduct({{4096}, {3}, {0, 1}, {1, 2}})
    ->MeasureProcessCPUTime()
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

/// Console output plus, at the end, medians over repetitions and speed-ups over the FP32
/// baselines of the same token count (wall time and process CPU time).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      const std::string name = r.run_name.str();
      if (!times_.count(name)) order_.push_back(name);
      times_[name].real.push_back(r.GetAdjustedRealTime());
      times_[name].cpu.push_back(r.GetAdjustedCPUTime());
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf(
        "\nMedians over repetitions (%d threads); speed-up = baseline time / this time, same token "
        "count, same run:\n",
        at::get_num_threads());
    std::printf("  %-28s %10s %10s %9s %9s %9s\n", "benchmark", "wall us", "cpu us", "x Sdpa",
                "x Cache", "cpu x Sdpa");
    for (const std::string& name : order_) {
      const double t = median(times_[name].real), c = median(times_[name].cpu);
      const std::string tokens = token_arg(name);
      const double sdpa = base("BM_Fp32Sdpa/" + tokens, false);
      const double cache = base("BM_Fp32Cache/" + tokens, false);
      const double sdpa_cpu = base("BM_Fp32Sdpa/" + tokens, true);
      std::string shown = name;
      const auto suffix = shown.find("/process_time");
      if (suffix != std::string::npos) shown.resize(suffix);
      std::printf("  %-28s %10.1f %10.1f %9s %9s %9s\n", shown.c_str(), t, c,
                  ratio(sdpa, t).c_str(), ratio(cache, t).c_str(), ratio(sdpa_cpu, c).c_str());
    }
  }

 private:
  struct Times {
    std::vector<double> real, cpu;
  };
  static double median(std::vector<double> v) {
    if (v.empty()) return -1.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
  static std::string token_arg(const std::string& name) {
    const auto slash = name.find('/');
    if (slash == std::string::npos) return "";
    const auto slash2 = name.find('/', slash + 1);
    return name.substr(slash + 1,
                       slash2 == std::string::npos ? std::string::npos : slash2 - slash - 1);
  }
  double base(const std::string& key, bool cpu) const {
    for (const auto& [name, t] : times_)
      if (name == key || name.rfind(key + "/", 0) == 0) return median(cpu ? t.cpu : t.real);
    return -1.0;
  }
  static std::string ratio(double base, double t) {
    if (base <= 0 || t <= 0) return "-";
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.2fx", base / t);
    return buf;
  }
  std::map<std::string, Times> times_;
  std::vector<std::string> order_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
