// SPDX-License-Identifier: MIT
// libFuzzer target: safetensors header and offsets (turboesm::io::parse_safetensors, and the
// mmap reader SafetensorsFile on inputs the parser accepts).
//
// Invariants checked on success: every tensor lies inside the buffer, its size equals dtype size
// x product(shape), the tensors tile the data section exactly in ascending order, and the mmap
// reader sees the same tensors and bytes. On failure: turboesm::Error naming the input.
#include <cstdint>
#include <cstring>
#include <string>

#include "fuzz_util.h"
#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"

namespace {

using turboesm::fuzz::ScratchFile;
using turboesm::fuzz::starts_with;
namespace io = turboesm::io;

constexpr const char* kName = "fuzz.safetensors";

// Small limits so the fuzzer reaches the limit checks, not only the defaults.
io::SafetensorsLimits fuzz_limits() {
  io::SafetensorsLimits l;
  l.max_header_bytes = 1 << 16;
  l.max_tensors = 64;
  l.max_rank = 8;
  return l;
}

void check_header(const io::SafetensorsHeader& h, const std::uint8_t* data, std::size_t size) {
  FUZZ_CHECK(h.data_offset >= 10 && h.data_offset <= size, "data section outside the buffer");
  std::uint64_t cursor = 0;
  volatile std::uint8_t sink = 0;
  for (const auto& t : h.tensors) {
    FUZZ_CHECK(t.begin == cursor, "tensor '" + t.name + "' does not follow its predecessor");
    FUZZ_CHECK(t.end >= t.begin && h.data_offset + t.end <= size,
               "tensor '" + t.name + "' outside the buffer");
    FUZZ_CHECK(t.shape.size() <= fuzz_limits().max_rank, "rank limit not applied");
    FUZZ_CHECK(t.nbytes() == static_cast<std::uint64_t>(t.numel()) * io::dtype_size(t.dtype),
               "tensor '" + t.name + "' size is not dtype size x numel");
    // Touch the first and last byte: ASan flags any read outside the buffer.
    if (t.nbytes() > 0) {
      sink = sink + data[h.data_offset + t.begin] + data[h.data_offset + t.end - 1];
    }
    cursor = t.end;
  }
  FUZZ_CHECK(h.data_offset + cursor == size, "tensors do not cover the data section");
  FUZZ_CHECK(h.tensors.size() <= fuzz_limits().max_tensors, "tensor-count limit not applied");
}

// The file reader must agree with the in-memory parser (it is the same validation on a mapping).
void check_file_reader(const io::SafetensorsHeader& h, const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch(".safetensors");
  const std::string& path = scratch.write(data, size);
  const io::SafetensorsFile file(path, fuzz_limits());
  FUZZ_CHECK(file.tensors().size() == h.tensors.size(), "file reader sees other tensors");
  FUZZ_CHECK(file.metadata() == h.metadata, "file reader sees other metadata");
  for (const auto& t : h.tensors) {
    const io::TensorInfo* ft = file.find(t.name);
    FUZZ_CHECK(ft != nullptr && ft->begin == t.begin && ft->end == t.end && ft->shape == t.shape &&
                   ft->dtype == t.dtype,
               "file reader disagrees on tensor '" + t.name + "'");
    FUZZ_CHECK(std::memcmp(file.data(*ft), data + h.data_offset + t.begin, t.nbytes()) == 0,
               "file reader returns other bytes for '" + t.name + "'");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  io::SafetensorsHeader header;
  try {
    header = io::parse_safetensors(data, size, kName, fuzz_limits());
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(starts_with(e.what(), kName),
               std::string("error does not name the input: ") + e.what());
    return 0;
  }
  check_header(header, data, size);
  check_file_reader(header, data, size);
  return 0;
}
