// SPDX-License-Identifier: MIT
// Whole-model GPU timings (issue 6), a benchmark program (not ctest, not Google Benchmark: each
// section builds a model of hundreds of MB to 30 GB once). Random FP16 weights drawn directly on
// the GPU (Esm2Model::random_on_device), batch 1 unless given. CUDA events around each measured
// call on the caller's stream, synchronised, warm-ups first, medians reported. tools/gpu_model.sh
// runs every section and the HF comparison (bench_prefill_hf.py) in one go.
//
//   bench_model_cuda config <preset>           the preset's HF config.json (for the HF script)
//   bench_model_cuda decode [preset] [tokens]  per appended token, `tokens` cached (default
//                                              esm2_t33_650M, 1024): turbo 3-bit (hadamard, norm
//                                              none) eager / CUDA graph, fp16 cache eager / graph;
//                                              what the graph step is made of; the turbo graph
//                                              step again with the eager dense ops and without
//                                              programmatic dependent launch; rounds of the
//                                              fused decode-append vs the append as its own
//                                              kernel, the model with Π_V folded into W_V / W_O
//                                              (model/value_fold.h), interleaved
//   bench_model_cuda prefill [preset] [res] [batch]
//                                              prefill of `batch` (1) sequences of `res` residues
//                                              (default 1024): plain forward vs Session::prefill
//                                              writing the turbo cache (quantize-on-append: tile
//                                              path, and the row path for comparison; the
//                                              Π_V-folded model and spec) and the
//                                              fp16 cache, each with its writes on a side
//                                              stream (default) and on the forward's stream
//                                              ("_serial"); SDPA backend; the forward with
//                                              each layer's cache write between CUDA events
//                                              (the writes' time inside a prefill); the writes
//                                              alone (head-major and token-major K/V)
//   bench_model_cuda profile_step [preset] [tokens] [turbo|fp16]
//                                              one CUDA-graph decode step between
//                                              cudaProfilerStart/Stop (for `ncu
//                                              --profile-from-start off`: every kernel's time)
//   bench_model_cuda trace_step [preset] [tokens] [turbo|fp16]
//                                              graph decode steps traced by CUPTI (kernels not
//                                              serialised): each kernel's start/end, how far it
//                                              moves the step's end, per role (builds with CUPTI)
//   bench_model_cuda timeline_step [preset] [tokens] [carveout]
//                                              the decode attention's phases inside CUDA-graph
//                                              steps, CTA by CTA (a build with
//                                              -DTURBOESM_DECODE_TIMELINE=ON; decode_timeline.h);
//                                              carveout: set_decode_shared_carveout (-1: the
//                                              driver's; default: the library's)
//   bench_model_cuda gemv                     decode_gemv alone on the 650M and 15B products,
//                                              per grid (ctas_per_sm), beside at::sum and at::mv
//   bench_model_cuda big [preset] [res] [n]    15B shapes (default esm2_t48_15B, 1024, 1024):
//                                              prefill `res` residues, then `n` appended tokens
//                                              through the 3-bit cache (graph) and the fp16 cache;
//                                              memory (weights, caches, peak) and time per token;
//                                              the turbo graph step with decode_gemv's
//                                              one-CTA-per-task grid
// Every section prints a table and one line `JSON {...}` with all numbers.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_profiler_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "turboesm/error.h"
#include "turboesm/kernels/decode_gemv.h"
#include "turboesm/kernels/decode_timeline.h"
#include "turboesm/kernels/pdl.h"
#include "turboesm/kernels/turbo_decode.h"
#include "turboesm/model/decode_graph.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/model/value_fold.h"

#ifdef TURBOESM_BENCH_CUPTI
#include "bench/kernel_trace.h"
#endif

namespace {

namespace tk = turboesm::kernels;
namespace tm = turboesm::model;
namespace tq = turboesm::quant;
#ifdef TURBOESM_BENCH_CUPTI
namespace bench = turboesm::bench;
#endif

const c10::Device kCuda(c10::kCUDA, 0);

/// Milliseconds of `fn` on the current stream (CUDA events, synchronised). `host_ms`, if given,
/// receives the host time until `fn` returned (≈ the event time: the host is the bottleneck).
double time_ms(const std::function<void()>& fn, double* host_ms = nullptr) {
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  start.record();
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  const auto t1 = std::chrono::steady_clock::now();
  stop.record();
  stop.synchronize();
  if (host_ms) *host_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  return static_cast<double>(start.elapsed_time(stop));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

double gib(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

int64_t allocated_now() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].current;
}
int64_t allocated_peak() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak;
}

/// <cls> + `residues` random residue tokens (L A G V S E R T I D P K Q N F Y M H W C: 4..23) +
/// <eos>, as [1, residues + 2] int64 CPU.
at::Tensor protein_tokens(int64_t residues, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor t = at::randint(4, 24, {1, residues + 2}, at::kLong);
  t[0][0] = 0;
  t[0][residues + 1] = 2;
  return t;
}

std::shared_ptr<tm::Esm2Model> fp16_model(const std::string& preset) {
  tm::LoadOptions lo;
  lo.device = kCuda;
  lo.dtype = at::kHalf;
  return tm::Esm2Model::random_on_device(tm::EsmConfig::preset(preset), 1, 0.02, lo);
}

tm::TurboCacheSpec turbo3(const tm::EsmConfig& c) {
  return tm::TurboCacheSpec::random(c, 3, 3, tq::RotationKind::kHadamard, tq::NormMode::kNone,
                                    tq::QjlMode::kNone, 1, 0, 4.0);
}

std::unique_ptr<tm::KvCache> make_cache(const tm::Esm2Model& m, tm::CacheKind kind,
                                        const tm::TurboCacheSpec* spec, int64_t batch = 1) {
  return tm::make_kv_cache(kind, m.config(), batch, kCuda, spec);
}

struct Json {
  std::ostringstream os;
  bool first = true;
  void add(const std::string& k, double v) {
    os << (first ? "" : ", ") << '"' << k << "\": " << v;
    first = false;
  }
  void add(const std::string& k, const std::string& v) {
    os << (first ? "" : ", ") << '"' << k << "\": \"" << v << '"';
    first = false;
  }
  void add(const std::string& k, const std::vector<double>& v) {
    os << (first ? "" : ", ") << '"' << k << "\": [";
    for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
    os << ']';
    first = false;
  }
  std::string str() const { return "{" + os.str() + "}"; }
};

/// Per-token times of `steps` single-token appends after `warmup` untimed ones.
std::vector<double> time_appends(tm::Session& s, int warmup, int steps, uint64_t seed) {
  const at::Tensor toks = protein_tokens(warmup + steps, seed);
  std::vector<double> ms;
  for (int i = 0; i < warmup + steps; ++i) {
    const at::Tensor t = toks.narrow(1, 1 + i, 1).contiguous();
    const double x = time_ms([&] { s.append(t); });
    if (i >= warmup) ms.push_back(x);
  }
  return ms;
}

/// Median ms of one replay of `work` captured in a CUDA graph (after one eager warm-up).
double graph_ms(const std::function<void()>& work, int iters = 50) {
  const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream();
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  side.synchronize();
  caller.synchronize();
  at::cuda::CUDAGraph g;
  {
    c10::cuda::CUDAStreamGuard sg(side);
    work();
    side.synchronize();
    g.capture_begin();
    work();
    g.capture_end();
  }
  side.synchronize();
  std::vector<double> ms;
  c10::cuda::CUDAStreamGuard sg(side);
  for (int i = 0; i < iters + 3; ++i) {
    const double x = time_ms([&] { g.replay(); });
    if (i >= 3) ms.push_back(x);
  }
  return median(ms);
}

