// SPDX-License-Identifier: MIT
// Quant core throughput on one core (Google Benchmark; not part of ctest).
//   BM_Encode      rotate + encode + pack (+ fp16 norm) of `tokens` vectors, fast path
//   BM_EncodeRef   the same through the scalar `_ref` twin (baseline for the ratio)
//   BM_UnpackLut   unpack + LUT decode of packed codes to floats (the decode inner loop)
//   BM_UnpackLutRef  its bit-by-bit reference
//   BM_Score       code-space ⟨q, x̂⟩ of one prepared query against `tokens` codes
//   BM_Decode      full decode (unpack + LUT + inverse rotation) per token
// Counter `values/s` = head_dim × tokens per second. Working sets fit in L2 (tokens = 4096).
#include <benchmark/benchmark.h>

#include <vector>

#include "turboesm/quant/quantizer.h"

namespace tq = turboesm::quant;

namespace {

constexpr int kTokens = 4096;

struct Fixture {
  tq::TurboQuantizer q;
  std::vector<float> x;        // [tokens, dim]
  std::vector<uint8_t> pages;  // [tokens / page_tokens, page_bytes]
  int pages_n;
};

Fixture make_fixture(tq::RotationKind rot, int bits, int dim,
                     tq::QjlMode qjl = tq::QjlMode::kNone) {
  tq::QuantizerConfig cfg;
  cfg.dim = dim;
  cfg.bits = bits;
  cfg.qjl = qjl;
  tq::QuantizerParams p;
  p.rotation = tq::make_rotation(rot, dim, 1);
  p.codebook = tq::analytic_codebook(dim, bits);
  if (qjl == tq::QjlMode::kProd) p.qjl_projection = tq::make_qjl_projection(dim, dim, 2);
  p.qjl_sign_scale = 0.01f;
  tq::TurboQuantizer q(cfg, std::move(p));
  Fixture f{std::move(q), {}, {}, 0};
  f.pages_n = kTokens / f.q.layout().page_tokens;
  f.x.resize(static_cast<size_t>(kTokens) * dim);
  tq::Rng rng(3);
  tq::fill_normal(rng, f.x.data(), f.x.size());
  f.pages.assign(static_cast<size_t>(f.pages_n) * f.q.layout().page_bytes, 0);
  return f;
}

void set_rate(benchmark::State& state, int dim) {
  state.counters["values/s"] = benchmark::Counter(static_cast<double>(kTokens) * dim,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

template <bool kRef>
void BM_Encode(benchmark::State& state) {
  const auto rot = static_cast<tq::RotationKind>(state.range(0));
  const int bits = static_cast<int>(state.range(1)), dim = static_cast<int>(state.range(2));
  const auto qjl = static_cast<tq::QjlMode>(state.range(3));
  Fixture f = make_fixture(rot, bits, dim, qjl);
  const int T = f.q.layout().page_tokens, pb = f.q.layout().page_bytes;
  for (auto _ : state) {
    for (int i = 0; i < kTokens; ++i) {
      uint8_t* page = f.pages.data() + static_cast<size_t>(i / T) * pb;
      if (kRef)
        f.q.encode_ref(f.x.data() + static_cast<size_t>(i) * dim, page, i % T);
      else
        f.q.encode(f.x.data() + static_cast<size_t>(i) * dim, page, i % T);
    }
    benchmark::ClobberMemory();
  }
  set_rate(state, dim);
  state.SetLabel(std::string(tq::to_string(rot)) +
                 (qjl != tq::QjlMode::kNone ? std::string("+qjl_") + tq::to_string(qjl) : ""));
}

void encode_args(benchmark::internal::Benchmark* b) {
  for (auto rot : {tq::RotationKind::kHadamard, tq::RotationKind::kRandom})
    for (int bits : {1, 2, 3, 4}) b->Args({static_cast<int>(rot), bits, 64, 0});
  b->Args({static_cast<int>(tq::RotationKind::kHadamard), 3, 128, 0});
  b->Args({static_cast<int>(tq::RotationKind::kRandom), 3, 128, 0});
  b->Args({static_cast<int>(tq::RotationKind::kHadamard), 3, 24, 0});
  b->Args(
      {static_cast<int>(tq::RotationKind::kHadamard), 3, 64, static_cast<int>(tq::QjlMode::kProd)});
  b->ArgNames({"rot", "bits", "dim", "qjl"});
}
BENCHMARK_TEMPLATE(BM_Encode, false)->Apply(encode_args);
BENCHMARK_TEMPLATE(BM_Encode, true)->Apply(encode_args)->Name("BM_EncodeRef");

template <int BITS>
void BM_UnpackLut(benchmark::State& state) {
  const int dim = static_cast<int>(state.range(0));
  Fixture f = make_fixture(tq::RotationKind::kHadamard, BITS, dim);
  const auto& l = f.q.layout();
  for (int i = 0; i < kTokens; ++i)
    f.q.encode(f.x.data() + static_cast<size_t>(i) * dim,
               f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes,
               i % l.page_tokens);
  std::vector<float> out(static_cast<size_t>(kTokens) * dim);
  const float* lut = f.q.params().codebook.centroids.data();
  for (auto _ : state) {
    for (int i = 0; i < kTokens; ++i) {
      const uint8_t* page = f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes;
      const int t = i % l.page_tokens;
      const float n = tq::half_bits_to_float(*tq::token_norm(page, l, t));
      tq::unpack_lut<BITS>(tq::token_codes(page, l, t), dim, lut, n,
                           out.data() + static_cast<size_t>(i) * dim);
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, dim);
}
BENCHMARK_TEMPLATE(BM_UnpackLut, 1)->Arg(64);
BENCHMARK_TEMPLATE(BM_UnpackLut, 2)->Arg(64);
BENCHMARK_TEMPLATE(BM_UnpackLut, 3)->Arg(64)->Arg(128);
BENCHMARK_TEMPLATE(BM_UnpackLut, 4)->Arg(64);

void BM_UnpackLutRef(benchmark::State& state) {
  const int dim = 64, bits = 3;
  Fixture f = make_fixture(tq::RotationKind::kHadamard, bits, dim);
  const auto& l = f.q.layout();
  std::vector<float> out(static_cast<size_t>(kTokens) * dim);
  const float* lut = f.q.params().codebook.centroids.data();
  for (auto _ : state) {
    for (int i = 0; i < kTokens; ++i) {
      const uint8_t* page = f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes;
      tq::unpack_lut_ref(tq::token_codes(page, l, i % l.page_tokens), dim, bits, lut, 1.0f,
                         out.data() + static_cast<size_t>(i) * dim);
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, dim);
}
BENCHMARK(BM_UnpackLutRef);

template <bool kRef>
void BM_Score(benchmark::State& state) {
  const int bits = static_cast<int>(state.range(0)), dim = static_cast<int>(state.range(1));
  Fixture f = make_fixture(tq::RotationKind::kHadamard, bits, dim);
  const auto& l = f.q.layout();
  for (int i = 0; i < kTokens; ++i)
    f.q.encode(f.x.data() + static_cast<size_t>(i) * dim,
               f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes,
               i % l.page_tokens);
  const tq::PreparedQuery pq = f.q.prepare_query(f.x.data());
  float sink = 0.0f;
  for (auto _ : state) {
    for (int i = 0; i < kTokens; ++i) {
      const uint8_t* page = f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes;
      sink += kRef ? f.q.score_ref(pq, page, i % l.page_tokens)
                   : f.q.score(pq, page, i % l.page_tokens);
    }
    benchmark::DoNotOptimize(sink);
  }
  set_rate(state, dim);
}
BENCHMARK_TEMPLATE(BM_Score, false)->Args({3, 64})->Args({3, 128})->ArgNames({"bits", "dim"});
BENCHMARK_TEMPLATE(BM_Score, true)->Args({3, 64})->ArgNames({"bits", "dim"})->Name("BM_ScoreRef");

void BM_Decode(benchmark::State& state) {
  const auto rot = static_cast<tq::RotationKind>(state.range(0));
  const int dim = 64;
  Fixture f = make_fixture(rot, 3, dim);
  const auto& l = f.q.layout();
  std::vector<float> out(dim);
  for (auto _ : state) {
    for (int i = 0; i < kTokens; ++i) {
      const uint8_t* page = f.pages.data() + static_cast<size_t>(i / l.page_tokens) * l.page_bytes;
      f.q.decode(page, i % l.page_tokens, out.data());
      benchmark::DoNotOptimize(out.data());
    }
  }
  set_rate(state, dim);
  state.SetLabel(tq::to_string(rot));
}
BENCHMARK(BM_Decode)
    ->Arg(static_cast<int>(tq::RotationKind::kHadamard))
    ->Arg(static_cast<int>(tq::RotationKind::kRandom));

}  // namespace

BENCHMARK_MAIN();
