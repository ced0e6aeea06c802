// trident/parallel/pipeline.h: pipeline-parallel schedules as pure data. Generate() turns a
// ScheduleSpec into the ordered instruction list of every pipeline stage (compute passes and
// the sends and receives between neighbouring stages); Simulate() runs those lists against
// each other with unit costs to check them (no deadlock, every dependency met) and to measure
// the makespan, the bubble and the peak number of activations each stage holds.
//
// Nothing here communicates or allocates device memory: an executor walks a stage's list and
// issues the compute and the Communicator Send/Recv calls it names. Everything is a plain
// value; all functions are pure and thread-safe.
//
// Layout and conventions:
//  - "Stage" s (0 <= s < stages) is a pipeline rank. With the interleaved schedule each stage
//    holds `virtual_stages` (v) model chunks, and the model has stages*v virtual stages:
//    virtual stage j lives on stage j % stages as chunk j / stages (Megatron's layout), so
//    consecutive virtual stages are always on consecutive stages and the step from the last
//    stage's chunk c to stage 0's chunk c+1 is a real send. Without interleaving chunk is 0.
//  - Activations flow from virtual stage j to j+1, gradients from j+1 to j. The first virtual
//    stage reads its input from the data loader; the last one starts the backward pass from
//    its own forward output (the loss). With one stage no send or receive is ever needed.
//  - A receive sits immediately before the compute that consumes it and a send immediately
//    after the compute that produced it. Sends must be issued asynchronously (a stage never
//    waits for its peer to post the matching receive; it waits on the send's Work before
//    reusing the buffer), receives block. Sends and receives of one (sender, receiver, kind)
//    pair match in list order: the k-th SendActivation from s to s+1 is the k-th
//    RecvActivation of s+1 from s.
//
//   using namespace trident::pipeline;
//   auto lists = Generate({.schedule = Schedule::kOneFOneB, .stages = 4, .microbatches = 8});
//   for (const Instruction& in : (*lists)[my_stage]) Execute(in);  // the caller's executor
//   auto sim = Simulate({.schedule = Schedule::kOneFOneB, .stages = 4, .microbatches = 8},
//                       *lists);
//   // sim->bubble_ratio == 3.0 / 8: (p-1)/m
#ifndef TRIDENT_PARALLEL_PIPELINE_H_
#define TRIDENT_PARALLEL_PIPELINE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trident::pipeline {

enum class Schedule {
  // All forwards, then all backwards. Holds every micro-batch's activations (m per stage).
  kGPipe,
  // PipeDream-flush / Megatron 1F1B: stage s runs min(p-s-1, m) warm-up forwards, then
  // alternates one forward and one backward, then drains the remaining backwards. Same bubble
  // as GPipe, at most min(p-s, m) activations held on stage s.
  kOneFOneB,
  // Megatron's interleaved 1F1B over v chunks per stage (requires v >= 2 and m a multiple of
  // p): the bubble shrinks by a factor of v, at the cost of more activations held (see
  // Generate) and v times as many sends.
  kInterleaved1F1B,
  // ZB-H1 from Qi et al., "Zero Bubble Pipeline Parallelism" (ICLR 2024): 1F1B with the
  // backward split into B (input gradient, sent upstream at once) and W (weight gradient,
  // deferred to fill the drain bubble). Bubble (p-1)(F+B-W) instead of (p-1)(F+B+W), with the
  // same peak activation memory as 1F1B.
  kZeroBubbleH1,
};

// "gpipe", "1f1b", "interleaved", "zb-h1".
absl::string_view ScheduleName(Schedule schedule);
// Inverse of ScheduleName; kInvalidArgument naming the accepted values for anything else.
absl::StatusOr<Schedule> ParseSchedule(absl::string_view name);

enum class Kind {
  kForward,
  kBackward,        // full backward (input and weight gradients); every schedule but ZB-H1
  kBackwardInput,   // ZB-H1 "B": input gradient only; on the critical path
  kBackwardWeight,  // ZB-H1 "W": weight gradient of a micro-batch whose B has run
  kSendActivation,  // forward output of (microbatch, chunk) to the next virtual stage
  kRecvActivation,  // forward input of (microbatch, chunk) from the previous virtual stage
  kSendGrad,        // input gradient of (microbatch, chunk) to the previous virtual stage
  kRecvGrad,        // output gradient of (microbatch, chunk) from the next virtual stage
};

// "Forward", "Backward", "BackwardInput", ..., "RecvGrad".
absl::string_view KindName(Kind kind);
bool IsCompute(Kind kind);  // kForward .. kBackwardWeight
bool IsSend(Kind kind);
bool IsRecv(Kind kind);

struct Instruction {
  Kind kind = Kind::kForward;
  int microbatch = 0;
  // The chunk on this stage the instruction belongs to: for a send, the chunk whose compute
  // produced the data; for a receive, the chunk whose compute consumes it. 0 unless
  // interleaved.
  int chunk = 0;
  // For sends and receives, the stage sent to or received from; -1 for compute.
  int peer_stage = -1;

