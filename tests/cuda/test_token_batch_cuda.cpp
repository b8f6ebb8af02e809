// SPDX-License-Identifier: MIT
// make_token_batch / to_device_async on CUDA: host tokens reach the device through pinned
// staging buffers without a synchronising copy; every copy must still land intact while later
// ones reuse the staging memory (the caching host allocator holds a buffer until its copy ran),
// and device tokens are used where they are. GPU tests skip without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "turboesm/model/token_batch.h"

namespace turboesm {
namespace {

namespace tm = turboesm::model;
const c10::Device kCuda(c10::kCUDA, 0);

TEST(TokenBatchCuda, HostTokensArriveIntactUnderStagingReuse) {
  TURBOESM_REQUIRE_GPU();
  // Keep the stream busy so the copies are still queued when later batches are staged.
  const at::Tensor big = at::randn({4096, 4096}, at::TensorOptions().device(kCuda));
  std::vector<at::Tensor> hosts, devs;
  for (int i = 0; i < 64; ++i) {
    (void)at::mm(big, big);
    const at::Tensor t = at::randint(0, 33, {3, 257}, at::kLong);
    const at::Tensor m = at::rand({3, 257}).gt(0.2);
    const tm::TokenBatch tb = tm::make_token_batch(t, m, 33, 32, kCuda);
    ASSERT_TRUE(tb.tokens.is_cuda() && tb.mask.is_cuda());
    hosts.push_back(t);
    hosts.push_back(m);
    devs.push_back(tb.tokens);
    devs.push_back(tb.mask);
  }
  for (size_t i = 0; i < hosts.size(); ++i)
    EXPECT_TRUE(at::equal(devs[i].cpu(), hosts[i])) << "copy " << i;
}

TEST(TokenBatchCuda, DeviceTokensAreUsedInPlace) {
  TURBOESM_REQUIRE_GPU();
  const at::Tensor t =
      at::randint(0, 33, {2, 9}, at::TensorOptions().device(kCuda).dtype(at::kLong));
  const at::Tensor m = at::ones({2, 9}, at::TensorOptions().device(kCuda).dtype(at::kBool));
  const tm::TokenBatch tb = tm::make_token_batch(t, m, 33, 32, kCuda);
  EXPECT_TRUE(tb.tokens.is_same(t));
  EXPECT_TRUE(tb.mask_host.device().is_cpu());
  EXPECT_FALSE(tb.padded);
  // Device ids out of range are found through the one host copy.
  const at::Tensor bad = t.clone();
  bad[1][4] = 40;
  EXPECT_THROW(tm::make_token_batch(bad, m, 33, 32, kCuda), std::exception);
  // Host → device through the helper alone.
  const at::Tensor h = at::arange(100, at::kInt);
  EXPECT_TRUE(at::equal(tm::to_device_async(h, kCuda).cpu(), h));
}

}  // namespace
}  // namespace turboesm
