// SPDX-License-Identifier: MIT
// How long a kernel boundary of the decode step lasts, and what a lighter hand-over would save
// (kernels/NOTES.md "Session 19"). A chain of K dependent launches, each reading values written by
// every CTA of the launch before it (as a product reads the whole activation vector) and writing
// its own, captured in a CUDA graph, timed per link, for grids of G CTAs:
//   plain      : ordinary launches (each starts once its predecessor has completed)
//   grid wait  : programmatic dependent launch, `griddepcontrol.wait` before the reads (what every
//                step kernel does today: completion and memory flush of the whole predecessor)
//   flags      : programmatic dependent launch; each CTA, after its stores, fences and adds 1 to
//   its
//                launch's counter (release); a successor's thread 0 spins on the predecessor's
//                counter (acquire) until all of its CTAs have added, then the CTA reads; a
//                `griddepcontrol.wait` at the very end keeps each launch's completion implying its
//                predecessor's (stream order stays transitive)
//   flags, no final wait : the same without the final wait
//   none       : programmatic dependent launch and no hand-over at all — wrong results, printed as
//                the floor of the launch pipeline and as proof that the check below catches stale
//                reads
// The check: link i writes min over eight inputs spread over all producer CTAs, + 1; the graph
// starts from a seed that changes every replay, so a stale read shows as a value below seed + K.
// Usage: bench_step_sync [links=99] [replays=50]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_check.h"

namespace {

constexpr int kThreads = 128;

enum Mode {
  kPlain = 0,
  kGridWait = 1,
  kFlags = 2,
  kFlagsNoFinalWait = 3,
  kNone = 4,
  kGridWaitLateTrigger = 5,
  kFlagsLateTrigger = 6,
  kLastArriverLateTrigger = 7,
  kLastArriver = 8,
  kModes = 9
};
const char* const kModeNames[] = {"plain",
                                  "grid wait",
                                  "flags",
                                  "flags, no final wait",
                                  "none",
                                  "grid wait, late trigger",
                                  "flags, late trigger",
                                  "last arriver, late trigger",
                                  "last arriver"};

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_release_add(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
__device__ __forceinline__ void grid_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

/// After this CTA's stores: every thread fences, the CTA meets, thread 0 adds 1 (release).
__device__ __forceinline__ void signal_done(unsigned* done) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) red_release_add(done, 1u);
}

__global__ void bump_kernel(unsigned* epoch) { *epoch += 1; }

__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void fence_acq_rel() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

/// Last-arriver hand-over: every CTA adds 1 to counter[0] after its stores (release); the one that
/// completes the count sets counter[1] = 1 (release), which is what successors poll (a word
/// written once, not the atomics' hot spot).
__device__ __forceinline__ void signal_last_arriver(unsigned* counter) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned old = atomicAdd(counter, 1u);
    if (old == gridDim.x - 1) {
      __threadfence();
      asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(counter + 1), "r"(1u) : "memory");
    }
  }
}

/// data0[j] = *epoch (the replay's seed); counts as producer 0 for the flag modes.
__global__ void seed_kernel(float* data0, const unsigned* epoch, unsigned* done) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  data0[j] = static_cast<float>(*epoch);
  signal_last_arriver(done);  // done[0] counts the CTAs (the count modes), done[1] the flag
}

template <int MODE>
__global__ void link_kernel(const float* in, float* out, const unsigned* wait_flag,
                            unsigned wait_count, unsigned* done, int n) {
  constexpr bool kLate =
      MODE == kGridWaitLateTrigger || MODE == kFlagsLateTrigger || MODE == kLastArriverLateTrigger;
  constexpr bool kCount = MODE == kFlags || MODE == kFlagsNoFinalWait || MODE == kFlagsLateTrigger;
  constexpr bool kLast = MODE == kLastArriver || MODE == kLastArriverLateTrigger;
  if (!kLate) launch_dependents();
  if (MODE == kGridWait || MODE == kGridWaitLateTrigger) grid_wait();
  if (kCount) {
    if (threadIdx.x == 0) {
      while (ld_acquire(wait_flag) < wait_count) __nanosleep(32);
    }
    __syncthreads();
  }
  if (kLast) {
    if (threadIdx.x == 0) {
      while (ld_relaxed(wait_flag + 1) == 0u) __nanosleep(20);
      fence_acq_rel();
    }
    __syncthreads();
  }
  if (kLate) launch_dependents();
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  float s = 3.0e38f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    // eight inputs spread over the whole vector (other CTAs' outputs), through the L2
    const int idx =
        static_cast<int>((static_cast<long long>(j) * 2654435761LL + k * (n / 8 + 1)) % n);
    s = fminf(s, __ldcg(in + idx));
  }
  out[j] = s + 1.0f;
  if (kCount) signal_done(done);
  if (kLast) signal_last_arriver(done);
  if (MODE == kFlags || kLast || MODE == kFlagsLateTrigger) grid_wait();
}

