// SPDX-License-Identifier: MIT
/// \file turbo_decode.cu
/// \brief Host side of the fused decode attention: argument checks, split-K choice, workspace
/// carving, and the (bits, head_dim) dispatch onto the explicit instantiations in
/// kernels/instances/ (one file each; the case lists below must match them exactly).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "turbo_decode_launch.cuh"
#include "turboesm/kernels/decode_timeline.h"
#include "turboesm/kernels/turbo_decode.h"

namespace turboesm::kernels {
namespace detail {

// The compiled instantiations (kernels/instances/turbo_decode_b{BITS}_d{D}.cu).
TURBOESM_DECODE_INSTANCE(extern, 2, 16);
TURBOESM_DECODE_INSTANCE(extern, 2, 24);
TURBOESM_DECODE_INSTANCE(extern, 2, 32);
TURBOESM_DECODE_INSTANCE(extern, 2, 64);
TURBOESM_DECODE_INSTANCE(extern, 2, 128);
TURBOESM_DECODE_INSTANCE(extern, 3, 16);
TURBOESM_DECODE_INSTANCE(extern, 3, 24);
TURBOESM_DECODE_INSTANCE(extern, 3, 32);
TURBOESM_DECODE_INSTANCE(extern, 3, 64);
TURBOESM_DECODE_INSTANCE(extern, 3, 128);
TURBOESM_DECODE_INSTANCE(extern, 4, 16);
TURBOESM_DECODE_INSTANCE(extern, 4, 24);
TURBOESM_DECODE_INSTANCE(extern, 4, 32);
TURBOESM_DECODE_INSTANCE(extern, 4, 64);
TURBOESM_DECODE_INSTANCE(extern, 4, 128);

namespace {

/// Resident CTAs of turbo_decode_kernel per SM assumed by the split choice: the kernel is
/// compiled for it (__launch_bounds__ minimum blocks; 128 registers, ≤ 22 KB static smem).
int ctas_per_sm(int /*head_dim*/) { return kDecodeMinBlocksPerSm; }

template <int D>
cudaError_t dispatch_bits(int bits, const DecodeLaunch& l, cudaStream_t s) {
  switch (bits) {
    case 2:
      return launch_turbo_decode<2, D>(l, s);
    case 3:
      return launch_turbo_decode<3, D>(l, s);
    case 4:
      return launch_turbo_decode<4, D>(l, s);
    default:
      return cudaErrorInvalidValue;  // "unsupported bits (supported: 2, 3, 4)"
  }
}

cudaError_t dispatch(int bits, int head_dim, const DecodeLaunch& l, cudaStream_t s) {
  switch (head_dim) {
    case 16:
      return dispatch_bits<16>(bits, l, s);
    case 24:
      return dispatch_bits<24>(bits, l, s);
    case 32:
      return dispatch_bits<32>(bits, l, s);
    case 64:
      return dispatch_bits<64>(bits, l, s);
    case 128:
      return dispatch_bits<128>(bits, l, s);
    default:
      return cudaErrorInvalidValue;  // "unsupported head_dim (supported: 16, 24, ...)"
  }
}

std::atomic<bool> g_fused_merge{true};
std::atomic<bool> g_wide_ctas{true};
std::atomic<bool> g_staged{true};
std::atomic<bool> g_ring{true};
// decode_timeline.h: the buffer the next launches stamp (diagnostic builds only).
void* g_timeline = nullptr;
uint32_t g_timeline_capacity = 0;
#if TURBOESM_DECODE_TIMELINE
std::atomic<uint32_t> g_timeline_launches{0};
#endif

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

/// Workspace bytes for `splits` splits (0 for one split).
size_t workspace_for(const quant::DecodeParams& p, int splits) {
  if (splits <= 1) return 0;
  const size_t parts = static_cast<size_t>(p.batch) * p.heads * p.q_len * splits;
  return align16(parts * p.head_dim * sizeof(float)) + 2 * align16(parts * sizeof(float));
}

/// The most splits in [min_splits, want] whose partials fit in `bytes` (min_splits when none do;
/// the caller checks that case).
int splits_that_fit(const quant::DecodeParams& p, int want, int min_splits, size_t bytes) {
  int splits = want;
  while (splits > min_splits && workspace_for(p, splits) > bytes) --splits;
  return splits;
}

const char* check_cache(const quant::CacheView& c, int heads, int head_dim) {
  const quant::PageLayout& l = c.layout;
  if (l.head_dim != head_dim) return "cache layout head_dim differs from DecodeParams::head_dim";
  if (c.pages == nullptr) return "cache pages pointer is null";
  if (!aligned16(c.pages) || c.seq_stride % 16 != 0 || c.head_stride % 16 != 0 ||
      l.page_bytes % 16 != 0)
    return "cache pages, seq_stride, head_stride and page_bytes must be multiples of 16 bytes";
  if (c.max_pages < 0 || l.page_tokens <= 0) return "cache max_pages/page_tokens out of range";
  if (static_cast<int64_t>(c.max_pages) * l.page_bytes > c.head_stride && heads > 1)
    return "cache head_stride is smaller than max_pages * page_bytes";
  if (c.constants.rotation == nullptr || c.constants.centroids == nullptr)
    return "cache constants: rotation and centroids are required";
  if (l.norm != quant::NormMode::kNone && l.norm != quant::NormMode::kToken)
    return "cache norm mode invalid";
  return nullptr;
}

}  // namespace
}  // namespace detail

const char* turbo_decode_invalid_reason(const quant::DecodeParams& p) {
  using quant::QjlMode;
  if (p.batch < 0 || p.heads < 0 || p.q_len < 0) return "batch, heads and q_len must be >= 0";
  if (!quant::is_supported_head_dim(p.head_dim))
    return "unsupported head_dim (supported: 16, 24, 32, 64, 128)";
  if (p.k.layout.bits != p.v.layout.bits)
    return "K and V must have the same bits (compiled instantiations: bits 2, 3, 4 for both)";
  if (p.k.layout.bits < 2 || p.k.layout.bits > 4)
    return "unsupported bits (compiled instantiations: 2, 3, 4)";
  if (p.batch * p.heads * p.q_len == 0) return nullptr;  // nothing to do
  if (p.q == nullptr || p.out == nullptr || p.lengths == nullptr)
    return "q, out and lengths must be non-null device pointers";
  if (!std::isfinite(p.sm_scale)) return "sm_scale must be finite";
  if (const char* e = detail::check_cache(p.k, p.heads, p.head_dim)) return e;
  if (const char* e = detail::check_cache(p.v, p.heads, p.head_dim)) return e;
  if (p.k.layout.page_tokens != p.v.layout.page_tokens)
    return "K and V caches must have the same page_tokens";
  if (p.v.layout.qjl != QjlMode::kNone) return "V cache with QJL bits is not supported (K only)";
  const QjlMode qjl = p.k.layout.qjl;
  if (qjl == QjlMode::kSign &&
      (p.k.constants.qjl_scale == nullptr || p.k.layout.qjl_dim != p.head_dim))
    return "K QJL sign mode needs constants.qjl_scale [heads] and qjl_dim == head_dim";
  if (qjl == QjlMode::kProd && (p.k.constants.qjl_proj == nullptr || p.k.layout.qjl_dim <= 0 ||
                                p.k.layout.qjl_dim % 8 != 0 || p.k.layout.qjl_dim > 8 * p.head_dim))
    return "K QJL prod mode needs constants.qjl_proj [heads, m, head_dim], m a multiple of 8 "
           "in [8, 8 * head_dim]";
  if (qjl != QjlMode::kNone && qjl != QjlMode::kSign && qjl != QjlMode::kProd)
    return "K QJL mode invalid";
  if ((reinterpret_cast<uintptr_t>(p.split_counters) & 3u) != 0)
    return "split_counters must be 4-byte aligned";
  return nullptr;
}

void set_turbo_decode_fused_merge(bool enabled) { detail::g_fused_merge.store(enabled); }
void set_turbo_decode_wide_ctas(bool enabled) { detail::g_wide_ctas.store(enabled); }
bool turbo_decode_wide_ctas() { return detail::g_wide_ctas.load(); }
void set_turbo_decode_staged(bool enabled) { detail::g_staged.store(enabled); }
bool turbo_decode_staged() { return detail::g_staged.load(); }
void set_turbo_decode_ring(bool enabled) { detail::g_ring.store(enabled); }
bool turbo_decode_ring() { return detail::g_ring.load(); }

bool turbo_decode_ring_applies(const quant::DecodeParams& p) {
  static_assert(detail::kDecodeRing<2, 64> && !detail::kDecodeRing<3, 64> &&
                    !detail::kDecodeRing<2, 32> && detail::kDecodeModeVariants<2, 64>,
                "turbo_decode_ring_applies must name the instances that compile the ring");
  // The instances with a ring: detail::kDecodeRing (2 bits, head_dim 64), fixed-mode variants
  // (norm none on both sides, K QJL none or sign); they have no wide kernel. The pages and
  // their strides are 16-byte aligned (turbo_decode_invalid_reason), and so are a page's regions
  // (format.h); whole chunks of a region start at multiples of 32 records.
  return detail::g_ring.load() && p.k.layout.bits == 2 && p.head_dim == 64 &&
         detail::decode_variant(p) != detail::DecodeVariant::kGeneral &&
         p.k.layout.page_tokens % detail::kRingChunk == 0;
}
static_assert(detail::kDecodeWideCtas<3, 16> && detail::kDecodeWideCtas<4, 64> &&
                  !detail::kDecodeWideCtas<2, 64> && !detail::kDecodeWideCtas<3, 128>,
              "turbo_decode_wide_applies must name the instances that compile a wide kernel");
bool turbo_decode_wide_applies(int bits, int head_dim, int64_t rows, int splits, int num_sms) {
  // The instances with a wide kernel: detail::kDecodeWideCtas (3 and 4 bits, D ≤ 64, the general
  // variant only: those (BITS, D) compile no fixed-mode variants).
  return detail::g_wide_ctas.load() && (bits == 3 || bits == 4) && head_dim <= 64 &&
         rows * splits <= num_sms;
}

bool decode_timeline_compiled() { return TURBOESM_DECODE_TIMELINE != 0; }

bool set_decode_timeline(void* buffer, size_t capacity) {
  if (!decode_timeline_compiled()) return false;
  detail::g_timeline = buffer;
  detail::g_timeline_capacity =
      static_cast<uint32_t>(std::min<size_t>(capacity, std::numeric_limits<uint32_t>::max()));
  return true;
}
bool turbo_decode_fused_merge() { return detail::g_fused_merge.load(); }

int turbo_decode_num_splits(const quant::DecodeParams& p, int num_sms) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads * p.q_len;
  if (p.num_splits > 0) return std::min(p.num_splits, kMaxSplits);
  if (rows <= 0 || num_sms <= 0) return 1;
  const int64_t capacity = static_cast<int64_t>(p.k.max_pages) * p.k.layout.page_tokens;
  const int smax = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(kMaxSplits, capacity / kMinTokensPerSplit)));
  const int64_t slots = static_cast<int64_t>(num_sms) * detail::ctas_per_sm(p.head_dim);
  // Time ∝ waves × (tokens per split + a CTA's fixed work) + a cost per split (its partial, the
  // merge's read of it), both in token units. Fitted on the H200 sweeps (kernels/NOTES.md,
  // session 11): B1 H20 d64 T16384 runs best at 12–16 splits (26.2–27.0 µs; the 26 of a cost
  // without the per-split term, 30.4 µs), T1024 at 4; the per-CTA term keeps many-row shapes
  // from trading whole waves for shorter splits.
  constexpr int64_t kCtaCostTokens = 512, kSplitCostTokens = 64;
  int best = 1;
  int64_t best_cost = INT64_MAX;
  for (int s = 1; s <= smax; ++s) {
    const int64_t waves = (rows * s + slots - 1) / slots;
    const int64_t cost = waves * ((capacity + s - 1) / s + kCtaCostTokens) + kSplitCostTokens * s;
    if (cost < best_cost) {
      best_cost = cost;
      best = s;
    }
  }
  return best;
}

