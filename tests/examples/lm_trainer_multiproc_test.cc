// lm-trainer as a user runs it: 8 processes under trident-run over libfabric (shm and tcp),
// compared step by step with the single-process binary; and bad usage under trident-run.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <regex>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "run_util.h"

namespace {

using ::testing::HasSubstr;
using lm::testing::Bin;
using lm::testing::Losses;
using lm::testing::Output;
using lm::testing::RunShell;

// A small model, 10 steps: a couple of seconds for 8 processes on 2 cores.
const std::string kModel =
    "--steps 10 --context 8 --embed 8 --ffn 64 --batch 32 --microbatches 4 --val-samples 64 "
    "--eval-every 5 --seed 3 --timeout 60s";
// Same bound as lm_trainer_test.cc's equivalence test (see the reasoning there).
constexpr double kRelTolerance = 1e-4;

void ExpectMatchesOneProcess(const std::string& provider, const std::string& flags) {
  const Output single = RunShell(absl::StrCat(Bin("lm-trainer"), " ", kModel));
  ASSERT_EQ(single.exit_code, 0) << single.text;
  const Output multi =
      RunShell(absl::StrCat("TRIDENT_FABRIC_PROVIDER=", provider, " ", Bin("trident-run"),
                       " --nproc 8 -- ", Bin("lm-trainer"), " --tp 2 --pp 2 --dp 2 ", flags, " ",
                       kModel));
  ASSERT_EQ(multi.exit_code, 0) << multi.text;
  EXPECT_THAT(multi.text, HasSubstr("done steps=10"));
  const auto want = Losses(single.text);
  const auto got = Losses(multi.text);
  ASSERT_EQ(want.size(), 10u) << single.text;
  ASSERT_EQ(got.size(), 10u) << multi.text;
  for (const auto& [step, loss] : want) {
    EXPECT_NEAR(got.at(step), loss, kRelTolerance * loss) << "step " << step;
  }
}

TEST(LmTrainerMultiprocTest, EightProcessesOnShmMatchOneProcess) {
  ExpectMatchesOneProcess("shm", "--schedule interleaved --zero1");
}

TEST(LmTrainerMultiprocTest, EightProcessesOnTcpMatchOneProcess) {
  ExpectMatchesOneProcess("tcp", "--schedule zb-h1");
}

TEST(LmTrainerMultiprocTest, LayoutThatDoesNotFitTheWorldIsAUsageError) {
  const Output out = RunShell(absl::StrCat(Bin("trident-run"), " --nproc 2 -- ", Bin("lm-trainer"),
                                      " --tp 2 --pp 2 ", kModel));
  EXPECT_NE(out.exit_code, 0);
  EXPECT_THAT(out.text, HasSubstr("tp x pp x dp = 2 x 2 x 1 = 4, but the world has 2 ranks"));
}

}  // namespace
