// SPDX-License-Identifier: MIT
// Fused decode attention on the packed cache (turbo_decode) vs FP16 attention on the H100.
//
// Per shape (batch B, heads H, cached tokens T, head dim d, bits, K norm, K QJL), three variants,
// all timed with CUDA events around the work only, L2 flushed before every iteration (a 2×L2
// memset), median over the iterations (Google Benchmark manual time):
//   sdpa_fp16 — at::scaled_dot_product_attention, one query, FP16 cache [B, H, T, d]
//   unfused   — dequantize_code_space_half (codes → FP16) then the same SDPA
//   turbo     — turbo_decode on the packed pages (q rotation, split-K, merge, inverse rotation)
// Bytes "actually read" = the cache bytes each variant must read once (FP16: 2·B·H·T·d·2;
// Turbo: B·H·T·(K + V bytes per token per head), format.h accounting). The table printed last
// gives GB/s, % of the 3.35 TB/s HBM3 peak, and speed-ups against sdpa_fp16 and unfused of the
// same shape, measured in this run.
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "turboesm/kernels/dequantize.h"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/kernels/turbo_decode.h"
#include "turboesm/quant/quantizer.h"

namespace {

namespace tq = turboesm::quant;
namespace tk = turboesm::kernels;

constexpr double kHbmPeakBytesPerSecond = 3.35e12;  // H100 SXM HBM3 datasheet
constexpr int kIterations = 60;

#define CUDA_CHECK(expr)                                                            \
  do {                                                                              \
    const cudaError_t _e = (expr);                                                  \
    if (_e != cudaSuccess)                                                          \
      throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(_e)); \
  } while (0)

struct Shape {
  int batch, heads, tokens, dim, bits;
  tq::NormMode norm;
  tq::QjlMode qjl;
  std::string name() const {
    return "B" + std::to_string(batch) + "_H" + std::to_string(heads) + "_T" +
           std::to_string(tokens) + "_d" + std::to_string(dim) + "_b" + std::to_string(bits) +
           "_norm-" + tq::to_string(norm) + "_qjl-" + tq::to_string(qjl);
  }
};

/// Device-resident per-head constants of one side, built on the host (TurboQuantizer helpers).
struct DeviceConstants {
  at::Tensor rotation, centroids, boundaries, qjl_scale, qjl_proj;
  tq::HeadConstantsView view() const {
    tq::HeadConstantsView v;
    v.rotation = rotation.data_ptr<float>();
    v.centroids = centroids.data_ptr<float>();
    v.boundaries = boundaries.data_ptr<float>();
    if (qjl_scale.defined()) v.qjl_scale = qjl_scale.data_ptr<float>();
    if (qjl_proj.defined()) v.qjl_proj = qjl_proj.data_ptr<float>();
    return v;
  }
};

DeviceConstants make_constants(int heads, int d, int bits, tq::NormMode norm, tq::QjlMode qjl,
                               uint64_t seed) {
  std::vector<float> rot, cen, bnd, qs, proj;
  tq::Codebook cb;
  if (norm == tq::NormMode::kToken) {
    cb = tq::analytic_codebook(d, bits);
  } else {
    tq::Rng rng(seed);
    std::vector<float> s(20000);
    tq::fill_normal(rng, s.data(), s.size());
    cb = tq::kmeans_codebook(s.data(), s.size(), bits);
  }
  for (int h = 0; h < heads; ++h) {
    const tq::Rotation r = tq::make_random_rotation(d, seed + h);
    rot.insert(rot.end(), r.matrix.begin(), r.matrix.end());
    cen.insert(cen.end(), cb.centroids.begin(), cb.centroids.end());
    bnd.insert(bnd.end(), cb.boundaries.begin(), cb.boundaries.end());
    qs.push_back(0.05f);
    if (qjl == tq::QjlMode::kProd) {
      const tq::QjlProjection p = tq::make_qjl_projection(d, d, seed + 1000 + h);
      proj.insert(proj.end(), p.matrix.begin(), p.matrix.end());
    }
  }
  auto dev = [](const std::vector<float>& v) {
    return at::from_blob(const_cast<float*>(v.data()), {static_cast<int64_t>(v.size())}, at::kFloat)
        .to(at::kCUDA);
  };
  DeviceConstants c;
  c.rotation = dev(rot);
  c.centroids = dev(cen);
  c.boundaries = dev(bnd);
  if (qjl == tq::QjlMode::kSign) c.qjl_scale = dev(qs);
  if (qjl == tq::QjlMode::kProd) c.qjl_proj = dev(proj);
  return c;
}

