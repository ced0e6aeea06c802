// Silent data corruption across dp replicas, in-process (tests/runtime/inproc_job.h): one bit
// of one rank's weights flips right after a step; the replica check (LoopOptions::sdc_every)
// must find it within sdc_every steps, name that rank (by majority with three replicas, by
// replay with two), have the coordinator replace it by a spare, finish with the weights of
// an unbroken run, and never let the flipped state into a committed checkpoint.
#include <stdlib.h>

#include <fstream>
#include <iterator>
#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inproc_job.h"
#include "absl/strings/str_format.h"
#include "runtime/restore.h"
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

// After the verdict at `verdict`, the ranks resume after `good` (the last good digest: the
// verdict step itself after a replay, the previous agreeing check after a majority verdict,
// as the named rank's values may have fed the steps in between) from a healthy replica's
// state (source=replica), redo exactly the steps good + 1 .. verdict, and every step from
// the resumed one on has the unbroken run's weights (the toy's analogue of per-step losses).
void ExpectResumedAfter(const MemberResult& r, int64_t verdict, int64_t good, int world) {
  ASSERT_EQ(r.recoveries.size(), 1u);
  EXPECT_EQ(r.recoveries[0].source, "replica");
  EXPECT_EQ(r.recoveries[0].steps_redone, verdict - good);
  EXPECT_EQ(r.recoveries[0].resume_step, good + 1);
  size_t at = 0;  // the verdict step's (last) run
  while (at < r.steps_run.size() && r.steps_run[at].first != verdict) ++at;
  ASSERT_LT(at, r.steps_run.size());
  while (at + 1 < r.steps_run.size() && r.steps_run[at + 1].first <= verdict &&
         r.steps_run[at + 1].first > r.steps_run[at].first) {
    ++at;
  }
  int64_t redone = 0;
  int64_t expect = good + 1;
  for (size_t i = at + 1; i < r.steps_run.size(); ++i) {
    if (r.steps_run[i].first <= verdict) ++redone;
    EXPECT_EQ(r.steps_run[i].first, expect) << "steps run in order after the recovery";
    EXPECT_EQ(r.steps_run[i].second, ReferenceWeights(world, static_cast<int>(expect)))
        << "step " << expect;
    ++expect;
  }
  EXPECT_EQ(redone, verdict - good) << "steps redone after the verdict";
  EXPECT_EQ(expect, kSteps + 1);
}

// The newest check before `verdict` that agreed.
int64_t LastGoodBefore(const MemberResult& r, int64_t verdict) {
  int64_t good = -1;
  for (const SdcEvent& e : r.sdc) {
    if (e.agree && e.step < verdict) good = e.step;
  }
  return good;
}

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
  const int64_t good = LastGoodBefore(w0, v->step);
  ASSERT_GE(good, 1) << "the flip is after step 3, a check agreed before it";
  EXPECT_EQ(v->step - good, kEvery) << "the previous check";
  EXPECT_EQ(v->last_good_step, good);
  ExpectResumedAfter(w0, v->step, good, 3);
  ExpectResumedAfter(job.result("w2"), v->step, good, 3);
  // The spare started from w0's or w2's copy of the last good digest and ran the rest.
  const MemberResult& s0 = job.result("s0");
  ASSERT_FALSE(s0.steps_run.empty());
  EXPECT_EQ(s0.steps_run.front().first, good + 1);
  EXPECT_EQ(s0.weights, ReferenceWeights(3, kSteps));
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
  // w1 replayed from the last checkpoint to decide, and its replay matched its state: after
  // the verdict nothing more is redone.
  ExpectResumedAfter(w1, v->step, v->step, 2);
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

namespace trident::testing {
namespace {

// A checkpoint whose files pass their checksums but whose state does not hash to the digest
// its commit recorded is refused on restore (kDataLoss, the next older one is used).
TEST_F(SdcTest, ARestoredStateThatDoesNotMatchTheCommittedDigestIsRefused) {
  InprocJob job(Job(2, 0));
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  absl::StatusOr<CheckpointManifest> m = ReadManifest(dir_, kSteps);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->replica_sets, (std::vector<int64_t>{0, 0})) << "the commit records the digests";
  ASSERT_EQ(m->replica_digests[0], m->replica_digests[1]);
  // Another digest in the manifest of the last step, as if the state had changed after the
  // replicas agreed.
  const std::string path = absl::StrCat(dir_, "/step-", absl::StrFormat("%09d", kSteps),
                                        "/manifest.json");
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string recorded = absl::StrFormat("%016x", m->replica_digests[0]);
  const std::string other = absl::StrFormat("%016x", m->replica_digests[0] ^ 1);
  for (size_t at = text.find(recorded); at != std::string::npos; at = text.find(recorded)) {
    text.replace(at, recorded.size(), other);
  }
  std::ofstream(path, std::ios::trunc) << text;

