// GradBucketer: bucket layout, exact means over 1-4 ranks for tiny to huge buckets, buckets
// issued during backward, double and missing marks. Zero1Optimizer: bit-identical to
// all-reduce + SGD on the whole vector.
#include "trident/parallel/data_parallel.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>

#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../comm/comm_test_util.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<std::unique_ptr<Communicator>> Comms(int n) {
  InprocCommOptions options;
  options.size = n;
  return NewInprocCommunicators(options);
}

// Parameter sizes (elements) in registration order; includes an empty one and a big one.
const std::vector<int64_t> kSizes = {5, 17, 1, 0, 64, 3, 250, 8, 33};

// Rank r's gradient element j of parameter p: small integers, so every sum is exact and the
// mean sum / n is the one correctly rounded float on every path.
float GradValue(int rank, int step, int p, int64_t j) {
  return static_cast<float>(((rank + 1) * (j + 3) + 7 * p + step) % 23 - 11);
}

struct Grads {
  std::vector<std::vector<float>> storage;
  std::vector<Tensor> tensors;
  explicit Grads(const std::vector<int64_t>& sizes) {
    for (int64_t n : sizes) storage.emplace_back(n);
    for (auto& s : storage) tensors.push_back(Tensor::Of(s.data(), static_cast<int64_t>(s.size())));
  }
};

TEST(GradBucketerTest, LayoutPacksInOrderAndNeverSplitsAGradient) {
  auto comms = Comms(1);
  Grads g({10, 10, 30, 5, 5, 5, 2, 20});  // f32: 40, 40, 120, 20, 20, 20, 8, 80 bytes
  GradBucketerOptions options;
  options.bucket_bytes = 80;
  auto b = GradBucketer::Create(*comms[0], g.tensors, options);
  ASSERT_TRUE(b.ok()) << b.status();
  GradBucketerStats st = (*b)->stats();
  ASSERT_EQ(st.buckets.size(), 4u);
  EXPECT_THAT(st.buckets[0].params, ElementsAre(0, 1));
  EXPECT_EQ(st.buckets[0].bytes, 80u);
  EXPECT_THAT(st.buckets[1].params, ElementsAre(2));  // alone: larger than the bucket size
  EXPECT_EQ(st.buckets[1].bytes, 120u);
  EXPECT_THAT(st.buckets[2].params, ElementsAre(3, 4, 5, 6));
  EXPECT_EQ(st.buckets[2].bytes, 68u);
  EXPECT_THAT(st.buckets[3].params, ElementsAre(7));  // exactly the bucket size: alone
  EXPECT_EQ((*b)->bucket_of(4), 2);

  options.bucket_bytes = 25u << 20;
  b = GradBucketer::Create(*comms[0], g.tensors, options);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->stats().buckets.size(), 1u);
}

TEST(GradBucketerTest, BadArguments) {
  auto comms = Comms(1);
  std::vector<double> d(4);
  auto b = GradBucketer::Create(*comms[0], {Tensor::Of(d.data(), 4)});
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("gradient 0 is f64"));
  std::vector<float> f(4);
  GradBucketerOptions zero;
  zero.bucket_bytes = 0;
  EXPECT_EQ(GradBucketer::Create(*comms[0], {Tensor::Of(f.data(), 4)}, zero).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ok = GradBucketer::Create(*comms[0], {Tensor::Of(f.data(), 4)});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->MarkReady(1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*ok)->MarkReady(-1).code(), absl::StatusCode::kInvalidArgument);
}

class GradBucketerMeanTest
    : public ::testing::TestWithParam<std::tuple<int /*ranks*/, size_t /*bucket bytes*/>> {};

