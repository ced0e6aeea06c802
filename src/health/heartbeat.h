// Heartbeat: a thread that increments the member's counter in the store every `interval`
// (job/heartbeat/<member>), on a store connection of its own so that a rank blocked in a long
// store call still beats. It stops when destroyed; a store error is logged and retried at
// the next beat (the agent, not the rank, decides what silence means).
//
// A thread that beats on its own would hide a deadlocked training thread, so before each beat
// it asks `stalled` (may be null): a reason means the process is alive but stuck; the
// heartbeat then records the reason under StalledKey(member) and stops beating (the agent
// declares the member dead), and beats again if `stalled` clears.
#ifndef TRIDENT_HEALTH_HEARTBEAT_H_
#define TRIDENT_HEALTH_HEARTBEAT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident::health {

class Heartbeat {
 public:
  using StallCheck = std::function<std::optional<std::string>()>;
  Heartbeat(std::shared_ptr<Store> store, std::string member, absl::Duration interval,
            StallCheck stalled = nullptr);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  int64_t beats() const { return beats_.load(); }

  // Stops beating and says why: this member is done with the job (kFinishedBeat), so the
  // agent does not take the silence for a death. (The destructor only stops.)
  void Retire();

 private:
  void Loop();
  std::shared_ptr<Store> store_;
  std::string key_;
  std::string stalled_key_;
  absl::Duration interval_;
  StallCheck stalled_;
  absl::Notification stop_;
  std::atomic<int64_t> beats_{0};
  std::thread thread_;
};

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_HEARTBEAT_H_
