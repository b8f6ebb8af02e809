// SPDX-License-Identifier: MIT
#include "turboesm/calibration/collector.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"
#include "turboesm/io/safetensors_writer.h"
#include "turboesm/io/tokenizer.h"

namespace turboesm::calibration {

CollectionPlan plan_collection(const std::vector<int64_t>& lengths, int64_t max_tokens) {
  TURBOESM_CHECK(!lengths.empty(), "calibration needs at least one record, got 0");
  TURBOESM_CHECK(max_tokens > 0, "max_tokens must be > 0, got ", max_tokens);
  int64_t total = 0;
  for (int64_t l : lengths) total += l + 2;  // <cls> + residues + <eos>
  const int64_t stride = std::max<int64_t>(1, (total + max_tokens - 1) / max_tokens);
  const size_t n = lengths.size();
  CollectionPlan plan;
  int64_t left = max_tokens;
  for (int64_t r = 0; r < stride && left > 0; ++r) {
    for (size_t i = static_cast<size_t>(r); i < n && left > 0; i += static_cast<size_t>(stride)) {
      const int64_t take = std::min(lengths[i] + 2, left);
      plan.order.push_back(i);
      plan.keep_tokens.push_back(take);
      plan.total_tokens += take;
      left -= take;
    }
  }
  return plan;
}

KvRecorder::KvRecorder(int layers, int heads, int head_dim, int64_t capacity, bool record_queries)
    : heads_(heads), head_dim_(head_dim), capacity_(capacity), record_queries_(record_queries) {
  TURBOESM_CHECK(layers > 0 && heads > 0 && head_dim > 0 && capacity > 0,
                 "KvRecorder: layers, heads, head_dim and capacity must be > 0, got ", layers, ", ",
                 heads, ", ", head_dim, ", ", capacity);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  buffers_.resize(static_cast<size_t>(layers));
  for (auto& b : buffers_) {
    b.k = at::empty({heads, capacity, head_dim}, opts);
    b.v = at::empty({heads, capacity, head_dim}, opts);
    if (record_queries) b.q = at::empty({heads, capacity, head_dim}, opts);
  }
}

void KvRecorder::begin_record(int64_t keep) {
  TURBOESM_CHECK(keep >= 0 && offset_ + keep <= capacity_, "KvRecorder: ", keep,
                 " more tokens exceed the capacity ", capacity_, " (", offset_, " recorded)");
  keep_ = keep;
}

void KvRecorder::end_record() {
  offset_ += keep_;
  keep_ = 0;
}

at::Tensor KvRecorder::attend(const model::AttentionInputs& in, at::Tensor* probs_out) {
  TURBOESM_CHECK(in.layer >= 0 && in.layer < static_cast<int>(buffers_.size()),
                 "KvRecorder: layer ", in.layer, " outside [0, ", buffers_.size(), ")");
  TURBOESM_CHECK(
      in.k.dim() == 4 && in.k.size(0) == 1 && in.k.size(1) == heads_ && in.k.size(3) == head_dim_,
      "KvRecorder: k must be [1, ", heads_, ", T, ", head_dim_, "], got ", in.k.sizes());
  const int64_t keep = std::min(keep_, in.k.size(2));
  if (keep > 0) {
    LayerSamples& b = buffers_[static_cast<size_t>(in.layer)];
    auto store = [&](at::Tensor& dst, const at::Tensor& src) {
      dst.narrow(1, offset_, keep).copy_(src[0].narrow(1, 0, keep).to(at::kCPU, at::kFloat));
    };
    store(b.k, in.k);
    store(b.v, in.v);
    if (record_queries_) store(b.q, in.q);
  }
  return exact_.attend(in, probs_out);
}

std::vector<LayerSamples> KvRecorder::take() {
  std::vector<LayerSamples> out = std::move(buffers_);
  buffers_.clear();
  for (auto& b : out) {
    b.k = b.k.narrow(1, 0, offset_).contiguous();
    b.v = b.v.narrow(1, 0, offset_).contiguous();
    if (b.q.defined()) b.q = b.q.narrow(1, 0, offset_).contiguous();
  }
  return out;
}

std::vector<int64_t> record_token_ids(const io::FastaRecord& record, int64_t max_residues) {
  TURBOESM_CHECK(max_residues > 0, "max_residues must be > 0, got ", max_residues);
  std::vector<int64_t> res = io::EsmTokenizer::instance().encode(
      record.sequence, /*add_special=*/false, /*unknown_to_unk=*/false, record.id);
  TURBOESM_CHECK(!res.empty(), "record '", record.id, "' has no residues");
  if (static_cast<int64_t>(res.size()) > max_residues)
    res.resize(static_cast<size_t>(max_residues));
  std::vector<int64_t> ids;
  ids.reserve(res.size() + 2);
  ids.push_back(io::EsmTokenizer::kCls);
  ids.insert(ids.end(), res.begin(), res.end());
  ids.push_back(io::EsmTokenizer::kEos);
  return ids;
}

CollectedSamples collect_kv_samples(const model::Esm2Model& model,
                                    const std::vector<io::FastaRecord>& records,
                                    const CollectorOptions& opts) {
  TURBOESM_CHECK(!records.empty(), "calibration needs at least one FASTA record, got 0");
  TURBOESM_CHECK(opts.max_residues > 0, "max_residues must be > 0, got ", opts.max_residues);
  TURBOESM_CHECK(model.dtype() == at::kFloat,
                 "calibration runs the FP32 model; this model runs in ",
                 c10::toString(model.dtype()), " (load it with dtype fp32)");
  std::vector<std::vector<int64_t>> ids(records.size());
  std::vector<int64_t> lengths(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    ids[i] = record_token_ids(records[i], opts.max_residues);
    lengths[i] = static_cast<int64_t>(ids[i].size()) - 2;
  }
  const CollectionPlan plan = plan_collection(lengths, opts.max_tokens);
  const auto& cfg = model.config();
  CollectedSamples out;
  out.heads = static_cast<int>(cfg.num_attention_heads);
  out.head_dim = static_cast<int>(cfg.head_dim());
  out.records_total = static_cast<int64_t>(records.size());
  KvRecorder rec(model.num_layers(), out.heads, out.head_dim, plan.total_tokens,
                 opts.collect_queries);
  c10::InferenceMode guard;
  for (size_t k = 0; k < plan.order.size(); ++k) {
    at::Tensor tokens = at::tensor(ids[plan.order[k]], at::kLong).view({1, -1});
    model::ForwardOptions fo;
    fo.backend = &rec;
    rec.begin_record(plan.keep_tokens[k]);
    model.forward(tokens, at::Tensor(), fo);
    rec.end_record();
    if (opts.progress) opts.progress(rec.size(), plan.total_tokens);
  }
  out.records_used = static_cast<int64_t>(plan.order.size());
  out.tokens = rec.size();
  out.layers = rec.take();
  return out;
}

void save_samples(const std::string& path, const CollectedSamples& samples, const std::string& key,
                  bool overwrite) {
  std::vector<io::TensorView> views;
  for (size_t l = 0; l < samples.layers.size(); ++l) {
    for (bool k : {true, false}) {
      const at::Tensor& t = k ? samples.layers[l].k : samples.layers[l].v;
      TURBOESM_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat && t.dim() == 3,
                     "save_samples: layer ", l, " must be contiguous fp32 [H, n, d]");
      io::TensorView v;
      v.name = "layers." + std::to_string(l) + (k ? ".k" : ".v");
      v.shape.assign(t.sizes().begin(), t.sizes().end());
      v.data = t.data_ptr<float>();
      views.push_back(std::move(v));
    }
  }
  io::WriteOptions wo;
  wo.overwrite = overwrite;
  wo.metadata["turboesm_samples"] = key;
  wo.metadata["records_used"] = std::to_string(samples.records_used);
  wo.metadata["records_total"] = std::to_string(samples.records_total);
  io::write_safetensors(path, views, wo);
}

