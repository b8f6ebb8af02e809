// SPDX-License-Identifier: MIT
#include "turboesm/model/value_fold.h"

#include <string>
#include <utility>

#include "turboesm/error.h"

namespace turboesm::model {

TurboCacheSpec fold_value_spec(const TurboCacheSpec& spec) {
  TurboCacheSpec out = spec;
  for (size_t l = 0; l < out.layers.size(); ++l) {
    TurboHeadConstants& v = out.layers[l].v;
    TURBOESM_CHECK(
        v.rotation.defined() && v.rotation.dim() == 3 && v.rotation.size(1) == v.rotation.size(2),
        "fold_value_spec: layer ", l, "'s V rotation must be [heads, d, d], got ",
        v.rotation.defined() ? c10::str(v.rotation.sizes()) : std::string("none"));
    const at::Tensor rot = v.rotation.to(at::kDouble);  // [H, d, d]
    if (v.mean.defined()) {
      // μ' = Π μ per head, so that y = Π (v − μ) = Π v − μ'.
      v.mean = at::matmul(rot, v.mean.to(at::kDouble).unsqueeze(-1))
                   .squeeze(-1)
                   .to(v.mean.scalar_type())
                   .contiguous();
    }
    v.rotation = at::eye(rot.size(1), v.rotation.options()).expand_as(v.rotation).contiguous();
    v.rotation_f16 = at::Tensor();
    v.rotation_f16_lo = at::Tensor();
    v.rotation_identity = false;  // derived again by TurboHeadConstants::to
  }
  out.description = spec.description + " (V rotation folded into the model's W_V and W_O)";
  return out;
}

ValueFold fold_value_rotation(const Esm2Model& model, const TurboCacheSpec& spec) {
  const EsmConfig& cfg = model.config();
  spec.validate(cfg);
  const int64_t E = cfg.hidden_size, H = cfg.num_attention_heads, d = cfg.head_dim();
  EsmWeights w = model.weights();  // shares every tensor; the projections are replaced below
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    const at::Tensor rot = spec.layers[l].v.rotation.to(L.qkv_weight.device(), at::kDouble);
    // W_V rows of head h: Π_h W_V[h] ([H, d, d] @ [H, d, E]); b_V likewise.
    const at::Tensor wv = at::matmul(rot, L.v_weight.to(at::kDouble).reshape({H, d, E}));
    const at::Tensor bv = at::matmul(rot, L.v_bias.to(at::kDouble).reshape({H, d, 1}));
    // W_O columns of head h: W_O[:, h] Π_hᵀ, i.e. W_O'[e, h, i] = Σ_j W_O[e, h, j] Π_h[i, j].
    const at::Tensor wo =
        at::einsum("ehj,hij->ehi", {L.o_weight.to(at::kDouble).reshape({E, H, d}), rot});
    at::Tensor qkv_w = L.qkv_weight.clone();
    at::Tensor qkv_b = L.qkv_bias.clone();
    qkv_w.narrow(0, 2 * E, E).copy_(wv.reshape({E, E}));
    qkv_b.narrow(0, 2 * E, E).copy_(bv.reshape({E}));
    L.qkv_weight = qkv_w;
    L.qkv_bias = qkv_b;
    L.q_weight = qkv_w.narrow(0, 0, E);
    L.k_weight = qkv_w.narrow(0, E, E);
    L.v_weight = qkv_w.narrow(0, 2 * E, E);
    L.q_bias = qkv_b.narrow(0, 0, E);
    L.k_bias = qkv_b.narrow(0, E, E);
    L.v_bias = qkv_b.narrow(0, 2 * E, E);
    L.o_weight = wo.reshape({E, E}).to(L.o_weight.scalar_type()).contiguous();
  }
  LoadOptions opts;
  opts.device = model.device();
  opts.dtype = model.dtype();
  opts.check_finite = false;  // the source model's weights were checked; Π is orthogonal
  ValueFold out;
  out.model = std::make_shared<Esm2Model>(cfg, std::move(w), opts);
  out.spec = fold_value_spec(spec);
  return out;
}

}  // namespace turboesm::model
