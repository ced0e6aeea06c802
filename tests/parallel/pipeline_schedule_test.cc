// Tests of the pipeline schedules (trident/parallel/pipeline.h): structural properties of every
// schedule over a range of (p, m, v), the bubble and peak-activation numbers of the unit-cost
// simulation against their closed forms, golden lists for small cases, the simulator's
// detection of broken lists, and the errors for bad specs. No communication.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <ostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "trident/parallel/pipeline.h"
#include "../util/status_matchers.h"

namespace trident::pipeline {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using testing::StatusIs;

using Lists = std::vector<std::vector<Instruction>>;

struct Case {
  Schedule schedule;
  int p;
  int m;
  int v = 1;
  ScheduleSpec spec() const { return {schedule, p, m, v}; }
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << ScheduleName(c.schedule) << " p=" << c.p << " m=" << c.m << " v=" << c.v;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = absl::StrCat(ScheduleName(c.schedule), "_p", c.p, "_m", c.m, "_v", c.v);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  // p=1, m=1, m<p, m=p, m>p (multiple of p and not), p=4 m=8.
  const std::vector<std::pair<int, int>> pm = {{1, 1}, {1, 4}, {2, 1}, {4, 1},  {4, 2}, {4, 4},
                                               {2, 5}, {3, 7}, {4, 8}, {4, 16}, {8, 8}, {8, 32}};
  for (Schedule s : {Schedule::kGPipe, Schedule::kOneFOneB, Schedule::kZeroBubbleH1}) {
    for (auto [p, m] : pm) cases.push_back({s, p, m});
  }
  // Interleaved needs v >= 2 and m a multiple of p (so m >= p).
  const std::vector<std::tuple<int, int, int>> pmv = {{1, 1, 2},  {1, 3, 3}, {2, 2, 2},  {2, 6, 3},
                                                      {4, 4, 2},  {4, 8, 2}, {4, 12, 3}, {3, 9, 4},
                                                      {4, 16, 4}, {8, 16, 2}};
  for (auto [p, m, v] : pmv) cases.push_back({Schedule::kInterleaved1F1B, p, m, v});
  return cases;
}

bool IsBackward(Kind k) { return k == Kind::kBackward || k == Kind::kBackwardInput; }

class ScheduleTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    absl::StatusOr<Lists> lists = Generate(GetParam().spec());
    ASSERT_TRUE(lists.ok()) << lists.status();
    lists_ = *std::move(lists);
    ASSERT_EQ(lists_.size(), static_cast<size_t>(GetParam().p));
  }
  int p() const { return GetParam().p; }
  int m() const { return GetParam().m; }
  int v() const { return GetParam().v; }
  bool zb() const { return GetParam().schedule == Schedule::kZeroBubbleH1; }
  int LastVirtual() const { return p() * v() - 1; }

  Lists lists_;
};

// Every (micro-batch, chunk) of every stage: one Forward, then one Backward (ZB-H1: one
// BackwardInput, then one BackwardWeight), in that order.
TEST_P(ScheduleTest, EveryPassExactlyOnceAndInOrder) {
  for (int s = 0; s < p(); ++s) {
    // (mb, chunk) -> positions of F, B, W in the list.
    std::map<std::pair<int, int>, std::vector<int>> f, b, w;
    for (int i = 0; i < static_cast<int>(lists_[s].size()); ++i) {
      const Instruction& in = lists_[s][i];
      const auto key = std::make_pair(in.microbatch, in.chunk);
      if (in.kind == Kind::kForward) f[key].push_back(i);
      if (IsBackward(in.kind)) {
        EXPECT_EQ(in.kind, zb() ? Kind::kBackwardInput : Kind::kBackward) << ToString(in);
        b[key].push_back(i);
      }
      if (in.kind == Kind::kBackwardWeight) {
        EXPECT_TRUE(zb()) << ToString(in);
        w[key].push_back(i);
      }
    }
    for (int mb = 0; mb < m(); ++mb) {
      for (int c = 0; c < v(); ++c) {
        const auto key = std::make_pair(mb, c);
        SCOPED_TRACE(absl::StrCat("stage ", s, " mb ", mb, " chunk ", c));
        ASSERT_EQ(f[key].size(), 1u);
        ASSERT_EQ(b[key].size(), 1u);
        EXPECT_LT(f[key][0], b[key][0]);
        if (zb()) {
          ASSERT_EQ(w[key].size(), 1u);
          EXPECT_LT(b[key][0], w[key][0]);
        }
      }
    }
    EXPECT_EQ(f.size(), static_cast<size_t>(m() * v()));
    EXPECT_EQ(b.size(), static_cast<size_t>(m() * v()));
    EXPECT_EQ(w.size(), zb() ? static_cast<size_t>(m() * v()) : 0u);
  }
}

