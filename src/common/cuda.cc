#include "common/cuda.h"

#include <bit>
#include <mutex>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/logging.h"

#if TRIDENT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace trident::cuda {
namespace {

// cudaError_t values (stable across CUDA releases; checked against the header when built).
enum : int {
  kSuccess = 0,
  kInvalidValue = 1,
  kMemoryAllocation = 2,
  kInitializationError = 3,
  kInvalidDevicePointer = 17,
  kStubLibrary = 34,
  kInsufficientDriver = 35,
  kCallRequiresNewerDriver = 36,
  kDevicesUnavailable = 46,
  kNoDevice = 100,
  kInvalidDevice = 101,
  kEccUncorrectable = 214,
  kNvlinkUncorrectable = 220,
  kInvalidResourceHandle = 400,
  kNotReady = 600,
  kIllegalAddress = 700,
  kLaunchTimeout = 702,
  kAssert = 710,
  kHardwareStackError = 714,
  kIllegalInstruction = 715,
  kMisalignedAddress = 716,
  kInvalidAddressSpace = 717,
  kInvalidPc = 718,
  kLaunchFailure = 719,
};

#if TRIDENT_HAVE_CUDA
static_assert(kInvalidValue == int{cudaErrorInvalidValue} &&
              kMemoryAllocation == int{cudaErrorMemoryAllocation} &&
              kNoDevice == int{cudaErrorNoDevice} &&
              kInsufficientDriver == int{cudaErrorInsufficientDriver} &&
              kNotReady == int{cudaErrorNotReady} && kIllegalAddress == int{cudaErrorIllegalAddress} &&
              kLaunchFailure == int{cudaErrorLaunchFailure} &&
              kEccUncorrectable == int{cudaErrorECCUncorrectable} &&
              kInvalidResourceHandle == int{cudaErrorInvalidResourceHandle});
#endif

absl::StatusCode CodeFor(int e) {
  switch (e) {
    case kInvalidValue:
    case kInvalidDevicePointer:
    case kInvalidDevice:
    case kInvalidResourceHandle:
      return absl::StatusCode::kInvalidArgument;
    case kMemoryAllocation:
      return absl::StatusCode::kResourceExhausted;
    case kInitializationError:
    case kStubLibrary:
    case kInsufficientDriver:
    case kCallRequiresNewerDriver:
    case kDevicesUnavailable:
    case kNoDevice:
      return absl::StatusCode::kFailedPrecondition;
    case kNotReady:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

bool IsSticky(int e) {
  switch (e) {
    case kEccUncorrectable:
    case kNvlinkUncorrectable:
    case kIllegalAddress:
    case kLaunchTimeout:
    case kAssert:
    case kHardwareStackError:
    case kIllegalInstruction:
    case kMisalignedAddress:
    case kInvalidAddressSpace:
    case kInvalidPc:
    case kLaunchFailure:
      return true;
    default:
      return false;
  }
}

// The payload that marks a status as a sticky CUDA error; its value is the cudaError_t.
constexpr absl::string_view kContextLostPayload = "trident.dev/cuda-context-lost";

[[maybe_unused]] absl::Status NotBuilt(absl::string_view call) {
  return absl::FailedPreconditionError(absl::StrCat(
      call, ": this build of trident has no CUDA support (built with TRIDENT_WITH_CUDA=OFF or "
            "without a CUDA toolkit)"));
}

#if TRIDENT_HAVE_CUDA
absl::Status Check(cudaError_t e, absl::string_view call) {
  if (e == cudaSuccess) return absl::OkStatus();
  return ErrorToStatus(static_cast<int>(e), call);
}

struct DeviceProbe {
  int count = 0;
  std::string reason;
};

const DeviceProbe& Probe() {
  static const DeviceProbe probe = [] {
    DeviceProbe p;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      p.reason = ErrorToStatus(static_cast<int>(e), "cudaGetDeviceCount").ToString();
      cudaGetLastError();  // clear it: it is not sticky, and later calls should not see it
    } else if (n == 0) {
      p.reason = "cudaGetDeviceCount: no CUDA device";
    }
    p.count = e == cudaSuccess ? n : 0;
    return p;
  }();
  return probe;
}
#endif

}  // namespace

bool Built() {
#if TRIDENT_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int DeviceCount() {
#if TRIDENT_HAVE_CUDA
  return Probe().count;
#else
  return 0;
#endif
}

std::string NoDeviceReason() {
#if TRIDENT_HAVE_CUDA
  return Probe().reason;
#else
  return "built without CUDA";
#endif
}

absl::Status ErrorToStatus(int e, absl::string_view call) {
  if (e == kSuccess) return absl::OkStatus();
  std::string text = absl::StrCat(call, ": CUDA error ", e);
#if TRIDENT_HAVE_CUDA
  absl::StrAppend(&text, " ", cudaGetErrorName(static_cast<cudaError_t>(e)), ": ",
                  cudaGetErrorString(static_cast<cudaError_t>(e)));
#endif
  if (IsSticky(e)) {
    absl::StrAppend(&text,
                    " (a sticky error: this process's CUDA context is lost; the process must be "
                    "replaced)");
  }
  absl::Status status(CodeFor(e), text);
  if (IsSticky(e)) status.SetPayload(kContextLostPayload, absl::Cord(absl::StrCat(e)));
  return status;
}

bool IsContextLost(const absl::Status& status) {
  return status.GetPayload(kContextLostPayload).has_value();
}

absl::Status CheckCudaTensor(const Tensor& t, absl::string_view op, absl::string_view which) {
  if (t.device().is_cpu()) return absl::OkStatus();
  if (!Built()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", which, " is a CUDA tensor (cuda:", t.device().index,
        ") but this build of trident has no CUDA support (TRIDENT_WITH_CUDA=OFF or no CUDA "
        "toolkit found at build time); pass CPU tensors or rebuild with CUDA"));
  }
  const int n = DeviceCount();
  if (t.device().index < 0 || t.device().index >= n) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", which, " is a CUDA tensor (cuda:", t.device().index, ") but this process sees ", n,
        " CUDA device(s)", n == 0 ? absl::StrCat(" (", NoDeviceReason(), ")") : ""));
  }
  return absl::OkStatus();
}

