#!/usr/bin/env bash
# Configures and builds TurboESM into ${TURBOESM_BUILD_DIR:-build} (Release by default).
# Extra arguments go to cmake's configure step. Used by quickstart.sh and test.sh.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${_root}/tools/setup_env.sh"
_build="${TURBOESM_BUILD_DIR:-${_root}/build}"
_jobs="${TURBOESM_JOBS:-$(nproc)}"
if [[ ! -f "${_build}/build.ninja" ]]; then
  cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE="${TURBOESM_BUILD_TYPE:-Release}" \
    -DCMAKE_PREFIX_PATH="${TURBOESM_TORCH_PREFIX}" -DTURBOESM_PYTHON="${TURBOESM_PY}" "$@"
fi
cmake --build "${_build}" -j "${_jobs}"
