// What other projects' readers take from a checkpoint: the DCP_SHARDING_INFO that torch's
// distributed checkpoint reads from each shard's __metadata__, and the Hugging Face index
// (model.safetensors.index.json) committed with the shards; verify checks both against the
// manifest.
#include <fstream>
#include <string>
#include <vector>

#include "ckpt_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ckpt::Box;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;
using json = nlohmann::json;

ckpt::SafetensorsHeader HeaderOf(std::vector<ckpt::SafetensorsEntry> entries,
                                 std::map<std::string, std::string> metadata) {
  const std::string prefix = ckpt::BuildSafetensorsPrefix(entries, metadata);
  auto h = ckpt::ParseSafetensorsHeader(prefix, "f");
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? *h : ckpt::SafetensorsHeader{};
}

TEST(DcpShardingInfoTest, ShardMetadataHasWhatTorchReads) {
  auto md = ckpt::ShardMetadata(7, 3, {{"w", {4, 0}}, {"s", {}}});
  EXPECT_EQ(md.at("format"), "pt");
  EXPECT_EQ(md.at("DCP_VERSION"), "1.0");
  EXPECT_EQ(md.at("trident_format"), "trident-checkpoint");
  EXPECT_EQ(md.at("step"), "7");
  EXPECT_EQ(md.at("rank"), "3");
  // torch: json.loads(metadata["DCP_SHARDING_INFO"])[key]["saved_offsets"]
  json info = json::parse(md.at("DCP_SHARDING_INFO"));
  EXPECT_EQ(info, json::parse(R"({"w": {"saved_offsets": [4, 0]}, "s": {"saved_offsets": []}})"));

  auto header = HeaderOf({{"w", DType::kF32, {2, 3}, 0, 24}, {"s", DType::kI64, {}, 24, 32}}, md);
  auto parsed = ckpt::ParseDcpShardingInfo(header, "f");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->has_value());
  EXPECT_EQ((**parsed).at("w"), (Tensor::Shape{4, 0}));
  EXPECT_EQ((**parsed).at("s"), Tensor::Shape{});
}

TEST(DcpShardingInfoTest, AbsentIsNotAnError) {
  // Checkpoints written before the key was added have none.
  auto header = HeaderOf({{"w", DType::kF32, {2}, 0, 8}}, {{"format", "trident-checkpoint"}});
  auto parsed = ckpt::ParseDcpShardingInfo(header, "f");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->has_value());
}

TEST(DcpShardingInfoTest, MalformedIsDataLossNamingTheTensor) {
  const std::vector<ckpt::SafetensorsEntry> entries = {{"w", DType::kF32, {2, 3}, 0, 24}};
  struct Case {
    std::string info, error;
  };
  for (const Case& c : std::vector<Case>{
           {"not json", "f: __metadata__ DCP_SHARDING_INFO is not a JSON object"},
           {"[1]", "is not a JSON object"},
           {"{}", "tensor w: field saved_offsets is missing"},
           {R"({"w": {"saved_offsets": [1]}})", "[1] does not have the 2 dimensions"},
           {R"({"w": {"saved_offsets": [0, -1]}})", "negative dimension"},
           {R"({"w": {"saved_offsets": "0,0"}})", "saved_offsets is not an array"},
           {R"({"w": {}})", "saved_offsets is missing"},
       }) {
    auto header = HeaderOf(entries, {{"DCP_SHARDING_INFO", c.info}});
    auto parsed = ckpt::ParseDcpShardingInfo(header, "f");
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss) << c.info;
    EXPECT_THAT(parsed.status().message(), HasSubstr(c.error)) << c.info;
  }
}

