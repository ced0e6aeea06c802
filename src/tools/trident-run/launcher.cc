#include "tools/trident-run/launcher.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "tools/trident-run/process.h"
#include "transport/fabric/fabric_transport.h"

extern char** environ;

namespace trident::run {
namespace {

constexpr char kLoopback[] = "127.0.0.1";
constexpr char kDefaultPath[] = "/usr/local/bin:/usr/bin:/bin";
// A store call made while ranks are dying must not hold up the shutdown for long.
constexpr absl::Duration kStoreCallTimeout = absl::Seconds(2);

// The variables trident-run sets for each rank; inherited values are replaced.
const std::vector<std::string>& RankVariables() {
  static const auto* names = new std::vector<std::string>{
      "TRIDENT_RANK",  "TRIDENT_WORLD_SIZE", "TRIDENT_LOCAL_RANK",
      "TRIDENT_STORE", "TRIDENT_JOB_TOKEN",  "TRIDENT_JOB_ID", "TRIDENT_MEMBER", "TRIDENT_ROLE"};
  return *names;
}

bool ReadFileToString(const std::string& path, std::string* out) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return false;
  char buf[1024];
  size_t n;
  out->clear();
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  std::fclose(f);
  return true;
}

std::string EnvOr(const char* name, absl::string_view fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string(fallback);
}

}  // namespace

