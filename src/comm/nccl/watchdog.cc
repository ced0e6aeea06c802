#include "comm/nccl/watchdog.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/cuda.h"
#include "common/logging.h"
#include "common/op_wait.h"
#include "common/params.h"

namespace trident::nccl {

namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

// The default of on_abort_hang and on_device_lost: the reason on the log and stderr, then an
// exit that runs no destructor (they could block on the very thing that failed).
std::function<void(const std::string&)> LogAndExit(int exit_code) {
  return [exit_code](const std::string& message) {
    TLOG(critical, "{}", message);
    ::trident::Logger().flush();
    std::fprintf(stderr, "trident: %s\n", message.c_str());
    std::fflush(stderr);
    _exit(exit_code);
  };
}

}  // namespace

Clock* Clock::Real() {
  static RealClock clock;
  return &clock;
}

// --- GpuWork -----------------------------------------------------------------------------

GpuWork::GpuWork(std::string name, int64_t seq, absl::Time deadline, absl::Duration timeout,
                 Probe probe)
    : name_(std::move(name)),
      seq_(seq),
      deadline_(deadline),
      timeout_(timeout),
      probe_(std::move(probe)) {}

std::shared_ptr<GpuWork> GpuWork::Failed(std::string name, absl::Status status) {
  auto work = std::make_shared<GpuWork>(std::move(name), -1, absl::InfiniteFuture(),
                                        absl::ZeroDuration(),
                                        []() -> absl::StatusOr<bool> { return true; });
  work->Complete(std::move(status));
  return work;
}

std::shared_ptr<GpuWork> GpuWork::Done(std::string name) {
  return Failed(std::move(name), absl::OkStatus());
}

bool GpuWork::Complete(absl::Status status) { return done_.Complete(std::move(status)); }

void GpuWork::MarkAborting() {
  absl::MutexLock lock(&mu_);
  aborting_ = true;
}

absl::StatusOr<bool> GpuWork::Poll() {
  if (done_.done()) return true;
  {
    absl::MutexLock lock(&mu_);
    if (aborting_) return false;
  }
  absl::StatusOr<bool> finished = probe_();
  if (!finished.ok()) return finished.status();
  if (*finished) {
    absl::MutexLock lock(&mu_);  // MarkAborting waits for this decision
    // An abort that came while the probe ran decides: the event may have fired because the
    // abort stopped the kernel.
    if (aborting_) return done_.done();
    done_.Complete(absl::OkStatus());
  }
  return *finished;
}

absl::Status GpuWork::Wait(absl::Time deadline) {
  ScopedOpWait waiting;
  absl::Duration pause = absl::Microseconds(2);
  while (true) {
    if (std::optional<absl::Status> s = done_.status()) return *s;
    // A probe error (a sticky CUDA error) is the watchdog's to report: it aborts the
    // communicator, which completes this op.
    absl::StatusOr<bool> finished = Poll();
    if (finished.ok() && *finished) continue;
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "Work::Wait: the caller's deadline passed before ", name_,
          " completed; the op is still running under its own deadline"));
    }
    (void)done_.WaitUntil(std::min(deadline, now + pause));
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
}

bool GpuWork::IsCompleted() const {
  if (done_.done()) return true;
  absl::StatusOr<bool> finished = const_cast<GpuWork*>(this)->Poll();
  return finished.ok() && *finished;
}

absl::Status GpuWork::status() const {
  if (!IsCompleted()) return absl::UnavailableError(absl::StrCat(name_, " still running"));
  return *done_.status();
}

// --- WatchedComm -------------------------------------------------------------------------

WatchedComm::WatchedComm(std::shared_ptr<WatchdogBackend> backend) : backend_(std::move(backend)) {
  TRIDENT_CHECK(backend_ != nullptr);
}

absl::Status WatchedComm::Track(const std::shared_ptr<GpuWork>& op) {
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (abort_status_.ok()) {
      pending_.push_back(op);
      return absl::OkStatus();
    }
    if (!ops_taken_) {
      // Queued while an abort was starting: its kernel may run until the backend abort has
      // returned, so it completes then, with the others.
      op->MarkAborting();
      pending_.push_back(op);
      return abort_status_;
    }
    refused = absl::FailedPreconditionError(
        absl::StrCat(op->name(), " issued on ", backend_->Describe(), " after it was aborted (",
                     abort_status_.message(), "); rebuild it"));
  }
  op->Complete(refused);
  return refused;
}

bool WatchedComm::Abort(absl::Status status) { return AbortWith(std::move(status), false); }

bool WatchedComm::AbortWith(absl::Status status, bool publish) {
  TRIDENT_CHECK(!status.ok()) << "Abort needs a non-OK status";
  Watchdog* watchdog = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (!abort_status_.ok()) return false;
    TRIDENT_CHECK(watchdog_ != nullptr)
        << backend_->Describe() << ": aborted before it was registered with a watchdog";
    abort_status_ = status;
    publish_abort_ = publish;
    backend_abort_ = BackendAbort::kRequested;
    // The kernels of pending ops may still write their buffers: the ops complete after the
    // backend abort, and their events (which the abort fires too) no longer count.
    for (const auto& op : pending_) op->MarkAborting();
    watchdog = watchdog_;
  }
  TLOG(warn, "{}: aborting: {}", backend_->Describe(), status);
  watchdog->StartAbort(shared_from_this());
  return true;
}

