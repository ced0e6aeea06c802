#include "common/params.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
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
// choices must be one of them in any case (a comma-separated list; a leading comma allows "");
// a secret's value is never printed.
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
// An int that other launchers also set under their own names (ParamDesc::fallbacks).
constexpr ParamDesc IntFrom(absl::string_view name, absl::string_view def, int64_t min,
                            absl::string_view fallbacks, absl::string_view doc) {
  return {name, "int", def, doc, min, "", false, fallbacks};
}
constexpr ParamDesc Secret(absl::string_view name, absl::string_view doc) {
  return {name, "string", "", doc, 0, "", true};
}

constexpr ParamDesc kParams[] = {
    IntFrom("TRIDENT_RANK", "0", -1, "RANK,SLURM_PROCID",
            "This process's rank in the job (set by trident-run; else RANK, else SLURM_PROCID)."),
    IntFrom("TRIDENT_WORLD_SIZE", "1", 1, "WORLD_SIZE,SLURM_NTASKS",
            "Number of ranks in the job (set by trident-run; else WORLD_SIZE, else SLURM_NTASKS)."),
    IntFrom("TRIDENT_LOCAL_RANK", "0", 0, "LOCAL_RANK,SLURM_LOCALID",
            "Rank among the processes on this host (set by trident-run; else LOCAL_RANK, else SLURM_LOCALID)."),
    Str("TRIDENT_STORE", "",
        "Store URL, tcp://host:port, file:///dir or etcd://host:port[,host:port...]/JOB (set by "
        "trident-run)."),
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
    OneOf("TRIDENT_LOG_LEVEL", "info", "trace,debug,info,warn,warning,error,critical,off",
          "trace, debug, info, warn (or warning), error, critical or off, in any case."),
    Int("TRIDENT_SMALL_MSG_BYTES", "65536", 0,
        "Messages up to this size use latency algorithms (recursive doubling, trees)."),
    Int("TRIDENT_CHUNK_BYTES", "1048576", 1,
        "Pipeline chunk of the bandwidth algorithms (ring)."),
    OneOf("TRIDENT_INTRAHOST", "shm", "shm,fabric",
          "Collectives of a communicator whose ranks are all on one host: shm (the shared-memory engine) or fabric (libfabric, as between hosts)."),
    Int("TRIDENT_SHM_SLOT_BYTES", "1048576", 4096,
        "Shared-memory engine: bytes per rank and pipeline buffer (two buffers per rank)."),
    Int("TRIDENT_SHM_ONESHOT_BYTES", "65536", 0,
        "Shared-memory engine: allreduces up to this size use one-shot (every rank reduces every slot); larger ones reduce-scatter + all-gather."),
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
    OneOf("TRIDENT_BURN_IN", "quick", "off,quick,full",
          "Runtime: the self-test before a rank joins its first world or a spare enters the pool (memory patterns, an exact GEMM and reduction): off, quick (one pass, 16 MiB) or full (until TRIDENT_BURN_IN_MS, 256 MiB); trident-run --burn-in sets it."),
    Millis("TRIDENT_BURN_IN_MS", "1000", 1,
           "Runtime: the burn-in's time budget."),
    Str("TRIDENT_TEST_BURN_IN_FAIL", "",
        "Tests only: memory or compute (or MEMBER:memory): that burn-in check sees one wrong value."),
    Millis("TRIDENT_KILL_GRACE_MS", "10000", 0,
           "trident-run: after a rank fails, how long the others get to exit before they are killed."),
    Millis("TRIDENT_NCCL_WATCHDOG_POLL_MS", "10", 1,
           "NCCL backend: how often the watchdog checks each communicator for asynchronous errors and expired op deadlines."),
    Int("TRIDENT_FR_ENTRIES", "2048", 16,
        "Flight recorder: ops each communicator remembers (rounded up to a power of two, at most 131072)."),
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

// The environment's value (nullptr when unset) and the variable it came from: the
// parameter's own, else the first of its fallbacks that is set.
struct EnvValue {
  std::string var;
  const char* value = nullptr;
};
EnvValue EnvOf(const ParamDesc& p) {
  std::string var(p.name);
  if (const char* v = std::getenv(var.c_str())) return {var, v};
  if (!p.fallbacks.empty()) {
    for (absl::string_view fallback : absl::StrSplit(p.fallbacks, ',')) {
      std::string name(fallback);
      if (const char* v = std::getenv(name.c_str())) return {name, v};
    }
  }
  return {var, nullptr};
}

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
  const EnvValue env = EnvOf(p);
  if (env.value == nullptr) return std::string(p.default_value);
  const std::string value = env.value;
  const bool numeric = p.type == "int" || p.type == "duration_ms";
  if (numeric && value.empty()) return std::string(p.default_value);  // VAR= means the default
  bool ok = true;
  if (numeric) {
    int64_t v = 0;
    ok = absl::SimpleAtoi(value, &v) && v >= p.min;
  } else if (!p.choices.empty()) {
    // Any case: TRIDENT_LOG_LEVEL=INFO is info. The value returned is the choice as listed.
    for (absl::string_view choice : Choices(p)) {
      if (absl::EqualsIgnoreCase(choice, value)) return std::string(choice);
    }
    ok = false;
  }
  if (ok) return value;
  return absl::InvalidArgumentError(absl::StrCat(
      env.var, "=", p.secret ? "<hidden>" : absl::StrCat("'", absl::CHexEscape(value), "'"),
      env.var != p.name ? absl::StrCat(" (read for ", p.name, ", which is unset)") : "",
      " is not valid: expected ", Allowed(p), " (", p.doc, ")"));
}

// The checked value, or the default with an error in the log: the library never ends its
// host over a setting. Entry points call CheckParams() first, so this is a backstop.
std::string ValueOrDefault(const ParamDesc& p) {
  absl::StatusOr<std::string> value = Checked(p);
  if (value.ok()) return *std::move(value);
  TLOG(error, "{}; using the default {}", value.status().message(), p.default_value);
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
    const EnvValue env = EnvOf(p);
    std::string value = env.value != nullptr ? env.value : std::string(p.default_value);
    if (p.secret && !value.empty()) value = "<hidden>";
    absl::Status valid = Checked(p).status();
    const std::string source = env.value == nullptr ? "  (default)"
                               : env.var == p.name  ? "  (env)"
                                                    : absl::StrCat("  (env ", env.var, ")");
    absl::StrAppend(&out, p.name, "=", value, source,
                    valid.ok() ? "" : "  INVALID", "\n    ", p.doc, "\n");
  }
  return out;
}

}  // namespace trident
