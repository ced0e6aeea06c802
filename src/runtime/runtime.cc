// Runtime: the spare pool, the failure watcher that aborts an epoch's communicators, and
// Recover into the next epoch (trident/runtime.h). The decisions are health's Coordinator's,
// in the launcher; this file acts on them.
#include "trident/runtime.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "comm/host/inproc.h"
#include "common/logging.h"
#include "common/op_wait.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "health/burn_in.h"
#include "runtime/transport_self_test.h"
#include "health/failure_watcher.h"
#include "health/heartbeat.h"
#include "health/membership.h"
#include "health/sdc.h"
#include "runtime/flight_dumps.h"
#include "store/interruptible_store.h"
#include "trident/nccl.h"

namespace trident {
namespace {

// Up to this long, a transport error from a peer waits for the launcher's record of its
// death, which names the cause (a connection reset alone does not).
constexpr absl::Duration kPeerCauseWait = absl::Seconds(1);

// One process on its own: a world of one rank, nothing to recover from.
class StandaloneRuntime final : public Runtime {
 public:
  StandaloneRuntime() {
    InprocCommOptions options;
    options.size = 1;
    world_ = std::move(NewInprocCommunicators(options)[0]);
  }
  Communicator& world() override { return *world_; }
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int64_t epoch() const override { return 1; }
  const std::string& member() const override { return member_; }
  bool in_job() const override { return false; }
  bool promoted() const override { return false; }
  const Recovery& promotion() const override { return promotion_; }
  void SetGroups(std::vector<Communicator*>) override {}
  absl::Status AllowShrink(const std::vector<std::vector<int>>&) override {
    return absl::OkStatus();
  }
  absl::StatusOr<Recovery> Recover(const absl::Status& cause, absl::Time) override {
    return absl::FailedPreconditionError(absl::StrCat(
        "this process runs on its own (no TRIDENT_WORLD_SIZE, no store): nothing can recover "
        "it from: ",
        cause.ToString()));
  }
  void Progress() override {}
  void Finish() override {}
  void AbortWorld(const absl::Status& why) override { world_->Abort(why); }

 private:
  std::unique_ptr<Communicator> world_;
  std::string member_ = "w0";
  Recovery promotion_;
};

class JobRuntime final : public Runtime {
 public:
  explicit JobRuntime(RuntimeOptions options) : options_(std::move(options)) {}
  ~JobRuntime() override {
    Finish();
    absl::MutexLock lock(&mu_);
    world_ptr_ = nullptr;
    groups_.clear();
  }

  absl::Status Start();

