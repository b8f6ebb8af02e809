// SPDX-License-Identifier: MIT
// decode_gemv (kernels/decode_gemv.cu): the single-token dense layers of a decode step, against
// their reference, the eager ATen ops they replace (layer_norm, cuBLAS linear with bias, gelu,
// add) on the same GPU tensors; its parameter checks; and the fp16 model with the kernel on
// (Esm2Model::set_fused_decode_gemv) against the same model with it off, eager and in a CUDA
// graph. GPU tests skip without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
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
                      at::ScalarType t, int ctas_per_sm = 0) {
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
    for (const bool early : {true, false}) {
      tk::set_decode_gemv_early_loads(early);
      for (int ctas : {tk::kDecodeGemvCtaPerTask, 0, 1, 2, 3}) {
        const at::Tensor got = run_kernel(x, g, b, w, bias, c.gelu, res, t, ctas);
        EXPECT_TRUE(at::equal(got, per_task))
            << "ctas_per_sm " << ctas << ", early loads " << early << ", rows " << c.rows << " K "
            << c.k << " N " << c.n << ": max |d| " << (got - per_task).abs().max().item<double>();
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
    // One row: with the bias and rotary tables loaded early (default) and late.
    for (const bool early : {true, false}) {
      tk::set_decode_gemv_early_loads(early);
      for (const at::Tensor& o2 : {q2, k2, v2}) o2.fill_(NAN);
      ASSERT_EQ(tk::decode_gemv(p, at::cuda::getCurrentCUDAStream()), cudaSuccess);
      for (const auto& pr :
           {std::make_pair(q1, q2), std::make_pair(k1, k2), std::make_pair(v1, v2)}) {
        ASSERT_TRUE(at::isfinite(pr.second).all().item<bool>()) << "an output was not written";
        EXPECT_TRUE(at::equal(pr.first, pr.second))
            << "rows " << sh.rows << " heads " << sh.heads << " d " << sh.d << ", early loads "
            << early << ": max |d| " << (pr.first - pr.second).abs().max().item<double>();
      }
    }
    tk::set_decode_gemv_early_loads(true);
  }
}

// ---- decode_mlp: LN → FC1 → GELU → FC2 → residual in one launch ---------------------------

/// Inputs of one MLP: x [K] (also the residual), γ/β, W1 [F, K], b1, W2 [K, F], b2, in dtype t.
struct MlpInputs {
  at::Tensor x, g, b, w1, b1, w2, b2;
};
MlpInputs make_mlp(int k, int f, bool ln, bool bias, at::ScalarType t) {
  const auto o = at::TensorOptions().device(kGpu);
  MlpInputs in;
  in.x = (at::randn({1, k}, o) * 2 + 0.5).to(t);
  in.w1 = (at::randn({f, k}, o) / std::sqrt(double(k))).to(t);
  in.w2 = (at::randn({k, f}, o) / std::sqrt(double(f))).to(t);
  if (ln) in.g = (1 + 0.1 * at::randn({k}, o)).to(t);
  if (ln) in.b = (0.1 * at::randn({k}, o)).to(t);
  if (bias) in.b1 = (0.1 * at::randn({f}, o)).to(t);
  if (bias) in.b2 = (0.1 * at::randn({k}, o)).to(t);
  return in;
}

tk::DecodeMlpParams mlp_params(const MlpInputs& in, const at::Tensor& out, const at::Tensor& ws) {
  tk::DecodeMlpParams p;
  p.hidden = static_cast<int>(in.w1.size(1));
  p.intermediate = static_cast<int>(in.w1.size(0));
  p.dtype = in.x.scalar_type() == at::kHalf ? tk::ElementType::kFloat16
                                            : tk::ElementType::kBFloat16;
  p.x = in.x.data_ptr();
  p.ln_weight = in.g.defined() ? in.g.data_ptr() : nullptr;
  p.ln_bias = in.b.defined() ? in.b.data_ptr() : nullptr;
  p.fc1_weight = in.w1.data_ptr();
  p.fc1_bias = in.b1.defined() ? in.b1.data_ptr() : nullptr;
  p.fc2_weight = in.w2.data_ptr();
  p.fc2_bias = in.b2.defined() ? in.b2.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.workspace = ws.data_ptr();
  return p;
}

/// A zeroed decode_mlp workspace for `hidden` outputs.
at::Tensor mlp_workspace(int hidden) {
  const auto bytes = static_cast<int64_t>(tk::decode_mlp_workspace_bytes(hidden));
  return at::zeros({bytes / 8}, at::TensorOptions().device(kGpu).dtype(at::kLong));
}

at::Tensor run_mlp(const MlpInputs& in, const at::Tensor& ws) {
  at::Tensor out = at::full_like(in.x, NAN);
  const tk::DecodeMlpParams p = mlp_params(in, out, ws);
  EXPECT_EQ(tk::decode_mlp_invalid_reason(p), nullptr);
  const cudaError_t e = tk::decode_mlp(p, at::cuda::getCurrentCUDAStream());
  EXPECT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
  return out;
}

/// The same MLP as two decode_gemv launches (LN + FC1 + GELU, then FC2 + residual), and h.
at::Tensor run_two_launches(const MlpInputs& in, at::ScalarType t, at::Tensor* h_out = nullptr) {
  const at::Tensor h = run_kernel(in.x, in.g, in.b, in.w1, in.b1, true, at::Tensor(), t);
  if (h_out != nullptr) *h_out = h;
  return run_kernel(h, at::Tensor(), at::Tensor(), in.w2, in.b2, false, in.x, t);
}

// decode_mlp against the two decode_gemv launches it replaces (themselves checked against the
// eager ops above), at the ESM-2 MLP shapes it takes (8M to 650M) and odd ones (a last slice
// shorter than the others, K not a multiple of 256, no LayerNorm, no biases). Only the order of
// the fp32 sums differs (FC1's rows and FC2's split over the slices), so the bound is
// MatchesEagerOps' with the second product's magnitudes: 3 units of T at the output's magnitude
// + 3 u · (Σ_i |W2 h|)/√F (h elements one unit apart move the sum by ~u |W2 h|).
TEST_P(DecodeGemv, MlpMatchesTwoLaunches) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  const double u = unit_roundoff(t);
  struct Shape {
    int k, f;
    bool ln, bias;
  };
  at::manual_seed(17);
  for (const Shape& sh : {Shape{1280, 5120, true, true}, Shape{320, 1280, true, true},
                          Shape{480, 1920, true, true}, Shape{640, 2560, true, true},
                          Shape{72, 1096, true, false}, Shape{1280, 5120, false, true},
                          Shape{64, 8, false, false}, Shape{4096, 1024, true, true}}) {
    const MlpInputs in = make_mlp(sh.k, sh.f, sh.ln, sh.bias, t);
    const at::Tensor ws = mlp_workspace(sh.k);
    at::Tensor h;
    const at::Tensor want = run_two_launches(in, t, &h).to(at::kDouble);
    const at::Tensor got = run_mlp(in, ws).to(at::kDouble);
    ASSERT_TRUE(at::isfinite(got).all().item<bool>()) << "K " << sh.k << " F " << sh.f;
    const at::Tensor mag = at::matmul(h.to(at::kDouble).abs(), in.w2.to(at::kDouble).abs().t());
    const at::Tensor bound = 3 * u * want.abs() + 3 * u * mag / std::sqrt(double(sh.f)) + 1e-30;
    const at::Tensor diff = (got - want).abs();
    const double worst = (diff / bound).max().item<double>();
    EXPECT_LE(worst, 1.0) << "K " << sh.k << " F " << sh.f << " ln " << sh.ln << " bias "
                          << sh.bias;
    EXPECT_EQ(at::count_nonzero(ws).item<int64_t>(), 0) << "workspace not left zero";
    std::printf("[decode_mlp %s] K %d F %d: max |d| %.3g (%.2f of bound), %.1f%% differ\n",
                c10::toString(t), sh.k, sh.f, diff.max().item<double>(), worst,
                100 * diff.gt(0).to(at::kDouble).mean().item<double>());
  }
}

