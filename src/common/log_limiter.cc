#include "common/log_limiter.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace trident {

LogLimiter::LogLimiter(absl::Duration window, Sink sink) : window_(window), sink_(std::move(sink)) {
  if (!sink_) sink_ = [](const std::string& line) { TLOG(warn, "{}", line); };
}

void LogLimiter::Event(absl::Time now, absl::string_view line) {
  ++total_;
  Flush(now);
  if (now >= window_end_) {
    sink_(std::string(line));
    window_end_ = now + window_;
    return;
  }
  ++suppressed_;
  last_ = std::string(line);
}

void LogLimiter::Flush(absl::Time now) {
  if (suppressed_ == 0 || now < window_end_) return;
  sink_(absl::StrCat(suppressed_, " more like it in ", absl::FormatDuration(window_),
                     " (the last: ", last_, ")"));
  suppressed_ = 0;
  last_.clear();
  // The summary opens a window of its own, so a steady flood gives one line per window.
  window_end_ = now + window_;
}

absl::Time LogLimiter::NextFlush() const {
  return suppressed_ > 0 ? window_end_ : absl::InfiniteFuture();
}

}  // namespace trident
