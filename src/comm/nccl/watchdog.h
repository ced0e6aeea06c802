// The NCCL backend's failure handling, kept free of NCCL and CUDA headers so that it is tested
// with a fake clock and fake backends on any machine (tests/comm/nccl_watchdog_test.cc).
//
//  - GpuWork: the Work of one op queued on a CUDA stream. It completes OK when its probe (the
//    op's CUDA event) says the GPU work is done, or with the abort status once its
//    communicator's backend abort has returned (so that the GPU no longer writes the op's
//    buffers when a caller sees the failure). Wait(deadline) never blocks past the deadline.
//  - WatchedComm: the watchdog's record of one communicator: its pending ops, its abort
//    status, and where the backend abort (ncclCommAbort) stands.
//  - Watchdog: the process's watcher. Three kinds of threads, so that no bound depends on a
//    call that can block:
//      watch    every `poll`: an asynchronous NCCL error, a pending op past its deadline, a
//               GPU error on an op's event, or (every `peer_poll`, while ops are pending)
//               another member that aborted this communicator (the communicator's own store
//               keys) aborts the communicator. Makes CUDA calls and store round trips.
//      abort    one per aborted communicator, in parallel: ncclCommAbort of one communicator
//               may wait for another's kernel to stop, so no abort queues behind another.
//      monitor  makes no CUDA or store call: reports an abort still running after
//               `abort_timeout` (on_abort_hang: by default the process exits with status 70),
//               and joins finished abort threads.
//    A sticky CUDA error (the context is lost) cannot be recovered by a rebuild in this
//    process: on_device_lost exits with status 71, which the launcher reports like any rank
//    that died.
//
// Peers' failures are policy, not this layer's: a rank's death reaches a communicator only
// through Communicator::Abort(status), called by the runtime (docs/architecture.md).
//
// Thread-safety: everything here may be called from any thread.
#ifndef TRIDENT_COMM_NCCL_WATCHDOG_H_
#define TRIDENT_COMM_NCCL_WATCHDOG_H_

#include <functional>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/completion.h"
#include "trident/communicator.h"

namespace trident::nccl {

// Exit status of a process whose ncclCommAbort did not return in time.
inline constexpr int kAbortHangExitCode = 70;
// Exit status of a process whose CUDA context is lost (a sticky CUDA error).
inline constexpr int kDeviceLostExitCode = 71;

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
  // An op that is complete as far as the host can tell (queued into a CUDA graph capture:
  // it runs when the graph is launched, outside any deadline).
  static std::shared_ptr<GpuWork> Done(std::string name);

  absl::Status Wait(absl::Time deadline = absl::InfiniteFuture()) override;
  bool IsCompleted() const override;
  absl::Status status() const override;

  // Completes the op; the first completion wins. Returns whether this call completed it.
  bool Complete(absl::Status status);
  // Its communicator is being aborted: from now on the probe is not asked (the kernel that
  // the abort stops fires the event too), and the op completes only through Complete.
  void MarkAborting();
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
  Completion done_;
  mutable absl::Mutex mu_;
  bool aborting_ ABSL_GUARDED_BY(mu_) = false;
};

// What the watchdog needs from one backend communicator. NcclHandle implements it over NCCL
// and the store; tests implement it with fakes. Called from the watchdog's threads.
class WatchdogBackend {
 public:
  virtual ~WatchdogBackend() = default;
  virtual std::string Describe() const = 0;
  // ncclCommGetAsyncError: OK while healthy or in progress, else the converted error.
  virtual absl::Status AsyncError() = 0;
  // Another member aborted this communicator for a cause it found itself and said so in the
  // communicator's own store keys (PublishAbort): the kAborted status naming it; else OK.
  virtual absl::Status PeerAborted() = 0;
  // Tells the other members that this rank aborted the communicator because of `why`.
  // Bounded (a short store deadline); best effort.
  virtual void PublishAbort(const absl::Status& why) = 0;
  // The status `op` fails with when it passed its deadline: kDeadlineExceeded naming the op
  // and what is known of the other ranks. May take up to about a second (store round trips).
  virtual absl::Status DiagnoseTimeout(const GpuWork& op) = 0;
  // Tears the backend down (ncclCommAbort). May hang: the watchdog bounds it.
  virtual void AbortBackend(const absl::Status& why) = 0;
};

class Watchdog;

