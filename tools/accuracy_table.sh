#!/usr/bin/env bash
# Reproduces the accuracy / compression table of issue 5: calibrate + compare over bits × rotation
# × QJL × centering (norm none), the seed's exact configuration, token-norm variants, and the
# INT8 / FP8 baselines, on a random-init model (--init-std 0.08).
#
# Usage: tools/accuracy_table.sh [OUT_DIR]
# Environment (defaults in brackets):
#   BIN          programs directory [build/bin]
#   PRESET       model preset [esm2_t30_150M]
#   DEVICE       cpu | cuda [cpu]
#   THREADS      CPU threads of every program [2]
#   CALIB_FASTA  calibration set [calibration/default.fasta]
#   MAX_TOKENS   calibration vectors per layer/head [4096]
#   EVAL_FASTA   evaluation sequences [the last EVAL_RECORDS records of calibration/quickstart.fasta]
#   EVAL_RECORDS records measured [6]
#   BITS         bit widths of the grid ["2 3 4"]
#   ROTATIONS    rotations of the grid ["svd random hadamard identity"]
#   QJLS         QJL modes of the grid ["none sign prod"]
#   CENTERS      centering values of the grid ["on off"]
#   E2E          "all": end-to-end metric (b) for every row; "key" [default]: only for the key
#                rows (3-bit rows, seed row); "none": metric (a) only
#   EXTRA_ROWS   1 [default]: also the seed's configuration (with INT8/FP8) and the token-norm rows
#   BEST_ROWS    1 [default]: also the rows that spend the 3-bit memory budget differently (at
#                ≥ 9× vs FP32 with everything counted): K 4-bit / V 3-bit without QJL; layer 0
#                kept in INT8 (turboesm-compare --dense-layers 0) with 3-bit K/V elsewhere; and
#                layers 0..D-1 in INT8 (D = 1, 2) with sign QJL on the next n layers
#                (--checkpoint-b, --b-layers), n the most the 9× budget allows
#   ONLY_BEST    1: only the seed row (with INT8/FP8), the strict 3/3 hadamard+sign row and the
#                BEST_ROWS (skips the grid and the token-norm rows) [0]
# Rows are appended to OUT_DIR/table.md (its header is written when it does not exist), so a
# large grid can be run in parts with different settings.
# Output: OUT_DIR/table.md (markdown), OUT_DIR/<row>.json (compare reports), OUT_DIR/*.ckpt.
# Note: random weights are easier than trained ones (smoother K/V statistics); the numbers are
# a regression baseline, not a claim about trained ESM-2.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${here}/build/accuracy}"
bin="${BIN:-${here}/build/bin}"
preset="${PRESET:-esm2_t30_150M}"
device="${DEVICE:-cpu}"
threads="${THREADS:-2}"
calib="${CALIB_FASTA:-${here}/calibration/default.fasta}"
max_tokens="${MAX_TOKENS:-4096}"
eval_records="${EVAL_RECORDS:-6}"
bits_list="${BITS:-2 3 4}"
rot_list="${ROTATIONS:-svd random hadamard identity}"
qjl_list="${QJLS:-none sign prod}"
center_list="${CENTERS:-on off}"
e2e="${E2E:-key}"
extra_rows="${EXTRA_ROWS:-1}"
best_rows="${BEST_ROWS:-1}"
only_best="${ONLY_BEST:-0}"
export OMP_NUM_THREADS="${threads}"

mkdir -p "${out}"
model="${out}/model_${preset}"
if [[ ! -f "${model}/model.safetensors" ]]; then
  "${bin}/turboesm-make-model" --preset "${preset}" --seed 0 --init-std 0.08 --out "${model}"
fi
eval_fasta="${EVAL_FASTA:-${out}/eval.fasta}"
if [[ -z "${EVAL_FASTA:-}" ]]; then
  cp "${here}/calibration/quickstart.fasta" "${eval_fasta}"