template <int MODE>
cudaError_t launch_link(int ctas, cudaStream_t s, bool pdl, const float* in, float* out,
                        const unsigned* wait_flag, unsigned wait_count, unsigned* done, int n) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(ctas);
  cfg.blockDim = dim3(kThreads);
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, link_kernel<MODE>, in, out, wait_flag, wait_count, done, n);
}

struct Result {
  double us_per_link = 0;
  long long wrong = 0;
};

Result run(Mode mode, int ctas, int links, int replays) {
  const int n = ctas * kThreads;
  float* data = nullptr;
  unsigned *flags = nullptr, *epoch = nullptr;
  CHECK_CUDA(cudaMalloc(&data, sizeof(float) * n * (links + 1)));
  CHECK_CUDA(cudaMalloc(&flags, 2 * sizeof(unsigned) * (links + 1)));
  CHECK_CUDA(cudaMalloc(&epoch, sizeof(unsigned)));
  CHECK_CUDA(cudaMemset(epoch, 0, sizeof(unsigned)));
  CHECK_CUDA(cudaMemset(data, 0, sizeof(float) * n * (links + 1)));
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph;
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  CHECK_CUDA(cudaMemsetAsync(flags, 0, 2 * sizeof(unsigned) * (links + 1), s));
  seed_kernel<<<ctas, kThreads, 0, s>>>(data, epoch, flags);
  CHECK_CUDA(cudaGetLastError());
  for (int i = 0; i < links; ++i) {
    const float* in = data + static_cast<size_t>(i) * n;
    float* out = data + static_cast<size_t>(i + 1) * n;
    const bool pdl = mode != kPlain;
    cudaError_t e = cudaSuccess;
    unsigned* const wait = flags + 2 * i;
    unsigned* const done = flags + 2 * (i + 1);
    switch (mode) {
#define TURBOESM_LINK_CASE(M)                                       \
  case M:                                                           \
    e = launch_link<M>(ctas, s, pdl, in, out, wait, ctas, done, n); \
    break;
      case kPlain:
        e = launch_link<kGridWait>(ctas, s, pdl, in, out, wait, ctas, done, n);
        break;
        TURBOESM_LINK_CASE(kGridWait)
        TURBOESM_LINK_CASE(kFlags)
        TURBOESM_LINK_CASE(kFlagsNoFinalWait)
        TURBOESM_LINK_CASE(kNone)
        TURBOESM_LINK_CASE(kGridWaitLateTrigger)
        TURBOESM_LINK_CASE(kFlagsLateTrigger)
        TURBOESM_LINK_CASE(kLastArriverLateTrigger)
        TURBOESM_LINK_CASE(kLastArriver)
#undef TURBOESM_LINK_CASE
      default:
        break;
    }
    CHECK_CUDA(e);
  }
  bump_kernel<<<1, 1, 0, s>>>(epoch);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < 5; ++r) CHECK_CUDA(cudaGraphLaunch(exec, s));
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaEventRecord(a, s));
  for (int r = 0; r < replays; ++r) CHECK_CUDA(cudaGraphLaunch(exec, s));
  CHECK_CUDA(cudaEventRecord(b, s));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  // One more replay, checked: every value of the last link must be seed + links.
  unsigned e0 = 0;
  CHECK_CUDA(cudaMemcpy(&e0, epoch, sizeof(unsigned), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaGraphLaunch(exec, s));
  CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<float> last(n);
  CHECK_CUDA(cudaMemcpy(last.data(), data + static_cast<size_t>(links) * n, sizeof(float) * n,
                        cudaMemcpyDeviceToHost));
  Result res;
  for (float v : last) res.wrong += v != static_cast<float>(e0) + static_cast<float>(links);
  res.us_per_link = 1e3 * ms / replays / links;
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  CHECK_CUDA(cudaStreamDestroy(s));
  CHECK_CUDA(cudaFree(data));
  CHECK_CUDA(cudaFree(flags));
  CHECK_CUDA(cudaFree(epoch));
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  const int links = argc > 1 ? std::atoi(argv[1]) : 99;
  const int replays = argc > 2 ? std::atoi(argv[2]) : 50;
  if (links < 1 || replays < 1) {
    std::fprintf(stderr, "usage: bench_step_sync [links >= 1] [replays >= 1]\n");
    return 2;
  }
  int dev = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, dev));
  std::printf("%s, %d SMs; %d links per graph, %d replays\n", prop.name, sms, links, replays);
  std::printf("%-8s", "CTAs");
  for (const char* m : kModeNames) std::printf(" | %-26s", m);
  std::printf("\n");
  std::string json = "{\"gpu\": \"" + std::string(prop.name) + "\"";
  for (int ctas : {20, sms, 4 * sms, 8 * sms}) {
    std::printf("%-8d", ctas);
    for (int m = kPlain; m < kModes; ++m) {
      const Result r = run(static_cast<Mode>(m), ctas, links, replays);
      std::printf(" | %7.3f us/link %7lld bad", r.us_per_link, r.wrong);
      json += ", \"ctas" + std::to_string(ctas) + "_mode" + std::to_string(m) +
              "_us\": " + std::to_string(r.us_per_link);
    }
    std::printf("\n");
  }
  std::printf("JSON %s}\n", json.c_str());
  return 0;
}
