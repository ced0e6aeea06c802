// Conversion of NCCL and CUDA error codes (done once, at the edge), and what a build or a
// machine without CUDA answers when given CUDA tensors. Runs everywhere: no GPU needed.
#include <vector>

#include "comm/host/inproc.h"
#include "comm/nccl/nccl_status.h"
#include "common/cuda.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/communicator.h"
#include "trident/nccl.h"
#include "trident/store.h"
#include "../util/status_matchers.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::StatusIs;

TEST(NcclStatusTest, CodesFollowWhatTheCallerDoesNext) {
  using nccl::NcclResultToStatus;
  EXPECT_TRUE(NcclResultToStatus(nccl::kNcclSuccess, "ncclAllReduce", "", "").ok());
  struct Case {
    int result;
    absl::StatusCode code;
    const char* name;
  };
  for (const Case& c : std::vector<Case>{
           {nccl::kNcclInvalidArgument, absl::StatusCode::kInvalidArgument, "ncclInvalidArgument"},
           {nccl::kNcclInvalidUsage, absl::StatusCode::kFailedPrecondition, "ncclInvalidUsage"},
           {nccl::kNcclRemoteError, absl::StatusCode::kAborted, "ncclRemoteError"},
           {nccl::kNcclSystemError, absl::StatusCode::kAborted, "ncclSystemError"},
           {nccl::kNcclUnhandledCudaError, absl::StatusCode::kAborted, "ncclUnhandledCudaError"},
           {nccl::kNcclInternalError, absl::StatusCode::kInternal, "ncclInternalError"},
           {nccl::kNcclInProgress, absl::StatusCode::kUnavailable, "ncclInProgress"},
           {nccl::kNcclTimeout, absl::StatusCode::kDeadlineExceeded, "ncclTimeout"},
           {42, absl::StatusCode::kUnknown, "unknown ncclResult_t"},
       }) {
    EXPECT_THAT(NcclResultToStatus(c.result, "ncclAllReduce", "some text", ""),
                StatusIs(c.code, AllOf(HasSubstr("ncclAllReduce: NCCL error"), HasSubstr(c.name),
                                       HasSubstr("some text"))))
        << c.name;
  }
}

TEST(NcclStatusTest, MessageKeepsTheNcclStringAndLastError) {
  absl::Status s = nccl::NcclResultToStatus(
      nccl::kNcclRemoteError, "ncclCommGetAsyncError",
      "remote process exited or there was a network error",
      "NET/Socket : peer 10.0.0.7<41234> closed the connection\n");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kAborted,
                          AllOf(HasSubstr("NCCL error 6 ncclRemoteError"),
                                HasSubstr("(remote process exited or there was a network error)"),
                                HasSubstr(": NET/Socket : peer 10.0.0.7<41234> closed"),
                                HasSubstr("rebuild the communicator"))));
  EXPECT_THAT(std::string(s.message()), ::testing::Not(HasSubstr("\n")));
}

TEST(CudaStatusTest, CodesFollowWhatTheCallerDoesNext) {
  EXPECT_TRUE(cuda::ErrorToStatus(0, "cudaMalloc").ok());
  EXPECT_THAT(cuda::ErrorToStatus(1, "cudaMemcpyAsync"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("cudaMemcpyAsync: CUDA error 1")));
  EXPECT_THAT(cuda::ErrorToStatus(2, "cudaMalloc(1024 bytes)"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("cudaMalloc(1024 bytes)")));
  EXPECT_THAT(cuda::ErrorToStatus(100, "cudaGetDeviceCount"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("CUDA error 100")));
  EXPECT_THAT(cuda::ErrorToStatus(35, "cudaGetDeviceCount"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("CUDA error 35")));
  EXPECT_THAT(cuda::ErrorToStatus(600, "cudaEventQuery"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("600")));
  EXPECT_THAT(cuda::ErrorToStatus(700, "cudaEventQuery"),
              StatusIs(absl::StatusCode::kInternal,
                       AllOf(HasSubstr("CUDA error 700"), HasSubstr("sticky"),
                             HasSubstr("must be replaced"))));
  // The watchdog decides from a payload, not from the text: only sticky errors carry it.
  EXPECT_TRUE(cuda::IsContextLost(cuda::ErrorToStatus(700, "cudaEventQuery")));
  EXPECT_TRUE(cuda::IsContextLost(cuda::ErrorToStatus(719, "cudaEventQuery")));
  EXPECT_FALSE(cuda::IsContextLost(cuda::ErrorToStatus(2, "cudaMalloc")));
  EXPECT_FALSE(cuda::IsContextLost(absl::InternalError("sticky error: the process must be replaced")));
  if (cuda::Built()) {
    EXPECT_THAT(cuda::ErrorToStatus(2, "cudaMalloc"),
                StatusIs(absl::StatusCode::kResourceExhausted,
                         HasSubstr("cudaErrorMemoryAllocation")));
  }
}

