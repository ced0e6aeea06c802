// Burn-in at admission, in-process (inproc_job.h): a worker whose burn-in fails at startup is
// replaced by a spare before training starts; a spare whose burn-in fails is not admitted and
// the pool shrinks; the same for the transport self-test at a world build (a worker at
// startup, a promoted spare). The fault is injected through the test-only
// TRIDENT_TEST_BURN_IN_FAIL.
#include <stdlib.h>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inproc_job.h"
#include "runtime/transport_self_test.h"

namespace trident::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using JobState = health::Coordinator::JobState;

class BurnInJobTest : public ::testing::Test {
 protected:
  void SetUp() override { setenv("TRIDENT_BURN_IN", "quick", 1); }
  void TearDown() override {
    unsetenv("TRIDENT_TEST_BURN_IN_FAIL");
    unsetenv("TRIDENT_BURN_IN");
  }
  static bool Said(InprocJob& job, const std::string& what) {
    for (const std::string& line : job.said) {
      if (absl::StrContains(line, what)) return true;
    }
    return false;
  }
};

TEST_F(BurnInJobTest, AWorkerThatFailsItsBurnInIsReplacedBeforeTrainingStarts) {
  setenv("TRIDENT_TEST_BURN_IN_FAIL", "w1:memory", 1);
  InprocJob job({.world_size = 3, .spares = 1, .steps = 6});
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  EXPECT_TRUE(Said(job, "rank 1 was not admitted: burn-in failed check=memory"))
      << ::testing::PrintToString(job.said);
  EXPECT_THAT(job.result("w1").status.message(), HasSubstr("burn-in of w1 failed check=memory"));
  EXPECT_EQ(job.result("w1").step, -1) << "w1 never trained";
  EXPECT_EQ(job.coordinator().RankOf("s0"), 1);
  const std::vector<double> want = ReferenceWeights(3, 6);
  ASSERT_EQ(job.Finishers().size(), 3u);
  for (const MemberResult* r : job.Finishers()) EXPECT_EQ(r->weights, want);
}

TEST_F(BurnInJobTest, ASpareThatFailsItsBurnInIsNeverPromotedAndThePoolShrinks) {
  // The only spare fails its burn-in; w1 dies: nobody may take its place, so the job stops
  // naming rank 1 (whether the spare's verdict or the death came first).
  setenv("TRIDENT_TEST_BURN_IN_FAIL", "s0:compute", 1);
  InprocJob job({.world_size = 2, .spares = 1, .steps = 12});
  job.KillAt("w1", 3);
  ASSERT_EQ(job.Run(), JobState::kFailed);
  EXPECT_TRUE(Said(job, "spare s0 was not admitted: burn-in failed check=compute"))
      << ::testing::PrintToString(job.said);
  EXPECT_THAT(job.result("s0").status.message(), HasSubstr("GEMM 64x64 round 0: C[1][1] is"));
  EXPECT_EQ(job.coordinator().RankOf("s0"), -1) << "never promoted";
  EXPECT_THAT(job.coordinator().failure().value_or(""), HasSubstr("rank 1"));
  EXPECT_TRUE(job.coordinator().recoveries().empty());
}

// The self-test itself over threads as ranks: clean, and with rank 1 seeing a wrong word
// (it fails with the word and both values; the others learn who, in the same call).
TEST(TransportSelfTest, EveryRankChecksBothNeighboursAndAllLearnWhoFailed) {
  for (bool inject : {false, true}) {
    std::vector<std::unique_ptr<Communicator>> comms = NewInprocCommunicators({.size = 3});
    std::vector<absl::Status> out(3);
    std::vector<std::thread> threads;
    for (int r = 0; r < 3; ++r) {
      threads.emplace_back([&, r] {
        out[r] = runtime_internal::TransportSelfTest(
            *comms[r], /*epoch=*/4, {.bytes = 4096, .inject = inject && r == 1});
      });
    }
    for (std::thread& t : threads) t.join();
    if (!inject) {
      for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
      continue;
    }
    EXPECT_EQ(out[1].code(), absl::StatusCode::kDataLoss) << out[1];
    EXPECT_THAT(std::string(out[1].message()),
                ::testing::ContainsRegex("check=transport word 256 of the 4096 bytes from rank 0 "
                                         "is [0-9a-f]{16}, sent [0-9a-f]{16}"));
    for (int r : {0, 2}) {
      EXPECT_EQ(out[r].code(), absl::StatusCode::kAborted) << out[r];
      EXPECT_THAT(out[r].message(), HasSubstr("rank 1 failed its transport self-test in epoch 4"));
    }
  }
}

TEST_F(BurnInJobTest, AWorkerFailingItsTransportSelfTestIsReplacedBeforeTrainingStarts) {
  setenv("TRIDENT_TEST_BURN_IN_FAIL", "w1:transport", 1);
  InprocJob job({.world_size = 3, .spares = 1, .steps = 6});
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  EXPECT_TRUE(Said(job, "rank 1 was not admitted: burn-in failed check=transport word"))
      << ::testing::PrintToString(job.said);
  EXPECT_THAT(job.result("w1").status.message(),
              HasSubstr("burn-in of w1 failed check=transport word"));
  EXPECT_EQ(job.result("w1").step, -1) << "w1 never trained";
  EXPECT_EQ(job.coordinator().RankOf("s0"), 1);
  const std::vector<double> want = ReferenceWeights(3, 6);
  ASSERT_EQ(job.Finishers().size(), 3u);
  for (const MemberResult* r : job.Finishers()) {
    EXPECT_EQ(r->weights, want);
    ASSERT_EQ(r->steps_run.size(), 6u) << "no step ran before the spare took rank 1";
    EXPECT_EQ(r->steps_run.front().first, 1);
  }
}

TEST_F(BurnInJobTest, APromotedSpareFailingItsTransportSelfTestIsNotAdmitted) {
  // A spare cannot test the transport with neighbours until it is in a world: it is tested at
  // the build of the world it is promoted into, fails, leaves (the same failure path as a
  // failed burn-in), and with no other spare the job stops naming rank 1.
  setenv("TRIDENT_TEST_BURN_IN_FAIL", "s0:transport", 1);
  InprocJob job({.world_size = 2, .spares = 1, .steps = 8});
  job.KillAt("w1", 3);
  ASSERT_EQ(job.Run(), JobState::kFailed);
  EXPECT_THAT(job.result("s0").status.message(),
              HasSubstr("burn-in of s0 failed check=transport word"));
  EXPECT_TRUE(Said(job, "rank 1 was not admitted: burn-in failed check=transport"))
      << ::testing::PrintToString(job.said);
  EXPECT_EQ(job.result("s0").step, -1) << "s0 never trained";
  EXPECT_THAT(job.coordinator().failure().value_or(""), HasSubstr("rank 1"));
}

}  // namespace
}  // namespace trident::testing
