// The checkpoint engine across real processes started by trident-run (libfabric shm): saves,
// peer replicas between two "hosts", a resharded load, and a rank killed in the middle of a
// save, after which the others' saves fail naming it and the previous checkpoint is intact.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ckpt_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "../util/shell.h"

namespace trident {
namespace {

using ::testing::HasSubstr;
using trident::testing::Bin;
using trident::testing::RunCommand;
using trident::testing::RunResult;

std::vector<std::string> Results(const std::string& output, const std::string& what) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    if (absl::StrContains(line, "RESULT rank=") && absl::StrContains(line, what)) {
      out.emplace_back(line);
    }
  }
  return out;
}

std::string Launch(const std::string& args, const std::string& env = "") {
  return absl::StrCat("TRIDENT_FABRIC_PROVIDER=shm ", env, " ", Bin("trident-run"),
                      " --nproc 4 -- ", Bin("ckpt_worker"), " ", args);
}

TEST(CkptMultiprocTest, FourProcessesSaveReplicateAndLoad) {
  testing::ScratchDir dir;
  RunResult run = RunCommand(Launch(dir.path() + " save"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* what : {"save step=1", "save step=2", "replica step=1", "replica step=2",
                           "load"}) {
    std::vector<std::string> lines = Results(run.output, what);
    ASSERT_EQ(lines.size(), 4u) << what << "\n" << run.output;
    for (const std::string& line : lines) EXPECT_THAT(line, HasSubstr("code=OK")) << line;
  }
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 2).ok());
  auto m = ReadManifest(dir.path(), 2);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->world_size, 4);
  EXPECT_EQ(m->files.size(), 4u);  // every rank wrote half of its dp-replicated piece
}

TEST(CkptMultiprocTest, RankKilledWhileWritingFailsTheSaveNamingIt) {
  testing::ScratchDir dir;
  RunResult run = RunCommand(Launch(dir.path() + " die 3", "TRIDENT_KILL_GRACE_MS=20000"));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_THAT(run.output, HasSubstr("rank 3 killed by signal 9"));
  std::vector<std::string> failed = Results(run.output, "save step=2");
  ASSERT_EQ(failed.size(), 3u) << run.output;
  for (const std::string& line : failed) {
    EXPECT_THAT(line, HasSubstr("code=ABORTED")) << line;
    EXPECT_THAT(line, HasSubstr("rank 3")) << line;
  }
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 1);
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 1).ok());
  EXPECT_EQ(testing::LoadAndCompare(dir.path(), kLatestStep, 1, "w", DType::kF32, {64, 65536},
                                    ckpt::Box{{0, 0}, {64, 65536}}),
            "");
}

}  // namespace
}  // namespace trident
