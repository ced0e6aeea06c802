// Tests of OpenHostEndpoint and HostCommOptions::endpoint: a host communicator built over an
// endpoint opened in advance (as a hot spare's is), on shm and on tcp bound to loopback. Ranks
// are threads of this process meeting in a MemoryStore; comm_multiproc_test runs the same
// with real processes.
#include <stdlib.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/communicator.h"
#include "trident/store.h"
#include "../util/status_matchers.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;

HostCommOptions Options(std::shared_ptr<Store> store, const std::string& provider, int rank,
                        int size) {
  HostCommOptions options;
  options.rank = rank;
  options.world_size = size;
  options.store = std::move(store);
  options.provider = provider;
  options.timeout = absl::Seconds(30);
  options.epoch = 1;  // setup keys by epoch: threads of one process build the same world
  return options;
}

// Builds a world of `endpoints.size()` ranks, one thread each; rank r uses endpoints[r]
// (may be null).
std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> Build(
    const std::string& provider, std::vector<std::shared_ptr<HostEndpoint>> endpoints) {
  std::shared_ptr<Store> store = NewMemoryStore();
  const int n = static_cast<int>(endpoints.size());
  std::vector<absl::StatusOr<std::unique_ptr<Communicator>>> comms(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      HostCommOptions options = Options(store, provider, r, n);
      options.endpoint = endpoints[r];
      comms[r] = CreateHostCommunicator(options);
    });
  }
  for (std::thread& t : threads) t.join();
  return comms;
}

class HostEndpointTest : public ::testing::TestWithParam<std::string> {};

// Ranks 1 and 2 come with endpoints opened in advance, rank 0 opens its own: the world passes
// AllReduce on both algorithms (recursive doubling and ring), AllGather and Barrier.
TEST_P(HostEndpointTest, PreopenedEndpointsPassCollectives) {
  constexpr int kRanks = 3;
  std::vector<std::shared_ptr<HostEndpoint>> endpoints(kRanks);
  for (int r = 1; r < kRanks; ++r) {
    auto endpoint = OpenHostEndpoint(GetParam());
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoints[r] = *endpoint;
  }
  auto built = Build(GetParam(), endpoints);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(built[r].ok()) << "rank " << r << ": " << built[r].status();
    comms.push_back(*std::move(built[r]));
  }
  std::vector<size_t> wrong(kRanks, 0);
  std::vector<absl::Status> results(kRanks);
  testing::RunRanks(comms, [&](int r, Communicator& c) {
    for (size_t count : {size_t{1000}, size_t{1} << 20}) {  // below and above 64 KiB
      std::vector<float> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = static_cast<float>((r + i) % 5);
      Tensor t = Tensor::Of(data.data(), count);
      absl::Status s = c.AllReduce(t, t, ReduceOp::kSum)->Wait();
      if (!s.ok()) {
        results[r] = s;
        return;
      }
      for (size_t i = 0; i < count; ++i) {
        float want = 0;
        for (int p = 0; p < kRanks; ++p) want += static_cast<float>((p + i) % 5);
        wrong[r] += data[i] != want;
      }
    }
    std::vector<int32_t> mine(100, r), all(100 * kRanks, -1);
    absl::Status s =
        c.AllGather(Tensor::Of(mine.data(), mine.size()), Tensor::Of(all.data(), all.size()))
            ->Wait();
    if (!s.ok()) {
      results[r] = s;
      return;
    }
    for (size_t i = 0; i < all.size(); ++i) wrong[r] += all[i] != static_cast<int32_t>(i / 100);
    results[r] = c.Barrier()->Wait();
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
    EXPECT_EQ(wrong[r], 0u) << "rank " << r;
  }
}

// A handle whose endpoint a communicator took cannot build another one.
TEST_P(HostEndpointTest, ReusedEndpointIsFailedPrecondition) {
  auto endpoint = OpenHostEndpoint(GetParam());
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  std::shared_ptr<Store> store = NewMemoryStore();
  HostCommOptions options = Options(store, GetParam(), 0, 1);
  options.endpoint = *endpoint;
  auto first = CreateHostCommunicator(options);
  ASSERT_TRUE(first.ok()) << first.status();
  int value = 7;
  ASSERT_TRUE((*first)->AllReduce(Tensor::Of(&value, 1), Tensor::Of(&value, 1), ReduceOp::kSum)
                  ->Wait()
                  .ok());
  EXPECT_EQ(value, 7);

  options.epoch = 2;
  EXPECT_THAT(CreateHostCommunicator(options).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("consumed by an earlier CreateHostCommunicator"),
                             HasSubstr("OpenHostEndpoint"))));
}

