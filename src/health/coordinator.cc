#include "health/coordinator.h"

#include <signal.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "health/burn_in.h"
#include "health/sdc.h"

namespace trident::health {

Coordinator::Coordinator(Options options, Agent* agent, absl::Time now)
    : options_(options),
      agent_(agent),
      membership_(Membership::Initial(options.world_size)),
      detector_({.timeout = options.heartbeat_timeout,
                 .confirm_window = options.heartbeat_timeout}),
      started_(now) {
  for (int i = 0; i < options_.world_size; ++i) {
    order_.push_back(WorkerId(i));
    members_[order_.back()] = Member{.spare = false, .rank = i};
  }
  for (int i = 0; i < options_.spares; ++i) {
    order_.push_back(SpareId(i));
    members_[order_.back()] = Member{.spare = true};
  }
}

int Coordinator::RankOf(const std::string& member) const {
  auto it = members_.find(member);
  return it == members_.end() ? -1 : it->second.rank;
}

Coordinator::JobState Coordinator::state() const {
  if (failure_.has_value()) return JobState::kFailed;
  return finished_ ? JobState::kFinished : JobState::kRunning;
}

void Coordinator::RemoveReady(const std::string& member) {
  ready_spares_.erase(std::remove(ready_spares_.begin(), ready_spares_.end(), member),
                      ready_spares_.end());
}

void Coordinator::MemberExited(const std::string& name, const MemberExit& exit, absl::Time now) {
  auto it = members_.find(name);
  if (it == members_.end()) return;
  Member& m = it->second;
  m.running = false;
  if (m.dead) return;  // declared dead and killed: already replaced or reported
  if (exit.clean()) {
    TLOG(debug, "{} exited with status 0", name);
    if (m.rank < 0) {
      RemoveReady(name);
      return;
    }
    m.finished = true;
    const bool all_done = std::all_of(members_.begin(), members_.end(), [](const auto& e) {
      return e.second.rank < 0 || e.second.finished;
    });
    if (!all_done) return;
    if (!pending_.empty() && !stopped_ && !done_set_) {
      // A dead rank was still waiting for its replacement: the job did not finish.
      FailPending("the other ranks finished meanwhile");
    } else if (!failure_.has_value()) {
      // Idle spares see job/done and exit 0.
      finished_ = true;
      SetDone("finished");
    }
    return;
  }
  if (exit.by_agent) return;  // the agent stopped it (a shutdown): not a failure of its own
  Failure f;
  f.cause = exit.description;
  // A process whose burn-in failed exits before it joins anything (health/burn_in.h): say so.
  if (Store* s = agent_->store(); s != nullptr && exit.signal == 0) {
    if (absl::StatusOr<std::string> burn = s->TryGet(BurnInKey(name), Deadline());
        burn.ok() && absl::StartsWith(*burn, "failed")) {
      f.cause = absl::StrCat("was not admitted: burn-in ", *burn,
                             exit.description.empty() ? "" : " (", exit.description,
                             exit.description.empty() ? "" : ")");
    }
  }
  f.kind = exit.signal != 0 ? FailureKind::kSignaled : FailureKind::kExited;
  f.signal = exit.signal;
  f.exit_status = exit.signal != 0 ? -1 : exit.exit_status;
  f.last_seen_unix_ms = absl::ToUnixMillis(now);
  OnDeath(name, std::move(f), now);
}

void Coordinator::OnDeath(const std::string& name, Failure f, absl::Time now) {
  Member& m = members_[name];
  detector_.Forget(name);
  f.member = name;
  if (f.reporter.empty()) f.reporter = "agent";
  f.verdict_unix_ms = absl::ToUnixMillis(now);
  if (m.rank < 0) {
    RemoveReady(name);
    if (!stopped_ && !done_set_) {
      agent_->Say(absl::StrCat("spare ", name, " ", f.cause, " while idle; ",
                               ready_spares_.size(), " spare(s) ready"));
    }
    TryReplace(now);  // a failure may have been waiting for this spare
    return;
  }
  f.rank = m.rank;
  if (auto done = std::find_if(members_.begin(), members_.end(),
                               [](const auto& e) { return e.second.finished; });
      done != members_.end()) {
    // A rank finished the job before this one died: every step and the last save were done
    // with it (a rank only finishes after them), so there is nothing to replace it for.
    agent_->Say(absl::StrCat("rank ", m.rank, " ", f.cause, " after ", done->first,
                             " had finished the job: not replaced (the job's work is done)"));
    m.rank = -1;
    const bool all_done = std::all_of(members_.begin(), members_.end(), [](const auto& e) {
      return e.second.rank < 0 || e.second.finished;
    });
    if (all_done && !failure_.has_value()) {
      finished_ = true;
      SetDone("finished");
    }
    return;
  }
  const std::string reason = absl::StrCat("rank ", m.rank, " ", f.cause);
  agent_->Say(reason);
  RecordFailure(m.rank, reason);
  pending_.push_back(std::move(f));
  m.rank = -1;
  if (pending_since_ == absl::InfiniteFuture()) pending_since_ = now;
  TryReplace(now);
}

void Coordinator::AllGone(absl::Time now) {
  // Every process is gone while a failure waited for a replacement: the job failed.
  if (!pending_.empty() && !done_set_) FailPending("no rank is left");
}

void Coordinator::TryReplace(absl::Time now) {
  if (pending_.empty() || stopped_ || done_set_) return;
  std::string why_not;
  bool shrink_tried = false;
  const bool someone_finished = std::any_of(members_.begin(), members_.end(),
                                            [](const auto& e) { return e.second.finished; });
  const auto starting = std::count_if(members_.begin(), members_.end(), [](const auto& e) {
    const Member& m = e.second;
    return m.spare && m.running && m.rank < 0 && !m.ready;
  });
  Store* s = someone_finished ? nullptr : agent_->store();
  if (someone_finished) {
    why_not = "other ranks have already finished";
  } else if (s == nullptr) {
    why_not = "the store is unreachable";
  } else if (ready_spares_.size() >= pending_.size()) {
    absl::StatusOr<Membership> next =
        PublishNextEpoch(*s, membership_, pending_, ready_spares_, Deadline());
    if (next.ok()) return EnterEpoch(*std::move(next));
    why_not = std::string(next.status().message());
  } else if (starting > 0 && now - pending_since_ < options_.spare_start_wait) {
    // Spares still starting up (a failure right at the start) are worth waiting for.
    if (!waiting_said_) {
      agent_->Say(absl::StrCat("waiting up to ", absl::FormatDuration(options_.spare_start_wait),
                               " for ", starting, " starting spare(s)"));
      waiting_said_ = true;
    }
    return;
  } else if (absl::StatusOr<std::string> groups =
                 s->TryGet(ShrinkGroupsKey(membership_.epoch), Deadline());
             groups.ok()) {
    // The trainer can go on with fewer ranks (Runtime::AllowShrink): drop the groups of the
    // dead ranks instead.
    absl::StatusOr<Membership> next = [&]() -> absl::StatusOr<Membership> {
      ASSIGN_OR_RETURN(std::vector<std::vector<int>> g, ShrinkGroupsFromJson(*groups));
      return PublishShrunkEpoch(*s, membership_, pending_, g, Deadline());
    }();
    if (next.ok()) return EnterEpoch(*std::move(next));
    shrink_tried = true;
    why_not = absl::StrCat(ready_spares_.size(), " spare(s) ready for ", pending_.size(),
                           " failure(s), and ", next.status().message());
  } else if (now - started_ < 2 * options_.heartbeat_timeout &&
             std::any_of(members_.begin(), members_.end(), [](const auto& e) {
               return e.second.running && e.second.rank >= 0;
             })) {
    // Right after the launch the ranks may not have named their shrink groups yet (a trainer
    // does so as it connects): give them a moment (said only to jobs that use the runtime,
    // i.e. beat).
    const bool runtime_job = std::any_of(members_.begin(), members_.end(), [this](const auto& e) {
      return detector_.watching(e.first);
    });
    if (!waiting_said_ && runtime_job && options_.spares > 0) {
      agent_->Say("no spare ready; waiting a moment for the ranks to say whether the job can "
                  "shrink");
      waiting_said_ = true;
    }
    return;
  } else {
    why_not = absl::StrCat(ready_spares_.size(), " spare(s) ready for ", pending_.size(),
                           " failure(s)");
  }
  FailPending(why_not, shrink_tried);
}

void Coordinator::FailPending(const std::string& why_not, bool shrink_tried) {
  const Failure& f = pending_.front();
  std::string failure = absl::StrCat("rank ", f.rank, " ", f.cause);
  // Said only where a replacement was possible at all: a job with spares or shrink groups.
  if (options_.spares > 0 || shrink_tried) {
    absl::StrAppend(&failure, " and no spare could replace it (", why_not, ")");
  }
  if (!failure_.has_value()) failure_ = failure;
  SetDone(absl::StrCat("failed: ", failure));
}

void Coordinator::EnterEpoch(Membership next) {
  const size_t old_size = membership_.ranks.size();
  membership_ = std::move(next);
  for (const std::string& name : order_) {
    Member& m = members_[name];
    if (!m.running || m.dead) continue;
    const int rank = membership_.RankOf(name);
    if (m.rank < 0 && rank >= 0) {
      RemoveReady(name);
    } else if (m.rank >= 0 && rank < 0) {
      // Retired by a shrink: initialised, alive, and back in the pool.
      m.ready = true;
      ready_spares_.push_back(name);
    }
    m.rank = rank;
  }
  for (const Failure& f : membership_.failures) {
    const std::string holder = f.rank < static_cast<int>(membership_.ranks.size())
                                   ? membership_.ranks[f.rank]
                                   : "";
    std::string line = absl::StrCat("epoch ", membership_.epoch, ": ");
    if (membership_.ranks.size() == old_size) {
      absl::StrAppend(&line, "spare ", holder, " takes rank ", f.rank, " (", f.member, " ",
                      f.cause, ")");
    } else {
      absl::StrAppend(&line, "no spare for rank ", f.rank, " (", f.member, " ", f.cause,
                      "); the job shrinks from ", old_size, " to ", membership_.ranks.size(),
                      " ranks");
    }
    agent_->Say(absl::StrCat(line, "; ", ready_spares_.size(), " spare(s) left"));
    recoveries_.push_back(line);
  }
  if (!membership_.retired.empty()) {
    agent_->Say(absl::StrCat("epoch ", membership_.epoch, ": ",
                             absl::StrJoin(membership_.retired, ", "),
                             " left the world with the dead rank's group and wait as spares"));
  }
  pending_.clear();
  pending_since_ = absl::InfiniteFuture();
  waiting_said_ = false;
}

std::optional<FailureDetector::Confirmation> Coordinator::Confirm(const std::string& member) {
  auto it = members_.find(member);
  if (it == members_.end() || !it->second.running) {
    return FailureDetector::Confirmation{FailureKind::kSilent, "the process is gone"};
  }
  // A live process whose heartbeat stopped itself: its training thread is stuck.
  if (Store* s = agent_->store();
      s != nullptr && detector_.state(member) == FailureDetector::State::kSuspected) {
    if (absl::StatusOr<std::string> why = s->TryGet(StalledKey(member), Deadline()); why.ok()) {
      return FailureDetector::Confirmation{FailureKind::kHung, absl::StrCat("it reported: ", *why)};
    }
  }
  switch (agent_->Probe(member)) {
    case Agent::ProcessState::kStopped:
      return FailureDetector::Confirmation{FailureKind::kStopped,
                                           "its process is stopped (SIGSTOP?)"};
    case Agent::ProcessState::kTraced:
      return FailureDetector::Confirmation{FailureKind::kStopped,
                                           "its process is stopped by a debugger"};
    case Agent::ProcessState::kGone:
      return FailureDetector::Confirmation{FailureKind::kSilent, "its process has exited"};
    case Agent::ProcessState::kRunning:
      break;
  }
  return std::nullopt;  // running or sleeping: wait for the confirm window
}

void Coordinator::ReadReports(Store& s, absl::Time now) {
  // Peers' reports of transport errors: the rank's member is suspect at once (the detector
  // still wants a confirmation before a verdict).
  absl::StatusOr<std::vector<std::string>> reports =
      s.ListPrefix(SuspectPrefix(membership_.epoch), Deadline());
  if (!reports.ok()) return;
  const size_t prefix = SuspectPrefix(membership_.epoch).size();
  for (const std::string& key : *reports) {
    if (!reported_.insert(key).second) continue;
    // "<rank>/<reporter>"
    std::pair<std::string, std::string> who = absl::StrSplit(key.substr(prefix), '/');
    int rank = -1, reporter = -1;
    if (!absl::SimpleAtoi(who.first, &rank) || !absl::SimpleAtoi(who.second, &reporter) ||
        rank < 0 || rank >= static_cast<int>(membership_.ranks.size())) {
      continue;
    }
    absl::StatusOr<std::string> why = s.TryGet(key, Deadline());
    const std::string& member = membership_.ranks[rank];
    TLOG(info, "rank {} ({}) reported by rank {}: {}", rank, member, reporter,
                 why.ok() ? *why : key);
    detector_.Suspect(member, absl::StrCat("a peer's transport error: ", why.ok() ? *why : key),
                      now, absl::StrCat("rank ", reporter));
  }
  ReadSdcReports(s, now);
}

// Silent data corruption (health/sdc.h): its replicas named the rank (a majority of digests
// or a replay), all of them alike, so no confirmation is needed: declared dead at once.
void Coordinator::ReadSdcReports(Store& s, absl::Time now) {
  absl::StatusOr<std::vector<std::string>> reports =
      s.ListPrefix(SdcPrefix(membership_.epoch), Deadline());
  if (!reports.ok()) return;
  const size_t prefix = SdcPrefix(membership_.epoch).size();
  for (const std::string& key : *reports) {
    if (!reported_.insert(key).second) continue;
    int rank = -1;
    if (!absl::SimpleAtoi(key.substr(prefix), &rank) || rank < 0 ||
        rank >= static_cast<int>(membership_.ranks.size())) {
      continue;
    }
    const std::string& member = membership_.ranks[rank];
    auto it = members_.find(member);
    if (it == members_.end() || !it->second.running || it->second.dead) continue;
    absl::StatusOr<std::string> why = s.TryGet(key, Deadline());
    it->second.dead = true;
    agent_->Kill(member);  // its state, or its host, is not to be trusted
    Failure f;
    f.kind = FailureKind::kSilentDataCorruption;
    f.reporter = "its replicas";
    f.cause = absl::StrCat("declared dead: silent data corruption: ",
                           why.ok() ? *why : "its replicated state disagreed", "; killed");
    f.last_seen_unix_ms = absl::ToUnixMillis(now);
    OnDeath(member, std::move(f), now);
  }
}

void Coordinator::Poll(absl::Time now) {
  if (stopped_ || done_set_) return;
  Store* s = agent_->store();
  if (s == nullptr) return;
  for (const std::string& name : order_) {
    Member& m = members_[name];
    if (!m.running || m.dead) continue;
    absl::StatusOr<std::string> beat = s->TryGet(HeartbeatKey(name), Deadline());
    int64_t counter = 0;
    const bool beats = detector_.watching(name);
    if (beat.ok() && *beat == kFinishedBeat) {
      // It called Runtime::Finish: done with the job, no longer beating, and not dead for
      // that; its exit (whenever it comes) is the agent's to report.
      if (beats) detector_.Forget(name);
      continue;
    }
    if (beat.ok() && absl::SimpleAtoi(*beat, &counter)) {
      // Only members that beat are watched: a program without the Runtime never does.
      if (!beats) detector_.Watch(name, now);
      detector_.Observe(name, counter, now);
      m.stopped_since = absl::InfiniteFuture();
    } else if (!beats) {
      // Not beating (yet): a process stopped for a heartbeat timeout is dead all the same
      // (e.g. SIGSTOP before its first beat).
      const Agent::ProcessState p = agent_->Probe(name);
      if (p != Agent::ProcessState::kStopped && p != Agent::ProcessState::kTraced) {
        m.stopped_since = absl::InfiniteFuture();
      } else if (m.stopped_since == absl::InfiniteFuture()) {
        m.stopped_since = now;
      } else if (now - m.stopped_since >= options_.heartbeat_timeout) {
        m.dead = true;
        agent_->Kill(name);
        Failure f;
        f.kind = FailureKind::kStopped;
        f.signal = SIGSTOP;
        f.cause = absl::StrCat("declared dead: its process is stopped (SIGSTOP?) for ",
                               absl::FormatDuration(absl::Trunc(now - m.stopped_since,
                                                                absl::Milliseconds(1))),
                               " before its first heartbeat; killed");
        f.last_seen_unix_ms = absl::ToUnixMillis(m.stopped_since);
        OnDeath(name, std::move(f), now);
        continue;
      }
    }
    if (m.spare && m.rank < 0 && !m.ready && s->TryGet(SpareKey(name), Deadline()).ok()) {
      m.ready = true;
      ready_spares_.push_back(name);
      TLOG(debug, "spare {} is ready", name);
    }
  }
  ReadReports(*s, now);
  TryReplace(now);  // a failure may be waiting for a spare that just became ready
  // A rank could not build the current epoch's world though no rank died (they entered the
  // build at different times): every rank builds again in the next epoch.
  if (pending_.empty() && !done_set_) {
    if (absl::StatusOr<std::string> why = s->TryGet(RebuildRequestKey(membership_.epoch),
                                                     Deadline());
        !why.ok()) {
      // No rank asked.
    } else if (auto done = std::find_if(members_.begin(), members_.end(),
                                        [](const auto& e) { return e.second.finished; });
               done != members_.end()) {
      // A rank that finished the job never builds another world (e.g. a spare was promoted
      // for a rank that died after its last step): the job's work is done; the rest stop.
      agent_->Say(absl::StrCat("epoch ", membership_.epoch, ": the world cannot be built (",
                               *why, ") because ", done->first,
                               " has already finished the job; the job is done"));
      finished_ = true;
      SetDone("finished");
    } else if (rebuilds_ >= options_.max_rebuilds) {
      failure_ = absl::StrCat("the world of epoch ", membership_.epoch, " could not be built (",
                              *why, ") after ", rebuilds_,
                              " rebuilds without a failure; see the ranks' logs for why");
      agent_->Say(*failure_);
      SetDone(absl::StrCat("failed: ", *failure_));
    } else {
      absl::StatusOr<Membership> next =
          PublishNextEpoch(*s, membership_, {}, ready_spares_, Deadline());
      if (next.ok()) {
        ++rebuilds_;
        agent_->Say(absl::StrCat("epoch ", next->epoch, ": the world of epoch ",
                                 membership_.epoch, " could not be built (", *why,
                                 "); every rank builds it again"));
        EnterEpoch(*std::move(next));
      }
    }
  }
  for (const FailureDetector::Verdict& v :
       detector_.Check(now, [this](const std::string& m) { return Confirm(m); })) {
    auto it = members_.find(v.member);
    if (it == members_.end() || !it->second.running) continue;
    // A hung process must not come back to life in the new epoch: kill it first.
    it->second.dead = true;
    agent_->Kill(v.member);
    Failure f;
    f.kind = v.kind;
    f.signal = v.kind == FailureKind::kStopped ? SIGSTOP : 0;
    f.reporter = v.reporter;
    f.cause = absl::StrCat("declared dead: ", v.cause, "; killed");
    f.last_seen_unix_ms = absl::ToUnixMillis(v.last_beat);
    OnDeath(v.member, std::move(f), now);
  }
}

void Coordinator::RecordFailure(int rank, const std::string& reason) {
  Store* s = agent_->store();
  if (s == nullptr) return;
  absl::Status status = s->Set(FailedKey(membership_.epoch, rank), reason, Deadline());
  if (!status.ok()) {
    agent_->Say(absl::StrCat("cannot record the failure of rank ", rank, " in the store: ",
                             status.ToString()));
  }
}

void Coordinator::SetDone(const std::string& reason) {
  if (done_set_) return;
  done_set_ = true;
  Store* s = agent_->store();
  if (s == nullptr) return;
  absl::Status status = s->Set(kDoneKey, reason, Deadline());
  if (!status.ok()) {
    agent_->Say(absl::StrCat("cannot record the end of the job in the store: ",
                             status.ToString()));
  }
}

}  // namespace trident::health
