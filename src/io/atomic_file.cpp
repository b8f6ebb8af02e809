// SPDX-License-Identifier: MIT
#include "turboesm/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "turboesm/error.h"

namespace turboesm::io {

namespace {

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool exists(const std::string& path, struct stat* st) { return ::lstat(path.c_str(), st) == 0; }

void fsync_dir(const std::string& dir) {
  // Best effort: makes the rename durable; some file systems refuse fsync on directories.
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

std::atomic<unsigned> g_temp_counter{0};

}  // namespace

AtomicFile::AtomicFile(const std::string& path, bool overwrite) : path_(path) {
  TURBOESM_CHECK(!path.empty(), "output path is empty");
  TURBOESM_CHECK(path.back() != '/', "output path ", path, " names a directory, expected a file");
  const std::string dir = parent_dir(path);
  struct stat st {};
  TURBOESM_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "output directory ", dir,
                 " does not exist");
  if (exists(path, &st)) {
    TURBOESM_CHECK(!S_ISDIR(st.st_mode), "output path ", path, " is a directory, expected a file");
    TURBOESM_CHECK(overwrite, "refusing to overwrite ", path, " (pass --overwrite)");
  }
  const std::string base = path + ".tmp-" + std::to_string(::getpid());
  for (int attempt = 0; attempt < 1000; ++attempt) {
    temp_path_ = attempt == 0 ? base : base + "-" + std::to_string(++g_temp_counter);
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0 || errno != EEXIST) break;
  }
  TURBOESM_CHECK(fd_ >= 0, "cannot create ", temp_path_, " (temporary file for ", path,
                 "): ", std::strerror(errno));
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)),
      bytes_written_(other.bytes_written_),
      committed_(other.committed_) {
  other.committed_ = true;  // the moved-from object owns nothing to discard
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

void AtomicFile::write(const void* data, std::size_t nbytes) {
  TURBOESM_CHECK(fd_ >= 0 && !committed_, "cannot write ", path_,
                 ": the file was already committed or discarded");
  const auto* p = static_cast<const char*>(data);
  std::size_t left = nbytes;
  while (left > 0) {
    // Linux writes at most ~2 GiB per call; chunk to keep the loop simple.
    const std::size_t chunk = left < (1u << 30) ? left : (1u << 30);
    const ssize_t n = ::write(fd_, p, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      const std::size_t done = bytes_written_;
      discard();
      TURBOESM_FAIL("cannot write ", path_, ": ", std::strerror(err), " (after ", done,
                    " bytes; the output was not written",
                    ", any previous file at that path is unchanged)");
    }
    p += n;
    left -= static_cast<std::size_t>(n);
    bytes_written_ += static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  TURBOESM_CHECK(fd_ >= 0 && !committed_, "cannot commit ", path_,
                 ": the file was already committed or discarded");
  if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) {
    const int err = errno;
    discard();
    TURBOESM_FAIL("cannot write ", path_, ": fsync failed: ", std::strerror(err));
  }
  const int close_rc = ::close(fd_);
  fd_ = -1;
  if (close_rc != 0) {
    const int err = errno;
    discard();
    TURBOESM_FAIL("cannot write ", path_, ": close failed: ", std::strerror(err));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    discard();
    TURBOESM_FAIL("cannot rename ", temp_path_, " to ", path_, ": ", std::strerror(err));
  }
  committed_ = true;
  fsync_dir(parent_dir(path_));
}

void write_file_atomic(const std::string& path, std::string_view text, bool overwrite) {
  AtomicFile f(path, overwrite);
  f.write(text);
  f.commit();
}

}  // namespace turboesm::io