// A receive immediately precedes the compute that consumes it, a send immediately follows the
// compute that produced it, and exactly the computes that cross a stage boundary have them.
TEST_P(ScheduleTest, SendsAndReceivesSitNextToTheirCompute) {
  for (int s = 0; s < p(); ++s) {
    const std::vector<Instruction>& list = lists_[s];
    for (size_t i = 0; i < list.size(); ++i) {
      const Instruction& in = list[i];
      SCOPED_TRACE(absl::StrCat("stage ", s, " instruction ", i, " ", ToString(in)));
      const int j = VirtualStage(s, in.chunk, p());
      if (IsRecv(in.kind)) {
        ASSERT_LT(i + 1, list.size());
        const Instruction& next = list[i + 1];
        EXPECT_TRUE(in.kind == Kind::kRecvActivation ? next.kind == Kind::kForward
                                                     : IsBackward(next.kind));
        EXPECT_EQ(next.microbatch, in.microbatch);
        EXPECT_EQ(next.chunk, in.chunk);
      } else if (IsSend(in.kind)) {
        ASSERT_GT(i, 0u);
        const Instruction& prev = list[i - 1];
        EXPECT_TRUE(in.kind == Kind::kSendActivation ? prev.kind == Kind::kForward
                                                     : IsBackward(prev.kind));
        EXPECT_EQ(prev.microbatch, in.microbatch);
        EXPECT_EQ(prev.chunk, in.chunk);
      } else {
        EXPECT_EQ(in.peer_stage, -1);
        const bool before = i > 0 && IsRecv(list[i - 1].kind);
        const bool after = i + 1 < list.size() && IsSend(list[i + 1].kind);
        if (in.kind == Kind::kForward) {
          // The first virtual stage reads the data loader; the last sends nothing.
          EXPECT_EQ(before, p() > 1 && j > 0);
          EXPECT_EQ(after, p() > 1 && j < LastVirtual());
          if (before) {
            EXPECT_EQ(list[i - 1].peer_stage, (s + p() - 1) % p());
          }
          if (after) {
            EXPECT_EQ(list[i + 1].peer_stage, (s + 1) % p());
          }
        } else if (IsBackward(in.kind)) {
          // The last virtual stage starts from its own loss.
          EXPECT_EQ(before, p() > 1 && j < LastVirtual());
          EXPECT_EQ(after, p() > 1 && j > 0);
          if (before) {
            EXPECT_EQ(list[i - 1].peer_stage, (s + 1) % p());
          }
          if (after) {
            EXPECT_EQ(list[i + 1].peer_stage, (s + p() - 1) % p());
          }
        } else {
          EXPECT_FALSE(after);
        }
      }
    }
    if (p() > 1 && v() == 1) {
      for (const Instruction& in : list) {
        if (s == 0) {
          EXPECT_NE(in.kind, Kind::kRecvActivation);
          EXPECT_NE(in.kind, Kind::kSendGrad);
        }
        if (s == p() - 1) {
          EXPECT_NE(in.kind, Kind::kSendActivation);
          EXPECT_NE(in.kind, Kind::kRecvGrad);
        }
      }
    }
  }
}

// For every (sender, receiver, direction), the k-th send carries the same micro-batch and
// virtual-stage edge as the receiver's k-th receive: same count, same order.
TEST_P(ScheduleTest, SendsMatchReceivesInCountAndOrder) {
  // (from, to, grad) -> sequence of (micro-batch, receiving virtual stage).
  using Key = std::tuple<int, int, bool>;
  std::map<Key, std::vector<std::pair<int, int>>> sent, received;
  int messages = 0;
  for (int s = 0; s < p(); ++s) {
    for (const Instruction& in : lists_[s]) {
      const int j = VirtualStage(s, in.chunk, p());
      switch (in.kind) {
        case Kind::kSendActivation:
          sent[{s, in.peer_stage, false}].push_back({in.microbatch, j + 1});
          ++messages;
          break;
        case Kind::kSendGrad:
          sent[{s, in.peer_stage, true}].push_back({in.microbatch, j - 1});
          ++messages;
          break;
        case Kind::kRecvActivation:
          received[{in.peer_stage, s, false}].push_back({in.microbatch, j});
          break;
        case Kind::kRecvGrad:
          received[{in.peer_stage, s, true}].push_back({in.microbatch, j});
          break;
        default:
          break;
      }
    }
  }
  EXPECT_EQ(sent, received);
  // One activation and one gradient per (micro-batch, virtual-stage boundary).
  const int boundaries = p() > 1 ? p() * v() - 1 : 0;
  EXPECT_EQ(messages, 2 * m() * boundaries);
}