TEST_P(GradBucketerMeanTest, ReverseOrderMarksGiveTheExactMeanAndLaunchEarly) {
  const auto [n, bucket_bytes] = GetParam();
  auto comms = Comms(n);
  std::atomic<int> failures{0};
  testing::RunRanks(comms, [&](int rank, Communicator& dp) {
    Grads g(kSizes);
    GradBucketerOptions options;
    options.bucket_bytes = bucket_bytes;
    auto created = GradBucketer::Create(dp, g.tensors, options);
    ASSERT_TRUE(created.ok()) << created.status();
    GradBucketer& b = **created;
    const GradBucketerStats layout = b.stats();
    int64_t total_bytes = 0;
    for (const auto& bk : layout.buckets) total_bytes += static_cast<int64_t>(bk.bytes);
    for (int step = 0; step < 3; ++step) {
      for (size_t p = 0; p < kSizes.size(); ++p) {
        for (int64_t j = 0; j < kSizes[p]; ++j) g.storage[p][j] = GradValue(rank, step, p, j);
      }
      // Backward produces the gradients in registration order (they were registered in
      // reverse order of use). A bucket is issued the moment its last gradient is marked.
      for (size_t p = 0; p < kSizes.size(); ++p) {
        const int bucket = b.bucket_of(static_cast<int>(p));
        const bool last_of_bucket = layout.buckets[bucket].params.back() == static_cast<int>(p);
        const int before = b.stats().launched_this_step;
        ASSERT_TRUE(b.MarkReady(static_cast<int>(p)).ok());
        const int after = b.stats().launched_this_step;
        if (last_of_bucket) {
          EXPECT_EQ(after, bucket + 1) << "param " << p << " completes bucket " << bucket;
        } else {
          EXPECT_EQ(after, before) << "param " << p;
        }
        // Overwriting the gradient after its mark must not change what is reduced.
        std::fill(g.storage[p].begin(), g.storage[p].end(), 1e9f);
      }
      EXPECT_EQ(b.stats().launched_this_step, static_cast<int>(layout.buckets.size()));
      absl::Status st = b.Finish(absl::Now() + absl::Seconds(30));
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_EQ(b.stats().launched_this_step, 0);
      for (size_t p = 0; p < kSizes.size(); ++p) {
        for (int64_t j = 0; j < kSizes[p]; ++j) {
          float sum = 0;
          for (int r = 0; r < n; ++r) sum += GradValue(r, step, p, j);
          const float want = sum / static_cast<float>(n);
          if (g.storage[p][j] != want) {
            ++failures;
            ADD_FAILURE() << "rank " << rank << " step " << step << " param " << p << "[" << j
                          << "] = " << g.storage[p][j] << ", want " << want;
            return;
          }
        }
      }
    }
    const GradBucketerStats st = b.stats();
    EXPECT_EQ(st.steps_finished, 3);
    EXPECT_EQ(st.buckets_launched, 3 * static_cast<int64_t>(layout.buckets.size()));
    EXPECT_EQ(st.bytes_launched, 3 * total_bytes);
  });
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    RanksAndBuckets, GradBucketerMeanTest,
    ::testing::Combine(::testing::Values(1, 2, 3, 4),
                       ::testing::Values(size_t{4}, size_t{64}, size_t{300}, size_t{25} << 20)),
    [](const auto& info) {
      return "ranks" + std::to_string(std::get<0>(info.param)) + "_bucket" +
             std::to_string(std::get<1>(info.param));
    });

TEST(GradBucketerTest, OutOfOrderMarksStillIssueBucketsInOrder) {
  auto comms = Comms(2);
  std::atomic<int> failures{0};
  testing::RunRanks(comms, [&](int rank, Communicator& dp) {
    Grads g({4, 4, 4, 4});
    GradBucketerOptions options;
    options.bucket_bytes = 16;  // one gradient per bucket
    auto b = GradBucketer::Create(dp, g.tensors, options);
    ASSERT_TRUE(b.ok());
    for (size_t p = 0; p < 4; ++p) {
      for (int j = 0; j < 4; ++j) g.storage[p][j] = GradValue(rank, 0, p, j);
    }
    // Rank 1 marks in a different order: bucket 3 must wait for buckets 0..2.
    const std::vector<int> order = rank == 0 ? std::vector<int>{0, 1, 2, 3}
                                             : std::vector<int>{3, 1, 0, 2};
    std::vector<int> launched;
    for (int p : order) {
      ASSERT_TRUE((*b)->MarkReady(p).ok());
      launched.push_back((*b)->stats().launched_this_step);
    }
    if (rank == 1) {
      EXPECT_THAT(launched, ElementsAre(0, 0, 2, 4));
    }
    ASSERT_TRUE((*b)->Finish(absl::Now() + absl::Seconds(30)).ok());
    for (int p = 0; p < 4; ++p) {
      for (int j = 0; j < 4; ++j) {
        const float want = (GradValue(0, 0, p, j) + GradValue(1, 0, p, j)) / 2;
        if (g.storage[p][j] != want) ++failures;
      }
    }
  });
  EXPECT_EQ(failures.load(), 0);
}