  ToyTrainer trainer(2);
  std::unique_ptr<Communicator> one = std::move(NewInprocCommunicators({.size = 1})[0]);
  ASSERT_TRUE(trainer.Bind(*one, {}).ok());
  absl::StatusOr<runtime_internal::RestoreResult> r = runtime_internal::Restore(
      *one, trainer, dir_, /*fresh=*/true, nullptr, /*reset_if_none=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step, kSteps - 4) << "the next older checkpoint";
  ASSERT_EQ(r->skipped.size(), 1u);
  EXPECT_THAT(r->skipped[0],
              ::testing::AllOf(HasSubstr(absl::StrCat("step ", kSteps, ": rank 0: DATA_LOSS")),
                               HasSubstr(absl::StrCat("hashes to ", recorded,
                                                      " but the commit recorded ", other)),
                               HasSubstr("refusing checkpoint step")));
  EXPECT_EQ(trainer.weights(), ReferenceWeights(2, kSteps - 4));
}

}  // namespace
}  // namespace trident::testing

namespace trident::testing {
namespace {

// LoopOptions::sdc_every = kSdcAuto: the interval is chosen from the measured check and step
// times, the same on every rank (each check's next one is `every` steps later), and a flip is
// still found at the first check after it. (What it costs is measured in docs/benchmarks.md,
// not asserted here.)
TEST_F(SdcTest, AutoIntervalIsTheSameOnEveryRankAndFindsAFlipAtTheNextCheck) {
  InprocJob::Options o = Job(3, 1);
  o.steps = 120;
  o.ckpt_dir.clear();  // no saves: every check is one the interval chose
  o.sdc_every = kSdcAuto;
  // Hashing the toy's 128 bytes takes about a microsecond: against a 20 ms step and a budget
  // of 0.01% (2 us a step) the interval is a few steps.
  o.step_time = absl::Milliseconds(20);
  o.sdc_budget = 1e-4;
  InprocJob job(o);
  job.FlipAt("w1", 60, /*index=*/3, /*bit=*/30);
  ASSERT_EQ(job.Run(), JobState::kFinished) << job.coordinator().failure().value_or("");
  const MemberResult& w0 = job.result("w0");
  const SdcEvent* v = Verdict(w0);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->ranks, std::vector<int>{1});
  EXPECT_EQ(v->method, "majority");
  ASSERT_FALSE(w0.sdc.empty());
  EXPECT_EQ(w0.sdc.front().step, 1) << "the first check is after the first step";
  const SdcEvent* before = nullptr;  // the last check before the flip's verdict
  const size_t verdict_at = static_cast<size_t>(v - w0.sdc.data());
  for (size_t i = 0; i < verdict_at; ++i) {
    const SdcEvent& e = w0.sdc[i];
    ASSERT_TRUE(e.agree);
    EXPECT_GE(e.every, 1);
    EXPECT_LE(e.every, kSdcAutoMaxEvery);
    before = &e;
    // The next check is `every` steps later.
    EXPECT_EQ(w0.sdc[i + 1].step, e.step + e.every) << "after step " << e.step;
  }
  // After the recovery every rank checks after its first step again.
  ASSERT_LT(verdict_at + 1, w0.sdc.size());
  EXPECT_EQ(w0.sdc[verdict_at + 1].step, before->step + 1);
  ASSERT_NE(before, nullptr);
  std::printf("checks on w0: %zu; interval before the flip's verdict: %d steps\n",
              w0.sdc.size(), before->every);
  EXPECT_LE(before->step, 60);
  EXPECT_EQ(v->step, before->step + before->every) << "found at the first check after the flip";
  // The same checks on every rank that ran them all (w0 and w2).
  std::vector<int64_t> steps0, steps2;
  for (const SdcEvent& e : w0.sdc) steps0.push_back(e.step);
  for (const SdcEvent& e : job.result("w2").sdc) steps2.push_back(e.step);
  EXPECT_EQ(steps0, steps2);
  const std::vector<double> want = ReferenceWeights(3, 120);
  std::vector<const MemberResult*> done = job.Finishers();
  EXPECT_EQ(done.size(), 3u);
  for (const MemberResult* r : done) EXPECT_EQ(r->weights, want);
}

}  // namespace
}  // namespace trident::testing
