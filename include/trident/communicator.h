// trident/communicator.h: a group of ranks and the collective and point-to-point operations
// among them. Backends: the host backend (algorithms over libfabric or in-process threads) and,
// when built with it, NCCL (trident/nccl.h).
//
// Contract (see docs/architecture.md):
//  - Every op is asynchronous and returns a Work; ops on one communicator complete in the
//    order they were issued. Every rank of the group must issue the same collectives in the
//    same order with the same dtype, count and root.
//  - Every op has a deadline: OpOptions::timeout, else the communicator's default
//    (TRIDENT_TIMEOUT_MS), counted from the moment the op is issued.
//  - Errors, by what the caller does next:
//      kInvalidArgument    bad call (size, dtype, rank, null, a tensor on a device this
//                          communicator or build cannot serve) or ranks that called different
//                          ops; nothing happened, fix the call
//      kAborted            a peer failed or the communicator was aborted; names rank and cause
//      kDeadlineExceeded   the op's deadline passed; names the ranks that had not arrived
//      kFailedPrecondition the communicator was aborted before this op was issued
//    After kAborted or kDeadlineExceeded the communicator is aborted: rebuild it.
//  - A Communicator is thread-safe: ops may be issued and Abort called from any thread.
//  - Ownership, one rule everywhere: a factory (CreateHostCommunicator, Split,
//    CreateNcclCommunicator) returns a std::unique_ptr, and the caller owns the communicator.
//    A function or object that takes a Communicator& or Communicator* borrows it: the caller
//    keeps it alive while the callee uses it (MeshGroups::Build's world only during the call;
//    a GradBucketer's or Zero1Optimizer's dp group for the object's lifetime; RunSchedule's
//    groups during the call). Only what keeps using a communicator on threads of its own
//    after the call returns takes a std::shared_ptr and shares ownership
//    (CheckpointOptions::comm).
//
//   auto comm = trident::CreateHostCommunicator({}).value();   // from TRIDENT_* variables
//   std::vector<float> grads(n);
//   auto t = trident::Tensor::Of(grads.data(), n);
//   absl::Status s = comm->AllReduce(t, t, trident::ReduceOp::kAvg)->Wait();
#ifndef TRIDENT_COMMUNICATOR_H_
#define TRIDENT_COMMUNICATOR_H_

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

// The handle of one asynchronous op. Its status is sticky once completed.
class Work {
 public:
  virtual ~Work() = default;
  // Waits until the op completes or `deadline` passes. Returns the op's status, or
  // kDeadlineExceeded when the caller's deadline passed first (the op keeps running and is
  // still bound by its own deadline).
  virtual absl::Status Wait(absl::Time deadline = absl::InfiniteFuture()) = 0;
  virtual bool IsCompleted() const = 0;
  // The op's status; kUnavailable ("still running") until it completes.
  virtual absl::Status status() const = 0;
};

// One transfer of a point-to-point batch (Communicator::SendRecv).
struct P2POp {
  enum class Kind { kSend, kRecv };
  Kind kind = Kind::kSend;
  Tensor tensor;
  int peer = 0;
  int tag = 0;
};

struct OpOptions {
  // Deadline of the op, counted from the moment it is issued; zero means the communicator's
  // default timeout.
  absl::Duration timeout = absl::ZeroDuration();
  // CUDA tensors only: the cudaStream_t the op is ordered on (kept as void* so that this
  // header needs no CUDA header). nullptr: the communicator's own stream for that device,
  // which waits for work queued on the legacy default stream.
  //  - NCCL backend: the op runs on this stream after the work queued there before it, and
  //    work queued there after it sees its result; Work wraps an event recorded after it.
  //  - Host backend: the op reads its inputs after the work queued on this stream before it,
  //    and sees the results of the ops issued before it on the communicator (no Wait needed
  //    in between): its worker copies in, runs and copies out each op in issue order. The
  //    outputs are written back before the Work completes: wait for the Work before queuing
  //    GPU work that reads the outputs or writes the inputs (as with CPU tensors).
  // Ignored for CPU tensors.
  void* cuda_stream = nullptr;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A short description for logs: name, epoch, rank/size, backend.
  virtual std::string Describe() const = 0;

  // Collectives. `in` and `out` may be the same tensor (in place); shapes are not checked,
  // only element counts and dtypes.
  // out[i] = op over ranks of in[i]; in.numel() == out.numel().
  virtual std::shared_ptr<Work> AllReduce(const Tensor& in, const Tensor& out, ReduceOp op,
                                          const OpOptions& options = {}) = 0;
  // in has size()*c elements; rank r receives block r of the reduction in out (c elements).
  virtual std::shared_ptr<Work> ReduceScatter(const Tensor& in, const Tensor& out, ReduceOp op,
                                              const OpOptions& options = {}) = 0;
  // in has c elements; out has size()*c, block r coming from rank r.
  virtual std::shared_ptr<Work> AllGather(const Tensor& in, const Tensor& out,
                                          const OpOptions& options = {}) = 0;
  // The root's tensor is copied into every rank's tensor.
  virtual std::shared_ptr<Work> Broadcast(const Tensor& tensor, int root,
                                          const OpOptions& options = {}) = 0;
  // The reduction lands in the root's out; out is not touched on other ranks.
  virtual std::shared_ptr<Work> Reduce(const Tensor& in, const Tensor& out, ReduceOp op,
                                       int root, const OpOptions& options = {}) = 0;
  // in and out have size()*c elements; block j of rank i's in lands in block i of rank j's out.
  virtual std::shared_ptr<Work> AllToAll(const Tensor& in, const Tensor& out,
                                         const OpOptions& options = {}) = 0;
  virtual std::shared_ptr<Work> Barrier(const OpOptions& options = {}) = 0;

