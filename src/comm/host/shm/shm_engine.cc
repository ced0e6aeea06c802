#include "comm/host/shm/shm_engine.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "comm/host/reduce.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "transport/transport.h"

namespace trident {

namespace {

constexpr uint64_t kMagic = 0x54524944'53484d31ull;  // "TRIDSHM1"
constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2 << 20;
constexpr int64_t kSpinNs = 20'000;       // spin this long on a flag before yielding
constexpr int64_t kYieldNs = 2'000'000;   // then yield this long before sleeping
constexpr int64_t kNapNs = 2'000'000;     // longest futex sleep between checks
constexpr int64_t kCheckNs = 5'000'000;   // deadline, abort flags, pids: this often
constexpr int64_t kHealthNs = 50'000'000; // the caller's health check (a store read)

size_t RoundUp(size_t x, size_t to) { return (x + to - 1) / to * to; }

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1'000'000'000 + ts.tv_nsec;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

absl::Status Errno(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err), " (errno ", err, ")"));
}

struct alignas(64) RankCtl {
  std::atomic<uint64_t> pos;  // sync points this rank passed; alone on its cache line
  char pad[56];
  std::atomic<int32_t> pid;
  std::atomic<uint32_t> failed;
  int32_t cause_peer;  // 1 + the transport rank its failure names (a dead peer), or 0
  ShmCall calls[2];  // fingerprints of its current op, by op sequence parity
  char reason[256];  // why it failed (set before `failed`)
};

}  // namespace

struct ShmEngine::Segment {
  uint64_t magic;
  uint32_t size;
  uint32_t pad;
  uint64_t slot_bytes;
  uint64_t oneshot_bytes;
  uint64_t data_offset;
  alignas(64) std::atomic<uint32_t> wake_gen;
  std::atomic<uint32_t> sleepers;
  char pad2[56];

  RankCtl& ctl(int r) {
    return reinterpret_cast<RankCtl*>(reinterpret_cast<uint8_t*>(this) + sizeof(Segment))[r];
  }
};

ShmEngine::ShmEngine(int rank, std::vector<int> ranks, ShmParams params)
    : rank_(rank), ranks_(std::move(ranks)), params_(params), pidfds_(ranks_.size(), -1) {}

ShmEngine::~ShmEngine() {
  if (base_ != nullptr) munmap(base_, length_);
  if (fd_ >= 0) close(fd_);
  for (int fd : pidfds_) {
    if (fd >= 0) close(fd);
  }
}

std::string ShmEngine::Describe() const {
  return absl::StrCat("shm engine (", size(), " ranks, ", params_.slot_bytes >> 10,
                      " KiB slots", huge_ ? ", huge pages" : "", ")");
}

absl::StatusOr<std::unique_ptr<ShmEngine>> ShmEngine::Create(Store& store, const std::string& key,
                                                             int rank, std::vector<int> ranks,
                                                             ShmParams params,
                                                             absl::Time deadline) {
  const int n = static_cast<int>(ranks.size());
  params.slot_bytes = RoundUp(std::max<size_t>(params.slot_bytes, kPage), kPage);
  std::unique_ptr<ShmEngine> e(new ShmEngine(rank, std::move(ranks), params));
  const size_t header = RoundUp(sizeof(Segment) + n * sizeof(RankCtl), kPage);
  if (rank == 0) {
    size_t length = header + static_cast<size_t>(n) * 2 * params.slot_bytes;
    // Huge pages when the kernel has a pool of them (mmap fails at once when it has not).
    int fd = memfd_create("trident-shm", MFD_CLOEXEC | MFD_HUGETLB);
    void* base = MAP_FAILED;
    if (fd >= 0) {
      const size_t huge_length = RoundUp(length, kHugePage);
      if (ftruncate(fd, huge_length) == 0) {
        base = mmap(nullptr, huge_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      }
      if (base == MAP_FAILED) {
        close(fd);
        fd = -1;
      } else {
        length = huge_length;
        e->huge_ = true;
      }
    }
    if (fd < 0) {
      fd = memfd_create("trident-shm", MFD_CLOEXEC);
      if (fd < 0) return Errno("shm engine: memfd_create", errno);
      if (ftruncate(fd, length) != 0) {
        const int err = errno;
        close(fd);
        return Errno(absl::StrCat("shm engine: ftruncate to ", length, " bytes"), err);
      }
      base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (base == MAP_FAILED) {
        const int err = errno;
        close(fd);
        return Errno(absl::StrCat("shm engine: mmap of ", length, " bytes"), err);
      }
      (void)madvise(base, length, MADV_HUGEPAGE);  // transparent huge pages, where enabled
    }
    e->fd_ = fd;
    e->base_ = base;
    e->length_ = length;
    e->seg_ = static_cast<Segment*>(base);
    e->seg_->size = static_cast<uint32_t>(n);
    e->seg_->slot_bytes = params.slot_bytes;
    e->seg_->oneshot_bytes = params.oneshot_bytes;
    e->seg_->data_offset = header;
    e->seg_->magic = kMagic;
    RETURN_IF_ERROR(store.Set(key, absl::StrCat(getpid(), ":", fd, ":", length), deadline));
  } else {
    ASSIGN_OR_RETURN(std::string where, store.Get(key, deadline));
    std::vector<std::string> parts = absl::StrSplit(where, ':');
    int64_t pid = 0, fd = 0;
    uint64_t length = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &pid) ||
        !absl::SimpleAtoi(parts[1], &fd) || !absl::SimpleAtoi(parts[2], &length)) {
      return absl::InternalError(absl::StrCat("shm engine: bad segment address '", where, "'"));
    }
    const std::string path = absl::StrCat("/proc/", pid, "/fd/", fd);
    int mine = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (mine < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "shm engine: cannot open rank 0's segment ", path, ": ", std::strerror(errno),
          "; are the ranks in different containers? Set TRIDENT_INTRAHOST=fabric"));
    }
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, mine, 0);
    const int err = errno;
    close(mine);
    if (base == MAP_FAILED) return Errno(absl::StrCat("shm engine: mmap of ", path), err);
    e->base_ = base;
    e->length_ = length;
    e->seg_ = static_cast<Segment*>(base);
    if (e->seg_->magic != kMagic || e->seg_->size != static_cast<uint32_t>(n)) {
      return absl::InternalError(absl::StrCat("shm engine: segment ", path,
                                              " is not this communicator's (", n, " ranks)"));
    }
    // Rank 0's sizes rule, so that every rank picks the same algorithm.
    e->params_.slot_bytes = e->seg_->slot_bytes;
    e->params_.oneshot_bytes = e->seg_->oneshot_bytes;
  }
  e->seg_->ctl(rank).pid.store(getpid(), std::memory_order_release);
  return e;
}