TEST_P(ScheduleTest, SimulationRunsWithoutDeadlockAndMatchesTheBubbleFormulas) {
  absl::StatusOr<SimulationResult> sim = Simulate(GetParam().spec(), lists_);
  ASSERT_TRUE(sim.ok()) << sim.status();
  const double p = this->p();
  const double m = this->m();
  const double v = this->v();
  // Unit costs: F = 1, B = 2 (ZB-H1: B = W = 1), so each stage computes 3 per (mb, chunk).
  EXPECT_EQ(sim->total_compute, static_cast<int64_t>(3 * p * m * v));
  for (const StageStats& st : sim->stages) EXPECT_EQ(st.busy, static_cast<int64_t>(3 * m * v));
  EXPECT_NEAR(sim->bubble_fraction, sim->bubble_ratio / (1 + sim->bubble_ratio), 1e-12);
  // bubble_fraction is idle over (makespan * p); the issue quotes bubble_ratio, idle over
  // ideal compute (= bubble per stage / (m (F + B))), e.g. (p-1)/m for 1F1B.
  switch (GetParam().schedule) {
    case Schedule::kGPipe:
    case Schedule::kOneFOneB:
      EXPECT_EQ(sim->makespan, static_cast<int64_t>(3 * (m + p - 1)));
      EXPECT_NEAR(sim->bubble_fraction, (p - 1) / (m + p - 1), 1e-12);
      EXPECT_NEAR(sim->bubble_ratio, (p - 1) / m, 1e-12);
      break;
    case Schedule::kInterleaved1F1B:
      // Per-chunk costs: the fill and drain cost (p-1) chunk passes, 1/v of a stage's.
      EXPECT_EQ(sim->makespan, static_cast<int64_t>(3 * (m * v + p - 1)));
      EXPECT_NEAR(sim->bubble_ratio, (p - 1) / (v * m), 1e-12);
      EXPECT_NEAR(sim->bubble_fraction, (p - 1) / (v * m + p - 1), 1e-12);
      break;
    case Schedule::kZeroBubbleH1:
      if (m >= p) {
        // (p-1)(F + B - W) = p-1 of idle per stage over 3m of compute.
        EXPECT_EQ(sim->makespan, static_cast<int64_t>(3 * m + p - 1));
        EXPECT_NEAR(sim->bubble_ratio, (p - 1) / (3 * m), 1e-12);
        EXPECT_NEAR(sim->bubble_fraction, (p - 1) / (3 * m + p - 1), 1e-12);
      } else {
        // Too few micro-batches to hide the round trip: never worse than 1F1B.
        EXPECT_LE(sim->bubble_ratio, (p - 1) / m + 1e-12);
      }
      break;
  }
}

TEST_P(ScheduleTest, PeakActivations) {
  absl::StatusOr<SimulationResult> sim = Simulate(GetParam().spec(), lists_);
  ASSERT_TRUE(sim.ok()) << sim.status();
  int max_until_weight = 0;
  for (int s = 0; s < p(); ++s) {
    SCOPED_TRACE(absl::StrCat("stage ", s));
    const StageStats& st = sim->stages[s];
    max_until_weight = std::max(max_until_weight, st.peak_until_weight);
    switch (GetParam().schedule) {
      case Schedule::kGPipe:
        EXPECT_EQ(st.peak_in_flight, m());
        EXPECT_EQ(st.peak_until_weight, st.peak_in_flight);
        break;
      case Schedule::kOneFOneB:
        EXPECT_EQ(st.peak_in_flight, std::min(p() - s, m()));
        EXPECT_EQ(st.peak_until_weight, st.peak_in_flight);
        break;
      case Schedule::kInterleaved1F1B:
        // Warm-up forwards plus the one in flight in the steady state; in chunk activations,
        // each 1/v of a stage's: (2(p-s-1) + (v-1)p + 1) / v stage activations, more than
        // 1F1B's p-s.
        EXPECT_EQ(st.peak_in_flight, std::min(2 * (p() - s - 1) + (v() - 1) * p() + 1, m() * v()));
        EXPECT_EQ(st.peak_until_weight, st.peak_in_flight);
        break;
      case Schedule::kZeroBubbleH1:
        // Same as 1F1B up to B; W's deferred on stage s keep more until W, but never more than
        // 1F1B's peak over all stages (stage 0's).
        EXPECT_EQ(st.peak_in_flight, std::min(p() - s, m()));
        EXPECT_GE(st.peak_until_weight, st.peak_in_flight);
        EXPECT_LE(st.peak_until_weight, std::min(p(), m()));
        break;
    }
  }
  if (GetParam().schedule == Schedule::kZeroBubbleH1) {
    EXPECT_EQ(max_until_weight, std::min(p(), m()));
  }
}

