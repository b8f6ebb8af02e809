// SPDX-License-Identifier: MIT
#pragma once
/// \file dtype.h
/// \brief Element types of tensors stored in safetensors files, named as the format names them.

#include <cstddef>
#include <cstdint>
#include <string>

namespace turboesm::io {

/// \brief Element type of a stored tensor. Only the types TurboESM reads or writes.
enum class DType : std::uint8_t { F32, F16, BF16, I64, I32, U8 };

/// \brief Bytes per element (F32: 4, F16/BF16: 2, I64: 8, I32: 4, U8: 1).
std::size_t dtype_size(DType dtype);

/// \brief The name safetensors writes for `dtype`: "F32", "F16", "BF16", "I64", "I32", "U8".
const char* dtype_name(DType dtype);

/// \brief Inverse of dtype_name().
/// \throws turboesm::Error naming `name` and the accepted list when it is not one of them.
DType parse_dtype(const std::string& name);

/// \brief Comma-separated list of the accepted names, for error messages.
const char* dtype_names_list();

}  // namespace turboesm::io
