// Completion: the sticky status of one asynchronous operation, shared by every handle that
// reports one (the host backend's Work, the NCCL backend's GpuWork, the checkpoint engine's
// CheckpointSave). The first Complete wins; waiters wake at once; a wait has a deadline.
//
//   Completion done;
//   worker:  done.Complete(status);
//   caller:  if (std::optional<absl::Status> s = done.WaitUntil(deadline)) return *s;
//
// Thread-safe.
#ifndef TRIDENT_COMMON_COMPLETION_H_
#define TRIDENT_COMMON_COMPLETION_H_

#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace trident {

class Completion {
 public:
  // Completes with `status`; returns whether this call did (false: it was complete already,
  // and keeps its first status).
  bool Complete(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (done_) return false;
    status_ = std::move(status);
    done_ = true;
    return true;
  }
  bool done() const {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  // The status once complete, else nullopt.
  std::optional<absl::Status> status() const {
    absl::MutexLock lock(&mu_);
    if (!done_) return std::nullopt;
    return status_;
  }
  // Waits until complete or `deadline`; nullopt at the deadline.
  std::optional<absl::Status> WaitUntil(absl::Time deadline) const {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(&done_), deadline)) return std::nullopt;
    return status_;
  }

 private:
  mutable absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace trident

#endif  // TRIDENT_COMMON_COMPLETION_H_
