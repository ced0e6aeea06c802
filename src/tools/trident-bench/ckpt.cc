// trident-bench ckpt: what an asynchronous checkpoint costs one rank. For each state size:
//  - the training-loop stall of CheckpointEngine::Save (the snapshot into staging memory)
//    against one plain memcpy of the same bytes into warm memory, measured in the same run;
//  - the persist throughput (Save's return to the commit: write, CRC32C, fsync, manifest,
//    renames) against dd writing the same bytes to the same directory (oflag=direct and
//    conv=fsync), also in the same run.
//  - the peak extra host memory (resident) of the engine from Create to the last commit,
//    against its memory budget.
// One process, a world of one rank (an in-process communicator): no launcher needed.
#include "ckpt.h"

#include <fcntl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench.h"
#include "checkpoint/file_system.h"
#include "comm/host/inproc.h"
#include "common/host_memory.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"
#include "trident/checkpoint.h"

namespace trident::bench {
namespace {

constexpr char kCkptUsage[] = R"(usage: trident-bench ckpt --dir DIR [flags]

Measures the checkpoint engine on one rank (this process; no trident-run needed). For each
size in --sizes, a state of --tensors f32 tensors of that many bytes in all is saved --iters
times (after one untimed first save that faults the staging memory in), each save waited for
before the next, and in the same run:
  memcpy(ms)    median time of a plain memcpy of the same bytes (the state's tensors) into
                warm memory, one thread; each timed right before a timed save
  stall(ms)     median time Save blocks the caller (the snapshot)
  stall/cp      median over the iterations of stall / memcpy of the same iteration (the goal:
                at most 1.2)
  first(ms)     the stall of the first save; with --no-reserve it faults the staging in
  create(ms)    CheckpointEngine::Create, which reserves the staging (unless --no-reserve)
  persist(s)    median time from Save's return to the commit (write, CRC32C, fsync,
                manifest, renames, `latest`)
  persist GB/s  bytes / persist(s)
  dd GB/s       dd if=/dev/zero of=DIR/dd.bench oflag=direct conv=fsync of the same bytes
                (the better of bs=64M and bs=256M), and (second figure) bs=64M conv=fsync
                through the page cache; timed around the dd process
  fio GB/s      fio, if installed: --rw=write --bs=64m --direct=1 --ioengine=libaio
                --iodepth=4 --end_fsync=1 of the same bytes (-1: no fio)
  per/ref       persist GB/s / the best of the dd and fio figures
  raw           GB/s of the same bytes written from huge-page memory the way the engine
                writes (64 MiB O_DIRECT writes, then fsync; no CRC, no commit): dd and fio
                write from 4 KiB pages, which costs this VM's disk a good part of its speed
  per/raw       persist GB/s / raw
  extra(MiB)    peak extra host memory of the engine: the process's peak resident memory from
                Create to the last save's commit (VmHWM after resetting it through
                /proc/self/clear_refs, and the maximum of VmRSS sampled every 2 ms by a thread;
                the larger) minus the resident memory before Create (the state and the memcpy
                target are already resident then)
  x/budget      extra / the budget (the budget column: CheckpointOptions::memory_budget_bytes)
With --budget smaller than a size, that size streams through the budget: the stall then
includes writing all but the last budget's worth of bytes.

Flags:
  --dir DIR         where to write (required); checkpoints go to DIR/ckpt-bench, deleted after
  --sizes LIST      comma-separated sizes, K/M/G binary (default 256M,2G)
  --iters N         timed saves per size (default 5)
  --tensors N       tensors in the state (default 16)
  --state-dict      instead, a state like a torch state_dict of a transformer LM with AdamW
                    (model + optimizer, about SIZE bytes): an embedding, per layer 12
                    parameters from 1 KiB to 4 MiB, per parameter exp_avg, exp_avg_sq and a
                    4-byte step; each tensor its own 64-byte-aligned allocation (100M: 505
                    tensors)
  --threads N       snapshot copy threads (default 0: TRIDENT_CKPT_THREADS, else min(4, cores))
  --budget BYTES    staging budget (default 0: each size, so the whole state fits)
  --no-direct       write shards through the page cache instead of O_DIRECT
  --no-reserve      do not reserve the staging memory at Create (CheckpointOptions::
                    reserve_bytes): the first save then faults it in
  --no-dd           skip the dd and fio measurements
  --json FILE       also write the rows as JSON
)";

