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
  uint64_t seed = 1;
};

struct AppendOutcome {
  int64_t page_bytes_differ = 0;
  double max_rel_diff = 0.0;  ///< |fused − two launches| / max |v̂| entry
  int64_t non_finite = 0;
  int status_two = 0, status_fused = 0;
  int64_t counters_nonzero = 0;
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

}  // namespace
