#!/usr/bin/env bash
# Installs what is missing (Debian packages; the pinned torch/transformers wheels in one virtual
# environment outside the clone, reused by every clone and CI run) and exports:
#   TURBOESM_PY            python of that environment
#   TURBOESM_TORCH_PREFIX  LibTorch's CMake prefix (torch.utils.cmake_prefix_path)
# Source it: `source tools/setup_env.sh`. Idempotent; a second run only checks.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "${_here}/versions.sh"

_debs=(cmake ninja-build g++ python3-venv libeigen3-dev nlohmann-json3-dev libcli11-dev libgtest-dev
       libgmock-dev libbenchmark-dev hmmer-examples clang libclang-rt-14-dev)
_missing=()
for p in "${_debs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || _missing+=("$p")
done
if ((${#_missing[@]})); then
  echo "[setup] installing Debian packages: ${_missing[*]}" >&2
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${_missing[@]}" >/dev/null
fi

_venv="${TURBOESM_VENV:-${HOME}/.cache/turboesm/py-torch${TURBOESM_TORCH_VERSION}-tf${TURBOESM_TRANSFORMERS_VERSION}}"
TURBOESM_PY="${_venv}/bin/python"
_check='import torch, transformers, safetensors, numpy, sys
ok = torch.__version__.split("+")[0] == sys.argv[1] and transformers.__version__ == sys.argv[2]
sys.exit(0 if ok else 1)'
if ! "${TURBOESM_PY}" -c "${_check}" "${TURBOESM_TORCH_VERSION}" "${TURBOESM_TRANSFORMERS_VERSION}" 2>/dev/null; then
  echo "[setup] creating ${_venv} (torch ${TURBOESM_TORCH_VERSION}, transformers ${TURBOESM_TRANSFORMERS_VERSION}; a few GB, once)" >&2
  mkdir -p "$(dirname "${_venv}")"
  python3 -m venv "${_venv}"
  if ! "${_venv}/bin/pip" install -q --disable-pip-version-check "torch==${TURBOESM_TORCH_VERSION}" \
      "transformers==${TURBOESM_TRANSFORMERS_VERSION}" "safetensors==${TURBOESM_SAFETENSORS_VERSION}" \
      "numpy==${TURBOESM_NUMPY_VERSION}"; then
    echo "error: could not install torch==${TURBOESM_TORCH_VERSION} from PyPI into ${_venv}." >&2
    echo "       TurboESM needs LibTorch from that wheel (Debian's libtorch-dev 1.13 lacks SDPA and FP8)." >&2
    exit 1
  fi
fi
TURBOESM_TORCH_PREFIX="$("${TURBOESM_PY}" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
export TURBOESM_PY TURBOESM_TORCH_PREFIX
