// The restore: the collective that brings every rank of a new epoch (or of a resumed job) to
// the same committed state. Used by the resilient loop (resilient.cc); see
// docs/fault-tolerance.md, "Restore".
//
//  1. rank 0 lists the committed checkpoints from the one `latest` names back, newest first,
//     and broadcasts them;
//  2. ranks all-gather what they have (RankState): the peer replica they hold (whose, which
//     step), the steps they completed, whether their state is fresh or dirty;
//  3. with S the newest checkpoint: a fresh rank gets its state from the rank that holds its
//     replica of step S (source=peer), else reads checkpoint S (source=checkpoint); survivors
//     that are ahead of S or dirty read checkpoint S;
//  4. every rank's outcome is all-gathered: when some rank could not load S because it is
//     corrupt or missing (kDataLoss), every rank goes on to the next older checkpoint, and
//     the report says which steps were skipped and why; any other error fails the restore on
//     every rank, naming the rank;
//  5. with no committed checkpoint, every rank goes back to the initial state (source=init).
//
// Before 3: when every rank that is not fresh is at the same step V, clean, and its state
// passed the replica check at V (`verified`), and every fresh rank's state is complete in its
// replica set (Trainable::Replicas::complete) with such a rank in the same set, each fresh
// rank copies that replica's state from its memory and checks it against the agreed digest:
// nobody goes back (source=replica). Any failure of that falls through to the checkpoints.
// A state loaded from a checkpoint whose manifest holds the replicas' digests (and this
// run's layout) is hashed and compared: a mismatch is kDataLoss for that checkpoint.
#ifndef TRIDENT_RUNTIME_RESTORE_H_
#define TRIDENT_RUNTIME_RESTORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/resilient.h"

namespace trident::runtime_internal {

struct RestoreResult {
  int64_t step = 0;           // S: every rank is there now
  int64_t steps_redone = 0;   // the most steps a survivor had completed, minus S
  std::string source;         // of the fresh ranks' state: "peer", "checkpoint", "init", "none"
  int64_t peer_bytes = 0;     // the largest replica fetched from a peer (every rank knows)
  double peer_ms = 0;         // and its time
  std::vector<std::string> skipped;  // "step 30: rank 2: DATA_LOSS: ..."
};

// Collective over `world`. `dir`: the checkpoints (empty: none). `fresh`: this rank's state is
// not the job's. `held`: the peer replica this rank held in the previous epoch (may be null).
// `reset_if_none`: with no checkpoint, go back to the initial state (a recovery) rather than
// keep the state (a resume at the start). Errors: the communicator's (a rank died meanwhile:
// recover again); kDataLoss when no committed checkpoint loads; another rank's load error
// with its code, naming the rank.
absl::StatusOr<RestoreResult> Restore(Communicator& world, Trainable& trainer,
                                      const std::string& dir, bool fresh,
                                      std::shared_ptr<const PeerReplica> held,
                                      bool reset_if_none, int64_t verified = -1);

}  // namespace trident::runtime_internal

#endif  // TRIDENT_RUNTIME_RESTORE_H_
