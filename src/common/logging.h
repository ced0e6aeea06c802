// Logging through spdlog, as a guest in the host's process: every line goes through one named
// logger, "trident", never through spdlog's default logger, and Trident never changes the
// default logger, its pattern or its level (a host's own spdlog setup stays as it was).
// Every line carries who logs and the epoch: "[trident rank 3 epoch 2] ..." ("epoch -"
// before this process has a communicator). The level comes from
// TRIDENT_LOG_LEVEL (any case). A host that wants Trident's lines elsewhere registers its
// own logger named "trident" (spdlog::register_logger) before Trident's first line; Trident
// then uses that one and leaves its sinks, pattern and level alone. Call sites:
//   TLOG(warn, "peer {} is slow", rank);      // or Logger().warn(...)
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

// Trident's logger: the one registered as "trident" when Trident first logs (the host's, if
// it registered one), else a stderr logger created then, with level TRIDENT_LOG_LEVEL.
spdlog::logger& Logger();

// Sets the pattern of Trident's own logger to include `who` (e.g. "rank 3") and its level
// from TRIDENT_LOG_LEVEL. Later calls replace `who`. A logger the host registered is left
// as the host set it.
void InitLogging(absl::string_view who);

// TRIDENT_LOG_LEVEL's value as an spdlog level (any case; "warning" is "warn"); info when
// unset or invalid (CheckParams reports an invalid one).
spdlog::level::level_enum LogLevelFromEnv();

// The epoch that log lines show from now on; only ever moves forward (the newest epoch this
// process has a communicator of). Called by every communicator when it is created.
void SetLogEpoch(int64_t epoch);

}  // namespace trident

// TLOG(warn, "peer {} is slow", rank): a line at that level through trident::Logger().
#define TLOG(level, ...) ::trident::Logger().level(__VA_ARGS__)

#endif  // TRIDENT_COMMON_LOGGING_H_
