// The asynchronous checkpoint engine: snapshot into staging memory on the caller's thread,
// then on the persist thread: begin (rank 0 makes the tmp directory), write + CRC + fsync of
// this rank's shard, the vote (every rank's report gathered), the commit on rank 0 (manifest,
// rename, `latest`), the result broadcast, and the peer-replica exchange.
//
// Staging is one arena. Its stream holds, first, the bytes this rank writes, packed exactly as
// the shard file's data (so they go to disk in large aligned writes, O_DIRECT where allowed),
// then, for peer replicas, the parts of replicated tensors that other replicas write. A state
// larger than the memory budget streams: the arena is a ring of four windows that the caller
// fills while the persist thread empties it.
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "checkpoint/internal.h"
#include "common/check.h"
#include "common/completion.h"
#include "common/cuda.h"
#include "common/host_memory.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace trident {
namespace {

using ckpt::Box;
using json = nlohmann::json;

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kChunkBytes = size_t{64} << 20;  // one write of the persist thread
constexpr size_t kMinBudget = size_t{16} << 20;
constexpr size_t kMessageBytes = 4096;             // begin and result broadcasts
constexpr uint64_t kAbandoned = ~uint64_t{0};

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }
double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

class SaveHandle : public CheckpointSave {
 public:
  explicit SaveHandle(int64_t step) : step_(step) { stats_.step = step; }

  int64_t step() const override { return step_; }

  absl::Status Wait(absl::Time deadline) override {
    std::optional<absl::Status> s = done_.WaitUntil(deadline);
    if (!s.has_value()) {
      return absl::DeadlineExceededError(
          absl::StrCat("the save of step ", step_, " is still persisting"));
    }
    return *s;
  }

  bool IsCompleted() const override { return done_.done(); }

  absl::Status status() const override {
    return done_.status().value_or(
        absl::UnavailableError(absl::StrCat("step ", step_, " still persisting")));
  }

  SaveStats stats() const override {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

  void SetSnapshot(double seconds, int64_t staged, int64_t written, bool streamed,
                   int64_t staging) {
    absl::MutexLock lock(&mu_);
    stats_.staging_bytes = staging;
    stats_.snapshot_seconds = seconds;
    stats_.staged_bytes = staged;
    stats_.written_bytes = written;
    stats_.streamed = streamed;
  }

  void Finish(absl::Status status, double persist_seconds, absl::Status replica_status) {
    {
      absl::MutexLock lock(&mu_);
      stats_.persist_seconds = persist_seconds;
      stats_.replica_status = std::move(replica_status);
    }
    done_.Complete(std::move(status));  // after the stats: a waiter reads them next
  }

 private:
  const int64_t step_;
  Completion done_;
  mutable absl::Mutex mu_;
  SaveStats stats_ ABSL_GUARDED_BY(mu_);
};

// A box of one tensor at `stream_offset` of the staging stream.
struct Piece {
  Box box;
  uint64_t stream_offset = 0;
  uint64_t bytes = 0;
  const char* src = nullptr;  // the caller's memory; valid during Save only
  int device = -1;            // CUDA device of src; -1: host memory
};

struct StagedTensor {
  std::string name;
  DType dtype = DType::kF32;
  Tensor::Shape global_shape;
  int replica_count = 1;
  bool has_written = false;
  Piece written;              // in this rank's shard file
  std::vector<Piece> others;  // staged for the peer replica only
  uint32_t crc = 0;           // of `written`, computed by the persist thread
};

struct Job {
  int64_t step = 0;
  int64_t seq = 0;
  std::vector<StagedTensor> tensors;
  std::string metadata;
  int64_t replica_set = -1;  // CheckpointState::replica_set/replica_digest
  uint64_t replica_digest = 0;
  uint64_t written_bytes = 0;  // the shard's data
  uint64_t stream_bytes = 0;   // what is staged
  bool streamed = false;
  bool stage_others = false;   // the stream holds the whole state (peer replica)
  uint64_t ring = 0;           // streamed: the ring's size; 0: the stream is the arena
  uint64_t window = 0;
  bool cuda = false;           // some tensors are in GPU memory
  void* cuda_stream = nullptr;
  std::shared_ptr<SaveHandle> handle;
  absl::Time snapshot_end;
  // Progress, under Engine::mu_.
  uint64_t copied = 0;
  uint64_t released = 0;
  bool snapshot_done = false;  // Save has returned; the stream is complete (or abandoned)
  absl::Status snapshot_status;  // set with snapshot_done: a failed copy from a GPU
};

class Engine : public CheckpointEngine {
 public:
  Engine(CheckpointOptions options, std::shared_ptr<FileSystem> fs, size_t budget, int threads,
         OpOptions op_options, std::unique_ptr<Communicator> control, int buddy, int source)
      : options_(std::move(options)),
        comm_(options_.comm),
        control_(std::move(control)),
        fs_(std::move(fs)),
        rank_(comm_->rank()),
        size_(comm_->size()),
        budget_(budget),
        op_options_(op_options),
        buddy_(buddy),
        source_(source),
        copier_(threads) {
    if (options_.reserve_bytes > 0) {
      arena_size_ = std::min(RoundUp(options_.reserve_bytes, kHugePage),
                             budget_ / kHugePage * kHugePage);
      arena_ = AllocateHostMemory(arena_size_);
      std::memset(arena_.get(), 0, arena_size_);
    }
    persist_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "trident-ckpt");
      PersistLoop();
    });
  }

  ~Engine() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cv_.SignalAll();
    }
    persist_.join();
    if (arena_pinned_) cuda::UnregisterHost(arena_.get());
  }

  absl::StatusOr<std::shared_ptr<CheckpointSave>> Save(int64_t step,
                                                       const CheckpointState& state) override;

  std::shared_ptr<CheckpointSave> LastSave() const override {
    absl::MutexLock lock(&mu_);
    return last_;
  }
  int buddy_rank() const override { return buddy_; }
  int replica_source_rank() const override { return source_; }
  std::shared_ptr<const PeerReplica> HeldReplica() const override {
    absl::MutexLock lock(&mu_);
    return held_;
  }

 private:
  absl::StatusOr<std::shared_ptr<Job>> Plan(int64_t step, const CheckpointState& state);
  void EnsureArena(Job& job);
  absl::Status CopySnapshot(Job& job);
  struct DeviceCopy {
    char* dst;
    const char* src;
    size_t bytes;
    int device;
  };
  // Host copies with the copier's threads; device copies on the engine's stream of each
  // device, after the work queued on `caller_stream`, waited for before returning.
  absl::Status CopyAll(absl::Span<const ckpt::ParallelCopier::Op> host,
                       absl::Span<const DeviceCopy> device, void* caller_stream);
  char* ArenaAt(const Job& job, uint64_t pos) const {
    return arena_.get() + (job.ring ? pos % job.ring : pos);
  }

  void PersistLoop();
  void RunJob(Job& job);
  absl::Status Begin(Job& job, std::string* tmp_dir, std::string* nonce, bool* comm_failed);
  absl::Status WriteShard(Job& job, const std::string& tmp_dir, ckpt::RankReport* report);
  void Abandon(Job& job);
  absl::StatusOr<std::vector<ckpt::RankReport>> Vote(const ckpt::RankReport& mine);
  absl::Status Commit(Job& job, const std::string& tmp_dir, const std::string& nonce,
                      const std::vector<ckpt::RankReport>& reports);
  void ApplyRetention();
  absl::Status ExchangeReplicas(Job& job, const std::vector<ckpt::RankReport>& reports);
  absl::Status BroadcastMessage(std::string* message);  // rank 0's text to all ranks
  // A collective of a save in flight that the communicator refused because it had just been
  // aborted (a rank died: the runtime aborts it) fails that save like one aborted under it:
  // kAborted, not the kFailedPrecondition of a save begun after the abort.
  absl::Status InFlight(absl::Status s) const {
    if (absl::IsFailedPrecondition(s) && !comm_->AbortStatus().ok()) {
      return absl::AbortedError(s.message());
    }
    return s;
  }
  std::string Dir(absl::string_view name) const { return JoinPath(options_.dir, name); }

  const CheckpointOptions options_;
  const std::shared_ptr<Communicator> comm_;
  const std::unique_ptr<Communicator> control_;  // BusyPolicy::kSkip only
  const std::shared_ptr<FileSystem> fs_;
  const int rank_;
  const int size_;
  const size_t budget_;
  const OpOptions op_options_;
  const int buddy_;
  const int source_;
  ckpt::ParallelCopier copier_;
  int64_t seq_ = 0;  // Save's thread only

  // The arena: resized by Save only while no save is in flight; page-locked once a state
  // with CUDA tensors uses it.
  HostMemory arena_;
  size_t arena_size_ = 0;
  bool arena_pinned_ = false;
  std::map<int, std::unique_ptr<cuda::OwnedStream>> streams_;  // per device; Save's thread

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::shared_ptr<Job> pending_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<SaveHandle> last_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<HeldPeerReplica> held_ ABSL_GUARDED_BY(mu_);
  std::thread persist_;
};

