// The host backend's ordering rule for device tensors (comm/host/staging.h), without a GPU: a
// fake Staging whose "device memory" is host memory and whose "streams" run their queued work
// only when the test says. It proves that
//  - ops issued back to back on one tensor, without a Wait, each see the previous result;
//  - the inputs are copied after the work queued on the caller's stream before the op, and
//    the outputs are not written before that work has run either (a kernel still reading
//    the buffer);
//  - a stream that never runs ends the op at its deadline, saying what it waited for.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "comm/host/host_communicator.h"
#include "comm/host/staging.h"
#include "comm_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/inproc/inproc_transport.h"
#include "trident/store.h"

namespace trident {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::RunRanks;

MATCHER_P2(StatusIs, code, matcher, "") {
  return arg.code() == code && ::testing::ExplainMatchResult(matcher, std::string(arg.message()),
                                                             result_listener);
}

// A "CUDA stream": work queued on it runs when the test calls RunAll.
class FakeStream {
 public:
  void Enqueue(std::function<void()> fn) {
    absl::MutexLock lock(&mu_);
    pending_.push_back(std::move(fn));
    ++queued_;
  }
  void RunAll() {
    absl::MutexLock lock(&mu_);
    while (!pending_.empty()) {
      pending_.front()();
      pending_.pop_front();
      ++ran_;
    }
  }
  int64_t queued() {
    absl::MutexLock lock(&mu_);
    return queued_;
  }
  // Waits until the first `n` items have run (true), `deadline` passes or `*cancel` turns true
  // (false); the cancel flag is looked at every millisecond, as the CUDA staging polls.
  bool AwaitRan(int64_t n, absl::Time deadline, const std::atomic<bool>* cancel) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return ran_ >= n; };
    while (!mu_.AwaitWithDeadline(absl::Condition(&reached),
                                  std::min(deadline, absl::Now() + absl::Milliseconds(1)))) {
      if (absl::Now() >= deadline || (cancel != nullptr && cancel->load())) return false;
    }
    return true;
  }

 private:
  absl::Mutex mu_;
  std::deque<std::function<void()>> pending_ ABSL_GUARDED_BY(mu_);
  int64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ran_ ABSL_GUARDED_BY(mu_) = 0;
};

// Device 0 is host memory; streams are FakeStreams (nullptr: an idle default one). Logs every
// copy with the first float it moves.
class FakeStaging : public Staging {
 public:
  struct FakeMark : Mark {
    FakeStream* stream;
    int64_t position;
  };
  struct FakeBuffer : Buffer {
    explicit FakeBuffer(size_t n) : bytes(n) {}
    void* data() const override { return const_cast<char*>(bytes.data()); }
    std::vector<char> bytes;
  };

  absl::Status Check(const Tensor& t, absl::string_view op, absl::string_view which) override {
    if (t.device().is_cpu() || t.device().index == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", which, " on a device the fake lacks"));
  }
  absl::StatusOr<std::unique_ptr<Mark>> MarkStream(int, void* stream) override {
    auto mark = std::make_unique<FakeMark>();
    mark->stream = stream != nullptr ? static_cast<FakeStream*>(stream) : &default_stream_;
    mark->position = mark->stream->queued();
    return std::unique_ptr<Mark>(std::move(mark));
  }
  absl::StatusOr<std::unique_ptr<Buffer>> Acquire(size_t bytes) override {
    return std::unique_ptr<Buffer>(new FakeBuffer(bytes));
  }
  absl::Status CopyIn(int, const Mark* after, const void* src, Buffer& dst, size_t bytes,
                      const Limit& limit) override {
    {
      absl::MutexLock lock(&mu_);
      ++copies_started_;
    }
    if (absl::Status s = Reached(after, limit); !s.ok()) return s;
    std::memcpy(dst.data(), src, bytes);
    Log("in", dst.data(), bytes);
    return absl::OkStatus();
  }
  absl::Status CopyOut(int, const Mark* after, Buffer& src, void* dst, size_t bytes,
                       const Limit& limit) override {
    if (absl::Status s = Reached(after, limit); !s.ok()) return s;
    std::memcpy(dst, src.data(), bytes);
    Log("out", src.data(), bytes);
    return absl::OkStatus();
  }

  std::vector<std::string> log() {
    absl::MutexLock lock(&mu_);
    return log_;
  }
  // Waits until the worker has entered CopyIn `n` times.
  void AwaitCopiesStarted(int n) {
    absl::MutexLock lock(&mu_);
    auto started = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return copies_started_ >= n; };
    mu_.Await(absl::Condition(&started));
  }

