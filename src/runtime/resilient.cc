// RunResilient: the resilient step loop (trident/resilient.h).
#include "trident/resilient.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "runtime/restore.h"

namespace trident {

bool IsRecoverable(const absl::Status& s) {
  return absl::IsAborted(s) || absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s) ||
         absl::IsCancelled(s) || absl::IsFailedPrecondition(s);
}

namespace {

// The loop's state across epochs; one per RunResilient call.
class Loop {
 public:
  Loop(Runtime& rt, Trainable& trainer, const LoopOptions& options)
      : rt_(rt), trainer_(trainer), o_(options), fresh_(rt.promoted()) {}

  absl::Status Run() {
    // A process that starts in a later epoch (a promoted spare, or a worker whose setup met a
    // failure) joins the survivors' restore.
    if (rt_.epoch() > 1) unreported_ = rt_.promotion().failed;
    absl::Status started = rt_.epoch() > 1 ? Setup(&rt_.promotion(), nullptr)
                                           : Setup(nullptr, nullptr);
    if (!started.ok()) RETURN_IF_ERROR(Recover(started));
    while (trainer_.step() < o_.steps) {
      absl::Status s = RunStep();
      if (s.ok()) {
        in_a_row_ = 0;
        continue;
      }
      RETURN_IF_ERROR(Recover(s));
    }
    ReportSaves(/*wait=*/true);
    rt_.Finish();
    return absl::OkStatus();
  }

 private:
  // Binds the trainer to the current world, makes the epoch's checkpoint engine, registers
  // the communicators to abort, and restores: after a recovery (`rec`) always, at the start
  // when resuming.
  absl::Status Setup(const Recovery* rec, std::shared_ptr<const PeerReplica> held) {
    Communicator& world = rt_.world();
    RETURN_IF_ERROR(trainer_.Bind(world, {rt_.epoch(), fresh_}));
    if (!o_.ckpt_dir.empty()) {
      ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, world.Split(0, world.rank()));
      ckpt_comm_ = std::move(comm);
      CheckpointOptions options;
      options.dir = o_.ckpt_dir;
      options.comm = ckpt_comm_;
      options.keep_last = o_.keep;
      options.peer_replicas = o_.peer_replicas;
      options.epoch = rt_.epoch();
      options.layout = trainer_.Layout();
      options.commit_timeout = o_.commit_timeout;
      ASSIGN_OR_RETURN(engine_, CheckpointEngine::Create(std::move(options)));
    }
    std::vector<Communicator*> groups = trainer_.Groups();
    if (ckpt_comm_) groups.push_back(ckpt_comm_.get());
    rt_.SetGroups(groups);
    if (std::vector<std::vector<int>> shrink = trainer_.ShrinkGroups(); !shrink.empty()) {
      RETURN_IF_ERROR(rt_.AllowShrink(shrink));
    }
    if (rec == nullptr) {
      if (!o_.resume) return absl::OkStatus();
      ASSIGN_OR_RETURN(runtime_internal::RestoreResult r,
                       runtime_internal::Restore(world, trainer_, o_.ckpt_dir, /*fresh=*/true,
                                                 nullptr, /*reset_if_none=*/false));
      for (const std::string& skipped : r.skipped) {
        TLOG(warn, "resume: skipped checkpoint {}", skipped);
      }
      if (o_.on_resume) o_.on_resume(r.step, r.skipped);
      return absl::OkStatus();
    }
    // Every rank back to the newest committed step that loads; one report per dead rank.
    ASSIGN_OR_RETURN(runtime_internal::RestoreResult r,
                     runtime_internal::Restore(world, trainer_, o_.ckpt_dir, fresh_,
                                               std::move(held), /*reset_if_none=*/true));
    fresh_ = false;
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    // Every rank replaced since the last restore, also in recoveries that failed half-way.
    for (const FailedRank& f : std::exchange(unreported_, {})) {
      RecoveryReport report;
      report.epoch = rec->epoch;
      report.failed = f;
      report.world_size = world.size();
      report.resume_step = r.step + 1;
      report.steps_redone = r.steps_redone;
      report.source = r.source;
      report.peer_bytes = r.peer_bytes;
      report.peer_ms = r.peer_ms;
      report.detect_ms = f.verdict_unix_ms - f.last_seen_unix_ms;
      report.recover_ms = now_ms - f.verdict_unix_ms;
      report.skipped_checkpoints = r.skipped;
      if (o_.on_recovery) o_.on_recovery(report);
      last_verdict_ms_ = std::max(last_verdict_ms_, f.verdict_unix_ms);
    }
    for (const std::string& skipped : r.skipped) {
      TLOG(warn, "restore: skipped checkpoint {}", skipped);
    }
    return absl::OkStatus();
  }

