// SPDX-License-Identifier: MIT
// Whole-model decode on CUDA (issue 6): Session::append on CUDA matches the CPU decode path
// (tiny preset, same TurboCacheSpec), and the CUDA-graph step (Session::enable_cuda_graph)
// equals the eager CUDA step, across length buckets, re-prefills and the eager fallback.
// GPU tests skip without a CUDA device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/model/decode_graph.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/mixed_cache.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/model/value_fold.h"

namespace turboesm {
namespace {

namespace tm = turboesm::model;
namespace tq = turboesm::quant;

/// CPU vs CUDA, fp32 model, 2 layers, hidden states after the final LayerNorm (O(1) values).
/// Both devices compute the same function in fp32 with other summation orders (GEMMs, the decode
/// op's split/lane order): ~1e-6 per op, ~1e-5 after two layers and the final LayerNorm. A 3-bit
/// code can differ only where K/V lands within rounding of a decision boundary (≈ 1e-6 of the
/// values; none is expected among the ~2e4 values here); one such flip moves the output by a
/// fraction of a codebook step times its softmax weight, still below this bound.
constexpr double kCpuCudaTol = 1e-3;
/// Graph replay vs eager CUDA step. Turbo: the graph step encodes and attends in one launch
/// (kernels::turbo_decode_append: the new token is a split of its own), the eager step appends,
/// then attends over one split (capacities < 512 tokens here): the same pages, the sums in
/// another order (~1e-7 relative per layer). Dense fp32: masked SDPA over the bucket vs SDPA
/// over the real tokens (other reduction lengths): ~1e-6.
constexpr double kGraphEagerTol = 1e-5;

std::vector<int64_t> encode(const std::string& s) { return io::EsmTokenizer::instance().encode(s); }
at::Tensor row(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).unsqueeze(0); }

std::shared_ptr<const tm::Esm2Model> tiny(c10::Device device) {
  tm::LoadOptions lo;
  lo.device = device;
  lo.dtype = at::kFloat;
  return tm::Esm2Model::random(tm::EsmConfig::preset("tiny"), 5, 0.08, lo);
}

struct SpecCase {
  const char* name;
  tq::RotationKind rotation;
  tq::NormMode norm;
  tq::QjlMode qjl;
};

tm::TurboCacheSpec make_spec(const tm::EsmConfig& c, const SpecCase& sc) {
  // norm_hint ≈ the typical |K| of this random model, so the norm-none codebook is in range.
  return tm::TurboCacheSpec::random(c, 3, 3, sc.rotation, sc.norm, sc.qjl, 11, 0, 5.0);
}

tm::Session make_session(const std::shared_ptr<const tm::Esm2Model>& m, tm::CacheKind kind,
                         const tm::TurboCacheSpec* spec) {
  return tm::Session(m, tm::make_kv_cache(kind, m->config(), 1, m->device(), spec));
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

bool all_finite(const at::Tensor& t) { return at::isfinite(t.to(at::kCPU)).all().item<bool>(); }

const std::string kProtein =
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLY"
    "THMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGR"
    "ERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWUAKAFAEEVFLLKSGLIARRPSEYNYSLLHQFQEGKLNSTFSLPDLEAISAHLAGK";

class ModelDecodeCuda : public ::testing::TestWithParam<SpecCase> {};

TEST_P(ModelDecodeCuda, TurboAppendMatchesCpu) {
  TURBOESM_REQUIRE_GPU();
  const SpecCase sc = GetParam();
  auto cpu = tiny(c10::Device(c10::kCPU));
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  const tm::TurboCacheSpec spec = make_spec(cpu->config(), sc);
  tm::Session sc_cpu = make_session(cpu, tm::CacheKind::kTurbo, &spec);
  tm::Session sc_gpu = make_session(gpu, tm::CacheKind::kTurbo, &spec);
  const auto seq = encode(kProtein.substr(0, 60));
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 30);
  const double pre = max_abs_diff(sc_cpu.prefill(row(prefix)), sc_gpu.prefill(row(prefix)));
  EXPECT_LE(pre, kCpuCudaTol) << "prefill";
  double worst = 0.0;
  size_t j = 30;
  while (j < seq.size()) {
    // One token at a time, with one chunk of 3 (the multi-token append path) in the middle.
    const size_t n = (j == 40 && j + 3 <= seq.size()) ? 3 : 1;
    const at::Tensor t = row(std::vector<int64_t>(seq.begin() + j, seq.begin() + j + n));
    const at::Tensor hc = sc_cpu.append(t), hg = sc_gpu.append(t);
    ASSERT_TRUE(all_finite(hg)) << "token " << j;
    const double d = max_abs_diff(hc, hg);
    worst = std::max(worst, d);
    EXPECT_LE(d, kCpuCudaTol) << "appended token " << j << " (" << n << " at once)";
    j += n;
  }
  EXPECT_EQ(sc_cpu.lengths(), sc_gpu.lengths());
  EXPECT_EQ(sc_cpu.kv_bytes(), sc_gpu.kv_bytes());
  std::printf("[model decode cuda vs cpu %s] max|d| prefill %.2e, appended %.2e\n", sc.name, pre,
              worst);
}

/// Runs `steps` single-token appends on an eager and a graph session side by side and returns
/// the largest difference of the appended hidden states.
double graph_vs_eager(tm::Session& eager, tm::Session& graph, const std::vector<int64_t>& toks,
                      size_t from, size_t steps) {
  double worst = 0.0;
  for (size_t j = from; j < from + steps; ++j) {
    const at::Tensor t = row({toks[j]});
    const at::Tensor he = eager.append(t), hg = graph.append(t);
    EXPECT_TRUE(all_finite(hg)) << "token " << j;
    worst = std::max(worst, max_abs_diff(he, hg));
  }
  EXPECT_EQ(eager.lengths(), graph.lengths());
  return worst;
}

TEST_P(ModelDecodeCuda, GraphStepEqualsEagerStep) {
  TURBOESM_REQUIRE_GPU();
  const SpecCase sc = GetParam();
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  const tm::TurboCacheSpec spec = make_spec(gpu->config(), sc);
  tm::Session eager = make_session(gpu, tm::CacheKind::kTurbo, &spec);
  tm::Session graph = make_session(gpu, tm::CacheKind::kTurbo, &spec);
  graph.enable_cuda_graph(/*max_length=*/200, /*bucket_tokens=*/64);
  ASSERT_NE(graph.cuda_graph(), nullptr);
  auto seq = encode(kProtein.substr(0, 250));
  // Two <mask> tokens among the graph steps: token dropout uses the running <mask> ratio.
  seq[60] = seq[150] = gpu->config().mask_token_id;
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 40);
  eager.prefill(row(prefix));
  graph.prefill(row(prefix));
  // Lengths 41..140 after each step: buckets 64, 128, 192 → three captures, 100 replays.
  const double d1 = graph_vs_eager(eager, graph, seq, 40, 100);
  EXPECT_LE(d1, kGraphEagerTol);
  EXPECT_EQ(graph.cuda_graph()->captures(), 3);
  EXPECT_EQ(graph.cuda_graph()->replays(), 100);
  // An eager multi-token append in between: the graph re-reads the lengths from the cache.
  const at::Tensor chunk = row(std::vector<int64_t>(seq.begin() + 140, seq.begin() + 145));
  EXPECT_LE(max_abs_diff(eager.append(chunk), graph.append(chunk)), kGraphEagerTol);
  const double d2 = graph_vs_eager(eager, graph, seq, 145, 10);
  EXPECT_LE(d2, kGraphEagerTol);
  // Past max_length (200) the session falls back to eager appends: 155 + 50 = 205 tokens.
  const int64_t replays_before = graph.cuda_graph()->replays();
  const double d3 = graph_vs_eager(eager, graph, seq, 155, 50);
  EXPECT_LE(d3, kGraphEagerTol);
  EXPECT_EQ(graph.cuda_graph()->replays(), replays_before + 45);  // 156..200 replayed
  // A new prefill (cache cleared, buffers kept) and the small bucket again.
  eager.prefill(row(prefix));
  graph.prefill(row(prefix));
  const double d4 = graph_vs_eager(eager, graph, seq, 40, 8);
  EXPECT_LE(d4, kGraphEagerTol);
  std::printf("[model decode graph vs eager %s] max|d| %.2e %.2e %.2e %.2e, captures %lld\n",
              sc.name, d1, d2, d3, d4, static_cast<long long>(graph.cuda_graph()->captures()));
}