/// What a graph step is made of: the layers' GEMMs alone (the weight-streaming floor), the
/// attention through the cache alone (device_step of every layer), each as one CUDA graph.
void decode_breakdown(tm::Esm2Model& m, tm::KvCache& cache, const std::string& name, Json& j) {
  const auto& c = m.config();
  const auto o = at::TensorOptions().device(kCuda).dtype(at::kHalf);
  const at::Tensor x = at::randn({1, 1, c.hidden_size}, o);
  const at::Tensor y = at::randn({1, 1, c.intermediate_size}, o);
  const double gemm = graph_ms([&] {
    for (const auto& w : m.weights().layers) {
      (void)at::linear(x, w.qkv_weight, w.qkv_bias);
      (void)at::linear(x, w.o_weight, w.o_bias);
      (void)at::linear(x, w.fc1_weight, w.fc1_bias);
      (void)at::linear(y, w.fc2_weight, w.fc2_bias);
    }
  });
  // The same products as matrix-vector calls (cuBLAS gemv) + bias: what a M = 1 path could use.
  const at::Tensor xv = x.view({-1}), yv = y.view({-1});
  const double gemv = graph_ms([&] {
    for (const auto& w : m.weights().layers) {
      (void)at::add(at::mv(w.qkv_weight, xv), w.qkv_bias);
      (void)at::add(at::mv(w.o_weight, xv), w.o_bias);
      (void)at::add(at::mv(w.fc1_weight, xv), w.fc1_bias);
      (void)at::add(at::mv(w.fc2_weight, yv), w.fc2_bias);
    }
  });
  int64_t weight_bytes = 0;
  for (const auto& w : m.weights().layers)
    for (const at::Tensor* t : {&w.qkv_weight, &w.o_weight, &w.fc1_weight, &w.fc2_weight})
      weight_bytes += t->nbytes();
  const int64_t H = c.num_attention_heads, d = c.head_dim();
  const at::Tensor q = at::randn({1, H, 1, d}, o) * 0.125, k = at::randn({1, H, 1, d}, o);
  const at::Tensor v = at::randn({1, H, 1, d}, o);
  const int64_t n = cache.lengths(0)[0];
  const auto io = at::TensorOptions().device(kCuda).dtype(at::kInt);
  const at::Tensor len = at::full({1}, n, io), after = at::full({1}, n + 1, io);
  const int64_t bucket = (n + 1 + 255) / 256 * 256;
  cache.reserve(bucket);
  const double attn = graph_ms([&] {
    for (int i = 0; i < m.num_layers(); ++i)
      (void)cache.device_step(i, q, k, v, len, after, bucket);
  });
  // Turbo: the same with the append as its own kernel before the decode kernel.
  auto* turbo = dynamic_cast<tm::TurboKvCache*>(&cache);
  if (turbo != nullptr) {
    turbo->set_fused_step_append(false);
    const double two = graph_ms([&] {
      for (int i = 0; i < m.num_layers(); ++i)
        (void)cache.device_step(i, q, k, v, len, after, bucket);
    });
    turbo->set_fused_step_append(true);
    std::printf(
        "  breakdown %s: attention via device_step alone, append + decode as two kernels "
        "%.4f ms\n",
        name.c_str(), two);
    j.add(name + "_attention_only_two_kernels_ms", two);
  }
  // The dense part of every layer as a step runs it (pre-LN + QKV projection; O projection +
  // residual, LN + FC1 + GELU, FC2 + residual), through decode_gemv and through the eager ops.
  const at::Tensor h1 = at::randn({1, 1, c.hidden_size}, o);
  const at::Tensor attn32 = at::randn({1, H, 1, d}, o.dtype(at::kFloat));
  double dense[2];
  for (int fused = 1; fused >= 0; --fused) {
    m.set_fused_decode_gemv(fused == 1);
    dense[fused] = graph_ms([&] {
      for (int i = 0; i < m.num_layers(); ++i) {
        (void)m.layer_qkv_projection(i, h1);
        (void)m.layer_finish(i, h1, attn32);
      }
    });
  }
  m.set_fused_decode_gemv(true);
  // decode_gemv's grid (Esm2Model::set_decode_gemv_ctas_per_sm): one CTA per task, 2 or 3 per SM.
  for (int ctas : {tk::kDecodeGemvCtaPerTask, 2, 3}) {
    m.set_decode_gemv_ctas_per_sm(ctas);
    const double ms = graph_ms([&] {
      for (int i = 0; i < m.num_layers(); ++i) {
        (void)m.layer_qkv_projection(i, h1);
        (void)m.layer_finish(i, h1, attn32);
      }
    });
    const std::string key = ctas < 0 ? "cta_per_task" : std::to_string(ctas) + "_per_sm";
    std::printf("  breakdown %s: dense layers through decode_gemv, grid %s: %.4f ms\n",
                name.c_str(), key.c_str(), ms);
    j.add(name + "_dense_decode_gemv_" + key + "_ms", ms);
  }
  m.set_decode_gemv_ctas_per_sm(0);
  std::printf(
      "  breakdown %s: dense layers (LN, QKV, O + residual, LN + FC1 + GELU, FC2 + residual) "
      "through decode_gemv %.4f ms (%.0f GB/s), through the eager ops %.4f ms\n",
      name.c_str(), dense[1], weight_bytes / 1e6 / dense[1], dense[0]);
  j.add(name + "_dense_decode_gemv_ms", dense[1]);
  j.add(name + "_dense_eager_ops_ms", dense[0]);
  std::printf(
      "  breakdown %s: %d layers' GEMMs alone %.4f ms (%.2f GB weights, %.0f GB/s); "
      "attention via device_step alone %.4f ms (%lld cached, bucket %lld)\n",
      name.c_str(), m.num_layers(), gemm, weight_bytes / 1e9, weight_bytes / 1e6 / gemm, attn,
      static_cast<long long>(n), static_cast<long long>(bucket));
  std::printf("  breakdown %s: the same products as at::mv + bias %.4f ms (%.0f GB/s)\n",
              name.c_str(), gemv, weight_bytes / 1e6 / gemv);
  j.add(name + "_gemm_only_ms", gemm);
  j.add(name + "_gemv_only_ms", gemv);
  j.add(name + "_gemm_gbps", weight_bytes / 1e6 / gemm);
  j.add(name + "_attention_only_ms", attn);
}

/// A session of the section's cache `kind` ("turbo": 3-bit, `spec`; "fp16") with the CUDA graph
/// on up to `max_length` tokens, prefilled with `cached` tokens.
std::unique_ptr<tm::Session> graph_session(const std::shared_ptr<tm::Esm2Model>& m,
                                           const std::string& kind, const tm::TurboCacheSpec& spec,
                                           int64_t cached, int64_t max_length, const char* what) {
  TURBOESM_CHECK(kind == "turbo" || kind == "fp16", what,
                 ": cache kind must be turbo or fp16, got '", kind, "'");
  const bool turbo = kind == "turbo";
  auto s = std::make_unique<tm::Session>(
      m, make_cache(*m, turbo ? tm::CacheKind::kTurbo : tm::CacheKind::kFp16,
                    turbo ? &spec : nullptr));
  s->enable_cuda_graph(max_length, 256);
  s->prefill(protein_tokens(cached - 2, 7));
  return s;
}

/// One graph replay between cudaProfilerStart and cudaProfilerStop, after the capture and a few
/// replays: run under `ncu --profile-from-start off` to time every kernel of a decode step.
int section_profile_step(const std::string& preset, int64_t cached, const std::string& kind) {
  c10::InferenceMode guard;
  auto m = fp16_model(preset);
  const tm::TurboCacheSpec spec = turbo3(m->config());
  const auto session = graph_session(m, kind, spec, cached, cached + 16, "profile_step");
  tm::Session& s = *session;
  const at::Tensor toks = protein_tokens(8, 11);
  for (int i = 0; i < 4; ++i) (void)s.append(toks.narrow(1, 1 + i, 1).contiguous());
  c10::cuda::device_synchronize();
  TURBOESM_CHECK(cudaProfilerStart() == cudaSuccess, "cudaProfilerStart failed");
  const double ms = time_ms([&] { (void)s.append(toks.narrow(1, 5, 1).contiguous()); });
  c10::cuda::device_synchronize();
  TURBOESM_CHECK(cudaProfilerStop() == cudaSuccess, "cudaProfilerStop failed");
  std::printf("profiled one %s graph step: %.4f ms (captures %lld)\n", kind.c_str(), ms,
              static_cast<long long>(s.cuda_graph()->captures()));
  return 0;
}

