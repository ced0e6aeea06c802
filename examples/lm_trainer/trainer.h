// The lm-trainer's training loop over a tp x pp x dp mesh: the model's chunks on this rank,
// the pipeline schedule with micro-batches, gradient bucketing (or ZeRO-1) over dp, and Adam.
//
//   ASSIGN_OR_RETURN(auto trainer, lm::Trainer::Create(*world, config));
//   for (int i = 0; i < steps; ++i) {
//     ASSIGN_OR_RETURN(lm::StepStats st, trainer->Step());   // collective over the world
//   }
//   ASSIGN_OR_RETURN(double val, trainer->Evaluate());        // collective over the world
//
// Every layout and schedule computes the same function: step s draws global samples
// [0, batch) from the corpus by (seed, s, index); dp rank d takes samples
// [d*batch/dp, (d+1)*batch/dp) and cuts them into `microbatches` consecutive micro-batches;
// the loss is the mean over the global batch. Only the order of floating-point sums differs.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_TRAINER_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_TRAINER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/parallel/pipeline.h"

namespace lm {

struct TrainerConfig {
  int tp = 1, pp = 1, dp = 1;  // their product is the world size
  trident::pipeline::Schedule schedule = trident::pipeline::Schedule::kOneFOneB;
  int microbatches = 4;    // per dp rank and step
  int virtual_stages = 2;  // model chunks per pipeline stage, interleaved schedule only
  int batch = 256;         // global batch: predicted characters per step
  float lr = 3e-3f;        // Adam (beta1 0.9, beta2 0.999, eps 1e-8)
  bool zero1 = false;      // shard the optimizer over dp (ZeRO-1) instead of all-reducing
  size_t bucket_bytes = 1u << 20;  // gradient bucket size without ZeRO-1
  int val_samples = 2048;  // validation characters per Evaluate
  ModelConfig model;       // vocab is filled from the corpus
  std::string data_path;   // empty: the built-in corpus
  absl::Duration timeout = absl::ZeroDuration();  // per op; zero: the communicator's
};

struct StepStats {
  int64_t step = 0;          // 1-based
  double loss = 0;           // mean cross-entropy over the global batch (nats)
  double step_ms = 0;        // wall time of the step
  double compute_ms = 0;     // of which this rank computed (the rest: waiting on comm)
  double tokens_per_s = 0;   // global batch / step time
};

class Trainer {
 public:
  // Collective over `world` (builds the mesh groups). kInvalidArgument when the layout does not
  // divide the world, the batch, the micro-batches, the layers or the ffn width; the message
  // says which.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(trident::Communicator& world,
                                                        const TrainerConfig& config);
  ~Trainer();

  // Runs the next training step. Collective over the world. On error every group of this rank
  // is aborted with the error (so that peers fail fast) and the trainer is unusable.
  absl::StatusOr<StepStats> Step();
  // Mean validation cross-entropy over `val_samples` fixed characters; collective.
  absl::StatusOr<double> Evaluate();

  // After a recovery: rebinds to the new epoch's world, rebuilding the mesh groups, the
  // bucketer or ZeRO-1 and dropping any half-done step; parameters, optimizer state and the
  // step count are kept. The world may have another dp (a shrink: the global batch stays,
  // each replica takes more of it; with ZeRO-1 the state becomes dirty, to be restored), but
  // this rank keeps its tp and pp place (kInvalidArgument otherwise). Collective.
  absl::Status Rebuild(trident::Communicator& world);
  // The tp, pp and dp communicators of the current world (for Runtime::SetGroups).
  std::vector<trident::Communicator*> groups();

  // Checkpointing: every parameter and Adam moment this rank holds, with its place in the
  // global tensor (so that another layout can load it), and "step=S ..." as metadata. The
  // tensors point into the trainer: valid until the next Step.
  trident::CheckpointState CheckpointState();
  // Requests that fill this rank's parameters and moments (from LoadCheckpoint or a peer
  // replica); once they are filled, SetRestoredStep(the state's step).
  std::vector<trident::TensorRequest> RestoreRequests();
  void SetRestoredStep(int64_t step);
  // Back to step 0: the initial weights (they depend only on the seed) and zero moments.
  void ResetToInitialState();

  // Completed steps. dirty(): a step failed after it may have changed parameters or moments,
  // so the state is not that of step(); restore before going on.
  int64_t step() const { return step_; }
  bool dirty() const { return dirty_; }

  // Silent-data-corruption check (trident::Trainable::ReplicatedState): what every dp
  // replica of this rank's (tp, pp) place holds identically after a step: the parameters,
  // and the Adam moments unless ZeRO-1 shards them; and that place's index.
  std::vector<trident::Tensor> ReplicatedTensors();
  int64_t ReplicaSet() const;
  // --inject-fault ...:BITFLIP[:TENSOR]: flips bit 20 of the first element of parameter
  // `name` (empty: the first parameter). kNotFound names the parameters there are.
  absl::Status FlipBit(const std::string& name);
  const TrainerConfig& config() const { return config_; }
  int vocab_size() const { return config_.model.vocab; }
  // --inject-fault ...:SKIP_COLLECTIVE: step `step` skips its world all-reduce of the loss
  // (once) and goes on to the next step's dp collectives: a rank that skips a collective.
  void SkipWorldAllReduceAt(int64_t step) { skip_world_allreduce_step_ = step; }
  // --inject-fault ...:WRONG_OP: step `step` calls a world all-gather (once) where the others
  // call the all-reduce of the loss: a rank that calls a different op.
  void WrongOpAtWorldAllReduce(int64_t step) { wrong_op_step_ = step; }

 private:
  struct State;
  Trainer(trident::Communicator& world, const TrainerConfig& config);
  absl::Status Init();
  absl::Status BindGroups();
  absl::StatusOr<StepStats> RunStep();
  absl::Status Fail(absl::Status status);
  int64_t skip_world_allreduce_step_ = -1;
  int64_t wrong_op_step_ = -1;
  trident::TensorPlacement PlacementOf(const Param& p) const;
  std::string Zero1Name(const char* which) const;
  size_t MomentOffset(const Param& p) const;

  trident::Communicator* world_;
  TrainerConfig config_;
  int64_t step_ = 0;
  bool dirty_ = false;
  std::unique_ptr<State> state_;
};

// "tp=2 pp=2 dp=2 schedule=1f1b microbatches=4 batch=256 ...": the config in logfmt.
std::string DescribeConfig(const TrainerConfig& config);

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_TRAINER_H_
