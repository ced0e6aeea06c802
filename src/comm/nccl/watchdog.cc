#include "comm/nccl/watchdog.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/op_wait.h"
#include "common/params.h"

namespace trident::nccl {

namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

[[noreturn]] void ExitOnAbortHang(const std::string& message) {
  spdlog::critical("{}", message);
  spdlog::default_logger()->flush();
  std::fprintf(stderr, "trident: %s\n", message.c_str());
  std::fflush(stderr);
  _exit(kAbortHangExitCode);
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

bool GpuWork::Complete(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (done_) return false;
  status_ = std::move(status);
  done_ = true;
  return true;
}

absl::StatusOr<bool> GpuWork::Poll() {
  {
    absl::MutexLock lock(&mu_);
    if (done_) return true;
  }
  absl::StatusOr<bool> finished = probe_();
  if (!finished.ok()) return finished.status();
  if (*finished) Complete(absl::OkStatus());
  return *finished;
}

absl::Status GpuWork::Wait(absl::Time deadline) {
  ScopedOpWait waiting;
  absl::Duration pause = absl::Microseconds(2);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (done_) return status_;
    }
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
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithDeadline(absl::Condition(&done_), std::min(deadline, now + pause));
    pause = std::min(pause * 2, absl::Milliseconds(1));
  }
}

bool GpuWork::IsCompleted() const {
  {
    absl::MutexLock lock(&mu_);
    if (done_) return true;
  }
  absl::StatusOr<bool> finished = const_cast<GpuWork*>(this)->Poll();
  return finished.ok() && *finished;
}

absl::Status GpuWork::status() const {
  if (!IsCompleted()) return absl::UnavailableError(absl::StrCat(name_, " still running"));
  absl::MutexLock lock(&mu_);
  return status_;
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
    refused = absl::FailedPreconditionError(
        absl::StrCat(op->name(), " issued on ", backend_->Describe(), " after it was aborted (",
                     abort_status_.message(), "); rebuild it"));
  }
  op->Complete(refused);
  return refused;
}

bool WatchedComm::Abort(absl::Status status) {
  TRIDENT_CHECK(!status.ok()) << "Abort needs a non-OK status";
  std::vector<std::shared_ptr<GpuWork>> ops;
  Watchdog* watchdog = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (!abort_status_.ok()) return false;
    abort_status_ = status;
    ops.swap(pending_);
    backend_abort_ = BackendAbort::kRequested;
    watchdog = watchdog_;
  }
  spdlog::warn("{}: aborting: {}", backend_->Describe(), status);
  for (auto& op : ops) op->Complete(status);
  if (watchdog != nullptr) watchdog->Wake();
  return true;
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
    Abort(absl::Status(
        s.code() == absl::StatusCode::kInvalidArgument ? absl::StatusCode::kAborted : s.code(),
        absl::StrCat(backend_->Describe(), ": NCCL reported an asynchronous error: ",
                     s.message())));
    return;
  }
  // In issue order: the first op past its deadline is the one to name.
  bool any_done = false;
  for (const auto& op : ops) {
    absl::StatusOr<bool> finished = op->Poll();
    if (!finished.ok()) {
      Abort(absl::AbortedError(absl::StrCat(op->name(), " on ", backend_->Describe(),
                                            ": the GPU reported an error: ",
                                            finished.status().message())));
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
      Abort(timeout);
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
    if (absl::Status s = backend_->PeerHealth(); !s.ok()) Abort(s);
  }
}

// --- Watchdog ----------------------------------------------------------------------------

std::shared_ptr<Watchdog> Watchdog::Shared() {
  static absl::Mutex mu(absl::kConstInit);
  static std::weak_ptr<Watchdog>* current = new std::weak_ptr<Watchdog>();
  absl::MutexLock lock(&mu);
  std::shared_ptr<Watchdog> w = current->lock();
  if (w == nullptr) {
    Options options;
    options.poll = ParamMillis("TRIDENT_NCCL_WATCHDOG_POLL_MS");
    options.abort_timeout = ParamMillis("TRIDENT_NCCL_ABORT_TIMEOUT_MS");
    w = std::make_shared<Watchdog>(std::move(options));
    *current = w;
  }
  return w;
}

