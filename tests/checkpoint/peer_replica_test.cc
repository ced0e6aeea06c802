// Peer replicas: after each commit every rank holds its buddy's snapshot in memory (the buddy on
// another host where there is one); a rank that lost its process gets its state back from that
// memory over a rebuilt communicator.
#include <thread>

#include "absl/strings/str_cat.h"
#include "checkpoint/internal.h"
#include "ckpt_test_util.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ckpt::Box;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;
using testing::SliceBytes;
using testing::StateOf;

const std::vector<std::string> kHosts = {"node-a", "node-a", "node-b", "node-b"};

// Rank r holds rows [2r, 2r+2) of "w" [8, 6], and all of "n" [10], replicated on every rank.
std::vector<OwnedTensor> RankState(uint64_t seed, int rank) {
  OwnedTensor w = MakeTensor(seed, "w", DType::kF32, {8, 6}, Box{{2 * rank, 0}, {2, 6}});
  OwnedTensor n = MakeTensor(seed, "n", DType::kBF16, {10});
  n.replica_index = rank;
  n.replica_count = 4;
  std::vector<OwnedTensor> out;
  out.push_back(std::move(w));
  out.push_back(std::move(n));
  return out;
}

std::vector<std::shared_ptr<Communicator>> World(int n) {
  InprocCommOptions options;
  options.size = n;
  options.timeout = absl::Seconds(60);
  std::vector<std::shared_ptr<Communicator>> comms;
  for (auto& c : NewInprocCommunicators(options)) comms.push_back(std::move(c));
  return comms;
}

void EachRank(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r); });
  for (auto& t : threads) t.join();
}

// Restores `owner`'s whole state from a replica and compares it with what seed generates.
void ExpectRestores(const PeerReplica& replica, uint64_t seed, int owner) {
  for (const OwnedTensor& t : RankState(seed, owner)) {
    std::vector<char> got(t.bytes.size());
    TensorRequest req{t.name, Tensor(got.data(), t.dtype, t.box.shape), t.box.offset, t.global};
    absl::Status s = replica.Restore({&req, 1});
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(got, t.bytes) << t.name << " of rank " << owner;
  }
}

TEST(PeerReplicaTest, BuddiesAreOnAnotherHost) {
  EXPECT_EQ(ReplicaHolderOf(0, kHosts), 2);
  EXPECT_EQ(ReplicaHolderOf(3, kHosts), 1);
  const std::vector<std::string> alternating = {"a", "b", "a", "b"};
  EXPECT_EQ(ReplicaHolderOf(3, alternating), 0);
  const std::vector<std::string> one_host = {"a", "a", "a"};
  EXPECT_EQ(ReplicaHolderOf(2, one_host), 0);
  EXPECT_EQ(ReplicaHolderOf(0, std::vector<std::string>{"a"}), -1);
}

