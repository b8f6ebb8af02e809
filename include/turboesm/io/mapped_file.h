// SPDX-License-Identifier: MIT
#pragma once
/// \file mapped_file.h
/// \brief Read-only memory mapping of a whole file (RAII, movable, not copyable).

#include <cstddef>
#include <cstdint>
#include <string>

namespace turboesm::io {

/// \brief A read-only, private mmap of a file. An empty file maps to `size() == 0`, `data() ==
/// nullptr`.
class MappedFile {
 public:
  MappedFile() = default;
  /// \brief Maps `path`. \throws turboesm::Error naming the path and the OS error.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset() noexcept;
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace turboesm::io
