#include "recovery.h"

#include <algorithm>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lm {
namespace {

using trident::Communicator;
using trident::Tensor;

absl::Status Wait(const std::shared_ptr<trident::Work>& work) { return work->Wait(); }

// Loads checkpoint `step` into the trainer; names the likely cause of a missing tensor.
absl::Status LoadInto(const std::string& dir, int64_t step, Trainer& trainer) {
  std::vector<trident::TensorRequest> requests = trainer.RestoreRequests();
  absl::StatusOr<trident::LoadResult> loaded = trident::LoadCheckpoint(dir, step, requests);
  if (!loaded.ok()) {
    absl::Status s = loaded.status();
    if (absl::IsNotFound(s) && absl::StrContains(s.message(), "adam")) {
      return absl::FailedPreconditionError(absl::StrCat(
          s.message(), " (a checkpoint saved with --zero1 loads only with --zero1 and the same "
                       "--tp and --pp; one saved without it loads only without it)"));
    }
    return s;
  }
  trainer.SetRestoredStep(loaded->step);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EpochCheckpointer> MakeCheckpointer(Communicator& world,
                                                   const CheckpointSettings& settings,
                                                   const TrainerConfig& config, int64_t epoch) {
  EpochCheckpointer out;
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, world.Split(0, world.rank()));
  out.comm = std::move(comm);
  trident::CheckpointOptions options;
  options.dir = settings.dir;
  options.comm = out.comm;
  options.keep_last = settings.keep;
  options.peer_replicas = settings.peer_replicas;
  options.epoch = epoch;
  options.layout = absl::StrCat("tp", config.tp, ".pp", config.pp, ".dp", config.dp,
                                config.zero1 ? ".zero1" : "");
  options.commit_timeout = config.timeout;
  ASSIGN_OR_RETURN(out.engine, trident::CheckpointEngine::Create(std::move(options)));
  return out;
}

absl::StatusOr<RestoreReport> RestoreAfterFailure(Communicator& world, Trainer& trainer,
                                                  const std::string& dir, bool fresh,
                                                  std::shared_ptr<const trident::PeerReplica> held) {
  const int n = world.size();
  const int me = world.rank();
  // 1. S, as rank 0 sees it.
  int64_t s_step = -1;
  if (me == 0 && !dir.empty()) {
    absl::StatusOr<int64_t> latest = trident::LatestCheckpointStep(dir);
    if (latest.ok()) {
      s_step = *latest;
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    }
  }
  Tensor s_tensor = Tensor::Of(&s_step, 1);
  RETURN_IF_ERROR(Wait(world.Broadcast(s_tensor, 0)));

  // 2. Who holds what: [held replica's owner, its step, completed steps, needs state].
  const bool needs = fresh || trainer.dirty() || trainer.step() != s_step;
  int64_t mine[4] = {held ? held->owner_rank() : -1, held ? held->step() : -1,
                     fresh ? -1 : trainer.step(), needs ? 1 : 0};
  std::vector<int64_t> all(static_cast<size_t>(4) * n);
  RETURN_IF_ERROR(Wait(world.AllGather(Tensor::Of(mine, 4), Tensor::Of(all.data(), 4 * n))));

  RestoreReport report;
  report.step = s_step;
  report.source = "none";
  int64_t ahead = s_step;
  for (int r = 0; r < n; ++r) ahead = std::max(ahead, all[4 * r + 2]);
  report.steps_redone = std::max<int64_t>(0, ahead - s_step);

  if (s_step < 0) {
    // No committed checkpoint yet: the initial state (a function of the seed) is step 0's.
    trainer.ResetToInitialState();
    report.step = s_step = 0;
    report.steps_redone = ahead;
    report.source = "init";
  }
  for (int r = 0; r < n && report.source != "init"; ++r) {
    if (all[4 * r + 3] == 0) continue;
    const bool was_fresh = all[4 * r + 2] < 0;
    int holder = -1;
    for (int h = 0; h < n && was_fresh; ++h) {
      if (h != r && all[4 * h] == r && all[4 * h + 1] == s_step) holder = h;
    }
    if (holder >= 0) {
      if (me == holder) RETURN_IF_ERROR(trident::SendPeerReplica(world, r, *held));
      if (me == r) {
        const absl::Time t0 = absl::Now();
        ASSIGN_OR_RETURN(std::shared_ptr<trident::PeerReplica> replica,
                         trident::FetchPeerReplica(world, holder));
        report.peer_transfer_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        RETURN_IF_ERROR(replica->Restore(trainer.RestoreRequests()));
        trainer.SetRestoredStep(replica->step());
        report.bytes_from_peer = static_cast<int64_t>(replica->bytes());
      }
      if (was_fresh) report.source = "peer";
    } else {
      if (me == r) RETURN_IF_ERROR(LoadInto(dir, s_step, trainer));
      if (was_fresh && report.source != "peer") report.source = "checkpoint";
    }
  }
  // Every rank agrees on where it is now.
  int64_t step = trainer.step();
  int64_t lo = step, hi = step;
  RETURN_IF_ERROR(Wait(world.AllReduce(Tensor::Of(&lo, 1), Tensor::Of(&lo, 1), trident::ReduceOp::kMin)));
  RETURN_IF_ERROR(Wait(world.AllReduce(Tensor::Of(&hi, 1), Tensor::Of(&hi, 1), trident::ReduceOp::kMax)));
  if (lo != s_step || hi != s_step) {
    return absl::InternalError(absl::StrCat("after the restore the ranks are at steps ", lo,
                                            " to ", hi, ", not all at ", s_step));
  }
  return report;
}

absl::StatusOr<int64_t> ResumeFromCheckpoint(const std::string& dir, Trainer& trainer) {
  absl::StatusOr<int64_t> latest = trident::LatestCheckpointStep(dir);
  if (absl::IsNotFound(latest.status())) return 0;
  RETURN_IF_ERROR(latest.status());
  RETURN_IF_ERROR(LoadInto(dir, *latest, trainer));
  return *latest;
}

}  // namespace lm