/// One shape's caches (Turbo pages filled by quantize_append from random rows; FP16 caches of
/// random values) and the inputs of every variant.
struct ShapeData {
  Shape s;
  DeviceConstants kc, vc;
  at::Tensor kpages, vpages, lengths, q32, out32, workspace;
  at::Tensor q16, k16, v16, kdq, vdq;  // FP16 baseline and unfused buffers
  tq::DecodeParams params;
  size_t workspace_bytes = 0;
  int splits = 1;
  bool ring = false;  ///< the default launch streams records through the ring
  double turbo_bytes = 0, fp16_bytes = 0;
  float append_us = 0;  // quantize_append of the whole K cache, for the record

  explicit ShapeData(const Shape& shape, int sms) : s(shape) {
    const int B = s.batch, H = s.heads, T = s.tokens, D = s.dim;
    kc = make_constants(H, D, s.bits, s.norm, s.qjl, 11);
    vc = make_constants(H, D, s.bits, s.norm, tq::QjlMode::kNone, 97);
    const tq::PageLayout kl = tq::make_page_layout(D, s.bits, s.norm, s.qjl, D);
    const tq::PageLayout vl = tq::make_page_layout(D, s.bits, s.norm, tq::QjlMode::kNone);
    const int pages = (T + kl.page_tokens - 1) / kl.page_tokens;
    auto view = [&](const tq::PageLayout& l, at::Tensor& buf, const DeviceConstants& c) {
      buf = at::empty({static_cast<int64_t>(B) * H * pages * l.page_bytes},
                      at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
      tq::CacheView v;
      v.layout = l;
      v.pages = buf.data_ptr<uint8_t>();
      v.head_stride = static_cast<int64_t>(pages) * l.page_bytes;
      v.seq_stride = H * v.head_stride;
      v.max_pages = pages;
      v.constants = c.view();
      return v;
    };
    params.k = view(kl, kpages, kc);
    params.v = view(vl, vpages, vc);
    // Fill the caches one sequence at a time with quantize_append (random N(0, 1) rows).
    at::Tensor starts = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int b = 0; b < B; ++b)
      for (int side = 0; side < 2; ++side) {
        at::Tensor x = at::randn({1, H, T, D}, at::TensorOptions().device(at::kCUDA));
        tk::QuantizeAppendParams ap;
        ap.batch = 1;
        ap.heads = H;
        ap.head_dim = D;
        ap.new_tokens = T;
        ap.x = x.data_ptr<float>();
        ap.starts = starts.data_ptr<int32_t>();
        ap.cache = side == 0 ? params.k : params.v;
        ap.cache.pages += b * ap.cache.seq_stride;
        if (b == 0 && side == 0) CUDA_CHECK(cudaEventRecord(e0));
        CUDA_CHECK(tk::quantize_append(ap, nullptr));
        if (b == 0 && side == 0) CUDA_CHECK(cudaEventRecord(e1));
      }
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaEventElapsedTime(&append_us, e0, e1));
    append_us *= 1000.0f;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);

    lengths = at::full({B}, T, at::TensorOptions().dtype(at::kInt).device(at::kCUDA));
    q32 = at::randn({B, H, 1, D}, at::TensorOptions().device(at::kCUDA));
    out32 = at::empty_like(q32);
    params.batch = B;
    params.heads = H;
    params.head_dim = D;
    params.q_len = 1;
    params.q = q32.data_ptr<float>();
    params.out = out32.data_ptr<float>();
    params.lengths = lengths.data_ptr<int32_t>();
    params.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
    if (const char* why = tk::turbo_decode_invalid_reason(params))
      throw std::runtime_error(std::string("turbo_decode params: ") + why);
    splits = tk::turbo_decode_num_splits(params, sms);
    ring = tk::turbo_decode_ring_applies(params);
    {  // room for the split sweep too
      tq::DecodeParams most = params;
      most.num_splits = tk::kMaxSplits;
      workspace_bytes = std::max(tk::turbo_decode_workspace_bytes(params, sms),
                                 tk::turbo_decode_workspace_bytes(most, sms));
    }
    workspace = at::empty({static_cast<int64_t>(workspace_bytes) + 16},
                          at::TensorOptions().dtype(at::kByte).device(at::kCUDA));

    const auto h16 = at::TensorOptions().dtype(at::kHalf).device(at::kCUDA);
    q16 = at::randn({B, H, 1, D}, h16);
    k16 = at::randn({B, H, T, D}, h16);
    v16 = at::randn({B, H, T, D}, h16);
    turbo_bytes = static_cast<double>(B) * H * T *
                  (tq::bytes_per_token_per_head(D, s.bits, s.norm, s.qjl, D) +
                   tq::bytes_per_token_per_head(D, s.bits, s.norm, tq::QjlMode::kNone));
    fp16_bytes = 2.0 * B * H * T * D * 2;
  }

  void run_turbo(int num_splits = 0) {
    params.num_splits = num_splits;
    CUDA_CHECK(tk::turbo_decode(params, workspace.data_ptr(), workspace_bytes, nullptr));
    params.num_splits = 0;
  }
  void run_sdpa() { (void)at::scaled_dot_product_attention(q16, k16, v16); }
  void run_unfused() {
    if (!kdq.defined()) {
      kdq = at::empty_like(k16);
      vdq = at::empty_like(v16);
    }
    CUDA_CHECK(tk::dequantize_code_space_half(params.k, s.batch, s.heads, s.tokens,
                                              reinterpret_cast<uint16_t*>(kdq.data_ptr()),
                                              nullptr));
    CUDA_CHECK(tk::dequantize_code_space_half(params.v, s.batch, s.heads, s.tokens,
                                              reinterpret_cast<uint16_t*>(vdq.data_ptr()),
                                              nullptr));
    (void)at::scaled_dot_product_attention(q16, kdq, vdq);
  }
};

