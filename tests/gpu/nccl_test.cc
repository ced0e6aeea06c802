// The NCCL backend on a real GPU, at world size 1 (NCCL does not take one GPU twice in a
// communicator): every op and dtype, in-place all-to-all, the caller's stream, CUDA graph
// capture, Split, and the failure paths that need a real communicator: an op stalled on its
// stream times out and the communicator is aborted (ncclCommAbort), Abort from another thread
// (the op fails once ncclCommAbort has returned), and a rebuild under a new epoch. Skips
// without a CUDA device or without NCCL.
#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "trident/nccl.h"
#include "trident/store.h"
#include "../util/status_matchers.h"

#if TRIDENT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;
using testing::GpuBuffer;

double Value(size_t i) { return 1 + static_cast<double>((i * 3) % 5); }

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TRIDENT_REQUIRE_CUDA_DEVICE();
    if (!NcclBuilt()) GTEST_SKIP() << "no CUDA device with NCCL: this build has no NCCL backend";
    store_ = NewMemoryStore();
    comm_ = Create("world", 0);
    ASSERT_NE(comm_, nullptr);
  }

  std::unique_ptr<Communicator> Create(const std::string& name, int epoch,
                                       absl::Duration timeout = absl::Seconds(60)) {
    NcclCommOptions options;
    options.rank = 0;
    options.world_size = 1;
    options.store = store_;
    options.device = 0;
    options.name = name;
    options.epoch = epoch;
    options.timeout = timeout;
    auto comm = CreateNcclCommunicator(options);
    EXPECT_TRUE(comm.ok()) << comm.status();
    return comm.ok() ? std::move(*comm) : nullptr;
  }

  std::shared_ptr<Store> store_;
  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclTest, EveryOpAndDtypeAtWorldSizeOne) {
  const size_t n = 4099;
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeName(dtype));
    GpuBuffer in(dtype, n), out(dtype, n);
    for (size_t i = 0; i < n; ++i) in.Set(i, Value(i));
    in.Upload();
    auto check = [&](GpuBuffer& b, const char* what) {
      b.Download();
      size_t wrong = 0;
      for (size_t i = 0; i < n; ++i) wrong += b.Get(i) != Value(i);
      EXPECT_EQ(wrong, 0u) << what;
    };
    std::vector<ReduceOp> ops = {ReduceOp::kSum, ReduceOp::kProd, ReduceOp::kMin, ReduceOp::kMax};
    if (IsFloatingPoint(dtype)) ops.push_back(ReduceOp::kAvg);
    for (ReduceOp op : ops) {
      ASSERT_TRUE(comm_->AllReduce(in.tensor(), out.tensor(), op)->Wait().ok());
      check(out, "AllReduce");
      ASSERT_TRUE(comm_->Reduce(in.tensor(), out.tensor(), op, 0)->Wait().ok());
      check(out, "Reduce");
      ASSERT_TRUE(comm_->ReduceScatter(in.tensor(), out.tensor(), op)->Wait().ok());
      check(out, "ReduceScatter");
    }
    ASSERT_TRUE(comm_->AllReduce(in.tensor(), in.tensor(), ReduceOp::kSum)->Wait().ok());
    check(in, "AllReduce in place");
    ASSERT_TRUE(comm_->AllGather(in.tensor(), out.tensor())->Wait().ok());
    check(out, "AllGather");
    ASSERT_TRUE(comm_->AllToAll(in.tensor(), out.tensor())->Wait().ok());
    check(out, "AllToAll");
    ASSERT_TRUE(comm_->Broadcast(in.tensor(), 0)->Wait().ok());
    check(in, "Broadcast");
  }
  auto barrier = comm_->Barrier();
  EXPECT_TRUE(barrier->Wait(absl::Now() + absl::Seconds(30)).ok());
  EXPECT_TRUE(barrier->IsCompleted());
  EXPECT_TRUE(barrier->status().ok());
  EXPECT_THAT(comm_->Describe(), AllOf(HasSubstr("world[rank 0/1"), HasSubstr("nccl 2."),
                                       HasSubstr("cuda:0")));
}

