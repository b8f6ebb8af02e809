// SPDX-License-Identifier: MIT
#pragma once
/// \file turbo_cache.h
/// \brief The compressed (TurboQuant) KV cache: per-layer constants, their spec, and the cache.
///
/// DESIGN "The compressed cache": every key/value vector of (layer, head) is centered (optional),
/// norm-split (optional), rotated by Π, scaled per coordinate (optional), scalar-quantized with a
/// Lloyd-Max codebook and, for K, optionally QJL-corrected; the pages follow quant/format.h and
/// quant/cache_view.h, so the CPU op (src/ops/cpu) and the CUDA kernel read the same bytes.
///
/// Constants come from a calibration checkpoint (calibration helper: `from_checkpoint`) or, for
/// tests and demos, from TurboCacheSpec::random (a data-free rotation + the analytic codebook).

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "turboesm/model/config.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/quant/cache_view.h"
#include "turboesm/quant/quantizer.h"
#include "turboesm/quant/rotation.h"

namespace turboesm::model {

/// \brief Quantizer constants of one layer's K or V, all heads, as fp32 tensors (one device).
/// Undefined tensors mean "absent" (no scale, no centering, no QJL).
struct TurboHeadConstants {
  at::Tensor rotation;        ///< [H, d, d] Π, row-major (y = Π x)
  at::Tensor centroids;       ///< [H, 2^bits] ascending
  at::Tensor boundaries;      ///< [H, 2^bits - 1] midpoints of adjacent centroids
  at::Tensor scale;           ///< [H, d] σ > 0, or undefined
  at::Tensor mean;            ///< [H, d] μ, or undefined
  at::Tensor qjl_scale;       ///< [H] s (QjlMode::kSign), or undefined
  at::Tensor qjl_projection;  ///< [H, m, d] S (QjlMode::kProd), or undefined
  /// Derived by to() for CUDA devices (d a multiple of 16), else undefined: Π pre-split into fp16
  /// parts for the prefill append kernel, [H, 2, d, d + 8] fp16 bits as int16, and [H] int32
  /// "low part nonzero" flags (rotation_f16_parts below; HeadConstantsView::rotation_f16). Device
  /// memory: 2 · d · (d + 8) · 2 bytes per head and side (650M: 24 MB, 15B: 267 MB in all).
  at::Tensor rotation_f16, rotation_f16_lo;
  /// Derived by to(): every head's Π is exactly the identity (HeadConstantsView::
  /// rotation_identity: the kernels skip the rotation; e.g. the V side of a spec whose Π_V was
  /// folded into the model, model/value_fold.h).
  bool rotation_identity = false;

  /// \brief Raw pointers for quant::CacheView (tensors must be contiguous fp32).
  quant::HeadConstantsView view() const;
  /// \brief Copy on `device` (contiguous fp32), plus the derived rotation_f16 parts on CUDA.
  TurboHeadConstants to(c10::Device device) const;
  /// \brief Checks every shape, dtype and value against `config` and `heads`; throws
  /// turboesm::Error naming `what` (e.g. "layers.3.k") and the offending tensor.
  void validate(const quant::QuantizerConfig& config, int heads, const std::string& what) const;
  /// \brief The CPU quantizer of head `head` (copies the constants; validates them).
  quant::TurboQuantizer quantizer(int head, const quant::QuantizerConfig& config,
                                  quant::RotationKind kind) const;
};

/// \brief Π's fp16 parts for the CUDA prefill append kernel, on the rotations' device:
/// {[H, 2, d, d + 8] fp16 bits as int16, [H] int32 "low part nonzero"} of the fp32 rotations
/// [H, d, d] (d a multiple of 16) — kernels::rotation_f16_split's layout and values, computed with
/// tensor ops (TurboHeadConstants::to uses it for CUDA copies).
std::pair<at::Tensor, at::Tensor> rotation_f16_parts(const at::Tensor& rotation);

/// \brief Whether `rotation` [H, d, d] is exactly the identity for every head (any device;
/// false for an undefined or misshaped tensor).
bool is_identity_rotation(const at::Tensor& rotation);

/// \brief K and V constants of one layer.
struct TurboLayerConstants {
  TurboHeadConstants k, v;
};

/// \brief Everything a TurboKvCache needs: the K and V modes and every layer's constants.
struct TurboCacheSpec {
  quant::QuantizerConfig k_config;  ///< bits, norm, QJL (K)
  quant::QuantizerConfig v_config;  ///< bits, norm (V; QJL must be kNone on V for the kernel)
  quant::RotationKind rotation = quant::RotationKind::kRandom;
  bool centered = false;                    ///< means present
  std::string description;                  ///< provenance, printed by the tools
  std::vector<TurboLayerConstants> layers;  ///< [num_layers], CPU fp32 tensors

