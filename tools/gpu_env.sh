#!/usr/bin/env bash
# Shared preamble of the GPU-machine scripts (tools/gpu_kernels.sh, tools/gpu_model.sh); sourced,
# not run. `turboesm_gpu_env DEFAULT_BUILD_DIR PROBE_BINARY [TARGET...]` sets
#   _root  repository root      _build  ${TURBOESM_BUILD_DIR:-<root>/DEFAULT_BUILD_DIR}
#   _out   ${OUT:-<root>/gpu-out} (created)      _skip  " ${TURBOESM_SKIP} " (for " name " matches)
# builds TARGET... there first when TURBOESM_GPU_BUILD=1 (the machine's python3 torch), puts the
# build's and the machine's torch/CUDA libraries on LD_LIBRARY_PATH, and writes _out/gpu.txt
# (GPU, torch [+ transformers], missing shared libraries of _build/bin/PROBE_BINARY).
# turboesm_torch_libdir and turboesm_gpu_line are also used alone (tools/gpu_ab.sh).

# The machine's torch libraries (the carried binaries link against the same torch version).
turboesm_torch_libdir() {
  python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'
}

# One line naming the GPU: model, memory, driver, maximum SM clock.
turboesm_gpu_line() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
}

turboesm_gpu_env() {
  local default_build="$1" probe="$2"
  shift 2
  _root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  _build="${TURBOESM_BUILD_DIR:-${_root}/${default_build}}"
  _out="${OUT:-${_root}/gpu-out}"
  _skip=" ${TURBOESM_SKIP:-} "
  mkdir -p "${_out}"
  if [[ "${TURBOESM_GPU_BUILD:-0}" == 1 && $# -gt 0 ]]; then
    local prefix
    prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
    cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTURBOESM_WITH_CUDA=ON \
      -DCMAKE_PREFIX_PATH="${prefix}" -DTURBOESM_PYTHON="$(command -v python3)" > /dev/null \
      && cmake --build "${_build}" -j "$(nproc)" --target "$@" > /dev/null \
      || { echo "build failed"; return 1; }
  fi
  local torchlib
  torchlib="$(turboesm_torch_libdir)"
  export LD_LIBRARY_PATH="${_build}/lib:${torchlib}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  {
    turboesm_gpu_line
    python3 -c 'import torch; print("torch", torch.__version__)'
    python3 -c 'import transformers; print("transformers", transformers.__version__)' 2> /dev/null
    ldd "${_build}/bin/${probe}" | grep -i "not found" || echo "all shared libraries found"
  } 2>&1 | tee "${_out}/gpu.txt"
}