void WatchedComm::RunBackendAbort(Clock* clock) {
  absl::Status why;
  bool publish = false;
  {
    absl::MutexLock lock(&mu_);
    TRIDENT_CHECK(backend_abort_ == BackendAbort::kRequested);
    backend_abort_ = BackendAbort::kRunning;
    abort_started_ = clock->Now();
    why = abort_status_;
    publish = publish_abort_;
  }
  if (publish) backend_->PublishAbort(why);
  backend_->AbortBackend(why);
  std::vector<std::shared_ptr<GpuWork>> ops;
  {
    absl::MutexLock lock(&mu_);
    ops.swap(pending_);
    ops_taken_ = true;  // Track completes later ops at once
  }
  for (const auto& op : ops) op->Complete(why);
  absl::MutexLock lock(&mu_);
  backend_abort_ = BackendAbort::kDone;  // AwaitBackendAborted: the ops are complete too
}

absl::Status WatchedComm::abort_status() const {
  absl::MutexLock lock(&mu_);
  return abort_status_;
}

bool WatchedComm::aborted() const {
  absl::MutexLock lock(&mu_);
  return !abort_status_.ok();
}

size_t WatchedComm::pending() const {
  std::vector<std::shared_ptr<GpuWork>> ops;
  {
    absl::MutexLock lock(&mu_);
    ops = pending_;
  }
  // Ops that finished since the last watchdog pass do not count.
  return std::count_if(ops.begin(), ops.end(), [](const std::shared_ptr<GpuWork>& op) {
    absl::StatusOr<bool> done = op->Poll();
    return !done.ok() || !*done;
  });
}

void WatchedComm::AwaitBackendAborted() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](WatchedComm* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
        return self->backend_abort_ == BackendAbort::kNone ||
               self->backend_abort_ == BackendAbort::kDone;
      },
      this));
}

void WatchedComm::Check(absl::Time now, absl::Duration peer_poll) {
  std::vector<std::shared_ptr<GpuWork>> ops;
  {
    absl::MutexLock lock(&mu_);
    if (!abort_status_.ok()) return;
    ops = pending_;
  }
  if (absl::Status s = backend_->AsyncError(); !s.ok()) {
    AbortWith(absl::Status(s.code() == absl::StatusCode::kInvalidArgument
                               ? absl::StatusCode::kAborted
                               : s.code(),
                           absl::StrCat(backend_->Describe(),
                                        ": NCCL reported an asynchronous error: ", s.message())),
              true);
    return;
  }
  // In issue order: the first op past its deadline is the one to name.
  bool any_done = false;
  for (const auto& op : ops) {
    absl::StatusOr<bool> finished = op->Poll();
    if (!finished.ok()) {
      const absl::Status& error = finished.status();
      const std::string message = absl::StrCat(op->name(), " on ", backend_->Describe(),
                                               ": the GPU reported an error: ", error.message());
      AbortWith(absl::AbortedError(message), true);
      if (cuda::IsContextLost(error)) {
        Watchdog* watchdog = nullptr;
        {
          absl::MutexLock lock(&mu_);
          watchdog = watchdog_;
        }
        watchdog->ReportDeviceLost(message);
      }
      return;
    }
    if (*finished) {
      any_done = true;
      continue;
    }
    if (now >= op->deadline()) {
      absl::Status timeout = backend_->DiagnoseTimeout(*op);
      if (timeout.ok()) {
        timeout = absl::DeadlineExceededError(absl::StrCat(
            op->name(), " timed out after ", absl::FormatDuration(op->timeout())));
      }
      AbortWith(timeout, true);
      return;
    }
  }
  bool check_peers = false;
  {
    absl::MutexLock lock(&mu_);
    if (any_done) {
      pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                    [](const std::shared_ptr<GpuWork>& op) {
                                      auto f = op->Poll();
                                      return f.ok() && *f;
                                    }),
                     pending_.end());
    }
    if (!pending_.empty() && now >= next_peer_check_) {
      next_peer_check_ = now + peer_poll;
      check_peers = true;
    }
  }
  if (check_peers) {
    // A peer's abort is its cause, not ours: not published again.
    if (absl::Status s = backend_->PeerAborted(); !s.ok()) AbortWith(s, false);
  }
}

// --- Watchdog ----------------------------------------------------------------------------

std::shared_ptr<Watchdog> Watchdog::Shared() {
  // Never destroyed: a communicator that the process leaks, or one destroyed by a static
  // destructor, still finds it.
  static std::shared_ptr<Watchdog>* const shared = [] {
    Options options;
    options.poll = ParamMillis("TRIDENT_NCCL_WATCHDOG_POLL_MS");
    options.abort_timeout = ParamMillis("TRIDENT_NCCL_ABORT_TIMEOUT_MS");
    return new std::shared_ptr<Watchdog>(std::make_shared<Watchdog>(std::move(options)));
  }();
  return *shared;
}

