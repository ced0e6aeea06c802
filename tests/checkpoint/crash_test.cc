// A real process killed with SIGKILL at each stage of a save (ckpt_crash_child, through
// TRIDENT_CKPT_CRASH_AT): afterwards the previous committed checkpoint loads bit-identical,
// the half-written one is ignored, and the next save cleans it up.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <thread>

#include "ckpt_crash_state.h"
#include "comm/host/inproc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"

extern char** environ;

namespace trident {
namespace {

using testing::CrashState;
using testing::LoadAndCompare;
using testing::OwnedTensor;
using testing::ScratchDir;

std::string ChildPath() {
  const char* dir = std::getenv("TRIDENT_BIN_DIR");
  if (dir != nullptr) return std::string(dir) + "/ckpt_crash_child";
  char self[4096] = {};
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string path(self, n > 0 ? static_cast<size_t>(n) : 0);
  return path.substr(0, path.rfind('/')) + "/ckpt_crash_child";
}

// Runs the child; returns its wait status.
int RunChild(const std::string& dir, const std::string& stage) {
  const std::string path = ChildPath();
  std::vector<char*> argv = {const_cast<char*>(path.c_str()), const_cast<char*>(dir.c_str()),
                             const_cast<char*>(stage.c_str()), nullptr};
  pid_t pid;
  int rc = posix_spawn(&pid, path.c_str(), nullptr, nullptr, argv.data(), environ);
  EXPECT_EQ(rc, 0) << "posix_spawn(" << path << "): " << strerror(rc);
  if (rc != 0) return -1;
  int status = 0;
  EXPECT_EQ(waitpid(pid, &status, 0), pid);
  return status;
}

void ExpectStepLoads(const std::string& dir, int64_t step) {
  for (int rank = 0; rank < 2; ++rank) {
    for (const OwnedTensor& t : CrashState(step, rank)) {
      EXPECT_EQ(LoadAndCompare(dir, kLatestStep, step, t.name, t.dtype, t.global, t.box), "")
          << t.name << " of rank " << rank;
    }
  }
}

void SaveStep3(const std::string& dir) {
  testing::RunCkptRanks(2, [&](int r, std::shared_ptr<Communicator> comm) {
    CheckpointOptions o;
    o.dir = dir;
    o.comm = comm;
    o.memory_budget_bytes = 64 << 20;
    auto engine = CheckpointEngine::Create(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<OwnedTensor> state = CrashState(3, r);
    auto save = (*engine)->Save(3, testing::StateOf(state));
    ASSERT_TRUE(save.ok()) << save.status();
    EXPECT_TRUE((*save)->Wait().ok()) << (*save)->status();
  });
}

class CrashTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CrashTest, PreviousCheckpointSurvivesSigkill) {
  const std::string stage = GetParam();
  ScratchDir dir;
  const int status = RunChild(dir.path(), stage);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child was not killed at " << stage << " (wait status " << status << ")";

  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 1);
  ExpectStepLoads(dir.path(), 1);
  EXPECT_TRUE(VerifyCheckpoint(dir.path(), 1).ok());
  auto names = PosixFileSystem()->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  int stale = 0;
  for (const std::string& n : *names) stale += ckpt::IsStaleDirName(n);
  auto list = ListCheckpoints(dir.path());
  ASSERT_TRUE(list.ok());
  if (stage == "before_latest") {
    // Renamed, complete, but `latest` still names step 1: step 1 is what loads.
    EXPECT_EQ(stale, 0);
    ASSERT_EQ(list->size(), 2u);
    EXPECT_FALSE((*list)[1].latest);
    EXPECT_TRUE(VerifyCheckpoint(dir.path(), 2).ok());
  } else {
    EXPECT_EQ(stale, 1) << "the half-written directory of step 2";
    ASSERT_EQ(list->size(), 1u);
  }

  SaveStep3(dir.path());
  EXPECT_EQ(LatestCheckpointStep(dir.path()).value(), 3);
  ExpectStepLoads(dir.path(), 3);
  names = PosixFileSystem()->ListDir(dir.path());
  for (const std::string& n : *names) EXPECT_FALSE(ckpt::IsStaleDirName(n)) << n;
}

INSTANTIATE_TEST_SUITE_P(Stages, CrashTest,
                         ::testing::Values("during_shard_write", "after_shards", "before_rename",
                                           "before_latest"));

}  // namespace
}  // namespace trident