INSTANTIATE_TEST_SUITE_P(Specs, ModelDecodeCuda,
                         ::testing::Values(SpecCase{"hadamard_none", tq::RotationKind::kHadamard,
                                                    tq::NormMode::kNone, tq::QjlMode::kNone},
                                           SpecCase{"random_token_sign", tq::RotationKind::kRandom,
                                                    tq::NormMode::kToken, tq::QjlMode::kSign}),
                         [](const ::testing::TestParamInfo<SpecCase>& i) {
                           return std::string(i.param.name);
                         });

/// Prefills 20 tokens into both sessions, then 60 single-token appends (lengths 21..80: buckets
/// 32, 64, 96 of a graph enabled with max_length 128, bucket 32); checks the graph captured 3
/// times and returns the largest difference of the appended hidden states.
double graph_vs_eager_80(tm::Session& eager, tm::Session& graph) {
  graph.enable_cuda_graph(128, 32);
  const auto seq = encode(kProtein.substr(0, 100));
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 20);
  eager.prefill(row(prefix));
  graph.prefill(row(prefix));
  const double d = graph_vs_eager(eager, graph, seq, 20, 60);
  EXPECT_EQ(graph.cuda_graph()->captures(), 3);
  return d;
}

/// graph_vs_eager_80 on the tiny model with a turbo cache of spec case `sc` in both sessions,
/// `setup` applied to the graph session's cache only.
double turbo_graph_vs_eager_80(const SpecCase& sc,
                               const std::function<void(tm::TurboKvCache&)>& setup) {
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  const tm::TurboCacheSpec spec = make_spec(gpu->config(), sc);
  tm::Session eager = make_session(gpu, tm::CacheKind::kTurbo, &spec);
  tm::Session graph = make_session(gpu, tm::CacheKind::kTurbo, &spec);
  setup(dynamic_cast<tm::TurboKvCache&>(graph.cache()));
  return graph_vs_eager_80(eager, graph);
}