fi
samples="${out}/samples_${preset}_${max_tokens}.safetensors"
table="${out}/table.md"
if [[ ! -f "${table}" ]]; then
echo "| config | bits K/V | rotation | QJL | norm | center | dense layers | layer_cos mean | layer_cos min | no-QJL mean | final_hidden_cos | MLM top-1 | x FP32 | x FP16 |" > "${table}"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" >> "${table}"
fi

# row NAME E2E(yes/no) BASELINES calibrate-args...
# Environment of the call: DENSE="0": turboesm-compare --dense-layers 0 (INT8, DENSE_KIND);
# B_ROW=<earlier row> B_LAYERS="1,2": those layers use that row's checkpoint (--checkpoint-b).
row() {
  local name="$1" do_e2e="$2" baselines="$3" dense="${DENSE:-}" dense_kind="${DENSE_KIND:-int8}"
  local b_row="${B_ROW:-}" b_layers="${B_LAYERS:-}"
  shift 3
  local ckpt="${out}/${name}.ckpt" json="${out}/${name}.json"
  "${bin}/turboesm-calibrate" --model "${model}" --fasta "${calib}" --out "${ckpt}" \
    --max-tokens "${max_tokens}" --samples-cache "${samples}" --threads "${threads}" \
    --device "${device}" --overwrite "$@" > "${out}/${name}.calibrate.txt" 2> "${out}/${name}.calibrate.err"
  local flags=()
  [[ "${do_e2e}" == yes ]] || flags+=(--no-end-to-end)
  [[ -z "${dense}" ]] || flags+=(--dense-layers "${dense}" --dense-kind "${dense_kind}")
  [[ -z "${b_row}" ]] || flags+=(--checkpoint-b "${out}/${b_row}.ckpt" --b-layers "${b_layers}")
  "${bin}/turboesm-compare" --model "${model}" --checkpoint "${ckpt}" --fasta "${eval_fasta}" \
    --max-records "${eval_records}" --json "${json}" --overwrite --threads "${threads}" \
    --device "${device}" --baselines "${baselines}" "${flags[@]}" > "${out}/${name}.compare.txt" 2>/dev/null
  python3 - "${json}" "${name}" "$@" >> "${table}" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1])); s = j["summary"]; name = sys.argv[2]; a = sys.argv[3:]
dense = ", ".join(f"{k}: {v}" for k, v in s.get("dense_layers", {}).items()) or "-"
if ";" in s.get("turbo", ""):  # a mixed cache: say what every layer stores
    dense = "; ".join(p.strip() for p in s["turbo"].split(";")[1:])
opt = {a[i]: a[i + 1] for i in range(0, len(a) - 1, 2)}
f = lambda x: "-" if x is None else f"{x:.4f}"
bits = f'{opt.get("--k-bits", opt.get("--bits", "3"))}/{opt.get("--v-bits", opt.get("--bits", "3"))}'
rot = opt.get("--rotation", "svd") + ("" if opt.get("--rotation", "svd") != "svd" else
                                      (" (no scales)" if opt.get("--svd-scales") == "off" else "+scales"))
print(f'| {name} | {bits} | {rot} | {opt.get("--qjl", "none")} | {opt.get("--norm", "none")} | '
      f'{opt.get("--center", "on")} | {dense} | {f(s["layer_cosine_mean"])} | {f(s["layer_cosine_min"])} | '
      f'{f(s["layer_cosine_no_qjl_mean"])} | {f(s["final_hidden_cosine_mean"])} | '
      f'{f(s["mlm_top1_agreement"])} | {s["compression_vs_fp32"]:.2f} | {s["compression_vs_fp16"]:.2f} |')
for b, v in s.get("baselines", {}).items():
    print(f'| baseline {b} | 8/8 | - | - | - | - | all: {b} | {f(v["layer_cosine_mean"])} | {f(v["layer_cosine_min"])} '
          f'| - | {f(v["final_hidden_cosine_mean"])} | {f(v["mlm_top1_agreement"])} | '
          f'{v["compression_vs_fp32"]:.2f} | {v["compression_vs_fp32"] / 2:.2f} |')
