// RunResilient: the resilient step loop (trident/resilient.h).
#include "trident/resilient.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "health/sdc.h"
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
    while (true) {
      while (trainer_.step() < o_.steps) {
        absl::Status s = RunStep();
        if (s.ok()) {
          in_a_row_ = 0;
          continue;
        }
        RETURN_IF_ERROR(Recover(s));
      }
      // The last save must commit: when a rank died during it, recover and redo the steps
      // since the last commit, so the job ends with its final state saved and every rank in
      // one epoch (the spare promoted meanwhile would wait for this world otherwise).
      absl::Status last = ReportSaves(/*wait=*/true);
      if (!WorldFailed(last)) break;
      RETURN_IF_ERROR(Recover(last));
    }
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
    // A state that passed the replica check at the current step is kept (and copied to the
    // ranks that replace others) rather than rolled back to the checkpoint.
    ASSIGN_OR_RETURN(runtime_internal::RestoreResult r,
                     runtime_internal::Restore(world, trainer_, o_.ckpt_dir, fresh_,
                                               std::move(held), /*reset_if_none=*/true,
                                               fresh_ ? -1 : verified_step_));
    fresh_ = false;
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    // Every rank replaced since the last restore, also in recoveries that failed half-way.
    for (const FailedRank& f : std::exchange(unreported_, {})) {
      RecoveryReport report;
      report.epoch = rec->epoch;
      report.failed = f;
      report.world_size = world.size();
      report.resume_step = r.step + 1;
      report.steps_redone = std::max(r.steps_redone, rolled_back_from_ - r.step);
      report.source = r.source;
      report.peer_bytes = r.peer_bytes;
      report.peer_ms = r.peer_ms;
      report.detect_ms = f.verdict_unix_ms - f.last_seen_unix_ms;
      report.recover_ms = now_ms - f.verdict_unix_ms;
      report.skipped_checkpoints = r.skipped;
      if (o_.on_recovery) o_.on_recovery(report);
      last_verdict_ms_ = std::max(last_verdict_ms_, f.verdict_unix_ms);
    }
    rolled_back_from_ = 0;
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
      reset_check_ = true;
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
    if (reset_check_) {
      // At the start and after every recovery, every rank checks after the next step (a
      // promoted spare knows no interval yet).
      next_check_ = trainer_.step() + 1;
      step_ms_sum_ = 0;
      steps_timed_ = 0;
      reset_check_ = false;
    }
    const absl::Time step_start = absl::Now();
    RETURN_IF_ERROR(trainer_.Step());
    step_ms_sum_ += absl::ToDoubleMilliseconds(absl::Now() - step_start);
    ++steps_timed_;
    const int64_t step = trainer_.step();
    if (o_.on_step) {
      o_.on_step(step, last_verdict_ms_ > 0 ? absl::ToUnixMillis(absl::Now()) - last_verdict_ms_
                                            : 0);
    }
    last_verdict_ms_ = 0;
    // A failed save reaches on_save; a dead rank fails the next step.
    ReportSaves(/*wait=*/false).IgnoreError();
    const bool save_due = engine_ && o_.ckpt_every > 0 && step % o_.ckpt_every == 0;
    // A save is taken only of a state whose replicas agree: a flipped bit never commits.
    const bool check_due = o_.sdc_every > 0 ? step % o_.sdc_every == 0
                                            : o_.sdc_every == kSdcAuto && step >= next_check_;
    if (o_.sdc_every != 0 && (check_due || save_due)) {
      RETURN_IF_ERROR(CheckReplicas(step));
    }
    if (!save_due) return absl::OkStatus();
    const absl::Time t0 = absl::Now();
    CheckpointState state = trainer_.SaveState();
    if (verified_step_ == step && verified_.set >= 0) {
      // The commit records the digests the replicas agreed on (and refuses disagreeing ones).
      state.replica_set = verified_.set;
      state.replica_digest = verified_.digest;
    }
    absl::StatusOr<std::shared_ptr<CheckpointSave>> save = engine_->Save(step, state);
    SaveEvent e;
    e.step = step;
    e.stall_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    e.status = save.status();
    if (save.ok()) e.bytes = (*save)->stats().staged_bytes;
    if (o_.on_save) o_.on_save(e);
    // The engine's communicator was aborted (a failure): recover; else go on without it.
    if (WorldFailed(save.status())) return save.status();
    return absl::OkStatus();
  }

  // A save that failed because its communicator was aborted (a rank died), not because of
  // the file system: a recovery cures it.
  static bool WorldFailed(const absl::Status& s) {
    return absl::IsFailedPrecondition(s) || absl::IsAborted(s);
  }

  // This rank's replicated state: its set and digest (set -1: nothing to check).
  absl::StatusOr<health::ReplicaDigest> MyDigest() {
    Trainable::Replicas rep = trainer_.ReplicatedState();
    if (rep.set < 0) return health::ReplicaDigest{};
    ASSIGN_OR_RETURN(uint64_t digest, health::DigestTensors(rep.tensors));
    return health::ReplicaDigest{rep.set, digest};
  }

  // Every rank's (set, digest) and one more number, all-gathered over the world.
  absl::StatusOr<std::vector<health::ReplicaDigest>> Gather(const health::ReplicaDigest& mine,
                                                           int64_t extra,
                                                           std::vector<int64_t>* extras) {
    Communicator& world = rt_.world();
    const int n = world.size();
    int64_t in[3] = {mine.set, static_cast<int64_t>(mine.digest), extra};
    std::vector<int64_t> out(3 * n);
    RETURN_IF_ERROR(
        world.AllGather(Tensor::Of(in, 3), Tensor::Of(out.data(), out.size()))->Wait());
    std::vector<health::ReplicaDigest> all(n);
    if (extras != nullptr) extras->assign(n, 0);
    for (int r = 0; r < n; ++r) {
      all[r] = {out[3 * r], static_cast<uint64_t>(out[3 * r + 1])};
      if (extras != nullptr) (*extras)[r] = out[3 * r + 2];
    }
    return all;
  }

  // Logs the verdict (on the lowest rank that is not named), reports the named ranks (every
  // rank that is not named writes the same record, so one that an abort overtakes does not
  // matter) and fails the step so that the loop recovers into the epoch that replaces them.
  // `mine`: this rank's digest at `step`, `good`: whether its state is a healthy replica's
  // (kept, and copied to the rank that replaces a named one).
  // `rollback`: the state at `step` may hold the named rank's influence (its flipped values
  // fed the forward passes, so the gradients all ranks applied, of the steps since the last
  // good digest): a healthy rank goes back to its copy of the last good digest's state.
  absl::Status NameCorrupt(int64_t step, const std::vector<int>& odd, int replicas,
                           const char* method, const health::ReplicaDigest& mine, bool good,
                           bool rollback) {
    const int me = rt_.rank();
    const bool named = std::find(odd.begin(), odd.end(), me) != odd.end();
    if (good && !named && !rollback) {
      verified_step_ = step;
      verified_ = mine;
    } else if (good && !named && good_step_ >= 0) {
      std::vector<Tensor> tensors = trainer_.ReplicatedState().tensors;
      bool fits = tensors.size() == good_copy_.size();
      for (size_t i = 0; fits && i < tensors.size(); ++i) {
        fits = tensors[i].nbytes() == good_copy_[i].size();
      }
      if (fits) {
        for (size_t i = 0; i < tensors.size(); ++i) {
          if (!good_copy_[i].empty()) {
            std::memcpy(tensors[i].data(), good_copy_[i].data(), good_copy_[i].size());
          }
        }
        trainer_.SetRestoredStep(good_step_);
        verified_step_ = good_step_;
        verified_ = good_digest_;
        rolled_back_from_ = step;
        TLOG(info, "sdc: back to step {}, the last good digest, from this rank's copy",
             good_step_);
      }
    }
    int logger = 0;
    while (std::find(odd.begin(), odd.end(), logger) != odd.end()) ++logger;
    for (int r : odd) {
      if (me == logger) {
        TLOG(warn, "sdc step={} rank={} replicas={} method={} action=replaced", step, r,
                     replicas, method);
      }
      if (!named) {
        const std::string why =
            absl::StrCat("rank ", r, "'s replicated state at step ", step, " disagrees with ",
                         std::string_view(method) == "majority"
                             ? absl::StrCat("the majority of its ", replicas, " replicas")
                             : std::string("its own replay from the last checkpoint"));
        if (absl::Status s = rt_.ReportCorruption(r, why); !s.ok()) {
          TLOG(error, "sdc: cannot report rank {}: {}", r, s.ToString());
        }
      }
    }
    if (o_.on_sdc) {
      o_.on_sdc({.step = step, .agree = false, .ranks = odd, .replicas = replicas,
                 .method = method, .action = "replaced", .last_good_step = last_good_step_});
    }
    return absl::AbortedError(absl::StrCat(
        "silent data corruption at step ", step, ": rank(s) ", absl::StrJoin(odd, ","),
        " disagree with their replicas (method=", method, "); the launcher replaces them"));
  }

  // The replica check (LoopOptions::sdc_every). Collective over the world.
  // kSdcAuto: this rank's proposal for the next interval (see LoopOptions::sdc_every).
  // The hash is the check's cost; the all-gather of 24 bytes a rank is small, and the time
  // it waits for slower peers is imbalance that the step's next collective would wait anyway.
  int64_t ProposeEvery(double hash_ms) const {
    const double check_ms = hash_ms;
    const double step_ms = steps_timed_ > 0 ? step_ms_sum_ / steps_timed_ : 0.0;
    if (!(step_ms > 0) || !(o_.sdc_budget > 0)) return 1;
    const double k = std::ceil(check_ms / (o_.sdc_budget * step_ms));
    return static_cast<int64_t>(std::clamp(k, 1.0, static_cast<double>(kSdcAutoMaxEvery)));
  }

  absl::Status CheckReplicas(int64_t step) {
    const absl::Time t0 = absl::Now();
    ASSIGN_OR_RETURN(health::ReplicaDigest before, MyDigest());
    // A copy of the state being checked: if it agrees, it is the last good digest's state,
    // which a later verdict goes back to (part of the check's cost).
    Trainable::Replicas rep = trainer_.ReplicatedState();
    if (rep.complete) {
      pending_copy_.resize(rep.tensors.size());
      for (size_t i = 0; i < rep.tensors.size(); ++i) {
        const auto* p = static_cast<const uint8_t*>(rep.tensors[i].data());
        pending_copy_[i].assign(p, p + rep.tensors[i].nbytes());
      }
    }
    const bool adaptive = o_.sdc_every == kSdcAuto;
    const int64_t proposal =  // from the hash and the copy
        adaptive ? ProposeEvery(absl::ToDoubleMilliseconds(absl::Now() - t0)) : 0;
    std::vector<int64_t> proposals;
    ASSIGN_OR_RETURN(std::vector<health::ReplicaDigest> all, Gather(before, proposal, &proposals));
    if (adaptive) {
      // The same numbers on every rank: the same next check.
      every_ = *std::max_element(proposals.begin(), proposals.end());
      next_check_ = step + every_;
      step_ms_sum_ = 0;
      steps_timed_ = 0;
    } else {
      every_ = o_.sdc_every;
    }
    last_check_ms_ = absl::ToDoubleMilliseconds(absl::Now() - t0);
    health::ReplicaVerdict v = health::JudgeReplicas(all);
    if (v.agree()) {
      last_good_step_ = step;
      verified_step_ = step;
      verified_ = before;
      if (rep.complete) {
        good_copy_.swap(pending_copy_);
        good_step_ = step;
        good_digest_ = before;
      }
      if (o_.on_sdc) {
        o_.on_sdc({.step = step, .agree = true, .last_good_step = step,
                   .check_ms = last_check_ms_, .every = static_cast<int>(every_)});
      }
      return absl::OkStatus();
    }
    if (!v.odd.empty() && v.undecided.empty()) {
      return NameCorrupt(step, v.odd, v.replicas, "majority", before, /*good=*/true,
                         /*rollback=*/true);
    }
    // No majority somewhere: every rank goes back to the newest checkpoint that loads and
    // replays to `step`; a rank whose replay differs from its own digest is named. A save
    // still committing is of an agreed state: let it end, so the replay starts from it.
    ReportSaves(/*wait=*/true).IgnoreError();  // its outcome goes to on_save
    ASSIGN_OR_RETURN(runtime_internal::RestoreResult r,
                     runtime_internal::Restore(rt_.world(), trainer_, o_.ckpt_dir,
                                               /*fresh=*/false, nullptr,
                                               /*reset_if_none=*/true));
    TLOG(info, "sdc: replicas disagree at step {} with no majority: replaying from step {}",
                 step, r.step);
    while (trainer_.step() < step) RETURN_IF_ERROR(trainer_.Step());
    ASSIGN_OR_RETURN(health::ReplicaDigest after, MyDigest());
    std::vector<int64_t> changed;  // by rank: its replay differs from its digest before
    ASSIGN_OR_RETURN(std::vector<health::ReplicaDigest> replayed,
                     Gather(after, after.digest != before.digest ? 1 : 0, &changed));
    std::vector<int> odd = v.odd;
    bool good = true;  // this rank's replayed state is a healthy replica's
    for (const std::vector<int>& set : v.undecided) {
      std::vector<int> bad;
      for (int rank : set) {
        if (changed[rank] != 0) bad.push_back(rank);
      }
      if (bad.size() == 1) odd.push_back(bad[0]);
      if (bad.size() != 1 && std::find(set.begin(), set.end(), rt_.rank()) != set.end()) {
        good = false;
      }
    }
    // A rank named by its replay: the others' replays from the checkpoint matched their
    // states, which are therefore clean at `step`.
    if (!odd.empty()) {
      return NameCorrupt(step, odd, v.replicas, "replay", after, good, /*rollback=*/false);
    }
    const bool replay_agrees = health::JudgeReplicas(replayed).agree();
    if (rt_.rank() == 0) {
      TLOG(warn, "sdc step={} rank=none replicas={} method=replay action=rollback", step,
                   v.replicas);
    }
    if (o_.on_sdc) {
      o_.on_sdc({.step = step, .agree = false, .replicas = v.replicas, .method = "replay",
                 .action = "rollback", .last_good_step = last_good_step_});
    }
    if (!replay_agrees) {
      return absl::DataLossError(absl::StrCat(
          "silent data corruption at step ", step, ": the replicas still disagree after every "
          "rank replayed from step ", r.step, "; no rank can be named (a nondeterministic "
          "Step, or a fault on every replica)"));
    }
    last_good_step_ = step;
    verified_step_ = step;
    verified_ = after;
    return absl::OkStatus();
  }

  // Reports the last save once it ended (waiting for it at the end of the run); returns its
  // outcome when it was reported now (OK otherwise).
  absl::Status ReportSaves(bool wait) {
    if (!engine_) return absl::OkStatus();
    std::shared_ptr<CheckpointSave> last = engine_->LastSave();
    if (!last || last == reported_save_) return absl::OkStatus();
    if (wait) last->Wait(absl::Now() + absl::Seconds(120)).IgnoreError();  // status read below
    if (!last->IsCompleted()) return absl::OkStatus();
    reported_save_ = last;
    SaveEvent e;
    e.step = last->step();
    e.committed = true;
    e.status = last->status();
    e.persist_ms = last->stats().persist_seconds * 1e3;
    e.bytes = last->stats().written_bytes;
    if (o_.on_save) o_.on_save(e);
    return e.status;
  }

  Runtime& rt_;
  Trainable& trainer_;
  const LoopOptions& o_;
  bool fresh_;  // this process's state is not the job's until a restore succeeded
  std::shared_ptr<Communicator> ckpt_comm_;
  std::unique_ptr<CheckpointEngine> engine_;
  int in_a_row_ = 0;            // recoveries since the last completed step
  int64_t last_verdict_ms_ = 0;  // of the last recovery, until its first completed step
  std::shared_ptr<CheckpointSave> reported_save_;  // the last save reported, of any epoch
  int64_t last_good_step_ = 0;  // the newest step whose replica check agreed
  // The step whose replica check this rank's state passed (or, on a verdict, whose majority
  // or replay it belongs to), and its digest there; -1: none.
  int64_t verified_step_ = -1;
  health::ReplicaDigest verified_;
  // The last good digest's state (Replicas::complete only): its step, digest and bytes; and
  // the copy of the check in progress. rolled_back_from_: the verdict's step after going back.
  int64_t good_step_ = -1;
  health::ReplicaDigest good_digest_;
  std::vector<std::vector<uint8_t>> good_copy_, pending_copy_;
  int64_t rolled_back_from_ = 0;
  // The check interval (kSdcAuto): the next step to check, the interval in force, and what
  // it is chosen from (step times since the last check, the last check's cost).
  bool reset_check_ = true;
  int64_t next_check_ = 1;
  int64_t every_ = 0;
  double step_ms_sum_ = 0;
  int steps_timed_ = 0;
  double last_check_ms_ = 0;
  std::vector<FailedRank> unreported_;  // replaced ranks not yet in a RecoveryReport
};

}  // namespace

absl::Status RunResilient(Runtime& runtime, Trainable& trainer, const LoopOptions& options) {
  if (options.ckpt_every < 0 || options.keep < 0) {
    return absl::InvalidArgumentError("LoopOptions: ckpt_every and keep must be >= 0");
  }
  if (options.sdc_every < 0 && options.sdc_every != kSdcAuto) {
    return absl::InvalidArgumentError(absl::StrCat(
        "LoopOptions: sdc_every is ", options.sdc_every, "; give N >= 1, 0 (off) or kSdcAuto"));
  }
  if ((options.ckpt_every > 0 || options.resume) && options.ckpt_dir.empty()) {
    return absl::InvalidArgumentError("LoopOptions: ckpt_every and resume need a ckpt_dir");
  }
  return Loop(runtime, trainer, options).Run();
}

}  // namespace trident