size_t turbo_decode_workspace_bytes(const quant::DecodeParams& p, int num_sms) {
  return detail::workspace_for(p, turbo_decode_num_splits(p, num_sms));
}

namespace {

/// The current device's SM count (0 and the error on failure).
cudaError_t current_sms(int* sms) {
  int device = 0;
  const cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device);
}

/// The switch is on and the cache modes are the staged kernel's (K without QJL bits; the
/// instances with a wide kernel are checked by turbo_decode_wide_applies).
bool staged_kind_applies(const quant::DecodeParams& p) {
  return detail::g_staged.load() && p.k.layout.qjl == quant::QjlMode::kNone;
}

/// min(K, V) allocated positions per (b, h): lengths are clamped to it.
int64_t view_capacity(const quant::DecodeParams& p) {
  return std::min<int64_t>(static_cast<int64_t>(p.k.max_pages) * p.k.layout.page_tokens,
                           static_cast<int64_t>(p.v.max_pages) * p.v.layout.page_tokens);
}

/// A turbo_decode_append launch of `splits` splits (the last one the new token's) whose CTAs are
/// 8-warp ones can run the staged kernel (turbo_decode_staged.cuh): the switch, the modes, and
/// every cached split within kDecodeStagedTokens positions (the cached ones are at most the
/// capacity).
bool staged_fits(const quant::DecodeParams& p, int splits) {
  return staged_kind_applies(p) && splits >= 2 &&
         (view_capacity(p) + splits - 2) / (splits - 1) <= kDecodeStagedTokens;
}

