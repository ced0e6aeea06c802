// Silent data corruption across dp replicas, in-process (tests/runtime/inproc_job.h): one bit
// of one rank's weights flips right after a step; the replica check (LoopOptions::sdc_every)
// must find it within sdc_every steps, name that rank (by majority with three replicas, by
// replay with two), have the coordinator replace it by a spare, finish with the weights of
// an unbroken run, and never let the flipped state into a committed checkpoint.
#include <stdlib.h>

#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inproc_job.h"
#include "trident/checkpoint.h"

namespace trident::testing {
namespace {

using ::testing::HasSubstr;
using JobState = health::Coordinator::JobState;

constexpr int kSteps = 16;
constexpr int kEvery = 2;

std::string TempDir() {
  char tmpl[] = "/tmp/trident-sdc-XXXXXX";
  return mkdtemp(tmpl);
}

class SdcTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!dir_.empty()) (void)system(("rm -rf " + dir_).c_str());
  }
  InprocJob::Options Job(int world, int spares) {
    dir_ = TempDir();
    return {.world_size = world, .spares = spares, .steps = kSteps, .ckpt_dir = dir_,
            .ckpt_every = 4, .sdc_every = kEvery};
  }
  // A step in [3, kSteps - 4], printed so that a failure can be replayed.
  static int RandomStep() {
    std::random_device rd;
    const int step = 3 + static_cast<int>(rd() % (kSteps - 6));
    std::printf("flip after step %d\n", step);
    return step;
  }
  // Every committed checkpoint holds the unbroken run's weights of its step.
  void ExpectNoCorruptCheckpoint(int world) {
    absl::StatusOr<std::vector<CheckpointInfo>> list = ListCheckpoints(dir_);
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_FALSE(list->empty());
    for (const CheckpointInfo& c : *list) {
      std::vector<double> w(ToyTrainer::kParams);
      TensorRequest req;
      req.name = "w";
      req.tensor = Tensor::Of(w.data(), w.size());
      ASSERT_TRUE(LoadCheckpoint(dir_, c.step, {req}).ok()) << c.step;
      EXPECT_EQ(w, ReferenceWeights(world, c.step)) << "checkpoint of step " << c.step;
    }
  }
  std::string dir_;
};

void ExpectFinishedLikeAnUnbrokenRun(InprocJob& job, int world) {
  const std::vector<double> want = ReferenceWeights(world, kSteps);
  std::vector<const MemberResult*> done = job.Finishers();
  EXPECT_EQ(done.size(), static_cast<size_t>(world));
  for (const MemberResult* r : done) {
    EXPECT_EQ(r->step, kSteps);
    EXPECT_EQ(r->weights, want);
  }
}

// The verdict as w0 saw it: the one check that disagreed.
const SdcEvent* Verdict(const MemberResult& r) {
  for (const SdcEvent& e : r.sdc) {
    if (!e.agree) return &e;
  }
  return nullptr;
}

TEST_F(SdcTest, ThreeReplicasNameTheOddOneByMajorityAndASpareReplacesIt) {
  InprocJob job(Job(3, 1));
  const int flip = RandomStep();
  job.FlipAt("w1", flip, /*index=*/5, /*bit=*/17);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 3);
  const MemberResult& w0 = job.result("w0");
  const SdcEvent* v = Verdict(w0);
  ASSERT_NE(v, nullptr);
  EXPECT_GE(v->step, flip);
  EXPECT_LT(v->step, flip + kEvery) << "found within sdc_every steps";
  EXPECT_EQ(v->ranks, std::vector<int>{1});
  EXPECT_EQ(v->replicas, 3);
  EXPECT_EQ(v->method, "majority");
  EXPECT_EQ(v->action, "replaced");
  ASSERT_EQ(w0.recoveries.size(), 1u);
  EXPECT_EQ(w0.recoveries[0].failed.rank, 1);
  EXPECT_EQ(w0.recoveries[0].failed.member, "w1");
  EXPECT_EQ(w0.recoveries[0].failed.kind, FailureKind::kSilentDataCorruption);
  EXPECT_EQ(w0.recoveries[0].failed.ShortCause(), "sdc");
  EXPECT_THAT(w0.recoveries[0].failed.cause, HasSubstr("silent data corruption"));
  EXPECT_LE(w0.recoveries[0].resume_step, v->step);
  EXPECT_THAT(job.result("w1").status, ::testing::Not(::testing::Eq(absl::OkStatus())));
  ExpectNoCorruptCheckpoint(3);
}

