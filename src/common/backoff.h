// Backoff for polling loops. Spin first (lowest latency while the peer runs on another core),
// then yield (an oversubscribed peer gets the core; with nobody else runnable this is still a
// busy poll), and only after a long idle stretch sleep briefly, so that a rank blocked for
// seconds costs little CPU. Time-based rather than count-based: a transport may make progress
// (e.g. move a segment of a large message) without completing a request.
#ifndef TRIDENT_COMMON_BACKOFF_H_
#define TRIDENT_COMMON_BACKOFF_H_

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace trident {

class Backoff {
 public:
  // Call after a poll that completed nothing.
  void Pause() {
    if (idle_since_ns_ == 0) idle_since_ns_ = NowNs();
    if (++spins_ < kSpins) return;
    const int64_t idle_ns = NowNs() - idle_since_ns_;
    if (idle_ns < kYieldNs) {
      sched_yield();
      return;
    }
    timespec ts{0, idle_ns < 100 * kYieldNs ? 20'000 : 200'000};
    nanosleep(&ts, nullptr);
  }
  // Call after a poll that completed something.
  void Reset() {
    spins_ = 0;
    idle_since_ns_ = 0;
  }

 private:
  static int64_t NowNs() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1'000'000'000 + ts.tv_nsec;
  }
  static constexpr int kSpins = 100;
  static constexpr int64_t kYieldNs = 20'000'000;  // 20 ms of yielding before any sleep
  int spins_ = 0;
  int64_t idle_since_ns_ = 0;
};

// Sleeps between retries of a call to a server (the stores' clients): short at first (a
// restarting server is back in milliseconds), doubling up to `max`, never past the deadline.
class RetryBackoff {
 public:
  RetryBackoff(absl::Duration first, absl::Duration max) : delay_(first), max_(max) {}
  // Returns false once the deadline has passed (no sleep then).
  bool Sleep(absl::Time deadline) {
    const absl::Time now = absl::Now();
    if (now >= deadline) return false;
    absl::SleepFor(std::min(delay_, deadline - now));
    delay_ = std::min(delay_ * 2, max_);
    return true;
  }

 private:
  absl::Duration delay_;
  absl::Duration max_;
};

}  // namespace trident

#endif  // TRIDENT_COMMON_BACKOFF_H_
