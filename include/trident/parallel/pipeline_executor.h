// trident/parallel/pipeline_executor.h: runs one stage's share of a pipeline schedule
// (pipeline.h's Generate()) for one training step: calls the model's compute callbacks and
// issues the Send/Recv between neighbouring stages on the pipeline group.
//
//  - Consecutive sends and receives of the schedule go out as one Communicator::SendRecv
//    batch (on NCCL one group, so that neighbouring stages that both send and receive never
//    wait for each other). A batch of sends only is asynchronous: it keeps its buffers alive
//    until its Work completes, and all are waited on before RunSchedule returns. A batch with
//    receives blocks before the compute that consumes them.
//  - Tags encode (kind: activation or gradient, micro-batch, sender's chunk), so messages can
//    never be mixed up however they are matched.
//  - With one stage (p == 1) chunks pass activations and gradients locally (interleaved only).
//  - The executor owns the activation/gradient buffers (one per (micro-batch, chunk) in
//    flight, allocated per step, activation_shape x dtype, zero-initialised).
//  - Errors: the first failing callback or communication op stops the step; its status is
//    returned with its code, annotated "pipeline stage s, <instruction>: ...". The executor
//    does not abort the communicator; callers that want peers to fail fast call
//    pp_group->Abort(status) (peers otherwise fail at `timeout`).
//
//   pipeline::ExecutorOptions opts{.spec = spec, .stage = pp->rank(), .pp_group = pp.get(),
//                                  .activation_shape = {batch, hidden}};
//   absl::Status s = pipeline::RunSchedule(opts, callbacks);
#ifndef TRIDENT_PARALLEL_PIPELINE_EXECUTOR_H_
#define TRIDENT_PARALLEL_PIPELINE_EXECUTOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/parallel/pipeline.h"
#include "trident/tensor.h"

namespace trident::pipeline {

struct StageCallbacks {
  // Forward of (micro-batch, chunk). `input` is the received activation (null on the first
  // virtual stage, which reads its data loader); `output` is the activation to send (null on
  // the last virtual stage). Both buffers are owned by the executor and valid during the call.
  std::function<absl::Status(int mb, int chunk, const Tensor* input, Tensor* output)> forward;
  // Full backward (or B for ZB-H1). `grad_output` is null on the last virtual stage (the loss
  // starts the backward), `grad_input` null on the first virtual stage.
  std::function<absl::Status(int mb, int chunk, const Tensor* grad_output, Tensor* grad_input)>
      backward;
  // W for ZB-H1; unused by other schedules.
  std::function<absl::Status(int mb, int chunk)> backward_weight;
};

struct ExecutorOptions {
  ScheduleSpec spec;
  int stage = 0;                       // this rank's pipeline stage
  Communicator* pp_group = nullptr;    // pipeline group; group rank == stage
  std::vector<int64_t> activation_shape;  // shape of activations and their gradients
  DType dtype = DType::kF32;
  // Deadline of every Send/Recv (and of waiting on it); zero: the communicator's default.
  absl::Duration timeout = absl::ZeroDuration();
};

// Runs one step (all micro-batches) of this stage's schedule.
// Errors: kInvalidArgument for a bad spec, stage, group (size != stages, rank != stage) or a
// missing callback; otherwise the first failing callback's or op's status, annotated.
absl::Status RunSchedule(const ExecutorOptions& options, const StageCallbacks& callbacks);

}  // namespace trident::pipeline

#endif  // TRIDENT_PARALLEL_PIPELINE_EXECUTOR_H_