// The fixed-point sum does not depend on the order in which CTAs arrive: repeated launches on
// one workspace give the same bits, and each leaves the workspace zero for the next. A
// workspace full of garbage cleared by the preceding decode_gemv (DecodeGemvParams::zero, as
// the model's output projection does) gives the same bits too.
TEST_P(DecodeGemv, MlpIsDeterministicAndReusesItsWorkspace) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  at::manual_seed(19);
  const MlpInputs in = make_mlp(1280, 5120, true, true, t);
  const at::Tensor ws = mlp_workspace(1280);
  const at::Tensor first = run_mlp(in, ws);
  for (int i = 0; i < 20; ++i) {
    const at::Tensor again = run_mlp(in, ws);
    ASSERT_TRUE(at::equal(first, again)) << "launch " << i + 1 << " differs";
  }
  EXPECT_EQ(at::count_nonzero(ws).item<int64_t>(), 0);
  // Garbage, then a decode_gemv launch that clears it (an unrelated product, any output).
  ws.fill_(-1);
  const CaseInputs other = make_inputs({1, 1280, 1280, false, true, false, true, false}, t);
  at::Tensor scratch = at::empty({1, 1280}, other.w.options());
  tk::DecodeGemvParams p;
  p.rows = 1;
  p.in_features = p.out_features = 1280;
  p.dtype = p.x_dtype = t == at::kHalf ? tk::ElementType::kFloat16 : tk::ElementType::kBFloat16;
  p.x = other.x.data_ptr();
  p.weight = other.w.data_ptr();
  p.out = scratch.data_ptr();
  p.zero = ws.data_ptr();
  p.zero_bytes = static_cast<size_t>(ws.nbytes());
  ASSERT_EQ(tk::decode_gemv_invalid_reason(p), nullptr);
  ASSERT_EQ(tk::decode_gemv(p, at::cuda::getCurrentCUDAStream()), cudaSuccess);
  EXPECT_EQ(at::count_nonzero(ws).item<int64_t>(), 0) << "decode_gemv did not clear it";
  EXPECT_TRUE(at::equal(run_mlp(in, ws), first));
}

