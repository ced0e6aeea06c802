// trident-ckpt, the real binary: ls, inspect and verify on a checkpoint saved here, and verify
// naming the bad file and tensor after a byte is flipped; export.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "ckpt_test_util.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using ckpt::Box;
using testing::MakeTensor;
using testing::OwnedTensor;
using testing::ScratchDir;

struct ToolRun {
  int exit_code;
  std::string output;  // stdout and stderr
};

// Runs trident-ckpt with `args`, with `env` (VAR=value ...) added to its environment.
ToolRun ToolWithEnv(const std::string& env, const std::string& args) {
  const char* dir = std::getenv("TRIDENT_BIN_DIR");
  std::string bin = dir != nullptr ? std::string(dir) + "/trident-ckpt" : "trident-ckpt";
  FILE* p = popen(("env " + env + " " + bin + " " + args + " 2>&1").c_str(), "r");
  ToolRun run{-1, ""};
  if (p == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) run.output.append(buf, n);
  int status = pclose(p);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

ToolRun Tool(const std::string& args) { return ToolWithEnv("", args); }

void Save(const std::string& dir, int64_t step) {
  testing::RunCkptRanks(2, [&](int r, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o = testing::TestOptions(dir, comm);
    o.layout = "tp2";
    auto e = CheckpointEngine::Create(o);
    ASSERT_TRUE(e.ok()) << e.status();
    std::vector<OwnedTensor> state = {
        MakeTensor(step, "emb", DType::kBF16, {100, 8}, Box{{50 * r, 0}, {50, 8}}),
        MakeTensor(step, "norm", DType::kF32, {8})};
    state[1].replica_index = r;
    state[1].replica_count = 2;
    auto s = (*e)->Save(step, testing::StateOf(state, "rng"));
    ASSERT_TRUE(s.ok() && (*s)->Wait().ok());
  });
}

TEST(CkptToolTest, ListInspectVerify) {
  ScratchDir dir;
  Save(dir.path(), 10);
  Save(dir.path(), 20);
  ASSERT_EQ(mkdir(dir.sub(ckpt::TmpDirName(30, "feed")).c_str(), 0755), 0);

  ToolRun ls = Tool("ls " + dir.path());
  EXPECT_EQ(ls.exit_code, 0) << ls.output;
  EXPECT_THAT(ls.output, ::testing::ContainsRegex("\n10 +  +0 +tp2 +2 +2 "));
  EXPECT_THAT(ls.output, ::testing::ContainsRegex("\n20 +\\* +0 +tp2"));
  EXPECT_THAT(ls.output, HasSubstr("half-written (ignored; the next save deletes it): "
                                   "step-000000030.tmp-feed"));

  ToolRun inspect = Tool("inspect " + dir.path() + " --step 10");
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_THAT(inspect.output, HasSubstr("step 10  epoch 0  layout tp2  world size 2"));
  EXPECT_THAT(inspect.output, HasSubstr("emb  bf16 [100, 8]  2 shards"));
  EXPECT_THAT(inspect.output, HasSubstr("norm  f32 [8]  2 shards"));
  EXPECT_THAT(inspect.output, HasSubstr("(1 of 2 replicas)"));

  ToolRun verify = Tool("verify " + dir.path() + " --all");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr("ok   step 10: 2 files, 2 tensors, 4 shards"));
  EXPECT_THAT(verify.output, HasSubstr("ok   step 20"));

  // Flip a byte of rank 1's piece of "emb" in step 20.
  auto m = ReadManifest(dir.path(), 20);
  ASSERT_TRUE(m.ok());
  const ShardInfo* bad = nullptr;
  for (const ShardInfo& s : m->tensors.at("emb").shards) {
    if (s.rank == 1) bad = &s;
  }
  ASSERT_NE(bad, nullptr);
  const std::string file = dir.sub("step-000000020/" + bad->file);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(bad->byte_offset + 17));
    f.put('\x7f');
  }
  verify = Tool("verify " + dir.path());
  EXPECT_EQ(verify.exit_code, 1) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr("checksum mismatch in " + file + ", tensor emb"));
  verify = Tool("verify " + dir.path() + " --step 10");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;

  ToolRun usage = Tool("frobnicate " + dir.path());
  EXPECT_EQ(usage.exit_code, 2);
  ToolRun help = Tool("--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("usage: trident-ckpt COMMAND DIR"));
  ToolRun missing = Tool("inspect " + dir.path() + " --step 11");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("no checkpoint of step 11"));
}

// Defect 4 of issue 17: `latest` naming a step without a manifest; verify checked the newest
// committed step instead, printed "ok" and exited 0.
TEST(CkptToolTest, VerifySaysWhenLatestIsBroken) {
  ScratchDir dir;
  Save(dir.path(), 10);
  Save(dir.path(), 20);
  ASSERT_EQ(rename(dir.sub("step-000000020").c_str(), dir.sub("step-000000020.gone").c_str()), 0);
  ToolRun verify = Tool("verify " + dir.path());
  EXPECT_EQ(verify.exit_code, 1) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr("BAD  latest: DATA_LOSS: " + dir.sub("latest") +
                                       " names step-000000020, which has no manifest.json"));
  EXPECT_THAT(verify.output, ::testing::Not(HasSubstr("ok   step")));
  verify = Tool("verify " + dir.path() + " --all");
  EXPECT_EQ(verify.exit_code, 1) << verify.output;
  EXPECT_THAT(verify.output, HasSubstr("ok   step 10"));
  EXPECT_THAT(verify.output, HasSubstr("BAD  latest"));
  verify = Tool("verify " + dir.path() + " --step 10");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
}