  // Point to point. A Send matches the Recv on `peer` with the same tag (0 <= tag < 2^24) and
  // the same byte size; messages with the same peer and tag arrive in order.
  virtual std::shared_ptr<Work> Send(const Tensor& tensor, int peer, int tag,
                                     const OpOptions& options = {}) = 0;
  virtual std::shared_ptr<Work> Recv(const Tensor& tensor, int peer, int tag,
                                     const OpOptions& options = {}) = 0;

  // Issues `ops` as one batch and returns one Work, complete when every op of the batch is
  // (its status: the first failure, in batch order). For exchanges in which ranks both send
  // and receive, such as pipeline stages trading activations and gradients: on the NCCL
  // backend the batch is one ncclGroupStart/ncclGroupEnd, so no send waits for the peer to
  // post its receive first; and as NCCL carries no tags, the batch is issued in (peer, tag)
  // order, so that equal-size messages land in the buffers of their tags when both sides'
  // batches hold the same tags for each other. Each op is checked as Send and Recv check it.
  // The default issues the ops one by one (the host backend's Send does not wait for the
  // peer's Recv).
  virtual std::shared_ptr<Work> SendRecv(const std::vector<P2POp>& ops,
                                         const OpOptions& options = {});

  // Makes a sub-communicator of the ranks that pass the same color, ordered by (key, rank).
  // A collective over this communicator: every rank must call it. A negative color takes no
  // part and gets nullptr.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;

  // Fails every pending op with `status` (which must not be OK) and every later op with
  // kFailedPrecondition. Callable from any thread; returns promptly. Idempotent: the first
  // status wins. On the NCCL backend the pending ops complete once ncclCommAbort has
  // returned (bounded), so that the GPU no longer writes their buffers (trident/nccl.h).
  virtual void Abort(absl::Status status) = 0;
  // The abort status, or OK while the communicator is usable.
  virtual absl::Status AbortStatus() const = 0;
};

// A host-backend endpoint opened before its communicator exists (libfabric fabric, domain,
// queues and an enabled endpoint), so that building the communicator only exchanges
// addresses: a hot spare opens one while it waits. Opaque; shared handles to one endpoint,
// which the first communicator built with it consumes. Thread-safe.
class HostEndpoint;

// Opens a HostEndpoint for `provider` (as HostCommOptions::provider); empty reads
// TRIDENT_FABRIC_PROVIDER, and "shm" when that is empty too (with ranks on several hosts, set
// it: CreateHostCommunicator would choose tcp there). IP providers bind to
// TRIDENT_FABRIC_IFACE (default lo). Uses no store. An unknown provider is kInvalidArgument.
absl::StatusOr<std::shared_ptr<HostEndpoint>> OpenHostEndpoint(std::string provider = "");

// Called by a communicator when its transport reports an error from a peer (`peer`: that
// peer's rank in the world communicator it was built or split from), on the communicator's
// worker thread, before the op fails; the op fails with what it returns. It may block briefly
// to learn more: the runtime's handler reports the suspicion and waits up to 1 s for the
// launcher's record of that rank's death. The communicator itself reads no job state.
using PeerErrorHandler = std::function<absl::Status(int peer, const absl::Status& error)>;

struct HostCommOptions {
  // Rank and world size; -1 reads TRIDENT_RANK / TRIDENT_WORLD_SIZE.
  int rank = -1;
  int world_size = -1;
  // Where ranks meet; nullptr connects to TRIDENT_STORE.
  std::shared_ptr<Store> store;
  // libfabric provider; empty reads TRIDENT_FABRIC_PROVIDER (default "shm" on one host).
  std::string provider;
  // Default op timeout, and the bound of setup; zero reads TRIDENT_TIMEOUT_MS.
  absl::Duration timeout = absl::ZeroDuration();
  // Setup also ends by this time when it comes before `timeout` does; ops keep `timeout` (the
  // runtime builds a world within a build window shorter than an op's deadline).
  absl::Time setup_deadline = absl::InfiniteFuture();
  // Shown in logs and errors.
  std::string name = "world";
  // Membership epoch (runtime.h); shown in logs and errors. Above 0 it also names the setup
  // keys, so that processes which built different numbers of worlds before (a promoted spare
  // and the survivors) still meet; the store should then be scoped to the epoch.
  int64_t epoch = 0;
  // An endpoint opened in advance (a hot spare's); consumed by the first communicator built
  // with it, also by a build that fails after taking it. One opened for another provider is
  // kInvalidArgument (and not consumed); one already consumed is kFailedPrecondition.
  std::shared_ptr<HostEndpoint> endpoint;
  // See PeerErrorHandler; inherited by communicators made with Split. Null: an op fails with
  // the transport's error itself (kAborted naming the peer's rank).
  PeerErrorHandler on_peer_error;
};

// Builds the world communicator of the host backend over libfabric. Every rank calls it; it
// returns once all ranks have exchanged endpoint addresses (or fails at the timeout). It opens
// an endpoint unless options.endpoint brings one. It takes CPU tensors and, in builds with
// CUDA, CUDA tensors (staged through pinned host memory; see OpOptions::cuda_stream); a build
// without CUDA answers kInvalidArgument for CUDA tensors.
absl::StatusOr<std::unique_ptr<Communicator>> CreateHostCommunicator(HostCommOptions options);

}  // namespace trident

#endif  // TRIDENT_COMMUNICATOR_H_
