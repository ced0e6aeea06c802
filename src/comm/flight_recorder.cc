#include "comm/flight_recorder.h"

#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/params.h"
#include "nlohmann/json.hpp"

namespace trident::fr {

absl::string_view OpStateName(OpState state) {
  switch (state) {
    case OpState::kIssued: return "issued";
    case OpState::kStarted: return "started";
    case OpState::kCompleted: return "completed";
    case OpState::kFailed: return "failed";
  }
  return "?";
}

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

namespace {

// The pair (stamp, Unix ns) taken once, against which later stamps are converted.
struct StampAnchor {
  int64_t stamp;
  int64_t ns;
};

int64_t RawStamp() {
#if defined(__x86_64__)
  return static_cast<int64_t>(__builtin_ia32_rdtsc());
#else
  return NowNs();
#endif
}

const StampAnchor& Anchor() {
  static const StampAnchor anchor{RawStamp(), NowNs()};
  return anchor;
}

}  // namespace

int64_t Stamp() { return RawStamp(); }

int64_t StampToNs(int64_t stamp) {
  if (stamp == 0) return 0;
#if defined(__x86_64__)
  const StampAnchor& a = Anchor();
  int64_t now_stamp = RawStamp(), now_ns = NowNs();
  while (now_ns - a.ns < 1000000) {  // measure the rate over at least 1 ms
    now_stamp = RawStamp();
    now_ns = NowNs();
  }
  const double ns_per_tick =
      static_cast<double>(now_ns - a.ns) / static_cast<double>(now_stamp - a.stamp);
  return a.ns + static_cast<int64_t>(static_cast<double>(stamp - a.stamp) * ns_per_tick);
#else
  return stamp;
#endif
}

int CurrentTid() {
  thread_local int tid = static_cast<int>(syscall(SYS_gettid));
  return tid;
}

// --- the registry of live recorders ---------------------------------------------------------

namespace {

struct Registry {
  absl::Mutex mu;
  std::vector<std::weak_ptr<FlightRecorder>> recorders ABSL_GUARDED_BY(mu);
  int live ABSL_GUARDED_BY(mu) = 0;
  // The request watcher (TRIDENT_FR_DIR set): runs while any recorder lives.
  std::unique_ptr<std::thread> watcher ABSL_GUARDED_BY(mu);
  std::shared_ptr<std::atomic<bool>> stop ABSL_GUARDED_BY(mu);
  // Dumps are written one at a time, each with every failure this process has seen, so that
  // communicators failing together leave one file that names them all (the last one written
  // is also the newest).
  absl::Mutex dump_mu;
  std::vector<std::string> failures ABSL_GUARDED_BY(dump_mu);
  DumpObserver observer ABSL_GUARDED_BY(dump_mu);
};

Registry& GetRegistry() {
  static Registry* registry = new Registry;  // never destroyed: used from exit paths
  return *registry;
}

std::vector<std::shared_ptr<FlightRecorder>> Live() {
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.mu);
  std::vector<std::shared_ptr<FlightRecorder>> live;
  auto& v = reg.recorders;
  v.erase(std::remove_if(v.begin(), v.end(), [](auto& w) { return w.expired(); }), v.end());
  for (auto& w : v) {
    if (auto r = w.lock()) live.push_back(std::move(r));
  }
  return live;
}

// Watches <dir>/request: when its content changes (trident-run, or a person, writes a new
// line), this process dumps its rings. A thread, not a signal handler: the library takes no
// signal from its host. Polls every 100 ms (a stat and a small read).
std::string ReadSmallFile(const std::string& path);

// `seen`: the request when the watcher was started; one older than the recorders is not for them.
void WatchRequests(std::string dir, std::string seen, std::shared_ptr<std::atomic<bool>> stop) {
  const std::string path = dir + "/request";
  while (!stop->load(std::memory_order_acquire)) {
    absl::SleepFor(absl::Milliseconds(100));
    std::string now = ReadSmallFile(path);
    if (now.empty() || now == seen) continue;
    seen = now;
    absl::StatusOr<std::string> written = DumpFlightRecorders(
        absl::StrCat("requested: ", absl::StripTrailingAsciiWhitespace(now)), dir);
    if (!written.ok()) TLOG(warn, "{}", written.status());
  }
}

void Acquire() {
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.mu);
  ++reg.live;
  if (reg.watcher != nullptr) return;
  std::string dir = ParamString("TRIDENT_FR_DIR");
  if (dir.empty()) return;
  reg.stop = std::make_shared<std::atomic<bool>>(false);
  std::string seen = ReadSmallFile(dir + "/request");
  reg.watcher =
      std::make_unique<std::thread>(WatchRequests, std::move(dir), std::move(seen), reg.stop);
  pthread_setname_np(reg.watcher->native_handle(), "trident-fr");  // named before any look
}

