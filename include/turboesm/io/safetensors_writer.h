// SPDX-License-Identifier: MIT
#pragma once
/// \file safetensors_writer.h
/// \brief Streaming, atomic safetensors writer.
///
/// All tensor specs are known up front, so the header is written first and each tensor's bytes
/// follow in spec order (a 3B model is written tensor by tensor, never held whole in memory).
/// Output goes to "<path>.tmp-<pid>" (see AtomicFile), is fsynced and renamed on commit().
/// The header is padded with spaces to a multiple of 8 bytes, as the Rust crate does, so the
/// data section starts 8-byte aligned.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "turboesm/io/atomic_file.h"
#include "turboesm/io/dtype.h"

namespace turboesm::io {

/// \brief A tensor to write: borrowed bytes, row-major, little-endian.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  ///< numel × dtype_size(dtype) bytes
};

struct WriteOptions {
  bool overwrite = false;                       ///< replace an existing output file
  std::map<std::string, std::string> metadata;  ///< written as "__metadata__"
};

class SafetensorsWriter {
 public:
  /// \brief Name, dtype and shape of one tensor; its bytes come later via write_next().
  struct Spec {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
  };

  /// \brief Validates the specs (non-empty unique names, not "__metadata__", dims ≥ 0,
  /// byte sizes without overflow), creates the temporary file and writes the header.
  /// \throws turboesm::Error: "refusing to overwrite <path> (pass --overwrite)",
  /// "output directory <dir> does not exist", invalid spec (naming the tensor), write error.
  SafetensorsWriter(const std::string& path, std::vector<Spec> specs, WriteOptions opts = {});
  ~SafetensorsWriter();
  SafetensorsWriter(SafetensorsWriter&&) noexcept;
  SafetensorsWriter& operator=(SafetensorsWriter&&) = delete;
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  /// \brief Writes the bytes of the next tensor in spec order.
  /// \param nbytes must equal numel × dtype_size of that tensor.
  /// \throws turboesm::Error on size mismatch, on a call past the last spec, or on a write
  /// error (the temporary file is then removed; a previous output file survives intact).
  void write_next(const void* data, std::size_t nbytes);
  /// \brief Index of the next tensor write_next() expects (== number written so far).
  std::size_t next_index() const { return next_; }
  /// \brief Spec of the next tensor write_next() expects. \throws if all were written.
  const Spec& next_spec() const;
  /// \brief Renames the finished file onto `path`.
  /// \throws turboesm::Error if tensors are missing (naming the first) or on I/O failure.
  void commit();

 private:
  std::vector<Spec> specs_;
  std::vector<std::uint64_t> sizes_;
  std::size_t next_ = 0;
  std::unique_ptr<AtomicFile> file_;
};

/// \brief Writes `tensors` (in that order) to `path` in one call. See SafetensorsWriter.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const WriteOptions& opts = {});

}  // namespace turboesm::io
