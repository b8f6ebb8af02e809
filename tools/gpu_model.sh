#!/usr/bin/env bash
# GPU machine run of the whole-model measurements of issue 6 (not CI), all on one GPU in one go:
#   1. test_cuda --gtest_filter='*ModelDecodeCuda*': whole-model decode on CUDA vs the CPU path
#      (tiny preset) and the CUDA-graph step vs the eager step;
#   2. bench_model_cuda decode : esm2_t33_650M, FP16 weights, batch 1, 1024 cached tokens, time per
#      appended token: 3-bit turbo cache eager / CUDA graph, FP16 cache eager / CUDA graph;
#   2b. bench_model_cuda gemv  : decode_gemv alone on the 650M and 15B products, per grid, beside
#      at::sum and at::mv reading the same weight (gemv.txt);
#   3. bench_model_cuda prefill: esm2_t33_650M, 1024 residues, forward vs prefill writing the turbo
#      cache (quantize-on-append) and the FP16 cache; the SDPA backend of the exact attention;
#      again at batch 4 (more GPU work per launch; prefill_b4.txt);
#   3b. bench_model_cuda trace_step: the turbo graph decode step's kernels as they really run
#      (CUPTI timeline, not serialised: how far each kernel moves the step's end; trace.txt);
#   3c. bench_model_cuda timeline_step from a -DTURBOESM_DECODE_TIMELINE=ON build tree
#      (TURBOESM_TIMELINE_BUILD_DIR, default build-cuda-tl): the attention launch's phases per
#      CTA (timeline.txt); skipped with a message when that tree has no binary;
#   4. bench_prefill_hf.py     : HF transformers EsmModel, same config, random init, FP16, eager
#      (and sdpa) attention, same sequence length, same GPU, same run → speed-up;
#   5. bench_model_cuda big    : esm2_t48_15B shapes (head dim 128), random FP16 weights created in
#      GPU memory, prefill 1024 residues, decode 1024 tokens through the 3-bit cache (and FP16);
#      memory (weights, caches, peak) and time per token.
# Binaries are built beforehand on an x86-64 machine with the same torch wheel (2.11.0+cu130) and
# carried, as for tools/gpu_kernels.sh:
#   cmake --build <dir> --target test_cuda bench_model_cuda
# or built here first with TURBOESM_GPU_BUILD=1 (needs the build dependencies on this machine).
#   TURBOESM_BUILD_DIR  build tree holding bin/ and lib/ (default: build-cuda-m)
#   TURBOESM_SKIP       space-separated subset of: test memcheck decode gemv prefill prefill_b4
#                       trace timeline hf big
# Output in ${OUT:-gpu-out}: gpu.txt, test_model_decode.log, decode.txt, gemv.txt, prefill.txt,
# prefill_b4.txt, trace.txt, timeline.txt, hf_prefill.txt, big.txt, summary.json (every JSON line of the sections, plus the
# HF speed-ups).
set -uo pipefail
# shellcheck source=tools/gpu_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
turboesm_gpu_env build-cuda-m bench_model_cuda test_cuda bench_model_cuda || exit 1
export PYTHONUNBUFFERED=1
_bench="${_build}/bin/bench_model_cuda"
_rc=0
if [[ "${_skip}" != *" test "* ]]; then
  timeout 300 "${_build}/bin/test_cuda" --gtest_filter='*ModelDecodeCuda*' \
    > "${_out}/test_model_decode.log" 2>&1 || _rc=1
  grep -E "^\[model decode|^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|Failure|Expected|Which is|error" \
    "${_out}/test_model_decode.log" | head -40
fi
if [[ "${_skip}" != *" memcheck "* ]]; then
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 3 "${_build}/bin/test_cuda" \
    --gtest_filter='*ModelDecodeCuda.GraphStep*' >> "${_out}/test_model_decode.log" 2>&1
  _m=$?
  echo "memcheck (ModelDecodeCuda graph tests) exit ${_m}"
  grep -E "ERROR SUMMARY" "${_out}/test_model_decode.log" | tail -2
  [[ ${_m} -ne 0 ]] && _rc=1
fi
for s in decode gemv prefill; do
  if [[ "${_skip}" != *" ${s} "* ]]; then
    timeout 300 "${_bench}" "${s}" > "${_out}/${s}.txt" 2>&1 || { echo "bench ${s} failed"; _rc=1; }
    cat "${_out}/${s}.txt"
  fi