#ifdef TURBOESM_BENCH_CUPTI
/// One CUDA-graph decode step as it really runs: every kernel's GPU start and end from CUPTI (not
/// serialised, so programmatic dependent launch keeps its overlap). For each kernel, in start
/// order: how far it moved the step's end (its end minus the latest end before it; these sum to
/// the step's span) and how early it started (its start minus that latest end: negative = it
/// was already resident, e.g. launched early by PDL). Summed per role over a step; medians over
/// the traced steps. A role is the kernel's name, numbered by its position within a layer when
/// the step runs it a multiple of `layers` times (decode_gemv#0..3 = QKV, O, FC1, FC2).
int section_trace_step(const std::string& preset, int64_t cached, const std::string& kind) {
  c10::InferenceMode guard;
  auto m = fp16_model(preset);
  const tm::TurboCacheSpec spec = turbo3(m->config());
  constexpr int kWarmup = 5, kSteps = 30;
  auto session = [&] {
    return graph_session(m, kind, spec, cached, cached + kWarmup + kSteps + 1, "trace_step");
  };
  // The same step untraced first, then traced (CUPTI on before that session's graph capture).
  const double plain_ms = median(time_appends(*session(), kWarmup, kSteps, 11));
  bench::KernelTrace trace;
  auto s = session();
  c10::cuda::device_synchronize();
  (void)trace.take();  // the prefill's kernels
  const double traced_ms = median(time_appends(*s, kWarmup, kSteps, 11));
  c10::cuda::device_synchronize();
  std::vector<bench::KernelRecord> all = trace.take();
  // Graph replays: a replay ends where a graph node repeats.
  std::vector<std::vector<bench::KernelRecord>> steps;
  std::set<uint64_t> nodes;
  for (const auto& r : all) {
    if (r.graph_id == 0) continue;
    if (steps.empty() || nodes.count(r.graph_node_id)) {
      steps.emplace_back();
      nodes.clear();
    }
    nodes.insert(r.graph_node_id);
    steps.back().push_back(r);
  }
  TURBOESM_CHECK(steps.size() >= static_cast<size_t>(kSteps), "trace_step: CUPTI reported ",
                 steps.size(), " graph replays, expected ", kWarmup + kSteps, " (", all.size(),
                 " kernels in all)");
  steps.erase(steps.begin(), steps.end() - kSteps);
  const int layers = m->num_layers();
  struct Row {
    std::string role;
    double start_us, end_us, dur_us, moved_us, early_us;
  };
  auto analyse = [&](const std::vector<bench::KernelRecord>& k) {
    std::map<std::string, int> count, seen;
    for (const auto& r : k) ++count[r.name];
    std::vector<Row> rows;
    const uint64_t t0 = k.front().start_ns;
    uint64_t latest = k.front().start_ns;
    for (const auto& r : k) {
      const int n = count[r.name];
      std::string role = r.name;
      if (n > layers && n % layers == 0) role += "#" + std::to_string(seen[r.name] % (n / layers));
      ++seen[r.name];
      const double us = 1e-3;
      rows.push_back({role, us * double(r.start_ns - t0), us * double(r.end_ns - t0),
                      us * double(r.end_ns - r.start_ns),
                      us * double(r.end_ns > latest ? r.end_ns - latest : 0),
                      us * (double(r.start_ns) - double(latest))});
      latest = std::max(latest, r.end_ns);
    }
    return rows;
  };
  std::map<std::string, std::vector<double>> moved, dur, early, count;
  std::vector<double> span;
  std::vector<std::string> order;
  for (const auto& k : steps) {
    std::map<std::string, double> mv, du, ea;
    std::map<std::string, int> n;
    double total = 0.0;
    for (const Row& r : analyse(k)) {
      if (!mv.count(r.role) && std::find(order.begin(), order.end(), r.role) == order.end())
        order.push_back(r.role);
      mv[r.role] += r.moved_us;
      du[r.role] += r.dur_us;
      ea[r.role] += r.early_us;
      ++n[r.role];
      total += r.moved_us;
    }
    for (const auto& [role, x] : mv) {
      moved[role].push_back(x);
      dur[role].push_back(du[role]);
      early[role].push_back(ea[role] / n[role]);
      count[role].push_back(n[role]);
    }
    span.push_back(total);
  }
  Json j;
  j.add("preset", preset);
  j.add("cache", kind);
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  j.add("step_ms_untraced", plain_ms);
  j.add("step_ms_traced", traced_ms);
  j.add("span_us", median(span));
  j.add("kernels_per_step", static_cast<double>(steps.front().size()));
  std::printf(
      "%s graph step, %lld cached: %.4f ms untraced, %.4f ms traced (CUPTI), kernel span %.1f "
      "us, %zu kernels\n",
      kind.c_str(), static_cast<long long>(cached), plain_ms, traced_ms, median(span),
      steps.front().size());
  std::printf("%-32s %10s %12s %12s %14s\n", "role (per step, medians)", "kernels", "sum dur us",
              "moved end us", "mean early us");
  for (const std::string& role : order) {
    std::printf("%-32s %10.0f %12.1f %12.1f %14.2f\n", role.c_str(), median(count[role]),
                median(dur[role]), median(moved[role]), median(early[role]));
    j.add("moved_us_" + role, median(moved[role]));
    j.add("dur_us_" + role, median(dur[role]));
    j.add("early_us_" + role, median(early[role]));
  }
  // One whole step (the one with the median span), kernel by kernel.
  size_t mid = 0;
  {
    std::vector<size_t> idx(steps.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return span[a] < span[b]; });
    mid = idx[idx.size() / 2];
  }
  std::printf("step %zu kernel by kernel:\n%-32s %10s %10s %9s %9s %9s\n", mid, "role", "start us",
              "end us", "dur", "moved", "early");
  for (const Row& r : analyse(steps[mid]))
    std::printf("%-32s %10.2f %10.2f %9.2f %9.2f %9.2f\n", r.role.c_str(), r.start_us, r.end_us,
                r.dur_us, r.moved_us, r.early_us);
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}
#endif

/// The decode attention of CUDA-graph steps phase by phase (kernels/decode_timeline.h; a build
/// with -DTURBOESM_DECODE_TIMELINE=ON). Per layer (one launch number), times are µs after the
/// launch's *release* — the first CTA past griddepcontrol.wait, i.e. about when the Q/K/V
/// product finished — for the cached-token split CTAs (median and latest over the CTAs), the
/// new token's CTA and the merge CTAs; each figure is then the median over layers and steps.
/// In-CTA times come from clock64 (converted with the clock rate each CTA's globaltimer and
/// clock64 spans imply), the alignment across CTAs from globaltimer.
int section_timeline_step(const std::string& preset, int64_t cached, int carveout) {
  if (!tk::decode_timeline_compiled()) {
    std::fprintf(stderr,
                 "bench_model_cuda: timeline_step needs a build with "
                 "-DTURBOESM_DECODE_TIMELINE=ON (decode_timeline.h)\n");
    return 2;
  }
  c10::InferenceMode guard;
  auto m = fp16_model(preset);
  const tm::TurboCacheSpec spec = turbo3(m->config());
  constexpr int kWarmup = 3, kSteps = 20;
  constexpr size_t kCapacity = size_t{1} << 15;
  at::Tensor buf = at::zeros({static_cast<int64_t>(tk::decode_timeline_bytes(kCapacity))},
                             at::TensorOptions().device(kCuda).dtype(at::kByte));
  // Set before the graph capture (the first append): the launches keep it in every replay.
  TURBOESM_CHECK(tk::set_decode_timeline(buf.data_ptr(), kCapacity), "set_decode_timeline");
  tk::set_decode_shared_carveout(carveout);  // also captured with the graph
  struct Off {
    ~Off() {
      tk::set_decode_timeline(nullptr, 0);
      tk::set_decode_shared_carveout(tk::kDecodeSharedCarveoutDefault);
    }
  } off;
  auto s = graph_session(m, "turbo", spec, cached, cached + kWarmup + kSteps + 2, "timeline_step");
  const at::Tensor toks = protein_tokens(kWarmup + kSteps + 2, 13);
  int t = 1;
  for (int i = 0; i < kWarmup; ++i) (void)s->append(toks.narrow(1, t++, 1).contiguous());
  using Rec = tk::DecodeTimelineRecord;
  // Figures per (launch, step), then medians.
  std::map<std::string, std::vector<double>> fig;
  std::vector<std::string> order;
  auto add = [&](const std::string& k, double v) {
    if (!fig.count(k)) order.push_back(k);
    fig[k].push_back(v);
  };
  int launches = 0, ctas = 0, splits = 0;
  for (int step = 0; step < kSteps; ++step) {
    buf.narrow(0, 0, 4).zero_();
    (void)s->append(toks.narrow(1, t++, 1).contiguous());
    c10::cuda::device_synchronize();
    const at::Tensor head = buf.narrow(0, 0, 4).cpu();
    uint32_t n = 0;
    std::memcpy(&n, head.data_ptr(), 4);
    TURBOESM_CHECK(n > 0 && n <= kCapacity, "timeline_step: ", n, " records (capacity ", kCapacity,
                   ")");
    const at::Tensor body = buf.narrow(0, 64, static_cast<int64_t>(n * sizeof(Rec))).cpu();
    std::vector<Rec> recs(n);
    std::memcpy(recs.data(), body.data_ptr(), n * sizeof(Rec));
    // Clock rate: ns per cycle from the CTAs' own spans.
    std::vector<double> rate;
    for (const Rec& r : recs) {
      const int last = (r.flags & tk::kTimelineMerge) ? static_cast<int>(tk::kMergeEnd)
                                                      : static_cast<int>(tk::kPhaseEnd);
      const double cyc = static_cast<double>(r.clock[last] - r.clock[0]);
      if (cyc > 4000 && r.globaltimer_end > r.globaltimer_start)
        rate.push_back(static_cast<double>(r.globaltimer_end - r.globaltimer_start) / cyc);
    }
    TURBOESM_CHECK(!rate.empty(), "timeline_step: no CTA long enough to calibrate the clock");
    const double ns_per_cycle = median(rate);
    if (step == 0) add("ns per cycle (SM clock)", ns_per_cycle * 1000.0);  // ×1000: 3 decimals
    auto at_ns = [&](const Rec& r, int k) {
      return static_cast<double>(r.globaltimer_start) +
             static_cast<double>(r.clock[k] - r.clock[0]) * ns_per_cycle;
    };
    std::map<uint32_t, std::vector<const Rec*>> by_launch;
    for (const Rec& r : recs) by_launch[r.launch].push_back(&r);
    launches = static_cast<int>(by_launch.size());
    for (const auto& [id, rs] : by_launch) {
      double release = 1e300;
      for (const Rec* r : rs)
        if (!(r->flags & tk::kTimelineMerge))
          release = std::min(release, at_ns(*r, tk::kPhaseAfterWait));
      std::map<std::string, std::vector<double>> per;  // this launch's CTAs
      int n_ctas = 0;
      for (const Rec* r : rs) {
        const bool merge = r->flags & tk::kTimelineMerge;
        if (merge) {
          per["merge entered"].push_back(at_ns(*r, tk::kMergeEntry) - release);
          per["merge passed wait"].push_back(at_ns(*r, tk::kMergeAfterWait) - release);
          per["merge end"].push_back(at_ns(*r, tk::kMergeEnd) - release);
          continue;
        }
        ++n_ctas;
        splits = std::max(splits, static_cast<int>(r->split) + 1);
        const std::string who =
            (r->flags & tk::kTimelineAppendCta) ? "new-token CTA" : "cached CTAs";
        static const char* kNames[] = {"entered",     "before wait", "passed wait", "q' done",
                                       "tables done", "tokens done", "reduced",     "end"};
        for (int k = 0; k < tk::kDecodePhases; ++k)
          per[who + ": " + kNames[k]].push_back(at_ns(*r, k) - release);
      }
      ctas = n_ctas;
      for (auto& [k, v] : per) {
        add(k + " (median)", 1e-3 * median(v));
        add(k + " (latest)", 1e-3 * *std::max_element(v.begin(), v.end()));
      }
    }
  }
  Json j;
  j.add("preset", preset);
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  j.add("cached", static_cast<double>(cached));
  std::printf(
      "decode attention phases, %s, %lld cached, graph steps: %d launches per step, %d decode "
      "CTAs per launch (%d splits per row), %s kernel, shared carve-out %d\n"
      "us after the launch's release (first CTA past its wait), medians over %d steps x %d "
      "launches\n",
      preset.c_str(), static_cast<long long>(cached), launches, ctas, splits,
      tk::turbo_decode_staged() ? "staged" : "look-up-table", carveout, kSteps, launches);
  std::sort(order.begin(), order.end());
  for (const std::string& k : order) {
    std::printf("%-44s %9.3f\n", k.c_str(), median(fig[k]));
    j.add(k, median(fig[k]));
  }
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}

