// FailureWatcher on a MemoryStore: the one reader of failure records and writer of
// suspicions.
#include "health/failure_watcher.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "health/membership.h"

namespace trident::health {
namespace {

using ::testing::HasSubstr;

absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

TEST(FailureWatcherTest, AnEpochIsOverAtItsFirstFailureRecordOrANewerEpoch) {
  std::shared_ptr<Store> store = NewMemoryStore();
  FailureWatcher w(store);
  EXPECT_EQ(w.EpochOver(1, Soon()), std::nullopt);
  ASSERT_TRUE(store->Set(FailedKey(2, 5), "rank 5 killed by signal 9 (SIGKILL)", Soon()).ok());
  EXPECT_EQ(w.EpochOver(1, Soon()), std::nullopt) << "epoch 2's record is not epoch 1's";
  EXPECT_EQ(w.EpochOver(2, Soon()), "rank 5 killed by signal 9 (SIGKILL)");
  ASSERT_TRUE(store->Set(kEpochKey, "3", Soon()).ok());
  EXPECT_EQ(w.EpochOver(1, Soon()), "the job moved on to epoch 3");
  EXPECT_EQ(w.EpochOver(3, Soon()), std::nullopt);
}

TEST(FailureWatcherTest, PeerErrorIsReportedAndExplainedByTheRecordThatFollows) {
  std::shared_ptr<Store> store = NewMemoryStore();
  FailureWatcher w(store);
  std::thread launcher([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (void)store->Set(FailedKey(2, 3), "rank 3 killed by signal 9 (SIGKILL)", Soon());
  });
  absl::Status s = w.ExplainPeerError(2, 3, 1, absl::AbortedError("connection reset"),
                                      absl::Seconds(5));
  launcher.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("rank 3 killed by signal 9 (SIGKILL); the transport saw: "
                                     "connection reset"));
  // The suspicion, for the coordinator: per (suspect, reporter), in the epoch's keys.
  auto report = store->TryGet(SuspectKey(2, 3, 1), Soon());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(*report, "connection reset");
}

TEST(FailureWatcherTest, PeerErrorWithoutARecordComesBackAsItWas) {
  FailureWatcher w(NewMemoryStore());
  const absl::Time start = absl::Now();
  absl::Status s = w.ExplainPeerError(1, 0, 1, absl::AbortedError("connection reset"),
                                      absl::Milliseconds(200));
  EXPECT_EQ(s, absl::AbortedError("connection reset"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

}  // namespace
}  // namespace trident::health
