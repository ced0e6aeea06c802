// Failures under `trident-run --spares`: a rank killed or stopped at a chosen step is replaced
// by a spare, every rank goes back to the last committed checkpoint, and the run ends with
// the losses of a run that never failed; two failures, a failure during a recovery, an idle
// spare's death, and no spare left. Every run has a deadline (`timeout`), so a hang fails the
// test instead of stalling CI.
#include <cmath>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "run_util.h"

namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using trident::testing::Bin;
using lm::testing::Losses;
using trident::testing::RunResult;
using trident::testing::RunCommand;

// A small model on 8 ranks (tp 2 x pp 2 x dp 2): 30 steps take a few seconds on 2 cores.
const std::string kTrainer =
    "--tp 2 --pp 2 --dp 2 --steps 30 --context 8 --embed 8 --ffn 64 --batch 32 "
    "--microbatches 4 --val-samples 64 --eval-every 10 --seed 5 --timeout 30s --ckpt-every 5";
// Same bound as lm_trainer_test.cc's equivalence test; a recovery at the same layout in fact
// reproduces the losses bit for bit.
constexpr double kRelTolerance = 1e-4;
// No run may take longer than this (a hang is a failure, not a wait).
constexpr int kDeadlineSeconds = 120;

std::string Dir(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/lm_recovery_", name, "_", getpid());
}

// trident-run with `spares` spares and lm-trainer's flags `extra`, in its own checkpoint dir.
RunResult Train(const std::string& name, int spares, const std::string& extra,
             const std::string& env = "") {
  const std::string dir = Dir(name);
  return RunCommand(absl::StrCat("rm -rf ", dir, "; ", env, " timeout ", kDeadlineSeconds, " ",
                               Bin("trident-run"), " --nproc 8 --spares ", spares, " -- ",
                               Bin("lm-trainer"), " ", kTrainer, " --ckpt-dir ", dir, " ",
                               extra));
}

// The losses of the same run without failures, computed once.
const std::map<int, double>& Reference() {
  static const auto* ref = [] {
    RunResult out = Train("reference", 0, "");
    EXPECT_EQ(out.exit_code, 0) << out.output;
    return new std::map<int, double>(Losses(out.output));
  }();
  return *ref;
}

void ExpectReferenceLosses(const RunResult& out) {
  const auto want = Reference();
  const auto got = Losses(out.output);
  ASSERT_EQ(want.size(), 30u);
  for (const auto& [step, loss] : want) {
    ASSERT_TRUE(got.count(step)) << "no loss for step " << step << "\n" << out.output;
    // After a recovery a step is printed again when it is redone; the map keeps the last.
    EXPECT_NEAR(got.at(step), loss, kRelTolerance * loss) << "step " << step;
  }
}

