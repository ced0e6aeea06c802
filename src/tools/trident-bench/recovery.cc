// trident-bench recovery: how fast a job notices a dead or stopped rank and trains again.
// Runs lm-trainer under `trident-run --spares 1` once per injected failure (a random worker,
// SIGKILL or SIGSTOP, at a random step after the first checkpoint), reads the trainer's
// logfmt lines, and prints nearest-rank p50/p99 of each measure against its goal, and the
// peer-replica transfer rate against `trident-bench sendrecv` of the same size, measured in
// the same invocation. One process: it starts trident-run itself (no launcher around it).
#include "recovery.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/params.h"
#include "nlohmann/json.hpp"
#include "recovery_stats.h"

extern char** environ;

namespace trident::bench {
namespace {

constexpr char kRecoveryUsage[] = R"(usage: trident-bench recovery [flags]

Measures failure detection and recovery of a real job. One process, no trident-run around
it: it runs `trident-run --nproc N --spares 1 -- lm-trainer --tp TP --pp PP --dp DP
--steps S --ckpt-dir TMP --ckpt-every C --inject-fault wK:STEP:SIG` --runs times, each run
with one failure: a random worker wK, a random STEP in [C+2, S-C+1] (after the first
checkpoint, with steps left to redo), and SIG taken in turn from --signals. The children get
FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo; TRIDENT_* settings pass through from this environment
(TRIDENT_HEARTBEAT_TIMEOUT_MS sets the detector's timeout and the SIGSTOP goal).

Measures, from the trainer's logfmt lines. All times are the host's realtime (Unix) clock,
read with absl::Now in each process and printed in whole milliseconds; the ranks and the
agent run on this host, so they read the same clock:
  SIGKILL -> verdict    `recovery ... verdict_unix_ms` (the agent's clock when trident-run
                        recorded its verdict) minus `fault_injected ... unix_ms` (the faulty
                        rank's clock just before it raised the signal on itself).
                        Goal: p99 < 100 ms.
  SIGSTOP -> verdict    the same for the SIGSTOP runs: the detector suspects a rank silent
                        for the heartbeat timeout and confirms through /proc that it is
                        stopped. Goal: p99 < heartbeat timeout + 10%.
  verdict -> restored state
                        `recover_ms`: rank 0's clock once every rank has restored its state
                        (peer replica or checkpoint) and agreed on it, minus the verdict's.
                        No goal.
  verdict -> first completed step
                        `first_step_after_recovery ... since_verdict_ms`: rank 0's clock at
                        the end of the first training step completed after the recovery,
                        minus the verdict's. Goal: p99 < 2000 ms.
p50 and p99 are nearest-rank percentiles of the recovered runs' values: sorted[ceil(p n /
100) - 1]; with fewer than 100 runs p99 is the maximum.

Peer-replica transfer: `peer_bytes` / `peer_ms` (the replacing rank's fetch of its buddy's
copy of the state, timed on that rank) for each run that restored from a peer; p50 in GB/s
(1e9 B/s). Then, in the same invocation, `trident-run --nproc 2 -- trident-bench sendrecv
--min-bytes B --max-bytes B` with B the p50 of the peer bytes, and the ratio of the two
(sendrecv's algbw: B bytes / the time of one exchange in which each of the two ranks sends
B bytes to the other, calls back to back).

Output: one line per run (signal, member, step, outcome, the recovery line's numbers), then
a Markdown table (n, p50, p99, goal, whether p99 meets it) and the transfer line. A run that
did not exit 0 with all three lines is "failed"; one that outlived --timeout is "hung" (its
trident-run gets SIGTERM, again after 2 s, then its process group SIGKILL; the ranks die with
it). Their logs are kept and their paths printed. Exit status: 0 when every run recovered and
the sendrecv reference ran; 1 otherwise; 2 on bad usage.

Flags (--flag value or --flag=value):
  --runs N            failures, one per run, >= 1 (default 20)
  --seed N            seed of the random choices; 0: a random seed, printed (default 0)
  --signals LIST      comma-separated kill and stop, used in turn (default kill,stop)
  --nproc N           ranks; must equal tp x pp x dp (default 8)
  --tp N, --pp N, --dp N   the trainer's layout (default 2, 2, 2)
  --steps N           training steps per run (default 40)
  --ckpt-every N      checkpoint period in steps (default 10)
  --timeout DURATION  deadline of each run and of the sendrecv run, e.g. 120s or 2m; a bare
                      number is seconds (default 120s)
  --trident-run PATH  default: trident-run next to this executable
  --trainer PATH      default: lm-trainer next to this executable
  --keep-logs         keep every run's log (default: only failed and hung runs')
  --json FILE         also write the runs and the table's numbers as JSON
)";

[[noreturn]] void RecoveryUsageError(const std::string& message) {
  std::fprintf(stderr, "trident-bench recovery: %s\n(try trident-bench recovery --help)\n",
               message.c_str());
  std::exit(2);
}

struct RecoveryConfig {
  int runs = 20;
  uint64_t seed = 0;
  std::vector<int> signals = {SIGKILL, SIGSTOP};
  int nproc = 8;
  int tp = 2, pp = 2, dp = 2;
  int steps = 40;
  int ckpt_every = 10;
  absl::Duration timeout = absl::Seconds(120);
  std::string trident_run;
  std::string trainer;
  bool keep_logs = false;
  std::string json;
};

const char* SignalName(int sig) { return sig == SIGSTOP ? "SIGSTOP" : "SIGKILL"; }
const char* SignalFlag(int sig) { return sig == SIGSTOP ? "STOP" : "KILL"; }

// This executable's path (/proc/self/exe), or "" if it cannot be read.
std::string SelfPath() {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "" : p.string();
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

RecoveryConfig ParseRecoveryArgs(int argc, char** argv) {
  RecoveryConfig c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    const size_t eq = a.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) RecoveryUsageError(a + " needs a value");
      return argv[++i];
    };
    auto integer = [&](int lo) -> int {
      const std::string v = next();
      int n = 0;
      if (!absl::SimpleAtoi(v, &n) || n < lo) {
        RecoveryUsageError(absl::StrCat(a, ": expected an integer >= ", lo, ", got \"", v, "\""));
      }
      return n;
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kRecoveryUsage, stdout);
      std::exit(0);
    } else if (a == "--runs") {
      c.runs = integer(1);
    } else if (a == "--seed") {
      const std::string v = next();
      if (!absl::SimpleAtoi(v, &c.seed)) RecoveryUsageError("--seed: not a number: " + v);
    } else if (a == "--signals") {
      c.signals.clear();
      for (absl::string_view s : absl::StrSplit(next(), ',', absl::SkipEmpty())) {
        if (s == "kill" || s == "KILL") {
          c.signals.push_back(SIGKILL);
        } else if (s == "stop" || s == "STOP") {
          c.signals.push_back(SIGSTOP);
        } else {
          RecoveryUsageError(absl::StrCat("--signals: unknown signal \"", s, "\" (kill, stop)"));
        }
      }
      if (c.signals.empty()) RecoveryUsageError("--signals: empty");
    } else if (a == "--nproc") {
      c.nproc = integer(2);
    } else if (a == "--tp") {
      c.tp = integer(1);
    } else if (a == "--pp") {
      c.pp = integer(1);
    } else if (a == "--dp") {
      c.dp = integer(1);
    } else if (a == "--steps") {
      c.steps = integer(1);
    } else if (a == "--ckpt-every") {
      c.ckpt_every = integer(1);
    } else if (a == "--timeout") {
      const std::string v = next();
      double seconds = 0;
      absl::Duration d;
      if (absl::SimpleAtod(v, &seconds)) {
        d = absl::Seconds(seconds);
      } else if (!absl::ParseDuration(v, &d)) {
        RecoveryUsageError("--timeout: not a duration: " + v);
      }
      if (d <= absl::ZeroDuration()) RecoveryUsageError("--timeout must be > 0");
      c.timeout = d;
    } else if (a == "--trident-run") {
      c.trident_run = next();
    } else if (a == "--trainer") {
      c.trainer = next();
    } else if (a == "--keep-logs") {
      c.keep_logs = true;
    } else if (a == "--json") {
      c.json = next();
    } else {
      RecoveryUsageError("unknown flag " + a);
    }
  }
  if (c.tp * c.pp * c.dp != c.nproc) {
    RecoveryUsageError(absl::StrFormat("--nproc %d is not tp x pp x dp = %d x %d x %d", c.nproc,
                                       c.tp, c.pp, c.dp));
  }
  if (c.steps < c.ckpt_every + 2) {
    RecoveryUsageError(absl::StrFormat(
        "--steps %d: need at least --ckpt-every + 2 = %d (the failure comes after the first "
        "checkpoint is committed)",
        c.steps, c.ckpt_every + 2));
  }
  return c;
}

