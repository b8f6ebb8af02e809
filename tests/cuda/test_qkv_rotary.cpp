// SPDX-License-Identifier: MIT
// qkv_rotary_split (the prefill / forward Q/K/V glue: Q scaling, rotary and the split into
// [batch, heads, tokens, head_dim] in one launch) equals the eager ATen ops of
// Esm2Model::layer_qkv (scale, Rotary::apply, the v view) bit for bit, for fp32/fp16/bf16, every
// head_dim the models use (and 24), both output layouts, batches up to the grid limit and long
// sequences; bad parameters are refused. Esm2Model::layer_qkv and forward() on CUDA give the
// same tensors with the kernel as without it (set_fused_qkv(false)). The kernel is exact (same
// operations, same roundings, no FMA), so every comparison is at::equal, not a tolerance.
// GPU tests skip without a CUDA device; the parameter checks run everywhere.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "turboesm/kernels/qkv_rotary.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/rotary.h"

namespace turboesm {
namespace {

namespace tk = turboesm::kernels;
namespace tm = turboesm::model;

at::ScalarType aten_dtype(tk::QkvDtype t) {
  switch (t) {
    case tk::QkvDtype::kFloat32:
      return at::kFloat;
    case tk::QkvDtype::kFloat16:
      return at::kHalf;
    case tk::QkvDtype::kBFloat16:
      return at::kBFloat16;
  }
  return at::kFloat;
}

const char* dtype_name(tk::QkvDtype t) {
  switch (t) {
    case tk::QkvDtype::kFloat32:
      return "fp32";
    case tk::QkvDtype::kFloat16:
      return "fp16";
    case tk::QkvDtype::kBFloat16:
      return "bf16";
  }
  return "?";
}

c10::Device gpu() { return c10::Device(c10::kCUDA, 0); }

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return INFINITY;
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

/// Random Linear output [B, T, 3·H·d] in `dtype` on the GPU (drawn on the host: reproducible).
at::Tensor random_projection(int64_t B, int64_t T, int64_t H, int64_t d, at::ScalarType dtype,
                             uint64_t seed) {
  at::manual_seed(seed);
  return (at::randn({B, T, 3 * H * d}, at::kFloat) * 2.0).to(gpu(), dtype);
}

/// The rotary tables of positions start..start+T-1 as Esm2Model::forward builds them: [1, T, d].
std::pair<at::Tensor, at::Tensor> tables(int64_t d, int64_t T, int64_t start,
                                         at::ScalarType dtype) {
  const tm::Rotary rot(d, 10000.0, at::Tensor(), gpu());
  const at::Tensor pos =
      at::arange(start, start + T, at::TensorOptions().dtype(at::kLong).device(gpu()));
  return rot.cos_sin(pos, dtype);
}

/// The eager ops of Esm2Model::layer_qkv on the projection `lin` [B, T, 3·H·d].
tm::Qkv eager_qkv(const at::Tensor& lin, int64_t H, int64_t d, const at::Tensor& cos,
                  const at::Tensor& sin) {
  const int64_t B = lin.size(0), T = lin.size(1);
  const at::Tensor qkv = lin.view({B, T, 3, H, d}).permute({2, 0, 3, 1, 4});
  tm::Qkv r;
  r.q = tm::Rotary::apply(qkv[0] * std::pow(static_cast<double>(d), -0.5), cos, sin);
  r.k = tm::Rotary::apply(qkv[1], cos, sin);
  r.v = qkv[2];
  return r;
}

/// Runs qkv_rotary_split on `lin` with tables [1, T, d]; outputs viewed [B, H, T, d].
cudaError_t fused_qkv(const at::Tensor& lin, int64_t H, int64_t d, const at::Tensor& cos,
                      const at::Tensor& sin, tk::QkvDtype dtype, tk::QkvLayout layout,
                      tm::Qkv* out) {
  const int64_t B = lin.size(0), T = lin.size(1);
  const auto make = [&] {
    return layout == tk::QkvLayout::kTokenMajor
               ? at::empty({B, T, H, d}, lin.options()).permute({0, 2, 1, 3})
               : at::empty({B, H, T, d}, lin.options());
  };
  *out = tm::Qkv{make(), make(), make()};
  const at::Tensor c = cos.reshape({T, d}).contiguous(), s = sin.reshape({T, d}).contiguous();
  tk::QkvRotarySplitParams p;
  p.batch = static_cast<int>(B);
  p.tokens = static_cast<int>(T);
  p.heads = static_cast<int>(H);
  p.head_dim = static_cast<int>(d);
  p.dtype = dtype;
  p.layout = layout;
  p.qkv = lin.data_ptr();
  p.cos = c.data_ptr<float>();
  p.sin = s.data_ptr<float>();
  p.q_scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));
  p.q = out->q.data_ptr();
  p.k = out->k.data_ptr();
  p.v = out->v.data_ptr();
  const cudaError_t e = tk::qkv_rotary_split(p, at::cuda::getCurrentCUDAStream());
  if (e != cudaSuccess) return e;
  return cudaStreamSynchronize(at::cuda::getCurrentCUDAStream());
}

