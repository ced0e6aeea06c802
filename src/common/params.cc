#include "common/params.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace trident {
namespace {

// Rows of the table. An int or duration must parse and be at least `min`; a string with
// choices must be one of them (a comma-separated list; a leading comma allows ""); a secret's
// value is never printed.
constexpr ParamDesc Int(absl::string_view name, absl::string_view def, int64_t min,
                        absl::string_view doc) {
  return {name, "int", def, doc, min, "", false};
}
constexpr ParamDesc Millis(absl::string_view name, absl::string_view def, int64_t min,
                           absl::string_view doc) {
  return {name, "duration_ms", def, doc, min, "", false};
}
constexpr ParamDesc Str(absl::string_view name, absl::string_view def, absl::string_view doc) {
  return {name, "string", def, doc, 0, "", false};
}
constexpr ParamDesc OneOf(absl::string_view name, absl::string_view def,
                          absl::string_view choices, absl::string_view doc) {
  return {name, "string", def, doc, 0, choices, false};
}
constexpr ParamDesc Secret(absl::string_view name, absl::string_view doc) {
  return {name, "string", "", doc, 0, "", true};
}

constexpr ParamDesc kParams[] = {
    Int("TRIDENT_RANK", "0", -1,
        "This process's rank in the job (set by trident-run)."),
    Int("TRIDENT_WORLD_SIZE", "1", 1,
        "Number of ranks in the job (set by trident-run)."),
    Int("TRIDENT_LOCAL_RANK", "0", 0,
        "Rank among the processes on this host (set by trident-run)."),
    Str("TRIDENT_STORE", "",
        "Store URL, tcp://host:port or file:///dir (set by trident-run)."),
    Secret("TRIDENT_JOB_TOKEN",
           "Per-job secret that store clients present (set by trident-run)."),
    Str("TRIDENT_JOB_ID", "",
        "Identifier of the job (set by trident-run)."),
    Millis("TRIDENT_TIMEOUT_MS", "300000", 1,
           "Default deadline of a communication op and of setup."),
    Str("TRIDENT_FABRIC_PROVIDER", "",
        "libfabric provider: shm, tcp, efa, ... (empty: shm on one host, else tcp)."),
    Str("TRIDENT_FABRIC_IFACE", "",
        "Network interface for the tcp provider (empty: lo on one host)."),
    OneOf("TRIDENT_LOG_LEVEL", "info", "trace,debug,info,warn,error,off",
          "trace, debug, info, warn, error or off."),
    Int("TRIDENT_SMALL_MSG_BYTES", "65536", 0,
        "Messages up to this size use latency algorithms (recursive doubling, trees)."),
    Int("TRIDENT_CHUNK_BYTES", "1048576", 1,
        "Pipeline chunk of the bandwidth algorithms (ring)."),
    Str("TRIDENT_MEMBER", "",
        "This process's member id: w<i> for workers, s<i> for spares (set by trident-run)."),
    OneOf("TRIDENT_ROLE", "worker", "worker,spare",
          "worker or spare (set by trident-run; a spare waits in the pool until promoted)."),
    Millis("TRIDENT_HEARTBEAT_MS", "100", 1,
           "How often each rank's heartbeat thread beats in the store."),
    Millis("TRIDENT_HEARTBEAT_TIMEOUT_MS", "1000", 1,
           "trident-run: a rank silent this long is suspected; confirmed at once if its process is stopped, else after as long again."),
    Int("TRIDENT_CKPT_THREADS", "0", 0,
        "Threads (the caller's included) that copy a checkpoint snapshot into staging memory; 0: min(4, cores)."),
    Int("TRIDENT_CKPT_MEMORY_BUDGET_MB", "8192", 1,
        "Staging memory of a checkpoint engine, in MiB; a larger state streams through it."),
    OneOf("TRIDENT_CKPT_CRASH_AT", "", ",during_shard_write,after_shards,before_rename,before_latest",
          "Tests only: kill the process with SIGKILL at this stage of a save (during_shard_write, after_shards, before_rename, before_latest)."),
    Millis("TRIDENT_HANG_TIMEOUT_MS", "300000", 0,
           "Runtime: once a training thread has called Runtime::Progress, a gap of this long until its next call (a deadlock outside Trident's ops) stops its heartbeat, and trident-run declares the rank dead; 0: never."),
    Millis("TRIDENT_BUILD_TIMEOUT_MS", "10000", 1,
           "Runtime: deadline of one attempt to build an epoch's world (a promoted spare waits twice as long); a build also ends as soon as a rank of its epoch is recorded dead or a newer epoch appears."),
    Millis("TRIDENT_KILL_GRACE_MS", "10000", 0,
           "trident-run: after a rank fails, how long the others get to exit before they are killed."),
    Millis("TRIDENT_NCCL_WATCHDOG_POLL_MS", "10", 1,
           "NCCL backend: how often the watchdog checks each communicator for asynchronous errors and expired op deadlines."),
    Int("TRIDENT_FR_ENTRIES", "2048", 16,
        "Flight recorder: ops each communicator remembers (rounded up to a power of two)."),
    Str("TRIDENT_FR_DIR", "",
        "Flight recorder: directory of the per-rank JSON dumps (fr-<member>.json) written when an op fails; empty: no dump files."),
    Millis("TRIDENT_NCCL_ABORT_TIMEOUT_MS", "10000", 1,
           "NCCL backend: how long ncclCommAbort may take before the process reports it and exits (exit status 70) rather than hang."),
};

}  // namespace