Watchdog::Watchdog(Options options) : options_(std::move(options)) {
  if (!options_.on_abort_hang) options_.on_abort_hang = LogAndExit(kAbortHangExitCode);
  if (!options_.on_device_lost) options_.on_device_lost = LogAndExit(kDeviceLostExitCode);
  TRIDENT_CHECK(options_.clock != nullptr);
  if (options_.run_threads) {
    watch_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "trident-wdog");
      WatchLoop();
    });
    monitor_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "trident-wdmon");
      MonitorLoop();
    });
  }
}

Watchdog::~Watchdog() {
  {
    absl::MutexLock lock(&mu_);
    stop_watch_ = true;
  }
  if (watch_thread_.joinable()) watch_thread_.join();
  // Every abort thread returns (the monitor, still running, bounds them) before the monitor
  // stops.
  while (true) {
    std::list<AbortThread> running;
    {
      absl::MutexLock lock(&mu_);
      if (aborts_.empty()) break;
      running.splice(running.end(), aborts_);
    }
    for (AbortThread& a : running) a.thread.join();
  }
  {
    absl::MutexLock lock(&mu_);
    stop_monitor_ = true;
  }
  // Joined before the check below: CheckAborts holds the live communicators (Live()) while it
  // looks at them, so a communicator its owner has just released can still be alive until
  // the monitor's pass ends.
  if (monitor_thread_.joinable()) monitor_thread_.join();
  absl::MutexLock lock(&mu_);
  for (const auto& w : comms_) {
    TRIDENT_CHECK(w.expired()) << "a communicator outlived the watchdog that watches it";
  }
}

void Watchdog::Register(const std::shared_ptr<WatchedComm>& comm) {
  {
    absl::MutexLock lock(&comm->mu_);
    comm->watchdog_ = this;
  }
  absl::MutexLock lock(&mu_);
  comms_.push_back(comm);
}

std::vector<std::shared_ptr<WatchedComm>> Watchdog::Live() {
  std::vector<std::shared_ptr<WatchedComm>> live;
  absl::MutexLock lock(&mu_);
  auto end = std::remove_if(comms_.begin(), comms_.end(),
                            [](const std::weak_ptr<WatchedComm>& w) { return w.expired(); });
  comms_.erase(end, comms_.end());
  for (const auto& w : comms_) {
    if (auto c = w.lock()) live.push_back(std::move(c));
  }
  return live;
}

void Watchdog::Tick() {
  const std::vector<std::shared_ptr<WatchedComm>> live = Live();
  const absl::Time now = options_.clock->Now();
  for (const auto& comm : live) comm->Check(now, options_.peer_poll);
}

void Watchdog::StartAbort(std::shared_ptr<WatchedComm> comm) {
  absl::MutexLock lock(&mu_);
  aborts_.emplace_back();
  AbortThread* slot = &aborts_.back();
  slot->thread = std::thread([this, slot, comm = std::move(comm)]() mutable {
    pthread_setname_np(pthread_self(), "trident-abort");
    comm->RunBackendAbort(options_.clock);
    comm.reset();
    absl::MutexLock lock(&mu_);
    slot->done = true;
  });
}

void Watchdog::CheckAborts() {
  std::list<AbortThread> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = aborts_.begin(); it != aborts_.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), aborts_, it);
      it = next;
    }
  }
  for (AbortThread& a : finished) a.thread.join();

  const absl::Time now = options_.clock->Now();
  for (const auto& comm : Live()) {
    absl::Duration running = absl::ZeroDuration();
    {
      absl::MutexLock lock(&comm->mu_);
      if (comm->backend_abort_ != WatchedComm::BackendAbort::kRunning || comm->hang_reported_ ||
          now - comm->abort_started_ <= options_.abort_timeout) {
        continue;
      }
      comm->hang_reported_ = true;
      running = now - comm->abort_started_;
    }
    options_.on_abort_hang(absl::StrCat(
        comm->backend().Describe(), ": the NCCL abort has not returned after ",
        absl::FormatDuration(running), " (limit ", absl::FormatDuration(options_.abort_timeout),
        ", TRIDENT_NCCL_ABORT_TIMEOUT_MS; it was aborted because: ",
        comm->abort_status().message(), "); exiting so that the job does not hang"));
  }
}

void Watchdog::ReportDeviceLost(const std::string& message) {
  options_.on_device_lost(absl::StrCat(
      message, "; this process's CUDA context is lost and no rebuild can recover it: exiting "
               "so that the job replaces this rank"));
}

void Watchdog::WatchLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_watch_), options_.poll);
      if (stop_watch_) return;
    }
    Tick();
  }
}

void Watchdog::MonitorLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_monitor_), options_.poll);
      if (stop_monitor_) return;
    }
    CheckAborts();
  }
}

}  // namespace trident::nccl
