// SPDX-License-Identifier: MIT
// Host-side pieces of the CUDA-graph decode step (issue 6) that run without a GPU:
// KvCache::reserve (no regrowth afterwards), commit_device_steps bookkeeping and its bound,
// device_step refused on the CPU, Session::enable_cuda_graph refused on the CPU, and the lazy
// random-init TensorSource equal to Esm2Model::random on the CPU.
#include <gtest/gtest.h>

#include <string>

#include "io/io_test_util.h"
#include "model/model_test_util.h"
#include "turboesm/error.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/random_init.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

namespace tm = turboesm::model;

using io::testing::error_of;

TEST(DecodeStepHost, ReserveAvoidsRegrowthForEveryKind) {
  const tm::EsmConfig c = test::small_config(3);
  const tm::TurboCacheSpec spec = tm::TurboCacheSpec::random(
      c, 3, 3, quant::RotationKind::kRandom, quant::NormMode::kNone, quant::QjlMode::kNone, 1);
  for (tm::CacheKind kind :
       {tm::CacheKind::kFp32, tm::CacheKind::kFp16, tm::CacheKind::kInt8, tm::CacheKind::kTurbo}) {
    auto cache = tm::make_kv_cache(kind, c, 2, c10::Device(c10::kCPU), &spec);
    cache->reserve(300);
    for (int l = 0; l < cache->num_layers(); ++l) EXPECT_GE(cache->capacity(l), 300);
    EXPECT_EQ(cache->reallocations(), 0) << tm::to_string(kind);  // first allocation
    const at::Tensor kv = at::randn({2, c.num_attention_heads, 100, c.head_dim()});
    for (int rep = 0; rep < 3; ++rep)
      for (int l = 0; l < cache->num_layers(); ++l) cache->append(l, kv, kv, at::Tensor());
    EXPECT_EQ(cache->reallocations(), 0) << tm::to_string(kind);
    EXPECT_EQ(cache->lengths(0)[1], 300);
    cache->reserve(100);  // smaller: nothing to do
    EXPECT_EQ(cache->reallocations(), 0);
    cache->reserve(cache->capacity(0) + 1);  // one regrowth per layer, contents kept
    EXPECT_EQ(cache->reallocations(), c.num_hidden_layers) << tm::to_string(kind);
    EXPECT_EQ(cache->lengths(2)[0], 300);
    EXPECT_NE(error_of([&] { cache->reserve(0); }).find("reserve: tokens must be in [1"),
              std::string::npos);
  }
}

TEST(DecodeStepHost, CommitDeviceStepsAdvancesEveryLayerWithinCapacity) {
  const tm::EsmConfig c = test::small_config(2);
  auto cache = tm::make_kv_cache(tm::CacheKind::kFp32, c, 2, c10::Device(c10::kCPU));
  cache->reserve(64);
  const int64_t cap = cache->capacity(0);
  cache->commit_device_steps(5);
  for (int l = 0; l < 2; ++l) EXPECT_EQ(cache->lengths(l), (std::vector<int64_t>{5, 5}));
  EXPECT_EQ(cache->kv_bytes(),
            2 * 2 * 5 * c.num_attention_heads * cache->bytes_per_token_per_head());
  const std::string e = error_of([&] { cache->commit_device_steps(cap); });
  EXPECT_NE(e.find("beyond its capacity"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { cache->commit_device_steps(-1); }).find("must be >= 0"),
            std::string::npos);
}

TEST(DecodeStepHost, DeviceStepAndGraphNeedCuda) {
  const tm::EsmConfig c = test::small_config(2);
  auto cache = tm::make_kv_cache(tm::CacheKind::kFp16, c, 1, c10::Device(c10::kCPU));
  EXPECT_FALSE(cache->supports_device_step());
  const at::Tensor x = at::zeros({1, c.num_attention_heads, 1, c.head_dim()});
  const at::Tensor n = at::zeros({1}, at::kInt);
  const std::string e = error_of([&] { cache->device_step(0, x, x, x, n, n + 1, 1); });
  EXPECT_NE(e.find("not supported by the fp16 cache on cpu"), std::string::npos) << e;
  auto m = tm::Esm2Model::random(c, 3, 0.02);
  tm::Session s(m, tm::make_kv_cache(tm::CacheKind::kFp32, c, 1, m->device()));
  const std::string g = error_of([&] { s.enable_cuda_graph(64); });
  EXPECT_NE(g.find("CUDA graphs need a CUDA model"), std::string::npos) << g;
  EXPECT_EQ(s.cuda_graph(), nullptr);
}

TEST(DecodeStepHost, RandomTensorSourceOnCpuEqualsRandomInit) {
  const tm::EsmConfig c = test::small_config(2);
  const tm::TensorSource src =
      tm::random_tensor_source(c, 9, 0.05, c10::Device(c10::kCPU), at::kFloat);
  const auto specs = tm::hf_parameter_specs(c);
  ASSERT_EQ(src.names().size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor a = src.get(specs[i].name);
    const at::Tensor b = tm::init_parameter(specs, i, 9, 0.05, c);
    ASSERT_TRUE(a.equal(b)) << specs[i].name;
  }
  EXPECT_FALSE(src.get("no.such.tensor").defined());
  // The whole model through the lazy source: the same forward as Esm2Model::random.
  tm::LoadOptions lo;
  auto lazy = tm::Esm2Model::random_on_device(c, 9, 0.05, lo);
  auto eager = tm::Esm2Model::random(c, 9, 0.05, lo);
  const at::Tensor tokens = at::tensor({0, 5, 6, 7, 2}, at::kLong).unsqueeze(0);
  EXPECT_TRUE(lazy->forward(tokens, at::Tensor())
                  .last_hidden_state.equal(eager->forward(tokens, at::Tensor()).last_hidden_state));
}

}  // namespace
}  // namespace turboesm
