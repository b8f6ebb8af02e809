// SPDX-License-Identifier: MIT
// turbo_decode_append (CUDA): one launch that encodes the new token of every sequence and attends
// over it and the cached tokens, against the two-launch path it replaces — quantize_append's row
// kernel (the host encoder's operation order) then turbo_decode with lengths = starts + 1:
// byte-identical pages (same device function) and outputs equal up to the order the splits are
// summed in. Bits 2/3/4, head dims 16…64, norm none/token, σ/μ, QJL none/sign/prod, fp32 / fp16
// / bf16 rows read through strides, empty and page-boundary starts, the in-kernel merge and the
// merge kernel, a position past the capacity. Argument checks run without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "turboesm/kernels/pdl.h"
#include "turboesm/kernels/quantize_append.h"
#include "turboesm/kernels/turbo_decode.h"
#include "turboesm/quant/half.h"

namespace {

namespace tq = turboesm::quant;
namespace tk = turboesm::kernels;
using turboesm::testing_cuda::DeviceBuffer;
using turboesm::testing_cuda::HeadSet;
using turboesm::testing_cuda::HostPages;
using turboesm::testing_cuda::pages_for;
using turboesm::testing_cuda::SideConfig;

/// Two launches vs one: only the split summation order differs (~1e-7 of the output scale).
constexpr double kOrderTol = 1e-5;

struct AppendCase {
  std::string name;
  int bits = 3, dim = 64, heads = 2;
  std::vector<int> starts{100};  ///< cached tokens per sequence before the step
  int capacity_tokens = 0;       ///< 0: max start + 1 rounded up to pages
  SideConfig k, v;
  tk::ElementType dtype = tk::ElementType::kFloat32;
  bool token_major = false;  ///< rows [B, 1, H, D] (the QKV kernel's layout) instead of [B, H, D]
  bool split_counters = true;
  int num_splits = 0;  ///< cached-token splits (0: automatic)
  /// Give turbo_decode_append the smallest workspace it takes (two partials per row: one cached
  /// split and the new token's), and check that one byte less is refused before any launch.
  bool min_workspace = false;
  /// turbo_decode_append with set_turbo_decode_wide_ctas(wide) (8-warp CTAs where they apply;
  /// the two-launch reference runs with the process default)
  bool wide = false;
  /// set_turbo_decode_staged around turbo_decode_append (-1: the process default)
  int staged = -1;
  /// coordinate 0 of sequence 0's new K row is NaN (both paths flag kQuantizeAppendBadRow)
  bool nan_row = false;
  uint64_t seed = 1;
};

struct AppendOutcome {
  int64_t page_bytes_differ = 0;
  double max_rel_diff = 0.0;  ///< |fused − two launches| / max |v̂| entry
  int64_t non_finite = 0;
  int status_two = 0, status_fused = 0;
  int64_t counters_nonzero = 0;
  bool staged = false;  ///< turbo_decode_append_staged for the fused launch
};

/// Rows in the requested element type, as bytes, plus the values they hold.
std::vector<uint8_t> to_dtype(const std::vector<float>& x, tk::ElementType t) {
  std::vector<uint8_t> out;
  if (t == tk::ElementType::kFloat32) {
    out.resize(x.size() * 4);
    std::memcpy(out.data(), x.data(), out.size());
    return out;
  }
  out.resize(x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t b = t == tk::ElementType::kFloat16 ? tq::float_to_half_bits(x[i])
                                                      : tq::float_to_bf16_bits(x[i]);
    std::memcpy(out.data() + 2 * i, &b, 2);
  }
  return out;
}

AppendOutcome run_append_case(const AppendCase& c) {
  const int D = c.dim, B = static_cast<int>(c.starts.size()), H = c.heads;
  SideConfig kc = c.k, vc = c.v;
  kc.bits = vc.bits = c.bits;
  HeadSet ks(H, D, kc, c.seed), vs(H, D, vc, c.seed + 7);
  const int pt = ks.layout().page_tokens;
  const int max_start = *std::max_element(c.starts.begin(), c.starts.end());
  const int pages = pages_for(c.capacity_tokens > 0 ? c.capacity_tokens : max_start + 1, pt);
  HostPages kp(ks.layout(), B, H, pages, 0x5a), vp(vs.layout(), B, H, pages, 0xa5);
  tq::Rng rng(c.seed * 7919 + 3);
  std::vector<float> x(D);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < std::min(c.starts[b], pages * pt); ++t) {
        tq::fill_normal(rng, x.data(), D);
        ks.q(h).encode(x.data(), kp.page(b, h, t / pt), t % pt);
        tq::fill_normal(rng, x.data(), D);
        vs.q(h).encode(x.data(), vp.page(b, h, t / pt), t % pt);
      }
  // The new rows: element (b, h, j) at b·stride_b + h·stride_h + j.
  const int64_t stride_h = c.token_major ? D : D + 8;  // padded rows when not token-major
  const int64_t stride_b = H * stride_h;
  std::vector<float> kn(static_cast<size_t>(B) * stride_b, 0.0f), vn(kn.size(), 0.0f);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      tq::fill_normal(rng, kn.data() + b * stride_b + h * stride_h, D);
      tq::fill_normal(rng, vn.data() + b * stride_b + h * stride_h, D);
    }
  std::vector<float> q(static_cast<size_t>(B) * H * D);
  tq::fill_normal(rng, q.data(), q.size());
  if (c.nan_row) kn[0] = std::nanf("");

  DeviceBuffer d_kn = DeviceBuffer::from(to_dtype(kn, c.dtype));
  DeviceBuffer d_vn = DeviceBuffer::from(to_dtype(vn, c.dtype));
  DeviceBuffer d_q = DeviceBuffer::from(q);
  std::vector<int32_t> starts(c.starts.begin(), c.starts.end()), after(starts);
  for (int32_t& n : after) n += 1;
  DeviceBuffer d_starts = DeviceBuffer::from(starts), d_after = DeviceBuffer::from(after);
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);

  // Both paths from the same pages; each writes its own copy.
  struct Run {
    DeviceBuffer kpages, vpages, out, status, counters;
  };
  auto make_run = [&]() {
    Run r;
    r.kpages = DeviceBuffer::from(kp.bytes);
    r.vpages = DeviceBuffer::from(vp.bytes);
    r.out = DeviceBuffer::from(std::vector<float>(q.size(), std::nanf("")));
    r.status = DeviceBuffer::from(std::vector<int>(1, 0));
    r.counters = DeviceBuffer::from(std::vector<uint32_t>(static_cast<size_t>(B) * H, 0u));
    return r;
  };
  auto params = [&](Run& r) {
    tq::DecodeParams p;
    p.batch = B;
    p.heads = H;
    p.head_dim = D;
    p.q = d_q.get<float>();
    p.out = r.out.get<float>();
    p.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
    p.k = kp.view(r.kpages.get<uint8_t>(), ks.device_constants());
    p.v = vp.view(r.vpages.get<uint8_t>(), vs.device_constants());
    p.num_splits = c.num_splits;
    if (c.split_counters) p.split_counters = r.counters.get<uint32_t>();
    return p;
  };
  Run two = make_run(), fused = make_run();
  bool staged_ran = false;
  {  // quantize_append (row kernel), then turbo_decode over starts + 1 tokens
    tk::QuantizeAppendParams a;
    a.batch = B;
    a.heads = H;
    a.head_dim = D;
    a.new_tokens = 1;
    a.x = d_kn.get();
    a.x2 = d_vn.get();
    a.x_dtype = c.dtype;
    a.stride_b = stride_b;
    a.stride_h = stride_h;
    a.stride_t = stride_b;  // one token: any nonzero stride selects the strided reader
    a.path = tk::AppendPath::kRows;
    a.starts = d_starts.get<int32_t>();
    tq::DecodeParams p = params(two);
    a.cache = p.k;
    a.cache2 = p.v;
    a.status = two.status.get<int>();
    EXPECT_EQ(tk::quantize_append_invalid_reason(a), nullptr);
    EXPECT_EQ(tk::quantize_append(a, nullptr), cudaSuccess);
    p.lengths = d_after.get<int32_t>();
    const size_t ws_bytes = tk::turbo_decode_workspace_bytes(p, sms);
    DeviceBuffer ws(ws_bytes);
    EXPECT_EQ(tk::turbo_decode(p, ws.get(), ws_bytes, nullptr), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  {  // one launch
    tk::DecodeAppend a;
    a.k = d_kn.get();
    a.v = d_vn.get();
    a.dtype = c.dtype;
    a.stride_b = stride_b;
    a.stride_h = stride_h;
    a.starts = d_starts.get<int32_t>();
    a.status = fused.status.get<int>();
    const tq::DecodeParams p = params(fused);
    EXPECT_EQ(tk::turbo_decode_append_invalid_reason(p, a), nullptr)
        << tk::turbo_decode_append_invalid_reason(p, a);
    size_t ws_bytes = tk::turbo_decode_append_workspace_bytes(p, sms);
    if (c.min_workspace) {
      tq::DecodeParams one = p;
      one.num_splits = 1;  // one cached split + the new token's
      ws_bytes = tk::turbo_decode_append_workspace_bytes(one, sms);
      EXPECT_LT(ws_bytes, tk::turbo_decode_append_workspace_bytes(p, sms));
      DeviceBuffer small(ws_bytes - 1);
      EXPECT_EQ(tk::turbo_decode_append(p, a, small.get(), ws_bytes - 1, nullptr),
                cudaErrorInvalidValue);
    }
    DeviceBuffer ws(ws_bytes);
    cudaError_t e;
    {
      const tk::ScopedTurboDecodeWideCtas wide(c.wide);
      const tk::ScopedTurboDecodeStaged staged(c.staged < 0 ? tk::turbo_decode_staged()
                                                            : c.staged != 0);
      staged_ran = !c.min_workspace && tk::turbo_decode_append_staged(p, sms);
      e = tk::turbo_decode_append(p, a, ws.get(), ws_bytes, nullptr);
    }
    EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  AppendOutcome o;
  for (const auto& [x, y] :
       {std::make_pair(&two.kpages, &fused.kpages), std::make_pair(&two.vpages, &fused.vpages)}) {
    const auto a = x->to_host<uint8_t>(), b = y->to_host<uint8_t>();
    for (size_t i = 0; i < a.size(); ++i) o.page_bytes_differ += a[i] != b[i];
  }
  // Scale of the outputs: the largest decoded V entry any row can average over (|C| · n bound
  // by the codebook's extreme centroid times the largest row norm) — taken from the outputs
  // themselves, which are convex combinations of decoded V rows.
  const auto oa = two.out.to_host<float>(), ob = fused.out.to_host<float>();
  double scale = 1e-30;
  for (float v : oa) scale = std::max(scale, std::abs(static_cast<double>(v)));
  for (size_t i = 0; i < oa.size(); ++i) {
    if (!std::isfinite(oa[i]) || !std::isfinite(ob[i])) {
      ++o.non_finite;
      continue;
    }
    o.max_rel_diff = std::max(o.max_rel_diff, std::abs(static_cast<double>(oa[i]) - ob[i]) / scale);
  }
  o.status_two = two.status.to_host<int>()[0];
  o.status_fused = fused.status.to_host<int>()[0];
  for (uint32_t v : fused.counters.to_host<uint32_t>()) o.counters_nonzero += v != 0u;
  o.staged = staged_ran;
  return o;
}

TEST(TurboDecodeAppend, EqualsAppendThenDecode) {
  TURBOESM_REQUIRE_GPU();
  std::vector<AppendCase> cases;
  {
    AppendCase c;  // the 650M decode step: 20 heads, 1024 cached, 3 bits, d 64, norm none
    c.name = "650M step";
    c.heads = 20;
    c.starts = {1024};
    c.capacity_tokens = 1088;
    c.k.norm = c.v.norm = tq::NormMode::kNone;
    c.dtype = tk::ElementType::kFloat16;
    c.token_major = true;
    cases.push_back(c);
  }
  {
    AppendCase c;  // batch 5, empty and page-boundary starts, σ/μ, token norms, 2 bits
    c.name = "d64 b2 batch 5";
    c.bits = 2;
    c.starts = {0, 1, 63, 64, 3000};
    c.k.scale_mean = c.v.scale_mean = true;
    c.dtype = tk::ElementType::kBFloat16;
    cases.push_back(c);
  }
  {
    AppendCase c;  // prod QJL (m 32), 4 bits, d 16, the merge kernel instead of the counters
    c.name = "d16 b4 prod";
    c.bits = 4;
    c.dim = 16;
    c.starts = {999, 5};
    c.k.qjl = tq::QjlMode::kProd;
    c.k.qjl_dim = 32;
    c.split_counters = false;
    cases.push_back(c);
  }
  {
    AppendCase c;  // sign QJL, d 24, forced many cached splits (some empty)
    c.name = "d24 b3 sign";
    c.dim = 24;
    c.starts = {700, 3};
    c.k.qjl = tq::QjlMode::kSign;
    c.num_splits = 9;
    cases.push_back(c);
  }
  {
    AppendCase c;  // the smallest workspace: every row's cached tokens in one split
    c.name = "min workspace";
    c.heads = 4;
    c.starts = {3000, 17};
    c.min_workspace = true;
    cases.push_back(c);
  }
  {
    AppendCase c;  // plain fixed-mode kernel (2 bits, norm none), d 32
    c.name = "d32 b2 plain";
    c.bits = 2;
    c.dim = 32;
    c.starts = {4095};
    c.k.norm = c.v.norm = tq::NormMode::kNone;
    cases.push_back(c);
  }
  {
    AppendCase c = cases.front();  // the 650M step as the model runs it: the merge kernel
    c.name = "650M step, merge kernel";
    c.split_counters = false;
    cases.push_back(c);
  }
  {
    AppendCase c = cases.front();  // the same over a long cache (many pages per split)
    c.name = "650M step, merge kernel, long cache";
    c.split_counters = false;
    c.starts = {20000};
    c.capacity_tokens = 0;
    cases.push_back(c);
  }
  {
    AppendCase c = cases.front();  // Π_V folded into the model (model/value_fold.h): V skips Π
    c.name = "650M step, identity V rotation";
    c.v.identity = true;
    cases.push_back(c);
    c.name = "650M step, identity V rotation, merge kernel";
    c.split_counters = false;
    cases.push_back(c);
  }
  {
    AppendCase c = cases[1];  // centered V, token norms, both sides' Π the identity
    c.name = "d64 b2 batch 5, identity K and V rotations";
    c.k.identity = c.v.identity = true;
    cases.push_back(c);
  }
  for (size_t i = 0, n = cases.size(); i < n; ++i) {  // 8-warp CTAs where they apply
    if (cases[i].bits == 2 || cases[i].min_workspace) continue;
    AppendCase c = cases[i];
    c.name += ", wide switch on";
    c.wide = true;
    cases.push_back(c);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    AppendCase c = cases[i];
    c.seed = 60 + i;
    const AppendOutcome o = run_append_case(c);
    EXPECT_EQ(o.page_bytes_differ, 0) << c.name << ": pages differ from quantize_append's";
    EXPECT_EQ(o.non_finite, 0) << c.name;
    EXPECT_LE(o.max_rel_diff, kOrderTol) << c.name;
    EXPECT_EQ(o.status_fused, 0) << c.name;
    EXPECT_EQ(o.status_two, 0) << c.name;
    EXPECT_EQ(o.counters_nonzero, 0) << c.name << ": split counters not reset";
    std::printf("[decode append %s] max rel diff %.2e\n", c.name.c_str(), o.max_rel_diff);
  }
}

// The staged kernel (set_turbo_decode_staged; kernels/turbo_decode_staged.cuh) against the
// two-launch path (quantize_append, then turbo_decode's look-up-table kernel): the same pages, the
// same outputs up to the order of the sums. Each case must take the staged kernel with the switch
// on and the look-up-table one with it off (both compared with the reference).
TEST(TurboDecodeAppend, StagedEqualsAppendThenDecode) {
  TURBOESM_REQUIRE_GPU();
  std::vector<AppendCase> cases;
  {
    AppendCase c;  // the 650M step: 1088 slots, so 5 cached splits of <= 256 positions + 1
    c.name = "staged 650M step";
    c.heads = 20;
    c.starts = {1024};
    c.capacity_tokens = 1088;
    c.k.norm = c.v.norm = tq::NormMode::kNone;
    c.dtype = tk::ElementType::kFloat16;
    c.token_major = true;
    cases.push_back(c);
    c.name = "staged 650M step, merge kernel";
    c.split_counters = false;
    cases.push_back(c);
    c.name = "staged 650M step, identity V rotation (Π_V folded)";
    c.v.identity = true;
    cases.push_back(c);
  }
  {
    AppendCase c;  // d 16, 4 bits, σ/μ, token norms, empty / one / page-boundary / long starts
    c.name = "staged d16 b4 batch 4";
    c.bits = 4;
    c.dim = 16;
    c.starts = {0, 1, 255, 300};
    c.capacity_tokens = 320;
    c.k.scale_mean = c.v.scale_mean = true;
    c.dtype = tk::ElementType::kBFloat16;
    cases.push_back(c);
  }
  {
    AppendCase c;  // d 24 (3 code words per record, unaligned records), the merge kernel
    c.name = "staged d24 b3";
    c.dim = 24;
    c.starts = {77, 500};
    c.capacity_tokens = 512;
    c.split_counters = false;
    cases.push_back(c);
  }
  {
    AppendCase c;  // d 32, forced 3 cached splits of <= 234 positions, fp32 rows
    c.name = "staged d32 b3, 3 forced splits";
    c.dim = 32;
    c.starts = {699, 10};
    c.capacity_tokens = 700;
    c.num_splits = 3;
    c.k.scale_mean = true;
    cases.push_back(c);
  }
  {
    AppendCase c;  // a non-finite new row without token norms: flagged (the encoder's vote)
    c.name = "staged, NaN in a new row, norm none";
    c.heads = 20;
    c.starts = {1024};
    c.capacity_tokens = 1088;
    c.k.norm = c.v.norm = tq::NormMode::kNone;
    c.nan_row = true;
    cases.push_back(c);
  }
  {
    AppendCase c;  // a new token past the capacity: skipped and flagged as by the other kernel
    c.name = "staged, past capacity";
    c.starts = {128, 64};
    c.capacity_tokens = 128;
    cases.push_back(c);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    for (int staged : {1, 0}) {
      AppendCase c = cases[i];
      c.staged = staged;
      c.wide = true;  // the staged kernel replaces the 8-warp one
      c.seed = 200 + i;
      const AppendOutcome o = run_append_case(c);
      const std::string what = c.name + (staged ? "" : " (switch off)");
      EXPECT_EQ(o.staged, staged == 1)
          << what << ": staged kernel " << (o.staged ? "" : "not ") << "taken";
      EXPECT_EQ(o.page_bytes_differ, 0) << what;
      EXPECT_EQ(o.non_finite, 0) << what;
      EXPECT_LE(o.max_rel_diff, kOrderTol) << what;
      const int flags = (c.starts[0] >= c.capacity_tokens ? tk::kQuantizeAppendOutOfCapacity : 0) |
                        (c.nan_row ? tk::kQuantizeAppendBadRow : 0);
      EXPECT_EQ(o.status_fused, flags) << what;
      EXPECT_EQ(o.status_two, flags) << what;
      EXPECT_EQ(o.counters_nonzero, 0) << what;
      std::printf("[decode append %s] max rel diff %.2e\n", what.c_str(), o.max_rel_diff);
    }
  }
}

// The staged kernel reads its split's records before its dependency wait. Here they are written
// by quantize_append launched right before it on the same stream (programmatic dependent launch:
// its CTAs may still be writing when the staged ones read), so the kernel's re-read after the
// wait must give the values a synchronised run gives. Whether a given run actually catches
// quantize_append mid-write depends on timing; the outputs must agree either way.
TEST(TurboDecodeAppend, StagedRereadsRecordsWrittenBesideIt) {
  TURBOESM_REQUIRE_GPU();
  constexpr int B = 1, H = 20, D = 64, T = 1024;
  SideConfig kc, vc;
  kc.norm = vc.norm = tq::NormMode::kToken;
  HeadSet ks(H, D, kc, 31), vs(H, D, vc, 37);
  const int pt = ks.layout().page_tokens;
  const int pages = pages_for(T + 64, pt);
  HostPages kp(ks.layout(), B, H, pages, 0x5a), vp(vs.layout(), B, H, pages, 0xa5);
  tq::Rng rng(4242);
  std::vector<float> kx(static_cast<size_t>(B) * H * T * D), vx(kx.size());
  tq::fill_normal(rng, kx.data(), kx.size());
  tq::fill_normal(rng, vx.data(), vx.size());
  std::vector<float> kn(static_cast<size_t>(B) * H * D), vn(kn.size()), q(kn.size());
  tq::fill_normal(rng, kn.data(), kn.size());
  tq::fill_normal(rng, vn.data(), vn.size());
  tq::fill_normal(rng, q.data(), q.size());
  DeviceBuffer d_kx = DeviceBuffer::from(to_dtype(kx, tk::ElementType::kFloat16));
  DeviceBuffer d_vx = DeviceBuffer::from(to_dtype(vx, tk::ElementType::kFloat16));
  DeviceBuffer d_kn = DeviceBuffer::from(kn), d_vn = DeviceBuffer::from(vn);
  DeviceBuffer d_q = DeviceBuffer::from(q);
  DeviceBuffer d_zero = DeviceBuffer::from(std::vector<int32_t>(B, 0));
  DeviceBuffer d_starts = DeviceBuffer::from(std::vector<int32_t>(B, T));
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  struct Result {
    std::vector<float> out;
    std::vector<uint8_t> kpages, vpages;
    int status = 0;
    bool staged = false;
  };
  auto run = [&](bool synchronise_between, bool staged) {
    DeviceBuffer kpg = DeviceBuffer::from(kp.bytes), vpg = DeviceBuffer::from(vp.bytes);
    DeviceBuffer out = DeviceBuffer::from(std::vector<float>(q.size(), std::nanf("")));
    DeviceBuffer status = DeviceBuffer::from(std::vector<int>(1, 0));
    tq::DecodeParams p;
    p.batch = B;
    p.heads = H;
    p.head_dim = D;
    p.q = d_q.get<float>();
    p.out = out.get<float>();
    p.sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
    p.k = kp.view(kpg.get<uint8_t>(), ks.device_constants());
    p.v = vp.view(vpg.get<uint8_t>(), vs.device_constants());
    tk::QuantizeAppendParams a;  // the prefill's T rows, the tile path
    a.batch = B;
    a.heads = H;
    a.head_dim = D;
    a.new_tokens = T;
    a.x = d_kx.get();
    a.x2 = d_vx.get();
    a.x_dtype = tk::ElementType::kFloat16;
    a.starts = d_zero.get<int32_t>();
    a.cache = p.k;
    a.cache2 = p.v;
    a.status = status.get<int>();
    EXPECT_EQ(tk::quantize_append_invalid_reason(a), nullptr);
    tk::DecodeAppend app;  // then the step's new token at position T
    app.k = d_kn.get();
    app.v = d_vn.get();
    app.dtype = tk::ElementType::kFloat32;
    app.stride_b = H * D;
    app.stride_h = D;
    app.starts = d_starts.get<int32_t>();
    app.status = status.get<int>();
    const tk::ScopedTurboDecodeStaged scoped(staged);
    const size_t ws_bytes = tk::turbo_decode_append_workspace_bytes(p, sms);
    DeviceBuffer ws(ws_bytes);
    Result r;
    r.staged = tk::turbo_decode_append_staged(p, sms);
    EXPECT_EQ(tk::quantize_append(a, stream), cudaSuccess);
    if (synchronise_between) EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(tk::turbo_decode_append(p, app, ws.get(), ws_bytes, stream), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    r.out = out.to_host<float>();
    r.kpages = kpg.to_host<uint8_t>();
    r.vpages = vpg.to_host<uint8_t>();
    r.status = status.to_host<int>()[0];
    return r;
  };
  const Result ref = run(true, false);
  EXPECT_FALSE(ref.staged);
  for (int rep = 0; rep < 3; ++rep) {
    const Result got = run(false, true);
    EXPECT_TRUE(got.staged);
    EXPECT_EQ(got.status, 0);
    EXPECT_TRUE(got.kpages == ref.kpages && got.vpages == ref.vpages) << "run " << rep;
    double scale = 1e-30, diff = 0.0;
    for (float v : ref.out) scale = std::max(scale, std::abs(static_cast<double>(v)));
    int64_t bad = 0;
    for (size_t i = 0; i < ref.out.size(); ++i) {
      if (!std::isfinite(got.out[i])) {
        ++bad;
        continue;
      }
      diff = std::max(diff, std::abs(static_cast<double>(got.out[i]) - ref.out[i]) / scale);
    }
    EXPECT_EQ(bad, 0) << "run " << rep;
    EXPECT_LE(diff, kOrderTol) << "run " << rep;
    std::printf("[staged beside quantize_append, run %d] max rel diff %.2e\n", rep, diff);
  }
  EXPECT_EQ(ref.status, 0);
  cudaStreamDestroy(stream);
}

// A new token past the capacity: both paths skip it and flag kQuantizeAppendOutOfCapacity; the
// fused path then attends over the cached tokens only, as turbo_decode does with lengths clamped
// to the capacity.
TEST(TurboDecodeAppend, PastCapacityIsFlaggedAndSkipped) {
  TURBOESM_REQUIRE_GPU();
  AppendCase c;
  c.name = "past capacity";
  c.starts = {128, 64};
  c.capacity_tokens = 128;  // sequence 0 is full
  const AppendOutcome o = run_append_case(c);
  EXPECT_EQ(o.page_bytes_differ, 0);
  EXPECT_EQ(o.non_finite, 0);
  EXPECT_LE(o.max_rel_diff, kOrderTol);
  EXPECT_EQ(o.status_two & tk::kQuantizeAppendOutOfCapacity, tk::kQuantizeAppendOutOfCapacity);
  EXPECT_EQ(o.status_fused & tk::kQuantizeAppendOutOfCapacity, tk::kQuantizeAppendOutOfCapacity);
}

// ---------------------------------------------------------------------------------------------
// Host-side checks (no GPU needed).
// ---------------------------------------------------------------------------------------------
TEST(TurboDecodeAppendArgs, RejectsInvalidParamsWithAReason) {
  alignas(16) static float rows[4];
  static int32_t starts[2];
  auto valid = [] {
    tq::DecodeParams p = turboesm::testing_cuda::host_only_decode_params();
    p.lengths = nullptr;  // not read by turbo_decode_append
    return p;
  };
  tk::DecodeAppend a;
  a.k = a.v = rows;
  a.starts = starts;
  a.stride_b = 3 * 64;
  a.stride_h = 64;
  EXPECT_EQ(tk::turbo_decode_append_invalid_reason(valid(), a), nullptr);
  struct Bad {
    const char* what;
    void (*mutate)(tq::DecodeParams&, tk::DecodeAppend&);
  };
  const Bad bad[] = {
      {"q_len 2", [](tq::DecodeParams& p, tk::DecodeAppend&) { p.q_len = 2; }},
      {"null K rows", [](tq::DecodeParams&, tk::DecodeAppend& a) { a.k = nullptr; }},
      {"null starts", [](tq::DecodeParams&, tk::DecodeAppend& a) { a.starts = nullptr; }},
      {"negative stride", [](tq::DecodeParams&, tk::DecodeAppend& a) { a.stride_h = -64; }},
      {"bad dtype",
       [](tq::DecodeParams&, tk::DecodeAppend& a) { a.dtype = static_cast<tk::ElementType>(7); }},
      {"no boundaries",
       [](tq::DecodeParams& p, tk::DecodeAppend&) { p.v.constants.boundaries = nullptr; }},
      {"null q", [](tq::DecodeParams& p, tk::DecodeAppend&) { p.q = nullptr; }},
      {"head_dim 40", [](tq::DecodeParams& p, tk::DecodeAppend&) { p.head_dim = 40; }},
      {"head_dim 128 (Π of both sides would not fit in shared memory)",
       [](tq::DecodeParams& p, tk::DecodeAppend&) {
         p.head_dim = 128;
         for (tq::CacheView* c : {&p.k, &p.v})
           c->layout = tq::make_page_layout(128, 3, tq::NormMode::kToken, tq::QjlMode::kNone);
       }},
  };
  for (const Bad& b : bad) {
    tq::DecodeParams p = valid();
    tk::DecodeAppend x = a;
    b.mutate(p, x);
    const char* reason = tk::turbo_decode_append_invalid_reason(p, x);
    EXPECT_NE(reason, nullptr) << b.what;
    // Rejected before any CUDA call, so this holds without a GPU too.
    EXPECT_EQ(tk::turbo_decode_append(p, x, nullptr, 0, nullptr), cudaErrorInvalidValue) << b.what;
  }
  // The workspace always holds the new token's partial besides the cached tokens' ones.
  tq::DecodeParams p = valid();
  EXPECT_GT(tk::turbo_decode_append_workspace_bytes(p, 132), 0u);
  EXPECT_GT(tk::turbo_decode_append_workspace_bytes(p, 132),
            tk::turbo_decode_workspace_bytes(p, 132));
}

// The carve-out every launch_pdl launch asks for: the library's default, negative values mean
// "the driver's choice" (host state only).
TEST(DecodeSharedCarveout, DefaultAndDriversChoice) {
  EXPECT_EQ(tk::decode_shared_carveout(), tk::kDecodeSharedCarveoutDefault);
  tk::set_decode_shared_carveout(-7);
  EXPECT_EQ(tk::decode_shared_carveout(), -1);
  tk::set_decode_shared_carveout(50);
  EXPECT_EQ(tk::decode_shared_carveout(), 50);
  tk::set_decode_shared_carveout(tk::kDecodeSharedCarveoutDefault);
}

// Which launches take the staged kernel, and the split count it raises (host logic only).
TEST(TurboDecodeAppendArgs, StagedKernelChoice) {
  const tk::ScopedTurboDecodeWideCtas wide(true);
  const tk::ScopedTurboDecodeStaged staged(true);
  constexpr int kSms = 132;
  auto step = [] {  // the 650M step: 20 heads, d 64, 3 bits, a 1088-slot view
    tq::DecodeParams p = turboesm::testing_cuda::host_only_decode_params();
    p.batch = 1;
    p.heads = 20;
    for (tq::CacheView* c : {&p.k, &p.v}) {
      c->layout = tq::make_page_layout(64, 3, tq::NormMode::kNone, tq::QjlMode::kNone);
      c->max_pages = 17;
      c->head_stride = 17 * c->layout.page_bytes;
      c->seq_stride = 20 * c->head_stride;
    }
    return p;
  };
  const tq::DecodeParams p = step();
  EXPECT_TRUE(tk::turbo_decode_append_staged(p, kSms));
  // 5 cached splits of <= 256 of the 1088 positions + the new token's: 6 partials per row,
  // where the look-up-table kernel takes the automatic count (fewer).
  const size_t ws_staged = tk::turbo_decode_append_workspace_bytes(p, kSms);
  const size_t parts = 20 * 6;
  EXPECT_EQ(ws_staged, (parts * 64 * 4 + 15) / 16 * 16 + 2 * ((parts * 4 + 15) / 16 * 16));
  {
    const tk::ScopedTurboDecodeStaged off(false);
    EXPECT_FALSE(tk::turbo_decode_append_staged(p, kSms));
    EXPECT_LT(tk::turbo_decode_append_workspace_bytes(p, kSms), ws_staged);
  }
  {
    const tk::ScopedTurboDecodeWideCtas narrow(false);
    EXPECT_FALSE(tk::turbo_decode_append_staged(p, kSms)) << "4-warp CTAs";
  }
  struct Case {
    const char* what;
    bool staged;
    void (*mutate)(tq::DecodeParams&);
  };
  const Case cases[] = {
      {"QJL sign bits", false,
       [](tq::DecodeParams& p) {
         p.k.layout = tq::make_page_layout(64, 3, tq::NormMode::kNone, tq::QjlMode::kSign);
       }},
      {"2 bits (no 8-warp instance)", false,
       [](tq::DecodeParams& p) {
         for (tq::CacheView* c : {&p.k, &p.v})
           c->layout = tq::make_page_layout(64, 2, tq::NormMode::kNone, tq::QjlMode::kNone);
       }},
      {"40 heads: 6 splits would need 240 SMs", false, [](tq::DecodeParams& p) { p.heads = 40; }},
      {"20 000 slots: splits of <= 256 would not fit the SMs", false,
       [](tq::DecodeParams& p) { p.k.max_pages = p.v.max_pages = 313; }},
      {"3 forced splits of 363 positions", false, [](tq::DecodeParams& p) { p.num_splits = 3; }},
      {"5 forced splits of 218 positions", true, [](tq::DecodeParams& p) { p.num_splits = 5; }},
      {"token norms, 4 bits, d 16", true,
       [](tq::DecodeParams& p) {
         p.head_dim = 16;
         for (tq::CacheView* c : {&p.k, &p.v})
           c->layout = tq::make_page_layout(16, 4, tq::NormMode::kToken, tq::QjlMode::kNone);
       }},
  };
  for (const Case& c : cases) {
    tq::DecodeParams q = step();
    c.mutate(q);
    EXPECT_EQ(tk::turbo_decode_append_staged(q, kSms), c.staged) << c.what;
  }
}

}  // namespace