// export: whole tensors at their global shapes, in files of at most --max-file-size bytes,
// with the Hugging Face index; a corrupt checkpoint exits 1 and leaves no index.
TEST(CkptToolTest, ExportWritesWholeTensorsAndTheIndex) {
  ScratchDir dir;
  Save(dir.path(), 10);
  const std::string out = dir.sub("export");
  // emb (bf16 [100, 8]) is 1600 bytes, norm (f32 [8]) 32: a limit of 1K puts each in a file.
  ToolRun run = Tool("export " + dir.path() + " 10 " + out + " --max-file-size 1K");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("exported step 10: 2 tensors, 1.6 KiB in 2 files, to " + out));
  struct Want {
    std::string file, tensor;
    DType dtype;
    Tensor::Shape shape;
  };
  for (const Want& w : {Want{"model-00001-of-00002.safetensors", "emb", DType::kBF16, {100, 8}},
                        Want{"model-00002-of-00002.safetensors", "norm", DType::kF32, {8}}}) {
    const std::string path = out + "/" + w.file;
    auto bytes = ReadFileToString(*PosixFileSystem(), path);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto header = ckpt::ParseSafetensorsHeader(*bytes, path);
    ASSERT_TRUE(header.ok()) << header.status();
    ASSERT_EQ(header->entries.size(), 1u);
    const ckpt::SafetensorsEntry& e = header->entries[0];
    EXPECT_EQ(e.name, w.tensor);
    EXPECT_EQ(e.dtype, w.dtype);
    EXPECT_EQ(e.shape, w.shape);
    EXPECT_EQ(header->metadata.at("format"), "pt");
    EXPECT_EQ(header->data_start + e.end, bytes->size());  // no holes, nothing after
    const std::vector<char> want =
        testing::SliceBytes(10, w.tensor, w.dtype, w.shape, Box{Tensor::Shape(w.shape.size(), 0), w.shape});
    EXPECT_EQ(bytes->substr(header->data_start + e.begin, e.end - e.begin),
              std::string(want.begin(), want.end()))
        << w.tensor;
  }
  auto index = ReadFileToString(*PosixFileSystem(), out + "/model.safetensors.index.json");
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(*index, HasSubstr(R"("emb": "model-00001-of-00002.safetensors")"));
  EXPECT_THAT(*index, HasSubstr(R"("norm": "model-00002-of-00002.safetensors")"));
  EXPECT_THAT(*index, HasSubstr(R"("total_size": 1632)"));

  // Default size: one file.
  run = Tool("export " + dir.path() + " latest " + dir.sub("one"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("in 1 file, to"));
  EXPECT_TRUE(PosixFileSystem()->FileExists(dir.sub("one/model-00001-of-00001.safetensors")));

  run = Tool("export " + dir.path() + " 10 " + out);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("FAILED_PRECONDITION: export: " + out + " is not empty"));
  run = Tool("export " + dir.path() + " ten " + dir.sub("x"));
  EXPECT_EQ(run.exit_code, 2) << run.output;
  run = Tool("export " + dir.path() + " 10 " + dir.sub("x") + " --max-file-size 0");
  EXPECT_EQ(run.exit_code, 2) << run.output;
  run = Tool("ls " + dir.path() + " --max-file-size 1G");
  EXPECT_EQ(run.exit_code, 2) << run.output;

  // A flipped byte: the export names it, exits 1, and writes no index.
  auto m = ReadManifest(dir.path(), 10);
  ASSERT_TRUE(m.ok());
  const ShardInfo& piece = m->tensors.at("emb").shards[0];
  const std::string file = dir.sub("step-000000010/" + piece.file);
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(piece.byte_offset + 3));
    f.put('\x7f');
  }
  run = Tool("export " + dir.path() + " 10 " + dir.sub("bad"));
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("checksum mismatch in " + file + ", tensor emb"));
  EXPECT_THAT(run.output, HasSubstr("nothing was committed: OUT has no index"));
  EXPECT_FALSE(PosixFileSystem()->FileExists(dir.sub("bad/model.safetensors.index.json")));
}

// Defect 5: a bad setting is a usage error (exit 2) naming the variable and what is allowed.
TEST(CkptToolTest, BadSettingExitsTwo) {
  ScratchDir dir;
  ToolRun run = ToolWithEnv("TRIDENT_LOG_LEVEL=bogus", "ls " + dir.path());
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("trident-ckpt: TRIDENT_LOG_LEVEL='bogus' is not valid: "
                                    "expected one of 'trace', 'debug', 'info', 'warn', "
                                    "'warning', 'error', 'critical', 'off'"));
}

}  // namespace
}  // namespace trident
