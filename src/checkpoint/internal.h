// Internals shared by the checkpoint engine, the loader and the peer replicas.
#ifndef TRIDENT_CHECKPOINT_INTERNAL_H_
#define TRIDENT_CHECKPOINT_INTERNAL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "checkpoint/file_system.h"
#include "checkpoint/format.h"
#include "common/host_memory.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"

namespace trident {

// A piece of a tensor held in memory: a box of the global tensor, contiguous (row-major) at
// `data_offset` of a replica's buffer.
struct ReplicaPiece {
  ckpt::Box box;
  uint64_t data_offset = 0;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};
struct ReplicaTensor {
  std::string name;
  DType dtype = DType::kF32;
  Tensor::Shape global_shape;
  std::vector<ReplicaPiece> pieces;
};

// A replica's contents: its index and its bytes.
struct ReplicaData {
  int owner_rank = -1;
  int64_t step = 0;
  int64_t epoch = 0;
  std::string metadata;
  std::vector<ReplicaTensor> tensors;
  HostMemory data;
  size_t bytes = 0;
};

// The one PeerReplica there is.
class HeldPeerReplica final : public PeerReplica {
 public:
  explicit HeldPeerReplica(std::unique_ptr<ReplicaData> impl) : impl_(std::move(impl)) {}
  int owner_rank() const override { return impl_->owner_rank; }
  int64_t step() const override { return impl_->step; }
  int64_t epoch() const override { return impl_->epoch; }
  const std::string& metadata() const override { return impl_->metadata; }
  std::vector<std::string> TensorNames() const override;
  size_t bytes() const override { return impl_->bytes; }
  absl::Status Restore(absl::Span<const TensorRequest> requests) const override;

  const ReplicaData& impl() const { return *impl_; }
  ReplicaData& mutable_impl() { return *impl_; }