done
# Batch 4: the GPU-bound view of the prefill overheads (batch 1 is host-launch-bound).
if [[ "${_skip}" != *" prefill_b4 "* ]]; then
  timeout 300 "${_bench}" prefill esm2_t33_650M 1024 4 > "${_out}/prefill_b4.txt" 2>&1 \
    || { echo "bench prefill batch 4 failed"; _rc=1; }
  cat "${_out}/prefill_b4.txt"
fi
if [[ "${_skip}" != *" trace "* ]]; then
  timeout 300 "${_bench}" trace_step > "${_out}/trace.txt" 2>&1 || { echo "bench trace_step failed"; _rc=1; }
  grep -v "^JSON" "${_out}/trace.txt" | head -30
fi
# The attention launch's phases (kernels/decode_timeline.h): a second build tree configured with
# -DTURBOESM_DECODE_TIMELINE=ON (built here with TURBOESM_GPU_BUILD=1), its libraries first.
_tl="${TURBOESM_TIMELINE_BUILD_DIR:-${_root}/build-cuda-tl}"
if [[ "${_skip}" != *" timeline "* ]]; then
  if [[ "${TURBOESM_GPU_BUILD:-0}" == 1 ]]; then
    cmake -S "${_root}" -B "${_tl}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTURBOESM_WITH_CUDA=ON \
      -DTURBOESM_DECODE_TIMELINE=ON \
      -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      -DTURBOESM_PYTHON="$(command -v python3)" > /dev/null \
      && cmake --build "${_tl}" -j "$(nproc)" --target bench_model_cuda > /dev/null \
      || { echo "timeline build failed"; _rc=1; }
  fi
  if [[ -x "${_tl}/bin/bench_model_cuda" ]]; then
    LD_LIBRARY_PATH="${_tl}/lib:${LD_LIBRARY_PATH}" timeout 300 "${_tl}/bin/bench_model_cuda" \
      timeline_step > "${_out}/timeline.txt" 2>&1 || { echo "bench timeline_step failed"; _rc=1; }
    grep -v "^JSON" "${_out}/timeline.txt"
  else
    echo "timeline: no ${_tl}/bin/bench_model_cuda (a -DTURBOESM_DECODE_TIMELINE=ON build); skipped"
  fi
fi
if [[ "${_skip}" != *" hf "* ]]; then
  "${_bench}" config esm2_t33_650M > "${_out}/esm2_t33_650M.config.json"
  timeout 300 python3 "${_root}/tests/bench/bench_prefill_hf.py" \
    --config "${_out}/esm2_t33_650M.config.json" --residues 1024 > "${_out}/hf_prefill.txt" 2>&1 \
    || { echo "HF baseline failed"; _rc=1; }
  rm -f "${_out}/esm2_t33_650M.config.json"
  grep -vE "^\s*$" "${_out}/hf_prefill.txt" | tail -4
fi
if [[ "${_skip}" != *" big "* ]]; then
  timeout 400 "${_bench}" big > "${_out}/big.txt" 2>&1 || { echo "bench big failed"; _rc=1; }
  cat "${_out}/big.txt"
fi
# One summary: every section's JSON line, plus our prefill vs HF measured in this run.
python3 - "${_out}" <<'EOF'
import json, os, sys
out = sys.argv[1]
summary = {}
for name in ("decode", "gemv", "prefill", "prefill_b4", "trace", "timeline", "hf_prefill", "big"):
    path = os.path.join(out, name + ".txt")
    if not os.path.exists(path):
        continue
    for line in open(path):
        if line.startswith("JSON "):
            summary[name] = json.loads(line[5:])
p, h = summary.get("prefill", {}), summary.get("hf_prefill", {})
if "forward_ms" in p and "hf_eager_ms" in h:
    summary["speedup_vs_hf_eager_forward"] = h["hf_eager_ms"] / p["forward_ms"]
    summary["speedup_vs_hf_eager_prefill_turbo3"] = h["hf_eager_ms"] / p["prefill_turbo3_ms"]
    summary["speedup_vs_hf_sdpa_forward"] = h["hf_sdpa_ms"] / p["forward_ms"]
    summary["speedup_vs_hf_sdpa_prefill_turbo3"] = h["hf_sdpa_ms"] / p["prefill_turbo3_ms"]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: v for k, v in summary.items() if k.startswith("speedup")}))
EOF
exit ${_rc}
