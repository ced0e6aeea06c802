// TRIDENT_* settings: a bad value is an error naming the variable, its value and what is
// allowed, returned by CheckParams and by the entry points that call it; never an abort; the
// job token is never printed. Also host memory for sizes that come from outside.
#include "common/params.h"

#include <stdlib.h>

#include <optional>
#include <string>

#include "../util/status_matchers.h"
#include "common/host_memory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/runtime.h"

namespace trident {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::StatusIs;

// Sets a variable for the scope of a test, restoring what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, /*overwrite=*/1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(ParamsTest, DefaultsAreValid) {
  for (const ParamDesc& p : AllParams()) ::unsetenv(std::string(p.name).c_str());
  EXPECT_TRUE(CheckParams().ok()) << CheckParams();
}

// Defect 5 of issue 17: these ended the program in a CHECK (abc, xyz), or were accepted and
// failed later (-5), or silently turned logging off (bogus).
TEST(ParamsTest, BadValuesNameTheVariableTheValueAndWhatIsAllowed) {
  struct Case {
    const char* name;
    const char* value;
    const char* allowed;
  };
  for (const Case& c : {
           Case{"TRIDENT_TIMEOUT_MS", "abc", "expected a whole number of milliseconds >= 1"},
           Case{"TRIDENT_KILL_GRACE_MS", "xyz", "expected a whole number of milliseconds >= 0"},
           Case{"TRIDENT_TIMEOUT_MS", "-5", "expected a whole number of milliseconds >= 1"},
           Case{"TRIDENT_TIMEOUT_MS", "30s", "expected a whole number of milliseconds >= 1"},
           Case{"TRIDENT_LOG_LEVEL", "bogus",
                "expected one of 'trace', 'debug', 'info', 'warn', 'warning', 'error', "
                "'critical', 'off'"},
           Case{"TRIDENT_CHUNK_BYTES", "1M", "expected an integer >= 1"},
           Case{"TRIDENT_ROLE", "boss", "expected one of 'worker', 'spare'"},
       }) {
    SCOPED_TRACE(c.name);
    ScopedEnv env(c.name, c.value);
    const std::string head = std::string(c.name) + "='" + c.value + "' is not valid: ";
    EXPECT_THAT(CheckParam(c.name),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(head + c.allowed)));
    EXPECT_THAT(CheckParams(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(head)));
    EXPECT_THAT(DescribeParams(), HasSubstr(std::string(c.name) + "=" + c.value + "  (env)  INVALID"));
  }
}

// Issue 12: TRIDENT_LOG_LEVEL=INFO was rejected (and a bad level turned logs off); any case
// of a listed choice is that choice.
TEST(ParamsTest, ChoicesMatchInAnyCase) {
  for (const char* value : {"INFO", "Info", "info"}) {
    ScopedEnv env("TRIDENT_LOG_LEVEL", value);
    EXPECT_TRUE(CheckParam("TRIDENT_LOG_LEVEL").ok()) << value;
    EXPECT_EQ(ParamString("TRIDENT_LOG_LEVEL"), "info");
  }
  ScopedEnv warning("TRIDENT_LOG_LEVEL", "WARNING");
  EXPECT_EQ(ParamString("TRIDENT_LOG_LEVEL"), "warning");
  ScopedEnv role("TRIDENT_ROLE", "Spare");
  EXPECT_EQ(ParamString("TRIDENT_ROLE"), "spare");
}