int section_decode(const std::string& preset, int64_t cached) {
  c10::InferenceMode guard;
  auto m = fp16_model(preset);
  const tm::TurboCacheSpec spec = turbo3(m->config());
  const at::Tensor prefix = protein_tokens(cached - 2, 7);  // `cached` tokens with <cls>/<eos>
  constexpr int kWarmup = 5, kSteps = 50;
  Json j;
  j.add("preset", preset);
  j.add("cached_tokens", static_cast<double>(cached));
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  std::printf("%-28s %12s %12s %10s\n", "decode step (batch 1)", "median ms", "mean ms",
              "captures");
  for (int kind = 0; kind < 2; ++kind) {
    for (int graph = 0; graph < 2; ++graph) {
      const bool turbo = kind == 0;
      tm::Session s(m, make_cache(*m, turbo ? tm::CacheKind::kTurbo : tm::CacheKind::kFp16,
                                  turbo ? &spec : nullptr));
      if (graph) s.enable_cuda_graph(cached + kWarmup + kSteps + 1, 256);
      s.prefill(prefix);
      std::vector<double> ms = time_appends(s, kWarmup, kSteps, 11);
      double mean = 0.0;
      for (double x : ms) mean += x / static_cast<double>(ms.size());
      const std::string name =
          std::string(turbo ? "turbo3" : "fp16") + (graph ? "_graph" : "_eager");
      const long long caps = graph ? static_cast<long long>(s.cuda_graph()->captures()) : 0;
      std::printf("%-28s %12.4f %12.4f %10lld\n", name.c_str(), median(ms), mean, caps);
      j.add(name + "_ms_per_token", median(ms));
      j.add(name + "_mean_ms", mean);
      if (turbo && !graph) j.add("turbo3_kv_bytes", static_cast<double>(s.kv_bytes()));
      if (!turbo && !graph) j.add("fp16_kv_bytes", static_cast<double>(s.kv_bytes()));
      if (graph) decode_breakdown(*m, s.cache(), turbo ? "turbo3" : "fp16", j);
    }
  }
  // The turbo graph step again with one fast path switched off (`toggle(false)` before, `true`
  // after): what that path buys, in the same run.
  const auto graph_step_without = [&](const std::string& name,
                                      const std::function<void(bool)>& toggle) {
    toggle(false);
    tm::Session s(m, make_cache(*m, tm::CacheKind::kTurbo, &spec));
    s.enable_cuda_graph(cached + kWarmup + kSteps + 1, 256);
    s.prefill(prefix);
    const double ms = median(time_appends(s, kWarmup, kSteps, 11));
    toggle(true);
    std::printf("%-28s %12.4f\n", name.c_str(), ms);
    j.add(name + "_ms_per_token", ms);
  };
  // A/B, interleaved so that drift hits every variant: rounds of 50 graph steps on each session
  // — the default step (the step's inputs in one launch, kernels/decode_embed.h; the append
  // inside the attention launch: one launch per layer + the merge kernel), the same with the
  // step's inputs from the ~20 eager ops (Esm2Model::set_fused_step_inputs(false) around that
  // session's steps, captures included), the fused step with the splits merged by the row's last
  // CTA, 8 cached splits (TurboKvCache::set_step_splits; automatic: 4 for the 1280-slot view of
  // 1024 cached tokens), quantize_append + turbo_decode (two launches, splits merged in the decode
  // kernel), decode_gemv's grid as one CTA per task (default: as many CTAs as fit, looping
  // over the tasks; Esm2Model::set_decode_gemv_ctas_per_sm around that session's steps), the
  // attention with 4-warp CTAs (default: 8 where every CTA has an SM;
  // kernels::set_turbo_decode_wide_ctas around the steps), 5 cached splits (5 + 1 splits ×
  // 20 heads = 120 CTAs, still one per SM), the model with Π_V folded into W_V / W_O
  // (model/value_fold.h; the same spec's K side, V unrotated: no Π_V in the step's append or
  // the merge kernel), and both with the look-up-table kernel instead of the staged one
  // (kernels::set_turbo_decode_staged(false) around the steps; staged: the cached splits'
  // records decoded into shared memory before the dependency wait, 5 + 1 splits), and the
  // step's kernels leaving the shared-memory carve-out to the driver
  // (kernels::set_decode_shared_carveout(-1) around the steps; default: the largest), with the
  // staged and the look-up-table attention, and decode_gemv loading its epilogue and LayerNorm
  // inputs where they are used (kernels::set_decode_gemv_early_loads(false) around the steps;
  // default: early), with the default and the Π_V-folded model.
  {
    constexpr int kRounds = 4;
    struct Variant {
      const char* key;
      const char* label;
      std::function<void(tm::TurboKvCache&)> setup;
      bool eager_inputs = false;
      int gemv_ctas_per_sm = 0;  // Esm2Model::set_decode_gemv_ctas_per_sm around the steps
      bool wide_ctas = true;     // kernels::set_turbo_decode_wide_ctas around the steps
      bool value_fold = false;   // the Π_V-folded model and spec (model/value_fold.h)
      bool staged = true;        // kernels::set_turbo_decode_staged around the steps
      int carveout = tk::kDecodeSharedCarveoutDefault;  // set_decode_shared_carveout around
      bool early_loads = true;  // kernels::set_decode_gemv_early_loads around the steps
      std::array<int, 4> warps{};  // Esm2Model::set_decode_gemv_warps around the steps
    };
    std::vector<Variant> variants = {
        {"ab_default_ms", "default", [](tm::TurboKvCache&) {}},
        {"ab_eager_inputs_ms", "eager step inputs", [](tm::TurboKvCache&) {}, true},
        {"ab_merge_in_kernel_ms", "merge in kernel",
         [](tm::TurboKvCache& c) { c.set_step_splits(0, true); }},
        {"ab_splits8_ms", "8 splits", [](tm::TurboKvCache& c) { c.set_step_splits(8, false); }},
        {"ab_two_kernels_ms", "append kernel + decode",
         [](tm::TurboKvCache& c) { c.set_fused_step_append(false); }},
        {"ab_gemv_cta_per_task_ms", "gemv CTA per task", [](tm::TurboKvCache&) {}, false,
         tk::kDecodeGemvCtaPerTask},
        {"ab_narrow_ctas_ms", "4-warp attention CTAs", [](tm::TurboKvCache&) {}, false, 0, false},
        {"ab_wide_ctas_splits5_ms", "8-warp CTAs, 5 splits",
         [](tm::TurboKvCache& c) { c.set_step_splits(5, false); }},
        {"ab_value_fold_ms", "V rotation folded", [](tm::TurboKvCache&) {}, false, 0, true, true},
        {"ab_lut_ms", "look-up-table splits", [](tm::TurboKvCache&) {}, false, 0, true, false,
         false},
        {"ab_lut_value_fold_ms", "look-up-table splits, V folded", [](tm::TurboKvCache&) {}, false,
         0, true, true, false},
        {"ab_driver_carveout_ms", "driver's carve-out", [](tm::TurboKvCache&) {}, false, 0, true,
         false, true, -1},
        {"ab_lut_driver_carveout_ms", "look-up-table splits, driver's carve-out",
         [](tm::TurboKvCache&) {}, false, 0, true, false, false, -1},
        {"ab_gemv_late_loads_ms", "gemv late loads", [](tm::TurboKvCache&) {}, false, 0, true,
         false, true, tk::kDecodeSharedCarveoutDefault, false},
        {"ab_gemv_late_loads_fold_ms", "gemv late loads, V folded", [](tm::TurboKvCache&) {}, false,
         0, true, true, true, tk::kDecodeSharedCarveoutDefault, false},
    };
    // decode_gemv's CTA width per product (Q/K/V, O, FC1, FC2; default 8 warps for Q/K/V and
    // 16 for the others at one row): 4 everywhere (the width before session 26), 8, 16, and
    // Q/K/V at 4.
    for (const auto& [key, label, warps, fold] :
         {std::make_tuple("ab_gemv_warps4_ms", "gemv 4-warp CTAs", std::array<int, 4>{4, 4, 4, 4},
                          false),
          std::make_tuple("ab_gemv_warps4_fold_ms", "gemv 4-warp CTAs, V folded",
                          std::array<int, 4>{4, 4, 4, 4}, true),
          std::make_tuple("ab_gemv_warps8_ms", "gemv 8-warp CTAs", std::array<int, 4>{8, 8, 8, 8},
                          false),
          std::make_tuple("ab_gemv_warps16_ms", "gemv 16-warp CTAs",
                          std::array<int, 4>{16, 16, 16, 16}, false),
          std::make_tuple("ab_gemv_qkv4_ms", "gemv Q/K/V 4 warps",
                          std::array<int, 4>{4, 16, 16, 16}, false)}) {
      Variant v{key, label, [](tm::TurboKvCache&) {}};
      v.warps = warps;
      v.value_fold = fold;
      variants.push_back(v);
    }
    const tm::ValueFold vfold = tm::fold_value_rotation(*m, spec);
    std::vector<std::unique_ptr<tm::Session>> sessions;
    for (const Variant& v : variants) {
      const std::shared_ptr<tm::Esm2Model>& vm = v.value_fold ? vfold.model : m;
      sessions.push_back(std::make_unique<tm::Session>(
          vm, make_cache(*vm, tm::CacheKind::kTurbo, v.value_fold ? &vfold.spec : &spec)));
      v.setup(dynamic_cast<tm::TurboKvCache&>(sessions.back()->cache()));
      sessions.back()->enable_cuda_graph(cached + kRounds * (kWarmup + kSteps) + 1, 256);
      sessions.back()->prefill(prefix);
    }
    std::vector<std::vector<double>> ms(variants.size());
    for (int r = 0; r < kRounds; ++r) {
      std::printf("  A/B round %d:", r);
      for (size_t i = 0; i < variants.size(); ++i) {
        if (variants[i].eager_inputs) m->set_fused_step_inputs(false);
        m->set_decode_gemv_ctas_per_sm(variants[i].gemv_ctas_per_sm);
        const std::array<int, 4>& w = variants[i].warps;
        m->set_decode_gemv_warps(w[0], w[1], w[2], w[3]);
        vfold.model->set_decode_gemv_warps(w[0], w[1], w[2], w[3]);
        {
          const tk::ScopedTurboDecodeWideCtas wide(variants[i].wide_ctas);
          const tk::ScopedTurboDecodeStaged staged(variants[i].staged);
          tk::set_decode_shared_carveout(variants[i].carveout);
          tk::set_decode_gemv_early_loads(variants[i].early_loads);
          ms[i].push_back(median(time_appends(*sessions[i], kWarmup, kSteps, 20 + r)));
        }
        tk::set_decode_gemv_early_loads(true);
        m->set_decode_gemv_warps(0, 0, 0, 0);
        vfold.model->set_decode_gemv_warps(0, 0, 0, 0);
        m->set_fused_step_inputs(true);
        m->set_decode_gemv_ctas_per_sm(0);
        tk::set_decode_shared_carveout(tk::kDecodeSharedCarveoutDefault);
        std::printf("%s %s %.4f ms", i ? "," : "", variants[i].label, ms[i].back());
      }
      std::printf("\n");
    }
    for (size_t i = 0; i < variants.size(); ++i) j.add(variants[i].key, ms[i]);
  }
  // The dense layers on the eager ops (cuBLAS, LayerNorm, GELU, add launches), not decode_gemv.
  graph_step_without("turbo3_graph_eager_dense", [&](bool on) { m->set_fused_decode_gemv(on); });
  // Every kernel launched the plain way (no programmatic dependent launch).
  graph_step_without("turbo3_graph_no_pdl",
                     [](bool on) { tm::set_programmatic_dependent_launch(on); });
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}