CheckpointManifest SplitManifest() {
  CheckpointManifest m;
  m.step = 5;
  m.world_size = 2;
  m.metadata = {"", ""};
  m.files = {{"shard-r00000.safetensors", 0, 8192}, {"shard-r00001.safetensors", 1, 8192}};
  // "w" [4, 2] f32: rows 2-3 in rank 1's file (listed first), rows 0-1 in rank 0's.
  m.tensors["w"] = {DType::kF32, {4, 2},
                    {{"shard-r00001.safetensors", 1, 4096, 16, {2, 0}, {2, 2}, 0, 1},
                     {"shard-r00000.safetensors", 0, 4096, 16, {0, 0}, {2, 2}, 0, 1}}};
  m.tensors["b"] = {DType::kBF16, {3}, {{"shard-r00001.safetensors", 1, 4112, 6, {0}, {3}, 0, 2}}};
  return m;
}

TEST(CheckpointIndexTest, MapsEachTensorToTheFileWithItsFirstPiece) {
  const CheckpointManifest m = SplitManifest();
  const std::string text = ckpt::CheckpointIndexJson(m);
  json j = json::parse(text);
  EXPECT_EQ(j["weight_map"], json::parse(R"({"w": "shard-r00000.safetensors",
                                             "b": "shard-r00001.safetensors"})"));
  EXPECT_EQ(j["metadata"]["total_size"], 4 * 2 * 4 + 3 * 2);
  EXPECT_EQ(j["metadata"]["sharded"], "true");
  EXPECT_EQ(j["metadata"]["step"], "5");
  EXPECT_TRUE(ckpt::ValidateCheckpointIndex(text, m, "idx").ok());
}

TEST(CheckpointIndexTest, ValidateNamesWhatIsWrong) {
  const CheckpointManifest m = SplitManifest();
  auto check = [&](const std::string& text) { return ckpt::ValidateCheckpointIndex(text, m, "idx"); };
  EXPECT_THAT(check("{").message(), HasSubstr("idx is not a JSON object with a weight_map"));
  EXPECT_EQ(check("{").code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(check(R"({"weight_map": {"w": "shard-r00000.safetensors"}})").message(),
              HasSubstr("idx: weight_map has no file for tensor b"));
  absl::Status wrong = check(
      R"({"weight_map": {"w": "shard-r00000.safetensors", "b": "shard-r00000.safetensors"}})");
  EXPECT_EQ(wrong.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(wrong.message(), HasSubstr("maps tensor b to shard-r00000.safetensors, which holds "
                                         "no piece of it"));
}

// Two ranks: "emb" split by rows, "norm" replicated (each replica writes half its rows),
// "w" split by columns; one checkpoint with real files.
void SaveTwoRanks(const std::string& dir, int64_t step) {
  testing::RunCkptRanks(2, [&](int r, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = testing::TestOptions(dir, comm);
    o.peer_replicas = false;
    auto e = CheckpointEngine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    std::vector<OwnedTensor> state = {
        MakeTensor(step, "emb", DType::kBF16, {10, 4}, Box{{5 * r, 0}, {5, 4}}),
        MakeTensor(step, "norm", DType::kF32, {6}),
        MakeTensor(step, "w", DType::kF32, {3, 8}, Box{{0, 4 * r}, {3, 4}})};
    state[1].replica_index = r;
    state[1].replica_count = 2;
    auto s = (*e)->Save(step, testing::StateOf(state));
    ASSERT_TRUE(s.ok()) << s.status();
    absl::Status w = (*s)->Wait();
    ASSERT_TRUE(w.ok()) << w;
  });
}

TEST(CheckpointInteropTest, ShardsCarryTheManifestsOffsetsAndTheIndexIsCommitted) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 3);
  auto m = ReadManifest(dir.path(), 3);
  ASSERT_TRUE(m.ok()) << m.status();
  int pieces = 0;
  for (const FileInfo& f : m->files) {
    const std::string path = dir.sub("step-000000003/" + f.name);
    auto bytes = ReadFileToString(*PosixFileSystem(), path);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto header = ckpt::ParseSafetensorsHeader(*bytes, path);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->metadata.at("format"), "pt");
    auto offsets = ckpt::ParseDcpShardingInfo(*header, path);
    ASSERT_TRUE(offsets.ok() && offsets->has_value()) << offsets.status();
    EXPECT_EQ((**offsets).size(), header->entries.size());
    for (const auto& [name, t] : m->tensors) {
      for (const ShardInfo& s : t.shards) {
        if (s.file != f.name) continue;
        EXPECT_EQ((**offsets).at(name), s.offset) << name << " in " << f.name;
        ++pieces;
      }
    }
  }
  EXPECT_EQ(pieces, 2 + 2 + 2);  // emb by rows, norm by replica halves, w by columns
  // Split pieces really are slices: rank 1's emb starts at row 5, its w at column 4.
  auto header1 = ckpt::ParseSafetensorsHeader(
      ReadFileToString(*PosixFileSystem(), dir.sub("step-000000003/shard-r00001.safetensors"))
          .value(),
      "r1");
  ASSERT_TRUE(header1.ok());
  auto offsets1 = ckpt::ParseDcpShardingInfo(*header1, "r1").value().value();
  EXPECT_EQ(offsets1.at("emb"), (Tensor::Shape{5, 0}));
  EXPECT_EQ(offsets1.at("w"), (Tensor::Shape{0, 4}));
  EXPECT_EQ(offsets1.at("norm"), (Tensor::Shape{3}));

  auto index = ReadFileToString(*PosixFileSystem(), dir.sub("step-000000003/" +
                                                            std::string(ckpt::kIndexName)));
  ASSERT_TRUE(index.ok()) << index.status();
  json j = json::parse(*index);
  EXPECT_EQ(j["weight_map"]["emb"], "shard-r00000.safetensors");
  EXPECT_EQ(j["weight_map"]["w"], "shard-r00000.safetensors");
  EXPECT_EQ(j["metadata"]["total_size"], 10 * 4 * 2 + 6 * 4 + 3 * 8 * 4);
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 3).ok());
}