// --- Save ----------------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<Job>> Engine::Plan(int64_t step, const CheckpointState& state) {
  if (step < 0) return absl::InvalidArgumentError(absl::StrCat("negative step ", step));
  if (state.metadata.size() > kMaxCheckpointMetadataBytes) {
    return absl::InvalidArgumentError(absl::StrCat("metadata of ", state.metadata.size(),
                                                   " bytes; at most ",
                                                   kMaxCheckpointMetadataBytes));
  }
  auto job = std::make_shared<Job>();
  job->step = step;
  job->metadata = state.metadata;
  job->replica_set = state.replica_set;
  job->replica_digest = state.replica_digest;
  job->cuda_stream = state.cuda_stream;
  // Per tensor, no allocation beyond what the job keeps: a state_dict has hundreds to
  // thousands of tensors, and this runs inside the caller's stall.
  absl::flat_hash_set<absl::string_view> names;
  names.reserve(state.tensors.size());
  job->tensors.reserve(state.tensors.size());
  for (const NamedTensor& nt : state.tensors) {
    // Only on an error: the message's prefix naming the tensor.
    const auto where = [&nt] { return absl::StrCat("tensor '", nt.name, "'"); };
    if (nt.name.empty() || nt.name.rfind("__", 0) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(), ": names must be non-empty and not start with \"__\""));
    }
    if (!names.insert(nt.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(where(), " appears twice in the state"));
    }
    const Tensor& t = nt.tensor;
    if (!t.device().is_cpu()) {
      RETURN_IF_ERROR(cuda::CheckCudaTensor(t, "checkpoint Save", where()));
    }
    const int device = t.device().is_cpu() ? -1 : t.device().index;
    if (device >= 0) job->cuda = true;
    if (t.data() == nullptr && t.numel() > 0) {
      return absl::InvalidArgumentError(absl::StrCat(where(), ": null data"));
    }
    for (int64_t d : t.shape()) {
      if (d < 0) return absl::InvalidArgumentError(absl::StrCat(where(), ": negative dimension"));
    }
    const TensorPlacement& p = nt.placement;
    StagedTensor st;
    st.name = nt.name;
    st.dtype = t.dtype();
    st.global_shape = p.global_shape.empty() ? t.shape() : p.global_shape;
    Box local{p.offset, t.shape()};
    if (local.offset.empty()) local.offset.assign(local.shape.size(), 0);
    const Box global{Tensor::Shape(st.global_shape.size(), 0), st.global_shape};
    if (local.offset.size() != local.shape.size() ||
        st.global_shape.size() != local.shape.size() || !ckpt::Contains(global, local)) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), ": the piece at offset ", ckpt::ShapeString(local.offset), " of shape ",
          ckpt::ShapeString(local.shape), " is not inside the global shape ",
          ckpt::ShapeString(st.global_shape)));
    }
    if (p.replica_count < 1 || p.replica_index < 0 || p.replica_index >= p.replica_count) {
      return absl::InvalidArgumentError(absl::StrCat(where(), ": replica_index ", p.replica_index,
                                                     " of replica_count ", p.replica_count));
    }
    st.replica_count = p.replica_count;
    const char* data = static_cast<const char*>(t.data());
    const uint64_t bytes = t.nbytes();
    const ckpt::RowRange rows = ckpt::ReplicaRows(local.shape, p.replica_index, p.replica_count);
    if (local.shape.empty() || p.replica_count == 1) {
      // A scalar or an unreplicated piece: all or nothing.
      st.has_written = rows.end > rows.begin || (p.replica_index == 0);
      if (st.has_written) st.written = Piece{local, 0, bytes, data, device};
      else st.others.push_back(Piece{local, 0, bytes, data, device});
    } else {
      const int64_t row_count = local.shape[0];
      const uint64_t row_bytes = row_count > 0 ? bytes / static_cast<uint64_t>(row_count) : 0;
      auto rows_piece = [&](int64_t begin, int64_t end) {
        Box b = local;
        b.offset[0] += begin;
        b.shape[0] = end - begin;
        return Piece{b, 0, row_bytes * static_cast<uint64_t>(end - begin),
                     data + row_bytes * static_cast<uint64_t>(begin), device};
      };
      st.has_written = rows.end > rows.begin || (p.replica_index == 0 && bytes == 0);
      if (st.has_written) st.written = rows_piece(rows.begin, rows.end);
      if (rows.begin > 0) st.others.push_back(rows_piece(0, rows.begin));
      if (rows.end < row_count) st.others.push_back(rows_piece(rows.end, row_count));
    }
    job->tensors.push_back(std::move(st));
  }
  // The stream: first what this rank writes, packed as in the file.
  uint64_t pos = 0;
  uint64_t other_bytes = 0;
  for (StagedTensor& st : job->tensors) {
    if (st.has_written) {
      st.written.stream_offset = pos;
      pos += st.written.bytes;
    }
    for (const Piece& o : st.others) other_bytes += o.bytes;
  }
  job->written_bytes = pos;
  // The arena is whole huge pages; it never exceeds the budget.
  const uint64_t head = RoundUp(pos, kDirectIoAlignment);
  job->stage_others = buddy_ >= 0 && RoundUp(head + other_bytes, kHugePage) <= budget_;
  job->stream_bytes = job->stage_others ? head + other_bytes : pos;
  job->streamed = RoundUp(job->stream_bytes, kHugePage) > budget_;
  if (job->stage_others) {
    pos = head;
    for (StagedTensor& st : job->tensors) {
      for (Piece& o : st.others) {
        o.stream_offset = pos;
        pos += o.bytes;
      }
    }
  }
  return job;
}