  Communicator& world() override { return *world_; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int64_t epoch() const override { return epoch_; }
  const std::string& member() const override { return options_.member; }
  bool in_job() const override { return true; }
  bool promoted() const override { return promoted_; }
  const Recovery& promotion() const override { return promotion_; }
  void SetGroups(std::vector<Communicator*> groups) override {
    absl::MutexLock lock(&mu_);
    groups_ = std::move(groups);
  }
  absl::Status AllowShrink(const std::vector<std::vector<int>>& groups) override;
  absl::StatusOr<Recovery> Recover(const absl::Status& cause, absl::Time deadline) override;
  void Progress() override {
    progress_ns_.store(absl::ToUnixNanos(absl::Now()), std::memory_order_relaxed);
  }
  void AbortWorld(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    AbortLocked(why);
  }
  absl::Status ReportCorruption(int rank, const std::string& why) override {
    return watch_store_->Set(health::SdcKey(epoch_, rank), why,
                             absl::Now() + absl::Seconds(10));
  }
  void Finish() override {
    progress_ns_.store(0);
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (watcher_.joinable()) watcher_.join();
    if (dumps_) dumps_->Flush();  // a dump written since the watcher's last poll
    dumps_.reset();
    if (heartbeat_) heartbeat_->Retire();
    heartbeat_.reset();
  }

 private:
  // The heartbeat's stall check: the reason when the training thread is hung.
  std::optional<std::string> Stalled() const;
  // Opens the endpoint of the next world build, off the training thread's path. Best effort:
  // without one, the build opens its own.
  bool OpenStandby();
  void AbortLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The watcher thread: aborts the epoch's communicators once the job says it is over.
  void Watch();
  // Builds `epoch`'s world; gives up at `deadline` or as soon as the epoch is over.
  absl::Status BuildWorld(int64_t epoch, absl::Time deadline);
  // The transport self-test over the world just built (runtime/transport_self_test.h).
  absl::Status SelfTestWorld(int64_t epoch, absl::Time deadline);
  // The spare pool: waits until an epoch gives this member a rank and builds its world
  // (promoted_, promotion_); kCancelled when the job ends first.
  absl::Status WaitForPromotion();

  RuntimeOptions options_;
  std::shared_ptr<Store> store_;        // the training thread's connection
  std::shared_ptr<Store> watch_store_;  // the watcher's, heartbeat's and peer reports'
  std::unique_ptr<health::FailureWatcher> failures_;
  std::unique_ptr<health::Heartbeat> heartbeat_;
  // Answers trident-run's (and SIGUSR1's) requests for this process's flight recorders.
  std::unique_ptr<runtime_internal::DumpResponder> dumps_;

  std::unique_ptr<Communicator> world_;
  int rank_ = -1;
  int world_size_ = 0;
  int64_t epoch_ = 1;
  bool promoted_ = false;
  // The transport self-test at a world build failed on this rank: it leaves (not admitted).
  bool not_admitted_ = false;
  Recovery promotion_;

  absl::Mutex mu_;
  Communicator* world_ptr_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<Communicator*> groups_ ABSL_GUARDED_BY(mu_);
  int64_t watched_epoch_ ABSL_GUARDED_BY(mu_) = 1;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;  // this epoch's comms were aborted
  // An endpoint opened ahead of the next world build (a spare's, or the next epoch's), so
  // that the build only exchanges addresses (the first open in a process costs ~0.1 s).
  std::shared_ptr<HostEndpoint> standby_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread watcher_;
  // Unix ns of the training thread's last Progress(); 0: the hang check is paused.
  std::atomic<int64_t> progress_ns_{0};
};

std::optional<std::string> JobRuntime::Stalled() const {
  const int64_t last = progress_ns_.load(std::memory_order_relaxed);
  if (last == 0 || options_.hang_timeout <= absl::ZeroDuration() || AnyThreadInOpWait()) {
    return std::nullopt;
  }
  const absl::Duration gap = absl::Now() - absl::FromUnixNanos(last);
  if (gap < options_.hang_timeout) return std::nullopt;
  return absl::StrCat("the training thread made no progress for ",
                      absl::FormatDuration(absl::Trunc(gap, absl::Milliseconds(1))),
                      " (no Runtime::Progress call and no op waited on; "
                      "TRIDENT_HANG_TIMEOUT_MS=",
                      absl::ToInt64Milliseconds(options_.hang_timeout), ")");
}

bool JobRuntime::OpenStandby() {
  if (options_.factory) return false;  // another backend opens its own
  absl::StatusOr<std::shared_ptr<HostEndpoint>> ep = OpenHostEndpoint(options_.provider);
  if (!ep.ok()) {
    TLOG(warn, "cannot open an endpoint in advance: {}", ep.status().ToString());
    return false;
  }
  absl::MutexLock lock(&mu_);
  standby_ = *std::move(ep);
  return true;
}

void JobRuntime::AbortLocked(const absl::Status& status) {
  if (aborted_) return;
  aborted_ = true;
  if (world_ptr_ != nullptr) world_ptr_->Abort(status);
  for (Communicator* g : groups_) g->Abort(status);
}

void JobRuntime::Watch() {
  while (!stop_.WaitForNotificationWithTimeout(options_.poll)) {
    if (dumps_) dumps_->Poll();  // also while aborted or recovering: that is when it is asked
    int64_t e;
    bool want_standby;
    {
      absl::MutexLock lock(&mu_);
      if (aborted_ || world_ptr_ == nullptr) continue;
      e = watched_epoch_;
      want_standby = standby_ == nullptr && !options_.factory;
    }
    if (want_standby) OpenStandby();
    std::optional<std::string> over = failures_->EpochOver(e, absl::Now() + absl::Seconds(2));
    if (!over.has_value()) continue;
    absl::MutexLock lock(&mu_);
    if (watched_epoch_ == e) {
      AbortLocked(absl::AbortedError(absl::StrCat(*over, " (epoch ", e, ")")));
    }
  }
}

absl::Status JobRuntime::Start() {
  if (options_.rank < 0) options_.rank = static_cast<int>(ParamInt("TRIDENT_RANK"));
  if (options_.world_size < 0) {
    options_.world_size = static_cast<int>(ParamInt("TRIDENT_WORLD_SIZE"));
  }
  if (options_.member.empty()) options_.member = ParamString("TRIDENT_MEMBER");
  if (options_.member.empty()) options_.member = health::WorkerId(options_.rank);
  if (options_.role.empty()) options_.role = ParamString("TRIDENT_ROLE");
  if (options_.role.empty()) options_.role = "worker";
  if (options_.role != "worker" && options_.role != "spare") {
    return absl::InvalidArgumentError(
        absl::StrCat("TRIDENT_ROLE is '", options_.role, "'; expected worker or spare"));
  }
  if (options_.world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Runtime::Init: the world size is ", options_.world_size,
        " (TRIDENT_WORLD_SIZE, or RuntimeOptions::world_size); it must be at least 1"));
  }
  if (options_.heartbeat == absl::ZeroDuration()) {
    options_.heartbeat = ParamMillis("TRIDENT_HEARTBEAT_MS");
  }
  if (options_.timeout == absl::ZeroDuration()) {
    options_.timeout = ParamMillis("TRIDENT_TIMEOUT_MS");
  }
  if (options_.hang_timeout == absl::ZeroDuration()) {
    options_.hang_timeout = ParamMillis("TRIDENT_HANG_TIMEOUT_MS");
  }
  if (options_.build_timeout == absl::ZeroDuration()) {
    options_.build_timeout = ParamMillis("TRIDENT_BUILD_TIMEOUT_MS");
  }
  const absl::Time deadline = absl::Now() + options_.timeout;
  if (options_.store != nullptr) {
    store_ = options_.store;
    watch_store_ = options_.store;
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<Store> s, ConnectStoreFromEnv(deadline));
    store_ = std::move(s);
    ASSIGN_OR_RETURN(std::unique_ptr<Store> w, ConnectStoreFromEnv(deadline));
    watch_store_ = std::move(w);
  }
  failures_ = std::make_unique<health::FailureWatcher>(watch_store_);
  InitLogging(options_.role == "spare" ? absl::StrCat("spare ", options_.member)
                                       : absl::StrCat("rank ", options_.rank));
  // Burn-in before this process joins a world or the spare pool; its report goes to the
  // store, where trident-run reads why a member that exits was not admitted.
  if (const health::BurnInReport burn = health::RunBurnIn(
          health::BurnInOptionsFromEnv(options_.member));
      burn.memory_bytes > 0 || !burn.ok) {
    absl::Status stored = store_->Set(health::BurnInKey(options_.member), burn.ToString(),
                                      deadline);
    if (!burn.ok) {
      TLOG(error, "burn-in of {} {}; not admitted", options_.member, burn.ToString());
      return absl::FailedPreconditionError(absl::StrCat(
          "burn-in of ", options_.member, " ", burn.ToString(),
          "; this process is not admitted (trident-run replaces it with a spare)"));
    }
    TLOG(info, "burn-in of {} {}", options_.member, burn.ToString());
    if (!stored.ok()) TLOG(warn, "cannot store the burn-in report: {}", stored.ToString());
  }
  if (options_.heartbeat > absl::ZeroDuration()) {
    heartbeat_ = std::make_unique<health::Heartbeat>(watch_store_, options_.member,
                                                     options_.heartbeat,
                                                     [this] { return Stalled(); });
  }
  world_size_ = options_.world_size;

