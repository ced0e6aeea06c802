// FlightRecorder: an always-on ring of a communicator's last ops, and the per-process dump of
// every live ring as JSON (read by trident-fr and by trident-run at a hang).
//
// Each communicator owns one recorder. Issue() claims the next slot of a fixed ring with one
// atomic add and fills it; Start()/Finish() update the slot's state and times. No lock on the
// op path: a slot carries a version (odd while being written, 2*id+2 when entry `id` is
// complete), so a concurrent Snapshot() copies only consistent entries. Start/Finish write one
// 64-bit word each that carries the entry's id (low 18 bits) with the time, so a late Start or
// Finish of an entry the ring already overwrote can never give a newer entry its state or
// times (at worst, in that race, the newer entry loses its own start or end mark). No
// read-modify-write on the op path. Costs, measured by
// fr_bench (docs/benchmarks.md): one Issue+Start+Finish is three clock reads and a few stores.
//
// Capacity: TRIDENT_FR_ENTRIES (default 2048); a malformed value is an error from
// CheckParams() (so from CreateHostCommunicator and Runtime::Init), never an abort.
//
// Dumps: DumpFlightRecorders() writes one JSON file for this process (every registered
// recorder) under TRIDENT_FR_DIR, as fr-<member or pid>.json, replaced atomically. The
// communicators call it when an op fails (deadline, peer abort, mismatch); a dump can also be
// requested: while TRIDENT_FR_DIR is set and a recorder lives, a thread ("trident-fr") polls
// <TRIDENT_FR_DIR>/request every 100 ms and dumps when its content changes (RequestDumps).
//
// Thread safety: Issue/Start/Finish from any thread; Snapshot/ToJson from any thread.
#ifndef TRIDENT_COMM_FLIGHT_RECORDER_H_
#define TRIDENT_COMM_FLIGHT_RECORDER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trident::fr {

enum class OpState : uint8_t { kIssued = 0, kStarted = 1, kCompleted = 2, kFailed = 3 };
absl::string_view OpStateName(OpState state);

// Unix time in nanoseconds (CLOCK_REALTIME: comparable across ranks of one host, and across
// hosts as far as their clocks agree).
int64_t NowNs();

// The op path's clock: the CPU's time-stamp counter on x86-64 (invariant TSC, a few ns to read;
// a clock_gettime in a VM costs ~100 ns), NowNs elsewhere. StampToNs converts a stamp to Unix
// ns with the rate measured between the process's first stamp and now.
int64_t Stamp();
int64_t StampToNs(int64_t stamp);

// The Linux thread id of the calling thread (cached per thread).
int CurrentTid();

// What a communicator tells its recorder once.
struct RecorderInfo {
  std::string name = "world";  // the group's name ("world", "world/0", ...)
  int64_t epoch = 0;
  int rank = 0;                // rank in the group
  int size = 1;
  std::vector<int> members;    // group rank -> job (transport) rank
  std::string backend = "host";
};

// One recorded op, as copied out by Snapshot().
struct Entry {
  uint64_t id = 0;          // position in this recorder's history (0, 1, ...)
  int64_t seq = -1;         // collective sequence number; -1 for point-to-point ops
  absl::string_view op;     // static string: "AllReduce", "Send", ...
  absl::string_view dtype;  // static string: "f32", ...
  int64_t count = 0;
  int peer = -1;            // root of Broadcast/Reduce, peer of Send/Recv; -1: none
  OpState state = OpState::kIssued;
  int64_t issued_ns = 0, started_ns = 0, ended_ns = 0;  // Unix ns; 0: not yet
};

class FlightRecorder {
 public:
  // `capacity` entries (rounded up to a power of two, at least 16, at most kMaxCapacity).
  static constexpr size_t kMaxCapacity = size_t{1} << 17;
  FlightRecorder(RecorderInfo info, size_t capacity);
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // A recorder with TRIDENT_FR_ENTRIES entries, registered for process dumps until destroyed.
  static std::shared_ptr<FlightRecorder> Create(RecorderInfo info);

  // Records an op as issued by the calling thread; returns its id for Start/Finish.
  // `op` and `dtype` must be static strings.
  uint64_t Issue(absl::string_view op, absl::string_view dtype, int64_t count, int peer,
                 int64_t seq);
  void Start(uint64_t id);
  void Finish(uint64_t id, bool ok);

