#!/usr/bin/env bash
# Runs every libFuzzer target (tests/fuzz/fuzz_*.cpp) for the given time, one after the other,
# and prints executions and coverage per target.
#
#   tools/fuzz.sh [seconds-per-target=60] [target...]      e.g. tools/fuzz.sh 600 fuzz_fasta
#
# Builds ${TURBOESM_FUZZ_BUILD_DIR:-build-fuzz} with clang first (torch-free, seconds). Each
# target starts from its seeds in tests/fuzz/corpus/<target>/ plus the inputs it found in earlier
# runs (build-fuzz/fuzz-work/<target>/corpus, not committed). A crashing input is written to
# tests/fuzz/regressions/<target>/ — commit it with the fix: ctest replays that folder on every
# run (tests/fuzz_replay.cmake). Limits per input: -timeout (s), -rss_limit_mb.
# Exit status: 0 if no target crashed, 1 otherwise, 77 if clang is missing (nothing run).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_seconds="${1:-60}"
shift || true
_build="${TURBOESM_FUZZ_BUILD_DIR:-${_root}/build-fuzz}"
_timeout="${TURBOESM_FUZZ_TIMEOUT:-10}"
_rss="${TURBOESM_FUZZ_RSS_MB:-2048}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz.sh: SKIPPED: clang++ not found (libFuzzer needs clang; apt-get install clang)" >&2
  exit 77
fi
if [[ ! -f "${_build}/build.ninja" ]]; then
  CC=clang CXX=clang++ cmake -S "${_root}" -B "${_build}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTURBOESM_WITH_TORCH=OFF -DTURBOESM_BUILD_TOOLS=OFF -DTURBOESM_BUILD_TESTS=OFF \
    -DTURBOESM_BUILD_FUZZ=ON >/dev/null
fi
cmake --build "${_build}" --target fuzz_all -j "${TURBOESM_JOBS:-2}" >/dev/null

if [[ $# -gt 0 ]]; then
  _targets=("$@")
else
  _targets=()
  for _src in "${_root}"/tests/fuzz/fuzz_*.cpp; do _targets+=("$(basename "${_src}" .cpp)"); done
fi

_status=0
_rows=()
for _t in "${_targets[@]}"; do
  _bin="${_build}/bin/${_t}"
  [[ -x "${_bin}" ]] || { echo "fuzz.sh: no such target ${_bin}" >&2; exit 2; }
  _work="${_build}/fuzz-work/${_t}"
  _regress="${_root}/tests/fuzz/regressions/${_t}"
  mkdir -p "${_work}/corpus" "${_regress}"
  _before=$(find "${_regress}" -type f ! -name 'README*' | wc -l)
  _dict=()
  [[ -f "${_root}/tests/fuzz/${_t}.dict" ]] && _dict=(-dict="${_root}/tests/fuzz/${_t}.dict")
  echo "fuzz.sh: ${_t} for ${_seconds} s (log: ${_work}/log.txt)" >&2
  set +e
  "${_bin}" -max_total_time="${_seconds}" -timeout="${_timeout}" -rss_limit_mb="${_rss}" \
    -print_final_stats=1 -artifact_prefix="${_regress}/" "${_dict[@]}" \
    "${_work}/corpus" "${_root}/tests/fuzz/corpus/${_t}" >"${_work}/log.txt" 2>&1
  _rc=$?
  set -e
  _after=$(find "${_regress}" -type f ! -name 'README*' | wc -l)
  _execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "${_work}/log.txt" | tail -1)
  _rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "${_work}/log.txt" | tail -1)
  _peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "${_work}/log.txt" | tail -1)
  # Last status line, e.g. "#123456 DONE cov: 812 ft: 2345 corp: 301/40Kb ..."
  _last=$(grep -E '^#[0-9]+' "${_work}/log.txt" | tail -1 || true)
  _cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"${_last}")
  _ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"${_last}")
  _corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"${_last}")
  _result="ok"
  if [[ ${_rc} -ne 0 ]]; then
    _result="CRASH (rc ${_rc}, $((_after - _before)) new input(s) in tests/fuzz/regressions/${_t}/)"
    _status=1
    grep -E 'ERROR: |FUZZ_CHECK|SUMMARY: |Test unit written' "${_work}/log.txt" | head -5 >&2 || true
  fi
  _rows+=("$(printf '%-18s %6ss %12s %9s %6s %7s %12s %7s  %s' "${_t}" "${_seconds}" \
    "${_execs:-?}" "${_rate:-?}" "${_cov:-?}" "${_ft:-?}" "${_corp:-?}" "${_peak:-?}" "${_result}")")
done

printf '%-18s %7s %12s %9s %6s %7s %12s %7s  %s\n' target time executions exec/s cov ft \
  corpus rss_mb result
printf '%s\n' "${_rows[@]}"
exit ${_status}
