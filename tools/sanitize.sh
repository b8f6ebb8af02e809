#!/usr/bin/env bash
# CI sanitizer step (issue 7), run by tools/test.sh after the main ctest; also usable alone.
#
#  1. Builds the torch-free tree with AddressSanitizer + UndefinedBehaviorSanitizer (Debug,
#     ${TURBOESM_ASAN_BUILD_DIR:-build-asan}; g++ or whatever CXX is) and runs under them, with
#     LeakSanitizer on: test_core (quant core), test_io (safetensors, config.json, FASTA,
#     tokenizer, writer) and the fuzz replays (seed corpora + every saved crash, label "fuzz").
#  2. Runs each libFuzzer target for ${TURBOESM_FUZZ_SMOKE_SECONDS:-30} s (tools/fuzz.sh, clang,
#     ASan+UBSan); skipped with a message when clang is missing or the time is 0.
#
# Not covered here (LibTorch is not built with sanitizers): the model, the programs and their
# bad-input table (tests/programs/bad_inputs.tsv, run by the main ctest; leak-checked with
# valgrind by `tests/programs/run_bad_inputs.sh --valgrind`). The model's thread safety is
# checked by tools/tsan.sh (ThreadSanitizer, the next step of tools/test.sh).
# Exit status: non-zero on any sanitizer report, test failure or fuzz crash.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_build="${TURBOESM_ASAN_BUILD_DIR:-${_root}/build-asan}"
_jobs="${TURBOESM_JOBS:-$(nproc)}"
_smoke="${TURBOESM_FUZZ_SMOKE_SECONDS:-30}"

# Debug at -O1 (as the ASan docs advise): -O0 makes the quant-core tests ~10x slower without
# finding more. Re-running configure is cheap and keeps an old build dir on these settings.
_py_arg=()
[[ -n "${TURBOESM_PY:-}" ]] && _py_arg=(-DTURBOESM_PYTHON="${TURBOESM_PY}")
cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DTURBOESM_SANITIZE=address,undefined -DTURBOESM_WITH_TORCH=OFF -DTURBOESM_BUILD_TOOLS=OFF \
  "${_py_arg[@]}" >/dev/null
echo "sanitize.sh: building ${_build} (ASan+UBSan, torch-free)" >&2
cmake --build "${_build}" -j "${_jobs}"

# Leaks are errors; a report stops the test at once and fails it.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir "${_build}" -L 'core|io|fuzz' --output-on-failure -j "${_jobs}" --timeout 600

if [[ "${_smoke}" == "0" ]]; then
  echo "sanitize.sh: fuzz smoke run SKIPPED (TURBOESM_FUZZ_SMOKE_SECONDS=0)" >&2
  exit 0
fi
set +e
"${_root}/tools/fuzz.sh" "${_smoke}"
_rc=$?
set -e
if [[ ${_rc} -eq 77 ]]; then
  echo "sanitize.sh: fuzz smoke run SKIPPED (clang not found)" >&2
  exit 0
fi
exit ${_rc}
