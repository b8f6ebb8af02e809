#!/usr/bin/env bash
# CI ThreadSanitizer step (issue 7, "Concurrency"), run by tools/test.sh after tools/sanitize.sh;
# also usable alone. Skip it with TURBOESM_TSAN_STEP=0.
#
# Builds the LibTorch library with -fsanitize=thread (Debug at -O1, no CUDA, no programs) in
# ${TURBOESM_TSAN_BUILD_DIR:-build-tsan} and runs the one binary that needs it, test_concurrency
# (tests/model/test_concurrency.cpp alone): one model shared by 8 threads, plain forwards and
# Sessions with their own FP32 and Turbo caches, every result compared bit for bit with a
# sequential run. Any race TSan sees in our code (libturboesm, the test) fails the step.
#
# LibTorch, OpenMP (libgomp) and GoogleTest are prebuilt, not instrumented: TSan cannot see their
# atomics and locks, so reports from inside them are false positives and are suppressed by
# tests/tsan.supp (each line says why). One intra-op thread (OMP_NUM_THREADS=1, MKL too) keeps
# the 8 test threads the only concurrency; the suppressions never name our code.
# Exit status: non-zero on any TSan report (halt_on_error) or test failure.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${_root}/tools/setup_env.sh"
_build="${TURBOESM_TSAN_BUILD_DIR:-${_root}/build-tsan}"
_jobs="${TURBOESM_JOBS:-$(nproc)}"

cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DCMAKE_PREFIX_PATH="${TURBOESM_TORCH_PREFIX}" -DTURBOESM_PYTHON="${TURBOESM_PY}" \
  -DTURBOESM_SANITIZE=thread -DTURBOESM_WITH_CUDA=OFF -DTURBOESM_BUILD_TOOLS=OFF >/dev/null
echo "tsan.sh: building test_concurrency in ${_build} (ThreadSanitizer, LibTorch, CPU)" >&2
cmake --build "${_build}" --target test_concurrency -j "${_jobs}"

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=${_root}/tests/tsan.supp}"
# Newer kernels randomize mmap with more bits than GCC 12's TSan runtime maps ("unexpected memory
# mapping"); run without ASLR where setarch can do that.
_launch=()
if setarch "$(uname -m)" -R true 2>/dev/null; then _launch=(setarch "$(uname -m)" -R); fi
"${_launch[@]}" "${_build}/bin/test_concurrency" --gtest_brief=1
echo "tsan.sh: ThreadSanitizer run clean" >&2