void Release() {
  Registry& reg = GetRegistry();
  std::unique_ptr<std::thread> watcher;
  {
    absl::MutexLock lock(&reg.mu);
    if (--reg.live != 0 || reg.watcher == nullptr) return;
    reg.stop->store(true, std::memory_order_release);
    watcher = std::move(reg.watcher);
  }
  // The watcher itself may drop the last recorder (it holds them while dumping); it exits on
  // its own right after.
  if (watcher->get_id() == std::this_thread::get_id()) {
    watcher->detach();
  } else {
    watcher->join();
  }
}

size_t RoundUp(size_t n) {
  size_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// What the kernel says about one thread of this process: its state (R, S, D, T, ...), where
// it sleeps (wchan) and, where readable (root), its kernel stack.
nlohmann::json ThreadInfo(int tid) {
  nlohmann::json t;
  t["tid"] = tid;
  const std::string base = absl::StrCat("/proc/self/task/", tid, "/");
  std::string name = ReadSmallFile(base + "comm");
  t["name"] = std::string(absl::StripTrailingAsciiWhitespace(name));
  std::string stat = ReadSmallFile(base + "stat");
  // "tid (comm) S ...": the state follows the last ')'.
  if (size_t p = stat.rfind(')'); p != std::string::npos && p + 2 < stat.size()) {
    t["state"] = std::string(1, stat[p + 2]);
  }
  t["wchan"] = ReadSmallFile(base + "wchan");
  std::string stack = ReadSmallFile(base + "stack");
  if (!stack.empty()) t["kernel_stack"] = stack;
  return t;
}

}  // namespace

// --- the ring ----------------------------------------------------------------------------------

FlightRecorder::FlightRecorder(RecorderInfo info, size_t capacity)
    : info_(std::move(info)),
      mask_(RoundUp(std::min(capacity, kMaxCapacity)) - 1),
      slots_(std::make_unique<Slot[]>(mask_ + 1)) {}

std::shared_ptr<FlightRecorder> FlightRecorder::Create(RecorderInfo info) {
  absl::StatusOr<size_t> capacity = CapacityFromEnv();
  // CheckParams() reports a bad value to the caller of the public entry points; here the
  // default stands in.
  (void)Anchor();
  SetLogEpoch(info.epoch);  // log lines carry the newest epoch this process communicates in
  Acquire();
  std::shared_ptr<FlightRecorder> recorder(
      new FlightRecorder(std::move(info), capacity.value_or(2048)), [](FlightRecorder* r) {
        delete r;
        Release();
      });
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.mu);
  reg.recorders.push_back(recorder);
  return recorder;
}

