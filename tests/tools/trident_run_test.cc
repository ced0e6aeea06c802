// End-to-end tests of trident-run: real launcher processes over small shell programs.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string BinPath(absl::string_view name) {
  const char* dir = std::getenv("TRIDENT_BIN_DIR");
  return absl::StrCat(dir != nullptr ? dir : ".", "/", name);
}
std::string TridentRunPath() { return BinPath("trident-run"); }
// The rank program of the store tests (tests/tools/store_probe.cc).
std::string StoreProbePath() { return BinPath("trident_run_store_probe"); }

// Environment changes for one run: a value sets the variable, nullopt removes it.
using EnvChanges = std::map<std::string, std::optional<std::string>>;

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal (see term_signal)
  int term_signal = 0;
  std::string out;
  std::string err;
  absl::Duration elapsed;
};

// One trident-run process with its stdout and stderr captured.
class Launch {
 public:
  Launch(const std::vector<std::string>& args, const EnvChanges& env = {}) {
    std::vector<std::string> env_strings;
    for (char** var = environ; *var != nullptr; ++var) {
      std::string entry(*var);
      if (env.count(entry.substr(0, entry.find('='))) == 0) env_strings.push_back(entry);
    }
    for (const auto& [name, value] : env) {
      if (value.has_value()) env_strings.push_back(absl::StrCat(name, "=", *value));
    }
    std::vector<std::string> argv_strings = {TridentRunPath()};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv, envp;
    for (std::string& s : argv_strings) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (std::string& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);

    int out[2], err[2];
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(err, O_CLOEXEC), 0);
    start_ = absl::Now();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(99);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
  }

  ~Launch() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }

  pid_t pid() const { return pid_; }

  // Reads both pipes to EOF and reaps trident-run; kills it if it runs past `limit`.
  RunResult Wait(absl::Duration limit = absl::Seconds(90)) {
    RunResult result;
    const absl::Time deadline = start_ + limit;
    int fds[2] = {out_fd_, err_fd_};
    std::string* sinks[2] = {&result.out, &result.err};
    while (fds[0] >= 0 || fds[1] >= 0) {
      pollfd pfds[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
      int timeout = static_cast<int>(
          std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      int ready = ::poll(pfds, 2, timeout);
      if (ready == 0) {
        ADD_FAILURE() << "trident-run still running after " << limit << "; killing it";
        ::kill(pid_, SIGKILL);
        ::kill(-pid_, SIGKILL);
        break;
      }
      for (int i = 0; i < 2; ++i) {
        if (fds[i] < 0 || pfds[i].revents == 0) continue;
        char buf[65536];
        ssize_t n = ::read(fds[i], buf, sizeof(buf));
        if (n > 0) {
          sinks[i]->append(buf, static_cast<size_t>(n));
        } else if (n == 0 || errno != EINTR) {
          ::close(fds[i]);
          fds[i] = -1;
        }
      }
    }
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
    out_fd_ = err_fd_ = -1;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    result.elapsed = absl::Now() - start_;
    if (WIFEXITED(status)) {
      result.exit_code = WEXITSTATUS(status);
    } else {
      result.term_signal = WTERMSIG(status);
    }
    return result;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  absl::Time start_;
};

RunResult RunLauncher(const std::vector<std::string>& args, const EnvChanges& env = {}) {
  Launch launch(args, env);
  return launch.Wait();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// Runs `script` with sh in each of `nproc` ranks.
std::vector<std::string> ShArgs(int nproc, const std::string& script,
                                std::vector<std::string> flags = {}) {
  std::vector<std::string> args = {"--nproc", absl::StrCat(nproc)};
  args.insert(args.end(), flags.begin(), flags.end());
  args.insert(args.end(), {"--", "sh", "-c", script});
  return args;
}

bool ProcessGone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "trident_run_test.XXXXXX");
    path_ = ::mkdtemp(templ.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(TridentRunTest, PrefixesEveryLineOfEveryRank) {
  RunResult r = RunLauncher(ShArgs(3,
                           "echo hello $TRIDENT_RANK; echo oops $TRIDENT_RANK >&2; "
                           "printf 'no newline %s' $TRIDENT_RANK"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("[rank ", rank, "] hello ", rank, "\n")));
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("[rank ", rank, "] no newline ", rank, "\n")));
    EXPECT_THAT(r.err, HasSubstr(absl::StrCat("[rank ", rank, "] oops ", rank, "\n")));
    EXPECT_THAT(r.out, Not(HasSubstr("oops")));
  }
  EXPECT_EQ(Lines(r.out).size(), 6u) << r.out;
  for (const std::string& line : Lines(r.out)) {
    EXPECT_TRUE(std::regex_match(line, std::regex(R"(\[rank [0-2]\] .*)"))) << line;
  }
}

