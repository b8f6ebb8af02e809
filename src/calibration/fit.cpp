// SPDX-License-Identifier: MIT
#include "turboesm/calibration/fit.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "turboesm/error.h"
#include "turboesm/quant/codebook.h"
#include "turboesm/quant/qjl.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::calibration {

uint64_t head_seed(uint64_t seed, int layer, int head, bool key) {
  auto mix = [](uint64_t z) {  // SplitMix64 finalizer
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  uint64_t h = mix(seed);
  h = mix(h ^ static_cast<uint64_t>(layer));
  h = mix(h ^ static_cast<uint64_t>(head));
  return mix(h ^ (key ? 1u : 2u));
}

quant::QuantizerParams fit_head(const float* samples, int64_t n, int d, const FitOptions& opts,
                                bool key, uint64_t seed) {
  TURBOESM_CHECK(n >= 1, "fitting a head needs at least one sample, got 0");
  TURBOESM_CHECK(d > 0 && d <= quant::kMaxHeadDim, "head dim must be in 1..", quant::kMaxHeadDim,
                 ", got ", d);
  const size_t N = static_cast<size_t>(n), D = static_cast<size_t>(d);
  for (size_t i = 0; i < N * D; ++i)
    TURBOESM_CHECK(std::isfinite(samples[i]), "calibration sample ", i / D, " coordinate ", i % D,
                   " is not finite (", samples[i], ")");
  const quant::QuantizerConfig qc = opts.quantizer_config(d, key);
  quant::QuantizerParams p;

  // 1. mean
  if (opts.center) {
    std::vector<double> mu(D, 0.0);
    for (size_t i = 0; i < N; ++i)
      for (size_t j = 0; j < D; ++j) mu[j] += samples[i * D + j];
    p.mean.resize(D);
    for (size_t j = 0; j < D; ++j) p.mean[j] = static_cast<float>(mu[j] / static_cast<double>(N));
  }
  // 2. u = (x - mu) [/ ||x - mu||]
  std::vector<float> u;
  u.reserve(N * D);
  for (size_t i = 0; i < N; ++i) {
    float row[quant::kMaxHeadDim];
    double n2 = 0.0;
    for (size_t j = 0; j < D; ++j) {
      row[j] = p.mean.empty() ? samples[i * D + j] : samples[i * D + j] - p.mean[j];
      n2 += static_cast<double>(row[j]) * row[j];
    }
    if (opts.norm == quant::NormMode::kToken) {
      if (n2 <= 0.0) continue;  // a zero vector carries no direction
      const float inv = static_cast<float>(1.0 / std::sqrt(n2));
      for (size_t j = 0; j < D; ++j) row[j] *= inv;
    }
    u.insert(u.end(), row, row + D);
  }
  if (u.empty()) u.assign(D, 0.0f);  // all-zero head: any orthogonal basis will do
  const size_t M = u.size() / D;

  // 3. rotation
  if (opts.rotation == quant::RotationKind::kSvd) {
    p.rotation = quant::make_svd_rotation(u.data(), M, d, /*center=*/false);
  } else {
    p.rotation = quant::make_rotation(opts.rotation, d, seed);
  }
  std::vector<float> z(M * D);
  for (size_t i = 0; i < M; ++i) quant::rotate(p.rotation, &u[i * D], &z[i * D]);

  // 4. per-coordinate scales
  if (opts.rotation == quant::RotationKind::kSvd && opts.svd_scales) {
    std::vector<double> ms(D, 0.0);
    for (size_t i = 0; i < M; ++i)
      for (size_t j = 0; j < D; ++j) ms[j] += static_cast<double>(z[i * D + j]) * z[i * D + j];
    p.scale.resize(D);
    float top = 0.0f;
    for (size_t j = 0; j < D; ++j) {
      p.scale[j] = static_cast<float>(std::sqrt(ms[j] / static_cast<double>(M)));
      top = std::max(top, p.scale[j]);
    }
    const float floor = top > 0.0f ? top * kMinScaleFraction : 1.0f;
    for (size_t j = 0; j < D; ++j) {
      p.scale[j] = std::max(p.scale[j], floor);
      const float inv = 1.0f / p.scale[j];
      for (size_t i = 0; i < M; ++i) z[i * D + j] *= inv;
    }
  }

  // 5. codebook
  if (opts.codebook == CodebookKind::kAnalytic) {
    p.codebook = quant::analytic_codebook(d, qc.bits);
  } else {
    p.codebook = quant::kmeans_codebook(z.data(), z.size(), qc.bits);
  }

  // 6. QJL (K only)
  if (qc.qjl == quant::QjlMode::kProd) {
    const int m = qc.qjl_dim > 0 ? qc.qjl_dim : d;
    p.qjl_projection = quant::make_qjl_projection(m, d, seed ^ 0x51a11ull);
  }
  if (qc.qjl == quant::QjlMode::kSign) {
    // The residual does not depend on the QJL mode: fit s with a QJL-free quantizer.
    quant::QuantizerConfig plain = qc;
    plain.qjl = quant::QjlMode::kNone;
    plain.qjl_dim = 0;
    quant::QuantizerParams pp = p;
    const quant::TurboQuantizer tq(plain, std::move(pp));
    p.qjl_sign_scale = quant::calibrate_qjl_sign_scale(tq, samples, N);
  }
  return p;
}

double relative_mse(const quant::TurboQuantizer& q, const float* samples, int64_t n) {
  const int d = q.dim();
  std::vector<uint8_t> page(static_cast<size_t>(q.layout().page_bytes), 0);
  float xh[quant::kMaxHeadDim];
  double err = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* x = samples + i * d;
    q.encode(x, page.data(), 0);
    q.decode(page.data(), 0, xh);
    for (int j = 0; j < d; ++j) {
      const double e = static_cast<double>(x[j]) - xh[j];
      err += e * e;
      ref += static_cast<double>(x[j]) * x[j];
    }
  }
  return ref > 0.0 ? err / ref : 0.0;
}

