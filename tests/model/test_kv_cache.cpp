// SPDX-License-Identifier: MIT
// KV caches: append/attend against exact attention, kv_bytes per DESIGN, amortized growth,
// INT8/FP8 round-trip bounds, Turbo error vs bits, padded batches vs single sequences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "model/model_test_util.h"
#include "turboesm/error.h"
#ifdef TURBOESM_WITH_CUDA
#include "turboesm/kernels/quantize_append.h"
#endif
#include "turboesm/model/attention.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/turbo_cache.h"
#include "turboesm/quant/format.h"
#include "turboesm/quant/rotation.h"

namespace turboesm {
namespace {

using model::CacheKind;
using quant::NormMode;
using quant::QjlMode;

constexpr double kFp32Tol = 1e-5;
/// fp16 storage: relative rounding 2^-11 of values ~N(0,1) (|x| < 6).
constexpr double kFp16AttendTol = 5e-3;

model::EsmConfig cfg(int layers = 2, int heads = 2, int d = 16) {
  model::EsmConfig c;
  c.hidden_size = heads * d;
  c.num_attention_heads = heads;
  c.num_hidden_layers = layers;
  c.intermediate_size = 2 * heads * d;
  return c;
}

model::TurboCacheSpec spec_for(const model::EsmConfig& c, int bits,
                               NormMode norm = NormMode::kToken, QjlMode qjl = QjlMode::kNone) {
  return model::TurboCacheSpec::random(c, bits, bits, quant::RotationKind::kRandom, norm, qjl, 3, 0,
                                       std::sqrt(double(c.head_dim())));
}

std::unique_ptr<model::KvCache> make(CacheKind kind, const model::EsmConfig& c, int batch) {
  auto spec = spec_for(c, 3);
  return model::make_kv_cache(kind, c, batch, c10::Device(c10::kCPU), &spec);
}

/// Appends `chunks` of random K/V with per-sequence counts; keeps the real rows per sequence for
/// the reference. Returns (K, V) per sequence, each [H, len_b, d].
struct History {
  std::vector<at::Tensor> k, v;
};

History append_chunks(model::KvCache& cache, int layer,
                      const std::vector<std::vector<int64_t>>& chunks, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  const int B = cache.batch(), H = cache.heads(), d = cache.head_dim();
  History h;
  h.k.assign(B, at::zeros({H, 0, d}));
  h.v.assign(B, at::zeros({H, 0, d}));
  for (const auto& counts : chunks) {
    int64_t T = *std::max_element(counts.begin(), counts.end());
    T = std::max<int64_t>(T, 1) + 2;  // padded rows beyond every count
    at::Tensor k = at::randn({B, H, T, d}), v = at::randn({B, H, T, d});
    cache.append(layer, k, v, at::tensor(counts, at::kLong));
    for (int b = 0; b < B; ++b) {
      h.k[b] = at::cat({h.k[b], k[b].narrow(1, 0, counts[b])}, 1);
      h.v[b] = at::cat({h.v[b], v[b].narrow(1, 0, counts[b])}, 1);
    }
  }
  return h;
}

/// Exact attention of q [B, H, Tq, d] over each sequence's history (zeros for empty history).
at::Tensor exact_over(const History& h, const at::Tensor& q) {
  std::vector<at::Tensor> outs;
  model::ExactAttention exact;
  for (size_t b = 0; b < h.k.size(); ++b) {
    if (h.k[b].size(1) == 0) {
      outs.push_back(at::zeros_like(q[b]));
      continue;
    }
    model::AttentionInputs in;
    in.q = q[b].unsqueeze(0);
    in.k = h.k[b].unsqueeze(0);
    in.v = h.v[b].unsqueeze(0);
    outs.push_back(exact.attend(in, nullptr)[0]);
  }
  return at::stack(outs);
}

TEST(KvCache, Fp32AppendMatchesExactAttention) {
  const auto c = cfg(2, 2, 24);
  auto cache = make(CacheKind::kFp32, c, 3);
  // Unequal counts per chunk (0 included), several chunks crossing the initial capacity.
  History h = append_chunks(*cache, 1, {{5, 0, 3}, {1, 2, 0}, {70, 1, 1}, {1, 1, 0}}, 1);
  EXPECT_EQ(cache->lengths(1), (std::vector<int64_t>{77, 4, 4}));
  EXPECT_EQ(cache->lengths(0), (std::vector<int64_t>{0, 0, 0}));
  at::manual_seed(8);
  at::Tensor q = at::randn({3, 2, 4, 24}) * 0.4;
  EXPECT_LE(test::max_abs_diff(cache->attend(1, q), exact_over(h, q)), kFp32Tol);
  // A layer with nothing cached attends to nothing: zeros.
  EXPECT_EQ(cache->attend(0, q).abs().max().item<float>(), 0.0f);
}

TEST(KvCache, EveryKindAttendsCloseToExact) {
  const auto c = cfg(1, 2, 32);
  // Tolerances per format: storage rounding of K and V (values ~N(0, 1)).
  const std::vector<std::pair<CacheKind, double>> kinds = {{CacheKind::kFp32, kFp32Tol},
                                                           {CacheKind::kFp16, kFp16AttendTol},
                                                           {CacheKind::kInt8, 0.05},
                                                           {CacheKind::kFp8, 0.15},
                                                           {CacheKind::kTurbo, 0.6}};
  for (const auto& [kind, tol] : kinds) {
    auto cache = make(kind, c, 2);
    History h = append_chunks(*cache, 0, {{40, 9}, {3, 0}}, 2);
    at::Tensor q = at::randn({2, 2, 3, 32}) * 0.2;
    at::Tensor out = cache->attend(0, q);
    EXPECT_FALSE(at::isnan(out).any().item<bool>()) << to_string(kind);
    EXPECT_LE(test::max_abs_diff(out, exact_over(h, q)), tol) << to_string(kind);
  }
}

// Side-write regions (KvCache::begin_side_writes) change nothing on the CPU: every kind appends,
// grows and attends inside a region exactly as outside it, with the switch on and off, and
// end_side_writes without an open region is harmless. (CUDA: tests/cuda
// ModelDecodeCudaSideWrites.)
TEST(KvCache, SideWriteRegionsAreNoOpsOnTheCpu) {
  const auto c = cfg(2, 2, 32);
  for (const CacheKind kind : {CacheKind::kFp32, CacheKind::kInt8, CacheKind::kTurbo}) {
    for (const bool enabled : {true, false}) {
      auto plain = make(kind, c, 2), region = make(kind, c, 2);
      region->set_side_writes(enabled);
      EXPECT_EQ(region->side_writes(), enabled);
      region->end_side_writes();  // nothing open
      region->begin_side_writes();
      // Chunks crossing the initial capacity: the regrowth happens inside the region.
      (void)append_chunks(*plain, 1, {{40, 9}, {50, 60}}, 5);
      (void)append_chunks(*region, 1, {{40, 9}, {50, 60}}, 5);
      at::manual_seed(9);
      const at::Tensor q = at::randn({2, 2, 3, 32}) * 0.2;
      const at::Tensor inside = region->attend(1, q);  // an operation inside the region joins
      region->end_side_writes();
      EXPECT_TRUE(at::equal(plain->attend(1, q), inside)) << to_string(kind);
      EXPECT_TRUE(at::equal(plain->attend(1, q), region->attend(1, q))) << to_string(kind);
      EXPECT_EQ(plain->lengths(1), region->lengths(1));
      EXPECT_EQ(plain->reallocations(), region->reallocations());
      EXPECT_EQ(region->side_writes_launched(), 0) << to_string(kind);
    }
  }
}

TEST(KvCache, KvBytesFollowTheDesignFormula) {
  const auto c = cfg(3, 2, 64);
  const int64_t H = 2, L = 3, d = 64;
  for (CacheKind kind :
       {CacheKind::kFp32, CacheKind::kFp16, CacheKind::kInt8, CacheKind::kFp8, CacheKind::kTurbo}) {
    auto cache = make(kind, c, 2);
    for (int l = 0; l < L; ++l) append_chunks(*cache, l, {{10, 3}, {0, 4}}, 3);
    const int64_t tokens = 17;  // (10 + 0) + (3 + 4)
    int64_t per = 0;            // bytes per token per head, K + V
    switch (kind) {
      case CacheKind::kFp32:
        per = 2 * 4 * d;
        break;
      case CacheKind::kFp16:
        per = 2 * 2 * d;
        break;
      case CacheKind::kInt8:
      case CacheKind::kFp8:
        per = 2 * (d + 2);  // one byte per value + an fp16 scale per token per head
        break;
      case CacheKind::kTurbo:  // 3-bit codes (24 B) + fp16 norm (2 B), for K and for V
        per = 2 * (d * 3 / 8 + 2);
        break;
    }
    EXPECT_EQ(cache->bytes_per_token_per_head(), per) << to_string(kind);
    EXPECT_EQ(cache->kv_bytes(), tokens * H * L * per) << to_string(kind);
    EXPECT_GE(cache->allocated_bytes(), cache->kv_bytes()) << to_string(kind);
  }
  // Turbo with QJL prod counts the sign bits and the residual norm too.
  auto spec = spec_for(c, 3, NormMode::kToken, QjlMode::kProd);
  auto t = model::make_kv_cache(CacheKind::kTurbo, c, 1, c10::Device(c10::kCPU), &spec);
  EXPECT_EQ(t->bytes_per_token_per_head(),
            quant::bytes_per_token_per_head(64, 3, NormMode::kToken, QjlMode::kProd, 64) +
                quant::bytes_per_token_per_head(64, 3, NormMode::kToken, QjlMode::kNone));
}

TEST(KvCache, GrowthIsAmortized) {
  const auto c = cfg(1, 2, 16);
  for (CacheKind kind : {CacheKind::kFp32, CacheKind::kInt8, CacheKind::kTurbo}) {
    auto cache = make(kind, c, 2);
    at::Tensor k = at::randn({2, 2, 1, 16}), v = at::randn({2, 2, 1, 16});
    constexpr int kTokens = 3000;
    for (int t = 0; t < kTokens; ++t) cache->append(0, k, v, at::Tensor());
    EXPECT_EQ(cache->lengths(0)[1], kTokens);
    // Doubling from 64: 64 → 128 → … → 4096 is 6 regrowths for 3000 tokens.
    EXPECT_LE(cache->reallocations(), 6) << to_string(kind);
    EXPECT_GE(cache->capacity(0), kTokens);
    EXPECT_LE(cache->capacity(0), 2 * kTokens) << to_string(kind);
  }
}

TEST(KvCache, Int8AndFp8RoundTripBounds) {
  const auto c = cfg(1, 2, 32);
  at::manual_seed(6);
  for (CacheKind kind : {CacheKind::kInt8, CacheKind::kFp8}) {
    model::DenseKvCache cache(kind, model::CacheShape::of(c, 2, c10::Device(c10::kCPU)));
    at::Tensor k = at::randn({2, 2, 50, 32}) * at::rand({2, 2, 50, 1}) * 10;
    at::Tensor v = at::randn({2, 2, 50, 32});
    cache.append(0, k, v, at::Tensor());
    at::Tensor kh = cache.dequantized(0).first;
    at::Tensor absmax = k.abs().amax(-1, true);
    at::Tensor err = (kh - k).abs();
    if (kind == CacheKind::kInt8) {
      // Half a step of absmax/127, plus the fp16 rounding of the scale (2^-11 relative).
      at::Tensor bound = absmax / 127.0 * 0.5 + absmax * std::ldexp(1.0, -10);
      EXPECT_TRUE((err <= bound).all().item<bool>()) << (err - bound).max().item<double>();
    } else {
      // e4m3: 3 mantissa bits → half an ulp is 2^-4 relative; subnormals below 2^-6 of 448 have
      // an absolute step of 2^-9 · scale.
      at::Tensor s = absmax / 448.0;
      at::Tensor bound =
          k.abs() * std::ldexp(1.0, -4) + s * std::ldexp(1.0, -10) + absmax * std::ldexp(1.0, -10);
      EXPECT_TRUE((err <= bound).all().item<bool>()) << (err - bound).max().item<double>();
    }
    // An all-zero row quantizes to exactly zero (no 0/0).
    model::DenseKvCache z(kind, model::CacheShape::of(c, 1, c10::Device(c10::kCPU)));
    z.append(0, at::zeros({1, 2, 1, 32}), at::zeros({1, 2, 1, 32}), at::Tensor());
    EXPECT_EQ(z.dequantized(0).first.abs().max().item<float>(), 0.0f);
  }
}

TEST(KvCache, TurboErrorFallsWithBits) {
  const auto c = cfg(1, 2, 64);
  double prev_mse = 1e30, prev_att = 1e30;
  at::manual_seed(12);
  at::Tensor q = at::randn({1, 2, 4, 64}) * 0.3;
  for (int bits : {2, 3, 4}) {
    auto spec = spec_for(c, bits);
    model::TurboKvCache cache(model::CacheShape::of(c, 1, c10::Device(c10::kCPU)), spec);
    History h = append_chunks(cache, 0, {{300}}, 13);
    const at::Tensor khat = cache.dequantized(0, true)[0];
    const double mse = ((khat - h.k[0]).pow(2).sum() / h.k[0].pow(2).sum()).item<double>();
    const double att = test::max_abs_diff(cache.attend(0, q), exact_over(h, q));
    EXPECT_LT(mse, prev_mse) << bits << " bits";
    EXPECT_LT(att, prev_att) << bits << " bits";
    prev_mse = mse;
    prev_att = att;
  }
  // 4-bit TurboQuant on unit vectors: D_mse ≈ 0.009 (paper, Table 1); random data is isotropic.
  EXPECT_LT(prev_mse, 0.02);
}

TEST(KvCache, TurboBatchedEncodeMatchesTheQuantizer) {
  // The default CPU append (batched rotation) against TurboQuantizer::encode row by row: codes
  // may differ only for values within rounding of a decision boundary.
  constexpr double kMaxDifferingRows = 0.02;  // fraction of (token, head) rows
  const auto c = cfg(1, 2, 32);
  for (NormMode norm : {NormMode::kNone, NormMode::kToken}) {
    for (QjlMode qjl : {QjlMode::kNone, QjlMode::kSign, QjlMode::kProd}) {
      SCOPED_TRACE(std::string(quant::to_string(norm)) + "/" + quant::to_string(qjl));
      auto spec = spec_for(c, 3, norm, qjl);
      const auto shape = model::CacheShape::of(c, 2, c10::Device(c10::kCPU));
      model::TurboKvCache fast(shape, spec), ref(shape, spec);
      ref.set_reference_encode(true);
      at::manual_seed(31);
      at::Tensor k = at::randn({2, 2, 150, 32}), v = at::randn({2, 2, 150, 32});
      at::Tensor counts = at::tensor(std::vector<int64_t>{150, 77}, at::kLong);
      fast.append(0, k, v, counts);
      ref.append(0, k, v, counts);
      for (bool key : {true, false}) {
        at::Tensor a = fast.dequantized(0, key), b = ref.dequantized(0, key);
        const double differing = (a - b).abs().amax(-1).gt(0).to(at::kDouble).mean().item<double>();
        EXPECT_LE(differing, kMaxDifferingRows) << (key ? "K" : "V");
        // A differing row is off by one level in a few coordinates, nothing more.
        EXPECT_LE(test::max_abs_diff(a, b), 1.0) << (key ? "K" : "V");
      }
    }
  }
}

TEST(KvCache, PaddedBatchEqualsSingleSequences) {
  const auto c = cfg(1, 2, 32);
  for (CacheKind kind : {CacheKind::kFp32, CacheKind::kInt8, CacheKind::kTurbo}) {
    auto batch = make(kind, c, 3);
    const std::vector<std::vector<int64_t>> chunks = {{20, 3, 0}, {1, 70, 2}};
    History h = append_chunks(*batch, 0, chunks, 21);
    at::manual_seed(5);
    at::Tensor q = at::randn({3, 2, 2, 32}) * 0.3;
    at::Tensor out = batch->attend(0, q);
    for (int b = 0; b < 3; ++b) {
      auto single = make(kind, c, 1);
      single->append(0, h.k[b].unsqueeze(0), h.v[b].unsqueeze(0), at::Tensor());
      at::Tensor o1 = single->attend(0, q.narrow(0, b, 1));
      EXPECT_LE(test::max_abs_diff(out.narrow(0, b, 1), o1), 1e-6) << to_string(kind) << " " << b;
    }
  }
}

TEST(KvCache, ErrorsNameTheProblem) {
  const auto c = cfg(1, 2, 16);
  auto cache = make(CacheKind::kFp32, c, 2);
  try {
    cache->append(0, at::zeros({2, 3, 1, 16}), at::zeros({2, 3, 1, 16}), at::Tensor());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("must be [2, 2, new_tokens, 16]"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(cache->append(0, at::zeros({2, 2, 1, 16}), at::zeros({2, 2, 1, 16}),
                             at::tensor(std::vector<int64_t>{1, 2}, at::kLong)),
               Error);  // count 2 > 1 new token
  EXPECT_THROW(cache->attend(5, at::zeros({2, 2, 1, 16})), Error);
  EXPECT_THROW(model::make_kv_cache(CacheKind::kTurbo, c, 1, c10::Device(c10::kCPU), nullptr),
               Error);
  EXPECT_THROW(model::parse_cache_kind("int4"), Error);
  // A spec for another model is refused with the mismatch named.
  auto spec = spec_for(cfg(1, 2, 32), 3);
  try {
    model::make_kv_cache(CacheKind::kTurbo, c, 1, c10::Device(c10::kCPU), &spec);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model::TurboCacheSpec::random(c, 3, 3, quant::RotationKind::kSvd, NormMode::kToken,
                                             QjlMode::kNone, 1),
               Error);
  // The fused step's split count is a count or 0 (automatic), never negative.
  model::TurboKvCache turbo(model::CacheShape::of(c, 1, c10::Device(c10::kCPU)), spec_for(c, 3));
  try {
    turbo.set_step_splits(-1, false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cached_splits must be >= 0"), std::string::npos)
        << e.what();
  }
  turbo.set_step_splits(0, true);
}

#ifdef TURBOESM_WITH_CUDA
// Π's fp16 parts for the CUDA prefill kernel as the cache computes them (tensor ops, run here on
// the CPU; on CUDA TurboHeadConstants::to runs the same ops on the device) are the bits of the
// kernels' host reference kernels::rotation_f16_split, for dense and Hadamard rotations at every
// head_dim the split supports — and rotations that are not [H, d, d] with 16 | d are refused.
TEST(TurboConstants, RotationF16PartsEqualTheKernelsSplit) {
  for (const int d : {16, 32, 64, 128}) {
    for (const quant::RotationKind kind :
         {quant::RotationKind::kRandom, quant::RotationKind::kHadamard}) {
      const int H = 3;
      std::vector<float> rot;
      for (int h = 0; h < H; ++h) {
        const quant::Rotation r = quant::make_rotation(kind, d, 40 + 7 * h + d);
        rot.insert(rot.end(), r.matrix.begin(), r.matrix.end());
      }
      std::vector<uint16_t> want(static_cast<size_t>(H) * 2 * d * (d + 8));
      std::vector<int32_t> want_lo(H);
      kernels::rotation_f16_split(rot.data(), H, d, want.data(), want_lo.data());
      const auto got = model::rotation_f16_parts(at::from_blob(rot.data(), {H, d, d}, at::kFloat));
      ASSERT_EQ(got.first.scalar_type(), at::kShort);
      ASSERT_EQ(got.first.numel(), static_cast<int64_t>(want.size()));
      const auto* g = reinterpret_cast<const uint16_t*>(got.first.contiguous().data_ptr<int16_t>());
      EXPECT_TRUE(std::equal(want.begin(), want.end(), g)) << "d " << d;
      EXPECT_TRUE(at::equal(got.second, at::tensor(want_lo, at::kInt))) << "d " << d;
      // √d a power of two: a Hadamard Π (±d^-1/2) is exact in fp16, no low parts.
      if (kind == quant::RotationKind::kHadamard && (d == 16 || d == 64))
        EXPECT_EQ(got.second.sum().item<int64_t>(), 0) << "d " << d;
      else
        EXPECT_EQ(got.second.sum().item<int64_t>(), H) << "d " << d;
    }
  }
  EXPECT_THROW(model::rotation_f16_parts(at::zeros({2, 24, 24})), Error);
  EXPECT_THROW(model::rotation_f16_parts(at::zeros({2, 16, 32})), Error);
  EXPECT_THROW(model::rotation_f16_parts(at::zeros({2, 16, 16}, at::kDouble)), Error);
}
#endif

}  // namespace
}  // namespace turboesm
