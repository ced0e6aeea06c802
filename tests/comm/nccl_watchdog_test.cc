// The NCCL backend's watchdog, with a fake clock and a fake backend (no GPU, no NCCL): op
// completion, deadlines, asynchronous errors, a peer that aborted the communicator, aborts
// from outside (ops complete only after the backend abort), parallel aborts, an abort that
// hangs while the watch thread is stuck too, and a lost CUDA context (the process would exit;
// here the hooks record it).
#include "comm/nccl/watchdog.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/cuda.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../util/status_matchers.h"

namespace trident::nccl {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;

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
  explicit FakeBackend(std::string name = "fake[rank 0/2]") : name_(std::move(name)) {}
  std::string Describe() const override { return name_; }
  absl::Status AsyncError() override {
    if (block_async) release_async.WaitForNotification();
    absl::MutexLock lock(&mu_);
    ++async_polls;
    return async_error;
  }
  absl::Status PeerAborted() override {
    absl::MutexLock lock(&mu_);
    ++peer_polls;
    return peer_aborted;
  }
  void PublishAbort(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    published.push_back(why);
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
    abort_entered.Notify();
    if (block_abort) release_abort.WaitForNotification();
  }

  const std::string name_;
  absl::Mutex mu_;
  absl::Status async_error ABSL_GUARDED_BY(mu_);
  absl::Status peer_aborted ABSL_GUARDED_BY(mu_);
  absl::Status abort_reason ABSL_GUARDED_BY(mu_);
  std::vector<absl::Status> published ABSL_GUARDED_BY(mu_);
  int async_polls ABSL_GUARDED_BY(mu_) = 0;
  int peer_polls ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<int> aborts{0};
  bool block_abort = false;
  absl::Notification abort_entered;
  absl::Notification release_abort;
  bool block_async = false;
  absl::Notification release_async;
};

// An op whose "CUDA event" the test fires.
struct FakeOp {
  std::atomic<bool> done{false};
  std::atomic<bool> broken{false};
  std::atomic<bool> context_lost{false};
  std::shared_ptr<GpuWork> work;

  FakeOp(std::string name, int64_t seq, absl::Time deadline, absl::Duration timeout) {
    work = std::make_shared<GpuWork>(std::move(name), seq, deadline, timeout,
                                     [this]() -> absl::StatusOr<bool> {
                                       if (context_lost.load()) {
                                         return cuda::ErrorToStatus(700, "cudaEventQuery");
                                       }
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
    options.run_threads = false;  // the test drives Tick() and CheckAborts()
    options.on_abort_hang = [this](const std::string& message) {
      absl::MutexLock lock(&mu_);
      hangs_.push_back(message);
    };
    options.on_device_lost = [this](const std::string& message) {
      absl::MutexLock lock(&mu_);
      device_lost_.push_back(message);
    };
    watchdog_ = std::make_unique<Watchdog>(std::move(options));
    backend_ = std::make_shared<FakeBackend>();
    comm_ = std::make_shared<WatchedComm>(backend_);
    watchdog_->Register(comm_);
  }
  ~WatchdogTest() override {
    if (!backend_->release_abort.HasBeenNotified()) backend_->release_abort.Notify();
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
  std::vector<std::string> device_lost() {
    absl::MutexLock lock(&mu_);
    return device_lost_;
  }
  std::vector<absl::Status> published() {
    absl::MutexLock lock(&backend_->mu_);
    return backend_->published;
  }

  FakeClock clock_;
  std::shared_ptr<FakeBackend> backend_;
  std::shared_ptr<WatchedComm> comm_;
  std::unique_ptr<Watchdog> watchdog_;
  absl::Mutex mu_;
  std::vector<std::string> hangs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> device_lost_ ABSL_GUARDED_BY(mu_);
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
  watchdog_->Tick();  // aborts; the backend abort runs on a thread of its own
  comm_->AwaitBackendAborted();
  EXPECT_EQ(backend_->aborts.load(), 1);
  EXPECT_THAT(first->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       AllOf(HasSubstr("AllReduce #0"), HasSubstr("had not queued it: 1"))));
  // Every pending op fails with the same status; the communicator is aborted.
  EXPECT_THAT(second->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));
  // A cause this rank found itself is published for the other members.
  ASSERT_EQ(published().size(), 1u);
  EXPECT_THAT(published()[0], StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));

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
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted,
                       AllOf(HasSubstr("asynchronous error"), HasSubstr("ncclRemoteError"),
                             HasSubstr("fake[rank 0/2]"))));
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

