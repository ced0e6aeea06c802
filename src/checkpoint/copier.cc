#include <pthread.h>

#include <algorithm>
#include <csignal>
#include <cstring>

#include "absl/hash/hash.h"
#include "checkpoint/internal.h"
#include "common/logging.h"
#include "common/params.h"

namespace trident::ckpt {

void MaybeCrashAt(absl::string_view stage) {
  if (ParamString("TRIDENT_CKPT_CRASH_AT") != stage) return;
  TLOG(warn, "TRIDENT_CKPT_CRASH_AT={}: killing this process with SIGKILL", stage);
  std::raise(SIGKILL);
}

uint64_t HostId(absl::string_view host_name) {
  // FNV-1a: the same on every rank and every build (absl::Hash is seeded per process).
  uint64_t h = 1469598103934665603ull;
  for (char c : host_name) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

int BuddyShift(absl::Span<const uint64_t> host_ids) {
  const int n = static_cast<int>(host_ids.size());
  if (n <= 1) return 0;
  for (int s = 1; s < n; ++s) {
    bool all_remote = true;
    for (int r = 0; r < n && all_remote; ++r) {
      all_remote = host_ids[(r + s) % n] != host_ids[r];
    }
    if (all_remote) return s;
  }
  return 1;
}

// --- ParallelCopier ------------------------------------------------------------------------

namespace {
// Below this a copy is not worth waking threads for.
constexpr size_t kParallelMinBytes = 4 << 20;
}  // namespace

ParallelCopier::ParallelCopier(int threads) {
  for (int i = 1; i < std::max(1, threads); ++i) {
    workers_.emplace_back([this, i] {
      pthread_setname_np(pthread_self(), "trident-ckpt-cp");
      WorkerLoop(i);
    });
  }
}

ParallelCopier::~ParallelCopier() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ParallelCopier::CopyPart(absl::Span<const Op> ops, size_t begin, size_t end) {
  size_t pos = 0;
  for (const Op& op : ops) {
    const size_t lo = std::max(pos, begin);
    const size_t hi = std::min(pos + op.bytes, end);
    if (lo < hi) std::memcpy(op.dst + (lo - pos), op.src + (lo - pos), hi - lo);
    pos += op.bytes;
    if (pos >= end) break;
  }
}

size_t ParallelCopier::PartBound(size_t total, int part) const {
  const size_t parts = static_cast<size_t>(threads());
  if (static_cast<size_t>(part) >= parts) return total;
  // Boundaries on 4 KiB so that two threads never write the same page.
  return std::min(total, (total / parts * static_cast<size_t>(part)) & ~size_t{4095});
}

void ParallelCopier::WorkerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    absl::Span<const Op> ops;
    size_t total = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ops = ops_;
      total = total_;
    }
    CopyPart(ops, PartBound(total, index), PartBound(total, index + 1));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

void ParallelCopier::Copy(absl::Span<const Op> ops) {
  size_t total = 0;
  for (const Op& op : ops) total += op.bytes;
  if (workers_.empty() || total < kParallelMinBytes) {
    for (const Op& op : ops) std::memcpy(op.dst, op.src, op.bytes);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ops_ = ops;
    total_ = total;
    pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  cv_.notify_all();
  CopyPart(ops, 0, PartBound(total, 1));
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace trident::ckpt
