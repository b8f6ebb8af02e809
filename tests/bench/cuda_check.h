// SPDX-License-Identifier: MIT
#pragma once
/// \file cuda_check.h
/// \brief CHECK_CUDA for the stand-alone CUDA benchmarks (plain CUDA runtime, no torch):
/// bench_step_sync.cu, bench_decode_mma_probe.cu. On an error: prints file, line, the call and
/// the CUDA error string, then exits with status 1.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK_CUDA(x)                                                                          \
  do {                                                                                         \
    const cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)
