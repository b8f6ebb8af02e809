// SPDX-License-Identifier: MIT
#pragma once
// Helpers shared by the io tests: a scratch directory per test and raw file builders.

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "turboesm/error.h"

namespace turboesm::io::testing {

namespace fs = std::filesystem;

/// A fresh, empty directory under TURBOESM_TEST_WORK_DIR named after the running test;
/// removed again on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    path_ = fs::path(TURBOESM_TEST_WORK_DIR) / "io" / (name + "-" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }
  /// Names of all entries, for checking that no temporary file was left behind.
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename());
    return out;
  }

 private:
  fs::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// 8-byte little-endian length + header text + data, with an optional fake header length.
inline std::string safetensors_bytes(const std::string& header, const std::string& data,
                                     std::uint64_t fake_len = UINT64_MAX) {
  const std::uint64_t n = fake_len == UINT64_MAX ? header.size() : fake_len;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

/// Runs `fn` and returns the turboesm::Error message; fails the test if nothing is thrown or a
/// different exception type escapes.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const turboesm::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected turboesm::Error, got std::exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected turboesm::Error, nothing was thrown";
  return {};
}

}  // namespace turboesm::io::testing
