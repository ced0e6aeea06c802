// Bad input on load (flipped bytes, truncated and missing shards, broken manifests), half-
// written directories, and a really full disk (a small tmpfs, where the test may mount one).
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "../util/status_matchers.h"
#include "ckpt_test_util.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ckpt::Box;
using testing::LoadAndCompare;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;
using testing::StateOf;
using testing::StatusIs;

// Two ranks, each holding half of the rows of "a" [64, 16] f32 and "b" [32] i64.
std::vector<OwnedTensor> HalfState(uint64_t seed, int rank) {
  return {MakeTensor(seed, "a", DType::kF32, {64, 16}, Box{{rank * 32, 0}, {32, 16}}),
          MakeTensor(seed, "b", DType::kI64, {32}, Box{{rank * 16}, {16}})};
}

void SaveTwoRanks(const std::string& dir, uint64_t seed, int64_t step,
                  std::shared_ptr<FileSystem> fs = nullptr, absl::Status* status = nullptr) {
  absl::Status statuses[2];
  testing::RunCkptRanks(2, [&](int r, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = testing::TestOptions(dir, comm, 32 << 20);
    o.file_system = fs;
    auto engine = CheckpointEngine::Create(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<OwnedTensor> mine = HalfState(seed, r);
    auto save = (*engine)->Save(step, StateOf(mine));
    ASSERT_TRUE(save.ok()) << save.status();
    statuses[r] = (*save)->Wait();
  });
  if (status != nullptr) {
    *status = statuses[0];
  } else {
    ASSERT_TRUE(statuses[0].ok()) << statuses[0];
    ASSERT_TRUE(statuses[1].ok()) << statuses[1];
  }
}

std::string Shard(const ScratchDir& dir, int64_t step, int rank) {
  return JoinPath(dir.sub(ckpt::StepDirName(step)), ckpt::ShardFileName(rank));
}

// Byte offset of the first byte of `tensor` in `rank`'s shard, from the manifest.
uint64_t OffsetOf(const std::string& dir, int64_t step, const std::string& tensor, int rank) {
  auto m = ReadManifest(dir, step);
  EXPECT_TRUE(m.ok()) << m.status();
  for (const ShardInfo& s : m->tensors.at(tensor).shards) {
    if (s.rank == rank) return s.byte_offset;
  }
  ADD_FAILURE() << "no shard of " << tensor << " on rank " << rank;
  return 0;
}

void FlipByte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

absl::Status LoadAll(const std::string& dir, int64_t step, const std::string& tensor) {
  std::vector<char> buf(64 * 16 * 8);
  TensorRequest r = tensor == "a"
                        ? TensorRequest{"a", Tensor(buf.data(), DType::kF32, {64, 16}), {}, {}}
                        : TensorRequest{"b", Tensor(buf.data(), DType::kI64, {32}), {}, {}};
  return LoadCheckpoint(dir, step, {&r, 1}).status();
}

TEST(FaultTest, FlippedByteIsDataLossNamingFileAndTensor) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  FlipByte(Shard(dir, 1, 1), OffsetOf(dir.path(), 1, "b", 1) + 5);
  absl::Status s = LoadAll(dir.path(), 1, "b");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("checksum mismatch in " + Shard(dir, 1, 1) + ", tensor b"));
  s = VerifyCheckpoint(dir.path(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("shard-r00001.safetensors, tensor b"));
  // What does not touch the bad piece still loads: "a", and the half of "b" rank 0 wrote.
  EXPECT_TRUE(LoadAll(dir.path(), 1, "a").ok());
  EXPECT_EQ(LoadAndCompare(dir.path(), 1, 1, "b", DType::kI64, {32}, Box{{0}, {16}}), "");
}