TEST(GradBucketerTest, DoubleMarkIsFailedPreconditionNamingTheParameter) {
  auto comms = Comms(1);
  Grads g({3, 3});
  auto b = GradBucketer::Create(*comms[0], g.tensors);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->MarkReady(1).ok());
  absl::Status st = (*b)->MarkReady(1);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("parameter 1 was already marked"));
  // The step is still usable.
  ASSERT_TRUE((*b)->MarkReady(0).ok());
  EXPECT_TRUE((*b)->Finish().ok());
}

TEST(GradBucketerTest, MissingMarkIsFailedPreconditionNamingTheParameter) {
  auto comms = Comms(1);
  Grads g({3, 3, 3});
  GradBucketerOptions options;
  options.bucket_bytes = 12;
  auto b = GradBucketer::Create(*comms[0], g.tensors, options);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->MarkReady(0).ok());
  ASSERT_TRUE((*b)->MarkReady(2).ok());
  absl::Status st = (*b)->Finish(absl::Now() + absl::Seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("parameter 1 (bucket 1) was not marked"));
  // Reset: a full step works afterwards.
  g.storage[0] = {1, 2, 3};
  for (int p = 0; p < 3; ++p) ASSERT_TRUE((*b)->MarkReady(p).ok());
  EXPECT_TRUE((*b)->Finish().ok());
  EXPECT_THAT(g.storage[0], ElementsAre(1, 2, 3));
}

TEST(GradBucketerTest, CommunicatorFailureNamesTheBucket) {
  auto comms = Comms(1);
  Grads g({3, 3});
  GradBucketerOptions options;
  options.bucket_bytes = 12;
  auto b = GradBucketer::Create(*comms[0], g.tensors, options);
  ASSERT_TRUE(b.ok());
  comms[0]->Abort(absl::AbortedError("rank 7 died"));
  ASSERT_TRUE((*b)->MarkReady(0).ok());
  ASSERT_TRUE((*b)->MarkReady(1).ok());
  absl::Status st = (*b)->Finish(absl::Now() + absl::Seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("bucket 0 (params 0..0, 12 bytes)"));
}

TEST(GradBucketerTest, ConcurrentMarksFromSeveralThreads) {
  // Autograd hooks may run on several threads: mark from 4 threads per rank.
  const std::vector<int64_t> sizes(32, 9);
  auto comms = Comms(2);
  std::atomic<int> failures{0};
  testing::RunRanks(comms, [&](int rank, Communicator& dp) {
    Grads g(sizes);
    for (size_t p = 0; p < sizes.size(); ++p) {
      for (int64_t j = 0; j < sizes[p]; ++j) g.storage[p][j] = GradValue(rank, 0, p, j);
    }
    GradBucketerOptions options;
    options.bucket_bytes = 100;
    auto b = GradBucketer::Create(dp, g.tensors, options);
    ASSERT_TRUE(b.ok());
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int p = t; p < static_cast<int>(sizes.size()); p += 4) {
          if (!(*b)->MarkReady(p).ok()) ++failures;
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_TRUE((*b)->Finish(absl::Now() + absl::Seconds(30)).ok());
    for (size_t p = 0; p < sizes.size(); ++p) {
      for (int64_t j = 0; j < sizes[p]; ++j) {
        if (g.storage[p][j] != (GradValue(0, 0, p, j) + GradValue(1, 0, p, j)) / 2) ++failures;
      }
    }
  });
  EXPECT_EQ(failures.load(), 0);
}

TEST(GradBucketerTest, FinishDeadlineAbortsTheGroupAndNamesTheBucket) {
  // Rank 1 never joins: rank 0's Finish gives up at its deadline, aborting its communicator so
  // that the in-flight op lets go of the staging buffer.
  auto comms = Comms(2);
  Grads g({3, 3});
  GradBucketerOptions options;
  options.bucket_bytes = 12;
  auto b = GradBucketer::Create(*comms[0], g.tensors, options);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->MarkReady(0).ok());
  ASSERT_TRUE((*b)->MarkReady(1).ok());
  const absl::Time start = absl::Now();
  absl::Status st = (*b)->Finish(absl::Now() + absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(st.message(), HasSubstr("bucket 0 (params 0..0, 12 bytes)"));
  EXPECT_EQ(comms[0]->AbortStatus().code(), absl::StatusCode::kDeadlineExceeded);
}