// How a child ended.
struct ChildExit {
  bool hung = false;   // outlived the deadline and was killed
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  absl::Duration elapsed;
  std::string error;  // could not be started
  std::string Describe() const {
    if (!error.empty()) return error;
    if (signal != 0) return absl::StrCat("killed by signal ", signal, " (", strsignal(signal), ")");
    return absl::StrCat("exit ", exit_code);
  }
};

// Runs argv[0] with `env`, stdout and stderr to `log_path`, in its own process group, dying
// with this process (PR_SET_PDEATHSIG). Past `timeout`: SIGTERM (trident-run forwards it to
// the ranks), SIGTERM again 2 s later (it kills them at once), and 3 s later SIGKILL to the
// process group; the ranks die with trident-run.
ChildExit RunChild(const std::vector<std::string>& args, const std::vector<std::string>& env,
                   const std::string& log_path, absl::Duration timeout) {
  ChildExit result;
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    result.error = absl::StrCat("cannot open ", log_path, ": ", std::strerror(errno));
    return result;
  }
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  std::vector<char*> argv, envp;
  for (const std::string& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  for (const std::string& s : env) envp.push_back(const_cast<char*>(s.c_str()));
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const absl::Time start = absl::Now();
  const pid_t pid = ::fork();
  if (pid == 0) {  // async-signal-safe calls only until execve
    ::setpgid(0, 0);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) _exit(1);
    if (::dup2(log_fd, STDOUT_FILENO) < 0 || ::dup2(log_fd, STDERR_FILENO) < 0) _exit(126);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    const char* parts[] = {"trident-bench recovery: cannot execute ", argv[0], "\n"};
    for (const char* part : parts) {
      const ssize_t n = ::write(STDERR_FILENO, part, std::strlen(part));
      (void)n;
    }
    _exit(127);
  }
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  if (pid < 0) {
    result.error = absl::StrCat("fork: ", std::strerror(errno));
    return result;
  }
  ::setpgid(pid, pid);  // also here, so a kill of the group cannot precede the child's call
  // Poll: the measures come from the log, so 10 ms of latency here costs nothing.
  auto wait_until = [&](absl::Time deadline, int* status) {
    while (true) {
      const pid_t r = ::waitpid(pid, status, WNOHANG);
      if (r == pid) return true;
      if (r < 0 && errno != EINTR) {  // cannot happen for our own child; never report exit 0
        result.error = absl::StrCat("waitpid: ", std::strerror(errno));
        return true;
      }
      if (absl::Now() >= deadline) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
  };
  int status = 0;
  if (!wait_until(start + timeout, &status)) {
    result.hung = true;
    ::kill(pid, SIGTERM);
    if (!wait_until(absl::Now() + absl::Seconds(2), &status)) {
      ::kill(pid, SIGTERM);
      if (!wait_until(absl::Now() + absl::Seconds(3), &status)) {
        ::kill(-pid, SIGKILL);
        pid_t r;
        while ((r = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
        }
        if (r < 0) result.error = absl::StrCat("waitpid: ", std::strerror(errno));
      }
    }
  }
  result.elapsed = absl::Now() - start;
  if (!result.error.empty()) return result;
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// This environment with FI_TCP_IFACE=lo and FI_SOCKETS_IFACE=lo.
std::vector<std::string> ChildEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry = *e;
    if (absl::StartsWith(entry, "FI_TCP_IFACE=") || absl::StartsWith(entry, "FI_SOCKETS_IFACE=")) {
      continue;
    }
    env.emplace_back(entry);
  }
  env.push_back("FI_TCP_IFACE=lo");
  env.push_back("FI_SOCKETS_IFACE=lo");
  return env;
}

