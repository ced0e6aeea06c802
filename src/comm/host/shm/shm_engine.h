// ShmEngine: the intra-host collective engine of the host backend. When every rank of a
// communicator runs on this host, its collectives move through one shared segment instead of
// libfabric messages: each rank copies its input into its own slot, publishes a sequence
// number, and reads (and reduces) its peers' slots directly.
//
// The segment: a memfd made by group rank 0 (huge pages when the kernel has a pool) that the
// others open through /proc/<pid>/fd/<fd> (its address goes through the store). It has no name
// anywhere, so nothing can leak: the kernel frees it when the last process that maps it exits,
// however it exits. Layout: a header, one control block per rank (its sync counter on a cache
// line of its own; pid, failure flag and the fingerprints of its current ops on another), then
// per rank two data buffers of `slot_bytes` (ops alternate between them, so that a rank may
// fill the next buffer while a slow peer still reads the previous one).
//
// Synchronisation: one monotonic counter per rank. A sync point s is passed when every rank's
// counter is >= s. A waiter spins briefly, then yields, then sleeps on a futex in the header
// (a publisher wakes it only when someone sleeps), and never sleeps longer than a few
// milliseconds: between naps it checks abort, the op's deadline, the peers' failure flags,
// whether a lagging peer's process still exists (pidfd), and, every 50 ms, the caller's
// health check (errors other ranks published in the store).
//
// Algorithms (chosen by size, ShmParams): one-shot for small allreduces (one sync; every rank
// reduces every slot, in rank order, so all ranks get identical bits); reduce-scatter +
// all-gather through the slots for larger ones (two syncs per chunk; each rank reduces 1/N of
// the chunk); messages larger than a slot are pipelined chunk by chunk. Allgather, broadcast,
// reduce, reduce-scatter, all-to-all and barrier have their own loops; send/recv stay on the
// transport.
//
// Thread safety: Run is called by the communicator's worker thread only; MarkFailed from any.
#ifndef TRIDENT_COMM_HOST_SHM_SHM_ENGINE_H_
#define TRIDENT_COMM_HOST_SHM_SHM_ENGINE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trident/store.h"
#include "trident/tensor.h"

namespace trident {

// What every rank must agree on for one collective (the fingerprint); plain old data, it
// lives in the segment.
struct ShmCall {
  uint32_t seq = 0;
  int32_t epoch = 0;
  int32_t rank = 0;
  uint8_t kind = 0, dtype = 0, reduce = 0, pad = 0;
  int32_t root = -1;
  int64_t count = 0;
  bool SameCall(const ShmCall& o) const {
    return seq == o.seq && epoch == o.epoch && kind == o.kind && dtype == o.dtype &&
           reduce == o.reduce && root == o.root && count == o.count;
  }
};

struct ShmParams {
  size_t slot_bytes = 1 << 20;    // per rank and buffer (two buffers per rank)
  size_t oneshot_bytes = 64 << 10;  // allreduces up to this size use the one-shot algorithm
};

// The engine's own algorithms.
enum class ShmAlgo : uint8_t {
  kAgree,  // fingerprint only (a barrier; or an op the transport then runs)
  kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce, kAllToAll
};

struct ShmOp {
  ShmCall call;
  ShmAlgo algo = ShmAlgo::kAgree;
  DType dtype = DType::kU8;
  ReduceOp reduce = ReduceOp::kSum;
  int root = -1;
  const void* in = nullptr;
  void* out = nullptr;
  // AllReduce, Reduce, Broadcast, AllGather: elements of `in`; ReduceScatter: elements of
  // `out`; AllToAll: elements of one block (in has size() blocks).
  size_t count = 0;
  absl::Time deadline;
  absl::Duration timeout;
};

// What the engine needs from its communicator while an op waits.
struct ShmHooks {
  const std::atomic<bool>* aborted = nullptr;
  std::function<absl::Status()> abort_status;
  std::function<absl::Status()> health;                  // errors published by other ranks
  std::function<std::string(const ShmCall&)> describe;   // "AllReduce(count=8, f32, sum) as op #3 ..."
  std::function<void(const absl::Status&)> publish;      // a mismatch, for every rank to see
  std::string op_name;                                   // for messages
  std::string comm_name;
};

class ShmEngine {
 public:
  // Every rank of the group calls it (in any order: rank 0 publishes the segment under
  // `key` in `store`, the others wait for it until `deadline`). `ranks` maps group ranks to
  // the transport ranks that peer errors name (WithPeer).
  static absl::StatusOr<std::unique_ptr<ShmEngine>> Create(Store& store, const std::string& key,
                                                           int rank, std::vector<int> ranks,
                                                           ShmParams params, absl::Time deadline);
  ~ShmEngine();
  ShmEngine(const ShmEngine&) = delete;
  ShmEngine& operator=(const ShmEngine&) = delete;

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  const ShmParams& params() const { return params_; }
  std::string Describe() const;

  // Runs one collective (fingerprint check included). On failure this rank's failure flag is
  // set, so that peers waiting for it fail at once naming it.
  absl::Status Run(const ShmOp& op, const ShmHooks& hooks);

  // Peers that wait for this rank from now on fail with kAborted naming it and `reason`
  // (and `cause_peer`, a transport rank, for their on_peer_error, when >= 0).
  void MarkFailed(const std::string& reason, int cause_peer = -1);

  struct Segment;

 private:
  ShmEngine(int rank, std::vector<int> ranks, ShmParams params);
  absl::Status RunOp(const ShmOp& op, const ShmHooks& hooks);
  // Publishes the next sync point and waits until every rank passed it.
  absl::Status Sync(const ShmOp& op, const ShmHooks& hooks);
  absl::Status CheckCalls(const ShmOp& op, const ShmHooks& hooks);
  absl::Status CheckPeers(const ShmOp& op, const ShmHooks& hooks, uint64_t target);
  void Wake();
  uint8_t* Slot(int rank, int buffer) const;
  int NextBuffer() { return static_cast<int>(buffers_used_++ & 1); }

  const int rank_;
  const std::vector<int> ranks_;
  ShmParams params_;  // rank 0's sizes (set at Create)
  int fd_ = -1;  // rank 0 keeps the memfd open for latecomers
  void* base_ = nullptr;
  size_t length_ = 0;
  bool huge_ = false;
  Segment* seg_ = nullptr;
  uint64_t sync_ = 0;          // sync points passed; worker only
  uint64_t buffers_used_ = 0;  // worker only
  std::vector<int> pidfds_;    // per rank, -1 until known; worker only
  std::atomic<bool> failed_{false};
};

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_SHM_SHM_ENGINE_H_
