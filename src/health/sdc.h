// Silent data corruption across data-parallel replicas (docs/fault-tolerance.md, "Silent data
// corruption"). After an optimizer step the replicas of the same parameters must be
// bit-identical; every K steps each rank hashes its replicated state (XXH3-64, DigestTensors),
// the ranks all-gather (replica set, digest), and JudgeReplicas names the ranks that disagree
// with a strict majority of their set. Without a majority (two replicas, or a tie) nobody is
// named by the digests alone: the runtime replays the steps since the last agreed state and
// names the rank that disagrees with its own replay (resilient.cc).
//
// The verdict goes to the coordinator like a peer's suspicion: a surviving rank of the set
// writes SdcKey(epoch, rank) (the reason); the coordinator declares that rank's member dead
// with FailureKind::kSilentDataCorruption, kills it and gives its slot to a spare.
//
// Pure functions; thread-compatible.
#ifndef TRIDENT_HEALTH_SDC_H_
#define TRIDENT_HEALTH_SDC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trident/tensor.h"

namespace trident::health {

// XXH3-64 over the bytes of `tensors` in order (one streaming hash; the tensor boundaries
// are part of it). kInvalidArgument for a tensor that is not in host memory.
absl::StatusOr<uint64_t> DigestTensors(const std::vector<Tensor>& tensors);

// One rank's entry of the all-gather: the replica set it belongs to (ranks with the same set
// must hold the same bytes) and its digest. set < 0: no replicated state (not checked).
struct ReplicaDigest {
  int64_t set = -1;
  uint64_t digest = 0;
};

struct ReplicaVerdict {
  // Ranks (indices into the all-gathered vector) whose digest differs from a strict
  // majority of their set: to be replaced.
  std::vector<int> odd;
  // Sets whose ranks disagree with no strict majority (two replicas, a tie): each entry is
  // the set's ranks. The runtime replays to decide.
  std::vector<std::vector<int>> undecided;
  // Replicas in the largest set that disagreed (for the log line); 0 when all agree.
  int replicas = 0;
  bool agree() const { return odd.empty() && undecided.empty(); }
};

ReplicaVerdict JudgeReplicas(const std::vector<ReplicaDigest>& all);

// Where a rank writes the verdict on a corrupt replica of epoch `epoch` (the reason), for
// the coordinator: <EpochPrefix(e)>job/sdc/<rank>.
std::string SdcPrefix(int64_t epoch);
std::string SdcKey(int64_t epoch, int rank);

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_SDC_H_
