// SPDX-License-Identifier: MIT
#pragma once
/// \file atomic_file.h
/// \brief All-or-nothing file output: write to "<path>.tmp-<pid>", fsync, rename on commit().
///
/// Programs never leave a partially written output: until commit() the destination is untouched
/// (a previous file there survives intact), and destroying an uncommitted AtomicFile removes the
/// temporary file. Used by the safetensors writer and by programs writing JSON or text.

#include <cstddef>
#include <string>
#include <string_view>

namespace turboesm::io {

class AtomicFile {
 public:
  /// \brief Opens the temporary file next to `path`.
  /// \param path destination file.
  /// \param overwrite when false, an existing `path` is refused:
  ///        "refusing to overwrite <path> (pass --overwrite)".
  /// \throws turboesm::Error when the parent directory does not exist
  ///         ("output directory <dir> does not exist"), `path` is a directory, or the
  ///         temporary file cannot be created.
  AtomicFile(const std::string& path, bool overwrite);
  ~AtomicFile();
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// \brief Appends `nbytes` bytes. \throws turboesm::Error naming the path on a write error
  ///        (disk full, file size limit, I/O error); the file is then discarded.
  void write(const void* data, std::size_t nbytes);
  void write(std::string_view text) { write(text.data(), text.size()); }

  /// \brief Flushes, fsyncs and renames the temporary file onto the destination (atomic on
  ///        POSIX file systems). \throws turboesm::Error naming the path on failure.
  void commit();

  /// \brief Removes the temporary file without touching the destination. Idempotent.
  void discard() noexcept;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  std::size_t bytes_written() const { return bytes_written_; }
  bool committed() const { return committed_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  std::size_t bytes_written_ = 0;
  bool committed_ = false;
};

/// \brief Writes `text` to `path` atomically (see AtomicFile).
void write_file_atomic(const std::string& path, std::string_view text, bool overwrite);

}  // namespace turboesm::io
