// trident/runtime.h: the process's place in a fault-tolerant job (DESIGN.md, "Processes" and
// "Recovery, step by step"). Most trainers need only Init and trident/resilient.h's loop,
// which calls the rest:
//
//   ASSIGN_OR_RETURN(std::unique_ptr<trident::Runtime> rt, trident::Runtime::Init({}));
//   MyTrainer trainer(...);                          // a trident::Trainable
//   absl::Status s = trident::RunResilient(*rt, trainer, {.steps = 1000});
//
// Under `trident-run [--spares S]`, every process calls Init: workers get the world
// communicator of the current epoch; spares wait in the pool, already started and connected,
// until the launcher promotes one to replace a dead rank. Without trident-run (no
// TRIDENT_WORLD_SIZE and no store given) Init returns a runtime of one process whose world has
// one rank, so the same trainer runs alone.
//
// Who does what: the launcher decides (health's Coordinator: verdicts, epochs, promotions,
// shrinks); the Runtime acts: its watcher thread polls the job's failure records
// (health::FailureWatcher) and aborts the world and the registered groups the moment a rank of
// the current epoch is recorded dead or a newer epoch appears; Recover waits for the next
// epoch and builds its world through the communicator factory (host backend by default, NCCL
// with NcclWorldFactory). A heartbeat thread beats every TRIDENT_HEARTBEAT_MS; Progress arms
// the training thread's hang check (TRIDENT_HANG_TIMEOUT_MS).
//
// Ownership: the Runtime owns world(); communicators split from it belong to the caller,
// who registers them with SetGroups so that they are aborted with the world, and destroys
// them before the next Recover (whose world replaces this one).
//
// Thread-safety: Init, Recover, SetGroups, AllowShrink and Finish from the training thread;
// Progress from any thread; world() is valid until the next Recover.
#ifndef TRIDENT_RUNTIME_H_
#define TRIDENT_RUNTIME_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/failure.h"
#include "trident/store.h"

namespace trident {

// What a communicator factory gets to build one epoch's world.
struct WorldSpec {
  int rank = -1;
  int world_size = 0;
  int64_t epoch = 1;
  // The job's store scoped to this epoch (its keys cannot meet another epoch's); its blocking
  // calls give up when the job moves on, so a build never outlives its epoch.
  std::shared_ptr<Store> store;
  // The build ends by `deadline` (the communicator's setup_deadline); `op_timeout` is the
  // default deadline of the world's ops (its timeout), however short the build window.
  absl::Time deadline;
  absl::Duration op_timeout;
  // For the communicator's options (HostCommOptions::on_peer_error): reports a peer's
  // transport error to the launcher and names the cause when it is a recorded death.
  PeerErrorHandler on_peer_error;
};
// Builds one epoch's world; called by Init and Recover on the training thread.
using CommunicatorFactory =
    std::function<absl::StatusOr<std::unique_ptr<Communicator>>(const WorldSpec& spec)>;
// The NCCL backend as the world's factory (trident/nccl.h): `device` -1 picks
// TRIDENT_LOCAL_RANK modulo the visible devices. A fresh init per epoch.
CommunicatorFactory NcclWorldFactory(int device = -1);

struct RuntimeOptions {
  // The job's store; nullptr connects to TRIDENT_STORE (with a second connection for the
  // heartbeat and the watcher). Without one and without TRIDENT_WORLD_SIZE: one process.
  std::shared_ptr<Store> store;
  // Rank, world size, member id and role; empty / -1 read TRIDENT_RANK, TRIDENT_WORLD_SIZE,
  // TRIDENT_MEMBER, TRIDENT_ROLE (the one place that reads them).
  int rank = -1;
  int world_size = -1;
  std::string member;
  std::string role;
  // Builds each epoch's world; null: the host backend over libfabric (provider below), with
  // the next epoch's endpoint opened in advance.
  CommunicatorFactory factory;
  // libfabric provider of the host backend (see HostCommOptions); op timeout of the world
  // communicators (zero: TRIDENT_TIMEOUT_MS).
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
  // Deadline of one attempt to build an epoch's world; zero reads TRIDENT_BUILD_TIMEOUT_MS.
  // A build also ends as soon as a rank of its epoch dies or a newer epoch appears.
  absl::Duration build_timeout = absl::ZeroDuration();
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
  // waits in the pool the same way. kInvalidArgument for a bad TRIDENT_ROLE or options.
  static absl::StatusOr<std::unique_ptr<Runtime>> Init(RuntimeOptions options = {});
  virtual ~Runtime() = default;

