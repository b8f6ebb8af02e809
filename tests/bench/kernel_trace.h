// SPDX-License-Identifier: MIT
#pragma once
/// \file kernel_trace.h
/// \brief GPU start/end timestamps of every kernel that runs while a trace is on, CUDA-graph kernel
/// nodes included, for benchmarks (bench_model_cuda trace_step).
///
/// CUPTI's activity API with CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: kernels are not serialised,
/// so a graph step keeps its programmatic-dependent-launch overlap (ncu, by contrast, serialises
/// every kernel and shows each one's time alone). What it shows that nothing else here does: when
/// each kernel of a step really starts and ends next to its neighbours, i.e. which ones lengthen
/// the step's critical path. CUPTI adds its own cost per kernel; the caller measures the traced
/// step beside an untraced one to show how much.

#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace turboesm::bench {

struct KernelRecord {
  std::string name;  ///< the kernel function's name without namespaces and template arguments
  uint64_t start_ns = 0, end_ns = 0;  ///< GPU timestamps
  uint32_t stream = 0;
  uint32_t graph_id = 0;       ///< 0 = not launched from a graph
  uint64_t graph_node_id = 0;  ///< the kernel node within its graph
};

/// `void ns::kernel<T, 3>(Params)` → `kernel`.
inline std::string short_kernel_name(const char* mangled) {
  if (mangled == nullptr) return "?";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  std::string s = status == 0 && d ? std::string(d.get()) : std::string(mangled);
  // Drop anonymous namespaces, cut the template and argument lists, then the return type and
  // the remaining namespaces.
  const std::string anon = "(anonymous namespace)::";
  for (size_t p = s.find(anon); p != std::string::npos; p = s.find(anon)) s.erase(p, anon.size());
  const size_t cut = s.find_first_of("<(");
  if (cut != std::string::npos) s.resize(cut);
  const size_t space = s.rfind(' ');
  if (space != std::string::npos) s = s.substr(space + 1);
  const size_t colons = s.rfind("::");
  if (colons != std::string::npos) s = s.substr(colons + 2);
  return s.empty() ? std::string(mangled) : s;
}

/// One trace at a time (CUPTI's callbacks are process-wide).
class KernelTrace {
 public:
  KernelTrace() {
    check(cuptiActivityRegisterCallbacks(&buffer_requested, &buffer_completed),
          "cuptiActivityRegisterCallbacks");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
  }
  ~KernelTrace() { (void)cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL); }
  KernelTrace(const KernelTrace&) = delete;
  KernelTrace& operator=(const KernelTrace&) = delete;

  /// Every kernel that completed since the trace began (or since the last take), sorted by start.
  /// The caller synchronises the device first.
  std::vector<KernelRecord> take() {
    check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
    std::vector<KernelRecord> out;
    {
      std::lock_guard<std::mutex> lock(mu());
      out.swap(records());
    }
    std::sort(out.begin(), out.end(), [](const KernelRecord& a, const KernelRecord& b) {
      return a.start_ns != b.start_ns ? a.start_ns < b.start_ns : a.end_ns < b.end_ns;
    });
    return out;
  }

 private:
  static constexpr size_t kBufferBytes = 8u << 20;

  static void check(CUptiResult r, const char* what) {
    if (r == CUPTI_SUCCESS) return;
    const char* msg = nullptr;
    cuptiGetResultString(r, &msg);
    throw std::runtime_error(std::string(what) + " failed: " + (msg ? msg : "unknown CUPTI error"));
  }
  static std::mutex& mu() {
    static std::mutex m;
    return m;
  }
  static std::vector<KernelRecord>& records() {
    static std::vector<KernelRecord> r;
    return r;
  }
  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *size = *buffer ? kBufferBytes : 0;
    *max_records = 0;  // as many as fit
  }
  static void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t,
                                        size_t valid) {
    CUpti_Activity* rec = nullptr;
    std::vector<KernelRecord> got;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
      if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL &&
          rec->kind != CUPTI_ACTIVITY_KIND_KERNEL)
        continue;
      // The newest kernel record of this toolkit; CUPTI appends fields in later versions.
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
      KernelRecord r;
      r.name = short_kernel_name(k->name);
      r.start_ns = k->start;
      r.end_ns = k->end;
      r.stream = k->streamId;
      r.graph_id = k->graphId;
      r.graph_node_id = k->graphNodeId;
      got.push_back(std::move(r));
    }
    std::free(buffer);
    std::lock_guard<std::mutex> lock(mu());
    records().insert(records().end(), got.begin(), got.end());
  }
};

}  // namespace turboesm::bench
