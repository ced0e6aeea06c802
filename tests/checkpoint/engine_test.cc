// The checkpoint engine on threads as ranks: round trips, resharding on load, replicated
// tensors written once, streaming through a small budget, retention, the busy policies, and
// errors that must fail a save on every rank.
#include <thread>

#include "absl/strings/str_cat.h"
#include "ckpt_test_util.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ckpt::Box;
using testing::LoadAndCompare;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;
using testing::StateOf;


CheckpointOptions Options(const std::string& dir, std::shared_ptr<Communicator> comm) {
  CheckpointOptions o = testing::TestOptions(dir, std::move(comm), 64 << 20);
  o.copy_threads = 2;
  o.commit_timeout = absl::Seconds(60);
  return o;
}

std::unique_ptr<CheckpointEngine> MustCreate(CheckpointOptions o) {
  auto e = CheckpointEngine::Create(std::move(o));
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(e).value() : nullptr;
}

TEST(EngineTest, OneRankRoundTripEveryDtype) {
  ScratchDir dir;
  std::vector<OwnedTensor> tensors = {
      MakeTensor(1, "w", DType::kF32, {64, 33}),  MakeTensor(1, "b", DType::kBF16, {7}),
      MakeTensor(1, "step", DType::kI64, {}),     MakeTensor(1, "empty", DType::kU8, {0, 5}),
      MakeTensor(1, "q", DType::kI8, {3, 4, 5}),  MakeTensor(1, "h", DType::kF16, {9}),
      MakeTensor(1, "d", DType::kF64, {2, 2}),    MakeTensor(1, "i", DType::kI32, {1000}),
  };
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    auto engine = MustCreate(Options(dir.path(), comm));
    auto save = engine->Save(10, StateOf(tensors, "rng=42"));
    ASSERT_TRUE(save.ok()) << save.status();
    ASSERT_TRUE((*save)->Wait().ok()) << (*save)->status();
    SaveStats stats = (*save)->stats();
    EXPECT_FALSE(stats.streamed);
    EXPECT_EQ(stats.written_bytes, 64 * 33 * 4 + 7 * 2 + 8 + 60 + 9 * 2 + 32 + 4000);
    EXPECT_EQ(engine->LastSave(), *save);
    EXPECT_EQ(engine->buddy_rank(), -1);  // a world of one has no buddy
  });
  auto list = ListCheckpoints(dir.path());
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].step, 10);
  EXPECT_TRUE((*list)[0].latest);
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 10);
  for (const OwnedTensor& t : tensors) {
    EXPECT_EQ(LoadAndCompare(dir.path(), kLatestStep, 1, t.name, t.dtype, t.global, t.box), "")
        << t.name;
  }
  LoadOptions lo;
  lo.metadata_rank = 0;
  auto loaded = LoadCheckpoint(dir.path(), 10, {}, lo);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->metadata, "rng=42");
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 10).ok());

  // The shard is a valid safetensors file: aligned data, entries that tile it without holes.
  const std::string shard = dir.sub("step-000000010/shard-r00000.safetensors");
  auto bytes = ReadFileToString(*PosixFileSystem(), shard);
  ASSERT_TRUE(bytes.ok());
  auto header = ckpt::ParseSafetensorsHeader(*bytes, shard);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->data_start % 4096, 0u);
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& e : header->entries) spans.push_back({e.begin, e.end});
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (auto [b, e] : spans) {
    EXPECT_EQ(b, at);
    at = e;
  }
  EXPECT_EQ(header->data_start + at, bytes->size());
  EXPECT_EQ(header->metadata.at("step"), "10");
}

// A model on a tp x pp x dp mesh (tp fastest): per pipeline stage s, a column-parallel weight
// "l<s>.w" [16, 12] split on dim 1 by tp, a bias "l<s>.b" [12] split by tp, and a norm
// "l<s>.n" [12] that every tp and dp rank of the stage holds whole. Weights and biases are
// replicated over dp.
struct MeshLayout {
  int tp, pp, dp;
  int size() const { return tp * pp * dp; }
};