Launcher::Launcher(LaunchOptions options, OutputWriter* out)
    : options_(std::move(options)), out_(out), relay_(out),
      heartbeat_timeout_(ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS")),
      detector_({.timeout = ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS"),
                 .confirm_window = ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS")}),
      health_poll_(std::max(ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS") / 20,
                            absl::Milliseconds(5))) {
  membership_ = health::Membership::Initial(options_.nproc);
}

Launcher::~Launcher() {
  // Run() reaps every child before it returns; nothing may outlive the launcher.
  for (const Child& child : children_) {
    TRIDENT_CHECK(!child.running) << child.member << " was never reaped";
  }
}

void Launcher::Message(absl::string_view text) {
  out_->Write(Stream::kStderr, absl::StrCat("trident-run: ", text, "\n"));
}

int Launcher::Run() {
  TRIDENT_CHECK(options_.action == LaunchOptions::Action::kRun && options_.nproc >= 1 &&
                !options_.program.empty())
      << "Launcher::Run needs parsed options";
  // Before any thread exists (the store server's, the relay's), so that every thread
  // inherits the mask and these signals reach only the signalfd.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  TRIDENT_CHECK(pthread_sigmask(SIG_BLOCK, &mask, nullptr) == 0) << "pthread_sigmask";
  ::signal(SIGPIPE, SIG_IGN);  // a closed stdout must show up as EPIPE, not kill the job
  const int signal_fd = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  TRIDENT_CHECK(signal_fd >= 0) << "signalfd: errno " << errno;
  absl::Cleanup close_signal_fd = [signal_fd] { ::close(signal_fd); };

  // Read now, so that a malformed value stops trident-run before any rank starts.
  grace_ = std::max(ParamMillis("TRIDENT_KILL_GRACE_MS"), absl::ZeroDuration());
  absl::StatusOr<std::string> path =
      ResolveProgram(options_.program[0], EnvOr("PATH", kDefaultPath));
  if (!path.ok()) {
    Message(path.status().message());
    return kExitNotFound;
  }

  // Regions of an earlier job's ranks whose agent was killed with them.
  if (const int stale = RemoveShmRegionsOfDeadProcesses(); stale > 0) {
    spdlog::info("removed {} shm regions left in /dev/shm by dead processes", stale);
  }
  job_id_ = !options_.job_id.empty() ? options_.job_id
                                     : EnvOr("TRIDENT_JOB_ID", absl::StrCat("job-", RandomHex(6)));
  if (absl::Status status = SetUpStore(); !status.ok()) {
    Message(absl::StrCat("cannot set up the store: ", status.ToString()));
    return kExitJobFailed;
  }
  spdlog::debug("job {} with {} ranks, store {}; parameters:\n{}", job_id_, options_.nproc,
                store_url_, DescribeParams());

  if (absl::Status status = SpawnAll(*path); !status.ok()) {
    Message(status.message());
    SignalRunning(SIGKILL);
    for (Child& child : children_) {
      int wait_status;
      while (::waitpid(child.pid, &wait_status, 0) < 0 && errno == EINTR) {
      }
      child.running = false;
    }
    relay_.Finish(absl::Now() + kRelayDrain);
    return kExitJobFailed;
  }
  relay_.Start();
  started_ = absl::Now();
  Watch(signal_fd);
  relay_.Finish(absl::Now() + kRelayDrain);
  // The store outlived every rank; now it can go.
  store_.reset();
  if (store_server_ != nullptr) store_server_->Shutdown();
  store_server_.reset();

  if (!exit_status_.has_value()) {
    if (!recoveries_.empty()) {
      Message(absl::StrCat("job finished after ", recoveries_.size(), " recovery(ies): ",
                           absl::StrJoin(recoveries_, "; ")));
    }
    return kExitOk;
  }
  if (*exit_status_ == kExitJobFailed) {
    Message(absl::StrCat("job failed: ", *first_failure_));
  } else {
    Message(absl::StrCat("job interrupted by ", SignalName(first_signal_)));
  }
  return *exit_status_;
}

absl::Status Launcher::SetUpStore() {
  if (options_.store_url.has_value()) {
    // Someone else hosts it; connect only when there is a failure to record.
    store_url_ = *options_.store_url;
    job_token_ = EnvOr("TRIDENT_JOB_TOKEN", "");
    return absl::OkStatus();
  }
  job_token_ = RandomHex(32);
  TcpStoreServerOptions server_options;
  server_options.bind_address = kLoopback;
  server_options.port = 0;
  server_options.job_token = job_token_;
  ASSIGN_OR_RETURN(store_server_, StartTcpStoreServer(server_options));
  store_url_ = absl::StrCat("tcp://", kLoopback, ":", store_server_->port());
  // Connect now: if trident-run cannot reach its own store, no rank could either.
  ASSIGN_OR_RETURN(store_, NewTcpStore(kLoopback, store_server_->port(), job_token_,
                                       DeadlineIn(absl::Seconds(10))));
  return absl::OkStatus();
}

std::vector<std::string> Launcher::ChildEnvironment(const Child& child) const {
  std::vector<std::string> set = {
      absl::StrCat("TRIDENT_RANK=", child.rank),
      absl::StrCat("TRIDENT_WORLD_SIZE=", options_.nproc),
      absl::StrCat("TRIDENT_LOCAL_RANK=", child.index),  // one host: its place among us
      absl::StrCat("TRIDENT_STORE=", store_url_),
      absl::StrCat("TRIDENT_JOB_TOKEN=", job_token_),
      absl::StrCat("TRIDENT_JOB_ID=", job_id_),
      absl::StrCat("TRIDENT_MEMBER=", child.member),
      absl::StrCat("TRIDENT_ROLE=", child.spare() ? "spare" : "worker"),
  };
  // Single host: libfabric's tcp provider must never pick eth0.
  for (const char* var : {"FI_TCP_IFACE", "FI_SOCKETS_IFACE"}) {
    if (std::getenv(var) == nullptr) set.push_back(absl::StrCat(var, "=lo"));
  }
  return MergeEnvironment(environ, RankVariables(), set);
}

absl::Status Launcher::SpawnAll(const std::string& path) {
  const int total = options_.nproc + options_.spares;
  children_.reserve(total);
  for (int index = 0; index < total; ++index) {
    const bool spare = index >= options_.nproc;
    Child child{index, spare ? health::SpareId(index - options_.nproc) : health::WorkerId(index),
                0};
    child.rank = spare ? -1 : index;
    ChildSpec spec{path, options_.program, ChildEnvironment(child)};
    absl::StatusOr<SpawnedChild> spawned = SpawnChild(spec);
    if (!spawned.ok()) {
      return Annotate(spawned.status(), absl::StrCat("starting ", spare ? "spare " : "rank ",
                                                     spare ? child.member : absl::StrCat(index)));
    }
    child.pid = spawned->pid;
    std::string prefix =
        spare ? absl::StrCat("[spare ", child.member, "] ") : absl::StrCat("[rank ", index, "] ");
    relay_.Add(spawned->stdout_fd, prefix, Stream::kStdout, index);
    relay_.Add(spawned->stderr_fd, prefix, Stream::kStderr, index);
    children_.push_back(std::move(child));
  }
  return absl::OkStatus();
}

void Launcher::Watch(int signal_fd) {
  auto any_running = [this] {
    return std::any_of(children_.begin(), children_.end(),
                       [](const Child& c) { return c.running; });
  };
  while (true) {
    // SIGCHLD only says "some child changed"; asking every running child is exact.
    ReapExited();
    if (!any_running()) {
      // Every rank is gone while a failure waited for a replacement: the job failed.
      if (!pending_.empty() && !done_set_) FailPending("no rank is left");
      return;
    }
    Escalate();
    absl::Time wake = next_step_;
    if (phase_ == Phase::kRunning && !done_set_) {
      if (absl::Now() >= next_health_poll_) {
        PollHealth();
        next_health_poll_ = absl::Now() + health_poll_;
      }
      wake = std::min(wake, next_health_poll_);
    }

    int timeout_ms = -1;
    if (wake != absl::InfiniteFuture()) {
      absl::Duration left = std::max(wake - absl::Now(), absl::ZeroDuration());
      timeout_ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))),
                            INT_MAX));
    }
    pollfd pfd{signal_fd, POLLIN, 0};
    if (::poll(&pfd, 1, timeout_ms) < 0) {
      TRIDENT_CHECK(errno == EINTR) << "poll(signalfd): errno " << errno;
      continue;
    }
    signalfd_siginfo info;
    while (::read(signal_fd, &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
      if (info.ssi_signo == SIGINT || info.ssi_signo == SIGTERM) {
        OnSignal(static_cast<int>(info.ssi_signo));
      }
    }
  }
}

