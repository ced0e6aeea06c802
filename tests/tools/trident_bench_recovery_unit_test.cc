// Unit tests of `trident-bench recovery`'s pure parts: lm-trainer's logfmt lines as they come
// out of trident-run, nearest-rank percentiles, the table, and the sendrecv row.
#include <csignal>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/trident-bench/recovery_stats.h"

namespace trident::bench {
namespace {

using ::testing::HasSubstr;
using ::testing::Optional;

// Lines as trident-run relays them (from a real run of lm-trainer).
constexpr char kRunLog[] =
    R"([rank 0] step=14 loss=3.112 tokens_per_s=11000 step_ms=90.1 comm_share=0.8
[rank 5] [2026-11-26 19:01:02.003] [rank 5] [warning] injecting signal 19 into w5 (step 15)
[rank 5] fault_injected member=w5 signal=19 unix_ms=1795720529853
trident-run: rank 5 declared dead: no heartbeat for 1.032s; its process is stopped (SIGSTOP?); killed
[rank 0] [info] recovery into epoch 2: waited 3ms for the epoch, built the world in 40ms
[rank 0] recovery epoch=2 dead_rank=5 cause=SIGSTOP detect_ms=1040 recover_ms=169 steps_redone=4 source=peer world=8 dp=2 resume_step=11 verdict_unix_ms=1795720530876 peer_bytes=3381384 peer_ms=2.95
[rank 0] step=11 loss=3.2 tokens_per_s=9000 step_ms=95.0 comm_share=0.8
[rank 0] first_step_after_recovery step=11 since_verdict_ms=232
[rank 0] step=12 loss=3.1 tokens_per_s=9000 step_ms=95.0 comm_share=0.8
trident-run: job finished after 1 recovery(ies): epoch 2: spare s0 takes rank 5
)";

TEST(ParseEventTest, FindsTheEventAfterAPrefixAndReadsPairs) {
  auto m = ParseEvent("[rank 3] fault_injected member=w3 signal=9 unix_ms=12", "fault_injected");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->at("member"), "w3");
  EXPECT_EQ(m->at("signal"), "9");
  EXPECT_EQ(m->at("unix_ms"), "12");
}

TEST(ParseEventTest, QuotedValuesAndBareWords) {
  auto m = ParseEvent(R"(checkpoint_failed step=10 error="INTERNAL: disk full" extra)",
                      "checkpoint_failed");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->at("step"), "10");
  EXPECT_EQ(m->at("error"), "INTERNAL: disk full");
  EXPECT_EQ(m->count("extra"), 0u);
}

TEST(ParseEventTest, RejectsOtherUsesOfTheWord) {
  // The trainer's log line about the same recovery, and trident-run's summary.
  EXPECT_FALSE(ParseEvent("[rank 0] recovery into epoch 2: waited 3ms", "recovery"));
  EXPECT_FALSE(ParseEvent("job finished after 1 recovery(ies): epoch 2", "recovery"));
  // A longer word that ends with the event's name, and the event with nothing after it.
  EXPECT_FALSE(ParseEvent("norecovery epoch=2", "recovery"));
  EXPECT_FALSE(ParseEvent("[rank 0] recovery", "recovery"));
  EXPECT_FALSE(ParseEvent("", "recovery"));
}

TEST(ParseLinesTest, FaultLine) {
  auto f = ParseFaultLine("[rank 5] fault_injected member=w5 signal=19 unix_ms=1795720529853");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->member, "w5");
  EXPECT_EQ(f->signal, SIGSTOP);
  EXPECT_EQ(f->unix_ms, 1795720529853);
  EXPECT_FALSE(ParseFaultLine("fault_injected member=w5 signal=x unix_ms=1"));
  EXPECT_FALSE(ParseFaultLine("fault_injected member=w5 signal=9"));
}