// Two threads build with one handle at once: one gets the endpoint, the other the error.
TEST_P(HostEndpointTest, ConcurrentUseHasOneWinner) {
  auto endpoint = OpenHostEndpoint(GetParam());
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  std::shared_ptr<Store> store = NewMemoryStore();
  std::vector<absl::Status> results(2);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      HostCommOptions options = Options(store, GetParam(), 0, 1);
      options.name = absl::StrCat("world", i);
      options.endpoint = *endpoint;
      results[i] = CreateHostCommunicator(options).status();
    });
  }
  for (std::thread& t : threads) t.join();
  const int ok = results[0].ok() + results[1].ok();
  EXPECT_EQ(ok, 1) << results[0] << " / " << results[1];
  const absl::Status& loser = results[0].ok() ? results[1] : results[0];
  EXPECT_THAT(loser, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("consumed")));
}

INSTANTIATE_TEST_SUITE_P(Providers, HostEndpointTest, ::testing::Values("shm", "tcp"),
                         [](const auto& info) { return info.param; });

// An endpoint of another provider is kInvalidArgument naming both, and stays usable.
TEST(HostEndpointProviderTest, MismatchIsInvalidArgumentAndKeepsTheEndpoint) {
  auto endpoint = OpenHostEndpoint("shm");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  std::shared_ptr<Store> store = NewMemoryStore();
  HostCommOptions options = Options(store, "tcp", 0, 1);
  options.endpoint = *endpoint;
  EXPECT_THAT(CreateHostCommunicator(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("CreateHostCommunicator"),
                             HasSubstr("serves shm, not tcp;ofi_rxm on lo"))));
  options.provider = "shm";
  options.epoch = 2;
  auto comm = CreateHostCommunicator(options);
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_TRUE((*comm)->Barrier()->Wait().ok());
}

// With no provider named, OpenHostEndpoint takes TRIDENT_FABRIC_PROVIDER, else shm.
TEST(HostEndpointProviderTest, EmptyProviderReadsTheVariableElseShm) {
  std::shared_ptr<Store> store = NewMemoryStore();
  ASSERT_EQ(setenv("TRIDENT_FABRIC_PROVIDER", "tcp", 1), 0);
  auto from_variable = OpenHostEndpoint();
  ASSERT_EQ(unsetenv("TRIDENT_FABRIC_PROVIDER"), 0);
  ASSERT_TRUE(from_variable.ok()) << from_variable.status();
  auto by_default = OpenHostEndpoint();
  ASSERT_TRUE(by_default.ok()) << by_default.status();

  HostCommOptions options = Options(store, "shm", 0, 1);
  options.endpoint = *from_variable;
  EXPECT_THAT(CreateHostCommunicator(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("serves tcp;ofi_rxm on lo, not shm")));
  options.provider = "tcp";
  options.endpoint = *by_default;
  EXPECT_THAT(CreateHostCommunicator(options).status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("serves shm, not tcp;ofi_rxm on lo")));
}

// setup_deadline bounds the setup only: a runtime builds its world within a short build
// window, and the world's ops must keep the op deadline (timeout). Here rank 1 joins the
// first AllReduce a second after the setup deadline has passed: the op still completes.
TEST(HostCommSetupDeadlineTest, OpsKeepTheTimeoutPastTheSetupDeadline) {
  std::shared_ptr<Store> store = NewMemoryStore();
  const absl::Time setup_deadline = absl::Now() + absl::Seconds(2);
  std::vector<absl::Status> results(2);
  std::vector<float> got(2, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      HostCommOptions options = Options(store, "shm", r, 2);
      options.setup_deadline = setup_deadline;
      auto comm = CreateHostCommunicator(options);
      if (!comm.ok()) {
        results[r] = comm.status();
        return;
      }
      if (r == 1) absl::SleepFor(setup_deadline + absl::Seconds(1) - absl::Now());
      float v = static_cast<float>(r + 1);
      results[r] = (*comm)->AllReduce(Tensor::Of(&v, 1), Tensor::Of(&v, 1), ReduceOp::kSum)->Wait();
      got[r] = v;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
    EXPECT_EQ(got[r], 3.0f) << "rank " << r;
  }
}

// A setup that cannot finish (rank 1 never comes) fails at the setup deadline, long before
// the op timeout of 30 s.
TEST(HostCommSetupDeadlineTest, SetupEndsAtTheSetupDeadline) {
  std::shared_ptr<Store> store = NewMemoryStore();
  HostCommOptions options = Options(store, "shm", 0, 2);
  options.setup_deadline = absl::Now() + absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  EXPECT_THAT(CreateHostCommunicator(options).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("rank 1")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

TEST(HostEndpointProviderTest, UnknownProviderIsInvalidArgument) {
  EXPECT_THAT(OpenHostEndpoint("nosuchprov").status(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("OpenHostEndpoint"), HasSubstr("nosuchprov"))));
}

}  // namespace
}  // namespace trident
