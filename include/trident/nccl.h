// trident/nccl.h: the NCCL backend, a Communicator over NVIDIA's NCCL for CUDA tensors.
//
// This header compiles in every build. In a build without NCCL (TRIDENT_WITH_NCCL=OFF, or no
// CUDA toolkit / NCCL found at build time) NcclBuilt() is false and CreateNcclCommunicator
// returns kFailedPrecondition saying so.
//
// Contract, beyond communicator.h's:
//  - Tensors are CUDA tensors on the communicator's device. Ops are queued on
//    OpOptions::cuda_stream (default: a stream of the communicator's, which waits for work on
//    the legacy default stream); Work wraps a CUDA event recorded after the op. Wait(deadline)
//    polls that event and never blocks past the deadline.
//  - Send/Recv: NCCL has no tags; a Send meets the peer's Recv in issue order, and a Send
//    blocks its stream until the peer's Recv runs. Two ranks that each send and then receive
//    on one stream deadlock: put the exchange in one SendRecv batch (one NCCL group, in
//    (peer, kind, tag) order), or let one of them receive first.
//  - AllToAll may be in place (in and out the same or overlapping): it then sends from a
//    copy made on the op's stream.
//  - A watchdog per process polls each communicator: an asynchronous NCCL error, an op past
//    its deadline, an error on an op's CUDA event, or another member that aborted the
//    communicator (the communicator's own store keys) aborts it (ncclCommAbort) and fails its
//    ops with kAborted / kDeadlineExceeded naming the cause. The backend never reads the
//    job's failure records: a member that dies reaches it through Abort, which the runtime
//    calls.
//  - Abort(status) returns at once and refuses later ops; pending ops fail with `status` once
//    ncclCommAbort has returned, so that the GPU no longer writes their buffers when the
//    caller sees the failure. Aborts of several communicators run in parallel. If
//    ncclCommAbort does not return within TRIDENT_NCCL_ABORT_TIMEOUT_MS the process logs it
//    and exits with status 70 rather than hang the job.
//  - A sticky CUDA error (the process's CUDA context is lost) cannot be recovered by a
//    rebuild: the process logs it and exits with status 71, and the launcher reports the
//    rank as failed.
//  - An op queued on a stream that is being captured into a CUDA graph returns a Work that
//    is already complete; it runs at the graph's launches, with no deadline or watchdog.
//  - Communicators are created non-blocking (ncclConfig_t::blocking = 0), so that init, split
//    and every op are bounded by their deadline and abortable from any thread.
//  - Rebuild for a new epoch: every member (survivors and promoted spares) calls
//    CreateNcclCommunicator with the new epoch; the unique id is published in the store under
//    a key holding the name and the epoch. See docs/gpu.md for why this and not shrink.
//
//   trident::NcclCommOptions options;            // rank, size, store from TRIDENT_* variables
//   auto comm = trident::CreateNcclCommunicator(options).value();
//   trident::Tensor grads(device_ptr, trident::DType::kBF16, {n}, trident::Device::Cuda(0));
//   trident::OpOptions op{.cuda_stream = stream};
//   auto work = comm->AllReduce(grads, grads, trident::ReduceOp::kAvg, op);
//   ...                                           // kernels queued on `stream` see the sum
//   absl::Status s = work->Wait(absl::Now() + absl::Seconds(30));
#ifndef TRIDENT_NCCL_H_
#define TRIDENT_NCCL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident {

struct NcclCommOptions {
  // Rank and world size; -1 reads TRIDENT_RANK / TRIDENT_WORLD_SIZE.
  int rank = -1;
  int world_size = -1;
  // Where ranks meet (the unique id, failure reports); nullptr connects to TRIDENT_STORE.
  std::shared_ptr<Store> store;
  // CUDA device of this rank; -1 picks TRIDENT_LOCAL_RANK modulo the visible device count.
  int device = -1;
  // Default op timeout and the bound of setup; zero reads TRIDENT_TIMEOUT_MS.
  absl::Duration timeout = absl::ZeroDuration();
  // Setup also ends by this time when it comes before `timeout` does; ops keep `timeout`.
  absl::Time setup_deadline = absl::InfiniteFuture();
  // Shown in logs and errors, and part of the store keys: (name, epoch) must be unique in the
  // job; building it twice is kFailedPrecondition.
  std::string name = "world";
  // The membership epoch this communicator belongs to.
  int64_t epoch = 0;
  // The job rank (as trident-run numbers processes, TRIDENT_RANK) of each rank of this
  // communicator, to name the member behind a failure that trident-run reports. Empty: rank
  // r is job rank r.
  std::vector<int> job_ranks;
};

// True when this build has the NCCL backend.
bool NcclBuilt();

// Builds a communicator of the NCCL backend. Every rank calls it with the same name, epoch and
// world size; it returns once NCCL's init has finished on this rank, or fails at the timeout
// (kDeadlineExceeded), when another member's init failed and it said so (kAborted), without a
// CUDA device or NCCL in this build (kFailedPrecondition), or on bad options
// (kInvalidArgument).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(NcclCommOptions options);

}  // namespace trident

#endif  // TRIDENT_NCCL_H_
