#include "tools/trident-run/hang_watch.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "comm/flight_recorder.h"
#include "common/logging.h"
#include "health/membership.h"
#include "tools/trident-fr/analyze.h"

namespace trident::run {
namespace {

constexpr absl::Duration kStoreCall = absl::Seconds(1);
constexpr char kStalledPrefix[] = "job/stalled/";

std::string StateWords(health::Agent::ProcessState s) {
  switch (s) {
    case health::Agent::ProcessState::kRunning: return "running";
    case health::Agent::ProcessState::kStopped: return "stopped (SIGSTOP?)";
    case health::Agent::ProcessState::kTraced: return "stopped by a debugger";
    case health::Agent::ProcessState::kGone: return "gone";
  }
  return "?";
}

std::string RankOfMember(const std::vector<std::string>& ranks, const std::string& member) {
  auto it = std::find(ranks.begin(), ranks.end(), member);
  return it == ranks.end() ? member
                           : absl::StrCat("rank ", it - ranks.begin(), " (", member, ")");
}

}  // namespace

HangWatch::HangWatch(Hooks hooks, absl::Duration heartbeat_timeout)
    : hooks_(std::move(hooks)),
      silence_(std::max(heartbeat_timeout / 2, absl::Milliseconds(300))) {}

void HangWatch::Poll(absl::Time now, const std::vector<std::string>& ranks) {
  if (now < next_poll_) return;
  next_poll_ = now + kPollEvery;
  Store* s = hooks_.store();
  if (s == nullptr) return;
  const absl::Time deadline = now + kStoreCall;

  if (asking_) {
    bool waiting = false;
    for (const std::string& member : ranks) {
      if (answered_.count(member)) continue;
      // A local rank that is stopped or gone cannot answer; a rank of another node (not our
      // child) is waited for like any other.
      if (hooks_.pid(member) > 0 &&
          hooks_.probe(member) != health::Agent::ProcessState::kRunning) {
        continue;
      }
      absl::StatusOr<std::string> dump = s->TryGet(absl::StrCat(fr::kDumpPrefix, member), deadline);
      if (dump.ok() && absl::StrContains(*dump, nonce_)) {
        answered_.insert(member);
      } else {
        waiting = true;
      }
    }
    if (!waiting || now - asked_at_ >= kAnswerWait) Conclude(ranks);
    return;
  }

  // A rank met an op deadline, or its heartbeat stopped itself.
  if (std::vector<std::string> reports = NewReports(ranks); !reports.empty()) {
    Ask(now,
        reports.size() == 1
            ? reports[0]
            : absl::StrCat(reports[0], " (and ", reports.size() - 1, " more report(s))"),
        /*from_silence=*/false, ranks);
    return;
  }

  // A heartbeat that has not moved for a while, though its process lives.
  for (const std::string& member : ranks) {
    absl::StatusOr<std::string> beat = s->TryGet(health::HeartbeatKey(member), deadline);
    if (!beat.ok() || *beat == health::kFinishedBeat) continue;
    auto [it, fresh] = beat_.try_emplace(member, *beat);
    if (fresh || it->second != *beat) {
      it->second = *beat;
      beat_since_[member] = now;
      silent_said_.erase(member);
      continue;
    }
    const absl::Duration silent = now - beat_since_[member];
    if (silent < silence_ || silent_said_.count(member)) continue;
    const health::Agent::ProcessState p = hooks_.probe(member);
    if (p == health::Agent::ProcessState::kGone) continue;
    silent_said_.insert(member);
    Ask(now,
        absl::StrCat(RankOfMember(ranks, member), "'s heartbeat has been silent for ",
                     absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(100))),
                     " (its process is ", StateWords(p), ")"),
        /*from_silence=*/true, ranks);
    return;
  }
}

std::vector<std::string> HangWatch::NewReports(const std::vector<std::string>& ranks) {
  std::vector<std::string> out;
  Store* s = hooks_.store();
  if (s == nullptr) return out;
  const absl::Time deadline = absl::Now() + kStoreCall;
  for (const char* prefix : {fr::kHangReportPrefix, kStalledPrefix}) {
    absl::StatusOr<std::vector<std::string>> keys = s->ListPrefix(prefix, deadline);
    if (!keys.ok()) continue;
    for (const std::string& key : *keys) {
      absl::StatusOr<std::string> value = s->TryGet(key, deadline);
      if (!value.ok() || !seen_reports_.insert(absl::StrCat(key, "=", *value)).second) continue;
      const std::string member(absl::StripPrefix(key, prefix));
      out.push_back(absl::StrCat(RankOfMember(ranks, member),
                                 prefix == std::string(fr::kHangReportPrefix)
                                     ? " met an op deadline: "
                                     : " stopped its heartbeat: ",
                                 *value));
    }
  }
  return out;
}

void HangWatch::Ask(absl::Time now, const std::string& why, bool from_silence,
                    const std::vector<std::string>& ranks) {
  Store* s = hooks_.store();
  if (s == nullptr) return;
  nonce_ = absl::StrCat("fr-request-", ++requests_, "-", absl::ToUnixMillis(now));
  why_ = why;
  from_silence_ = from_silence;
  answered_.clear();
  state_at_ask_.clear();
  for (const std::string& member : ranks) state_at_ask_[member] = hooks_.probe(member);
  absl::Status set = s->Set(fr::kDumpRequestKey, absl::StrCat(nonce_, " ", why), now + kStoreCall);
  if (!set.ok()) {
    hooks_.say(absl::StrCat("hang suspected: ", why, "; cannot ask the ranks for their flight "
                            "recorders: ", set.ToString()));
    return;
  }
  TLOG(debug, "hang suspected: {}; asked the ranks for their flight recorders ({})", why, nonce_);
  asking_ = true;
  asked_at_ = now;
}

