// SPDX-License-Identifier: MIT
// libFuzzer target: the calibration-checkpoint loader (calibration::parse_checkpoint: the
// safetensors header, the `turboesm` metadata JSON, the expected tensors and every value check
// — the same code calibration::read_checkpoint runs before it builds tensors), then
// check_checkpoint_model against the tiny preset.
//
// Invariants checked on success: one K and one V entry per layer; every array has exactly the
// numel of its tensor spec (absent ones empty); values finite, rotations orthogonal within the
// tolerance, codebooks ascending with midpoint boundaries, σ > 0, s ≥ 0; the metadata survives
// to_json -> from_json; and writing the arrays back (write_checkpoint_arrays) and reading that
// file gives the same arrays. On failure: turboesm::Error naming the input.
#include <cmath>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "turboesm/calibration/checkpoint_format.h"
#include "turboesm/error.h"
#include "turboesm/model/config.h"
#include "turboesm/quant/rotation.h"

namespace {

using turboesm::fuzz::ScratchFile;
using turboesm::fuzz::starts_with;
namespace cal = turboesm::calibration;
namespace io = turboesm::io;

constexpr const char* kName = "fuzz.turbo.safetensors";

io::SafetensorsLimits fuzz_limits() {
  io::SafetensorsLimits l;
  l.max_header_bytes = 1 << 16;
  l.max_tensors = 256;
  return l;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

void check_arrays(const cal::CheckpointArrays& ck) {
  const cal::CheckpointMetadata& m = ck.meta;
  FUZZ_CHECK(ck.k.size() == static_cast<size_t>(m.num_layers) && ck.v.size() == ck.k.size(),
             "layer count differs from the metadata");
  const int64_t H = m.num_heads, d = m.head_dim;
  size_t spec_i = 0;
  const auto specs = cal::checkpoint_tensor_specs(m);
  for (int l = 0; l < m.num_layers; ++l) {
    for (bool key : {true, false}) {
      const cal::CheckpointHeadArrays& a = key ? ck.k[l] : ck.v[l];
      const int64_t L = int64_t{1} << (key ? m.options.bits_k : m.options.bits_v);
      FUZZ_CHECK(static_cast<int64_t>(a.rotation.size()) == numel(specs.at(spec_i++).shape),
                 "rotation size");
      FUZZ_CHECK(static_cast<int64_t>(a.codebook.size()) == numel(specs.at(spec_i++).shape),
                 "codebook size");
      FUZZ_CHECK(static_cast<int64_t>(a.boundaries.size()) == H * (L - 1), "boundaries size");
      for (const auto* opt : {&a.scale, &a.mean, &a.qjl_scale, &a.qjl_projection})
        if (!opt->empty())
          FUZZ_CHECK(static_cast<int64_t>(opt->size()) == numel(specs.at(spec_i++).shape),
                     "optional array size");
      for (int64_t h = 0; h < H; ++h) {
        FUZZ_CHECK(turboesm::quant::orthogonality_error(a.rotation.data() + h * d * d,
                                                        static_cast<int>(d)) <=
                       turboesm::quant::kOrthogonalityTolerance,
                   "non-orthogonal rotation accepted");
        for (int64_t i = 0; i + 1 < L; ++i) {
          const float lo = a.codebook[h * L + i], hi = a.codebook[h * L + i + 1];
          const float b = a.boundaries[h * (L - 1) + i];
          FUZZ_CHECK(std::isfinite(lo) && lo <= hi && lo <= b && b <= hi,
                     "codebook not ascending or boundary outside its cell");
        }
      }
      for (float s : a.scale) FUZZ_CHECK(s > 0.0f && std::isfinite(s), "scale <= 0 accepted");
      for (float s : a.qjl_scale) FUZZ_CHECK(s >= 0.0f && std::isfinite(s), "qjl_scale < 0");
      for (float x : a.mean) FUZZ_CHECK(std::isfinite(x), "non-finite mean accepted");
      for (float x : a.qjl_projection) FUZZ_CHECK(std::isfinite(x), "non-finite S accepted");
    }
  }
  FUZZ_CHECK(spec_i == specs.size(), "arrays do not cover the tensor specs");
}

bool same(const cal::CheckpointArrays& a, const cal::CheckpointArrays& b) {
  auto eq = [](const cal::CheckpointHeadArrays& x, const cal::CheckpointHeadArrays& y) {
    return x.rotation == y.rotation && x.codebook == y.codebook && x.boundaries == y.boundaries &&
           x.scale == y.scale && x.mean == y.mean && x.qjl_scale == y.qjl_scale &&
           x.qjl_projection == y.qjl_projection;
  };
  if (a.k.size() != b.k.size() || a.v.size() != b.v.size()) return false;
  for (size_t l = 0; l < a.k.size(); ++l)
    if (!eq(a.k[l], b.k[l]) || !eq(a.v[l], b.v[l])) return false;
  return a.meta.to_json() == b.meta.to_json();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  cal::CheckpointArrays ck;
  try {
    ck = cal::parse_checkpoint(data, size, kName, fuzz_limits());
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(starts_with(e.what(), kName),
               std::string("error does not name the input: ") + e.what());
    return 0;
  }
  check_arrays(ck);

  const cal::CheckpointMetadata again =
      cal::CheckpointMetadata::from_json(ck.meta.to_json(), kName);
  FUZZ_CHECK(again.to_json() == ck.meta.to_json(), "metadata to_json/from_json round trip");

  static ScratchFile scratch(".turbo.safetensors");
  cal::write_checkpoint_arrays(scratch.path(), ck, /*overwrite=*/true);
  FUZZ_CHECK(same(cal::read_checkpoint_arrays(scratch.path()), ck),
             "write_checkpoint_arrays -> read_checkpoint_arrays changed the checkpoint");

  // The model check must accept or refuse with an error naming the input, never crash.
  static const turboesm::model::EsmConfig tiny = turboesm::model::EsmConfig::preset("tiny");
  try {
    cal::check_checkpoint_model(ck.meta, tiny, ck.meta.model_fingerprint, kName);
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(starts_with(e.what(), kName),
               std::string("model check error does not name the input: ") + e.what());
  }
  return 0;
}
