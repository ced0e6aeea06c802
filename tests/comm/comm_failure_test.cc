// Failure paths of the host communicator, ranks as threads: each asserts the specific code
// and the message that tells the user what happened.
#include <atomic>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "comm/host/host_communicator.h"
#include "comm/host/inproc.h"
#include "transport/inproc/inproc_transport.h"
#include "absl/strings/str_cat.h"
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

// ctest runs this file twice: over the transport, and with TRIDENT_TEST_SHM=1 on the
// intra-host shared-memory engine (comm_failure_shm_test).
std::vector<std::unique_ptr<Communicator>> Comms(int n, std::shared_ptr<Store> store = nullptr) {
  InprocCommOptions options;
  options.size = n;
  options.store = std::move(store);
  options.shm = std::getenv("TRIDENT_TEST_SHM") != nullptr;
  return NewInprocCommunicators(options);
}

TEST(CommFailureTest, MismatchedOpsFailOnEveryRankNamingBothCalls) {
  auto comms = Comms(3);
  std::vector<absl::Status> results(3);
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<float> a(8, 1), b(24);
    auto work = r == 2 ? c.AllGather(Tensor::Of(a.data(), 8), Tensor::Of(b.data(), 24))
                       : c.AllReduce(Tensor::Of(a.data(), 8), Tensor::Of(a.data(), 8),
                                     ReduceOp::kSum);
    results[r] = work->Wait(DeadlineIn(absl::Seconds(20)));
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_THAT(results[r], StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr("called different collectives"),
                                           HasSubstr("AllReduce(count=8, f32, sum)"),
                                           HasSubstr("AllGather(count=8, f32)"))))
        << "rank " << r;
  }
}

TEST(CommFailureTest, MismatchedCountsNameBothRanks) {
  auto comms = Comms(2);
  std::vector<absl::Status> results(2);
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<int32_t> a(9, 1);
    const int64_t count = r == 0 ? 8 : 9;
    results[r] = c.AllReduce(Tensor::Of(a.data(), count), Tensor::Of(a.data(), count),
                             ReduceOp::kMax)
                     ->Wait(DeadlineIn(absl::Seconds(20)));
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(results[r], StatusIs(absl::StatusCode::kInvalidArgument,
                                     AllOf(HasSubstr("rank 0 called AllReduce(count=8"),
                                           HasSubstr("rank 1 called AllReduce(count=9"))))
        << "rank " << r;
  }
}

