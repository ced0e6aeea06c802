// health/sdc.h: the replicas' digests and the verdict on them, and the coordinator's handling
// of an SDC report (declared dead at once, killed, replaced).
#include "health/sdc.h"

#include <signal.h>

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "health/coordinator.h"
#include "health/membership.h"

namespace trident::health {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(DigestTensorsTest, OneFlippedBitChangesTheDigestAndEqualBytesGiveEqualDigests) {
  std::vector<float> a(1000, 0.25f), b = a;
  absl::StatusOr<uint64_t> da = DigestTensors({Tensor::Of(a.data(), a.size())});
  ASSERT_TRUE(da.ok());
  EXPECT_EQ(*DigestTensors({Tensor::Of(b.data(), b.size())}), *da);
  uint32_t bits;
  std::memcpy(&bits, &b[777], 4);
  bits ^= 1u << 3;
  std::memcpy(&b[777], &bits, 4);
  EXPECT_NE(*DigestTensors({Tensor::Of(b.data(), b.size())}), *da);
}

TEST(DigestTensorsTest, TensorBoundariesCount) {
  std::vector<float> a(10, 1.0f);
  EXPECT_NE(*DigestTensors({Tensor::Of(a.data(), 10)}),
            *DigestTensors({Tensor::Of(a.data(), 4), Tensor::Of(a.data() + 4, 6)}));
}

TEST(DigestTensorsTest, DeviceTensorIsAnError) {
  float x = 0;
  Tensor t(&x, DType::kF32, {1}, Device::Cuda(0));
  EXPECT_THAT(DigestTensors({t}).status().message(), HasSubstr("device memory"));
  EXPECT_TRUE(absl::IsInvalidArgument(DigestTensors({t}).status()));
}

TEST(JudgeReplicasTest, AllAgree) {
  ReplicaVerdict v = JudgeReplicas({{0, 7}, {0, 7}, {1, 9}, {1, 9}, {-1, 3}});
  EXPECT_TRUE(v.agree());
  EXPECT_EQ(v.replicas, 0);
}

TEST(JudgeReplicasTest, MajorityNamesTheOddRankOfItsOwnSet) {
  // Two sets (e.g. tp 2 x dp 3): rank 3 disagrees with ranks 1 and 5 of set 1.
  ReplicaVerdict v = JudgeReplicas({{0, 7}, {1, 9}, {0, 7}, {1, 8}, {0, 7}, {1, 9}});
  EXPECT_THAT(v.odd, ElementsAre(3));
  EXPECT_THAT(v.undecided, IsEmpty());
  EXPECT_EQ(v.replicas, 3);
}

TEST(JudgeReplicasTest, TwoReplicasOrATieAreUndecided) {
  ReplicaVerdict two = JudgeReplicas({{0, 1}, {0, 2}});
  EXPECT_THAT(two.odd, IsEmpty());
  EXPECT_THAT(two.undecided, ElementsAre(ElementsAre(0, 1)));
  ReplicaVerdict tie = JudgeReplicas({{0, 1}, {0, 1}, {0, 2}, {0, 2}});
  EXPECT_THAT(tie.undecided, ElementsAre(ElementsAre(0, 1, 2, 3)));
  ReplicaVerdict three = JudgeReplicas({{0, 1}, {0, 2}, {0, 3}});
  EXPECT_THAT(three.odd, IsEmpty());
  EXPECT_EQ(three.undecided.size(), 1u);
}

class FakeAgent : public Agent {
 public:
  explicit FakeAgent(std::shared_ptr<Store> store) : store_(std::move(store)) {}
  Store* store() override { return store_.get(); }
  ProcessState Probe(const std::string&) override { return ProcessState::kRunning; }
  void Kill(const std::string& member) override { killed.push_back(member); }
  void Say(const std::string& line) override { said.push_back(line); }
  std::vector<std::string> killed, said;

 private:
  std::shared_ptr<Store> store_;
};

TEST(CoordinatorSdcTest, AReportedRankIsDeclaredDeadKilledAndReplacedAtOnce) {
  std::shared_ptr<Store> store = NewMemoryStore();
  FakeAgent agent(store);
  const absl::Time t0 = absl::FromUnixSeconds(1'800'000'000);
  Coordinator c({.world_size = 3, .spares = 1}, &agent, t0);
  ASSERT_TRUE(store->Set(SpareKey("s0"), "ready", DeadlineIn(absl::Seconds(5))).ok());
  c.Poll(t0 + absl::Milliseconds(10));
  ASSERT_TRUE(store->Set(SdcKey(1, 2), "rank 2's replicated state at step 8 disagrees",
                         DeadlineIn(absl::Seconds(5))).ok());
  c.Poll(t0 + absl::Milliseconds(20));
  EXPECT_THAT(agent.killed, ElementsAre("w2"));
  absl::StatusOr<Membership> m = ReadMembership(*store, 3, DeadlineIn(absl::Seconds(5)));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->epoch, 2);
  EXPECT_THAT(m->ranks, ElementsAre("w0", "w1", "s0"));
  ASSERT_EQ(m->failures.size(), 1u);
  EXPECT_EQ(m->failures[0].kind, FailureKind::kSilentDataCorruption);
  EXPECT_EQ(m->failures[0].ShortCause(), "sdc");
  EXPECT_THAT(m->failures[0].cause, HasSubstr("silent data corruption: rank 2's replicated"));
  // Its exit after the kill is no second failure; a second report is read once.
  c.MemberExited("w2", {.signal = SIGKILL, .by_agent = true}, t0 + absl::Milliseconds(30));
  c.Poll(t0 + absl::Milliseconds(40));
  EXPECT_EQ(c.recoveries().size(), 1u);
  EXPECT_EQ(c.state(), Coordinator::JobState::kRunning);
}

}  // namespace
}  // namespace trident::health
