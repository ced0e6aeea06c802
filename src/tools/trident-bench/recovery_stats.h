// The pure parts of `trident-bench recovery` (recovery.cc): lm-trainer's logfmt lines in the
// combined output of one run, the measures taken from them, nearest-rank percentiles, the
// Markdown table, and the last row of `trident-bench sendrecv`. No I/O and no clock, so
// tests/tools/trident_bench_recovery_unit_test.cc checks them on text.
//
//   RunLog log = ParseRunLog(text_of_run_log);
//   if (log.fault && log.recovery) kill_ms.push_back(log.recovery->verdict_unix_ms -
//                                                    log.fault->unix_ms);
//   Summary s = Summarize(kill_ms);  // n, p50, p99 (nearest rank)
#ifndef TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_STATS_H_
#define TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_STATS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace trident::bench {

// `fault_injected member=w3 signal=9 unix_ms=T`: printed by the rank that injects the fault,
// with its realtime clock read just before it raises the signal on itself.
struct FaultLine {
  std::string member;
  int signal = 0;
  int64_t unix_ms = 0;
};

// `recovery epoch=E dead_rank=R cause=C detect_ms=D recover_ms=M ... source=S ...
// verdict_unix_ms=V peer_bytes=B peer_ms=P`: printed by rank 0 once the state is restored.
// V is the agent's realtime clock at its verdict; M is rank 0's clock after the restore
// minus V; B and P are the peer-replica fetch on the replacing rank (0 when none).
struct RecoveryLine {
  int64_t epoch = 0;
  int64_t dead_rank = -1;
  std::string cause;
  int64_t detect_ms = 0;
  int64_t recover_ms = 0;
  std::string source;
  int64_t verdict_unix_ms = 0;
  int64_t peer_bytes = 0;
  double peer_ms = 0;
};

// `first_step_after_recovery step=N since_verdict_ms=M`: rank 0, at the end of the first
// step completed after a recovery; M is its clock then minus the verdict's.
struct FirstStepLine {
  int64_t step = 0;
  int64_t since_verdict_ms = 0;
};

// The key=value pairs of the logfmt event `event` in `line`: the event word must start the
// line or follow a space (trident-run prefixes "[rank 0] ") and be followed by at least one
// key=value token; values may be double-quoted. nullopt when the line is not that event.
std::optional<std::map<std::string, std::string>> ParseEvent(absl::string_view line,
                                                             absl::string_view event);

// nullopt when the line is not the event or a field it needs is missing or malformed.
std::optional<FaultLine> ParseFaultLine(absl::string_view line);
std::optional<RecoveryLine> ParseRecoveryLine(absl::string_view line);
std::optional<FirstStepLine> ParseFirstStepLine(absl::string_view line);

// What one run's combined stdout and stderr says: the first line of each kind, and how many
// recovery lines there were.
struct RunLog {
  std::optional<FaultLine> fault;
  std::optional<RecoveryLine> recovery;
  std::optional<FirstStepLine> first_step;
  int recovery_lines = 0;
};
RunLog ParseRunLog(absl::string_view text);

// Nearest-rank percentile: the smallest value v of the sorted values such that at least p% of
// them are <= v, i.e. sorted[ceil(p/100 * n) - 1] (for p in (0, 100]). With fewer than 100
// values p99 is the maximum. nullopt for no values.
std::optional<double> Percentile(std::vector<double> values, double p);

struct Summary {
  int n = 0;
  std::optional<double> p50;
  std::optional<double> p99;
};
Summary Summarize(const std::vector<double>& values);

// One row of the table: a measure in milliseconds and its goal (an upper bound on p99).
struct MeasureRow {
  std::string name;
  std::vector<double> values_ms;
  std::optional<double> goal_ms;  // none: no goal
  std::string goal_text;          // e.g. "< 100 ms"
};
// "| measure | n | p50 ms | p99 ms | goal | p99 meets goal |" and one row per measure; a
// measure without values prints "-".
std::string FormatMeasureTable(const std::vector<MeasureRow>& rows);

// The last data row that rank 0 printed in `trident-bench OP` output (with or without
// trident-run's "[rank 0] " prefix; other ranks' lines and '#' lines are skipped): the bytes
// and algbw (GB/s) columns.
struct BenchRow {
  int64_t bytes = 0;
  double algbw_gbps = 0;
};
std::optional<BenchRow> ParseLastBenchRow(absl::string_view text);

// GB/s (1e9 B/s) of `bytes` moved in `ms`; nullopt unless both are positive.
std::optional<double> TransferGbps(int64_t bytes, double ms);

}  // namespace trident::bench

#endif  // TRIDENT_TOOLS_TRIDENT_BENCH_RECOVERY_STATS_H_