TEST(PeerReplicaTest, HeldAfterCommitAndServedToARankThatLostItsProcess) {
  ScratchDir dir;
  std::vector<std::shared_ptr<const PeerReplica>> held(4), kept(4);
  {
    auto comms = World(4);
    std::vector<std::unique_ptr<CheckpointEngine>> engines(4);
    EachRank(4, [&](int r) {
      CheckpointOptions o;
      o.dir = dir.path();
      o.comm = comms[r];
      o.memory_budget_bytes = 16 << 20;
      o.host_name = kHosts[r];
      auto e = CheckpointEngine::Create(o);
      ASSERT_TRUE(e.ok()) << e.status();
      engines[r] = std::move(e).value();
      EXPECT_EQ(engines[r]->buddy_rank(), (r + 2) % 4);
      EXPECT_EQ(engines[r]->replica_source_rank(), (r + 2) % 4);
      EXPECT_EQ(engines[r]->HeldReplica(), nullptr);
    });
    for (uint64_t step : {5, 6}) {
      EachRank(4, [&](int r) {
        std::vector<OwnedTensor> state = RankState(step, r);
        auto save = engines[r]->Save(static_cast<int64_t>(step),
                                     StateOf(state, absl::StrCat("meta", r, "@", step)));
        ASSERT_TRUE(save.ok()) << save.status();
        ASSERT_TRUE((*save)->Wait().ok()) << (*save)->status();
        EXPECT_TRUE((*save)->stats().replica_status.ok()) << (*save)->stats().replica_status;
        if (step == 5) kept[r] = engines[r]->HeldReplica();  // still in use at step 6
      });
    }
    for (int r = 0; r < 4; ++r) held[r] = engines[r]->HeldReplica();
  }  // the engines are gone; the replicas stay valid
  for (int r = 0; r < 4; ++r) {
    const int owner = (r + 2) % 4;
    ASSERT_NE(held[r], nullptr);
    EXPECT_EQ(held[r]->owner_rank(), owner);
    EXPECT_EQ(held[r]->step(), 6);
    EXPECT_EQ(held[r]->metadata(), absl::StrCat("meta", owner, "@6"));
    ExpectRestores(*held[r], 6, owner);
    // The step-5 replica a caller kept was not overwritten by step 6.
    EXPECT_EQ(kept[r]->step(), 5);
    ExpectRestores(*kept[r], 5, owner);
  }

  // Rank 1 lost its process: the group is rebuilt, and rank 3 (its replica's holder) serves it.
  const int lost = 1, holder = ReplicaHolderOf(lost, kHosts);
  ASSERT_EQ(holder, 3);
  auto comms = World(4);
  std::shared_ptr<PeerReplica> fetched;
  EachRank(4, [&](int r) {
    if (r == holder) {
      EXPECT_TRUE(SendPeerReplica(*comms[r], lost, *held[r]).ok());
    } else if (r == lost) {
      auto f = FetchPeerReplica(*comms[r], holder);
      ASSERT_TRUE(f.ok()) << f.status();
      fetched = *f;
    }
  });
  ASSERT_NE(fetched, nullptr);
  EXPECT_EQ(fetched->owner_rank(), lost);
  EXPECT_EQ(fetched->metadata(), "meta1@6");
  EXPECT_THAT(fetched->TensorNames(), ::testing::ElementsAre("w", "n"));
  ExpectRestores(*fetched, 6, lost);

  // A corrupted replica is caught, naming the tensor.
  ReplicaData& impl = static_cast<HeldPeerReplica&>(*fetched).mutable_impl();
  impl.data.get()[impl.tensors[0].pieces[0].data_offset + 3] ^= 1;
  std::vector<float> w(12);
  TensorRequest req{"w", Tensor(w.data(), DType::kF32, {2, 6}), {2, 0}, {}};
  absl::Status s = fetched->Restore({&req, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("checksum mismatch in tensor w"));
  TensorRequest other{"w", Tensor(w.data(), DType::kF32, {2, 6}), {4, 0}, {}};
  s = fetched->Restore({&other, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;  // rank 1 never held rows 4-5
}

TEST(PeerReplicaTest, StreamedSaveSendsNoReplica) {
  ScratchDir dir;
  auto comms = World(2);
  EachRank(2, [&](int r) {
    CheckpointOptions o;
    o.dir = dir.path();
    o.comm = comms[r];
    o.memory_budget_bytes = 16 << 20;
    auto e = CheckpointEngine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    std::vector<OwnedTensor> state = {
        MakeTensor(1, "big", DType::kF32, {2, 5 << 20}, Box{{r, 0}, {1, 5 << 20}})};
    auto save = (*e)->Save(1, StateOf(state));
    ASSERT_TRUE(save.ok());
    ASSERT_TRUE((*save)->Wait().ok()) << (*save)->status();
    absl::Status replica = (*save)->stats().replica_status;
    EXPECT_EQ(replica.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(replica.message(), HasSubstr("did not fit the staging budget"));
    EXPECT_EQ((*e)->HeldReplica(), nullptr);
  });
}

}  // namespace
}  // namespace trident