uint8_t* ShmEngine::Slot(int rank, int buffer) const {
  return static_cast<uint8_t*>(base_) + seg_->data_offset +
         (static_cast<size_t>(rank) * 2 + buffer) * params_.slot_bytes;
}

void ShmEngine::Wake() {
  seg_->wake_gen.fetch_add(1, std::memory_order_seq_cst);
  syscall(SYS_futex, &seg_->wake_gen, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

void ShmEngine::MarkFailed(const std::string& reason, int cause_peer) {
  if (seg_ == nullptr || failed_.exchange(true)) return;
  RankCtl& me = seg_->ctl(rank_);
  std::snprintf(me.reason, sizeof(me.reason), "%s", reason.c_str());
  me.cause_peer = cause_peer + 1;
  me.failed.store(1, std::memory_order_release);
  Wake();
}

absl::Status ShmEngine::Run(const ShmOp& op, const ShmHooks& hooks) {
  absl::Status s = RunOp(op, hooks);
  // Peers waiting for this rank fail at once naming it; not for a deadline (every rank meets
  // its own and names the absent ranks) or a mismatch (every rank sees it itself).
  if (!s.ok() && s.code() != absl::StatusCode::kDeadlineExceeded &&
      s.code() != absl::StatusCode::kInvalidArgument) {
    MarkFailed(std::string(s.message()), PeerOf(s));
  }
  return s;
}

absl::Status ShmEngine::CheckPeers(const ShmOp& op, const ShmHooks& hooks, uint64_t target) {
  std::vector<int> lagging;
  for (int p = 0; p < size(); ++p) {
    if (seg_->ctl(p).pos.load(std::memory_order_acquire) < target) lagging.push_back(p);
  }
  if (lagging.empty()) return absl::OkStatus();
  for (int p : lagging) {
    RankCtl& c = seg_->ctl(p);
    const int pid = c.pid.load(std::memory_order_acquire);
    if (pid <= 0 || pid == getpid()) continue;  // not attached yet, or a thread of ours
    if (pidfds_[p] < 0) {
      pidfds_[p] = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
      if (pidfds_[p] < 0 && errno == ESRCH) pidfds_[p] = -2;  // already gone
    }
    bool dead = pidfds_[p] == -2;
    if (pidfds_[p] >= 0) {
      pollfd pfd{pidfds_[p], POLLIN, 0};
      dead = poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN);
    }
    if (dead) {
      return WithPeer(absl::AbortedError(absl::StrCat(
                          "rank ", p, " (pid ", pid, ") exited while ", hooks.op_name,
                          " waited for it on the shared-memory engine")),
                      ranks_[p]);
    }
  }
  // A peer that failed will not reach a later sync point, arrived at this one or not. (Dead
  // processes first: a peer that failed because one died names it less directly.) When its
  // failure named a dead peer, so does ours, for the owner's on_peer_error.
  for (int p = 0; p < size(); ++p) {
    RankCtl& c = seg_->ctl(p);
    if (p != rank_ && c.failed.load(std::memory_order_acquire) != 0) {
      absl::Status left = absl::AbortedError(absl::StrCat(
          "rank ", p, " left ", hooks.op_name, " on its side: ", std::string(c.reason)));
      return c.cause_peer > 0 ? WithPeer(left, c.cause_peer - 1) : left;
    }
  }
  if (absl::Now() >= op.deadline) {
    return absl::DeadlineExceededError(
        absl::StrCat(hooks.op_name, " timed out after ", absl::FormatDuration(op.timeout),
                     "; ranks that had not arrived: ", absl::StrJoin(lagging, ", ")));
  }
  return absl::OkStatus();
}

absl::Status ShmEngine::Sync(const ShmOp& op, const ShmHooks& hooks) {
  const uint64_t target = ++sync_;
  seg_->ctl(rank_).pos.store(target, std::memory_order_seq_cst);
  if (seg_->sleepers.load(std::memory_order_seq_cst) > 0) Wake();
  const int n = size();
  auto all_arrived = [&] {
    for (int p = 0; p < n; ++p) {
      if (seg_->ctl(p).pos.load(std::memory_order_acquire) < target) return false;
    }
    return true;
  };
  if (all_arrived()) return absl::OkStatus();
  const int64_t start = NowNs();
  int64_t next_check = start + kCheckNs / 5, next_health = start + kHealthNs;
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (all_arrived()) return absl::OkStatus();
      CpuRelax();
    }
    if (hooks.aborted != nullptr && hooks.aborted->load(std::memory_order_acquire)) {
      return hooks.abort_status();
    }
    const int64_t now = NowNs();
    if (now >= next_check) {
      next_check = now + kCheckNs;
      RETURN_IF_ERROR(CheckPeers(op, hooks, target));
      if (now >= next_health && hooks.health) {
        next_health = now + kHealthNs;
        RETURN_IF_ERROR(hooks.health());
      }
    }
    const int64_t idle = now - start;
    if (idle < kSpinNs) continue;
    if (idle < kYieldNs) {
      sched_yield();
      continue;
    }
    // Sleep until a publisher wakes us (it does when `sleepers` is non-zero) or a nap passes.
    seg_->sleepers.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t gen = seg_->wake_gen.load(std::memory_order_seq_cst);
    if (!all_arrived()) {
      timespec nap{0, kNapNs};
      syscall(SYS_futex, &seg_->wake_gen, FUTEX_WAIT, gen, &nap, nullptr, 0);
    }
    seg_->sleepers.fetch_sub(1, std::memory_order_seq_cst);
  }
}

