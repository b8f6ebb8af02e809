// SPDX-License-Identifier: MIT
// decode_gemv (kernels/decode_gemv.cu): the single-token dense layers of a decode step, against
// their reference, the eager ATen ops they replace (layer_norm, cuBLAS linear with bias, gelu,
// add) on the same GPU tensors; its parameter checks; and the fp16 model with the kernel on
// (Esm2Model::set_fused_decode_gemv) against the same model with it off, eager and in a CUDA
// graph. GPU tests skip without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/kernels/decode_gemv.h"
#include "turboesm/kernels/qkv_rotary.h"
#include "turboesm/model/decode_graph.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

namespace tk = turboesm::kernels;
namespace tm = turboesm::model;
namespace tq = turboesm::quant;

const c10::Device kGpu(c10::kCUDA, 0);

/// Unit roundoff of the model dtype (half the spacing of numbers in [1, 2)).
double unit_roundoff(at::ScalarType t) { return t == at::kHalf ? 0x1p-11 : 0x1p-8; }

struct Case {
  int rows, k, n;
  bool ln, bias, gelu, residual, x_fp32;
};

/// Random inputs of a case in dtype t (x in fp32 when c.x_fp32; absent parts undefined), drawn
/// in a fixed order from the current seed.
struct CaseInputs {
  at::Tensor x, w, g, b, bias, res;
};
CaseInputs make_inputs(const Case& c, at::ScalarType t) {
  const auto o = at::TensorOptions().device(kGpu);
  CaseInputs in;
  in.x = (at::randn({c.rows, c.k}, o) * 2 + 0.5).to(c.x_fp32 ? at::kFloat : t);
  in.w = (at::randn({c.n, c.k}, o) / std::sqrt(double(c.k))).to(t);
  if (c.ln) in.g = (1 + 0.1 * at::randn({c.k}, o)).to(t);
  if (c.ln) in.b = (0.1 * at::randn({c.k}, o)).to(t);
  if (c.bias) in.bias = (0.1 * at::randn({c.n}, o)).to(t);
  if (c.residual) in.res = at::randn({c.rows, c.n}, o).to(t);
  return in;
}