/// TurboAttention's prefill step (exact attention, then the layer's cache write) with CUDA events
/// around each write: the writes' GPU time inside a real forward (other L2 contents and
/// neighbours than the write-alone loop), without Session's bookkeeping. The events are recorded
/// on the stream (no synchronisation); read them after the forward. Where the forward is
/// host-bound (batch 1), an interval also holds the GPU's wait for the write's launch.
class TimedPrefillAttention final : public tm::AttentionBackend {
 public:
  explicit TimedPrefillAttention(tm::KvCache* cache) : cache_(cache) {}
  at::Tensor attend(const tm::AttentionInputs& in, at::Tensor* probs_out) override {
    at::Tensor out = exact_.attend(in, probs_out);
    auto ev = std::make_unique<std::pair<at::cuda::CUDAEvent, at::cuda::CUDAEvent>>(
        at::cuda::CUDAEvent(cudaEventDefault), at::cuda::CUDAEvent(cudaEventDefault));
    ev->first.record();
    cache_->append(in.layer, in.k, in.v, at::Tensor());
    ev->second.record();
    events_.push_back(std::move(ev));
    return out;
  }
  /// Σ over the layers of the write's event interval, ms (synchronises); forgets the events.
  double take_append_ms() {
    double ms = 0.0;
    for (auto& ev : events_) {
      ev->second.synchronize();
      ms += static_cast<double>(ev->first.elapsed_time(ev->second));
    }
    events_.clear();
    return ms;
  }

 private:
  tm::KvCache* cache_;
  tm::ExactAttention exact_;
  std::vector<std::unique_ptr<std::pair<at::cuda::CUDAEvent, at::cuda::CUDAEvent>>> events_;
};

/// Runs `fn` on a high-priority stream of the current device, ordered after the current stream
/// and joined back into it (the caller's events time it), as Session::prefill runs its forward
/// when the cache writes go to a side stream.
void on_high_priority_stream(const std::function<void()>& fn) {
  static const c10::cuda::CUDAStream hi = c10::cuda::getStreamFromPool(/*isHighPriority=*/true);
  at::cuda::CUDAEvent fork, join;
  fork.record();
  fork.block(hi);
  {
    c10::cuda::CUDAStreamGuard guard(hi);
    fn();
    join.record(hi);
  }
  join.block(at::cuda::getCurrentCUDAStream());
}