TEST(FaultTest, TruncatedShardIsDataLoss) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  const std::string shard = Shard(dir, 1, 0);
  ASSERT_EQ(truncate(shard.c_str(), static_cast<off_t>(OffsetOf(dir.path(), 1, "b", 0) + 3)), 0);
  absl::Status s = LoadAll(dir.path(), 1, "b");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(shard + " is truncated: tensor b needs bytes"));
  s = VerifyCheckpoint(dir.path(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(shard + " is truncated: tensor b needs bytes"));
}

TEST(FaultTest, MissingShardIsDataLoss) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  ASSERT_EQ(unlink(Shard(dir, 1, 0).c_str()), 0);
  absl::Status s = LoadAll(dir.path(), 1, "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("shard file " + Shard(dir, 1, 0) + " is missing (tensor a"));
  s = VerifyCheckpoint(dir.path(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr("is missing"));
}

TEST(FaultTest, ManifestThatIsNotJsonOrOfAnotherVersion) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  const std::string manifest = JoinPath(dir.sub(ckpt::StepDirName(1)), "manifest.json");
  auto text = ReadFileToString(*PosixFileSystem(), manifest);
  ASSERT_TRUE(text.ok());
  WriteText(manifest, text->substr(0, text->size() / 2));
  absl::Status s = LoadAll(dir.path(), 1, "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(manifest + " is not valid JSON"));
  EXPECT_EQ(VerifyCheckpoint(dir.path(), 1).code(), absl::StatusCode::kDataLoss);

  std::string v2 = *text;
  v2.replace(v2.find("\"version\": 1"), 12, "\"version\": 2");
  WriteText(manifest, v2);
  s = LoadAll(dir.path(), 1, "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("format version 2; this build reads version 1"));

  ASSERT_EQ(unlink(manifest.c_str()), 0);
  EXPECT_EQ(ReadManifest(dir.path(), 1).status().code(), absl::StatusCode::kDataLoss);
}

TEST(FaultTest, HalfWrittenDirectoriesAreIgnoredAndCleaned) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  SaveTwoRanks(dir.path(), 2, 2);
  // A complete-looking save of step 9 that never got renamed.
  const std::string tmp = dir.sub(ckpt::TmpDirName(9, "0123abcd"));
  ASSERT_EQ(rename(dir.sub(ckpt::StepDirName(2)).c_str(), tmp.c_str()), 0);
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 1);  // `latest` names a missing step
  EXPECT_EQ(ListCheckpoints(dir.path())->size(), 1u);
  EXPECT_EQ(LoadAll(dir.path(), 9, "a").code(), absl::StatusCode::kNotFound);
  // Step 1 moved aside by a replacement that crashed before the new one was renamed in (the
  // fallback where the file system cannot swap directories): the next save puts it back.
  const std::string old = dir.sub(ckpt::OldDirName(1, "0123abcd"));
  ASSERT_EQ(rename(dir.sub(ckpt::StepDirName(1)).c_str(), old.c_str()), 0);
  EXPECT_EQ(LatestCheckpointStep(dir.path()).status().code(), absl::StatusCode::kNotFound);

  SaveTwoRanks(dir.path(), 3, 3);
  EXPECT_FALSE(PosixFileSystem()->FileExists(tmp));
  EXPECT_FALSE(PosixFileSystem()->FileExists(old));
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 3);
  EXPECT_EQ(LoadAndCompare(dir.path(), 1, 1, "a", DType::kF32, {64, 16}, Box{{0, 0}, {64, 16}}),
            "");
  // `latest` naming a directory that is gone: the newest committed one is used.
  WriteText(dir.sub("latest"), "step-000000005\n");
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 3);
}

// --- Checkpoints written by someone else (docs/security.md): every field is validated before
// a byte of data is read, and a bad one is kDataLoss naming the file and the field.

std::string ManifestPath(const ScratchDir& dir, int64_t step) {
  return JoinPath(dir.sub(ckpt::StepDirName(step)), ckpt::kManifestName);
}

