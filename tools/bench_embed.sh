#!/usr/bin/env bash
# CPU throughput of turboesm-embed vs HF transformers eager, side by side in one run: same random
# esm2_t12_35M model (turboesm-make-model), same sequences (real proteins from
# calibration/default.fasta), same thread count, same fair-esm batching. Prints residues/s for
# each and the ratio.
#
# Environment: BUILD_DIR (default build), THREADS (default nproc), RECORDS (default 150 records
# of at most MAX_LEN=1022 residues), MAX_TOKENS (default 4096), PRESET (default esm2_t12_35M).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
BUILD_DIR="${BUILD_DIR:-build}"
THREADS="${THREADS:-$(nproc)}"
RECORDS="${RECORDS:-150}"
MAX_LEN="${MAX_LEN:-1022}"
MAX_TOKENS="${MAX_TOKENS:-4096}"
PRESET="${PRESET:-esm2_t12_35M}"
# shellcheck source=setup_env.sh
source tools/setup_env.sh
bin="${BUILD_DIR}/bin"
for p in turboesm-make-model turboesm-embed; do
  [[ -x "${bin}/${p}" ]] || { echo "error: ${bin}/${p} not built (set BUILD_DIR)" >&2; exit 1; }
done

work="${BUILD_DIR}/bench-embed"
mkdir -p "${work}"
model="${work}/${PRESET}-seed0"
if [[ ! -f "${model}/model.safetensors" ]]; then
  "${bin}/turboesm-make-model" --preset "${PRESET}" --seed 0 --out "${model}" --overwrite
fi
fasta="${work}/bench.fasta"
awk -v n="${RECORDS}" -v maxlen="${MAX_LEN}" '
  function flush() { if (h != "" && length(s) <= maxlen && k < n) { print h; print s; k++ } }
  /^>/ { flush(); h = $0; s = ""; next } { s = s $0 } END { flush() }' \
  calibration/default.fasta >"${fasta}"
nrec=$(grep -c '^>' "${fasta}")
echo "bench: ${PRESET} (random init), ${nrec} real proteins (<= ${MAX_LEN} residues) from calibration/default.fasta, ${THREADS} threads, max ${MAX_TOKENS} tokens/batch, $(uname -m), $(nproc) cores"

ours_line=$("${bin}/turboesm-embed" --model "${model}" --fasta "${fasta}" --out "${work}/out.safetensors" \
  --threads "${THREADS}" --max-tokens-per-batch "${MAX_TOKENS}" --overwrite 2>&1 | tail -n 1)
echo "turboesm: ${ours_line}"
ours=$(sed -E 's/.* ([0-9.]+) residues\/s.*/\1/' <<<"${ours_line}")

hf_line=$("${TURBOESM_PY}" tests/bench/bench_embed_vs_hf.py --model "${model}" --fasta "${fasta}" \
  --threads "${THREADS}" --max-tokens-per-batch "${MAX_TOKENS}" 2>/dev/null | tail -n 1)
echo "hf:       ${hf_line}"
hf=$(sed -E 's/.*residues_per_s=([0-9.]+).*/\1/' <<<"${hf_line}")

awk -v a="${ours}" -v b="${hf}" 'BEGIN { printf "residues/s: turboesm %.1f, HF eager %.1f, ratio turboesm/HF = %.2fx\n", a, b, a / b }'
