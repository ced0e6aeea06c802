// Coordinator: the job's recovery policy (DESIGN.md, "Recovery, step by step"). It decides;
// the agent that owns the processes (trident-run's Launcher) tells it what happened to them
// and carries out what it asks (Kill, Say). Everything it knows of the ranks comes from the
// store: heartbeats, spares that announced themselves, peers' suspicion reports, stall
// records, rebuild requests, shrink groups; everything it decides goes there: failure
// records, epochs (PublishNextEpoch / PublishShrunkEpoch), job/done.
//
// Decisions, in order, when a rank holder dies (exit, signal, a verdict of the
// FailureDetector on a hung, stopped or unreachable member, or its replicas' verdict of
// silent data corruption (health/sdc.h), whom it has the agent kill):
//   1. a ready spare for each pending failure: the next epoch gives them the dead ranks;
//   2. spares still starting (a failure right at the launch): wait for them, a while;
//   3. the trainer named shrink groups: the next epoch drops the dead ranks' groups;
//   4. right after the launch, ranks that may still name shrink groups: wait a moment;
//   5. otherwise the job fails, naming the first dead rank and why nobody replaced it.
//
// No clock of its own: every call takes `now`, so tests drive it with a fake clock, a
// MemoryStore and a fake agent (tests/health/coordinator_test.cc).
//
// Not thread-safe: one owner (the agent's watch loop).
#ifndef TRIDENT_HEALTH_COORDINATOR_H_
#define TRIDENT_HEALTH_COORDINATOR_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "health/detector.h"
#include "health/membership.h"
#include "trident/failure.h"
#include "trident/store.h"

namespace trident::health {

// What the coordinator needs from the agent that owns the processes.
class Agent {
 public:
  enum class ProcessState { kRunning, kStopped, kTraced, kGone };
  virtual ~Agent() = default;
  // The job's store; nullptr when it cannot be reached (then nothing is published).
  virtual Store* store() = 0;
  // The state of `member`'s process (as /proc says).
  virtual ProcessState Probe(const std::string& member) = 0;
  // Kills `member`'s process (a verdict on a live one: it must not come back to life in the
  // next epoch). Its exit is reported to the coordinator like any other.
  virtual void Kill(const std::string& member) = 0;
  // A line for the job's log.
  virtual void Say(const std::string& line) = 0;
};

// How a member's process ended, as the agent saw it.
struct MemberExit {
  int exit_status = -1;  // when it exited
  int signal = 0;        // when a signal killed it
  bool by_agent = false; // the agent had signalled it (a shutdown): not a failure of its own
  std::string description;  // "exited with status 3", "killed by signal 9 (SIGKILL)"
  bool clean() const { return signal == 0 && exit_status == 0; }
};

class Coordinator {
 public:
  struct Options {
    int world_size = 1;
    int spares = 0;  // spare processes launched: s0..s{spares-1}
    absl::Duration heartbeat_timeout = absl::Seconds(1);  // TRIDENT_HEARTBEAT_TIMEOUT_MS
    absl::Duration spare_start_wait = absl::Seconds(30);  // how long a failure waits for
                                                          // spares that are still starting
    int max_rebuilds = 10;  // epochs published only to build the world again (no death)
    absl::Duration store_timeout = absl::Seconds(2);  // of each store call
  };
  enum class JobState { kRunning, kFinished, kFailed };

  // The members are w0..w{world_size-1} (rank r held by w<r>) and the spares; all launched
  // at `now`.
  Coordinator(Options options, Agent* agent, absl::Time now);

  // A member's process ended.
  void MemberExited(const std::string& member, const MemberExit& exit, absl::Time now);
  // Every process is gone: a failure still waiting for a replacement fails the job.
  void AllGone(absl::Time now);
  // The agent is shutting the job down (a signal): no more epochs.
  void Stop() { stopped_ = true; }
  // Heartbeats, spare readiness, suspicion reports, rebuild requests and the detector's
  // verdicts; then the pending failures (call every heartbeat_timeout / 20 or so).
  void Poll(absl::Time now);

  JobState state() const;
  // Why the job failed: "rank 1 killed by signal 9 (SIGKILL) and no spare could replace it
  // (0 spare(s) ready for 1 failure(s))".
  const std::optional<std::string>& failure() const { return failure_; }
  // One line per epoch change: "epoch 2: spare s0 takes rank 3 (w3 killed by ...)".
  const std::vector<std::string>& recoveries() const { return recoveries_; }
  const Membership& membership() const { return membership_; }
  // The rank `member` holds now; -1 for none.
  int RankOf(const std::string& member) const;
  // Members the detector watches (they beat: programs that use the Runtime).
  bool beating(const std::string& member) const { return detector_.watching(member); }

 private:
  struct Member {
    bool spare = false;
    bool running = true;
    int rank = -1;          // in the current epoch; -1: an idle spare (or retired)
    bool ready = false;     // a spare announced itself initialised (SpareKey)
    bool finished = false;  // held a rank and exited 0
    bool dead = false;      // declared dead (and killed): its exit is no new failure
    absl::Time stopped_since = absl::InfiniteFuture();  // seen stopped before it beat
  };

  void OnDeath(const std::string& member, Failure failure, absl::Time now);
  void TryReplace(absl::Time now);
  // Ends the job for the first pending failure: `why_not` says why no one replaced it.
  void FailPending(const std::string& why_not, bool shrink_tried = false);
  void EnterEpoch(Membership next);
  std::optional<FailureDetector::Confirmation> Confirm(const std::string& member);
  void ReadReports(Store& s, absl::Time now);
  void ReadSdcReports(Store& s, absl::Time now);
  void RecordFailure(int rank, const std::string& reason);
  void SetDone(const std::string& reason);
  absl::Time Deadline() const { return absl::Now() + options_.store_timeout; }
  void RemoveReady(const std::string& member);

  Options options_;
  Agent* agent_;
  std::map<std::string, Member> members_;
  std::vector<std::string> order_;          // members in launch order
  Membership membership_;                   // of the current epoch
  std::vector<std::string> ready_spares_;   // idle, initialised spares, in the order they came
  FailureDetector detector_;
  std::vector<Failure> pending_;            // dead ranks not yet replaced
  std::set<std::string> reported_;          // suspicion reports already passed on
  absl::Time pending_since_ = absl::InfiniteFuture();
  absl::Time started_;
  int rebuilds_ = 0;
  bool waiting_said_ = false;
  bool done_set_ = false;
  bool stopped_ = false;
  bool finished_ = false;
  std::optional<std::string> failure_;
  std::vector<std::string> recoveries_;
};

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_COORDINATOR_H_
