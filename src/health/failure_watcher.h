// FailureWatcher: the one reader of the job's failure records and the one writer of
// suspicions (membership.h has the keys). The runtime polls it and acts on what it says
// (aborts the epoch's communicators); the communicators never read a job key: a transport
// error reaches it through the runtime's peer-error handler (HostCommOptions), which asks
// ExplainPeerError.
//
//   health::FailureWatcher w(store);
//   if (std::optional<std::string> why = w.EpochOver(epoch, deadline)) AbortAll(*why);
//
// Thread-safe (the store is).
#ifndef TRIDENT_HEALTH_FAILURE_WATCHER_H_
#define TRIDENT_HEALTH_FAILURE_WATCHER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident::health {

class FailureWatcher {
 public:
  explicit FailureWatcher(std::shared_ptr<Store> store) : store_(std::move(store)) {}

  // Why `epoch` is over, if it is: the first failure the agent recorded for it ("rank 3 killed
  // by signal 9 (SIGKILL)"), or that the job moved on to a newer epoch. nullopt while it goes
  // on, and when the store does not answer by `deadline` (the next poll asks again).
  std::optional<std::string> EpochOver(int64_t epoch, absl::Time deadline) const;

  // The agent's record of `rank`'s failure in `epoch`, if there is one.
  std::optional<std::string> FailureOf(int64_t epoch, int rank, absl::Time deadline) const;

  // Rank `reporter` of `epoch` saw `error` from rank `rank` (both world ranks): reports the
  // suspicion (the agent suspects that rank's member at once; a second reporter confirms it),
  // then waits up to `wait` for the agent's record of that rank, which says more than a
  // connection reset. Returns kAborted with the record and what the transport saw, or `error`
  // itself when no record came.
  absl::Status ExplainPeerError(int64_t epoch, int rank, int reporter, const absl::Status& error,
                                absl::Duration wait) const;

 private:
  std::shared_ptr<Store> store_;
};

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_FAILURE_WATCHER_H_
