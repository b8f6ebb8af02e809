#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test with ctest.
# Idempotent; a warm rerun only rebuilds what changed.
# Second step (issue 7): tools/sanitize.sh — the torch-free libraries' tests and the fuzz replays
# under ASan+UBSan (build-asan), then a short fuzz smoke run per target. Skip it with
# TURBOESM_SANITIZE_STEP=0; TURBOESM_FUZZ_SMOKE_SECONDS (default 30) sets the smoke time.
# Third step: tools/tsan.sh — the concurrency test (one model, 8 threads) under ThreadSanitizer
# (build-tsan). Skip it with TURBOESM_TSAN_STEP=0.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${_root}/tools/build.sh"
ctest --test-dir "${TURBOESM_BUILD_DIR:-${_root}/build}" --output-on-failure -j "${TURBOESM_JOBS:-$(nproc)}" \
  --timeout 900
if [[ "${TURBOESM_SANITIZE_STEP:-1}" != "0" ]]; then
  "${_root}/tools/sanitize.sh"
fi
if [[ "${TURBOESM_TSAN_STEP:-1}" != "0" ]]; then
  "${_root}/tools/tsan.sh"
fi
