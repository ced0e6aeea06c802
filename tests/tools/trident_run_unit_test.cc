// Unit tests of trident-run's parts: argument parsing, line splitting, the output relay,
// exit descriptions and the child environment.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/trident-run/options.h"
#include "tools/trident-run/output_relay.h"
#include "tools/trident-run/process.h"

namespace trident::run {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<LaunchOptions> Parse(std::vector<std::string> args) { return ParseArgs(args); }

TEST(ParseArgsTest, FullCommandLine) {
  absl::StatusOr<LaunchOptions> o =
      Parse({"--nproc", "4", "--store=tcp://h:1", "--job-id", "j7", "--", "prog", "--nproc", "9"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->action, LaunchOptions::Action::kRun);
  EXPECT_EQ(o->nproc, 4);
  EXPECT_EQ(o->store_url, "tcp://h:1");
  EXPECT_EQ(o->job_id, "j7");
  // Everything after -- is the program's, flags included.
  EXPECT_THAT(o->program, ElementsAre("prog", "--nproc", "9"));
}

TEST(ParseArgsTest, Defaults) {
  absl::StatusOr<LaunchOptions> o = Parse({"--nproc=1", "--", "prog"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->store_url.has_value());
  EXPECT_TRUE(o->job_id.empty());
}

TEST(ParseArgsTest, BurnInLevel) {
  EXPECT_EQ(Parse({"--nproc=1", "--", "prog"})->burn_in, "");  // the environment's
  EXPECT_EQ(Parse({"--nproc=1", "--burn-in", "full", "--", "prog"})->burn_in, "full");
  EXPECT_EQ(Parse({"--nproc=1", "--burn-in=off", "--", "prog"})->burn_in, "off");
  EXPECT_THAT(Parse({"--nproc=1", "--burn-in", "fast", "--", "prog"}).status().message(),
              HasSubstr("--burn-in must be off, quick or full, not 'fast'"));
}

// torchrun's name for the same count (issue 12).
TEST(ParseArgsTest, NprocPerNodeIsNproc) {
  absl::StatusOr<LaunchOptions> o = Parse({"--nproc-per-node", "3", "--", "prog"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->nproc, 3);
  o = Parse({"--nproc-per-node=2", "--", "prog"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->nproc, 2);
  EXPECT_THAT(std::string(Parse({"--nproc-per-node", "x", "--", "p"}).status().message()),
              HasSubstr("--nproc-per-node must be an integer from 1 to"));
  EXPECT_THAT(UsageText(), HasSubstr("--nproc-per-node"));
}

TEST(ParseArgsTest, HelpAndPrintParamsNeedNothingElse) {
  EXPECT_EQ(Parse({"--help"})->action, LaunchOptions::Action::kHelp);
  EXPECT_EQ(Parse({"-h"})->action, LaunchOptions::Action::kHelp);
  EXPECT_EQ(Parse({"--print-params"})->action, LaunchOptions::Action::kPrintParams);
}

TEST(ParseArgsTest, Errors) {
  auto error_of = [](std::vector<std::string> args) {
    absl::StatusOr<LaunchOptions> o = ParseArgs(args);
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(o.status().message());
  };
  EXPECT_THAT(error_of({"--nproc", "2", "prog"}), HasSubstr("put the program after --"));
  EXPECT_THAT(error_of({"--nproc", "2"}), HasSubstr("missing --"));
  EXPECT_THAT(error_of({"--nproc", "2", "--"}), HasSubstr("no program"));
  EXPECT_THAT(error_of({"--nproc", "0", "--", "p"}), HasSubstr("--nproc must be"));
  EXPECT_THAT(error_of({"--nproc", "-1", "--", "p"}), HasSubstr("--nproc must be"));
  EXPECT_THAT(error_of({"--nproc", "99999", "--", "p"}), HasSubstr("--nproc must be"));
  EXPECT_THAT(error_of({"--", "p"}), HasSubstr("--nproc is required"));
  EXPECT_THAT(error_of({"--nproc", "--", "p"}), HasSubstr("needs a value"));
  EXPECT_THAT(error_of({"--bogus", "--nproc", "1", "--", "p"}), HasSubstr("unknown flag"));
  EXPECT_THAT(error_of({"--nproc", "1", "--store", "x", "--", "p"}), HasSubstr("--store"));
  EXPECT_THAT(error_of({"--nproc", "1", "--job-id=", "--", "p"}), HasSubstr("--job-id"));
}

TEST(LineSplitterTest, PrefixesCompleteLines) {
  LineSplitter splitter("[rank 3] ");
  std::string out;
  splitter.Feed("a\nbc", &out);
  EXPECT_EQ(out, "[rank 3] a\n");
  splitter.Feed("d\n\ne", &out);
  EXPECT_EQ(out, "[rank 3] a\n[rank 3] bcd\n[rank 3] \n");
  splitter.Flush(&out);
  EXPECT_EQ(out, "[rank 3] a\n[rank 3] bcd\n[rank 3] \n[rank 3] e\n");
  splitter.Flush(&out);  // nothing pending: nothing added
  EXPECT_EQ(out, "[rank 3] a\n[rank 3] bcd\n[rank 3] \n[rank 3] e\n");
}

TEST(LineSplitterTest, SplitsOverlongLines) {
  LineSplitter splitter("> ");
  std::string out;
  splitter.Feed(std::string(LineSplitter::kMaxLineBytes + 10, 'y'), &out);
  EXPECT_EQ(out, absl::StrCat("> ", std::string(LineSplitter::kMaxLineBytes, 'y'), "\n"));
  out.clear();
  splitter.Feed("z\n", &out);
  EXPECT_EQ(out, absl::StrCat("> ", std::string(10, 'y'), "z\n"));
}

// A pipe whose read end a test drains on its own thread.
class Capture {
 public:
  Capture() {
    EXPECT_EQ(::pipe(fds_), 0);
    reader_ = std::thread([this] {
      char buf[4096];
      ssize_t n;
      while ((n = ::read(fds_[0], buf, sizeof(buf))) > 0) text_.append(buf, n);
    });
  }
  int fd() const { return fds_[1]; }
  std::string Take() {
    ::close(fds_[1]);
    reader_.join();
    ::close(fds_[0]);
    return text_;
  }

 private:
  int fds_[2];
  std::thread reader_;
  std::string text_;
};

TEST(OutputRelayTest, RelaysWholeLinesFromManyPipes) {
  Capture out, err;
  OutputWriter writer(out.fd(), err.fd());
  OutputRelay relay(&writer);
  std::vector<int> write_ends;
  for (int rank = 0; rank < 3; ++rank) {
    for (Stream stream : {Stream::kStdout, Stream::kStderr}) {
      int p[2];
      ASSERT_EQ(::pipe(p), 0);
      relay.Add(p[0], absl::StrCat("[rank ", rank, "] "), stream, rank);
      write_ends.push_back(p[1]);
    }
  }
  relay.Start();
  std::vector<std::thread> writers;
  for (size_t i = 0; i < write_ends.size(); ++i) {
    writers.emplace_back([fd = write_ends[i], i] {
      // Lines written in pieces, so that the relay must reassemble them.
      for (int line = 0; line < 200; ++line) {
        std::string text = absl::StrCat(i, ":", std::string(500, 'q'), "\n");
        for (size_t at = 0; at < text.size(); at += 97) {
          std::string piece = text.substr(at, 97);
          ASSERT_EQ(::write(fd, piece.data(), piece.size()), static_cast<ssize_t>(piece.size()));
        }
      }
      ::write(fd, "tail", 4);  // no newline: flushed at EOF
      ::close(fd);
    });
  }
  for (std::thread& t : writers) t.join();
  relay.Finish(absl::Now() + absl::Seconds(10));
  for (auto [stream, text] : {std::pair{0, out.Take()}, std::pair{1, err.Take()}}) {
    std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 3u * 201u);
    for (const std::string& line : lines) {
      if (absl::EndsWith(line, "tail")) continue;
      // "[rank R] I:qqq..." where pipe I belongs to rank I/2 and stream I%2.
      std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(' ', 2));
      ASSERT_EQ(parts.size(), 3u) << line;
      int rank = parts[1][0] - '0';
      int pipe_index = parts[2][0] - '0';
      EXPECT_EQ(pipe_index / 2, rank) << line;
      EXPECT_EQ(pipe_index % 2, stream) << line;
      EXPECT_EQ(parts[2], absl::StrCat(pipe_index, ":", std::string(500, 'q'))) << line;
    }
  }
}

TEST(OutputRelayTest, FinishStopsAtTheDeadlineWhenAPipeStaysOpen) {
  Capture out, err;
  OutputWriter writer(out.fd(), err.fd());
  OutputRelay relay(&writer);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  relay.Add(p[0], "[rank 0] ", Stream::kStdout, 0);
  relay.Start();
  ASSERT_EQ(::write(p[1], "held open", 9), 9);  // as by a grandchild that never exits
  const absl::Time start = absl::Now();
  relay.Finish(absl::Now() + absl::Milliseconds(200));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  ::close(p[1]);
  EXPECT_EQ(out.Take(), "[rank 0] held open\n");
  err.Take();
}

TEST(OutputRelayTest, CatchUpRelaysAnExitedChildsLastWordsAtOnce) {
  int out[2], err[2], p[2];
  ASSERT_EQ(::pipe2(out, O_NONBLOCK), 0);
  ASSERT_EQ(::pipe2(err, O_NONBLOCK), 0);
  ASSERT_EQ(::pipe(p), 0);
  OutputWriter writer(out[1], err[1]);
  OutputRelay relay(&writer);
  relay.Add(p[0], "[rank 4] ", Stream::kStderr, 4);
  relay.Start();
  ASSERT_EQ(::write(p[1], "done\nlast words", 15), 15);
  ::close(p[1]);  // the child exited
  relay.CatchUp(4);
  // Everything is out when CatchUp returns, the partial line included.
  char buf[256];
  std::string text;
  ssize_t n;
  while ((n = ::read(err[0], buf, sizeof(buf))) > 0) text.append(buf, n);
  EXPECT_EQ(text, "[rank 4] done\n[rank 4] last words\n");
  relay.Finish(absl::Now() + absl::Seconds(5));
  EXPECT_EQ(::read(err[0], buf, sizeof(buf)), -1);  // nothing twice
  for (int fd : {out[0], out[1], err[0], err[1]}) ::close(fd);
}

TEST(DescribeExitTest, StatusAndSignal) {
  EXPECT_EQ(DescribeExit(2, W_EXITCODE(3, 0)), "rank 2 exited with status 3");
  EXPECT_EQ(DescribeExit(1, W_EXITCODE(0, SIGKILL)), "rank 1 killed by signal 9 (SIGKILL)");
  EXPECT_EQ(DescribeExit(0, W_EXITCODE(0, SIGSEGV)), "rank 0 killed by signal 11 (SIGSEGV)");
  EXPECT_EQ(SignalName(SIGTERM), "SIGTERM");
}

TEST(MergeEnvironmentTest, DropsAndSets) {
  std::string a = "PATH=/bin", b = "TRIDENT_RANK=9", c = "X=a=b";
  char* env[] = {a.data(), b.data(), c.data(), nullptr};
  EXPECT_THAT(MergeEnvironment(env, {"TRIDENT_RANK"}, {"TRIDENT_RANK=1"}),
              ElementsAre("PATH=/bin", "X=a=b", "TRIDENT_RANK=1"));
}

TEST(RandomHexTest, LengthAlphabetAndFreshness) {
  std::string a = RandomHex(32), b = RandomHex(32);
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

TEST(ResolveProgramTest, SearchesPath) {
  absl::StatusOr<std::string> sh = ResolveProgram("sh", "/nonexistent:/usr/bin:/bin");
  ASSERT_TRUE(sh.ok()) << sh.status();
  EXPECT_TRUE(*sh == "/usr/bin/sh" || *sh == "/bin/sh") << *sh;
  EXPECT_EQ(ResolveProgram("no-such-program-x", "/usr/bin:/bin").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(*ResolveProgram("/bin/sh", ""), "/bin/sh");
  EXPECT_EQ(ResolveProgram("./no/such", "").status().code(), absl::StatusCode::kNotFound);
}

TEST(SpawnChildTest, CapturesOutputAndExitStatus) {
  ChildSpec spec{"/bin/sh", {"sh", "-c", "echo out; echo err >&2; exit 7"}, {"A=1"}};
  absl::StatusOr<SpawnedChild> child = SpawnChild(spec);
  ASSERT_TRUE(child.ok()) << child.status();
  auto read_all = [](int fd) {
    std::string text;
    char buf[256];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) text.append(buf, n);
    ::close(fd);
    return text;
  };
  EXPECT_EQ(read_all(child->stdout_fd), "out\n");
  EXPECT_EQ(read_all(child->stderr_fd), "err\n");
  int status = 0;
  ASSERT_EQ(::waitpid(child->pid, &status, 0), child->pid);
  EXPECT_EQ(DescribeExit(0, status), "rank 0 exited with status 7");
}

}  // namespace
}  // namespace trident::run