CollectedSamples load_samples(const std::string& path, const std::string& key) {
  const io::SafetensorsFile f(path);
  const auto it = f.metadata().find("turboesm_samples");
  TURBOESM_CHECK(it != f.metadata().end(), path, ": not a TurboESM samples file");
  TURBOESM_CHECK(it->second == key, path,
                 ": these samples were collected for a different model, FASTA or collection "
                 "options (delete the file or use another path)");
  CollectedSamples out;
  for (int l = 0;; ++l) {
    const io::TensorInfo* k = f.find("layers." + std::to_string(l) + ".k");
    const io::TensorInfo* v = f.find("layers." + std::to_string(l) + ".v");
    if (k == nullptr && v == nullptr) break;
    TURBOESM_CHECK(k && v && k->dtype == io::DType::F32 && v->dtype == io::DType::F32 &&
                       k->shape.size() == 3 && k->shape == v->shape,
                   path, ": layer ", l, " needs F32 k and v of equal shape [H, n, d]");
    LayerSamples ls;
    ls.k = at::empty(k->shape, at::kFloat);
    ls.v = at::empty(v->shape, at::kFloat);
    std::memcpy(ls.k.data_ptr<float>(), f.data(*k), k->nbytes());
    std::memcpy(ls.v.data_ptr<float>(), f.data(*v), v->nbytes());
    out.heads = static_cast<int>(k->shape[0]);
    out.tokens = k->shape[1];
    out.head_dim = static_cast<int>(k->shape[2]);
    out.layers.push_back(std::move(ls));
  }
  TURBOESM_CHECK(!out.layers.empty(), path, ": no samples");
  out.records_used =
      std::stoll(f.metadata().count("records_used") ? f.metadata().at("records_used") : "0");
  out.records_total =
      std::stoll(f.metadata().count("records_total") ? f.metadata().at("records_total") : "0");
  return out;
}

}  // namespace turboesm::calibration
