#include "trident/runtime.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "common/op_wait.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "health/heartbeat.h"
#include "health/membership.h"

namespace trident {

struct Runtime::State {
  RuntimeOptions options;
  std::shared_ptr<Store> store;        // the training thread's connection
  std::shared_ptr<Store> watch_store;  // the watcher's (and heartbeat's) connection
  std::unique_ptr<health::Heartbeat> heartbeat;

  absl::Mutex mu;
  Communicator* world ABSL_GUARDED_BY(mu) = nullptr;
  std::vector<Communicator*> groups ABSL_GUARDED_BY(mu);
  int64_t epoch ABSL_GUARDED_BY(mu) = 1;
  bool aborted ABSL_GUARDED_BY(mu) = false;  // this epoch's comms were aborted
  absl::Notification stop;
  std::thread watcher;
  // An endpoint opened ahead of the next world build (a spare's, or the next epoch's), so that
  // the build only exchanges addresses (the first open in a process costs ~0.1 s).
  std::shared_ptr<HostEndpoint> standby ABSL_GUARDED_BY(mu);
  // Unix ns of the training thread's last Progress(); 0: the hang check is paused.
  std::atomic<int64_t> progress_ns{0};

  // The heartbeat's stall check: the reason when the training thread is hung.
  std::optional<std::string> Stalled() const {
    const int64_t last = progress_ns.load(std::memory_order_relaxed);
    if (last == 0 || options.hang_timeout <= absl::ZeroDuration() || AnyThreadInOpWait()) {
      return std::nullopt;
    }
    const absl::Duration gap = absl::Now() - absl::FromUnixNanos(last);
    if (gap < options.hang_timeout) return std::nullopt;
    return absl::StrCat("the training thread made no progress for ",
                        absl::FormatDuration(absl::Trunc(gap, absl::Milliseconds(1))),
                        " (no Runtime::Progress call and no op waited on; "
                        "TRIDENT_HANG_TIMEOUT_MS=",
                        absl::ToInt64Milliseconds(options.hang_timeout), ")");
  }

  // Opens the endpoint of the next world build, off the training thread's path. Best effort:
  // without one, the build opens its own.
  bool OpenStandby() {
    absl::StatusOr<std::shared_ptr<HostEndpoint>> ep = OpenHostEndpoint(options.provider);
    if (!ep.ok()) {
      spdlog::warn("cannot open an endpoint in advance: {}", ep.status().ToString());
      return false;
    }
    absl::MutexLock lock(&mu);
    standby = *std::move(ep);
    return true;
  }

  void AbortLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (aborted) return;
    aborted = true;
    if (world != nullptr) world->Abort(status);
    for (Communicator* g : groups) g->Abort(status);
  }

  // The first failure recorded for `epoch`, if any.
  std::optional<std::string> FirstFailure(Store& s, int64_t e) {
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    const std::string prefix = absl::StrCat(health::EpochPrefix(e), "job/failed/");
    absl::StatusOr<std::vector<std::string>> keys = s.ListPrefix(prefix, deadline);
    if (!keys.ok() || keys->empty()) return std::nullopt;
    absl::StatusOr<std::string> cause = s.TryGet(keys->front(), deadline);
    return cause.ok() ? *cause : keys->front();
  }

  // Watches for failures of the current epoch and for a newer epoch; aborts at once.
  void Watch() {
    while (!stop.WaitForNotificationWithTimeout(options.poll)) {
      int64_t e;
      bool want_standby;
      {
        absl::MutexLock lock(&mu);
        if (aborted || world == nullptr) continue;
        e = epoch;
        want_standby = standby == nullptr;
      }
      if (want_standby) OpenStandby();
      std::optional<std::string> failure = FirstFailure(*watch_store, e);
      if (!failure.has_value()) {
        absl::StatusOr<std::string> current =
            watch_store->TryGet(health::kEpochKey, absl::Now() + absl::Seconds(2));
        int64_t now_epoch = 1;
        if (current.ok() && absl::SimpleAtoi(*current, &now_epoch) && now_epoch > e) {
          failure = absl::StrCat("the job moved on to epoch ", now_epoch);
        }
      }
      if (failure.has_value()) {
        absl::MutexLock lock(&mu);
        if (epoch == e) {
          AbortLocked(absl::AbortedError(absl::StrCat(*failure, " (epoch ", e, ")")));
        }
      }
    }
  }
};

Runtime::Runtime(std::unique_ptr<State> state) : state_(std::move(state)) {}

