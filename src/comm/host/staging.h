// comm/host/staging.h: how the host backend reaches the memory of device (CUDA) tensors. It
// copies them through host buffers: the HostCommunicator decides when (the ordering rule
// below), a Staging does the copies. CreateCudaStaging() is the real one (pinned buffers from
// a pool, a non-blocking stream of its own per device); tests pass a fake whose "device" is
// host memory and whose "streams" run when the test says (tests/comm/staging_order_test.cc).
//
// The ordering rule the HostCommunicator keeps with it:
//  - At issue, on the caller's thread: Mark the caller's stream. Nothing is copied yet.
//  - On the worker, in issue order (after every earlier op of the communicator has completed,
//    outputs included): CopyIn once the marked work has run, the algorithm on the host
//    buffers, CopyOut (also after the marked work, so that it never overwrites memory that a
//    kernel queued before the op is still reading), then the Work completes.
//  So an op sees the results of the ops issued before it on the same communicator, even
//  without a Wait in between, and reads its inputs as the caller's stream left them.
//
// Thread-safety: Check and MarkStream are called on issuing threads, the rest on the
// communicator's worker thread; a Staging may be shared by several communicators.
#ifndef TRIDENT_COMM_HOST_STAGING_H_
#define TRIDENT_COMM_HOST_STAGING_H_

#include <atomic>
#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/tensor.h"

namespace trident {

class Staging {
 public:
  // A point of a caller's stream: the work queued there before the op was issued.
  class Mark {
   public:
    virtual ~Mark() = default;
  };
  // A host buffer the algorithm reads and writes. It may outlive an abandoned copy: the
  // implementation does not reuse its memory before such a copy has finished.
  class Buffer {
   public:
    virtual ~Buffer() = default;
    virtual void* data() const = 0;
  };

  virtual ~Staging() = default;

  // kInvalidArgument (naming op and which) when `t` is a device tensor this staging cannot
  // serve (a build without CUDA, a device that does not exist). OK for CPU tensors.
  virtual absl::Status Check(const Tensor& t, absl::string_view op, absl::string_view which) = 0;
  // At issue: marks the work queued so far on `stream` (nullptr: the device's default, the
  // legacy default stream for CUDA) of `device`. kInvalidArgument for a stream that cannot be
  // marked (one being captured into a CUDA graph).
  virtual absl::StatusOr<std::unique_ptr<Mark>> MarkStream(int device, void* stream) = 0;
  // A host buffer of at least `bytes`.
  virtual absl::StatusOr<std::unique_ptr<Buffer>> Acquire(size_t bytes) = 0;
  // How long a copy may take: until `deadline` (then kDeadlineExceeded naming `what`), or
  // until `*cancel` turns true (then kCancelled): the communicator was aborted. Either way the
  // copy may still run; the buffer keeps its memory safe.
  struct Limit {
    absl::Time deadline;
    const std::atomic<bool>* cancel = nullptr;
    absl::string_view what;
  };
  // Copies `bytes` from device memory `src` into `dst`, after the work before `after` (none
  // when null) has run, and returns once the copy is done.
  virtual absl::Status CopyIn(int device, const Mark* after, const void* src, Buffer& dst,
                              size_t bytes, const Limit& limit) = 0;
  // The other way: `bytes` from `src` to device memory `dst`, after the work before `after`.
  virtual absl::Status CopyOut(int device, const Mark* after, Buffer& src, void* dst,
                               size_t bytes, const Limit& limit) = 0;
};

// The CUDA staging. Makes no CUDA call until a device tensor is staged, so every communicator
// can have one; in a build without CUDA, Check refuses device tensors saying so.
std::shared_ptr<Staging> CreateCudaStaging();

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_STAGING_H_
