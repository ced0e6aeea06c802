// trident/checkpoint.h: the asynchronous checkpoint engine, the loader that reshards on load,
// and peer replicas (a rank's last snapshot held in another rank's memory).
//
// Save: CheckpointEngine::Save(step, state) returns once the state is copied into staging
// memory (the snapshot); writing, fsync, CRC32C and the commit run on background threads.
// Load: LoadCheckpoint reads only the slices a rank asks for, so a checkpoint saved with one
// tp/pp/dp layout loads with another. Format, commit protocol and failure cases:
// docs/checkpoint.md.
//
// Ownership and threads:
//  - The engine owns its staging memory and threads; the caller keeps the tensors of a state
//    alive and unchanged only until Save returns.
//  - The engine takes a communicator of its own (make one with Split, e.g.
//    world->Split(0, world->rank())): its background thread issues collectives on it, and
//    collectives on one communicator must be issued in the same order on every rank, which
//    the training loop's own ops would break.
//  - Save must be called by every rank of that communicator, for the same steps, in the same
//    order, from one thread. The other methods are thread-safe.
//
//   auto ckpt_comm = world->Split(0, world->rank()).value();
//   trident::CheckpointOptions options;
//   options.dir = "/fsx/run7/ckpt";
//   options.comm = std::move(ckpt_comm);
//   auto engine = trident::CheckpointEngine::Create(std::move(options)).value();
//   trident::CheckpointState state;
//   state.tensors.push_back({"layer0.w", w, {.global_shape = {4096, 1024},
//                                           .offset = {tp_rank * 2048, 0}}});
//   state.metadata = rng_state_bytes;
//   auto save = engine->Save(step, state).value();   // training goes on
//   ...
//   absl::Status s = save->Wait();                     // committed, or why not
#ifndef TRIDENT_CHECKPOINT_H_
#define TRIDENT_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "trident/communicator.h"
#include "trident/file_system.h"
#include "trident/tensor.h"