void Engine::EnsureArena(Job& job) {
  if (!job.streamed) {
    const size_t need = std::max(kHugePage, RoundUp(job.stream_bytes, kHugePage));
    if (arena_size_ < need) {
      if (arena_pinned_) cuda::UnregisterHost(arena_.get());
      arena_pinned_ = false;
      arena_.reset();
      arena_ = AllocateHostMemory(need);
      arena_size_ = need;
    }
    return;
  }
  const size_t window = std::max(kHugePage, (budget_ / 4) / kHugePage * kHugePage);
  if (arena_size_ < 4 * window) {
    if (arena_pinned_) cuda::UnregisterHost(arena_.get());
    arena_pinned_ = false;
    arena_.reset();
    arena_ = AllocateHostMemory(4 * window);
    arena_size_ = 4 * window;
  }
  job.window = std::max(kHugePage, (arena_size_ / 4) / kHugePage * kHugePage);
  job.ring = 4 * job.window;
}

absl::Status Engine::CopyAll(absl::Span<const ckpt::ParallelCopier::Op> host,
                             absl::Span<const DeviceCopy> device, void* caller_stream) {
  absl::Status status;
  std::vector<std::pair<int, std::unique_ptr<cuda::Event>>> fences;
  std::map<int, std::vector<const DeviceCopy*>> by_device;
  for (const DeviceCopy& c : device) by_device[c.device].push_back(&c);
  // The device copies go first, so that they run while the host copies do.
  for (const auto& [dev, copies] : by_device) {
    cuda::DeviceGuard guard(dev);
    status = guard.status();
    if (!status.ok()) break;
    std::unique_ptr<cuda::OwnedStream>& stream = streams_[dev];
    if (stream == nullptr) {
      auto created = cuda::OwnedStream::Create(dev, /*non_blocking=*/true);
      if (!created.ok()) {
        status = created.status();
        break;
      }
      stream = std::move(created).value();
    }
    auto ready = cuda::Event::Record(caller_stream, dev);
    status = ready.ok() ? (*ready)->BlockStream(stream->get()) : ready.status();
    for (size_t i = 0; status.ok() && i < copies.size(); ++i) {
      status = cuda::CopyAsync(copies[i]->dst, copies[i]->src, copies[i]->bytes, stream->get());
    }
    // Fence whatever was queued, even after an error: it writes into the arena.
    auto fence = cuda::Event::Record(stream->get(), dev);
    if (fence.ok()) {
      fences.push_back({dev, std::move(fence).value()});
    } else if (status.ok()) {
      status = fence.status();
    }
    if (!status.ok()) break;
  }
  copier_.Copy(host);
  for (const auto& [dev, fence] : fences) {
    absl::Status s = cuda::WaitEvent(*fence, absl::Now() + op_options_.timeout,
                                     absl::StrCat("copying the snapshot from cuda:", dev));
    if (status.ok()) status = s;
  }
  return Annotate(status, "taking the checkpoint snapshot");
}