// Overwrites `from` with `to` (same length, so the file stays a valid safetensors file).
void Patch(const std::string& path, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::string bytes = ReadFileToString(*PosixFileSystem(), path).value();
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << path;
  bytes.replace(at, from.size(), to);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(CheckpointInteropTest, VerifyFindsShardingInfoThatDisagreesWithTheManifest) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 4);
  // torch would place rank 1's emb at row 4 instead of 5: Trident's readers refuse it.
  const std::string shard = dir.sub("step-000000004/shard-r00001.safetensors");
  Patch(shard, R"(\"emb\":{\"saved_offsets\":[5,0]})", R"(\"emb\":{\"saved_offsets\":[4,0]})");
  absl::Status s = VerifyCheckpoint(dir.path(), 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(shard + ": tensor emb: __metadata__ DCP_SHARDING_INFO says "
                                             "saved_offsets [4, 0], the manifest offset [5, 0]"));
  // Loading reads through the same check.
  std::vector<char> buf(10 * 4 * 2);
  TensorRequest req{"emb", Tensor(buf.data(), DType::kBF16, {10, 4}), {}, {}};
  auto loaded = LoadCheckpoint(dir.path(), 4, {&req, 1});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
}

TEST(CheckpointInteropTest, VerifyFindsABadIndex) {
  ScratchDir dir;
  SaveTwoRanks(dir.path(), 5);
  const std::string index = dir.sub("step-000000005/" + std::string(ckpt::kIndexName));
  Patch(index, R"("emb": "shard-r00000)", R"("emb": "shard-r00009)");
  absl::Status s = VerifyCheckpoint(dir.path(), 5);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.message(), HasSubstr(index + ": weight_map maps tensor emb to "
                                             "shard-r00009.safetensors, which holds no piece"));
  // Loading does not read the index.
  EXPECT_EQ(testing::LoadAndCompare(dir.path(), 5, 5, "emb", DType::kBF16, {10, 4},
                                    Box{{0, 0}, {10, 4}}),
            "");
}

}  // namespace
}  // namespace trident