  /// \brief Data-free constants: `rotation` (identity, random or hadamard; svd needs calibration
  /// data) drawn per (layer, head) from `seed`, the analytic Lloyd-Max codebook of a coordinate of
  /// a random unit vector in d dims, no per-coordinate scale, no centering. For
  /// NormMode::kNone the codebook is scaled by `norm_hint` (the typical ‖x‖ of the data, since
  /// there is no data to fit it to). QJL: kSign scale calibrated on synthetic isotropic vectors of
  /// norm `norm_hint` (kNone) or 1 (kToken); kProd projection iid N(0, 1), m = `qjl_dim` (0 → d).
  static TurboCacheSpec random(const EsmConfig& config, int bits_k, int bits_v,
                               quant::RotationKind rotation, quant::NormMode norm,
                               quant::QjlMode qjl, uint64_t seed, int qjl_dim = 0,
                               double norm_hint = 1.0);

  /// \brief Checks the spec against a model config (layers, heads, head_dim) and every layer's
  /// tensors; throws turboesm::Error naming the first mismatch.
  void validate(const EsmConfig& config) const;
  /// \brief Bytes per token per head of K plus V (format.h accounting).
  int64_t bytes_per_token_per_head() const;
  /// \brief "k3/v3 random norm=token qjl=none" style one-liner.
  std::string summary() const;
};

/// \brief The compressed cache. Pages per layer: K and V uint8 [B, H, max_pages, page_bytes]
/// (quant/cache_view.h), grown by doubling max_pages. CPU: append rotates the new rows with one
/// batched GEMM and quantizes them in parallel over (sequence, head) (set_reference_encode: per
/// row through quant::TurboQuantizer::encode); attend runs ops::turbo_decode.
class TurboKvCache final : public KvCache {
 public:
  /// \param spec validated against `shape`; its constants are copied to `shape.device`
  TurboKvCache(const CacheShape& shape, const TurboCacheSpec& spec);
  ~TurboKvCache() override;

  CacheKind kind() const override { return CacheKind::kTurbo; }
  int64_t allocated_bytes() const override;
  int64_t bytes_per_token_per_head() const override;
  int64_t capacity(int layer) const override;

  /// \brief The decode-call parameters of `layer` (views of the pages and constants; q/out/lengths
  /// left null). Valid until the next append that regrows the layer.
  quant::DecodeParams decode_params(int layer) const;
  /// \brief Dequantized K (or V) of `layer` via TurboQuantizer::decode_ref:
  /// [B, H, max length, d] fp32 CPU, rows past a sequence's length 0. For tests and compare.
  at::Tensor dequantized(int layer, bool key) const;
  /// \brief The CPU quantizer of (layer, head) for K (`key`) or V.
  const quant::TurboQuantizer& quantizer(int layer, int head, bool key) const;
  const TurboCacheSpec& spec() const { return spec_; }
  /// \brief CPU encode path: false (default) rotates all new rows with one batched GEMM, then
  /// quantizes row by row; true encodes every row with quant::TurboQuantizer::encode (the
  /// reference; bit-identical to the quant core). Codes differ only within float rounding of a
  /// decision boundary.
  void set_reference_encode(bool on) { reference_encode_ = on; }
  /// \brief CUDA encode path (kernels/quantize_append.h): kAuto (default) takes the tensor-core
  /// tile kernel for prefills (≥ 32 new tokens, no prod QJL) and the row kernel (the host's
  /// operation order) for decode steps; kRows forces the row kernel (tests, benchmarks).
  enum class CudaAppendPath { kAuto = 0, kRows = 1, kTile = 2 };
  void set_cuda_append_path(CudaAppendPath path) { cuda_append_path_ = path; }
  /// \brief device_step's append inside the attention launch (default true; head_dim ≤ 64) or
  /// as a kernel of its own before it (same pages, outputs equal up to the order the splits are
  /// summed in).
  void set_fused_step_append(bool on) { fused_step_append_ = on; }
  /// \brief Tuning of the fused device_step (benchmarks, tests): `cached_splits` > 0 fixes the
  /// number of token splits over the cached positions (0, the default: turbo_decode_num_splits
  /// picks it); `merge_in_kernel` lets the row's last split CTA merge the splits (the split
  /// counters) instead of the merge kernel (default false: kernels/NOTES.md "Decode step v8").
  /// Outputs are equal up to the order in which the splits are summed.
  void set_step_splits(int cached_splits, bool merge_in_kernel);
  /// \brief CUDA: quantize-on-append of the new K/V at lengths[b] and the fused decode kernel
  /// over a view of max_tokens slots (its split count follows max_tokens, not the capacity): for
  /// head_dim ≤ 64 in one attention launch (kernels::turbo_decode_append: an extra split CTA per
  /// row encodes and scores the new token while the others stream the cached ones; the merge
  /// kernel combines the splits), else, or with set_fused_step_append(false), quantize_append's
  /// row kernel then turbo_decode (splits merged in-kernel). See KvCache::device_step.
  bool supports_device_step() const override { return shape_.device.is_cuda(); }
  at::Tensor device_step(int layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& lengths, const at::Tensor& lengths_after,
                         int64_t max_tokens) override;
  /// \brief CUDA appends do not synchronise: rows the kernel could not quantize (non-finite
  /// values, norms beyond fp16) are recorded on the device and reported here (Session calls it
  /// after every prefill and append).
  void check_device_status() override;