/// Strides of the dimensions of size > 1 (the others do not address anything; ATen gives them
/// other values on the eager path, e.g. T = 1).
std::vector<int64_t> strides_that_matter(const at::Tensor& t) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) s.push_back(t.stride(i));
  return s;
}

void expect_equal(const tm::Qkv& fused, const tm::Qkv& ref, const std::string& what) {
  EXPECT_TRUE(at::equal(fused.q, ref.q))
      << what << ": q differs, max |d| " << max_abs_diff(fused.q, ref.q);
  EXPECT_TRUE(at::equal(fused.k, ref.k))
      << what << ": k differs, max |d| " << max_abs_diff(fused.k, ref.k);
  EXPECT_TRUE(at::equal(fused.v, ref.v))
      << what << ": v differs, max |d| " << max_abs_diff(fused.v, ref.v);
}

struct SplitCase {
  tk::QkvDtype dtype;
  int head_dim, batch, tokens;
};

class QkvRotarySplit : public ::testing::TestWithParam<SplitCase> {};

TEST_P(QkvRotarySplit, EqualsEagerOps) {
  TURBOESM_REQUIRE_GPU();
  c10::InferenceMode guard;
  const SplitCase c = GetParam();
  const int64_t H = 3, d = c.head_dim, B = c.batch, T = c.tokens;
  const at::ScalarType dt = aten_dtype(c.dtype);
  const at::Tensor lin = random_projection(B, T, H, d, dt, 1000 + 7 * d + 3 * B + T);
  // Positions from 0 (forward) and continuing a sequence (Session::append of one sequence).
  for (int64_t start : {int64_t{0}, int64_t{29}}) {
    const auto cs = tables(d, T, start, dt);
    const tm::Qkv ref = eager_qkv(lin, H, d, cs.first, cs.second);
    for (tk::QkvLayout layout : {tk::QkvLayout::kHeadMajor, tk::QkvLayout::kTokenMajor}) {
      const bool token_major = layout == tk::QkvLayout::kTokenMajor;
      const std::string what = std::string(token_major ? "token-major" : "head-major") +
                               ", positions from " + std::to_string(start);
      tm::Qkv out;
      const cudaError_t e = fused_qkv(lin, H, d, cs.first, cs.second, c.dtype, layout, &out);
      ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
      for (const at::Tensor* t : {&out.q, &out.k, &out.v}) {
        ASSERT_EQ(t->sizes(), (std::vector<int64_t>{B, H, T, d})) << what;
        ASSERT_EQ(t->scalar_type(), dt) << what;
      }
      if (token_major) {
        // The strides of the eager q and k: attention sees the same tensors on both paths.
        EXPECT_EQ(strides_that_matter(out.q), strides_that_matter(ref.q)) << what;
        EXPECT_EQ(strides_that_matter(out.k), strides_that_matter(ref.k)) << what;
      } else {
        EXPECT_TRUE(out.q.is_contiguous() && out.k.is_contiguous() && out.v.is_contiguous())
            << what;
      }
      expect_equal(out, ref, what);
    }
  }
}

