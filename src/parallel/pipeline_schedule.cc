// Pipeline schedules (trident/parallel/pipeline.h): the generators and the unit-cost
// simulator that checks them.
#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/check.h"
#include "common/status_macros.h"
#include "trident/parallel/pipeline.h"

namespace trident::pipeline {
namespace {

constexpr int64_t kMaxForwardsPerStage = int64_t{1} << 20;
constexpr int64_t kMaxVirtualStages = int64_t{1} << 16;

// Appends a stage's passes together with the receive each one needs and the send each one
// makes, so that every schedule below only has to decide the order of the passes.
class StageWriter {
 public:
  StageWriter(const ScheduleSpec& spec, int stage, std::vector<Instruction>* out)
      : p_(spec.stages),
        last_virtual_(spec.stages * spec.virtual_stages - 1),
        stage_(stage),
        out_(out) {}

  void Forward(int mb, int chunk) {
    const int j = VirtualStage(stage_, chunk, p_);
    if (j > 0 && p_ > 1) Add(Kind::kRecvActivation, mb, chunk, Prev());
    Add(Kind::kForward, mb, chunk, -1);
    if (j < last_virtual_ && p_ > 1) Add(Kind::kSendActivation, mb, chunk, Next());
  }

  // kBackward or kBackwardInput: both consume the output gradient and send the input one.
  void Backward(Kind kind, int mb, int chunk) {
    const int j = VirtualStage(stage_, chunk, p_);
    if (j < last_virtual_ && p_ > 1) Add(Kind::kRecvGrad, mb, chunk, Next());
    Add(kind, mb, chunk, -1);
    if (j > 0 && p_ > 1) Add(Kind::kSendGrad, mb, chunk, Prev());
  }

  void Weight(int mb, int chunk) { Add(Kind::kBackwardWeight, mb, chunk, -1); }

 private:
  int Prev() const { return (stage_ + p_ - 1) % p_; }
  int Next() const { return (stage_ + 1) % p_; }
  void Add(Kind kind, int mb, int chunk, int peer) {
    out_->push_back(Instruction{kind, mb, chunk, peer});
  }

