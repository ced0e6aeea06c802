#include "tools/trident-fr/analyze.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace trident::fr {

std::string RankRing::Op::Signature() const {
  std::string s = absl::StrCat(op, "(", dtype, ", count=", count);
  if (peer >= 0) absl::StrAppend(&s, ", root=", peer);
  return s + ")";
}

namespace {

bool Pending(const RankRing::Op& op) { return op.state == "issued" || op.state == "started"; }

// The op a ring's rank is in: its first pending op, else its last op when that one failed (a
// deadline or an abort ended it; the rank was in it). nullptr: none.
const RankRing::Op* InOp(const RankRing& ring) {
  for (const auto& op : ring.collectives) {
    if (Pending(op)) return &op;
  }
  if (!ring.collectives.empty() && ring.collectives.back().state == "failed") {
    return &ring.collectives.back();
  }
  return nullptr;
}

std::string Seconds(int64_t ns);

std::string DescribeInOp(const RankRing& ring, const RankRing::Op& op) {
  if (op.state == "failed") {
    return absl::StrCat(op.op, " #", op.seq, " (failed after ",
                        Seconds(op.ended_ns - op.issued_ns), "; issued ",
                        Seconds(ring.dump_ns - op.issued_ns), " before its dump)");
  }
  return absl::StrCat(op.op, " #", op.seq, " (", op.state, ", issued ",
                      Seconds(ring.dump_ns - op.issued_ns), " before its dump)");
}

int JobRank(const RankRing& ring, int group_rank) {
  return group_rank < static_cast<int>(ring.members.size()) ? ring.members[group_rank] : group_rank;
}

std::string Seconds(int64_t ns) { return absl::StrFormat("%.1f s", ns / 1e9); }

std::string RankName(const RankRing* ring, int group_rank) {
  if (ring == nullptr || ring->members.size() <= static_cast<size_t>(group_rank) ||
      ring->members[group_rank] == group_rank) {
    return absl::StrCat("rank ", group_rank);
  }
  return absl::StrCat("rank ", group_rank, " (job rank ", ring->members[group_rank], ")");
}

std::string RankList(const std::vector<int>& ranks) {
  return absl::StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

void ParseDump(const std::string& file, const nlohmann::json& j,
               std::map<std::string, std::map<int, RankRing>>& groups) {
  std::map<int, std::string> threads, stacks;
  for (const auto& t : j.value("threads", nlohmann::json::array())) {
    const int tid = t.value("tid", 0);
    std::string wchan = t.value("wchan", "");
    threads[tid] = !t.contains("state")
                       ? absl::StrCat("tid ", tid, " had exited when the dump was written")
                       : absl::StrCat("tid ", tid, " (", t.value("name", "?"), ") state ",
                                      t.value("state", "?"),
                                      wchan.empty() || wchan == "0" ? ""
                                                                    : ", in the kernel at " + wchan);
    stacks[tid] = t.value("kernel_stack", "");
  }
  for (const auto& c : j.at("communicators")) {
    RankRing ring;
    ring.file = file;
    ring.job_rank = j.value("rank", -1);
    ring.pid = j.value("pid", 0);
    ring.dump_ns = j.value("time_ns", int64_t{0});
    ring.group_rank = c.at("rank").get<int>();
    ring.size = c.at("size").get<int>();
    ring.members = c.value("members", std::vector<int>{});
    const int tid = c.value("last_issuer_tid", 0);
    if (auto it = threads.find(tid); it != threads.end()) {
      ring.thread = it->second;
      ring.kernel_stack = stacks[tid];
    }
    for (const auto& e : c.at("entries")) {
      RankRing::Op op;
      op.seq = e.at("seq").get<int64_t>();
      if (op.seq < 0) continue;  // point-to-point
      op.op = e.at("op").get<std::string>();
      op.dtype = e.at("dtype").get<std::string>();
      op.state = e.at("state").get<std::string>();
      op.count = e.at("count").get<int64_t>();
      op.peer = e.value("peer", -1);
      op.issued_ns = e.value("issued_ns", int64_t{0});
      op.ended_ns = e.value("ended_ns", int64_t{0});
      ring.collectives.push_back(std::move(op));
    }
    const std::string group = absl::StrCat(c.at("name").get<std::string>(), " epoch ",
                                           c.at("epoch").get<int64_t>());
    RankRing& slot = groups[group][ring.group_rank];
    if (slot.dump_ns <= ring.dump_ns) slot = std::move(ring);  // the newest dump wins
  }
}

// `in_ops`: job rank -> (group, what it is in) over every group, to tell a rank that is in
// another group's op from one stuck outside any op.
using InOps = std::map<int, std::vector<std::pair<std::string, std::string>>>;

GroupFinding AnalyzeGroup(const std::string& name, const std::map<int, RankRing>& rings,
                          const InOps& in_ops) {
  GroupFinding f;
  f.group = name;
  f.size = rings.begin()->second.size;
  const RankRing* any = &rings.begin()->second;
  for (int r = 0; r < f.size; ++r) {
    if (!rings.count(r)) f.no_dump.push_back(r);
  }
  std::map<int, int64_t> last;
  int64_t min_last = INT64_MAX;
  for (const auto& [r, ring] : rings) {
    last[r] = ring.collectives.empty() ? -1 : ring.collectives.back().seq;
    f.last_seq = std::max(f.last_seq, last[r]);
    min_last = std::min(min_last, last[r]);
  }
  auto op_at = [&](int64_t seq) -> const RankRing::Op* {
    for (const auto& [r, ring] : rings) {
      for (const auto& op : ring.collectives) {
        if (op.seq == seq) return &op;
      }
    }
    return nullptr;
  };
  f.lines.push_back(absl::StrCat("group ", name, " (", f.size, " ranks, ", rings.size(),
                                 " with a dump): highest sequence issued #", f.last_seq,
                                 op_at(f.last_seq) ? " " + op_at(f.last_seq)->Signature() : ""));

  // Who is behind, and the first sequence number they never issued.
  if (min_last < f.last_seq) {
    f.first_missing_seq = min_last + 1;
    const RankRing::Op* expected = op_at(f.first_missing_seq);
    f.missing_op = expected ? expected->Signature() : "?";
    for (const auto& [r, l] : last) {
      if (l < f.last_seq) f.behind.push_back(r);
      if (l == min_last) f.never_issued.push_back(r);
    }
    for (int r : f.never_issued) {
      f.lines.push_back(absl::StrCat("  ", RankName(any, r), " never issued #",
                                     f.first_missing_seq, " ", f.missing_op,
                                     ": it is behind (its last op is #", min_last, ")"));
    }
    for (int r : f.behind) {
      if (last[r] == min_last) continue;
      f.lines.push_back(absl::StrCat("  ", RankName(any, r), " is behind too (last op #",
                                     last[r], ")"));
    }
  }

  // The first sequence number where ranks issued different calls.
  std::set<int64_t> seqs;
  int64_t oldest = -1;  // below this, some ring has forgotten the op
  for (const auto& [r, ring] : rings) {
    if (!ring.collectives.empty()) oldest = std::max(oldest, ring.collectives.front().seq);
    for (const auto& op : ring.collectives) seqs.insert(op.seq);
  }
  for (int64_t seq : seqs) {
    if (seq < oldest) continue;
    std::map<std::string, std::vector<int>> classes;
    for (const auto& [r, ring] : rings) {
      for (const auto& op : ring.collectives) {
        if (op.seq == seq) classes[op.Signature()].push_back(r);
      }
    }
    if (classes.size() > 1) {
      f.mismatch_seq = seq;
      f.mismatch = classes;
      std::vector<std::string> parts;
      for (const auto& [sig, ranks] : classes) {
        parts.push_back(absl::StrCat(RankList(ranks), " issued ", sig));
      }
      f.lines.push_back(absl::StrCat("  ranks issued different ops at #", seq, ": ",
                                     absl::StrJoin(parts, "; ")));
      break;  // later differences follow from this one
    }
  }

  // Ranks in an op, and ranks stuck outside any op.
  for (const auto& [r, ring] : rings) {
    const RankRing::Op* in = InOp(ring);
    if (in != nullptr) {
      f.waiting[r] = DescribeInOp(ring, *in);
      f.lines.push_back(absl::StrCat("  ", RankName(&ring, r),
                                     in->state == "failed" ? " was in " : " waits in ",
                                     f.waiting[r]));
    } else if (std::find(f.behind.begin(), f.behind.end(), r) != f.behind.end()) {
      // In another group's op: not stuck outside ops, but not here either.
      std::vector<std::string> other;
      if (auto it = in_ops.find(JobRank(ring, r)); it != in_ops.end()) {
        for (const auto& [group, what] : it->second) {
          if (group != name) other.push_back(absl::StrCat(what, " of group ", group));
        }
      }
      if (!other.empty()) {
        f.elsewhere[r] = absl::StrJoin(other, ", ");
        f.lines.push_back(absl::StrCat("  ", RankName(&ring, r), " is in another group's op: ",
                                       f.elsewhere[r]));
        continue;
      }
      std::string why = "no op pending";
      if (!ring.collectives.empty()) {
        const RankRing::Op& l = ring.collectives.back();
        why = absl::StrCat("its last op #", l.seq, " ", l.Signature(), " ", l.state, " ",
                           Seconds(ring.dump_ns - (l.ended_ns ? l.ended_ns : l.issued_ns)),
                           " before its dump and none is pending");
      }
      if (!ring.thread.empty()) absl::StrAppend(&why, "; training thread ", ring.thread);
      f.outside[r] = why;
      f.lines.push_back(absl::StrCat("  ", RankName(&ring, r),
                                     " is stuck outside any op (a CPU-side hang): ", why));
      if (!ring.kernel_stack.empty()) {
        f.lines.push_back(absl::StrCat("    kernel stack:\n      ",
                                       absl::StrReplaceAll(absl::StripTrailingAsciiWhitespace(
                                                               ring.kernel_stack),
                                                           {{"\n", "\n      "}})));
      }
    }
  }

  if (!f.no_dump.empty()) {
    std::string line = absl::StrCat("  ", RankList(f.no_dump),
                                     f.no_dump.size() == 1 ? " left no dump: what it issued is unknown"
                                                           : " left no dump: what they issued is unknown");
    bool all_wait = !rings.empty() && f.behind.empty() && f.mismatch.empty();
    for (const auto& [r, ring] : rings) all_wait = all_wait && f.waiting.count(r);
    if (all_wait) {
      absl::StrAppend(&line, "; every rank with a dump waits in #", f.last_seq,
                      ", so the ranks without one are the likely cause (stopped, dead, or "
                      "unable to dump)");
      f.no_dump_likely_cause = true;
    }
    f.lines.push_back(line);
  }
  if (f.behind.empty() && f.mismatch.empty() && f.waiting.empty() && f.no_dump.empty()) {
    f.lines.push_back("  every rank issued and completed the same ops");
  }
  return f;
}

}  // namespace

std::string Analysis::Text() const {
  std::string out;
  for (const GroupFinding& g : groups) {
    // A group of one rank that never issued a collective (a tp or pp group of size 1).
    if (g.last_seq < 0 && g.no_dump.empty()) continue;
    for (const std::string& l : g.lines) absl::StrAppend(&out, l, "\n");
  }
  for (const std::string& n : notes) absl::StrAppend(&out, "note: ", n, "\n");
  return out;
}

std::string Analysis::Verdict() const {
  std::vector<std::string> parts;
  std::set<int> named;  // job ranks already named
  auto job = [&](const GroupFinding& g, int r) {
    auto it = job_ranks.find(g.group);
    if (it == job_ranks.end()) return r;
    auto jt = it->second.find(r);
    return jt == it->second.end() ? r : jt->second;
  };
  for (const GroupFinding& g : groups) {
    if (g.mismatch.empty()) continue;
    // The smallest class is the odd one out.
    auto odd = std::min_element(g.mismatch.begin(), g.mismatch.end(), [](auto& a, auto& b) {
      return a.second.size() < b.second.size();
    });
    std::vector<int> odd_ranks, rest_ranks;
    std::string rest_sig;
    for (int r : odd->second) odd_ranks.push_back(job(g, r));
    for (const auto& [sig, ranks] : g.mismatch) {
      if (sig == odd->first) continue;
      rest_sig = sig;
      for (int r : ranks) rest_ranks.push_back(job(g, r));
    }
    parts.push_back(absl::StrCat(RankList(odd_ranks), " called ", odd->first, " at #",
                                 g.mismatch_seq, " of group ", g.group, " where ",
                                 RankList(rest_ranks), " called ", rest_sig));
    named.insert(odd_ranks.begin(), odd_ranks.end());
  }
  // Ranks that never issued #N: first the groups where they are a minority (the others
  // issued it and wait); a majority that "never issued" an op of one group is, as a rule,
  // waiting for that minority in another group. The majority cases only when nothing else.
  std::vector<const GroupFinding*> by_minority;
  for (const GroupFinding& g : groups) {
    if (!g.never_issued.empty()) by_minority.push_back(&g);
  }
  std::stable_sort(by_minority.begin(), by_minority.end(), [](auto* a, auto* b) {
    return a->never_issued.size() * b->size < b->never_issued.size() * a->size;
  });
  bool minority_named = false;
  for (const GroupFinding* gp : by_minority) {
    const GroupFinding& g = *gp;
    const bool minority = 2 * g.never_issued.size() < static_cast<size_t>(g.size);
    if (!minority && (minority_named || !parts.empty())) continue;
    minority_named = minority_named || minority;
    for (int r : g.never_issued) {
      const int j = job(g, r);
      if (named.count(j)) continue;
      named.insert(j);
      std::string what = absl::StrCat("rank ", j, " never issued #", g.first_missing_seq, " ",
                                      g.missing_op, " of group ", g.group);
      if (auto it = g.elsewhere.find(r); it != g.elsewhere.end()) {
        absl::StrAppend(&what, ": it is in ", it->second);
      } else if (auto ot = g.outside.find(r); ot != g.outside.end()) {
        absl::StrAppend(&what, ": it is stuck outside any op (", ot->second, ")");
      }
      parts.push_back(what);
    }
  }
  for (const GroupFinding& g : groups) {
    if (!g.no_dump_likely_cause) continue;
    std::vector<int> ranks;
    for (int r : g.no_dump) {
      if (!named.count(r)) ranks.push_back(r);  // no dump: group rank (members unknown)
    }
    if (ranks.empty()) continue;
    named.insert(ranks.begin(), ranks.end());
    parts.push_back(absl::StrCat(RankList(ranks), " left no dump while every other rank waits in #",
                                 g.last_seq, " of group ", g.group, ": the likely cause"));
  }
  if (groups.empty()) return "no flight-recorder dumps to analyse";
  if (parts.empty()) {
    bool all_dumped = true;
    for (const GroupFinding& g : groups) all_dumped = all_dumped && g.no_dump.empty();
    return all_dumped ? "no rank is behind, none called a different op, every rank dumped"
                      : "no rank is behind and none called a different op among the ranks that "
                        "dumped";
  }
  return absl::StrJoin(parts, "; ");
}

Analysis AnalyzeDumps(const std::vector<std::pair<std::string, std::string>>& files) {
  Analysis a;
  std::map<std::string, std::map<int, RankRing>> groups;
  for (const auto& [file, text] : files) {
    try {
      ParseDump(file, nlohmann::json::parse(text), groups);
    } catch (const std::exception& e) {
      a.notes.push_back(absl::StrCat(file, " is not a flight-recorder dump: ", e.what()));
    }
  }
  InOps in_ops;
  for (const auto& [name, rings] : groups) {
    for (const auto& [r, ring] : rings) {
      if (const RankRing::Op* in = InOp(ring)) {
        in_ops[JobRank(ring, r)].emplace_back(name, DescribeInOp(ring, *in));
      }
    }
  }
  for (const auto& [name, rings] : groups) {
    a.groups.push_back(AnalyzeGroup(name, rings, in_ops));
    for (const auto& [r, ring] : rings) a.job_ranks[name].emplace(r, JobRank(ring, r));
  }
  return a;
}

absl::StatusOr<Analysis> AnalyzeDir(absl::string_view dir) {
  std::vector<std::pair<std::string, std::string>> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(dir), ec)) {
    const std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, "fr-") || !absl::EndsWith(name, ".json")) continue;
    std::ifstream in(entry.path());
    std::stringstream ss;
    ss << in.rdbuf();
    files.emplace_back(entry.path().string(), ss.str());
  }
  if (ec) {
    return absl::NotFoundError(absl::StrCat("trident-fr: cannot read ", dir, ": ", ec.message()));
  }
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "trident-fr: no flight-recorder dumps (fr-*.json) in ", dir,
        "; ranks write them there when TRIDENT_FR_DIR names it and an op fails"));
  }
  std::sort(files.begin(), files.end());
  return AnalyzeDumps(files);
}

}  // namespace trident::fr