  if (options_.role == "spare") {
    // The spare pool: open the endpoint, announce, then wait for an epoch that gives this
    // member a rank.
    const bool opened = OpenStandby();
    RETURN_IF_ERROR(store_->Set(health::SpareKey(options_.member), "ready", deadline));
    TLOG(info, "spare {} ready (store connected{}); waiting to be promoted", options_.member,
                 opened ? ", fabric endpoint open" : "");
    RETURN_IF_ERROR(WaitForPromotion());
  } else {
    ASSIGN_OR_RETURN(health::Membership m,
                     health::ReadMembership(*store_, options_.world_size, deadline));
    rank_ = m.RankOf(options_.member);
    world_size_ = static_cast<int>(m.ranks.size());
    if (m.epoch == 1 && !options_.shrink_groups.empty()) {
      // Every worker writes the same groups: rank 0 may be the one that dies.
      RETURN_IF_ERROR(store_->Set(health::ShrinkGroupsKey(1),
                                  health::ShrinkGroupsToJson(options_.shrink_groups), deadline));
    }
    if (rank_ < 0) {
      const bool failed = std::any_of(m.failures.begin(), m.failures.end(),
                                      [&](const health::Failure& f) {
                                        return f.member == options_.member;
                                      });
      if (failed) {
        return absl::FailedPreconditionError(absl::StrCat(
            "member ", options_.member, " holds no rank in epoch ", m.epoch,
            " (it was declared dead: ", m.DescribeFailures(), ")"));
      }
      // A shrink dropped this worker's group before it started: it waits in the pool.
      TLOG(info, "{} starts in epoch {} without a rank (a shrink); waiting as a spare",
                   options_.member, m.epoch);
      OpenStandby();
      RETURN_IF_ERROR(WaitForPromotion());
      promotion_.rejoined = true;
    } else {
      absl::Status built =
          BuildWorld(m.epoch, std::min(deadline, absl::Now() + options_.build_timeout));
      if (not_admitted_) return built;
      if (!built.ok()) {
        // A rank may have died during the setup: its place goes to a spare in a new epoch.
        TLOG(warn, "building the world of epoch {} failed: {}; waiting for the next epoch",
                     m.epoch, built.ToString());
        epoch_ = m.epoch;
        ASSIGN_OR_RETURN(promotion_, Recover(built, deadline));
      } else if (m.epoch > 1) {
        // Started late, into an epoch that already replaced someone.
        promotion_.old_epoch = m.epoch - 1;
        promotion_.epoch = m.epoch;
        promotion_.world_size = world_size_;
      }
    }
  }
  dumps_ = std::make_unique<runtime_internal::DumpResponder>(watch_store_, options_.member);
  watcher_ = std::thread([this] { Watch(); });
  return absl::OkStatus();
}

