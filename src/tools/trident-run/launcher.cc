#include "tools/trident-run/launcher.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "tools/trident-run/process.h"

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
      "TRIDENT_STORE", "TRIDENT_JOB_TOKEN",  "TRIDENT_JOB_ID"};
  return *names;
}

std::string EnvOr(const char* name, absl::string_view fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string(fallback);
}

}  // namespace

Launcher::Launcher(LaunchOptions options, OutputWriter* out)
    : options_(std::move(options)), out_(out), relay_(out) {}

Launcher::~Launcher() {
  // Run() reaps every child before it returns; nothing may outlive the launcher.
  for (const Child& child : children_) {
    TRIDENT_CHECK(!child.running) << "rank " << child.rank << " was never reaped";
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
  Watch(signal_fd);
  relay_.Finish(absl::Now() + kRelayDrain);
  // The store outlived every rank; now it can go.
  store_.reset();
  if (store_server_ != nullptr) store_server_->Shutdown();
  store_server_.reset();

  if (!exit_status_.has_value()) return kExitOk;
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

std::vector<std::string> Launcher::ChildEnvironment(int rank) const {
  std::vector<std::string> set = {
      absl::StrCat("TRIDENT_RANK=", rank),
      absl::StrCat("TRIDENT_WORLD_SIZE=", options_.nproc),
      absl::StrCat("TRIDENT_LOCAL_RANK=", rank),  // one host: local rank is the rank
      absl::StrCat("TRIDENT_STORE=", store_url_),
      absl::StrCat("TRIDENT_JOB_TOKEN=", job_token_),
      absl::StrCat("TRIDENT_JOB_ID=", job_id_),
  };
  // Single host: libfabric's tcp provider must never pick eth0.
  for (const char* var : {"FI_TCP_IFACE", "FI_SOCKETS_IFACE"}) {
    if (std::getenv(var) == nullptr) set.push_back(absl::StrCat(var, "=lo"));
  }
  return MergeEnvironment(environ, RankVariables(), set);
}

absl::Status Launcher::SpawnAll(const std::string& path) {
  children_.reserve(options_.nproc);
  for (int rank = 0; rank < options_.nproc; ++rank) {
    ChildSpec spec{path, options_.program, ChildEnvironment(rank)};
    absl::StatusOr<SpawnedChild> spawned = SpawnChild(spec);
    if (!spawned.ok()) {
      return Annotate(spawned.status(), absl::StrCat("starting rank ", rank));
    }
    children_.push_back(Child{rank, spawned->pid});
    std::string prefix = absl::StrCat("[rank ", rank, "] ");
    relay_.Add(spawned->stdout_fd, prefix, Stream::kStdout, rank);
    relay_.Add(spawned->stderr_fd, prefix, Stream::kStderr, rank);
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
    if (!any_running()) return;
    Escalate();

    int timeout_ms = -1;
    if (next_step_ != absl::InfiniteFuture()) {
      absl::Duration left = std::max(next_step_ - absl::Now(), absl::ZeroDuration());
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
          << "waitpid(rank " << child.rank << ", pid " << child.pid << "): errno " << errno;
    }
  }
}

void Launcher::OnChildExit(Child& child, int wait_status) {
  child.running = false;
  const bool clean = WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (!clean || phase_ != Phase::kRunning) {
    // What the rank left behind in its process group (a shell's `sleep`) goes with it. Done
    // at once, while the group id cannot have been reused.
    ::kill(-child.pid, SIGKILL);
  }
  if (clean) {
    spdlog::debug("rank {} exited with status 0", child.rank);
    return;
  }
  relay_.CatchUp(child.rank);  // its last words come before the report of its exit
  const std::string reason = DescribeExit(child.rank, wait_status);
  if (child.last_signal != 0) {
    // Stopped by trident-run (or by the SIGINT it forwarded): not a failure of its own.
    Message(absl::StrCat(reason, ", after trident-run sent it ", SignalName(child.last_signal)));
    return;
  }
  Message(reason);
  RecordFailure(child.rank, reason);
  if (!first_failure_.has_value()) first_failure_ = reason;
  if (!exit_status_.has_value()) exit_status_ = kExitJobFailed;
  if (phase_ == Phase::kRunning) {
    phase_ = Phase::kGrace;
    next_step_ = absl::Now() + grace_;
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

void Launcher::RecordFailure(int rank, const std::string& reason) {
  if (store_ == nullptr) {
    if (store_unreachable_) return;
    absl::StatusOr<std::unique_ptr<Store>> store =
        ConnectStore(store_url_, job_token_, DeadlineIn(kStoreCallTimeout));
    if (!store.ok()) {
      store_unreachable_ = true;  // do not stall every later failure on it too
      Message(absl::StrCat("cannot record failures in the store at ", store_url_, ": ",
                           store.status().ToString()));
      return;
    }
    store_ = *std::move(store);
  }
  absl::Status status =
      store_->Set(absl::StrCat("job/failed/", rank), reason, DeadlineIn(kStoreCallTimeout));
  if (!status.ok()) {
    Message(absl::StrCat("cannot record the failure of rank ", rank, " in the store: ",
                         status.ToString()));
  }
}

}  // namespace trident::run
