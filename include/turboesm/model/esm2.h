// SPDX-License-Identifier: MIT
#pragma once
/// \file esm2.h
/// \brief The ESM-2 model (HF `EsmForMaskedLM` semantics), functional LibTorch.
///
/// forward() runs the whole model; the granular pieces (embed, layer_qkv, layer_finish,
/// final_norm, lm_head) are public so that a KV-cache Session can run the same layers token by
/// token. Activations stay in the model dtype; LayerNorm and softmax accumulate in fp32 and
/// rotary is applied in fp32, as HF does.

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/model/attention.h"
#include "turboesm/model/config.h"
#include "turboesm/model/rotary.h"
#include "turboesm/model/token_batch.h"
#include "turboesm/model/weights.h"

namespace turboesm::model {

struct ForwardOptions {
  bool need_logits = false;
  bool need_contacts = false;
  /// Layers whose output to return (fair-esm / HF hidden_states numbering): 0 = embeddings output,
  /// k = output of layer k (1-based), negative counts from the end (-1 = last layer, which is the
  /// output after emb_layer_norm_after, i.e. last_hidden_state, as in HF and fair-esm).
  std::vector<int> repr_layers;
  /// Attention implementation; nullptr = ExactAttention.
  AttentionBackend* backend = nullptr;
};

struct ForwardOutput {
  at::Tensor last_hidden_state;             ///< [B, T, hidden], after emb_layer_norm_after
  at::Tensor logits;                        ///< [B, T, vocab] (need_logits)
  at::Tensor contacts;                      ///< [B, T-2, T-2] fp32 (need_contacts)
  std::map<int, at::Tensor> hidden_states;  ///< normalized layer index (0..layers) → [B, T, hidden]
};

/// \brief Query, key and value of one layer, each [B, H, T, d] (q scaled, rotary applied).
struct Qkv {
  at::Tensor q, k, v;
};

class Esm2Model {
 public:
  /// \brief Loads config.json + safetensors weights from a HF model directory.
  static std::shared_ptr<Esm2Model> load(const std::string& dir, const LoadOptions& opts = {});
  /// \brief A random-init model with exactly the weights `turboesm-make-model` writes for the same
  /// config, seed and init_std (see random_init.h).
  static std::shared_ptr<Esm2Model> random(const EsmConfig& config, uint64_t seed, double init_std,
                                           const LoadOptions& opts = {});
  /// \brief A random-init model whose weights are drawn directly on `opts.device` in `opts.dtype`
  /// (device generator; see random_init.h random_tensor_source): no host copy, so the 15B shapes
  /// (~30 GB in fp16) build in seconds. The values differ from random() and make-model (another
  /// generator); for speed and memory measurements, not for parity with written checkpoints.
  static std::shared_ptr<Esm2Model> random_on_device(const EsmConfig& config, uint64_t seed,
                                                     double init_std, const LoadOptions& opts);
  /// \brief Builds a model from already loaded weights.
  Esm2Model(EsmConfig config, EsmWeights weights, const LoadOptions& opts);

  /// \brief Runs the model (inference mode).
  /// \param tokens [B, T] int64 token ids (right-padded with `<pad>`).
  /// \param attention_mask [B, T] (bool or integer, non-zero = real token), or undefined = all
  /// real.
  ForwardOutput forward(const at::Tensor& tokens, const at::Tensor& attention_mask,
                        const ForwardOptions& opts = {}) const;
  /// \brief The same on a batch already checked and moved by make_token_batch (token_batch.h)
  /// with this model's vocabulary and device (Session::prefill: checks once, no second copy).
  ForwardOutput forward(const TokenBatch& batch, const ForwardOptions& opts = {}) const;

