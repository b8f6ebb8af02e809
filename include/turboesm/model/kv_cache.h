// SPDX-License-Identifier: MIT
#pragma once
/// \file kv_cache.h
/// \brief The KV cache of an ESM-2 model: one interface, five storage formats.
///
/// A cache holds, for every layer, the post-RoPE keys and the values of a batch of sequences with
/// per-sequence lengths. `append` adds new tokens (padded rows beyond each sequence's count are
/// ignored), `attend` lets queries attend to every cached token of their sequence (including the
/// ones just appended). Formats:
///
// clang-format off
/// | kind  | per token per head (DESIGN "Memory accounting")   | attend                           |
/// |-------|---------------------------------------------------|----------------------------------|
/// | fp32  | 4·d                                               | exact softmax attention          |
/// | fp16  | 2·d                                               | exact on fp16-rounded K/V        |
/// | int8  | d + 2 (symmetric int8, fp16 scale per token·head) | exact on dequantized K/V         |
/// | fp8   | d + 2 (e4m3, fp16 scale per token·head)           | exact on dequantized K/V         |
/// | turbo | format.h bytes_per_token_per_head                 | in code space (ops/turbo_decode) |
// clang-format on
///
/// `kv_bytes()` counts exactly these bytes × cached tokens × heads × layers for K and V;
/// `allocated_bytes()` is what the buffers really take (capacity slack, page padding, scales).
/// Capacity grows by doubling (amortized O(1) per token; `reallocations()` counts the regrowths).
/// Calibrated constants (rotations, codebooks) are not cache and not counted.

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/model/config.h"

namespace turboesm::model {

struct TurboCacheSpec;

/// \brief Storage format of a KvCache.
enum class CacheKind : int { kFp32 = 0, kFp16 = 1, kInt8 = 2, kFp8 = 3, kTurbo = 4 };

/// \brief "fp32" / "fp16" / "int8" / "fp8" / "turbo".
const char* to_string(CacheKind kind);
/// \brief Parses the names of to_string; throws turboesm::Error naming the accepted values.
CacheKind parse_cache_kind(const std::string& name);

/// \brief Shape of a cache: layers × batch × heads × head_dim, on one device.
struct CacheShape {
  int layers = 0;
  int batch = 0;
  int heads = 0;
  int head_dim = 0;
  c10::Device device = c10::Device(c10::kCPU);

  /// \brief The shape of a model config (layers, heads, head_dim) for `batch` sequences.
  static CacheShape of(const EsmConfig& config, int batch, c10::Device device);
};

/// \brief Abstract KV cache (see the file comment).
class KvCache {
 public:
  explicit KvCache(const CacheShape& shape);
  virtual ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  virtual CacheKind kind() const = 0;

  /// \brief Appends new tokens of one layer.
  /// \param layer       0-based layer index
  /// \param k, v        [batch, heads, Tnew, head_dim] floating point (k post-RoPE); rows
  ///                    t >= new_lengths[b] of sequence b are padding and ignored
  /// \param new_lengths [batch] integer, each in [0, Tnew]; undefined = Tnew for every sequence
  void append(int layer, const at::Tensor& k, const at::Tensor& v, const at::Tensor& new_lengths);

  /// \brief Attention of `q` over every cached token of its sequence in `layer`.
  /// \param q [batch, heads, Tq, head_dim] (scaled and rotary applied, as Esm2Model::layer_qkv)
  /// \return [batch, heads, Tq, head_dim] in q's dtype; rows of a sequence with no cached token
  ///         are 0
  at::Tensor attend(int layer, const at::Tensor& q) const;

  /// \brief Cached tokens per sequence of `layer` (all layers agree between model steps).
  const std::vector<int64_t>& lengths(int layer = 0) const;
  /// \brief Sum over the batch of lengths(layer).
  int64_t total_tokens(int layer = 0) const;

  /// \brief DESIGN "Memory accounting": bytes_per_token_per_head(K) + (V), × cached tokens
  /// (summed over layers, so a half-written step counts what is there) × heads.
  virtual int64_t kv_bytes() const;
  /// \brief Bytes of every buffer the cache holds now (capacity, page padding, scales).
  virtual int64_t allocated_bytes() const = 0;
  /// \brief Bytes per token per head of K plus those of V (the kv_bytes rate).
  virtual int64_t bytes_per_token_per_head() const = 0;

  /// \brief Number of capacity regrowths so far, all layers (tests check it is O(log tokens)).
  int64_t reallocations() const { return reallocations_; }
  /// \brief Token capacity per sequence of `layer` (what append can take before regrowing).
  virtual int64_t capacity(int layer) const = 0;

  /// \brief Forgets every cached token (keeps the buffers).
  void clear();