absl::Status JobRuntime::WaitForPromotion() {
  progress_ns_.store(0);  // waiting in the pool is not a hang
  int64_t failed_epoch = 0;  // the last epoch whose world this member could not build
  while (true) {
    if (absl::StatusOr<std::string> done = store_->TryGet(health::kDoneKey, absl::InfiniteFuture());
        done.ok()) {
      return absl::CancelledError(
          absl::StrCat("the job ended; spare ", options_.member, " was not needed"));
    }
    ASSIGN_OR_RETURN(health::Membership m, health::ReadMembership(*store_, options_.world_size,
                                                                  absl::InfiniteFuture()));
    const int rank = m.RankOf(options_.member);
    if (rank >= 0 && m.epoch > failed_epoch) {
      rank_ = rank;
      world_size_ = static_cast<int>(m.ranks.size());
      promoted_ = true;
      promotion_ = Recovery{};
      promotion_.old_epoch = m.epoch - 1;
      promotion_.epoch = m.epoch;
      promotion_.world_size = world_size_;
      promotion_.failed = m.failures;
      InitLogging(absl::StrCat("rank ", rank));
      TLOG(info, "spare {} promoted to rank {} in epoch {}, replacing {}", options_.member,
                   rank, m.epoch, m.DescribeFailures());
      // The survivors may come a build window late (they first end their own failed build),
      // so the spare waits two windows; a newer epoch ends the build at once. A failed build
      // is never retried at the same epoch (the others may hold this attempt's address): the
      // next epoch says where this member stands.
      absl::Status built = BuildWorld(m.epoch, absl::Now() + 2 * options_.build_timeout);
      if (built.ok() || not_admitted_) return built;
      failed_epoch = m.epoch;
      TLOG(warn, "building the world of epoch {} failed: {}; waiting for the next epoch",
                   m.epoch, built.ToString());
      continue;  // the next epoch may be there already
    }
    absl::SleepFor(options_.poll);
  }
}