uint64_t FlightRecorder::Issue(absl::string_view op, absl::string_view dtype, int64_t count,
                               int peer, int64_t seq) {
  const uint64_t id = head_.fetch_add(1, std::memory_order_relaxed);
  Slot& s = slots_[id & mask_];
  s.version.store(2 * id + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  s.seq.store(seq, std::memory_order_relaxed);
  s.op.store(op.data(), std::memory_order_relaxed);
  s.op_len.store(static_cast<uint32_t>(op.size()), std::memory_order_relaxed);
  s.dtype.store(dtype.data(), std::memory_order_relaxed);
  s.dtype_len.store(static_cast<uint32_t>(dtype.size()), std::memory_order_relaxed);
  s.count.store(count, std::memory_order_relaxed);
  s.peer.store(peer, std::memory_order_relaxed);
  s.issued_ns.store(Stamp(), std::memory_order_relaxed);
  // start_word and end_word name the previous entry (or none): nothing to reset.
  s.version.store(2 * id + 2, std::memory_order_release);
  last_tid_.store(CurrentTid(), std::memory_order_relaxed);
  return id;
}

namespace {
constexpr uint64_t kWordValid = uint64_t{1} << 63;
constexpr int kTagShift = 45;
constexpr uint64_t kTagMask = (uint64_t{1} << 18) - 1;
constexpr uint64_t kOkBit = uint64_t{1} << 44;
constexpr uint64_t kDeltaMask = (uint64_t{1} << 44) - 1;  // ~2 h of TSC ticks at 2.5 GHz
}  // namespace

uint64_t FlightRecorder::Word(uint64_t id, bool ok, int64_t delta) {
  const uint64_t d = delta <= 0 ? 0 : std::min<uint64_t>(static_cast<uint64_t>(delta), kDeltaMask);
  return kWordValid | ((id & kTagMask) << kTagShift) | (ok ? kOkBit : 0) | d;
}

bool FlightRecorder::WordIsFor(uint64_t word, uint64_t id) {
  return (word & kWordValid) != 0 && ((word >> kTagShift) & kTagMask) == (id & kTagMask);
}

void FlightRecorder::Mark(uint64_t id, bool start, bool ok) {
  Slot& s = slots_[id & mask_];
  // Overwritten by a newer op (the ring wrapped while this one ran): nothing to update. (If
  // the ring wraps right after this check, the word still names `id`: the newer entry
  // ignores it.)
  if (s.version.load(std::memory_order_acquire) != 2 * id + 2) return;
  const int64_t delta = Stamp() - s.issued_ns.load(std::memory_order_relaxed);
  (start ? s.start_word : s.end_word).store(Word(id, ok, delta), std::memory_order_release);
}

void FlightRecorder::Start(uint64_t id) { Mark(id, /*start=*/true, /*ok=*/false); }

void FlightRecorder::Finish(uint64_t id, bool ok) { Mark(id, /*start=*/false, ok); }

std::vector<Entry> FlightRecorder::Snapshot() const {
  const uint64_t head = head_.load(std::memory_order_acquire);
  const uint64_t first = head > mask_ + 1 ? head - (mask_ + 1) : 0;
  std::vector<Entry> out;
  out.reserve(head - first);
  for (uint64_t id = first; id < head; ++id) {
    const Slot& s = slots_[id & mask_];
    if (s.version.load(std::memory_order_acquire) != 2 * id + 2) continue;  // being written
    Entry e;
    e.id = id;
    e.seq = s.seq.load(std::memory_order_relaxed);
    const char* op = s.op.load(std::memory_order_relaxed);
    const char* dtype = s.dtype.load(std::memory_order_relaxed);
    e.op = op ? absl::string_view(op, s.op_len.load(std::memory_order_relaxed)) : "";
    e.dtype = dtype ? absl::string_view(dtype, s.dtype_len.load(std::memory_order_relaxed)) : "";
    e.count = s.count.load(std::memory_order_relaxed);
    e.peer = s.peer.load(std::memory_order_relaxed);
    e.issued_ns = s.issued_ns.load(std::memory_order_relaxed);  // stamps until converted
    const uint64_t start = s.start_word.load(std::memory_order_acquire);
    const uint64_t end = s.end_word.load(std::memory_order_acquire);
    e.state = OpState::kIssued;
    if (WordIsFor(start, id)) {
      e.state = OpState::kStarted;
      e.started_ns = e.issued_ns + static_cast<int64_t>(start & kDeltaMask);
    }
    if (WordIsFor(end, id)) {
      e.state = (end & kOkBit) != 0 ? OpState::kCompleted : OpState::kFailed;
      e.ended_ns = e.issued_ns + static_cast<int64_t>(end & kDeltaMask);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (s.version.load(std::memory_order_relaxed) != 2 * id + 2) continue;  // overwritten
    out.push_back(e);
  }
  for (Entry& e : out) {
    e.issued_ns = StampToNs(e.issued_ns);
    e.started_ns = StampToNs(e.started_ns);
    e.ended_ns = StampToNs(e.ended_ns);
  }
  return out;
}

namespace {

nlohmann::json RecorderJson(const FlightRecorder& r) {
  const RecorderInfo& info = r.info();
  nlohmann::json j;
  j["name"] = info.name;
  j["epoch"] = info.epoch;
  j["rank"] = info.rank;
  j["size"] = info.size;
  j["members"] = info.members;
  j["backend"] = info.backend;
  j["capacity"] = r.capacity();
  j["issued"] = r.issued();
  j["last_issuer_tid"] = r.last_issuer_tid();
  nlohmann::json entries = nlohmann::json::array();
  for (const Entry& e : r.Snapshot()) {
    entries.push_back({{"id", e.id},
                       {"seq", e.seq},
                       {"op", std::string(e.op)},
                       {"dtype", std::string(e.dtype)},
                       {"count", e.count},
                       {"peer", e.peer},
                       {"state", std::string(OpStateName(e.state))},
                       {"issued_ns", e.issued_ns},
                       {"started_ns", e.started_ns},
                       {"ended_ns", e.ended_ns}});
  }
  j["entries"] = std::move(entries);
  return j;
}

}  // namespace

std::string FlightRecorder::ToJson() const { return RecorderJson(*this).dump(); }

absl::StatusOr<size_t> CapacityFromEnv() {
  if (absl::Status s = CheckParam("TRIDENT_FR_ENTRIES"); !s.ok()) return s;
  return static_cast<size_t>(ParamInt("TRIDENT_FR_ENTRIES"));
}

namespace {

std::string ProcessDumpJsonLocked(absl::string_view reason, const std::vector<std::string>& failures) {
  nlohmann::json j;
  j["version"] = 1;
  j["reason"] = std::string(reason);
  j["failures"] = failures;
  j["time_ns"] = NowNs();
  j["pid"] = static_cast<int>(getpid());
  j["rank"] = ParamInt("TRIDENT_RANK");
  j["member"] = ParamString("TRIDENT_MEMBER");
  nlohmann::json comms = nlohmann::json::array();
  std::set<int> tids;
  for (const auto& r : Live()) {
    comms.push_back(RecorderJson(*r));
    if (r->last_issuer_tid() != 0) tids.insert(r->last_issuer_tid());
  }
  j["communicators"] = std::move(comms);
  // The threads that issued ops (the training thread, normally): where each one is now.
  nlohmann::json threads = nlohmann::json::array();
  for (int tid : tids) threads.push_back(ThreadInfo(tid));
  j["threads"] = std::move(threads);
  return j.dump(1);
}

constexpr size_t kMaxFailuresKept = 16;

}  // namespace

std::string ProcessDumpJson(absl::string_view reason) {
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.dump_mu);
  return ProcessDumpJsonLocked(reason, reg.failures);
}

void SetDumpObserver(DumpObserver observer) {
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.dump_mu);
  reg.observer = std::move(observer);
}