  /// \brief Makes every layer hold at least `tokens` per sequence without regrowing (at most one
  /// regrowth per layer now, none later while lengths stay ≤ `tokens`). A CUDA graph needs it:
  /// a regrowth moves the buffers its kernels point at.
  /// \throws turboesm::Error when `tokens` is not positive or exceeds the int32 range.
  void reserve(int64_t tokens);

  // ----- device-resident decode step (CUDA graphs; see model/decode_graph.h) -----

  /// \brief Whether device_step() is implemented by this cache on its device (CUDA turbo, CUDA
  /// fp16/fp32).
  virtual bool supports_device_step() const { return false; }

  /// \brief One decode step of `layer` whose cache lengths live on the device: writes k/v (one
  /// token per sequence) at position lengths[b], then lets q attend to the lengths[b] + 1 tokens.
  /// No host synchronisation, no host-side state change and no host→device copy, so the call can
  /// be captured in a CUDA graph; the host lengths are advanced afterwards by commit_device_steps.
  /// \param q, k, v       [batch, heads, 1, head_dim] (as Esm2Model::layer_qkv)
  /// \param lengths       [batch] int32 on the cache device: cached tokens before this step
  /// \param lengths_after [batch] int32 on the device, = lengths + 1
  /// \param max_tokens    static bound with lengths[b] + 1 ≤ max_tokens ≤ capacity(layer); the
  ///                      work may scale with it (the dense caches attend over max_tokens slots
  ///                      with a mask), never with the device-resident lengths
  /// \return [batch, heads, 1, head_dim] in q's dtype
  virtual at::Tensor device_step(int layer, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& lengths,
                                 const at::Tensor& lengths_after, int64_t max_tokens);

  /// \brief Host bookkeeping after `steps` device_step calls on every layer: adds `steps` to the
  /// length of every sequence in every layer. \throws turboesm::Error past the capacity.
  void commit_device_steps(int64_t steps);

  // ----- side-stream writes (CUDA; kernels/NOTES.md "Session 20") -----

  /// \brief Opens a side-write region: until end_side_writes(), a CUDA cache (every kind)
  /// launches append()'s device work on a second stream of its device, which first waits
  /// for the current stream (where the rows were computed). The caller's next kernels (a
  /// prefill's next layer) then need not wait for the cache write; the write fills the SMs the
  /// forward leaves idle. Session::prefill opens one around its forward. Inside the region only
  /// append() should be called: every other operation first joins (as end_side_writes does).
  /// CPU caches, and CUDA caches after set_side_writes(false), append on the current stream as
  /// always. Regions do not nest; begin and end on the same current stream.
  void begin_side_writes();
  /// \brief Closes the region: the current stream waits for every write issued in it (no host
  /// synchronisation). Safe to call without an open region.
  void end_side_writes();
  /// \brief Whether begin_side_writes() opens a region (default true).
  void set_side_writes(bool on) { side_writes_enabled_ = on; }
  bool side_writes() const { return side_writes_enabled_; }
  /// \brief Appends launched on the side stream so far (tests, diagnostics).
  int64_t side_writes_launched() const { return side_writes_launched_; }

  /// \brief Reports errors that device-side cache writes recorded (CUDA turbo: rows with
  /// non-finite values or norms beyond fp16 cannot throw inside a kernel). Synchronises the
  /// current stream when there is something to check; clears the record.
  /// \throws turboesm::Error naming the error. No-op for caches that record none.
  virtual void check_device_status() {}

  const CacheShape& shape() const { return shape_; }
  int num_layers() const { return shape_.layers; }
  int batch() const { return shape_.batch; }
  int heads() const { return shape_.heads; }
  int head_dim() const { return shape_.head_dim; }
  c10::Device device() const { return shape_.device; }

 protected:
  /// Element type that do_append receives for input rows of type `given` (a floating type):
  /// fp32 by default; formats that read the model dtype directly (CUDA turbo and fp16/fp32
  /// caches) keep fp16 / bf16 and skip a conversion pass.
  virtual at::ScalarType append_dtype(at::ScalarType given) const;
  /// `given` when it is fp16 / bf16 and the cache is on CUDA, else fp32: the append_dtype of a
  /// format whose CUDA path reads the model dtype directly.
  at::ScalarType model_dtype_on_cuda(at::ScalarType given) const;
  /// Whether do_append takes strided k, v (head_dim dense) as they come: true where the CUDA
  /// kernels or copies read them in place (no contiguous copy first).
  virtual bool append_keeps_strides() const { return false; }
  /// Stores rows [0, counts[b]) of sequence b at positions starts[b].. of `layer`. Capacity is
  /// already ensured. k, v: [B, H, Tnew, d] of type append_dtype(input type), contiguous unless
  /// append_keeps_strides().
  virtual void do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                         const std::vector<int64_t>& starts,
                         const std::vector<int64_t>& counts) = 0;
  /// Grows `layer` so that it holds at least `tokens` per sequence (called only when needed).
  virtual void grow(int layer, int64_t tokens) = 0;
  /// Attention over lengths(layer) tokens; q [B, H, Tq, d] contiguous fp32 on the device.
  virtual at::Tensor do_attend(int layer, const at::Tensor& q) const = 0;

