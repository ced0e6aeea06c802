#include "health/membership.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace trident::health {

std::string MembershipKey(int64_t epoch) { return absl::StrCat("job/membership/", epoch); }
std::string HeartbeatKey(absl::string_view member) {
  return absl::StrCat("job/heartbeat/", member);
}
std::string SpareKey(absl::string_view member) { return absl::StrCat("job/spare/", member); }
std::string StalledKey(absl::string_view member) { return absl::StrCat("job/stalled/", member); }
std::string SuspectPrefix(int64_t epoch) {
  return absl::StrCat(EpochPrefix(epoch), "job/suspect_rank/");
}
std::string SuspectKey(int64_t epoch, int rank, int reporter) {
  return absl::StrCat(SuspectPrefix(epoch), rank, "/", reporter);
}
std::string EpochPrefix(int64_t epoch) {
  return epoch <= 1 ? std::string() : absl::StrCat("epoch/", epoch, "/");
}
std::string FailedKey(int64_t epoch, int rank) {
  return absl::StrCat(EpochPrefix(epoch), "job/failed/", rank);
}
std::string ShrinkGroupsKey(int64_t epoch) {
  return absl::StrCat(EpochPrefix(epoch), "job/shrink_groups");
}
std::string RebuildRequestKey(int64_t epoch) { return absl::StrCat("job/rebuild/", epoch); }
std::string WorkerId(int index) { return absl::StrCat("w", index); }
std::string SpareId(int index) { return absl::StrCat("s", index); }

Membership Membership::Initial(int world_size) {
  Membership m;
  for (int r = 0; r < world_size; ++r) m.ranks.push_back(WorkerId(r));
  return m;
}

int Membership::RankOf(absl::string_view member) const {
  auto it = std::find(ranks.begin(), ranks.end(), member);
  return it == ranks.end() ? -1 : static_cast<int>(it - ranks.begin());
}

std::string Membership::ToJson() const {
  nlohmann::json j;
  j["epoch"] = epoch;
  j["ranks"] = ranks;
  j["failures"] = nlohmann::json::array();
  for (const Failure& f : failures) {
    j["failures"].push_back({{"rank", f.rank},
                             {"member", f.member},
                             {"cause", f.cause},
                             {"last_seen_unix_ms", f.last_seen_unix_ms},
                             {"verdict_unix_ms", f.verdict_unix_ms},
                             {"kind", std::string(FailureKindName(f.kind))},
                             {"signal", f.signal},
                             {"exit_status", f.exit_status},
                             {"reporter", f.reporter}});
  }
  if (!retired.empty()) j["retired"] = retired;
  return j.dump();
}

absl::StatusOr<Membership> Membership::FromJson(absl::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("epoch") || !j.contains("ranks")) {
    return absl::DataLossError(absl::StrCat("membership record is not valid JSON: ", json));
  }
  try {
    Membership m;
    m.epoch = j.at("epoch").get<int64_t>();
    m.ranks = j.at("ranks").get<std::vector<std::string>>();
    for (const auto& f : j.value("failures", nlohmann::json::array())) {
      Failure failure{f.at("rank").get<int>(), f.at("member").get<std::string>(),
                      f.at("cause").get<std::string>(),
                      f.value("last_seen_unix_ms", int64_t{0}),
                      f.value("verdict_unix_ms", int64_t{0})};
      failure.kind = FailureKindFromName(f.value("kind", std::string("unknown")));
      failure.signal = f.value("signal", 0);
      failure.exit_status = f.value("exit_status", -1);
      failure.reporter = f.value("reporter", std::string());
      m.failures.push_back(std::move(failure));
    }
    m.retired = j.value("retired", std::vector<std::string>{});
    return m;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("membership record is malformed (", e.what(), "): ", json));
  }
}

std::string Membership::DescribeFailures() const {
  std::vector<std::string> parts;
  for (const Failure& f : failures) {
    parts.push_back(absl::StrCat("rank ", f.rank, " (", f.member, ") ", f.cause));
  }
  return absl::StrJoin(parts, "; ");
}

namespace {

// Creates next's membership record by compare-and-set; whoever loses gets the winner's.
absl::StatusOr<Membership> CasMembership(Store& store, const Membership& next,
                                         absl::Time deadline, bool* won) {
  const std::string mine = next.ToJson();
  ASSIGN_OR_RETURN(std::string stored,
                   store.CompareSet(MembershipKey(next.epoch), "", mine, deadline));
  *won = stored == mine;
  if (!*won) return Membership::FromJson(stored);
  RETURN_IF_ERROR(store.Set(kEpochKey, absl::StrCat(next.epoch), deadline));
  return next;
}

}  // namespace