/// A turbo_decode_append launch of `splits` splits on `sms` SMs runs the staged kernel: 8-warp
/// CTAs (turbo_decode_wide_applies) and staged_fits.
bool staged_launch(const quant::DecodeParams& p, int splits, int sms) {
  return turbo_decode_wide_applies(p.k.layout.bits, p.head_dim,
                                   static_cast<int64_t>(p.batch) * p.heads * p.q_len, splits,
                                   sms) &&
         staged_fits(p, splits);
}

/// Cached-position splits of turbo_decode_append: turbo_decode_num_splits, raised (automatic
/// choice only) to ceil(capacity / kDecodeStagedTokens) where the staged kernel would apply and
/// every CTA still has an SM, so that each cached split fits the staged kernel's shared memory.
int append_cached_splits(const quant::DecodeParams& p, int sms) {
  const int auto_splits = turbo_decode_num_splits(p, sms);
  if (p.num_splits > 0 || !staged_kind_applies(p)) return auto_splits;
  const int64_t need = (view_capacity(p) + kDecodeStagedTokens - 1) / kDecodeStagedTokens;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads;
  if (need <= auto_splits || need > kMaxSplits - 1 ||
      !turbo_decode_wide_applies(p.k.layout.bits, p.head_dim, rows, static_cast<int>(need) + 1,
                                 sms))
    return auto_splits;
  return static_cast<int>(need);
}

