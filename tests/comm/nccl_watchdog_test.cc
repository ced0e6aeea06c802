// The NCCL backend's watchdog, with a fake clock and a fake backend (no GPU, no NCCL): op
// completion, deadlines, asynchronous errors, peers reported failed, user aborts, and an
// abort that hangs (the process would exit; here the hook records it).
#include "comm/nccl/watchdog.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::nccl {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

MATCHER_P2(StatusIs, code, matcher, "") {
  return arg.code() == code && ::testing::ExplainMatchResult(matcher, std::string(arg.message()),
                                                             result_listener);
}

class FakeClock : public Clock {
 public:
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ = absl::FromUnixSeconds(1'000'000);
};

class FakeBackend : public WatchdogBackend {
 public:
  std::string Describe() const override { return "fake[rank 0/2]"; }
  absl::Status AsyncError() override {
    absl::MutexLock lock(&mu_);
    ++async_polls;
    return async_error;
  }
  absl::Status PeerHealth() override {
    absl::MutexLock lock(&mu_);
    ++peer_polls;
    return peer_health;
  }
  absl::Status DiagnoseTimeout(const GpuWork& op) override {
    return absl::DeadlineExceededError(
        absl::StrCat(op.name(), " timed out; ranks that had not queued it: 1"));
  }
  void AbortBackend(const absl::Status& why) override {
    aborts.fetch_add(1);
    {
      absl::MutexLock lock(&mu_);
      abort_reason = why;
    }
    if (block_abort) release_abort.WaitForNotification();
  }

  absl::Mutex mu_;
  absl::Status async_error ABSL_GUARDED_BY(mu_);
  absl::Status peer_health ABSL_GUARDED_BY(mu_);
  absl::Status abort_reason ABSL_GUARDED_BY(mu_);
  int async_polls ABSL_GUARDED_BY(mu_) = 0;
  int peer_polls ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int> aborts{0};
  bool block_abort = false;
  absl::Notification release_abort;
};

// An op whose "CUDA event" the test fires.
struct FakeOp {
  std::atomic<bool> done{false};
  std::atomic<bool> broken{false};
  std::shared_ptr<GpuWork> work;

  FakeOp(std::string name, int64_t seq, absl::Time deadline, absl::Duration timeout) {
    work = std::make_shared<GpuWork>(std::move(name), seq, deadline, timeout,
                                     [this]() -> absl::StatusOr<bool> {
                                       if (broken.load()) {
                                         return absl::InternalError(
                                             "cudaEventQuery: CUDA error 700 "
                                             "cudaErrorIllegalAddress");
                                       }
                                       return done.load();
                                     });
  }
};

class WatchdogTest : public ::testing::Test {
 protected:
  WatchdogTest() {
    Watchdog::Options options;
    options.clock = &clock_;
    options.poll = absl::Milliseconds(10);
    options.peer_poll = absl::Milliseconds(100);
    options.abort_timeout = absl::Seconds(10);
    options.run_thread = false;  // the test drives Tick()
    options.on_abort_hang = [this](const std::string& message) {
      absl::MutexLock lock(&mu_);
      hangs_.push_back(message);
    };
    watchdog_ = std::make_unique<Watchdog>(std::move(options));
    backend_ = std::make_shared<FakeBackend>();
    comm_ = std::make_shared<WatchedComm>(backend_);
    watchdog_->Register(comm_);
  }
  ~WatchdogTest() override {
    if (!backend_->release_abort.HasBeenNotified()) backend_->release_abort.Notify();
    // Run any requested abort before the watchdog goes.
    watchdog_->Tick();
    comm_->AwaitBackendAborted();
    comm_.reset();
    watchdog_.reset();
  }

  std::unique_ptr<FakeOp> Issue(absl::string_view name, absl::Duration timeout, int64_t seq = 0) {
    auto op = std::make_unique<FakeOp>(std::string(name), seq, clock_.Now() + timeout, timeout);
    EXPECT_TRUE(comm_->Track(op->work).ok());
    return op;
  }

  std::vector<std::string> hangs() {
    absl::MutexLock lock(&mu_);
    return hangs_;
  }

  FakeClock clock_;
  std::shared_ptr<FakeBackend> backend_;
  std::shared_ptr<WatchedComm> comm_;
  std::unique_ptr<Watchdog> watchdog_;
  absl::Mutex mu_;
  std::vector<std::string> hangs_ ABSL_GUARDED_BY(mu_);
};

TEST_F(WatchdogTest, OpCompletesWhenItsEventFires) {
  auto op = Issue("AllReduce #0", absl::Seconds(5));
  watchdog_->Tick();
  EXPECT_FALSE(op->work->IsCompleted());
  EXPECT_EQ(comm_->pending(), 1u);
  op->done = true;
  watchdog_->Tick();
  EXPECT_EQ(comm_->pending(), 0u);
  EXPECT_TRUE(op->work->Wait(absl::InfinitePast()).ok());
  EXPECT_EQ(backend_->aborts.load(), 0);
  EXPECT_TRUE(comm_->abort_status().ok());
}