  int p_;
  int last_virtual_;
  int stage_;
  std::vector<Instruction>* out_;
};

void GenerateGPipe(const ScheduleSpec& spec, int stage, std::vector<Instruction>* out) {
  StageWriter w(spec, stage, out);
  for (int mb = 0; mb < spec.microbatches; ++mb) w.Forward(mb, 0);
  for (int mb = 0; mb < spec.microbatches; ++mb) w.Backward(Kind::kBackward, mb, 0);
}

void GenerateOneFOneB(const ScheduleSpec& spec, int stage, std::vector<Instruction>* out) {
  StageWriter w(spec, stage, out);
  const int m = spec.microbatches;
  const int warmup = std::min(spec.stages - stage - 1, m);
  int forward = 0;
  int backward = 0;
  while (forward < warmup) w.Forward(forward++, 0);
  while (forward < m) {
    w.Forward(forward++, 0);
    w.Backward(Kind::kBackward, backward++, 0);
  }
  while (backward < m) w.Backward(Kind::kBackward, backward++, 0);
}

// Megatron-LM's forward_backward_pipelining_with_interleaving. The k-th forward of a stage
// runs micro-batch (k / (p*v)) * p + k % p on chunk (k % (p*v)) / p: groups of p micro-batches
// go through chunk 0, then chunk 1, ...; the k-th backward takes the chunks in reverse order.
void GenerateInterleaved(const ScheduleSpec& spec, int stage, std::vector<Instruction>* out) {
  StageWriter w(spec, stage, out);
  const int p = spec.stages;
  const int v = spec.virtual_stages;
  const int total = spec.microbatches * v;
  const int group = p * v;
  auto microbatch = [&](int k) { return (k / group) * p + k % p; };
  auto forward_chunk = [&](int k) { return (k % group) / p; };
  auto backward_chunk = [&](int k) { return v - 1 - (k % group) / p; };

  const int warmup = std::min((p - stage - 1) * 2 + (v - 1) * p, total);
  int forward = 0;
  int backward = 0;
  for (; forward < warmup; ++forward) w.Forward(microbatch(forward), forward_chunk(forward));
  for (; forward < total; ++forward, ++backward) {
    w.Forward(microbatch(forward), forward_chunk(forward));
    w.Backward(Kind::kBackward, microbatch(backward), backward_chunk(backward));
  }
  for (; backward < total; ++backward) {
    w.Backward(Kind::kBackward, microbatch(backward), backward_chunk(backward));
  }
}

// ZB-H1 (Qi et al., section 3, and the authors' reference schedule): the 1F1B order of F and
// B with W split off. Stage s runs
//   warm-up  min(p-s-1, m) forwards (as 1F1B);
//   F B      s times (or until the forwards run out): W deferred, its micro-batch queued;
//   F B W    while forwards remain, W of the oldest queued micro-batch;
//   B W      drain;
//   W        the (up to s) deferred weight passes, which fill the drain bubble: stage s
//            idles ~s passes at the end of 1F1B while the last gradients travel to stage 0.
// F and B keep their 1F1B order, so the B-critical path and the in-flight count up to B are
// 1F1B's; with the deferred W's a stage keeps at most min(p, m) micro-batches whose W has not
// run, which is 1F1B's peak on stage 0.
void GenerateZeroBubbleH1(const ScheduleSpec& spec, int stage, std::vector<Instruction>* out) {
  StageWriter w(spec, stage, out);
  const int m = spec.microbatches;
  const int warmup = std::min(spec.stages - stage - 1, m);
  int forward = 0;
  int backward = 0;
  int weight = 0;  // W runs in micro-batch order, lagging B by the deferred count
  while (forward < warmup) w.Forward(forward++, 0);
  for (int i = 0; i < stage && forward < m; ++i) {
    w.Forward(forward++, 0);
    w.Backward(Kind::kBackwardInput, backward++, 0);
  }
  while (forward < m) {
    w.Forward(forward++, 0);
    w.Backward(Kind::kBackwardInput, backward++, 0);
    w.Weight(weight++, 0);
  }
  while (backward < m) {
    w.Backward(Kind::kBackwardInput, backward++, 0);
    w.Weight(weight++, 0);
  }
  while (weight < m) w.Weight(weight++, 0);
}

}  // namespace

absl::string_view ScheduleName(Schedule schedule) {
  switch (schedule) {
    case Schedule::kGPipe:
      return "gpipe";
    case Schedule::kOneFOneB:
      return "1f1b";
    case Schedule::kInterleaved1F1B:
      return "interleaved";
    case Schedule::kZeroBubbleH1:
      return "zb-h1";
  }
  return "unknown";
}

absl::StatusOr<Schedule> ParseSchedule(absl::string_view name) {
  for (Schedule s : {Schedule::kGPipe, Schedule::kOneFOneB, Schedule::kInterleaved1F1B,
                     Schedule::kZeroBubbleH1}) {
    if (name == ScheduleName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown pipeline schedule \"", name, "\"; expected one of gpipe, 1f1b, interleaved, zb-h1"));
}

absl::string_view KindName(Kind kind) {
  switch (kind) {
    case Kind::kForward:
      return "Forward";
    case Kind::kBackward:
      return "Backward";
    case Kind::kBackwardInput:
      return "BackwardInput";
    case Kind::kBackwardWeight:
      return "BackwardWeight";
    case Kind::kSendActivation:
      return "SendActivation";
    case Kind::kRecvActivation:
      return "RecvActivation";
    case Kind::kSendGrad:
      return "SendGrad";
    case Kind::kRecvGrad:
      return "RecvGrad";
  }
  return "Unknown";
}

bool IsCompute(Kind kind) {
  return kind == Kind::kForward || kind == Kind::kBackward || kind == Kind::kBackwardInput ||
         kind == Kind::kBackwardWeight;
}
bool IsSend(Kind kind) { return kind == Kind::kSendActivation || kind == Kind::kSendGrad; }
bool IsRecv(Kind kind) { return kind == Kind::kRecvActivation || kind == Kind::kRecvGrad; }

std::string ToString(const Instruction& in) {
  std::string s = absl::StrCat(KindName(in.kind), "(mb ", in.microbatch, ", chunk ", in.chunk);
  if (IsSend(in.kind)) absl::StrAppend(&s, ", to stage ", in.peer_stage);
  if (IsRecv(in.kind)) absl::StrAppend(&s, ", from stage ", in.peer_stage);
  s += ")";
  return s;
}

absl::Status ValidateSpec(const ScheduleSpec& spec) {
  const absl::string_view name = ScheduleName(spec.schedule);
  if (name == "unknown") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown pipeline schedule value ", static_cast<int>(spec.schedule)));
  }
  if (spec.stages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule ", name, ": stages must be >= 1, got ", spec.stages));
  }
  if (spec.microbatches < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline schedule ", name, ": microbatches must be >= 1, got ", spec.microbatches));
  }
  if (spec.schedule == Schedule::kInterleaved1F1B) {
    if (spec.virtual_stages < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("pipeline schedule interleaved: virtual_stages must be >= 2, got ",
                       spec.virtual_stages, " (use 1f1b for one chunk per stage)"));
    }
    if (spec.microbatches % spec.stages != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("pipeline schedule interleaved: microbatches (", spec.microbatches,
                       ") must be a multiple of stages (", spec.stages, ")"));
    }
  } else if (spec.virtual_stages != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule ", name, ": virtual_stages must be 1, got ",
                     spec.virtual_stages, " (only interleaved runs several chunks per stage)"));
  }
  if (int64_t{spec.microbatches} * spec.virtual_stages > kMaxForwardsPerStage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline schedule ", name, ": microbatches * virtual_stages (", spec.microbatches, " * ",
        spec.virtual_stages, ") exceeds ", kMaxForwardsPerStage));
  }
  if (int64_t{spec.stages} * spec.virtual_stages > kMaxVirtualStages) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline schedule ", name, ": stages * virtual_stages (", spec.stages, " * ",
                     spec.virtual_stages, ") exceeds ", kMaxVirtualStages));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<Instruction>>> Generate(const ScheduleSpec& spec) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  std::vector<std::vector<Instruction>> stages(spec.stages);
  for (int s = 0; s < spec.stages; ++s) {
    switch (spec.schedule) {
      case Schedule::kGPipe:
        GenerateGPipe(spec, s, &stages[s]);
        break;
      case Schedule::kOneFOneB:
        GenerateOneFOneB(spec, s, &stages[s]);
        break;
      case Schedule::kInterleaved1F1B:
        GenerateInterleaved(spec, s, &stages[s]);
        break;
      case Schedule::kZeroBubbleH1:
        GenerateZeroBubbleH1(spec, s, &stages[s]);
        break;
    }
  }
  return stages;
}