model::TurboHeadConstants pack_head_constants(const std::vector<quant::QuantizerParams>& heads,
                                              const quant::QuantizerConfig& config) {
  TURBOESM_CHECK(!heads.empty(), "pack_head_constants: no heads");
  const int64_t H = static_cast<int64_t>(heads.size()), d = config.dim, L = 1 << config.bits;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  model::TurboHeadConstants c;
  c.rotation = at::empty({H, d, d}, f32);
  c.centroids = at::empty({H, L}, f32);
  c.boundaries = at::empty({H, L - 1}, f32);
  const bool has_scale = !heads[0].scale.empty(), has_mean = !heads[0].mean.empty();
  if (has_scale) c.scale = at::empty({H, d}, f32);
  if (has_mean) c.mean = at::empty({H, d}, f32);
  if (config.qjl == quant::QjlMode::kSign) c.qjl_scale = at::empty({H}, f32);
  int64_t m = 0;
  if (config.qjl == quant::QjlMode::kProd) {
    m = heads[0].qjl_projection.m;
    c.qjl_projection = at::empty({H, m, d}, f32);
  }
  for (int64_t h = 0; h < H; ++h) {
    const auto& p = heads[static_cast<size_t>(h)];
    TURBOESM_CHECK(p.rotation.dim == d && p.codebook.levels() == L &&
                       p.scale.empty() != has_scale && p.mean.empty() != has_mean,
                   "pack_head_constants: head ", h, " differs in shape from head 0");
    std::copy(p.rotation.matrix.begin(), p.rotation.matrix.end(), c.rotation[h].data_ptr<float>());
    std::copy(p.codebook.centroids.begin(), p.codebook.centroids.end(),
              c.centroids[h].data_ptr<float>());
    std::copy(p.codebook.boundaries.begin(), p.codebook.boundaries.end(),
              c.boundaries[h].data_ptr<float>());
    if (has_scale) std::copy(p.scale.begin(), p.scale.end(), c.scale[h].data_ptr<float>());
    if (has_mean) std::copy(p.mean.begin(), p.mean.end(), c.mean[h].data_ptr<float>());
    if (c.qjl_scale.defined()) c.qjl_scale[h].fill_(p.qjl_sign_scale);
    if (c.qjl_projection.defined()) {
      TURBOESM_CHECK(p.qjl_projection.m == m && p.qjl_projection.dim == d,
                     "pack_head_constants: head ", h, " QJL projection shape differs");
      std::copy(p.qjl_projection.matrix.begin(), p.qjl_projection.matrix.end(),
                c.qjl_projection[h].data_ptr<float>());
    }
  }
  return c;
}

std::vector<LayerFit> fit_layers(const CollectedSamples& samples, const FitOptions& opts,
                                 const std::function<void(int, int)>& progress) {
  TURBOESM_CHECK(!samples.layers.empty() && samples.tokens > 0,
                 "no calibration samples to fit (0 layers or 0 tokens)");
  const int H = samples.heads, d = samples.head_dim;
  opts.validate(d);
  const int layers = static_cast<int>(samples.layers.size());
  std::vector<LayerFit> out(static_cast<size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    const LayerSamples& ls = samples.layers[static_cast<size_t>(l)];
    TURBOESM_CHECK(ls.k.defined() && ls.k.dim() == 3 && ls.k.size(0) == H && ls.k.size(2) == d &&
                       ls.v.sizes() == ls.k.sizes() && ls.k.scalar_type() == at::kFloat,
                   "layer ", l, " samples must be fp32 [", H, ", n, ", d, "], got k ", ls.k.sizes(),
                   " v ", ls.v.sizes());
    const at::Tensor k = ls.k.contiguous(), v = ls.v.contiguous();
    const int64_t n = k.size(1);
    std::vector<quant::QuantizerParams> kp(static_cast<size_t>(H)), vp(static_cast<size_t>(H));
    std::vector<double> kmse(static_cast<size_t>(H)), vmse(static_cast<size_t>(H));
    const quant::QuantizerConfig kc = opts.quantizer_config(d, true);
    const quant::QuantizerConfig vc = opts.quantizer_config(d, false);
    // Errors thrown inside parallel_for are rethrown by it on the calling thread.
    at::parallel_for(0, 2 * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int h = static_cast<int>(t / 2);
        const bool key = (t % 2) == 0;
        const float* x = (key ? k : v).data_ptr<float>() + static_cast<int64_t>(h) * n * d;
        quant::QuantizerParams p = fit_head(x, n, d, opts, key, head_seed(opts.seed, l, h, key));
        const quant::TurboQuantizer tq(key ? kc : vc, p);
        (key ? kmse : vmse)[static_cast<size_t>(h)] = relative_mse(tq, x, n);
        (key ? kp : vp)[static_cast<size_t>(h)] = std::move(p);
      }
    });
    LayerFit& f = out[static_cast<size_t>(l)];
    f.constants.k = pack_head_constants(kp, kc);
    f.constants.v = pack_head_constants(vp, vc);
    for (int h = 0; h < H; ++h) {
      f.k_rel_mse += kmse[static_cast<size_t>(h)] / H;
      f.v_rel_mse += vmse[static_cast<size_t>(h)] / H;
    }
    if (progress) progress(l + 1, layers);
  }
  return out;
}

}  // namespace turboesm::calibration
