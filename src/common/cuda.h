// common/cuda.h: the CUDA runtime calls Trident makes, behind types that need no CUDA headers,
// so that callers compile in every build. In a build without CUDA (TRIDENT_WITH_CUDA=OFF or no
// toolkit found) Built() is false, DeviceCount() is 0 and every other call fails with
// kFailedPrecondition "built without CUDA"; callers that take user tensors check Built() first
// and answer kInvalidArgument (see CheckCudaTensor).
//
// Only the runtime (libcudart) is linked; it loads the driver itself. On a machine with the
// CUDA libraries but no GPU or driver, DeviceCount() is 0 and NoDeviceReason() says why.
//
// cudaError_t codes are converted once, here (ErrorToStatus), with the code's name and text.
// Thread-safety: every function may be called from any thread; a Stream or Event is used by
// one op at a time, as CUDA allows.
#ifndef TRIDENT_COMMON_CUDA_H_
#define TRIDENT_COMMON_CUDA_H_

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "trident/tensor.h"

namespace trident::cuda {

// True when this build links the CUDA runtime.
bool Built();
// Number of usable CUDA devices; 0 when not built, without a driver, or without a device.
int DeviceCount();
// Why DeviceCount() is 0 (empty when it is not), e.g. "built without CUDA" or
// "cudaGetDeviceCount: CUDA error 35 cudaErrorInsufficientDriver: ...".
std::string NoDeviceReason();

// Converts a cudaError_t returned by `call`. Codes, by what the caller does next:
//   invalid value/device/pointer/handle                      kInvalidArgument
//   out of memory                                             kResourceExhausted
//   no device, no or old driver, not initialised              kFailedPrecondition
//   not ready                                                 kUnavailable
//   sticky device errors (illegal address, launch failure,
//   uncorrectable ECC, ...): the CUDA context is lost        kInternal, saying the process
//                                                             must be replaced (IsContextLost)
//   anything else                                             kInternal
// The message keeps the call, the numeric code, its name and its text.
absl::Status ErrorToStatus(int cuda_error, absl::string_view call);

// True when `status` came from a sticky CUDA error (ErrorToStatus marks it with a payload):
// this process's CUDA context is lost, so no rebuild in it can succeed; the process must be
// replaced. Decided from the payload, never from the message.
bool IsContextLost(const absl::Status& status);

// kInvalidArgument when `t` is a CUDA tensor that this build or machine cannot serve: a
// build without CUDA, or a device index that does not exist. OK for CPU tensors.
absl::Status CheckCudaTensor(const Tensor& t, absl::string_view op, absl::string_view which);

// cudaStream_t and cudaEvent_t, opaque.
using Stream = void*;

// Makes `device` current on this thread and restores the previous device when destroyed.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

// A stream owned by Trident (cudaStreamCreateWithFlags). `non_blocking` = false makes it
// synchronise with the legacy default stream, so work the caller queued there runs first.
class OwnedStream {
 public:
  static absl::StatusOr<std::unique_ptr<OwnedStream>> Create(int device, bool non_blocking);
  ~OwnedStream();
  Stream get() const { return stream_; }
  int device() const { return device_; }

 private:
  OwnedStream(Stream s, int device) : stream_(s), device_(device) {}
  Stream stream_;
  int device_;
};

// A cudaEvent_t (timing disabled) recorded on a stream; destroyed with the object.
class Event {
 public:
  static absl::StatusOr<std::unique_ptr<Event>> Record(Stream stream, int device);
  ~Event();
  // cudaEventQuery: true once the work before the record has finished; an error status when
  // that work failed.
  absl::StatusOr<bool> Done() const;
  // Makes `stream` wait for this event (cudaStreamWaitEvent); the host does not block.
  absl::Status BlockStream(Stream stream) const;
  void* get() const { return event_; }

 private:
  explicit Event(void* e) : event_(e) {}
  void* event_;
};

// Polls `event` until it completes or `deadline` passes (kDeadlineExceeded naming `what`).
// Never blocks past the deadline: it sleeps in short steps instead of cudaEventSynchronize.
absl::Status WaitEvent(const Event& event, absl::Time deadline, absl::string_view what);

// cudaMemcpyAsync(kind = default, so any of host, pinned host, device) on `stream`.
absl::Status CopyAsync(void* dst, const void* src, size_t bytes, Stream stream);

// cudaStreamIsCapturing: true while `stream` is being captured into a CUDA graph (work queued
// on it then runs only when the graph is launched).
absl::StatusOr<bool> IsCapturing(Stream stream);

// Device memory ordered on `stream` (cudaMallocAsync / cudaFreeAsync): usable by work queued
// on `stream` after the allocation, and given back once the work queued before the free has
// run. For per-op scratch that must not outlive the op; works under graph capture.
absl::StatusOr<void*> AllocAsync(size_t bytes, Stream stream);
absl::Status FreeAsync(void* p, Stream stream);

// Page-locked host memory (cudaMallocHost) for staging copies, cached and reused: pinning
// is slow and cudaFreeHost synchronises the device, so blocks go back to the pool, which
// frees them when it is destroyed (after every block has come back).
class PinnedPool {
 public:
  class Block {
   public:
    Block() = default;
    Block(Block&& o) noexcept { *this = std::move(o); }
    Block& operator=(Block&& o) noexcept;
    ~Block();
    void* data() const { return data_; }
    size_t size() const { return size_; }
    // The event after the last copy queued into or out of this block: the pool does not hand
    // the block out again before it has fired (a copy may still run after an op is dropped).
    void set_fence(std::shared_ptr<Event> fence) { fence_ = std::move(fence); }

   private:
    friend class PinnedPool;
    std::shared_ptr<PinnedPool> pool_;
    void* data_ = nullptr;
    size_t size_ = 0;
    std::shared_ptr<Event> fence_;
  };

  static std::shared_ptr<PinnedPool> Create();
  ~PinnedPool();
  // A block of at least `bytes` (sizes are rounded up to powers of two from 64 KiB).
  static absl::StatusOr<Block> Acquire(const std::shared_ptr<PinnedPool>& pool, size_t bytes);

 private:
  struct Free {
    void* data;
    std::shared_ptr<Event> fence;
  };
  PinnedPool() = default;
  void Release(void* data, size_t size, std::shared_ptr<Event> fence);
  absl::Mutex mu_;
  std::multimap<size_t, Free> free_ ABSL_GUARDED_BY(mu_);
};

// Page-locks existing host memory (cudaHostRegister, portable to every device), so that
// copies to and from it are asynchronous and run at full speed; for long-lived buffers such
// as the checkpoint engine's staging. UnregisterHost undoes it (before the memory is freed).
absl::Status RegisterHost(void* p, size_t bytes);
void UnregisterHost(void* p);

// Device memory (cudaMalloc) on one device, freed with the object. For tools and tests.
class DeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes, int device);
  ~DeviceBuffer();
  void* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceBuffer(void* d, size_t n, int device) : data_(d), size_(n), device_(device) {}
  void* data_;
  size_t size_;
  int device_;
};

// Blocking copies (cudaMemcpy) and cudaDeviceSynchronize, for tools and tests.
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes);
absl::Status SynchronizeDevice(int device);

}  // namespace trident::cuda

#endif  // TRIDENT_COMMON_CUDA_H_