TEST(CudaDeviceTest, NoDeviceIsReportedNotFatal) {
  // On a machine without a GPU (or without CUDA in the build) this is 0 with a reason; the
  // process and every test binary must still load and run.
  const int n = cuda::DeviceCount();
  EXPECT_GE(n, 0);
  if (n == 0) {
    EXPECT_FALSE(cuda::NoDeviceReason().empty());
  } else {
    EXPECT_TRUE(cuda::NoDeviceReason().empty());
  }
}

// A CUDA tensor the build or machine cannot serve is a bad argument, not a crash.
TEST(CudaTensorOptionsTest, HostBackendRejectsCudaTensorsItCannotServe) {
  if (cuda::Built() && cuda::DeviceCount() > 0) {
    GTEST_SKIP() << "this machine has a CUDA device; tests/gpu covers CUDA tensors";
  }
  InprocCommOptions options;
  options.size = 1;
  auto comms = NewInprocCommunicators(options);
  Communicator& comm = *comms[0];
  float host[4] = {1, 2, 3, 4};
  // A fake device pointer: nothing may touch it.
  Tensor gpu(reinterpret_cast<void*>(0x1000), DType::kF32, {4}, Device::Cuda(0));
  Tensor cpu = Tensor::Of(host, 4);
  const std::string why = cuda::Built() ? "this process sees 0 CUDA device(s)"
                                        : "this build of trident has no CUDA support";
  EXPECT_THAT(comm.AllReduce(gpu, gpu, ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("AllReduce"), HasSubstr("in is a CUDA tensor"),
                             HasSubstr(why))));
  EXPECT_THAT(comm.AllReduce(cpu, gpu, ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("out is a CUDA tensor")));
  EXPECT_THAT(comm.Broadcast(gpu, 0)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why)));
  // Nothing happened: the communicator is still usable.
  EXPECT_TRUE(comm.AbortStatus().ok());
  EXPECT_TRUE(comm.AllReduce(cpu, cpu, ReduceOp::kSum)->Wait().ok());
}

TEST(CudaTensorOptionsTest, CpuAndCudaTensorsCannotBeMixed) {
  if (!cuda::Built() || cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  InprocCommOptions options;
  options.size = 1;
  auto comms = NewInprocCommunicators(options);
  float host[4] = {1, 2, 3, 4};
  auto buf = cuda::DeviceBuffer::Allocate(sizeof(host), 0);
  ASSERT_TRUE(buf.ok()) << buf.status();
  Tensor gpu((*buf)->data(), DType::kF32, {4}, Device::Cuda(0));
  EXPECT_THAT(comms[0]->AllReduce(Tensor::Of(host, 4), gpu, ReduceOp::kSum)->Wait(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("same device")));
}

TEST(NcclOptionsTest, CreateSaysWhyItCannot) {
  NcclCommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.store = NewMemoryStore();
  auto comm = CreateNcclCommunicator(options);
  if (!NcclBuilt()) {
    EXPECT_THAT(comm.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                        HasSubstr("no NCCL backend")));
  } else if (cuda::DeviceCount() == 0) {
    EXPECT_THAT(comm.status(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                        HasSubstr("no CUDA device")));
  } else {
    EXPECT_TRUE(comm.ok()) << comm.status();
  }
  options.rank = 3;
  EXPECT_THAT(CreateNcclCommunicator(options).status(),
              StatusIs(NcclBuilt() ? absl::StatusCode::kInvalidArgument
                                   : absl::StatusCode::kFailedPrecondition,
                       ::testing::_));
}

}  // namespace
}  // namespace trident
