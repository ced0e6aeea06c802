// Command line of trident-run: what it parses and the usage text it prints.
//
//   trident-run --nproc N [--spares S] [--store URL] [--job-id ID] -- prog args...
//
// Parsing is by hand rather than with absl flags, because everything after `--` belongs to
// the program and a missing `--` must be an error, not a silently swallowed argument.
#ifndef TRIDENT_TOOLS_TRIDENT_RUN_OPTIONS_H_
#define TRIDENT_TOOLS_TRIDENT_RUN_OPTIONS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace trident::run {

// Exit statuses of trident-run (besides 128+signal when it is interrupted).
inline constexpr int kExitOk = 0;
inline constexpr int kExitJobFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 127;

inline constexpr int kMaxProcs = 4096;

struct LaunchOptions {
  enum class Action { kRun, kHelp, kPrintParams };
  Action action = Action::kRun;
  int nproc = 0;
  // Extra processes of the same program that wait, initialised, to replace a failed rank.
  int spares = 0;
  // Store every rank connects to; empty: trident-run hosts a TCP store on loopback.
  std::optional<std::string> store_url;
  // Empty: taken from TRIDENT_JOB_ID, else generated.
  std::string job_id;
  // The program and its arguments (everything after `--`).
  std::vector<std::string> program;
  // --burn-in off|quick|full: TRIDENT_BURN_IN for every child; empty: the environment's.
  std::string burn_in;
};

// Parses argv without argv[0]. kInvalidArgument says what is wrong, in words for the user.
absl::StatusOr<LaunchOptions> ParseArgs(absl::Span<const std::string> args);

// The text of `trident-run --help`.
std::string UsageText();

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_OPTIONS_H_