TEST(LmTrainerRecoveryTest, KilledRankIsReplacedAndLossesMatchARunWithoutFailure) {
  RunResult out = Train("kill", 1, "--inject-fault w3:17:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  // The spare waited initialised: its build at promotion only exchanged addresses.
  EXPECT_THAT(out.output, HasSubstr("spare s0 ready (store connected, fabric endpoint open)"));
  EXPECT_THAT(out.output, HasSubstr("trident-run: epoch 2: spare s0 takes rank 3 (w3 killed by signal 9 (SIGKILL))"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=3 cause=SIGKILL"));
  EXPECT_THAT(out.output, HasSubstr("done steps=30"));
  // Step 17 died before its end: back to checkpoint 15 (steps 16 and 17 redone), or to 10
  // when the failure aborted 15's commit, still in flight on a loaded machine.
  EXPECT_THAT(out.output, ContainsRegex("resume_step=(16|11) "));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, StoppedRankIsDeclaredDeadKilledAndReplaced) {
  const absl::Time start = absl::Now();
  RunResult out = Train("stop", 1, "--inject-fault w5:12:STOP", "TRIDENT_HEARTBEAT_TIMEOUT_MS=500");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("rank 5 declared dead: no heartbeat for"));
  EXPECT_THAT(out.output, HasSubstr("its process is stopped (SIGSTOP?); killed"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=5 cause=SIGSTOP"));
  ExpectReferenceLosses(out);
  EXPECT_LT(absl::Now() - start, absl::Seconds(kDeadlineSeconds));
}

TEST(LmTrainerRecoveryTest, DeadlockedTrainingThreadIsDeclaredDeadThoughItsHeartbeatThreadLives) {
  // w2's training thread blocks forever; its heartbeat thread would beat on, but the stall
  // check stops it after TRIDENT_HANG_TIMEOUT_MS. w2's peers wait in ops meanwhile: they are
  // not hung, and only w2 is replaced.
  RunResult out = Train("hang", 1, "--inject-fault w2:12:HANG",
                        "TRIDENT_HANG_TIMEOUT_MS=1000 TRIDENT_HEARTBEAT_TIMEOUT_MS=500");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("rank 2 declared dead: no heartbeat for"));
  EXPECT_THAT(out.output, HasSubstr("it reported: the training thread made no progress for"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=2 cause=hang"));
  EXPECT_THAT(out.output, HasSubstr("job finished after 1 recovery(ies)"));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, TwoFailuresWithTwoSpares) {
  RunResult out = Train("two", 2, "--inject-fault w1:8:KILL,w6:21:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=1 cause=SIGKILL"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=3 dead_rank=6 cause=SIGKILL"));
  EXPECT_THAT(out.output, HasSubstr("job finished after 2 recovery(ies)"));
  ExpectReferenceLosses(out);
}

// Two faults with two spares, in every order and mix of kill and stop, at the same step (a
// few ms apart) and about a second apart: two recoveries, the losses of an unbroken run.
struct TwoFaults {
  const char* name;
  const char* faults;
  const char* first_cause;
  const char* second_cause;
};
class LmTwoFaultsTest : public ::testing::TestWithParam<TwoFaults> {};

TEST_P(LmTwoFaultsTest, BothRecoverWithTheLossesOfAnUnbrokenRun) {
  const TwoFaults& f = GetParam();
  RunResult out = Train(absl::StrCat("two_", f.name), 2, absl::StrCat("--inject-fault ", f.faults),
                        "TRIDENT_HEARTBEAT_TIMEOUT_MS=500");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, ContainsRegex(absl::StrCat("dead_rank=1 cause=", f.first_cause)));
  EXPECT_THAT(out.output, ContainsRegex(absl::StrCat("dead_rank=6 cause=", f.second_cause)));
  EXPECT_THAT(out.output, HasSubstr("job finished after 2 recovery(ies)"));
  ExpectReferenceLosses(out);
}

INSTANTIATE_TEST_SUITE_P(
    Orders, LmTwoFaultsTest,
    ::testing::Values(TwoFaults{"KillKillTogether", "w1:12:KILL,w6:12:KILL", "SIGKILL", "SIGKILL"},
                      TwoFaults{"KillStopTogether", "w1:12:KILL,w6:12:STOP", "SIGKILL", "SIGSTOP"},
                      TwoFaults{"StopKillTogether", "w1:12:STOP,w6:12:KILL", "SIGSTOP", "SIGKILL"},
                      TwoFaults{"StopStopTogether", "w1:12:STOP,w6:12:STOP", "SIGSTOP", "SIGSTOP"},
                      TwoFaults{"KillThenStopApart", "w1:8:KILL,w6:21:STOP", "SIGKILL", "SIGSTOP"},
                      TwoFaults{"StopThenKillApart", "w1:8:STOP,w6:21:KILL", "SIGSTOP", "SIGKILL"}),
    [](const ::testing::TestParamInfo<TwoFaults>& info) { return std::string(info.param.name); });

TEST(LmTrainerRecoveryTest, KillDuringARecovery) {
  // w4 dies while the ranks rebuild after w2's death: the recovery moves on to epoch 3.
  RunResult out = Train("during", 2, "--inject-fault w2:14:KILL,w4:recovery:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("rank 2 killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(out.output, HasSubstr("rank 4 killed by signal 9 (SIGKILL)"));
  EXPECT_THAT(out.output, HasSubstr("job finished after 2 recovery(ies)"));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, IdleSpareDiesThePoolShrinksAndTheJobGoesOn) {
  // s1 is killed as soon as it is ready; later w0 dies and s0 takes its place.
  const std::string dir = Dir("idle");
  const std::string log = dir + ".log";
  RunResult out = RunCommand(absl::StrCat(
      "rm -rf ", dir, "; timeout ", kDeadlineSeconds, " ", Bin("trident-run"),
      " --nproc 8 --spares 2 -- ", Bin("lm-trainer"), " ", kTrainer, " --ckpt-dir ", dir,
      " --inject-fault w0:20:KILL > ", log, " 2>&1 & run=$!; ",
      "for i in $(seq 600); do grep -q \"spare s1 ready\" ", log, " && break; sleep 0.05; done; ",
      // Only this run's processes (its checkpoint directory), never another job's s1.
      "for p in $(pgrep -f \"lm-trainer .*--ckpt-dir ", dir, "( |$)\"); do ",
      "tr \"\\0\" \"\\n\" < /proc/$p/environ 2>/dev/null | "
      "grep -qx TRIDENT_MEMBER=s1 && kill -9 $p; done; wait $run; code=$?; cat ", log,
      "; exit $code"));
  ASSERT_EQ(out.exit_code, 0) << out.output;
  // s0 may or may not have announced itself yet (each spare opens its endpoint first).
  EXPECT_THAT(out.output, ContainsRegex("spare s1 killed by signal 9 \\(SIGKILL\\) while idle; "
                                        "[01] spare\\(s\\) ready"));
  EXPECT_THAT(out.output, HasSubstr("epoch 2: spare s0 takes rank 0"));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, ElasticDpShrinksWhenNoSpareIsLeftAndKeepsTheLosses) {
  // No spare: w3's dp replica (ranks 2, 3, 6, 7) leaves; the other goes on with the whole
  // global batch, so the losses stay those of the run without failure.
  RunResult out = Train("elastic", 0, "--elastic-dp --inject-fault w3:17:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("epoch 2: no spare for rank 3 (w3 killed by signal 9 "
                                    "(SIGKILL)); the job shrinks from 8 to 4 ranks"));
  EXPECT_THAT(out.output, HasSubstr("w2, w6, w7 left the world with the dead rank's group"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=3 cause=SIGKILL"));
  // Back to checkpoint 15, or 10 when the failure aborted 15's commit (it is in flight).
  EXPECT_THAT(out.output, ContainsRegex("world=4 dp=1 resume_step=(16|11) "));
  EXPECT_THAT(out.output, HasSubstr("done steps=30"));
  // The retired ranks wait as spares and end cleanly with the job.
  EXPECT_THAT(out.output, HasSubstr("w6 left the world in a shrink and was not needed again"));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, ElasticDpWithZero1RestoresTheShardsOfTheSmallerDp) {
  // ZeRO-1's moment shards depend on dp: every rank reloads checkpoint 15 at dp 1.
  RunResult out = Train("elastic_zero1", 0, "--elastic-dp --zero1 --inject-fault w6:17:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("the job shrinks from 8 to 4 ranks"));
  // Back to checkpoint 15, or 10 when the failure aborted 15's commit (it is in flight).
  EXPECT_THAT(out.output, ContainsRegex("world=4 dp=1 resume_step=(16|11) "));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, ElasticDpRetiredRankTakesTheNextDeadRanksPlace) {
  // w3's death shrinks dp to 1; then w0 dies and w2, retired by the shrink, replaces it,
  // with its new place's state from a peer's memory.
  RunResult out = Train("elastic_rejoin", 0, "--elastic-dp --inject-fault w3:8:KILL,w0:21:KILL");
  ASSERT_EQ(out.exit_code, 0) << out.output;
  EXPECT_THAT(out.output, HasSubstr("the job shrinks from 8 to 4 ranks"));
  EXPECT_THAT(out.output, HasSubstr("epoch 3: spare w2 takes rank 0 (w0 killed by signal 9 (SIGKILL))"));
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=3 dead_rank=0 cause=SIGKILL"));
  EXPECT_THAT(out.output, HasSubstr("source=peer world=4 dp=1"));
  EXPECT_THAT(out.output, HasSubstr("job finished after 2 recovery(ies)"));
  ExpectReferenceLosses(out);
}

TEST(LmTrainerRecoveryTest, ElasticDpNeedsABatchEveryDpDivides) {
  RunResult out = RunCommand(absl::StrCat(Bin("lm-trainer"), " --dp 3 --batch 36 --microbatches 4 "
                                          "--elastic-dp --steps 1"));
  EXPECT_EQ(out.exit_code, 2) << out.output;
  EXPECT_THAT(out.output, HasSubstr("--elastic-dp: --batch 36 is not a multiple of dp x "
                                    "microbatches = 2 x 4, so dp could not shrink to 2"));
}

TEST(LmTrainerRecoveryTest, NoSpareLeftStopsTheJobNamingTheRank) {
  const absl::Time start = absl::Now();
  RunResult out = Train("nospare", 1, "--inject-fault w2:6:KILL,s0:9:KILL");
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(out.exit_code, 1) << out.output;
  // The first failure is recovered; the second (the promoted spare, now rank 2) cannot be.
  EXPECT_THAT(out.output, HasSubstr("recovery epoch=2 dead_rank=2"));
  EXPECT_THAT(out.output, HasSubstr(
      "job failed: rank 2 killed by signal 9 (SIGKILL) and no spare could replace it"));
  EXPECT_THAT(out.output, HasSubstr("the job is ending"));
  EXPECT_THAT(out.output, Not(HasSubstr("done steps=30")));
  EXPECT_LT(took, absl::Seconds(30)) << "the survivors must stop at once, not at a deadline";
}

}  // namespace
