// trident/failure.h: why a rank of a job was declared failed, as fields that code can decide
// on (FailureKind, signal, exit status, reporter) plus a sentence for people (cause). Nobody
// parses the sentence: the launcher fills the fields where it sees the failure, the runtime
// hands them to the trainer (Recovery::failed, RecoveryReport).
//
// Thread-compatible value types.
#ifndef TRIDENT_FAILURE_H_
#define TRIDENT_FAILURE_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace trident {

enum class FailureKind : uint8_t {
  kUnknown = 0,
  kExited,       // the process exited with a non-zero status (exit_status)
  kSignaled,     // killed by a signal the agent did not send (signal)
  kStopped,      // its process was stopped (SIGSTOP, a debugger) past the heartbeat timeout
  kHung,         // alive, but its training thread made no progress (TRIDENT_HANG_TIMEOUT_MS)
  kSilent,       // its heartbeat stopped while its process ran, and stayed silent
  kUnreachable,  // two peers saw transport errors talking to it (its links are dead)
  // Its replicated state (dp replicas' parameters) disagreed with its replicas': named by
  // a majority of their digests, or by a replay (RunResilient, LoopOptions::sdc_every).
  kSilentDataCorruption,
};

// "exited", "signaled", "stopped", "hung", "silent", "unreachable", "sdc", "unknown".
std::string_view FailureKindName(FailureKind kind);
// The FailureKind of FailureKindName's string; kUnknown for anything else.
FailureKind FailureKindFromName(std::string_view name);

struct FailedRank {
  int rank = -1;
  std::string member;  // the process that held it: "w3", "s0"
  std::string cause;   // for people: "killed by signal 9 (SIGKILL)", "declared dead: ..."
  // The agent's clock, Unix ms: its last sign of life (exit or last heartbeat), the verdict.
  int64_t last_seen_unix_ms = 0;
  int64_t verdict_unix_ms = 0;
  FailureKind kind = FailureKind::kUnknown;
  int signal = 0;         // kSignaled: the signal; kStopped: SIGSTOP when known
  int exit_status = -1;   // kExited: the status
  std::string reporter;   // who saw it: "agent", or the peers ("rank 2, rank 5")

  // A short token for logs: "SIGKILL", "SIGSTOP", "hang", "exit_3", "unreachable", "sdc".
  std::string ShortCause() const;
};

// "SIGKILL" for 9; "signal 64" for a number without a name.
std::string SignalName(int sig);

}  // namespace trident

#endif  // TRIDENT_FAILURE_H_