  /// \brief Word embeddings + token dropout (+ emb_layer_norm_before) × mask: [B, T, hidden].
  at::Tensor embed(const at::Tensor& tokens, const at::Tensor& attention_mask) const;
  /// \brief As embed(), but token dropout uses a given observed `<mask>` ratio per sequence
  /// (Session: the ratio of the whole sequence so far), and the mask multiply is always applied.
  /// Device ops only (no host synchronisation), so it can be captured in a CUDA graph.
  /// \param tokens [B, T] int64; \param mask [B, T] bool; \param observed_mask_ratio [B] fp32
  /// (same device; ignored without token dropout). \return [B, T, hidden]
  at::Tensor embed_with_ratio(const at::Tensor& tokens, const at::Tensor& mask,
                              const at::Tensor& observed_mask_ratio) const;
  /// \brief A decode step's inputs in one CUDA launch (kernels/decode_embed.h): the hidden state
  /// of embed_with_ratio(tokens, all-true mask, observed) [B, 1, hidden], the rotary tables
  /// rotary().cos_sin(lengths as positions [B, 1], dtype()) [B, 1, d] fp32, and lengths + 1 —
  /// bit for bit the eager ops' values (~20 launches). Returns undefined tensors when the kernel
  /// does not apply (not CUDA, an embedding LayerNorm, other dtypes or devices than it takes,
  /// set_fused_step_inputs(false)): the caller then runs those ops. Capturable in a CUDA graph.
  /// \param tokens [B, 1] int64 ids in [0, vocab) (not checked on the device);
  /// \param observed_mask_ratio [B] fp32; \param lengths [B] int32 (the positions).
  struct StepInputs {
    at::Tensor hidden, cos, sin, after;
  };
  StepInputs decode_step_inputs(const at::Tensor& tokens, const at::Tensor& observed_mask_ratio,
                                const at::Tensor& lengths) const;
  /// \brief The first half of layer_qkv: pre-LN and the fused Q/K/V projection, [B, T, 3·hidden]
  /// (q, k, v of all heads in that order; the decode graph applies scaling and rotary in one
  /// kernel, kernels/qkv_rotary.h).
  at::Tensor layer_qkv_projection(int layer, const at::Tensor& hidden) const;
  /// \brief A decode step's q, k, v (T = 1) as fp32 [B, H, 1, d] — pre-LN, projection, Q scaling,
  /// rotary, the values of layer_qkv_projection + kernels::qkv_rotary_to_float — through one
  /// decode_gemv launch in its Q/K/V mode. Returns an empty Qkv when that kernel does not apply
  /// (not CUDA, not fp16/bf16, B > 8, the fused path off, or other tensors than it takes): the
  /// caller then runs the two-launch path. \param cos, sin [B, 1, d] fp32 contiguous tables.
  Qkv layer_qkv_step_float(int layer, const at::Tensor& hidden, const at::Tensor& cos,
                           const at::Tensor& sin) const;
  /// \brief Pre-LN, Q/K/V projections, reshape to [B, H, T, d], Q scaling, rotary.
  /// On CUDA (fp32/fp16/bf16, one rotary table [1, T, d] shared by the batch, i.e. positions [T]
  /// or [1, T]) the scaling, rotary and split run as one kernel (kernels/qkv_rotary.h
  /// qkv_rotary_split) with the same values, bit for bit, and the same q/k strides as the
  /// elementwise ATen ops it replaces; per-sequence tables [B > 1, T, d] take those ATen ops. See
  /// set_fused_qkv().
  /// \param hidden [B, T, hidden]; \param position_ids [B, T] or [T] int64 (0-based).
  Qkv layer_qkv(int layer, const at::Tensor& hidden, const at::Tensor& position_ids) const;
  /// \brief Same with precomputed rotary tables (rotary().cos_sin(positions, dtype())).
  Qkv layer_qkv(int layer, const at::Tensor& hidden, const at::Tensor& cos,
                const at::Tensor& sin) const;
  /// \brief Output projection + residual, then pre-LN FFN (GELU erf) + residual.
  /// \param hidden [B, T, hidden] layer input; \param attn_out [B, H, T, d], in the model dtype
  /// or fp32 (rounded to the model dtype first, as attn_out.to(dtype())). \return [B, T, hidden]
  /// On CUDA with one token per sequence (T = 1, B ≤ 8, fp16/bf16), layer_finish and the
  /// pre-LN projection of layer_qkv run as decode_gemv launches (kernels/decode_gemv.h): three
  /// launches here instead of ~8. See set_fused_decode_gemv().
  at::Tensor layer_finish(int layer, const at::Tensor& hidden, const at::Tensor& attn_out) const;
  /// \brief emb_layer_norm_after: [B, T, hidden] → [B, T, hidden].
  at::Tensor final_norm(const at::Tensor& hidden) const;
  /// \brief LM head on final-normed states: [B, T, hidden] → [B, T, vocab].
  at::Tensor lm_head(const at::Tensor& hidden) const;