// --- Simulation ----------------------------------------------------------------------------

namespace {

// One (micro-batch, chunk) on one stage: which of its passes have run, and which of its
// inputs are there.
struct Slot {
  bool input = false;        // forward input received (or produced on this stage)
  bool output_grad = false;  // backward input received (or produced on this stage)
  bool forward = false;
  bool backward = false;  // kBackward or kBackwardInput
  bool split = false;     // the backward was kBackwardInput: a W must follow
  bool weight = false;
};

struct SentMessage {
  int microbatch;
  int virtual_stage;  // of the receiving compute
  int64_t time;
  int index;  // in the sender's list, for messages
};

class Simulator {
 public:
  Simulator(const ScheduleSpec& spec, const std::vector<std::vector<Instruction>>& lists,
            const CostModel& cost)
      : spec_(spec),
        p_(spec.stages),
        v_(spec.virtual_stages),
        lists_(lists),
        cost_(cost),
        slots_(static_cast<size_t>(p_) * spec.microbatches * v_),
        channels_(static_cast<size_t>(p_) * p_ * 2),
        pc_(p_, 0),
        clock_(p_, 0),
        in_flight_(p_, 0),
        until_weight_(p_, 0) {
    result_.stages.resize(p_);
    result_.start.resize(p_);
    for (int s = 0; s < p_; ++s) result_.start[s].assign(lists_[s].size(), 0);
  }

  absl::StatusOr<SimulationResult> Run() {
    for (int s = 0; s < p_; ++s) {
      for (size_t i = 0; i < lists_[s].size(); ++i) RETURN_IF_ERROR(CheckWellFormed(s, i));
    }
    // Advance every stage as far as it goes until none moves; the times do not depend on the
    // order because a receive only takes the max of two clocks.
    bool progress = true;
    while (progress) {
      progress = false;
      for (int s = 0; s < p_; ++s) {
        while (pc_[s] < lists_[s].size()) {
          ASSIGN_OR_RETURN(bool stepped, Step(s));
          if (!stepped) break;
          progress = true;
        }
      }
    }
    RETURN_IF_ERROR(CheckFinished());
    return Summarise();
  }

 private:
  Slot& SlotOf(int stage, int mb, int chunk) {
    return slots_[(static_cast<size_t>(stage) * spec_.microbatches + mb) * v_ + chunk];
  }
  std::deque<SentMessage>& Channel(int from, int to, bool grad) {
    return channels_[(static_cast<size_t>(from) * p_ + to) * 2 + (grad ? 1 : 0)];
  }
  std::string Where(int s, size_t i) const {
    return absl::StrCat("stage ", s, " instruction ", i, " ", ToString(lists_[s][i]));
  }
  absl::Status Invalid(int s, size_t i, absl::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat(Where(s, i), ": ", why));
  }
  absl::Status Broken(int s, size_t i, absl::string_view why) const {
    return absl::FailedPreconditionError(absl::StrCat(Where(s, i), ": ", why));
  }

