// SPDX-License-Identifier: MIT
#pragma once
/// \file value_fold.h
/// \brief Π_V folded into the value and output projections (DESIGN "The compressed cache").
///
/// The Turbo cache stores each value rotated, y = Π_V (v − μ_V), attention sums the rotated rows,
/// and its output is turned back by Π_Vᵀ — the last step of every decode kernel and a product per
/// value in every cache write. Per layer and head h, with the rows / columns of head h,
///   W_V ← Π_h W_V,   b_V ← Π_h b_V,   W_O ← W_O Π_hᵀ
/// is the same model in real arithmetic (attention mixes value rows linearly, so its output
/// arrives as Π_h o and W_O Π_hᵀ Π_h o = W_O o), whose values come out of the projection already
/// rotated. A spec whose V rotations are the identity and whose V means are Π_V μ_V then stores
/// what the original spec stored for the original model, and the kernels skip an identity
/// rotation (quant::HeadConstantsView::rotation_identity): no Π_V product in the prefill's cache
/// write, in the decode step's append, or in the split merge (CUDA), nor in the CPU cache's
/// append GEMM and decode.
///
/// The folded model is an ordinary model: any cache works with it (an FP16 cache, the folded spec,
/// even the original spec — another, equally valid quantizer of its values). It pairs with the
/// folded spec, which quantizes its values as the original spec quantized the original model's.
/// Folding computes the new weights in fp64 and rounds them once to the model dtype, so outputs
/// differ from the unfolded model's by that rounding.

#include <memory>

#include "turboesm/model/esm2.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm::model {

/// \brief A model and a spec with Π_V folded into the model.
struct ValueFold {
  /// Shares every tensor with the source model except the fused Q/K/V projection and W_O of each
  /// layer (650M fp16: 33 · 13 MB of new weights).
  std::shared_ptr<Esm2Model> model;
  TurboCacheSpec spec;  ///< every layer's V rotation the identity, V means rotated
};

/// \brief The spec half of the fold: `spec` with every layer's V rotation replaced by the identity
/// and its V mean μ_V (when centered) by Π_V μ_V; K constants, codebooks and scales unchanged.
/// \throws turboesm::Error when a layer's V constants lack a rotation.
TurboCacheSpec fold_value_spec(const TurboCacheSpec& spec);

/// \brief `model` with Π_V of `spec` folded into its weights, and fold_value_spec(spec).
/// \throws turboesm::Error when `spec` does not fit the model (TurboCacheSpec::validate).
ValueFold fold_value_rotation(const Esm2Model& model, const TurboCacheSpec& spec);

}  // namespace turboesm::model
