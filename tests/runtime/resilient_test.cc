// The resilient loop and the runtime, in-process: members are threads over the in-process
// transport, health::Coordinator decides (tests/runtime/inproc_job.h). Each case asserts the
// specific outcome: which rank was replaced and why, where the state came from, and weights
// bit-identical to an unbroken run (the toy trainer's arithmetic is exact).
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <set>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inproc_job.h"

namespace trident::testing {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using JobState = health::Coordinator::JobState;

constexpr int kSteps = 12;

std::string TempDir() {
  char tmpl[] = "/tmp/trident-resilient-XXXXXX";
  return mkdtemp(tmpl);
}

class ResilientTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!dir_.empty()) (void)system(("rm -rf " + dir_).c_str());
  }
  InprocJob::Options Job(int world, int spares) {
    dir_ = TempDir();
    return {.world_size = world, .spares = spares, .steps = kSteps, .ckpt_dir = dir_};
  }
  // Every member that finished ran every step and has the unbroken run's weights.
  void ExpectFinishedLikeAnUnbrokenRun(InprocJob& job, size_t finishers) {
    const std::vector<double> want = ReferenceWeights(4, kSteps);
    std::vector<const MemberResult*> done = job.Finishers();
    EXPECT_EQ(done.size(), finishers);
    for (const MemberResult* r : done) {
      EXPECT_EQ(r->step, kSteps);
      EXPECT_EQ(r->weights, want);
    }
  }
  // The ranks replaced, as rank 0's member saw the recoveries.
  static std::set<int> Replaced(const MemberResult& r) {
    std::set<int> out;
    for (const RecoveryReport& rep : r.recoveries) out.insert(rep.failed.rank);
    return out;
  }
  std::string dir_;
};

TEST_F(ResilientTest, KilledRankIsReplacedByASpareRestoredFromAPeerOrTheCheckpoint) {
  InprocJob job(Job(4, 1));
  job.KillAt("w1", 5);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 4);
  const MemberResult& w0 = job.result("w0");
  ASSERT_EQ(w0.recoveries.size(), 1u);
  const RecoveryReport& r = w0.recoveries[0];
  EXPECT_EQ(r.epoch, 2);
  EXPECT_EQ(r.failed.rank, 1);
  EXPECT_EQ(r.failed.member, "w1");
  EXPECT_EQ(r.failed.kind, FailureKind::kSignaled);
  EXPECT_EQ(r.failed.ShortCause(), "SIGKILL");
  EXPECT_THAT(r.source, AnyOf("peer", "checkpoint"));
  EXPECT_LE(r.resume_step, 5);
  EXPECT_EQ(job.result("s0").recoveries.size(), 1u) << "the spare took part in the restore";
}

TEST_F(ResilientTest, StoppedRankIsDeclaredDeadKilledAndReplaced) {
  InprocJob job(Job(4, 1));
  job.StopAt("w2", 4);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 4);
  ASSERT_EQ(job.result("w0").recoveries.size(), 1u);
  EXPECT_EQ(job.result("w0").recoveries[0].failed.kind, FailureKind::kStopped);
  EXPECT_EQ(job.result("w0").recoveries[0].failed.ShortCause(), "SIGSTOP");
}

// Two faults with two spares, in every order and mix of kill and stop, close together and
// apart: both recover (the first promoted spare never waits out a doomed build).
struct TwoFaults {
  const char* name;
  bool first_stop;
  int first_step;
  bool second_stop;
  int second_step;
};
class TwoFaultsTest : public ResilientTest, public ::testing::WithParamInterface<TwoFaults> {};

TEST_P(TwoFaultsTest, BothAreReplacedAndTheWeightsMatchAnUnbrokenRun) {
  const TwoFaults& f = GetParam();
  InprocJob job(Job(4, 2));
  if (f.first_stop) job.StopAt("w1", f.first_step); else job.KillAt("w1", f.first_step);
  if (f.second_stop) job.StopAt("w3", f.second_step); else job.KillAt("w3", f.second_step);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 4);
  EXPECT_EQ(Replaced(job.result("w0")), (std::set<int>{1, 3}));
  EXPECT_EQ(job.coordinator().recoveries().size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(
    Orders, TwoFaultsTest,
    ::testing::Values(TwoFaults{"KillKillTogether", false, 5, false, 5},
                      TwoFaults{"KillStopTogether", false, 5, true, 5},
                      TwoFaults{"StopKillTogether", true, 5, false, 5},
                      TwoFaults{"StopStopTogether", true, 5, true, 5},
                      TwoFaults{"KillThenStopApart", false, 3, true, 8},
                      TwoFaults{"StopThenKillApart", true, 3, false, 8}),
    [](const ::testing::TestParamInfo<TwoFaults>& info) { return std::string(info.param.name); });

TEST_F(ResilientTest, ARankDyingDuringARecoveryIsReplacedToo) {
  InprocJob job(Job(4, 2));
  job.KillAt("w1", 5);
  job.KillAt("w2", -1);  // right after the first recovery built its world
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 4);
  EXPECT_EQ(Replaced(job.result("w0")), (std::set<int>{1, 2}));
}

