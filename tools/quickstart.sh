#!/usr/bin/env bash
# Quick start: installs what is missing, builds Release, writes the bundled default model
# (turboesm-make-model --preset tiny: RANDOM weights, for a smoke run; point --model at a real HF
# ESM-2 directory such as facebook/esm2_t33_650M_UR50D for real embeddings), embeds the bundled
# FASTA of real proteins (calibration/quickstart.fasta, provenance in calibration/PROVENANCE.md)
# and prints a short summary. Idempotent: a rerun rebuilds nothing and overwrites the output.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_build="${TURBOESM_BUILD_DIR:-${_root}/build}"
"${_root}/tools/build.sh"
_bin="${_build}/bin"
_work="${_build}/quickstart"
mkdir -p "${_work}"
if [[ ! -f "${_work}/tiny/model.safetensors" ]]; then
  "${_bin}/turboesm-make-model" --preset tiny --seed 0 --out "${_work}/tiny"
fi
"${_bin}/turboesm-embed" --model "${_work}/tiny" --fasta "${_root}/calibration/quickstart.fasta" \
  --out "${_work}/embeddings.safetensors" --logits --contacts --repr-layers 0,-1 --overwrite
echo "quickstart: embeddings of $(grep -c '>' "${_root}/calibration/quickstart.fasta") real proteins" \
     "written to ${_work}/embeddings.safetensors (model: ${_work}/tiny, random weights)"