// Issue 12: without TRIDENT_*, the rank variables of torchrun, then of SLURM; TRIDENT_* wins.
TEST(ParamsTest, RankVariablesFallBackToTorchrunThenSlurm) {
  for (const char* var : {"TRIDENT_RANK", "TRIDENT_WORLD_SIZE", "TRIDENT_LOCAL_RANK", "RANK",
                          "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                          "SLURM_LOCALID"}) {
    ::unsetenv(var);
  }
  EXPECT_EQ(ParamInt("TRIDENT_WORLD_SIZE"), 1);
  {
    ScopedEnv procid("SLURM_PROCID", "5"), ntasks("SLURM_NTASKS", "8"), local("SLURM_LOCALID", "1");
    EXPECT_EQ(ParamInt("TRIDENT_RANK"), 5);
    EXPECT_EQ(ParamInt("TRIDENT_WORLD_SIZE"), 8);
    EXPECT_EQ(ParamInt("TRIDENT_LOCAL_RANK"), 1);
    EXPECT_THAT(DescribeParams(), HasSubstr("TRIDENT_RANK=5  (env SLURM_PROCID)"));
    ScopedEnv rank("RANK", "3"), world("WORLD_SIZE", "4"), local_rank("LOCAL_RANK", "0");
    EXPECT_EQ(ParamInt("TRIDENT_RANK"), 3);  // torchrun's before SLURM's
    EXPECT_EQ(ParamInt("TRIDENT_WORLD_SIZE"), 4);
    EXPECT_EQ(ParamInt("TRIDENT_LOCAL_RANK"), 0);
    ScopedEnv trident_rank("TRIDENT_RANK", "2");
    EXPECT_EQ(ParamInt("TRIDENT_RANK"), 2);  // Trident's own first
  }
  // A bad fallback value names the variable read and the parameter it stood for.
  ScopedEnv bad("WORLD_SIZE", "four");
  EXPECT_THAT(CheckParams(),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("WORLD_SIZE='four' (read for TRIDENT_WORLD_SIZE, which is unset) "
                                 "is not valid: expected an integer >= 1")));
}

// Under another launcher (torchrun's variables, no trident-run), the fault-tolerant runtime
// says what it needs instead of giving every rank a world of its own.
TEST(ParamsTest, RuntimeUnderAnotherLauncherSaysWhatItNeeds) {
  for (const char* var : {"TRIDENT_RANK", "TRIDENT_WORLD_SIZE", "TRIDENT_STORE", "SLURM_NTASKS"}) {
    ::unsetenv(var);
  }
  ScopedEnv rank("RANK", "1"), world("WORLD_SIZE", "4");
  EXPECT_THAT(Runtime::Init({}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("start the job with trident-run --nproc-per-node 4")));
  ScopedEnv one("WORLD_SIZE", "1");
  absl::StatusOr<std::unique_ptr<Runtime>> alone = Runtime::Init({});
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ((*alone)->world_size(), 1);
}

TEST(ParamsTest, ReadingABadValueGivesTheDefaultInsteadOfAborting) {
  ScopedEnv env("TRIDENT_TIMEOUT_MS", "abc");
  EXPECT_EQ(ParamMillis("TRIDENT_TIMEOUT_MS"), absl::Milliseconds(300000));
  ScopedEnv empty("TRIDENT_HEARTBEAT_MS", "");  // VAR= means the default
  EXPECT_TRUE(CheckParam("TRIDENT_HEARTBEAT_MS").ok());
  EXPECT_EQ(ParamMillis("TRIDENT_HEARTBEAT_MS"), absl::Milliseconds(100));
}

TEST(ParamsTest, EntryPointsReturnTheErrorFirst) {
  ScopedEnv env("TRIDENT_TIMEOUT_MS", "abc");
  HostCommOptions comm;
  comm.rank = 0;
  comm.world_size = 1;
  EXPECT_THAT(CreateHostCommunicator(comm),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("CreateHostCommunicator: TRIDENT_TIMEOUT_MS='abc' is not valid")));
  CheckpointOptions ckpt;
  ckpt.dir = "/nonexistent/never-created";
  EXPECT_THAT(CheckpointEngine::Create(ckpt),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("CheckpointEngine::Create: TRIDENT_TIMEOUT_MS='abc'")));
}

// Defect 6: --print-params printed the job token.
TEST(ParamsTest, TheJobTokenIsNeverPrinted) {
  ScopedEnv env("TRIDENT_JOB_TOKEN", "sekrit-token-123");
  const std::string described = DescribeParams();
  EXPECT_THAT(described, HasSubstr("TRIDENT_JOB_TOKEN=<hidden>  (env)"));
  EXPECT_THAT(described, Not(HasSubstr("sekrit")));
}

// Defect 2 of issue 17: a size from a file must not end the process in the allocator.
TEST(HostMemoryTest, AnImpossibleSizeIsResourceExhausted) {
  EXPECT_THAT(TryAllocateHostMemory(size_t{1} << 62),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("bytes")));
  EXPECT_THAT(TryAllocateHostMemory(~size_t{0}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("bytes")));
  auto small = TryAllocateHostMemory(4 << 20);
  ASSERT_TRUE(small.ok()) << small.status();
  (*small)[0] = 1;
}

}  // namespace
}  // namespace trident
