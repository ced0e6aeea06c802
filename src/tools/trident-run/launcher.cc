#include "tools/trident-run/launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
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
      "TRIDENT_STORE", "TRIDENT_JOB_TOKEN",  "TRIDENT_JOB_ID", "TRIDENT_MEMBER", "TRIDENT_ROLE",
      // torchrun's names, set from the same values (an outer launcher's never leak in).
      "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
  return *names;
}

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released), as
// torchrun picks one; 29500 (torchrun's default) if no socket can be had.
int FreeLoopbackPort() {
  int port = 29500;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return port;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
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
      health_poll_(std::max(ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS") / 20,
                            absl::Milliseconds(5))) {}

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
    TLOG(info, "removed {} shm regions left in /dev/shm by dead processes", stale);
  }
  job_id_ = !options_.job_id.empty() ? options_.job_id
                                     : EnvOr("TRIDENT_JOB_ID", absl::StrCat("job-", RandomHex(6)));
  if (absl::Status status = SetUpStore(); !status.ok()) {
    Message(absl::StrCat("cannot set up the store: ", status.ToString()));
    return kExitJobFailed;
  }
  TLOG(debug, "job {} with {} ranks, store {}; parameters:\n{}", job_id_, options_.nproc,
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
  coordinator_ = std::make_unique<health::Coordinator>(
      health::Coordinator::Options{
          .world_size = options_.nproc,
          .spares = options_.spares,
          .heartbeat_timeout = ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS")},
      this, absl::Now());
  hang_watch_ = std::make_unique<HangWatch>(
      HangWatch::Hooks{
          .store = [this] { return store(); },
          .probe = [this](const std::string& m) { return Probe(m); },
          .pid = [this](const std::string& m) { Child* c = FindMember(m); return c ? c->pid : -1; },
          .say = [this](const std::string& line) { Message(line); }},
      ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS"));
  Watch(signal_fd);
  // A failed job: the verdict of the rings the ranks left in the store (the store is still up).
  if (exit_status_ == kExitJobFailed) hang_watch_->Final(coordinator_->membership().ranks);
  relay_.Finish(absl::Now() + kRelayDrain);
  // The store outlived every rank; now it can go.
  store_.reset();
  if (store_server_ != nullptr) store_server_->Shutdown();
  store_server_.reset();

  if (!exit_status_.has_value()) {
    const std::vector<std::string>& recoveries = coordinator_->recoveries();
    if (!recoveries.empty()) {
      Message(absl::StrCat("job finished after ", recoveries.size(), " recovery(ies): ",
                           absl::StrJoin(recoveries, "; ")));
    }
    return kExitOk;
  }
  if (*exit_status_ == kExitJobFailed) {
    Message(absl::StrCat("job failed: ", coordinator_->failure().value_or("unknown")));
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
      absl::StrCat("TRIDENT_RANK=", child.spare() ? -1 : child.index),
      absl::StrCat("TRIDENT_WORLD_SIZE=", options_.nproc),
      absl::StrCat("TRIDENT_LOCAL_RANK=", child.index),  // one host: its place among us
      absl::StrCat("TRIDENT_STORE=", store_url_),
      absl::StrCat("TRIDENT_JOB_TOKEN=", job_token_),
      absl::StrCat("TRIDENT_JOB_ID=", job_id_),
      absl::StrCat("TRIDENT_MEMBER=", child.member),
      absl::StrCat("TRIDENT_ROLE=", child.spare() ? "spare" : "worker"),
  };
  if (!options_.burn_in.empty()) set.push_back(absl::StrCat("TRIDENT_BURN_IN=", options_.burn_in));
  // torchrun's conventions, for programs (torch.distributed) that read them. A spare has no
  // rank until promoted: no RANK for it (Trident's runtime tells it its rank).
  if (!child.spare()) {
    set.push_back(absl::StrCat("RANK=", child.index));
    set.push_back(absl::StrCat("LOCAL_RANK=", child.index));
  }
  set.push_back(absl::StrCat("WORLD_SIZE=", options_.nproc));
  set.push_back(absl::StrCat("LOCAL_WORLD_SIZE=", options_.nproc));
  // MASTER_ADDR/MASTER_PORT: where torch's env:// rank 0 hosts its own store; the user's
  // values win. One free loopback port for the whole job.
  static const int master_port = FreeLoopbackPort();
  if (std::getenv("MASTER_ADDR") == nullptr) {
    set.push_back(absl::StrCat("MASTER_ADDR=", kLoopback));
  }
  if (std::getenv("MASTER_PORT") == nullptr) {
    set.push_back(absl::StrCat("MASTER_PORT=", master_port));
  }
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
    Child child{index,
                spare ? health::SpareId(index - options_.nproc) : health::WorkerId(index)};
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
      coordinator_->AllGone(absl::Now());
      FollowCoordinator();
      return;
    }
    Escalate();
    absl::Time wake = next_step_;
    if (phase_ == Phase::kRunning) {
      if (absl::Now() >= next_health_poll_) {
        coordinator_->Poll(absl::Now());
        FollowCoordinator();
        next_health_poll_ = absl::Now() + health_poll_;
      }
      wake = std::min(wake, next_health_poll_);
    }
    if (phase_ == Phase::kRunning || phase_ == Phase::kGrace) {
      // Hang suspicion and the flight recorders' verdict (also while a failed job winds down,
      // so that a request in flight is answered and concluded).
      hang_watch_->Poll(absl::Now(), coordinator_->membership().ranks);
      wake = std::min(wake, absl::Now() + HangWatch::kPollEvery);
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
  health::MemberExit exit;
  exit.signal = WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0;
  exit.exit_status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
  exit.description = DescribeWaitStatus(wait_status);
  // The NCCL backend's own exits (docs/gpu.md): the rank failed; say how.
  if (exit.exit_status == 70) exit.description += " (its ncclCommAbort hung)";
  if (exit.exit_status == 71) exit.description += " (its CUDA context was lost)";
  exit.by_agent = child.last_signal != 0;
  if (!clean) relay_.CatchUp(child.index);  // its last words come before the report
  if (!clean && exit.by_agent) {
    // Stopped by trident-run (or by the SIGINT it forwarded): not a failure of its own.
    const int rank = coordinator_->RankOf(child.member);
    Message(absl::StrCat(rank >= 0 ? absl::StrCat("rank ", rank) : child.member, " ",
                         exit.description, ", after trident-run sent it ",
                         SignalName(child.last_signal)));
  }
  coordinator_->MemberExited(child.member, exit, absl::Now());
  FollowCoordinator();
}

void Launcher::FollowCoordinator() {
  const health::Coordinator::JobState state = coordinator_->state();
  if (state == health::Coordinator::JobState::kRunning) return;
  if (state == health::Coordinator::JobState::kFailed && !exit_status_.has_value()) {
    exit_status_ = kExitJobFailed;
  }
  // Idle spares see job/done and exit on their own; one that cannot (stopped, hung) is
  // stopped like any rank after the grace period, which does not fail a finished job.
  if (phase_ == Phase::kRunning) {
    phase_ = Phase::kGrace;
    next_step_ = absl::Now() + grace_;
  }
}

Launcher::Child* Launcher::FindMember(absl::string_view member) {
  for (Child& c : children_) {
    if (c.member == member) return &c;
  }
  return nullptr;
}

health::Agent::ProcessState Launcher::Probe(const std::string& member) {
  Child* child = FindMember(member);
  if (child == nullptr || !child->running) return ProcessState::kGone;
  std::string stat;
  if (!ReadFileToString(absl::StrCat("/proc/", child->pid, "/stat"), &stat)) {
    return ProcessState::kGone;
  }
  // "pid (comm) S ...": the state follows the last ')'.
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return ProcessState::kRunning;
  switch (stat[paren + 2]) {
    case 'T': return ProcessState::kStopped;
    case 't': return ProcessState::kTraced;
    case 'Z': case 'X': return ProcessState::kGone;
    default: return ProcessState::kRunning;  // running or sleeping
  }
}

void Launcher::Kill(const std::string& member) {
  Child* child = FindMember(member);
  if (child == nullptr || !child->running) return;
  if (::kill(-child->pid, SIGKILL) != 0) ::kill(child->pid, SIGKILL);
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
  if (coordinator_ != nullptr) coordinator_->Stop();
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

}  // namespace trident::run