Watchdog::Watchdog(Options options) : options_(std::move(options)) {
  if (!options_.on_abort_hang) options_.on_abort_hang = ExitOnAbortHang;
  TRIDENT_CHECK(options_.clock != nullptr);
  abort_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "trident-abort");
    AbortLoop();
  });
  if (options_.run_thread) {
    watch_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "trident-wdog");
      WatchLoop();
    });
  }
}

Watchdog::~Watchdog() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // The watch thread keeps running until the abort thread is done, so that a hung abort is
  // still reported (and the process exits) rather than hanging here.
  abort_thread_.join();
  if (watch_thread_.joinable()) watch_thread_.join();
}

void Watchdog::Register(const std::shared_ptr<WatchedComm>& comm) {
  {
    absl::MutexLock lock(&comm->mu_);
    comm->watchdog_ = this;
  }
  absl::MutexLock lock(&mu_);
  comms_.push_back(comm);
}

void Watchdog::Wake() {
  absl::MutexLock lock(&mu_);
  woken_ = true;
}

void Watchdog::Tick() {
  std::vector<std::shared_ptr<WatchedComm>> live;
  {
    absl::MutexLock lock(&mu_);
    auto end = std::remove_if(comms_.begin(), comms_.end(),
                              [](const std::weak_ptr<WatchedComm>& w) { return w.expired(); });
    comms_.erase(end, comms_.end());
    for (const auto& w : comms_) {
      if (auto c = w.lock()) live.push_back(std::move(c));
    }
  }
  const absl::Time now = options_.clock->Now();
  for (const auto& comm : live) comm->Check(now, options_.peer_poll);

  // Backend aborts: start the requested ones; report the ones that run too long.
  std::vector<std::shared_ptr<WatchedComm>> to_start;
  for (const auto& comm : live) {
    absl::Duration hung = absl::ZeroDuration();
    {
      absl::MutexLock lock(&comm->mu_);
      if (comm->backend_abort_ == WatchedComm::BackendAbort::kRequested) {
        comm->backend_abort_ = WatchedComm::BackendAbort::kRunning;
        comm->abort_started_ = now;
        to_start.push_back(comm);
      } else if (comm->backend_abort_ == WatchedComm::BackendAbort::kRunning &&
                 now - comm->abort_started_ > options_.abort_timeout && !comm->hang_reported_) {
        comm->hang_reported_ = true;
        hung = now - comm->abort_started_;
      }
    }
    if (hung > absl::ZeroDuration()) ReportHang(*comm, hung);
  }
  if (!to_start.empty()) {
    absl::MutexLock lock(&mu_);
    for (auto& c : to_start) abort_queue_.push_back(std::move(c));
  }
}

void Watchdog::ReportHang(WatchedComm& comm, absl::Duration running) {
  options_.on_abort_hang(absl::StrCat(
      comm.backend().Describe(), ": the NCCL abort has not returned after ",
      absl::FormatDuration(running), " (limit ", absl::FormatDuration(options_.abort_timeout),
      ", TRIDENT_NCCL_ABORT_TIMEOUT_MS; it was aborted because: ", comm.abort_status().message(),
      "); exiting so that the job does not hang"));
}

void Watchdog::WatchLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&woken_), options_.poll);
      woken_ = false;
      if (stopping_ && abort_thread_done_) return;
    }
    Tick();
  }
}

void Watchdog::AbortLoop() {
  while (true) {
    std::shared_ptr<WatchedComm> comm;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Watchdog* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return !self->abort_queue_.empty() || self->stopping_;
          },
          this));
      if (abort_queue_.empty()) {
        abort_thread_done_ = true;
        return;
      }
      comm = std::move(abort_queue_.front());
      abort_queue_.pop_front();
      aborting_ = true;
    }
    comm->backend().AbortBackend(comm->abort_status());
    {
      absl::MutexLock lock(&comm->mu_);
      comm->backend_abort_ = WatchedComm::BackendAbort::kDone;
    }
    absl::MutexLock lock(&mu_);
    aborting_ = false;
  }
}

}  // namespace trident::nccl
