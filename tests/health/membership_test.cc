// Membership records and the coordinator's compare-and-set, on a MemoryStore.
#include "health/membership.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::health {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

TEST(MembershipTest, InitialAndJsonRoundTrip) {
  Membership m = Membership::Initial(3);
  EXPECT_EQ(m.epoch, 1);
  EXPECT_THAT(m.ranks, ElementsAre("w0", "w1", "w2"));
  EXPECT_EQ(m.RankOf("w2"), 2);
  EXPECT_EQ(m.RankOf("s0"), -1);
  m.epoch = 4;
  m.failures.push_back({1, "w1", "killed by signal 9 (SIGKILL)"});
  m.failures.back().kind = FailureKind::kSignaled;
  m.failures.back().signal = 9;
  m.failures.back().reporter = "agent";
  auto back = Membership::FromJson(m.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->epoch, 4);
  EXPECT_EQ(back->ranks, m.ranks);
  ASSERT_EQ(back->failures.size(), 1u);
  // The structured cause survives the store: nobody parses the sentence.
  EXPECT_EQ(back->failures[0].kind, FailureKind::kSignaled);
  EXPECT_EQ(back->failures[0].signal, 9);
  EXPECT_EQ(back->failures[0].reporter, "agent");
  EXPECT_EQ(back->failures[0].ShortCause(), "SIGKILL");
  EXPECT_EQ(back->DescribeFailures(), "rank 1 (w1) killed by signal 9 (SIGKILL)");
}

TEST(MembershipTest, MalformedRecordIsDataLoss) {
  EXPECT_EQ(Membership::FromJson("{not json").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Membership::FromJson(R"({"epoch": "x", "ranks": []})").status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(MembershipTest, KeysAreScopedByEpoch) {
  EXPECT_EQ(FailedKey(1, 3), "job/failed/3");  // what epoch-unaware programs watch
  EXPECT_EQ(FailedKey(2, 3), "epoch/2/job/failed/3");
  EXPECT_EQ(EpochPrefix(1), "");
}

TEST(PublishEpochTest, PublishesNextEpochWithSparesInOrder) {
  auto store = NewMemoryStore();
  auto m1 = ReadMembership(*store, 4, Soon());
  ASSERT_TRUE(m1.ok());
  EXPECT_EQ(m1->epoch, 1);
  std::vector<std::string> spares = {"s0", "s1"};
  auto m2 = PublishNextEpoch(*store, *m1, {{2, "w2", "killed by signal 9 (SIGKILL)"}}, spares,
                             Soon());
  ASSERT_TRUE(m2.ok()) << m2.status();
  EXPECT_EQ(m2->epoch, 2);
  EXPECT_THAT(m2->ranks, ElementsAre("w0", "w1", "s0", "w3"));
  EXPECT_THAT(spares, ElementsAre("s1"));
  auto read = ReadMembership(*store, 4, Soon());
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->ranks, m2->ranks);
  EXPECT_EQ(*store->Get(kEpochKey, Soon()), "2");
}

TEST(PublishEpochTest, LosingCoordinatorAdoptsTheWinnersEpoch) {
  auto store = NewMemoryStore();
  Membership m1 = Membership::Initial(2);
  std::vector<std::string> agent_a = {"s0"}, agent_b = {"s1"};
  auto a = PublishNextEpoch(*store, m1, {{0, "w0", "exited with status 1"}}, agent_a, Soon());
  auto b = PublishNextEpoch(*store, m1, {{0, "w0", "exited with status 1"}}, agent_b, Soon());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->ranks, a->ranks);  // s0 holds rank 0 for both
  EXPECT_THAT(b->ranks, ElementsAre("s0", "w1"));
  EXPECT_THAT(agent_b, ElementsAre("s1"));  // b's spare was not used
}

TEST(PublishEpochTest, TooFewSparesIsResourceExhaustedAndPublishesNothing) {
  auto store = NewMemoryStore();
  std::vector<std::string> spares;
  auto r = PublishNextEpoch(*store, Membership::Initial(2),
                            {{1, "w1", "killed by signal 9 (SIGKILL)"}}, spares, Soon());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(),
              HasSubstr("no spare left to replace rank 1 (w1) killed by signal 9 (SIGKILL)"));
  EXPECT_FALSE(store->TryGet(kEpochKey, Soon()).ok());
}

// The dp replicas of tp 2 x pp 2 x dp 2 in the "tp-dp-pp" order: rank = tp + 2 (dp + 2 pp).
const std::vector<std::vector<int>> kReplicas = {{0, 1, 4, 5}, {2, 3, 6, 7}};

TEST(ShrinkTest, DropsTheDeadRanksGroupKeepsTheOrderAndRetiresItsLiveMembers) {
  auto store = NewMemoryStore();
  auto m2 = PublishShrunkEpoch(*store, Membership::Initial(8),
                               {{3, "w3", "killed by signal 9 (SIGKILL)"}}, kReplicas, Soon());
  ASSERT_TRUE(m2.ok()) << m2.status();
  EXPECT_EQ(m2->epoch, 2);
  // Old ranks 0, 1, 4, 5 become 0..3: (tp, pp) kept, the mesh of dp 1 in the same order.
  EXPECT_THAT(m2->ranks, ElementsAre("w0", "w1", "w4", "w5"));
  EXPECT_THAT(m2->retired, ElementsAre("w2", "w6", "w7"));
  auto read = ReadMembership(*store, 8, Soon());
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->ranks, m2->ranks);
  EXPECT_EQ(read->retired, m2->retired);  // through JSON
  EXPECT_EQ(*store->Get(kEpochKey, Soon()), "2");
}

TEST(ShrinkTest, TwoDeadRanksOfOneGroupDropOnlyThatGroup) {
  auto store = NewMemoryStore();
  auto m2 = PublishShrunkEpoch(*store, Membership::Initial(8),
                               {{0, "w0", "exited with status 1"}, {5, "w5", "exited with status 1"}},
                               kReplicas, Soon());
  ASSERT_TRUE(m2.ok()) << m2.status();
  EXPECT_THAT(m2->ranks, ElementsAre("w2", "w3", "w6", "w7"));
  EXPECT_THAT(m2->retired, ElementsAre("w1", "w4"));
}

TEST(ShrinkTest, NoGroupLeftOrARankInNoGroupIsFailedPreconditionAndPublishesNothing) {
  auto store = NewMemoryStore();
  auto all = PublishShrunkEpoch(*store, Membership::Initial(8),
                                {{1, "w1", "exited with status 1"}, {2, "w2", "exited with status 1"}},
                                kReplicas, Soon());
  EXPECT_EQ(all.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(all.status().message(), HasSubstr("every group holds a failed rank"));
  auto outside = PublishShrunkEpoch(*store, Membership::Initial(8),
                                    {{3, "w3", "exited with status 1"}}, {{0, 1}, {2}}, Soon());
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(outside.status().message(), HasSubstr("rank 3 is in none of the trainer's shrink groups"));
  EXPECT_FALSE(store->TryGet(kEpochKey, Soon()).ok());
}

TEST(ShrinkTest, GroupsRoundTripThroughJsonAndMalformedIsDataLoss) {
  auto back = ShrinkGroupsFromJson(ShrinkGroupsToJson(kReplicas));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, kReplicas);
  EXPECT_EQ(ShrinkGroupsFromJson("[1, 2]").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ShrinkGroupsFromJson("{").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ShrinkGroupsKey(3), "epoch/3/job/shrink_groups");
}

}  // namespace
}  // namespace trident::health