// The two-launch graph step (quantize_append's row kernel, then turbo_decode: the step of
// head_dim > 64, e.g. the 15B model, and of set_fused_step_append(false)) runs the eager step's
// kernels with its split count (one split below 512 tokens of capacity): the same values.
TEST(ModelDecodeCudaTwoKernels, GraphStepEqualsEagerStep) {
  TURBOESM_REQUIRE_GPU();
  const double d = turbo_graph_vs_eager_80(
      {"random_token_sign", tq::RotationKind::kRandom, tq::NormMode::kToken, tq::QjlMode::kSign},
      [](tm::TurboKvCache& c) { c.set_fused_step_append(false); });
  EXPECT_LE(d, kGraphEagerTol);
  std::printf("[model decode graph vs eager, two-kernel step] max|d| %.2e\n", d);
}

// The fused step with its tuning knobs (TurboKvCache::set_step_splits): a fixed number of
// cached splits (more than the 21..80 positions need: short and empty splits) and the splits
// merged by the row's last CTA instead of the merge kernel.
TEST(ModelDecodeCudaStepSplits, GraphStepEqualsEagerStep) {
  TURBOESM_REQUIRE_GPU();
  const SpecCase sc{"random_token_sign", tq::RotationKind::kRandom, tq::NormMode::kToken,
                    tq::QjlMode::kSign};
  for (const int splits : {1, 3, 7}) {
    for (const bool in_kernel : {false, true}) {
      const double d = turbo_graph_vs_eager_80(
          sc, [&](tm::TurboKvCache& c) { c.set_step_splits(splits, in_kernel); });
      EXPECT_LE(d, kGraphEagerTol) << splits << " cached splits, merge in kernel " << in_kernel;
      std::printf("[model decode graph vs eager, %d cached splits, merge %s] max|d| %.2e\n", splits,
                  in_kernel ? "in kernel" : "kernel", d);
    }
  }
}

