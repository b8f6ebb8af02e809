// SPDX-License-Identifier: MIT
#pragma once
/// \file decode_timeline.h
/// \brief Where the time of a decode attention launch goes, CTA by CTA: a diagnostic build of
/// turbo_decode / turbo_decode_append (CMake -DTURBOESM_DECODE_TIMELINE=ON) stamps each CTA's
/// phases into a device buffer. Kernel-level traces (CUPTI, ncu) stop at the launch; the decode
/// step's attention is a latency chain inside one launch (wait for the Q/K/V product, q' and the
/// look-up tables, a few hundred tokens, the CTA reduction, the partials; the merge kernel), and
/// which of those sits on the critical path is what decides the next kernel change.
///
/// Thread 0 of every CTA writes one record: the SM's `clock64` at each phase boundary and the
/// device's `%globaltimer` at its start and end (ns; aligns CTAs on different SMs — its
/// resolution is the GPU's, up to 1 µs). Records are appended through an atomic counter, so
/// order says nothing. A launch's records carry its host-side launch number, fixed at launch time:
/// the launches captured in a CUDA graph keep theirs in every replay (one number per layer).
///
/// In the default build the kernels carry no stamps and set_decode_timeline returns false.
/// Not synchronised: set it while no other thread launches decode kernels.

#include <cstddef>
#include <cstdint>

namespace turboesm::kernels {

/// Phase boundaries of a decode CTA (turbo_decode_kernel; the staged kernel,
/// turbo_decode_staged.cuh, stamps the same phases: before the wait its split's records are also
/// decoded, q' and "tables" are one barrier — q', the re-read rows and, in the append CTA, the new
/// token encoded into its staged row — and "loop" is the scores, softmax and V pass).
enum DecodePhase : int {
  kPhaseEntry = 0,   ///< kernel entry
  kPhaseBeforeWait,  ///< constants requested (Π_K rows, codebooks; Π staging in the append CTA)
  kPhaseAfterWait,   ///< griddepcontrol.wait returned: the producers of q, k, v are done
  kPhaseQuery,       ///< q' = σ ⊙ Π_K q in shared memory (barrier passed)
  kPhaseTables,      ///< look-up tables built (append CTA: the new token encoded) (barrier)
  kPhaseLoop,        ///< this thread's tokens streamed
  kPhaseReduced,     ///< the CTA's softmax state reduced (barrier)
  kPhaseEnd,         ///< partial written (or, one split / in-kernel merge: the output)
  kDecodePhases
};
/// Phase boundaries of a merge CTA (turbo_decode_merge_kernel).
enum MergePhase : int {
  kMergeEntry = 0,
  kMergeBeforeWait,  ///< Π_V column requested
  kMergeAfterWait,   ///< the decode launch is complete
  kMergeEnd,         ///< output row written
  kMergePhases
};

struct DecodeTimelineRecord {
  uint32_t launch = 0;  ///< host-side launch number (see above)
  uint32_t row = 0;     ///< blockIdx.x: (sequence, head) row
  uint32_t split = 0;   ///< blockIdx.y (merge: 0)
  uint32_t flags = 0;   ///< kTimelineMerge | kTimelineAppendCta
  uint32_t smid = 0;
  uint32_t pad = 0;
  uint64_t globaltimer_start = 0, globaltimer_end = 0;  ///< ns
  int64_t clock[kDecodePhases] = {};                    ///< clock64 (merge: the first 4)
};
inline constexpr uint32_t kTimelineMerge = 1u;
inline constexpr uint32_t kTimelineAppendCta = 2u;

/// \brief Buffer layout: a uint32 record counter at byte 0 (zero it before the launches to
/// trace), records from byte 64 on. Bytes for `records` records.
inline size_t decode_timeline_bytes(size_t records) {
  return 64 + records * sizeof(DecodeTimelineRecord);
}

/// \brief Whether this build carries the stamps (TURBOESM_DECODE_TIMELINE).
bool decode_timeline_compiled();

/// \brief Sets the buffer (device memory of decode_timeline_bytes(capacity) bytes, or null: off)
/// that the decode launches made from now on write to; records past `capacity` are dropped (the
/// counter still counts them). \return false (and sets nothing) when the build has no stamps.
bool set_decode_timeline(void* buffer, size_t capacity);

}  // namespace turboesm::kernels
