// health/burn_in.h: a clean burn-in passes within its budget; each injected fault fails the
// check it belongs to, naming what was expected and what came.
#include "health/burn_in.h"

#include <stdlib.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trident::health {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(BurnInTest, QuickPassesAndSaysWhatItTested) {
  BurnInReport r = RunBurnIn({.level = BurnInLevel::kQuick, .memory_bytes = 1 << 20});
  EXPECT_TRUE(r.ok) << r.ToString();
  EXPECT_EQ(r.memory_bytes, 5 << 20) << "five patterns over 1 MiB";
  EXPECT_EQ(r.gemms, 1);
  EXPECT_THAT(r.ToString(), StartsWith("ok memory_mb=5 gemms=1 ms="));
}

TEST(BurnInTest, OffDoesNothing) {
  BurnInReport r = RunBurnIn({.level = BurnInLevel::kOff});
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.memory_bytes, 0);
  EXPECT_EQ(r.gemms, 0);
}

TEST(BurnInTest, FullRepeatsUntilItsBudget) {
  BurnInReport r = RunBurnIn(
      {.level = BurnInLevel::kFull, .budget = absl::Milliseconds(50), .memory_bytes = 1 << 16});
  EXPECT_TRUE(r.ok) << r.ToString();
  EXPECT_GT(r.gemms, 1);
}

TEST(BurnInTest, AFlippedMemoryBitFailsTheMemoryCheck) {
  BurnInReport r = RunBurnIn({.memory_bytes = 1 << 20, .inject = "memory"});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.failed, "memory");
  EXPECT_THAT(r.detail, HasSubstr("pattern 2: word 65536 (byte offset 524288) is "
                                  "0x5555555555557555, wrote 0x5555555555555555"));
  EXPECT_THAT(r.ToString(), StartsWith("failed check=memory"));
}

TEST(BurnInTest, AWrongProductFailsTheComputeCheck) {
  BurnInReport r = RunBurnIn({.memory_bytes = 1 << 16, .inject = "compute"});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.failed, "compute");
  EXPECT_THAT(r.detail, HasSubstr("GEMM 64x64 round 0: C[1][1] is"));
  EXPECT_THAT(r.detail, HasSubstr("the exact value is"));
}

TEST(BurnInTest, LevelsParseAndTheTestHookNamesAMember) {
  EXPECT_EQ(*ParseBurnInLevel("full"), BurnInLevel::kFull);
  EXPECT_THAT(ParseBurnInLevel("fast").status().message(),
              HasSubstr("'fast' is not off, quick or full"));
  setenv("TRIDENT_TEST_BURN_IN_FAIL", "w1:compute", 1);
  EXPECT_EQ(BurnInOptionsFromEnv("w1").inject, "compute");
  EXPECT_EQ(BurnInOptionsFromEnv("w0").inject, "");
  unsetenv("TRIDENT_TEST_BURN_IN_FAIL");
  EXPECT_EQ(BurnInOptionsFromEnv("w1").inject, "");
}

// The device memory check: on a GPU the five patterns over device memory; skipped with the
// reason where the build has no CUDA or no device is visible.
TEST(BurnInTest, DeviceMemoryIsTestedOnAGpuAndSkippedWithTheReasonWithout) {
  BurnInReport r = RunBurnIn({.level = BurnInLevel::kQuick, .memory_bytes = 1 << 20});
  ASSERT_TRUE(r.ok) << r.ToString();
  if (r.device.empty()) GTEST_SKIP() << "a build without CUDA: no device check";
  if (r.device == "skipped: no CUDA device") {
    EXPECT_EQ(r.device_bytes, 0);
    GTEST_SKIP() << "no CUDA device";
  }
  EXPECT_EQ(r.device_bytes, 5 << 20) << "five patterns over 1 MiB of device memory";
  EXPECT_THAT(r.ToString(), HasSubstr(" device_memory_mb=5"));
  BurnInReport bad = RunBurnIn(
      {.level = BurnInLevel::kQuick, .memory_bytes = 1 << 20, .inject = "device_memory"});
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.failed, "device_memory");
  EXPECT_THAT(bad.ToString(), HasSubstr("failed check=device_memory"));
  EXPECT_THAT(bad.detail, HasSubstr("pattern 2: word 65536 of 1048576 bytes is"));
}

// The device compute check: the GEMM and the reduction on the device through cuBLAS, exact;
// one wrong product is named. Skipped like the memory check, and where cuBLAS cannot be
// loaded the report says so instead of failing.
TEST(BurnInTest, DeviceGemmIsExactOnAGpuAndAWrongProductIsNamed) {
  BurnInReport r = RunBurnIn({.level = BurnInLevel::kQuick, .memory_bytes = 1 << 20});
  ASSERT_TRUE(r.ok) << r.ToString();
  if (r.device.empty()) GTEST_SKIP() << "a build without CUDA: no device check";
  if (r.device == "skipped: no CUDA device") {
    EXPECT_EQ(r.device_gemms, 0);
    GTEST_SKIP() << "no CUDA device";
  }
  if (r.device.find("GEMM skipped: cuBLAS") != std::string::npos) {
    EXPECT_EQ(r.device_gemms, 0);
    GTEST_SKIP() << r.device;
  }
  EXPECT_EQ(r.device_gemms, 1);
  EXPECT_THAT(r.ToString(), HasSubstr(" device_gemms=1"));
  BurnInReport bad = RunBurnIn(
      {.level = BurnInLevel::kQuick, .memory_bytes = 1 << 20, .inject = "device_compute"});
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.failed, "device_compute");
  EXPECT_THAT(bad.detail, HasSubstr("GEMM 64x64 on the device: C[1][1] is"));
}

}  // namespace
}  // namespace trident::health
