// trident/resilient.h: the resilient step loop. A trainer gives the runtime its state and its
// step (Trainable); RunResilient owns the rest of fault tolerance: which errors a new epoch
// can cure, bounded retries with a clear final error, asynchronous checkpoints, agreeing on
// the step to resume from, restoring a replaced rank from a peer's memory or the newest
// checkpoint that loads, rolling survivors back, and one RecoveryReport per dead rank.
//
//   class MyTrainer : public trident::Trainable { ... };
//   ASSIGN_OR_RETURN(auto rt, trident::Runtime::Init({}));
//   MyTrainer trainer(config);
//   trident::LoopOptions loop{.steps = 1000, .ckpt_dir = "/ckpt", .ckpt_every = 50};
//   loop.on_recovery = [](const trident::RecoveryReport& r) { LOG(...) << r.resume_step; };
//   absl::Status s = trident::RunResilient(*rt, trainer, loop);
//   if (absl::IsCancelled(s)) return 0;   // a spare that was not needed
//
// What the trainer must guarantee: Step() is a deterministic function of the state, the
// step number and its seed (the batches of step s are the same whoever computes them), so
// that a rank restored to step S and its peers compute what an unbroken run would; Bind()
// keeps the state; ResetToInitialState() is the state of step 0. What it gets: after any
// number of failures that the job's spares (or an elastic shrink) can absorb, the same
// losses as a run without failure, up to the order of float sums.
//
// Thread-safety: RunResilient calls every Trainable method on the calling thread.
#ifndef TRIDENT_RESILIENT_H_
#define TRIDENT_RESILIENT_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/failure.h"
#include "trident/runtime.h"
#include "trident/status_macros.h"  // for Trainable implementations

namespace trident {

struct BindInfo {
  int64_t epoch = 1;
  // This process's state is not the job's (a promoted spare, a rank back from the pool after
  // a shrink): the loop restores it after Bind; the trainer may build its model afresh.
  bool fresh = false;
};

// What a trainer gives the runtime. The loop calls the collective methods on every rank in
// the same order.
class Trainable {
 public:
  virtual ~Trainable() = default;

  // (Re)binds to `world`: at the start and after every recovery, before any restore.
  // Builds what depends on the world (mesh groups, bucketers) and keeps parameters,
  // moments and step. After an elastic shrink the world is smaller (same tp and pp, a
  // smaller dp). Collective over `world`.
  virtual absl::Status Bind(Communicator& world, const BindInfo& info) = 0;
  // The communicators Bind made, to be aborted with the world when a rank dies. Valid until
  // the next Bind. Default: none.
  virtual std::vector<Communicator*> Groups() { return {}; }
  // Runs step step() + 1. Collective. Any error fails the step; the loop decides whether a
  // recovery can cure it.
  virtual absl::Status Step() = 0;
  // Completed steps.
  virtual int64_t step() const = 0;
  // A step failed after it may have changed the state, so the state is not step()'s.
  // Default false: for a Step that changes the state only after its last collective.
  virtual bool dirty() const { return false; }

  // The state to checkpoint (tensors valid until the next Step).
  virtual CheckpointState SaveState() = 0;
  // Requests that fill this rank's state (from a checkpoint or a peer's replica); once they
  // are filled the loop calls SetRestoredStep with the state's step.
  virtual std::vector<TensorRequest> RestoreRequests() = 0;
  virtual void SetRestoredStep(int64_t step) = 0;
  // Back to step 0: the initial state (a function of the seed only).
  virtual void ResetToInitialState() = 0;

  // A checkpoint's layout tag, stored in its manifest ("tp2.pp2.dp2"); "" for none.
  virtual std::string Layout() const { return ""; }
  // Groups of this world's ranks that may leave together when a rank dies and no spare is
  // left (the dp replicas); empty: such a death ends the job (Runtime::AllowShrink).
  virtual std::vector<std::vector<int>> ShrinkGroups() const { return {}; }