absl::Status JobRuntime::AllowShrink(const std::vector<std::vector<int>>& groups) {
  if (rank_ != 0) return absl::OkStatus();
  return store_->Set(health::ShrinkGroupsKey(epoch_), health::ShrinkGroupsToJson(groups),
                     absl::Now() + options_.timeout);
}

absl::Status JobRuntime::BuildWorld(int64_t epoch, absl::Time deadline) {
  // Over as soon as the job says so: a rank of this epoch died or a newer one appeared.
  const health::FailureWatcher* failures = failures_.get();
  std::shared_ptr<Store> scoped = NewInterruptibleStore(
      epoch <= 1 ? store_ : std::shared_ptr<Store>(NewPrefixStore(health::EpochPrefix(epoch), store_)),
      [failures, epoch]() -> absl::Status {
        if (std::optional<std::string> over =
                failures->EpochOver(epoch, absl::Now() + absl::Seconds(1))) {
          return absl::AbortedError(
              absl::StrCat("building the world of epoch ", epoch, " stopped: ", *over));
        }
        return absl::OkStatus();
      });
  WorldSpec spec;
  spec.rank = rank_;
  spec.world_size = world_size_;
  spec.epoch = epoch;
  spec.store = scoped;
  spec.deadline = deadline;
  spec.op_timeout = options_.timeout;
  const int me = rank_;
  spec.on_peer_error = [failures, epoch, me](int peer, const absl::Status& error) {
    return failures->ExplainPeerError(epoch, peer, me, error, kPeerCauseWait);
  };
  absl::StatusOr<std::unique_ptr<Communicator>> world;
  if (options_.factory) {
    world = options_.factory(spec);
  } else {
    HostCommOptions o;
    o.rank = spec.rank;
    o.world_size = spec.world_size;
    o.store = spec.store;
    o.provider = options_.provider;
    o.name = "world";
    o.epoch = epoch;
    o.on_peer_error = spec.on_peer_error;
    // Setup within the build window; ops keep the runtime's op deadline (o.timeout also
    // bounds setup, but it is the default deadline of every op on the world and its groups).
    o.timeout = options_.timeout;
    o.setup_deadline = deadline;
    {
      absl::MutexLock lock(&mu_);
      o.endpoint = std::move(standby_);  // consumed, even by a failed build
      standby_ = nullptr;
    }
    world = CreateHostCommunicator(o);
  }
  if (!world.ok()) {
    // Ranks that enter a build at different times (one waited out an earlier, doomed build)
    // miss each other: ask the launcher for another epoch that all of them build together.
    // If a rank died instead, its replacement brings the next epoch anyway.
    (void)store_->Set(health::RebuildRequestKey(epoch),
                      absl::StrCat(options_.member, ": ", world.status().message()),
                      absl::Now() + absl::Seconds(1));
    return world.status();
  }
  {
    absl::MutexLock lock(&mu_);
    world_ptr_ = nullptr;
    groups_.clear();
  }
  world_ = std::move(world).value();
  epoch_ = epoch;
  {
    absl::MutexLock lock(&mu_);
    world_ptr_ = world_.get();
    watched_epoch_ = epoch;
    aborted_ = false;
  }
  return SelfTestWorld(epoch, deadline);
}