absl::Span<const ParamDesc> AllParams() { return kParams; }

static const ParamDesc& Find(absl::string_view name) {
  for (const ParamDesc& p : kParams) {
    if (p.name == name) return p;
  }
  TRIDENT_CHECK(false) << "unregistered parameter " << name << "; add it to src/common/params.cc";
  __builtin_unreachable();
}

namespace {

// The environment's value, or nullptr when unset.
const char* EnvOf(const ParamDesc& p) { return std::getenv(std::string(p.name).c_str()); }

std::vector<absl::string_view> Choices(const ParamDesc& p) {
  return absl::StrSplit(p.choices, ',');
}

// What a value of `p` must be, in words for an error message.
std::string Allowed(const ParamDesc& p) {
  if (p.type == "int") return absl::StrCat("an integer >= ", p.min);
  if (p.type == "duration_ms") return absl::StrCat("a whole number of milliseconds >= ", p.min);
  std::vector<std::string> quoted;
  for (absl::string_view c : Choices(p)) quoted.push_back(absl::StrCat("'", c, "'"));
  return absl::StrCat("one of ", absl::StrJoin(quoted, ", "));
}

// The value of `p` (the environment's, else the default), checked.
absl::StatusOr<std::string> Checked(const ParamDesc& p) {
  const char* env = EnvOf(p);
  if (env == nullptr) return std::string(p.default_value);
  const std::string value = env;
  const bool numeric = p.type == "int" || p.type == "duration_ms";
  if (numeric && value.empty()) return std::string(p.default_value);  // VAR= means the default
  bool ok = true;
  if (numeric) {
    int64_t v = 0;
    ok = absl::SimpleAtoi(value, &v) && v >= p.min;
  } else if (!p.choices.empty()) {
    std::vector<absl::string_view> choices = Choices(p);
    ok = std::find(choices.begin(), choices.end(), value) != choices.end();
  }
  if (ok) return value;
  return absl::InvalidArgumentError(absl::StrCat(
      p.name, "=", p.secret ? "<hidden>" : absl::StrCat("'", absl::CHexEscape(value), "'"),
      " is not valid: expected ", Allowed(p), " (", p.doc, ")"));
}

// The checked value, or the default with an error in the log: the library never ends its
// host over a setting. Entry points call CheckParams() first, so this is a backstop.
std::string ValueOrDefault(const ParamDesc& p) {
  absl::StatusOr<std::string> value = Checked(p);
  if (value.ok()) return *std::move(value);
  spdlog::error("{}; using the default {}", value.status().message(), p.default_value);
  return std::string(p.default_value);
}

}  // namespace

absl::Status CheckParam(absl::string_view name) { return Checked(Find(name)).status(); }

absl::Status CheckParams() {
  for (const ParamDesc& p : kParams) RETURN_IF_ERROR(Checked(p).status());
  return absl::OkStatus();
}

std::string ParamString(absl::string_view name) { return ValueOrDefault(Find(name)); }

int64_t ParamInt(absl::string_view name) {
  const ParamDesc& p = Find(name);
  TRIDENT_CHECK(p.type == "int" || p.type == "duration_ms") << name << " is a " << p.type;
  int64_t out = 0;
  TRIDENT_CHECK(absl::SimpleAtoi(ValueOrDefault(p), &out)) << "default of " << name;
  return out;
}

absl::Duration ParamMillis(absl::string_view name) { return absl::Milliseconds(ParamInt(name)); }

std::string DescribeParams() {
  std::string out;
  for (const ParamDesc& p : kParams) {
    const char* env = EnvOf(p);
    std::string value = env != nullptr ? env : std::string(p.default_value);
    if (p.secret && !value.empty()) value = "<hidden>";
    absl::Status valid = Checked(p).status();
    absl::StrAppend(&out, p.name, "=", value, env != nullptr ? "  (env)" : "  (default)",
                    valid.ok() ? "" : "  INVALID", "\n    ", p.doc, "\n");
  }
  return out;
}

}  // namespace trident