TEST_P(ScheduleTest, SimulationStartTimesRespectDependencies) {
  absl::StatusOr<SimulationResult> sim = Simulate(GetParam().spec(), lists_);
  ASSERT_TRUE(sim.ok()) << sim.status();
  // (virtual stage, mb) -> start of F and of B.
  std::map<std::pair<int, int>, int64_t> f, b;
  for (int s = 0; s < p(); ++s) {
    int64_t prev_end = 0;
    for (size_t i = 0; i < lists_[s].size(); ++i) {
      const Instruction& in = lists_[s][i];
      const int64_t start = sim->start[s][i];
      if (!IsCompute(in.kind)) continue;
      EXPECT_GE(start, prev_end) << "stage " << s << " overlaps itself at " << ToString(in);
      prev_end = start + (in.kind == Kind::kForward ? 1 : in.kind == Kind::kBackward ? 2 : 1);
      const auto key = std::make_pair(VirtualStage(s, in.chunk, p()), in.microbatch);
      if (in.kind == Kind::kForward) f[key] = start;
      if (IsBackward(in.kind)) b[key] = start;
    }
    EXPECT_EQ(sim->stages[s].finish, prev_end);
  }
  const int64_t bcost = zb() ? 1 : 2;
  for (int j = 0; j <= LastVirtual(); ++j) {
    for (int mb = 0; mb < m(); ++mb) {
      const auto here = std::make_pair(j, mb);
      if (j > 0) {
        EXPECT_GE(f[here], f[std::make_pair(j - 1, mb)] + 1);
      }
      if (j < LastVirtual()) {
        EXPECT_GE(b[here], b[std::make_pair(j + 1, mb)] + bcost);
      }
      EXPECT_GE(b[here], f[here] + 1);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchedules, ScheduleTest, ::testing::ValuesIn(AllCases()), CaseName);

// --- Golden lists ------------------------------------------------------------------------

Instruction F(int mb, int chunk = 0) { return {Kind::kForward, mb, chunk, -1}; }
Instruction B(int mb, int chunk = 0) { return {Kind::kBackward, mb, chunk, -1}; }
Instruction Bi(int mb) { return {Kind::kBackwardInput, mb, 0, -1}; }
Instruction W(int mb) { return {Kind::kBackwardWeight, mb, 0, -1}; }
Instruction SendA(int mb, int to, int chunk = 0) { return {Kind::kSendActivation, mb, chunk, to}; }
Instruction RecvA(int mb, int from, int chunk = 0) {
  return {Kind::kRecvActivation, mb, chunk, from};
}
Instruction SendG(int mb, int to, int chunk = 0) { return {Kind::kSendGrad, mb, chunk, to}; }
Instruction RecvG(int mb, int from, int chunk = 0) { return {Kind::kRecvGrad, mb, chunk, from}; }

TEST(GoldenTest, GPipeTwoStages) {
  auto lists = Generate({Schedule::kGPipe, 2, 2});
  ASSERT_TRUE(lists.ok()) << lists.status();
  EXPECT_THAT((*lists)[0], ElementsAre(F(0), SendA(0, 1), F(1), SendA(1, 1), RecvG(0, 1), B(0),
                                       RecvG(1, 1), B(1)));
  EXPECT_THAT((*lists)[1], ElementsAre(RecvA(0, 0), F(0), RecvA(1, 0), F(1), B(0), SendG(0, 0),
                                       B(1), SendG(1, 0)));
}

TEST(GoldenTest, OneFOneBThreeStages) {
  auto lists = Generate({Schedule::kOneFOneB, 3, 4});
  ASSERT_TRUE(lists.ok()) << lists.status();
  // Stage 0: 2 warm-up forwards, 2 steady pairs, 2 cool-down backwards.
  EXPECT_THAT((*lists)[0],
              ElementsAreArray({F(0), SendA(0, 1), F(1), SendA(1, 1), F(2), SendA(2, 1),
                                RecvG(0, 1), B(0), F(3), SendA(3, 1), RecvG(1, 1), B(1),
                                RecvG(2, 1), B(2), RecvG(3, 1), B(3)}));
  // Stage 2 (last): no warm-up, backward straight from its own loss.
  EXPECT_THAT((*lists)[2], ElementsAreArray({RecvA(0, 1), F(0), B(0), SendG(0, 1), RecvA(1, 1),
                                             F(1), B(1), SendG(1, 1), RecvA(2, 1), F(2), B(2),
                                             SendG(2, 1), RecvA(3, 1), F(3), B(3), SendG(3, 1)}));
}

TEST(GoldenTest, ZeroBubbleH1ThreeStages) {
  auto lists = Generate({Schedule::kZeroBubbleH1, 3, 4});
  ASSERT_TRUE(lists.ok()) << lists.status();
  // Stage 0: 1F1B order with each W right after its B (nothing deferred).
  EXPECT_THAT((*lists)[0],
              ElementsAreArray({F(0),        SendA(0, 1), F(1),        SendA(1, 1), F(2),
                                SendA(2, 1), RecvG(0, 1), Bi(0),       W(0),        F(3),
                                SendA(3, 1), RecvG(1, 1), Bi(1),       W(1),        RecvG(2, 1),
                                Bi(2),       W(2),        RecvG(3, 1), Bi(3),       W(3)}));
  // Stage 2 (last): defers p-1 = 2 W's into the drain, then runs them oldest first.
  EXPECT_THAT((*lists)[2],
              ElementsAreArray({RecvA(0, 1), F(0),        Bi(0),       SendG(0, 1), RecvA(1, 1),
                                F(1),        Bi(1),       SendG(1, 1), RecvA(2, 1), F(2),
                                Bi(2),       SendG(2, 1), W(0),        RecvA(3, 1), F(3),
                                Bi(3),       SendG(3, 1), W(1),        W(2),        W(3)}));
}

TEST(GoldenTest, InterleavedTwoStagesTwoChunks) {
  auto lists = Generate({Schedule::kInterleaved1F1B, 2, 2, 2});
  ASSERT_TRUE(lists.ok()) << lists.status();
  // Virtual stages 0..3 on stages 0,1,0,1. Stage 0 warms up min(2 + 2, 4) = all 4 forwards;
  // stage 1 warms up 2: (mb 0, chunk 0), (mb 1, chunk 0); its backwards start at chunk 1.
  EXPECT_THAT((*lists)[0],
              ElementsAreArray({F(0, 0),        SendA(0, 1, 0), F(1, 0),        SendA(1, 1, 0),
                                RecvA(0, 1, 1), F(0, 1),        SendA(0, 1, 1), RecvA(1, 1, 1),
                                F(1, 1),        SendA(1, 1, 1), RecvG(0, 1, 1), B(0, 1),
                                SendG(0, 1, 1), RecvG(1, 1, 1), B(1, 1),        SendG(1, 1, 1),
                                RecvG(0, 1, 0), B(0, 0),        RecvG(1, 1, 0), B(1, 0)}));
  EXPECT_THAT((*lists)[1],
              ElementsAreArray({RecvA(0, 0, 0), F(0, 0),        SendA(0, 0, 0), RecvA(1, 0, 0),
                                F(1, 0),        SendA(1, 0, 0), RecvA(0, 0, 1), F(0, 1),
                                B(0, 1),        SendG(0, 0, 1), RecvA(1, 0, 1), F(1, 1),
                                B(1, 1),        SendG(1, 0, 1), RecvG(0, 0, 0), B(0, 0),
                                SendG(0, 0, 0), RecvG(1, 0, 0), B(1, 0),        SendG(1, 0, 0)}));
}

TEST(GoldenTest, OneStageHasNoCommunication) {
  for (const ScheduleSpec& spec :
       {ScheduleSpec{Schedule::kOneFOneB, 1, 3}, ScheduleSpec{Schedule::kInterleaved1F1B, 1, 2, 2},
        ScheduleSpec{Schedule::kZeroBubbleH1, 1, 2}}) {
    auto lists = Generate(spec);
    ASSERT_TRUE(lists.ok()) << lists.status();
    for (const Instruction& in : (*lists)[0]) EXPECT_TRUE(IsCompute(in.kind)) << ToString(in);
  }
  auto lists = Generate({Schedule::kInterleaved1F1B, 1, 2, 2});
  ASSERT_TRUE(lists.ok());
  // Warm-up (v-1)p = 1: forward of chunk 1 feeds on chunk 0's output on the same stage.
  EXPECT_THAT((*lists)[0],
              ElementsAre(F(0, 0), F(0, 1), B(0, 1), F(1, 0), B(0, 0), F(1, 1), B(1, 1), B(1, 0)));
}

// --- The simulator catches broken lists --------------------------------------------------

TEST(SimulateTest, DetectsDeadlockAndNamesTheStuckStages) {
  // Stage 0 waits for a gradient before sending the activation stage 1 waits for.
  const ScheduleSpec spec{Schedule::kOneFOneB, 2, 1};
  const Lists lists = {{F(0), RecvG(0, 1), B(0), SendA(0, 1)},
                       {RecvA(0, 0), F(0), B(0), SendG(0, 0)}};
  EXPECT_THAT(Simulate(spec, lists),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("deadlock"),
                             HasSubstr("stage 0 instruction 1 RecvGrad(mb 0, chunk 0, from "
                                       "stage 1) waits forever"),
                             HasSubstr("stage 1 instruction 0 RecvActivation(mb 0, chunk 0, "
                                       "from stage 0) waits forever"))));
}