struct RunResult {
  int index = 0;
  int signal = 0;
  std::string member;
  int step = 0;
  std::string outcome;  // "recovered", "FAILED: ...", "HUNG: ..."
  bool recovered = false;
  bool hung = false;
  ChildExit exit;
  RunLog log;
  std::string log_path;
  bool log_kept = false;
};

std::string FormatRunLine(const RunResult& r, int runs) {
  std::string line = absl::StrFormat("run %d/%d: %s %s at step %d: %s (%.1f s)", r.index, runs,
                                     SignalName(r.signal), r.member, r.step, r.outcome,
                                     absl::ToDoubleSeconds(r.exit.elapsed));
  if (r.log.recovery && r.log.fault) {
    const RecoveryLine& rec = *r.log.recovery;
    absl::StrAppend(&line,
                    absl::StrFormat(": epoch=%d dead_rank=%d cause=%s signal->verdict=%d "
                                    "recover_ms=%d source=%s peer_bytes=%d peer_ms=%.2f",
                                    rec.epoch, rec.dead_rank, rec.cause,
                                    rec.verdict_unix_ms - r.log.fault->unix_ms, rec.recover_ms,
                                    rec.source, rec.peer_bytes, rec.peer_ms));
  }
  if (r.log.first_step) {
    absl::StrAppend(&line, " first_step_ms=", r.log.first_step->since_verdict_ms);
  }
  if (r.log.recovery_lines > 1) {
    absl::StrAppend(&line, " (", r.log.recovery_lines, " recovery lines; the first is measured)");
  }
  if (r.log_kept && !r.recovered) absl::StrAppend(&line, "; log: ", r.log_path);
  return line;
}

