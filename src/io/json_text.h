// SPDX-License-Identifier: MIT
#pragma once
// Private to src/io: JSON values quoted in error messages, safe on hostile input.

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace turboesm::io::detail {

/// \brief `j` as compact JSON for an error message, cut to `max_chars`. Nested containers are
/// summarized ("an array of 3 entries"), never dumped: dump() recurses once per nesting level
/// and a hostile header can nest a million levels deep (stack overflow; test_limits.cpp).
inline std::string short_json(const nlohmann::json& j, std::size_t max_chars = 80) {
  if (j.is_structured()) {
    for (const auto& e : j) {
      if (e.is_structured()) {
        return std::string(j.is_array() ? "an array" : "an object") + " of " +
               std::to_string(j.size()) + " entries";
      }
    }
  }
  std::string s = j.dump();
  if (s.size() > max_chars) s = s.substr(0, max_chars - 3) + "...";
  return s;
}

}  // namespace turboesm::io::detail