absl::Status Engine::CopySnapshot(Job& job) {
  std::vector<ckpt::ParallelCopier::Op> ops;
  std::vector<DeviceCopy> device_ops;
  auto add = [&](char* dst, const Piece& p, uint64_t offset, uint64_t n) {
    if (n == 0) return;
    if (p.device >= 0) {
      device_ops.push_back({dst, p.src + offset, n, p.device});
    } else {
      ops.push_back({dst, p.src + offset, n});
    }
  };
  if (!job.streamed) {
    for (const StagedTensor& st : job.tensors) {
      if (st.has_written) add(ArenaAt(job, st.written.stream_offset), st.written, 0, st.written.bytes);
      if (job.stage_others) {
        for (const Piece& o : st.others) add(ArenaAt(job, o.stream_offset), o, 0, o.bytes);
      }
    }
    RETURN_IF_ERROR(CopyAll(ops, device_ops, job.cuda_stream));
    absl::MutexLock lock(&mu_);
    job.copied = job.stream_bytes;
    cv_.SignalAll();
    return absl::OkStatus();
  }
  // Streaming: one window at a time, each once the persist thread has written what it held.
  size_t next = 0;  // first tensor that may overlap the window
  for (uint64_t begin = 0; begin < job.stream_bytes; begin += job.window) {
    const uint64_t end = std::min<uint64_t>(begin + job.window, job.stream_bytes);
    {
      absl::MutexLock lock(&mu_);
      auto room = [&] {
        return job.released == kAbandoned || job.released + job.ring >= begin + job.window;
      };
      mu_.Await(absl::Condition(&room));
      if (job.released == kAbandoned) return absl::OkStatus();  // the persist failed; the handle says why
    }
    ops.clear();
    device_ops.clear();
    for (size_t i = next; i < job.tensors.size(); ++i) {
      const StagedTensor& st = job.tensors[i];
      if (!st.has_written) continue;
      const uint64_t lo = std::max(begin, st.written.stream_offset);
      const uint64_t hi = std::min(end, st.written.stream_offset + st.written.bytes);
      if (st.written.stream_offset >= end) break;
      if (lo < hi) add(ArenaAt(job, lo), st.written, lo - st.written.stream_offset, hi - lo);
      if (st.written.stream_offset + st.written.bytes <= end) next = i + 1;
    }
    RETURN_IF_ERROR(CopyAll(ops, device_ops, job.cuda_stream));
    absl::MutexLock lock(&mu_);
    job.copied = end;
    cv_.SignalAll();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<CheckpointSave>> Engine::Save(int64_t step,
                                                             const CheckpointState& state) {
  const absl::Time start = absl::Now();
  if (absl::Status s = comm_->AbortStatus(); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint engine's communicator was aborted (", s.message(),
        "); create a new engine with a new communicator"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Job> job, Plan(step, state));
  std::shared_ptr<SaveHandle> previous;
  {
    absl::MutexLock lock(&mu_);
    previous = last_;
  }
  if (options_.busy_policy == BusyPolicy::kSkip) {
    int32_t busy = previous && !previous->IsCompleted() ? rank_ + 1 : 0;
    Tensor t = Tensor::Of(&busy, 1);
    RETURN_IF_ERROR(Annotate(control_->AllReduce(t, t, ReduceOp::kMax, op_options_)->Wait(),
                             "agreeing whether a save is still persisting"));
    if (busy > 0) {
      return absl::UnavailableError(absl::StrCat("step ", step,
                                                 " dropped on every rank: rank ", busy - 1,
                                                 " is still persisting its previous save"));
    }
  }
  if (previous) (void)previous->Wait(absl::InfiniteFuture());  // kSkip: already done on every rank
  job->seq = seq_++;
  job->handle = std::make_shared<SaveHandle>(step);
  EnsureArena(*job);
  if (job->cuda && !arena_pinned_) {
    // Page-locked staging: the copies from the GPU are then asynchronous and at full speed.
    absl::Status pinned = cuda::RegisterHost(arena_.get(), arena_size_);
    if (pinned.ok()) {
      arena_pinned_ = true;
    } else {
      TLOG(warn, "checkpoint: cannot page-lock the staging ({}); copies from the GPU will "
                   "be slower", pinned);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    last_ = job->handle;
    pending_ = job;
    cv_.SignalAll();
  }
  const absl::Status copied = CopySnapshot(*job);
  job->snapshot_end = absl::Now();
  job->handle->SetSnapshot(Seconds(job->snapshot_end - start),
                           static_cast<int64_t>(job->stream_bytes),
                           static_cast<int64_t>(job->written_bytes), job->streamed,
                           static_cast<int64_t>(arena_size_));
  {
    absl::MutexLock lock(&mu_);
    job->snapshot_status = copied;
    job->snapshot_done = true;
    cv_.SignalAll();
  }
  // The save goes on to fail on every rank (this rank votes with the error).
  if (!copied.ok()) return Annotate(copied, absl::StrCat("checkpoint step ", step));
  return std::static_pointer_cast<CheckpointSave>(job->handle);
}

// --- Persist -------------------------------------------------------------------------------

void Engine::PersistLoop() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || pending_ != nullptr;
      };
      mu_.Await(absl::Condition(&ready));
      if (pending_ == nullptr) return;  // stopping, nothing left
      job = std::move(pending_);
    }
    RunJob(*job);
  }
}

void Engine::Abandon(Job& job) {
  absl::MutexLock lock(&mu_);
  job.released = kAbandoned;
  cv_.SignalAll();
}

absl::Status Engine::BroadcastMessage(std::string* message) {
  std::string buffer(kMessageBytes, '\0');
  if (rank_ == 0) {
    TRIDENT_CHECK(message->size() < kMessageBytes) << "message too long: " << message->size();
    std::memcpy(buffer.data(), message->data(), message->size());
  }
  Tensor t(buffer.data(), DType::kU8, {static_cast<int64_t>(kMessageBytes)});
  RETURN_IF_ERROR(comm_->Broadcast(t, 0, op_options_)->Wait());
  if (rank_ != 0) message->assign(buffer.c_str());
  return absl::OkStatus();
}

