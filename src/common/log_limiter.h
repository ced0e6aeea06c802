// LogLimiter: a warning that an outsider can trigger at will (a refused connection, a
// malformed frame) is logged once per window in full; the others in that window are counted
// and summarised in one line when it ends, so a flood cannot fill the log.
//
//   LogLimiter refusals(absl::Seconds(10));
//   refusals.Event(absl::Now(), "refused 127.0.0.1:5555: wrong job token");
//   ...
//   refusals.Flush(absl::Now());  // at refusals.NextFlush(): "... and 41 more like it"
//
// Not thread-safe: one owner (e.g. the store server's thread) calls it; time is passed in so
// that tests control it.
#ifndef TRIDENT_COMMON_LOG_LIMITER_H_
#define TRIDENT_COMMON_LOG_LIMITER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace trident {

class LogLimiter {
 public:
  using Sink = std::function<void(const std::string& line)>;
  // `sink` receives each line; the default logs it with TLOG(warn, ...).
  explicit LogLimiter(absl::Duration window, Sink sink = nullptr);

  // Logs `line` when nothing was logged in the current window (which then starts), else
  // counts it, keeping it as the example for the summary.
  void Event(absl::Time now, absl::string_view line);
  // Logs the summary of the counted events once their window has ended.
  void Flush(absl::Time now);
  // When Flush has a summary to log; InfiniteFuture when none is pending.
  absl::Time NextFlush() const;
  // Events so far, logged or counted.
  int64_t total() const { return total_; }

 private:
  const absl::Duration window_;
  Sink sink_;
  absl::Time window_end_ = absl::InfinitePast();
  int64_t suppressed_ = 0;
  std::string last_;
  int64_t total_ = 0;
};

}  // namespace trident

#endif  // TRIDENT_COMMON_LOG_LIMITER_H_
