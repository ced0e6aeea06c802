#include "comm/host/staging.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/cuda.h"
#include "common/status_macros.h"

namespace trident {

namespace {

class CudaMark : public Staging::Mark {
 public:
  explicit CudaMark(std::unique_ptr<cuda::Event> event) : event_(std::move(event)) {}
  const cuda::Event& event() const { return *event_; }

 private:
  std::unique_ptr<cuda::Event> event_;
};

class PinnedBuffer : public Staging::Buffer {
 public:
  explicit PinnedBuffer(cuda::PinnedPool::Block block) : block_(std::move(block)) {}
  void* data() const override { return block_.data(); }
  cuda::PinnedPool::Block& block() { return block_; }

 private:
  cuda::PinnedPool::Block block_;
};

class CudaStaging : public Staging {
 public:
  absl::Status Check(const Tensor& t, absl::string_view op, absl::string_view which) override {
    return cuda::CheckCudaTensor(t, op, which);
  }

  absl::StatusOr<std::unique_ptr<Mark>> MarkStream(int device, void* stream) override {
    // Under capture, an event recorded here would be a node of the graph, and the worker's
    // copies would join the capture instead of running now.
    ASSIGN_OR_RETURN(bool capturing, cuda::IsCapturing(stream));
    if (capturing) {
      return absl::InvalidArgumentError(
          "the host backend cannot stage CUDA tensors from a stream that is being captured "
          "into a CUDA graph (the copies run on its worker, outside the graph); issue the op "
          "outside the capture or use the NCCL backend");
    }
    // nullptr is the legacy default stream: the event fires after the work queued there and
    // on every blocking stream before it.
    ASSIGN_OR_RETURN(std::unique_ptr<cuda::Event> event, cuda::Event::Record(stream, device));
    return std::unique_ptr<Mark>(new CudaMark(std::move(event)));
  }

  absl::StatusOr<std::unique_ptr<Buffer>> Acquire(size_t bytes) override {
    std::shared_ptr<cuda::PinnedPool> pool;
    {
      absl::MutexLock lock(&mu_);
      if (pool_ == nullptr) pool_ = cuda::PinnedPool::Create();
      pool = pool_;
    }
    ASSIGN_OR_RETURN(cuda::PinnedPool::Block block, cuda::PinnedPool::Acquire(pool, bytes));
    return std::unique_ptr<Buffer>(new PinnedBuffer(std::move(block)));
  }

  absl::Status CopyIn(int device, const Mark* after, const void* src, Buffer& dst, size_t bytes,
                      const Limit& limit) override {
    return Copy(device, after, dst.data(), src, bytes, static_cast<PinnedBuffer&>(dst), limit);
  }

  absl::Status CopyOut(int device, const Mark* after, Buffer& src, void* dst, size_t bytes,
                       const Limit& limit) override {
    return Copy(device, after, dst, src.data(), bytes, static_cast<PinnedBuffer&>(src), limit);
  }

 private:
  absl::Status Copy(int device, const Mark* after, void* dst, const void* src, size_t bytes,
                    PinnedBuffer& host, const Limit& limit) {
    ASSIGN_OR_RETURN(cuda::Stream stream, StreamFor(device));
    cuda::DeviceGuard guard(device);
    RETURN_IF_ERROR(guard.status());
    if (after != nullptr) {
      RETURN_IF_ERROR(static_cast<const CudaMark*>(after)->event().BlockStream(stream));
    }
    RETURN_IF_ERROR(cuda::CopyAsync(dst, src, bytes, stream));
    ASSIGN_OR_RETURN(std::unique_ptr<cuda::Event> done, cuda::Event::Record(stream, device));
    std::shared_ptr<cuda::Event> fence = std::move(done);
    host.block().set_fence(fence);  // the pool keeps the block until the copy has run
    return Await(*fence, limit);
  }

  // cuda::WaitEvent, also ending when the communicator is aborted (a stream that never runs
  // must not hold the worker, and so the communicator's destructor, until the deadline).
  static absl::Status Await(const cuda::Event& event, const Limit& limit) {
    absl::Duration pause = absl::Microseconds(2);
    while (true) {
      ASSIGN_OR_RETURN(bool done, event.Done());
      if (done) return absl::OkStatus();
      if (limit.cancel != nullptr && limit.cancel->load(std::memory_order_acquire)) {
        return absl::CancelledError(absl::StrCat(limit.what, ": the communicator was aborted"));
      }
      const absl::Time now = absl::Now();
      if (now >= limit.deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(limit.what, ": the GPU work had not finished at the deadline"));
      }
      absl::SleepFor(std::min(pause, limit.deadline - now));
      pause = std::min(pause * 2, absl::Milliseconds(1));
    }
  }

  // Non-blocking: the copies wait for the marked work only, not for whatever else the caller
  // queues on the legacy default stream meanwhile.
  absl::StatusOr<cuda::Stream> StreamFor(int device) {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<cuda::OwnedStream>& stream = streams_[device];
    if (stream == nullptr) {
      ASSIGN_OR_RETURN(stream, cuda::OwnedStream::Create(device, /*non_blocking=*/true));
    }
    return stream->get();
  }

  absl::Mutex mu_;
  std::map<int, std::unique_ptr<cuda::OwnedStream>> streams_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<cuda::PinnedPool> pool_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::shared_ptr<Staging> CreateCudaStaging() { return std::make_shared<CudaStaging>(); }

}  // namespace trident