TEST(TridentRunTest, SetsRankEnvironment) {
  RunResult r = RunLauncher(ShArgs(4,
                           "echo \"env $TRIDENT_RANK $TRIDENT_WORLD_SIZE $TRIDENT_LOCAL_RANK "
                           "$TRIDENT_STORE $TRIDENT_JOB_TOKEN $TRIDENT_JOB_ID "
                           "$FI_TCP_IFACE $FI_SOCKETS_IFACE $IPATH_NO_BACKTRACE\""),
                    // Inherited values of the rank variables must be replaced, and the FI_*
                    // defaults apply only where the variable is unset.
                    {{"TRIDENT_RANK", "99"},
                     {"TRIDENT_STORE", "tcp://example.com:1"},
                     {"TRIDENT_JOB_ID", std::nullopt},
                     {"FI_TCP_IFACE", std::nullopt},
                     {"FI_SOCKETS_IFACE", "eth7"},
                     {"IPATH_NO_BACKTRACE", std::nullopt}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::regex line_re(
      R"(\[rank (\d+)\] env (\d+) (\d+) (\d+) (tcp://127\.0\.0\.1:(\d+)) ([0-9a-f]{64}) (\S+) lo eth7 1)");
  std::set<int> ranks;
  std::set<std::string> stores, tokens, job_ids;
  for (const std::string& line : Lines(r.out)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, line_re)) << line;
    EXPECT_EQ(m[1], m[2]);  // prefix names the rank it ran as
    EXPECT_EQ(m[3], "4");
    EXPECT_EQ(m[4], m[2]);  // one host: local rank == rank
    int port = 0;
    ASSERT_TRUE(absl::SimpleAtoi(m[6].str(), &port));
    EXPECT_GT(port, 0);
    EXPECT_LT(port, 65536);
    ranks.insert(std::stoi(m[2]));
    stores.insert(m[5]);
    tokens.insert(m[7]);
    job_ids.insert(m[8]);
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2, 3}));
  EXPECT_EQ(stores.size(), 1u);
  EXPECT_EQ(tokens.size(), 1u);
  EXPECT_EQ(job_ids.size(), 1u);
}

