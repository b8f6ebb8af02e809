// SPDX-License-Identifier: MIT
#pragma once
/// \file fuzz_util.h
/// \brief Helpers shared by the libFuzzer targets in tests/fuzz/ (and their replay driver).
///
/// A target's contract: for any input bytes the parser either returns a result that satisfies
/// the invariants the target checks, or throws turboesm::Error whose message names the input.
/// Anything else — a crash, a sanitizer report, another exception type escaping (libFuzzer
/// reports it as "deadly signal" via std::terminate), a broken invariant (FUZZ_CHECK aborts) —
/// is a bug. The same source builds with clang + libFuzzer (tests/fuzz/CMakeLists.txt) and with
/// any compiler + replay_main.cpp (tests/fuzz_replay.cmake), which replays the corpus and every
/// saved crash on each ctest run.

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace turboesm::fuzz {

/// Aborts with a message naming the broken invariant (libFuzzer saves the input as a crash).
#define FUZZ_CHECK(cond, what)                                                                 \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, \
                   std::string(what).c_str());                                                 \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

/// True if `msg` starts with `prefix` (errors must name the file they are about).
inline bool starts_with(const std::string& msg, const std::string& prefix) {
  return msg.compare(0, prefix.size(), prefix) == 0;
}

/// A per-process scratch file on a RAM disk when there is one (/dev/shm), else in $TMPDIR or
/// /tmp; rewritten for every input, removed when the process exits normally.
class ScratchFile {
 public:
  explicit ScratchFile(const char* suffix) {
    const char* dir = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
    if (dir == nullptr) dir = "/tmp";
    path_ = std::string(dir) + "/turboesm-fuzz-" + std::to_string(::getpid()) + suffix;
  }
  ~ScratchFile() { std::remove(path_.c_str()); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  /// Replaces the file's contents with `data[0, size)`; aborts if that fails (not the parser's
  /// fault, but a fuzzing run that silently tests nothing must not pass).
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, "cannot create scratch file " + path_);
    const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
    FUZZ_CHECK(std::fclose(f) == 0 && ok, "cannot write scratch file " + path_);
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace turboesm::fuzz
