#include "health/detector.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace trident::health {

void FailureDetector::Watch(const std::string& member, absl::Time now) {
  Entry e;
  e.last_beat = now;
  members_[member] = e;
}

void FailureDetector::Forget(const std::string& member) { members_.erase(member); }

void FailureDetector::Observe(const std::string& member, int64_t counter, absl::Time now) {
  auto it = members_.find(member);
  if (it == members_.end() || it->second.state == State::kDead) return;
  Entry& e = it->second;
  if (counter == e.counter) return;
  e.counter = counter;
  e.last_beat = now;
  if (e.state == State::kSuspected) {
    e.state = State::kAlive;  // late, but alive
    e.reason.clear();
  }
}

void FailureDetector::Suspect(const std::string& member, absl::string_view reason,
                              absl::Time now, const std::string& observer) {
  auto it = members_.find(member);
  if (it == members_.end() || it->second.state == State::kDead) return;
  it->second.reports[observer] = now;
  if (it->second.state != State::kAlive) return;
  it->second.state = State::kSuspected;
  it->second.suspected_at = now;
  it->second.reason = std::string(reason);
  // A report is not a beat: only a new heartbeat clears it, and only after it was made.
  it->second.last_beat = std::min(it->second.last_beat, now);
}

std::vector<FailureDetector::Verdict> FailureDetector::Check(absl::Time now,
                                                             const ConfirmFn& confirm) {
  std::vector<Verdict> verdicts;
  for (auto& [member, e] : members_) {
    if (e.state == State::kDead) continue;
    const absl::Duration silent = now - e.last_beat;
    if (e.state == State::kAlive && silent >= options_.timeout) {
      e.state = State::kSuspected;
      e.suspected_at = now;
      e.reason = absl::StrCat("no heartbeat for ", absl::FormatDuration(absl::Trunc(silent, absl::Milliseconds(1))));
    }
    // Reports of two observers within the window confirm each other, beats or not.
    std::vector<std::string> observers;
    for (auto r = e.reports.begin(); r != e.reports.end();) {
      if (now - r->second > options_.confirm_window) {
        r = e.reports.erase(r);
      } else {
        observers.push_back(r->first);
        ++r;
      }
    }
    if (observers.size() >= 2) {
      if (e.state == State::kAlive) e.reason = "reported by peers";
      e.state = State::kDead;
      verdicts.push_back({member,
                          absl::StrCat(e.reason, "; confirmed by a second observer (",
                                       absl::StrJoin(observers, ", "), ")"),
                          e.last_beat, FailureKind::kUnreachable, absl::StrJoin(observers, ", ")});
      continue;
    }
    if (e.state != State::kSuspected) continue;
    std::optional<Confirmation> confirmed;
    if (confirm) confirmed = confirm(member);
    if (!confirmed.has_value() && now - e.suspected_at >= options_.confirm_window) {
      confirmed = Confirmation{FailureKind::kSilent,
                               absl::StrCat("still silent ",
                                            absl::FormatDuration(options_.confirm_window),
                                            " later")};
    }
    if (confirmed.has_value()) {
      e.state = State::kDead;
      verdicts.push_back({member, absl::StrCat(e.reason, "; ", confirmed->reason), e.last_beat,
                          confirmed->kind, "agent"});
    }
  }
  return verdicts;
}

FailureDetector::State FailureDetector::state(const std::string& member) const {
  auto it = members_.find(member);
  return it == members_.end() ? State::kAlive : it->second.state;
}

absl::Time FailureDetector::NextCheck() const {
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [member, e] : members_) {
    if (e.state == State::kAlive) next = std::min(next, e.last_beat + options_.timeout);
    if (e.state == State::kSuspected) next = std::min(next, e.suspected_at + options_.confirm_window);
  }
  return next;
}

}  // namespace trident::health