// --- devices, streams, events ------------------------------------------------------------

DeviceGuard::DeviceGuard(int device) {
#if TRIDENT_HAVE_CUDA
  status_ = Check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (status_.ok() && previous_ != device) {
    status_ = Check(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")"));
  }
#else
  status_ = NotBuilt("cudaSetDevice");
#endif
}

DeviceGuard::~DeviceGuard() {
#if TRIDENT_HAVE_CUDA
  if (status_.ok()) {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
#endif
}

absl::StatusOr<std::unique_ptr<OwnedStream>> OwnedStream::Create(int device, bool non_blocking) {
#if TRIDENT_HAVE_CUDA
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  cudaStream_t s = nullptr;
  absl::Status st = Check(
      cudaStreamCreateWithFlags(&s, non_blocking ? cudaStreamNonBlocking : cudaStreamDefault),
      "cudaStreamCreateWithFlags");
  if (!st.ok()) return st;
  return std::unique_ptr<OwnedStream>(new OwnedStream(s, device));
#else
  return NotBuilt("cudaStreamCreate");
#endif
}

OwnedStream::~OwnedStream() {
#if TRIDENT_HAVE_CUDA
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
#endif
}

absl::StatusOr<std::unique_ptr<Event>> Event::Record(Stream stream, int device) {
#if TRIDENT_HAVE_CUDA
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  cudaEvent_t e = nullptr;
  absl::Status st = Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming),
                          "cudaEventCreateWithFlags");
  if (!st.ok()) return st;
  auto event = std::unique_ptr<Event>(new Event(e));
  st = Check(cudaEventRecord(e, static_cast<cudaStream_t>(stream)), "cudaEventRecord");
  if (!st.ok()) return st;
  return event;
#else
  return NotBuilt("cudaEventRecord");
#endif
}

Event::~Event() {
#if TRIDENT_HAVE_CUDA
  cudaEventDestroy(static_cast<cudaEvent_t>(event_));
#endif
}

absl::StatusOr<bool> Event::Done() const {
#if TRIDENT_HAVE_CUDA
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event_));
  if (e == cudaSuccess) return true;
  if (e == cudaErrorNotReady) return false;
  return ErrorToStatus(static_cast<int>(e), "cudaEventQuery");
#else
  return NotBuilt("cudaEventQuery");
#endif
}

absl::Status Event::BlockStream(Stream stream) const {
#if TRIDENT_HAVE_CUDA
  return Check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                   static_cast<cudaEvent_t>(event_), 0),
               "cudaStreamWaitEvent");
#else
  return NotBuilt("cudaStreamWaitEvent");
#endif
}

absl::Status WaitEvent(const Event& event, absl::Time deadline, absl::string_view what) {
  absl::Duration pause = absl::Microseconds(2);
  while (true) {
    absl::StatusOr<bool> done = event.Done();
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": the GPU work had not finished at the deadline"));
    }
    absl::SleepFor(std::min(pause, deadline - now));
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
}

absl::Status CopyAsync(void* dst, const void* src, size_t bytes, Stream stream) {
  if (bytes == 0) return absl::OkStatus();
#if TRIDENT_HAVE_CUDA
  return Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault,
                               static_cast<cudaStream_t>(stream)),
               absl::StrCat("cudaMemcpyAsync(", bytes, " bytes)"));
#else
  return NotBuilt("cudaMemcpyAsync");
#endif
}

absl::StatusOr<bool> IsCapturing(Stream stream) {
#if TRIDENT_HAVE_CUDA
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  absl::Status st = Check(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &capture),
                          "cudaStreamIsCapturing");
  if (!st.ok()) return st;
  return capture != cudaStreamCaptureStatusNone;
#else
  return NotBuilt("cudaStreamIsCapturing");
#endif
}

