// Backoff for polling loops: spin briefly (lowest latency when a peer is running on another
// core), then yield (lets an oversubscribed peer run), then sleep with a small cap (so that an
// idle wait costs no CPU but still notices progress within ~100 us).
#ifndef TRIDENT_COMMON_BACKOFF_H_
#define TRIDENT_COMMON_BACKOFF_H_

#include <sched.h>
#include <time.h>

#include <cstdint>

namespace trident {

class Backoff {
 public:
  // Call after a poll that made no progress.
  void Pause() {
    ++idle_;
    if (idle_ < kSpins) return;
    if (idle_ < kSpins + kYields) {
      sched_yield();
      return;
    }
    int64_t us = (idle_ - kSpins - kYields) < 16 ? 10 : 100;
    timespec ts{0, us * 1000};
    nanosleep(&ts, nullptr);
  }
  // Call after a poll that made progress.
  void Reset() { idle_ = 0; }

 private:
  static constexpr int64_t kSpins = 64;
  static constexpr int64_t kYields = 2000;
  int64_t idle_ = 0;
};

}  // namespace trident

#endif  // TRIDENT_COMMON_BACKOFF_H_