TEST_F(SdcTest, TwoReplicasReplayAndNameTheOneThatDisagreesWithItsOwnReplay) {
  InprocJob job(Job(2, 1));
  const int flip = RandomStep();
  job.FlipAt("w0", flip, /*index=*/2, /*bit=*/40);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 2);
  const MemberResult& w1 = job.result("w1");
  const SdcEvent* v = Verdict(w1);
  ASSERT_NE(v, nullptr);
  EXPECT_GE(v->step, flip);
  EXPECT_LT(v->step, flip + kEvery);
  EXPECT_EQ(v->ranks, std::vector<int>{0});
  EXPECT_EQ(v->replicas, 2);
  EXPECT_EQ(v->method, "replay");
  EXPECT_EQ(v->action, "replaced");
  ASSERT_EQ(w1.recoveries.size(), 1u);
  EXPECT_EQ(w1.recoveries[0].failed.rank, 0);
  EXPECT_EQ(w1.recoveries[0].failed.kind, FailureKind::kSilentDataCorruption);
  ExpectNoCorruptCheckpoint(2);
}

TEST_F(SdcTest, TwoReplicasBothFlippedAlikeIsNoVerdict) {
  // The same bit on both replicas: they agree, so nothing is named (the check is about
  // replicas disagreeing, not about the values).
  InprocJob job(Job(2, 0));
  job.FlipAt("w0", 5, 2, 40);
  job.FlipAt("w1", 5, 2, 40);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  for (const MemberResult* r : job.Finishers()) {
    EXPECT_EQ(Verdict(*r), nullptr);
    EXPECT_TRUE(r->recoveries.empty());
  }
}

TEST_F(SdcTest, TwoReplicasBothDisagreeingWithTheirReplaysRollBackUnattributed) {
  // Different bits on both replicas: each differs from its own replay, so nobody can be
  // named; both are back at the checked step, rolled back and redone, and go on.
  InprocJob job(Job(2, 1));
  job.FlipAt("w0", 6, 2, 40);
  job.FlipAt("w1", 6, 3, 41);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 2);
  for (const char* m : {"w0", "w1"}) {
    const SdcEvent* v = Verdict(job.result(m));
    ASSERT_NE(v, nullptr) << m;
    EXPECT_EQ(v->step, 6);
    EXPECT_TRUE(v->ranks.empty());
    EXPECT_EQ(v->method, "replay");
    EXPECT_EQ(v->action, "rollback");
    EXPECT_TRUE(job.result(m).recoveries.empty()) << "nobody replaced";
  }
  EXPECT_EQ(job.coordinator().RankOf("s0"), -1);
  ExpectNoCorruptCheckpoint(2);
}

TEST_F(SdcTest, NoFalseVerdictInALongCleanRun) {
  InprocJob::Options o = Job(3, 0);
  o.steps = 1000;
  o.ckpt_every = 250;
  o.sdc_every = 1;
  InprocJob job(o);
  ASSERT_EQ(job.Run(absl::Seconds(120)), JobState::kFinished)
      << job.coordinator().failure().value_or("");
  std::vector<const MemberResult*> done = job.Finishers();
  ASSERT_EQ(done.size(), 3u);
  for (const MemberResult* r : done) {
    EXPECT_EQ(r->step, 1000);
    EXPECT_EQ(r->sdc.size(), 1000u) << "a check after every step";
    EXPECT_EQ(Verdict(*r), nullptr);
    EXPECT_TRUE(r->recoveries.empty());
  }
  EXPECT_TRUE(job.coordinator().recoveries().empty());
}

}  // namespace
}  // namespace trident::testing
