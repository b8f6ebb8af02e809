// SPDX-License-Identifier: MIT
// CPU decode attention, the op alone (Google Benchmark; not part of ctest): one query per head
// against `tokens` cached tokens, batch 1, 20 heads × 64 dims (esm2_t33_650M's attention shape),
// 2 threads (at::set_num_threads; override with TURBOESM_BENCH_THREADS).
//   BM_Fp32Sdpa     at::scaled_dot_product_attention on contiguous fp32 K/V (the FP32 baseline)
//   BM_Fp32Cache    DenseKvCache(fp32)::attend (slices the grown buffers, then SDPA)
//   BM_Fp16Sdpa     SDPA on fp16 K/V (CPU fp16 is emulated: context only)
//   BM_Turbo        ops::turbo_decode on a TurboKvCache, bits (K = V) × norm × QJL
// Counters: `tokens/s` (cached tokens × heads per second), `cache_MB` (bytes the op reads:
// DESIGN kv_bytes for the token count). At the end the program prints each Turbo time as a
// speed-up over BM_Fp32Sdpa with the same token count, measured in the same run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

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

void BM_Fp32Sdpa(benchmark::State& state) {
  set_threads();
  const int64_t T = state.range(0);
  at::manual_seed(1);
  at::Tensor q = at::randn({1, kHeads, 1, kHeadDim}) * 0.125;
  at::Tensor k = at::randn({1, kHeads, T, kHeadDim}), v = at::randn({1, kHeads, T, kHeadDim});
  for (auto _ : state) {
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, 1.0);
    benchmark::DoNotOptimize(o.data_ptr<float>());
  }
  report(state, T, 2 * 4 * kHeadDim);
}
BENCHMARK(BM_Fp32Sdpa)->Arg(1024)->Arg(4096)->Arg(16384)->Unit(benchmark::kMicrosecond);

void BM_Fp16Sdpa(benchmark::State& state) {
  set_threads();
  const int64_t T = state.range(0);
  at::manual_seed(1);
  at::Tensor q = (at::randn({1, kHeads, 1, kHeadDim}) * 0.125).to(at::kHalf);
  at::Tensor k = at::randn({1, kHeads, T, kHeadDim}).to(at::kHalf);
  at::Tensor v = at::randn({1, kHeads, T, kHeadDim}).to(at::kHalf);
  for (auto _ : state) {
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, false, 1.0);
    benchmark::DoNotOptimize(o.data_ptr());
  }
  report(state, T, 2 * 2 * kHeadDim);
}
BENCHMARK(BM_Fp16Sdpa)->Arg(4096)->Unit(benchmark::kMicrosecond);

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
BENCHMARK(BM_Fp32Cache)->Arg(4096)->Unit(benchmark::kMicrosecond);

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
    ->ArgsProduct({{1024, 4096, 16384}, {3}, {0}, {0}})
    ->ArgsProduct({{4096}, {2, 4}, {0}, {0}})
    ->ArgsProduct({{4096}, {3}, {1}, {0, 1, 2}})
    ->Unit(benchmark::kMicrosecond);

/// Console output plus, at the end, Turbo speed-ups over the FP32 SDPA of the same token count.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration) continue;
      const std::string name = r.benchmark_name();
      times_[name] = r.GetAdjustedRealTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nSpeed-up over BM_Fp32Sdpa (same tokens, same run, %d threads):\n",
                at::get_num_threads());
    for (const auto& [name, t] : times_) {
      if (name.rfind("BM_Fp32Sdpa", 0) == 0) continue;
      const auto slash = name.find('/');
      const auto slash2 = name.find('/', slash + 1);
      const std::string tokens = name.substr(
          slash + 1, slash2 == std::string::npos ? std::string::npos : slash2 - slash - 1);
      auto it = times_.find("BM_Fp32Sdpa/" + tokens);
      if (it == times_.end()) continue;
      std::printf("  %-40s %8.1f us  %5.2fx\n", name.c_str(), t, it->second / t);
    }
  }

 private:
  std::map<std::string, double> times_;
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
