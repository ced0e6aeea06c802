// Launcher: the job-running half of trident-run (DESIGN.md, "Processes: launcher, workers,
// spares").
//
// Run() hosts the store (unless --store names one), starts --nproc ranks (and --spares
// spares) with their TRIDENT_* variables, relays their output and watches them: their exits,
// and the heartbeats of those that beat (health::FailureDetector; a rank declared dead is
// killed). A dead rank is reported on stderr and in the store (health::FailedKey: job/failed/
// <rank> in epoch 1); with an initialised spare left, the spare takes its rank under a new
// epoch (health::PublishNextEpoch) and the job goes on; without one, a trainer that named
// shrink groups (health::ShrinkGroupsKey) goes on without the dead rank's group
// (health::PublishShrunkEpoch), whose live members become spares. Otherwise the other ranks get
// TRIDENT_KILL_GRACE_MS to exit on their own, then SIGTERM, then SIGKILL 2 s later. SIGINT and SIGTERM to trident-run are forwarded to the ranks and take
// the same path; a second one sends SIGKILL at once. Run() returns only when every rank has
// been reaped and the relay thread joined.
//
// Not thread-safe; call Run() once, from the main thread: it blocks SIGCHLD, SIGINT and
// SIGTERM for the whole process (they are read from a signalfd), and it must be the thread
// that lives as long as the children (PR_SET_PDEATHSIG).
#ifndef TRIDENT_TOOLS_TRIDENT_RUN_LAUNCHER_H_
#define TRIDENT_TOOLS_TRIDENT_RUN_LAUNCHER_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "health/detector.h"
#include "health/membership.h"
#include "tools/trident-run/options.h"
#include "tools/trident-run/output_relay.h"
#include "trident/store.h"

namespace trident::run {

// Time between SIGTERM and SIGKILL once the grace period is over.
inline constexpr absl::Duration kTermToKill = absl::Seconds(2);
// How long the output relay may wait, after the last child is reaped, for pipes that a
// grandchild still holds open.
inline constexpr absl::Duration kRelayDrain = absl::Seconds(2);
// How long a dead rank may wait for a spare that is still starting up.
inline constexpr absl::Duration kSpareStartWait = absl::Seconds(30);
// How many epochs a job may publish only to build its world again (no rank died).
inline constexpr int kMaxRebuilds = 10;

class Launcher {
 public:
  // `out` receives the ranks' output and trident-run's own messages.
  Launcher(LaunchOptions options, OutputWriter* out);
  ~Launcher();

  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  // Runs the job to the end; returns trident-run's exit status (see options.h).
  int Run();

 private:
  struct Child {
    int index;           // 0..nproc-1: workers; then the spares
    std::string member;  // "w3", "s0"
    pid_t pid;
    int rank = -1;       // the rank it holds in the current epoch; -1: an idle spare
    bool running = true;
    bool ready = false;     // a spare announced itself initialised (job/spare/<member>)
    bool finished = false;  // held a rank and exited 0
    bool handled = false;   // its death was already dealt with (declared dead and killed)
    absl::Time stopped_since = absl::InfiniteFuture();  // seen stopped before it beat
    int last_signal = 0;  // the last signal trident-run sent it; then its death is no failure
    bool spare() const { return index >= 0 && member[0] == 's'; }
  };
  // Where the shutdown stands after the first failure or signal.
  enum class Phase { kRunning, kGrace, kTerminating, kKilling };

  absl::Status SetUpStore();
  std::vector<std::string> ChildEnvironment(const Child& child) const;
  absl::Status SpawnAll(const std::string& path);
  void Watch(int signal_fd);
  void ReapExited();
  void OnChildExit(Child& child, int wait_status);
  // A member died (exit, signal, or declared dead): replace it with a spare under a new
  // epoch, or fail the job.
  void OnMemberDeath(Child& child, const std::string& cause,
                     absl::Time last_seen = absl::Now());
  // Gives the pending failures' ranks to ready spares under a new epoch; waits (a while) for
  // spares still starting; else fails the job.
  void TryReplace();
  // Ends the job for the first pending failure: `why_not` says why no one replaced it.
  void FailPending(const std::string& why_not);
  // Takes a newly published membership: ranks of every child, the spare pool, one message
  // per replaced (or, after a shrink, dropped) rank.
  void EnterEpoch(health::Membership next);
  // Heartbeats, spare readiness and the detector's verdicts; every health_poll_.
  void PollHealth();
  // Reads /proc: a reason when the process of `member` is stopped or gone.
  std::optional<std::string> ConfirmDead(const std::string& member);
  void OnSignal(int sig);
  Store* store();  // connects on first use; nullptr if unreachable
  void RecordFailure(int rank, const std::string& reason);
  void SetDone(const std::string& reason);
  // Moves to the next phase when its time has come.
  void Escalate();
  void SignalRunning(int sig);
  void Message(absl::string_view text);
  Child* FindMember(absl::string_view member);

  LaunchOptions options_;
  OutputWriter* const out_;
  absl::Duration grace_;  // TRIDENT_KILL_GRACE_MS
  OutputRelay relay_;     // the ranks' output, on its own thread

  std::string store_url_;
  std::string job_token_;
  std::string job_id_;
  std::unique_ptr<TcpStoreServer> store_server_;  // when trident-run hosts the store
  std::unique_ptr<Store> store_;                  // client, for job/failed/<rank>
  bool store_unreachable_ = false;                // gave up connecting to --store

  std::vector<Child> children_;
  health::Membership membership_;           // of the current epoch
  std::vector<std::string> ready_spares_;   // idle, initialised spares, in start order
  absl::Duration heartbeat_timeout_;
  health::FailureDetector detector_;
  absl::Duration health_poll_;
  absl::Time next_health_poll_ = absl::InfinitePast();
  std::vector<std::string> recoveries_;     // one line per epoch change
  std::vector<health::Failure> pending_;    // dead ranks not yet replaced
  absl::flat_hash_set<std::string> reported_;  // suspicion reports already passed on
  absl::Time pending_since_ = absl::InfiniteFuture();
  absl::Time started_ = absl::InfiniteFuture();  // when every child was spawned
  int rebuilds_ = 0;  // epochs published for a failed build (kMaxRebuilds)
  bool waiting_said_ = false;
  bool done_set_ = false;
  Phase phase_ = Phase::kRunning;
  absl::Time next_step_ = absl::InfiniteFuture();
  std::optional<std::string> first_failure_;  // reason of the first failed rank
  int first_signal_ = 0;                      // first SIGINT/SIGTERM trident-run got
  std::optional<int> exit_status_;            // decided by whichever came first
};

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_LAUNCHER_H_