void Launcher::ReapExited() {
  for (Child& child : children_) {
    if (!child.running) continue;
    int wait_status = 0;
    pid_t pid = ::waitpid(child.pid, &wait_status, WNOHANG);
    if (pid == child.pid) {
      OnChildExit(child, wait_status);
    } else {
      TRIDENT_CHECK(pid == 0 || errno == EINTR)
          << "waitpid(" << child.member << ", pid " << child.pid << "): errno " << errno;
    }
  }
}

void Launcher::OnChildExit(Child& child, int wait_status) {
  child.running = false;
  // A child killed by a signal could not close its shm endpoints.
  if (WIFSIGNALED(wait_status)) RemoveShmRegionsOf(child.pid);
  const bool clean = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (!clean || phase_ != Phase::kRunning) {
    // What the rank left behind in its process group (a shell's `sleep`) goes with it. Done
    // at once, while the group id cannot have been reused.
    ::kill(-child.pid, SIGKILL);
  }
  if (child.handled) return;  // declared dead and killed by us; already replaced or reported
  if (clean) {
    spdlog::debug("{} exited with status 0", child.member);
    if (child.rank >= 0) {
      child.finished = true;
      const bool all_done = std::all_of(children_.begin(), children_.end(), [](const Child& c) {
        return c.rank < 0 || c.finished;
      });
      if (all_done && !pending_.empty() && phase_ == Phase::kRunning && !done_set_) {
        // A dead rank was still waiting for its replacement: the job did not finish.
        FailPending("the other ranks finished meanwhile");
      } else if (all_done) {
        // Idle spares see job/done and exit 0; one that cannot (stopped, hung) is stopped
        // like any rank after the grace period, which does not fail the job.
        SetDone("finished");
        if (phase_ == Phase::kRunning) {
          phase_ = Phase::kGrace;
          next_step_ = absl::Now() + grace_;
        }
      }
    } else {
      ready_spares_.erase(std::remove(ready_spares_.begin(), ready_spares_.end(), child.member),
                          ready_spares_.end());
    }
    return;
  }
  relay_.CatchUp(child.index);  // its last words come before the report of its exit
  const std::string cause = DescribeWaitStatus(wait_status);
  if (child.last_signal != 0) {
    // Stopped by trident-run (or by the SIGINT it forwarded): not a failure of its own.
    Message(absl::StrCat(child.rank >= 0 ? absl::StrCat("rank ", child.rank) : child.member,
                         " ", cause, ", after trident-run sent it ",
                         SignalName(child.last_signal)));
    return;
  }
  OnMemberDeath(child, cause);
}