class WatchedComm : public std::enable_shared_from_this<WatchedComm> {
 public:
  explicit WatchedComm(std::shared_ptr<WatchdogBackend> backend);

  WatchdogBackend& backend() const { return *backend_; }

  // Adds an issued op. When the communicator is already aborted, `op` fails and this returns
  // the status: the abort status, once the backend abort has returned (it may run until
  // then), or at once kFailedPrecondition when the backend abort is over.
  absl::Status Track(const std::shared_ptr<GpuWork>& op);
  // Aborts the communicator with `status` (not OK): later ops are refused at once, and the
  // watchdog runs the backend abort on a thread of its own; pending ops complete with
  // `status` once that has returned. The first status wins; returns whether this call
  // aborted. Returns promptly. The communicator must be registered with a watchdog.
  bool Abort(absl::Status status);
  // OK while usable, else the abort status.
  absl::Status abort_status() const;
  // Ops issued and not finished yet (each is polled).
  size_t pending() const;
  // Blocks until the backend abort has returned and the pending ops are completed; returns
  // at once when none was requested. Bounded: the watchdog's monitor ends the process when
  // the abort hangs.
  void AwaitBackendAborted();
  // For ops that must not start while an abort is requested (a shortcut to abort_status()).
  bool aborted() const;

 private:
  friend class Watchdog;
  enum class BackendAbort { kNone, kRequested, kRunning, kDone };

  // Abort, and `publish`: tell the other members (a cause this rank found itself).
  bool AbortWith(absl::Status status, bool publish);
  // One watchdog pass over this communicator at time `now`.
  void Check(absl::Time now, absl::Duration peer_poll);
  // The abort thread's work: publish, AbortBackend, then complete the pending ops.
  void RunBackendAbort(Clock* clock);

  const std::shared_ptr<WatchdogBackend> backend_;
  mutable absl::Mutex mu_;
  std::vector<std::shared_ptr<GpuWork>> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  bool publish_abort_ ABSL_GUARDED_BY(mu_) = false;
  bool ops_taken_ ABSL_GUARDED_BY(mu_) = false;  // the abort thread took pending_
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
    // Called (once per communicator) by the monitor when its backend abort has run past
    // abort_timeout. The default logs the message and exits with kAbortHangExitCode.
    std::function<void(const std::string&)> on_abort_hang;
    // Called when an op's GPU work failed with a sticky CUDA error (the context is lost).
    // The default logs the message and exits with kDeviceLostExitCode.
    std::function<void(const std::string&)> on_device_lost;
    // False: no watch or monitor thread; the caller drives Tick() and CheckAborts() (tests).
    // Abort threads always run.
    bool run_threads = true;
  };

  // The process's watchdog, configured from TRIDENT_NCCL_WATCHDOG_POLL_MS and
  // TRIDENT_NCCL_ABORT_TIMEOUT_MS. It lives as long as the process, so that no communicator
  // can outlive it (with nothing registered, its threads wake every poll and do nothing).
  static std::shared_ptr<Watchdog> Shared();

  explicit Watchdog(Options options);
  // Stops the threads, after every abort thread has returned (bounded by the monitor). Every
  // registered communicator must be gone by then (checked).
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watches `comm` until it is destroyed (the watchdog keeps a weak reference). The watchdog
  // must outlive `comm`.
  void Register(const std::shared_ptr<WatchedComm>& comm);
  // One watch pass over every communicator at the clock's current time.
  void Tick();
  // One monitor pass: reports aborts past their bound, joins finished abort threads.
  void CheckAborts();
  // A sticky CUDA error outside any op (e.g. when queuing one): on_device_lost.
  void ReportDeviceLost(const std::string& message);

 private:
  friend class WatchedComm;
  struct AbortThread {
    std::thread thread;
    bool done = false;
  };
  void StartAbort(std::shared_ptr<WatchedComm> comm);
  void WatchLoop();
  void MonitorLoop();
  std::vector<std::shared_ptr<WatchedComm>> Live();

  Options options_;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<WatchedComm>> comms_ ABSL_GUARDED_BY(mu_);
  std::list<AbortThread> aborts_ ABSL_GUARDED_BY(mu_);
  bool stop_watch_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_monitor_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watch_thread_;
  std::thread monitor_thread_;
};

}  // namespace trident::nccl

#endif  // TRIDENT_COMM_NCCL_WATCHDOG_H_
