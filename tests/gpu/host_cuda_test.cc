// The host backend on CUDA tensors (staged through pinned host memory): every op, every dtype,
// 1, 2 and 4 ranks as threads sharing one GPU, results checked element by element. Also: the
// inputs are read in the order of the caller's stream. Skips without a CUDA device.
//
// Values are small integers, so sums are exact in every dtype and compared for equality.
#include <atomic>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gpu_test_util.h"
#include "gtest/gtest.h"

#if TRIDENT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace trident {
namespace {

using testing::GpuBuffer;
using testing::RunRanks;

double Value(int rank, size_t i) { return 1 + static_cast<double>((rank * 7 + i * 3) % 5); }
double Sum(int n, size_t i) {
  double s = 0;
  for (int r = 0; r < n; ++r) s += Value(r, i);
  return s;
}
constexpr double kSentinel = 99;

class HostCudaTest : public ::testing::TestWithParam<std::tuple<int, size_t>> {
 protected:
  void SetUp() override {
    TRIDENT_REQUIRE_CUDA_DEVICE();
    std::tie(n_, count_) = GetParam();
    InprocCommOptions options;
    options.size = n_;
    comms_ = NewInprocCommunicators(options);
  }
  void Run(const std::string& what, const std::function<size_t(int, Communicator&)>& fn) {
    std::atomic<size_t> wrong{0};
    RunRanks(comms_, [&](int r, Communicator& c) { wrong += fn(r, c); });
    EXPECT_EQ(wrong.load(), 0u) << what;
  }
  int n_ = 1;
  size_t count_ = 0;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

TEST_P(HostCudaTest, AllReduce) {
  for (DType dtype : kAllDTypes) {
    for (bool in_place : {false, true}) {
      Run(absl::StrCat(DTypeName(dtype), in_place ? " in place" : ""),
          [&](int r, Communicator& c) -> size_t {
            GpuBuffer in(dtype, count_), out(dtype, count_);
            for (size_t i = 0; i < count_; ++i) in.Set(i, Value(r, i));
            in.Upload();
            GpuBuffer& dst = in_place ? in : out;
            absl::Status s = c.AllReduce(in.tensor(), dst.tensor(), ReduceOp::kSum)->Wait();
            EXPECT_TRUE(s.ok()) << s;
            dst.Download();
            size_t wrong = 0;
            for (size_t i = 0; i < count_; ++i) wrong += dst.Get(i) != Sum(n_, i);
            return wrong;
          });
    }
  }
}

TEST_P(HostCudaTest, ReduceScatterAndAllGather) {
  const size_t block = (count_ + n_ - 1) / n_;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    Run(absl::StrCat("ReduceScatter ", DTypeName(dtype)), [&](int r, Communicator& c) -> size_t {
      GpuBuffer in(dtype, block * n_), out(dtype, block);
      for (size_t i = 0; i < block * n_; ++i) in.Set(i, Value(r, i));
      in.Upload();
      absl::Status s = c.ReduceScatter(in.tensor(), out.tensor(), ReduceOp::kSum)->Wait();
      EXPECT_TRUE(s.ok()) << s;
      out.Download();
      size_t wrong = 0;
      for (size_t j = 0; j < block; ++j) wrong += out.Get(j) != Sum(n_, r * block + j);
      return wrong;
    });
    Run(absl::StrCat("AllGather ", DTypeName(dtype)), [&](int r, Communicator& c) -> size_t {
      GpuBuffer in(dtype, block), out(dtype, block * n_);
      for (size_t j = 0; j < block; ++j) in.Set(j, Value(r, j));
      in.Upload();
      absl::Status s = c.AllGather(in.tensor(), out.tensor())->Wait();
      EXPECT_TRUE(s.ok()) << s;
      out.Download();
      size_t wrong = 0;
      for (int p = 0; p < n_; ++p) {
        for (size_t j = 0; j < block; ++j) wrong += out.Get(p * block + j) != Value(p, j);
      }
      return wrong;
    });
  }
}

TEST_P(HostCudaTest, BroadcastReduceAllToAll) {
  const DType dtype = DType::kF32;
  const int root = n_ - 1;
  Run("Broadcast", [&](int r, Communicator& c) -> size_t {
    GpuBuffer buf(dtype, count_);
    for (size_t i = 0; i < count_; ++i) buf.Set(i, r == root ? Value(r, i) : kSentinel);
    buf.Upload();
    absl::Status s = c.Broadcast(buf.tensor(), root)->Wait();
    EXPECT_TRUE(s.ok()) << s;
    buf.Download();
    size_t wrong = 0;
    for (size_t i = 0; i < count_; ++i) wrong += buf.Get(i) != Value(root, i);
    return wrong;
  });
  Run("Reduce", [&](int r, Communicator& c) -> size_t {
    GpuBuffer in(dtype, count_), out(dtype, count_);
    for (size_t i = 0; i < count_; ++i) {
      in.Set(i, Value(r, i));
      out.Set(i, kSentinel);
    }
    in.Upload();
    out.Upload();
    absl::Status s = c.Reduce(in.tensor(), out.tensor(), ReduceOp::kSum, root)->Wait();
    EXPECT_TRUE(s.ok()) << s;
    out.Download();
    size_t wrong = 0;  // the root gets the sum; the others' out is not touched
    for (size_t i = 0; i < count_; ++i) wrong += out.Get(i) != (r == root ? Sum(n_, i) : kSentinel);
    return wrong;
  });
  const size_t block = (count_ + n_ - 1) / n_;
  Run("AllToAll", [&](int r, Communicator& c) -> size_t {
    GpuBuffer in(dtype, block * n_), out(dtype, block * n_);
    for (size_t i = 0; i < block * n_; ++i) in.Set(i, Value(r, i));
    in.Upload();
    absl::Status s = c.AllToAll(in.tensor(), out.tensor())->Wait();
    EXPECT_TRUE(s.ok()) << s;
    out.Download();
    size_t wrong = 0;
    for (int p = 0; p < n_; ++p) {
      for (size_t j = 0; j < block; ++j) wrong += out.Get(p * block + j) != Value(p, r * block + j);
    }
    return wrong;
  });
}

TEST_P(HostCudaTest, SendRecvRing) {
  if (n_ < 2) GTEST_SKIP() << "point to point needs 2 ranks";
  Run("SendRecv", [&](int r, Communicator& c) -> size_t {
    GpuBuffer out(DType::kI32, count_), in(DType::kI32, count_);
    for (size_t i = 0; i < count_; ++i) out.Set(i, Value(r, i));
    out.Upload();
    // Send first, then receive, on every rank: the host backend does not deadlock on it.
    auto send = c.Send(out.tensor(), (r + 1) % n_, /*tag=*/7);
    auto recv = c.Recv(in.tensor(), (r + n_ - 1) % n_, /*tag=*/7);
    absl::Status s = send->Wait();
    EXPECT_TRUE(s.ok()) << s;
    s = recv->Wait();
    EXPECT_TRUE(s.ok()) << s;
    in.Download();
    size_t wrong = 0;
    for (size_t i = 0; i < count_; ++i) wrong += in.Get(i) != Value((r + n_ - 1) % n_, i);
    return wrong;
  });
}

#if TRIDENT_HAVE_CUDA
// The inputs are copied in the order of the caller's stream: an upload queued there just
// before the op, without any synchronisation, is what the op reduces.
TEST_P(HostCudaTest, InputsFollowTheCallersStream) {
  Run("stream order", [&](int r, Communicator& c) -> size_t {
    cudaStream_t stream = nullptr;
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    GpuBuffer buf(DType::kF32, count_);
    for (size_t i = 0; i < count_; ++i) buf.Set(i, Value(r, i));
    // Pinned source, so that the copy is truly asynchronous.
    void* pinned = nullptr;
    EXPECT_EQ(cudaMallocHost(&pinned, buf.bytes() + 1), cudaSuccess);
    std::memcpy(pinned, buf.host.bytes.data(), buf.bytes());
    EXPECT_EQ(cudaMemsetAsync(buf.data(), 0, buf.bytes(), stream), cudaSuccess);
    EXPECT_EQ(cudaMemcpyAsync(buf.data(), pinned, buf.bytes(), cudaMemcpyHostToDevice, stream),
              cudaSuccess);
    OpOptions options;
    options.cuda_stream = stream;
    absl::Status s = c.AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options)->Wait();
    EXPECT_TRUE(s.ok()) << s;
    buf.Download();
    size_t wrong = 0;
    for (size_t i = 0; i < count_; ++i) wrong += buf.Get(i) != Sum(n_, i);
    cudaStreamSynchronize(stream);
    cudaFreeHost(pinned);
    cudaStreamDestroy(stream);
    return wrong;
  });
}