void Launcher::OnMemberDeath(Child& child, const std::string& cause, absl::Time last_seen) {
  detector_.Forget(child.member);
  if (child.rank < 0) {
    ready_spares_.erase(std::remove(ready_spares_.begin(), ready_spares_.end(), child.member),
                        ready_spares_.end());
    if (phase_ == Phase::kRunning && !done_set_) {
      Message(absl::StrCat("spare ", child.member, " ", cause, " while idle; ",
                           ready_spares_.size(), " spare(s) ready"));
    }
    TryReplace();  // a failure may have been waiting for this spare
    return;
  }
  const std::string reason = absl::StrCat("rank ", child.rank, " ", cause);
  Message(reason);
  RecordFailure(child.rank, reason);
  pending_.push_back({child.rank, child.member, cause, absl::ToUnixMillis(last_seen),
                      absl::ToUnixMillis(absl::Now())});
  child.rank = -1;
  if (pending_since_ == absl::InfiniteFuture()) pending_since_ = absl::Now();
  TryReplace();
}

void Launcher::TryReplace() {
  if (pending_.empty() || phase_ != Phase::kRunning || done_set_) return;
  std::string why_not;
  const bool someone_finished = std::any_of(children_.begin(), children_.end(),
                                            [](const Child& c) { return c.finished; });
  const auto starting = std::count_if(children_.begin(), children_.end(), [](const Child& c) {
    return c.spare() && c.running && c.rank < 0 && !c.ready;
  });
  Store* s = someone_finished ? nullptr : store();
  if (someone_finished) {
    why_not = "other ranks have already finished";
  } else if (s == nullptr) {
    why_not = "the store is unreachable";
  } else if (ready_spares_.size() >= pending_.size()) {
    absl::StatusOr<health::Membership> next = health::PublishNextEpoch(
        *s, membership_, pending_, ready_spares_, DeadlineIn(kStoreCallTimeout));
    if (next.ok()) return EnterEpoch(*std::move(next));
    why_not = std::string(next.status().message());
  } else if (starting > 0 && absl::Now() - pending_since_ < kSpareStartWait) {
    // Spares still starting up (a failure right at the start) are worth waiting for.
    if (!waiting_said_) {
      Message(absl::StrCat("waiting up to ", absl::FormatDuration(kSpareStartWait), " for ",
                           starting, " starting spare(s)"));
      waiting_said_ = true;
    }
    return;
  } else if (absl::StatusOr<std::string> groups =
                 s->TryGet(health::ShrinkGroupsKey(membership_.epoch),
                           DeadlineIn(kStoreCallTimeout));
             groups.ok()) {
    // The trainer can go on with fewer ranks (lm-trainer --elastic-dp): drop the groups of
    // the dead ranks instead.
    absl::StatusOr<health::Membership> next = [&]() -> absl::StatusOr<health::Membership> {
      ASSIGN_OR_RETURN(std::vector<std::vector<int>> g, health::ShrinkGroupsFromJson(*groups));
      return health::PublishShrunkEpoch(*s, membership_, pending_, g,
                                        DeadlineIn(kStoreCallTimeout));
    }();
    if (next.ok()) return EnterEpoch(*std::move(next));
    why_not = absl::StrCat(ready_spares_.size(), " spare(s) ready for ", pending_.size(),
                           " failure(s), and ", next.status().message());
  } else if (absl::Now() - started_ < 2 * heartbeat_timeout_ &&
             std::any_of(children_.begin(), children_.end(),
                         [](const Child& c) { return c.running && c.rank >= 0; })) {
    // Right after the launch the ranks may not have named their shrink groups yet (a trainer
    // with --elastic-dp does so as it connects): give them a moment (said only to jobs that
    // use the runtime, i.e. beat).
    const bool runtime_job = std::any_of(children_.begin(), children_.end(), [this](const Child& c) {
      return detector_.watching(c.member);
    });
    if (!waiting_said_ && runtime_job) {
      Message("no spare ready; waiting a moment for the ranks to say whether the job can shrink");
      waiting_said_ = true;
    }
    return;
  } else {
    why_not = absl::StrCat(ready_spares_.size(), " spare(s) ready for ", pending_.size(),
                           " failure(s)");
  }
  FailPending(why_not);
}

