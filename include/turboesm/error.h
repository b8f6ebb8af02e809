// SPDX-License-Identifier: MIT
#pragma once
/// \file error.h
/// \brief The one error type of TurboESM and the check macro that throws it.
///
/// Every layer (quant core, io, model, ops, programs) reports bad input by throwing
/// `turboesm::Error`; nothing aborts. Programs catch it at `main`, print one line and exit
/// non-zero. `TURBOESM_CHECK(cond, a, b, ...)` streams its message parts like `TORCH_CHECK`.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace turboesm {

/// \brief Error raised for invalid input, unsupported configuration or failed I/O.
/// `what()` is the message alone (what users see); `where()` is file:line for developers.
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string where = {})
      : std::runtime_error(std::move(message)), where_(std::move(where)) {}
  const std::string& where() const noexcept { return where_; }

 private:
  std::string where_;
};

namespace detail {
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
[[noreturn]] inline void throw_error(const char* file, int line, std::string msg) {
  throw Error(std::move(msg), std::string(file) + ":" + std::to_string(line));
}
}  // namespace detail

}  // namespace turboesm

/// Throws turboesm::Error with the streamed message when `cond` is false.
#define TURBOESM_CHECK(cond, ...)                                                        \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      ::turboesm::detail::throw_error(__FILE__, __LINE__,                                \
                                      ::turboesm::detail::str_cat(__VA_ARGS__));         \
    }                                                                                    \
  } while (0)

/// Unconditionally throws turboesm::Error with the streamed message.
#define TURBOESM_FAIL(...) \
  ::turboesm::detail::throw_error(__FILE__, __LINE__, ::turboesm::detail::str_cat(__VA_ARGS__))
