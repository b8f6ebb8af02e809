// SPDX-License-Identifier: MIT
// Replay driver: runs a fuzz target's LLVMFuzzerTestOneInput over files without libFuzzer, so
// any compiler (and the sanitizer build) re-checks the seed corpus and every saved crash on each
// ctest run. Usage: replay_<target> <file-or-directory>... (directories: every regular file,
// sorted, hidden files and README* skipped). Exits non-zero if an argument does not exist or no
// input was found at all; a failing input crashes or aborts, naming itself first on stderr.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      for (const auto& e : fs::directory_iterator(arg)) {
        const std::string name = e.path().filename().string();
        if (!e.is_regular_file() || name[0] == '.' || name.rfind("README", 0) == 0) continue;
        inputs.push_back(e.path());
      }
    } else if (fs::is_regular_file(arg, ec)) {
      inputs.push_back(arg);
    } else {
      std::fprintf(stderr, "replay: %s: no such file or directory\n", argv[i]);
      return 2;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs found (expected a corpus directory)\n");
    return 2;
  }
  for (const auto& p : inputs) {
    std::ifstream in(p, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "replay: cannot read %s\n", p.c_str());
      return 2;
    }
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", p.c_str(), bytes.size());
    // A copy in an exact-size heap block, so ASan catches reads one past the end.
    std::vector<std::uint8_t> buf(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(buf.empty() ? nullptr : buf.data(), buf.size());
  }
  std::printf("replayed %zu inputs: all passed\n", inputs.size());
  return 0;
}