std::vector<OwnedTensor> MeshState(uint64_t seed, MeshLayout m, int rank, int stages = 2) {
  const int t = rank % m.tp, d = (rank / m.tp) % m.dp, p = rank / (m.tp * m.dp);
  std::vector<OwnedTensor> out;
  for (int s = 0; s < stages; ++s) {
    if (s % m.pp != p) continue;
    const std::string l = absl::StrCat("l", s);
    const int64_t cols = 12 / m.tp;
    OwnedTensor w = MakeTensor(seed, l + ".w", DType::kF32, {16, 12}, Box{{0, t * cols}, {16, cols}});
    w.replica_index = d;
    w.replica_count = m.dp;
    OwnedTensor b = MakeTensor(seed, l + ".b", DType::kBF16, {12}, Box{{t * cols}, {cols}});
    b.replica_index = d;
    b.replica_count = m.dp;
    OwnedTensor n = MakeTensor(seed, l + ".n", DType::kF32, {12});
    n.replica_index = d * m.tp + t;
    n.replica_count = m.dp * m.tp;
    out.push_back(std::move(w));
    out.push_back(std::move(b));
    out.push_back(std::move(n));
  }
  return out;
}

void SaveMesh(const std::string& dir, uint64_t seed, MeshLayout m, int64_t step) {
  testing::RunCkptRanks(m.size(), [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> tensors = MeshState(seed, m, rank);
    CheckpointOptions o = Options(dir, comm);
    o.layout = absl::StrCat("tp", m.tp, ".pp", m.pp, ".dp", m.dp);
    auto engine = MustCreate(std::move(o));
    auto save = engine->Save(step, StateOf(tensors, absl::StrCat("rank", rank)));
    ASSERT_TRUE(save.ok()) << save.status();
    EXPECT_TRUE((*save)->Wait().ok()) << (*save)->status();
  });
}

// Loads every tensor the way `m` slices it, on every rank of `m`, and compares.
void ExpectMeshLoads(const std::string& dir, uint64_t seed, MeshLayout m) {
  for (int rank = 0; rank < m.size(); ++rank) {
    for (const OwnedTensor& t : MeshState(seed, m, rank)) {
      EXPECT_EQ(LoadAndCompare(dir, kLatestStep, seed, t.name, t.dtype, t.global, t.box), "")
          << t.name << " on rank " << rank << " of tp" << m.tp << ".pp" << m.pp << ".dp" << m.dp;
    }
  }
}

TEST(EngineTest, Mesh2x2x2LoadsAt1x1x1AndBack) {
  ScratchDir a, b;
  SaveMesh(a.path(), 7, {2, 2, 2}, 100);
  ExpectMeshLoads(a.path(), 7, {1, 1, 1});  // tp 2 -> 1, pp 2 -> 1, dp 2 -> 1
  ExpectMeshLoads(a.path(), 7, {2, 1, 1});
  ExpectMeshLoads(a.path(), 7, {3, 2, 1});  // a layout it was never saved at
  SaveMesh(b.path(), 8, {1, 1, 1}, 100);
  ExpectMeshLoads(b.path(), 8, {2, 2, 2});  // 1x1x1 -> 2x2x2

  auto m = ReadManifest(a.path(), 100);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->layout, "tp2.pp2.dp2");
  EXPECT_EQ(m->world_size, 8);
  EXPECT_EQ(m->metadata[5], "rank5");
  // Replicated pieces are written once: each dp replica writes half of the rows.
  const TensorInfo& w = m->tensors.at("l0.w");
  ASSERT_EQ(w.shards.size(), 4u);
  uint64_t bytes = 0;
  for (const ShardInfo& s : w.shards) {
    EXPECT_EQ(s.shape, (Tensor::Shape{8, 6}));
    EXPECT_EQ(s.replica_count, 2);
    bytes += s.byte_length;
  }
  EXPECT_EQ(bytes, 16u * 12 * 4);
  // The norm, held by 4 ranks of a stage, is spread over all 4.
  EXPECT_EQ(m->tensors.at("l1.n").shards.size(), 4u);
  // An N-d box that crosses the pieces of several ranks.
  EXPECT_EQ(LoadAndCompare(a.path(), 100, 7, "l1.w", DType::kF32, {16, 12}, Box{{3, 5}, {9, 4}}),
            "");
  EXPECT_TRUE(VerifyCheckpoint(a.path(), 100).ok());
}