TEST(ParseLinesTest, RecoveryLine) {
  auto r = ParseRecoveryLine(
      "[rank 0] recovery epoch=3 dead_rank=2 cause=SIGKILL detect_ms=0 recover_ms=146 "
      "steps_redone=9 source=checkpoint world=8 dp=2 resume_step=151 "
      "verdict_unix_ms=1795720530876 peer_bytes=0 peer_ms=0.00");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->epoch, 3);
  EXPECT_EQ(r->dead_rank, 2);
  EXPECT_EQ(r->cause, "SIGKILL");
  EXPECT_EQ(r->detect_ms, 0);
  EXPECT_EQ(r->recover_ms, 146);
  EXPECT_EQ(r->source, "checkpoint");
  EXPECT_EQ(r->verdict_unix_ms, 1795720530876);
  EXPECT_EQ(r->peer_bytes, 0);
  EXPECT_EQ(r->peer_ms, 0.0);
  // Without verdict_unix_ms (an older trainer) nothing can be measured.
  EXPECT_FALSE(ParseRecoveryLine("recovery epoch=2 dead_rank=3 recover_ms=146"));
}

TEST(ParseLinesTest, FirstStepLine) {
  auto f = ParseFirstStepLine("[rank 0] first_step_after_recovery step=11 since_verdict_ms=232");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->step, 11);
  EXPECT_EQ(f->since_verdict_ms, 232);
  EXPECT_FALSE(ParseFirstStepLine("first_step_after_recovery step=11"));
}

TEST(ParseRunLogTest, AWholeRun) {
  RunLog log = ParseRunLog(kRunLog);
  ASSERT_TRUE(log.fault.has_value());
  ASSERT_TRUE(log.recovery.has_value());
  ASSERT_TRUE(log.first_step.has_value());
  EXPECT_EQ(log.recovery_lines, 1);
  EXPECT_EQ(log.recovery->verdict_unix_ms - log.fault->unix_ms, 1023);
  EXPECT_EQ(log.recovery->source, "peer");
  EXPECT_EQ(log.recovery->peer_bytes, 3381384);
  EXPECT_DOUBLE_EQ(log.recovery->peer_ms, 2.95);
  EXPECT_EQ(log.first_step->since_verdict_ms, 232);
  EXPECT_THAT(TransferGbps(log.recovery->peer_bytes, log.recovery->peer_ms),
              Optional(::testing::DoubleNear(3381384 / 2.95e6, 1e-12)));
}

TEST(ParseRunLogTest, KeepsTheFirstOfEachAndCountsRecoveries) {
  const std::string text =
      "recovery epoch=2 dead_rank=1 recover_ms=10 verdict_unix_ms=100\n"
      "first_step_after_recovery step=5 since_verdict_ms=20\n"
      "recovery epoch=3 dead_rank=4 recover_ms=30 verdict_unix_ms=200\n"
      "first_step_after_recovery step=7 since_verdict_ms=40\n";
  RunLog log = ParseRunLog(text);
  EXPECT_FALSE(log.fault.has_value());
  EXPECT_EQ(log.recovery_lines, 2);
  EXPECT_EQ(log.recovery->epoch, 2);
  EXPECT_EQ(log.first_step->step, 5);
}

TEST(ParseRunLogTest, AFailedRunHasNoRecovery) {
  RunLog log = ParseRunLog(
      "[rank 3] fault_injected member=w3 signal=9 unix_ms=5\n"
      "trident-run: job failed: rank 3 killed by signal 9 (SIGKILL) and no spare could replace "
      "it\n");
  EXPECT_TRUE(log.fault.has_value());
  EXPECT_FALSE(log.recovery.has_value());
  EXPECT_FALSE(log.first_step.has_value());
  EXPECT_EQ(log.recovery_lines, 0);
}

TEST(PercentileTest, NearestRank) {
  EXPECT_EQ(Percentile({}, 50), std::nullopt);
  EXPECT_THAT(Percentile({7}, 50), Optional(7.0));
  EXPECT_THAT(Percentile({7}, 99), Optional(7.0));
  // Unsorted input; n = 10: p50 is the 5th value, p99 the 10th (the maximum).
  const std::vector<double> ten = {10, 1, 9, 2, 8, 3, 7, 4, 6, 5};
  EXPECT_THAT(Percentile(ten, 50), Optional(5.0));
  EXPECT_THAT(Percentile(ten, 99), Optional(10.0));
  EXPECT_THAT(Percentile(ten, 10), Optional(1.0));
  EXPECT_THAT(Percentile(ten, 11), Optional(2.0));
  EXPECT_THAT(Percentile(ten, 100), Optional(10.0));
  // n = 2: p50 is the lower value (no interpolation).
  EXPECT_THAT(Percentile({4, 2}, 50), Optional(2.0));
  // n = 100 (1..100): p99 is exactly the 99th value, p50 the 50th.
  std::vector<double> hundred;
  for (int i = 100; i >= 1; --i) hundred.push_back(i);
  EXPECT_THAT(Percentile(hundred, 99), Optional(99.0));
  EXPECT_THAT(Percentile(hundred, 50), Optional(50.0));
  // n = 200: p99 is the 198th.
  std::vector<double> two_hundred;
  for (int i = 1; i <= 200; ++i) two_hundred.push_back(i);
  EXPECT_THAT(Percentile(two_hundred, 99), Optional(198.0));
}