void Launcher::FailPending(const std::string& why_not) {
  const health::Failure& f = pending_.front();
  std::string failure = absl::StrCat("rank ", f.rank, " ", f.cause);
  if (options_.spares > 0 || absl::StrContains(why_not, "shrink")) {
    absl::StrAppend(&failure, " and no spare could replace it (", why_not, ")");
  }
  if (!first_failure_.has_value()) first_failure_ = failure;
  if (!exit_status_.has_value()) exit_status_ = kExitJobFailed;
  SetDone(absl::StrCat("failed: ", failure));
  phase_ = Phase::kGrace;
  next_step_ = absl::Now() + grace_;
}

void Launcher::EnterEpoch(health::Membership next) {
  const int old_size = static_cast<int>(membership_.ranks.size());
  membership_ = std::move(next);
  for (Child& c : children_) {
    if (!c.running || c.handled) continue;
    const int rank = membership_.RankOf(c.member);
    if (c.rank < 0 && rank >= 0) {
      ready_spares_.erase(std::remove(ready_spares_.begin(), ready_spares_.end(), c.member),
                          ready_spares_.end());
    } else if (c.rank >= 0 && rank < 0) {
      // Retired by a shrink: initialised, alive, and back in the pool.
      c.ready = true;
      ready_spares_.push_back(c.member);
    }
    c.rank = rank;
  }
  for (const health::Failure& f : membership_.failures) {
    const std::string& holder =
        f.rank < static_cast<int>(membership_.ranks.size()) ? membership_.ranks[f.rank] : "";
    std::string line = absl::StrCat("epoch ", membership_.epoch, ": ");
    if (membership_.ranks.size() == static_cast<size_t>(old_size)) {
      absl::StrAppend(&line, "spare ", holder, " takes rank ", f.rank, " (", f.member, " ",
                      f.cause, ")");
    } else {
      absl::StrAppend(&line, "no spare for rank ", f.rank, " (", f.member, " ", f.cause,
                      "); the job shrinks from ", old_size, " to ", membership_.ranks.size(),
                      " ranks");
    }
    Message(absl::StrCat(line, "; ", ready_spares_.size(), " spare(s) left"));
    recoveries_.push_back(line);
  }
  if (!membership_.retired.empty()) {
    Message(absl::StrCat("epoch ", membership_.epoch, ": ",
                         absl::StrJoin(membership_.retired, ", "),
                         " left the world with the dead rank's group and wait as spares"));
  }
  pending_.clear();
  pending_since_ = absl::InfiniteFuture();
  waiting_said_ = false;
}

Launcher::Child* Launcher::FindMember(absl::string_view member) {
  for (Child& c : children_) {
    if (c.member == member) return &c;
  }
  return nullptr;
}

std::optional<std::string> Launcher::ConfirmDead(const std::string& member) {
  Child* child = FindMember(member);
  if (child == nullptr || !child->running) return "the process is gone";
  // A live process whose heartbeat stopped itself: its training thread is stuck.
  if (Store* s = store(); s != nullptr && detector_.state(member) ==
                                              health::FailureDetector::State::kSuspected) {
    if (absl::StatusOr<std::string> why =
            s->TryGet(health::StalledKey(member), DeadlineIn(kStoreCallTimeout));
        why.ok()) {
      return absl::StrCat("it reported: ", *why);
    }
  }
  std::string stat;
  if (!ReadFileToString(absl::StrCat("/proc/", child->pid, "/stat"), &stat)) {
    return "the process is gone";
  }
  // "pid (comm) S ...": the state follows the last ')'.
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return std::nullopt;
  switch (stat[paren + 2]) {
    case 'T': return "its process is stopped (SIGSTOP?)";
    case 't': return "its process is stopped by a debugger";
    case 'Z': case 'X': return "its process has exited";
    default: return std::nullopt;  // running or sleeping: wait for the confirm window
  }
}