namespace trident {

// Where a tensor, or this rank's piece of it, sits in the global tensor.
struct TensorPlacement {
  // Shape of the whole tensor; empty: the local tensor is the whole tensor.
  Tensor::Shape global_shape;
  // Element offset of the local piece in each dimension; empty: all zeros.
  Tensor::Shape offset;
  // The same piece holds the same values on `replica_count` ranks (e.g. a data-parallel
  // group); each of them declares it with the same name, global shape and offset and its own
  // replica_index in [0, replica_count). The piece is written once: replica i writes rows
  // [i*R/k, (i+1)*R/k) of its R rows (dimension 0), so a replica may write nothing when R < k.
  int replica_index = 0;
  int replica_count = 1;
};

struct NamedTensor {
  std::string name;  // unique in a state; must not start with "__"
  Tensor tensor;     // contiguous; CPU memory, or CUDA memory in a build with CUDA
  TensorPlacement placement;
};

struct CheckpointState {
  std::vector<NamedTensor> tensors;
  // Small per-rank user bytes (RNG state, data-loader position, ...), at most
  // kMaxCheckpointMetadataBytes; stored in the manifest.
  std::string metadata;
  // CUDA tensors only: the cudaStream_t whose queued work produces them (void* so that this
  // header needs no CUDA header); the snapshot's copies, on the engine's own stream per
  // device into page-locked staging, start after that work. nullptr: the legacy default
  // stream. Save returns once the copies are done.
  void* cuda_stream = nullptr;
  // Silent-data-corruption guard: ranks that hold the same replicated state (the dp replicas
  // of one model shard) give the same replica_set (>= 0) and the digest of that state (e.g.
  // XXH3 of the parameters, as trident/resilient.h's loop does). The commit records every
  // rank's pair in the manifest and is refused (kDataLoss naming the ranks; nothing is
  // committed, `latest` does not move) when two ranks of one set disagree. -1: no digest.
  int64_t replica_set = -1;
  uint64_t replica_digest = 0;
};
inline constexpr size_t kMaxCheckpointMetadataBytes = 1 << 20;

// What Save does while the previous save of this rank is still persisting. Either way the two
// saves never share staging memory or files.
enum class BusyPolicy {
  kWait,  // Save first waits for the previous save to finish (its stall counts that wait).
  kSkip,  // Every rank drops this step if the previous save is still persisting on any rank:
          // Save returns kUnavailable naming a busy rank. Costs one small AllReduce per Save
          // (on a second communicator the engine splits off at Create).
};

struct CheckpointOptions {
  // Directory of the checkpoints, shared by every rank (created if missing).
  std::string dir;
  // The engine's own communicator (see above); a world of one is fine.
  std::shared_ptr<Communicator> comm;
  // Staging memory, in bytes. A state that fits is copied whole and Save returns at once; a
  // larger one streams through the budget: Save returns when its last byte is staged, having
  // waited for earlier bytes to be written. 0: TRIDENT_CKPT_MEMORY_BUDGET_MB.
  size_t memory_budget_bytes = 0;
  // Staging to allocate and fault in at Create (capped by the budget), e.g. the state's size:
  // otherwise the first Save pays for it (fresh pages cost about 1 GB/s to touch on a VM).
  size_t reserve_bytes = 0;
  // Threads (the caller's included) that copy a snapshot; 0: TRIDENT_CKPT_THREADS.
  int copy_threads = 0;
  // Write shard files with O_DIRECT where the file system allows it (falls back to buffered
  // writes where it does not).
  bool direct_io = true;
  BusyPolicy busy_policy = BusyPolicy::kWait;
  // Retention, applied by rank 0 after each commit: keep the newest `keep_last` committed
  // checkpoints (0: keep all), and also every step that is a multiple of `keep_every` (0: none).
  int keep_last = 0;
  int64_t keep_every = 0;
  // After each commit, send this rank's snapshot to a buddy rank (on another host when there
  // is one), which keeps it in memory (HeldReplica). Needs the whole state to fit the budget;
  // a save that streams sends no replica.
  bool peer_replicas = true;
  // This rank's host, for choosing buddies on other hosts; empty: gethostname().
  std::string host_name;
  // Recorded in the manifest: the membership epoch and a free-form layout ("tp2.pp2.dp2").
  int64_t epoch = 0;
  std::string layout;
  // Deadline of each step of the commit agreement; zero: TRIDENT_TIMEOUT_MS.
  absl::Duration commit_timeout = absl::ZeroDuration();
  // Where the files go (trident/file_system.h: your storage, or a wrapper of the real one);
  // nullptr: the real file system.
  std::shared_ptr<FileSystem> file_system;
};

struct SaveStats {
  int64_t step = 0;
  double snapshot_seconds = 0;  // time Save spent copying (and waiting for budget)
  double persist_seconds = 0;   // from Save's return to the end of the commit
  int64_t staged_bytes = 0;     // copied by this rank
  int64_t staging_bytes = 0;    // the staging memory this engine holds (never over the budget)
  int64_t written_bytes = 0;    // written by this rank into its shard file (data only)
  bool streamed = false;        // the state did not fit the budget
  // The peer-replica exchange after the commit: OK when sent and received, kUnavailable
  // ("not sent: ...") when the exchange did not happen.
  absl::Status replica_status = absl::UnavailableError("not attempted");
};

// The handle of one save. Its status is sticky once completed.
class CheckpointSave {
 public:
  virtual ~CheckpointSave() = default;
  virtual int64_t step() const = 0;
  // Waits until the save is committed or failed, or `deadline` passes (kDeadlineExceeded;
  // the save goes on). OK means committed: the manifest and `latest` are durable.
  // Errors: the first failed rank's error, with its code (kResourceExhausted for a full disk,
  // kInvalidArgument for placements that do not tile a tensor, kAborted/kDeadlineExceeded
  // when the agreement failed; see docs/checkpoint.md). An error after the vote (e.g. the
  // final broadcast timed out on one rank) can leave a committed checkpoint behind; an OK
  // never names an uncommitted one.
  virtual absl::Status Wait(absl::Time deadline = absl::InfiniteFuture()) = 0;
  virtual bool IsCompleted() const = 0;
  // kUnavailable ("still persisting") until completed.
  virtual absl::Status status() const = 0;
  virtual SaveStats stats() const = 0;
};

// One tensor (or slice of one) that a rank wants from a checkpoint or a replica.
struct TensorRequest {
  std::string name;
  // Destination: its dtype must be the stored dtype; its shape is the shape of the slice.
  // CPU memory, or CUDA memory in a build with CUDA (filled through host memory, blocking).
  Tensor tensor;
  // Where the slice starts in the global tensor; empty: all zeros.
  Tensor::Shape offset;
  // The global shape the caller expects; empty: not checked.
  Tensor::Shape global_shape;
};

// A copy of one rank's last committed snapshot (every tensor, metadata), held in memory.
// Made by the engine (HeldReplica) and FetchPeerReplica only.
class PeerReplica {
 public:
  virtual ~PeerReplica() = default;

