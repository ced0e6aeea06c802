#include "trainable.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "options.h"
#include "trident/parallel/mesh.h"
#include "trident/status_macros.h"

namespace lm {

LmTrainable::LmTrainable(TrainerConfig config, int steps, int eval_every, bool elastic,
                         int threads)
    : config_(std::move(config)),
      steps_(steps),
      eval_every_(eval_every),
      elastic_(elastic),
      threads_(threads) {}

absl::Status LmTrainable::Bind(trident::Communicator& world, const trident::BindInfo& info) {
  world_ = &world;
  if (trainer_ != nullptr && !info.fresh) return trainer_->Rebuild(world);
  // A new trainer: at the start, or for a process whose state is not the job's. After a
  // shrink it joins a world with fewer dp replicas.
  const int shard_ranks = config_.tp * config_.pp;
  if (elastic_ && world.size() < shard_ranks * config_.dp && world.size() % shard_ranks == 0) {
    config_.dp = world.size() / shard_ranks;
  }
  trainer_.reset();
  absl::StatusOr<std::unique_ptr<Trainer>> created = Trainer::Create(world, config_);
  // A layout that does not divide the model or the batch is the user's to fix.
  if (absl::IsInvalidArgument(created.status())) UsageError(std::string(created.status().message()));
  TRIDENT_ASSIGN_OR_RETURN(trainer_, std::move(created));
  if (!said_start_) {
    Say(absl::StrFormat("start %s world=%d vocab=%d threads=%d", DescribeConfig(config_),
                        world.size(), trainer_->vocab_size(), threads_));
    said_start_ = true;
  }
  return absl::OkStatus();
}

absl::Status LmTrainable::Step() {
  if (skip_step_ > 0) trainer_->SkipWorldAllReduceAt(std::exchange(skip_step_, -1));
  if (wrong_op_step_ > 0) trainer_->WrongOpAtWorldAllReduce(std::exchange(wrong_op_step_, -1));
  TRIDENT_ASSIGN_OR_RETURN(StepStats st, trainer_->Step());
  const int64_t i = st.step;
  if (i == flip_step_) {
    flip_step_ = -1;  // once: a replay passes this step again
    std::fprintf(stderr, "lm-trainer: injecting a bit flip into %s after step %lld\n",
                 flip_tensor_.empty() ? "the first parameter" : flip_tensor_.c_str(),
                 static_cast<long long>(i));
    if (absl::Status s = trainer_->FlipBit(flip_tensor_); !s.ok()) UsageError(std::string(s.message()));
  }
  loss_ = st.loss;
  tokens_ += config_.batch;
  seconds_ += st.step_ms / 1e3;
  std::string val;
  if (i == 1 || i % eval_every_ == 0 || i == steps_) {
    TRIDENT_ASSIGN_OR_RETURN(val_loss_, trainer_->Evaluate());
    val = absl::StrFormat(" val_loss=%.6f", val_loss_);
  }
  Say(absl::StrFormat("step=%d loss=%.6f%s tokens_per_s=%.0f step_ms=%.2f comm_share=%.3f", i,
                      st.loss, val, st.tokens_per_s, st.step_ms,
                      st.step_ms > 0 ? std::max(0.0, 1.0 - st.compute_ms / st.step_ms) : 0.0));
  return absl::OkStatus();
}

std::string LmTrainable::Layout() const {
  const TrainerConfig& c = trainer_->config();
  return absl::StrCat("tp", c.tp, ".pp", c.pp, ".dp", c.dp, c.zero1 ? ".zero1" : "");
}

std::vector<std::vector<int>> LmTrainable::ShrinkGroups() const {
  if (!elastic_) return {};
  return DpReplicas(trainer_->config());
}

void LmTrainable::Say(const std::string& line) const {
  if (world_ == nullptr || world_->rank() != 0) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::vector<std::vector<int>> DpReplicas(const TrainerConfig& c) {
  auto mesh = trident::Mesh::Create(c.tp * c.pp * c.dp, {.tp = c.tp, .pp = c.pp, .dp = c.dp});
  if (!mesh.ok()) return {};  // the sizes were checked to be >= 1
  std::vector<std::vector<int>> replicas(c.dp);
  for (int r = 0; r < mesh->world_size(); ++r) replicas[mesh->CoordOf(r).dp].push_back(r);
  return replicas;
}

}  // namespace lm