// Ops issued back to back on one tensor, without a Wait in between, each see the previous
// op's result (the staging copies run on the worker in issue order), and a Send issued after
// them sends the final value.
TEST_P(HostCudaTest, BackToBackOpsOnOneTensorSeeEachOthersResults) {
  Run("back to back", [&](int r, Communicator& c) -> size_t {
    cudaStream_t stream = nullptr;
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    GpuBuffer buf(DType::kF32, count_), got(DType::kF32, count_);
    for (size_t i = 0; i < count_; ++i) buf.Set(i, r + 1);
    buf.Upload();
    OpOptions options;
    options.cuda_stream = stream;
    std::vector<std::shared_ptr<Work>> works;
    for (int i = 0; i < 3; ++i) {
      works.push_back(c.AllReduce(buf.tensor(), buf.tensor(), ReduceOp::kSum, options));
    }
    if (n_ > 1 && r == 0) works.push_back(c.Send(buf.tensor(), 1, 3, options));
    if (n_ > 1 && r == 1) works.push_back(c.Recv(got.tensor(), 0, 3, options));
    for (auto& w : works) {
      absl::Status s = w->Wait();
      EXPECT_TRUE(s.ok()) << s;
    }
    const double expect = n_ * (n_ + 1) / 2.0 * n_ * n_;  // three sums of 1..n
    buf.Download();
    size_t wrong = 0;
    for (size_t i = 0; i < count_; ++i) wrong += buf.Get(i) != expect;
    if (n_ > 1 && r == 1) {
      got.Download();
      for (size_t i = 0; i < count_; ++i) wrong += got.Get(i) != expect;
    }
    cudaStreamDestroy(stream);
    return wrong;
  });
}
#endif

INSTANTIATE_TEST_SUITE_P(WorldsAndSizes, HostCudaTest,
                         ::testing::Combine(::testing::Values(1, 2, 4),
                                            ::testing::Values(size_t{0}, size_t{7},
                                                              size_t{1} << 20)),
                         [](const auto& info) {
                           return absl::StrCat("n", std::get<0>(info.param), "_count",
                                               std::get<1>(info.param));
                         });

}  // namespace
}  // namespace trident
