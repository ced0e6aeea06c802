// The intra-host shared-memory engine, ranks as threads: what the collectives and failure
// suites (run on it too: collectives_shm_test, comm_failure_shm_test) do not cover: a rank
// whose op fails makes its peers fail at once naming it, no segment outlives its
// communicators, 8 ranks oversubscribing 2 cores make progress, and large pipelined
// allreduces give every rank identical bits. Processes (SIGKILL mid-op, an absent rank) are in
// multiproc_test's "engine" instance.
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/host/inproc.h"
#include "comm_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../util/status_matchers.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;
using testing::RunRanks;

std::vector<std::unique_ptr<Communicator>> Comms(int n, ShmParams params = {}) {
  InprocCommOptions options;
  options.size = n;
  options.shm = true;
  options.shm_params = params;
  return NewInprocCommunicators(options);
}

// Mappings and open descriptors of engine segments in this process.
int SegmentsHeld() {
  int held = 0;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) held += line.find("trident-shm") != std::string::npos;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return held;
  while (dirent* e = readdir(dir)) {
    char target[256] = {};
    std::string path = std::string("/proc/self/fd/") + e->d_name;
    if (readlink(path.c_str(), target, sizeof(target) - 1) > 0 &&
        std::strstr(target, "trident-shm") != nullptr) {
      ++held;
    }
  }
  closedir(dir);
  return held;
}

TEST(ShmEngineTest, ARankWhoseOpFailsMakesItsPeersFailAtOnceNamingIt) {
  auto comms = Comms(3);
  std::vector<absl::Status> results(3);
  const absl::Time start = absl::Now();
  RunRanks(comms, [&](int r, Communicator& c) {
    if (r == 2) return;  // never calls: ranks 0 and 1 wait for it
    std::vector<float> a(100, 1);
    auto work = c.AllReduce(Tensor::Of(a.data(), 100), Tensor::Of(a.data(), 100),
                            ReduceOp::kSum, {absl::Seconds(30)});
    if (r == 1) {
      absl::SleepFor(absl::Milliseconds(100));
      c.Abort(absl::AbortedError("rank 1's owner gave up (test)"));
    }
    results[r] = work->Wait(DeadlineIn(absl::Seconds(10)));
  });
  EXPECT_THAT(results[1], StatusIs(absl::StatusCode::kAborted, HasSubstr("gave up (test)")));
  EXPECT_THAT(results[0], StatusIs(absl::StatusCode::kAborted,
                                   AllOf(HasSubstr("rank 1 left AllReduce #0"),
                                         HasSubstr("gave up (test)"))));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // not the 30 s deadline
}

TEST(ShmEngineTest, NoSegmentOutlivesItsCommunicators) {
  const int before = SegmentsHeld();
  {
    auto comms = Comms(4);
    EXPECT_GT(SegmentsHeld(), before);  // the test sees the segments it counts
    RunRanks(comms, [&](int r, Communicator& c) {
      std::vector<int32_t> a(1000, r);
      ASSERT_TRUE(c.AllReduce(Tensor::Of(a.data(), 1000), Tensor::Of(a.data(), 1000),
                              ReduceOp::kSum)
                      ->Wait()
                      .ok());
      auto sub = c.Split(r % 2, r);  // each group gets a segment of its own
      ASSERT_TRUE(sub.ok()) << sub.status();
      ASSERT_TRUE((*sub)->Barrier()->Wait().ok());
    });
  }
  EXPECT_EQ(SegmentsHeld(), before);
}

TEST(ShmEngineTest, EightRanksOnTwoCoresMakeProgress) {
  // More ranks than cores: waiters must yield and sleep, not spin the others off the CPU.
  auto comms = Comms(8);
  std::atomic<int> wrong{0};
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<float> a(1024);
    for (int i = 0; i < 300; ++i) {
      std::fill(a.begin(), a.end(), static_cast<float>(r + i));
      absl::Status s = c.AllReduce(Tensor::Of(a.data(), a.size()), Tensor::Of(a.data(), a.size()),
                                   ReduceOp::kSum, {absl::Seconds(60)})
                           ->Wait();
      if (!s.ok()) {
        ADD_FAILURE() << s;
        return;
      }
      wrong += a[17] != static_cast<float>(28 + 8 * i);
    }
  });
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ShmEngineTest, LargePipelinedAllReduceIsBitwiseIdenticalOnEveryRank) {
  // 3 slots' worth of f32 per rank, an odd count, values that round differently in each order.
  const size_t count = 3 * (1 << 18) + 13;
  auto comms = Comms(3);
  std::vector<std::vector<float>> results(3);
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<float> a(count);
    for (size_t i = 0; i < count; ++i) a[i] = 1.0f / static_cast<float>(1 + (i * 7 + r * 13) % 97);
    ASSERT_TRUE(c.AllReduce(Tensor::Of(a.data(), count), Tensor::Of(a.data(), count),
                            ReduceOp::kSum)
                    ->Wait()
                    .ok());
    results[r] = std::move(a);
  });
  ASSERT_EQ(results[0].size(), count);
  EXPECT_EQ(std::memcmp(results[0].data(), results[1].data(), count * 4), 0);
  EXPECT_EQ(std::memcmp(results[0].data(), results[2].data(), count * 4), 0);
  for (size_t i : {size_t{0}, size_t{1} << 18, count - 1}) {
    double want = 0;
    for (int r = 0; r < 3; ++r) want += 1.0 / (1 + (i * 7 + r * 13) % 97);
    EXPECT_NEAR(results[0][i], want, 1e-6) << i;
  }
}

}  // namespace
}  // namespace trident