// Π_V folded into W_V / W_O (model/value_fold.h) on CUDA: the cache's V constants carry the
// identity flag (the kernels skip Π_V in the prefill write, the step's append and the merge),
// the folded pair decodes on CUDA as on the CPU, and its CUDA-graph step equals its eager step,
// with the merge kernel and with the split counters.
TEST(ModelDecodeCudaValueFold, FoldedModelMatchesCpuAndItsGraph) {
  TURBOESM_REQUIRE_GPU();
  auto cpu = tiny(c10::Device(c10::kCPU));
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  const SpecCase sc{"random_token", tq::RotationKind::kRandom, tq::NormMode::kToken,
                    tq::QjlMode::kNone};
  const tm::TurboCacheSpec spec = make_spec(cpu->config(), sc);
  const tm::ValueFold fc = tm::fold_value_rotation(*cpu, spec);
  const tm::ValueFold fg = tm::fold_value_rotation(*gpu, spec);
  tm::Session s_cpu = make_session(fc.model, tm::CacheKind::kTurbo, &fc.spec);
  tm::Session s_gpu = make_session(fg.model, tm::CacheKind::kTurbo, &fg.spec);
  const auto& gcache = dynamic_cast<const tm::TurboKvCache&>(s_gpu.cache());
  EXPECT_TRUE(gcache.decode_params(0).v.constants.rotation_identity);
  EXPECT_FALSE(gcache.decode_params(0).k.constants.rotation_identity);
  const auto seq = encode(kProtein.substr(0, 60));
  const std::vector<int64_t> prefix(seq.begin(), seq.begin() + 30);
  EXPECT_LE(max_abs_diff(s_cpu.prefill(row(prefix)), s_gpu.prefill(row(prefix))), kCpuCudaTol);
  double worst = 0.0;
  for (size_t j = 30; j < seq.size(); ++j) {
    const at::Tensor t = row({seq[j]});
    const at::Tensor hc = s_cpu.append(t), hg = s_gpu.append(t);
    ASSERT_TRUE(all_finite(hg)) << "token " << j;
    worst = std::max(worst, max_abs_diff(hc, hg));
  }
  EXPECT_LE(worst, kCpuCudaTol);
  for (const bool in_kernel : {false, true}) {
    tm::Session eager = make_session(fg.model, tm::CacheKind::kTurbo, &fg.spec);
    tm::Session graph = make_session(fg.model, tm::CacheKind::kTurbo, &fg.spec);
    dynamic_cast<tm::TurboKvCache&>(graph.cache()).set_step_splits(3, in_kernel);
    const double d = graph_vs_eager_80(eager, graph);
    EXPECT_LE(d, kGraphEagerTol) << "merge in kernel " << in_kernel;
    std::printf(
        "[model decode, V rotation folded] cpu vs cuda %.2e, graph vs eager (merge %s) %.2e\n",
        worst, in_kernel ? "in kernel" : "kernel", d);
  }
}

