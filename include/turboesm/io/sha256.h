// SPDX-License-Identifier: MIT
#pragma once
/// \file sha256.h
/// \brief Self-contained SHA-256 (FIPS 180-4), streaming. Used for model fingerprints and
/// calibration-set hashes.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace turboesm::io {

class Sha256 {
 public:
  using Digest = std::array<std::uint8_t, 32>;
  Sha256() { reset(); }
  /// \brief Starts a new hash.
  void reset();
  /// \brief Hashes `nbytes` more bytes.
  void update(const void* data, std::size_t nbytes);
  void update(std::string_view text) { update(text.data(), text.size()); }
  /// \brief Finishes and returns the digest; the object is reset afterwards.
  Digest final();
  /// \brief Finishes and returns the digest as 64 lowercase hex characters; then resets.
  std::string hex_final();

  /// \brief One-shot hex digest of `text`.
  static std::string hex(std::string_view text);
  /// \brief Lowercase hex of any digest.
  static std::string to_hex(const Digest& d);

 private:
  void compress(const std::uint8_t* block);
  std::array<std::uint32_t, 8> h_{};
  std::array<std::uint8_t, 64> buf_{};
  std::size_t buf_len_ = 0;
  std::uint64_t total_ = 0;
};

/// \brief SHA-256 of a whole file, streamed (hex). \throws turboesm::Error naming the path.
std::string sha256_file_hex(const std::string& path);

}  // namespace turboesm::io