std::vector<SplitCase> split_cases() {
  std::vector<SplitCase> v;
  for (tk::QkvDtype t : {tk::QkvDtype::kFloat32, tk::QkvDtype::kFloat16, tk::QkvDtype::kBFloat16})
    for (int d : {16, 24, 64, 128})
      for (int b : {1, 3})
        for (int n : {1, 7, 300}) v.push_back({t, d, b, n});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, QkvRotarySplit, ::testing::ValuesIn(split_cases()),
                         [](const ::testing::TestParamInfo<SplitCase>& i) {
                           return std::string(dtype_name(i.param.dtype)) + "_d" +
                                  std::to_string(i.param.head_dim) + "_b" +
                                  std::to_string(i.param.batch) + "_t" +
                                  std::to_string(i.param.tokens);
                         });

/// The grid limits: batch = 65535 (grid.y) and T > 65535 tokens (one flat grid.x per sequence).
TEST(QkvRotarySplitGrid, LargestBatchAndLongSequence) {
  TURBOESM_REQUIRE_GPU();
  c10::InferenceMode guard;
  struct Shape {
    int64_t B, T, H, d;
  };
  for (const Shape& s : {Shape{65535, 2, 1, 16}, Shape{1, 70000, 2, 16}, Shape{2, 66000, 1, 64}}) {
    const std::string what = "B " + std::to_string(s.B) + ", T " + std::to_string(s.T) + ", H " +
                             std::to_string(s.H) + ", d " + std::to_string(s.d);
    const at::Tensor lin = random_projection(s.B, s.T, s.H, s.d, at::kHalf, 77 + s.T);
    const auto cs = tables(s.d, s.T, 0, at::kHalf);
    const tm::Qkv ref = eager_qkv(lin, s.H, s.d, cs.first, cs.second);
    for (tk::QkvLayout layout : {tk::QkvLayout::kHeadMajor, tk::QkvLayout::kTokenMajor}) {
      tm::Qkv out;
      const cudaError_t e =
          fused_qkv(lin, s.H, s.d, cs.first, cs.second, tk::QkvDtype::kFloat16, layout, &out);
      ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
      expect_equal(out, ref, what);
    }
  }
}