  /// The argument checks of a device_step (`who` starts every message, e.g. "turbo cache"):
  /// layer in range, q, k, v [B, H, 1, d], lengths and lengths_after int32 [B] on the cache's
  /// device, max_tokens in [1, capacity].
  void check_device_step_args(const char* who, int layer, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& lengths,
                              const at::Tensor& lengths_after, int64_t max_tokens) const;
  /// Runs `launch` (which launches on the current stream) inside an open side-write region with
  /// the side stream current, after that stream waited for the caller's stream; `uses` (the
  /// tensors the launched work reads or writes that were made on the caller's stream) are
  /// recorded on the side stream for the caching allocator. Outside a region: runs `launch`.
  void launch_write(const std::function<void()>& launch, std::initializer_list<at::Tensor> uses);
  /// Makes the current stream wait for the side writes issued so far (no-op when none is
  /// pending). Every cache operation other than an append inside the region calls it first.
  void join_side_writes() const;

  /// Capacity after growth: max(needed, 2 × current, kMinCapacity).
  static int64_t grown_capacity(int64_t current, int64_t needed);
  /// Smallest capacity allocated on first use.
  static constexpr int64_t kMinCapacity = 64;

  CacheShape shape_;
  std::vector<std::vector<int64_t>> lengths_;  // [layers][batch]
  int64_t reallocations_ = 0;

 private:
  void check_layer(int layer) const;

  struct SideWrites;  // the side stream and its events (kv_cache.cpp; CUDA builds only)
  bool side_writes_enabled_ = true;
  bool side_region_ = false;
  int64_t side_writes_launched_ = 0;
  std::unique_ptr<SideWrites> side_;
};

/// \brief Dense baseline caches (fp32, fp16, int8, fp8 e4m3): K/V [B, H, capacity, d] per layer;
/// int8/fp8 with one fp16 scale per token per head [B, H, capacity] (absmax / 127 resp. / 448).
class DenseKvCache final : public KvCache {
 public:
  /// \param kind one of kFp32, kFp16, kInt8, kFp8
  DenseKvCache(CacheKind kind, const CacheShape& shape);
  ~DenseKvCache() override;

  CacheKind kind() const override { return kind_; }
  int64_t allocated_bytes() const override;
  int64_t bytes_per_token_per_head() const override;
  int64_t capacity(int layer) const override;

  /// \brief Dequantized K and V of `layer`: [B, H, max length, d] fp32 (rows past a sequence's
  /// length are unspecified). For tests and the compare program.
  std::pair<at::Tensor, at::Tensor> dequantized(int layer) const;

  /// \brief fp32/fp16 on CUDA: the new K/V are scattered to lengths[b], attention is SDPA in the
  /// storage dtype over max_tokens slots with a length mask (int8/fp8: not supported).
  bool supports_device_step() const override;
  at::Tensor device_step(int layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& lengths, const at::Tensor& lengths_after,
                         int64_t max_tokens) override;

 protected:
  at::ScalarType append_dtype(at::ScalarType given) const override;
  /// fp16 / fp32 on CUDA: copy_ reads any strides.
  bool append_keeps_strides() const override {
    return shape_.device.is_cuda() && (kind_ == CacheKind::kFp16 || kind_ == CacheKind::kFp32);
  }
  void do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                 const std::vector<int64_t>& starts, const std::vector<int64_t>& counts) override;
  void grow(int layer, int64_t tokens) override;
  at::Tensor do_attend(int layer, const at::Tensor& q) const override;

 private:
  struct Layer {
    at::Tensor k, v;              // [B, H, cap, d] storage dtype
    at::Tensor k_scale, v_scale;  // [B, H, cap] fp16 (int8 / fp8), else undefined
  };
  /// Quantizes x [B, H, T, d] fp32 to the storage dtype (+ per-row fp16 scales).
  std::pair<at::Tensor, at::Tensor> encode(const at::Tensor& x) const;
  at::Tensor decode(const at::Tensor& x, const at::Tensor& scale) const;

  CacheKind kind_;
  at::ScalarType storage_dtype_;
  std::vector<Layer> layers_;
};

/// \brief Creates a cache of `kind` for `batch` sequences of a model with `config`.
/// \param turbo the Turbo constants (required for CacheKind::kTurbo, ignored otherwise)
std::unique_ptr<KvCache> make_kv_cache(CacheKind kind, const EsmConfig& config, int batch,
                                       c10::Device device, const TurboCacheSpec* turbo = nullptr);

}  // namespace turboesm::model
