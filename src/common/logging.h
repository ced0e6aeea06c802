// Logging through spdlog. Every line carries the rank and the epoch:
// "[trident rank 3 epoch 2] ..." ("epoch -" before this process has a communicator).
// The level comes from TRIDENT_LOG_LEVEL. Call sites use spdlog directly:
//   spdlog::warn("peer {} is slow", rank);
#ifndef TRIDENT_COMMON_LOGGING_H_
#define TRIDENT_COMMON_LOGGING_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "spdlog/fmt/ostr.h"
#include "spdlog/spdlog.h"

// Debian's Abseil is built with its own string_view; teach fmt to print it and Status.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};
template <>
struct fmt::formatter<absl::Status> : fmt::formatter<std::string> {
  template <typename Ctx>
  auto format(const absl::Status& s, Ctx& ctx) const {
    return fmt::formatter<std::string>::format(s.ToString(), ctx);
  }
};

namespace trident {

// Sets the default logger's pattern to include `who` (e.g. "rank 3") and its level from
// TRIDENT_LOG_LEVEL. Idempotent; later calls replace `who`.
void InitLogging(absl::string_view who);

// The epoch that log lines show from now on; only ever moves forward (the newest epoch this
// process has a communicator of). Called by every communicator when it is created.
void SetLogEpoch(int64_t epoch);

}  // namespace trident

#endif  // TRIDENT_COMMON_LOGGING_H_