/// Eager reference: the ATen ops of Esm2Model's eager path, in the same roundings.
at::Tensor eager(const at::Tensor& x, const at::Tensor& g, const at::Tensor& b, const at::Tensor& w,
                 const at::Tensor& bias, bool gelu, const at::Tensor& res, at::ScalarType t) {
  at::Tensor h = x.to(t);
  if (g.defined()) h = at::layer_norm(h, {h.size(-1)}, g, b, 1e-5);
  at::Tensor z = at::linear(h, w, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
  if (gelu) z = at::gelu(z);
  if (res.defined()) z = z + res;
  return z;
}

at::Tensor run_kernel(const at::Tensor& x, const at::Tensor& g, const at::Tensor& b,
                      const at::Tensor& w, const at::Tensor& bias, bool gelu, const at::Tensor& res,
                      at::ScalarType t, int ctas_per_sm = 0, int warps = 0) {
  at::Tensor out = at::empty({x.size(0), w.size(0)}, w.options());
  tk::DecodeGemvParams p;
  p.rows = static_cast<int>(x.size(0));
  p.in_features = static_cast<int>(w.size(1));
  p.out_features = static_cast<int>(w.size(0));
  p.dtype = t == at::kHalf ? tk::ElementType::kFloat16 : tk::ElementType::kBFloat16;
  p.x_dtype = x.scalar_type() == at::kFloat ? tk::ElementType::kFloat32 : p.dtype;
  p.x = x.data_ptr();
  p.ln_weight = g.defined() ? g.data_ptr() : nullptr;
  p.ln_bias = b.defined() ? b.data_ptr() : nullptr;
  p.ln_eps = 1e-5f;
  p.weight = w.data_ptr();
  p.bias = bias.defined() ? bias.data_ptr() : nullptr;
  p.gelu = gelu;
  p.residual = res.defined() ? res.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.ctas_per_sm = ctas_per_sm;
  p.warps = warps;
  EXPECT_EQ(tk::decode_gemv_invalid_reason(p), nullptr);
  const cudaError_t e = tk::decode_gemv(p, at::cuda::getCurrentCUDAStream());
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  return out;
}

class DecodeGemv : public ::testing::TestWithParam<at::ScalarType> {};

// Both sides sum in fp32 (other orders) and round to T once per op, so an output differs by at
// most a rounding of T per op (a sum within fp32 noise of a rounding midpoint flips it), plus the
// fp32 noise of the sum itself (≤ K · 2^-24 · Σ|w x|, far below one unit of T here), plus, with
// a LayerNorm, the effect of x'' elements that flipped one unit (each moves z by ~u·|w x|).
// Bound: 3 units of T at the output's magnitude + 3 u · (Σ_k |w x''|)/√K. (How many outputs
// differ at all is printed, not bounded: PyTorch's LayerNorm kernels compute μ and rstd in other
// orders, so with a LayerNorm many x'' differ by one unit, e.g. ~30% of the outputs at K = 2056.)
TEST_P(DecodeGemv, MatchesEagerOps) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  const double u = unit_roundoff(t);
  const std::vector<Case> cases = {
      {1, 1280, 3840, true, true, false, false, false},  // 650M pre-LN + QKV
      {1, 1280, 1280, false, true, false, true, true},   // O projection of fp32 attention
      {1, 1280, 5120, true, true, true, false, false},   // pre-LN + FC1 + GELU
      {1, 5120, 1280, false, true, false, true, false},  // FC2 + residual
      {3, 1280, 1000, true, true, true, false, false},   // rows padded to 4, N not a multiple
      {8, 512, 77, false, false, false, true, true},     // 8 rows, no bias, fp32 x
      {5, 8, 1, true, true, false, false, false},        // smallest K and N
      {2, 2056, 300, true, false, true, false, true},    // K not a multiple of the 1024 step
      {1, 20480, 96, false, true, false, true, false},   // 15B FC2 K: 4 K slices, 4 passes
      {4, 1280, 2000, true, true, false, false, false},  // 4 rows, each with its LayerNorm
  };
  at::manual_seed(3);
  for (const Case& c : cases) {
    const CaseInputs in = make_inputs(c, t);
    const at::Tensor &x = in.x, &w = in.w, &g = in.g, &b = in.b, &bias = in.bias, &res = in.res;
    const at::Tensor want = eager(x, g, b, w, bias, c.gelu, res, t).to(at::kDouble);
    const at::Tensor got = run_kernel(x, g, b, w, bias, c.gelu, res, t).to(at::kDouble);
    ASSERT_TRUE(at::isfinite(got).all().item<bool>());
    // Σ_k |w x''| per output (x'' of the eager side), for the sum-noise part of the bound.
    at::Tensor h = x.to(t);
    if (c.ln) h = at::layer_norm(h, {c.k}, g, b, 1e-5);
    const at::Tensor mag = at::matmul(h.to(at::kDouble).abs(), w.to(at::kDouble).abs().t());
    const at::Tensor bound = 3 * u * want.abs() + 3 * u * mag / std::sqrt(double(c.k)) + 1e-30;
    const at::Tensor diff = (got - want).abs();
    const double worst = (diff / bound).max().item<double>();
    const double differing = diff.gt(0).to(at::kDouble).mean().item<double>();
    EXPECT_LE(worst, 1.0) << "rows " << c.rows << " K " << c.k << " N " << c.n << " ln " << c.ln
                          << " gelu " << c.gelu << " residual " << c.residual;
    std::printf("[decode_gemv %s] rows %d K %d N %d: max |d| %.3g (%.2f of bound), %.1f%% differ\n",
                c10::toString(t), c.rows, c.k, c.n, diff.max().item<double>(), worst,
                100 * differing);
  }
}

