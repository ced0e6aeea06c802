// Launcher: the job-running half of trident-run (DESIGN.md, "Processes: launcher, workers,
// spares"). It keeps processes, signals and output; health::Coordinator decides.
//
// Run() hosts the store (unless --store names one), starts --nproc ranks (and --spares
// spares) with their TRIDENT_* variables, relays their output and watches them: it reaps
// their exits (a signalfd) and tells the coordinator, polls the coordinator (heartbeats,
// verdicts, epochs; it answers the coordinator's questions about processes from /proc and
// kills the members it declares dead). When the coordinator says the job failed or
// finished, the other ranks get TRIDENT_KILL_GRACE_MS to exit on their own, then SIGTERM,
// then SIGKILL 2 s later. SIGINT and SIGTERM to trident-run are forwarded to the ranks and
// take the same path; a second one sends SIGKILL at once. Run() returns only when every rank
// has been reaped and the relay thread joined.
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
#include "health/coordinator.h"
#include "tools/trident-run/hang_watch.h"
#include "tools/trident-run/options.h"
#include "tools/trident-run/output_relay.h"
#include "trident/store.h"

namespace trident::run {

// Time between SIGTERM and SIGKILL once the grace period is over.
inline constexpr absl::Duration kTermToKill = absl::Seconds(2);
// How long the output relay may wait, after the last child is reaped, for pipes that a
// grandchild still holds open.
inline constexpr absl::Duration kRelayDrain = absl::Seconds(2);

class Launcher : public health::Agent {
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
    pid_t pid = -1;
    bool running = true;
    int last_signal = 0;  // the last signal trident-run sent it; then its death is no failure
    bool spare() const { return member[0] == 's'; }
  };
  // Where the shutdown stands after the end of the job, or a signal.
  enum class Phase { kRunning, kGrace, kTerminating, kKilling };

  absl::Status SetUpStore();
  std::vector<std::string> ChildEnvironment(const Child& child) const;
  absl::Status SpawnAll(const std::string& path);
  void Watch(int signal_fd);
  void ReapExited();
  void OnChildExit(Child& child, int wait_status);
  // Moves to the grace phase once the coordinator says the job is over.
  void FollowCoordinator();
  void OnSignal(int sig);
  // Moves to the next phase when its time has come.
  void Escalate();
  void SignalRunning(int sig);
  void Message(absl::string_view text);
  Child* FindMember(absl::string_view member);

  // health::Agent
  Store* store() override;  // connects on first use; nullptr if unreachable
  ProcessState Probe(const std::string& member) override;
  void Kill(const std::string& member) override;
  void Say(const std::string& line) override { Message(line); }

  LaunchOptions options_;
  OutputWriter* const out_;
  absl::Duration grace_;  // TRIDENT_KILL_GRACE_MS
  OutputRelay relay_;     // the ranks' output, on its own thread

  std::string store_url_;
  std::string job_token_;
  std::string job_id_;
  std::unique_ptr<TcpStoreServer> store_server_;  // when trident-run hosts the store
  std::unique_ptr<Store> store_;                  // client, for the coordinator
  bool store_unreachable_ = false;                // gave up connecting to --store

  std::vector<Child> children_;
  std::unique_ptr<health::Coordinator> coordinator_;  // once the children are spawned
  std::unique_ptr<HangWatch> hang_watch_;             // with the coordinator
  absl::Duration health_poll_;
  absl::Time next_health_poll_ = absl::InfinitePast();
  Phase phase_ = Phase::kRunning;
  absl::Time next_step_ = absl::InfiniteFuture();
  int first_signal_ = 0;              // first SIGINT/SIGTERM trident-run got
  std::optional<int> exit_status_;    // decided by whichever came first
};

}  // namespace trident::run

#endif  // TRIDENT_TOOLS_TRIDENT_RUN_LAUNCHER_H_