absl::StatusOr<Membership> PublishNextEpoch(Store& store, const Membership& current,
                                            const std::vector<Failure>& failures,
                                            std::vector<std::string>& spares,
                                            absl::Time deadline) {
  if (failures.size() > spares.size()) {
    Membership shown;
    shown.failures = failures;
    return absl::ResourceExhaustedError(absl::StrCat(
        "no spare left to replace ", shown.DescribeFailures(), " (", spares.size(),
        " spare(s) for ", failures.size(), " failure(s))"));
  }
  Membership next;
  next.epoch = current.epoch + 1;
  next.ranks = current.ranks;
  next.failures = failures;
  size_t used = 0;
  for (const Failure& f : failures) next.ranks[f.rank] = spares[used++];
  bool won = false;
  ASSIGN_OR_RETURN(Membership published, CasMembership(store, next, deadline, &won));
  if (!won) {
    // Another coordinator published this epoch first; theirs is the truth.
    spares.erase(std::remove_if(spares.begin(), spares.end(),
                                [&](const std::string& s) { return published.RankOf(s) >= 0; }),
                 spares.end());
    return published;
  }
  spares.erase(spares.begin(), spares.begin() + static_cast<std::ptrdiff_t>(used));
  return published;
}

absl::StatusOr<Membership> PublishShrunkEpoch(Store& store, const Membership& current,
                                              const std::vector<Failure>& failures,
                                              const std::vector<std::vector<int>>& groups,
                                              absl::Time deadline) {
  const int n = static_cast<int>(current.ranks.size());
  std::vector<int> group_of(n, -1);
  for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
    for (int r : groups[g]) {
      if (r >= 0 && r < n) group_of[r] = g;
    }
  }
  std::vector<bool> dropped(groups.size(), false);
  for (const Failure& f : failures) {
    if (f.rank < 0 || f.rank >= n || group_of[f.rank] < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot shrink: rank ", f.rank, " is in none of the trainer's shrink groups"));
    }
    dropped[group_of[f.rank]] = true;
  }
  Membership next;
  next.epoch = current.epoch + 1;
  next.failures = failures;
  for (int r = 0; r < n; ++r) {
    const bool failed = std::any_of(failures.begin(), failures.end(),
                                    [&](const Failure& f) { return f.rank == r; });
    if (group_of[r] < 0 || !dropped[group_of[r]]) {
      next.ranks.push_back(current.ranks[r]);
    } else if (!failed) {
      next.retired.push_back(current.ranks[r]);
    }
  }
  if (std::none_of(dropped.begin(), dropped.end(), [](bool d) { return !d; }) ||
      next.ranks.empty()) {
    Membership shown;
    shown.failures = failures;
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot shrink: every group holds a failed rank (", shown.DescribeFailures(), ")"));
  }
  bool won = false;
  return CasMembership(store, next, deadline, &won);
}

std::string ShrinkGroupsToJson(const std::vector<std::vector<int>>& groups) {
  return nlohmann::json(groups).dump();
}

absl::StatusOr<std::vector<std::vector<int>>> ShrinkGroupsFromJson(absl::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr, false);
  try {
    if (!j.is_discarded()) return j.get<std::vector<std::vector<int>>>();
  } catch (const nlohmann::json::exception&) {
  }
  return absl::DataLossError(absl::StrCat("shrink groups are not a JSON list of rank lists: ", json));
}

absl::StatusOr<Membership> ReadMembership(Store& store, int world_size, absl::Time deadline) {
  absl::StatusOr<std::string> epoch = store.TryGet(kEpochKey, deadline);
  if (absl::IsNotFound(epoch.status())) return Membership::Initial(world_size);
  RETURN_IF_ERROR(epoch.status());
  int64_t e = 0;
  if (!absl::SimpleAtoi(*epoch, &e) || e < 1) {
    return absl::DataLossError(absl::StrCat("store key ", kEpochKey, " holds '", *epoch,
                                            "', not an epoch number"));
  }
  if (e == 1) return Membership::Initial(world_size);
  ASSIGN_OR_RETURN(std::string json, store.Get(MembershipKey(e), deadline));
  return Membership::FromJson(json);
}

}  // namespace trident::health