TEST_F(NcclTest, BadArgumentsChangeNothing) {
  float host[4] = {1, 2, 3, 4};
  GpuBuffer gpu(DType::kF32, 4);
  EXPECT_THAT(comm_->AllReduce(Tensor::Of(host, 4), gpu.tensor(), ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("in is a CPU tensor")));
  Tensor other_device(gpu.dev->data(), DType::kF32, {4}, Device::Cuda(cuda::DeviceCount()));
  EXPECT_THAT(comm_->AllReduce(other_device, other_device, ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("uses cuda:0")));
  GpuBuffer ints(DType::kI32, 4);
  EXPECT_THAT(comm_->AllReduce(ints.tensor(), ints.tensor(), ReduceOp::kAvg)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("avg of i32")));
  EXPECT_THAT(comm_->Broadcast(gpu.tensor(), 1)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("root 1")));
  EXPECT_TRUE(comm_->AbortStatus().ok());
  EXPECT_TRUE(comm_->AllReduce(gpu.tensor(), gpu.tensor(), ReduceOp::kSum)->Wait().ok());
}

TEST_F(NcclTest, SplitMakesAWorkingChildAndNoColorGetsNone) {
  auto child = comm_->Split(/*color=*/0, /*key=*/0);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_NE(*child, nullptr);
  EXPECT_EQ((*child)->size(), 1);
  GpuBuffer buf(DType::kF32, 100);
  for (size_t i = 0; i < 100; ++i) buf.Set(i, Value(i));
  buf.Upload();
  EXPECT_TRUE((*child)->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum)->Wait().ok());
  EXPECT_THAT((*child)->Describe(), HasSubstr("world/0"));
  auto none = comm_->Split(/*color=*/-1, /*key=*/0);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);
}

#if TRIDENT_HAVE_CUDA
// A host function that holds a stream until the test opens the gate: an op queued behind it
// cannot finish, as if a peer never arrived.
struct Gate {
  std::atomic<bool> open{false};
  static void CUDART_CB Hold(void* self) {
    while (!static_cast<Gate*>(self)->open.load()) std::this_thread::yield();
  }
};

class StalledStream {
 public:
  StalledStream() {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_EQ(cudaLaunchHostFunc(stream_, &Gate::Hold, &gate_), cudaSuccess);
  }
  ~StalledStream() {
    if (releaser_.joinable()) releaser_.join();
    Release();
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  void Release() { gate_.open = true; }
  // Releases the stream once `comm` is aborted, as the caller's earlier work would finish in
  // a real job: ncclCommAbort may wait for the device, and the aborted op's Work completes
  // only after ncclCommAbort has returned. Joined by the destructor.
  void ReleaseWhenAborted(const Communicator* comm) {
    releaser_ = std::thread([this, comm] {
      const absl::Time give_up = absl::Now() + absl::Seconds(60);
      while (comm->AbortStatus().ok() && absl::Now() < give_up) {
        absl::SleepFor(absl::Milliseconds(1));
      }
      Release();
    });
  }
  void* get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
  Gate gate_;
  std::thread releaser_;
};

TEST_F(NcclTest, WorkFollowsTheCallersStream) {
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  GpuBuffer buf(DType::kF32, 1 << 20);
  for (size_t i = 0; i < buf.host.count; ++i) buf.Set(i, Value(i));
  buf.Upload();
  OpOptions options;
  options.cuda_stream = stream;
  std::vector<std::shared_ptr<Work>> works;
  for (int k = 0; k < 8; ++k) {
    works.push_back(comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options));
  }
  // A copy queued after the ops on the same stream sees their result.
  std::vector<float> host(buf.host.count);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), buf.data(), buf.bytes(), cudaMemcpyDeviceToHost, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  for (auto& w : works) {
    EXPECT_TRUE(w->IsCompleted());
    EXPECT_TRUE(w->Wait(absl::InfinitePast()).ok());
  }
  size_t wrong = 0;
  for (size_t i = 0; i < host.size(); ++i) wrong += host[i] != static_cast<float>(Value(i));
  EXPECT_EQ(wrong, 0u);
  cudaStreamDestroy(stream);
}