EOF
  echo "[accuracy_table] ${name} done" >&2
}

want_e2e() {  # bits
  case "${e2e}" in all) echo yes ;; none) echo no ;; *) [[ "$1" == 3 ]] && echo yes || echo no ;; esac
}

# The seed's exact configuration, with the INT8 / FP8 baselines beside it.
[[ "${extra_rows}" == 1 ]] && row seed_svd_noscale_sign_3b "$( [[ ${e2e} == none ]] && echo no || echo yes )" "int8,fp8" \
  --bits 3 --rotation svd --svd-scales off --qjl sign --norm none --center off
if [[ "${only_best}" == 1 ]]; then
  bits_list=""
  extra_rows=0
  row hadamard_sign_con_3b yes "" --bits 3 --rotation hadamard --qjl sign --norm none --center on
fi
for b in ${bits_list}; do
  for r in ${rot_list}; do
    for q in ${qjl_list}; do
      for c in ${center_list}; do
        row "${r}_${q}_c${c}_${b}b" "$(want_e2e "${b}")" "" \
          --bits "${b}" --rotation "${r}" --qjl "${q}" --norm none --center "${c}"
      done
    done
  done
done
# Token-norm variants (3 bits): data codebooks, and the analytic codebook of TurboQuant.
[[ "${extra_rows}" == 1 ]] && for q in none prod; do
  row "svd_${q}_token_3b" "$(want_e2e 3)" "" --bits 3 --rotation svd --qjl "${q}" --norm token
  row "hadamard_${q}_token_analytic_3b" "$(want_e2e 3)" "" --bits 3 --rotation hadamard --qjl "${q}" \
    --norm token --center off --codebook analytic
done
# The same memory budget spent differently (DESIGN "Memory accounting", everything counted):
# K 4-bit / V 3-bit without QJL costs what 3/3 + sign QJL costs; layer 0 in INT8 (its error
# dominates the end-to-end metric, see turboesm-kvdiag) with 3-bit K/V without QJL elsewhere.
if [[ "${best_rows}" == 1 ]]; then
  # Layers 0..D-1 in INT8 (D = 1, 2), then sign QJL (from the hadamard_sign_con_3b row's
  # checkpoint) on layers D..D+n-1, n the largest with kv_bytes ≤ FP32 / 9: per token per head,
  # FP32 = 8d per layer, INT8 = 2(d + 2), 3/3 = 0.75d, sign QJL + d/8. Skipped where D INT8
  # layers alone break the budget.
  for D in 1 2; do
    n=$(python3 -c "
import json; c = json.load(open('${model}/config.json'))
L = c['num_hidden_layers']; d = c['hidden_size'] // c['num_attention_heads']; D = ${D}
print(min(L - D, int((L * 8 * d / 9 - D * 2 * (d + 2) - (L - D) * 0.75 * d) // (d / 8))))")
    if [[ -f "${out}/hadamard_sign_con_3b.ckpt" && "${n}" -ge 0 ]]; then
      local_dense="$(seq -s, 0 $((D - 1)))"
      if [[ "${n}" -gt 0 ]]; then
        DENSE="${local_dense}" B_ROW=hadamard_sign_con_3b B_LAYERS="$(seq -s, "${D}" $((D + n - 1)))" \
          row "hadamard_none_con_3b_l0-$((D - 1))int8_sign${D}-$((D + n - 1))" "$(want_e2e 3)" "" \
          --bits 3 --rotation hadamard --qjl none --norm none --center on
      fi
    fi
  done
  DENSE=0 row hadamard_none_con_3b_l0int8 "$(want_e2e 3)" "" --bits 3 --rotation hadamard \
    --qjl none --norm none --center on
  row hadamard_k4v3_none_con "$(want_e2e 3)" "" --k-bits 4 --v-bits 3 --rotation hadamard \
    --qjl none --norm none --center on
fi
echo "[accuracy_table] wrote ${table}" >&2
cat "${table}"