  // Silent-data-corruption check (LoopOptions::sdc_every): the state that must be
  // bit-identical, after a step, on every rank of the same replica set (the dp replicas of
  // one (tp, pp) position: their parameters, and under ZeRO-1 the gathered shards).
  struct Replicas {
    int64_t set = -1;             // ranks with equal `set` must agree; < 0: nothing to check
    std::vector<Tensor> tensors;  // host memory, valid until the next Step
    // The tensors are this rank's whole state (writing them and SetRestoredStep restores
    // it), as without a sharded optimizer. Then each check keeps a copy of them, and after a
    // verdict the ranks go back to the last step whose digests agreed (the healthy ones from
    // their copy, a replacement from a healthy replica's memory) and redo only the steps
    // since (source "replica"); otherwise the state comes from a checkpoint.
    bool complete = false;
  };
  // Default: none (the check is off on this rank).
  virtual Replicas ReplicatedState() { return {}; }
};

// One dead rank, as the recovery that replaced it saw it (on every rank; rank 0 typically
// logs it).
struct RecoveryReport {
  int64_t epoch = 0;         // the epoch training resumed in
  FailedRank failed;         // the dead rank, its structured cause
  int world_size = 0;        // of the new epoch
  int64_t resume_step = 0;   // the next step to run (every rank restored to resume_step - 1)
  int64_t steps_redone = 0;  // steps the furthest survivor had done beyond resume_step - 1
  // Where the replaced ranks' state came from: "replica" (a healthy dp replica's memory, at
  // the last step whose replica digests agreed: LoopOptions::sdc_every), "peer" (a buddy's
  // memory of its last checkpoint), "checkpoint", "init" (no checkpoint yet: step 0), "none"
  // (no rank needed state).
  std::string source;
  int64_t peer_bytes = 0;     // bytes fetched from a peer's replica (the largest fetch)
  double peer_ms = 0;         // that fetch's time
  int64_t detect_ms = 0;      // from the last sign of life to the verdict
  int64_t recover_ms = 0;     // from the verdict to the restored state
  // Newer checkpoints that could not be loaded, and why ("step 30: rank 2: DATA_LOSS: ...").
  std::vector<std::string> skipped_checkpoints;
};

struct SaveEvent {
  int64_t step = 0;
  bool committed = false;  // false: the snapshot was taken (stall_ms); true: the save ended
  absl::Status status;     // of the save (committed), or of Save itself
  double stall_ms = 0;     // what the training loop paid
  double persist_ms = 0;   // committed saves: the background write and commit
  int64_t bytes = 0;
};

// One silent-data-corruption check of the replicas (LoopOptions::sdc_every).
struct SdcEvent {
  int64_t step = 0;
  bool agree = true;     // every replica set agreed: nothing else below is set
  std::vector<int> ranks;  // the ranks named (replaced); empty: unattributed
  int replicas = 0;        // in the set that disagreed
  std::string method;      // "majority" or "replay"
  std::string action;      // "replaced" or "rollback"
  int64_t last_good_step = 0;  // the newest step whose check agreed
  double check_ms = 0;  // what the check cost this rank (hash and all-gather; not a replay)
  // Steps until the next check (LoopOptions::sdc_every, or the interval kSdcAuto chose).
  int every = 0;
};

// LoopOptions::sdc_every: choose the interval by measurement (see there).
inline constexpr int kSdcAuto = -1;
inline constexpr int kSdcAutoMaxEvery = 1000;

struct LoopOptions {
  int64_t steps = 0;  // train until step() == steps
  // Checkpoints (empty dir: none). Saves every ckpt_every steps, keeps `keep` (0: all),
  // keeps each rank's last snapshot in a buddy's memory when peer_replicas.
  std::string ckpt_dir;
  int ckpt_every = 0;
  int keep = 3;
  bool peer_replicas = true;
  // Start from the newest committed checkpoint of ckpt_dir that loads (any layout), if any.
  bool resume = false;
  absl::Duration commit_timeout = absl::ZeroDuration();  // zero: the communicator's
  // After a failure, how long to wait for the launcher's next epoch before giving up.
  absl::Duration recover_timeout = absl::Seconds(60);
  // Recoveries in a row without a completed step before the loop gives up (a failure that
  // every new epoch meets again).
  int max_recoveries_in_a_row = 8;
  // Every sdc_every steps, and before every checkpoint save, the ranks hash their
  // Trainable::ReplicatedState (XXH3) and all-gather the digests (16 bytes a rank). A rank
  // that disagrees with a majority of its replicas is named; with no majority (two replicas)
  // every rank goes back to the newest checkpoint, replays to the step, and the one whose
  // replay differs from its own digest is named. A named rank is reported to the launcher
  // (FailureKind::kSilentDataCorruption), which replaces it like a dead one; with
  // Replicas::complete everyone goes back to the last good digest's state (a copy kept at
  // each check) and redoes only the steps since. A save is never taken while
  // replicas disagree, and its commit records the digests (a restored state that does not
  // match them is refused: kDataLoss, the next older checkpoint is tried). 0: off.
  // docs/fault-tolerance.md, "Silent data corruption".
  // kSdcAuto: the interval is chosen by measurement so that the checks cost at most
  // sdc_budget of the step time: at every check each rank proposes
  // K = ceil(hash time / (sdc_budget x mean step time since the last check)), the ranks
  // take the largest (carried in the same all-gather, so they all agree), clamped to
  // [1, kSdcAutoMaxEvery]; the first check is after the first step (and after a recovery).
  int sdc_every = 0;
  double sdc_budget = 0.005;

  // Observers, called on the training thread of every rank.
  std::function<void(const RecoveryReport&)> on_recovery;
  std::function<void(const SaveEvent&)> on_save;
  // At the start with `resume`: the step resumed from (0: none yet), and the newer
  // checkpoints skipped because they could not be loaded, and why.
  std::function<void(int64_t step, const std::vector<std::string>& skipped)> on_resume;
  // After each completed step; `since_verdict_ms` > 0 on the first step after a recovery
  // (from the last verdict to now).
  std::function<void(int64_t step, int64_t since_verdict_ms)> on_step;
  // After each replica check (sdc_every).
  std::function<void(const SdcEvent&)> on_sdc;
  // Test hooks: before step `next` runs; and right after a recovery built its world.
  std::function<void(int64_t next)> before_step;
  std::function<void()> after_rebuild;
};

// Runs `trainer` to options.steps through failures (see the top of this file). Returns OK
// when every step ran and the last save ended (then Finish()es the runtime): a last save
// that failed because a rank died is recovered like a failed step (the steps since the last
// commit are redone and saved again); one that failed for another reason (the file system)
// is reported through on_save and the run still ends OK. kCancelled when this process was not
// needed (an idle spare at the end, a rank retired by a shrink): exit 0; otherwise the error
// that no recovery could cure, naming the rank and what was tried.
absl::Status RunResilient(Runtime& runtime, Trainable& trainer, const LoopOptions& options);

// Errors a new epoch can cure: a peer died or hung, the communicator was aborted, the store
// was briefly away (DESIGN.md's table).
bool IsRecoverable(const absl::Status& status);

}  // namespace trident

#endif  // TRIDENT_RESILIENT_H_