TEST(CommFailureTest, RankThatNeverCallsIsNamedAtTheDeadline) {
  auto comms = Comms(3);
  std::vector<absl::Status> results(3);
  const absl::Time start = absl::Now();
  RunRanks(comms, [&](int r, Communicator& c) {
    if (r == 2) return;  // never calls the op
    std::vector<float> a(100, 1);
    results[r] = c.AllReduce(Tensor::Of(a.data(), 100), Tensor::Of(a.data(), 100),
                             ReduceOp::kSum, {absl::Milliseconds(300)})
                     ->Wait();
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(results[r], StatusIs(absl::StatusCode::kDeadlineExceeded,
                                     AllOf(HasSubstr("AllReduce #0"),
                                           HasSubstr("ranks that had not arrived: 2"))))
        << "rank " << r;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(CommFailureTest, CommunicatorsReadNoJobKeysOnlyTheirOwnersAbortThem) {
  // Mechanism only: the launcher's record of a death reaches a communicator through its owner
  // (the runtime calls Abort), never by the communicator polling the job's keys.
  std::shared_ptr<Store> store = NewMemoryStore();
  ASSERT_TRUE(store->Set("job/failed/2", "rank 2 killed by signal 9 (SIGKILL)",
                         DeadlineIn(absl::Seconds(5)))
                  .ok());
  auto comms = Comms(3, store);
  std::vector<absl::Status> results(3);
  RunRanks(comms, [&](int r, Communicator& c) {
    if (r == 2) {  // never calls; its owner would abort the others
      absl::SleepFor(absl::Milliseconds(300));
      return;
    }
    std::vector<float> a(1 << 16, 1);
    auto work = c.AllReduce(Tensor::Of(a.data(), a.size()), Tensor::Of(a.data(), a.size()),
                            ReduceOp::kSum, {absl::Seconds(30)});
    // Still running long after the record was there: nobody read it.
    EXPECT_FALSE(work->Wait(DeadlineIn(absl::Milliseconds(200))).ok());
    EXPECT_FALSE(work->IsCompleted());
    c.Abort(absl::AbortedError("rank 2 killed by signal 9 (SIGKILL) (epoch 1)"));
    results[r] = work->Wait(DeadlineIn(absl::Seconds(5)));
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(results[r],
                StatusIs(absl::StatusCode::kAborted, HasSubstr("rank 2 killed by signal 9")))
        << "rank " << r;
  }
}

// A transport whose receives from `bad_peer` fail the way a reset connection does.
class PeerFailingTransport : public Transport {
 public:
  PeerFailingTransport(std::shared_ptr<Transport> inner, int bad_peer)
      : inner_(std::move(inner)), bad_peer_(bad_peer) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string Describe() const override { return "peer-failing(" + inner_->Describe() + ")"; }
  absl::Status PostSend(int peer, uint64_t tag, const void* data, size_t bytes,
                        TransportRequest* request) override {
    return inner_->PostSend(peer, tag, data, bytes, request);
  }
  absl::Status PostRecv(int peer, uint64_t tag, void* data, size_t capacity,
                        TransportRequest* request) override {
    if (peer != bad_peer_) return inner_->PostRecv(peer, tag, data, capacity, request);
    request->status = WithPeer(absl::AbortedError("connection reset by rank 2"), peer);
    request->done.store(true, std::memory_order_release);
    return absl::OkStatus();
  }
  absl::StatusOr<int> Progress() override { return inner_->Progress(); }
  void Cancel(TransportRequest* request, const absl::Status& reason) override {
    if (!request->IsDone()) inner_->Cancel(request, reason);
  }

 private:
  std::shared_ptr<Transport> inner_;
  int bad_peer_;
};

TEST(CommFailureTest, PeerTransportErrorGoesToTheOwnersHandlerAndTheOpFailsWithItsAnswer) {
  std::vector<std::shared_ptr<Transport>> transports = NewInprocTransports(3);
  std::shared_ptr<Store> store = NewMemoryStore();
  std::atomic<int> reported_peer{-1};
  HostCommConfig config;
  config.transport = std::make_shared<PeerFailingTransport>(transports[0], /*bad_peer=*/2);
  config.store = store;
  config.ranks = {0, 1, 2};
  config.rank = 0;
  config.timeout = absl::Seconds(30);
  config.on_peer_error = [&](int peer, const absl::Status& error) {
    reported_peer = peer;
    return absl::AbortedError(absl::StrCat("rank ", peer, " killed by signal 9 (SIGKILL); the "
                                           "transport saw: ", error.message()));
  };
  HostCommunicator host(std::move(config));
  Communicator& comm = host;
  // Point to point: a receive from the broken peer fails with the handler's answer.
  std::vector<float> a(8, 1);
  absl::Status s = comm.Recv(Tensor::Of(a.data(), a.size()), 2, 5)->Wait(
      DeadlineIn(absl::Seconds(10)));
  EXPECT_EQ(reported_peer.load(), 2);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kAborted,
                          AllOf(HasSubstr("rank 2 killed by signal 9 (SIGKILL)"),
                                HasSubstr("connection reset by rank 2"), HasSubstr("Recv"))));
}

TEST(CommFailureTest, AbortFromAnotherThreadFailsPendingOpsAndLaterOps) {
  auto comms = Comms(2);
  Communicator& c = *comms[0];
  std::vector<float> a(16, 1);
  auto pending = c.AllReduce(Tensor::Of(a.data(), 16), Tensor::Of(a.data(), 16), ReduceOp::kSum);
  auto queued = c.Broadcast(Tensor::Of(a.data(), 16), 0);
  std::thread aborter([&] { c.Abort(absl::AbortedError("rank 1 is gone (test)")); });
  aborter.join();
  EXPECT_THAT(pending->Wait(DeadlineIn(absl::Seconds(5))),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("rank 1 is gone (test)")));
  EXPECT_THAT(queued->Wait(DeadlineIn(absl::Seconds(5))),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("rank 1 is gone (test)")));
  EXPECT_THAT(c.AllReduce(Tensor::Of(a.data(), 16), Tensor::Of(a.data(), 16), ReduceOp::kSum)
                  ->Wait(DeadlineIn(absl::Seconds(5))),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("after it was aborted"), HasSubstr("rank 1 is gone"))));
  EXPECT_THAT(c.AbortStatus(), StatusIs(absl::StatusCode::kAborted, HasSubstr("test")));
}

TEST(CommFailureTest, CallersWaitDeadlineLeavesTheOpRunning) {
  auto comms = Comms(2);
  std::vector<float> a(4, 1);
  auto work = comms[0]->AllReduce(Tensor::Of(a.data(), 4), Tensor::Of(a.data(), 4),
                                  ReduceOp::kSum);
  EXPECT_THAT(work->Wait(DeadlineIn(absl::Milliseconds(50))),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("caller's deadline")));
  EXPECT_FALSE(work->IsCompleted());
  // Rank 1 joins late; the op completes.
  std::vector<float> b(4, 2);
  auto other = comms[1]->AllReduce(Tensor::Of(b.data(), 4), Tensor::Of(b.data(), 4),
                                   ReduceOp::kSum);
  ASSERT_TRUE(work->Wait(DeadlineIn(absl::Seconds(10))).ok());
  ASSERT_TRUE(other->Wait(DeadlineIn(absl::Seconds(10))).ok());
  EXPECT_EQ(a[0], 3);
}