// What went wrong with a run that exited (not hung), or "" when it recovered.
std::string CheckRun(const RunResult& r) {
  if (!r.exit.error.empty()) return r.exit.error;
  if (r.exit.signal != 0 || r.exit.exit_code != 0) {
    return absl::StrCat("trident-run ", r.exit.Describe());
  }
  if (!r.log.fault) return "exit 0 but no fault_injected line";
  if (r.log.fault->member != r.member || r.log.fault->signal != r.signal) {
    return absl::StrCat("exit 0 but the fault_injected line names ", r.log.fault->member,
                        " and signal ", r.log.fault->signal);
  }
  if (!r.log.recovery) return "exit 0 but no recovery line";
  if (!r.log.first_step) return "exit 0 but no first_step_after_recovery line";
  return "";
}

nlohmann::json OptionalJson(const std::optional<double>& v) {
  return v.has_value() ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

int RunRecoveryBench(int argc, char** argv) {
  RecoveryConfig c = ParseRecoveryArgs(argc, argv);
  const std::string self = SelfPath();
  if (self.empty()) {
    std::fprintf(stderr, "trident-bench recovery: cannot read /proc/self/exe\n");
    return 1;
  }
  const std::string bin_dir = std::filesystem::path(self).parent_path().string();
  if (c.trident_run.empty()) c.trident_run = bin_dir + "/trident-run";
  if (c.trainer.empty()) c.trainer = bin_dir + "/lm-trainer";
  for (const std::string* p : {&c.trident_run, &c.trainer}) {
    if (!IsExecutableFile(*p)) {
      std::fprintf(stderr,
                   "trident-bench recovery: %s is not an executable file (--trident-run, "
                   "--trainer)\n",
                   p->c_str());
      return 1;
    }
  }
  if (c.seed == 0) c.seed = std::random_device()() | 1;
  std::mt19937_64 rng(c.seed);
  const int64_t heartbeat_ms =
      absl::ToInt64Milliseconds(ParamMillis("TRIDENT_HEARTBEAT_TIMEOUT_MS"));

  const char* tmpdir = std::getenv("TMPDIR");
  std::string work = absl::StrCat(tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/tmp",
                                  "/trident-bench-recovery-XXXXXX");
  if (::mkdtemp(work.data()) == nullptr) {
    std::fprintf(stderr, "trident-bench recovery: mkdtemp %s: %s\n", work.c_str(),
                 std::strerror(errno));
    return 1;
  }
  const std::vector<std::string> env = ChildEnvironment();
  const int step_lo = c.ckpt_every + 2;
  const int step_hi = std::max(step_lo, c.steps - c.ckpt_every + 1);

  std::printf(
      "# trident-bench recovery: %d runs of %s on %d ranks (tp %d x pp %d x dp %d) + "
      "1 spare under %s; %d steps, checkpoint every %d; failure at a random step in "
      "[%d, %d] of a random worker; signals %s in turn; heartbeat timeout %lld ms "
      "(TRIDENT_HEARTBEAT_TIMEOUT_MS); seed %llu; deadline %s per run; work dir %s\n",
      c.runs, c.trainer.c_str(), c.nproc, c.tp, c.pp, c.dp, c.trident_run.c_str(), c.steps,
      c.ckpt_every, step_lo, step_hi,
      absl::StrJoin(c.signals, ",", [](std::string* out, int s) { out->append(SignalFlag(s)); })
          .c_str(),
      static_cast<long long>(heartbeat_ms), static_cast<unsigned long long>(c.seed),
      absl::FormatDuration(c.timeout).c_str(), work.c_str());
  std::fflush(stdout);

  std::vector<RunResult> results;
  std::uniform_int_distribution<int> pick_member(0, c.nproc - 1);
  std::uniform_int_distribution<int> pick_step(step_lo, step_hi);
  for (int i = 1; i <= c.runs; ++i) {
    RunResult r;
    r.index = i;
    r.signal = c.signals[(i - 1) % c.signals.size()];
    r.member = absl::StrCat("w", pick_member(rng));
    r.step = pick_step(rng);
    const std::string ckpt_dir = absl::StrCat(work, "/ckpt", i);
    r.log_path = absl::StrCat(work, "/run", i, ".log");
    std::vector<std::string> args = {
        c.trident_run,
        "--nproc",
        absl::StrCat(c.nproc),
        "--spares",
        "1",
        "--",
        c.trainer,
        "--tp",
        absl::StrCat(c.tp),
        "--pp",
        absl::StrCat(c.pp),
        "--dp",
        absl::StrCat(c.dp),
        "--steps",
        absl::StrCat(c.steps),
        "--eval-every",
        absl::StrCat(c.steps),
        "--ckpt-dir",
        ckpt_dir,
        "--ckpt-every",
        absl::StrCat(c.ckpt_every),
        "--inject-fault",
        absl::StrCat(r.member, ":", r.step, ":", SignalFlag(r.signal))};
    r.exit = RunChild(args, env, r.log_path, c.timeout);
    std::error_code ec;
    std::filesystem::remove_all(ckpt_dir, ec);
    r.log = ParseRunLog(ReadFile(r.log_path));
    if (r.exit.hung) {
      r.hung = true;
      r.outcome =
          absl::StrCat("HUNG: still running after ", absl::FormatDuration(c.timeout), "; killed");
    } else if (std::string problem = CheckRun(r); !problem.empty()) {
      r.outcome = "FAILED: " + problem;
    } else {
      r.recovered = true;
      r.outcome = "recovered";
    }
    r.log_kept = !r.recovered || c.keep_logs;
    if (!r.log_kept) std::filesystem::remove(r.log_path, ec);
    std::printf("%s\n", FormatRunLine(r, c.runs).c_str());
    std::fflush(stdout);
    results.push_back(std::move(r));
  }

  std::vector<double> kill_ms, stop_ms, restore_ms, first_ms, rates, peer_bytes, peer_ms;
  std::map<std::string, int> sources;
  int recovered = 0, failed = 0, hung = 0;
  for (const RunResult& r : results) {
    if (r.hung) ++hung;
    if (!r.recovered) {
      if (!r.hung) ++failed;
      continue;
    }
    ++recovered;
    const double to_verdict =
        static_cast<double>(r.log.recovery->verdict_unix_ms - r.log.fault->unix_ms);
    (r.signal == SIGSTOP ? stop_ms : kill_ms).push_back(to_verdict);
    restore_ms.push_back(static_cast<double>(r.log.recovery->recover_ms));
    first_ms.push_back(static_cast<double>(r.log.first_step->since_verdict_ms));
    ++sources[r.log.recovery->source];
    if (auto gbps = TransferGbps(r.log.recovery->peer_bytes, r.log.recovery->peer_ms)) {
      rates.push_back(*gbps);
      peer_bytes.push_back(static_cast<double>(r.log.recovery->peer_bytes));
      peer_ms.push_back(r.log.recovery->peer_ms);
    }
  }

  // The transport's bandwidth for a message of the peer state's size, in the same sitting.
  bool reference_failed = false;
  std::optional<BenchRow> sendrecv;
  std::string sendrecv_note;
  const std::optional<double> bytes_p50 = Percentile(peer_bytes, 50);
  if (bytes_p50.has_value()) {
    const std::string b = absl::StrCat(static_cast<int64_t>(*bytes_p50));
    const std::string log_path = work + "/sendrecv.log";
    ChildExit e = RunChild(
        {c.trident_run, "--nproc", "2", "--", self, "sendrecv", "--min-bytes", b, "--max-bytes", b},
        env, log_path, c.timeout);
    sendrecv = ParseLastBenchRow(ReadFile(log_path));
    std::error_code ec;
    if (e.hung || e.signal != 0 || e.exit_code != 0 || !sendrecv) {
      reference_failed = true;
      sendrecv.reset();
      sendrecv_note = absl::StrCat("trident-bench sendrecv of ", b, " bytes failed (",
                                   e.hung ? "hung" : e.Describe(), "); log: ", log_path);
    } else if (!c.keep_logs) {
      std::filesystem::remove(log_path, ec);
    }
  }

  const double stop_goal = static_cast<double>(heartbeat_ms) * 1.1;
  std::vector<MeasureRow> rows = {
      {"SIGKILL -> verdict", kill_ms, 100.0, "< 100 ms"},
      {"SIGSTOP -> verdict", stop_ms, stop_goal,
       absl::StrFormat("< %.0f ms (heartbeat timeout %lld ms + 10%%)", stop_goal,
                       static_cast<long long>(heartbeat_ms))},
      {"verdict -> restored state", restore_ms, std::nullopt, "-"},
      {"verdict -> first completed step", first_ms, 2000.0, "< 2000 ms"},
  };
  std::printf(
      "\n%d of %d runs recovered, %d failed, %d hung; heartbeat timeout %lld ms; "
      "state from: %s\n\n%s\n",
      recovered, c.runs, failed, hung, static_cast<long long>(heartbeat_ms),
      sources.empty() ? "-" : absl::StrJoin(sources, ", ", absl::PairFormatter(" ")).c_str(),
      FormatMeasureTable(rows).c_str());
  const std::optional<double> rate_p50 = Percentile(rates, 50);
  std::optional<double> ratio;
  if (!rate_p50.has_value()) {
    std::printf("peer-replica transfer: none measured (%s)\n",
                recovered == 0 ? "no run recovered" : "no restore came from a peer replica");
  } else {
    const auto [lo, hi] = std::minmax_element(peer_bytes.begin(), peer_bytes.end());
    const std::string bytes_note =
        *lo == *hi
            ? absl::StrFormat("state of %.0f bytes", *bytes_p50)
            : absl::StrFormat("states of %.0f to %.0f bytes, p50 %.0f", *lo, *hi, *bytes_p50);
    std::string line = absl::StrFormat(
        "peer-replica transfer: p50 %.2f GB/s over %d runs (%s, p50 %.2f ms)", *rate_p50,
        static_cast<int>(rates.size()), bytes_note, *Percentile(peer_ms, 50));
    if (sendrecv) {
      ratio = sendrecv->algbw_gbps > 0 ? std::optional<double>(*rate_p50 / sendrecv->algbw_gbps)
                                       : std::nullopt;
      absl::StrAppend(&line, absl::StrFormat("; trident-bench sendrecv of %d bytes: %.2f GB/s",
                                             sendrecv->bytes, sendrecv->algbw_gbps));
      if (ratio) absl::StrAppend(&line, absl::StrFormat(" (ratio %.2f)", *ratio));
    } else {
      absl::StrAppend(&line, "; ", sendrecv_note);
    }
    std::printf("%s\n", line.c_str());
  }

  std::vector<std::string> kept;
  for (const RunResult& r : results) {
    if (r.log_kept) kept.push_back(r.log_path);
  }
  if (reference_failed || !kept.empty()) {
    std::printf("\nlogs kept in %s\n", work.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(work, ec);
  }
  if (failed + hung > 0) {
    std::printf("\n%d run(s) did not recover:\n", failed + hung);
    for (const RunResult& r : results) {
      if (!r.recovered)
        std::printf("  run %d: %s; log: %s\n", r.index, r.outcome.c_str(), r.log_path.c_str());
    }
  }
  std::fflush(stdout);

  if (!c.json.empty()) {
    nlohmann::json runs = nlohmann::json::array();
    for (const RunResult& r : results) {
      nlohmann::json j = {{"run", r.index},
                          {"signal", SignalName(r.signal)},
                          {"member", r.member},
                          {"step", r.step},
                          {"outcome", r.outcome},
                          {"recovered", r.recovered},
                          {"hung", r.hung},
                          {"seconds", absl::ToDoubleSeconds(r.exit.elapsed)},
                          {"log", r.log_kept ? nlohmann::json(r.log_path) : nlohmann::json()}};
      if (r.log.fault) j["fault_unix_ms"] = r.log.fault->unix_ms;
      if (r.log.recovery) {
        const RecoveryLine& rec = *r.log.recovery;
        j["epoch"] = rec.epoch;
        j["dead_rank"] = rec.dead_rank;
        j["cause"] = rec.cause;
        j["verdict_unix_ms"] = rec.verdict_unix_ms;
        j["recover_ms"] = rec.recover_ms;
        j["source"] = rec.source;
        j["peer_bytes"] = rec.peer_bytes;
        j["peer_ms"] = rec.peer_ms;
        if (r.log.fault) j["signal_to_verdict_ms"] = rec.verdict_unix_ms - r.log.fault->unix_ms;
      }
      if (r.log.first_step) j["first_step_since_verdict_ms"] = r.log.first_step->since_verdict_ms;
      runs.push_back(std::move(j));
    }
    nlohmann::json measures = nlohmann::json::array();
    for (const MeasureRow& row : rows) {
      const Summary s = Summarize(row.values_ms);
      measures.push_back({{"measure", row.name},
                          {"n", s.n},
                          {"p50_ms", OptionalJson(s.p50)},
                          {"p99_ms", OptionalJson(s.p99)},
                          {"goal_ms", OptionalJson(row.goal_ms)},
                          {"values_ms", row.values_ms}});
    }
    nlohmann::json doc = {
        {"tool", "trident-bench recovery"},
        {"config",
         {{"runs", c.runs},
          {"seed", c.seed},
          {"nproc", c.nproc},
          {"tp", c.tp},
          {"pp", c.pp},
          {"dp", c.dp},
          {"spares", 1},
          {"steps", c.steps},
          {"ckpt_every", c.ckpt_every},
          {"timeout_s", absl::ToDoubleSeconds(c.timeout)},
          {"heartbeat_timeout_ms", heartbeat_ms}}},
        {"recovered", recovered},
        {"failed", failed},
        {"hung", hung},
        {"sources", sources},
        {"percentile", "nearest rank"},
        {"measures", measures},
        {"peer_transfer",
         {{"n", rates.size()},
          {"p50_gbps", OptionalJson(rate_p50)},
          {"p50_bytes", OptionalJson(bytes_p50)},
          {"sendrecv_bytes", sendrecv ? nlohmann::json(sendrecv->bytes) : nlohmann::json()},
          {"sendrecv_gbps", sendrecv ? nlohmann::json(sendrecv->algbw_gbps) : nlohmann::json()},
          {"ratio", OptionalJson(ratio)}}},
        {"runs_detail", runs}};
    std::ofstream out(c.json);
    out << doc.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "trident-bench recovery: cannot write %s\n", c.json.c_str());
      return 1;
    }
  }
  return failed + hung > 0 || reference_failed ? 1 : 0;
}

}  // namespace trident::bench