// Side-stream cache writes (KvCache::begin_side_writes, opened by Session::prefill around a
// forward on a high-priority stream): the caches a prefill fills with its writes on the side
// stream hold the bits of the serial writes — every
// layer attends to the same outputs, bit for bit — for a Turbo cache (tile kernel), a mixed cache
// (an INT8 layer, Turbo layers: their appends run through the sub-caches) and an FP16 cache, at
// a size where the writes overlap the next layers' kernels (esm2_t6_8M in fp16, 4 × 400
// residues, ~60 µs of writes per layer); the inputs the side stream reads are freed and reused
// by the forward meanwhile (recorded on the side stream). The decode steps after the prefill read
// the pages (the region is joined first) and agree too.
TEST(ModelDecodeCudaSideWrites, PrefillCachesEqualSerialWrites) {
  TURBOESM_REQUIRE_GPU();
  tm::LoadOptions lo;
  lo.device = c10::Device(c10::kCUDA, 0);
  lo.dtype = at::kHalf;
  auto m = tm::Esm2Model::random(tm::EsmConfig::preset("esm2_t6_8M"), 7, 0.08, lo);
  const SpecCase sc{"hadamard_none", tq::RotationKind::kHadamard, tq::NormMode::kNone,
                    tq::QjlMode::kNone};
  const tm::TurboCacheSpec spec = make_spec(m->config(), sc);
  constexpr int kBatch = 4, kResidues = 400;
  const std::string protein = kProtein + kProtein;
  std::vector<at::Tensor> rows;
  for (int b = 0; b < kBatch; ++b) rows.push_back(row(encode(protein.substr(17 * b, kResidues))));
  const at::Tensor tokens = at::cat(rows, 0);
  const auto kinds = std::vector<std::string>{"turbo", "mixed", "fp16"};
  for (const std::string& kind : kinds) {
    auto make = [&] {
      if (kind == "turbo")
        return tm::make_kv_cache(tm::CacheKind::kTurbo, m->config(), kBatch, m->device(), &spec);
      if (kind == "mixed")
        return tm::make_mixed_kv_cache(m->config(), kBatch, m->device(), spec,
                                       {{0, tm::CacheKind::kInt8}});
      return tm::make_kv_cache(tm::CacheKind::kFp16, m->config(), kBatch, m->device());
    };
    auto serial_cache = make();
    serial_cache->set_side_writes(false);
    tm::Session serial(m, std::move(serial_cache)), side(m, make());
    ASSERT_TRUE(side.cache().side_writes());
    side.set_side_writes_min_tokens(0);        // 1608 positions: below the default threshold
    for (int round = 0; round < 2; ++round) {  // the second prefill reuses the buffers
      const at::Tensor hs = serial.prefill(tokens), hd = side.prefill(tokens);
      ASSERT_TRUE(at::equal(hs, hd)) << kind << ": the forward itself differs";
      at::manual_seed(31 + round);
      const at::Tensor q =
          at::randn({kBatch, m->config().num_attention_heads, 2, m->config().head_dim()},
                    at::TensorOptions().device(m->device()).dtype(at::kHalf));
      for (int layer = 0; layer < m->num_layers(); ++layer)
        EXPECT_TRUE(at::equal(serial.cache().attend(layer, q), side.cache().attend(layer, q)))
            << kind << ", round " << round << ", layer " << layer;
      EXPECT_EQ(serial.cache().lengths(), side.cache().lengths());
    }
    // Every layer of both prefills went to the side stream, none of the serial cache's did.
    EXPECT_EQ(side.cache().side_writes_launched(), 2 * m->num_layers()) << kind;
    EXPECT_EQ(serial.cache().side_writes_launched(), 0) << kind;
    for (int step = 0; step < 3; ++step) {
      const at::Tensor t = tokens.narrow(1, 5 + step, 1);
      EXPECT_TRUE(at::equal(serial.append(t), side.append(t))) << kind << ", step " << step;
    }
  }
}