int section_prefill(const std::string& preset, int64_t residues, int64_t batch) {
  c10::InferenceMode guard;
  auto m = fp16_model(preset);
  const tm::TurboCacheSpec spec = turbo3(m->config());
  const tm::TurboCacheSpec spec_sign = tm::TurboCacheSpec::random(
      m->config(), 3, 3, tq::RotationKind::kHadamard, tq::NormMode::kToken, tq::QjlMode::kSign, 1);
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) rows.push_back(protein_tokens(residues, 5 + b));
  const at::Tensor tokens = at::cat(rows, 0).to(kCuda);  // [batch, residues + 2]
  constexpr int kWarmup = 3, kIters = 20;
  Json j;
  j.add("preset", preset);
  j.add("residues", static_cast<double>(residues));
  j.add("batch", static_cast<double>(batch));
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  {
    // Which fused attention backend the exact prefill attention gets (SDPBackend enum:
    // 0 math, 1 flash, 2 efficient, 3 cudnn).
    const int64_t T = tokens.size(1), H = m->config().num_attention_heads;
    const int64_t d = m->config().head_dim();
    const auto o = at::TensorOptions().device(kCuda).dtype(at::kHalf);
    const at::Tensor q = at::randn({1, H, T, d}, o);
    const int64_t backend = at::_fused_sdp_choice(q, q, q, {}, 0.0, false, 1.0);
    const char* names[] = {"math", "flash", "efficient", "cudnn", "overrideable"};
    const std::string bname = backend >= 0 && backend <= 4 ? names[backend] : "error";
    std::printf("exact prefill attention: SDPA backend %s (%lld)\n", bname.c_str(),
                static_cast<long long>(backend));
    j.add("sdpa_backend", bname);
  }
  // The modes are interleaved (one call of each per round) so that clock or host drift hits all
  // alike; medians over the rounds. Host time = until the call returned.
  tm::Session st(m, make_cache(*m, tm::CacheKind::kTurbo, &spec, batch));
  tm::Session ss(m, make_cache(*m, tm::CacheKind::kTurbo, &spec_sign, batch));
  tm::Session sf(m, make_cache(*m, tm::CacheKind::kFp16, nullptr, batch));
  tm::Session sr(m, make_cache(*m, tm::CacheKind::kTurbo, &spec, batch));  // the row kernel
  dynamic_cast<tm::TurboKvCache&>(sr.cache())
      .set_cuda_append_path(tm::TurboKvCache::CudaAppendPath::kRows);
  // Π_V folded into W_V / W_O (model/value_fold.h): the same spec's K side, V without rotation.
  const tm::ValueFold vfold = tm::fold_value_rotation(*m, spec);
  tm::Session sv(vfold.model, make_cache(*vfold.model, tm::CacheKind::kTurbo, &vfold.spec, batch));
  // The same three caches with the writes on the forward's stream (KvCache::set_side_writes):
  // what the side stream buys.
  tm::Session st_serial(m, make_cache(*m, tm::CacheKind::kTurbo, &spec, batch));
  tm::Session sv_serial(vfold.model,
                        make_cache(*vfold.model, tm::CacheKind::kTurbo, &vfold.spec, batch));
  tm::Session sf_serial(m, make_cache(*m, tm::CacheKind::kFp16, nullptr, batch));
  for (tm::Session* s : {&st_serial, &sv_serial, &sf_serial}) s->cache().set_side_writes(false);
  // The others write on the side stream whatever the size (by default only prefills of
  // Session::kSideWritesMinTokens positions or more do).
  for (tm::Session* s : {&st, &sv, &sf, &ss, &sr}) s->set_side_writes_min_tokens(0);
  std::printf("side writes: every prefill here; by default from %lld positions (this one: %lld)\n",
              static_cast<long long>(tm::Session::kSideWritesMinTokens),
              static_cast<long long>(tokens.numel()));
  const std::vector<std::pair<std::string, std::function<void()>>> modes = {
      {"forward", [&] { m->forward(tokens, at::Tensor()); }},
      {"prefill_turbo3", [&] { st.prefill(tokens); }},
      {"prefill_turbo3_serial", [&] { st_serial.prefill(tokens); }},
      {"prefill_turbo3_vfold", [&] { sv.prefill(tokens); }},
      {"prefill_turbo3_vfold_serial", [&] { sv_serial.prefill(tokens); }},
      {"prefill_turbo3_rows", [&] { sr.prefill(tokens); }},
      {"prefill_turbo3_sign", [&] { ss.prefill(tokens); }},
      {"prefill_fp16", [&] { sf.prefill(tokens); }},
      {"prefill_fp16_serial", [&] { sf_serial.prefill(tokens); }},
      // The plain forward on a high-priority stream, as Session::prefill runs it with side
      // writes (a control: alone it should take the forward's time).
      {"forward_hi", [&] { on_high_priority_stream([&] { m->forward(tokens, at::Tensor()); }); }}};
  std::map<std::string, std::vector<double>> gpu, host;
  for (int i = 0; i < kWarmup + kIters; ++i) {
    for (const auto& mo : modes) {
      double h = 0.0;
      const double x = time_ms(mo.second, &h);
      if (i >= kWarmup) {
        gpu[mo.first].push_back(x);
        host[mo.first].push_back(h);
      }
    }
  }
  const std::string title = "prefill (batch " + std::to_string(batch) + ")";
  std::printf("%-28s %12s %14s %10s\n", title.c_str(), "median ms", "host-side ms", "vs forward");
  const double base = median(gpu["forward"]);
  for (const auto& mo : modes) {
    const double med = median(gpu[mo.first]);
    std::printf("%-28s %12.3f %14.3f %+9.1f%%\n", mo.first.c_str(), med, median(host[mo.first]),
                100.0 * (med / base - 1.0));
    j.add(mo.first + "_ms", med);
    j.add(mo.first + "_host_ms", median(host[mo.first]));
    j.add(mo.first + "_min_ms", *std::min_element(gpu[mo.first].begin(), gpu[mo.first].end()));
    if (mo.first != "forward") j.add("overhead_" + mo.first + "_pct", 100.0 * (med / base - 1.0));
  }
  // Where a prefill's extra time goes: the same forward with each layer's cache write between
  // CUDA events (in-situ write time), against the plain forward, interleaved.
  {
    TimedPrefillAttention timed_turbo(&st.cache()), timed_fp16(&sf.cache()),
        timed_vfold(&sv.cache());
    // (name, timed backend, its cache, the model it runs on)
    struct Timed {
      const char* name;
      TimedPrefillAttention* t;
      tm::KvCache* cache;
      const tm::Esm2Model* model;
    };
    const std::vector<Timed> timed = {{"turbo3", &timed_turbo, &st.cache(), m.get()},
                                      {"fp16", &timed_fp16, &sf.cache(), m.get()},
                                      {"vfold", &timed_vfold, &sv.cache(), vfold.model.get()}};
    std::map<std::string, std::vector<double>> total, writes;
    for (int i = 0; i < kWarmup + kIters; ++i) {
      for (const Timed& t : timed) {
        tm::ForwardOptions fo;
        fo.backend = t.t;
        t.cache->clear();
        const double x = time_ms([&] { t.model->forward(tokens, at::Tensor(), fo); });
        const double w = t.t->take_append_ms();
        if (i >= kWarmup) {
          total[t.name].push_back(x);
          writes[t.name].push_back(w);
        }
      }
      const double f = time_ms([&] { m->forward(tokens, at::Tensor()); });
      if (i >= kWarmup) total["forward"].push_back(f);
    }
    const double f = median(total["forward"]);
    for (const Timed& t : timed) {
      const std::string name = t.name;
      const double x = median(total[name]), w = median(writes[name]);
      std::printf(
          "in-situ %-6s: forward + writes %.3f ms (forward alone %.3f, %+.1f%%), writes inside "
          "it %.3f ms, the rest %+.3f ms\n",
          name.c_str(), x, f, 100.0 * (x / f - 1.0), w, x - f - w);
      j.add("insitu_" + name + "_ms", x);
      j.add("insitu_" + name + "_writes_ms", w);
      j.add("insitu_" + name + "_forward_ms", f);
    }
    st.cache().check_device_status();
  }
  // GPU-side time of the plain forward: embeddings, layers and final norm (the part without host
  // synchronisation) captured in one CUDA graph, with the default SDPA backend choice and with
  // cuDNN attention disabled (flash). Shows how much of the eager forward is host launch time.
  for (int cudnn = 1; cudnn >= 0; --cudnn) {
    const bool was = at::globalContext().userEnabledCuDNNSDP();
    at::globalContext().setSDPUseCuDNN(cudnn == 1 && was);
    try {
      tm::ExactAttention exact;
      const at::Tensor pos = at::arange(tokens.size(1), tokens.options());
      auto cs = m->rotary().cos_sin(pos, m->dtype());
      const double g = graph_ms(
          [&] {
            at::Tensor h = m->embed(tokens, at::Tensor());
            for (int i = 0; i < m->num_layers(); ++i) {
              tm::Qkv qkv = m->layer_qkv(i, h, cs.first, cs.second);
              tm::AttentionInputs in;
              in.layer = i;
              in.q = qkv.q;
              in.k = qkv.k;
              in.v = qkv.v;
              h = m->layer_finish(i, h, exact.attend(in, nullptr));
            }
            (void)m->final_norm(h);
          },
          20);
      double host = 0.0;
      std::vector<double> eager, hosts;
      for (int i = 0; i < kWarmup + kIters; ++i) {
        const double x = time_ms([&] { m->forward(tokens, at::Tensor()); }, &host);
        if (i >= kWarmup) {
          eager.push_back(x);
          hosts.push_back(host);
        }
      }
      const std::string name = cudnn ? "sdpa_default" : "sdpa_no_cudnn";
      std::printf(
          "forward, %-14s: eager %.3f ms (host %.3f ms), layers as one CUDA graph %.3f ms\n",
          name.c_str(), median(eager), median(hosts), g);
      j.add("forward_" + name + "_eager_ms", median(eager));
      j.add("forward_" + name + "_host_ms", median(hosts));
      j.add("forward_" + name + "_graph_ms", g);
    } catch (const std::exception& e) {
      std::printf("forward graph (%s) failed: %s\n", cudnn ? "default" : "no cudnn", e.what());
    }
    at::globalContext().setSDPUseCuDNN(was);
  }
  // Cache writing alone: every layer's append of prefill-shaped K/V (fp16, as the model makes
  // them, unless named), turbo (quantize-on-append kernel: the tile path's variants, the row
  // path) and fp16. The tile path's rotation runs on fp16 tensor cores for fp16 rows and in
  // 3xTF32 otherwise; a Hadamard Π (entries ±2^-3 at d 64) is exact in both, a random Π is not.
  {
    const int64_t T = tokens.size(1), H = m->config().num_attention_heads;
    const int64_t d = m->config().head_dim();
    const auto o = at::TensorOptions().device(kCuda).dtype(at::kHalf);
    const at::Tensor k = at::randn({batch, H, T, d}, o), v = at::randn({batch, H, T, d}, o);
    // The model's own layout: token-major [B, T, H, d] buffers viewed as [B, H, T, d]
    // (layer_qkv's outputs; the turbo kernel reads them in place, the FP16 cache copies them).
    const at::Tensor k_tm = at::randn({batch, T, H, d}, o).permute({0, 2, 1, 3});
    const at::Tensor v_tm = at::randn({batch, T, H, d}, o).permute({0, 2, 1, 3});
    const tm::TurboCacheSpec spec_random =
        tm::TurboCacheSpec::random(m->config(), 3, 3, tq::RotationKind::kRandom,
                                   tq::NormMode::kNone, tq::QjlMode::kNone, 1, 0, 4.0);
    auto random_cache = make_cache(*m, tm::CacheKind::kTurbo, &spec_random, batch);
    struct WriteCase {
      std::string name;
      tm::KvCache* cache;
      at::ScalarType dtype;
      tm::TurboKvCache::CudaAppendPath path;
      bool token_major = false;  // K/V as layer_qkv makes them (else head-major contiguous)
    };
    using Path = tm::TurboKvCache::CudaAppendPath;
    const std::vector<WriteCase> cases = {
        {"cache_write_turbo3", &st.cache(), at::kHalf, Path::kAuto},
        {"cache_write_turbo3_vfold", &sv.cache(), at::kHalf, Path::kAuto},
        {"cache_write_turbo3_random", random_cache.get(), at::kHalf, Path::kAuto},
        {"cache_write_turbo3_bf16", &st.cache(), at::kBFloat16, Path::kAuto},
        {"cache_write_turbo3_fp32_random", random_cache.get(), at::kFloat, Path::kAuto},
        {"cache_write_turbo3_rows", &st.cache(), at::kHalf, Path::kRows},
        {"cache_write_fp16", &sf.cache(), at::kHalf, Path::kAuto},
        {"cache_write_turbo3_token_major", &st.cache(), at::kHalf, Path::kAuto, true},
        {"cache_write_fp16_token_major", &sf.cache(), at::kHalf, Path::kAuto, true}};
    for (const WriteCase& wc : cases) {
      if (auto* tc = dynamic_cast<tm::TurboKvCache*>(wc.cache)) tc->set_cuda_append_path(wc.path);
      const at::Tensor kx = (wc.token_major ? k_tm : k).to(wc.dtype);
      const at::Tensor vx = (wc.token_major ? v_tm : v).to(wc.dtype);
      std::vector<double> g, h;
      for (int i = 0; i < kWarmup + kIters; ++i) {
        wc.cache->clear();
        double hh = 0.0;
        const double x = time_ms(
            [&] {
              for (int l = 0; l < m->num_layers(); ++l) wc.cache->append(l, kx, vx, at::Tensor());
            },
            &hh);
        if (i >= kWarmup) {
          g.push_back(x);
          h.push_back(hh);
        }
      }
      std::printf("%-30s %12.3f %14.3f   (%d layers' K/V appends alone)\n", wc.name.c_str(),
                  median(g), median(h), m->num_layers());
      j.add(wc.name + "_ms", median(g));
      j.add(wc.name + "_host_ms", median(h));
      wc.cache->check_device_status();
      if (auto* tc = dynamic_cast<tm::TurboKvCache*>(wc.cache))
        tc->set_cuda_append_path(Path::kAuto);
    }
  }
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}

