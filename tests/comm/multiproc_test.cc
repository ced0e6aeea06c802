// The communicator across real processes started by trident-run, on the intra-host
// shared-memory engine and on both libfabric providers this machine has (shm, and tcp bound
// to loopback): correctness of every op, and the failure
// paths that need real processes (a rank killed with SIGKILL, a rank that never calls the op).
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../util/shell.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using trident::testing::Bin;
using trident::testing::RunCommand;
using trident::testing::RunResult;

std::string Launch(const std::string& provider, int nproc, const std::string& args,
                   const std::string& extra_env = "") {
  // "engine": the intra-host shared-memory engine (the default on one host; send/recv on
  // libfabric shm); "shm", "tcp": everything over that libfabric provider.
  const std::string env = provider == "engine"
                              ? "TRIDENT_INTRAHOST=shm TRIDENT_FABRIC_PROVIDER=shm"
                              : absl::StrCat("TRIDENT_INTRAHOST=fabric TRIDENT_FABRIC_PROVIDER=",
                                             provider);
  return absl::StrCat(env, " ", extra_env, " ",
                      Bin("trident-run"), " --nproc ", nproc, " -- ", Bin("comm_worker"), " ",
                      args);
}

// The RESULT lines of one scenario, by rank.
std::vector<std::string> Results(const std::string& output) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (absl::StrContains(line, "RESULT rank=")) out.emplace_back(line);
  }
  return out;
}

int64_t ElapsedMs(const std::string& line) {
  size_t at = line.find("elapsed_ms=");
  int64_t ms = -1;
  if (at != std::string::npos) {
    std::string digits;
    for (size_t i = at + 11; i < line.size() && isdigit(line[i]); ++i) digits += line[i];
    (void)absl::SimpleAtoi(digits, &ms);
  }
  return ms;
}

class MultiprocTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MultiprocTest, EveryOpIsCorrectAcrossProcesses) {
  for (int nproc : {2, 3, 4}) {
    RunResult run = RunCommand(Launch(GetParam(), nproc, "allops"));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    std::vector<std::string> results = Results(run.output);
    ASSERT_EQ(results.size(), static_cast<size_t>(nproc)) << run.output;
    for (const std::string& line : results) EXPECT_THAT(line, HasSubstr("failures=0"));
  }
}

// Every rank opens its endpoint before building the communicator (OpenHostEndpoint), as a
// hot spare does; the communicator over it passes every op.
TEST_P(MultiprocTest, EveryOpIsCorrectOverPreopenedEndpoints) {
  RunResult run = RunCommand(Launch(GetParam(), 3, "preopened"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::vector<std::string> results = Results(run.output);
  ASSERT_EQ(results.size(), 3u) << run.output;
  for (const std::string& line : results) {
    EXPECT_THAT(line, HasSubstr("preopened failures=0"));
  }
}

TEST_P(MultiprocTest, KilledRankAbortsTheOthersNamingItWithinTwiceTheDeadline) {
  // Deadline 3 s (comm_worker); trident-run gives the survivors 10 s to report and exit.
  RunResult run = RunCommand(Launch(GetParam(), 3, "kill 1", "TRIDENT_KILL_GRACE_MS=10000"));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.output, HasSubstr("rank 1 killed by signal 9"));
  std::vector<std::string> results = Results(run.output);
  ASSERT_EQ(results.size(), 2u) << run.output;
  for (const std::string& line : results) {
    EXPECT_THAT(line, HasSubstr("code=ABORTED"));
    EXPECT_THAT(line, HasSubstr("rank 1"));
    EXPECT_THAT(line, HasSubstr("SIGKILL"));
    EXPECT_GE(ElapsedMs(line), 0);
    EXPECT_LT(ElapsedMs(line), 2 * 3000) << line;
  }
}

TEST_P(MultiprocTest, RankThatNeverCallsIsNamedInDeadlineExceeded) {
  RunResult run = RunCommand(Launch(GetParam(), 3, "absent 2"));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::vector<std::string> results = Results(run.output);
  ASSERT_EQ(results.size(), 2u) << run.output;
  for (const std::string& line : results) {
    EXPECT_THAT(line, HasSubstr("code=DEADLINE_EXCEEDED"));
    EXPECT_THAT(line, HasSubstr("ranks that had not arrived: 2"));
    EXPECT_LT(ElapsedMs(line), 2 * 3000) << line;
  }
}

INSTANTIATE_TEST_SUITE_P(Providers, MultiprocTest, ::testing::Values("engine", "shm", "tcp"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace trident