namespace {

absl::StatusOr<std::string> Dump(absl::string_view reason, absl::string_view dir,
                                 bool failure) {
  std::string where(dir);
  if (where.empty()) where = ParamString("TRIDENT_FR_DIR");
  Registry& reg = GetRegistry();
  absl::MutexLock lock(&reg.dump_mu);
  if (failure) {
    reg.failures.emplace_back(reason);
    if (reg.failures.size() > kMaxFailuresKept) reg.failures.erase(reg.failures.begin());
  }
  if (where.empty() && !reg.observer) return std::string();
  const std::string text = ProcessDumpJsonLocked(reason, reg.failures);
  if (reg.observer) reg.observer(text);
  if (where.empty()) return std::string();
  std::string member = ParamString("TRIDENT_MEMBER");
  if (member.empty()) member = absl::StrCat("pid", getpid());
  const std::string path = absl::StrCat(where, "/fr-", member, ".json");
  const std::string tmp = absl::StrCat(path, ".tmp", CurrentTid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      return absl::UnavailableError(absl::StrCat(
          "flight recorder: could not write ", tmp, "; check that TRIDENT_FR_DIR=", where,
          " exists and is writable"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(
        absl::StrCat("flight recorder: rename ", tmp, " -> ", path, " failed: errno ", errno));
  }
  return path;
}

}  // namespace

absl::StatusOr<std::string> DumpFlightRecorders(absl::string_view reason, absl::string_view dir) {
  return Dump(reason, dir, /*failure=*/false);
}

void DumpOnFailure(absl::string_view communicator, const absl::Status& error) {
  absl::StatusOr<std::string> path =
      Dump(absl::StrCat(communicator, ": ", error.ToString()), "", /*failure=*/true);
  if (!path.ok()) {
    TLOG(warn, "{}", path.status());
  } else if (!path->empty()) {
    TLOG(info, "flight recorder: wrote {} ({})", *path, communicator);
  }
}

absl::Status RequestDumps(absl::string_view dir, absl::string_view why) {
  const std::string path = absl::StrCat(dir, "/request");
  const std::string tmp = absl::StrCat(path, ".tmp", getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << why << " at " << NowNs() << "\n";
    if (!out) {
      return absl::UnavailableError(absl::StrCat("flight recorder: cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("flight recorder: cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

int RegisteredRecorders() { return static_cast<int>(Live().size()); }

}  // namespace trident::fr
