#include "common/params.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/check.h"

namespace trident {
namespace {

constexpr ParamDesc kParams[] = {
    {"TRIDENT_RANK", "int", "0", "This process's rank in the job (set by trident-run)."},
    {"TRIDENT_WORLD_SIZE", "int", "1", "Number of ranks in the job (set by trident-run)."},
    {"TRIDENT_LOCAL_RANK", "int", "0", "Rank among the processes on this host (set by trident-run)."},
    {"TRIDENT_STORE", "string", "", "Store URL, tcp://host:port or file:///dir (set by trident-run)."},
    {"TRIDENT_JOB_TOKEN", "string", "", "Per-job secret that store clients present (set by trident-run)."},
    {"TRIDENT_JOB_ID", "string", "", "Identifier of the job (set by trident-run)."},
    {"TRIDENT_TIMEOUT_MS", "duration_ms", "300000", "Default deadline of a communication op and of setup."},
    {"TRIDENT_FABRIC_PROVIDER", "string", "", "libfabric provider: shm, tcp, efa, ... (empty: shm on one host, else tcp)."},
    {"TRIDENT_FABRIC_IFACE", "string", "", "Network interface for the tcp provider (empty: lo on one host)."},
    {"TRIDENT_LOG_LEVEL", "string", "info", "trace, debug, info, warn, error or off."},
    {"TRIDENT_SMALL_MSG_BYTES", "int", "65536", "Messages up to this size use latency algorithms (recursive doubling, trees)."},
    {"TRIDENT_CHUNK_BYTES", "int", "1048576", "Pipeline chunk of the bandwidth algorithms (ring)."},
    {"TRIDENT_MEMBER", "string", "", "This process's member id: w<i> for workers, s<i> for spares (set by trident-run)."},
    {"TRIDENT_ROLE", "string", "worker", "worker or spare (set by trident-run; a spare waits in the pool until promoted)."},
    {"TRIDENT_HEARTBEAT_MS", "duration_ms", "100", "How often each rank's heartbeat thread beats in the store."},
    {"TRIDENT_HEARTBEAT_TIMEOUT_MS", "duration_ms", "1000", "trident-run: a rank silent this long is suspected; confirmed at once if its process is stopped, else after as long again."},
    {"TRIDENT_CKPT_THREADS", "int", "0", "Threads (the caller's included) that copy a checkpoint snapshot into staging memory; 0: min(4, cores)."},
    {"TRIDENT_CKPT_MEMORY_BUDGET_MB", "int", "8192", "Staging memory of a checkpoint engine, in MiB; a larger state streams through it."},
    {"TRIDENT_CKPT_CRASH_AT", "string", "", "Tests only: kill the process with SIGKILL at this stage of a save (during_shard_write, after_shards, before_rename, before_latest)."},
    {"TRIDENT_HANG_TIMEOUT_MS", "duration_ms", "300000", "Runtime: once a training thread has called Runtime::Progress, a gap of this long until its next call (a deadlock outside Trident's ops) stops its heartbeat, and trident-run declares the rank dead; 0: never."},
    {"TRIDENT_BUILD_TIMEOUT_MS", "duration_ms", "10000", "Runtime: deadline of one attempt to build an epoch's world; a rank that dies during it costs the others this long."},
    {"TRIDENT_KILL_GRACE_MS", "duration_ms", "10000", "trident-run: after a rank fails, how long the others get to exit before they are killed."},
    {"TRIDENT_NCCL_WATCHDOG_POLL_MS", "duration_ms", "10", "NCCL backend: how often the watchdog checks each communicator for asynchronous errors and expired op deadlines."},
    {"TRIDENT_NCCL_ABORT_TIMEOUT_MS", "duration_ms", "10000", "NCCL backend: how long ncclCommAbort may take before the process reports it and exits (exit status 70) rather than hang."},
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

std::string ParamString(absl::string_view name) {
  const ParamDesc& p = Find(name);
  const char* env = std::getenv(std::string(name).c_str());
  return env != nullptr ? std::string(env) : std::string(p.default_value);
}

int64_t ParamInt(absl::string_view name) {
  std::string value = ParamString(name);
  int64_t out = 0;
  TRIDENT_CHECK(absl::SimpleAtoi(value, &out)) << name << "=" << value << " is not an integer";
  return out;
}

absl::Duration ParamMillis(absl::string_view name) { return absl::Milliseconds(ParamInt(name)); }

std::string DescribeParams() {
  std::string out;
  for (const ParamDesc& p : kParams) {
    const char* env = std::getenv(std::string(p.name).c_str());
    absl::StrAppend(&out, p.name, "=", env != nullptr ? env : p.default_value,
                    env != nullptr ? "  (env)" : "  (default)", "\n    ", p.doc, "\n");
  }
  return out;
}

}  // namespace trident