// The cache's CUDA constants carry Π's fp16 parts for the prefill append kernel: exactly the
// host split of the same Π (kernels::rotation_f16_split), passed on by view(); CPU copies have
// none.
TEST(TurboConstantsCuda, CudaCopiesCarryThePresplitRotation) {
  TURBOESM_REQUIRE_GPU();
  const tm::EsmConfig cfg = tm::EsmConfig::preset("tiny");
  for (const tq::RotationKind kind : {tq::RotationKind::kRandom, tq::RotationKind::kHadamard}) {
    const tm::TurboCacheSpec spec =
        tm::TurboCacheSpec::random(cfg, 3, 3, kind, tq::NormMode::kNone, tq::QjlMode::kNone, 7);
    const tm::TurboHeadConstants& host = spec.layers[1].v;
    const tm::TurboHeadConstants dev = host.to(c10::Device(c10::kCUDA, 0));
    const at::Tensor rot = host.rotation.contiguous();
    const int H = static_cast<int>(rot.size(0)), d = static_cast<int>(rot.size(1));
    at::Tensor parts = at::empty({H, 2, d, kernels::rotation_f16_row_stride(d)}, at::kShort);
    at::Tensor lo = at::empty({H}, at::kInt);
    kernels::rotation_f16_split(rot.data_ptr<float>(), H, d,
                                reinterpret_cast<uint16_t*>(parts.data_ptr<int16_t>()),
                                lo.data_ptr<int32_t>());
    ASSERT_TRUE(dev.rotation_f16.defined() && dev.rotation_f16_lo.defined());
    EXPECT_TRUE(dev.rotation_f16.is_cuda());
    EXPECT_TRUE(at::equal(dev.rotation_f16.cpu(), parts));
    EXPECT_TRUE(at::equal(dev.rotation_f16_lo.cpu(), lo));
    // A head has low parts iff some Π_ij is not an fp16 value (a Hadamard Π's ±d^-1/2 is one
    // only where √d is a power of two: not at the tiny preset's d = 32).
    const at::Tensor inexact =
        rot.ne(rot.to(at::kHalf).to(at::kFloat)).flatten(1).any(1).to(at::kInt);
    EXPECT_TRUE(at::equal(lo, inexact));
    const tq::HeadConstantsView v = dev.view();
    EXPECT_EQ(static_cast<const void*>(v.rotation_f16), dev.rotation_f16.data_ptr());
    EXPECT_EQ(static_cast<const void*>(v.rotation_f16_lo), dev.rotation_f16_lo.data_ptr());
    EXPECT_FALSE(host.to(c10::Device(c10::kCPU)).rotation_f16.defined());
    EXPECT_EQ(host.to(c10::Device(c10::kCPU)).view().rotation_f16, nullptr);
  }
}

TEST(ModelDecodeCudaDense, Fp32GraphStepEqualsEagerStep) {
  TURBOESM_REQUIRE_GPU();
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  for (tm::CacheKind kind : {tm::CacheKind::kFp32, tm::CacheKind::kFp16}) {
    tm::Session eager = make_session(gpu, kind, nullptr);
    tm::Session graph = make_session(gpu, kind, nullptr);
    const double d = graph_vs_eager_80(eager, graph);
    // fp16 storage with an fp32 model computes in fp32 both ways (same rounded K/V).
    EXPECT_LE(d, kGraphEagerTol) << tm::to_string(kind);
    std::printf("[model decode graph vs eager %s cache] max|d| %.2e\n", tm::to_string(kind), d);
  }
}

TEST(ModelDecodeCudaDense, GraphRefusesUnsupportedSessions) {
  auto cpu = tiny(c10::Device(c10::kCPU));
  tm::Session s = make_session(cpu, tm::CacheKind::kFp32, nullptr);
  try {
    s.enable_cuda_graph(64);
    FAIL() << "a CPU session accepted a CUDA graph";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA graphs need a CUDA model"), std::string::npos)
        << e.what();
  }
  TURBOESM_REQUIRE_GPU();
  auto gpu = tiny(c10::Device(c10::kCUDA, 0));
  tm::Session s8 = make_session(gpu, tm::CacheKind::kInt8, nullptr);
  try {
    s8.enable_cuda_graph(64);
    FAIL() << "an int8 cache accepted a CUDA graph";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int8 cache has no device-resident step"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace turboesm
