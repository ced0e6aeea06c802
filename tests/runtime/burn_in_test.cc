// Burn-in at admission, in-process (inproc_job.h): a worker whose burn-in fails at startup is
// replaced by a spare before training starts; a spare whose burn-in fails is not admitted and
// the pool shrinks. The fault is injected through the test-only TRIDENT_TEST_BURN_IN_FAIL.
#include <stdlib.h>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inproc_job.h"

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

}  // namespace
}  // namespace trident::testing
