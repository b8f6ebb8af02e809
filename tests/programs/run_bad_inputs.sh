#!/usr/bin/env bash
# Runs the bad-input table (tests/programs/bad_inputs.tsv) against the real programs.
#
#   run_bad_inputs.sh --bin DIR --work DIR [--table FILE] [--only ID[,ID...]] [--valgrind]
#
# Builds a good tiny model with DIR/turboesm-make-model, derives the broken inputs from it
# (make_bad_inputs.py), then runs every row and checks: exit status as expected (and not a
# signal), exactly one "<program>: error:" line on stderr, last, containing the expected
# substring, no temporary output left behind, and for modes exists/diskfull that the previous
# output is byte-identical. --valgrind runs each plain/exists row under valgrind
# --leak-check=full and fails a row with definitely-lost bytes (slow: minutes).
# Exit status: 0 all rows passed; 1 a row failed; 77 (ctest SKIP_RETURN_CODE) no failure but
# some rows pending or the programs are not built — never reported as passed.
set -uo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_root="$(cd "${_here}/../.." && pwd)"
_bin="" _work="" _table="${_here}/bad_inputs.tsv" _only="" _valgrind=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) _bin="$2"; shift 2 ;;
    --work) _work="$2"; shift 2 ;;
    --table) _table="$2"; shift 2 ;;
    --only) _only=",$2,"; shift 2 ;;
    --valgrind) _valgrind=1; shift ;;
    *) echo "run_bad_inputs.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n "${_bin}" && -n "${_work}" ]] || { echo "usage: $0 --bin DIR --work DIR [...]" >&2; exit 2; }
_py="${TURBOESM_PYTHON:-python3}"
[[ -x "${_py}" ]] || _py=python3

if [[ ! -x "${_bin}/turboesm-make-model" ]]; then
  echo "SKIPPED: ${_bin}/turboesm-make-model is not built; no row can run" >&2
  exit 77
fi
rm -rf "${_work}"
mkdir -p "${_work}/rows"
_data="${_work}/inputs"
if ! "${_bin}/turboesm-make-model" --preset tiny --seed 7 --out "${_data}/model" \
    >"${_work}/make-model.log" 2>&1; then
  echo "FAILED: cannot build the good tiny model:" >&2; cat "${_work}/make-model.log" >&2; exit 1
fi
if ! "${_py}" "${_here}/make_bad_inputs.py" "${_data}/model" "${_data}" >"${_work}/vars.txt"; then
  echo "FAILED: make_bad_inputs.py" >&2; exit 1
fi
# Calibration checkpoints (when turboesm-calibrate is built): one for the good model, one for
# another model (same config, other weights), and the good one with a non-orthogonal rotation.
if [[ -x "${_bin}/turboesm-calibrate" ]]; then
  _q="${_root}/calibration/quickstart.fasta"
  if ! { "${_bin}/turboesm-make-model" --preset tiny --seed 8 --out "${_data}/model_other" &&
         "${_bin}/turboesm-calibrate" --model "${_data}/model" --fasta "${_q}" \
           --out "${_data}/ckpt.safetensors" &&
         "${_bin}/turboesm-calibrate" --model "${_data}/model_other" --fasta "${_q}" \
           --out "${_data}/ckpt_other_model.safetensors" &&
         "${_py}" "${_here}/make_bad_inputs.py" --break-rotation "${_data}/ckpt.safetensors" \
           "${_data}/ckpt_non_orthogonal.safetensors" >>"${_work}/vars.txt"; } \
       >"${_work}/calibrate.log" 2>&1; then
    echo "FAILED: cannot build the checkpoints:" >&2; tail -5 "${_work}/calibrate.log" >&2; exit 1
  fi
fi
declare -A _vars=([bin]="${_bin}" [work]="${_work}" [data]="${_data}" [model]="${_data}/model"
                  [quickstart]="${_root}/calibration/quickstart.fasta")
while IFS='=' read -r _k _v; do _vars[${_k}]="${_v}"; done <"${_work}/vars.txt"

# expand TEXT: substitutes every {name} placeholder (plus {out}, set per row).
expand() {
  local s="$1" k
  for k in "${!_vars[@]}"; do s="${s//\{${k}\}/${_vars[${k}]}}"; done
  printf '%s' "${s}"
}

_pass=0 _fail=0 _skip=0 _failed_ids=()
fail() { echo "FAILED  ${_id}: $*" >&2; _ok=0; }

