// SPDX-License-Identifier: MIT
#pragma once
/// \file host_device.h
/// \brief `TURBOESM_HOST_DEVICE`: marks code shared by host C++ and CUDA device code.
///
/// The bit layouts (bitpack.h), the page format (format.h), the fp16 conversions (half.h) and the
/// codebook look-ups (codebook.h) are compiled both by the host compiler and by nvcc for the fused
/// decode kernel. Functions marked with this macro must not throw, allocate or use the standard
/// library beyond <cstdint>/<cstring>.

#if defined(__CUDACC__)
#define TURBOESM_HOST_DEVICE __host__ __device__
#define TURBOESM_FORCE_INLINE __forceinline__
#else
#define TURBOESM_HOST_DEVICE
#define TURBOESM_FORCE_INLINE inline __attribute__((always_inline))
#endif

/// Loop-unroll hint understood by nvcc, clang and GCC (GCC ignores a bare `#pragma unroll`).
#if defined(__CUDACC__) || defined(__clang__)
#define TURBOESM_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define TURBOESM_UNROLL _Pragma("GCC unroll 8")
#else
#define TURBOESM_UNROLL
#endif