// ---------------------------------------------------------------------------------------------
// ZeRO-1

void Sgd(float* p, const float* g, size_t n, float lr) {
  for (size_t i = 0; i < n; ++i) p[i] = p[i] - lr * g[i];
}

class Zero1Test : public ::testing::TestWithParam<int> {};

TEST_P(Zero1Test, SgdIsBitIdenticalToAllReduceThenSgd) {
  const int n = GetParam();
  // 5 + 11 + 1 + 6 = 23 elements: not a multiple of 2, 3 or 4.
  const std::vector<int64_t> sizes = {5, 11, 1, 6};
  const float lr = 0.1f;
  auto comms = Comms(n);
  std::atomic<int> failures{0};
  testing::RunRanks(comms, [&](int rank, Communicator& dp) {
    Grads params(sizes), grads(sizes), ref_params(sizes);
    for (size_t p = 0; p < sizes.size(); ++p) {
      for (int64_t j = 0; j < sizes[p]; ++j) {
        params.storage[p][j] = ref_params.storage[p][j] = 0.37f * (j + 1) - 1.3f * p;
      }
    }
    auto zero = Zero1Optimizer::Create(dp, params.tensors, grads.tensors);
    ASSERT_TRUE(zero.ok()) << zero.status();
    EXPECT_EQ((*zero)->flat_size(), 23u);
    EXPECT_EQ((*zero)->padded_size() % n, 0u);
    EXPECT_LT((*zero)->padded_size() - 23, static_cast<size_t>(n));
    for (int step = 0; step < 3; ++step) {
      for (size_t p = 0; p < sizes.size(); ++p) {
        for (int64_t j = 0; j < sizes[p]; ++j) grads.storage[p][j] = GradValue(rank, step, p, j);
      }
      // Reference: all-reduce (avg) the whole flat gradient, SGD on everything.
      std::vector<float> flat;
      for (auto& s : grads.storage) flat.insert(flat.end(), s.begin(), s.end());
      auto t = Tensor::Of(flat.data(), static_cast<int64_t>(flat.size()));
      ASSERT_TRUE(dp.AllReduce(t, t, ReduceOp::kAvg)->Wait().ok());
      size_t off = 0;
      for (auto& s : ref_params.storage) {
        Sgd(s.data(), flat.data() + off, s.size(), lr);
        off += s.size();
      }
      size_t seen = 0;
      absl::Status st = (*zero)->Step([&](float* p, const float* g, size_t len, size_t offset) {
        EXPECT_EQ(offset, (*zero)->shard_offset());
        EXPECT_LE(len, (*zero)->shard_size());
        seen = len;
        Sgd(p, g, len, lr);
      });
      ASSERT_TRUE(st.ok()) << st;
      // The shards' real lengths add up to the flat length.
      std::vector<float> seen_all(n);
      float mine = static_cast<float>(seen);
      ASSERT_TRUE(dp.AllGather(Tensor::Of(&mine, 1), Tensor::Of(seen_all.data(), n))->Wait().ok());
      float total = 0;
      for (float s : seen_all) total += s;
      EXPECT_EQ(total, 23.0f);
      for (size_t p = 0; p < sizes.size(); ++p) {
        if (std::memcmp(params.storage[p].data(), ref_params.storage[p].data(),
                        sizes[p] * sizeof(float)) != 0) {
          ++failures;
          ADD_FAILURE() << "rank " << rank << " step " << step << " param " << p << " differs";
        }
      }
      // Gradients are read, not modified.
      EXPECT_EQ(grads.storage[0][0], GradValue(rank, step, 0, 0));
    }
  });
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Ranks, Zero1Test, ::testing::Values(1, 2, 3, 4));

TEST(Zero1OptimizerTest, BadArguments) {
  auto comms = Comms(1);
  std::vector<float> a(4), b(5);
  auto z = Zero1Optimizer::Create(*comms[0], {Tensor::Of(a.data(), 4)}, {Tensor::Of(b.data(), 5)});
  EXPECT_EQ(z.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(z.status().message(), HasSubstr("parameter 0 has 4 elements"));
  z = Zero1Optimizer::Create(*comms[0], {Tensor::Of(a.data(), 4)}, {});
  EXPECT_EQ(z.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace trident
