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
           Case{"TRIDENT_LOG_LEVEL", "bogus",
                "expected one of 'trace', 'debug', 'info', 'warn', 'error', 'off'"},
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
