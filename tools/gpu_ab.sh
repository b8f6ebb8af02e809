#!/usr/bin/env bash
# A/B runs of kernel versions on the GPU machine without building there (not CI). Every library
# variant is this build tree's libturboesm.so.0 with some kernel objects compiled from another
# source, so that variants differ only in those kernels and one pair of test / benchmark binaries
# serves them all (the binaries load whichever library comes first on LD_LIBRARY_PATH).
#
# On the CPU machine (a configured CUDA build in ${TURBOESM_BUILD_DIR:-build}, tools/build.sh):
#   tools/gpu_ab.sh lib NAME SOURCE [KERNEL.cu ...]
#       libturboesm.so.0 with KERNEL.cu (default kernels/quantize_append.cu) compiled from SOURCE:
#       a git revision (its kernels/ and include/) or a directory laid out like the repository.
#       The library's interface headers (include/turboesm/kernels/) must be the tree's: the host
#       code that fills the kernels' parameter structs comes from the tree. NAME "new" is the
#       tree's own library (pack makes it).
#   tools/gpu_ab.sh pack
#       builds the tree (test_cuda, bench_model_cuda, the library = variant "new"), then strips
#       and packs them with every variant made by `lib` into ${TURBOESM_AB_DIR:-gpu-ab}/pack
#       (~8 MB per library): carry that folder to the GPU machine.
# On the GPU machine, from the repository root:
#   tools/gpu_ab.sh run [ROUNDS] [BENCH_ARGS ...]
#       unpacks, runs test_cuda --gtest_filter=${TURBOESM_AB_TESTS} with every variant (and diffs
#       their "[ info ]" lines against "new"), then ROUNDS (default 3) rounds of bench_model_cuda
#       BENCH_ARGS (default: prefill esm2_t33_650M 1024 4), one run per variant per round, in
#       turn; then the whole test_cuda and memcheck of the test filter on "new"; last (what a
#       merge needs comes first, for a call cut off by its time limit), with
#       TURBOESM_AB_NCU=REGEX, an ncu profile (--set full, source counters) of one launch of the
#       kernels matching REGEX (the 6th: past the first prefill's early layers) in the same
#       benchmark for every variant, with its details page and per-SASS-line counters as text.
#       A summary, the logs (tgz) and the ncu reports go to ${OUT} after every step
#       (TURBOESM_AB_SKIP: any of tests bench full memcheck).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ab="${TURBOESM_AB_DIR:-${_root}/gpu-ab}"
_cmd="${1:-}"
shift || true
_ab_tmp=""  # the temporary folder of lib / pack, removed however the script ends
trap '[[ -z "${_ab_tmp}" ]] || rm -rf "${_ab_tmp}"' EXIT
# shellcheck source=tools/gpu_env.sh
source "${_root}/tools/gpu_env.sh"  # turboesm_torch_libdir, turboesm_gpu_line