  virtual Communicator& world() = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int64_t epoch() const = 0;
  virtual const std::string& member() const = 0;
  // A job with a launcher (false for a process on its own: Recover cannot help it).
  virtual bool in_job() const = 0;
  // This process started as a spare and holds a dead rank's slot: its state must be restored.
  virtual bool promoted() const = 0;
  // When epoch() > 1 at the start (a promoted spare; a worker whose first world could not be
  // built because a rank died, or that started late): what was recovered before Init
  // returned. Such a process must take part in the trainer's restore, like the survivors.
  virtual const Recovery& promotion() const = 0;

  // Communicators split from world() (mesh groups) that must be aborted with it. Replaces
  // the previous set; call SetGroups({}) before destroying them.
  virtual void SetGroups(std::vector<Communicator*> groups) = 0;

  // Lets the job go on with fewer ranks when a rank dies and no spare is left: `groups` are
  // sets of this epoch's ranks that may leave together (a trainer's dp replicas). The
  // launcher then drops every group that holds a dead rank; the others keep their order (a
  // mesh with the rank order as mixed-radix digits keeps its shape, with a smaller dp); the
  // dropped groups' live members wait as spares (Recover blocks in them until a later
  // failure promotes them: Recovery::rejoined). Call it again in every epoch; rank 0's call
  // counts. Without it a death with no spare left ends the job.
  virtual absl::Status AllowShrink(const std::vector<std::vector<int>>& groups) = 0;

  // After an op of the current epoch failed with `cause`: aborts the world and the groups,
  // waits for the launcher to publish the next epoch (one where every dead rank is held by a
  // spare, or a shrink that dropped the dead ranks' groups), and builds that epoch's world,
  // moving on to a later epoch if another rank dies meanwhile. A process whose group a
  // shrink dropped waits in the spare pool here, past `deadline`, until it is promoted
  // (Recovery::rejoined) or the job ends (kCancelled: exit 0). Errors: kAborted when the
  // job is ending (no spare left; the message says why), kDeadlineExceeded when no new
  // epoch came by `deadline` (then `cause` was not a member's death: treat it as fatal),
  // kFailedPrecondition when this process itself was declared dead or is not in a job.
  virtual absl::StatusOr<Recovery> Recover(const absl::Status& cause,
                                           absl::Time deadline = absl::InfiniteFuture()) = 0;

  // The training thread is making progress (call it once per step). From the first call on,
  // a gap of TRIDENT_HANG_TIMEOUT_MS (default 5 min) until the next one, while no thread of
  // this process is waiting on an op, means the thread is stuck outside Trident (a
  // deadlock): the heartbeat stops, saying why, and trident-run replaces this rank. Recover
  // and Finish pause the check until the next call. Thread-safe.
  virtual void Progress() = 0;

  // This rank is done: stops the heartbeat (saying it finished, so that trident-run does not
  // take the silence for a death however long the process goes on) and the watcher. The
  // world stays usable.
  virtual void Finish() = 0;

  // Aborts the world and the registered groups with `why` (not OK), as the watcher does when
  // a peer dies: for a rank that gives up on its own, so that its ops in flight (a checkpoint
  // commit on another thread) and its peers' fail at once instead of at their deadlines.
  // Callable from any thread.
  virtual void AbortWorld(const absl::Status& why) = 0;

  // Names rank `rank` of the current epoch as holding a corrupt replica (silent data
  // corruption, found by RunResilient's digests or replay): the launcher declares it dead
  // (FailureKind::kSilentDataCorruption), kills it and gives its slot to a spare, as for any
  // failure. `why` is for the record. kFailedPrecondition when not in a job; the store's error
  // when it cannot be written. Training thread.
  virtual absl::Status ReportCorruption(int rank, const std::string& why) {
    return absl::FailedPreconditionError("ReportCorruption: this process is not in a job");
  }
};

}  // namespace trident

#endif  // TRIDENT_RUNTIME_H_
