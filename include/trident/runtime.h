// trident/runtime.h: what a trainer calls to live through failures (DESIGN.md, "Processes"
// and "Recovery, step by step"). Under `trident-run --spares S`, every process calls
// Runtime::Init: workers get the world communicator of epoch 1 at once; spares wait in the
// pool, already started and connected, until the agent promotes one to replace a dead rank.
//
//   ASSIGN_OR_RETURN(auto rt, trident::Runtime::Init({}));
//   if (rt->promoted()) RestoreStateFromPeerOrCheckpoint();      // a spare took a dead rank
//   rt->SetGroups({...});                  // sub-communicators to abort with the world
//   while (step < steps) {
//     rt->Progress();
//     absl::Status s = TrainStep(rt->world());
//     if (s.ok()) { ++step; continue; }
//     ASSIGN_OR_RETURN(trident::Recovery r, rt->Recover(s));  // new epoch, new world
//     RebuildGroupsAndRollBack(rt->world());
//   }
//   rt->Finish();
//
// While running, a watcher thread polls the store: the moment the agent records a failed rank
// of the current epoch (or publishes a new epoch), the world and the registered groups are
// aborted with kAborted naming the rank and the cause, so no rank waits out a deadline. A
// heartbeat thread beats every TRIDENT_HEARTBEAT_MS; the agent declares a rank whose beats
// stop dead (TRIDENT_HEARTBEAT_TIMEOUT_MS), kills it and treats it like a crash. A trainer
// that calls Progress() every step also gets a rank whose training thread deadlocks
// declared dead (TRIDENT_HANG_TIMEOUT_MS).
//
// Thread-safety: Init, Recover, SetGroups and Finish from the training thread; world() is
// valid until the next Recover.
#ifndef TRIDENT_RUNTIME_H_
#define TRIDENT_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident {

struct RuntimeOptions {
  // The job's store; nullptr connects to TRIDENT_STORE (with a second connection for the
  // heartbeat).
  std::shared_ptr<Store> store;
  // Rank, world size, member id and role; empty / -1 read TRIDENT_RANK, TRIDENT_WORLD_SIZE,
  // TRIDENT_MEMBER, TRIDENT_ROLE.
  int rank = -1;
  int world_size = -1;
  std::string member;
  std::string role;
  // libfabric provider and op timeout of the world communicators (see HostCommOptions).
  std::string provider;
  absl::Duration timeout = absl::ZeroDuration();
  // Heartbeat period; zero reads TRIDENT_HEARTBEAT_MS; negative: no heartbeat (tests).
  absl::Duration heartbeat = absl::ZeroDuration();
  // How often the watcher polls the store for failures and epochs.
  absl::Duration poll = absl::Milliseconds(20);
  // A training thread silent this long after Progress() is hung; zero reads
  // TRIDENT_HANG_TIMEOUT_MS; negative: never.
  absl::Duration hang_timeout = absl::ZeroDuration();
  // AllowShrink's groups for the launch (epoch 1), stored before the first world is built,
  // so that a rank that dies during the setup can be dropped too. Empty: none.
  std::vector<std::vector<int>> shrink_groups;
  // Deadline of one attempt to build an epoch's world (a rank that dies during the build
  // leaves the others waiting this long, then they move to the next epoch); zero reads
  // TRIDENT_BUILD_TIMEOUT_MS.
  absl::Duration build_timeout = absl::ZeroDuration();
};

struct FailedRank {
  int rank = -1;
  std::string member;  // the process that held it: "w3", "s0"
  std::string cause;   // "killed by signal 9 (SIGKILL)", "no heartbeat for 1s; stopped"
  // The agent's clock, Unix ms: its last sign of life (exit or last heartbeat), the verdict.
  int64_t last_seen_unix_ms = 0;
  int64_t verdict_unix_ms = 0;
};

// What one Recover did.
struct Recovery {
  int64_t old_epoch = 0;
  int64_t epoch = 0;               // the new epoch
  int world_size = 0;              // of the new epoch: smaller after a shrink
  // This process waited in the spare pool (its group was dropped by a shrink) and now holds
  // a rank again, maybe another one: its state is not the job's, like a promoted spare's.
  bool rejoined = false;
  std::vector<FailedRank> failed;  // every rank replaced since old_epoch
  absl::Duration wait;             // from the call to the new epoch's publication
  absl::Duration rebuild;          // building the new world
};