// Rewrites a saved step's manifest through `edit`, as a crafted checkpoint would be.
void EditManifest(const ScratchDir& dir, int64_t step,
                  const std::function<void(CheckpointManifest&)>& edit) {
  auto m = ReadManifest(dir.path(), step);
  ASSERT_TRUE(m.ok()) << m.status();
  edit(*m);
  WriteText(ManifestPath(dir, step), ckpt::ManifestToJson(*m));
}

ShardInfo& ShardOf(CheckpointManifest& m, const std::string& tensor, int rank) {
  for (ShardInfo& s : m.tensors.at(tensor).shards) {
    if (s.rank == rank) return s;
  }
  ADD_FAILURE() << "no shard of " << tensor << " on rank " << rank;
  return m.tensors.at(tensor).shards[0];
}

// The CRC32C of `n` bytes of a file at `offset` (as many as there are).
uint32_t CrcOfFile(const std::string& path, uint64_t offset, uint64_t n) {
  auto text = ReadFileToString(*PosixFileSystem(), path);
  EXPECT_TRUE(text.ok()) << text.status();
  const std::string bytes = text->substr(std::min<uint64_t>(offset, text->size()), n);
  return ckpt::Crc32c(bytes.data(), bytes.size());
}

// Defect 1 of issue 17: a doubled byte_length (with a CRC that matches the bytes it covers)
// was read straight into the caller's tensor, past its end.
TEST(UntrustedCheckpointTest, ByteLengthThatDisagreesWithTheShapeIsDataLoss) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  const std::string shard = Shard(dir, 1, 0);
  EditManifest(dir, 1, [&](CheckpointManifest& m) {
    ShardInfo& s = ShardOf(m, "b", 0);
    s.byte_length *= 2;
    s.crc32c = CrcOfFile(shard, s.byte_offset, s.byte_length);
    for (FileInfo& f : m.files) f.bytes = std::max(f.bytes, s.byte_offset + s.byte_length);
  });
  const std::string want = "(rank 0): field byte_length is 256; shape [16] of i64 is 128 bytes";
  std::vector<char> buf(16 * 8);
  TensorRequest same_layout{"b", Tensor(buf.data(), DType::kI64, {16}), {}, {}};
  EXPECT_THAT(LoadCheckpoint(dir.path(), 1, {&same_layout, 1}).status(),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(ManifestPath(dir, 1) + ": tensor b, shard "), HasSubstr(want))));
  EXPECT_THAT(VerifyCheckpoint(dir.path(), 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
}

// Defect 2: a byte_length of 2^62 ended the process in a CHECK of the host allocator.
TEST(UntrustedCheckpointTest, HugeByteLengthIsDataLossNotAnAbort) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  EditManifest(dir, 1, [](CheckpointManifest& m) {
    ShardOf(m, "a", 1).byte_length = uint64_t{1} << 62;
  });
  // The whole of "a" from two halves: the resharding path, which reads through a scratch buffer.
  EXPECT_THAT(LoadAll(dir.path(), 1, "a"),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("(rank 1): field byte_length is 4611686018427387904; shape [32, 16] of f32 is 2048 bytes")));
  EXPECT_THAT(VerifyCheckpoint(dir.path(), 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("field byte_length")));
}