 protected:
  /// CUDA: fp16 / bf16 rows go to quantize_append as they are (it widens them exactly).
  at::ScalarType append_dtype(at::ScalarType given) const override;
  /// CUDA: quantize_append reads strided rows (e.g. token-major K/V of the fused QKV kernel).
  bool append_keeps_strides() const override { return shape_.device.is_cuda(); }
  void do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                 const std::vector<int64_t>& starts, const std::vector<int64_t>& counts) override;
  void grow(int layer, int64_t tokens) override;
  at::Tensor do_attend(int layer, const at::Tensor& q) const override;

 private:
  struct Layer {
    at::Tensor k_pages, v_pages;  // uint8 [B, H, max_pages, page_bytes]
    int max_pages = 0;
    TurboLayerConstants constants;  // on the cache's device
  };
  void append_cpu(int layer, const at::Tensor& x, bool key, const std::vector<int64_t>& starts,
                  const std::vector<int64_t>& counts);
  void append_cpu_reference(int layer, const at::Tensor& x, bool key,
                            const std::vector<int64_t>& starts, const std::vector<int64_t>& counts);
  /// CUDA appends of K and V: starts/counts go to the device in one pinned copy; no sync.
  void append_cuda(int layer, const at::Tensor& k, const at::Tensor& v,
                   const std::vector<int64_t>& starts, const std::vector<int64_t>& counts);
  /// Launches quantize_append of k and v [B, H, Tnew, d] (fp32, fp16 or bf16, contiguous, on
  /// the device) in one call (starts, counts: device pointers; counts may be null).
  void launch_quantize_append(int layer, const at::Tensor& k, const at::Tensor& v,
                              const int32_t* starts, const int32_t* counts);
  quant::CacheView view(int layer, bool key) const;

  TurboCacheSpec spec_;
  quant::PageLayout k_layout_{}, v_layout_{};
  std::vector<Layer> layers_;
  // [layer][head] CPU quantizers (encode on the CPU, dequantized()).
  std::vector<std::vector<quant::TurboQuantizer>> k_quant_, v_quant_;
  bool reference_encode_ = false;
  CudaAppendPath cuda_append_path_ = CudaAppendPath::kAuto;
  bool fused_step_append_ = true;
  int step_cached_splits_ = 0;
  bool step_merge_in_kernel_ = false;
  at::Tensor device_status_;  // CUDA: int32 [1], OR of kernels::kQuantizeAppend* bits
  // CUDA: int32 [batch · heads], zero between calls: the two-kernel device_step's split counters
  // (the decode kernel merges its splits itself; quant::DecodeParams::split_counters). One step
  // at a time.
  at::Tensor split_counters_;
  // CUDA: the last append's starts and counts ([starts..., counts...]) and their device copy.
  std::vector<int32_t> starts_counts_host_;
  at::Tensor starts_counts_dev_;
};

}  // namespace turboesm::model