TEST(EngineTest, StateLargerThanTheBudgetStreamsThroughIt) {
  ScratchDir dir;
  std::vector<OwnedTensor> tensors = {MakeTensor(3, "big", DType::kF32, {5 << 20}),
                                      MakeTensor(3, "odd", DType::kU8, {4099}),
                                      MakeTensor(3, "mid", DType::kI32, {3 << 20})};
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = Options(dir.path(), comm);
    o.memory_budget_bytes = 16 << 20;
    auto engine = MustCreate(std::move(o));
    for (int64_t step : {1, 2}) {
      auto save = engine->Save(step, StateOf(tensors));
      ASSERT_TRUE(save.ok()) << save.status();
      ASSERT_TRUE((*save)->Wait().ok()) << (*save)->status();
      EXPECT_TRUE((*save)->stats().streamed);
      EXPECT_LE((*save)->stats().staging_bytes, 16 << 20);
      EXPECT_EQ((*save)->stats().written_bytes, (20 << 20) + 4099 + (12 << 20));
    }
  });
  for (const OwnedTensor& t : tensors) {
    EXPECT_EQ(LoadAndCompare(dir.path(), 2, 3, t.name, t.dtype, t.global, t.box), "") << t.name;
  }
}

TEST(EngineTest, RetentionKeepsTheNewestAndEveryKth) {
  ScratchDir dir;
  std::vector<OwnedTensor> tensors = {MakeTensor(1, "x", DType::kF32, {100})};
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> mine = {
        MakeTensor(1, "x", DType::kF32, {100}, Box{{rank * 50}, {50}})};
    CheckpointOptions o = Options(dir.path(), comm);
    o.keep_last = 2;
    o.keep_every = 3;
    auto engine = MustCreate(std::move(o));
    for (int64_t step = 1; step <= 7; ++step) {
      auto save = engine->Save(step, StateOf(mine));
      ASSERT_TRUE(save.ok());
      ASSERT_TRUE((*save)->Wait().ok()) << (*save)->status();
    }
  });
  auto list = ListCheckpoints(dir.path());
  ASSERT_TRUE(list.ok());
  std::vector<int64_t> steps;
  for (const auto& c : *list) steps.push_back(c.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{3, 6, 7}));
  EXPECT_EQ(LoadAndCompare(dir.path(), 3, 1, "x", DType::kF32, {100}, Box{{0}, {100}}), "");
}

TEST(EngineTest, WaitPolicyNeverMixesTwoSaves) {
  ScratchDir dir;
  auto fs = std::make_shared<testing::FaultFileSystem>();
  std::vector<OwnedTensor> one = {MakeTensor(1, "x", DType::kI32, {1 << 16})};
  std::vector<OwnedTensor> two = {MakeTensor(2, "x", DType::kI32, {1 << 16})};
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = Options(dir.path(), comm);
    o.file_system = fs;
    auto engine = MustCreate(std::move(o));
    fs->CloseGate();
    auto first = engine->Save(1, StateOf(one));
    ASSERT_TRUE(first.ok());
    fs->WaitForHeldWrite();  // step 1 is persisting and cannot finish
    EXPECT_FALSE((*first)->IsCompleted());
    EXPECT_TRUE(absl::IsUnavailable((*first)->status()));
    EXPECT_TRUE(absl::IsDeadlineExceeded((*first)->Wait(absl::Now())));
    bool first_done_when_second_returned = false;
    std::thread second([&] {
      // Overwrite the caller's tensor after the first snapshot: it must not leak into step 1.
      auto s = engine->Save(2, StateOf(two));
      first_done_when_second_returned = (*first)->IsCompleted();
      ASSERT_TRUE(s.ok());
      EXPECT_TRUE((*s)->Wait().ok()) << (*s)->status();
    });
    fs->OpenGate();
    second.join();
    EXPECT_TRUE(first_done_when_second_returned);
    EXPECT_TRUE((*first)->Wait().ok());
  });
  EXPECT_EQ(LoadAndCompare(dir.path(), 1, 1, "x", DType::kI32, {1 << 16}, Box{{0}, {1 << 16}}), "");
  EXPECT_EQ(LoadAndCompare(dir.path(), 2, 2, "x", DType::kI32, {1 << 16}, Box{{0}, {1 << 16}}), "");
}