while IFS=$'\t' read -r _id _status _prog _mode _exit _expect _args _note; do
  [[ -z "${_id}" || "${_id}" == \#* || "${_id}" == id ]] && continue
  [[ -n "${_only}" && "${_only}" != *",${_id},"* ]] && continue
  if [[ "${_status}" == pending ]]; then
    echo "SKIPPED ${_id}: pending (${_note:-no note})"
    _skip=$((_skip + 1)); continue
  fi
  [[ "${_status}" == active ]] || { echo "FAILED  ${_id}: bad status '${_status}'" >&2; exit 2; }
  _rowdir="${_work}/rows/${_id}"
  mkdir -p "${_rowdir}"
  _vars[out]="${_rowdir}/out.safetensors"
  _out="${_vars[out]}"
  _expect="$(expand "${_expect}")"
  read -r -a _argv <<<"$(expand "${_args}")"
  _exe="${_bin}/${_prog}"
  _ok=1
  if [[ ! -x "${_exe}" ]]; then
    fail "program ${_exe} not built (mark the row pending if it does not exist yet)"
  else
    case "${_mode}" in
      plain) ;;
      exists) printf 'previous output\n' >"${_out}" ;;
      diskfull)
        "${_bin}/turboesm-embed" --model "${_vars[model]}" --fasta "${_data}/good.fasta" \
          --out "${_out}" --logits >"${_rowdir}/setup.log" 2>&1 || fail "setup run failed"
        ;;
      *) echo "FAILED  ${_id}: bad mode '${_mode}'" >&2; exit 2 ;;
    esac
    _before=""
    [[ -f "${_out}" ]] && _before="$(sha256sum <"${_out}")"
    _wrap=()
    if [[ ${_valgrind} -eq 1 ]]; then
      [[ "${_mode}" == diskfull ]] && { echo "SKIPPED ${_id}: not under valgrind (ulimit)"; _skip=$((_skip + 1)); continue; }
      _wrap=(valgrind --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite
             --log-file="${_rowdir}/valgrind.log")
    fi
    if [[ "${_mode}" == diskfull ]]; then
      # A 16 KiB file-size limit; SIGXFSZ ignored (inherited through exec), so write() fails
      # with EFBIG the way it fails with ENOSPC on a full disk.
      (ulimit -f 16; trap '' XFSZ; exec "${_exe}" "${_argv[@]}") \
        >"${_rowdir}/stdout" 2>"${_rowdir}/stderr"
    else
      "${_wrap[@]}" "${_exe}" "${_argv[@]}" >"${_rowdir}/stdout" 2>"${_rowdir}/stderr"
    fi
    _rc=$?
    if [[ ${_rc} -ge 128 ]]; then
      fail "killed by signal $((_rc - 128)) (expected exit ${_exit})"
    elif [[ ${_rc} -ne ${_exit} ]]; then
      fail "exit ${_rc}, expected ${_exit}"
    fi
    _nerr=$(grep -c "^${_prog}: error:" "${_rowdir}/stderr")
    _last=$(grep -v '^[[:space:]]*$' "${_rowdir}/stderr" | tail -1)
    if [[ ${_nerr} -ne 1 ]]; then
      fail "${_nerr} '${_prog}: error:' lines on stderr, expected exactly 1"
    elif [[ "${_last}" != "${_prog}: error:"* ]]; then
      fail "the error is not the last stderr line (last: '${_last}')"
    elif [[ "${_last}" != *"${_expect}"* ]]; then
      fail "stderr line does not contain the expected text"
      echo "        expected: ${_expect}" >&2
    fi
    if [[ -n "${_before}" && "$(sha256sum <"${_out}" 2>/dev/null)" != "${_before}" ]]; then
      fail "the previous output ${_out} changed"
    fi
    if compgen -G "${_out}.tmp-*" >/dev/null; then fail "temporary output left behind"; fi
    if [[ ${_valgrind} -eq 1 ]]; then
      _lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "${_rowdir}/valgrind.log" |
              tr -d , | tail -1)
      _errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "${_rowdir}/valgrind.log" | tail -1)
      echo "        valgrind: definitely lost ${_lost:-0} bytes, ${_errs:-?} errors (${_rowdir}/valgrind.log)"
      [[ "${_lost:-0}" == 0 ]] || fail "valgrind: ${_lost} bytes definitely lost"
    fi
  fi
  if [[ ${_ok} -eq 1 ]]; then
    echo "PASSED  ${_id}"
    _pass=$((_pass + 1))
  else
    echo "        stderr: $(head -c 600 "${_rowdir}/stderr" 2>/dev/null)" >&2
    _fail=$((_fail + 1)); _failed_ids+=("${_id}")
  fi
done <"${_table}"

echo "bad inputs: ${_pass} passed, ${_fail} failed, ${_skip} skipped (pending)"
if [[ ${_fail} -gt 0 ]]; then
  echo "failed: ${_failed_ids[*]}"
  exit 1
fi
[[ ${_skip} -gt 0 ]] && exit 77
[[ ${_pass} -gt 0 ]] || { echo "no row ran" >&2; exit 1; }
exit 0