absl::StatusOr<void*> AllocAsync(size_t bytes, Stream stream) {
#if TRIDENT_HAVE_CUDA
  void* p = nullptr;
  absl::Status st = Check(
      cudaMallocAsync(&p, std::max<size_t>(bytes, 1), static_cast<cudaStream_t>(stream)),
      absl::StrCat("cudaMallocAsync(", bytes, " bytes)"));
  if (!st.ok()) return st;
  return p;
#else
  return NotBuilt("cudaMallocAsync");
#endif
}

absl::Status FreeAsync(void* p, Stream stream) {
#if TRIDENT_HAVE_CUDA
  return Check(cudaFreeAsync(p, static_cast<cudaStream_t>(stream)), "cudaFreeAsync");
#else
  return NotBuilt("cudaFreeAsync");
#endif
}

// --- pinned staging memory ---------------------------------------------------------------

std::shared_ptr<PinnedPool> PinnedPool::Create() {
  return std::shared_ptr<PinnedPool>(new PinnedPool());
}

PinnedPool::~PinnedPool() {
#if TRIDENT_HAVE_CUDA
  absl::MutexLock lock(&mu_);
  for (auto& [size, f] : free_) {
    if (f.fence != nullptr) {
      absl::StatusOr<bool> done = f.fence->Done();
      if (done.ok() && !*done) continue;  // a copy still uses it: leak it rather than corrupt
    }
    cudaFreeHost(f.data);
  }
#endif
}

absl::StatusOr<PinnedPool::Block> PinnedPool::Acquire(const std::shared_ptr<PinnedPool>& pool,
                                                      size_t bytes) {
  const size_t size = std::bit_ceil(std::max<size_t>(bytes, 64 << 10));
  Block block;
  block.pool_ = pool;
  block.size_ = size;
  {
    absl::MutexLock lock(&pool->mu_);
    auto [begin, end] = pool->free_.equal_range(size);
    for (auto it = begin; it != end; ++it) {
      if (it->second.fence != nullptr) {
        absl::StatusOr<bool> done = it->second.fence->Done();
        if (done.ok() && !*done) continue;
      }
      block.data_ = it->second.data;
      pool->free_.erase(it);
      return block;
    }
  }
#if TRIDENT_HAVE_CUDA
  void* p = nullptr;
  absl::Status st =
      Check(cudaMallocHost(&p, size), absl::StrCat("cudaMallocHost(", size, " bytes)"));
  if (!st.ok()) {
    block.pool_ = nullptr;
    return st;
  }
  block.data_ = p;
  return block;
#else
  block.pool_ = nullptr;
  return NotBuilt("cudaMallocHost");
#endif
}

void PinnedPool::Release(void* data, size_t size, std::shared_ptr<Event> fence) {
  absl::MutexLock lock(&mu_);
  free_.emplace(size, Free{data, std::move(fence)});
}

PinnedPool::Block& PinnedPool::Block::operator=(Block&& o) noexcept {
  if (this != &o) {
    if (pool_ != nullptr && data_ != nullptr) pool_->Release(data_, size_, std::move(fence_));
    pool_ = std::move(o.pool_);
    data_ = o.data_;
    size_ = o.size_;
    fence_ = std::move(o.fence_);
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

PinnedPool::Block::~Block() {
  if (pool_ != nullptr && data_ != nullptr) pool_->Release(data_, size_, std::move(fence_));
}

absl::Status RegisterHost(void* p, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
#if TRIDENT_HAVE_CUDA
  return Check(cudaHostRegister(p, bytes, cudaHostRegisterPortable),
               absl::StrCat("cudaHostRegister(", bytes, " bytes)"));
#else
  return NotBuilt("cudaHostRegister");
#endif
}

void UnregisterHost(void* p) {
#if TRIDENT_HAVE_CUDA
  cudaHostUnregister(p);
#endif
}

// --- device memory and blocking copies, for tools and tests ------------------------------

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Allocate(size_t bytes, int device) {
#if TRIDENT_HAVE_CUDA
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  void* p = nullptr;
  absl::Status st = Check(cudaMalloc(&p, std::max<size_t>(bytes, 1)),
                          absl::StrCat("cudaMalloc(", bytes, " bytes)"));
  if (!st.ok()) return st;
  return std::unique_ptr<DeviceBuffer>(new DeviceBuffer(p, bytes, device));
#else
  return NotBuilt("cudaMalloc");
#endif
}

DeviceBuffer::~DeviceBuffer() {
#if TRIDENT_HAVE_CUDA
  cudaFree(data_);
#endif
}

absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
#if TRIDENT_HAVE_CUDA
  return Check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(to device)");
#else
  return NotBuilt("cudaMemcpy");
#endif
}

absl::Status CopyToHost(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
#if TRIDENT_HAVE_CUDA
  return Check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(to host)");
#else
  return NotBuilt("cudaMemcpy");
#endif
}

absl::Status SynchronizeDevice(int device) {
#if TRIDENT_HAVE_CUDA
  DeviceGuard guard(device);
  if (!guard.status().ok()) return guard.status();
  return Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
#else
  return NotBuilt("cudaDeviceSynchronize");
#endif
}

}  // namespace trident::cuda
