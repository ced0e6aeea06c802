// The checkpoint commit and the replicas' digests (CheckpointState::replica_set and
// replica_digest): the manifest records every rank's pair, and a save whose replicas disagree
// is never committed (kDataLoss naming the set and the ranks; `latest` does not move).
#include "absl/strings/str_cat.h"
#include "ckpt_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;
using testing::StateOf;

CheckpointOptions Options(const std::string& dir, std::shared_ptr<Communicator> comm) {
  CheckpointOptions o = testing::TestOptions(dir, std::move(comm));
  o.copy_threads = 1;
  o.peer_replicas = false;
  o.commit_timeout = absl::Seconds(60);
  return o;
}

// Four ranks: sets {0, 1} and {2, 3}; `digest(rank)` gives each rank's digest. Saves step
// `step` on every rank and returns each rank's outcome.
std::vector<absl::Status> SaveWithDigests(const std::string& dir, int64_t step,
                                          const std::function<uint64_t(int)>& digest) {
  std::vector<absl::Status> out(4);
  testing::RunCkptRanks(4, [&](int rank, std::shared_ptr<Communicator> comm) {
    auto engine = CheckpointEngine::Create(Options(dir, comm));
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<OwnedTensor> tensors = {MakeTensor(rank, absl::StrCat("w", rank), DType::kF32, {8})};
    CheckpointState state = StateOf(tensors);
    state.replica_set = rank / 2;
    state.replica_digest = digest(rank);
    auto save = (*engine)->Save(step, state);
    ASSERT_TRUE(save.ok()) << save.status();
    out[rank] = (*save)->Wait();
  });
  return out;
}

TEST(ReplicaDigestTest, TheCommitRecordsEveryRanksDigest) {
  ScratchDir dir;
  for (const absl::Status& s :
       SaveWithDigests(dir.path(), 5, [](int rank) { return 0xabc0000000000000ull + rank / 2; })) {
    EXPECT_TRUE(s.ok()) << s;
  }
  absl::StatusOr<CheckpointManifest> m = ReadManifest(dir.path(), 5);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->replica_sets, (std::vector<int64_t>{0, 0, 1, 1}));
  EXPECT_EQ(m->replica_digests, (std::vector<uint64_t>{0xabc0000000000000ull, 0xabc0000000000000ull,
                                                       0xabc0000000000001ull,
                                                       0xabc0000000000001ull}));
  // Written as 16 hex digits (a JSON reader in another language keeps every bit).
  auto text = ReadFileToString(*PosixFileSystem(), dir.sub("step-000000005/manifest.json"));
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("\"digest\": \"abc0000000000001\""));
}

TEST(ReplicaDigestTest, ASaveWhoseReplicasDisagreeIsNotCommittedAndLatestStays) {
  ScratchDir dir;
  for (const absl::Status& s : SaveWithDigests(dir.path(), 4, [](int) { return 7ull; })) {
    ASSERT_TRUE(s.ok()) << s;
  }
  // Rank 3 disagrees with rank 2 (its set's other replica): every rank's save fails.
  std::vector<absl::Status> failed =
      SaveWithDigests(dir.path(), 8, [](int rank) { return rank == 3 ? 8ull : 7ull; });
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(failed[rank].code(), absl::StatusCode::kDataLoss) << rank << ": " << failed[rank];
    EXPECT_THAT(failed[rank].message(),
                AllOf(HasSubstr("checkpoint step 8 not committed"),
                      HasSubstr("replica set 1: rank 2 has digest 0000000000000007, rank 3 has "
                                "0000000000000008"),
                      HasSubstr("never committed")))
        << rank;
  }
  auto list = ListCheckpoints(dir.path());
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u) << "step 8 must not be committed";
  EXPECT_EQ((*list)[0].step, 4);
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 4);
}

TEST(ReplicaDigestTest, RanksWithoutADigestAreNotCompared) {
  ScratchDir dir;
  // Set -1 on every rank: no digests in the manifest (as before digests existed).
  std::vector<absl::Status> out(2);
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    auto engine = CheckpointEngine::Create(Options(dir.path(), comm));
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<OwnedTensor> tensors = {MakeTensor(rank, absl::StrCat("w", rank), DType::kF32, {4})};
    CheckpointState state = StateOf(tensors);
    state.replica_digest = rank;  // ignored: replica_set is -1
    auto save = (*engine)->Save(1, state);
    ASSERT_TRUE(save.ok()) << save.status();
    out[rank] = (*save)->Wait();
  });
  for (const absl::Status& s : out) EXPECT_TRUE(s.ok()) << s;
  absl::StatusOr<CheckpointManifest> m = ReadManifest(dir.path(), 1);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(m->replica_sets.empty());
  EXPECT_TRUE(m->replica_digests.empty());
}

TEST(ReplicaDigestTest, AManifestWithABadDigestIsDataLoss) {
  ScratchDir dir;
  for (const absl::Status& s : SaveWithDigests(dir.path(), 2, [](int) { return 1ull; })) {
    ASSERT_TRUE(s.ok()) << s;
  }
  const std::string path = dir.sub("step-000000002/manifest.json");
  auto text = ReadFileToString(*PosixFileSystem(), path);
  ASSERT_TRUE(text.ok());
  std::string bad = *text;
  const size_t at = bad.find("\"digest\": \"");
  ASSERT_NE(at, std::string::npos);
  bad.replace(at + 11, 16, "zz00000000000001");
  ASSERT_TRUE(WriteFileAndSync(*PosixFileSystem(), path, bad).ok());
  absl::StatusOr<CheckpointManifest> m = ReadManifest(dir.path(), 2);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(m.status().message(), HasSubstr("digest of rank 0 ('zz00000000000001') is not 16 hex digits"));
}

}  // namespace
}  // namespace trident
