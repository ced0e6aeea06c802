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
using trident::testing::Bin;
using lm::testing::Losses;
using trident::testing::RunResult;
using trident::testing::RunCommand;

// A small model, 10 steps: a couple of seconds for 8 processes on 2 cores.
const std::string kModel =
    "--steps 10 --context 8 --embed 8 --ffn 64 --batch 32 --microbatches 4 --val-samples 64 "
    "--eval-every 5 --seed 3 --timeout 60s";
// Same bound as lm_trainer_test.cc's equivalence test (see the reasoning there).
constexpr double kRelTolerance = 1e-4;

void ExpectMatchesOneProcess(const std::string& provider, const std::string& flags) {
  const RunResult single = RunCommand(absl::StrCat(Bin("lm-trainer"), " ", kModel));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const RunResult multi =
      RunCommand(absl::StrCat("TRIDENT_FABRIC_PROVIDER=", provider, " ", Bin("trident-run"),
                       " --nproc 8 -- ", Bin("lm-trainer"), " --tp 2 --pp 2 --dp 2 ", flags, " ",
                       kModel));
  ASSERT_EQ(multi.exit_code, 0) << multi.output;
  EXPECT_THAT(multi.output, HasSubstr("done steps=10"));
  const auto want = Losses(single.output);
  const auto got = Losses(multi.output);
  ASSERT_EQ(want.size(), 10u) << single.output;
  ASSERT_EQ(got.size(), 10u) << multi.output;
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
    return RunCommand(absl::StrCat(Bin("trident-run"), " --nproc 8 -- ", Bin("lm-trainer"),
                                 " --tp 2 --pp 2 --dp 2 ", model, " ", flags));
  };
  const RunResult straight = run8("--steps 30");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const RunResult first = run8(absl::StrCat("--steps 20 --ckpt-every 10 --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_THAT(first.output, HasSubstr("checkpoint_committed step=20"));
  const RunResult again =
      run8(absl::StrCat("--steps 30 --ckpt-every 10 --resume --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("resumed step=20"));
  const auto want = Losses(straight.output);
  const auto got = Losses(again.output);
  ASSERT_EQ(got.size(), 10u) << again.output;  // steps 21..30
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, want.at(step)) << "step " << step;

  // The same checkpoint, one process.
  const RunResult single = RunCommand(absl::StrCat(Bin("lm-trainer"), " ", model,
                                              " --steps 30 --resume --ckpt-dir ", dir, "/a"));
  ASSERT_EQ(single.exit_code, 0) << single.output;
  for (const auto& [step, loss] : Losses(single.output)) {
    EXPECT_NEAR(loss, want.at(step), kRelTolerance * loss) << "one process, step " << step;
  }

  // ZeRO-1 (moments sharded over dp 2), resumed at dp 1 on 4 ranks.
  const RunResult z = run8(absl::StrCat("--steps 20 --zero1 --ckpt-every 20 --ckpt-dir ", dir, "/z"));
  ASSERT_EQ(z.exit_code, 0) << z.output;
  const RunResult z4 = RunCommand(absl::StrCat(Bin("trident-run"), " --nproc 4 -- ", Bin("lm-trainer"),
                                          " --tp 2 --pp 2 --dp 1 --zero1 ", model,
                                          " --steps 30 --resume --ckpt-dir ", dir, "/z"));
  ASSERT_EQ(z4.exit_code, 0) << z4.output;
  for (const auto& [step, loss] : Losses(z4.output)) {
    EXPECT_NEAR(loss, want.at(step), kRelTolerance * loss) << "zero1 dp 1, step " << step;
  }
  RunCommand(absl::StrCat("rm -rf ", dir));
}

// --resume when the newest checkpoint is corrupt: the runtime goes back to the newest one
// that loads, says which it skipped and why, and the losses are those of an unbroken run.
TEST(LmTrainerMultiprocTest, ResumeSkipsACorruptNewestCheckpoint) {
  const std::string model =
      "--context 8 --embed 8 --ffn 64 --batch 32 --microbatches 4 --val-samples 64 "
      "--eval-every 5 --seed 3 --timeout 60s --ckpt-every 5 --keep 0";
  const std::string dir = absl::StrCat(::testing::TempDir(), "/lm_corrupt_", getpid());
  auto run4 = [&](const std::string& flags) {
    return RunCommand(absl::StrCat(Bin("trident-run"), " --nproc 4 -- ", Bin("lm-trainer"),
                                   " --tp 2 --dp 2 ", model, " --ckpt-dir ", dir, " ", flags));
  };
  const RunResult straight = RunCommand(absl::StrCat(Bin("trident-run"), " --nproc 4 -- ",
                                                     Bin("lm-trainer"), " --tp 2 --dp 2 ",
                                                     model, " --ckpt-dir ", dir, "-s --steps 20"));
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const RunResult first = run4("--steps 15");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  // Overwrite the last bytes of one shard of step 15: its checksum no longer matches.
  const RunResult corrupt = RunCommand(absl::StrCat(
      "f=$(ls ", dir, "/step-000000015/shard-*.safetensors | head -1); ",
      "printf 'XXXXXXXX' | dd of=$f bs=1 seek=$(( $(stat -c %s $f) - 8 )) conv=notrunc 2>&1"));
  ASSERT_EQ(corrupt.exit_code, 0) << corrupt.output;
  const RunResult again = run4("--steps 20 --resume");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("checkpoint_skipped step 15: rank "));
  EXPECT_THAT(again.output, HasSubstr("DATA_LOSS"));
  EXPECT_THAT(again.output, HasSubstr("resumed step=10"));
  const auto want = Losses(straight.output);
  const auto got = Losses(again.output);
  ASSERT_EQ(got.size(), 10u) << again.output;  // steps 11..20
  for (const auto& [step, loss] : got) EXPECT_EQ(loss, want.at(step)) << "step " << step;
  RunCommand(absl::StrCat("rm -rf ", dir, " ", dir, "-s"));
}

TEST(LmTrainerMultiprocTest, LayoutThatDoesNotFitTheWorldIsAUsageError) {
  const RunResult out = RunCommand(absl::StrCat(Bin("trident-run"), " --nproc 2 -- ", Bin("lm-trainer"),
                                      " --tp 2 --pp 2 ", kModel));
  EXPECT_NE(out.exit_code, 0);
  EXPECT_THAT(out.output, HasSubstr("tp x pp x dp = 2 x 2 x 1 = 4, but the world has 2 ranks"));
}

}  // namespace