class Runtime {
 public:
  // Workers: connect, start the heartbeat, build the current epoch's world. Spares: connect,
  // start the heartbeat, announce themselves in the pool and block until promoted (then
  // return as the rank they replace, promoted() true) or until the job ends (kCancelled: the
  // spare was not needed; exit 0). A worker whose group a shrink dropped before it started
  // waits in the pool the same way.
  static absl::StatusOr<std::unique_ptr<Runtime>> Init(RuntimeOptions options = {});
  ~Runtime();

  Communicator& world() { return *world_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int64_t epoch() const { return epoch_; }
  const std::string& member() const { return member_; }
  // This process started as a spare and holds a dead rank's slot: its state must be restored.
  bool promoted() const { return promoted_; }
  // When epoch() > 1 at the start (a promoted spare; a worker whose first world could not be
  // built because a rank died, or that started late): what was recovered before Init
  // returned. Such a process must take part in the trainer's restore, like the survivors.
  const Recovery& promotion() const { return promotion_; }

  // Communicators split from world() (mesh groups) that must be aborted with it. Replaces
  // the previous set; call SetGroups({}) before destroying them.
  void SetGroups(std::vector<Communicator*> groups);

  // Lets the job go on with fewer ranks when a rank dies and no spare is left: `groups` are
  // sets of this epoch's ranks that may leave together (a trainer's dp replicas). The agent
  // then drops every group that holds a dead rank; the others keep their order (so a mesh
  // with the rank order as mixed-radix digits keeps its shape, with a smaller dp); the
  // dropped groups' live members wait as spares (Recover blocks in them until a later
  // failure promotes them: Recovery::rejoined). Call it again in every epoch (the ranks
  // change); rank 0's call counts. Without it a death with no spare left ends the job.
  absl::Status AllowShrink(const std::vector<std::vector<int>>& groups);

  // After an op of the current epoch failed with `cause`: aborts the world and the groups,
  // waits for the agent to publish the next epoch (one where every dead rank is held by a
  // spare, or a shrink that dropped the dead ranks' groups), and builds that epoch's world,
  // retrying at a later epoch if another rank dies meanwhile. A process whose group a
  // shrink dropped waits in the spare pool here, past `deadline`, until it is promoted
  // (Recovery::rejoined) or the job ends (kCancelled: exit 0). Errors: kAborted when the
  // job is ending (no spare left; the message says why), kDeadlineExceeded when no new
  // epoch came by `deadline` (then `cause` was not a member's death: treat it as fatal),
  // kFailedPrecondition when this process itself was declared dead.
  absl::StatusOr<Recovery> Recover(const absl::Status& cause,
                                   absl::Time deadline = absl::InfiniteFuture());

  // The training thread is making progress (call it once per step). From the first call on,
  // a gap of TRIDENT_HANG_TIMEOUT_MS (default 5 min) until the next one, while no thread of
  // this process is waiting on an op, means the thread is stuck outside Trident (a
  // deadlock): the heartbeat stops, saying why, and trident-run declares this rank dead and
  // replaces it. Recover and Finish pause the check until the next call. Thread-safe.
  void Progress();

  // This rank is done: stops the heartbeat and the watcher. The world stays usable.
  void Finish();

  struct State;  // internal

 private:
  explicit Runtime(std::unique_ptr<State> state);
  absl::Status BuildWorld(int64_t epoch, absl::Time deadline);
  // The spare pool: waits until an epoch gives this member a rank and builds its world
  // (promoted_, promotion_); kCancelled when the job ends first.
  absl::Status WaitForPromotion();

  std::unique_ptr<State> state_;
  std::unique_ptr<Communicator> world_;
  int rank_ = -1;
  int world_size_ = 0;
  int64_t epoch_ = 1;
  std::string member_;
  bool promoted_ = false;
  Recovery promotion_;
};

}  // namespace trident

#endif  // TRIDENT_RUNTIME_H_