TEST(EngineTest, SkipPolicyDropsTheStepOnEveryRank) {
  ScratchDir dir;
  auto fs1 = std::make_shared<testing::FaultFileSystem>();
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> mine = {
        MakeTensor(1, "x", DType::kF32, {64}, Box{{rank * 32}, {32}})};
    CheckpointOptions o = Options(dir.path(), comm);
    o.busy_policy = BusyPolicy::kSkip;
    if (rank == 1) o.file_system = fs1;
    auto engine = MustCreate(std::move(o));
    if (rank == 1) fs1->CloseGate();
    auto first = engine->Save(1, StateOf(mine));
    ASSERT_TRUE(first.ok()) << first.status();
    if (rank == 1) fs1->WaitForHeldWrite();
    auto second = engine->Save(2, StateOf(mine));
    EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(second.status().message(), HasSubstr("step 2 dropped on every rank: rank 1"));
    if (rank == 1) fs1->OpenGate();
    EXPECT_TRUE((*first)->Wait().ok()) << (*first)->status();
    auto third = engine->Save(3, StateOf(mine));
    ASSERT_TRUE(third.ok()) << third.status();
    EXPECT_TRUE((*third)->Wait().ok()) << (*third)->status();
  });
  auto list = ListCheckpoints(dir.path());
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].step, 1);
  EXPECT_EQ((*list)[1].step, 3);
}

TEST(EngineTest, FullDiskOnOneRankFailsTheSaveEverywhereAndTheNextOneWorks) {
  ScratchDir dir;
  auto fs1 = std::make_shared<testing::FaultFileSystem>();
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    auto state_of = [&](uint64_t seed) {
      return std::vector<OwnedTensor>{
          MakeTensor(seed, "x", DType::kF32, {1 << 14}, Box{{rank << 13}, {1 << 13}})};
    };
    CheckpointOptions o = Options(dir.path(), comm);
    if (rank == 1) o.file_system = fs1;
    auto engine = MustCreate(std::move(o));
    auto one = state_of(1);
    auto s1 = engine->Save(1, StateOf(one));
    ASSERT_TRUE(s1.ok() && (*s1)->Wait().ok());
    if (rank == 1) fs1->full = true;
    auto two = state_of(2);
    auto s2 = engine->Save(2, StateOf(two));
    ASSERT_TRUE(s2.ok()) << s2.status();  // the snapshot is taken; training goes on
    absl::Status failed = (*s2)->Wait();
    EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
    EXPECT_THAT(failed.message(), HasSubstr("checkpoint step 2 not committed: rank 1"));
    EXPECT_THAT(failed.message(), HasSubstr("shard-r00001.safetensors"));
    EXPECT_THAT(failed.message(), HasSubstr("No space left on device"));
    if (rank == 1) fs1->full = false;  // space freed
    auto three = state_of(3);
    auto s3 = engine->Save(3, StateOf(three));
    ASSERT_TRUE(s3.ok());
    EXPECT_TRUE((*s3)->Wait().ok()) << (*s3)->status();
  });
  EXPECT_EQ(LoadAndCompare(dir.path(), 1, 1, "x", DType::kF32, {1 << 14}, Box{{0}, {1 << 14}}), "");
  EXPECT_EQ(LoadAndCompare(dir.path(), kLatestStep, 3, "x", DType::kF32, {1 << 14},
                           Box{{0}, {1 << 14}}),
            "");
  auto names = PosixFileSystem()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) EXPECT_FALSE(ckpt::IsStaleDirName(n)) << n << " not cleaned";
}

