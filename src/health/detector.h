// FailureDetector: decides from heartbeats which members of a job are dead, without a clock
// of its own (every call takes `now`), so tests drive it with a fake clock.
//
// A member is alive while its heartbeat counter keeps changing. Silent for `timeout` (or
// reported by a peer, e.g. after a transport error), it becomes suspected; a suspicion turns
// into a verdict only when it is confirmed: by the caller's confirm function (the agent sees
// that the process is stopped or gone), by `confirm_window` more silence, or by a second
// observer (two different peers reported it within `confirm_window`: its process lives but
// its links do not). A heartbeat that arrives while suspected clears the suspicion, so a
// delayed but live member (a slow link, a busy store, one flaky peer) is never evicted. Times are the observer's: counters are compared, never the
// members' clocks.
//
//   FailureDetector d({.timeout = absl::Seconds(1), .confirm_window = absl::Seconds(1)});
//   d.Watch("w3", now);
//   d.Observe("w3", counter_read_from_store, now);               // on every poll
//   for (auto& v : d.Check(now, confirm)) Declare(v.member, v.cause);
//
// Not thread-safe: one owner (the agent's watch loop).
#ifndef TRIDENT_HEALTH_DETECTOR_H_
#define TRIDENT_HEALTH_DETECTOR_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "trident/failure.h"

namespace trident::health {

class FailureDetector {
 public:
  struct Options {
    absl::Duration timeout = absl::Seconds(1);         // silence before suspicion
    absl::Duration confirm_window = absl::Seconds(1);  // more silence that confirms it
  };
  enum class State { kAlive, kSuspected, kDead };
  struct Verdict {
    std::string member;
    std::string cause;  // "no heartbeat for 1.05s; process stopped (SIGSTOP?)"
    absl::Time last_beat;  // the last sign of life
    FailureKind kind = FailureKind::kSilent;  // what confirmed it
    std::string reporter;  // "agent", or the observers that confirmed each other
  };
  // What the caller saw that confirms a suspicion (its process stopped, gone, or hung).
  struct Confirmation {
    FailureKind kind;
    std::string reason;
  };
  // Returns a confirmation when the caller can tell that `member` is dead or hung.
  using ConfirmFn = std::function<std::optional<Confirmation>(const std::string& member)>;

  explicit FailureDetector(Options options) : options_(options) {}

  // Starts watching `member`, as if it had beaten at `now`. Watching again resets it.
  void Watch(const std::string& member, absl::Time now);
  void Forget(const std::string& member);
  // The member's heartbeat counter as read at `now`; a new value is a sign of life.
  void Observe(const std::string& member, int64_t counter, absl::Time now);
  // Peer `observer` reports `member` (e.g. a transport error talking to it): suspected at once;
  // a report by a second observer within confirm_window is a verdict.
  void Suspect(const std::string& member, absl::string_view reason, absl::Time now,
               const std::string& observer = "");

  // Moves members along alive -> suspected -> dead at `now`; returns the new verdicts (each
  // member once). `confirm` may be null.
  std::vector<Verdict> Check(absl::Time now, const ConfirmFn& confirm);

  State state(const std::string& member) const;
  bool watching(const std::string& member) const { return members_.count(member) > 0; }
  // The earliest time at which Check could change anything (for the caller's poll timeout).
  absl::Time NextCheck() const;

 private:
  struct Entry {
    int64_t counter = -1;
    absl::Time last_beat;
    State state = State::kAlive;
    absl::Time suspected_at;
    std::string reason;  // why it is suspected
    std::map<std::string, absl::Time> reports;  // observer -> time of its last report
  };
  Options options_;
  std::map<std::string, Entry> members_;
};

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_DETECTOR_H_