Runtime::~Runtime() {
  Finish();
  absl::MutexLock lock(&state_->mu);
  state_->world = nullptr;
  state_->groups.clear();
}

void Runtime::Progress() {
  state_->progress_ns.store(absl::ToUnixNanos(absl::Now()), std::memory_order_relaxed);
}

void Runtime::Finish() {
  state_->progress_ns.store(0);
  if (!state_->stop.HasBeenNotified()) state_->stop.Notify();
  if (state_->watcher.joinable()) state_->watcher.join();
  state_->heartbeat.reset();
}

void Runtime::SetGroups(std::vector<Communicator*> groups) {
  absl::MutexLock lock(&state_->mu);
  state_->groups = std::move(groups);
}

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Init(RuntimeOptions options) {
  auto state = std::make_unique<State>();
  if (options.rank < 0) options.rank = static_cast<int>(ParamInt("TRIDENT_RANK"));
  if (options.world_size < 0) options.world_size = static_cast<int>(ParamInt("TRIDENT_WORLD_SIZE"));
  if (options.member.empty()) options.member = ParamString("TRIDENT_MEMBER");
  if (options.member.empty()) options.member = health::WorkerId(options.rank);
  if (options.role.empty()) options.role = ParamString("TRIDENT_ROLE");
  if (options.role != "worker" && options.role != "spare") {
    return absl::InvalidArgumentError(
        absl::StrCat("TRIDENT_ROLE is '", options.role, "'; expected worker or spare"));
  }
  if (options.heartbeat == absl::ZeroDuration()) {
    options.heartbeat = ParamMillis("TRIDENT_HEARTBEAT_MS");
  }
  if (options.timeout == absl::ZeroDuration()) options.timeout = ParamMillis("TRIDENT_TIMEOUT_MS");
  if (options.hang_timeout == absl::ZeroDuration()) {
    options.hang_timeout = ParamMillis("TRIDENT_HANG_TIMEOUT_MS");
  }
  if (options.build_timeout == absl::ZeroDuration()) {
    options.build_timeout = ParamMillis("TRIDENT_BUILD_TIMEOUT_MS");
  }
  const absl::Time deadline = absl::Now() + options.timeout;
  if (options.store != nullptr) {
    state->store = options.store;
    state->watch_store = options.store;
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<Store> s, ConnectStoreFromEnv(deadline));
    state->store = std::move(s);
    ASSIGN_OR_RETURN(std::unique_ptr<Store> w, ConnectStoreFromEnv(deadline));
    state->watch_store = std::move(w);
  }
  InitLogging(options.role == "spare" ? absl::StrCat("spare ", options.member)
                                      : absl::StrCat("rank ", options.rank));
  state->options = options;
  if (options.heartbeat > absl::ZeroDuration()) {
    const State* st = state.get();
    state->heartbeat = std::make_unique<health::Heartbeat>(
        state->watch_store, options.member, options.heartbeat, [st] { return st->Stalled(); });
  }
  std::unique_ptr<Runtime> rt(new Runtime(std::move(state)));
  rt->member_ = options.member;
  rt->world_size_ = options.world_size;
  State& s = *rt->state_;

  if (options.role == "worker") {
    ASSIGN_OR_RETURN(health::Membership m,
                     health::ReadMembership(*s.store, options.world_size, deadline));
    rt->rank_ = m.RankOf(options.member);
    rt->world_size_ = static_cast<int>(m.ranks.size());
    if (m.epoch == 1 && !options.shrink_groups.empty()) {
      // Every worker writes the same groups: rank 0 may be the one that dies.
      RETURN_IF_ERROR(s.store->Set(health::ShrinkGroupsKey(1),
                                   health::ShrinkGroupsToJson(options.shrink_groups), deadline));
    }
    if (rt->rank_ < 0) {
      const bool failed = std::any_of(m.failures.begin(), m.failures.end(),
                                      [&](const health::Failure& f) {
                                        return f.member == options.member;
                                      });
      if (failed) {
        return absl::FailedPreconditionError(absl::StrCat(
            "member ", options.member, " holds no rank in epoch ", m.epoch,
            " (it was declared dead: ", m.DescribeFailures(), ")"));
      }
      // A shrink dropped this worker's group before it started: it waits in the pool.
      spdlog::info("{} starts in epoch {} without a rank (a shrink); waiting as a spare",
                   options.member, m.epoch);
      s.OpenStandby();
      RETURN_IF_ERROR(rt->WaitForPromotion());
      rt->promotion_.rejoined = true;
      s.watcher = std::thread([&s] { s.Watch(); });
      return rt;
    }
    absl::Status built =
        rt->BuildWorld(m.epoch, std::min(deadline, absl::Now() + options.build_timeout));
    if (!built.ok()) {
      // A rank may have died during the setup: its place goes to a spare in a new epoch.
      spdlog::warn("building the world of epoch {} failed: {}; waiting for the next epoch",
                   m.epoch, built.ToString());
      rt->epoch_ = m.epoch;
      ASSIGN_OR_RETURN(rt->promotion_, rt->Recover(built, deadline));
    } else if (m.epoch > 1) {
      // Started late, into an epoch that already replaced someone.
      rt->promotion_.old_epoch = m.epoch - 1;
      rt->promotion_.epoch = m.epoch;
      rt->promotion_.world_size = rt->world_size_;
    }
  } else {
    // The spare pool: open the endpoint, announce, then wait for an epoch that gives this
    // member a rank.
    const bool opened = s.OpenStandby();
    RETURN_IF_ERROR(s.store->Set(health::SpareKey(options.member), "ready", deadline));
    spdlog::info("spare {} ready (store connected{}); waiting to be promoted", options.member,
                 opened ? ", fabric endpoint open" : "");
    RETURN_IF_ERROR(rt->WaitForPromotion());
  }
  s.watcher = std::thread([&s] { s.Watch(); });
  return rt;
}