  const EsmConfig& config() const { return config_; }
  const EsmWeights& weights() const { return weights_; }
  const Rotary& rotary() const { return rotary_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  int num_layers() const { return static_cast<int>(config_.num_hidden_layers); }

  /// \brief Enables (default) or disables the fused Q/K/V kernel of layer_qkv on CUDA; disabled,
  /// layer_qkv runs the elementwise ATen ops (the reference the kernel is tested against). Not
  /// synchronised: do not toggle while another thread runs this model.
  void set_fused_qkv(bool enabled) { fused_qkv_ = enabled; }
  bool fused_qkv() const { return fused_qkv_; }
  /// \brief Enables (default) or disables the single-token dense layers through decode_gemv on
  /// CUDA (layer_finish, layer_qkv_projection, layer_qkv); disabled, they run the eager ATen ops
  /// (LayerNorm, cuBLAS linear, GELU, add: the reference the kernel is tested against). Outputs
  /// differ from the eager ones by the order of the fp32 sums only. Not synchronised.
  void set_fused_decode_gemv(bool enabled) { fused_decode_gemv_ = enabled; }
  bool fused_decode_gemv() const { return fused_decode_gemv_; }
  /// \brief decode_gemv's grid (kernels::DecodeGemvParams::ctas_per_sm): 0 (default) as many
  /// CTAs per SM as fit, each looping over the product's tasks; k > 0 at most k; −1 one CTA per
  /// task. Outputs are the same bits for every value. Not synchronised.
  /// \throws turboesm::Error for values below −1.
  void set_decode_gemv_ctas_per_sm(int ctas_per_sm);
  int decode_gemv_ctas_per_sm() const { return decode_gemv_ctas_per_sm_; }
  /// \brief Warps per decode_gemv CTA of the one-row products (kernels::DecodeGemvParams::warps),
  /// per product: Q/K/V, output projection, FC1, FC2; 0 (default) the kernel's choice
  /// (kernels::kDecodeGemvDefaultQkvWarps for Q/K/V, kDecodeGemvDefaultWarps for the others),
  /// else 4, 8 or 16. Steps of several rows use 4. The same bits at any width.
  /// Not synchronised. \throws turboesm::Error for other values.
  void set_decode_gemv_warps(int qkv, int out, int fc1, int fc2);
  std::array<int, 4> decode_gemv_warps() const { return decode_gemv_warps_; }
  /// \brief Enables (default) or disables decode_step_inputs' kernel (disabled, it returns
  /// undefined tensors and the decode graph runs the eager embedding and rotary ops: the
  /// reference, and the benchmark's "before"). Not synchronised.
  void set_fused_step_inputs(bool enabled) { fused_step_inputs_ = enabled; }
  bool fused_step_inputs() const { return fused_step_inputs_; }

  /// \brief Maps a fair-esm style layer index (negative from the end) to 0..layers.
  /// \throws turboesm::Error naming the index and the valid range.
  int normalize_layer(int layer) const;

 private:
  at::Tensor layer_norm(const at::Tensor& x, const LayerNormWeights& w) const;
  /// Whether the dense layers of a step on `hidden` [B, T, hidden] take decode_gemv.
  bool use_decode_gemv(const at::Tensor& hidden) const;
  /// epilogue(W · LN(x) + b) through decode_gemv (`ln` null: no LayerNorm; see
  /// kernels/decode_gemv.h), or an undefined tensor when the kernel does not take these tensors
  /// (the caller then runs the eager ops).
  /// With `qkv` (and `rotary`, tables [B, 1, d] fp32): the Q/K/V mode, q/k/v fp32 [B, H, 1, d]
  /// allocated into *qkv (the returned tensor is then qkv->q).
  struct RotaryTables {
    at::Tensor cos, sin;
  };
  /// `product`: the index into decode_gemv_warps() (0 Q/K/V, 1 O, 2 FC1, 3 FC2).
  at::Tensor decode_gemv(int product, const at::Tensor& x, const LayerNormWeights* ln,
                         const at::Tensor& weight, const at::Tensor& bias, bool gelu,
                         const at::Tensor& residual, const RotaryTables* rotary = nullptr,
                         Qkv* qkv = nullptr) const;

  EsmConfig config_;
  EsmWeights weights_;
  Rotary rotary_;
  c10::Device device_;
  at::ScalarType dtype_;
  bool fused_qkv_ = true;
  bool fused_decode_gemv_ = true;
  int decode_gemv_ctas_per_sm_ = 0;
  std::array<int, 4> decode_gemv_warps_{};
  bool fused_step_inputs_ = true;
};

}  // namespace turboesm::model
