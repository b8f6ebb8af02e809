// SPDX-License-Identifier: MIT
// Concurrency (issue 7): one loaded model shared by 8 threads gives bit-identical results to
// sequential runs — plain forwards (embeddings, logits, contacts, padded batches) and Sessions
// (prefill + append) each with its own FP32 or Turbo cache. CPU, and CUDA with one stream per
// thread. tools/tsan.sh runs this file under ThreadSanitizer (as the small test_concurrency
// binary), where a data race in the library is reported even when the results happen to match.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#ifdef TURBOESM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "turboesm/error.h"
#include "turboesm/io/tokenizer.h"
#include "turboesm/model/config.h"
#include "turboesm/model/esm2.h"
#include "turboesm/model/kv_cache.h"
#include "turboesm/model/session.h"
#include "turboesm/model/turbo_cache.h"

namespace turboesm {
namespace {

using model::CacheKind;
using model::Esm2Model;
using model::Session;

constexpr int kThreads = 8;
/// Passes of every thread over the whole job list (each pass in a thread-specific order).
constexpr int kRounds = 2;

/// Real protein fragments of different lengths (with <mask> and rare residues, so token dropout
/// and the tokenizer's special cases run too).
const std::vector<std::string>& sequences() {
  static const std::vector<std::string> s = {
      "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ",
      "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF",
      "GSHMLEDPV<mask>RLAEKAG",
      "MAHHHHHHVDDDDKXBUZO",
      "MSTNPKPQRKTKRNTNRRPQDVKFPGG<mask>QIVGGVYLLPRRGPRLGVRATRK",
      "PEPTIDE",
  };
  return s;
}

at::Tensor tokens_of(const std::string& s, c10::Device device) {
  return at::tensor(io::EsmTokenizer::instance().encode(s), at::kLong).unsqueeze(0).to(device);
}

/// Everything one job produced, on the CPU (comparing on the host keeps the check independent of
/// the stream the job ran on).
using Outputs = std::vector<at::Tensor>;

/// One unit of work on the shared model; the Turbo spec is built inside the job, so that spec
/// construction also runs concurrently.
struct Job {
  std::string name;
  std::function<Outputs(const std::shared_ptr<const Esm2Model>&)> run;
};

Outputs to_cpu(std::vector<at::Tensor> ts) {
  for (auto& t : ts) t = t.to(at::kCPU);
  return ts;
}

/// Forward of one sequence: last hidden state, logits, contacts.
Job forward_job(int seq) {
  return {"forward seq " + std::to_string(seq), [seq](const std::shared_ptr<const Esm2Model>& m) {
            model::ForwardOptions fo;
            fo.need_logits = fo.need_contacts = true;
            const auto out = m->forward(tokens_of(sequences()[seq], m->device()), at::Tensor(), fo);
            return to_cpu({out.last_hidden_state, out.logits, out.contacts});
          }};
}

/// Forward of a right-padded batch of two sequences with repr layers (embeddings, layer 1, last).
Job batch_job(int a, int b) {
  return {"padded batch " + std::to_string(a) + "+" + std::to_string(b),
          [a, b](const std::shared_ptr<const Esm2Model>& m) {
            const auto& tok = io::EsmTokenizer::instance();
            const auto ta = tok.encode(sequences()[a]), tb = tok.encode(sequences()[b]);
            const int64_t T = static_cast<int64_t>(std::max(ta.size(), tb.size()));
            at::Tensor tokens = at::full({2, T}, int64_t{1}, at::kLong);  // <pad> = 1
            at::Tensor mask = at::zeros({2, T}, at::kLong);
            for (int r = 0; r < 2; ++r) {
              const auto& t = r == 0 ? ta : tb;
              const int64_t n = static_cast<int64_t>(t.size());
              tokens[r].narrow(0, 0, n).copy_(at::tensor(t, at::kLong));
              mask[r].narrow(0, 0, n).fill_(1);
            }
            model::ForwardOptions fo;
            fo.need_logits = true;
            fo.repr_layers = {0, 1, -1};
            const auto out = m->forward(tokens.to(m->device()), mask.to(m->device()), fo);
            Outputs o{out.last_hidden_state, out.logits};
            for (const auto& [layer, h] : out.hidden_states) o.push_back(h);
            return to_cpu(o);
          }};
}

/// Session: prefill the first half, append the rest in chunks of `chunk` tokens. kind kTurbo
/// uses a TurboCacheSpec::random of the given modes, built here.
Job session_job(int seq, CacheKind kind, int chunk, int bits = 3,
                quant::RotationKind rot = quant::RotationKind::kRandom,
                quant::NormMode norm = quant::NormMode::kToken,
                quant::QjlMode qjl = quant::QjlMode::kNone) {
  std::string name = std::string("session ") + model::to_string(kind) + " seq " +
                     std::to_string(seq) + " chunk " + std::to_string(chunk);
  return {name, [=](const std::shared_ptr<const Esm2Model>& m) {
            model::TurboCacheSpec spec;
            if (kind == CacheKind::kTurbo)
              spec = model::TurboCacheSpec::random(m->config(), bits, bits, rot, norm, qjl,
                                                   /*seed=*/100 + seq);
            Session s(m, model::make_kv_cache(kind, m->config(), 1, m->device(),
                                              kind == CacheKind::kTurbo ? &spec : nullptr));
            at::Tensor all = tokens_of(sequences()[seq], m->device());
            const int64_t T = all.size(1), P = T / 2;
            Outputs o{s.prefill(all.narrow(1, 0, P)), s.logits()};
            for (int64_t p = P; p < T; p += chunk) {
              o.push_back(s.append(all.narrow(1, p, std::min<int64_t>(chunk, T - p))));
              o.push_back(s.logits());
            }
            o = to_cpu(o);
            o.push_back(at::tensor({s.kv_bytes(), s.lengths()[0]}, at::kLong));
            return o;
          }};
}

std::vector<Job> jobs() {
  using quant::NormMode;
  using quant::QjlMode;
  using quant::RotationKind;
  return {
      forward_job(0),
      forward_job(1),
      forward_job(2),
      forward_job(3),
      batch_job(4, 5),
      batch_job(1, 2),
      session_job(0, CacheKind::kFp32, 1),
      session_job(4, CacheKind::kFp32, 5),
      session_job(1, CacheKind::kTurbo, 1),
      session_job(2, CacheKind::kTurbo, 3, 3, RotationKind::kHadamard, NormMode::kNone,
                  QjlMode::kSign),
      session_job(4, CacheKind::kTurbo, 4, 2, RotationKind::kRandom, NormMode::kToken,
                  QjlMode::kProd),
      session_job(3, CacheKind::kTurbo, 2, 4, RotationKind::kIdentity, NormMode::kToken,
                  QjlMode::kNone),
  };
}

/// A mismatch found by a worker thread (reported by the main thread: gtest assertions stay on
/// the test's own thread).
struct Mismatch {
  int thread;
  std::string job;
  std::string what;
};

std::string compare(const Outputs& got, const Outputs& want) {
  if (got.size() != want.size())
    return std::to_string(got.size()) + " outputs, expected " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i].sizes() != want[i].sizes() || got[i].scalar_type() != want[i].scalar_type())
      return "output " + std::to_string(i) + " has another shape or dtype";
    if (!at::equal(got[i], want[i])) {
      const double d =
          (got[i].to(at::kDouble) - want[i].to(at::kDouble)).abs().max().item<double>();
      return "output " + std::to_string(i) +
             " differs from the sequential run (max |d| = " + std::to_string(d) + ")";
    }
  }
  return "";
}

