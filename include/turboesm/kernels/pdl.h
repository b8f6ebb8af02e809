// SPDX-License-Identifier: MIT
#pragma once
/// \file pdl.h
/// \brief Programmatic dependent launch (Hopper) for the kernels of a decode step.
///
/// A decode step is a chain of small dependent kernels (per layer: decode_gemv ×4 — the Q/K/V glue
/// is the QKV product's epilogue —, quantize-on-append, turbo_decode, which merges its splits
/// itself when given split counters), each latency-bound: its launch, then the
/// loads of constants (weights, Π, codebooks) before any arithmetic. Launched with programmatic
/// stream serialization, a kernel's CTAs start while its predecessor is still finishing; each
/// kernel first lets its own successor launch (`griddepcontrol.launch_dependents`), loads what
/// does not depend on the predecessor (weights, Π, codebooks), then waits for it to complete
/// (`griddepcontrol.wait`: completion and memory flush of the whole predecessor grid) before
/// reading its outputs. Every such kernel waits on every path, so completion is transitive: data
/// written two or more kernels back is also visible after the wait. CUDA graphs keep the
/// programmatic edges when they capture these launches.
///
/// On by default; set_programmatic_dependent_launch(false) launches the same kernels the plain
/// way (griddepcontrol.wait is then a no-op), e.g. to measure what it buys
/// (tests/bench/bench_model_cuda.cpp). Process-wide, not synchronised: set it before launching.

namespace turboesm::kernels {

void set_programmatic_dependent_launch(bool enabled);
bool programmatic_dependent_launch();

/// The carve-out the step's kernels ask for unless set_decode_shared_carveout says otherwise.
inline constexpr int kDecodeSharedCarveoutDefault = 100;

/// \brief The shared-memory carve-out (percent of the SM's maximum; -1: none, the driver's
/// choice) every kernel launched this way asks for
/// (cudaLaunchAttributePreferredSharedMemoryCarveout). An SM holds CTAs of different kernels only
/// under one L1 / shared-memory split; a CTA that needs more shared memory than its SM's current
/// split gives waits until the SM has drained and can be reconfigured. Asking every kernel of the
/// step for the same split lets a kernel whose CTAs need much shared memory (the staged attention,
/// turbo_decode.h) become resident beside its predecessor's CTAs, as programmatic dependent launch
/// intends. Default 100 (the largest shared memory): measured on the H100, the 650M graph step
/// 0.01–0.03 ms faster in 12 of 12 A/B rounds and the batch-4 prefill unchanged (kernels/NOTES.md
/// "Session 18"). Process-wide, not synchronised: set it before launching (a CUDA graph keeps what
/// it captured).
void set_decode_shared_carveout(int percent);
int decode_shared_carveout();

}  // namespace turboesm::kernels
