// The NCCL backend's failure handling, kept free of NCCL and CUDA so that it is tested with a
// fake clock and fake backends on any machine (tests/comm/nccl_watchdog_test.cc).
//
//  - GpuWork: the Work of one op queued on a CUDA stream. It completes when its probe (the
//    op's CUDA event) says the GPU work is done, or when its communicator is aborted; the
//    first completion wins. Wait(deadline) polls and never blocks past the deadline.
//  - WatchedComm: the watchdog's record of one communicator: its pending ops, its abort
//    status, and where the backend abort (ncclCommAbort) stands.
//  - Watchdog: one per process, one thread. Every `poll` it checks each communicator: an
//    asynchronous NCCL error, a pending op past its deadline, or (every `peer_poll`, while ops
//    are pending) a peer reported failed in the store aborts the communicator; its ops fail
//    with kAborted or kDeadlineExceeded naming what happened. The backend abort then runs on
//    a second thread; if it has not returned within `abort_timeout`, the process reports it
//    and exits (on_abort_hang), so that a hung ncclCommAbort never hangs the job.
//
// Thread-safety: everything here may be called from any thread.
#ifndef TRIDENT_COMM_NCCL_WATCHDOG_H_
#define TRIDENT_COMM_NCCL_WATCHDOG_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "trident/communicator.h"

namespace trident::nccl {

// Exit status of a process whose ncclCommAbort did not return in time.
inline constexpr int kAbortHangExitCode = 70;

// The time source of the watchdog's decisions (deadlines, abort bound); tests inject a fake.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  static Clock* Real();
};

class GpuWork : public Work {
 public:
  // True once the op's GPU work has finished; an error when the query failed (a sticky CUDA
  // error). Called from the waiting thread and from the watchdog; must be thread-safe.
  using Probe = std::function<absl::StatusOr<bool>()>;

  // `seq`: the collective's sequence number on its communicator; -1 for point-to-point.
  GpuWork(std::string name, int64_t seq, absl::Time deadline, absl::Duration timeout,
          Probe probe);
  // An op that failed before it was queued.
  static std::shared_ptr<GpuWork> Failed(std::string name, absl::Status status);

  absl::Status Wait(absl::Time deadline = absl::InfiniteFuture()) override;
  bool IsCompleted() const override;
  absl::Status status() const override;

  // Completes the op; the first completion wins. Returns whether this call completed it.
  bool Complete(absl::Status status);
  // Asks the probe once and completes the op with OK when its GPU work is done. Returns
  // whether the op is complete, or the probe's error (the op is then left to the watchdog).
  absl::StatusOr<bool> Poll();

  const std::string& name() const { return name_; }
  int64_t seq() const { return seq_; }
  absl::Time deadline() const { return deadline_; }
  absl::Duration timeout() const { return timeout_; }

 private:
  const std::string name_;
  const int64_t seq_;
  const absl::Time deadline_;
  const absl::Duration timeout_;
  const Probe probe_;
  mutable absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// What the watchdog needs from one backend communicator. NcclCommunicator implements it over
// NCCL and the store; tests implement it with fakes. Called from the watchdog's threads.
class WatchdogBackend {
 public:
  virtual ~WatchdogBackend() = default;
  virtual std::string Describe() const = 0;
  // ncclCommGetAsyncError: OK while healthy or in progress, else the converted error.
  virtual absl::Status AsyncError() = 0;
  // A peer of this communicator reported failed (job/failed/<rank>) or an error published for
  // it in the store: the kAborted status naming it; OK when there is none.
  virtual absl::Status PeerHealth() = 0;
  // The status `op` fails with when it passed its deadline: kDeadlineExceeded naming the op
  // and what is known of the other ranks. May take up to about a second (store round trips).
  virtual absl::Status DiagnoseTimeout(const GpuWork& op) = 0;
  // Tears the backend down (ncclCommAbort). May hang: the watchdog bounds it.
  virtual void AbortBackend(const absl::Status& why) = 0;
};

class Watchdog;

class WatchedComm {
 public:
  explicit WatchedComm(std::shared_ptr<WatchdogBackend> backend);

  WatchdogBackend& backend() const { return *backend_; }

  // Adds an issued op. When the communicator is already aborted, completes `op` with
  // kFailedPrecondition and returns that status.
  absl::Status Track(const std::shared_ptr<GpuWork>& op);
  // Fails every pending op with `status` (not OK) and has the watchdog run the backend abort.
  // The first status wins; returns whether this call aborted. Returns promptly.
  bool Abort(absl::Status status);
  // OK while usable, else the abort status.
  absl::Status abort_status() const;
  // Ops issued and not finished yet (each is polled).
  size_t pending() const;
  // Blocks until the backend abort has returned; returns at once when none was requested.
  // Bounded: the watchdog exits the process when the abort hangs.
  void AwaitBackendAborted();
  // For ops that must not start while an abort is requested (a shortcut to abort_status()).
  bool aborted() const;

 private:
  friend class Watchdog;
  enum class BackendAbort { kNone, kRequested, kRunning, kDone };

  // One watchdog pass over this communicator at time `now`.
  void Check(absl::Time now, absl::Duration peer_poll);

  const std::shared_ptr<WatchdogBackend> backend_;
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<GpuWork>> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  BackendAbort backend_abort_ ABSL_GUARDED_BY(mu_) = BackendAbort::kNone;
  absl::Time abort_started_ ABSL_GUARDED_BY(mu_);
  bool hang_reported_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time next_peer_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  Watchdog* watchdog_ ABSL_GUARDED_BY(mu_) = nullptr;
};

class Watchdog {
 public:
  struct Options {
    Clock* clock = Clock::Real();
    absl::Duration poll = absl::Milliseconds(10);
    absl::Duration peer_poll = absl::Milliseconds(100);
    absl::Duration abort_timeout = absl::Seconds(10);
    // Called (once per communicator) when its backend abort has run past abort_timeout. The
    // default logs the message and exits the process with kAbortHangExitCode.
    std::function<void(const std::string&)> on_abort_hang;
    // False: no watch thread; the caller drives Tick() (tests). The abort thread always runs.
    bool run_thread = true;
  };

  // The process's watchdog, configured from TRIDENT_NCCL_WATCHDOG_POLL_MS and
  // TRIDENT_NCCL_ABORT_TIMEOUT_MS; it lives while some communicator holds it.
  static std::shared_ptr<Watchdog> Shared();

  explicit Watchdog(Options options);
  // Stops the threads. An abort still running is waited for (bounded by abort_timeout).
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watches `comm` until it is destroyed (the watchdog keeps a weak reference).
  void Register(const std::shared_ptr<WatchedComm>& comm);
  // One pass over every communicator at the clock's current time.
  void Tick();
  // Wakes the watch thread early (an abort was requested).
  void Wake();

 private:
  friend class WatchedComm;
  void WatchLoop();
  void AbortLoop();
  void ReportHang(WatchedComm& comm, absl::Duration running);

  Options options_;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<WatchedComm>> comms_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<WatchedComm>> abort_queue_ ABSL_GUARDED_BY(mu_);
  bool aborting_ ABSL_GUARDED_BY(mu_) = false;  // the abort thread is in AbortBackend
  bool woken_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool abort_thread_done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watch_thread_;
  std::thread abort_thread_;
};

}  // namespace trident::nccl

#endif  // TRIDENT_COMM_NCCL_WATCHDOG_H_
