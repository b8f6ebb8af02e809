// SPDX-License-Identifier: MIT
#include "turboesm/io/dtype.h"

#include "turboesm/error.h"

namespace turboesm::io {

namespace {
struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::U8, "U8", 1},
};
const DTypeEntry& entry(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  TURBOESM_FAIL("invalid DType value ", static_cast<int>(dtype));
}
}  // namespace

std::size_t dtype_size(DType dtype) { return entry(dtype).size; }

const char* dtype_name(DType dtype) { return entry(dtype).name; }

const char* dtype_names_list() { return "F32, F16, BF16, I64, I32, U8"; }

DType parse_dtype(const std::string& name) {
  for (const auto& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  TURBOESM_FAIL("unsupported dtype '", name, "' (supported: ", dtype_names_list(), ")");
}

}  // namespace turboesm::io
