// SPDX-License-Identifier: MIT
#pragma once
/// \file l2_prefetch.h
/// \brief L2 prefetch hints: device memory that the kernels *after* a launch will read, which the
/// launch asks the L2 to fetch while it has HBM to spare.
///
/// Why: a decode step at batch 1 alternates latency-bound attention (≈ 1 MB of cache per layer in
/// ≈ 18 µs: HBM nearly idle) with weight-streaming products (≈ 30 MB per layer). A launch that
/// waits on a latency-bound predecessor anyway can ask the L2 for the next products' weights
/// (`cp.async.bulk.prefetch.L2`: no registers, no completion), so that those products read them
/// from the L2. Only a hint: the bytes are never written, a launch may ignore it, and what the L2
/// evicts again is simply read from HBM.
///
/// Who honours it: turbo_decode_append's merge kernel (DecodeAppend::l2_prefetch), before its
/// `griddepcontrol.wait`, i.e. while the attention launch runs. The ranges are split into 64 KB
/// chunks over all threads of that launch (for_each_l2_prefetch_chunk). The model's decode step
/// (model/decode_graph.cpp) hands every layer's O, FC1, FC2 and the next layer's QKV weights to
/// the turbo cache, which passes them on only with TurboKvCache::set_step_l2_prefetch_bytes > 0
/// — default 0: not yet measured on a GPU (kernels/NOTES.md, "Decode step v9"). A similar
/// prefetch issued from the products themselves lost (NOTES, "Decode step v6"): there it competed
/// with their own weight stream.

#include <cstdint>

#include "turboesm/quant/host_device.h"

namespace turboesm::kernels {

struct L2Prefetch {
  static constexpr int kMaxRanges = 4;
  const void* ptr[kMaxRanges] = {};  ///< DEVICE pointers, 16-byte aligned
  uint64_t bytes[kMaxRanges] = {};   ///< multiples of 16
  int count = 0;

  /// Appends [p, p + n); false (nothing added) when all kMaxRanges are taken.
  bool add(const void* p, uint64_t n) {
    if (count >= kMaxRanges) return false;
    ptr[count] = p;
    bytes[count] = n;
    ++count;
    return true;
  }
  uint64_t total_bytes() const {
    uint64_t t = 0;
    for (int i = 0; i < count; ++i) t += bytes[i];
    return t;
  }
  /// The first `max_bytes` of the ranges in order (the last one kept cut to a multiple of 16
  /// bytes, empty ones dropped): a budget for GPUs whose L2 is smaller than the hint.
  L2Prefetch truncated(uint64_t max_bytes) const {
    L2Prefetch r;
    uint64_t left = max_bytes & ~uint64_t{15};
    for (int i = 0; i < count && left > 0; ++i) {
      const uint64_t n = bytes[i] < left ? bytes[i] : left;
      if (n > 0) r.add(ptr[i], n);
      left -= n;
    }
    return r;
  }
};

/// Bytes of one prefetch request (`cp.async.bulk.prefetch.L2`).
inline constexpr uint64_t kL2PrefetchChunk = 64u << 10;

/// \brief The requests thread `thread` of `threads` issues for `r`: f(pointer, bytes) for every
/// chunk g (kL2PrefetchChunk bytes, the last of a range shorter) of the ranges numbered in order
/// with g mod threads = thread. Over all threads every byte of every range once (tested on the
/// host: tests/model/test_kv_cache.cpp); the kernels call it with the bulk prefetch as `f`.
template <typename F>
TURBOESM_HOST_DEVICE inline void for_each_l2_prefetch_chunk(const L2Prefetch& r, uint64_t thread,
                                                            uint64_t threads, F&& f) {
  uint64_t first = thread;  // this thread's first chunk index within the current range
  for (int i = 0; i < r.count; ++i) {
    const uint64_t chunks = (r.bytes[i] + kL2PrefetchChunk - 1) / kL2PrefetchChunk;
    const char* base = static_cast<const char*>(r.ptr[i]);
    for (uint64_t c = first; c < chunks; c += threads) {
      const uint64_t left = r.bytes[i] - c * kL2PrefetchChunk;
      f(base + c * kL2PrefetchChunk, left < kL2PrefetchChunk ? left : kL2PrefetchChunk);
    }
    // The next range continues the global chunk numbering where this one stopped.
    first = (first + threads - chunks % threads) % threads;
  }
}

/// \brief Why `r` cannot be issued, or nullptr: count in [0, kMaxRanges], non-null 16-byte
/// aligned pointers, sizes multiples of 16.
inline const char* l2_prefetch_invalid_reason(const L2Prefetch& r) {
  if (r.count < 0 || r.count > L2Prefetch::kMaxRanges) return "l2_prefetch.count must be in [0, 4]";
  for (int i = 0; i < r.count; ++i) {
    if (r.ptr[i] == nullptr) return "l2_prefetch ranges must not be null";
    if ((reinterpret_cast<uintptr_t>(r.ptr[i]) & 15u) != 0 || (r.bytes[i] & 15u) != 0)
      return "l2_prefetch ranges must start 16-byte aligned and be multiples of 16 bytes";
  }
  return nullptr;
}

}  // namespace turboesm::kernels