/// Runs every job once sequentially, then from kThreads threads at once (thread t walks the job
/// list kRounds times starting at job t, with stride 1 or 5 so the threads' mixes differ), and
/// checks every concurrent result against the sequential one bit for bit.
/// \param per_thread_setup runs first in each worker thread (e.g. selects its CUDA stream) and
///        returns an object kept alive for the thread's lifetime.
void run_concurrently(const std::shared_ptr<const Esm2Model>& m,
                      const std::function<std::shared_ptr<void>()>& per_thread_setup = {}) {
  const std::vector<Job> js = jobs();
  ASSERT_EQ(std::gcd(js.size(), size_t{5}), 1u) << "stride 5 must be coprime with the job count";
  std::vector<Outputs> want;
  for (const Job& j : js) want.push_back(j.run(m));

  std::vector<std::vector<Mismatch>> found(kThreads);
  std::vector<int> done(kThreads, 0);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::shared_ptr<void> keep = per_thread_setup ? per_thread_setup() : nullptr;
      // Start together, so the jobs really overlap.
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      const int n = static_cast<int>(js.size());
      const int stride = t % 2 == 0 ? 1 : 5;  // 5 is coprime with the 12 jobs: every job runs
      for (int r = 0; r < kRounds; ++r) {
        for (int i = 0; i < n; ++i) {
          const int j = (t + i * stride) % n;
          try {
            const std::string err = compare(js[j].run(m), want[j]);
            if (!err.empty()) found[t].push_back({t, js[j].name, err});
          } catch (const std::exception& e) {
            found[t].push_back({t, js[j].name, std::string("threw: ") + e.what()});
          }
          ++done[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  int total = 0;
  for (int t = 0; t < kThreads; ++t) {
    total += done[t];
    for (const Mismatch& x : found[t])
      ADD_FAILURE() << "thread " << x.thread << ", " << x.job << ": " << x.what;
  }
  EXPECT_EQ(total, kThreads * kRounds * static_cast<int>(js.size()));
}

std::shared_ptr<const Esm2Model> tiny(c10::Device device) {
  model::LoadOptions lo;
  lo.device = device;
  return Esm2Model::random(model::EsmConfig::preset("tiny"), /*seed=*/31, /*init_std=*/0.08, lo);
}

TEST(Concurrency, OneCpuModelFromEightThreadsIsBitIdenticalToSequential) {
  run_concurrently(tiny(c10::Device(c10::kCPU)));
}

TEST(Concurrency, OneCudaModelFromEightThreadsWithOwnStreamsIsBitIdenticalToSequential) {
#ifdef TURBOESM_WITH_CUDA
  if (!at::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto m = tiny(c10::Device(c10::kCUDA, 0));
  run_concurrently(m, [] {
    // One pool stream per thread, current for the thread's lifetime: every op and kernel of
    // the job runs on it (the library launches on getCurrentCUDAStream()).
    auto guard = std::make_shared<c10::cuda::CUDAStreamGuard>(c10::cuda::getStreamFromPool());
    return std::shared_ptr<void>(guard);
  });
#else
  GTEST_SKIP() << "built without CUDA (TURBOESM_WITH_CUDA=OFF)";
#endif
}

}  // namespace
}  // namespace turboesm