/// Parameter validation happens before any CUDA call: runs without a GPU.
TEST(QkvRotarySplitParams, RejectsBadParameters) {
  float dummy[4] = {};
  tk::QkvRotarySplitParams good;
  good.batch = 2;
  good.tokens = 5;
  good.heads = 3;
  good.head_dim = 16;
  good.dtype = tk::QkvDtype::kFloat16;
  good.qkv = dummy;
  good.cos = dummy;
  good.sin = dummy;
  good.q = dummy;
  good.k = dummy;
  good.v = dummy;
  struct Bad {
    const char* what;
    void (*edit)(tk::QkvRotarySplitParams&);
  };
  const Bad bad[] = {
      {"odd head_dim", [](tk::QkvRotarySplitParams& p) { p.head_dim = 15; }},
      {"zero head_dim", [](tk::QkvRotarySplitParams& p) { p.head_dim = 0; }},
      {"negative head_dim", [](tk::QkvRotarySplitParams& p) { p.head_dim = -2; }},
      {"zero heads", [](tk::QkvRotarySplitParams& p) { p.heads = 0; }},
      {"negative batch", [](tk::QkvRotarySplitParams& p) { p.batch = -1; }},
      {"batch above 65535", [](tk::QkvRotarySplitParams& p) { p.batch = 65536; }},
      {"negative tokens", [](tk::QkvRotarySplitParams& p) { p.tokens = -1; }},
      {"null qkv", [](tk::QkvRotarySplitParams& p) { p.qkv = nullptr; }},
      {"null cos", [](tk::QkvRotarySplitParams& p) { p.cos = nullptr; }},
      {"null sin", [](tk::QkvRotarySplitParams& p) { p.sin = nullptr; }},
      {"null q", [](tk::QkvRotarySplitParams& p) { p.q = nullptr; }},
      {"null k", [](tk::QkvRotarySplitParams& p) { p.k = nullptr; }},
      {"null v", [](tk::QkvRotarySplitParams& p) { p.v = nullptr; }},
      {"unknown dtype",
       [](tk::QkvRotarySplitParams& p) { p.dtype = static_cast<tk::QkvDtype>(7); }},
      {"unknown layout",
       [](tk::QkvRotarySplitParams& p) { p.layout = static_cast<tk::QkvLayout>(9); }},
      {"null qkv with batch 0",
       [](tk::QkvRotarySplitParams& p) {
         p.batch = 0;
         p.qkv = nullptr;
       }},
  };
  for (const Bad& b : bad) {
    tk::QkvRotarySplitParams p = good;
    b.edit(p);
    EXPECT_EQ(tk::qkv_rotary_split(p, nullptr), cudaErrorInvalidValue) << b.what;
  }
  // Empty work is a successful no-op (returns before any launch).
  for (int which = 0; which < 2; ++which) {
    tk::QkvRotarySplitParams p = good;
    (which == 0 ? p.batch : p.tokens) = 0;
    EXPECT_EQ(tk::qkv_rotary_split(p, nullptr), cudaSuccess)
        << (which == 0 ? "batch" : "tokens") << " 0";
  }
}

std::shared_ptr<tm::Esm2Model> tiny(at::ScalarType dtype) {
  tm::LoadOptions lo;
  lo.device = gpu();
  lo.dtype = dtype;
  return tm::Esm2Model::random(tm::EsmConfig::preset("tiny"), 5, 0.08, lo);
}

class FusedQkvModel : public ::testing::TestWithParam<tk::QkvDtype> {};

TEST_P(FusedQkvModel, LayerQkvEqualsEager) {
  TURBOESM_REQUIRE_GPU();
  c10::InferenceMode guard;
  const at::ScalarType dt = aten_dtype(GetParam());
  auto m = tiny(dt);
  ASSERT_TRUE(m->fused_qkv()) << "the fused path is the default";
  const int64_t B = 3, T = 37, H = m->config().num_attention_heads, d = m->config().head_dim();
  at::manual_seed(3);
  const at::Tensor h = at::randn({B, T, m->config().hidden_size}, at::kFloat).to(gpu(), dt);
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(gpu());
  struct Tables {
    const char* what;
    at::Tensor pos;
    bool fused;  // shared by the batch: the kernel runs; per sequence: the eager ops run
  };
  const Tables cases[] = {
      {"positions 0..T-1 [T]", at::arange(T, lopt), true},
      {"positions 11.. [1, T]", (at::arange(T, lopt) + 11).unsqueeze(0), true},
      {"per-sequence positions [B, T]",
       at::arange(T, lopt).unsqueeze(0) + at::tensor({0, 4, 9}, lopt).unsqueeze(1), false},
  };
  for (const Tables& c : cases) {
    for (int layer = 0; layer < m->num_layers(); ++layer) {
      const std::string what = std::string(c.what) + ", layer " + std::to_string(layer);
      const auto cs = m->rotary().cos_sin(c.pos, dt);
      m->set_fused_qkv(true);
      const tm::Qkv fused = m->layer_qkv(layer, h, cs.first, cs.second);
      m->set_fused_qkv(false);
      const tm::Qkv eager = m->layer_qkv(layer, h, cs.first, cs.second);
      m->set_fused_qkv(true);
      expect_equal(fused, eager, what);
      EXPECT_EQ(strides_that_matter(fused.q), strides_that_matter(eager.q)) << what;
      EXPECT_EQ(strides_that_matter(fused.k), strides_that_matter(eager.k)) << what;
      // Which path ran: the eager v is a view of the projection (token stride 3·H·d), the fused
      // v its own token-major tensor (H·d).
      EXPECT_EQ(eager.v.stride(2), 3 * H * d) << what;
      EXPECT_EQ(fused.v.stride(2), c.fused ? H * d : 3 * H * d) << what;
    }
  }
}