// Defect 3: a file name that leaves the step directory was opened, and with a matching length
// and CRC any file's bytes became weights.
TEST(UntrustedCheckpointTest, FileNameOutsideTheStepDirectoryIsDataLoss) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  // A copy of a real shard outside the step directory: everything else about it is right.
  const std::string outside = dir.sub("elsewhere.safetensors");
  WriteText(outside, *ReadFileToString(*PosixFileSystem(), Shard(dir, 1, 0)));
  const std::string evil = "../elsewhere.safetensors";
  EditManifest(dir, 1, [&](CheckpointManifest& m) {
    for (FileInfo& f : m.files) {
      if (f.rank == 0) f.name = evil;
    }
    for (auto& [name, t] : m.tensors) {
      for (ShardInfo& s : t.shards) {
        if (s.rank == 0) s.file = evil;
      }
    }
  });
  const std::string want = ManifestPath(dir, 1) +
                           ": files: '../elsewhere.safetensors' is not a plain file name in the "
                           "step directory";
  EXPECT_THAT(LoadAll(dir.path(), 1, "a"), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
  EXPECT_THAT(VerifyCheckpoint(dir.path(), 1),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
  EXPECT_THAT(ReadManifest(dir.path(), 1).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
}

// Defect 4: `latest` naming a step without a manifest; verify checked another step and said ok.
TEST(UntrustedCheckpointTest, LatestNamingNoCommittedStepFailsVerify) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  ASSERT_EQ(mkdir(dir.sub(ckpt::StepDirName(5)).c_str(), 0755), 0);  // no manifest in it
  WriteText(dir.sub("latest"), "step-000000005\n");
  EXPECT_THAT(VerifyCheckpoint(dir.path(), kLatestStep),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr(dir.sub("latest") + " names step-000000005, which has no "
                                 "manifest.json")));
  WriteText(dir.sub("latest"), "../../etc\n");
  EXPECT_THAT(VerifyCheckpoint(dir.path(), kLatestStep),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("does not name a step directory")));
  // Loading keeps its documented fallback to the newest committed step; an explicit step
  // verifies as before.
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 1);
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 1).ok());
}

// The rest of what a manifest says is checked against the rest, before any shard is opened.
TEST(UntrustedCheckpointTest, EveryFieldIsCheckedAgainstTheOthers) {
  struct Case {
    const char* what;
    std::function<void(CheckpointManifest&)> edit;
    const char* error;
  };
  const std::vector<Case> cases = {
      {"offset outside", [](CheckpointManifest& m) { ShardOf(m, "a", 1).offset = {40, 0}; },
       "(rank 1): the piece at offset [40, 0] of shape [32, 16] is outside the global shape "
       "[64, 16]"},
      {"negative offset", [](CheckpointManifest& m) { ShardOf(m, "a", 1).offset = {-32, 0}; },
       "field offset has a negative dimension -32"},
      {"bytes past the file",
       [](CheckpointManifest& m) { ShardOf(m, "a", 0).byte_offset = m.files[0].bytes; },
       "run past the"},
      {"file not listed", [](CheckpointManifest& m) { ShardOf(m, "b", 1).file = "other"; },
       "field file names other, which the manifest does not list"},
      {"rank outside the world", [](CheckpointManifest& m) { ShardOf(m, "b", 1).rank = 7; },
       "(rank 7): field rank is not a rank of the 2 that saved"},
      {"gap", [](CheckpointManifest& m) {
         auto& shards = m.tensors.at("b").shards;
         shards.erase(shards.begin());
       },
       "tensor b: the ranks' pieces cover 16 of the 32 elements"},
      {"dimensions", [](CheckpointManifest& m) { m.tensors.at("b").global_shape = {32, 1}; },
       "do not have the 2 dimensions of global_shape"},
      {"huge global shape",
       [](CheckpointManifest& m) { m.tensors.at("b").global_shape = {int64_t{1} << 62}; },
       "field global_shape [4611686018427387904] is too large"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ScratchDir dir;
    SaveTwoRanks(dir.path(), 1, 1);
    EditManifest(dir, 1, c.edit);
    EXPECT_THAT(LoadAll(dir.path(), 1, "a"),
                StatusIs(absl::StatusCode::kDataLoss,
                         AllOf(HasSubstr(ManifestPath(dir, 1)), HasSubstr(c.error))));
    EXPECT_THAT(VerifyCheckpoint(dir.path(), 1),
                StatusIs(absl::StatusCode::kDataLoss, HasSubstr(c.error)));
  }
}

// A manifest field of the wrong type or out of its type's range is named, not narrowed.
TEST(UntrustedCheckpointTest, FieldsOutOfRangeAreNamed) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  const std::string path = ManifestPath(dir, 1);
  const std::string text = *ReadFileToString(*PosixFileSystem(), path);
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    const size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return t.replace(at, from.size(), to);
  };
  WriteText(path, replaced("\"world_size\": 2", "\"world_size\": 4294967298"));
  EXPECT_THAT(ReadManifest(dir.path(), 1).status(),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr(path + ": field world_size is out of range: 4294967298")));
  WriteText(path, replaced("\"world_size\": 2", "\"world_size\": 2000000000"));
  EXPECT_THAT(ReadManifest(dir.path(), 1).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("field world_size 2000000000")));
  WriteText(path, replaced("\"crc32c\": ", "\"crc32c\": -"));
  EXPECT_THAT(ReadManifest(dir.path(), 1).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("field crc32c is out of range")));
  WriteText(path, replaced("\"step\": 1", "\"step\": \"1\""));
  EXPECT_THAT(ReadManifest(dir.path(), 1).status(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("field step is not an integer")));
}