TEST(CommFailureTest, InvalidArgumentsFailAtOnceAndLeaveTheCommunicatorUsable) {
  auto comms = Comms(2);
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<float> f(8, 1), g(6);
    std::vector<int32_t> i(8, 1);
    const Tensor tf = Tensor::Of(f.data(), 8);
    EXPECT_THAT(c.AllReduce(tf, Tensor::Of(g.data(), 6), ReduceOp::kSum)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("in has 8 elements and out has 6")));
    EXPECT_THAT(c.AllReduce(tf, Tensor::Of(i.data(), 8), ReduceOp::kSum)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("in is f32 but out is i32")));
    EXPECT_THAT(c.AllReduce(Tensor::Of(i.data(), 8), Tensor::Of(i.data(), 8), ReduceOp::kAvg)
                    ->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("avg of i32")));
    EXPECT_THAT(c.Broadcast(tf, 2)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("root 2 is not a rank")));
    EXPECT_THAT(c.Send(tf, r, 0)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not another rank")));
    EXPECT_THAT(c.Recv(tf, 1 - r, 1 << 24)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside [0, 2^24)")));
    EXPECT_THAT(c.AllGather(tf, tf)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("2/1 times as many")));
    EXPECT_THAT(c.AllToAll(Tensor::Of(f.data(), 7), Tensor::Of(f.data(), 7))->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("7 elements do not split")));
    EXPECT_THAT(c.AllReduce(Tensor(f.data(), DType::kF32, {8}, Device::Cuda(0)), tf,
                            ReduceOp::kSum)
                    ->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("CUDA tensor")));
    EXPECT_THAT(c.AllReduce(Tensor(nullptr, DType::kF32, {8}), tf, ReduceOp::kSum)->status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("null data pointer")));
    // Nothing happened: the next op on the same communicator works.
    ASSERT_TRUE(c.AllReduce(tf, tf, ReduceOp::kSum)->Wait(DeadlineIn(absl::Seconds(10))).ok());
    EXPECT_EQ(f[0], 2);
  });
}

TEST(CommFailureTest, RecvSmallerThanTheMessageFailsNamingThePeer) {
  auto comms = Comms(2);
  std::vector<absl::Status> results(2);
  RunRanks(comms, [&](int r, Communicator& c) {
    std::vector<float> a(16, 1);
    results[r] = r == 0 ? c.Send(Tensor::Of(a.data(), 16), 1, 3)->Wait(DeadlineIn(absl::Seconds(10)))
                        : c.Recv(Tensor::Of(a.data(), 8), 0, 3)->Wait(DeadlineIn(absl::Seconds(10)));
  });
  EXPECT_TRUE(results[0].ok()) << results[0];
  EXPECT_THAT(results[1], StatusIs(absl::StatusCode::kInvalidArgument,
                                   AllOf(HasSubstr("Recv of 32 bytes from rank 0"),
                                         HasSubstr("larger than the receive buffer"))));
}

TEST(CommFailureTest, SplitMakesGroupsOrderedByKey) {
  auto comms = Comms(4);
  RunRanks(comms, [&](int r, Communicator& c) {
    const int color = r == 3 ? -1 : r % 2;  // {0, 2} and {1}; rank 3 sits out
    auto sub = c.Split(color, /*key=*/-r);
    ASSERT_TRUE(sub.ok()) << sub.status();
    auto parent_still_works = [&] {
      int64_t w = 1;
      ASSERT_TRUE(c.AllReduce(Tensor::Of(&w, 1), Tensor::Of(&w, 1), ReduceOp::kSum)
                      ->Wait(DeadlineIn(absl::Seconds(10)))
                      .ok());
      EXPECT_EQ(w, 4);
    };
    if (r == 3) {
      EXPECT_EQ(*sub, nullptr);
      parent_still_works();
      return;
    }
    Communicator& g = **sub;
    if (r % 2 == 0) {
      ASSERT_EQ(g.size(), 2);
      EXPECT_EQ(g.rank(), r == 2 ? 0 : 1);  // ordered by key: rank 2 (key -2) first
    } else {
      ASSERT_EQ(g.size(), 1);
    }
    int64_t v = r + 1;
    ASSERT_TRUE(g.AllReduce(Tensor::Of(&v, 1), Tensor::Of(&v, 1), ReduceOp::kSum)
                    ->Wait(DeadlineIn(absl::Seconds(10)))
                    .ok());
    EXPECT_EQ(v, r % 2 == 0 ? 1 + 3 : 2);
    parent_still_works();
  });
}

}  // namespace
}  // namespace trident