std::string StatusMessageJson(const absl::Status& s, json extra = json::object()) {
  std::string message(s.message());
  if (message.size() > 3000) message = message.substr(0, 3000) + "...";
  extra["code"] = static_cast<int>(s.code());
  extra["message"] = message;
  return extra.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::Status StatusFromJson(const json& j) {
  return absl::Status(static_cast<absl::StatusCode>(j.at("code").get<int>()),
                      j.at("message").get<std::string>());
}

absl::Status Engine::Begin(Job& job, std::string* tmp_dir, std::string* nonce,
                           bool* comm_failed) {
  std::string message;
  if (rank_ == 0) {
    absl::BitGen gen;
    *nonce = absl::StrFormat("%016x", absl::Uniform<uint64_t>(gen));
    absl::Status s = fs_->CreateDir(options_.dir);
    // Half-written directories of earlier saves (crashed or failed) go first.
    if (s.ok()) {
      auto names = fs_->ListDir(options_.dir);
      s = names.status();
      if (s.ok()) {
        for (const std::string& name : *names) {
          const size_t old_at = name.find(".old-");
          if (old_at != std::string::npos && ckpt::IsStaleDirName(name) &&
              !fs_->FileExists(Dir(name.substr(0, old_at)))) {
            // A checkpoint moved aside to be replaced, and the replacement never came: put it
            // back.
            absl::Status r = fs_->Rename(Dir(name), Dir(name.substr(0, old_at)));
            if (!r.ok()) TLOG(warn, "checkpoint: cannot restore {}: {}", Dir(name), r);
            continue;
          }
          if (ckpt::IsStaleDirName(name) || name == std::string(ckpt::kLatestName) + ".tmp") {
            absl::Status r = fs_->RemoveAll(Dir(name));
            if (!r.ok()) TLOG(warn, "checkpoint: cannot clean {}: {}", Dir(name), r);
          }
        }
      }
    }
    if (s.ok()) s = fs_->CreateDir(Dir(ckpt::TmpDirName(job.step, *nonce)));
    message = StatusMessageJson(
        Annotate(s, absl::StrCat("starting the save of step ", job.step)),
        {{"step", job.step}, {"seq", job.seq}, {"nonce", *nonce}});
  }
  absl::Status comm = InFlight(BroadcastMessage(&message));
  if (!comm.ok()) {
    *comm_failed = true;
    return Annotate(comm, absl::StrCat("checkpoint step ", job.step, ": the begin broadcast"));
  }
  json j = json::parse(message, nullptr, false);
  TRIDENT_CHECK(!j.is_discarded()) << "bad begin message: " << message;
  absl::Status s = StatusFromJson(j);
  if (!s.ok()) return s;
  *nonce = j.at("nonce").get<std::string>();
  const int64_t step0 = j.at("step").get<int64_t>();
  const int64_t seq0 = j.at("seq").get<int64_t>();
  if (step0 != job.step || seq0 != job.seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rank ", rank_, " saves step ", job.step, " (its save #", job.seq, ") but rank 0 saves step ",
        step0, " (#", seq0, "): every rank must call Save for the same steps"));
  }
  *tmp_dir = Dir(ckpt::TmpDirName(job.step, *nonce));
  return absl::OkStatus();
}

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};