// The safetensors header against the manifest and the file: a shard whose header disagrees is
// refused by the loader as by verify.
TEST(UntrustedCheckpointTest, SafetensorsHeaderThatDisagreesIsDataLossOnLoad) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 1, 1);
  const std::string shard = Shard(dir, 1, 1);
  std::string bytes = *ReadFileToString(*PosixFileSystem(), shard);
  // Same length, another dtype: "I64" of b becomes "U8\x20" would change the shape's bytes;
  // swap the dtype of a for one of the same size instead (F32 -> I32).
  const size_t at = bytes.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "\"I32\"");
  WriteText(shard, bytes);
  const std::string want = shard + ": tensor a: the safetensors header says dtype I32, the manifest f32";
  EXPECT_THAT(LoadAll(dir.path(), 1, "a"), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
  EXPECT_THAT(VerifyCheckpoint(dir.path(), 1), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(want)));
}

// A real full disk: a 4 MiB tmpfs. Mounting needs CAP_SYS_ADMIN; without it the test skips
// (the ENOSPC path is then still covered through the file-system seam in engine_test).
TEST(FaultTest, RealFullDiskFailsTheSaveAndTheNextOneWorksAfterSpaceIsFreed) {
  ScratchDir dir;
  const std::string mnt = dir.sub("tmpfs");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << strerror(errno)
                 << "); ENOSPC is injected through the file-system seam in engine_test instead";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string ckpt_dir = mnt + "/ckpt";
  SaveTwoRanks(ckpt_dir, 1, 1);  // 64 KiB of data
  // Fill the disk but for 8 KiB.
  struct statvfs st;
  ASSERT_EQ(statvfs(mnt.c_str(), &st), 0);
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  const std::string filler = mnt + "/filler";
  {
    std::ofstream f(filler, std::ios::binary);
    std::string block(1 << 16, 'x');
    for (uint64_t left = free_bytes - (8 << 10); left > 0;) {
      const size_t n = std::min<uint64_t>(left, block.size());
      f.write(block.data(), static_cast<std::streamsize>(n));
      left -= n;
    }
  }
  absl::Status failed;
  SaveTwoRanks(ckpt_dir, 2, 2, nullptr, &failed);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_THAT(failed.message(), HasSubstr("checkpoint step 2 not committed"));
  EXPECT_THAT(failed.message(), HasSubstr("No space left on device"));
  EXPECT_EQ(LatestCheckpointStep(ckpt_dir).value(), 1);
  EXPECT_EQ(LoadAndCompare(ckpt_dir, kLatestStep, 1, "a", DType::kF32, {64, 16},
                           Box{{0, 0}, {64, 16}}),
            "");
  ASSERT_EQ(unlink(filler.c_str()), 0);
  SaveTwoRanks(ckpt_dir, 3, 3);
  EXPECT_EQ(LoadAndCompare(ckpt_dir, kLatestStep, 3, "a", DType::kF32, {64, 16},
                           Box{{0, 0}, {64, 16}}),
            "");
  EXPECT_TRUE(VerifyCheckpoint(ckpt_dir, 1).ok());
}

}  // namespace
}  // namespace trident