// The grid (one CTA per task, as many as fit looping over tasks, or a few per SM) only moves
// tasks between CTAs: every output must be the same bits. Shapes with more tasks than fit at once
// (the 15B model's FC1 and FC2, 4 rows) make the CTAs loop; the K split exercises the partials'
// two shared-memory buffers across tasks.
TEST_P(DecodeGemv, GridAndEarlyLoadsDoNotChangeOutputs) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  const std::vector<Case> cases = {
      {1, 5120, 20480, true, true, true, false, false},   // 15B pre-LN + FC1 + GELU: 10240 tasks
      {1, 20480, 5120, false, true, false, true, false},  // 15B FC2: 4 slices, 4 passes
      {4, 2056, 3000, true, false, false, true, true},    // 4 rows, K not a multiple of a pass
      {1, 1280, 1280, false, true, false, true, true},    // 650M O (K split in 2)
      {1, 1280, 5120, true, true, true, false, false},    // 650M pre-LN + FC1 + GELU
      {1, 5120, 1280, false, true, false, true, false},   // 650M FC2 (K split in 4)
  };
  at::manual_seed(11);
  for (const Case& c : cases) {
    const CaseInputs in = make_inputs(c, t);
    const at::Tensor &x = in.x, &w = in.w, &g = in.g, &b = in.b, &bias = in.bias, &res = in.res;
    const at::Tensor per_task =
        run_kernel(x, g, b, w, bias, c.gelu, res, t, tk::kDecodeGemvCtaPerTask);
    ASSERT_TRUE(at::isfinite(per_task).all().item<bool>());
    // The one-row kernels with their epilogue and LayerNorm inputs loaded early (the default)
    // and late (set_decode_gemv_early_loads): only when loads are issued differs.
    // At one row also every CTA width (DecodeGemvParams::warps; the one-row default is 16 for
    // these plain products): a task is then more or fewer feature pairs, each summed the same way
    // (the K split agrees here).
    for (const bool early : {true, false})
      for (int warps : {0, 4, 8, 16}) {
        if (c.rows > 1 && warps != 0) continue;
        tk::set_decode_gemv_early_loads(early);
        for (int ctas : {tk::kDecodeGemvCtaPerTask, 0, 1, 2, 3}) {
          const at::Tensor got = run_kernel(x, g, b, w, bias, c.gelu, res, t, ctas, warps);
          EXPECT_TRUE(at::equal(got, per_task))
              << "ctas_per_sm " << ctas << ", warps " << warps << ", early loads " << early
              << ", rows " << c.rows << " K " << c.k << " N " << c.n
              << ": max |d| " << (got - per_task).abs().max().item<double>();
        }
      }
    tk::set_decode_gemv_early_loads(true);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DecodeGemv, ::testing::Values(at::kHalf, at::kBFloat16),
                         [](const ::testing::TestParamInfo<at::ScalarType>& i) {
                           return std::string(i.param == at::kHalf ? "fp16" : "bf16");
                         });