/// Fills the launch description for `splits` splits and launches (workspace large enough) on a
/// device of `sms` SMs.
cudaError_t launch(const quant::DecodeParams& p, const DecodeAppend* app, int splits, int sms,
                   void* workspace, cudaStream_t stream) {
  detail::DecodeLaunch l;
  l.p = p;
  // 8 warps per CTA where every CTA has an SM to itself (set_turbo_decode_wide_ctas).
  l.wide = turbo_decode_wide_applies(
      p.k.layout.bits, p.head_dim, static_cast<int64_t>(p.batch) * p.heads * p.q_len, splits, sms);
  if (app != nullptr) {
    l.append = true;
    l.app = *app;
  }
  if (!detail::g_fused_merge.load()) l.p.split_counters = nullptr;
#if TURBOESM_DECODE_TIMELINE
  l.timeline = detail::g_timeline;
  l.timeline_capacity = detail::g_timeline_capacity;
  l.timeline_launch = detail::g_timeline_launches.fetch_add(1);
#endif
  l.num_splits = splits;
  l.qjl_m = p.k.layout.qjl == quant::QjlMode::kNone ? 0 : p.k.layout.qjl_dim;
  l.capacity = static_cast<int>(view_capacity(p));
  l.staged = app != nullptr && staged_launch(p, splits, sms);
  l.ring = app == nullptr && turbo_decode_ring_applies(p);
  if (splits > 1) {
    const size_t parts = static_cast<size_t>(p.batch) * p.heads * p.q_len * splits;
    char* ws = static_cast<char*>(workspace);
    l.ws_acc = reinterpret_cast<float*>(ws);
    ws += detail::align16(parts * p.head_dim * sizeof(float));
    l.ws_m = reinterpret_cast<float*>(ws);
    ws += detail::align16(parts * sizeof(float));
    l.ws_l = reinterpret_cast<float*>(ws);
  }
  return detail::dispatch(p.k.layout.bits, p.head_dim, l, stream);
}

}  // namespace

