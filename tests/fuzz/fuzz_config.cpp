// SPDX-License-Identifier: MIT
// libFuzzer target: config.json parsing, as programs do it: EsmConfig::from_file on the input
// bytes (JSON syntax, then EsmConfig::from_json).
//
// Invariants checked on success: the config passes validate(), its derived head_dim is
// consistent, and to_json() -> from_json() gives back the same model (canonical_json). On
// failure: turboesm::Error naming the file.
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "turboesm/error.h"
#include "turboesm/model/config.h"

namespace {
using turboesm::fuzz::ScratchFile;
using turboesm::fuzz::starts_with;
using turboesm::model::EsmConfig;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch("-config.json");
  const std::string& path = scratch.write(data, size);
  EsmConfig config;
  try {
    config = EsmConfig::from_file(path);
  } catch (const turboesm::Error& e) {
    FUZZ_CHECK(starts_with(e.what(), path),
               std::string("error does not name the file: ") + e.what());
    return 0;
  }
  config.validate();  // must not throw for a config from_file accepted
  FUZZ_CHECK(config.head_dim() * config.num_attention_heads == config.hidden_size,
             "head_dim x heads != hidden_size");
  FUZZ_CHECK(config.head_dim() % 2 == 0, "odd head_dim accepted");
  const EsmConfig again = EsmConfig::from_json(config.to_json(), "round trip");
  FUZZ_CHECK(again.canonical_json() == config.canonical_json(),
             "to_json/from_json round trip changed the model: " + config.canonical_json() + " -> " +
                 again.canonical_json());
  return 0;
}