void Launcher::PollHealth() {
  Store* s = store();
  if (s == nullptr) return;
  const absl::Time deadline = DeadlineIn(kStoreCallTimeout);
  const absl::Time now = absl::Now();
  for (Child& c : children_) {
    if (!c.running || c.handled) continue;
    absl::StatusOr<std::string> beat = s->TryGet(health::HeartbeatKey(c.member), deadline);
    int64_t counter = 0;
    const bool beats = detector_.watching(c.member);
    if (beat.ok() && absl::SimpleAtoi(*beat, &counter)) {
      // Only members that beat are watched: a program without Runtime never does.
      if (!beats) detector_.Watch(c.member, now);
      detector_.Observe(c.member, counter, now);
      c.stopped_since = absl::InfiniteFuture();
    } else if (!beats) {
      // Not beating (yet): a process stopped for a heartbeat timeout is dead all the same
      // (e.g. SIGSTOP before its first beat).
      std::optional<std::string> stopped = ConfirmDead(c.member);
      if (!stopped.has_value() || !absl::StrContains(*stopped, "stopped")) {
        c.stopped_since = absl::InfiniteFuture();
      } else if (c.stopped_since == absl::InfiniteFuture()) {
        c.stopped_since = now;
      } else if (now - c.stopped_since >= heartbeat_timeout_) {
        if (::kill(-c.pid, SIGKILL) != 0) ::kill(c.pid, SIGKILL);
        c.handled = true;
        OnMemberDeath(c, absl::StrCat("declared dead: ", *stopped, " for ",
                                      absl::FormatDuration(absl::Trunc(now - c.stopped_since,
                                                                       absl::Milliseconds(1))),
                                      " before its first heartbeat; killed"),
                      c.stopped_since);
        continue;
      }
    }
    if (c.spare() && c.rank < 0 && !c.ready &&
        s->TryGet(health::SpareKey(c.member), deadline).ok()) {
      c.ready = true;
      ready_spares_.push_back(c.member);
      spdlog::debug("spare {} is ready", c.member);
    }
  }
  // Peers' reports of transport errors: the rank's member is suspect at once (the detector
  // still wants a confirmation before a verdict).
  if (absl::StatusOr<std::vector<std::string>> reports =
          s->ListPrefix(health::SuspectPrefix(membership_.epoch), deadline);
      reports.ok()) {
    const size_t prefix = health::SuspectPrefix(membership_.epoch).size();
    for (const std::string& key : *reports) {
      if (!reported_.insert(key).second) continue;
      // "<rank>/<reporter>"
      std::pair<std::string, std::string> who = absl::StrSplit(key.substr(prefix), '/');
      int rank = -1, reporter = -1;
      if (!absl::SimpleAtoi(who.first, &rank) || !absl::SimpleAtoi(who.second, &reporter) ||
          rank < 0 || rank >= static_cast<int>(membership_.ranks.size())) {
        continue;
      }
      absl::StatusOr<std::string> why = s->TryGet(key, deadline);
      const std::string& member = membership_.ranks[rank];
      spdlog::info("rank {} ({}) reported by rank {}: {}", rank, member, reporter,
                   why.ok() ? *why : key);
      detector_.Suspect(member, absl::StrCat("a peer's transport error: ", why.ok() ? *why : key),
                        now, absl::StrCat("rank ", reporter));
    }
  }
  TryReplace();  // a failure may be waiting for a spare that just became ready
  // A rank could not build the current epoch's world though no rank died (they entered the
  // build at different times): every rank builds again in the next epoch.
  if (pending_.empty() && !done_set_ && rebuilds_ < kMaxRebuilds) {
    if (absl::StatusOr<std::string> why =
            s->TryGet(health::RebuildRequestKey(membership_.epoch), deadline);
        why.ok()) {
      absl::StatusOr<health::Membership> next =
          health::PublishNextEpoch(*s, membership_, {}, ready_spares_, deadline);
      if (next.ok()) {
        ++rebuilds_;
        Message(absl::StrCat("epoch ", next->epoch, ": the world of epoch ", membership_.epoch,
                             " could not be built (", *why, "); every rank builds it again"));
        EnterEpoch(*std::move(next));
      }
    }
  }
  for (const health::FailureDetector::Verdict& v :
       detector_.Check(absl::Now(), [this](const std::string& m) { return ConfirmDead(m); })) {
    Child* child = FindMember(v.member);
    if (child == nullptr || !child->running) continue;
    // A hung process must not come back to life in the new epoch: kill it first.
    if (::kill(-child->pid, SIGKILL) != 0) ::kill(child->pid, SIGKILL);
    child->handled = true;
    OnMemberDeath(*child, absl::StrCat("declared dead: ", v.cause, "; killed"), v.last_beat);
  }
}