// A rank dies while the job's last checkpoint commits: the survivors do not finish with the
// save failed (leaving the promoted spare waiting for a world they never join) but recover,
// redo the steps since the last commit, and end with the final state committed.
TEST_F(ResilientTest, ADeathDuringTheLastSaveIsRecoveredAndTheFinalStateCommitted) {
  InprocJob job(Job(4, 1));
  job.KillInLastSave("w2");
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 4);
  EXPECT_EQ(Replaced(job.result("w0")), std::set<int>{2});
  EXPECT_EQ(job.result("s0").step, kSteps);
  absl::StatusOr<int64_t> latest = LatestCheckpointStep(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, kSteps);
}

TEST_F(ResilientTest, NoSpareLeftEndsTheJobNamingTheRankAndTheSurvivorsStop) {
  InprocJob job(Job(2, 0));
  job.KillAt("w1", 3);
  ASSERT_EQ(job.Run(), JobState::kFailed);
  EXPECT_EQ(job.coordinator().failure(), "rank 1 killed by signal 9 (SIGKILL)");
  const absl::Status& s = job.result("w0").status;
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_THAT(s.message(), HasSubstr("the job is ending: failed: rank 1 killed by signal 9"));
}

TEST_F(ResilientTest, ElasticShrinkDropsTheDeadRanksReplicaAndKeepsTheWeights) {
  InprocJob::Options o = Job(4, 0);
  o.shrink_groups = {{0, 1}, {2, 3}};
  InprocJob job(o);
  job.KillAt("w3", 5);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  ExpectFinishedLikeAnUnbrokenRun(job, 2);
  ASSERT_EQ(job.result("w0").recoveries.size(), 1u);
  EXPECT_EQ(job.result("w0").recoveries[0].world_size, 2);
  // The dead rank's replica partner waited as a spare and was not needed again.
  EXPECT_TRUE(absl::IsCancelled(job.result("w2").status)) << job.result("w2").status;
}

// One process on its own (no store, no TRIDENT_WORLD_SIZE): a runtime of one rank.
absl::Status RunAlone(ToyTrainer& t, LoopOptions loop) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Init({});
  if (!rt.ok()) return rt.status();
  EXPECT_FALSE((*rt)->in_job());
  return RunResilient(**rt, t, loop);
}

TEST_F(ResilientTest, ResumeSkipsACorruptNewestCheckpointSayingWhy) {
  dir_ = TempDir();
  ToyTrainer first(4);
  ASSERT_TRUE(RunAlone(first, {.steps = 6, .ckpt_dir = dir_, .ckpt_every = 2, .keep = 0}).ok());
  // Corrupt the newest checkpoint's data (its last bytes) on disk.
  const std::string step_dir = dir_ + "/step-000000006";
  DIR* d = opendir(step_dir.c_str());
  ASSERT_NE(d, nullptr);
  std::string shard;
  while (dirent* e = readdir(d)) {
    if (absl::StartsWith(e->d_name, "shard-")) shard = step_dir + "/" + e->d_name;
  }
  closedir(d);
  ASSERT_FALSE(shard.empty());
  const int fd = open(shard.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const off_t size = lseek(fd, 0, SEEK_END);
  const char junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(pwrite(fd, junk, sizeof junk, size - 8), 8);
  close(fd);

  ToyTrainer second(4);
  int64_t resumed = -1;
  std::vector<std::string> skipped;
  LoopOptions loop{.steps = 10, .ckpt_dir = dir_, .resume = true};
  loop.on_resume = [&](int64_t step, const std::vector<std::string>& s) {
    resumed = step;
    skipped = s;
  };
  ASSERT_TRUE(RunAlone(second, loop).ok());
  EXPECT_EQ(resumed, 4);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("step 6: rank 0: DATA_LOSS"));
  EXPECT_EQ(second.weights(), ReferenceWeights(4, 10));
}

TEST_F(ResilientTest, AloneAFailureIsFinal) {
  ToyTrainer t(4);
  t.fate = [](int64_t step) {
    return step == 2 ? absl::AbortedError("a peer went away") : absl::OkStatus();
  };
  EXPECT_EQ(RunAlone(t, {.steps = 5}), absl::AbortedError("a peer went away"));
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Init({});
  ASSERT_TRUE(rt.ok());
  absl::StatusOr<Recovery> r = (*rt)->Recover(absl::AbortedError("x"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("nothing can recover it"));
}

TEST_F(ResilientTest, ErrorsNoEpochCanCureEndTheLoopAtOnce) {
  EXPECT_TRUE(IsRecoverable(absl::AbortedError("")));
  EXPECT_TRUE(IsRecoverable(absl::DeadlineExceededError("")));
  EXPECT_FALSE(IsRecoverable(absl::InvalidArgumentError("")));
  EXPECT_FALSE(IsRecoverable(absl::DataLossError("")));
  ToyTrainer t(4);
  t.fate = [](int64_t step) {
    return step == 3 ? absl::InvalidArgumentError("bad shapes") : absl::OkStatus();
  };
  absl::Status s = RunAlone(t, {.steps = 5});
  EXPECT_EQ(s, absl::InvalidArgumentError("bad shapes"));
  EXPECT_EQ(t.step(), 2);
}

}  // namespace
}  // namespace trident::testing