TEST_F(NcclTest, StalledOpTimesOutAndAbortsTheCommunicator) {
  GpuBuffer buf(DType::kF32, 1024);
  StalledStream stalled;
  OpOptions options;
  options.cuda_stream = stalled.get();
  options.timeout = absl::Milliseconds(300);
  stalled.ReleaseWhenAborted(comm_.get());
  const absl::Time start = absl::Now();
  auto work = comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options);
  // The caller's own deadline comes first: Wait returns without waiting for the op.
  EXPECT_THAT(work->Wait(absl::Now() + absl::Milliseconds(20)),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("caller's deadline")));
  absl::Status s = work->Wait(absl::Now() + absl::Seconds(30));
  const absl::Duration took = absl::Now() - start;
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kDeadlineExceeded,
                          AllOf(HasSubstr("AllReduce #0"), HasSubstr("timed out after 300ms"))));
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_EQ(comm_->AbortStatus().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rebuild")));
  comm_.reset();  // waits for ncclCommAbort (bounded by TRIDENT_NCCL_ABORT_TIMEOUT_MS)
}

// The runtime aborts a communicator when a peer dies (the backend reads no failure records).
// The pending op fails with that status once ncclCommAbort has returned, so its buffer is no
// longer written when the caller sees the failure.
TEST_F(NcclTest, AbortFromAnotherThreadFailsPendingOpsAfterTheBackendAbort) {
  GpuBuffer buf(DType::kF32, 1024);
  StalledStream stalled;
  OpOptions options;
  options.cuda_stream = stalled.get();
  auto work = comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options);
  stalled.ReleaseWhenAborted(comm_.get());
  std::thread aborter([&] {
    comm_->Abort(absl::AbortedError("epoch 1: rank 1 killed by signal 9 (SIGKILL)"));
  });
  absl::Status s = work->Wait(absl::Now() + absl::Seconds(30));
  aborter.join();
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kAborted, AllOf(HasSubstr("rank 1"), HasSubstr("SIGKILL"))));
  EXPECT_THAT(comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("rebuild")));
  comm_.reset();
}

// NCCL's all-to-all does not take in == out; the backend sends from a stream-ordered copy.
TEST_F(NcclTest, InPlaceAllToAll) {
  const size_t n = 1 << 16;
  GpuBuffer buf(DType::kF32, n);
  for (size_t i = 0; i < n; ++i) buf.Set(i, Value(i));
  buf.Upload();
  ASSERT_TRUE(comm_->AllToAll(buf.tensor(), buf.tensor())->Wait(absl::Now() + absl::Seconds(30)).ok());
  buf.Download();
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += buf.Get(i) != Value(i);
  EXPECT_EQ(wrong, 0u);
}

// An op captured into a CUDA graph runs at the graph's launch: its Work completes at once,
// gets no deadline (no spurious abort while the graph waits), and the launch computes it.
TEST_F(NcclTest, OpsCapturedIntoACudaGraphRunAtItsLaunch) {
  const size_t n = 4096;
  GpuBuffer buf(DType::kF32, n);
  for (size_t i = 0; i < n; ++i) buf.Set(i, Value(i));
  buf.Upload();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  OpOptions options;
  options.cuda_stream = stream;
  options.timeout = absl::Milliseconds(100);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  auto work = comm_->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_TRUE(work->IsCompleted());
  EXPECT_TRUE(work->status().ok()) << work->status();
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  // The captured op is not watched: however long the graph waits, nothing aborts it.
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_TRUE(comm_->AbortStatus().ok()) << comm_->AbortStatus();
  buf.Download();
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += buf.Get(i) != Value(i);  // a sum over one rank
  EXPECT_EQ(wrong, 0u);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(NcclTest, RebuildUnderANewEpoch) {
  GpuBuffer buf(DType::kF32, 256);
  comm_->Abort(absl::AbortedError("a member died"));
  comm_.reset();
  auto rebuilt = Create("world", /*epoch=*/1);
  ASSERT_NE(rebuilt, nullptr);
  EXPECT_THAT(rebuilt->Describe(), HasSubstr("epoch 1"));
  EXPECT_TRUE(rebuilt->AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum)->Wait().ok());
  NcclCommOptions again;
  again.rank = 0;
  again.world_size = 1;
  again.store = store_;
  again.epoch = 1;
  EXPECT_THAT(CreateNcclCommunicator(again).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("already built")));
}
#endif  // TRIDENT_HAVE_CUDA

}  // namespace
}  // namespace trident
