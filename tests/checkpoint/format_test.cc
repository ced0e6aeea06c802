// The pieces of the checkpoint format: CRC32C, names, boxes, safetensors headers, manifests.
#include "checkpoint/format.h"

#include <string>
#include <vector>

#include "ckpt_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ckpt::Box;

TEST(Crc32cTest, StandardCheckValueAndChaining) {
  // The check value of CRC-32C (RFC 3720 / iSCSI).
  EXPECT_EQ(ckpt::Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(ckpt::Crc32c("", 0), 0u);
  std::string a = "hello, ", b = "checkpoint";
  EXPECT_EQ(ckpt::Crc32c(b.data(), b.size(), ckpt::Crc32c(a.data(), a.size())),
            ckpt::Crc32c((a + b).data(), a.size() + b.size()));
  // 32 zero bytes (RFC 3720 B.4).
  std::string zeros(32, '\0');
  EXPECT_EQ(ckpt::Crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
}

TEST(NamesTest, StepDirectories) {
  EXPECT_EQ(ckpt::StepDirName(100), "step-000000100");
  EXPECT_EQ(ckpt::ParseStepDirName("step-000000100"), 100);
  EXPECT_EQ(ckpt::ParseStepDirName("step-000000100.tmp-abc"), std::nullopt);
  EXPECT_EQ(ckpt::ParseStepDirName("latest"), std::nullopt);
  EXPECT_TRUE(ckpt::IsStaleDirName(ckpt::TmpDirName(5, "ab12")));
  EXPECT_TRUE(ckpt::IsStaleDirName(ckpt::OldDirName(5, "ab12")));
  EXPECT_FALSE(ckpt::IsStaleDirName("step-000000005"));
  EXPECT_EQ(ckpt::ShardFileName(3), "shard-r00003.safetensors");
}

TEST(ReplicaRowsTest, SpreadsRowsAndCoversThemOnce) {
  for (int64_t rows : {0, 1, 3, 7, 8, 100}) {
    for (int count : {1, 2, 3, 8}) {
      int64_t covered = 0, next = 0;
      for (int i = 0; i < count; ++i) {
        ckpt::RowRange r = ckpt::ReplicaRows({rows, 4}, i, count);
        if (r.end > r.begin) {
          EXPECT_EQ(r.begin, next);
          next = r.end;
        }
        covered += r.end - r.begin;
        EXPECT_LE(r.end - r.begin, rows / count + 1);
      }
      EXPECT_EQ(covered, rows) << rows << " rows, " << count << " replicas";
    }
  }
  // A scalar: replica 0 writes it.
  EXPECT_EQ(ckpt::ReplicaRows({}, 0, 4).end, 1);
  EXPECT_EQ(ckpt::ReplicaRows({}, 1, 4).end, 0);
}

TEST(BoxTest, IntersectAndCopy3d) {
  const Tensor::Shape global = {5, 6, 7};
  const Box src{{1, 0, 2}, {4, 6, 4}};
  const Box dst{{0, 2, 0}, {3, 3, 7}};
  Box region;
  ASSERT_TRUE(ckpt::Intersect(src, dst, &region));
  EXPECT_EQ(region.offset, (Tensor::Shape{1, 2, 2}));
  EXPECT_EQ(region.shape, (Tensor::Shape{2, 3, 4}));
  std::vector<char> s = testing::SliceBytes(1, "t", DType::kI32, global, src);
  std::vector<char> d(ckpt::Volume(dst.shape) * 4, 0);
  ckpt::CopyBox(s.data(), src, d.data(), dst, region, 4);
  // Every element of the region equals the generated value; others are untouched.
  std::vector<char> want = testing::SliceBytes(1, "t", DType::kI32, global, dst);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      for (int64_t k = 0; k < 7; ++k) {
        const int64_t gi = i, gj = j + 2, gk = k;
        const bool inside = gi >= 1 && gi < 3 && gj >= 2 && gj < 5 && gk >= 2 && gk < 6;
        const size_t at = ((i * 3 + j) * 7 + k) * 4;
        if (inside) {
          EXPECT_EQ(std::memcmp(d.data() + at, want.data() + at, 4), 0) << i << j << k;
        } else {
          EXPECT_EQ(d[at], 0);
        }
      }
    }
  }
  EXPECT_FALSE(ckpt::Intersect(Box{{0}, {3}}, Box{{3}, {2}}, &region));
}

