// The Coordinator's decisions with a fake clock, a MemoryStore and a fake agent: each case
// asserts the epoch it publishes (or the failure it declares), the structured cause, and
// what it asks the agent to do.
#include "health/coordinator.h"

#include <signal.h>

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::health {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using JobState = Coordinator::JobState;

class FakeAgent : public Agent {
 public:
  explicit FakeAgent(std::shared_ptr<Store> store) : store_(std::move(store)) {}
  Store* store() override { return store_.get(); }
  ProcessState Probe(const std::string& member) override {
    auto it = states.find(member);
    return it == states.end() ? ProcessState::kRunning : it->second;
  }
  void Kill(const std::string& member) override { killed.insert(member); }
  void Say(const std::string& line) override { said.push_back(line); }

  std::map<std::string, ProcessState> states;
  std::set<std::string> killed;
  std::vector<std::string> said;

 private:
  std::shared_ptr<Store> store_;
};

class CoordinatorTest : public ::testing::Test {
 protected:
  absl::Time At(int ms) const { return t0_ + absl::Milliseconds(ms); }
  void Make(int world, int spares) {
    c_ = std::make_unique<Coordinator>(
        Coordinator::Options{.world_size = world,
                             .spares = spares,
                             .heartbeat_timeout = absl::Milliseconds(1000),
                             .spare_start_wait = absl::Milliseconds(5000)},
        &agent_, At(0));
  }
  void Set(const std::string& key, const std::string& value) {
    ASSERT_TRUE(store_->Set(key, value, DeadlineIn(absl::Seconds(5))).ok());
  }
  // Every listed member beats (a new counter value) and the coordinator polls at `ms`.
  void BeatAndPoll(int ms, const std::vector<std::string>& beating) {
    ++beat_;
    for (const std::string& m : beating) Set(HeartbeatKey(m), absl::StrCat(beat_));
    c_->Poll(At(ms));
  }
  std::string Get(const std::string& key) {
    auto v = store_->TryGet(key, DeadlineIn(absl::Seconds(5)));
    return v.ok() ? *v : "";
  }
  Membership Current() {
    auto m = ReadMembership(*store_, 4, DeadlineIn(absl::Seconds(5)));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : Membership{};
  }
  static MemberExit Signaled(int sig) {
    return {.signal = sig, .description = absl::StrCat("killed by signal ", sig, " (",
                                                       SignalName(sig), ")")};
  }

  absl::Time t0_ = absl::FromUnixSeconds(1'800'000'000);
  std::shared_ptr<Store> store_ = NewMemoryStore();
  FakeAgent agent_{store_};
  std::unique_ptr<Coordinator> c_;
  int beat_ = 0;
};

TEST_F(CoordinatorTest, KilledRankGoesToAReadySpareInTheNextEpoch) {
  Make(4, 1);
  Set(SpareKey("s0"), "ready");
  c_->Poll(At(10));  // s0 is ready
  c_->MemberExited("w1", Signaled(SIGKILL), At(20));
  EXPECT_EQ(Get(FailedKey(1, 1)), "rank 1 killed by signal 9 (SIGKILL)");
  Membership m = Current();
  EXPECT_EQ(m.epoch, 2);
  EXPECT_THAT(m.ranks, ElementsAre("w0", "s0", "w2", "w3"));
  ASSERT_EQ(m.failures.size(), 1u);
  EXPECT_EQ(m.failures[0].kind, FailureKind::kSignaled);
  EXPECT_EQ(m.failures[0].signal, SIGKILL);
  EXPECT_EQ(m.failures[0].reporter, "agent");
  EXPECT_EQ(m.failures[0].ShortCause(), "SIGKILL");
  EXPECT_EQ(m.failures[0].verdict_unix_ms, absl::ToUnixMillis(At(20)));
  EXPECT_THAT(agent_.said, Contains("epoch 2: spare s0 takes rank 1 (w1 killed by signal 9 "
                                    "(SIGKILL)); 0 spare(s) left"));
  EXPECT_EQ(c_->state(), JobState::kRunning);
  EXPECT_EQ(c_->RankOf("s0"), 1);
}

TEST_F(CoordinatorTest, StoppedRankIsDeclaredDeadAtTheHeartbeatTimeoutKilledAndReplaced) {
  Make(4, 1);
  Set(SpareKey("s0"), "ready");
  BeatAndPoll(0, {"w0", "w1", "w2", "w3", "s0"});
  agent_.states["w2"] = Agent::ProcessState::kStopped;
  BeatAndPoll(500, {"w0", "w1", "w3", "s0"});
  BeatAndPoll(999, {"w0", "w1", "w3", "s0"});
  EXPECT_TRUE(agent_.killed.empty()) << "silent for less than the timeout";
  BeatAndPoll(1000, {"w0", "w1", "w3", "s0"});
  EXPECT_THAT(agent_.killed, ElementsAre("w2"));
  Membership m = Current();
  EXPECT_EQ(m.epoch, 2);
  ASSERT_EQ(m.failures.size(), 1u);
  EXPECT_EQ(m.failures[0].kind, FailureKind::kStopped);
  EXPECT_EQ(m.failures[0].ShortCause(), "SIGSTOP");
  EXPECT_THAT(m.failures[0].cause, HasSubstr("its process is stopped"));
  // Its exit (the kill) is no second failure.
  c_->MemberExited("w2", Signaled(SIGKILL), At(1100));
  EXPECT_EQ(Current().epoch, 2);
}

TEST_F(CoordinatorTest, RankThatReportsAStallIsHung) {
  Make(2, 1);
  Set(SpareKey("s0"), "ready");
  BeatAndPoll(0, {"w0", "w1", "s0"});
  Set(StalledKey("w1"), "the training thread made no progress for 5m");
  BeatAndPoll(1000, {"w0", "s0"});
  Membership m = Current();
  ASSERT_EQ(m.failures.size(), 1u);
  EXPECT_EQ(m.failures[0].kind, FailureKind::kHung);
  EXPECT_EQ(m.failures[0].ShortCause(), "hang");
  EXPECT_THAT(m.failures[0].cause, HasSubstr("it reported: the training thread made no"));
}

TEST_F(CoordinatorTest, TwoPeersReportingABeatingRankMakeItUnreachable) {
  Make(4, 1);
  Set(SpareKey("s0"), "ready");
  BeatAndPoll(0, {"w0", "w1", "w2", "w3", "s0"});
  Set(SuspectKey(1, 3, 0), "connection reset");
  BeatAndPoll(100, {"w0", "w1", "w2", "w3", "s0"});
  EXPECT_TRUE(agent_.killed.empty()) << "one observer is not enough";
  Set(SuspectKey(1, 3, 2), "connection reset");
  BeatAndPoll(200, {"w0", "w1", "w2", "w3", "s0"});
  EXPECT_THAT(agent_.killed, ElementsAre("w3"));
  Membership m = Current();
  ASSERT_EQ(m.failures.size(), 1u);
  EXPECT_EQ(m.failures[0].kind, FailureKind::kUnreachable);
  EXPECT_EQ(m.failures[0].reporter, "rank 0, rank 2");
}

TEST_F(CoordinatorTest, NoSpareFailsTheJobNamingTheRankOnceTheRanksHadTheirMoment) {
  Make(2, 0);
  c_->MemberExited("w1", {.exit_status = 3, .description = "exited with status 3"}, At(100));
  // Right after the launch the ranks may still name shrink groups: not yet.
  EXPECT_EQ(c_->state(), JobState::kRunning);
  c_->Poll(At(2100));
  EXPECT_EQ(c_->state(), JobState::kFailed);
  EXPECT_EQ(c_->failure(), "rank 1 exited with status 3");
  EXPECT_EQ(Get(kDoneKey), "failed: rank 1 exited with status 3");
}

TEST_F(CoordinatorTest, WithSparesTheFailureSaysWhyNoneReplacedIt) {
  Make(2, 1);
  c_->MemberExited("s0", Signaled(SIGKILL), At(10));  // the only spare dies idle
  EXPECT_THAT(agent_.said, Contains("spare s0 killed by signal 9 (SIGKILL) while idle; 0 "
                                    "spare(s) ready"));
  c_->MemberExited("w0", Signaled(SIGKILL), At(3000));
  EXPECT_EQ(c_->state(), JobState::kFailed);
  EXPECT_EQ(c_->failure(), "rank 0 killed by signal 9 (SIGKILL) and no spare could replace it "
                           "(0 spare(s) ready for 1 failure(s))");
}

TEST_F(CoordinatorTest, ASpareStillStartingIsWaitedForThenTheJobFails) {
  Make(2, 1);
  c_->MemberExited("w1", Signaled(SIGKILL), At(3000));
  EXPECT_EQ(c_->state(), JobState::kRunning);
  EXPECT_THAT(agent_.said, Contains("waiting up to 5s for 1 starting spare(s)"));
  c_->Poll(At(7999));
  EXPECT_EQ(c_->state(), JobState::kRunning);
  // It became ready in time: it takes the rank.
  Set(SpareKey("s0"), "ready");
  c_->Poll(At(7999));
  EXPECT_EQ(Current().epoch, 2);
  // A second failure, and no spare left to start: the job fails.
  c_->MemberExited("w0", Signaled(SIGKILL), At(9000));
  EXPECT_EQ(c_->state(), JobState::kFailed);
}

TEST_F(CoordinatorTest, ShrinkGroupsDropTheDeadRanksGroupAndRetireItsLiveMembers) {
  Make(4, 0);
  Set(ShrinkGroupsKey(1), ShrinkGroupsToJson({{0, 1}, {2, 3}}));
  c_->MemberExited("w3", Signaled(SIGKILL), At(100));
  Membership m = Current();
  EXPECT_EQ(m.epoch, 2);
  EXPECT_THAT(m.ranks, ElementsAre("w0", "w1"));
  EXPECT_THAT(m.retired, ElementsAre("w2"));
  EXPECT_THAT(agent_.said, Contains(HasSubstr("the job shrinks from 4 to 2 ranks")));
  EXPECT_EQ(c_->RankOf("w2"), -1);
  // The retired member is a spare now: it takes the next dead rank's place.
  c_->MemberExited("w0", Signaled(SIGKILL), At(200));
  EXPECT_THAT(Current().ranks, ElementsAre("w2", "w1"));
}

TEST_F(CoordinatorTest, RebuildRequestPublishesTheSameRanksInTheNextEpoch) {
  Make(2, 0);
  Set(RebuildRequestKey(1), "w1: setup timed out");
  c_->Poll(At(100));
  Membership m = Current();
  EXPECT_EQ(m.epoch, 2);
  EXPECT_THAT(m.ranks, ElementsAre("w0", "w1"));
  EXPECT_TRUE(m.failures.empty());
  EXPECT_THAT(agent_.said, Contains(HasSubstr("could not be built (w1: setup timed out)")));
}

TEST_F(CoordinatorTest, ASpareThatCannotBuildBecauseTheOthersFinishedEndsTheJobAsFinished) {
  // w1 dies after its last step; s0 takes its rank, but w0 has finished the job meanwhile and
  // will never build epoch 2's world: s0's rebuild request ends the job instead of a loop of
  // rebuilds that cannot succeed.
  Make(2, 1);
  Set(SpareKey("s0"), "ready");
  c_->Poll(At(10));
  c_->MemberExited("w1", Signaled(SIGKILL), At(20));
  ASSERT_EQ(Current().epoch, 2);
  c_->MemberExited("w0", {.exit_status = 0}, At(30));
  EXPECT_EQ(c_->state(), JobState::kRunning);  // s0 holds rank 1 and runs
  Set(RebuildRequestKey(2), "s0: store Get: deadline passed");
  c_->Poll(At(3000));
  EXPECT_EQ(Current().epoch, 2);  // no epoch 3
  EXPECT_EQ(c_->state(), JobState::kFinished);
  EXPECT_EQ(Get(kDoneKey), "finished");
  EXPECT_THAT(agent_.said, Contains(HasSubstr("because w0 has already finished the job")));
}

TEST_F(CoordinatorTest, AFinishedRankThatStopsBeatingIsNotDeclaredDead) {
  Make(2, 1);
  BeatAndPoll(0, {"w0", "w1"});
  Set(HeartbeatKey("w0"), kFinishedBeat);  // w0 called Runtime::Finish; its exit comes later
  for (int ms = 100; ms <= 5000; ms += 100) BeatAndPoll(ms, {"w1"});
  EXPECT_EQ(Get(FailedKey(1, 0)), "");
  EXPECT_EQ(Current().epoch, 1);
  EXPECT_EQ(c_->state(), JobState::kRunning);
  c_->MemberExited("w0", {.exit_status = 0}, At(5100));
  c_->MemberExited("w1", {.exit_status = 0}, At(5200));
  EXPECT_EQ(c_->state(), JobState::kFinished);
}

TEST_F(CoordinatorTest, ADeathAfterARankFinishedTheJobIsNotReplacedAndTheJobFinishes) {
  Make(2, 1);
  Set(SpareKey("s0"), "ready");
  c_->Poll(At(10));
  c_->MemberExited("w0", {.exit_status = 0}, At(100));
  c_->MemberExited("w1", Signaled(SIGKILL), At(110));
  EXPECT_EQ(Current().epoch, 1);  // s0 not promoted
  EXPECT_EQ(c_->state(), JobState::kFinished);
  EXPECT_EQ(Get(kDoneKey), "finished");
  EXPECT_THAT(agent_.said, Contains("rank 1 killed by signal 9 (SIGKILL) after w0 had finished "
                                    "the job: not replaced (the job's work is done)"));
}

TEST_F(CoordinatorTest, RebuildsWithoutEndFailTheJobClearly) {
  Make(2, 0);
  for (int e = 1; e <= 11; ++e) {
    Set(RebuildRequestKey(e), "w1: setup timed out");
    c_->Poll(At(100 * e));
  }
  EXPECT_EQ(Current().epoch, 11);  // ten rebuilds
  EXPECT_EQ(c_->state(), JobState::kFailed);
  EXPECT_THAT(*c_->failure(), HasSubstr("the world of epoch 11 could not be built (w1: setup "
                                        "timed out) after 10 rebuilds"));
  EXPECT_THAT(Get(kDoneKey), HasSubstr("failed: the world of epoch 11"));
}

TEST_F(CoordinatorTest, EveryRankFinishingEndsTheJobButNotWhileAFailureWaits) {
  Make(2, 1);
  c_->MemberExited("w0", {.exit_status = 0}, At(100));
  EXPECT_EQ(c_->state(), JobState::kRunning);
  c_->MemberExited("w1", {.exit_status = 0}, At(110));
  EXPECT_EQ(c_->state(), JobState::kFinished);
  EXPECT_EQ(Get(kDoneKey), "finished");
}

TEST_F(CoordinatorTest, ARankThatFinishesWhileAFailureWaitsFailsTheJob) {
  Make(2, 1);
  c_->MemberExited("w1", Signaled(SIGKILL), At(100));  // s0 still starting: wait
  c_->MemberExited("w0", {.exit_status = 0}, At(200));
  EXPECT_EQ(c_->state(), JobState::kFailed);
  EXPECT_THAT(*c_->failure(), HasSubstr("the other ranks finished meanwhile"));
}

TEST_F(CoordinatorTest, ExitsTheAgentCausedAreNoFailures) {
  Make(2, 1);
  c_->Stop();  // the agent got SIGTERM and forwarded it
  c_->MemberExited("w1", {.signal = SIGTERM, .by_agent = true}, At(100));
  EXPECT_EQ(c_->state(), JobState::kRunning);
  EXPECT_EQ(Get(FailedKey(1, 1)), "");
}

}  // namespace
}  // namespace trident::health
