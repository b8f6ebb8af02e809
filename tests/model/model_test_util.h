// SPDX-License-Identifier: MIT
#pragma once
/// \file model_test_util.h
/// \brief Shared helpers of the model and program tests: scratch directories, reading
/// safetensors into at::Tensor, small random configs.

#include <ATen/ATen.h>
#include <ftw.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>

#include "turboesm/io/safetensors.h"
#include "turboesm/model/config.h"
#include "turboesm/model/weights.h"

namespace turboesm::test {

/// rm -rf without std::filesystem::remove_all: the torch wheel's libtorch.so exports its own
/// copy of std::filesystem, and its remove_all segfaults when it wins symbol resolution.
inline void remove_tree(const std::string& path) {
  auto rm = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  ::nftw(path.c_str(), rm, 16, FTW_DEPTH | FTW_PHYS);
}

/// A fresh, empty directory under TURBOESM_TEST_WORK_DIR.
/// A new empty scratch directory for this test process. ctest runs every test case in its own
/// process, in parallel: the pid suffix keeps two cases that share a fixture name apart.
inline std::string fresh_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::path(TURBOESM_TEST_WORK_DIR) / (name + "." + std::to_string(::getpid()));
  remove_tree(p.string());
  fs::create_directories(p);
  return p.string();
}


/// Copies tensor `name` of `f` into an owning CPU tensor.
inline at::Tensor read_tensor(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorInfo& t = f.at(name);
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(model::torch_dtype(t.dtype)));
  std::memcpy(out.data_ptr(), f.data(t), t.nbytes());
  return out;
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

/// A small ESM-2 config with a non-power-of-two head dim (48 / 2 = 24).
inline model::EsmConfig small_config(int layers = 2) {
  model::EsmConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = 2;
  c.num_hidden_layers = layers;
  c.intermediate_size = 96;
  return c;
}

}  // namespace turboesm::test