// Another member that aborted the communicator for its own reason (its store keys under the
// communicator's context) aborts this one too, polled at its own rate; not published again.
TEST_F(WatchdogTest, PeerThatAbortedTheCommunicatorAbortsItHereAtItsOwnRate) {
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  watchdog_->Tick();
  watchdog_->Tick();  // same instant: the store is not asked again
  {
    absl::MutexLock lock(&backend_->mu_);
    EXPECT_EQ(backend_->peer_polls, 1);
    backend_->peer_aborted = absl::AbortedError(
        "rank 1 of world (epoch 0) aborted the communicator: AllReduce #0 timed out");
  }
  clock_.Advance(absl::Milliseconds(50));
  watchdog_->Tick();
  EXPECT_FALSE(op->work->IsCompleted());
  clock_.Advance(absl::Milliseconds(60));
  watchdog_->Tick();
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted,
                       AllOf(HasSubstr("rank 1"), HasSubstr("aborted the communicator"))));
  EXPECT_TRUE(published().empty());
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
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted,
                       AllOf(HasSubstr("ReduceScatter #3"), HasSubstr("cudaErrorIllegalAddress"))));
  EXPECT_TRUE(device_lost().empty());  // not marked as sticky: a rebuild may help
}

// A sticky CUDA error: no rebuild in this process can succeed, so the process is to exit
// (kDeviceLostExitCode) and the launcher reports it like a rank that died.
TEST_F(WatchdogTest, StickyCudaErrorEndsTheProcessInsteadOfAskingForARebuild) {
  auto op = Issue("ReduceScatter #3", absl::Seconds(60), 3);
  op->context_lost = true;
  watchdog_->Tick();
  ASSERT_EQ(device_lost().size(), 1u);
  EXPECT_THAT(device_lost()[0], AllOf(HasSubstr("ReduceScatter #3"), HasSubstr("CUDA error 700"),
                                      HasSubstr("context is lost"),
                                      HasSubstr("replaces this rank")));
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("CUDA error 700")));
}

// The runtime aborts a communicator when the launcher records a failure (the only way a
// peer's death reaches it). The pending op fails with that status, but only once the backend
// abort has returned: until then its kernel may still write the op's buffers, and an event
// that fires meanwhile (the abort stops the kernel) does not make it succeed.
TEST_F(WatchdogTest, AbortFromOutsideCompletesPendingWorkOnlyAfterTheBackendIsAborted) {
  backend_->block_abort = true;
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  EXPECT_TRUE(comm_->Abort(absl::AbortedError(
      "epoch 1 started: rank 1 killed by signal 9 (SIGKILL) (reported by trident-run)")));
  EXPECT_FALSE(comm_->Abort(absl::CancelledError("second")));
  // Later ops are refused at once, with the first status.
  EXPECT_THAT(comm_->abort_status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("SIGKILL")));
  backend_->abort_entered.WaitForNotification();  // ncclCommAbort is running
  op->done = true;                                  // the stopped kernel fires the event
  EXPECT_FALSE(op->work->IsCompleted());
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("caller's deadline")));
  backend_->release_abort.Notify();  // ncclCommAbort returns
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->Wait(absl::InfinitePast()),
              StatusIs(absl::StatusCode::kAborted, AllOf(HasSubstr("rank 1"), HasSubstr("SIGKILL"))));
  EXPECT_EQ(backend_->aborts.load(), 1);
  EXPECT_TRUE(published().empty());  // the runtime's cause: every member is told by it
  watchdog_->Tick();
  EXPECT_EQ(backend_->aborts.load(), 1);  // the backend is aborted once only
}

// An op queued while the abort is starting (its issue raced the abort) may run until
// ncclCommAbort returns: it completes then, with the abort status, like the pending ones.
TEST_F(WatchdogTest, OpQueuedDuringTheBackendAbortCompletesAfterIt) {
  backend_->block_abort = true;
  comm_->Abort(absl::AbortedError("epoch 1 started"));
  backend_->abort_entered.WaitForNotification();
  auto late = std::make_unique<FakeOp>("AllReduce #5", 5, clock_.Now() + absl::Seconds(5),
                                       absl::Seconds(5));
  EXPECT_THAT(comm_->Track(late->work), StatusIs(absl::StatusCode::kAborted, HasSubstr("epoch 1")));
  late->done = true;
  EXPECT_FALSE(late->work->IsCompleted());
  backend_->release_abort.Notify();
  comm_->AwaitBackendAborted();
  EXPECT_THAT(late->work->status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("epoch 1")));
}

TEST_F(WatchdogTest, AbortThatHangsIsReportedOnceAfterItsBound) {
  backend_->block_abort = true;
  auto op = Issue("AllReduce #0", absl::Seconds(60));
  comm_->Abort(absl::AbortedError("peer died"));
  backend_->abort_entered.WaitForNotification();  // the abort thread now hangs
  clock_.Advance(absl::Seconds(9));
  watchdog_->CheckAborts();
  EXPECT_TRUE(hangs().empty());
  clock_.Advance(absl::Seconds(2));
  watchdog_->CheckAborts();
  watchdog_->CheckAborts();
  ASSERT_EQ(hangs().size(), 1u);
  EXPECT_THAT(hangs()[0], AllOf(HasSubstr("fake[rank 0/2]"), HasSubstr("has not returned"),
                                HasSubstr("peer died"), HasSubstr("exiting")));
  EXPECT_FALSE(op->work->IsCompleted());
  backend_->release_abort.Notify();
  comm_->AwaitBackendAborted();
  EXPECT_THAT(op->work->status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("peer died")));
}

