#include "health/heartbeat.h"

#include "common/logging.h"
#include "health/membership.h"

namespace trident::health {

Heartbeat::Heartbeat(std::shared_ptr<Store> store, std::string member, absl::Duration interval,
                     StallCheck stalled)
    : store_(std::move(store)),
      key_(HeartbeatKey(member)),
      stalled_key_(StalledKey(member)),
      interval_(interval),
      stalled_(std::move(stalled)) {
  thread_ = std::thread([this] { Loop(); });
}

Heartbeat::~Heartbeat() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void Heartbeat::Retire() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
  absl::Status s = store_->Set(key_, kFinishedBeat, absl::Now() + interval_);
  if (!s.ok()) TLOG(debug, "heartbeat {}: cannot say it is finished: {}", key_, s.ToString());
}

void Heartbeat::Loop() {
  bool warned = false;
  bool silent = false;  // stopped beating for a stalled training thread
  do {
    if (std::optional<std::string> stall = stalled_ ? stalled_() : std::nullopt) {
      if (!silent) {
        TLOG(error, "{}; stopping the heartbeat so that the agent replaces this rank", *stall);
        (void)store_->Set(stalled_key_, *stall, absl::Now() + interval_);  // best effort
        silent = true;
      }
      continue;
    }
    if (silent) {
      TLOG(warn, "the training thread moved again; beating again");
      silent = false;
    }
    absl::StatusOr<int64_t> n = store_->Add(key_, 1, absl::Now() + interval_);
    if (n.ok()) {
      beats_.store(*n);
      warned = false;
    } else if (!warned) {
      TLOG(warn, "heartbeat {}: {}; retrying every {}", key_, n.status().ToString(),
                   absl::FormatDuration(interval_));
      warned = true;
    }
  } while (!stop_.WaitForNotificationWithTimeout(interval_));
}

}  // namespace trident::health