absl::Status JobRuntime::SelfTestWorld(int64_t epoch, absl::Time deadline) {
  const health::BurnInOptions burn = health::BurnInOptionsFromEnv(options_.member);
  if (burn.level == health::BurnInLevel::kOff) return absl::OkStatus();
  const absl::Time t0 = absl::Now();
  runtime_internal::TransportSelfTestOptions o;
  o.bytes = burn.level == health::BurnInLevel::kFull ? (1 << 20) : (64 << 10);
  o.inject = burn.inject == "transport";
  o.deadline = std::max(deadline, absl::Now() + absl::Seconds(1));
  const health::FailureWatcher* failures = failures_.get();
  o.interrupted = [failures, epoch]() -> absl::Status {
    if (std::optional<std::string> over =
            failures->EpochOver(epoch, absl::Now() + absl::Seconds(1))) {
      return absl::AbortedError(absl::StrCat("the transport self-test of epoch ", epoch,
                                             " stopped: ", *over));
    }
    return absl::OkStatus();
  };
  absl::Status tested = runtime_internal::TransportSelfTest(*world_, epoch, o);
  const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - t0);
  if (absl::IsDataLoss(tested)) {
    // Through the burn-in's failure path: the report, then this process leaves and the
    // launcher replaces it (a worker at startup by a spare; a promoted spare by the next).
    not_admitted_ = true;
    const std::string report = absl::StrCat("failed ", tested.message(), " ms=", ms);
    (void)store_->Set(health::BurnInKey(options_.member), report, absl::Now() + options_.timeout);
    TLOG(error, "transport self-test of {} in epoch {}: {}; not admitted", options_.member,
         epoch, report);
    return absl::FailedPreconditionError(absl::StrCat(
        "burn-in of ", options_.member, " ", report,
        "; this process is not admitted (trident-run replaces it with a spare)"));
  }
  if (tested.ok()) {
    TLOG(debug, "transport self-test in epoch {}: {} bytes with each neighbour, {} ms", epoch,
         o.bytes, ms);
  }
  return tested;
}