// torchrun's variables (issue 12): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from the
// same values as TRIDENT_*, an outer launcher's replaced; MASTER_ADDR/MASTER_PORT set to a
// loopback port unless the user set them.
TEST(TridentRunTest, SetsTorchrunVariables) {
  const std::string script =
      "echo \"env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\"";
  RunResult r = RunLauncher(ShArgs(3, script), {{"RANK", "7"},
                                                {"WORLD_SIZE", "64"},
                                                {"MASTER_ADDR", std::nullopt},
                                                {"MASTER_PORT", std::nullopt}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::regex line_re(R"(\[rank (\d+)\] env (\d+) 3 (\d+) 3 127\.0\.0\.1 (\d+))");
  std::set<int> ranks;
  std::set<std::string> ports;
  for (const std::string& line : Lines(r.out)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, line_re)) << line;
    EXPECT_EQ(m[1], m[2]);
    EXPECT_EQ(m[3], m[2]);
    ranks.insert(std::stoi(m[2]));
    ports.insert(m[4]);
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2}));
  EXPECT_EQ(ports.size(), 1u);  // one port for the job
  // The user's MASTER_* win.
  r = RunLauncher(ShArgs(1, "echo \"$MASTER_ADDR:$MASTER_PORT\""),
                  {{"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "29511"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Lines(r.out), std::vector<std::string>{"[rank 0] 10.1.2.3:29511"});
}

TEST(TridentRunTest, EachJobGetsItsOwnToken) {
  std::set<std::string> tokens;
  for (int i = 0; i < 2; ++i) {
    RunResult r = RunLauncher(ShArgs(1, "echo $TRIDENT_JOB_TOKEN"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    tokens.insert(r.out);
  }
  EXPECT_EQ(tokens.size(), 2u);
}

TEST(TridentRunTest, PassesJobIdAndExternalStore) {
  RunResult r = RunLauncher(ShArgs(2, "echo \"$TRIDENT_JOB_ID $TRIDENT_STORE $TRIDENT_JOB_TOKEN\"",
                           {"--job-id", "my-job", "--store", "file:///tmp/nowhere"}),
                    {{"TRIDENT_JOB_TOKEN", "sekrit"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("[rank 0] my-job file:///tmp/nowhere sekrit\n"));
  EXPECT_THAT(r.out, HasSubstr("[rank 1] my-job file:///tmp/nowhere sekrit\n"));
}

TEST(TridentRunTest, KilledRankStopsTheJobWithinTheGracePeriod) {
  RunResult r = RunLauncher(ShArgs(3,
                           "if [ \"$TRIDENT_RANK\" = 1 ]; then kill -9 $$; fi; "
                           "echo pid $$; exec sleep 60"),
                    {{"TRIDENT_KILL_GRACE_MS", "1000"}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(r.elapsed, absl::Seconds(20));
  EXPECT_THAT(r.err, HasSubstr("trident-run: rank 1 killed by signal 9 (SIGKILL)\n"));
  std::vector<std::string> err_lines = Lines(r.err);
  ASSERT_FALSE(err_lines.empty());
  EXPECT_EQ(err_lines.back(), "trident-run: job failed: rank 1 killed by signal 9 (SIGKILL)");
  // The survivors were told to stop, not treated as new failures, and are gone.
  EXPECT_THAT(r.err, HasSubstr("sending SIGTERM"));
  EXPECT_THAT(r.err, HasSubstr("rank 0 killed by signal 15 (SIGTERM), after trident-run sent"));
  std::vector<std::string> out_lines = Lines(r.out);
  EXPECT_EQ(out_lines.size(), 2u) << r.out;
  for (const std::string& line : out_lines) {
    std::smatch m;
    std::regex pid_re(R"(\[rank [02]\] pid (\d+))");
    ASSERT_TRUE(std::regex_match(line, m, pid_re)) << line;
    EXPECT_TRUE(ProcessGone(std::stoi(m[1]))) << line;
  }
}

TEST(TridentRunTest, SurvivorsThatExitWithinTheGracePeriodAreNotSignalled) {
  RunResult r = RunLauncher(ShArgs(3, "if [ \"$TRIDENT_RANK\" = 2 ]; then exit 3; fi; sleep 1"),
                    {{"TRIDENT_KILL_GRACE_MS", "20000"}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(r.elapsed, absl::Seconds(15));
  EXPECT_THAT(r.err, HasSubstr("trident-run: rank 2 exited with status 3\n"));
  EXPECT_THAT(r.err, Not(HasSubstr("SIGTERM")));
  EXPECT_EQ(Lines(r.err).back(), "trident-run: job failed: rank 2 exited with status 3");
}

TEST(TridentRunTest, ARanksLastWordsComeBeforeTheReportOfItsExit) {
  for (int i = 0; i < 3; ++i) {
    RunResult r = RunLauncher(ShArgs(1, "echo about to fail >&2; printf 'last words' >&2; exit 1"));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err,
              "[rank 0] about to fail\n"
              "[rank 0] last words\n"
              "trident-run: rank 0 exited with status 1\n"
              "trident-run: job failed: rank 0 exited with status 1\n");
  }
}

TEST(TridentRunTest, ReportsTheFirstFailureLast) {
  // Rank 0 fails first; rank 1 fails later on its own: both are reported, rank 0 is the cause.
  RunResult r = RunLauncher(ShArgs(2, "if [ \"$TRIDENT_RANK\" = 0 ]; then exit 4; fi; sleep 0.5; exit 5"),
                    {{"TRIDENT_KILL_GRACE_MS", "10000"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("trident-run: rank 0 exited with status 4\n"));
  EXPECT_THAT(r.err, HasSubstr("trident-run: rank 1 exited with status 5\n"));
  EXPECT_EQ(Lines(r.err).back(), "trident-run: job failed: rank 0 exited with status 4");
}

TEST(TridentRunTest, LinesNeverInterleave) {
  // Four ranks print long lines at once, to stdout and stderr.
  const std::string payload(3000, 'x');
  RunResult r = RunLauncher(ShArgs(4, absl::StrCat("i=0; while [ $i -lt 100 ]; do echo $TRIDENT_RANK:",
                                           payload, "; echo $TRIDENT_RANK:", payload,
                                           " >&2; i=$((i+1)); done")));
  ASSERT_EQ(r.exit_code, 0) << r.err.substr(0, 1000);
  const std::regex line_re(absl::StrCat(R"(\[rank ([0-3])\] ([0-3]):x{3000})"));
  for (const std::string* text : {&r.out, &r.err}) {
    std::vector<std::string> lines = Lines(*text);
    EXPECT_EQ(lines.size(), 400u);
    for (const std::string& line : lines) {
      std::smatch m;
      ASSERT_TRUE(std::regex_match(line, m, line_re)) << line.substr(0, 200);
      EXPECT_EQ(m[1], m[2]);
    }
  }
}

TEST(TridentRunTest, SigintIsForwardedToTheRanks) {
  TempDir dir;
  Launch launch(ShArgs(2, absl::StrCat("trap 'echo caught $TRIDENT_RANK; exit 0' INT; ",
                                       "touch ", dir.path(), "/ready.$TRIDENT_RANK; ",
                                       "sleep 60 & wait")),
                {{"TRIDENT_KILL_GRACE_MS", "5000"}});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!(std::filesystem::exists(dir.path() + "/ready.0") &&
           std::filesystem::exists(dir.path() + "/ready.1"))) {
    ASSERT_LT(absl::Now(), deadline) << "the ranks never started";
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(::kill(launch.pid(), SIGINT), 0);
  RunResult r = launch.Wait();
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_THAT(r.out, HasSubstr("[rank 0] caught 0\n"));
  EXPECT_THAT(r.out, HasSubstr("[rank 1] caught 1\n"));
  EXPECT_THAT(r.err, HasSubstr("got SIGINT"));
  EXPECT_THAT(r.err, Not(HasSubstr("sending SIGTERM")));
  EXPECT_EQ(Lines(r.err).back(), "trident-run: job interrupted by SIGINT");
  EXPECT_LT(r.elapsed, absl::Seconds(20));
}

TEST(TridentRunTest, SigtermEscalatesToSigkillForRanksThatIgnoreIt) {
  TempDir dir;
  Launch launch(ShArgs(1, absl::StrCat("trap '' INT TERM; touch ", dir.path(),
                                       "/ready; while :; do sleep 0.1; done")),
                {{"TRIDENT_KILL_GRACE_MS", "200"}});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (!std::filesystem::exists(dir.path() + "/ready")) {
    ASSERT_LT(absl::Now(), deadline) << "the rank never started";
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(::kill(launch.pid(), SIGTERM), 0);
  RunResult r = launch.Wait();
  EXPECT_EQ(r.exit_code, 143) << r.err;
  EXPECT_THAT(r.err, HasSubstr("sending SIGKILL"));
  EXPECT_THAT(r.err, HasSubstr("rank 0 killed by signal 9 (SIGKILL)"));
  EXPECT_LT(r.elapsed, absl::Seconds(20));
}

TEST(TridentRunTest, RanksDieWithTheLauncher) {
  TempDir dir;
  Launch launch(ShArgs(2, absl::StrCat("echo $$ > ", dir.path(),
                                       "/pid.$TRIDENT_RANK; exec sleep 60")));
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank) {
    std::string path = absl::StrCat(dir.path(), "/pid.", rank);
    int pid = 0;
    while (true) {
      ASSERT_LT(absl::Now(), deadline) << "rank " << rank << " never started";
      std::string text;
      if (FILE* f = std::fopen(path.c_str(), "r")) {
        char buf[32] = {};
        std::fgets(buf, sizeof(buf), f);
        std::fclose(f);
        text = buf;
      }
      if (absl::EndsWith(text, "\n") && absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &pid)) {
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    pids.push_back(pid);
  }
  ASSERT_EQ(::kill(launch.pid(), SIGKILL), 0);
  launch.Wait();
  for (pid_t pid : pids) {
    // Orphans are reparented and reaped by init; wait for that.
    const absl::Time gone_by = absl::Now() + absl::Seconds(10);
    while (!ProcessGone(pid) && absl::Now() < gone_by) absl::SleepFor(absl::Milliseconds(10));
    EXPECT_TRUE(ProcessGone(pid)) << "rank pid " << pid << " outlived trident-run";
  }
}

TEST(TridentRunTest, RanksMeetInTheHostedStore) {
  RunResult r = RunLauncher({"--nproc", "3", "--", StoreProbePath(), "meet"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("[rank ", rank, "] met 3 ranks\n")));
  }
}

TEST(TridentRunTest, FailureIsRecordedInTheStore) {
  // Rank 1 dies; the others wait for job/failed/1 and exit 0 within the grace period.
  RunResult r = RunLauncher(
      ShArgs(3, absl::StrCat("if [ \"$TRIDENT_RANK\" = 1 ]; then kill -9 $$; fi; exec ",
                             StoreProbePath(), " wait-failed 1")),
      {{"TRIDENT_KILL_GRACE_MS", "20000"}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  for (int rank : {0, 2}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat(
                           "[rank ", rank,
                           "] job/failed/1 = rank 1 killed by signal 9 (SIGKILL)\n")))
        << r.out;
  }
  EXPECT_THAT(r.err, Not(HasSubstr("SIGTERM")));  // they finished on their own
  EXPECT_EQ(Lines(r.err).back(), "trident-run: job failed: rank 1 killed by signal 9 (SIGKILL)");
  EXPECT_LT(r.elapsed, absl::Seconds(15));
}

TEST(TridentRunTest, FailureIsRecordedInAStoreGivenWithStore) {
  // An outer trident-run hosts the store; an inner one is pointed at it with --store and
  // takes the token from TRIDENT_JOB_TOKEN, as a second agent of the same job would.
  const std::string inner = absl::StrCat(
      TridentRunPath(), " --nproc 2 --store \"$TRIDENT_STORE\" -- sh -c '",
      "if [ $TRIDENT_RANK = 1 ]; then exit 3; fi; exec ", StoreProbePath(), " wait-failed 1'");
  RunResult r = RunLauncher(ShArgs(1, inner), {{"TRIDENT_KILL_GRACE_MS", "20000"}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.out, HasSubstr("[rank 0] [rank 0] job/failed/1 = rank 1 exited with status 3\n"));
  EXPECT_THAT(r.err, HasSubstr("[rank 0] trident-run: job failed: rank 1 exited with status 3\n"));
  EXPECT_THAT(r.err, Not(HasSubstr("cannot record")));
}

TEST(TridentRunTest, TwoPeersReportingARankGetItDeclaredDeadThoughItBeats) {
  // Rank 0's process lives and beats, but ranks 1 and 2 both report a transport error from
  // it: a second observer confirms the suspicion, and rank 0 is killed.
  RunResult r = RunLauncher({"--nproc", "3", "--", StoreProbePath(), "report-rank0"},
                            {{"TRIDENT_KILL_GRACE_MS", "20000"}});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  const std::string verdict =
      "rank 0 declared dead: a peer's transport error: connection reset by peer; confirmed by "
      "a second observer (rank 1, rank 2); killed";
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("trident-run: ", verdict, "\n"))) << r.err;
  for (int rank : {1, 2}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("[rank ", rank, "] job/failed/0 = ", verdict)));
  }
  EXPECT_LT(r.elapsed, absl::Seconds(15));
}

TEST(TridentRunTest, AFailedBuildGetsAnEpochWithTheSameRanks) {
  // No rank died, but rank 0 could not build epoch 1's world: everyone builds epoch 2.
  RunResult r = RunLauncher({"--nproc", "2", "--", StoreProbePath(), "rebuild"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("trident-run: epoch 2: the world of epoch 1 could not be built "
                               "(w0: the build timed out); every rank builds it again"));
  for (int rank : {0, 1}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("[rank ", rank, "] job/membership/2 = "
                                              "{\"epoch\":2,\"failures\":[],\"ranks\":[\"w0\",\"w1\"]}")));
  }
}

TEST(TridentRunTest, HostedStoreRefusesAClientWithoutTheToken) {
  RunResult r = RunLauncher({"--nproc", "1", "--", StoreProbePath(), "bad-token"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("[rank 0] bad token: PERMISSION_DENIED"));
}

TEST(TridentRunTest, UsageErrorsExitWithStatus2) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--nproc", "2", "echo", "hi"}, "put the program after --"},
      {{"--nproc", "2"}, "missing --"},
      {{"--nproc", "2", "--"}, "no program to run"},
      {{"--nproc", "0", "--", "true"}, "--nproc must be"},
      {{"--nproc", "x", "--", "true"}, "--nproc must be"},
      {{"--", "true"}, "--nproc is required"},
      {{"--nproc"}, "--nproc needs a value"},
      {{"--frobnicate", "--nproc", "1", "--", "true"}, "unknown flag '--frobnicate'"},
      {{"--nproc", "1", "--store", "http://x", "--", "true"}, "--store must be"},
  };
  for (const Case& c : cases) {
    RunResult r = RunLauncher(c.args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.args, " ");
    EXPECT_THAT(r.err, HasSubstr(c.message)) << absl::StrJoin(c.args, " ");
    EXPECT_THAT(r.err, HasSubstr("--help"));
  }
}

TEST(TridentRunTest, MissingProgramExitsWith127) {
  RunResult r = RunLauncher({"--nproc", "2", "--", "no-such-program-anywhere"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_THAT(r.err, HasSubstr("no-such-program-anywhere"));
}

TEST(TridentRunTest, HelpListsFlagsAndVariables) {
  RunResult r = RunLauncher({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* word : {"--nproc", "--store", "--job-id", "--print-params", "TRIDENT_RANK",
                           "TRIDENT_WORLD_SIZE", "TRIDENT_LOCAL_RANK", "TRIDENT_STORE",
                           "TRIDENT_JOB_TOKEN", "TRIDENT_JOB_ID", "TRIDENT_KILL_GRACE_MS",
                           "FI_TCP_IFACE"}) {
    EXPECT_THAT(r.out, HasSubstr(word));
  }
}

TEST(TridentRunTest, PrintParams) {
  RunResult r = RunLauncher({"--print-params"}, {{"TRIDENT_KILL_GRACE_MS", "1234"}});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("TRIDENT_KILL_GRACE_MS=1234  (env)"));
  EXPECT_THAT(r.out, HasSubstr("TRIDENT_TIMEOUT_MS="));
}

// Defect 6 of issue 17: the job token was printed in clear text.
TEST(TridentRunTest, PrintParamsHidesTheJobToken) {
  RunResult r = RunLauncher({"--print-params"}, {{"TRIDENT_JOB_TOKEN", "sekrit-77"}});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("TRIDENT_JOB_TOKEN=<hidden>  (env)"));
  EXPECT_THAT(r.out + r.err, Not(HasSubstr("sekrit-77")));
}

// Defect 5: a bad setting ended trident-run in a CHECK with a backtrace; now it is a usage
// error (exit 2) naming the variable, its value and what is allowed, before any rank starts.
TEST(TridentRunTest, BadSettingIsAUsageError) {
  RunResult r = RunLauncher({"--nproc", "1", "--", "true"}, {{"TRIDENT_KILL_GRACE_MS", "xyz"}});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("trident-run: TRIDENT_KILL_GRACE_MS='xyz' is not valid: expected "
                               "a whole number of milliseconds >= 0"));
  EXPECT_THAT(r.err, Not(HasSubstr("CHECK")));
  r = RunLauncher({"--print-params"}, {{"TRIDENT_TIMEOUT_MS", "-5"}});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.out, HasSubstr("TRIDENT_TIMEOUT_MS=-5  (env)  INVALID"));
}

}  // namespace
