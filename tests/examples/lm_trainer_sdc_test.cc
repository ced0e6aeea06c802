// Silent data corruption under `trident-run --spares 1`: one bit of one parameter of one dp
// replica flips after a step (--inject-fault wK:STEP:BITFLIP); the replica check
// (--sdc-every) names that rank (by majority with dp 3, by replay with dp 2), trident-run
// replaces it by the spare, and the run ends with the losses of a run without the flip.
#include <map>
#include <regex>
#include <vector>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "run_util.h"

namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using lm::testing::Losses;
using trident::testing::Bin;
using trident::testing::RunCommand;
using trident::testing::RunResult;

constexpr int kSteps = 24;

std::string Trainer(int dp) {
  return absl::StrCat("--dp ", dp, " --steps ", kSteps,
                      " --context 8 --embed 8 --ffn 64 --batch 48 --microbatches 2 "
                      "--val-samples 64 --eval-every 8 --seed 5 --timeout 30s --ckpt-every 6 "
                      "--sdc-every 2");
}

RunResult Train(const std::string& name, int dp, int spares, const std::string& extra) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/lm_sdc_", name, "_", getpid());
  // One subshell, so that RunCommand's 2>&1 takes every line of the run.
  return RunCommand(absl::StrCat("(rm -rf ", dir, "; timeout 120 ", Bin("trident-run"),
                                 " --nproc ", dp, " --spares ", spares, " -- ", Bin("lm-trainer"),
                                 " ", Trainer(dp), " --ckpt-dir ", dir, " ", extra,
                                 " 2>&1; rc=$?; rm -rf ", dir, "; exit $rc)"));
}

void ExpectLossesOf(const RunResult& ref, const RunResult& out) {
  const std::map<int, double> want = Losses(ref.output), got = Losses(out.output);
  ASSERT_EQ(want.size(), static_cast<size_t>(kSteps)) << ref.output;
  for (const auto& [step, loss] : want) {
    ASSERT_TRUE(got.count(step)) << "no loss for step " << step << "\n" << out.output;
    // The map keeps the last line of a step: the redone one after the recovery.
    EXPECT_EQ(got.at(step), loss) << "step " << step;
  }
}

// After the recovery line, the steps printed ("step=N loss=") are resumed, resumed + 1, ...
// each once.
void ExpectNoStepRunTwiceAfter(const std::string& output, int last_good) {
  // From the recovery line on (rank 0 prints it and the step lines: one stream, in order).
  const size_t at = output.find("recovery epoch=");
  ASSERT_NE(at, std::string::npos);
  static const std::regex line(R"(step=(\d+) loss=)");
  std::vector<int> steps;
  for (auto it = std::sregex_iterator(output.begin() + at, output.end(), line);
       it != std::sregex_iterator(); ++it) {
    steps.push_back(std::stoi((*it)[1]));
  }
  std::vector<int> want;
  for (int s = last_good + 1; s <= kSteps; ++s) want.push_back(s);
  EXPECT_EQ(steps, want) << output;
}

