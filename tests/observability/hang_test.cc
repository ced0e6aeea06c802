// The flight recorder through real processes: trident-run + lm-trainer (3 ranks, dp 3) with a
// hang injected into rank 2 (or 1). Each case checks that trident-run's own message names
// the rank and what it was doing, and that `trident-fr DIR` on the ranks' dump files says the
// same; a clean run prints no hang message. Every run is bounded by `timeout`, so a hang of
// the test itself fails it instead of stalling CI.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "../util/shell.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using trident::testing::Bin;
using trident::testing::RunCommand;
using trident::testing::RunResult;

// A tiny model: a step takes milliseconds; op deadlines of 3 s end the hang, and a recovery
// that finds no dead rank gives up after 3 s, so a run takes ~10 s.
const std::string kTrainer =
    "--dp 3 --steps 10 --context 8 --embed 8 --ffn 64 --batch 48 --microbatches 2 "
    "--val-samples 64 --eval-every 100 --timeout 3s --recover-timeout 3s --sdc-every 0";

class HangTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/hang-", getpid(), "-",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    RunCommand(absl::StrCat("rm -rf ", dir_, " && mkdir -p ", dir_));
  }
  void TearDown() override { RunCommand(absl::StrCat("rm -rf ", dir_)); }

  // On a machine loaded far beyond its cores the job's setup can miss its store deadlines
  // before the fault is injected; then the case did not happen, and it runs once more.
  RunResult Train(const std::string& fault, const std::string& env = "") {
    RunResult run;
    for (int attempt = 0; attempt < 2; ++attempt) {
      RunCommand(absl::StrCat("rm -f ", dir_, "/fr-*.json"));
      run = RunCommand(absl::StrCat(
          env, " TRIDENT_FR_DIR=", dir_, " timeout 90 ", Bin("trident-run"), " --nproc 3 -- ",
          Bin("lm-trainer"), " ", kTrainer, fault.empty() ? "" : " --inject-fault " + fault));
      const bool set_up = !absl::StrContains(run.output, "cannot start the runtime") &&
                          !absl::StrContains(run.output, "could not be built");
      if (set_up) break;
      std::fprintf(stderr, "the job's setup failed before the fault (attempt %d); again:\n%s\n",
                   attempt + 1, run.output.c_str());
    }
    return run;
  }
  RunResult Fr() { return RunCommand(absl::StrCat("timeout 30 ", Bin("trident-fr"), " ", dir_)); }

  std::string dir_;
};

TEST_F(HangTest, RankThatSkipsACollectiveIsNamed) {
  RunResult run = Train("w2:4:SKIP_COLLECTIVE");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, ContainsRegex("trident-run: hang suspected: rank [0-2] \\(w[0-2]\\) met an "
                                        "op deadline: DEADLINE_EXCEEDED"));
  EXPECT_THAT(run.output, HasSubstr("asked the ranks for their flight recorders through the "
                                    "store: 3 of 3 answered"));
  // Rank 2 skipped the world all-reduce of the loss and went on to the next step's dp
  // all-reduce, where the others never came.
  EXPECT_THAT(run.output,
              ContainsRegex("trident-run: hang verdict: rank 2 never issued #[0-9]+ "
                            "AllReduce\\(f64, count=1\\) of group world epoch 1: it is in "
                            "AllReduce #[0-9]+ \\(failed after [0-9.]+ s[^)]*\\) of group "
                            "world/0 epoch 1"))
      << run.output;
  RunResult fr = Fr();
  EXPECT_EQ(fr.exit_code, 0) << fr.output;
  EXPECT_THAT(fr.output, ContainsRegex("verdict: rank 2 never issued #[0-9]+ AllReduce\\(f64, "
                                       "count=1\\) of group world epoch 1: it is in AllReduce"))
      << fr.output;
}