 private:
  std::unique_ptr<ReplicaData> impl_;
};

namespace ckpt {

// Names of the stages of a save at which TRIDENT_CKPT_CRASH_AT kills the process (tests).
inline constexpr char kCrashDuringShardWrite[] = "during_shard_write";
inline constexpr char kCrashAfterShards[] = "after_shards";
inline constexpr char kCrashBeforeRename[] = "before_rename";
inline constexpr char kCrashBeforeLatest[] = "before_latest";
// Raises SIGKILL when TRIDENT_CKPT_CRASH_AT names `stage`.
void MaybeCrashAt(absl::string_view stage);

// The index of a replica on the wire, and the transfer. A replica goes as three messages:
// its index size, its index (JSON), its bytes (in chunks). ExchangeReplicas sends one replica
// (when `outgoing` is set) and receives one (when `receive` is set) in three phases, each
// posting both directions before waiting: a receive is never posted late because of a send
// that waits for it, so two ranks can exchange with each other, or in a ring.
std::string ReplicaIndexJson(const ReplicaData& replica);
struct OutgoingReplica {
  int dest = -1;
  std::string index_json;
  const char* data = nullptr;
  size_t bytes = 0;
};
// Returns the received replica (nullptr when `receive` is false). `reuse` is memory that the
// received bytes may go to when it is large enough (reuse_bytes).
absl::StatusOr<std::unique_ptr<ReplicaData>> ExchangeReplicas(
    Communicator& comm, const OutgoingReplica* outgoing, bool receive, int src, HostMemory reuse,
    size_t reuse_bytes, const OpOptions& options);

// The shift s such that rank r's buddy is (r + s) % n: the smallest for which no rank's buddy
// shares its host; 1 when every rank is on one host. 0 for a world of one.
int BuddyShift(absl::Span<const uint64_t> host_ids);
uint64_t HostId(absl::string_view host_name);

// Copies with several threads (the caller's included).
class ParallelCopier {
 public:
  struct Op {
    char* dst;
    const char* src;
    size_t bytes;
  };
  explicit ParallelCopier(int threads);
  ~ParallelCopier();
  ParallelCopier(const ParallelCopier&) = delete;
  ParallelCopier& operator=(const ParallelCopier&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Returns when every op is done.
  void Copy(absl::Span<const Op> ops);

 private:
  void CopyPart(absl::Span<const Op> ops, size_t begin, size_t end);
  // Where part `part` of `total` bytes starts (part == threads(): the end).
  size_t PartBound(size_t total, int part) const;
  void WorkerLoop(int index);

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  absl::Span<const Op> ops_;  // guarded by mu_
  size_t total_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// Resolves `step` (kLatestStep allowed), reads its manifest (at most kMaxManifestBytes) and
// validates it (ValidateManifest).
absl::StatusOr<CheckpointManifest> ReadManifestAt(FileSystem& fs, const std::string& dir,
                                                  int64_t* step);
// Where the bytes of each request of a load are assembled: the caller's memory, or for a CUDA
// tensor a page-locked block (pooled) that Queue copies to the device with cudaMemcpyAsync on
// a stream per device, so that the copy overlaps the next tensor's reads; Finish waits for
// every copy once. A block goes back to the pool fenced by its copy's event.
class DeviceUploads {
 public:
  DeviceUploads();
  ~DeviceUploads();
  // Where to assemble `request`'s bytes.
  absl::StatusOr<char*> Destination(const TensorRequest& request);
  // After the bytes of the request last given to Destination are in place.
  absl::Status Queue(const TensorRequest& request);
  // Waits for every queued copy; bounded (kDeadlineExceeded naming the device).
  absl::Status Finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};
// OK when `latest` is absent or names a committed step; kDataLoss naming `latest` and what it
// names otherwise (loading then falls back to the newest committed step; verify reports it).
absl::Status CheckLatestPointer(FileSystem& fs, const std::string& dir);

// A checkpoint read from storage that may hold anything (docs/security.md): the manifest is
// validated as a whole when it is opened, and each shard file's size and safetensors header
// against the manifest when the file is first used, before any of its data is read. The
// loader and VerifyCheckpoint both read through it. Not thread-safe.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(FileSystem& fs,
                                                                const std::string& dir,
                                                                int64_t step);
  ~CheckpointReader();

  int64_t step() const { return step_; }
  const CheckpointManifest& manifest() const { return manifest_; }
  // The shards stored in a listed file, by byte offset.
  const std::vector<StoredShard>& ShardsIn(const std::string& file) { return by_file_[file].shards; }
  std::string PathOf(const std::string& file) const { return JoinPath(step_dir_, file); }
  // A listed file, opened and checked (kDataLoss naming it, and `tensor` when it is missing).
  absl::StatusOr<ReadableFile*> File(const std::string& name, absl::string_view tensor);

 private:
  struct OpenFile {
    const FileInfo* info = nullptr;
    std::vector<StoredShard> shards;
    std::unique_ptr<ReadableFile> file;  // once checked
  };
  CheckpointReader(FileSystem& fs, std::string step_dir, int64_t step,
                   CheckpointManifest manifest);

  FileSystem& fs_;
  const std::string step_dir_;
  const int64_t step_;
  const CheckpointManifest manifest_;
  std::map<std::string, OpenFile> by_file_;
};
// Where the bytes of a request are assembled: the caller's memory, or for a CUDA tensor a host
// buffer that FinishDestination then copies to the device.
absl::StatusOr<char*> HostDestination(const TensorRequest& request, HostMemory* bounce);
absl::Status FinishDestination(const TensorRequest& request, const HostMemory& bounce);
// Where a request lies in the global tensor, after checking it against what is stored.
absl::StatusOr<Box> RequestBox(const TensorRequest& request, DType dtype,
                               const Tensor::Shape& global_shape, absl::string_view where);

}  // namespace ckpt
}  // namespace trident

#endif  // TRIDENT_CHECKPOINT_INTERNAL_H_