// ncclCommAbort of one communicator can wait until another communicator's kernel, ahead of
// it on the device, is stopped by that one's abort. Aborts run in parallel, so that this
// completes (one abort thread serving a FIFO would wait forever, then exit the process).
TEST_F(WatchdogTest, AbortsOfSeveralCommunicatorsRunInParallel) {
  class WaitsForOther : public FakeBackend {
   public:
    WaitsForOther(FakeBackend* other) : FakeBackend("tp[rank 0/2]"), other_(other) {}
    void AbortBackend(const absl::Status& why) override {
      waited = other_->abort_entered.WaitForNotificationWithTimeout(absl::Seconds(30));
      FakeBackend::AbortBackend(why);
    }
    FakeBackend* other_;
    std::atomic<bool> waited{false};
  };
  auto first_backend = std::make_shared<WaitsForOther>(backend_.get());
  auto first = std::make_shared<WatchedComm>(first_backend);
  watchdog_->Register(first);
  auto op = std::make_unique<FakeOp>("AllReduce #7 on tp", 7, clock_.Now() + absl::Seconds(60),
                                     absl::Seconds(60));
  ASSERT_TRUE(first->Track(op->work).ok());
  first->Abort(absl::AbortedError("epoch 2 started"));  // first in line, blocked on the other
  comm_->Abort(absl::AbortedError("epoch 2 started"));
  first->AwaitBackendAborted();
  comm_->AwaitBackendAborted();
  EXPECT_TRUE(first_backend->waited.load());
  EXPECT_EQ(first_backend->aborts.load(), 1);
  EXPECT_EQ(backend_->aborts.load(), 1);
  EXPECT_THAT(op->work->status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("epoch 2")));
  EXPECT_TRUE(hangs().empty());
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

TEST(GpuWorkTest, AnAbortingOpIgnoresItsEvent) {
  GpuWork work("AllReduce #0", 0, absl::InfiniteFuture(), absl::Minutes(5),
               []() -> absl::StatusOr<bool> { return true; });
  work.MarkAborting();
  EXPECT_FALSE(work.IsCompleted());
  EXPECT_TRUE(work.Complete(absl::AbortedError("aborted")));
  EXPECT_THAT(work.status(), StatusIs(absl::StatusCode::kAborted, HasSubstr("aborted")));
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

// The abort bound lives on the monitor thread, which makes no CUDA or store call: it fires
// while the watch thread is stuck in a CUDA call behind the hung teardown.
TEST(WatchdogThreadTest, HungAbortIsReportedWhileTheWatchThreadIsStuck) {
  absl::Notification reported;
  std::string message;
  Watchdog::Options options;
  options.poll = absl::Milliseconds(2);
  options.abort_timeout = absl::Milliseconds(50);
  options.on_abort_hang = [&](const std::string& m) {
    message = m;
    reported.Notify();
  };
  Watchdog watchdog(std::move(options));
  auto hung = std::make_shared<FakeBackend>("world[rank 0/2]");
  hung->block_abort = true;
  auto stuck = std::make_shared<FakeBackend>("tp[rank 0/2]");
  stuck->block_async = true;  // ncclCommGetAsyncError blocks behind the teardown
  auto hung_comm = std::make_shared<WatchedComm>(hung);
  auto stuck_comm = std::make_shared<WatchedComm>(stuck);
  watchdog.Register(hung_comm);
  watchdog.Register(stuck_comm);
  hung_comm->Abort(absl::AbortedError("rank 1 died"));
  EXPECT_TRUE(reported.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_THAT(message, AllOf(HasSubstr("world[rank 0/2]"), HasSubstr("has not returned")));
  stuck->release_async.Notify();
  hung->release_abort.Notify();
  hung_comm->AwaitBackendAborted();
}

// The process's watchdog outlives every communicator: registering through a temporary
// handle (Watchdog::Shared()->Register) leaves a working watchdog behind.
TEST(WatchdogThreadTest, SharedWatchdogOutlivesATemporaryHandle) {
  auto backend = std::make_shared<FakeBackend>();
  auto comm = std::make_shared<WatchedComm>(backend);
  Watchdog::Shared()->Register(comm);
  EXPECT_EQ(Watchdog::Shared().get(), Watchdog::Shared().get());
  comm->Abort(absl::AbortedError("init failed"));
  comm->AwaitBackendAborted();
  EXPECT_EQ(backend->aborts.load(), 1);
}

}  // namespace
}  // namespace trident::nccl