 private:
  static absl::Status Reached(const Mark* after, const Limit& limit) {
    if (after == nullptr) return absl::OkStatus();
    const auto* mark = static_cast<const FakeMark*>(after);
    if (mark->stream->AwaitRan(mark->position, limit.deadline, limit.cancel)) {
      return absl::OkStatus();
    }
    if (limit.cancel != nullptr && limit.cancel->load()) {
      return absl::CancelledError(absl::StrCat(limit.what, ": aborted"));
    }
    return absl::DeadlineExceededError(absl::StrCat(limit.what, ": the stream's work never ran"));
  }
  void Log(absl::string_view kind, const void* p, size_t bytes) {
    float first = 0;
    if (bytes >= sizeof(float)) std::memcpy(&first, p, sizeof(float));
    absl::MutexLock lock(&mu_);
    log_.push_back(absl::StrCat(kind, " ", first));
  }

  FakeStream default_stream_;
  absl::Mutex mu_;
  std::vector<std::string> log_ ABSL_GUARDED_BY(mu_);
  int copies_started_ ABSL_GUARDED_BY(mu_) = 0;
};

// `n` ranks as threads over the in-process transport, each with its own fake staging.
struct World {
  explicit World(int n, absl::Duration timeout = absl::Seconds(30)) {
    std::shared_ptr<Store> store = NewMemoryStore();
    std::vector<std::shared_ptr<Transport>> transports = NewInprocTransports(n);
    std::vector<int> ranks(n);
    for (int r = 0; r < n; ++r) ranks[r] = r;
    for (int r = 0; r < n; ++r) {
      staging.push_back(std::make_shared<FakeStaging>());
      HostCommConfig config;
      config.transport = transports[r];
      config.store = store;
      config.ranks = ranks;
      config.rank = r;
      config.name = "staged";
      config.timeout = timeout;
      config.staging = staging[r];
      comms.push_back(std::make_unique<HostCommunicator>(std::move(config)));
    }
  }
  std::vector<std::shared_ptr<FakeStaging>> staging;
  std::vector<std::unique_ptr<Communicator>> comms;
};

Tensor OnDevice(std::vector<float>& v) {
  return Tensor(v.data(), DType::kF32, {static_cast<int64_t>(v.size())}, Device::Cuda(0));
}

TEST(StagingOrderTest, BackToBackOpsOnOneTensorSeeEachOthersResults) {
  World world(2);
  RunRanks(world.comms, [&](int r, Communicator& c) {
    std::vector<float> t(64, r + 1.0f);  // 1 and 2
    std::vector<std::shared_ptr<Work>> works;
    for (int i = 0; i < 3; ++i) {
      works.push_back(c.AllReduce(OnDevice(t), OnDevice(t), ReduceOp::kSum));
    }
    for (auto& w : works) ASSERT_TRUE(w->Wait(absl::Now() + absl::Seconds(30)).ok());
    // 1+2, then 3+3, then 6+6: each op read its predecessor's output, not the value at issue.
    EXPECT_EQ(t, std::vector<float>(64, 12.0f));
  });
  EXPECT_THAT(world.staging[0]->log(),
              ElementsAre("in 1", "out 3", "in 3", "out 6", "in 6", "out 12"));
}

TEST(StagingOrderTest, OutOfPlaceChainAndASendOfTheResult) {
  World world(2);
  RunRanks(world.comms, [&](int r, Communicator& c) {
    std::vector<float> a(8, r + 1.0f), b(8, 0.0f), got(8, 0.0f);
    // AllReduce a -> b, then AllReduce b -> a, then rank 0 sends a to rank 1; no Wait between.
    auto w1 = c.AllReduce(OnDevice(a), OnDevice(b), ReduceOp::kSum);
    auto w2 = c.AllReduce(OnDevice(b), OnDevice(a), ReduceOp::kSum);
    auto w3 = r == 0 ? c.Send(OnDevice(a), 1, 7) : c.Recv(OnDevice(got), 0, 7);
    for (auto* w : {&w1, &w2, &w3}) ASSERT_TRUE((*w)->Wait(absl::Now() + absl::Seconds(30)).ok());
    EXPECT_EQ(b, std::vector<float>(8, 3.0f));
    EXPECT_EQ(a, std::vector<float>(8, 6.0f));
    if (r == 1) {
      EXPECT_EQ(got, std::vector<float>(8, 6.0f));
    }
  });
}

