#!/usr/bin/env bash
# GPU machine run of the CUDA kernels (not CI): test_cuda (GPU tests vs the CPU oracle), the same
# tests under compute-sanitizer memcheck, and bench_decode_cuda (JSON + table) into ${OUT}.
# The binaries are built beforehand (cmake --build <dir> --target test_cuda bench_decode_cuda) on
# an x86-64 machine with the same torch wheel as the GPU machine (2.11.0+cu130) and carried; the
# GPU machine's own torch libraries are used at run time (TURBOESM_GPU_BUILD=1: build them there
# first, as tools/gpu_model.sh can). `tools/gpu_check.sh` instead builds the whole project there.
#   TURBOESM_BUILD_DIR  build tree holding bin/ and lib/ (default: build-cuda)
#   TURBOESM_SKIP       space-separated subset of: test memcheck bench
#   TURBOESM_AB_LIBS    space-separated directories, each holding a libturboesm.so.0 built from an
#                       earlier kernel version (the binaries take turbo_decode from that library):
#                       bench_decode_cuda is re-run with each one first on LD_LIBRARY_PATH, in the
#                       same session on the same GPU, with --benchmark_filter=${TURBOESM_AB_FILTER}
set -uo pipefail
# shellcheck source=tools/gpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
turboesm_gpu_env build-cuda test_cuda test_cuda bench_decode_cuda || exit 1
_rc=0
if [[ "${_skip}" != *" test "* ]]; then
  timeout 400 "${_build}/bin/test_cuda" --gtest_output="json:${_out}/test_cuda.json" \
    > "${_out}/test_cuda.log" 2>&1 || _rc=1
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|Failure|Expected|Which is|info \]" \
    "${_out}/test_cuda.log" | head -60
  tail -3 "${_out}/test_cuda.log"
fi
if [[ "${_skip}" != *" memcheck "* ]]; then
  # The long (16384-token) cases only add host time under the sanitizer: memcheck the rest.
  timeout 400 compute-sanitizer --tool memcheck --error-exitcode 3 "${_build}/bin/test_cuda" \
    --gtest_filter="${TURBOESM_MEMCHECK_FILTER:--*LongCache*}" > "${_out}/memcheck.log" 2>&1
  _m=$?
  echo "memcheck exit ${_m}"; grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" "${_out}/memcheck.log" | head -20
  [[ ${_m} -ne 0 ]] && _rc=1
fi
if [[ "${_skip}" != *" bench "* ]]; then
  timeout 400 "${_build}/bin/bench_decode_cuda" --benchmark_out="${_out}/bench_decode_cuda.json" \
    --benchmark_out_format=json ${TURBOESM_BENCH_ARGS:-} > "${_out}/bench_decode_cuda.txt" 2>&1 \
    || { echo "bench_decode_cuda failed"; _rc=1; }
  sed -n '/^GPU:/,$p' "${_out}/bench_decode_cuda.txt"
  grep -iE "error" "${_out}/bench_decode_cuda.txt" | head -5
fi
for _ab in ${TURBOESM_AB_LIBS:-}; do
  _name="$(basename "${_ab}")"
  echo "== A/B: kernels of ${_name} =="
  LD_LIBRARY_PATH="${_ab}:${LD_LIBRARY_PATH}" timeout 300 "${_build}/bin/bench_decode_cuda" \
    --benchmark_filter="${TURBOESM_AB_FILTER:-.}" > "${_out}/ab_${_name}.txt" 2>&1 \
    || { echo "${_name} failed"; _rc=1; }
  sed -n '/^GPU:/,$p' "${_out}/ab_${_name}.txt"
done
if command -v cuobjdump > /dev/null && [[ -f "${_build}/lib/libturboesm_kernels.a" ]]; then
  # Instruction histogram of the headline instantiation (3-bit, d = 64) for kernels/NOTES.md.
  _sym=_ZN8turboesm7kernels6detail19turbo_decode_kernelILi3ELi64ELNS1_13DecodeVariantE0EEEvNS1_12DecodeLaunchE
  cuobjdump -sass -fun "${_sym}" "${_build}/lib/libturboesm_kernels.a" > "${_out}/sass.txt" 2>&1
  { echo "== opcode histogram (whole kernel) =="
    grep -oE "^ +/\*[0-9a-f]{4}\*/ +[A-Z0-9_.]+" "${_out}/sass.txt" | awk '{print $2}' | sort | uniq -c | sort -rn | head -25
  } >> "${_out}/sass.txt"
fi
exit ${_rc}
