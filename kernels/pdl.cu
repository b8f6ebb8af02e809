// SPDX-License-Identifier: MIT
/// \file pdl.cu
/// \brief The process-wide switch of programmatic dependent launch
/// (include/turboesm/kernels/pdl.h).

#include <atomic>

#include "turboesm/kernels/pdl.h"

namespace turboesm::kernels {
namespace {
std::atomic<bool> g_enabled{true};
std::atomic<int> g_carveout{kDecodeSharedCarveoutDefault};
}  // namespace

void set_programmatic_dependent_launch(bool enabled) { g_enabled.store(enabled); }
bool programmatic_dependent_launch() { return g_enabled.load(); }
void set_decode_shared_carveout(int percent) { g_carveout.store(percent < 0 ? -1 : percent); }
int decode_shared_carveout() { return g_carveout.load(); }

}  // namespace turboesm::kernels