ab_lib() {
  local name="$1" source="$2"
  shift 2
  local kernels=("$@")
  ((${#kernels[@]})) || kernels=(kernels/quantize_append.cu)
  local build="${TURBOESM_BUILD_DIR:-${_root}/build}"
  [[ -f "${build}/lib/libturboesm_kernels.a" ]] || {
    echo "gpu_ab.sh lib: no CUDA build in ${build} (run tools/build.sh first)" >&2
    return 1
  }
  local tmp src
  _ab_tmp="$(mktemp -d)"
  tmp="${_ab_tmp}"
  if [[ -d "${source}" ]]; then
    src="$(cd "${source}" && pwd)"
  else
    git -C "${_root}" rev-parse --verify --quiet "${source}^{commit}" > /dev/null || {
      echo "gpu_ab.sh lib: '${source}' is neither a directory nor a git revision" >&2
      return 1
    }
    src="${tmp}/src"
    mkdir -p "${src}"
    git -C "${_root}" archive "${source}" kernels include | tar -x -C "${src}"
  fi
  if ! diff -rq "${src}/include/turboesm/kernels" "${_root}/include/turboesm/kernels" > /dev/null; then
    echo "gpu_ab.sh lib: ${source}'s include/turboesm/kernels differs from the tree's: the host" \
      "code would not match its kernels" >&2
    return 1
  fi
  mkdir -p "${tmp}/obj"
  cp "${build}/lib/libturboesm_kernels.a" "${tmp}/kernels.a"
  local cu obj cmd
  for cu in "${kernels[@]}"; do
    [[ -f "${src}/${cu}" ]] || { echo "gpu_ab.sh lib: no ${cu} in ${source}" >&2; return 1; }
    obj="CMakeFiles/turboesm_kernels.dir/${cu}.o"
    cmd="$(ninja -C "${build}" -t commands "${obj}" | tail -1)"
    [[ "${cmd}" == *nvcc* ]] || { echo "gpu_ab.sh lib: no nvcc command for ${obj}" >&2; return 1; }
    # The same command, with SOURCE's kernels/ and include/ first and no dependency file.
    cmd="${cmd//-MD -MT ${obj} -MF ${obj}.d/}"
    cmd="${cmd//-o ${obj}/-o ${tmp}/obj/$(basename "${cu}").o}"
    cmd="${cmd//${_root}\/${cu}/${src}/${cu}}"
    cmd="${cmd//-I${_root}\/include/-I${src}/include}"
    cmd="${cmd//-I${_root}\/kernels/-I${src}/kernels}"
    (cd "${build}" && eval "${cmd}")
    (cd "${tmp}/obj" && ar r "${tmp}/kernels.a" "$(basename "${cu}").o")
  done
  local link
  link="$(ninja -C "${build}" -t commands lib/libturboesm.so.0.1.0 | tail -1)"
  link="${link//lib\/libturboesm_kernels.a/${tmp}/kernels.a}"
  link="${link//-o lib\/libturboesm.so.0.1.0/-o ${tmp}/libturboesm.so.0}"
  (cd "${build}" && eval "${link}")
  mkdir -p "${_ab}/libs/${name}"
  mv "${tmp}/libturboesm.so.0" "${_ab}/libs/${name}/"
  echo "gpu_ab.sh: ${_ab}/libs/${name}/libturboesm.so.0 (${kernels[*]} from ${source})"
}

ab_pack() {
  local build="${TURBOESM_BUILD_DIR:-${_root}/build}"
  cmake --build "${build}" --target test_cuda bench_model_cuda turboesm
  rm -rf "${_ab}/pack" "${_ab}/libs/new"
  mkdir -p "${_ab}/pack/bin" "${_ab}/libs/new"
  cp "${build}/lib/libturboesm.so.0.1.0" "${_ab}/libs/new/libturboesm.so.0"
  strip -o "${_ab}/pack/bin/test_cuda" "${build}/bin/test_cuda"
  strip -o "${_ab}/pack/bin/bench_model_cuda" "${build}/bin/bench_model_cuda"
  local tmp
  _ab_tmp="$(mktemp -d)"
  tmp="${_ab_tmp}"
  for d in "${_ab}"/libs/*/; do
    mkdir -p "${tmp}/libs/$(basename "${d}")"
    strip -o "${tmp}/libs/$(basename "${d}")/libturboesm.so.0" "${d}/libturboesm.so.0"
  done
  tar -C "${tmp}" -cf - libs | xz -T0 -6 > "${_ab}/pack/libs.tar.xz"
  # The tests find their fixtures under the source directory they were built in.
  echo "${_root}" > "${_ab}/pack/source_dir"
  git -C "${_root}" describe --always --dirty > "${_ab}/pack/tree"
  du -sh "${_ab}/pack"
}

# "N passed, M skipped, K failed" from a GoogleTest log (skipped GPU tests are not passes).
gtest_counts() {
  local p s f
  p="$(grep -oE "^\[  PASSED  \] [0-9]+" "$1" | grep -oE "[0-9]+$" || echo 0)"
  s="$(grep -oE "^\[  SKIPPED \] [0-9]+ test" "$1" | grep -oE "[0-9]+" || echo 0)"
  f="$(grep -oE "^\[  FAILED  \] [0-9]+ test" "$1" | grep -oE "[0-9]+" || echo 0)"
  echo "${p} passed, ${s} skipped, ${f} failed"
}

ab_run() {
  local rounds="${1:-3}"
  shift || true
  local bench=("$@")
  ((${#bench[@]})) || bench=(prefill esm2_t33_650M 1024 4)
  # Logs go to a work folder; after every step publish() puts what the GPU machine's transfer
  # brings back (at most 8 files, none deeper than two folders) under ${OUT}: ab_summary.txt,
  # ab_logs.tgz and the ncu reports, so that a run cut off by its time limit still returns them.
  local dest="${OUT:-${_root}/gpu-out}" out="${TURBOESM_AB_WORK:-/tmp/turboesm-ab-out}"
  local skip=" ${TURBOESM_AB_SKIP:-} "
  local filter="${TURBOESM_AB_TESTS:-*QuantizeAppend*:*TurboConstants*}"
  local bin="${_ab}/pack/bin" libs=/tmp/turboesm-ab
  rm -rf "${out}"
  mkdir -p "${out}" "${libs}" "${dest}"
  publish() {
    cp "${out}/summary.txt" "${dest}/ab_summary.txt"
    tar -C "${out}" --exclude='*.ncu-rep' -czf "${dest}/ab_logs.tgz" .
    find "${out}" -name '*.ncu-rep' -exec cp {} "${dest}/" \;
  }
  [[ -f "${_ab}/pack/libs.tar.xz" ]] || { echo "gpu_ab.sh run: no ${_ab}/pack (carry it)" >&2; return 1; }
  tar -xJf "${_ab}/pack/libs.tar.xz" -C "${libs}"
  chmod +x "${bin}"/*
  local srcdir
  srcdir="$(cat "${_ab}/pack/source_dir")"
  if [[ ! -e "${srcdir}" ]]; then mkdir -p "$(dirname "${srcdir}")" && ln -s "${_root}" "${srcdir}"; fi
  local torchlib variants=() v r res
  torchlib="$(turboesm_torch_libdir)"
  for d in "${libs}"/libs/*/; do variants+=("$(basename "${d}")"); done
  with() { local v="$1"; shift; LD_LIBRARY_PATH="${libs}/libs/${v}:${torchlib}:/usr/local/cuda/lib64" "$@"; }
  {
    turboesm_gpu_line || echo "no nvidia-smi"
    echo "tree $(cat "${_ab}/pack/tree"), variants: ${variants[*]}"
  } | tee "${out}/summary.txt"
  if [[ "${skip}" != *" tests "* ]]; then
    for v in "${variants[@]}"; do
      with "${v}" timeout 300 "${bin}/test_cuda" --gtest_filter="${filter}" > "${out}/tests_${v}.log" 2>&1 \
        && res=passed || res="FAILED (exit $?)"
      grep "\[ info \]" "${out}/tests_${v}.log" > "${out}/info_${v}.txt" || true
      echo "tests ${v}: ${res}; $(gtest_counts "${out}/tests_${v}.log")" | tee -a "${out}/summary.txt"
    done
    for v in "${variants[@]}"; do
      [[ "${v}" == new ]] && continue
      if [[ ! -s "${out}/info_new.txt" && ! -s "${out}/info_${v}.txt" ]]; then
        echo "[ info ] lines: none from ${v} or new (tests skipped?), nothing compared" \
          | tee -a "${out}/summary.txt"
      elif diff -q "${out}/info_new.txt" "${out}/info_${v}.txt" > /dev/null; then
        echo "[ info ] lines: ${v} = new" | tee -a "${out}/summary.txt"
      else
        echo "[ info ] lines: ${v} differs from new (diff in ${out}/info_${v}.diff)" | tee -a "${out}/summary.txt"
        diff "${out}/info_new.txt" "${out}/info_${v}.txt" > "${out}/info_${v}.diff" || true
      fi
    done
  fi
  publish
  if [[ "${skip}" != *" bench "* ]]; then
    for ((r = 1; r <= rounds; ++r)); do
      for v in "${variants[@]}"; do
        with "${v}" timeout 300 "${bin}/bench_model_cuda" "${bench[@]}" > "${out}/bench_${v}_${r}.txt" 2>&1 \
          || echo "bench ${v} round ${r} failed" | tee -a "${out}/summary.txt"
        { echo "== round ${r} ${v}"; grep -E "^(forward|prefill_|in-situ|writes alone|decode)" \
            "${out}/bench_${v}_${r}.txt" || true; } >> "${out}/summary.txt"
      done
    done
  fi
  publish
  if [[ "${skip}" != *" full "* ]]; then
    with new timeout 400 "${bin}/test_cuda" > "${out}/tests_full_new.log" 2>&1 && res=passed || res=FAILED
    echo "test_cuda (all) new: ${res}; $(gtest_counts "${out}/tests_full_new.log")" \
      | tee -a "${out}/summary.txt"
  fi
  publish
  if [[ "${skip}" != *" memcheck "* ]]; then
    with new timeout 400 compute-sanitizer --tool memcheck --error-exitcode 3 "${bin}/test_cuda" \
      --gtest_filter="${filter}" > "${out}/memcheck_new.log" 2>&1 && res=clean || res="FAILED (exit $?)"
    echo "memcheck new: ${res}; $(grep "ERROR SUMMARY" "${out}/memcheck_new.log" | tail -1)" \
      | tee -a "${out}/summary.txt"
  fi
  publish
  if [[ -n "${TURBOESM_AB_NCU:-}" ]]; then
    for v in "${variants[@]}"; do
      with "${v}" timeout 300 ncu --kernel-name "regex:${TURBOESM_AB_NCU}" --launch-skip 5 \
        --launch-count 1 --set full --import-source yes -f -o "${out}/ncu_${v}" \
        "${bin}/bench_model_cuda" "${bench[@]}" > "${out}/ncu_${v}.log" 2>&1 \
        && res=done || res="FAILED (exit $?)"
      ncu -i "${out}/ncu_${v}.ncu-rep" --page details > "${out}/ncu_${v}_details.txt" 2>&1 || true
      ncu -i "${out}/ncu_${v}.ncu-rep" --page source --csv --print-source sass \
        > "${out}/ncu_${v}_sass.csv" 2>&1 || true
      echo "ncu ${v}: ${res}; $(grep -E "^ +(Duration|Executed Ipc Active|Achieved Occupancy) " \
        "${out}/ncu_${v}_details.txt" | tr -s ' ' | tr '\n' ';')" | tee -a "${out}/summary.txt"
    done
    publish
  fi
}

case "${_cmd}" in
  lib) (($# >= 2)) || { echo "usage: tools/gpu_ab.sh lib NAME SOURCE [KERNEL.cu ...]" >&2; exit 2; }
       [[ "$1" != new ]] || { echo "gpu_ab.sh lib: NAME 'new' is the tree's library (pack makes it)" >&2; exit 2; }
       ab_lib "$@" ;;
  pack) ab_pack ;;
  run) ab_run "$@" ;;
  *) echo "usage: tools/gpu_ab.sh lib NAME SOURCE [KERNEL.cu ...] | pack | run [ROUNDS] [BENCH_ARGS ...]" >&2
     exit 2 ;;
esac
