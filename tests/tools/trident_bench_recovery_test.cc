// End-to-end tests of `trident-bench recovery`: the real binary, which runs trident-run and
// lm-trainer from its own directory (build/bin). Slow: each recovered run trains 40 steps on
// 8 ranks.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "../util/shell.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace {

using ::testing::HasSubstr;
using ::trident::testing::Bin;
using ::trident::testing::RunCommand;

std::string Bench() { return Bin("trident-bench"); }

// The work directory the header line names.
std::string WorkDir(const std::string& output) {
  std::smatch m;
  static const std::regex re(R"(work dir (\S+))");
  return std::regex_search(output, m, re) ? m[1].str() : "";
}

// True while a process's command line mentions `text` (the run's checkpoint directory).
bool AnyProcessMentions(const std::string& text) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(TridentBenchRecoveryTest, HelpSaysWhatIsMeasured) {
  auto run = RunCommand(Bench() + " recovery --help");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_THAT(run.output, HasSubstr("SIGKILL -> verdict"));
  EXPECT_THAT(run.output, HasSubstr("SIGSTOP -> verdict"));
  EXPECT_THAT(run.output, HasSubstr("verdict -> first completed step"));
  EXPECT_THAT(run.output, HasSubstr("realtime (Unix) clock"));
  EXPECT_THAT(run.output, HasSubstr("nearest-rank"));
  EXPECT_THAT(run.output, HasSubstr("Goal: p99 < 100 ms"));
}

TEST(TridentBenchRecoveryTest, BadUsageExits2) {
  for (const char* flags : {"--runs 0", "--nproc 4", "--signals kill,term", "--steps 5",
                            "--timeout soon", "--no-such-flag"}) {
    auto run = RunCommand(absl::StrCat(Bench(), " recovery ", flags));
    EXPECT_EQ(run.exit_code, 2) << flags << ": " << run.output;
    EXPECT_THAT(run.output, HasSubstr("trident-bench recovery: ")) << flags;
  }
  auto run = RunCommand(Bench() + " recovery --trainer /nonexistent/lm-trainer");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("/nonexistent/lm-trainer is not an executable file"));
}

TEST(TridentBenchRecoveryTest, TwoRunsRecoverAndTheTableIsPrinted) {
  const std::string json = absl::StrCat(::testing::TempDir(), "/recovery_bench.json");
  auto run = RunCommand(
      absl::StrCat(Bench(), " recovery --runs 2 --seed 2026 --timeout 240s", " --json ", json));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("run 1/2: SIGKILL w"));
  EXPECT_THAT(run.output, HasSubstr("run 2/2: SIGSTOP w"));
  EXPECT_THAT(run.output, HasSubstr("2 of 2 runs recovered, 0 failed, 0 hung"));
  EXPECT_THAT(run.output, HasSubstr("| measure | n | p50 ms | p99 ms | goal | p99 meets goal |"));
  EXPECT_THAT(run.output, HasSubstr("| SIGKILL -> verdict | 1 | "));
  EXPECT_THAT(run.output, HasSubstr("| SIGSTOP -> verdict | 1 | "));
  EXPECT_THAT(run.output, HasSubstr("| verdict -> restored state | 2 | "));
  EXPECT_THAT(run.output, HasSubstr("| verdict -> first completed step | 2 | "));
  EXPECT_THAT(run.output, HasSubstr("peer-replica transfer: "));
  // Nothing failed, so nothing is kept.
  const std::string work = WorkDir(run.output);
  ASSERT_FALSE(work.empty()) << run.output;
  EXPECT_FALSE(std::filesystem::exists(work)) << work;

  std::ifstream in(json);
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["recovered"], 2);
  EXPECT_EQ(doc["hung"], 0);
  ASSERT_EQ(doc["runs_detail"].size(), 2u);
  for (const auto& r : doc["runs_detail"]) {
    EXPECT_EQ(r["outcome"], "recovered");
    EXPECT_TRUE(r.contains("signal_to_verdict_ms"));
    EXPECT_TRUE(r.contains("first_step_since_verdict_ms"));
  }
  ASSERT_EQ(doc["measures"].size(), 4u);
  EXPECT_EQ(doc["measures"][0]["n"], 1);
  EXPECT_EQ(doc["measures"][3]["n"], 2);
}

// A run past its deadline is killed with everything it started, counted as hung, exit 1, and
// its log kept.
TEST(TridentBenchRecoveryTest, AHungRunIsKilledAndReported) {
  auto run = RunCommand(Bench() + " recovery --runs 1 --timeout 0.5");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("run 1/1: SIGKILL w"));
  EXPECT_THAT(run.output, HasSubstr("HUNG: still running after 500ms; killed"));
  EXPECT_THAT(run.output, HasSubstr("0 of 1 runs recovered, 0 failed, 1 hung"));
  EXPECT_THAT(run.output, HasSubstr("1 run(s) did not recover:"));
  const std::string work = WorkDir(run.output);
  ASSERT_FALSE(work.empty()) << run.output;
  EXPECT_TRUE(std::filesystem::exists(work + "/run1.log"));
  EXPECT_FALSE(std::filesystem::exists(work + "/ckpt1"));
  // trident-run and every rank are gone (the ranks die with trident-run: give them a moment).
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (AnyProcessMentions(work) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(AnyProcessMentions(work)) << "a process of the hung run survived";
  std::filesystem::remove_all(work);
}

}  // namespace
