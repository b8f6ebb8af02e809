// SPDX-License-Identifier: MIT
#pragma once
/// \file mixed_cache.h
/// \brief A KV cache whose storage format is chosen per layer: a few layers in a dense format
/// (INT8, FP8, FP16 or FP32), every other layer compressed by the Turbo cache.
///
/// Why: measured with `turboesm-kvdiag` on random-init ESM-2 (`--init-std 0.08`), the end-to-end
/// error of a ~3-bit cache comes almost entirely from layer 0 (esm2_t12_35M: quantizing layer 0
/// alone costs as much final-hidden cosine as quantizing all 12 layers; layers ≥ 1 alone cost
/// ≤ 0.003 each). Layer 0's attention output is written into a residual stream that holds only
/// the token embeddings yet, so its error reaches every later layer. Storing layer 0 in INT8 and
/// the other layers at 3 bits keeps the whole cache ≥ 9× smaller than FP32 (one layer of L at
/// d + 2 bytes per vector) and brings the end-to-end cosine close to the INT8 cache's.
///
/// Each layer is its own one-layer cache (TurboKvCache or DenseKvCache), so the CPU op and the
/// CUDA kernel run unchanged on the Turbo layers. `kv_bytes()` sums every layer's own rate
/// (DESIGN "Memory accounting"), `allocated_bytes()` every sub-cache's buffers.

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/model/kv_cache.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm::model {

/// \brief Per-layer formats (see the file comment). kind() is kTurbo.
class MixedKvCache final : public KvCache {
 public:
  /// \param shape        cache shape of the whole model
  /// \param turbo        Turbo constants of every layer, validated against `shape` (the constants
  ///                     of layers in `dense_layers` are not used)
  /// \param dense_layers layer index → dense kind (kFp32, kFp16, kInt8 or kFp8)
  /// \param turbo_layers layer index → another Turbo spec (e.g. other bits or QJL) whose
  ///                     constants and modes that layer uses instead of `turbo`'s; validated
  ///                     against `shape` (a layer may not be in both maps)
  /// \throws turboesm::Error for a layer outside [0, layers), a non-dense kind, a layer in both
  ///         maps, or a spec of another shape.
  MixedKvCache(const CacheShape& shape, const TurboCacheSpec& turbo,
               const std::map<int, CacheKind>& dense_layers,
               const std::map<int, const TurboCacheSpec*>& turbo_layers = {});
  ~MixedKvCache() override;

  CacheKind kind() const override { return CacheKind::kTurbo; }
  int64_t allocated_bytes() const override;
  /// \brief Bytes per token per head of the Turbo layers (K + V); see
  /// layer_bytes_per_token_per_head.
  int64_t bytes_per_token_per_head() const override;
  /// \brief Σ over layers of cached tokens × heads × that layer's rate.
  int64_t kv_bytes() const override;
  int64_t capacity(int layer) const override;
  /// \brief Forwards to every layer's own cache (CUDA Turbo layers record bad rows on the device).
  void check_device_status() override;

  /// \brief Bytes per token per head (K + V) of `layer`'s own format.
  int64_t layer_bytes_per_token_per_head(int layer) const;
  /// \brief The format of `layer`.
  CacheKind layer_kind(int layer) const;
  /// \brief The one-layer cache behind `layer` (tests, diagnostics).
  const KvCache& layer_cache(int layer) const;
  /// \brief "K 3-bit / V 3-bit, ...; dense layers 0:int8; layers 1 2: K 3-bit ..." one-liner.
  std::string summary() const;

 protected:
  /// The rows are passed on unchanged: each layer's own cache converts what it needs.
  at::ScalarType append_dtype(at::ScalarType given) const override { return given; }
  bool append_keeps_strides() const override { return true; }
  void do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                 const std::vector<int64_t>& starts, const std::vector<int64_t>& counts) override;
  void grow(int layer, int64_t tokens) override;
  at::Tensor do_attend(int layer, const at::Tensor& q) const override;

 private:
  std::vector<std::unique_ptr<KvCache>> layers_;  // [layers], each a one-layer cache
  std::string summary_;
  std::map<int, CacheKind> dense_;
};

/// \brief Parses "0" / "0,1" / "" (no layer) into layer indices for MixedKvCache.
/// \throws turboesm::Error naming the item that is not a non-negative integer.
std::vector<int> parse_layer_list(const std::string& list);

/// \brief make_kv_cache for a Turbo cache with `dense_layers` in a dense format and
/// `turbo_layers` under other Turbo specs (MixedKvCache); a plain TurboKvCache when both are
/// empty.
std::unique_ptr<KvCache> make_mixed_kv_cache(
    const EsmConfig& config, int batch, c10::Device device, const TurboCacheSpec& turbo,
    const std::map<int, CacheKind>& dense_layers,
    const std::map<int, const TurboCacheSpec*>& turbo_layers = {});

}  // namespace turboesm::model
