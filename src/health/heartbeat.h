// Heartbeat: a thread that increments the member's counter in the store every `interval`
// (job/heartbeat/<member>), on a store connection of its own so that a rank blocked in a long
// store call still beats. It stops when destroyed; a store error is logged and retried at
// the next beat (the agent, not the rank, decides what silence means).
#ifndef TRIDENT_HEALTH_HEARTBEAT_H_
#define TRIDENT_HEALTH_HEARTBEAT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident::health {

class Heartbeat {
 public:
  Heartbeat(std::shared_ptr<Store> store, std::string member, absl::Duration interval);
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  int64_t beats() const { return beats_.load(); }

 private:
  void Loop();
  std::shared_ptr<Store> store_;
  std::string key_;
  absl::Duration interval_;
  absl::Notification stop_;
  std::atomic<int64_t> beats_{0};
  std::thread thread_;
};

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_HEARTBEAT_H_
