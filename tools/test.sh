#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test with ctest.
# Idempotent; a warm rerun only rebuilds what changed.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${_root}/tools/build.sh"
ctest --test-dir "${TURBOESM_BUILD_DIR:-${_root}/build}" --output-on-failure -j "${TURBOESM_JOBS:-$(nproc)}" \
  --timeout 900