TEST_F(HangTest, RankThatCallsADifferentOpIsNamed) {
  RunResult run = Train("w1:4:WRONG_OP");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  // The call fingerprints disagree at once: every rank fails and leaves its dump in the store.
  EXPECT_THAT(run.output,
              ContainsRegex("trident-run: flight recorders the ranks left when their ops failed "
                            "\\(3\\): rank 1 called AllGather\\(f64, count=1\\) at #[0-9]+ of "
                            "group world epoch 1 where ranks 0, 2 called AllReduce\\(f64, "
                            "count=1\\)"))
      << run.output;
  RunResult fr = Fr();
  EXPECT_EQ(fr.exit_code, 0) << fr.output;
  EXPECT_THAT(fr.output, ContainsRegex("verdict: rank 1 called AllGather\\(f64, count=1\\) at "
                                       "#[0-9]+ of group world epoch 1 where ranks 0, 2 called "
                                       "AllReduce"))
      << fr.output;
}

TEST_F(HangTest, RankThatSleepsOutsideCommIsNamed) {
  // Asleep far longer than the others' op deadline: it is still asleep when it is asked (the
  // job fails without it, and trident-run stops it after the grace period).
  RunResult run = Train("w2:4:SLEEP=30", "TRIDENT_KILL_GRACE_MS=1000");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("trident-run: hang suspected: "));
  // It answered from its runtime's watcher thread while its training thread slept.
  EXPECT_THAT(run.output,
              ContainsRegex("trident-run: hang verdict: rank 2 never issued #[0-9]+ "
                            "AllReduce\\(f32, count=[0-9]+\\) of group world/0 epoch 1: it is "
                            "stuck outside any op \\(.*training thread tid [0-9]+ "
                            "\\(lm-trainer\\) state S"))
      << run.output;
  RunResult fr = Fr();
  EXPECT_EQ(fr.exit_code, 0) << fr.output;
  EXPECT_THAT(fr.output, HasSubstr("rank 2 is stuck outside any op (a CPU-side hang)")) << fr.output;
  EXPECT_THAT(fr.output, ContainsRegex("verdict: rank 2 never issued #[0-9]+ AllReduce\\(f32, "
                                       "count=[0-9]+\\) of group world/0 epoch 1: it is stuck "
                                       "outside any op"))
      << fr.output;
}

TEST_F(HangTest, StoppedRankIsNamedThoughItCannotAnswer) {
  RunResult run = Train("w2:4:STOP");
  EXPECT_EQ(run.exit_code, 1) << run.output;  // no spare: the stopped rank ends the job
  EXPECT_THAT(run.output,
              HasSubstr("trident-run: hang suspected: rank 2 (w2)'s heartbeat has been silent"));
  EXPECT_THAT(run.output, HasSubstr("(its process is stopped (SIGSTOP?)); asked the ranks for "
                                    "their flight recorders through the store: 2 of 3 answered"));
  EXPECT_THAT(run.output,
              ContainsRegex("trident-run: hang verdict: rank 2 \\(w2\\) is stopped \\(SIGSTOP\\?\\): "
                            "it cannot answer; rank 2 left no dump while every other rank waits "
                            "in #[0-9]+ of group world/0 epoch 1: the likely cause"))
      << run.output;
  EXPECT_THAT(run.output, ContainsRegex("rank 2 \\(w2\\), pid [0-9]+ did not answer: its process "
                                        "is stopped \\(SIGSTOP\\?\\) and cannot"));
  RunResult fr = Fr();
  EXPECT_EQ(fr.exit_code, 0) << fr.output;
  EXPECT_THAT(fr.output, ContainsRegex("verdict: rank 2 left no dump while every other rank "
                                       "waits in #[0-9]+ of group world/0 epoch 1"))
      << fr.output;
}

TEST_F(HangTest, CleanRunPrintsNoHangMessage) {
  RunResult run = Train("");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("done steps=10"));
  EXPECT_THAT(run.output, Not(HasSubstr("hang suspected")));
  EXPECT_THAT(run.output, Not(HasSubstr("flight recorders the ranks left")));
}

}  // namespace