TEST_P(FusedQkvModel, ForwardEqualsEager) {
  TURBOESM_REQUIRE_GPU();
  const at::ScalarType dt = aten_dtype(GetParam());
  auto m = tiny(dt);
  const int64_t V = m->config().vocab_size;
  at::manual_seed(11);
  // Two batches: one sequence without padding; three right-padded ones (masked attention).
  at::Tensor one = at::randint(4, 24, {1, 90}, at::kLong);
  at::Tensor three = at::randint(4, 24, {3, 64}, at::kLong);
  at::Tensor mask = at::ones({3, 64}, at::kLong);
  mask.index_put_({1, at::indexing::Slice(50, at::indexing::None)}, 0);
  mask.index_put_({2, at::indexing::Slice(20, at::indexing::None)}, 0);
  three.masked_fill_(mask.eq(0), m->config().pad_token_id);
  three.index_put_({0, 5}, m->config().mask_token_id);  // token dropout rescaling in the embed
  ASSERT_LT(three.max().item<int64_t>(), V);
  struct Batch {
    const char* what;
    at::Tensor tokens, mask;
  };
  const Batch batches[] = {{"1 x 90, no padding", one, at::Tensor()},
                           {"3 x 64, padded", three, mask}};
  for (const Batch& b : batches) {
    for (bool contacts : {false, true}) {
      if (contacts && !m->weights().has_contact_head) continue;
      const std::string what = std::string(b.what) + (contacts ? ", with contacts" : "");
      tm::ForwardOptions o;
      o.need_logits = true;
      o.need_contacts = contacts;
      o.repr_layers = {0, 1, -1};
      m->set_fused_qkv(true);
      const tm::ForwardOutput fused = m->forward(b.tokens, b.mask, o);
      m->set_fused_qkv(false);
      const tm::ForwardOutput eager = m->forward(b.tokens, b.mask, o);
      m->set_fused_qkv(true);
      EXPECT_TRUE(at::equal(fused.last_hidden_state, eager.last_hidden_state))
          << what << ": last_hidden_state, max |d| "
          << max_abs_diff(fused.last_hidden_state, eager.last_hidden_state);
      EXPECT_TRUE(at::equal(fused.logits, eager.logits))
          << what << ": logits, max |d| " << max_abs_diff(fused.logits, eager.logits);
      ASSERT_EQ(fused.hidden_states.size(), eager.hidden_states.size()) << what;
      for (const auto& kv : eager.hidden_states) {
        const at::Tensor& f = fused.hidden_states.at(kv.first);
        EXPECT_TRUE(at::equal(f, kv.second))
            << what << ": hidden state " << kv.first << ", max |d| " << max_abs_diff(f, kv.second);
      }
      if (contacts) {
        EXPECT_TRUE(at::equal(fused.contacts, eager.contacts))
            << what << ": contacts, max |d| " << max_abs_diff(fused.contacts, eager.contacts);
      }
      EXPECT_TRUE(at::isfinite(fused.last_hidden_state.to(at::kFloat)).all().item<bool>()) << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedQkvModel,
                         ::testing::Values(tk::QkvDtype::kFloat32, tk::QkvDtype::kFloat16,
                                           tk::QkvDtype::kBFloat16),
                         [](const ::testing::TestParamInfo<tk::QkvDtype>& i) {
                           return std::string(dtype_name(i.param));
                         });

}  // namespace
}  // namespace turboesm
