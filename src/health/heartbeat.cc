#include "health/heartbeat.h"

#include "common/logging.h"
#include "health/membership.h"

namespace trident::health {

Heartbeat::Heartbeat(std::shared_ptr<Store> store, std::string member, absl::Duration interval)
    : store_(std::move(store)), key_(HeartbeatKey(member)), interval_(interval) {
  thread_ = std::thread([this] { Loop(); });
}

Heartbeat::~Heartbeat() {
  stop_.Notify();
  thread_.join();
}

void Heartbeat::Loop() {
  bool warned = false;
  do {
    absl::StatusOr<int64_t> n = store_->Add(key_, 1, absl::Now() + interval_);
    if (n.ok()) {
      beats_.store(*n);
      warned = false;
    } else if (!warned) {
      spdlog::warn("heartbeat {}: {}; retrying every {}", key_, n.status().ToString(),
                   absl::FormatDuration(interval_));
      warned = true;
    }
  } while (!stop_.WaitForNotificationWithTimeout(interval_));
}

}  // namespace trident::health