// Non-finite inputs give non-finite outputs (an inf in x: the LayerNorm makes every x'' NaN),
// and a partial sum beyond the fixed-point range (|partial| ≥ 2^26: b1 = 1000 makes every h
// 1000, W2's row 0 is 60000) makes that output NaN while the others stay right; the workspace is
// left zero either way.
TEST_P(DecodeGemv, MlpNonFiniteAndOutOfRange) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType t = GetParam();
  at::manual_seed(23);
  MlpInputs in = make_mlp(1280, 5120, true, true, t);
  const at::Tensor ws = mlp_workspace(1280);
  in.x[0][7].fill_(std::numeric_limits<float>::infinity());
  EXPECT_FALSE(at::isfinite(run_two_launches(in, t)).any().item<bool>());
  EXPECT_FALSE(at::isfinite(run_mlp(in, ws)).any().item<bool>());
  EXPECT_EQ(at::count_nonzero(ws).item<int64_t>(), 0);

  in = make_mlp(1280, 5120, true, true, t);
  in.b1.fill_(1000);
  in.w2[0].fill_(60000);
  const at::Tensor got = run_mlp(in, ws).to(at::kDouble);
  at::Tensor h;
  const at::Tensor want = run_two_launches(in, t, &h).to(at::kDouble);
  EXPECT_TRUE(std::isnan(got[0][0].item<double>())) << got[0][0].item<double>();
  const at::Tensor rest = got.narrow(1, 1, 1279), rest_want = want.narrow(1, 1, 1279);
  ASSERT_TRUE(at::isfinite(rest).all().item<bool>());
  // The other outputs: MlpMatchesTwoLaunches' bound.
  const double u = unit_roundoff(t);
  const at::Tensor mag = at::matmul(h.to(at::kDouble).abs(), in.w2.to(at::kDouble).abs().t());
  const at::Tensor bound = 3 * u * rest_want.abs() + 3 * u * mag.narrow(1, 1, 1279) / 71.55;
  EXPECT_LE(((rest - rest_want).abs() / bound).max().item<double>(), 1.0);  // 71.55 = √5120
  EXPECT_EQ(at::count_nonzero(ws).item<int64_t>(), 0);
}