absl::Status Engine::WriteShard(Job& job, const std::string& tmp_dir, ckpt::RankReport* report) {
  std::vector<ckpt::SafetensorsEntry> entries;
  std::map<std::string, Tensor::Shape> offsets;  // DCP_SHARDING_INFO, for torch's reader
  for (const StagedTensor& st : job.tensors) {
    if (!st.has_written) continue;
    entries.push_back({st.name, st.dtype, st.written.box.shape, st.written.stream_offset,
                       st.written.stream_offset + st.written.bytes});
    offsets[st.name] = st.written.box.offset;
  }
  if (entries.empty()) {
    Abandon(job);
    return absl::OkStatus();
  }
  const std::string name = ckpt::ShardFileName(rank_);
  const std::string path = JoinPath(tmp_dir, name);
  const std::string prefix =
      ckpt::BuildSafetensorsPrefix(entries, ckpt::ShardMetadata(job.step, rank_, offsets));
  auto fail = [&](absl::Status s) {  // the file system's message names the call and the path
    Abandon(job);
    return s;
  };
  auto file_or = fs_->NewWritableFile(path, options_.direct_io);
  if (!file_or.ok()) return fail(file_or.status());
  WritableFile& file = **file_or;
  {
    std::unique_ptr<char, AlignedFree> header(
        static_cast<char*>(std::aligned_alloc(kDirectIoAlignment, prefix.size())));
    TRIDENT_CHECK(header != nullptr) << "out of memory";
    std::memcpy(header.get(), prefix.data(), prefix.size());
    if (absl::Status s = file.Write(0, header.get(), prefix.size()); !s.ok()) return fail(s);
  }
  // Chunk k is written on a helper thread while this one checksums chunk k+1: the disk and
  // the CRC overlap.
  size_t t = 0;  // first tensor not yet fully checksummed
  std::future<absl::Status> writing;
  uint64_t writing_end = 0;
  bool first = true;
  auto finish_write = [&]() -> absl::Status {
    if (!writing.valid()) return absl::OkStatus();
    RETURN_IF_ERROR(writing.get());
    if (first) ckpt::MaybeCrashAt(ckpt::kCrashDuringShardWrite);
    first = false;
    absl::MutexLock lock(&mu_);
    job.released = writing_end;
    cv_.SignalAll();
    return absl::OkStatus();
  };
  for (uint64_t pos = 0; pos < job.written_bytes;) {
    uint64_t end = std::min<uint64_t>(job.written_bytes, pos + kChunkBytes);
    if (job.ring) end = std::min<uint64_t>(end, (pos / job.window + 1) * job.window);
    absl::Status snapshot;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&] {
        return job.copied >= end || (job.snapshot_done && !job.snapshot_status.ok());
      };
      mu_.Await(absl::Condition(&ready));
      if (job.copied < end) snapshot = job.snapshot_status;
    }
    if (!snapshot.ok()) {
      (void)finish_write();
      return fail(snapshot);
    }
    for (; t < job.tensors.size(); ++t) {
      StagedTensor& st = job.tensors[t];
      if (!st.has_written) continue;
      const uint64_t lo = std::max(pos, st.written.stream_offset);
      const uint64_t hi = std::min(end, st.written.stream_offset + st.written.bytes);
      if (lo < hi) st.crc = ckpt::Crc32c(ArenaAt(job, lo), hi - lo, st.crc);
      if (st.written.stream_offset + st.written.bytes > end) break;
    }
    if (absl::Status s = finish_write(); !s.ok()) return fail(s);
    const uint64_t n = file.direct() ? RoundUp(end - pos, kDirectIoAlignment) : end - pos;
    const uint64_t offset = prefix.size() + pos;
    const char* data = ArenaAt(job, pos);
    writing = std::async(std::launch::async,
                         [&file, offset, data, n] { return file.Write(offset, data, n); });
    writing_end = end;
    pos = end;
  }
  if (absl::Status s = finish_write(); !s.ok()) return fail(s);
  const uint64_t file_bytes = prefix.size() + job.written_bytes;
  if (file.direct() && job.written_bytes % kDirectIoAlignment != 0) {
    if (absl::Status s = file.Truncate(file_bytes); !s.ok()) return fail(s);
  }
  if (absl::Status s = file.Sync(); !s.ok()) return fail(s);
  if (absl::Status s = file.Close(); !s.ok()) return fail(s);
  Abandon(job);  // everything is released
  report->file = name;
  report->file_bytes = file_bytes;
  for (const StagedTensor& st : job.tensors) {
    if (!st.has_written) continue;
    TensorInfo info;
    info.dtype = st.dtype;
    info.global_shape = st.global_shape;
    ShardInfo shard;
    shard.file = name;
    shard.rank = rank_;
    shard.byte_offset = prefix.size() + st.written.stream_offset;
    shard.byte_length = st.written.bytes;
    shard.offset = st.written.box.offset;
    shard.shape = st.written.box.shape;
    shard.crc32c = st.crc;
    shard.replica_count = st.replica_count;
    info.shards.push_back(std::move(shard));
    report->tensors[st.name] = std::move(info);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ckpt::RankReport>> Engine::Vote(const ckpt::RankReport& mine) {
  const std::string text = ckpt::RankReportToJson(mine);
  std::vector<int64_t> lengths(size_);
  int64_t my_length = static_cast<int64_t>(text.size());
  RETURN_IF_ERROR(comm_->AllGather(Tensor::Of(&my_length, 1),
                                   Tensor::Of(lengths.data(), size_), op_options_)
                      ->Wait());
  const int64_t max_length = *std::max_element(lengths.begin(), lengths.end());
  std::string in(static_cast<size_t>(max_length), '\0');
  std::memcpy(in.data(), text.data(), text.size());
  std::string out(static_cast<size_t>(max_length) * size_, '\0');
  RETURN_IF_ERROR(comm_->AllGather(Tensor(in.data(), DType::kU8, {max_length}),
                                   Tensor(out.data(), DType::kU8, {max_length * size_}),
                                   op_options_)
                      ->Wait());
  std::vector<ckpt::RankReport> reports;
  for (int r = 0; r < size_; ++r) {
    ASSIGN_OR_RETURN(ckpt::RankReport report,
                     ckpt::ParseRankReport(absl::string_view(out).substr(
                         static_cast<size_t>(max_length) * r, static_cast<size_t>(lengths[r]))));
    reports.push_back(std::move(report));
  }
  return reports;
}

absl::Status Engine::Commit(Job& job, const std::string& tmp_dir, const std::string& nonce,
                            const std::vector<ckpt::RankReport>& reports) {
  CheckpointManifest m;
  m.version = ckpt::kFormatVersion;
  m.step = job.step;
  m.epoch = options_.epoch;
  m.world_size = size_;
  m.layout = options_.layout;
  m.created_unix_ms = absl::ToUnixMillis(absl::Now());
  // The commit includes the replicas' digests, and a state whose replicas disagree never
  // commits (docs/fault-tolerance.md, "Silent data corruption").
  RETURN_IF_ERROR(ckpt::CheckReplicaDigests(reports));
  const bool digests = std::any_of(reports.begin(), reports.end(),
                                   [](const ckpt::RankReport& r) { return r.replica_set >= 0; });
  for (const ckpt::RankReport& r : reports) {
    if (!r.file.empty()) m.files.push_back({r.file, r.rank, r.file_bytes});
    m.metadata.push_back(r.metadata);
    if (digests) {
      m.replica_sets.push_back(r.replica_set);
      m.replica_digests.push_back(r.replica_digest);
    }
    for (const auto& [name, info] : r.tensors) {
      auto [it, inserted] = m.tensors.try_emplace(name, TensorInfo{info.dtype, info.global_shape, {}});
      TensorInfo& t = it->second;
      if (t.dtype != info.dtype || t.global_shape != info.global_shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", name, ": rank ", t.shards.front().rank, " saves it as ",
            DTypeName(t.dtype), " ", ckpt::ShapeString(t.global_shape), ", rank ", r.rank,
            " as ", DTypeName(info.dtype), " ", ckpt::ShapeString(info.global_shape)));
      }
      t.shards.insert(t.shards.end(), info.shards.begin(), info.shards.end());
    }
  }
  RETURN_IF_ERROR(ckpt::CheckCoverage(m));
  ckpt::MaybeCrashAt(ckpt::kCrashAfterShards);
  RETURN_IF_ERROR(WriteFileAndSync(*fs_, JoinPath(tmp_dir, ckpt::kManifestName),
                                   ckpt::ManifestToJson(m)));
  // The Hugging Face index beside the shards, committed with them (torch's DCP reader needs
  // only the shards' DCP_SHARDING_INFO; tools that look for an index find it).
  RETURN_IF_ERROR(WriteFileAndSync(*fs_, JoinPath(tmp_dir, ckpt::kIndexName),
                                   ckpt::CheckpointIndexJson(m)));
  RETURN_IF_ERROR(fs_->SyncDir(tmp_dir));
  ckpt::MaybeCrashAt(ckpt::kCrashBeforeRename);
  const std::string final_dir = Dir(ckpt::StepDirName(job.step));
  std::string old_dir;
  if (fs_->FileExists(final_dir)) {
    // The same step saved again (e.g. after a rollback). Swap the two directories atomically:
    // the old one then carries the tmp name, which a crash leaves to be cleaned. Where the
    // file system cannot swap, move the old one aside first (a crash in between leaves it as
    // *.old-*, which the next save renames back).
    absl::Status swapped = fs_->Exchange(tmp_dir, final_dir);
    if (swapped.ok()) {
      old_dir = tmp_dir;
    } else if (absl::IsUnimplemented(swapped)) {
      old_dir = Dir(ckpt::OldDirName(job.step, nonce));
      RETURN_IF_ERROR(fs_->Rename(final_dir, old_dir));
      RETURN_IF_ERROR(fs_->Rename(tmp_dir, final_dir));
    } else {
      return swapped;
    }
  } else {
    RETURN_IF_ERROR(fs_->Rename(tmp_dir, final_dir));
  }
  RETURN_IF_ERROR(fs_->SyncDir(options_.dir));
  ckpt::MaybeCrashAt(ckpt::kCrashBeforeLatest);
  const std::string latest_tmp = Dir(std::string(ckpt::kLatestName) + ".tmp");
  RETURN_IF_ERROR(
      WriteFileAndSync(*fs_, latest_tmp, absl::StrCat(ckpt::StepDirName(job.step), "\n")));
  RETURN_IF_ERROR(fs_->Rename(latest_tmp, Dir(ckpt::kLatestName)));
  RETURN_IF_ERROR(fs_->SyncDir(options_.dir));
  if (!old_dir.empty()) {
    if (absl::Status s = fs_->RemoveAll(old_dir); !s.ok()) {
      TLOG(warn, "checkpoint: cannot remove the replaced {}: {}", old_dir, s);
    }
  }
  return absl::OkStatus();
}

