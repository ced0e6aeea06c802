// LmTrainable: lm::Trainer as a trident::Trainable, so that trident::RunResilient runs it
// through failures. It makes the Trainer on the first Bind (and again for a process whose
// state is not the job's), rebinds it to every new world, evaluates on the chosen steps and
// prints rank 0's step lines.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_TRAINABLE_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_TRAINABLE_H_

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "trainer.h"
#include "trident/resilient.h"

namespace lm {

class LmTrainable : public trident::Trainable {
 public:
  // `elastic`: the dp replicas may leave the world (ShrinkGroups); the world may then be
  // smaller than tp x pp x dp.
  // `threads`: OpenBLAS threads, shown in the start line.
  LmTrainable(TrainerConfig config, int steps, int eval_every, bool elastic, int threads);

  absl::Status Bind(trident::Communicator& world, const trident::BindInfo& info) override;
  std::vector<trident::Communicator*> Groups() override { return trainer_->groups(); }
  absl::Status Step() override;
  int64_t step() const override { return trainer_ ? trainer_->step() : 0; }
  bool dirty() const override { return trainer_ && trainer_->dirty(); }
  trident::CheckpointState SaveState() override { return trainer_->CheckpointState(); }
  std::vector<trident::TensorRequest> RestoreRequests() override {
    return trainer_->RestoreRequests();
  }
  void SetRestoredStep(int64_t step) override { trainer_->SetRestoredStep(step); }
  void ResetToInitialState() override { trainer_->ResetToInitialState(); }
  std::string Layout() const override;
  std::vector<std::vector<int>> ShrinkGroups() const override;
  Replicas ReplicatedState() override {
    // Without ZeRO-1 the parameters and moments are the whole state: a replaced rank copies
    // them from a healthy replica; ZeRO-1's moment shards come from the checkpoint.
    return {.set = trainer_->ReplicaSet(), .tensors = trainer_->ReplicatedTensors(),
            .complete = !trainer_->config().zero1};
  }
  // --inject-fault MEMBER:STEP:BITFLIP[:TENSOR]: right after step `step` (once), one bit of
  // parameter `tensor` ("" the first) flips on this rank.
  void FlipBitAfter(int64_t step, std::string tensor) {
    flip_step_ = step;
    flip_tensor_ = std::move(tensor);
  }

  // --inject-fault MEMBER:STEP:SKIP_COLLECTIVE: step `step` (once) skips its world all-reduce.
  void SkipCollectiveAt(int64_t step) { skip_step_ = step; }
  // --inject-fault MEMBER:STEP:WRONG_OP: step `step` (once) all-gathers instead.
  void WrongOpAt(int64_t step) { wrong_op_step_ = step; }

  const Trainer& trainer() const { return *trainer_; }
  // Rank 0's logfmt lines (stdout); other ranks print nothing.
  void Say(const std::string& line) const;
  // The last step's loss and validation loss, and the mean tokens/s so far.
  double loss() const { return loss_; }
  double val_loss() const { return val_loss_; }
  double mean_tokens_per_s() const { return seconds_ > 0 ? tokens_ / seconds_ : 0.0; }

 private:
  TrainerConfig config_;
  const int steps_;
  const int eval_every_;
  const bool elastic_;
  const int threads_;
  bool said_start_ = false;
  trident::Communicator* world_ = nullptr;
  std::unique_ptr<Trainer> trainer_;
  int64_t flip_step_ = -1;
  std::string flip_tensor_;
  int64_t skip_step_ = -1;
  int64_t wrong_op_step_ = -1;
  double loss_ = NAN, val_loss_ = NAN, tokens_ = 0, seconds_ = 0;
};

// The ranks of each dp replica of a layout (for ShrinkGroups and Runtime's launch groups).
std::vector<std::vector<int>> DpReplicas(const TrainerConfig& c);

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_TRAINABLE_H_
