// SPDX-License-Identifier: MIT
#pragma once
// Helpers of the CUDA tests: GPU detection (skip cleanly without one), device buffers, and a
// multi-head TurboQuant cache built on the host with TurboQuantizer (the CPU oracle) and mirrored
// on the device as a quant::CacheView.

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "turboesm/kernels/quantize_append.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/quantizer.h"

namespace turboesm::testing_cuda {

namespace tq = turboesm::quant;

/// True when a CUDA device is usable (cudaGetDeviceCount succeeds with at least one device).
inline bool gpu_available() {
  static const bool ok = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky "no device / no driver" error
      return false;
    }
    return n > 0;
  }();
  return ok;
}

#define TURBOESM_REQUIRE_GPU()                                              \
  do {                                                                      \
    if (!::turboesm::testing_cuda::gpu_available())                         \
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount failed or is 0)"; \
  } while (0)

#define CUDA_OK(expr)                                                      \
  do {                                                                     \
    const cudaError_t _e = (expr);                                         \
    ASSERT_EQ(_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(_e); \
  } while (0)

/// Owning device allocation (cudaMalloc/cudaFree), copied from/to host vectors.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { allocate(bytes); }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
    }
    return *this;
  }

  void allocate(size_t bytes) {
    bytes_ = bytes;
    if (bytes && cudaMalloc(&ptr_, bytes) != cudaSuccess) {
      ptr_ = nullptr;
      throw std::runtime_error("cudaMalloc of " + std::to_string(bytes) + " bytes failed");
    }
  }
  template <typename T>
  static DeviceBuffer from(const std::vector<T>& v) {
    DeviceBuffer b(v.size() * sizeof(T));
    if (!v.empty() && cudaMemcpy(b.ptr_, v.data(), b.bytes_, cudaMemcpyHostToDevice) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy H2D failed");
    return b;
  }
  template <typename T>
  std::vector<T> to_host() const {
    std::vector<T> v(bytes_ / sizeof(T));
    if (!v.empty() && cudaMemcpy(v.data(), ptr_, bytes_, cudaMemcpyDeviceToHost) != cudaSuccess)
      throw std::runtime_error("cudaMemcpy D2H failed");
    return v;
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// Mode of one side (K or V) of a test cache.
struct SideConfig {
  int bits = 3;
  tq::NormMode norm = tq::NormMode::kToken;
  tq::QjlMode qjl = tq::QjlMode::kNone;
  int qjl_dim = 0;          ///< prod: m (0 → d)
  bool scale_mean = false;  ///< per-coordinate σ and μ
  int page_tokens = tq::kPageTokens;
  bool hadamard = false;  ///< randomized Hadamard rotations (entries ±d^-1/2) instead of dense ones
  /// Π = I; HeadSet::device_constants then sets HeadConstantsView::rotation_identity (the
  /// kernels' skip) unless asked not to.
  bool identity = false;
};

/// H TurboQuantizers (one per head, different seeds) with their constants flattened
/// [H, ...] as in HeadConstantsView, on host and device. Dense random rotations unless
/// SideConfig::hadamard.
class HeadSet {
 public:
  HeadSet(int heads, int dim, const SideConfig& c, uint64_t seed)
      : heads_(heads), dim_(dim), identity_(c.identity) {
    for (int h = 0; h < heads; ++h) {
      tq::QuantizerConfig cfg;
      cfg.dim = dim;
      cfg.bits = c.bits;
      cfg.norm = c.norm;
      cfg.qjl = c.qjl;
      cfg.qjl_dim = c.qjl_dim;
      cfg.page_tokens = c.page_tokens;
      tq::QuantizerParams p;
      const uint64_t s = seed + 101 * h;
      p.rotation = c.identity   ? tq::make_identity_rotation(dim)
                   : c.hadamard ? tq::make_hadamard_rotation(dim, s)
                                : tq::make_random_rotation(dim, s);
      tq::Rng rng(s + 1);
      if (c.norm == tq::NormMode::kToken) {
        p.codebook = tq::analytic_codebook(dim, c.bits);
      } else {  // raw N(0, 1) coordinates
        std::vector<float> smp(4000);
        tq::fill_normal(rng, smp.data(), smp.size());
        p.codebook = tq::kmeans_codebook(smp.data(), smp.size(), c.bits);
      }
      if (c.scale_mean) {
        for (int j = 0; j < dim; ++j) {
          p.scale.push_back(static_cast<float>(0.5 + rng.uniform()));
          p.mean.push_back(static_cast<float>(0.3 * rng.normal()));
        }
      }
      p.qjl_sign_scale = static_cast<float>(0.01 + 0.05 * rng.uniform());
      if (c.qjl == tq::QjlMode::kProd)
        p.qjl_projection = tq::make_qjl_projection(c.qjl_dim > 0 ? c.qjl_dim : dim, dim, s + 3);
      q_.push_back(std::make_unique<tq::TurboQuantizer>(cfg, std::move(p)));
    }
    const auto& q0 = *q_[0];
    const int L = 1 << c.bits;
    for (int h = 0; h < heads; ++h) {
      const auto& qp = q_[h]->params();
      append(rotation_, qp.rotation.matrix);
      append(centroids_, qp.codebook.centroids);
      append(boundaries_, qp.codebook.boundaries);
      if (c.scale_mean) {
        append(scale_, qp.scale);
        append(mean_, qp.mean);
      }
      qjl_scale_.push_back(qp.qjl_sign_scale);
      if (c.qjl == tq::QjlMode::kProd) append(qjl_proj_, qp.qjl_projection.matrix);
      (void)L;
    }
    layout_ = q0.layout();
    d_rotation_ = DeviceBuffer::from(rotation_);
    d_centroids_ = DeviceBuffer::from(centroids_);
    d_boundaries_ = DeviceBuffer::from(boundaries_);
    d_scale_ = DeviceBuffer::from(scale_);
    d_mean_ = DeviceBuffer::from(mean_);
    d_qjl_scale_ = DeviceBuffer::from(qjl_scale_);
    d_qjl_proj_ = DeviceBuffer::from(qjl_proj_);
    if (dim % 16 == 0) {  // Π pre-split for the tile kernel, as TurboHeadConstants::to makes it
      std::vector<uint16_t> parts(static_cast<size_t>(heads) * 2 * dim *
                                  turboesm::kernels::rotation_f16_row_stride(dim));
      std::vector<int32_t> lo(heads);
      turboesm::kernels::rotation_f16_split(rotation_.data(), heads, dim, parts.data(), lo.data());
      d_rotation_f16_ = DeviceBuffer::from(parts);
      d_rotation_f16_lo_ = DeviceBuffer::from(lo);
    }
  }

  const tq::TurboQuantizer& q(int h) const { return *q_[h]; }
  const tq::PageLayout& layout() const { return layout_; }
  int heads() const { return heads_; }
  int dim() const { return dim_; }

  /// Device constants view; `presplit`: with Π's fp16 parts (HeadConstantsView::rotation_f16,
  /// head_dim a multiple of 16), as the model's caches pass them; `identity_flag`: with
  /// HeadConstantsView::rotation_identity when SideConfig::identity (false: the kernels multiply
  /// by the identity matrix, the reference of their skip).
  tq::HeadConstantsView device_constants(bool presplit = false, bool identity_flag = true) const {
    tq::HeadConstantsView v;
    v.rotation_identity = identity_ && identity_flag;
    if (presplit) {
      v.rotation_f16 = d_rotation_f16_.get<uint16_t>();
      v.rotation_f16_lo = d_rotation_f16_lo_.get<int32_t>();
    }
    v.rotation = d_rotation_.get<float>();
    v.scale = scale_.empty() ? nullptr : d_scale_.get<float>();
    v.mean = mean_.empty() ? nullptr : d_mean_.get<float>();
    v.centroids = d_centroids_.get<float>();
    v.boundaries = d_boundaries_.get<float>();
    v.qjl_scale = layout_.qjl == tq::QjlMode::kSign ? d_qjl_scale_.get<float>() : nullptr;
    v.qjl_proj = layout_.qjl == tq::QjlMode::kProd ? d_qjl_proj_.get<float>() : nullptr;
    return v;
  }

 private:
  static void append(std::vector<float>& dst, const std::vector<float>& src) {
    dst.insert(dst.end(), src.begin(), src.end());
  }
  int heads_, dim_;
  bool identity_;
  std::vector<std::unique_ptr<tq::TurboQuantizer>> q_;
  tq::PageLayout layout_{};
  std::vector<float> rotation_, centroids_, boundaries_, scale_, mean_, qjl_scale_, qjl_proj_;
  DeviceBuffer d_rotation_, d_centroids_, d_boundaries_, d_scale_, d_mean_, d_qjl_scale_,
      d_qjl_proj_, d_rotation_f16_, d_rotation_f16_lo_;
};

/// A dense paged cache [batch, heads, max_pages, page_bytes] on the host.
struct HostPages {
  tq::PageLayout layout{};
  int batch = 0, heads = 0, max_pages = 0;
  std::vector<uint8_t> bytes;

  HostPages(const tq::PageLayout& l, int b, int h, int pages, uint8_t fill)
      : layout(l),
        batch(b),
        heads(h),
        max_pages(pages),
        bytes(static_cast<size_t>(b) * h * pages * l.page_bytes, fill) {}
  int64_t head_stride() const { return static_cast<int64_t>(max_pages) * layout.page_bytes; }
  int64_t seq_stride() const { return heads * head_stride(); }
  uint8_t* page(int b, int h, int p) {
    return bytes.data() + b * seq_stride() + h * head_stride() +
           static_cast<int64_t>(p) * layout.page_bytes;
  }
  /// View of a device copy of these pages.
  tq::CacheView view(uint8_t* device_pages, const tq::HeadConstantsView& c) const {
    tq::CacheView v;
    v.layout = layout;
    v.pages = device_pages;
    v.seq_stride = seq_stride();
    v.head_stride = head_stride();
    v.max_pages = max_pages;
    v.constants = c;
    return v;
  }
};

inline int pages_for(int tokens, int page_tokens) {
  return (tokens + page_tokens - 1) / page_tokens;
}

/// \brief Valid DecodeParams for the host-side argument checks (turbo_decode*_invalid_reason):
/// batch 2, 3 heads, d 64, 3-bit token-norm pages; the pointers are static host dummies that no
/// check dereferences, so tests built on them run without a GPU.
inline tq::DecodeParams host_only_decode_params() {
  alignas(16) static float dummy_f[4];
  static int32_t dummy_i[4];
  alignas(16) static uint8_t dummy_pages[64];
  tq::DecodeParams p;
  p.batch = 2;
  p.heads = 3;
  p.head_dim = 64;
  p.q_len = 1;
  p.q = dummy_f;
  p.out = dummy_f;
  p.lengths = dummy_i;
  for (tq::CacheView* c : {&p.k, &p.v}) {
    c->layout = tq::make_page_layout(64, 3, tq::NormMode::kToken, tq::QjlMode::kNone);
    c->pages = dummy_pages;
    c->max_pages = 4;
    c->head_stride = 4 * c->layout.page_bytes;
    c->seq_stride = 3 * c->head_stride;
    c->constants.rotation = dummy_f;
    c->constants.centroids = dummy_f;
    c->constants.boundaries = dummy_f;
  }
  return p;
}

}  // namespace turboesm::testing_cuda