  friend bool operator==(const Instruction& a, const Instruction& b) {
    return a.kind == b.kind && a.microbatch == b.microbatch && a.chunk == b.chunk &&
           a.peer_stage == b.peer_stage;
  }
  friend bool operator!=(const Instruction& a, const Instruction& b) { return !(a == b); }
};

// "Forward(mb 3, chunk 1)", "SendActivation(mb 3, chunk 1, to stage 2)".
std::string ToString(const Instruction& instruction);

struct ScheduleSpec {
  Schedule schedule = Schedule::kOneFOneB;
  int stages = 1;          // p: pipeline stages (ranks)
  int microbatches = 1;    // m: micro-batches per training step
  int virtual_stages = 1;  // v: model chunks per stage; >= 2 for interleaved, else 1
};

// The virtual stage of `chunk` on `stage` (Megatron's layout, see above).
inline constexpr int VirtualStage(int stage, int chunk, int stages) {
  return chunk * stages + stage;
}

// OK, or kInvalidArgument saying which field is wrong: stages < 1, microbatches < 1,
// virtual_stages != 1 without interleaving, interleaved with virtual_stages < 2 or
// microbatches not a multiple of stages, or more than 2^20 forwards per stage (m*v) or 2^16
// virtual stages (p*v).
absl::Status ValidateSpec(const ScheduleSpec& spec);

// The instruction list of every stage (element s is stage s), in execution order. Each
// (micro-batch, chunk) gets exactly one Forward and one Backward, or one BackwardInput and
// one BackwardWeight with ZB-H1. Peak activations held (forwards whose B has not run) on
// stage s: GPipe m; 1F1B and ZB-H1 min(p-s, m); interleaved min(2(p-s-1) + (v-1)p + 1, m*v)
// chunk activations (each 1/v of a stage's layers). ZB-H1 keeps up to min(p, m) micro-batches
// whose W has not run on every stage, which is 1F1B's peak (stage 0's).
// Errors: those of ValidateSpec.
absl::StatusOr<std::vector<std::vector<Instruction>>> Generate(const ScheduleSpec& spec);

// --- Analysis ----------------------------------------------------------------------------

// Cost of each compute pass in abstract time units; communication is free. The defaults are
// the usual unit costs: a full backward costs two forwards, ZB-H1 splits it into B = W = 1.
// Costs are per instruction, i.e. per chunk: with interleaving a chunk holds 1/v of a stage's
// layers, so divide by v to compare makespans across schedules (ratios need no scaling).
struct CostModel {
  int64_t forward = 1;
  int64_t backward = 2;
  int64_t backward_input = 1;
  int64_t backward_weight = 1;
};

struct StageStats {
  int64_t busy = 0;    // total compute time
  int64_t finish = 0;  // time its last instruction ends
  // Most (micro-batch, chunk) pairs at once whose forward has run and whose backward (B
  // with ZB-H1) has not: the activations the stage holds.
  int peak_in_flight = 0;
  // Same, counting until the weight gradient has run (W with ZB-H1; equals peak_in_flight for
  // the other schedules): what ZB-H1's W still needs.
  int peak_until_weight = 0;
};

struct SimulationResult {
  int64_t makespan = 0;       // when the last stage finishes; every stage starts at 0
  int64_t total_compute = 0;  // sum of busy over the stages
  // Idle share of the stages' time: (makespan*p - total_compute) / (makespan*p). GPipe and
  // 1F1B: (p-1)/(m+p-1).
  double bubble_fraction = 0;
  // Idle time over compute time, (makespan*p - total_compute) / total_compute: the
  // convention of the Megatron and Zero Bubble papers. GPipe and 1F1B: (p-1)/m; interleaved:
  // (p-1)/(v*m); ZB-H1 (m >= p): (p-1)/(3m). bubble_fraction = r / (1 + r).
  double bubble_ratio = 0;
  std::vector<StageStats> stages;
  // start[s][i]: when instruction i of stage s starts (sends and receives take no time).
  std::vector<std::vector<int64_t>> start;
};

// Runs the stages' instruction lists against each other: a stage executes its list in order,
// a compute takes its cost, a send takes no time and never blocks, a receive waits until the
// matching send has been issued. Also checks the data dependencies of every compute (its
// input received or produced on this stage, its forward done before its backward, B before
// W) and that every (micro-batch, chunk) gets all its passes exactly once.
// Errors: kInvalidArgument for a malformed list (wrong number of stages, micro-batch, chunk or
// peer out of range, a send to a stage that is not the neighbour); kFailedPrecondition for a
// list that cannot run: a deadlock (naming each stuck stage and the receive it waits on), a
// receive matched to a send of another micro-batch or chunk, a compute whose input is
// missing, a duplicate or missing pass, a send nobody receives.
absl::StatusOr<SimulationResult> Simulate(const ScheduleSpec& spec,
                                          const std::vector<std::vector<Instruction>>& stages,
                                          const CostModel& cost = {});

}  // namespace trident::pipeline

#endif  // TRIDENT_PARALLEL_PIPELINE_H_
