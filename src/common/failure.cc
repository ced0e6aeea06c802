#include "trident/failure.h"

#include <string.h>

#include <array>
#include <utility>

#include "absl/strings/str_cat.h"

namespace trident {
namespace {

constexpr std::array<std::pair<FailureKind, std::string_view>, 8> kNames = {{
    {FailureKind::kUnknown, "unknown"},
    {FailureKind::kExited, "exited"},
    {FailureKind::kSignaled, "signaled"},
    {FailureKind::kStopped, "stopped"},
    {FailureKind::kHung, "hung"},
    {FailureKind::kSilent, "silent"},
    {FailureKind::kUnreachable, "unreachable"},
    {FailureKind::kSilentDataCorruption, "sdc"},
}};

}  // namespace

std::string_view FailureKindName(FailureKind kind) {
  for (const auto& [k, name] : kNames) {
    if (k == kind) return name;
  }
  return "unknown";
}

FailureKind FailureKindFromName(std::string_view name) {
  for (const auto& [k, n] : kNames) {
    if (n == name) return k;
  }
  return FailureKind::kUnknown;
}

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev) : absl::StrCat("signal ", sig);
}

std::string FailedRank::ShortCause() const {
  switch (kind) {
    case FailureKind::kExited: return absl::StrCat("exit_", exit_status);
    case FailureKind::kSignaled: return SignalName(signal);
    case FailureKind::kStopped: return "SIGSTOP";
    case FailureKind::kHung:
    case FailureKind::kSilent: return "hang";
    case FailureKind::kUnreachable: return "unreachable";
    case FailureKind::kSilentDataCorruption: return "sdc";
    case FailureKind::kUnknown: break;
  }
  return "unknown";
}

}  // namespace trident
