// SPDX-License-Identifier: MIT
#pragma once
/// \file program_test_util.h
/// \brief Running the real programs (build/bin/turboesm-*) from program-level tests.

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace turboesm::test {

/// Exit code (-1 when the program did not exit normally) and captured output of one run.
struct ProgramRun {
  int code = -1;
  std::string out, err;
};

/// Whole file as a string ("" when it cannot be read).
inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Runs `<env> TURBOESM_BIN_DIR/<program> <args>`, capturing stdout/stderr into files in `dir`
/// (which must exist). `env` is an optional prefix of VAR=value assignments.
inline ProgramRun run_program(const std::string& dir, const std::string& program,
                              const std::string& args, const std::string& env = {}) {
  const std::string out = dir + "/stdout.txt", err = dir + "/stderr.txt";
  const std::string cmd = (env.empty() ? "" : env + " ") + std::string(TURBOESM_BIN_DIR) + "/" +
                          program + " " + args + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  ProgramRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace turboesm::test

/// Expects `text` to contain `needle`, printing the text on failure.
#define EXPECT_HAS(text, needle) \
  EXPECT_NE((text).find(needle), std::string::npos) << "text: " << (text)