struct CkptConfig {
  std::string dir;
  std::vector<int64_t> sizes;
  int iters = 5;
  int tensors = 16;
  int threads = 0;
  int64_t budget = 0;
  bool direct = true;
  bool dd = true;
  bool fio = true;
  bool reserve = true;
  bool state_dict = false;
  std::string json;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// The process's resident memory in bytes (VmRSS, from /proc/self/statm), or -1.
int64_t ResidentBytes() {
  const int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[256];
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = '\0';
  long long size = 0, resident = 0;
  if (std::sscanf(buf, "%lld %lld", &size, &resident) != 2) return -1;
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

// VmHWM (the resident high-water mark) in bytes, or -1.
int64_t ResidentHighWaterBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    long long kb = 0;
    if (std::sscanf(line.c_str(), "VmHWM: %lld kB", &kb) == 1) return kb << 10;
  }
  return -1;
}

// Resets VmHWM to the current VmRSS (Linux >= 4.0); false where not permitted.
bool ResetResidentHighWater() {
  const int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, "5", 1) == 1;
  close(fd);
  return ok;
}

// The peak resident memory of the process from construction to Stop(): VmHWM (when it could
// be reset at the start) and VmRSS sampled every 2 ms by a thread, whichever is larger.
class PeakResident {
 public:
  PeakResident() : hwm_reset_(ResetResidentHighWater()), peak_sampled_(ResidentBytes()) {
    sampler_ = std::thread([this] {
      while (!stop_.load(std::memory_order_relaxed)) {
        const int64_t r = ResidentBytes();
        if (r > peak_sampled_.load(std::memory_order_relaxed)) peak_sampled_.store(r);
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  }
  ~PeakResident() { Stop(); }
  void Stop() {
    if (!sampler_.joinable()) return;
    stop_ = true;
    sampler_.join();
    const int64_t r = ResidentBytes();
    if (r > peak_sampled_) peak_sampled_ = r;
    hwm_ = hwm_reset_ ? ResidentHighWaterBytes() : -1;
  }
  int64_t sampled() const { return peak_sampled_; }
  int64_t hwm() const { return hwm_; }  // -1: VmHWM could not be reset
  int64_t peak() const { return std::max<int64_t>(peak_sampled_, hwm_); }

 private:
  const bool hwm_reset_;
  std::atomic<int64_t> peak_sampled_;
  std::atomic<bool> stop_{false};
  int64_t hwm_ = -1;
  std::thread sampler_;
};

std::string FsType(const std::string& dir) {
  struct statfs st;
  if (statfs(dir.c_str(), &st) != 0) return "?";
  switch (static_cast<uint64_t>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x01021994: return "tmpfs";
    case 0x794c7630: return "overlayfs";
    case 0x9123683E: return "btrfs";
    case 0x6969: return "nfs";
    default: return absl::StrFormat("0x%x", static_cast<uint64_t>(st.f_type));
  }
}

// Runs dd; returns GB/s from the wall time around it, or -1.
double RunDd(const std::string& path, int64_t bytes, const std::string& bs, bool direct,
             std::string* line) {
  const int64_t block = *ParseBytes(bs);
  const int64_t count = std::max<int64_t>(1, (bytes + block - 1) / block);
  const std::string cmd = absl::StrCat("dd if=/dev/zero of=", path, " bs=", bs, " count=", count,
                                       direct ? " oflag=direct" : "", " conv=fsync 2>&1");
  const absl::Time start = absl::Now();
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[512];
  std::string out;
  while (fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = pclose(p);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::remove(path.c_str());
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  *line = lines.empty() ? "" : lines.back();
  if (rc != 0) return -1;
  return static_cast<double>(count * block) / seconds / 1e9;
}

// Runs fio (sequential O_DIRECT writes of 64 MiB through libaio, `iodepth` in flight, an
// fsync at the end); returns its GB/s, or -1 when fio is missing or fails.
double RunFio(const std::string& path, int64_t bytes, int iodepth) {
  const std::string cmd = absl::StrCat(
      "fio --name=trident-ckpt-ref --filename=", path, " --rw=write --bs=64m --size=", bytes,
      " --direct=1 --ioengine=libaio --iodepth=", iodepth,
      " --end_fsync=1 --output-format=json 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  std::remove(path.c_str());
  if (rc != 0) return -1;
  nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded()) return -1;
  try {
    return j.at("jobs").at(0).at("write").at("bw_bytes").get<double>() / 1e9;
  } catch (const nlohmann::json::exception&) {
    return -1;
  }
}

// What a torch state_dict of a transformer LM with AdamW holds (model + optimizer), about
// `size` bytes: an embedding [V, h] and per layer qkv [3h, h], proj [h, h], mlp up [4h, h] and
// down [h, 4h] with their biases and two layer norms (weight, bias), all f32; per parameter the
// optimizer's exp_avg and exp_avg_sq (same shape, f32) and its step (an f32 scalar). Tensors
// from 4 bytes to megabytes, each in its own allocation as torch's CPU allocator makes them
// (64-byte aligned).
std::vector<std::pair<std::string, Tensor::Shape>> StateDictShapes(int64_t size) {
  const int64_t h = 256, vocab = 4096;
  const std::vector<std::pair<std::string, Tensor::Shape>> layer = {
      {"attn.qkv.weight", {3 * h, h}}, {"attn.qkv.bias", {3 * h}},
      {"attn.proj.weight", {h, h}},    {"attn.proj.bias", {h}},
      {"mlp.up.weight", {4 * h, h}},   {"mlp.up.bias", {4 * h}},
      {"mlp.down.weight", {h, 4 * h}}, {"mlp.down.bias", {h}},
      {"ln1.weight", {h}},             {"ln1.bias", {h}},
      {"ln2.weight", {h}},             {"ln2.bias", {h}}};
  int64_t per_layer = 0;
  for (const auto& [name, shape] : layer) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    per_layer += 3 * 4 * n + 4;  // param, exp_avg, exp_avg_sq, step
  }
  const int64_t embedding = 3 * 4 * vocab * h + 4;
  const int64_t layers = std::max<int64_t>(1, (size - embedding) / per_layer);
  std::vector<std::pair<std::string, Tensor::Shape>> params = {{"embed.weight", {vocab, h}}};
  for (int64_t l = 0; l < layers; ++l) {
    for (const auto& [name, shape] : layer) params.push_back({absl::StrCat("layers.", l, ".", name), shape});
  }
  std::vector<std::pair<std::string, Tensor::Shape>> out;
  for (const auto& p : params) out.push_back({"model." + p.first, p.second});
  for (const auto& p : params) {
    out.push_back({"optim.state." + p.first + ".exp_avg", p.second});
    out.push_back({"optim.state." + p.first + ".exp_avg_sq", p.second});
    out.push_back({"optim.state." + p.first + ".step", {}});
  }
  return out;
}

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};

absl::Status RunSize(const CkptConfig& c, int64_t size, Communicator& comm, nlohmann::json* rows) {
  // The state: `tensors` equal f32 tensors, or (--state-dict) a torch-like state_dict; written
  // once so their pages are real.
  std::vector<char*> data;
  std::vector<size_t> sizes;
  std::vector<HostMemory> buffers;
  std::vector<std::unique_ptr<char, FreeDeleter>> allocations;
  CheckpointState state;
  if (c.state_dict) {
    for (const auto& [name, shape] : StateDictShapes(size)) {
      int64_t n = 4;
      for (int64_t d : shape) n *= d;
      allocations.emplace_back(static_cast<char*>(std::aligned_alloc(64, (n + 63) / 64 * 64)));
      std::memset(allocations.back().get(), 0x11 + static_cast<int>(data.size() % 200), n);
      data.push_back(allocations.back().get());
      sizes.push_back(static_cast<size_t>(n));
      state.tensors.push_back({name, Tensor(data.back(), DType::kF32, shape), {}});
    }
  } else {
    const int64_t per = std::max<int64_t>(4, size / c.tensors / 4 * 4);
    for (int i = 0; i < c.tensors; ++i) {
      buffers.push_back(AllocateHostMemory(static_cast<size_t>(per)));
      std::memset(buffers.back().get(), 0x11 + i, static_cast<size_t>(per));
      data.push_back(buffers.back().get());
      sizes.push_back(static_cast<size_t>(per));
      state.tensors.push_back({absl::StrCat("layer", i, ".weight"),
                               Tensor(buffers.back().get(), DType::kF32, {per / 4}), {}});
    }
  }
  int64_t bytes = 0;
  for (size_t n : sizes) bytes += static_cast<int64_t>(n);

  // The baseline: memcpy of the same bytes (the state's tensors) into warm memory.
  HostMemory dst = AllocateHostMemory(static_cast<size_t>(bytes));
  std::memset(dst.get(), 0, static_cast<size_t>(bytes));
  auto timed_memcpy = [&] {
    const absl::Time t = absl::Now();
    size_t at = 0;
    for (size_t k = 0; k < data.size(); ++k) {
      std::memcpy(dst.get() + at, data[k], sizes[k]);
      at += sizes[k];
    }
    return absl::ToDoubleSeconds(absl::Now() - t);
  };
  std::vector<double> memcpy_s;

  const std::string dir = JoinPath(c.dir, "ckpt-bench");
  CheckpointOptions options;
  options.dir = dir;
  options.comm = std::shared_ptr<Communicator>(std::shared_ptr<Communicator>(), &comm);
  options.memory_budget_bytes =
      static_cast<size_t>(c.budget > 0 ? c.budget
                                       // whole huge pages, as the arena is: a budget of
                                       // exactly the state's bytes would stream it
                                       : std::max<int64_t>((bytes + (2 << 20) - 1) /
                                                               (2 << 20) * (2 << 20),
                                                           16 << 20));
  options.copy_threads = c.threads;
  options.direct_io = c.direct;
  options.keep_last = 1;
  options.peer_replicas = false;
  options.reserve_bytes = c.reserve ? static_cast<size_t>(bytes) : 0;
  // Peak extra host memory: from before Create (state and memcpy target already resident) to
  // the last save's commit.
  const int64_t rss_before = ResidentBytes();
  PeakResident peak_rss;
  const absl::Time create_start = absl::Now();
  auto engine_or = CheckpointEngine::Create(options);
  const double create_s = absl::ToDoubleSeconds(absl::Now() - create_start);
  if (!engine_or.ok()) return engine_or.status();
  std::unique_ptr<CheckpointEngine> engine = std::move(engine_or).value();

  // Each timed save right after a timed memcpy, so that both see the same machine (other
  // processes, the page cache's writeback); the ratio is taken per pair.
  std::vector<double> stall_s, persist_s, ratios;
  double first_stall = 0;
  bool streamed = false;
  for (int i = 0; i < c.iters + 1; ++i) {
    const double copy = timed_memcpy();
    const absl::Time t = absl::Now();
    auto save = engine->Save(i, state);
    const double stall = absl::ToDoubleSeconds(absl::Now() - t);
    if (!save.ok()) return save.status();
    absl::Status s = (*save)->Wait();
    if (!s.ok()) return s;
    const SaveStats stats = (*save)->stats();
    streamed = stats.streamed;
    if (i == 0) {
      first_stall = stall;
    } else {
      memcpy_s.push_back(copy);
      stall_s.push_back(stall);
      ratios.push_back(stall / copy);
      persist_s.push_back(stats.persist_seconds);
    }
  }
  peak_rss.Stop();
  const double mib = 1 << 20;
  const double extra_mib =
      rss_before >= 0 && peak_rss.peak() >= 0 ? (peak_rss.peak() - rss_before) / mib : -1;
  const double budget_mib = static_cast<double>(options.memory_budget_bytes) / mib;
  engine.reset();
  (void)PosixFileSystem()->RemoveAll(dir);
  buffers.clear();
  allocations.clear();

  // The disk as the engine's writer sees it: the same bytes from huge-page memory, 64 MiB
  // O_DIRECT writes, fsync; no checksum, no commit.
  double raw = -1;
  {
    const std::string path = JoinPath(c.dir, "raw.bench");
    auto file = PosixFileSystem()->NewWritableFile(path, c.direct);
    if (file.ok()) {
      const absl::Time t = absl::Now();
      absl::Status s;
      const int64_t chunk = 64 << 20;
      for (int64_t off = 0; off < bytes && s.ok(); off += chunk) {
        const int64_t n = std::min(chunk, bytes - off);
        s = (*file)->Write(static_cast<uint64_t>(off), dst.get() + off,
                           static_cast<size_t>((n + 4095) / 4096 * 4096));
      }
      if (s.ok()) s = (*file)->Sync();
      if (s.ok()) raw = static_cast<double>(bytes) / absl::ToDoubleSeconds(absl::Now() - t) / 1e9;
      (void)(*file)->Close();
    }
    std::remove(path.c_str());
  }
  dst.reset();

  std::string dd_direct_line, dd_direct256_line, dd_fsync_line;
  double dd_direct = -1, dd_fsync = -1, dd_direct256 = -1;
  if (c.dd) {
    const std::string path = JoinPath(c.dir, "dd.bench");
    dd_direct = RunDd(path, bytes, "64M", true, &dd_direct_line);
    dd_direct256 = RunDd(path, bytes, "256M", true, &dd_direct256_line);
    dd_fsync = RunDd(path, bytes, "64M", false, &dd_fsync_line);
    dd_direct = std::max(dd_direct, dd_direct256);
  }
  double fio = -1;
  if (c.fio) fio = RunFio(JoinPath(c.dir, "fio.bench"), bytes, 4);
  const double memcpy_ms = Median(memcpy_s) * 1e3;
  const double stall_ms = Median(stall_s) * 1e3;
  const double persist = Median(persist_s);
  const double persist_gbps = static_cast<double>(bytes) / persist / 1e9;
  const double ref = std::max({dd_direct, dd_fsync, fio});
  std::printf("%9s %9s %10.1f %10.1f %8.2f %10.1f %10.1f %10.3f %8.2f   %5.2f / %-5.2f %6.2f %7s %6.2f %7s %10.0f %8.2f\n",
              absl::StrCat(bytes >> 20, "M").c_str(),
              absl::StrCat(options.memory_budget_bytes >> 20, "M", streamed ? "*" : "").c_str(),
              memcpy_ms, stall_ms, Median(ratios), first_stall * 1e3, create_s * 1e3, persist,
              persist_gbps,
              dd_direct, dd_fsync, fio,
              ref > 0 ? absl::StrFormat("%.2f", persist_gbps / ref).c_str() : "-", raw,
              raw > 0 ? absl::StrFormat("%.2f", persist_gbps / raw).c_str() : "-", extra_mib,
              extra_mib / budget_mib);
  std::fflush(stdout);
  rows->push_back({{"bytes", bytes},
                   {"budget", options.memory_budget_bytes},
                   {"streamed", streamed},
                   {"memcpy_ms", memcpy_ms},
                   {"stall_ms", stall_ms},
                   {"stall_ms_all", stall_s},
                   {"memcpy_ms_all", memcpy_s},
                   {"stall_over_memcpy", Median(ratios)},
                   {"stall_over_memcpy_all", ratios},
                   {"first_stall_ms", first_stall * 1e3},
                   {"persist_s", persist},
                   {"persist_s_all", persist_s},
                   {"persist_gbps", persist_gbps},
                   {"dd_direct_gbps", dd_direct},
                   {"dd_fsync_gbps", dd_fsync},
                   {"fio_gbps", fio},
                   {"raw_direct_gbps", raw},
                   {"persist_over_raw", raw > 0 ? persist_gbps / raw : -1},
                   {"persist_over_reference", ref > 0 ? persist_gbps / ref : -1},
                   {"dd_direct_output", dd_direct_line},
                   {"dd_direct_256m_output", dd_direct256_line},
                   {"create_ms", create_s * 1e3},
                   {"rss_before_mib", rss_before / mib},
                   {"peak_rss_sampled_mib", peak_rss.sampled() / mib},
                   {"peak_rss_hwm_mib", peak_rss.hwm() >= 0 ? peak_rss.hwm() / mib : -1.0},
                   {"extra_mib", extra_mib},
                   {"budget_mib", budget_mib},
                   {"extra_over_budget", extra_mib / budget_mib},
                   {"dd_fsync_output", dd_fsync_line}});
  return absl::OkStatus();
}

[[noreturn]] void CkptUsageError(const std::string& message) {
  std::fprintf(stderr, "trident-bench ckpt: %s\n(try trident-bench ckpt --help)\n",
               message.c_str());
  std::exit(2);
}

}  // namespace

int RunCkptBench(int argc, char** argv) {
  CkptConfig c;
  std::vector<std::string> size_texts = {"256M", "2G"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (eq != std::string::npos) return value;
      if (i + 1 >= argc) CkptUsageError(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](int64_t* out) {
      std::string v = next();
      if (!absl::SimpleAtoi(v, out)) CkptUsageError(a + ": not a number: " + v);
    };
    int64_t n = 0;
    if (a == "-h" || a == "--help") {
      std::fputs(kCkptUsage, stdout);
      return 0;
    } else if (a == "--dir") {
      c.dir = next();
    } else if (a == "--sizes") {
      size_texts = absl::StrSplit(next(), ',', absl::SkipEmpty());
    } else if (a == "--iters") {
      number(&n);
      c.iters = static_cast<int>(n);
    } else if (a == "--tensors") {
      number(&n);
      c.tensors = static_cast<int>(n);
    } else if (a == "--threads") {
      number(&n);
      c.threads = static_cast<int>(n);
    } else if (a == "--budget") {
      auto b = ParseBytes(next());
      if (!b.ok()) CkptUsageError(std::string(b.status().message()));
      c.budget = *b;
    } else if (a == "--no-direct") {
      c.direct = false;
    } else if (a == "--no-reserve") {
      c.reserve = false;
    } else if (a == "--state-dict") {
      c.state_dict = true;
    } else if (a == "--no-dd") {
      c.dd = false;
      c.fio = false;
    } else if (a == "--json") {
      c.json = next();
    } else {
      CkptUsageError("unknown flag " + a);
    }
  }
  if (c.dir.empty()) CkptUsageError("--dir is required");
  if (c.iters < 1 || c.tensors < 1 || c.threads < 0) {
    CkptUsageError("--iters and --tensors must be >= 1, --threads >= 0");
  }
  for (const std::string& t : size_texts) {
    auto b = ParseBytes(t);
    if (!b.ok() || *b < 4096) CkptUsageError("bad size " + t + " (at least 4K)");
    c.sizes.push_back(*b);
  }
  if (absl::Status s = PosixFileSystem()->CreateDir(c.dir); !s.ok()) {
    std::fprintf(stderr, "trident-bench ckpt: %s\n", s.ToString().c_str());
    return 1;
  }
  InitLogging("bench");
  InprocCommOptions comm_options;
  comm_options.size = 1;
  std::unique_ptr<Communicator> comm = std::move(NewInprocCommunicators(comm_options)[0]);

  std::printf("# trident-bench ckpt: dir %s (%s), %s, %d timed saves per size, "
              "copy threads %s, shards %s, staging %s\n",
              c.dir.c_str(), FsType(c.dir).c_str(),
              c.state_dict ? "a torch-like state_dict (mixed sizes)"
                           : absl::StrCat(c.tensors, " tensors").c_str(),
              c.iters,
              c.threads > 0 ? absl::StrCat(c.threads).c_str() : "default",
              c.direct ? "O_DIRECT where allowed" : "buffered",
              c.reserve ? "reserved at Create" : "faulted in by the first save");
  std::printf("# %7s %9s %10s %10s %8s %10s %10s %10s %8s   %-13s %6s %7s %6s %7s %10s %8s\n",
              "state", "budget", "memcpy(ms)", "stall(ms)", "stall/cp", "first(ms)",
              "create(ms)", "persist(s)", "GB/s", "dd GB/s dio/buf", "fio", "per/ref", "raw",
              "per/raw", "extra(MiB)", "x/budget");
  std::fflush(stdout);
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t size : c.sizes) {
    absl::Status s = RunSize(c, size, *comm, &rows);
    if (!s.ok()) {
      std::fprintf(stderr, "trident-bench ckpt: %lld bytes: %s\n", static_cast<long long>(size),
                   s.ToString().c_str());
      return 1;
    }
  }
  std::printf("# (* after the budget: the state streamed through it)\n");
  if (!c.json.empty()) {
    nlohmann::json doc = {{"tool", "trident-bench ckpt"}, {"dir", c.dir},
                          {"fs", FsType(c.dir)},           {"tensors", c.tensors},
                          {"iters", c.iters},              {"threads", c.threads},
                          {"direct", c.direct},            {"rows", rows}};
    std::ofstream out(c.json);
    out << doc.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "trident-bench ckpt: cannot write %s\n", c.json.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace trident::bench