// The Q/K/V mode equals the plain product followed by qkv_rotary_to_float, value for value (the
// same fp32 sums — a warp's pair of features is summed the same way whichever two they are — and
// the glue's arithmetic in the epilogue).
TEST_P(DecodeGemv, QkvModeEqualsProductThenRotaryGlue) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  struct Shape {
    int rows, heads, d, k;
  };
  at::manual_seed(11);
  for (const Shape& sh :
       {Shape{1, 20, 64, 1280}, Shape{3, 4, 32, 128}, Shape{8, 2, 16, 64}, Shape{2, 5, 128, 640}}) {
    const auto o = at::TensorOptions().device(kGpu);
    const int n = 3 * sh.heads * sh.d, hd = sh.heads * sh.d;
    const at::Tensor x = at::randn({sh.rows, sh.k}, o).to(t);
    const at::Tensor w = (at::randn({n, sh.k}, o) / std::sqrt(double(sh.k))).to(t);
    const at::Tensor bias = (0.1 * at::randn({n}, o)).to(t);
    const at::Tensor g = (1 + 0.1 * at::randn({sh.k}, o)).to(t),
                     b = (0.1 * at::randn({sh.k}, o)).to(t);
    const at::Tensor ang = at::rand({sh.rows, sh.d}, o) * 6.3;
    const at::Tensor cs = at::cos(ang), sn = at::sin(ang);
    const float scale = static_cast<float>(std::pow(double(sh.d), -0.5));
    tk::DecodeGemvParams p;
    p.rows = sh.rows;
    p.in_features = sh.k;
    p.out_features = n;
    p.dtype = t == at::kHalf ? tk::ElementType::kFloat16 : tk::ElementType::kBFloat16;
    p.x_dtype = p.dtype;
    p.x = x.data_ptr();
    p.ln_weight = g.data_ptr();
    p.ln_bias = b.data_ptr();
    p.weight = w.data_ptr();
    p.bias = bias.data_ptr();
    // Plain product, then the glue.
    const at::Tensor lin = at::empty({sh.rows, n}, w.options());
    p.out = lin.data_ptr();
    ASSERT_EQ(tk::decode_gemv(p, at::cuda::getCurrentCUDAStream()), cudaSuccess);
    const auto f32 = o.dtype(at::kFloat);
    const at::Tensor q1 = at::empty({sh.rows, hd}, f32), k1 = at::empty({sh.rows, hd}, f32),
                     v1 = at::empty({sh.rows, hd}, f32);
    tk::QkvRotaryParams r;
    r.batch = sh.rows;
    r.heads = sh.heads;
    r.head_dim = sh.d;
    r.dtype = p.dtype;
    r.qkv = lin.data_ptr();
    r.cos = cs.data_ptr<float>();
    r.sin = sn.data_ptr<float>();
    r.q_scale = scale;
    r.q = q1.data_ptr<float>();
    r.k = k1.data_ptr<float>();
    r.v = v1.data_ptr<float>();
    ASSERT_EQ(tk::qkv_rotary_to_float(r, at::cuda::getCurrentCUDAStream()), cudaSuccess);
    // Q/K/V mode.
    const at::Tensor q2 = at::full({sh.rows, hd}, NAN, f32), k2 = at::full({sh.rows, hd}, NAN, f32),
                     v2 = at::full({sh.rows, hd}, NAN, f32);
    p.out = nullptr;
    p.head_dim = sh.d;
    p.cos = cs.data_ptr<float>();
    p.sin = sn.data_ptr<float>();
    p.q_scale = scale;
    p.q_out = q2.data_ptr<float>();
    p.k_out = k2.data_ptr<float>();
    p.v_out = v2.data_ptr<float>();
    ASSERT_EQ(tk::decode_gemv_invalid_reason(p), nullptr);
    // One row: with the bias and rotary tables loaded early (default) and late, and at every
    // CTA width (DecodeGemvParams::warps; more rows take 4).
    for (const bool early : {true, false})
    for (int warps : {0, 4, 8, 16}) {
      if (sh.rows > 1 && warps != 0) continue;
      p.warps = warps;
      tk::set_decode_gemv_early_loads(early);
      for (const at::Tensor& o2 : {q2, k2, v2}) o2.fill_(NAN);
      ASSERT_EQ(tk::decode_gemv(p, at::cuda::getCurrentCUDAStream()), cudaSuccess);
      for (const auto& pr :
           {std::make_pair(q1, q2), std::make_pair(k1, k2), std::make_pair(v1, v2)}) {
        ASSERT_TRUE(at::isfinite(pr.second).all().item<bool>()) << "an output was not written";
        EXPECT_TRUE(at::equal(pr.first, pr.second))
            << "rows " << sh.rows << " heads " << sh.heads << " d " << sh.d << ", early loads "
            << early << ", warps " << warps
            << ": max |d| " << (pr.first - pr.second).abs().max().item<double>();
      }
    }
    tk::set_decode_gemv_early_loads(true);
  }
}

// The early-loads switch (host state only): on by default, and it switches.
TEST(DecodeGemvParams, EarlyLoadsSwitch) {
  EXPECT_TRUE(tk::decode_gemv_early_loads());
  tk::set_decode_gemv_early_loads(false);
  EXPECT_FALSE(tk::decode_gemv_early_loads());
  tk::set_decode_gemv_early_loads(true);
  EXPECT_TRUE(tk::decode_gemv_early_loads());
}