TEST(SummarizeTest, CountsAndPercentiles) {
  Summary s = Summarize({3, 1, 2});
  EXPECT_EQ(s.n, 3);
  EXPECT_THAT(s.p50, Optional(2.0));
  EXPECT_THAT(s.p99, Optional(3.0));
  Summary empty = Summarize({});
  EXPECT_EQ(empty.n, 0);
  EXPECT_FALSE(empty.p50.has_value());
}

TEST(FormatMeasureTableTest, RowsGoalsAndEmptyMeasures) {
  const std::string table = FormatMeasureTable({
      {"SIGKILL -> verdict", {4, 6, 5}, 100.0, "< 100 ms"},
      {"SIGSTOP -> verdict", {1001, 1200}, 1100.0, "< 1100 ms"},
      {"verdict -> restored state", {165.5}, std::nullopt, "-"},
      {"verdict -> first completed step", {}, 2000.0, "< 2000 ms"},
  });
  EXPECT_THAT(table, HasSubstr("| measure | n | p50 ms | p99 ms | goal | p99 meets goal |\n"
                               "|---|---:|---:|---:|---|---|\n"));
  EXPECT_THAT(table, HasSubstr("| SIGKILL -> verdict | 3 | 5 | 6 | < 100 ms | yes |\n"));
  EXPECT_THAT(table, HasSubstr("| SIGSTOP -> verdict | 2 | 1001 | 1200 | < 1100 ms | no |\n"));
  EXPECT_THAT(table, HasSubstr("| verdict -> restored state | 1 | 165.5 | 165.5 | - | - |\n"));
  EXPECT_THAT(table,
              HasSubstr("| verdict -> first completed step | 0 | - | - | < 2000 ms | - |\n"));
}

TEST(ParseLastBenchRowTest, RankZerosRow) {
  // trident-bench sendrecv under trident-run --nproc 2 (rank 1 prints nothing to stdout, but
  // a stray line of its must not be taken).
  const char* out =
      "[rank 0] # trident-bench sendrecv: world 2, provider default, buffers on cpu, host\n"
      "[rank 0] # dtype f32, redop -, root -, -, iters adaptive (~0.3 s per size, 3..1000), "
      "warmup 2, check off\n"
      "[rank 0] #        bytes        count  type  redop  root  iters     time(us)  "
      "algbw(GB/s)  busbw(GB/s)   #wrong\n"
      "[rank 0]        3381384       845346   f32      -     -   1000       148.04      22.8412"
      "      22.8412      N/A\n"
      "[rank 1]        3381384       845346   f32      -     -   1000       148.04      99.0000"
      "      99.0000      N/A\n";
  auto row = ParseLastBenchRow(out);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->bytes, 3381384);
  EXPECT_DOUBLE_EQ(row->algbw_gbps, 22.8412);
  // Without trident-run's prefix (one process printing directly).
  auto plain = ParseLastBenchRow(
      "# header\n          4096         1024   f32    sum     -     10        7.70       0.5290"
      "       0.5290      N/A\n");
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(plain->bytes, 4096);
  EXPECT_FALSE(ParseLastBenchRow("[rank 0] # only a header\ntrident-run: rank 1 failed\n"));
}

TEST(TransferGbpsTest, NeedsBytesAndTime) {
  EXPECT_THAT(TransferGbps(2'000'000, 1.0), Optional(2.0));
  EXPECT_FALSE(TransferGbps(0, 1.0));
  EXPECT_FALSE(TransferGbps(100, 0.0));
}

}  // namespace
}  // namespace trident::bench