  // Fields in range, and sends/receives between the right neighbours.
  absl::Status CheckWellFormed(int s, size_t i) const {
    const Instruction& in = lists_[s][i];
    if (!IsCompute(in.kind) && !IsSend(in.kind) && !IsRecv(in.kind)) {
      return Invalid(s, i, "unknown kind");
    }
    if (in.microbatch < 0 || in.microbatch >= spec_.microbatches) {
      return Invalid(s, i, absl::StrCat("micro-batch out of [0, ", spec_.microbatches, ")"));
    }
    if (in.chunk < 0 || in.chunk >= v_) {
      return Invalid(s, i, absl::StrCat("chunk out of [0, ", v_, ")"));
    }
    if (IsCompute(in.kind)) {
      if (in.peer_stage != -1) return Invalid(s, i, "a compute pass has peer_stage -1");
      return absl::OkStatus();
    }
    const int j = VirtualStage(s, in.chunk, p_);
    const bool downstream = in.kind == Kind::kSendActivation || in.kind == Kind::kRecvGrad;
    const int peer_virtual = downstream ? j + 1 : j - 1;
    if (peer_virtual < 0 || peer_virtual >= p_ * v_) {
      return Invalid(s, i, "no virtual stage on that side of this chunk");
    }
    const int peer = peer_virtual % p_;
    if (peer == s) return Invalid(s, i, "the neighbouring virtual stage is on this stage");
    if (in.peer_stage != peer) {
      return Invalid(s, i, absl::StrCat("the neighbouring virtual stage is on stage ", peer));
    }
    return absl::OkStatus();
  }

  // Runs instruction pc_[s] of stage s if it can run now; false when it waits on a receive.
  absl::StatusOr<bool> Step(int s) {
    const size_t i = pc_[s];
    const Instruction& in = lists_[s][i];
    const int j = VirtualStage(s, in.chunk, p_);
    const int last = p_ * v_ - 1;
    Slot& slot = SlotOf(s, in.microbatch, in.chunk);
    int64_t& now = clock_[s];
    switch (in.kind) {
      case Kind::kRecvActivation:
      case Kind::kRecvGrad: {
        const bool grad = in.kind == Kind::kRecvGrad;
        std::deque<SentMessage>& channel = Channel(in.peer_stage, s, grad);
        if (channel.empty()) return false;
        const SentMessage msg = channel.front();
        channel.pop_front();
        if (msg.microbatch != in.microbatch || msg.virtual_stage != j) {
          return Broken(s, i,
                        absl::StrCat("matches ", Where(in.peer_stage, msg.index),
                                     ", which is for another micro-batch or chunk"));
        }
        bool& have = grad ? slot.output_grad : slot.input;
        if (have) return Broken(s, i, "received twice");
        have = true;
        now = std::max(now, msg.time);
        break;
      }
      case Kind::kSendActivation:
      case Kind::kSendGrad: {
        const bool grad = in.kind == Kind::kSendGrad;
        if (grad ? !slot.backward : !slot.forward) {
          return Broken(s, i,
                        grad ? "sends a gradient its backward has not computed"
                             : "sends an activation its forward has not computed");
        }
        Channel(s, in.peer_stage, grad)
            .push_back({in.microbatch, grad ? j - 1 : j + 1, now, static_cast<int>(i)});
        break;
      }
      case Kind::kForward: {
        if (slot.forward) return Broken(s, i, "second forward");
        if (j > 0 && !slot.input) {
          return Broken(s, i, "its input activation has not been received");
        }
        slot.forward = true;
        // With one stage the next chunk is here: no send needed.
        if (j < last && p_ == 1) SlotOf(s, in.microbatch, in.chunk + 1).input = true;
        if (j == last) slot.output_grad = true;  // the loss
        result_.start[s][i] = now;
        now += cost_.forward;
        result_.stages[s].busy += cost_.forward;
        in_flight_[s]++;
        until_weight_[s]++;
        Peak(s);
        break;
      }
      case Kind::kBackward:
      case Kind::kBackwardInput: {
        if (slot.backward) return Broken(s, i, "second backward");
        if (!slot.forward) return Broken(s, i, "backward before its forward");
        if (!slot.output_grad) {
          return Broken(s, i, "its output gradient has not been received");
        }
        slot.backward = true;
        slot.split = in.kind == Kind::kBackwardInput;
        if (j > 0 && p_ == 1) SlotOf(s, in.microbatch, in.chunk - 1).output_grad = true;
        const int64_t c = slot.split ? cost_.backward_input : cost_.backward;
        result_.start[s][i] = now;
        now += c;
        result_.stages[s].busy += c;
        in_flight_[s]--;
        if (!slot.split) until_weight_[s]--;
        break;
      }
      case Kind::kBackwardWeight: {
        if (slot.weight) return Broken(s, i, "second weight pass");
        if (!slot.backward || !slot.split) {
          return Broken(s, i, "weight pass before its BackwardInput");
        }
        slot.weight = true;
        result_.start[s][i] = now;
        now += cost_.backward_weight;
        result_.stages[s].busy += cost_.backward_weight;
        until_weight_[s]--;
        break;
      }
    }
    if (!IsCompute(in.kind)) result_.start[s][i] = now;
    pc_[s]++;
    return true;
  }