TEST(DecodeGemvParams, RejectsBadParameters) {
  // Host-side checks only: no launch, no GPU needed.
  alignas(16) static uint8_t buf[256];
  tk::DecodeGemvParams good;
  good.rows = 1;
  good.in_features = 16;
  good.out_features = 4;
  good.x = buf;
  good.weight = buf;
  good.out = buf;
  ASSERT_EQ(tk::decode_gemv_invalid_reason(good), nullptr);
  struct Bad {
    const char* what;
    void (*mutate)(tk::DecodeGemvParams&);
  };
  const Bad bad[] = {
      {"rows 0", [](tk::DecodeGemvParams& p) { p.rows = 0; }},
      {"warps 12", [](tk::DecodeGemvParams& p) { p.warps = 12; }},
      {"warps 16 at 2 rows",
       [](tk::DecodeGemvParams& p) {
         p.rows = 2;
         p.warps = 16;
       }},
      {"rows 9", [](tk::DecodeGemvParams& p) { p.rows = 9; }},
      {"K 12", [](tk::DecodeGemvParams& p) { p.in_features = 12; }},
      {"K 0", [](tk::DecodeGemvParams& p) { p.in_features = 0; }},
      {"N 0", [](tk::DecodeGemvParams& p) { p.out_features = 0; }},
      {"fp32 weights", [](tk::DecodeGemvParams& p) { p.dtype = tk::ElementType::kFloat32; }},
      {"bf16 x, fp16 weights",
       [](tk::DecodeGemvParams& p) { p.x_dtype = tk::ElementType::kBFloat16; }},
      {"null x", [](tk::DecodeGemvParams& p) { p.x = nullptr; }},
      {"null weight", [](tk::DecodeGemvParams& p) { p.weight = nullptr; }},
      {"null out", [](tk::DecodeGemvParams& p) { p.out = nullptr; }},
      {"misaligned x", [](tk::DecodeGemvParams& p) { p.x = buf + 2; }},
      {"misaligned weight", [](tk::DecodeGemvParams& p) { p.weight = buf + 8; }},
      {"ln weight without bias", [](tk::DecodeGemvParams& p) { p.ln_weight = buf; }},
      {"misaligned ln",
       [](tk::DecodeGemvParams& p) {
         p.ln_weight = buf;
         p.ln_bias = buf + 4;
       }},
      {"gelu and residual",
       [](tk::DecodeGemvParams& p) {
         p.gelu = true;
         p.residual = buf;
       }},
      {"odd head_dim", [](tk::DecodeGemvParams& p) { p.head_dim = 3; }},
      {"Q/K/V mode without outputs",
       [](tk::DecodeGemvParams& p) {
         p.out_features = 12;
         p.head_dim = 2;
       }},
      {"Q/K/V mode, N not 3 x heads x head_dim",
       [](tk::DecodeGemvParams& p) {
         p.head_dim = 2;
         p.cos = p.sin = p.q_out = p.k_out = p.v_out = reinterpret_cast<float*>(buf);
       }},
      {"Q/K/V mode with gelu",
       [](tk::DecodeGemvParams& p) {
         p.out_features = 12;
         p.head_dim = 2;
         p.cos = p.sin = p.q_out = p.k_out = p.v_out = reinterpret_cast<float*>(buf);
         p.gelu = true;
       }},
      {"ctas_per_sm -2", [](tk::DecodeGemvParams& p) { p.ctas_per_sm = -2; }},
      {"x beyond shared memory",
       [](tk::DecodeGemvParams& p) {
         p.rows = 5;
         p.in_features = 8 * 1024;
       }},
  };
  for (const Bad& b : bad) {
    tk::DecodeGemvParams p = good;
    b.mutate(p);
    const char* why = tk::decode_gemv_invalid_reason(p);
    EXPECT_NE(why, nullptr) << b.what;
    EXPECT_EQ(tk::decode_gemv(p, nullptr), cudaErrorInvalidValue) << b.what;
  }
}

// ---- the fp16 model with and without the kernel --------------------------------------------

std::shared_ptr<tm::Esm2Model> tiny_fp16() {
  tm::LoadOptions lo;
  lo.device = kGpu;
  lo.dtype = at::kHalf;
  return tm::Esm2Model::random(tm::EsmConfig::preset("tiny"), 5, 0.08, lo);
}

at::Tensor row(const std::string& s) {
  return at::tensor(io::EsmTokenizer::instance().encode(s), at::kLong).unsqueeze(0);
}

const std::string kSeq =
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHD";

