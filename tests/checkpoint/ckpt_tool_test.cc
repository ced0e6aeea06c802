// trident-ckpt, the real binary: ls, inspect and verify on a checkpoint saved here, and verify
// naming the bad file and tensor after a byte is flipped.
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
    CheckpointOptions o;
    o.dir = dir;
    o.comm = comm;
    o.memory_budget_bytes = 16 << 20;
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

// Defect 5: a bad setting is a usage error (exit 2) naming the variable and what is allowed.
TEST(CkptToolTest, BadSettingExitsTwo) {
  ScratchDir dir;
  ToolRun run = ToolWithEnv("TRIDENT_LOG_LEVEL=bogus", "ls " + dir.path());
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("trident-ckpt: TRIDENT_LOG_LEVEL='bogus' is not valid: "
                                    "expected one of 'trace', 'debug', 'info', 'warn', 'error', "
                                    "'off'"));
}

}  // namespace
}  // namespace trident