  void Peak(int s) {
    StageStats& st = result_.stages[s];
    st.peak_in_flight = std::max(st.peak_in_flight, in_flight_[s]);
    st.peak_until_weight = std::max(st.peak_until_weight, until_weight_[s]);
  }

  absl::Status CheckFinished() {
    std::vector<std::string> stuck;
    for (int s = 0; s < p_; ++s) {
      if (pc_[s] < lists_[s].size()) {
        stuck.push_back(absl::StrCat(Where(s, pc_[s]), " waits forever"));
      }
    }
    if (!stuck.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("pipeline schedule deadlocks: ", absl::StrJoin(stuck, "; ")));
    }
    for (int from = 0; from < p_; ++from) {
      for (int to = 0; to < p_; ++to) {
        for (bool grad : {false, true}) {
          const std::deque<SentMessage>& channel = Channel(from, to, grad);
          if (!channel.empty()) {
            return absl::FailedPreconditionError(absl::StrCat(Where(from, channel.front().index),
                                                              ": never received (", channel.size(),
                                                              " unreceived on this channel)"));
          }
        }
      }
    }
    for (int s = 0; s < p_; ++s) {
      for (int mb = 0; mb < spec_.microbatches; ++mb) {
        for (int c = 0; c < v_; ++c) {
          const Slot& slot = SlotOf(s, mb, c);
          const char* missing = !slot.forward                ? "Forward"
                                : !slot.backward             ? "Backward"
                                : slot.split && !slot.weight ? "BackwardWeight"
                                                             : nullptr;
          if (missing != nullptr) {
            return absl::FailedPreconditionError(absl::StrCat(
                "stage ", s, " never runs ", missing, " of micro-batch ", mb, " chunk ", c));
          }
        }
      }
    }
    return absl::OkStatus();
  }

  SimulationResult Summarise() {
    for (int s = 0; s < p_; ++s) {
      TRIDENT_CHECK(in_flight_[s] == 0 && until_weight_[s] == 0)
          << "stage " << s << " ends with activations held";
      result_.stages[s].finish = clock_[s];
      result_.makespan = std::max(result_.makespan, clock_[s]);
      result_.total_compute += result_.stages[s].busy;
    }
    const double capacity = static_cast<double>(result_.makespan) * p_;
    const double idle = capacity - static_cast<double>(result_.total_compute);
    result_.bubble_fraction = capacity > 0 ? idle / capacity : 0;
    result_.bubble_ratio =
        result_.total_compute > 0 ? idle / static_cast<double>(result_.total_compute) : 0;
    return std::move(result_);
  }

  const ScheduleSpec spec_;
  const int p_;
  const int v_;
  const std::vector<std::vector<Instruction>>& lists_;
  const CostModel cost_;
  std::vector<Slot> slots_;
  std::vector<std::deque<SentMessage>> channels_;  // (from, to, activation|grad)
  std::vector<size_t> pc_;                         // next instruction of each stage
  std::vector<int64_t> clock_;                     // when each stage is free
  std::vector<int> in_flight_;
  std::vector<int> until_weight_;
  SimulationResult result_;
};

}  // namespace

absl::StatusOr<SimulationResult> Simulate(const ScheduleSpec& spec,
                                          const std::vector<std::vector<Instruction>>& stages,
                                          const CostModel& cost) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  if (static_cast<int>(stages.size()) != spec.stages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pipeline simulation: ", stages.size(), " instruction lists for ", spec.stages, " stages"));
  }
  if (cost.forward < 0 || cost.backward < 0 || cost.backward_input < 0 ||
      cost.backward_weight < 0) {
    return absl::InvalidArgumentError("pipeline simulation: negative cost");
  }
  return Simulator(spec, stages, cost).Run();
}

}  // namespace trident::pipeline
