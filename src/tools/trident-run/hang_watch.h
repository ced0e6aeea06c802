// HangWatch: trident-run's side of the flight recorder (docs/observability.md). When it
// suspects a hang, it asks the live ranks for their rings through the store, runs trident-fr's
// analysis on the answers itself, and prints the verdict: which rank, doing what.
//
// Suspicion, checked every 100 ms while the job runs:
//   - a rank's training loop met an op deadline (fr::kHangReportPrefix<member>, written by the
//     runtime when it starts a recovery from a kDeadlineExceeded);
//   - a rank's heartbeat stopped itself because its training thread made no progress
//     (job/stalled/<member>, TRIDENT_HANG_TIMEOUT_MS);
//   - a rank's heartbeat counter has not moved for half of TRIDENT_HEARTBEAT_TIMEOUT_MS while
//     its process lives (before the coordinator's verdict, so the others are still in their
//     ops when they answer).
// Then it writes a new fr::kDumpRequestKey; each live rank's runtime answers within ~100 ms
// with fr::kDumpPrefix<member>. It waits up to kAnswerWait for every rank of the current
// epoch, asks the kernel about those that did not answer (a stopped process cannot), and
// prints "hang suspected: ..." and "hang verdict: ...". A suspicion from a silent heartbeat
// whose answers show nothing wrong is not printed (a loaded machine delays heartbeats).
// When the job failed without a verdict (a call mismatch fails every rank at once), Final()
// analyses the dumps the ranks left in the store when their ops failed.
//
// Cost: two key listings and one heartbeat read per rank every 100 ms (the coordinator reads
// the heartbeats too; for thousands of ranks the two should share those reads).
//
// Not thread-safe: the launcher's main thread calls it.
#ifndef TRIDENT_TOOLS_TRIDENT_RUN_HANG_WATCH_H_
#define TRIDENT_TOOLS_TRIDENT_RUN_HANG_WATCH_H_

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "health/coordinator.h"
#include "trident/store.h"

namespace trident::run {

class HangWatch {
 public:
  static constexpr absl::Duration kPollEvery = absl::Milliseconds(100);
  static constexpr absl::Duration kAnswerWait = absl::Seconds(2);

  struct Hooks {
    std::function<Store*()> store;  // nullptr when unreachable
    std::function<health::Agent::ProcessState(const std::string& member)> probe;
    std::function<int(const std::string& member)> pid;  // -1: not a child
    std::function<void(const std::string& line)> say;   // one line, without "trident-run: "
  };

  HangWatch(Hooks hooks, absl::Duration heartbeat_timeout);

  // `ranks`: the current epoch's rank -> member. Cheap when nothing is suspected.
  void Poll(absl::Time now, const std::vector<std::string>& ranks);
  // At the end of a failed job (the store still up): the verdict from the dumps the ranks
  // left, when none was printed.
  void Final(const std::vector<std::string>& ranks);

  int verdicts() const { return verdicts_; }

 private:
  void Ask(absl::Time now, const std::string& why, bool from_silence,
           const std::vector<std::string>& ranks);
  void Conclude(const std::vector<std::string>& ranks);
  // The hang and stall reports not seen before, in words; marks them seen.
  std::vector<std::string> NewReports(const std::vector<std::string>& ranks);
  // Every member's dump in the store: member -> JSON.
  std::map<std::string, std::string> Dumps(const std::vector<std::string>& ranks);

  Hooks hooks_;
  absl::Duration silence_;
  absl::Time next_poll_ = absl::InfinitePast();
  std::set<std::string> seen_reports_;            // hang and stall keys already acted on
  std::map<std::string, std::string> beat_;       // member -> last heartbeat value
  std::map<std::string, absl::Time> beat_since_;  // member -> when it last changed
  std::set<std::string> silent_said_;             // members whose silence was acted on
  // The request in flight.
  bool asking_ = false;
  std::string nonce_, why_;
  bool from_silence_ = false;
  absl::Time asked_at_;
  std::set<std::string> answered_;                   // members whose dump carries nonce_
  // member -> what the kernel said about it when asked
  std::map<std::string, health::Agent::ProcessState> state_at_ask_;
  int requests_ = 0;
  int verdicts_ = 0;
};

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_HANG_WATCH_H_