struct Row {
  std::string shape, variant;
  double median_us, bytes;
  int splits;
};

class Harness {
 public:
  Harness() {
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    gpu_ = prop.name;
    sms_ = prop.multiProcessorCount;
    flush_bytes_ = 2 * static_cast<size_t>(prop.l2CacheSize);
    CUDA_CHECK(cudaMalloc(&flush_, flush_bytes_));
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  const std::string& gpu() const { return gpu_; }

  ShapeData& data(const Shape& s) {
    if (!current_ || current_->s.name() != s.name()) {
      current_.reset();
      CUDA_CHECK(cudaDeviceSynchronize());
      current_ = std::make_unique<ShapeData>(s, sms_);
    }
    return *current_;
  }

  /// Times f once: L2 flush, then events around f only.
  template <typename F>
  double time_us(F&& f) {
    CUDA_CHECK(cudaMemsetAsync(flush_, ++flush_value_ & 0xff, flush_bytes_, nullptr));
    CUDA_CHECK(cudaEventRecord(start_, nullptr));
    f();
    CUDA_CHECK(cudaEventRecord(stop_, nullptr));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return 1000.0 * ms;
  }

  std::vector<Row> rows;

 private:
  std::string gpu_;
  int sms_ = 0;
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  int flush_value_ = 0;
  cudaEvent_t start_{}, stop_{};
  std::unique_ptr<ShapeData> current_;
};

Harness* g_harness = nullptr;

void run_variant(benchmark::State& state, const Shape& s, const std::string& variant) {
  try {
    ShapeData& d = g_harness->data(s);
    auto fn = [&] {
      if (variant == "turbo") {
        d.run_turbo();
      } else if (variant == "turbo_4warps") {  // 4-warp CTAs where the default runs 8
        const tk::ScopedTurboDecodeWideCtas narrow(false);
        d.run_turbo();
      } else if (variant == "turbo_regs") {  // the register pipeline where the default is the ring
        const tk::ScopedTurboDecodeRing off(false);
        d.run_turbo();
      } else if (variant.rfind("turbo_s", 0) == 0)  // forced split count (sweep)
        d.run_turbo(std::stoi(variant.substr(7)));
      else if (variant == "sdpa_fp16")
        d.run_sdpa();
      else
        d.run_unfused();
    };
    for (int i = 0; i < 3; ++i) fn();  // warm-up (module load, cuBLAS/flash handles)
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> t;
    for (auto _ : state) {
      const double us = g_harness->time_us(fn);
      t.push_back(us);
      state.SetIterationTime(us * 1e-6);
    }
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2];
    const bool turbo = variant.rfind("turbo", 0) == 0;
    const double bytes = variant == "sdpa_fp16" ? d.fp16_bytes
                         : turbo                ? d.turbo_bytes
                                                : d.turbo_bytes + 2 * d.fp16_bytes;
    state.counters["median_us"] = med;
    state.counters["read_GBps"] = bytes / (med * 1e-6) / 1e9;
    state.counters["hbm_peak_pct"] = 100.0 * bytes / (med * 1e-6) / kHbmPeakBytesPerSecond;
    const int splits = variant == "turbo" || variant == "turbo_4warps" || variant == "turbo_regs"
                           ? d.splits
                       : turbo ? std::stoi(variant.substr(7))
                               : 0;
    state.counters["splits"] = splits;
    if (variant == "turbo") state.counters["ring"] = d.ring ? 1 : 0;
    if (variant == "turbo") state.counters["append_us_per_seq_K"] = d.append_us;
    g_harness->rows.push_back({s.name(), variant, med, bytes, splits});
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void print_table() {
  std::printf("\nGPU: %s  (HBM peak used for %%: %.2f TB/s)\n", g_harness->gpu().c_str(),
              kHbmPeakBytesPerSecond / 1e12);
  std::printf("%-52s %-10s %10s %9s %7s %9s %9s %6s\n", "shape", "variant", "median_us", "GB/s",
              "%peak", "x_vs_sdpa", "x_vs_unf", "splits");
  std::map<std::string, double> sdpa, unfused;
  for (const Row& r : g_harness->rows) {
    if (r.variant == "sdpa_fp16") sdpa[r.shape] = r.median_us;
    if (r.variant == "unfused") unfused[r.shape] = r.median_us;
  }
  for (const Row& r : g_harness->rows) {
    const double gbps = r.bytes / (r.median_us * 1e-6) / 1e9;
    auto ratio = [&](const std::map<std::string, double>& m) {
      auto it = m.find(r.shape);
      return it == m.end() ? std::nan("") : it->second / r.median_us;
    };
    std::printf("%-52s %-10s %10.2f %9.1f %7.1f %9.2f %9.2f %6d\n", r.shape.c_str(),
                r.variant.c_str(), r.median_us, gbps, 100.0 * gbps * 1e9 / kHbmPeakBytesPerSecond,
                ratio(sdpa), ratio(unfused), r.splits);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("bench_decode_cuda: no CUDA device, nothing to measure\n");
    return 0;
  }
  Harness harness;
  g_harness = &harness;
  benchmark::AddCustomContext("gpu", harness.gpu());
  using tq::NormMode;
  using tq::QjlMode;
  struct Entry {
    Shape s;
    bool unfused;
    /// also the "turbo_4warps" row: the default's 8-warp CTAs (one CTA per SM) as 4-warp ones
    bool wide = false;
    /// also the "turbo_regs" row: the register pipeline where the default streams the records
    /// through the ring (set_turbo_decode_ring)
    bool regs = false;
  };
  const Entry entries[] = {
      {{8, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone}, true},  // issue 6 headline
      {{8, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kSign}, true},  // headline, sign QJL
      {{1, 20, 1024, 64, 3, NormMode::kNone, QjlMode::kNone}, true, true},
      {{1, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone}, true},  // split-K matters
      {{32, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone}, false},
      {{8, 40, 16384, 128, 3, NormMode::kNone, QjlMode::kNone}, false},  // 15B head shape
      {{8, 20, 16384, 64, 3, NormMode::kToken, QjlMode::kNone}, false},
      {{8, 20, 16384, 64, 3, NormMode::kToken, QjlMode::kProd}, false},
      {{8, 20, 16384, 64, 4, NormMode::kNone, QjlMode::kNone}, false},
      {{8, 20, 16384, 64, 2, NormMode::kNone, QjlMode::kNone}, false, false, true},
  };
  for (const Entry& e : entries) {
    std::vector<std::string> variants = {"sdpa_fp16"};
    if (e.unfused) variants.push_back("unfused");
    variants.push_back("turbo");
    if (e.wide) variants.push_back("turbo_4warps");
    if (e.regs) variants.push_back("turbo_regs");
    for (const std::string& v : variants) {
      const Shape s = e.s;
      benchmark::RegisterBenchmark((s.name() + "/" + v).c_str(),
                                   [s, v](benchmark::State& st) { run_variant(st, s, v); })
          ->UseManualTime()
          ->Iterations(kIterations)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  // Split-count sweeps (the automatic choice is the "turbo" row above): the batch-1 shapes, where
  // one wave holds every split, and shapes of several waves.
  struct Sweep {
    Shape s;
    std::vector<int> splits;
  };
  const Sweep sweeps[] = {
      {{1, 20, 1024, 64, 3, NormMode::kNone, QjlMode::kNone}, {1, 2, 3, 4, 8, 12, 16}},
      {{1, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone},
       {1, 2, 4, 8, 12, 16, 24, 32, 48, 64}},
      {{8, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone}, {2, 3, 4, 6}},
      {{32, 20, 16384, 64, 3, NormMode::kNone, QjlMode::kNone}, {2, 3, 4, 6, 9}},
      {{8, 40, 16384, 128, 3, NormMode::kNone, QjlMode::kNone}, {2, 3, 4, 6, 8}},
  };
  for (const Sweep& sw : sweeps) {
    const Shape s = sw.s;
    for (const int n : sw.splits) {
      if (n * 64 > s.tokens) continue;
      const std::string v = "turbo_s" + std::to_string(n);
      benchmark::RegisterBenchmark((s.name() + "/" + v).c_str(),
                                   [s, v](benchmark::State& st) { run_variant(st, s, v); })
          ->UseManualTime()
          ->Iterations(kIterations)
          ->Unit(benchmark::kMicrosecond);
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  print_table();
  benchmark::Shutdown();
  return 0;
}