  // Consistent copies of the retained entries, oldest first.
  std::vector<Entry> Snapshot() const;
  // This recorder as a JSON object (see docs/observability.md for the fields).
  std::string ToJson() const;

  const RecorderInfo& info() const { return info_; }
  size_t capacity() const { return mask_ + 1; }
  uint64_t issued() const { return head_.load(std::memory_order_acquire); }
  int last_issuer_tid() const { return last_tid_.load(std::memory_order_relaxed); }

 private:
  struct Slot {
    std::atomic<uint64_t> version{0};  // 0: never written; odd: Issue is writing it
    std::atomic<int64_t> seq{-1};
    std::atomic<const char*> op{nullptr};
    std::atomic<const char*> dtype{nullptr};
    std::atomic<uint32_t> op_len{0}, dtype_len{0};
    std::atomic<int64_t> count{0};
    std::atomic<int32_t> peer{-1};
    std::atomic<int64_t> issued_ns{0};  // a Stamp()
    // Start and Finish: one word each, written with one store, that names its entry:
    // bit 63 set, bits 45..62 the entry id's low 18 bits, bit 44 ok (Finish), bits 0..43
    // the stamp's distance from issued_ns. A late Start/Finish of an entry the ring already
    // overwrote leaves a word that names the old entry, which the new one ignores.
    std::atomic<uint64_t> start_word{0}, end_word{0};
  };
  static uint64_t Word(uint64_t id, bool ok, int64_t delta);
  static bool WordIsFor(uint64_t word, uint64_t id);
  void Mark(uint64_t id, bool start, bool ok);

  const RecorderInfo info_;
  const uint64_t mask_;
  std::unique_ptr<Slot[]> slots_;
  std::atomic<uint64_t> head_{0};
  std::atomic<int> last_tid_{0};
};

// The capacity TRIDENT_FR_ENTRIES asks for, or kInvalidArgument naming the bad value.
absl::StatusOr<size_t> CapacityFromEnv();

// This process's dump: {"rank", "member", "pid", "reason", "failures", "time_ns",
// "threads": [...], "communicators": [...]} of every live recorder. "failures": every op
// failure this process dumped for (the last 16), oldest first.
std::string ProcessDumpJson(absl::string_view reason);

// Called with the text of every dump this process writes (on a failure, on request), also
// when no TRIDENT_FR_DIR is set: the runtime sends it to the job's store, where trident-run
// reads it. Called under the dump lock: it must be quick and must not dump. Empty: none.
using DumpObserver = std::function<void(const std::string& json)>;
void SetDumpObserver(DumpObserver observer);

// Writes ProcessDumpJson to `dir`/fr-<member or pid>.json (tmp file, then rename) and hands it
// to the observer. `dir` empty: TRIDENT_FR_DIR; both empty: only the observer (if any).
// Returns the path written (empty when none). Dumps are serialised in the process.
absl::StatusOr<std::string> DumpFlightRecorders(absl::string_view reason,
                                                absl::string_view dir = "");

// Called by a communicator when an op fails: writes this process's dump when TRIDENT_FR_DIR
// is set (the reason names the communicator and the error) and logs where; never fails.
void DumpOnFailure(absl::string_view communicator, const absl::Status& error);

// Asks every process whose TRIDENT_FR_DIR is `dir` for a dump: writes `why` and a fresh
// nonce to <dir>/request. The dumps appear within about 100 ms of each live process.
absl::Status RequestDumps(absl::string_view dir, absl::string_view why);

// The store keys through which trident-run asks a job's ranks for their rings (the runtime
// answers; src/runtime/flight_dumps.h):
//   job/fr/request          "<nonce> <why>": a new value asks every live rank for a dump
//   job/fr/dump/<member>    the member's latest dump (ProcessDumpJson), on request or failure
//   job/fr/hang/<member>    an op deadline the member's training loop met (the error)
inline constexpr char kDumpRequestKey[] = "job/fr/request";
inline constexpr char kDumpPrefix[] = "job/fr/dump/";
inline constexpr char kHangReportPrefix[] = "job/fr/hang/";

// Number of recorders registered now (tests).
int RegisteredRecorders();

}  // namespace trident::fr

#endif  // TRIDENT_COMM_FLIGHT_RECORDER_H_