void Engine::ApplyRetention() {
  if (options_.keep_last <= 0) return;
  ReadOptions read;
  read.file_system = fs_;
  auto list = ListCheckpoints(options_.dir, read);
  if (!list.ok()) {
    TLOG(warn, "checkpoint retention: {}", list.status());
    return;
  }
  auto latest = LatestCheckpointStep(options_.dir, read);
  const int n = static_cast<int>(list->size());
  for (int i = 0; i < n; ++i) {
    const CheckpointInfo& c = (*list)[i];
    const bool keep = i >= n - options_.keep_last ||
                      (options_.keep_every > 0 && c.step % options_.keep_every == 0) ||
                      (latest.ok() && *latest == c.step);
    if (keep) continue;
    if (absl::Status s = fs_->RemoveAll(c.path); !s.ok()) {
      TLOG(warn, "checkpoint retention: cannot remove {}: {}", c.path, s);
    }
  }
}

absl::Status Engine::ExchangeReplicas(Job& job, const std::vector<ckpt::RankReport>& reports) {
  const bool send = reports[rank_].sends_replica;
  const bool recv = reports[source_].sends_replica;
  ckpt::OutgoingReplica outgoing;
  if (send) {
    ReplicaData index;
    index.owner_rank = rank_;
    index.step = job.step;
    index.epoch = options_.epoch;
    index.metadata = job.metadata;
    index.bytes = job.stream_bytes;
    for (const StagedTensor& st : job.tensors) {
      ReplicaTensor t;
      t.name = st.name;
      t.dtype = st.dtype;
      t.global_shape = st.global_shape;
      if (st.has_written) {
        t.pieces.push_back({st.written.box, st.written.stream_offset, st.written.bytes, st.crc});
      }
      for (const Piece& o : st.others) {
        t.pieces.push_back({o.box, o.stream_offset, o.bytes,
                            ckpt::Crc32c(ArenaAt(job, o.stream_offset), o.bytes)});
      }
      index.tensors.push_back(std::move(t));
    }
    outgoing = {buddy_, ckpt::ReplicaIndexJson(index), ArenaAt(job, 0), job.stream_bytes};
  }
  // Reuse the memory of the replica held so far unless the caller still holds it.
  HostMemory reuse;
  size_t reuse_bytes = 0;
  if (recv) {
    absl::MutexLock lock(&mu_);
    if (held_ && held_.use_count() == 1) {
      reuse = std::move(held_->mutable_impl().data);
      reuse_bytes = held_->bytes();
      held_.reset();
    }
  }
  auto received = ckpt::ExchangeReplicas(*comm_, send ? &outgoing : nullptr, recv, source_,
                                         std::move(reuse), reuse_bytes, op_options_);
  if (!received.ok()) return received.status();
  if (*received != nullptr) {
    auto replica = std::make_shared<HeldPeerReplica>(std::move(received).value());
    absl::MutexLock lock(&mu_);
    held_ = std::move(replica);
  }
  if (!send) {
    return absl::UnavailableError(
        "not sent: the whole state (with the parts of replicated tensors that other replicas "
        "write) did not fit the staging budget");
  }
  return absl::OkStatus();
}