  virtual int owner_rank() const = 0;  // whose state this is, in the engine's communicator
  virtual int64_t step() const = 0;
  virtual int64_t epoch() const = 0;
  virtual const std::string& metadata() const = 0;
  virtual std::vector<std::string> TensorNames() const = 0;
  virtual size_t bytes() const = 0;
  // Copies the requested slices into the caller's tensors, verifying checksums (kDataLoss
  // naming the tensor on a mismatch); same rules as LoadCheckpoint.
  virtual absl::Status Restore(absl::Span<const TensorRequest> requests) const = 0;
};

class CheckpointEngine {
 public:
  // Collective over options.comm: every rank calls it. Creates the directory, chooses
  // buddies, starts the threads. kInvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<CheckpointEngine>> Create(CheckpointOptions options);
  // Waits for the save in flight (bounded by its commit deadlines), then joins the threads.
  virtual ~CheckpointEngine() = default;

  // Takes a snapshot of `state` for `step` and returns once it is staged; the returned handle
  // tracks the persist and commit. kInvalidArgument (nothing saved) for a bad state: duplicate
  // or reserved names, placements out of range, metadata too large, a CUDA tensor in a build
  // without CUDA or on a device this process does not see. kUnavailable under
  // BusyPolicy::kSkip (see there). kFailedPrecondition once the engine's communicator is
  // aborted: make a new engine with a new communicator. If copying from a GPU fails, Save
  // returns that error and the save fails on every rank (LastSave() tracks it).
  virtual absl::StatusOr<std::shared_ptr<CheckpointSave>> Save(int64_t step,
                                                               const CheckpointState& state) = 0;
  // The most recent save's handle (nullptr before the first).
  virtual std::shared_ptr<CheckpointSave> LastSave() const = 0;