TEST_F(WatchdogTest, OpPastItsDeadlineAbortsWithDeadlineExceeded) {
  auto first = Issue("AllReduce #0 (count 4, f32) on world epoch 0", absl::Seconds(5), 0);
  auto second = Issue("Broadcast #1", absl::Seconds(60), 1);
  clock_.Advance(absl::Milliseconds(4900));
  watchdog_->Tick();
  EXPECT_FALSE(first->work->IsCompleted());
  EXPECT_TRUE(comm_->abort_status().ok());

  clock_.Advance(absl::Milliseconds(200));
  watchdog_->Tick();
  EXPECT_THAT(first->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       AllOf(HasSubstr("AllReduce #0"), HasSubstr("had not queued it: 1"))));
  // Every pending op fails with the same status; the communicator is aborted.
  EXPECT_THAT(second->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));
  watchdog_->Tick();  // starts the backend abort
  comm_->AwaitBackendAborted();
  EXPECT_EQ(backend_->aborts.load(), 1);

  // Later ops are refused: rebuild first.
  auto later = std::make_unique<FakeOp>("AllGather #2", 2, clock_.Now() + absl::Seconds(5),
                                        absl::Seconds(5));
  EXPECT_THAT(comm_->Track(later->work),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("AllGather #2"), HasSubstr("after it was aborted"))));
  EXPECT_THAT(later->work->status(), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rebuild")));
}

TEST_F(WatchdogTest, CompletedOpsDoNotTimeOut) {
  auto op = Issue("AllReduce #0", absl::Seconds(1));
  op->done = true;
  EXPECT_TRUE(op->work->Wait().ok());  // completed by the waiter, before any Tick
  clock_.Advance(absl::Seconds(30));
  watchdog_->Tick();
  EXPECT_TRUE(comm_->abort_status().ok());
  EXPECT_EQ(comm_->pending(), 0u);
}

TEST_F(WatchdogTest, AsynchronousNcclErrorAborts) {
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  {
    absl::MutexLock lock(&backend_->mu_);
    backend_->async_error = absl::AbortedError(
        "ncclCommGetAsyncError: NCCL error 6 ncclRemoteError (remote process exited or there "
        "was a network error)");
  }
  watchdog_->Tick();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted,
                       AllOf(HasSubstr("asynchronous error"), HasSubstr("ncclRemoteError"),
                             HasSubstr("fake[rank 0/2]"))));
  watchdog_->Tick();
  comm_->AwaitBackendAborted();
  EXPECT_EQ(backend_->aborts.load(), 1);
  absl::MutexLock lock(&backend_->mu_);
  EXPECT_THAT(std::string(backend_->abort_reason.message()), HasSubstr("ncclRemoteError"));
}

TEST_F(WatchdogTest, AsyncErrorsArePolledEvenWithoutPendingOps) {
  watchdog_->Tick();
  {
    absl::MutexLock lock(&backend_->mu_);
    EXPECT_EQ(backend_->async_polls, 1);
    backend_->async_error = absl::AbortedError("NCCL error 2 ncclSystemError");
  }
  watchdog_->Tick();
  EXPECT_THAT(comm_->abort_status(),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("ncclSystemError")));
}

TEST_F(WatchdogTest, PeerReportedFailedAbortsAndIsPolledAtItsOwnRate) {
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  watchdog_->Tick();
  watchdog_->Tick();  // same instant: the store is not asked again
  {
    absl::MutexLock lock(&backend_->mu_);
    EXPECT_EQ(backend_->peer_polls, 1);
    backend_->peer_health = absl::AbortedError(
        "rank 1 of world (epoch 0) failed: rank 1 killed by signal 9 (SIGKILL) (reported by "
        "trident-run)");
  }
  clock_.Advance(absl::Milliseconds(50));
  watchdog_->Tick();
  EXPECT_FALSE(op->work->IsCompleted());
  clock_.Advance(absl::Milliseconds(60));
  watchdog_->Tick();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted, AllOf(HasSubstr("rank 1"), HasSubstr("SIGKILL"))));
}

TEST_F(WatchdogTest, StoreIsNotPolledWithoutPendingOps) {
  watchdog_->Tick();
  clock_.Advance(absl::Seconds(1));
  watchdog_->Tick();
  absl::MutexLock lock(&backend_->mu_);
  EXPECT_EQ(backend_->peer_polls, 0);
}