// The durability protocol, from the calls the engine makes: every byte is fsynced before the
// rename that makes it part of a committed checkpoint, and each rename's directory is fsynced
// before the next step depends on it.
TEST(EngineTest, FsyncsComeBeforeTheRenamesThatDependOnThem) {
  ScratchDir dir;
  auto fs = std::make_shared<testing::FaultFileSystem>();
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> mine = {
        MakeTensor(1, "x", DType::kF32, {64}, Box{{rank * 32}, {32}})};
    CheckpointOptions o = Options(dir.path(), comm);
    o.file_system = fs;
    auto engine = MustCreate(std::move(o));
    auto save = engine->Save(7, StateOf(mine));
    ASSERT_TRUE(save.ok() && (*save)->Wait().ok());
  });
  const std::vector<std::string> log = fs->Log();
  auto index = [&](const std::function<bool(const std::string&)>& match, bool last = false) {
    int found = -1;
    for (int i = 0; i < static_cast<int>(log.size()); ++i) {
      if (match(log[i])) {
        found = i;
        if (!last) break;
      }
    }
    return found;
  };
  auto contains = [](std::string a, std::string b) {
    return [a, b](const std::string& e) {
      return e.rfind(a, 0) == 0 && e.find(b) != std::string::npos;
    };
  };
  const int rename_dir = index(contains("rename ", "step-000000007.tmp-"));
  const int rename_latest = index(contains("rename ", "latest.tmp"));
  ASSERT_GE(rename_dir, 0);
  ASSERT_GT(rename_latest, rename_dir);
  for (const char* shard : {"shard-r00000", "shard-r00001"}) {
    const int last_write = index(contains("write ", shard), /*last=*/true);
    const int sync = index(contains("sync ", shard));
    EXPECT_GT(sync, last_write) << shard;
    EXPECT_LT(sync, rename_dir) << shard;
  }
  const int manifest_sync = index(contains("sync ", "manifest.json"));
  EXPECT_GT(manifest_sync, index(contains("write ", "manifest.json"), true));
  EXPECT_LT(manifest_sync, rename_dir);
  const int tmp_dir_sync = index(contains("syncdir ", "step-000000007.tmp-"));
  EXPECT_GT(tmp_dir_sync, manifest_sync);
  EXPECT_LT(tmp_dir_sync, rename_dir);
  // After the directory rename: the parent is fsynced before `latest` is written.
  int parent_after_rename = -1;
  for (int i = rename_dir + 1; i < static_cast<int>(log.size()); ++i) {
    if (log[i] == "syncdir " + dir.path()) {
      parent_after_rename = i;
      break;
    }
  }
  EXPECT_GT(parent_after_rename, rename_dir);
  EXPECT_LT(parent_after_rename, index(contains("write ", "latest.tmp")));
  EXPECT_LT(index(contains("sync ", "latest.tmp")), rename_latest);
  EXPECT_EQ(log.back(), "syncdir " + dir.path());
}

TEST(EngineTest, RanksSavingDifferentStepsFailTogether) {
  ScratchDir dir;
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> mine = {
        MakeTensor(1, "x", DType::kF32, {64}, Box{{rank * 32}, {32}})};
    auto engine = MustCreate(Options(dir.path(), comm));
    auto save = engine->Save(5 + rank, StateOf(mine));
    ASSERT_TRUE(save.ok());
    absl::Status s = (*save)->Wait();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("every rank must call Save for the same steps"));
  });
  EXPECT_EQ(LatestCheckpointStep(dir.path()).status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineTest, OverlappingPiecesWithoutReplicaCountAreRejected) {
  ScratchDir dir;
  testing::RunCkptRanks(2, [&](int rank, std::shared_ptr<Communicator> comm) {
    std::vector<OwnedTensor> mine = {MakeTensor(1, "x", DType::kF32, {64})};
    auto engine = MustCreate(Options(dir.path(), comm));
    auto save = engine->Save(1, StateOf(mine));
    ASSERT_TRUE(save.ok());
    absl::Status s = (*save)->Wait();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("tensor x: the pieces of rank 0 and rank 1 overlap"));
  });
}

