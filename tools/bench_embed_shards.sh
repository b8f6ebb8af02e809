#!/usr/bin/env bash
# Bounded-memory check of `turboesm-embed --shard-records` (issue 7, "Large inputs"): embeds
# generated FASTA files of N short records (default 100,000 and 1,000,000; 1-6 residues each,
# written at run time, never committed) with the tiny preset model and reports the maximum
# resident set size (/usr/bin/time -v) per N. Memory independent of the file size shows as the
# same max RSS for every N, up to the 8 bytes per record of the duplicate-id check.
#
#   tools/bench_embed_shards.sh [--build DIR] [--work DIR] [--shard-records N] [--threads N]
#                               [COUNT ...]
#
# Not a test (no pass/fail on numbers): it prints a table. Outputs are deleted after each run.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_build="${_root}/build" _work="" _shard=10000 _threads=1 _counts=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) _build="$2"; shift 2 ;;
    --work) _work="$2"; shift 2 ;;
    --shard-records) _shard="$2"; shift 2 ;;
    --threads) _threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) _counts+=("$1"); shift ;;
  esac
done
[[ ${#_counts[@]} -gt 0 ]] || _counts=(100000 1000000)
_bin="${_build}/bin"
for p in turboesm-embed turboesm-make-model; do
  [[ -x "${_bin}/${p}" ]] || { echo "bench_embed_shards.sh: ${_bin}/${p} is not built" >&2; exit 1; }
done
[[ -x /usr/bin/time ]] || { echo "bench_embed_shards.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
_work="${_work:-$(mktemp -d /tmp/turboesm-bench-shards.XXXXXX)}"
mkdir -p "${_work}"
trap 'rm -rf "${_work}/out" "${_work}"/in-*.fasta' EXIT
[[ -d "${_work}/model" ]] ||
  "${_bin}/turboesm-make-model" --preset tiny --seed 1 --out "${_work}/model" >/dev/null 2>&1

printf '%-10s %-8s %12s %10s %12s %10s %8s\n' records shards max_rss_kB wall_s records/s fasta_MB out_MB
for n in "${_counts[@]}"; do
  fasta="${_work}/in-${n}.fasta"
  # Deterministic records p0000000.. of 1-6 residues.
  awk -v n="${n}" 'BEGIN { a = "LAGVSERTIDPKQNFYMHWC"; s = 1;
    for (i = 0; i < n; ++i) { printf(">p%07d\n", i); len = 1 + i % 6; q = "";
      for (j = 0; j < len; ++j) { s = (s * 1103515245 + 12345) % 2147483648;
        q = q substr(a, 1 + int(s / 65536) % 20, 1) } print q } }' >"${fasta}"
  rm -rf "${_work}/out"
  /usr/bin/time -v -o "${_work}/time-${n}.txt" "${_bin}/turboesm-embed" --model "${_work}/model" \
    --fasta "${fasta}" --out "${_work}/out" --shard-records "${_shard}" --threads "${_threads}" \
    2>"${_work}/embed-${n}.log"
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "${_work}/time-${n}.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "${_work}/time-${n}.txt" |
         awk -F: '{ s = 0; for (i = 1; i <= NF; ++i) s = s * 60 + $i; print s }')
  shards=$(ls "${_work}/out" | grep -c '^shard-.*\.safetensors$' || true)
  printf '%-10s %-8s %12s %10.1f %12.0f %10.1f %8.0f\n' "${n}" "${shards}" "${rss}" "${wall}" \
    "$(awk -v n="${n}" -v w="${wall}" 'BEGIN { print n / (w > 0 ? w : 1) }')" \
    "$(du -m "${fasta}" | cut -f1)" "$(du -sm "${_work}/out" | cut -f1)"
  rm -rf "${_work}/out" "${fasta}"
done
