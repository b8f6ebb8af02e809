// SPDX-License-Identifier: MIT
#pragma once
/// \file safetensors.h
/// \brief Zero-copy safetensors reader (mmap) and sharded Hugging Face checkpoints.
///
/// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
/// N bytes of UTF-8 JSON `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
/// "__metadata__": {"k": "v"}}`, then the data section. Offsets are relative to the data section.
/// Validation mirrors the reference Rust crate (`Metadata::validate`): the tensors, sorted by
/// offset, must tile the data section exactly — no overlap, no gap, nothing left over — and each
/// tensor's byte size must equal dtype size × product(shape). Every violation throws
/// turboesm::Error naming the file, the tensor and what was expected; nothing is read out of
/// bounds. The writer lives in safetensors_writer.h (included here).

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "turboesm/io/dtype.h"
#include "turboesm/io/mapped_file.h"
#include "turboesm/io/safetensors_writer.h"

namespace turboesm::io {

/// \brief One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::uint64_t begin = 0;  ///< byte offset of the first byte, relative to the data section
  std::uint64_t end = 0;    ///< one past the last byte, relative to the data section
  /// \brief Product of `shape` (1 for a scalar, rank 0).
  int64_t numel() const;
  /// \brief `end - begin` (equals numel() × dtype_size(dtype) once validated).
  std::uint64_t nbytes() const { return end - begin; }
};

/// \brief Hard limits applied while parsing untrusted files (issue 7).
struct SafetensorsLimits {
  std::uint64_t max_header_bytes = 100ull << 20;  ///< same cap as the Rust crate (100 MB)
  std::size_t max_tensors = 1u << 20;
  std::size_t max_rank = 8;
};

/// \brief The validated header of a safetensors file image: what SafetensorsFile parses on open.
struct SafetensorsHeader {
  std::uint64_t data_offset = 0;    ///< byte offset of the data section (8 + header length)
  std::vector<TensorInfo> tensors;  ///< ascending offsets; they tile the data section exactly
  std::map<std::string, std::string> metadata;  ///< "__metadata__" (empty if absent)
};

/// \brief Parses and validates a complete safetensors file image held in memory, with the same
/// rules, limits and messages as SafetensorsFile (which calls it on its mapping). Lets callers
/// (and the fuzzer, tests/fuzz/fuzz_safetensors.cpp) check buffers that are not files.
/// \param bytes [size] the whole file; may be nullptr when `size` is 0. Only [0, size) is read.
/// \param name  what errors call the buffer (normally its path): "<name>: <what is wrong>".
/// \throws turboesm::Error on every violation; after a successful return every tensor's
/// [data_offset + begin, data_offset + end) lies inside [0, size).
SafetensorsHeader parse_safetensors(const std::uint8_t* bytes, std::uint64_t size,
                                    const std::string& name, const SafetensorsLimits& limits = {});

/// \brief A read-only, memory-mapped safetensors file, validated completely on open.
/// Movable, not copyable; pointers from data() stay valid while the object lives.
class SafetensorsFile {
 public:
  /// \brief Maps and validates `path`. \throws turboesm::Error "<path>: <what is wrong>".
  explicit SafetensorsFile(const std::string& path, SafetensorsLimits limits = {});
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return map_.path(); }
  /// \brief All tensors in file order (ascending offsets).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// \brief The tensor called `name`, or nullptr.
  const TensorInfo* find(const std::string& name) const;
  /// \brief The tensor called `name`. \throws turboesm::Error "<path>: tensor 'x' not found".
  const TensorInfo& at(const std::string& name) const;
  /// \brief Zero-copy pointer to `t`'s bytes inside the mapping (little-endian, row-major).
  /// `t` must come from this file. The pointer may be unaligned for the dtype if the writer
  /// did not align the data; copy before reinterpreting when alignment matters.
  const void* data(const TensorInfo& t) const;
  /// \brief The "__metadata__" string map (empty if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// \brief Size of the whole file in bytes.
  std::uint64_t file_size() const { return map_.size(); }
  /// \brief Byte offset of the data section within the file (8 + header length).
  std::uint64_t data_offset() const { return data_offset_; }

 private:
  MappedFile map_;
  std::uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// \brief The weights of a model: one safetensors file, or shards listed by
/// `model.safetensors.index.json` (`{"weight_map": {"tensor": "shard file"}}`).
class SafetensorsCheckpoint {
 public:
  /// \brief Opens a model directory (`model.safetensors.index.json` if present, else
  /// `model.safetensors`) or a single `.safetensors` file.
  /// \throws turboesm::Error when nothing loadable is there (a fair-esm `.pt` is named as
  /// unsupported), a shard listed in the index is missing or does not contain the tensors the
  /// index assigns to it, or a tensor appears in two shards.
  static SafetensorsCheckpoint open(const std::string& path_or_dir, SafetensorsLimits limits = {});

  /// \brief All tensor names, sorted.
  std::vector<std::string> names() const;
  /// \brief The tensor called `name`, or nullptr.
  const TensorInfo* find(const std::string& name) const;
  /// \brief The tensor called `name`. \throws turboesm::Error naming the checkpoint and tensor.
  const TensorInfo& at(const std::string& name) const;
  /// \brief Zero-copy pointer to the bytes of `name`. \throws turboesm::Error if absent.
  const void* data(const std::string& name) const;
  /// \brief The file holding `name`. \throws turboesm::Error if absent.
  const SafetensorsFile& file_of(const std::string& name) const;
  /// \brief The opened files (one, or the shards in index order).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  /// \brief What was opened: the directory or the file path given to open().
  const std::string& source() const { return source_; }
  /// \brief Total tensor bytes over all files.
  std::uint64_t total_bytes() const;

 private:
  struct Entry {
    std::size_t file = 0;
    const TensorInfo* info = nullptr;
  };
  const Entry& entry(const std::string& name) const;
  std::string source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace turboesm::io