TEST(EngineTest, BadStatesAreRejectedBeforeAnythingHappens) {
  ScratchDir dir;
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    auto engine = MustCreate(Options(dir.path(), comm));
    std::vector<OwnedTensor> t = {MakeTensor(1, "x", DType::kF32, {8}),
                                  MakeTensor(1, "x", DType::kF32, {8})};
    auto s = engine->Save(1, StateOf(t));
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("appears twice"));
    t = {MakeTensor(1, "__metadata__", DType::kF32, {8})};
    EXPECT_EQ(engine->Save(1, StateOf(t)).status().code(), absl::StatusCode::kInvalidArgument);
    t = {MakeTensor(1, "x", DType::kF32, {8}, Box{{4}, {8}})};
    s = engine->Save(1, StateOf(t));
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("not inside the global shape"));
    t = {MakeTensor(1, "x", DType::kF32, {8})};
    t[0].replica_index = 2;
    t[0].replica_count = 2;
    EXPECT_EQ(engine->Save(1, StateOf(t)).status().code(), absl::StatusCode::kInvalidArgument);
    t[0].replica_index = 0;
    CheckpointState big = StateOf(t, std::string(kMaxCheckpointMetadataBytes + 1, 'm'));
    EXPECT_EQ(engine->Save(1, big).status().code(), absl::StatusCode::kInvalidArgument);
    CheckpointState gpu = StateOf(t);
    // A device no process has (and, in a build without CUDA, any device).
    gpu.tensors[0].tensor = Tensor(t[0].bytes.data(), DType::kF32, {8}, Device::Cuda(999));
    s = engine->Save(1, gpu);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.status().message(), HasSubstr("is a CUDA tensor (cuda:999)"));
    EXPECT_EQ(engine->LastSave(), nullptr);
  });
  EXPECT_EQ(ListCheckpoints(dir.path())->size(), 0u);
}

TEST(EngineTest, SavingAStepAgainReplacesIt) {
  ScratchDir dir;
  auto fs = std::make_shared<testing::FaultFileSystem>();
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = Options(dir.path(), comm);
    o.file_system = fs;
    auto engine = MustCreate(std::move(o));
    for (uint64_t seed : {1, 2}) {
      std::vector<OwnedTensor> t = {MakeTensor(seed, "x", DType::kF32, {1000})};
      auto s = engine->Save(4, StateOf(t));
      ASSERT_TRUE(s.ok() && (*s)->Wait().ok());
    }
  });
  EXPECT_EQ(LoadAndCompare(dir.path(), kLatestStep, 2, "x", DType::kF32, {1000}, Box{{0}, {1000}}),
            "");
  EXPECT_EQ(PosixFileSystem()->ListDir(dir.path())->size(), 2u);  // step-000000004, latest
  // Swapped in atomically where the file system can (ext4, xfs, tmpfs), else moved aside.
  bool replaced = false;
  for (const std::string& e : fs->Log()) {
    replaced |= e.rfind("exchange ", 0) == 0 || e.find(".old-") != std::string::npos;
  }
  EXPECT_TRUE(replaced);
}

TEST(EngineTest, LoadErrorsNameWhatIsWrong) {
  ScratchDir dir;
  std::vector<OwnedTensor> t = {MakeTensor(1, "x", DType::kF32, {4, 4})};
  testing::RunCkptRanks(1, [&](int, std::shared_ptr<Communicator> comm) {
    auto engine = MustCreate(Options(dir.path(), comm));
    auto s = engine->Save(1, StateOf(t));
    ASSERT_TRUE(s.ok() && (*s)->Wait().ok());
  });
  std::vector<float> buf(16);
  TensorRequest missing{"y", Tensor(buf.data(), DType::kF32, {4, 4}), {}, {}};
  auto r = LoadCheckpoint(dir.path(), 1, {&missing, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("tensor y is not in checkpoint step 1"));
  TensorRequest dtype{"x", Tensor(buf.data(), DType::kI32, {4, 4}), {}, {}};
  r = LoadCheckpoint(dir.path(), 1, {&dtype, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("is f32"));
  TensorRequest outside{"x", Tensor(buf.data(), DType::kF32, {2, 4}), {3, 0}, {}};
  r = LoadCheckpoint(dir.path(), 1, {&outside, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  TensorRequest shape{"x", Tensor(buf.data(), DType::kF32, {4, 4}), {}, {8, 2}};
  r = LoadCheckpoint(dir.path(), 1, {&shape, 1});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("global shape [4, 4]"));
  EXPECT_EQ(LoadCheckpoint(dir.path(), 2, {}).status().code(), absl::StatusCode::kNotFound);
  ScratchDir empty;
  EXPECT_EQ(LoadCheckpoint(empty.path(), kLatestStep, {}).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace trident