int section_big(const std::string& preset, int64_t residues, int steps) {
  c10::InferenceMode guard;
  Json j;
  j.add("preset", preset);
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  (void)at::zeros({1}, at::TensorOptions().device(kCuda));  // initialises the allocator's stats
  const int64_t before = allocated_now();
  double init_ms = 0.0;
  std::shared_ptr<tm::Esm2Model> m;
  init_ms = time_ms([&] { m = fp16_model(preset); });
  const int64_t weights = allocated_now() - before;
  std::printf("%s: random fp16 weights on the GPU: %.2f GiB in %.0f ms (head dim %lld)\n",
              preset.c_str(), gib(weights), init_ms,
              static_cast<long long>(m->config().head_dim()));
  j.add("weights_gib", gib(weights));
  j.add("head_dim", static_cast<double>(m->config().head_dim()));
  const tm::TurboCacheSpec spec = turbo3(m->config());
  const at::Tensor prefix = protein_tokens(residues, 9);
  const int64_t total = prefix.size(1) + steps;
  for (int kind = 0; kind < 2; ++kind) {
    const bool turbo = kind == 0;
    const std::string name = turbo ? "turbo3" : "fp16";
    c10::cuda::CUDACachingAllocator::resetPeakStats(0);
    const int64_t base = allocated_now();
    tm::Session s(m, make_cache(*m, turbo ? tm::CacheKind::kTurbo : tm::CacheKind::kFp16,
                                turbo ? &spec : nullptr));
    s.enable_cuda_graph(total, 256);  // reserves `total` tokens
    std::vector<double> pre;
    for (int i = 0; i < 3; ++i) pre.push_back(time_ms([&] { s.prefill(prefix); }));
    const int64_t eager_steps = 16;
    s.disable_cuda_graph();
    std::vector<double> eager = time_appends(s, 2, static_cast<int>(eager_steps) - 2, 21);
    s.enable_cuda_graph(total, 256);
    std::vector<double> graph = time_appends(s, 0, steps - static_cast<int>(eager_steps), 23);
    double graph_total = 0.0;
    for (double x : graph) graph_total += x;
    const int64_t cache_alloc = s.allocated_bytes(), kv = s.kv_bytes();
    const int64_t peak = allocated_peak() - base;
    std::printf(
        "%-7s prefill %lld tok %.1f ms | append: eager %.2f ms/token, graph %.2f ms/token "
        "(median of %zu; %zu tokens in %.2f s) | cache at %lld tokens: kv_bytes %.3f GiB, "
        "allocated %.3f GiB | peak above weights %.2f GiB | captures %lld\n",
        name.c_str(), static_cast<long long>(prefix.size(1)), median(pre), median(eager),
        median(graph), graph.size(), graph.size(), graph_total / 1000.0,
        static_cast<long long>(s.lengths()[0]), gib(kv), gib(cache_alloc), gib(peak),
        static_cast<long long>(s.cuda_graph()->captures()));
    j.add(name + "_prefill_ms", median(pre));
    j.add(name + "_eager_ms_per_token", median(eager));
    j.add(name + "_graph_ms_per_token", median(graph));
    j.add(name + "_graph_total_s", graph_total / 1000.0);
    j.add(name + "_final_tokens", static_cast<double>(s.lengths()[0]));
    j.add(name + "_kv_gib", gib(kv));
    j.add(name + "_cache_allocated_gib", gib(cache_alloc));
    j.add(name + "_peak_above_weights_gib", gib(peak));
  }
  j.add("peak_total_gib",
        gib(c10::cuda::CUDACachingAllocator::getDeviceStats(0).allocated_bytes[0].peak));
  // The turbo graph steps again with decode_gemv's session-6 grid (one CTA per task: the 15B
  // products have more tasks than fit at once, each CTA staging x'' and its LayerNorm again).
  {
    m->set_decode_gemv_ctas_per_sm(tk::kDecodeGemvCtaPerTask);
    tm::Session s(m, make_cache(*m, tm::CacheKind::kTurbo, &spec));
    s.enable_cuda_graph(total, 256);
    s.prefill(prefix);
    const double ms = median(time_appends(s, 16, steps - 16, 23));
    m->set_decode_gemv_ctas_per_sm(0);
    std::printf(
        "turbo3  graph with decode_gemv one CTA per task: %.2f ms/token (default grid "
        "above)\n",
        ms);
    j.add("turbo3_graph_gemv_cta_per_task_ms_per_token", ms);
  }
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}