TEST(StagingOrderTest, InputsAreCopiedAfterTheCallersStreamWork) {
  World world(2);
  RunRanks(world.comms, [&](int r, Communicator& c) {
    std::vector<float> t(16, 0.0f);
    FakeStream stream;
    // A "kernel" that produces the input, queued before the op and not yet run.
    stream.Enqueue([&] { std::fill(t.begin(), t.end(), 10.0f * (r + 1)); });
    OpOptions options;
    options.cuda_stream = &stream;
    auto work = c.AllReduce(OnDevice(t), OnDevice(t), ReduceOp::kSum, options);
    // The worker cannot copy the input before the kernel has run, so the op cannot be done.
    EXPECT_FALSE(work->IsCompleted());
    stream.RunAll();
    ASSERT_TRUE(work->Wait(absl::Now() + absl::Seconds(30)).ok());
    EXPECT_EQ(t, std::vector<float>(16, 30.0f));
  });
}

TEST(StagingOrderTest, OutputIsNotWrittenBeforeTheCallersStreamWork) {
  World world(2);
  RunRanks(world.comms, [&](int r, Communicator& c) {
    if (r == 1) {
      std::vector<float> u(4, 7.0f);
      ASSERT_TRUE(c.Send(OnDevice(u), 0, 1)->Wait(absl::Now() + absl::Seconds(30)).ok());
      return;
    }
    std::vector<float> t(4, 1.0f);
    float seen = -1;
    FakeStream stream;
    // A "kernel" queued before the Recv that still reads the buffer the Recv will fill.
    stream.Enqueue([&] { seen = t[0]; });
    OpOptions options;
    options.cuda_stream = &stream;
    auto work = c.Recv(OnDevice(t), 1, 1, options);
    EXPECT_FALSE(work->IsCompleted());
    stream.RunAll();
    ASSERT_TRUE(work->Wait(absl::Now() + absl::Seconds(30)).ok());
    EXPECT_EQ(seen, 1.0f);  // the kernel read the old value: the copy-out came after it
    EXPECT_EQ(t, std::vector<float>(4, 7.0f));
  });
}

TEST(StagingOrderTest, AStreamThatNeverRunsEndsTheOpAtItsDeadline) {
  World world(1);
  std::vector<float> t(4, 1.0f);
  FakeStream stream;
  stream.Enqueue([] {});  // never run
  OpOptions options;
  options.cuda_stream = &stream;
  options.timeout = absl::Milliseconds(100);
  absl::Status s = world.comms[0]
                       ->AllReduce(OnDevice(t), OnDevice(t), ReduceOp::kSum, options)
                       ->Wait(absl::Now() + absl::Seconds(30));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded,
                          HasSubstr("copying the inputs from the GPU (after the work queued on "
                                    "the caller's stream before the op)")));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("AllReduce #0")));
  EXPECT_EQ(t, std::vector<float>(4, 1.0f));
  EXPECT_THAT(world.staging[0]->log(), ::testing::IsEmpty());
  // The communicator is aborted after a deadline, as for any op.
  EXPECT_THAT(world.comms[0]->AllReduce(OnDevice(t), OnDevice(t), ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rebuild it")));
}

TEST(StagingOrderTest, AbortEndsAnOpWaitingForItsStreamAtOnce) {
  World world(1, /*timeout=*/absl::Minutes(10));
  std::vector<float> t(4, 1.0f);
  FakeStream stream;
  stream.Enqueue([] {});  // never run
  OpOptions options;
  options.cuda_stream = &stream;
  auto work = world.comms[0]->AllReduce(OnDevice(t), OnDevice(t), ReduceOp::kSum, options);
  world.staging[0]->AwaitCopiesStarted(1);  // the worker waits for the stream now
  world.comms[0]->Abort(absl::AbortedError("rank 1 died (test)"));
  // Well before the op's own deadline of ten minutes.
  EXPECT_THAT(work->Wait(absl::Now() + absl::Seconds(30)),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("rank 1 died (test)")));
  EXPECT_EQ(t, std::vector<float>(4, 1.0f));
}

TEST(StagingOrderTest, CpuTensorsAreNotStagedAndOtherDevicesAreRefused) {
  World world(1);
  std::vector<float> cpu(4, 2.0f);
  ASSERT_TRUE(world.comms[0]
                  ->AllReduce(Tensor::Of(cpu.data(), 4), Tensor::Of(cpu.data(), 4),
                              ReduceOp::kSum)
                  ->Wait()
                  .ok());
  EXPECT_THAT(world.staging[0]->log(), ::testing::IsEmpty());
  Tensor elsewhere(cpu.data(), DType::kF32, {4}, Device::Cuda(3));
  EXPECT_THAT(world.comms[0]->AllReduce(elsewhere, elsewhere, ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("AllReduce: in on a device the fake lacks")));
}

}  // namespace
}  // namespace trident