absl::StatusOr<Recovery> JobRuntime::Recover(const absl::Status& cause, absl::Time deadline) {
  const absl::Time start = absl::Now();
  progress_ns_.store(0);  // until the trainer's next Progress()
  // An op deadline without a death is what a hang looks like from a rank: trident-run asks
  // every rank for its flight recorder and names the rank at fault.
  if (absl::IsDeadlineExceeded(cause) && dumps_) dumps_->ReportDeadline(cause);
  {
    absl::MutexLock lock(&mu_);
    AbortLocked(cause.ok() ? absl::AbortedError("recovery") : cause);
  }
  Recovery r;
  r.old_epoch = epoch_;
  int64_t target = epoch_ + 1;
  int64_t seen = epoch_;  // the failures of epochs up to this one are in r.failed
  while (true) {
    // Wait for the next epoch (or the end of the job).
    absl::StatusOr<health::Membership> m;
    while (true) {
      if (absl::StatusOr<std::string> done = store_->TryGet(health::kDoneKey, deadline);
          done.ok()) {
        return absl::AbortedError(absl::StrCat("the job is ending: ", *done));
      }
      m = health::ReadMembership(*store_, world_size_, deadline);
      RETURN_IF_ERROR(m.status());
      if (m->epoch >= target) break;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "no new epoch after epoch ", epoch_, " by the deadline; the failure (",
            cause.ToString(), ") was not a rank's death"));
      }
      absl::SleepFor(options_.poll);
    }
    if (r.wait == absl::ZeroDuration()) r.wait = absl::Now() - start;
    for (int64_t e = seen + 1; e <= m->epoch; ++e) {
      absl::StatusOr<health::Membership> em =
          e == m->epoch ? m : [&]() -> absl::StatusOr<health::Membership> {
            ASSIGN_OR_RETURN(std::string json, store_->Get(health::MembershipKey(e), deadline));
            return health::Membership::FromJson(json);
          }();
      RETURN_IF_ERROR(em.status());
      for (const health::Failure& f : em->failures) r.failed.push_back(f);
    }
    seen = m->epoch;
    const int rank = m->RankOf(options_.member);
    if (rank < 0) {
      const bool failed = std::any_of(r.failed.begin(), r.failed.end(), [&](const FailedRank& f) {
        return f.member == options_.member;
      });
      if (failed) {
        return absl::FailedPreconditionError(absl::StrCat(
            "this process (", options_.member, ") was declared dead in epoch ", m->epoch, ": ",
            m->DescribeFailures()));
      }
      // A shrink dropped this rank's group: wait in the pool like a spare.
      TLOG(info, "{} left the world in epoch {} with the group of {}; waiting as a spare",
                   options_.member, m->epoch, m->DescribeFailures());
      {
        absl::MutexLock lock(&mu_);
        world_ptr_ = nullptr;
        groups_.clear();
      }
      world_.reset();
      rank_ = -1;
      absl::Status promoted = WaitForPromotion();
      if (absl::IsCancelled(promoted)) {
        return absl::CancelledError(absl::StrCat("the job ended; ", options_.member,
                                                 " left the world in a shrink and was not "
                                                 "needed again"));
      }
      RETURN_IF_ERROR(promoted);
      promotion_.rejoined = true;
      return promotion_;
    }
    rank_ = rank;
    world_size_ = static_cast<int>(m->ranks.size());
    const absl::Time build_start = absl::Now();
    absl::Status built =
        BuildWorld(m->epoch, std::min(deadline, absl::Now() + options_.build_timeout));
    if (built.ok()) {
      r.epoch = m->epoch;
      r.world_size = world_size_;
      r.rebuild = absl::Now() - build_start;
      TLOG(info, "recovered into epoch {} as rank {} (after: {}) in {}", r.epoch, rank_,
                   m->DescribeFailures(), absl::FormatDuration(absl::Now() - start));
      return r;
    }
    if (not_admitted_) return built;
    TLOG(warn, "building the world of epoch {} failed: {}; waiting for the next epoch",
                 m->epoch, built.ToString());
    if (absl::Now() >= deadline) return built;
    target = m->epoch + 1;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Init(RuntimeOptions options) {
  RETURN_IF_ERROR(Annotate(CheckParams(), "Runtime::Init"));  // a bad setting, not an abort
  if (options.store == nullptr && options.world_size < 0 &&
      std::getenv("TRIDENT_WORLD_SIZE") == nullptr) {
    // Another launcher's job (torchrun's WORLD_SIZE, srun's SLURM_NTASKS; params.cc's
    // fallbacks): its ranks have no launcher that records deaths and promotes spares, so a
    // runtime of one process each would silently train apart. Say so instead.
    if (const int64_t size = ParamInt("TRIDENT_WORLD_SIZE"); size > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Runtime::Init: this process is one of ", size,
          " ranks started by another launcher (WORLD_SIZE or SLURM_NTASKS is set, "
          "TRIDENT_WORLD_SIZE is not); the fault-tolerant runtime needs trident-run's "
          "launcher: start the job with trident-run --nproc-per-node ", size,
          " (or build communicators with CreateHostCommunicator and a store)"));
    }
    return std::unique_ptr<Runtime>(new StandaloneRuntime());
  }
  auto rt = std::make_unique<JobRuntime>(std::move(options));
  RETURN_IF_ERROR(rt->Start());
  return std::unique_ptr<Runtime>(std::move(rt));
}

CommunicatorFactory NcclWorldFactory(int device) {
  return [device](const WorldSpec& spec) -> absl::StatusOr<std::unique_ptr<Communicator>> {
    NcclCommOptions o;
    o.rank = spec.rank;
    o.world_size = spec.world_size;
    o.store = spec.store;
    o.device = device;
    o.timeout = spec.op_timeout;
    o.setup_deadline = spec.deadline;
    o.name = "world";
    o.epoch = spec.epoch;
    return CreateNcclCommunicator(std::move(o));
  };
}

}  // namespace trident