/// decode_gemv alone on the products of the 650M and 15B models (one row, fp16, random weights)
/// for each grid (DecodeGemvParams::ctas_per_sm), beside two references that read the same
/// weight: at::sum (a streaming read) and at::mv + bias (cuBLAS). Each launch is timed by CUDA
/// events after a 256 MB buffer is rewritten (the L2 flushed; the GPU busy meanwhile, so the
/// launch's host latency is not timed); medians of 30. GB/s = weight bytes / time.
int section_gemv() {
  c10::InferenceMode guard;
  struct Shape {
    const char* name;
    int k, n;
    bool ln, gelu, residual;
  };
  const std::vector<Shape> shapes = {
      {"650M_qkv", 1280, 3840, true, false, false}, {"650M_o", 1280, 1280, false, false, true},
      {"650M_fc1", 1280, 5120, true, true, false},  {"650M_fc2", 5120, 1280, false, false, true},
      {"15B_qkv", 5120, 15360, true, false, false}, {"15B_o", 5120, 5120, false, false, true},
      {"15B_fc1", 5120, 20480, true, true, false},  {"15B_fc2", 20480, 5120, false, false, true},
  };
  const auto o = at::TensorOptions().device(kCuda).dtype(at::kHalf);
  at::Tensor flush = at::empty({int64_t(256) << 20}, o.dtype(at::kByte));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // flush_l2 = false: the weight is left in the L2 by the previous iteration.
  const auto timed = [&](const std::function<void()>& fn, bool flush_l2 = true) {
    std::vector<double> ms;
    at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
    for (int i = 0; i < 33; ++i) {
      if (flush_l2) flush.fill_(i & 1);
      start.record();
      fn();
      stop.record();
      stop.synchronize();
      if (i >= 3) ms.push_back(static_cast<double>(start.elapsed_time(stop)));
    }
    return median(ms);
  };
  const std::vector<int> grids = {tk::kDecodeGemvCtaPerTask, 0, 2, 3};
  Json j;
  j.add("gpu", at::cuda::getCurrentDeviceProperties()->name);
  std::printf("%-10s %8s | %-22s %-22s %-22s %-22s | %-22s %-22s | %-22s %-22s | %-22s %-22s\n",
              "product", "MB", "CTA per task us (GB/s)", "as many as fit", "2 CTAs/SM", "3 CTAs/SM",
              "at::sum", "at::mv + bias", "as many as fit, L2 warm", "as many as fit, late loads",
              "4-warp CTAs", "8-warp CTAs");
  at::manual_seed(5);
  for (const Shape& sh : shapes) {
    const at::Tensor x = at::randn({1, sh.k}, o);
    const at::Tensor w = at::randn({sh.n, sh.k}, o) / std::sqrt(static_cast<double>(sh.k));
    const at::Tensor g = 1 + 0.1 * at::randn({sh.k}, o), b = 0.1 * at::randn({sh.k}, o);
    const at::Tensor bias = 0.1 * at::randn({sh.n}, o), res = at::randn({1, sh.n}, o);
    at::Tensor out = at::empty({1, sh.n}, o);
    tk::DecodeGemvParams p;
    p.rows = 1;
    p.in_features = sh.k;
    p.out_features = sh.n;
    p.x = x.data_ptr();
    p.ln_weight = sh.ln ? g.data_ptr() : nullptr;
    p.ln_bias = sh.ln ? b.data_ptr() : nullptr;
    p.weight = w.data_ptr();
    p.bias = bias.data_ptr();
    p.gelu = sh.gelu;
    p.residual = sh.residual ? res.data_ptr() : nullptr;
    p.out = out.data_ptr();
    const double mb = static_cast<double>(w.nbytes()) / 1e6;
    std::printf("%-10s %8.1f |", sh.name, mb);
    for (int grid : grids) {
      p.ctas_per_sm = grid;
      const double ms = timed([&] {
        const cudaError_t e = tk::decode_gemv(p, stream);
        TURBOESM_CHECK(e == cudaSuccess, "decode_gemv: ", cudaGetErrorString(e));
      });
      std::printf(" %9.2f (%6.0f)      ", 1e3 * ms, mb / ms);
      const std::string key = grid < 0 ? "cta_per_task" : grid == 0 ? "fit" : std::to_string(grid);
      j.add(std::string(sh.name) + "_us_" + key, 1e3 * ms);
    }
    const double sum_ms = timed([&] { (void)w.sum(at::kFloat); });
    const at::Tensor xv = x.view({-1});
    const double mv_ms = timed([&] { (void)at::add(at::mv(w, xv), bias); });
    p.ctas_per_sm = 0;
    const auto launch = [&] {
      const cudaError_t e = tk::decode_gemv(p, stream);
      TURBOESM_CHECK(e == cudaSuccess, "decode_gemv: ", cudaGetErrorString(e));
    };
    const double warm_ms = timed(launch, false);
    tk::set_decode_gemv_early_loads(false);
    const double late_ms = timed(launch);
    tk::set_decode_gemv_early_loads(true);
    double width_ms[2];
    for (int i = 0; i < 2; ++i) {  // DecodeGemvParams::warps 4 and 8 (default: 16 at one row)
      p.warps = 4 << i;
      width_ms[i] = timed(launch);
      j.add(std::string(sh.name) + "_us_fit_warps" + std::to_string(p.warps), 1e3 * width_ms[i]);
    }
    p.warps = 0;
    std::printf(
        "| %9.2f (%6.0f)       %9.2f (%6.0f)       | %9.2f (%6.0f)       %9.2f (%6.0f)       | "
        "%9.2f (%6.0f)       %9.2f (%6.0f)\n",
        1e3 * sum_ms, mb / sum_ms, 1e3 * mv_ms, mb / mv_ms, 1e3 * warm_ms, mb / warm_ms,
        1e3 * late_ms, mb / late_ms, 1e3 * width_ms[0], mb / width_ms[0], 1e3 * width_ms[1],
        mb / width_ms[1]);
    j.add(std::string(sh.name) + "_us_fit_l2_warm", 1e3 * warm_ms);
    j.add(std::string(sh.name) + "_us_fit_late_loads", 1e3 * late_ms);
    j.add(std::string(sh.name) + "_us_sum", 1e3 * sum_ms);
    j.add(std::string(sh.name) + "_us_mv", 1e3 * mv_ms);
    j.add(std::string(sh.name) + "_mb", mb);
  }
  std::printf("JSON %s\n", j.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string section = argc > 1 ? argv[1] : "";
    auto arg = [&](int i, const std::string& def) { return argc > i ? std::string(argv[i]) : def; };
    if (section == "config") {
      std::cout << tm::EsmConfig::preset(arg(2, "esm2_t33_650M")).to_json().dump(2) << "\n";
      return 0;
    }
    TURBOESM_CHECK(at::hasCUDA(), "bench_model_cuda needs a CUDA device");
    if (section == "decode")
      return section_decode(arg(2, "esm2_t33_650M"), std::stoll(arg(3, "1024")));
    if (section == "prefill") {
      // Optional 5th argument: set_decode_shared_carveout for every launch of the section.
      tk::set_decode_shared_carveout(
          std::stoi(arg(5, std::to_string(tk::kDecodeSharedCarveoutDefault).c_str())));
      std::printf("shared carve-out %d\n", tk::decode_shared_carveout());
      return section_prefill(arg(2, "esm2_t33_650M"), std::stoll(arg(3, "1024")),
                             std::stoll(arg(4, "1")));
    }
    if (section == "profile_step")
      return section_profile_step(arg(2, "esm2_t33_650M"), std::stoll(arg(3, "1024")),
                                  arg(4, "turbo"));
#ifdef TURBOESM_BENCH_CUPTI
    if (section == "trace_step")
      return section_trace_step(arg(2, "esm2_t33_650M"), std::stoll(arg(3, "1024")),
                                arg(4, "turbo"));
#else
    if (section == "trace_step") {
      std::fprintf(stderr, "bench_model_cuda: trace_step needs CUPTI (not found at build time)\n");
      return 2;
    }
#endif
    if (section == "timeline_step")
      return section_timeline_step(
          arg(2, "esm2_t33_650M"), std::stoll(arg(3, "1024")),
          std::stoi(arg(4, std::to_string(tk::kDecodeSharedCarveoutDefault).c_str())));
    if (section == "gemv") return section_gemv();
    if (section == "big")
      return section_big(arg(2, "esm2_t48_15B"), std::stoll(arg(3, "1024")),
                         std::stoi(arg(4, "1024")));
    std::fprintf(stderr,
                 "usage: bench_model_cuda "
                 "config|decode|gemv|prefill|profile_step|trace_step|timeline_step|big "
                 "[preset] [tokens] "
                 "[steps (big) | batch (prefill)]\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model_cuda: error: %s\n", e.what());
    return 1;
  }
}
