// SPDX-License-Identifier: MIT
#pragma once
/// \file cli.h
/// \brief What every TurboESM program does with its command line and its errors: `--help` exits 0;
/// a bad option or a failure prints one line `<prog>: error: <what>` on stderr and exits 1 (never
/// a backtrace: LibTorch's c10::Error appends one after the first line of its message).

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

namespace turboesm::tools {

/// \brief Parses argv into `app`. \return -1 to go on, else the exit status for main: 0 after
/// --help, 1 after a parse error (reported as `<prog>: error: <what> (see --help)`).
inline int parse_args(CLI::App& app, int argc, char** argv, const char* prog) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "%s: error: %s (see --help)\n", prog, e.what());
    return 1;
  }
  return -1;
}

/// \brief Reports `e` as `<prog>: error: <first line of e.what()>`. \return exit status 1.
inline int report_error(const char* prog, const std::exception& e) {
  const std::string msg = e.what();
  std::fprintf(stderr, "%s: error: %s\n", prog, msg.substr(0, msg.find('\n')).c_str());
  return 1;
}

}  // namespace turboesm::tools