TEST(DecodeMlpParams, RejectsBadParameters) {
  // Host-side checks only: no launch, no GPU needed (the shared-memory check assumes 132 SMs
  // and 227 KB per block without a device).
  alignas(16) static uint8_t buf[256];
  tk::DecodeMlpParams good;
  good.hidden = 16;
  good.intermediate = 64;
  good.x = good.fc1_weight = good.fc2_weight = good.workspace = buf;
  good.out = buf + 64;
  ASSERT_EQ(tk::decode_mlp_invalid_reason(good), nullptr);
  EXPECT_EQ(tk::decode_mlp_workspace_bytes(16), 16u * 8 + 16);
  EXPECT_EQ(tk::decode_mlp_workspace_bytes(1280) % 16, 0u);
  struct Bad {
    const char* what;
    void (*mutate)(tk::DecodeMlpParams&);
  };
  const Bad bad[] = {
      {"hidden 12", [](tk::DecodeMlpParams& p) { p.hidden = 12; }},
      {"hidden 0", [](tk::DecodeMlpParams& p) { p.hidden = 0; }},
      {"hidden 8192", [](tk::DecodeMlpParams& p) { p.hidden = 8192; }},
      {"intermediate 20", [](tk::DecodeMlpParams& p) { p.intermediate = 20; }},
      {"intermediate 0", [](tk::DecodeMlpParams& p) { p.intermediate = 0; }},
      {"fp32", [](tk::DecodeMlpParams& p) { p.dtype = tk::ElementType::kFloat32; }},
      {"null x", [](tk::DecodeMlpParams& p) { p.x = nullptr; }},
      {"null fc1", [](tk::DecodeMlpParams& p) { p.fc1_weight = nullptr; }},
      {"null fc2", [](tk::DecodeMlpParams& p) { p.fc2_weight = nullptr; }},
      {"null out", [](tk::DecodeMlpParams& p) { p.out = nullptr; }},
      {"null workspace", [](tk::DecodeMlpParams& p) { p.workspace = nullptr; }},
      {"misaligned x", [](tk::DecodeMlpParams& p) { p.x = buf + 2; }},
      {"misaligned fc2", [](tk::DecodeMlpParams& p) { p.fc2_weight = buf + 8; }},
      {"misaligned workspace", [](tk::DecodeMlpParams& p) { p.workspace = buf + 4; }},
      {"ln weight without bias", [](tk::DecodeMlpParams& p) { p.ln_weight = buf; }},
      {"out aliases x", [](tk::DecodeMlpParams& p) { p.out = const_cast<void*>(p.x); }},
      {"3B shapes: slices beyond shared memory",
       [](tk::DecodeMlpParams& p) {
         p.hidden = 2560;
         p.intermediate = 10240;
       }},
  };
  for (const Bad& b : bad) {
    tk::DecodeMlpParams p = good;
    b.mutate(p);
    EXPECT_NE(tk::decode_mlp_invalid_reason(p), nullptr) << b.what;
    EXPECT_EQ(tk::decode_mlp(p, nullptr), cudaErrorInvalidValue) << b.what;
  }
  // decode_gemv's optional clear: aligned, whole 16-byte units.
  tk::DecodeGemvParams g;
  g.rows = 1;
  g.in_features = 16;
  g.out_features = 4;
  g.x = g.weight = g.out = buf;
  g.zero = buf;
  g.zero_bytes = 32;
  EXPECT_EQ(tk::decode_gemv_invalid_reason(g), nullptr);
  g.zero_bytes = 20;
  EXPECT_NE(tk::decode_gemv_invalid_reason(g), nullptr);
  g.zero_bytes = 32;
  g.zero = buf + 8;
  EXPECT_NE(tk::decode_gemv_invalid_reason(g), nullptr);
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

// The batch-1 MLP as one decode_mlp launch (Esm2Model::set_fused_decode_mlp) against the two
// decode_gemv launches: per layer within Fp16LayersMatchEagerOps' bound and the same bits run to
// run; batch 3 keeps the two launches (same bits as with the switch off); 40 decode steps of a
// graph session and an eager one with the switch on against an eager session with it off (the
// graph also runs the step's attention as one launch: Fp16LayersMatchEagerOps' 3e-2), and
// with PDL off (the same values: the waits only order the kernels).
TEST(DecodeGemvModel, FusedMlpMatchesTwoLaunches) {
  TURBOESM_REQUIRE_GPU();
  auto m = tiny_fp16();
  EXPECT_FALSE(m->fused_decode_mlp()) << "two launches are the default";
  const auto& c = m->config();
  at::manual_seed(29);
  const auto o = at::TensorOptions().device(kGpu);
  for (int64_t batch : {1, 3}) {
    const at::Tensor h = at::randn({batch, 1, c.hidden_size}, o).to(at::kHalf);
    const at::Tensor attn = at::randn({batch, c.num_attention_heads, 1, c.head_dim()}, o);
    for (int layer = 0; layer < m->num_layers(); ++layer) {
      const at::Tensor two = m->layer_finish(layer, h, attn);
      m->set_fused_decode_mlp(true);
      const at::Tensor one = m->layer_finish(layer, h, attn);
      const at::Tensor again = m->layer_finish(layer, h, attn);
      m->set_fused_decode_mlp(false);
      ASSERT_TRUE(at::isfinite(one).all().item<bool>());
      EXPECT_TRUE(at::equal(one, again)) << "not deterministic, layer " << layer;
      if (batch != 1) {
        EXPECT_TRUE(at::equal(one, two)) << "batch " << batch << " must keep the two launches";
        continue;
      }
      const double d = (one.to(at::kDouble) - two.to(at::kDouble)).abs().max().item<double>();
      const double scale = two.to(at::kDouble).abs().max().item<double>();
      EXPECT_LE(d, 8 * 0x1p-11 * scale) << "layer " << layer;
    }
  }
  const tm::TurboCacheSpec spec = tm::TurboCacheSpec::random(
      c, 3, 3, tq::RotationKind::kHadamard, tq::NormMode::kNone, tq::QjlMode::kNone, 11, 0, 5.0);
  auto session = [&] {
    return tm::Session(m, tm::make_kv_cache(tm::CacheKind::kTurbo, c, 1, kGpu, &spec));
  };
  tm::Session fused = session(), plain = session(), graph = session(), no_pdl = session();
  graph.enable_cuda_graph(128, 32);
  const at::Tensor toks = row(kSeq);
  const at::Tensor prefix = toks.narrow(1, 0, 30);
  for (tm::Session* s : {&fused, &plain, &graph, &no_pdl}) s->prefill(prefix);
  double worst_plain = 0.0, worst_graph = 0.0, worst_pdl = 0.0;
  for (int64_t j = 30; j < 70; ++j) {
    const at::Tensor t = toks.narrow(1, j, 1).contiguous();
    const at::Tensor hp = plain.append(t).to(at::kDouble);
    m->set_fused_decode_mlp(true);
    const at::Tensor hf = fused.append(t).to(at::kDouble);
    const at::Tensor hg = graph.append(t).to(at::kDouble);
    tm::set_programmatic_dependent_launch(false);
    const at::Tensor hn = no_pdl.append(t).to(at::kDouble);
    tm::set_programmatic_dependent_launch(true);
    m->set_fused_decode_mlp(false);
    ASSERT_TRUE(at::isfinite(hg).all().item<bool>());
    worst_plain = std::max(worst_plain, (hf - hp).abs().max().item<double>());
    worst_graph = std::max(worst_graph, (hg - hp).abs().max().item<double>());
    worst_pdl = std::max(worst_pdl, (hn - hf).abs().max().item<double>());
  }
  EXPECT_LE(worst_plain, 3e-2);
  EXPECT_LE(worst_graph, 3e-2);
  EXPECT_EQ(worst_pdl, 0.0) << "launch mode changed the values";
  EXPECT_EQ(graph.cuda_graph()->replays(), 40);
  std::printf("[decode_mlp model] 40 fp16 steps vs two launches: eager max|d| %.3g, graph %.3g\n",
              worst_plain, worst_graph);
}

}  // namespace
}  // namespace turboesm