// The single-token layers of the fp16 model with the kernel vs the eager ops: per layer, and
// through 40 decode steps of a turbo-cache session (final-LayerNorm states, O(1)). Each layer
// adds a few fp16 roundings of difference; the tiny model's 2 layers stay within 3e-2.
TEST(DecodeGemvModel, GridSwitchRejectsBadValues) {
  // Host-side: a CPU model holds the switch too.
  auto m = tm::Esm2Model::random(tm::EsmConfig::preset("tiny"), 5, 0.08, tm::LoadOptions{});
  EXPECT_EQ(m->decode_gemv_ctas_per_sm(), 0) << "as many as fit is the default";
  m->set_decode_gemv_ctas_per_sm(2);
  EXPECT_EQ(m->decode_gemv_ctas_per_sm(), 2);
  try {
    m->set_decode_gemv_ctas_per_sm(-2);
    FAIL() << "-2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("got -2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(m->decode_gemv_ctas_per_sm(), 2) << "a rejected value changes nothing";
  // Warps per CTA per product: 0 (the kernel's default) everywhere, then 4, 8 or 16 each.
  EXPECT_EQ(m->decode_gemv_warps(), (std::array<int, 4>{0, 0, 0, 0}));
  m->set_decode_gemv_warps(4, 8, 16, 0);
  EXPECT_EQ(m->decode_gemv_warps(), (std::array<int, 4>{4, 8, 16, 0}));
  try {
    m->set_decode_gemv_warps(4, 4, 12, 4);
    FAIL() << "12 warps accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("got 12"), std::string::npos) << e.what();
  }
  EXPECT_EQ(m->decode_gemv_warps(), (std::array<int, 4>{4, 8, 16, 0}))
      << "a rejected value changes nothing";
}

TEST(DecodeGemvModel, Fp16LayersMatchEagerOps) {
  TURBOESM_REQUIRE_GPU();
  auto m = tiny_fp16();
  ASSERT_TRUE(m->fused_decode_gemv()) << "the kernel is the default";
  const auto& c = m->config();
  at::manual_seed(7);
  const auto o = at::TensorOptions().device(kGpu);
  for (int64_t batch : {1, 3, 8}) {
    const at::Tensor h = at::randn({batch, 1, c.hidden_size}, o).to(at::kHalf);
    const at::Tensor attn =
        at::randn({batch, c.num_attention_heads, 1, c.head_dim()}, o);  // fp32, as the decode op
    for (int layer = 0; layer < m->num_layers(); ++layer) {
      m->set_fused_decode_gemv(true);
      const at::Tensor f = m->layer_finish(layer, h, attn);
      const at::Tensor fq = m->layer_qkv_projection(layer, h);
      m->set_decode_gemv_ctas_per_sm(tk::kDecodeGemvCtaPerTask);  // the grid changes no bit
      EXPECT_TRUE(at::equal(m->layer_finish(layer, h, attn), f)) << "layer " << layer;
      EXPECT_TRUE(at::equal(m->layer_qkv_projection(layer, h), fq)) << "layer " << layer;
      m->set_decode_gemv_ctas_per_sm(0);
      for (int w : {4, 8}) {  // nor does the CTA width (one row; the K splits agree here)
        m->set_decode_gemv_warps(w, w, w, w);
        EXPECT_TRUE(at::equal(m->layer_finish(layer, h, attn), f))
            << "layer " << layer << " warps " << w;
        EXPECT_TRUE(at::equal(m->layer_qkv_projection(layer, h), fq))
            << "layer " << layer << " warps " << w;
      }
      m->set_decode_gemv_warps(0, 0, 0, 0);
      m->set_fused_decode_gemv(false);
      const at::Tensor e = m->layer_finish(layer, h, attn);
      const at::Tensor eq = m->layer_qkv_projection(layer, h);
      m->set_fused_decode_gemv(true);
      ASSERT_EQ(f.sizes(), e.sizes());
      ASSERT_EQ(f.scalar_type(), at::kHalf);
      const double d = (f.to(at::kDouble) - e.to(at::kDouble)).abs().max().item<double>();
      const double dq = (fq.to(at::kDouble) - eq.to(at::kDouble)).abs().max().item<double>();
      const double scale = e.to(at::kDouble).abs().max().item<double>();
      const double scale_q = eq.to(at::kDouble).abs().max().item<double>();
      EXPECT_LE(d, 8 * 0x1p-11 * scale) << "layer_finish, batch " << batch << " layer " << layer;
      EXPECT_LE(dq, 8 * 0x1p-11 * scale_q) << "qkv, batch " << batch << " layer " << layer;
    }
  }
  // Whole decode: eager sessions with and without the kernel, and a graph session (kernel on),
  // which must equal the eager kernel session (same kernels, same inputs).
  const tm::TurboCacheSpec spec = tm::TurboCacheSpec::random(
      c, 3, 3, tq::RotationKind::kHadamard, tq::NormMode::kNone, tq::QjlMode::kNone, 11, 0, 5.0);
  auto session = [&] {
    return tm::Session(m, tm::make_kv_cache(tm::CacheKind::kTurbo, c, 1, kGpu, &spec));
  };
  tm::Session fused = session(), plain = session(), graph = session();
  graph.enable_cuda_graph(128, 32);
  const at::Tensor toks = row(kSeq);
  const at::Tensor prefix = toks.narrow(1, 0, 30);
  fused.prefill(prefix);
  plain.prefill(prefix);
  graph.prefill(prefix);
  double worst_plain = 0.0, worst_graph = 0.0;
  for (int64_t j = 30; j < 70; ++j) {
    const at::Tensor t = toks.narrow(1, j, 1).contiguous();
    const at::Tensor hf = fused.append(t).to(at::kDouble);
    m->set_fused_decode_gemv(false);
    const at::Tensor hp = plain.append(t).to(at::kDouble);
    m->set_fused_decode_gemv(true);
    const at::Tensor hg = graph.append(t).to(at::kDouble);
    ASSERT_TRUE(at::isfinite(hg).all().item<bool>());
    worst_plain = std::max(worst_plain, (hf - hp).abs().max().item<double>());
    worst_graph = std::max(worst_graph, (hf - hg).abs().max().item<double>());
  }
  EXPECT_LE(worst_plain, 3e-2);
  // The same steps with the kernels launched the plain way (no programmatic dependent launch):
  // the waits only order the kernels, so the values are identical.
  {
    tm::set_programmatic_dependent_launch(false);
    tm::Session again = session(), again_graph = session();
    again_graph.enable_cuda_graph(128, 32);
    again.prefill(prefix);
    again_graph.prefill(prefix);
    tm::Session reference = session();
    tm::set_programmatic_dependent_launch(true);
    reference.prefill(prefix);
    double worst_pdl = 0.0;
    for (int64_t j = 30; j < 50; ++j) {
      const at::Tensor t = toks.narrow(1, j, 1).contiguous();
      tm::set_programmatic_dependent_launch(false);
      const at::Tensor a = again.append(t).to(at::kDouble);
      const at::Tensor ag = again_graph.append(t).to(at::kDouble);
      tm::set_programmatic_dependent_launch(true);
      const at::Tensor r = reference.append(t).to(at::kDouble);
      worst_pdl = std::max(
          {worst_pdl, (a - r).abs().max().item<double>(), (ag - r).abs().max().item<double>()});
    }
    EXPECT_EQ(worst_pdl, 0.0) << "launch mode changed the values";
    EXPECT_TRUE(tm::programmatic_dependent_launch());
  }
  // Graph replays run the step's attention as one launch (kernels::turbo_decode_append: the new
  // token's partial is a split of its own), the eager session as quantize_append + turbo_decode:
  // the fp32 attention outputs differ by ~1e-7 relative (the order the splits are summed in),
  // which can flip an fp16 rounding of a layer's output and then propagate (ulps of O(1)-O(10)
  // hidden values, ~3e-3 measured on the H200) — the same bound as the eager-ops comparison.
  // ModelDecodeCuda.GraphStepEqualsEagerStep checks the fp32 model at 1e-5.
  EXPECT_LE(worst_graph, 3e-2);
  EXPECT_EQ(graph.cuda_graph()->replays(), 40);
  std::printf(
      "[decode_gemv model] 40 fp16 steps: kernel vs eager ops max|d| %.3g, graph vs eager "
      "%.3g\n",
      worst_plain, worst_graph);
}

}  // namespace
}  // namespace turboesm