TEST(SafetensorsTest, PrefixIsAlignedAndParsesBack) {
  std::vector<ckpt::SafetensorsEntry> entries = {
      {"a", DType::kBF16, {2, 3}, 0, 12},
      {"b", DType::kI64, {4}, 12, 44},
  };
  std::string prefix = ckpt::BuildSafetensorsPrefix(entries, {{"step", "7"}});
  EXPECT_EQ(prefix.size() % ckpt::kDataAlignment, 0u);
  auto header = ckpt::ParseSafetensorsHeader(prefix, "x");
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->data_start, prefix.size());
  ASSERT_EQ(header->entries.size(), 2u);
  EXPECT_EQ(header->entries[0].name, "a");
  EXPECT_EQ(header->entries[0].dtype, DType::kBF16);
  EXPECT_EQ(header->entries[1].end, 44u);
  EXPECT_EQ(header->metadata.at("step"), "7");
  EXPECT_THAT(ckpt::ParseSafetensorsHeader(prefix.substr(0, 100), "f.safetensors").status(),
              ::testing::AllOf(::testing::Property(&absl::Status::code,
                                                   absl::StatusCode::kDataLoss),
                               ::testing::Property(&absl::Status::message,
                                                   HasSubstr("f.safetensors"))));
}

CheckpointManifest SmallManifest() {
  CheckpointManifest m;
  m.version = ckpt::kFormatVersion;
  m.step = 3;
  m.world_size = 2;
  m.metadata = {"rng0", std::string("\0\1\2", 3)};
  m.files = {{"shard-r00000.safetensors", 0, 4100}, {"shard-r00001.safetensors", 1, 4100}};
  TensorInfo t;
  t.dtype = DType::kF32;
  t.global_shape = {2, 2};
  t.shards.push_back({"shard-r00000.safetensors", 0, 4096, 8, {0, 0}, {1, 2}, 11, 1});
  t.shards.push_back({"shard-r00001.safetensors", 1, 4096, 8, {1, 0}, {1, 2}, 22, 1});
  m.tensors["w"] = t;
  return m;
}

TEST(ManifestTest, RoundTrip) {
  CheckpointManifest m = SmallManifest();
  auto back = ckpt::ParseManifest(ckpt::ManifestToJson(m), "manifest.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->step, 3);
  EXPECT_EQ(back->metadata, m.metadata);
  ASSERT_EQ(back->tensors.at("w").shards.size(), 2u);
  EXPECT_EQ(back->tensors.at("w").shards[1].crc32c, 22u);
  EXPECT_EQ(back->tensors.at("w").shards[1].offset, (Tensor::Shape{1, 0}));
  EXPECT_TRUE(ckpt::CheckCoverage(*back).ok());
}

TEST(ManifestTest, NotJsonIsDataLoss) {
  auto m = ckpt::ParseManifest("{\"format\": \"trident-checkpoint\", \"vers", "d/manifest.json");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(m.status().message(), HasSubstr("d/manifest.json is not valid JSON"));
  m = ckpt::ParseManifest("{\"format\": \"trident-checkpoint\"}", "m");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
}

TEST(ManifestTest, UnknownVersionIsFailedPrecondition) {
  std::string text = ckpt::ManifestToJson(SmallManifest());
  const std::string from = "\"version\": 1";
  ASSERT_NE(text.find(from), std::string::npos);
  text.replace(text.find(from), from.size(), "\"version\": 99");
  auto m = ckpt::ParseManifest(text, "m");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(m.status().message(), HasSubstr("format version 99"));
}

TEST(ManifestTest, CoverageFindsGapsAndOverlaps) {
  CheckpointManifest m = SmallManifest();
  m.tensors["w"].shards[1].offset = {0, 0};  // both pieces at row 0
  absl::Status s = ckpt::CheckCoverage(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("overlap"));
  m = SmallManifest();
  m.tensors["w"].shards.pop_back();
  s = ckpt::CheckCoverage(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cover 2 of the 4 elements"));
}

}  // namespace
}  // namespace trident