  // After a failure: the next epoch, then Setup again; again when another rank dies during
  // the recovery itself; gives up on errors that no new epoch can cure.
  absl::Status Recover(absl::Status cause) {
    while (true) {
      if (!rt_.in_job() || !IsRecoverable(cause)) return cause;
      if (in_a_row_ >= o_.max_recoveries_in_a_row) {
        return absl::AbortedError(absl::StrCat(
            "gave up after ", in_a_row_, " recoveries in a row without a completed step "
            "(LoopOptions::max_recoveries_in_a_row); the last failure: ", cause.ToString()));
      }
      ++in_a_row_;
      std::shared_ptr<const PeerReplica> held = engine_ ? engine_->HeldReplica() : nullptr;
      const int old_size = rt_.world_size();
      absl::StatusOr<Recovery> rec = rt_.Recover(cause, absl::Now() + o_.recover_timeout);
      if (!rec.ok()) return rec.status();
      unreported_.insert(unreported_.end(), rec->failed.begin(), rec->failed.end());
      if (o_.after_rebuild) o_.after_rebuild();
      rt_.SetGroups({});
      engine_.reset();  // the old epoch's: its communicator is aborted
      ckpt_comm_.reset();
      if (rec->rejoined) {
        // Back from the spare pool after a shrink, maybe at another place: its state comes
        // from a peer or the checkpoint.
        fresh_ = true;
        held = nullptr;
      } else if (rec->world_size != old_size) {
        held = nullptr;  // a replica of the old layout's ranks
      }
      const absl::Time t0 = absl::Now();
      absl::Status s = Setup(&*rec, std::move(held));
      TLOG(info, "recovery into epoch {}: waited {} for the epoch, built the world in {}, "
                   "rebuilt and restored in {}: {}",
                   rec->epoch, absl::FormatDuration(rec->wait),
                   absl::FormatDuration(rec->rebuild), absl::FormatDuration(absl::Now() - t0),
                   s.ToString());
      if (s.ok()) return s;
      cause = s;
    }
  }

  absl::Status RunStep() {
    rt_.Progress();  // a training thread stuck longer than TRIDENT_HANG_TIMEOUT_MS is hung
    if (o_.before_step) o_.before_step(trainer_.step() + 1);
    RETURN_IF_ERROR(trainer_.Step());
    const int64_t step = trainer_.step();
    if (o_.on_step) {
      o_.on_step(step, last_verdict_ms_ > 0 ? absl::ToUnixMillis(absl::Now()) - last_verdict_ms_
                                            : 0);
    }
    last_verdict_ms_ = 0;
    ReportSaves(/*wait=*/false);
    if (!engine_ || o_.ckpt_every <= 0 || step % o_.ckpt_every != 0) return absl::OkStatus();
    const absl::Time t0 = absl::Now();
    absl::StatusOr<std::shared_ptr<CheckpointSave>> save =
        engine_->Save(step, trainer_.SaveState());
    SaveEvent e;
    e.step = step;
    e.stall_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    e.status = save.status();
    if (save.ok()) e.bytes = (*save)->stats().staged_bytes;
    if (o_.on_save) o_.on_save(e);
    // The engine's communicator was aborted (a failure): recover; else go on without it.
    if (absl::IsFailedPrecondition(save.status()) || absl::IsAborted(save.status())) {
      return save.status();
    }
    return absl::OkStatus();
  }

  // Reports the last save once it ended (waiting for it at the end of the run).
  void ReportSaves(bool wait) {
    if (!engine_) return;
    std::shared_ptr<CheckpointSave> last = engine_->LastSave();
    if (!last || last->step() <= reported_save_) return;
    if (wait) last->Wait(absl::Now() + absl::Seconds(120)).IgnoreError();  // status read below
    if (!last->IsCompleted()) return;
    reported_save_ = last->step();
    SaveEvent e;
    e.step = last->step();
    e.committed = true;
    e.status = last->status();
    e.persist_ms = last->stats().persist_seconds * 1e3;
    e.bytes = last->stats().written_bytes;
    if (o_.on_save) o_.on_save(e);
  }

  Runtime& rt_;
  Trainable& trainer_;
  const LoopOptions& o_;
  bool fresh_;  // this process's state is not the job's until a restore succeeded
  std::shared_ptr<Communicator> ckpt_comm_;
  std::unique_ptr<CheckpointEngine> engine_;
  int in_a_row_ = 0;            // recoveries since the last completed step
  int64_t last_verdict_ms_ = 0;  // of the last recovery, until its first completed step
  int64_t reported_save_ = 0;
  std::vector<FailedRank> unreported_;  // replaced ranks not yet in a RecoveryReport
};

}  // namespace

absl::Status RunResilient(Runtime& runtime, Trainable& trainer, const LoopOptions& options) {
  if (options.ckpt_every < 0 || options.keep < 0) {
    return absl::InvalidArgumentError("LoopOptions: ckpt_every and keep must be >= 0");
  }
  if ((options.ckpt_every > 0 || options.resume) && options.ckpt_dir.empty()) {
    return absl::InvalidArgumentError("LoopOptions: ckpt_every and resume need a ckpt_dir");
  }
  return Loop(runtime, trainer, options).Run();
}

}  // namespace trident