std::map<std::string, std::string> HangWatch::Dumps(const std::vector<std::string>& ranks) {
  std::map<std::string, std::string> out;
  Store* s = hooks_.store();
  if (s == nullptr) return out;
  const absl::Time deadline = absl::Now() + kStoreCall;
  std::vector<std::string> members = ranks;
  if (members.empty()) {
    absl::StatusOr<std::vector<std::string>> keys = s->ListPrefix(fr::kDumpPrefix, deadline);
    if (keys.ok()) {
      for (const std::string& k : *keys) members.emplace_back(absl::StripPrefix(k, fr::kDumpPrefix));
    }
  }
  for (const std::string& member : members) {
    absl::StatusOr<std::string> dump = s->TryGet(absl::StrCat(fr::kDumpPrefix, member), deadline);
    if (dump.ok()) out[member] = *std::move(dump);
  }
  return out;
}

void HangWatch::Conclude(const std::vector<std::string>& ranks) {
  asking_ = false;
  // The reports that came while the ranks answered are of the same hang.
  if (std::vector<std::string> more = NewReports(ranks); !more.empty()) {
    absl::StrAppend(&why_, " (and ", more.size(), " more report(s) since)");
  }
  std::map<std::string, std::string> dumps = Dumps(ranks);
  std::vector<std::pair<std::string, std::string>> files(dumps.begin(), dumps.end());
  const fr::Analysis a = fr::AnalyzeDumps(files);

  // Those that did not answer: what the kernel says about them (a stopped process cannot).
  std::vector<std::string> silent_lines, stopped;
  for (const std::string& member : ranks) {
    if (answered_.count(member)) continue;
    // Stopped when asked (it may have been killed since: say why it could not answer);
    // otherwise what it is now.
    health::Agent::ProcessState p = hooks_.probe(member);
    if (auto it = state_at_ask_.find(member);
        it != state_at_ask_.end() && (it->second == health::Agent::ProcessState::kStopped ||
                                      it->second == health::Agent::ProcessState::kTraced)) {
      p = it->second;
    }
    const int pid = hooks_.pid(member);
    if (pid <= 0) {  // another node's rank: its own agent knows its process
      silent_lines.push_back(absl::StrCat(
          RankOfMember(ranks, member), " did not answer within ", absl::FormatDuration(kAnswerWait),
          " (a rank of another node: see its trident-run)",
          dumps.count(member) ? "; its last dump is used" : ""));
      continue;
    }
    std::string who = absl::StrCat(RankOfMember(ranks, member),
                                   pid > 0 ? absl::StrCat(", pid ", pid) : "");
    switch (p) {
      case health::Agent::ProcessState::kStopped:
      case health::Agent::ProcessState::kTraced:
        stopped.push_back(absl::StrCat(RankOfMember(ranks, member), " is ", StateWords(p),
                                       ": it cannot answer"));
        silent_lines.push_back(absl::StrCat(who, " did not answer: its process is ",
                                            StateWords(p), " and cannot"));
        break;
      case health::Agent::ProcessState::kGone:
        silent_lines.push_back(absl::StrCat(who, " did not answer: its process is gone",
                                            dumps.count(member) ? " (its last dump is used)" : ""));
        break;
      case health::Agent::ProcessState::kRunning:
        silent_lines.push_back(absl::StrCat(
            who, " did not answer within ", absl::FormatDuration(kAnswerWait),
            " though its process runs (its runtime's watcher thread is stuck, or it has no "
            "runtime)", dumps.count(member) ? "; its last dump is used" : ""));
        break;
    }
  }
  std::string verdict = a.Verdict();
  // A silent heartbeat alone is weak evidence on a loaded machine: say something only when a
  // rank is stopped, or the rings that answered show a rank at fault.
  const bool rings_clean = absl::StartsWith(verdict, "no rank is behind") ||
                           absl::StartsWith(verdict, "no flight-recorder dumps");
  if (from_silence_ && stopped.empty() && (answered_.empty() || rings_clean)) {
    TLOG(debug, "hang suspected ({}), but the flight recorders show nothing wrong ({} answered)",
         why_, answered_.size());
    return;
  }
  if (!stopped.empty()) {
    verdict = absl::StrCat(absl::StrJoin(stopped, "; "), "; ", verdict);
  }
  ++verdicts_;
  hooks_.say(absl::StrCat("hang suspected: ", why_, "; asked the ranks for their flight "
                          "recorders through the store: ", answered_.size(), " of ",
                          ranks.size(), " answered"));
  hooks_.say(absl::StrCat("hang verdict: ", verdict));
  for (const std::string& l : silent_lines) hooks_.say(absl::StrCat("  ", l));
  for (absl::string_view l : absl::StrSplit(a.Text(), '\n', absl::SkipEmpty())) {
    hooks_.say(absl::StrCat("  ", l));
  }
}

void HangWatch::Final(const std::vector<std::string>& ranks) {
  if (asking_) Conclude(ranks);
  if (verdicts_ > 0) return;
  std::map<std::string, std::string> dumps = Dumps({});
  if (dumps.empty()) return;
  std::vector<std::pair<std::string, std::string>> files(dumps.begin(), dumps.end());
  const fr::Analysis a = fr::AnalyzeDumps(files);
  ++verdicts_;
  hooks_.say(absl::StrCat("flight recorders the ranks left when their ops failed (", dumps.size(),
                          "): ", a.Verdict()));
  for (absl::string_view l : absl::StrSplit(a.Text(), '\n', absl::SkipEmpty())) {
    hooks_.say(absl::StrCat("  ", l));
  }
}

}  // namespace trident::run