TEST(SimulateTest, DetectsAReceiveMatchedToAnotherMicrobatch) {
  // Stage 0 waits for micro-batch 1's gradient first while stage 1 sends micro-batch 0's
  // first: in-order matching pairs the receive with the wrong message.
  const ScheduleSpec spec{Schedule::kGPipe, 2, 2};
  auto lists = Generate(spec);
  ASSERT_TRUE(lists.ok());
  // Stage 0 receives gradients in the order 1, 0.
  std::swap((*lists)[0][4], (*lists)[0][6]);
  std::swap((*lists)[0][5], (*lists)[0][7]);
  EXPECT_THAT(Simulate(spec, *lists),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("stage 0 instruction 4 RecvGrad(mb 1, chunk 0, from stage 1): "
                                 "matches stage 1 instruction 5 SendGrad(mb 0, chunk 0, to "
                                 "stage 0), which is for another micro-batch or chunk")));
}

TEST(SimulateTest, DetectsMissingInputAndMissingPasses) {
  const ScheduleSpec spec{Schedule::kOneFOneB, 2, 1};
  // Forward without receiving its input.
  EXPECT_THAT(Simulate(spec, {{F(0), SendA(0, 1), RecvG(0, 1), B(0)}, {F(0), B(0), SendG(0, 0)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("stage 1 instruction 0 Forward(mb 0, chunk 0): its input "
                                 "activation has not been received")));
  // Backward before its forward.
  EXPECT_THAT(
      Simulate({Schedule::kOneFOneB, 1, 1}, {{B(0), F(0)}}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("backward before its forward")));
  // W before B.
  EXPECT_THAT(Simulate({Schedule::kZeroBubbleH1, 1, 1}, {{F(0), W(0), Bi(0)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("weight pass before its BackwardInput")));
  // A pass that never runs.
  EXPECT_THAT(Simulate({Schedule::kZeroBubbleH1, 1, 2}, {{F(0), Bi(0), W(0), F(1), Bi(1)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("stage 0 never runs BackwardWeight of micro-batch 1 chunk 0")));
  // A duplicate forward.
  EXPECT_THAT(Simulate({Schedule::kOneFOneB, 1, 1}, {{F(0), F(0), B(0)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("second forward")));
  // A send nobody receives.
  EXPECT_THAT(Simulate(spec, {{F(0), SendA(0, 1), SendA(0, 1), RecvG(0, 1), B(0)},
                              {RecvA(0, 0), F(0), B(0), SendG(0, 0)}}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("stage 0 instruction 2 SendActivation(mb 0, chunk 0, to stage "
                                 "1): never received")));
}

TEST(SimulateTest, RejectsMalformedLists) {
  const ScheduleSpec spec{Schedule::kOneFOneB, 2, 1};
  EXPECT_THAT(
      Simulate(spec, {{F(0), B(0)}}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1 instruction lists for 2 stages")));
  EXPECT_THAT(Simulate(spec, {{F(0), SendA(0, 0), RecvG(0, 1), B(0)},
                              {RecvA(0, 0), F(0), B(0), SendG(0, 0)}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stage 0 instruction 1 SendActivation(mb 0, chunk 0, to stage "
                                 "0): the neighbouring virtual stage is on stage 1")));
  EXPECT_THAT(Simulate(spec, {{F(0), SendA(0, 1), RecvG(0, 1), B(0)},
                              {RecvA(0, 0), F(0), SendA(0, 0), B(0), SendG(0, 0)}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("no virtual stage on that side of this chunk")));
  EXPECT_THAT(Simulate(spec, {{F(3), B(3)}, {}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("stage 0 instruction 0 Forward(mb 3, chunk 0): micro-batch out "
                                 "of [0, 1)")));
  EXPECT_THAT(Simulate(spec, {{F(0, 1)}, {}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("chunk out of [0, 1)")));
  EXPECT_THAT(Simulate({Schedule::kOneFOneB, 1, 1}, {{F(0)}}, CostModel{.forward = -1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("negative cost")));
}

TEST(SimulateTest, CostsScaleTheMakespan) {
  const ScheduleSpec spec{Schedule::kOneFOneB, 4, 8};
  auto lists = Generate(spec);
  ASSERT_TRUE(lists.ok());
  // F = 2, B = 4: twice the unit makespan, same ratios.
  auto sim = Simulate(spec, *lists, CostModel{.forward = 2, .backward = 4});
  ASSERT_TRUE(sim.ok()) << sim.status();
  EXPECT_EQ(sim->makespan, 2 * 3 * (8 + 4 - 1));
  EXPECT_NEAR(sim->bubble_ratio, 3.0 / 8, 1e-12);
}

// --- Specs and names ---------------------------------------------------------------------

TEST(SpecTest, BadSpecsAreInvalidArgumentsWithTheReason) {
  using S = Schedule;
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_THAT(Generate({S::kOneFOneB, 0, 4}),
              StatusIs(kInvalid, HasSubstr("pipeline schedule 1f1b: stages must be >= 1, got 0")));
  EXPECT_THAT(
      Generate({S::kGPipe, 4, 0}),
      StatusIs(kInvalid, HasSubstr("pipeline schedule gpipe: microbatches must be >= 1, got 0")));
  EXPECT_THAT(Generate({S::kZeroBubbleH1, 4, -3}),
              StatusIs(kInvalid, HasSubstr("microbatches must be >= 1, got -3")));
  EXPECT_THAT(Generate({S::kInterleaved1F1B, 4, 8, 1}),
              StatusIs(kInvalid, HasSubstr("pipeline schedule interleaved: virtual_stages must "
                                           "be >= 2, got 1")));
  EXPECT_THAT(Generate({S::kInterleaved1F1B, 4, 6, 2}),
              StatusIs(kInvalid, HasSubstr("pipeline schedule interleaved: microbatches (6) "
                                           "must be a multiple of stages (4)")));
  EXPECT_THAT(Generate({S::kInterleaved1F1B, 4, 2, 2}),
              StatusIs(kInvalid, HasSubstr("microbatches (2) must be a multiple of stages (4)")));
  EXPECT_THAT(Generate({S::kOneFOneB, 4, 8, 2}),
              StatusIs(kInvalid, HasSubstr("pipeline schedule 1f1b: virtual_stages must be 1, "
                                           "got 2")));
  EXPECT_THAT(Generate({S::kZeroBubbleH1, 4, 8, 0}),
              StatusIs(kInvalid, HasSubstr("zb-h1: virtual_stages must be 1, got 0")));
  EXPECT_THAT(Generate({S::kGPipe, 4, 1 << 21}),
              StatusIs(kInvalid, HasSubstr("microbatches * virtual_stages (2097152 * 1) exceeds")));
  EXPECT_THAT(Generate({S::kInterleaved1F1B, 1 << 15, 1 << 15, 4}),
              StatusIs(kInvalid, HasSubstr("stages * virtual_stages (32768 * 4) exceeds")));
  EXPECT_THAT(Generate({static_cast<S>(42), 4, 8}),
              StatusIs(kInvalid, HasSubstr("unknown pipeline schedule value 42")));
  EXPECT_THAT(Simulate({S::kOneFOneB, 0, 1}, {}),
              StatusIs(kInvalid, HasSubstr("stages must be >= 1")));
  EXPECT_TRUE(ValidateSpec({S::kInterleaved1F1B, 4, 8, 2}).ok());
}

TEST(SpecTest, ParseScheduleRoundTrips) {
  for (Schedule s : {Schedule::kGPipe, Schedule::kOneFOneB, Schedule::kInterleaved1F1B,
                     Schedule::kZeroBubbleH1}) {
    absl::StatusOr<Schedule> parsed = ParseSchedule(ScheduleName(s));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_EQ(ParseSchedule("zb-h1").value(), Schedule::kZeroBubbleH1);
  EXPECT_THAT(ParseSchedule("pipedream"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("unknown pipeline schedule \"pipedream\"; expected one of gpipe, "
                                 "1f1b, interleaved, zb-h1")));
  EXPECT_THAT(ParseSchedule(""), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("unknown pipeline schedule \"\"")));
}

TEST(SpecTest, Names) {
  EXPECT_EQ(KindName(Kind::kBackwardInput), "BackwardInput");
  EXPECT_EQ(ToString(SendA(3, 2, 1)), "SendActivation(mb 3, chunk 1, to stage 2)");
  EXPECT_EQ(ToString(RecvG(0, 1)), "RecvGrad(mb 0, chunk 0, from stage 1)");
  EXPECT_EQ(ToString(W(5)), "BackwardWeight(mb 5, chunk 0)");
  EXPECT_EQ(VirtualStage(1, 2, 4), 9);
}

// --- Numbers for docs/parallelism.md -----------------------------------------------------

struct Measured {
  std::string name;
  SimulationResult sim;
  // Two characters per time unit: the pass (F, B, W; lower case for chunks > 0) and the
  // micro-batch modulo 10; ".." idle.
  std::vector<std::string> timeline;
};

std::vector<std::string> Timeline(const Lists& lists, const SimulationResult& sim) {
  std::vector<std::string> out;
  for (size_t s = 0; s < lists.size(); ++s) {
    std::string line(2 * sim.makespan, '.');
    for (size_t i = 0; i < lists[s].size(); ++i) {
      const Instruction& in = lists[s][i];
      if (!IsCompute(in.kind)) continue;
      const int64_t cost = in.kind == Kind::kBackward ? 2 : 1;
      char c = in.kind == Kind::kForward ? 'F' : in.kind == Kind::kBackwardWeight ? 'W' : 'B';
      if (in.chunk > 0) c = static_cast<char>(c - 'A' + 'a');
      for (int64_t t = sim.start[s][i]; t < sim.start[s][i] + cost; ++t) {
        line[2 * t] = c;
        line[2 * t + 1] = static_cast<char>('0' + in.microbatch % 10);
      }
    }
    out.push_back(line);
  }
  return out;
}

std::vector<Measured> MeasureP4M8() {
  std::vector<Measured> out;
  for (const ScheduleSpec& spec :
       {ScheduleSpec{Schedule::kGPipe, 4, 8}, ScheduleSpec{Schedule::kOneFOneB, 4, 8},
        ScheduleSpec{Schedule::kInterleaved1F1B, 4, 8, 2},
        ScheduleSpec{Schedule::kZeroBubbleH1, 4, 8}}) {
    auto lists = Generate(spec);
    if (!lists.ok()) continue;
    auto sim = Simulate(spec, *lists);
    if (!sim.ok()) continue;
    std::vector<std::string> timeline = Timeline(*lists, *sim);
    out.push_back({std::string(ScheduleName(spec.schedule)), *std::move(sim), timeline});
  }
  return out;
}

// Recorded as test properties (--gtest_output=xml:...) for the docs: p = 4, m = 8, v = 2.
TEST(DocNumbersTest, BubbleAndPeakAtP4M8) {
  const std::vector<Measured> measured = MeasureP4M8();
  ASSERT_EQ(measured.size(), 4u);
  const std::map<std::string, double> expected_ratio = {
      {"gpipe", 3.0 / 8}, {"1f1b", 3.0 / 8}, {"interleaved", 3.0 / 16}, {"zb-h1", 3.0 / 24}};
  for (const Measured& m : measured) {
    EXPECT_NEAR(m.sim.bubble_ratio, expected_ratio.at(m.name), 1e-12) << m.name;
    std::string peaks;
    for (const StageStats& st : m.sim.stages) {
      absl::StrAppend(&peaks, peaks.empty() ? "" : ",", st.peak_in_flight);
    }
    RecordProperty(m.name + "_makespan", std::to_string(m.sim.makespan));
    RecordProperty(m.name + "_bubble_fraction", absl::StrFormat("%.4f", m.sim.bubble_fraction));
    RecordProperty(m.name + "_bubble_ratio", absl::StrFormat("%.4f", m.sim.bubble_ratio));
    RecordProperty(m.name + "_peak_in_flight", peaks);
  }
}

// Prints the table and a timeline of each schedule (one character per time unit: F/B/W and
// the micro-batch digit, '.' idle). Run with --gtest_also_run_disabled_tests.
TEST(DocNumbersTest, DISABLED_PrintP4M8) {
  for (const Measured& m : MeasureP4M8()) {
    std::printf("%-12s makespan %3lld  bubble_fraction %.4f  bubble_ratio %.4f  peak",
                m.name.c_str(), static_cast<long long>(m.sim.makespan), m.sim.bubble_fraction,
                m.sim.bubble_ratio);
    for (const StageStats& st : m.sim.stages) {
      std::printf(" %d/%d", st.peak_in_flight, st.peak_until_weight);
    }
    std::printf("\n");
    for (size_t s = 0; s < m.sim.stages.size(); ++s) {
      std::printf("  stage %zu  %s\n", s, m.timeline[s].c_str());
    }
  }
}

}  // namespace
}  // namespace trident::pipeline