void Launcher::OnSignal(int sig) {
  if (first_signal_ != 0) {
    Message(absl::StrCat("got ", SignalName(sig), " again; killing the ranks"));
    SignalRunning(SIGKILL);
    phase_ = Phase::kKilling;
    next_step_ = absl::InfiniteFuture();
    return;
  }
  first_signal_ = sig;
  if (!exit_status_.has_value()) exit_status_ = 128 + sig;
  Message(absl::StrCat("got ", SignalName(sig), "; forwarding it to the ranks"));
  SignalRunning(sig);
  if (phase_ == Phase::kRunning) {
    phase_ = Phase::kGrace;
    next_step_ = absl::Now() + grace_;
  }
}

void Launcher::Escalate() {
  if (phase_ == Phase::kRunning || absl::Now() < next_step_) return;
  const auto running = std::count_if(children_.begin(), children_.end(),
                                     [](const Child& c) { return c.running; });
  if (phase_ == Phase::kGrace) {
    Message(absl::StrCat(running, " rank(s) still running after the grace period of ",
                         absl::FormatDuration(grace_), " (TRIDENT_KILL_GRACE_MS); sending SIGTERM"));
    SignalRunning(SIGTERM);
    phase_ = Phase::kTerminating;
    next_step_ = absl::Now() + kTermToKill;
  } else if (phase_ == Phase::kTerminating) {
    Message(absl::StrCat(running, " rank(s) still running ", absl::FormatDuration(kTermToKill),
                         " after SIGTERM; sending SIGKILL"));
    SignalRunning(SIGKILL);
    phase_ = Phase::kKilling;
    next_step_ = absl::InfiniteFuture();
  }
}

void Launcher::SignalRunning(int sig) {
  for (Child& child : children_) {
    if (!child.running) continue;
    // The whole process group: a shell's children go too. The group cannot be reused while
    // its leader (the child) is not reaped.
    if (::kill(-child.pid, sig) != 0) ::kill(child.pid, sig);
    child.last_signal = sig;
  }
}

Store* Launcher::store() {
  if (store_ != nullptr) return store_.get();
  if (store_unreachable_) return nullptr;
  absl::StatusOr<std::unique_ptr<Store>> store =
      ConnectStore(store_url_, job_token_, DeadlineIn(kStoreCallTimeout));
  if (!store.ok()) {
    store_unreachable_ = true;  // do not stall every later failure on it too
    Message(absl::StrCat("cannot reach the store at ", store_url_, ": ",
                         store.status().ToString()));
    return nullptr;
  }
  store_ = *std::move(store);
  return store_.get();
}

void Launcher::RecordFailure(int rank, const std::string& reason) {
  Store* s = store();
  if (s == nullptr) return;
  absl::Status status =
      s->Set(health::FailedKey(membership_.epoch, rank), reason, DeadlineIn(kStoreCallTimeout));
  if (!status.ok()) {
    Message(absl::StrCat("cannot record the failure of rank ", rank, " in the store: ",
                         status.ToString()));
  }
}

void Launcher::SetDone(const std::string& reason) {
  if (done_set_) return;
  done_set_ = true;
  Store* s = store();
  if (s == nullptr) return;
  absl::Status status = s->Set(health::kDoneKey, reason, DeadlineIn(kStoreCallTimeout));
  if (!status.ok()) {
    Message(absl::StrCat("cannot record the end of the job in the store: ", status.ToString()));
  }
}

}  // namespace trident::run