TEST_F(WatchdogTest, GpuErrorOnTheEventAborts) {
  auto op = Issue("ReduceScatter #3", absl::Seconds(60), 3);
  op->broken = true;
  watchdog_->Tick();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted,
                       AllOf(HasSubstr("ReduceScatter #3"), HasSubstr("cudaErrorIllegalAddress"))));
}

TEST_F(WatchdogTest, UserAbortFailsPendingOpsAtOnceAndTheFirstStatusWins) {
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  EXPECT_TRUE(comm_->Abort(absl::AbortedError("epoch 1 started: member m7 is dead")));
  EXPECT_FALSE(comm_->Abort(absl::CancelledError("second")));
  // Before any watchdog pass: the op already failed with the first status.
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("member m7")));
  EXPECT_THAT(comm_->abort_status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("m7")));
  watchdog_->Tick();
  comm_->AwaitBackendAborted();
  EXPECT_EQ(backend_->aborts.load(), 1);
  // The backend is aborted once only.
  watchdog_->Tick();
  EXPECT_EQ(backend_->aborts.load(), 1);
}

TEST_F(WatchdogTest, AbortThatHangsIsReportedOnceAfterItsBound) {
  backend_->block_abort = true;
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  comm_->Abort(absl::AbortedError("peer died"));
  watchdog_->Tick();  // hands the abort to the abort thread, which now hangs
  clock_.Advance(absl::Seconds(9));
  watchdog_->Tick();
  EXPECT_TRUE(hangs().empty());
  clock_.Advance(absl::Seconds(2));
  watchdog_->Tick();
  watchdog_->Tick();
  ASSERT_EQ(hangs().size(), 1u);
  EXPECT_THAT(hangs()[0], AllOf(HasSubstr("fake[rank 0/2]"), HasSubstr("has not returned"),
                                HasSubstr("peer died"), HasSubstr("exiting")));
  backend_->release_abort.Notify();
  comm_->AwaitBackendAborted();
}

TEST(GpuWorkTest, WaitNeverBlocksPastTheCallersDeadline) {
  GpuWork work("AllReduce #0", 0, absl::InfiniteFuture(), absl::Minutes(5),
               []() -> absl::StatusOr<bool> { return false; });
  EXPECT_THAT(work.Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("still running")));
  const absl::Time start = absl::Now();
  EXPECT_THAT(work.Wait(start + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(50));
  EXPECT_LT(took, absl::Seconds(1));
  EXPECT_FALSE(work.IsCompleted());
  EXPECT_THAT(work.status(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("running")));
}

TEST(GpuWorkTest, WaitReturnsWhenTheEventFires) {
  std::atomic<bool> done{false};
  GpuWork work("AllReduce #0", 0, absl::InfiniteFuture(), absl::Minutes(5),
               [&]() -> absl::StatusOr<bool> { return done.load(); });
  std::thread gpu([&] {
    absl::SleepFor(absl::Milliseconds(20));
    done = true;
  });
  EXPECT_TRUE(work.Wait(absl::Now() + absl::Seconds(10)).ok());
  gpu.join();
  EXPECT_TRUE(work.IsCompleted());
  EXPECT_TRUE(work.status().ok());
}

TEST(GpuWorkTest, CompletionFromAnotherThreadWakesTheWaiterAndTheFirstWins) {
  GpuWork work("AllReduce #0", 0, absl::InfiniteFuture(), absl::Minutes(5),
               []() -> absl::StatusOr<bool> { return false; });
  std::thread aborter([&] {
    absl::SleepFor(absl::Milliseconds(20));
    EXPECT_TRUE(work.Complete(absl::AbortedError("rank 3 died")));
    EXPECT_FALSE(work.Complete(absl::OkStatus()));
  });
  EXPECT_THAT(work.Wait(absl::Now() + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("rank 3")));
  aborter.join();
}

// The watch thread itself, on the real clock: an op that never completes fails at its
// deadline without anyone calling Tick.
TEST(WatchdogThreadTest, ExpiredOpFailsOnTheRealClock) {
  Watchdog::Options options;
  options.poll = absl::Milliseconds(2);
  Watchdog watchdog(std::move(options));
  auto backend = std::make_shared<FakeBackend>();
  auto comm = std::make_shared<WatchedComm>(backend);
  watchdog.Register(comm);
  auto op = std::make_shared<GpuWork>("AllReduce #0", 0, absl::Now() + absl::Milliseconds(30),
                                      absl::Milliseconds(30),
                                      []() -> absl::StatusOr<bool> { return false; });
  ASSERT_TRUE(comm->Track(op).ok());
  const absl::Time start = absl::Now();
  EXPECT_THAT(op->Wait(start + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  comm->AwaitBackendAborted();
  EXPECT_EQ(backend->aborts.load(), 1);
}

}  // namespace
}  // namespace trident::nccl
