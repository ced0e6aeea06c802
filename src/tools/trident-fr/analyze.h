// The analysis of flight-recorder dumps (comm/flight_recorder.h): from the rings of the ranks
// of a job, which rank is behind, which never issued sequence N of a group, which issued a
// different op/dtype/count at N, which waits in an op, and which is stuck outside any op.
//
// Used by `trident-fr DIR` and by trident-run at a hang. Works with missing dumps: a rank
// without one is named with what cannot be known about it. Pure functions; thread-compatible.
#ifndef TRIDENT_TOOLS_TRIDENT_FR_ANALYZE_H_
#define TRIDENT_TOOLS_TRIDENT_FR_ANALYZE_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trident::fr {

// One communicator of one dump, as read back.
struct RankRing {
  std::string file;      // the dump it came from
  int job_rank = -1;     // the dump's TRIDENT_RANK
  int pid = 0;
  int group_rank = 0;
  int size = 0;
  std::vector<int> members;
  int64_t dump_ns = 0;
  struct Op {
    int64_t seq = -1;
    std::string op, dtype, state;
    int64_t count = 0;
    int peer = -1;
    int64_t issued_ns = 0, ended_ns = 0;
    std::string Signature() const;  // "AllReduce(f32, count=8)" (root/peer where it has one)
  };
  std::vector<Op> collectives;  // seq >= 0, oldest first
  // The thread that issued this communicator's ops, as the dump saw it (may be empty).
  std::string thread;           // "tid 1234 (lm-trainer) state S, wchan hrtimer_nanosleep"
  std::string kernel_stack;
};

// What the analysis found about one group (a communicator name and epoch).
struct GroupFinding {
  std::string group;  // "world epoch 0"
  int size = 0;
  int64_t last_seq = -1;                 // the highest sequence number any rank issued
  std::vector<int> never_issued;         // group ranks that never issued `first_missing_seq`
  int64_t first_missing_seq = -1;
  std::string missing_op;                // the op the others issued at that seq
  int64_t mismatch_seq = -1;             // the first seq where ranks issued different ops
  std::map<std::string, std::vector<int>> mismatch;  // signature -> ranks
  std::vector<int> behind;               // ranks whose last issued seq is the lowest (< last)
  // rank -> "AllReduce #3 (started, issued 2.1 s before its dump)", or the failed last op
  std::map<int, std::string> waiting;
  std::map<int, std::string> outside;    // rank -> why it is stuck outside any op
  std::map<int, std::string> elsewhere;  // rank (behind) -> the other group's op it is in
  std::vector<int> no_dump;              // ranks without a dump
  bool no_dump_likely_cause = false;     // every rank with a dump waits: those without are
  std::vector<std::string> lines;        // the verdict in words, one line each
};

struct Analysis {
  std::vector<GroupFinding> groups;
  std::vector<std::string> notes;  // unreadable files and the like
  // group -> group rank -> job rank, for the ranks with a dump.
  std::map<std::string, std::map<int, int>> job_ranks;
  std::string Text() const;        // every group's lines, then the notes
  // One line naming the ranks at fault, in job ranks, most telling first: the odd one out of
  // a call mismatch, the ranks that never issued #N (and where they are instead), the ranks
  // without a dump while every other one waits. trident-run's hang message carries it.
  std::string Verdict() const;
};

// Parses dump files (JSON of ProcessDumpJson); each may hold several communicators, also of
// several ranks (threads as ranks). A file that does not parse becomes a note, not an error.
Analysis AnalyzeDumps(const std::vector<std::pair<std::string, std::string>>& files);

// Reads every fr-*.json in `dir` and analyses them. kNotFound when `dir` has none.
absl::StatusOr<Analysis> AnalyzeDir(absl::string_view dir);

}  // namespace trident::fr

#endif  // TRIDENT_TOOLS_TRIDENT_FR_ANALYZE_H_