void Engine::RunJob(Job& job) {
  std::string tmp_dir, nonce;
  bool comm_failed = false;
  absl::Status replica_status = absl::UnavailableError(
      buddy_ < 0 ? "not sent: peer replicas are off" : "not sent: the save was not committed");
  auto finish = [&](absl::Status s) {
    Abandon(job);
    if (!s.ok()) TLOG(warn, "checkpoint step {} failed: {}", job.step, s);
    job.handle->Finish(std::move(s), Seconds(absl::Now() - job.snapshot_end), replica_status);
  };
  absl::Status begun = Begin(job, &tmp_dir, &nonce, &comm_failed);
  if (comm_failed) return finish(begun);
  ckpt::RankReport report;
  report.rank = rank_;
  report.step = job.step;
  report.seq = job.seq;
  report.metadata = job.metadata;
  report.replica_set = job.replica_set;
  report.replica_digest = job.replica_digest;
  report.status = begun;
  if (begun.ok()) {
    report.status = WriteShard(job, tmp_dir, &report);
  } else {
    Abandon(job);
  }
  // Save may still be copying (the parts only the replica needs, or a stream the persist gave
  // up on): the staging memory is this job's until Save has returned.
  {
    absl::MutexLock lock(&mu_);
    auto done = [&] { return job.snapshot_done; };
    mu_.Await(absl::Condition(&done));
    if (report.status.ok() && !job.snapshot_status.ok()) report.status = job.snapshot_status;
  }
  report.sends_replica = report.status.ok() && job.stage_others && buddy_ >= 0;
  auto reports = Vote(report);
  if (!reports.ok()) {
    return finish(Annotate(InFlight(reports.status()), absl::StrCat("checkpoint step ", job.step,
                                                                    ": the commit vote")));
  }
  std::string message;
  if (rank_ == 0) {
    absl::Status result;
    for (const ckpt::RankReport& r : *reports) {
      if (!r.status.ok()) {
        result = Annotate(r.status, absl::StrCat("rank ", r.rank));
        break;
      }
    }
    if (result.ok()) result = Commit(job, tmp_dir, nonce, *reports);
    result = Annotate(result, absl::StrCat("checkpoint step ", job.step, " not committed"));
    message = StatusMessageJson(result);
  }
  if (absl::Status s = InFlight(BroadcastMessage(&message)); !s.ok()) {
    return finish(Annotate(s, absl::StrCat("checkpoint step ", job.step,
                                           ": the commit result broadcast")));
  }
  json j = json::parse(message, nullptr, false);
  TRIDENT_CHECK(!j.is_discarded()) << "bad result message: " << message;
  absl::Status result = StatusFromJson(j);
  if (result.ok() && buddy_ >= 0) {
    replica_status = ExchangeReplicas(job, *reports);
    if (!replica_status.ok() && !absl::IsUnavailable(replica_status)) {
      TLOG(warn, "checkpoint step {}: peer replica exchange failed: {}", job.step,
                   replica_status);
    }
  }
  const bool committed = result.ok();
  finish(std::move(result));
  // Deleting old checkpoints is not part of this save: the next Save may already copy while
  // this thread deletes (it picks up the next save afterwards).
  if (rank_ == 0 && committed) ApplyRetention();
}

absl::Status CreateDirs(FileSystem& fs, const std::string& dir) {
  for (size_t pos = dir.find('/', 1); pos != std::string::npos; pos = dir.find('/', pos + 1)) {
    if (!fs.IsDirectory(dir.substr(0, pos))) RETURN_IF_ERROR(fs.CreateDir(dir.substr(0, pos)));
  }
  return fs.CreateDir(dir);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointEngine>> CheckpointEngine::Create(
    CheckpointOptions options) {
  RETURN_IF_ERROR(Annotate(CheckParams(), "CheckpointEngine::Create"));
  if (options.dir.empty()) return absl::InvalidArgumentError("CheckpointOptions.dir is empty");
  if (options.comm == nullptr) {
    return absl::InvalidArgumentError(
        "CheckpointOptions.comm is null; pass a communicator of its own (world->Split(0, rank))");
  }
  if (!options.comm->AbortStatus().ok()) {
    return absl::FailedPreconditionError(absl::StrCat("the checkpoint communicator is aborted: ",
                                                      options.comm->AbortStatus().message()));
  }
  if (options.keep_last < 0 || options.keep_every < 0) {
    return absl::InvalidArgumentError("keep_last and keep_every must be >= 0");
  }
  size_t budget = options.memory_budget_bytes;
  if (budget == 0) budget = static_cast<size_t>(ParamInt("TRIDENT_CKPT_MEMORY_BUDGET_MB")) << 20;
  if (budget < kMinBudget) {
    return absl::InvalidArgumentError(absl::StrCat("memory budget of ", budget,
                                                   " bytes; at least ", kMinBudget));
  }
  int threads = options.copy_threads;
  if (threads <= 0) threads = static_cast<int>(ParamInt("TRIDENT_CKPT_THREADS"));
  if (threads <= 0) {
    threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
  }
  OpOptions op_options;
  op_options.timeout = options.commit_timeout > absl::ZeroDuration()
                           ? options.commit_timeout
                           : ParamMillis("TRIDENT_TIMEOUT_MS");
  std::shared_ptr<FileSystem> fs = options.file_system ? options.file_system : PosixFileSystem();
  RETURN_IF_ERROR(Annotate(CreateDirs(*fs, options.dir), "creating the checkpoint directory"));

  Communicator& comm = *options.comm;
  int buddy = -1, source = -1;
  if (options.peer_replicas && comm.size() > 1) {
    std::string host = options.host_name;
    if (host.empty()) {
      char name[256] = {};
      ::gethostname(name, sizeof(name) - 1);
      host = name;
    }
    int64_t mine = static_cast<int64_t>(ckpt::HostId(host));
    std::vector<int64_t> all(comm.size());
    RETURN_IF_ERROR(Annotate(
        comm.AllGather(Tensor::Of(&mine, 1), Tensor::Of(all.data(), comm.size()), op_options)
            ->Wait(),
        "exchanging host names for peer replicas"));
    std::vector<uint64_t> ids(all.begin(), all.end());
    const int shift = ckpt::BuddyShift(ids);
    buddy = (comm.rank() + shift) % comm.size();
    source = (comm.rank() - shift + comm.size()) % comm.size();
    if (ids[buddy] == ids[comm.rank()]) {
      TLOG(debug, "checkpoint: every rank is on one host; peer replicas stay on it");
    }
  }
  std::unique_ptr<Communicator> control;
  if (options.busy_policy == BusyPolicy::kSkip) {
    ASSIGN_OR_RETURN(control, comm.Split(0, comm.rank()));
  }
  return std::unique_ptr<CheckpointEngine>(new Engine(std::move(options), std::move(fs), budget,
                                                      threads, op_options, std::move(control),
                                                      buddy, source));
}

}  // namespace trident
