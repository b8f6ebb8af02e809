// SPDX-License-Identifier: MIT
#include "turboesm/model/mixed_cache.h"

#include <sstream>

#include "turboesm/error.h"

namespace turboesm::model {

// The sub-caches' appends run on this cache's side stream (KvCache::begin_side_writes): join
// before they free their buffers.
MixedKvCache::~MixedKvCache() { join_side_writes(); }

MixedKvCache::MixedKvCache(const CacheShape& shape, const TurboCacheSpec& turbo,
                           const std::map<int, CacheKind>& dense_layers,
                           const std::map<int, const TurboCacheSpec*>& turbo_layers)
    : KvCache(shape), summary_(turbo.summary()), dense_(dense_layers) {
  TURBOESM_CHECK(static_cast<int>(turbo.layers.size()) == shape.layers,
                 "mixed KV cache: the Turbo constants have ", turbo.layers.size(),
                 " layers, the model has ", shape.layers);
  for (const auto& [layer, kind] : dense_layers) {
    TURBOESM_CHECK(layer >= 0 && layer < shape.layers, "mixed KV cache: dense layer ", layer,
                   " out of range [0, ", shape.layers, ")");
    TURBOESM_CHECK(kind == CacheKind::kFp32 || kind == CacheKind::kFp16 ||
                       kind == CacheKind::kInt8 || kind == CacheKind::kFp8,
                   "mixed KV cache: layer ", layer, " must be fp32, fp16, int8 or fp8, got ",
                   to_string(kind));
  }
  for (const auto& [layer, spec] : turbo_layers) {
    TURBOESM_CHECK(layer >= 0 && layer < shape.layers, "mixed KV cache: Turbo layer ", layer,
                   " out of range [0, ", shape.layers, ")");
    TURBOESM_CHECK(dense_layers.count(layer) == 0, "mixed KV cache: layer ", layer,
                   " is both dense and under another Turbo spec");
    TURBOESM_CHECK(spec != nullptr && static_cast<int>(spec->layers.size()) == shape.layers,
                   "mixed KV cache: the Turbo spec of layer ", layer, " must hold ", shape.layers,
                   " layers of constants");
  }
  if (!dense_.empty()) {
    summary_ += "; dense layers";
    for (const auto& [layer, kind] : dense_)
      summary_ += " " + std::to_string(layer) + ":" + to_string(kind);
  }
  std::map<std::string, std::vector<int>> others;  // summary → layers
  for (const auto& [layer, spec] : turbo_layers) others[spec->summary()].push_back(layer);
  for (const auto& [text, layers] : others) {
    summary_ += "; layers";
    for (int l : layers) summary_ += " " + std::to_string(l);
    summary_ += ": " + text;
  }
  CacheShape one = shape;
  one.layers = 1;
  for (int l = 0; l < shape.layers; ++l) {
    const auto it = dense_layers.find(l);
    if (it != dense_layers.end()) {
      layers_.push_back(std::make_unique<DenseKvCache>(it->second, one));
    } else {
      const auto ot = turbo_layers.find(l);
      const TurboCacheSpec& src = ot != turbo_layers.end() ? *ot->second : turbo;
      TurboCacheSpec s = src;
      s.layers = {src.layers[static_cast<size_t>(l)]};
      layers_.push_back(std::make_unique<TurboKvCache>(one, s));
    }
  }
}

void MixedKvCache::check_device_status() {
  join_side_writes();
  for (auto& c : layers_) c->check_device_status();
}

int64_t MixedKvCache::allocated_bytes() const {
  int64_t b = 0;
  for (const auto& c : layers_) b += c->allocated_bytes();
  return b;
}

int64_t MixedKvCache::bytes_per_token_per_head() const {
  for (int l = 0; l < shape_.layers; ++l)
    if (dense_.count(l) == 0) return layer_bytes_per_token_per_head(l);
  return layer_bytes_per_token_per_head(0);  // every layer dense
}

int64_t MixedKvCache::layer_bytes_per_token_per_head(int layer) const {
  return layer_cache(layer).bytes_per_token_per_head();
}

int64_t MixedKvCache::kv_bytes() const {
  int64_t b = 0;
  for (int l = 0; l < shape_.layers; ++l)
    b += total_tokens(l) * shape_.heads * layer_bytes_per_token_per_head(l);
  return b;
}

int64_t MixedKvCache::capacity(int layer) const { return layer_cache(layer).capacity(0); }

CacheKind MixedKvCache::layer_kind(int layer) const { return layer_cache(layer).kind(); }

const KvCache& MixedKvCache::layer_cache(int layer) const {
  TURBOESM_CHECK(layer >= 0 && layer < shape_.layers, "mixed KV cache: layer ", layer,
                 " out of range [0, ", shape_.layers, ")");
  join_side_writes();  // the sub-caches' appends ran on this cache's side stream
  return *layers_[static_cast<size_t>(layer)];
}

std::string MixedKvCache::summary() const { return summary_; }

void MixedKvCache::do_append(int layer, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& starts,
                             const std::vector<int64_t>& counts) {
  KvCache& c = *layers_[static_cast<size_t>(layer)];
  // KvCache::clear() resets only this cache's lengths; follow it in the sub-cache.
  if (c.lengths(0) != starts) {
    bool all_zero = true;
    for (int64_t s : starts) all_zero = all_zero && s == 0;
    TURBOESM_CHECK(all_zero, "mixed KV cache: layer ", layer,
                   " sub-cache lengths differ from the cache's (internal error)");
    c.clear();
  }
  c.append(0, k, v, at::tensor(counts, at::kLong));
}

void MixedKvCache::grow(int, int64_t) {
  // The one-layer caches grow themselves inside append.
}

at::Tensor MixedKvCache::do_attend(int layer, const at::Tensor& q) const {
  return layers_[static_cast<size_t>(layer)]->attend(0, q);
}

std::vector<int> parse_layer_list(const std::string& list) {
  std::vector<int> out;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    size_t used = 0;
    int v = -1;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TURBOESM_CHECK(used == item.size() && v >= 0, "layer list '", list, "': '", item,
                   "' is not a non-negative layer index (expected e.g. 0 or 0,1)");
    out.push_back(v);
  }
  return out;
}

std::unique_ptr<KvCache> make_mixed_kv_cache(
    const EsmConfig& config, int batch, c10::Device device, const TurboCacheSpec& turbo,
    const std::map<int, CacheKind>& dense_layers,
    const std::map<int, const TurboCacheSpec*>& turbo_layers) {
  if (dense_layers.empty() && turbo_layers.empty())
    return make_kv_cache(CacheKind::kTurbo, config, batch, device, &turbo);
  turbo.validate(config);
  for (const auto& [layer, spec] : turbo_layers)
    if (spec != nullptr) spec->validate(config);
  return std::make_unique<MixedKvCache>(CacheShape::of(config, batch, device), turbo, dense_layers,
                                        turbo_layers);
}

}  // namespace turboesm::model