cudaError_t turbo_decode(const quant::DecodeParams& p, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream) {
  if (turbo_decode_invalid_reason(p) != nullptr) return cudaErrorInvalidValue;
  if (p.batch * p.heads * p.q_len == 0) return cudaSuccess;
  int sms = 0;
  const cudaError_t e = current_sms(&sms);
  if (e != cudaSuccess) return e;
  int splits = turbo_decode_num_splits(p, sms);
  if (workspace == nullptr || !detail::aligned16(workspace)) splits = 1;
  splits = detail::splits_that_fit(p, splits, 1, workspace_bytes);  // 1 needs none
  return launch(p, nullptr, splits, sms, workspace, stream);
}

const char* turbo_decode_append_invalid_reason(const quant::DecodeParams& p,
                                               const DecodeAppend& a) {
  if (p.q_len != 1) return "turbo_decode_append: q_len must be 1 (one new token per sequence)";
  if (p.head_dim > kDecodeAppendMaxHeadDim)
    return "turbo_decode_append: head_dim must be <= 64 (the encoding CTA stages both sides' "
           "rotations in shared memory); use quantize_append + turbo_decode";
  if (p.batch * p.heads > 0 && (a.k == nullptr || a.v == nullptr || a.starts == nullptr))
    return "turbo_decode_append: the new K and V rows and starts must be non-null device pointers";
  quant::DecodeParams pl = p;
  pl.lengths = a.starts;  // not read; the attended length is starts[b] + 1
  if (const char* e = turbo_decode_invalid_reason(pl)) return e;
  if (p.batch * p.heads == 0) return nullptr;
  if (a.stride_b < 0 || a.stride_h < 0) return "turbo_decode_append: row strides must be >= 0";
  if (a.dtype != ElementType::kFloat32 && a.dtype != ElementType::kFloat16 &&
      a.dtype != ElementType::kBFloat16)
    return "turbo_decode_append: rows must be fp32, fp16 or bf16";
  if (p.k.constants.boundaries == nullptr || p.v.constants.boundaries == nullptr)
    return "turbo_decode_append: cache constants need the codebook boundaries (the encoder's)";
  return nullptr;
}

size_t turbo_decode_append_workspace_bytes(const quant::DecodeParams& p, int num_sms) {
  return detail::workspace_for(p, append_cached_splits(p, num_sms) + 1);
}

bool turbo_decode_append_staged(const quant::DecodeParams& p, int num_sms) {
  if (p.batch * p.heads == 0 || p.q_len != 1 || p.head_dim > kDecodeAppendMaxHeadDim) return false;
  return staged_launch(p, append_cached_splits(p, num_sms) + 1, num_sms);
}

cudaError_t turbo_decode_append(const quant::DecodeParams& p, const DecodeAppend& a,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (turbo_decode_append_invalid_reason(p, a) != nullptr) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  int sms = 0;
  const cudaError_t e = current_sms(&sms);
  if (e != cudaSuccess) return e;
  // The cached positions' splits plus the new token's (at least one of each).
  const int splits =
      detail::splits_that_fit(p, append_cached_splits(p, sms) + 1, 2, workspace_bytes);
  if (workspace == nullptr || !detail::aligned16(workspace) ||
      detail::workspace_for(p, splits) > workspace_bytes)
    return cudaErrorInvalidValue;
  return launch(p, &a, splits, sms, workspace, stream);
}

}  // namespace turboesm::kernels