absl::Status Runtime::WaitForPromotion() {
  State& s = *state_;
  s.progress_ns.store(0);  // waiting in the pool is not a hang
  const RuntimeOptions& options = s.options;
  int64_t failed_epoch = 0;  // an epoch whose world this spare could not build
  while (true) {
    if (s.store->TryGet(health::kDoneKey, absl::InfiniteFuture()).ok()) {
      return absl::CancelledError(
          absl::StrCat("the job ended; spare ", member_, " was not needed"));
    }
    ASSIGN_OR_RETURN(health::Membership m,
                     health::ReadMembership(*s.store, options.world_size, absl::InfiniteFuture()));
    const int rank = m.RankOf(member_);
    if (rank >= 0 && m.epoch > failed_epoch) {
      rank_ = rank;
      world_size_ = static_cast<int>(m.ranks.size());
      promoted_ = true;
      promotion_ = Recovery{};
      promotion_.old_epoch = m.epoch - 1;
      promotion_.epoch = m.epoch;
      promotion_.world_size = world_size_;
      for (const health::Failure& f : m.failures) {
        promotion_.failed.push_back(
            {f.rank, f.member, f.cause, f.last_seen_unix_ms, f.verdict_unix_ms});
      }
      InitLogging(absl::StrCat("rank ", rank));
      spdlog::info("spare {} promoted to rank {} in epoch {}, replacing {}", member_, rank,
                   m.epoch, m.DescribeFailures());
      // The survivors may come late (they first wait out their own failed build), so the
      // spare gives them the whole op timeout. A failed build is never retried at the same
      // epoch (the others may hold this attempt's address): the next epoch says where this
      // member stands.
      absl::Status built = BuildWorld(m.epoch, absl::Now() + options.timeout);
      if (built.ok()) return absl::OkStatus();
      failed_epoch = m.epoch;
      spdlog::warn("building the world of epoch {} failed: {}; waiting for the next epoch",
                   m.epoch, built.ToString());
    }
    absl::SleepFor(options.poll);
  }
}

absl::Status Runtime::AllowShrink(const std::vector<std::vector<int>>& groups) {
  if (rank_ != 0) return absl::OkStatus();
  State& s = *state_;
  return s.store->Set(health::ShrinkGroupsKey(epoch_), health::ShrinkGroupsToJson(groups),
                      absl::Now() + s.options.timeout);
}

