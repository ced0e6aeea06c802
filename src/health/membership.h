// Membership of a job across epochs, and the store keys the agent (trident-run), the ranks
// (Runtime) and the communicators use to agree on it (DESIGN.md, "Recovery, step by step").
//
// Members are processes, named by trident-run: "w0".."w{N-1}" start as workers, "s0".. as
// spares. Ranks are slots: epoch e's membership maps every rank to the member that holds it.
// Epoch 1 is the launch; each recovery publishes epoch e+1, in which each failed rank's slot
// is held by a spare. Every communicator of epoch e keeps its store keys under
// EpochPrefix(e), so nothing of an old epoch (a late message, a failure record) can reach
// the new one.
//
// Keys (all under the job's store):
//   job/epoch                  the current epoch (absent: 1)
//   job/membership/<e>         Membership::ToJson() of epoch e (e >= 2; epoch 1 is implicit)
//   job/heartbeat/<member>     a counter each live member increments every TRIDENT_HEARTBEAT_MS
//   job/spare/<member>         set by a spare that is initialised and waiting in the pool
//   job/stalled/<member>       why a live member stopped its heartbeat (its training thread
//                              made no progress: Heartbeat's stall check)
//   <EpochPrefix(e)>job/suspect_rank/<rank>/<reporter>   set by rank <reporter> whose
//                              transport saw an error from <rank> (the cause); the agent makes
//                              its member suspect, and a second reporter confirms it
//   job/rebuild/<e>            set by a rank whose build of epoch e's world failed (the
//                              cause) though no rank died: the agent publishes epoch e + 1
//                              with the same ranks, so that every rank builds again together
//   job/done                   set by the agent when the job is over: idle spares exit
//   <EpochPrefix(e)>job/shrink_groups   set by rank 0 of a trainer that can go on with fewer
//                              ranks (lm-trainer --elastic-dp): JSON [[rank, ...], ...], the
//                              groups of epoch e's ranks that may leave together (its dp
//                              replicas); see PublishShrunkEpoch
//   <EpochPrefix(e)>job/failed/<rank>   the cause, for epoch e's communicators to fail fast
#ifndef TRIDENT_HEALTH_MEMBERSHIP_H_
#define TRIDENT_HEALTH_MEMBERSHIP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/failure.h"
#include "trident/store.h"

namespace trident::health {

inline constexpr char kEpochKey[] = "job/epoch";
inline constexpr char kDoneKey[] = "job/done";
std::string MembershipKey(int64_t epoch);
std::string HeartbeatKey(absl::string_view member);
// HeartbeatKey's value once the member called Runtime::Finish (a counter otherwise).
inline constexpr char kFinishedBeat[] = "finished";
std::string SpareKey(absl::string_view member);
std::string StalledKey(absl::string_view member);
// The prefix of epoch e's suspicion reports; the key of one.
std::string SuspectPrefix(int64_t epoch);
std::string SuspectKey(int64_t epoch, int rank, int reporter);
// "" for epoch 1 (so that programs that know nothing of epochs see the usual keys),
// "epoch/<e>/" after.
std::string EpochPrefix(int64_t epoch);
// Where epoch e's communicators look for failed ranks.
std::string FailedKey(int64_t epoch, int rank);
std::string ShrinkGroupsKey(int64_t epoch);
std::string RebuildRequestKey(int64_t epoch);

std::string WorkerId(int index);  // "w3"
std::string SpareId(int index);   // "s0"

// A failed rank: its structured cause (kind, signal, exit status, reporter) and a sentence
// for people; when the agent last saw it alive and gave the verdict (its clock, Unix ms).
using Failure = FailedRank;

struct Membership {
  int64_t epoch = 1;
  std::vector<std::string> ranks;  // rank -> member
  std::vector<Failure> failures;   // what ended the previous epoch; empty in epoch 1
  // Live members that held a rank in the previous epoch and hold none in this one: the
  // survivors of the groups a shrink dropped. They wait in the spare pool now.
  std::vector<std::string> retired;

  // The launch: rank r held by worker r.
  static Membership Initial(int world_size);
  int RankOf(absl::string_view member) const;  // -1 when not a rank in this epoch
  std::string ToJson() const;
  static absl::StatusOr<Membership> FromJson(absl::string_view json);
  // "rank 3 (w3) killed by signal 9 (SIGKILL)"; failures joined by "; ".
  std::string DescribeFailures() const;
};

// The recovery coordinator's move: publishes epoch current.epoch + 1, in which each failed
// rank is held by the next spare of `spares` (those used are removed from it). Safe against
// several coordinators: the membership key is created by compare-and-set, and whoever loses
// gets the winner's membership back. kResourceExhausted, naming the ranks and causes, when
// there are fewer spares than failures (nothing is published then).
absl::StatusOr<Membership> PublishNextEpoch(Store& store, const Membership& current,
                                            const std::vector<Failure>& failures,
                                            std::vector<std::string>& spares,
                                            absl::Time deadline);

// When there are fewer spares than failures but the trainer named groups that may leave
// together (ShrinkGroupsKey): publishes epoch current.epoch + 1 without every group that
// holds a failed rank. The other ranks keep their order, so a mesh whose dimensions are
// mixed-radix digits of the rank (trident/parallel/mesh.h) stays the same mesh with a smaller
// dp; the dropped groups' live members are `retired`. Same compare-and-set as
// PublishNextEpoch. kFailedPrecondition, naming the ranks, when a failed rank is in no group
// or no group would be left.
absl::StatusOr<Membership> PublishShrunkEpoch(Store& store, const Membership& current,
                                              const std::vector<Failure>& failures,
                                              const std::vector<std::vector<int>>& groups,
                                              absl::Time deadline);
// The groups of ShrinkGroupsKey(epoch) as JSON, and back (kDataLoss when malformed).
std::string ShrinkGroupsToJson(const std::vector<std::vector<int>>& groups);
absl::StatusOr<std::vector<std::vector<int>>> ShrinkGroupsFromJson(absl::string_view json);

// The current epoch's membership: epoch 1 is Initial(world_size).
absl::StatusOr<Membership> ReadMembership(Store& store, int world_size, absl::Time deadline);

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_MEMBERSHIP_H_
