// SPDX-License-Identifier: MIT
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "turboesm/error.h"
#include "turboesm/io/safetensors.h"

namespace turboesm::io {

namespace {

std::uint64_t spec_bytes(const SafetensorsWriter::Spec& s) {
  std::uint64_t n = dtype_size(s.dtype);
  for (int64_t d : s.shape) {
    TURBOESM_CHECK(d >= 0, "tensor '", s.name, "': negative dimension ", d, " in shape");
    const auto ud = static_cast<std::uint64_t>(d);
    TURBOESM_CHECK(ud == 0 || n <= std::numeric_limits<std::uint64_t>::max() / ud, "tensor '",
                   s.name, "': shape overflows 64-bit sizes");
    n *= ud;
  }
  return n;
}

}  // namespace

SafetensorsWriter::SafetensorsWriter(const std::string& path, std::vector<Spec> specs,
                                     WriteOptions opts)
    : specs_(std::move(specs)) {
  // Validate everything before touching the file system.
  std::unordered_set<std::string> names;
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  sizes_.reserve(specs_.size());
  for (const Spec& s : specs_) {
    TURBOESM_CHECK(!s.name.empty(), path, ": tensor names must not be empty");
    TURBOESM_CHECK(s.name != "__metadata__", path,
                   ": '__metadata__' is reserved and cannot name a tensor");
    TURBOESM_CHECK(names.insert(s.name).second, path, ": tensor '", s.name, "' given twice");
    const std::uint64_t nbytes = spec_bytes(s);
    sizes_.push_back(nbytes);
    header[s.name] = {{"dtype", dtype_name(s.dtype)},
                      {"shape", s.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!opts.metadata.empty()) header["__metadata__"] = opts.metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned

  file_ = std::make_unique<AtomicFile>(path, opts.overwrite);
  std::uint8_t len[8];
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
  file_->write(len, sizeof(len));
  file_->write(text);
}

SafetensorsWriter::SafetensorsWriter(SafetensorsWriter&&) noexcept = default;
SafetensorsWriter::~SafetensorsWriter() = default;  // AtomicFile removes an uncommitted temp

const SafetensorsWriter::Spec& SafetensorsWriter::next_spec() const {
  TURBOESM_CHECK(next_ < specs_.size(), "all ", specs_.size(), " tensors were already written");
  return specs_[next_];
}

void SafetensorsWriter::write_next(const void* data, std::size_t nbytes) {
  TURBOESM_CHECK(file_ != nullptr, "SafetensorsWriter was moved from");
  TURBOESM_CHECK(next_ < specs_.size(), file_->path(), ": write_next called after all ",
                 specs_.size(), " tensors were written");
  const Spec& s = specs_[next_];
  TURBOESM_CHECK(nbytes == sizes_[next_], file_->path(), ": tensor '", s.name, "' (",
                 dtype_name(s.dtype), ") needs ", sizes_[next_], " bytes, got ", nbytes);
  TURBOESM_CHECK(data != nullptr || nbytes == 0, file_->path(), ": tensor '", s.name,
                 "': null data");
  file_->write(data, nbytes);
  ++next_;
}

void SafetensorsWriter::commit() {
  TURBOESM_CHECK(file_ != nullptr, "SafetensorsWriter was moved from");
  TURBOESM_CHECK(next_ == specs_.size(), file_->path(), ": cannot commit, only ", next_, " of ",
                 specs_.size(), " tensors were written (next expected: '",
                 next_ < specs_.size() ? specs_[next_].name : "", "')");
  file_->commit();
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const WriteOptions& opts) {
  std::vector<SafetensorsWriter::Spec> specs;
  specs.reserve(tensors.size());
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  SafetensorsWriter w(path, std::move(specs), opts);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    std::uint64_t n = dtype_size(tensors[i].dtype);
    for (int64_t d : tensors[i].shape) n *= static_cast<std::uint64_t>(d);
    w.write_next(tensors[i].data, static_cast<std::size_t>(n));
  }
  w.commit();
}

}  // namespace turboesm::io