TEST(LmTrainerSdcTest, ThreeReplicasNameTheFlippedOneByMajorityAndTheSpareTakesOver) {
  RunResult ref = Train("ref3", 3, 0, "");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  EXPECT_THAT(ref.output, Not(HasSubstr("sdc step=")));
  RunResult out = Train("flip3", 3, 1, "--inject-fault w1:13:BITFLIP");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("injecting a bit flip into the first parameter after step 13"));
  EXPECT_THAT(out.output,
              HasSubstr("sdc step=14 rank=1 replicas=3 method=majority action=replaced"));
  EXPECT_THAT(out.output, HasSubstr("spare s0 takes rank 1 (w1 declared dead: silent data "
                                    "corruption"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=1 cause=sdc"));
  // Back to the last good digest (step 12, the check before): the healthy replicas' copies
  // of it, the spare's from one of them; steps 13 and 14 redone.
  EXPECT_THAT(out.output, ContainsRegex("steps_redone=2 source=replica .* resume_step=13 "));
  ExpectLossesOf(ref, out);
  ExpectNoStepRunTwiceAfter(out.output, 12);
}

TEST(LmTrainerSdcTest, TwoReplicasReplayAndNameTheOneThatDisagreesWithItsReplay) {
  RunResult ref = Train("ref2", 2, 0, "");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  RunResult out = Train("flip2", 2, 1, "--inject-fault w0:14:BITFLIP");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output,
              HasSubstr("sdc step=14 rank=0 replicas=2 method=replay action=replaced"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=0 cause=sdc"));
  // Both replayed from checkpoint 12 to decide; after the verdict the spare copied rank 1's
  // replayed state at step 14 and nothing more is redone.
  EXPECT_THAT(out.output, ContainsRegex("steps_redone=0 source=replica .* resume_step=15 "));
  ExpectLossesOf(ref, out);
  ExpectNoStepRunTwiceAfter(out.output, 14);
}

// A flip just before a save (right after step 17, the save at step 18) with no periodic check
// in between (--sdc-every 1000): the check that precedes every save names the rank, and the
// flipped state is never staged or committed; the save of step 18 is taken once the steps
// are redone, with the losses of a run without the flip.
TEST(LmTrainerSdcTest, AFlipJustBeforeASaveIsCaughtBeforeTheSaveAndNeverCommitted) {
  RunResult ref = Train("ref3s", 3, 0, "--sdc-every 1000");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  RunResult out = Train("save3", 3, 1, "--sdc-every 1000 --inject-fault w1:17:BITFLIP");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("sdc step=18 rank=1 replicas=3 method=majority"));
  // Rank 0's stdout, in order: the recovery, then the one save of step 18 (the redone one).
  const size_t recovery = out.output.find("recovery epoch=2 dead_rank=1 cause=sdc");
  ASSERT_NE(recovery, std::string::npos) << out.output;
  const size_t saved = out.output.find("checkpoint step=18 ");
  ASSERT_NE(saved, std::string::npos) << out.output;
  EXPECT_GT(saved, recovery) << "step 18 was staged before the verdict\n" << out.output;
  EXPECT_EQ(out.output.find("checkpoint step=18 ", saved + 1), std::string::npos) << out.output;
  ExpectLossesOf(ref, out);
}

// No false verdict in a 1,000-step clean run at dp 3 with a check after every step (the
// tiny model: a few seconds).
TEST(LmTrainerSdcTest, NoFalseVerdictInAThousandCleanStepsCheckedEveryStep) {
  RunResult out = RunCommand(absl::StrCat(
      "timeout 240 ", Bin("trident-run"), " --nproc 3 -- ", Bin("lm-trainer"),
      " --dp 3 --steps 1000 --context 8 --embed 8 --ffn 64 --batch 48 --microbatches 2 "
      "--val-samples 64 --eval-every 500 --seed 5 --timeout 30s --sdc-every 1 2>&1"));
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("done steps=1000"));
  EXPECT_THAT(out.output, HasSubstr("sdc_checks=1000 "));
  EXPECT_THAT(out.output, Not(HasSubstr("sdc step=")));
  EXPECT_THAT(out.output, Not(HasSubstr("recovery epoch=")));
}

// Burn-in under trident-run: a worker whose compute check fails at startup is not admitted
// and the spare takes its rank before training starts; the losses are a clean run's.
TEST(LmTrainerBurnInTest, AWorkerFailingItsBurnInIsReplacedBeforeTrainingStarts) {
  RunResult ref = Train("burn_ref", 2, 0, "");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const std::string dir = absl::StrCat(::testing::TempDir(), "/lm_burn_", getpid());
  RunResult out = RunCommand(absl::StrCat(
      "(rm -rf ", dir, "; TRIDENT_TEST_BURN_IN_FAIL=w1:compute timeout 120 ", Bin("trident-run"),
      " --nproc 2 --spares 1 --burn-in quick -- ", Bin("lm-trainer"), " ", Trainer(2),
      " --ckpt-dir ", dir, " 2>&1; rc=$?; rm -rf ", dir, "; exit $rc)"));
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("rank 1 was not admitted: burn-in failed check=compute"));
  EXPECT_THAT(out.output, HasSubstr("spare s0 takes rank 1"));
  EXPECT_THAT(out.output, Not(HasSubstr("[rank 1] step=")));
  ExpectLossesOf(ref, out);
}

}  // namespace