absl::Status ShmEngine::CheckCalls(const ShmOp& op, const ShmHooks& hooks) {
  const ShmCall& mine = op.call;
  for (int p = 0; p < size(); ++p) {
    if (p == rank_) continue;
    const ShmCall theirs = seg_->ctl(p).calls[mine.seq & 1];
    if (!mine.SameCall(theirs)) {
      absl::Status mismatch = absl::InvalidArgumentError(absl::StrCat(
          "ranks called different collectives on ", hooks.comm_name, ": rank ", rank_,
          " called ", hooks.describe(mine), " but rank ", p, " called ",
          hooks.describe(theirs)));
      if (hooks.publish) hooks.publish(mismatch);
      return mismatch;
    }
  }
  return absl::OkStatus();
}

absl::Status ShmEngine::RunOp(const ShmOp& op, const ShmHooks& hooks) {
  if (failed_.load()) {
    return absl::FailedPreconditionError("shm engine: this rank already failed an op");
  }
  const int n = size(), r = rank_;
  const size_t es = DTypeSize(op.dtype);
  const size_t slot_elems = params_.slot_bytes / es;
  const auto* in = static_cast<const uint8_t*>(op.in);
  auto* out = static_cast<uint8_t*>(op.out);
  const bool avg = op.reduce == ReduceOp::kAvg;
  seg_->ctl(r).calls[op.call.seq & 1] = op.call;

  // Chunk `c` elements per sync; `fill` copies this rank's part into its slot. The first sync
  // also checks the fingerprints.
  bool first = true;
  auto step = [&](const std::function<void(uint8_t*)>& fill, int* buffer) -> absl::Status {
    *buffer = NextBuffer();
    fill(Slot(r, *buffer));
    RETURN_IF_ERROR(Sync(op, hooks));
    if (first) {
      first = false;
      RETURN_IF_ERROR(CheckCalls(op, hooks));
    }
    return absl::OkStatus();
  };
  // dst = slot(0)[at] op slot(1)[at] op ... in rank order (identical bits on every rank).
  auto reduce_all = [&](uint8_t* dst, int b, size_t at, size_t c) {
    ReduceElements(op.dtype, op.reduce, dst, Slot(0, b) + at, Slot(1, b) + at, c);
    for (int p = 2; p < n; ++p) ReduceElements(op.dtype, op.reduce, dst, dst, Slot(p, b) + at, c);
    if (avg) ScaleDown(op.dtype, dst, c, n);
  };
  int b = 0;
  switch (op.algo) {
    case ShmAlgo::kAgree:
      return step([](uint8_t*) {}, &b);

    case ShmAlgo::kAllReduce: {
      const bool oneshot = op.count * es <= params_.oneshot_bytes;
      // Portions of the reduce-scatter: multiples of 64 bytes.
      const size_t align = std::max<size_t>(1, 64 / es);
      for (size_t off = 0; first || off < op.count; off += slot_elems) {
        const size_t c = std::min(slot_elems, op.count - off);
        RETURN_IF_ERROR(step([&](uint8_t* s) { std::memcpy(s, in + off * es, c * es); }, &b));
        if (c == 0) break;
        uint8_t* dst = out + off * es;
        if (oneshot) {
          reduce_all(dst, b, 0, c);
          continue;
        }
        const size_t block = RoundUp((c + n - 1) / n, align);
        const size_t lo = std::min(r * block, c), hi = std::min(lo + block, c);
        if (hi > lo) {
          uint8_t* acc = Slot(r, b) + lo * es;
          for (int p = 0; p < n; ++p) {
            if (p != r) ReduceElements(op.dtype, op.reduce, acc, acc, Slot(p, b) + lo * es, hi - lo);
          }
          if (avg) ScaleDown(op.dtype, acc, hi - lo, n);
        }
        RETURN_IF_ERROR(Sync(op, hooks));
        for (int p = 0; p < n; ++p) {
          const size_t plo = std::min(p * block, c), phi = std::min(plo + block, c);
          if (phi > plo) std::memcpy(dst + plo * es, Slot(p, b) + plo * es, (phi - plo) * es);
        }
      }
      return absl::OkStatus();
    }

    case ShmAlgo::kReduce:
      for (size_t off = 0; first || off < op.count; off += slot_elems) {
        const size_t c = std::min(slot_elems, op.count - off);
        RETURN_IF_ERROR(step([&](uint8_t* s) { std::memcpy(s, in + off * es, c * es); }, &b));
        if (c == 0) break;
        if (r == op.root) reduce_all(out + off * es, b, 0, c);
      }
      return absl::OkStatus();

    case ShmAlgo::kBroadcast:
      for (size_t off = 0; first || off < op.count; off += slot_elems) {
        const size_t c = std::min(slot_elems, op.count - off);
        RETURN_IF_ERROR(step(
            [&](uint8_t* s) {
              if (r == op.root) std::memcpy(s, in + off * es, c * es);
            },
            &b));
        if (c == 0) break;
        if (r != op.root) std::memcpy(out + off * es, Slot(op.root, b), c * es);
      }
      return absl::OkStatus();

    case ShmAlgo::kAllGather:
      for (size_t off = 0; first || off < op.count; off += slot_elems) {
        const size_t c = std::min(slot_elems, op.count - off);
        RETURN_IF_ERROR(step([&](uint8_t* s) { std::memcpy(s, in + off * es, c * es); }, &b));
        if (c == 0) break;
        for (int p = 0; p < n; ++p) {
          std::memcpy(out + (p * op.count + off) * es, Slot(p, b), c * es);
        }
      }
      return absl::OkStatus();

    case ShmAlgo::kReduceScatter:
    case ShmAlgo::kAllToAll: {
      // Each chunk carries c elements of every one of the n blocks.
      const size_t chunk = std::max<size_t>(1, slot_elems / n);
      for (size_t off = 0; first || off < op.count; off += chunk) {
        const size_t c = std::min(chunk, op.count - off);
        RETURN_IF_ERROR(step(
            [&](uint8_t* s) {
              for (int p = 0; p < n; ++p) {
                std::memcpy(s + p * c * es, in + (p * op.count + off) * es, c * es);
              }
            },
            &b));
        if (c == 0) break;
        if (op.algo == ShmAlgo::kReduceScatter) {
          reduce_all(out + off * es, b, r * c * es, c);
        } else {
          for (int q = 0; q < n; ++q) {
            std::memcpy(out + (q * op.count + off) * es, Slot(q, b) + r * c * es, c * es);
          }
        }
      }
      return absl::OkStatus();
    }
  }
  return absl::InternalError("shm engine: unknown algorithm");
}

}  // namespace trident
