#!/usr/bin/env bash
# GPU machine check (not CI): builds with CUDA (sm_90a), runs every ctest (GPU tests included),
# the CUDA parity/benchmarks, and writes logs + JSON under ${OUT:-gpu-out}.
# Uses the machine's python3 (torch + transformers preinstalled there); installs nothing.
set -uo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_out="${OUT:-${_root}/gpu-out}"
mkdir -p "${_out}"
_build="${TURBOESM_BUILD_DIR:-${_root}/build-gpu}"
_py="${TURBOESM_GPU_PYTHON:-python3}"
_prefix="$("${_py}" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "${_out}/gpu.txt"
set -e
cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTURBOESM_WITH_CUDA=ON \
  -DCMAKE_PREFIX_PATH="${_prefix}" -DTURBOESM_PYTHON="$(command -v "${_py}")" > "${_out}/configure.log" 2>&1 \
  || { tail -50 "${_out}/configure.log"; exit 1; }
cmake --build "${_build}" -j "$(nproc)" > "${_out}/build.log" 2>&1 || { grep -E "error|Error" -A3 "${_out}/build.log" | head -80; exit 1; }
set +e
ctest --test-dir "${_build}" --output-on-failure -j 4 --timeout 900 --output-junit "${_out}/ctest.xml" \
  > "${_out}/ctest.log" 2>&1
_rc=$?
tail -25 "${_out}/ctest.log"
# Parity figures (CPU and CUDA, FP32/FP16/BF16) as printed by the parity tests.
"${_build}/bin/test_hf_parity" 2>&1 | grep -E "^\[parity" > "${_out}/parity.txt" || true
cat "${_out}/parity.txt"
# Benchmarks (JSON) where built; each one optional.
for b in bench_decode_cuda bench_quant; do
  if [[ -x "${_build}/bin/${b}" ]]; then
    "${_build}/bin/${b}" --benchmark_out="${_out}/${b}.json" --benchmark_out_format=json \
      ${TURBOESM_BENCH_ARGS:-} > "${_out}/${b}.txt" 2>&1 || echo "${b} failed"
    tail -40 "${_out}/${b}.txt"
  fi
done
exit ${_rc}
