// lm-trainer's checkpoints and its recovery after a failure: the checkpoint engine of one
// epoch, and the collective that brings every rank of a new epoch to the same state.
//
// After Runtime::Recover built the new world and the trainer rebound to it, every rank calls
// RestoreAfterFailure:
//  1. rank 0 names S, the last committed checkpoint (`latest`), and broadcasts it;
//  2. ranks all-gather what they have: the peer replica they hold (whose, which step), the
//     steps they completed, whether their state is fresh (a promoted spare) or dirty (a step
//     failed half-way);
//  3. a fresh rank gets its state from the rank that holds its replica of step S (sent over
//     the new world, source=peer), else reads it from checkpoint S (source=checkpoint);
//  4. survivors that are ahead of S or dirty roll back by reading checkpoint S;
//  5. everyone is at step S and training goes on from S+1.
// With no committed checkpoint yet, S is 0: every rank goes back to the initial weights (a
// function of the seed), source=init.
#ifndef TRIDENT_EXAMPLES_LM_TRAINER_RECOVERY_H_
#define TRIDENT_EXAMPLES_LM_TRAINER_RECOVERY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "trainer.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"

namespace lm {

struct CheckpointSettings {
  std::string dir;        // empty: no checkpoints
  int every = 0;          // save every N steps; 0: never
  int keep = 3;           // committed checkpoints kept (0: all)
  bool peer_replicas = true;
};

// The checkpoint engine of one epoch, on a communicator split from that epoch's world.
struct EpochCheckpointer {
  std::shared_ptr<trident::Communicator> comm;
  std::unique_ptr<trident::CheckpointEngine> engine;
};
// Collective over `world`.
absl::StatusOr<EpochCheckpointer> MakeCheckpointer(trident::Communicator& world,
                                                   const CheckpointSettings& settings,
                                                   const TrainerConfig& config, int64_t epoch);

struct RestoreReport {
  int64_t step = 0;           // S: every rank is there now
  int64_t steps_redone = 0;   // the most steps a survivor had completed, minus S
  std::string source;         // of the fresh ranks' state: "peer", "checkpoint", "init", "none"
  int64_t bytes_from_peer = 0;  // on the rank that fetched a replica (0 elsewhere)
  double peer_transfer_ms = 0;  // the fetch, on that rank
};

// Collective over `world` (see above). `fresh`: this rank's state is not the job's (a promoted
// spare). `held`: the peer replica this rank held in the previous epoch (may be null).
// Errors: the communicator's (a rank died meanwhile: recover again), the loader's (kDataLoss
// naming file and tensor, ...).
absl::StatusOr<RestoreReport> RestoreAfterFailure(trident::Communicator& world, Trainer& trainer,
                                                  const std::string& dir, bool fresh,
                                                  std::shared_ptr<const trident::PeerReplica> held);

// --resume: every rank loads the latest committed checkpoint of `dir` (any layout) and sets
// the trainer to its step. Returns that step, or 0 when `dir` has no checkpoint yet.
absl::StatusOr<int64_t> ResumeFromCheckpoint(const std::string& dir, Trainer& trainer);

}  // namespace lm

#endif  // TRIDENT_EXAMPLES_LM_TRAINER_RECOVERY_H_