  // Peer replicas. This rank sends its snapshots to buddy_rank() and holds the replica of
  // replica_source_rank(); both are -1 when peer replicas are off or the world has one rank.
  virtual int buddy_rank() const = 0;
  virtual int replica_source_rank() const = 0;
  // The replica this rank holds (nullptr until the first exchange). The object stays valid
  // after the engine is gone, e.g. to serve it over a rebuilt communicator.
  virtual std::shared_ptr<const PeerReplica> HeldReplica() const = 0;
};


// Sends `replica` to `dest` over `comm` (point to point); `dest` calls FetchPeerReplica with
// this rank as `holder`. Any communicator works, e.g. one rebuilt after a failure, as long as
// the two ranks agree on who sends to whom.
absl::Status SendPeerReplica(Communicator& comm, int dest, const PeerReplica& replica,
                             const OpOptions& options = {});
absl::StatusOr<std::shared_ptr<PeerReplica>> FetchPeerReplica(Communicator& comm, int holder,
                                                              const OpOptions& options = {});
// The rank that holds `rank`'s replica when buddies are chosen as CheckpointEngine does, from
// the host name of every rank.
int ReplicaHolderOf(int rank, absl::Span<const std::string> host_of_rank);

// --- Reading checkpoints -------------------------------------------------------------------

inline constexpr int64_t kLatestStep = -1;

struct ShardInfo {
  std::string file;          // relative to the step directory
  int rank = 0;              // the rank that wrote it
  uint64_t byte_offset = 0;  // in the file
  uint64_t byte_length = 0;
  Tensor::Shape offset;      // in the global tensor
  Tensor::Shape shape;
  uint32_t crc32c = 0;
  int replica_count = 1;     // how many ranks held these values
};
struct TensorInfo {
  DType dtype = DType::kF32;
  Tensor::Shape global_shape;
  std::vector<ShardInfo> shards;
};
struct FileInfo {
  std::string name;
  int rank = 0;
  uint64_t bytes = 0;
};
struct CheckpointManifest {
  int version = 0;
  int64_t step = 0;
  int64_t epoch = 0;
  int world_size = 0;
  std::string layout;
  int64_t created_unix_ms = 0;
  std::vector<FileInfo> files;
  std::vector<std::string> metadata;  // per rank of the saving world
  // Per rank of the saving world (CheckpointState::replica_set/replica_digest): the replica
  // set (-1: none) and the digest of its replicated state, which every rank of a set agreed
  // on at the commit. Empty in a manifest written without digests.
  std::vector<int64_t> replica_sets;
  std::vector<uint64_t> replica_digests;
  std::map<std::string, TensorInfo> tensors;
};

struct CheckpointInfo {
  int64_t step = 0;
  std::string path;    // the step's directory
  bool latest = false; // `latest` names it
};

struct ReadOptions {
  std::shared_ptr<FileSystem> file_system;  // nullptr: the real one
};

// The committed checkpoints of `dir`, oldest first. Half-written directories are not listed.
absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& dir,
                                                            const ReadOptions& options = {});
// The step `latest` names; when `latest` is missing or names no committed checkpoint, the
// newest committed step. kNotFound when there is none.
absl::StatusOr<int64_t> LatestCheckpointStep(const std::string& dir,
                                             const ReadOptions& options = {});
// kDataLoss: the manifest is missing or not valid JSON or misses fields; kFailedPrecondition:
// a format version this build does not read; kNotFound: no such step.
absl::StatusOr<CheckpointManifest> ReadManifest(const std::string& dir, int64_t step,
                                                const ReadOptions& options = {});

struct LoadResult {
  int64_t step = 0;
  int64_t epoch = 0;
  std::string metadata;  // of options.metadata_rank
  int64_t bytes_read = 0;
};
struct LoadOptions : ReadOptions {
  int metadata_rank = -1;  // whose metadata to return (-1: none)
};
// Fills every request from checkpoint `step` (kLatestStep: LatestCheckpointStep). Reads the
// stored shards that overlap each requested slice and verifies their CRC32C.
// Errors: kNotFound (no checkpoint, no such tensor), kInvalidArgument (dtype, shape or slice
// does not match the checkpoint), kDataLoss (checksum mismatch, truncated or missing shard,
// bad manifest: the message names the file and tensor), kFailedPrecondition (version).
absl::StatusOr<LoadResult> LoadCheckpoint(const std::string& dir, int64_t step,
                                          absl::Span<const TensorRequest> requests,
                                          const LoadOptions& options = {});
// Reads every shard of every tensor of `step` and checks sizes, safetensors headers and
// checksums. kDataLoss names the first bad file and tensor.
absl::Status VerifyCheckpoint(const std::string& dir, int64_t step,
                              const ReadOptions& options = {});

}  // namespace trident

#endif  // TRIDENT_CHECKPOINT_H_