absl::Status Runtime::BuildWorld(int64_t epoch, absl::Time deadline) {
  State& s = *state_;
  HostCommOptions o;
  o.rank = rank_;
  o.world_size = world_size_;
  o.store = epoch <= 1 ? s.store : NewPrefixStore(health::EpochPrefix(epoch), s.store);
  o.provider = s.options.provider;
  o.timeout = s.options.timeout;
  o.name = "world";
  o.epoch = epoch;
  // CreateHostCommunicator's setup is bound by o.timeout; keep it within `deadline`.
  o.timeout = std::min(s.options.timeout, std::max(deadline - absl::Now(), absl::Milliseconds(1)));
  {
    absl::MutexLock lock(&s.mu);
    o.endpoint = std::move(s.standby);  // consumed, even by a failed build
    s.standby = nullptr;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> world = CreateHostCommunicator(o);
  if (!world.ok()) {
    // Ranks that enter a build at different times (one waited out an earlier, doomed build)
    // miss each other: ask the agent for another epoch that all of them build together. If
    // a rank died instead, its replacement brings the next epoch anyway.
    (void)s.store->Set(health::RebuildRequestKey(epoch),
                       absl::StrCat(member_, ": ", world.status().message()),
                       absl::Now() + absl::Seconds(1));
    return world.status();
  }
  {
    absl::MutexLock lock(&s.mu);
    s.world = nullptr;
    s.groups.clear();
  }
  world_ = std::move(world).value();
  epoch_ = epoch;
  absl::MutexLock lock(&s.mu);
  s.world = world_.get();
  s.epoch = epoch;
  s.aborted = false;
  return absl::OkStatus();
}

absl::StatusOr<Recovery> Runtime::Recover(const absl::Status& cause, absl::Time deadline) {
  State& s = *state_;
  const absl::Time start = absl::Now();
  s.progress_ns.store(0);  // until the trainer's next Progress()
  {
    absl::MutexLock lock(&s.mu);
    s.AbortLocked(cause.ok() ? absl::AbortedError("recovery") : cause);
  }
  Recovery r;
  r.old_epoch = epoch_;
  int64_t target = epoch_ + 1;
  while (true) {
    // Wait for the next epoch (or the end of the job).
    absl::StatusOr<health::Membership> m;
    while (true) {
      if (absl::StatusOr<std::string> done = s.store->TryGet(health::kDoneKey, deadline);
          done.ok()) {
        return absl::AbortedError(absl::StrCat("the job is ending: ", *done));
      }
      m = health::ReadMembership(*s.store, world_size_, deadline);
      RETURN_IF_ERROR(m.status());
      if (m->epoch >= target) break;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "no new epoch after epoch ", epoch_, " by the deadline; the failure (",
            cause.ToString(), ") was not a rank's death"));
      }
      absl::SleepFor(s.options.poll);
    }
    if (r.wait == absl::ZeroDuration()) r.wait = absl::Now() - start;
    for (int64_t e = target; e <= m->epoch; ++e) {
      absl::StatusOr<health::Membership> em =
          e == m->epoch ? m : [&]() -> absl::StatusOr<health::Membership> {
            ASSIGN_OR_RETURN(std::string json, s.store->Get(health::MembershipKey(e), deadline));
            return health::Membership::FromJson(json);
          }();
      RETURN_IF_ERROR(em.status());
      for (const health::Failure& f : em->failures) {
        r.failed.push_back({f.rank, f.member, f.cause, f.last_seen_unix_ms, f.verdict_unix_ms});
      }
    }
    const int rank = m->RankOf(member_);
    if (rank < 0) {
      const bool failed = std::any_of(r.failed.begin(), r.failed.end(),
                                      [&](const FailedRank& f) { return f.member == member_; });
      if (failed) {
        return absl::FailedPreconditionError(absl::StrCat(
            "this process (", member_, ") was declared dead in epoch ", m->epoch, ": ",
            m->DescribeFailures()));
      }
      // A shrink dropped this rank's group: wait in the pool like a spare.
      spdlog::info("{} left the world in epoch {} with the group of {}; waiting as a spare",
                   member_, m->epoch, m->DescribeFailures());
      {
        absl::MutexLock lock(&s.mu);
        s.world = nullptr;
        s.groups.clear();
      }
      world_.reset();
      rank_ = -1;
      absl::Status promoted = WaitForPromotion();
      if (absl::IsCancelled(promoted)) {
        return absl::CancelledError(absl::StrCat("the job ended; ", member_,
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
        BuildWorld(m->epoch, std::min(deadline, absl::Now() + s.options.build_timeout));
    if (built.ok()) {
      r.epoch = m->epoch;
      r.world_size = world_size_;
      r.rebuild = absl::Now() - build_start;
      spdlog::info("recovered into epoch {} as rank {} (after: {}) in {}", r.epoch, rank_,
                   m->DescribeFailures(),
                   absl::FormatDuration(absl::Now() - start));
      return r;
    }
    spdlog::warn("building the world of epoch {} failed: {}; waiting for the next epoch",
                 m->epoch, built.ToString());
    if (absl::Now() >= deadline) return built;
    target = m->epoch + 1;
  }
}

}  // namespace trident
