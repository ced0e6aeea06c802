// lm-trainer as a user runs it: 8 processes under trident-run over libfabric (shm and tcp),
// compared step by step with the single-process binary; and bad usage under trident-run.
#include <sys/wait.h>
#include <unistd.h>

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

// Checkpoints: a run stopped at step 20 and resumed gives, at every later step, exactly the
// losses of a run that never stopped (same layout), and within the equivalence bound at
// another layout (2x2x2 -> one process, and ZeRO-1 at dp 2 -> dp 1).
TEST(LmTrainerMultiprocTest, ResumeIsExactAtTheSameLayoutAndWithinTheBoundAtAnother) {
  const std::string model =
      "--context 8 --embed 8 --ffn 64 --batch 32 --microbatches 4 --val-samples 64 "
      "--eval-every 5 --seed 3 --timeout 60s";
  const std::string dir = absl::StrCat(::testing::TempDir(), "/lm_resume_", getpid());
  auto run8 = [&](const std::string& flags) {
    return RunShell(absl::StrCat(Bin("trident-run"), " --nproc 8 -- ", Bin("lm-trainer"),
                                 " --tp 2 --pp 2 --dp 2 ", model, " ", flags));
  };
  const Output straight = run8("--steps 30");
  ASSERT_EQ(straight.exit_code, 0) << straight.text;
  const Output first = run8(absl::StrCat("--steps 20 --ckpt-every 10 --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(first.exit_code, 0) << first.text;
  EXPECT_THAT(first.text, HasSubstr("checkpoint_committed step=20"));
  const Output again =
      run8(absl::StrCat("--steps 30 --ckpt-every 10 --resume --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(again.exit_code, 0) << again.text;
  EXPECT_THAT(again.text, HasSubstr("resumed step=20"));
  const auto want = Losses(straight.text);
  const auto got = Losses(again.text);
  ASSERT_EQ(got.size(), 10u) << again.text;  // steps 21..30
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, want.at(step)) << "step " << step;

  // The same checkpoint, one process.
  const Output single = RunShell(absl::StrCat(Bin("lm-trainer"), " ", model,
                                              " --steps 30 --resume --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(single.exit_code, 0) << single.text;
  for (const auto& [step, loss] : Losses(single.text)) {
    EXPECT_NEAR(loss, want.at(step), kRelTolerance * loss) << "one process, step " << step;
  }

  // ZeRO-1 (moments sharded over dp 2), resumed at dp 1 on 4 ranks.
  const Output z = run8(absl::StrCat("--steps 20 --zero1 --ckpt-every 20 --ckpt-dir ", dir, "/z"));
  ASSERT_EQ(z.exit_code, 0) << z.text;
  const Output z4 = RunShell(absl::StrCat(Bin("trident-run"), " --nproc 4 -- ", Bin("lm-trainer"),
                                          " --tp 2 --pp 2 --dp 1 --zero1 ", model,
                                          " --steps 30 --resume --ckpt-dir ", dir, "/z"));
  ASSERT_EQ(z4.exit_code, 0) << z4.text;
  for (const auto& [step, loss] : Losses(z4.text)) {
    EXPECT_NEAR(loss, want.at(step), kRelTolerance * loss) << "zero1 dp 1, step " << step;
  }
  RunShell(absl::StrCat("rm -rf ", dir));
}

TEST(LmTrainerMultiprocTest, LayoutThatDoesNotFitTheWorldIsAUsageError) {
  const Output out = RunShell(absl::StrCat(Bin("trident-run"), " --nproc 2 -- ", Bin("lm-trainer"),
                                      " --tp 2 --pp 2 ", kModel));
  EXPECT_NE(out.exit_code, 0);
  EXPECT_THAT(out.text, HasSubstr("tp x pp x dp = 2 x 2 x 1 = 4, but the world has 2 ranks"));
}

}  // namespace
